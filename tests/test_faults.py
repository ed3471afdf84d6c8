"""Whole runs through the CLI against the fake server: faults, retries, resume, rate limits,
cost, dry runs, and no API key in any file a run writes."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import FakeServer

from cai.cli import cli
from cai.constitution import load_constitution
from cai.pipeline import GenerateConfig
from cai.plan import plan_run
from cai.pricing import format_cost, load_price_table
from cai.sources import PromptSource

PLANTED_KEY = "sk-cai-PLANTED-7f3e9a1c55d04b2e"
RETRYABLE = {"rate_limit", "server_error", "overloaded", "connection", "timeout", "bad_response"}


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(200):
            f.write(json.dumps({"prompt": f"Question number {i}: how do I fix thing {i}?"}) + "\n")
    return path


def _cli(constitution: Path, prompts: Path, *extra: str):
    """`cai generate --constitution ... --prompts ... EXTRA`, in this process."""
    args = ["generate", "--constitution", str(constitution), "--prompts", str(prompts)]
    return CliRunner().invoke(cli, [*args, *extra])


def _generate(server: FakeServer, constitution: Path, prompts: Path, out: Path, *extra: str):
    url = server.url + "/v1"
    return _cli(
        constitution, prompts, "--provider", "openai", "--base-url", url, "--model", "fake-model",
        "--out", str(out), *extra,
    )  # fmt: skip


def _prompt_file(tmp_path: Path, *prompts: str) -> Path:
    path = tmp_path / "p.txt"
    path.write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    return path


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def test_faulted_run_then_resume(
    tmp_path: Path, prompts: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    out = tmp_path / "run"
    options = ("--concurrency", "64", "--max-retries", "2", "--timeout", "2", "--rounds", "2")
    with FakeServer(fault_rate=0.2, seed=3, retry_after=0.02, slow_seconds=5.0) as server:
        first = _generate(server, mini_constitution, prompts, out, *options)
        first_requests = server.requests
        faults = dict(server.fault_counts)
        first_records = _records(out)
        server.reset()
        second = _generate(server, mini_constitution, prompts, out, *options)
        second_log = list(server.log)

    # Every fault kind happened, about one request in five.
    assert set(faults) == {"429", "500", "529", "drop", "slow", "malformed", "truncated", "refused"}
    assert 0.15 < sum(faults.values()) / first_requests < 0.25

    # The first run: every prompt done or failed with a reason, none written twice.
    assert first.exit_code == 3, first.output
    assert len(first_records) == 200
    assert len({r["id"] for r in first_records}) == 200
    failed = [r for r in first_records if r["status"] == "failed"]
    assert failed, "seed 3 fails some prompts after 2 retries"
    for r in failed:
        assert r["error"]["kind"] in RETRYABLE and r["error"]["message"]
    for r in first_records:
        assert r["status"] in ("ok", "failed")
    summary = first.stderr
    retries = re.search(r"retries: (\d+) \(([^)]*)\)", summary)
    assert retries and int(retries.group(1)) > 0, summary
    kinds = dict(
        (kind, int(n)) for kind, n in (part.split() for part in retries.group(2).split(", "))
    )
    assert set(kinds) <= RETRYABLE and sum(kinds.values()) == int(retries.group(1))
    assert f"{200 - len(failed)} records written, {len(failed)} failed" in summary

    # Cut-off and refused replies are recorded on the round and never used as the answer.
    problems = Counter(r_["problem"] for r in first_records for r_ in r["rounds"] if r_["problem"])
    assert set(problems) <= {"length", "content_filter"} and problems
    for r in first_records:
        usable = [r["initial_response"]] + [
            x["revision"] for x in r["rounds"] if x["revision"] is not None and not x["problem"]
        ]
        if r["status"] == "ok":
            assert r["final_response"] == usable[-1]

    # The second run retries only the failed prompts, and finishes them.
    assert second.exit_code == 0, second.output
    assert f"{len(failed)} records written, 0 failed, {200 - len(failed)} already done" in (
        second.stderr
    )
    failed_prompts = {r["prompt"][-1]["content"] for r in failed}
    for entry in second_log:
        asked = {m["content"] for m in entry.body["messages"] if m["role"] == "user"}
        assert asked & failed_prompts, "a finished prompt was called again"
    final = _records(out)
    assert len(final) == 200 and len({r["id"] for r in final}) == 200
    assert all(r["status"] == "ok" for r in final)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"records": 200, "ok": 200}
    _assert_no_key_anywhere(tmp_path)


def _assert_no_key_anywhere(root: Path) -> None:
    written = [p for p in root.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert PLANTED_KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"
        assert PLANTED_KEY[-12:].encode() not in path.read_bytes(), f"key fragment in {path}"


def test_no_api_key_in_any_file_a_run_writes(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", PLANTED_KEY)
    monkeypatch.chdir(tmp_path)
    prompts = _prompt_file(tmp_path, "Say hi.", "Say bye.")
    # The server insists on the planted key: the run can only succeed if it was really sent.
    with FakeServer(api_key=PLANTED_KEY, fault_rate=0.2, faults=["429", "500"]) as server:
        for provider, url in (("openai", server.url + "/v1"), ("anthropic", server.url)):
            result = _cli(
                mini_constitution, prompts, "--provider", provider, "--base-url", url,
                "--rounds", "1", "--out", f"outputs/{provider}",
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert PLANTED_KEY not in result.output
    runs = list((tmp_path / "outputs").iterdir())
    assert runs and all((run / "records.jsonl").exists() for run in runs)
    # Through the whole pipeline, Anthropic calls wrote the constitution prefix to the cache
    # once per distinct prefix and read it after; the records carry those counts.
    usage = json.loads((tmp_path / "outputs" / "anthropic" / "manifest.json").read_text())["stats"][
        "usage"
    ]
    assert usage["cache_creation_input_tokens"] > 0 and usage["cache_read_input_tokens"] > 0
    records = _records(tmp_path / "outputs" / "anthropic")
    assert (
        sum(r["usage"]["cache_read_input_tokens"] for r in records)
        == (usage["cache_read_input_tokens"])
    )
    _assert_no_key_anywhere(tmp_path)


def test_rpm_spaces_requests_out(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, *(f"Prompt {i}" for i in range(25)))
    with FakeServer() as server:
        result = _generate(
            server, mini_constitution, prompts, tmp_path / "run", "--rounds", "0", "--rpm", "600"
        )
        requests = server.requests
    assert result.exit_code == 0, result.output
    assert requests == 25
    # 600 a minute: a burst of one second's worth (10), then one every 0.1 s, so the last of
    # 25 calls cannot start before 1.5 s (a busy machine only makes it later).
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stats"]["seconds"] >= 1.45
    assert manifest["config"]["rpm"] == 600
    assert re.search(r"waited \d+\.\ds for rate limits", result.stderr)


def test_cost_in_summary_and_manifest_from_a_price_table(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, "Say hi.", "Say bye.")
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps(
            {"as_of": "2030-01-01", "models": {"fake-model": {"input": 100, "output": 1000}}}
        )
    )
    with FakeServer() as server:
        result = _generate(
            server, mini_constitution, prompts, tmp_path / "run", "--price-table", str(table)
        )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    usage = manifest["stats"]["usage"]
    expected = (usage["input_tokens"] * 100 + usage["output_tokens"] * 1000) / 1e6
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert manifest["stats"]["cost_usd"] == round(expected, 6)
    assert manifest["config"]["prices_as_of"] == "2030-01-01"
    assert f"estimated cost {format_cost(expected)}" in result.stderr


def test_a_bad_price_table_is_a_clear_error(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    table = tmp_path / "prices.json"
    table.write_text('{"models": {\n  "m": {"input": 1,}\n}}')
    prompts = _prompt_file(tmp_path, "Say hi.")
    with FakeServer() as server:
        result = _generate(
            server, mini_constitution, prompts, tmp_path / "run", "--price-table", str(table)
        )
        assert server.requests == 0
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {table}:2: not valid JSON")
    assert not (tmp_path / "run").exists()


def test_dry_run_calls_nothing_and_writes_nothing(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    prompts = _prompt_file(tmp_path, *(f"Prompt {i}" for i in range(7)))
    result = _cli(
        mini_constitution, prompts, "--provider", "anthropic", "--rounds", "3",
        "--max-tokens", "100", "--dry-run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.md", "p.txt"]
    lines = result.stdout.splitlines()
    assert lines[1] == "Prompts: 7 (3 round(s) each)"
    assert lines[2].startswith("Calls: at most 49 (7 initial, 21 critiques, 21 revisions;")
    plan = plan_run(
        PromptSource(str(prompts)),
        load_constitution(mini_constitution),
        GenerateConfig(rounds=3, max_tokens=100),
        model="claude-sonnet-5-5",
        price=load_price_table().lookup("claude-sonnet-5-5"),
    )
    assert plan.usage.output_tokens == 49 * 100
    assert f"output at most {49 * 100:,}" in lines[3]
    assert lines[4].startswith(f"Cost: at most {format_cost(plan.cost_usd)} (claude-sonnet-5-5")


@pytest.mark.parametrize(
    ("server_options", "message"),
    [
        ({"api_key": "sk-right"}, r"the server refused the key \(401\) - check OPENAI_API_KEY"),
        (
            {"fault_rate": 1.0, "faults": ["quota"]},
            r"the account of the key in OPENAI_API_KEY has no quota left "
            r"\(429 insufficient_quota\) - check its plan and billing",
        ),
    ],
)
def test_a_refused_key_stops_the_run_with_one_line(
    tmp_path: Path,
    mini_constitution: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_options: dict,
    message: str,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    prompts = _prompt_file(tmp_path, *(f"Prompt {i}" for i in range(50)))
    with FakeServer(**server_options) as server:
        result = _generate(
            server, mini_constitution, prompts, tmp_path / "run", "--concurrency", "4"
        )
        # Only the calls already in flight were made, not one per prompt.
        assert server.requests <= 4
    assert result.exit_code == 2
    assert re.fullmatch(
        rf"Error: {message} \(request id req_fake_\d{{6}}\)",
        result.stderr.strip().splitlines()[-1],
    )
    assert "sk-wrong" not in result.output
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "error"
