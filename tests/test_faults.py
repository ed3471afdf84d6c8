"""Whole runs through the CLI against the fake server: faults, retries, resume, rate limits,
cost, dry runs, and no API key in any file a run writes."""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import Canned, FakeServer

from cai.cli import cli
from cai.constitution import load_constitution
from cai.pipeline import GenerateConfig
from cai.plan import plan_run
from cai.pricing import format_cost, load_price_table
from cai.providers.base import Completion
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
    # This invocation's cost, then the run's ledger: the same here, as the run made one.
    assert f"out, {format_cost(expected)}" in result.stderr
    assert f"  Cost: {format_cost(expected)}" in result.stderr


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
    assert lines[1] == "Prompts: 7 (3 rounds each)"
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
    assert lines[4].startswith(
        f"Cost: {format_cost(plan.low_cost_usd)} to {format_cost(plan.cost_usd)} "
        "(claude-sonnet-5-5 at interactive rates"
    )


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


# -- holes of issue 11 ------------------------------------------------------------------------


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CONTENT_A_LIST = {
    "id": "chatcmpl-odd",
    "choices": [{"message": {"content": ["not", "text"]}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3},
}


def test_a_reply_of_the_wrong_shape_fails_its_prompt_not_the_run(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, "Prompt A", "Prompt B", "Prompt C")
    out = tmp_path / "run"
    with FakeServer() as server:
        # Both attempts (--max-retries 1) of prompt B's first call get a list for content.
        server.enqueue(Canned(body=_CONTENT_A_LIST), match="Prompt B", times=2)
        first = _generate(server, mini_constitution, prompts, out, "--max-retries", "1")
        assert server.requests >= 2
    assert first.exit_code == 3, first.output
    records = {r["prompt"][-1]["content"]: r for r in _records(out)}
    assert records["Prompt B"]["status"] == "failed"
    assert records["Prompt B"]["error"]["kind"] == "bad_response"
    assert records["Prompt A"]["status"] == records["Prompt C"]["status"] == "ok"
    assert "1 failed" in first.stderr and "retries: 1 (bad_response 1)" in first.stderr
    # Every journaled reply replays; a line of another shape (an older version's) is called
    # again rather than crashing the rerun.
    calls = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    for call in calls:
        Completion.from_dict(call)
    # (An absurd usage count is no such line: the reply is reused with the count read as 0.)
    bad_line = {"id": records["Prompt B"]["id"], "step": "initial", "text": "Hi",
                "finish_reason": "sideways", "usage": {"output_tokens": 3}}  # fmt: skip
    with (out / "calls.jsonl").open("a") as f:
        f.write(json.dumps(bad_line) + "\n")
    with FakeServer() as server:
        second = _generate(server, mini_constitution, prompts, out, "--max-retries", "1")
        asked = [e.body["messages"][-1]["content"] for e in server.log]
    assert second.exit_code == 0, second.output
    assert "Prompt B" in asked  # the bad journal line was not used
    assert all(r["status"] == "ok" for r in _records(out))


def test_exit_3_while_failed_prompts_remain_even_under_no_retry_failed(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, "Prompt A", "Prompt B")
    out = tmp_path / "run"
    with FakeServer() as server:
        server.enqueue(Canned(status=400, body={"error": {"message": "no"}}), match="Prompt B")
        first = _generate(server, mini_constitution, prompts, out)
        kept = _generate(server, mini_constitution, prompts, out, "--no-retry-failed")
    assert first.exit_code == 3, first.output
    assert kept.exit_code == 3, kept.output
    assert "1 failed before, kept (--no-retry-failed)" in kept.stderr
    assert json.loads((out / "manifest.json").read_text())["status"] == "partial"


@pytest.mark.parametrize("variable", ["HF_TOKEN", "GITHUB_TOKEN", "OPENAI_API_KEY"])
def test_secrets_are_redacted_on_the_terminal(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    secret = "tok-PLANTED-1c55d04b2e7f3e9a"
    monkeypatch.setenv(variable, secret)
    # Whatever carries a secret into a message (here a path) must not print it.
    missing = tmp_path / f"prompts-{secret}.jsonl"
    result = _cli(mini_constitution, missing, "--provider", "openai", "--base-url", "http://x/v1")
    assert result.exit_code == 2
    assert secret not in result.output and "[REDACTED]" in result.stderr


def test_a_refused_connection_says_so_and_no_export_is_suggested(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    port = _free_port()
    prompts = _prompt_file(tmp_path, "Prompt A", "Prompt B")
    out = tmp_path / "run"
    result = _cli(
        mini_constitution, prompts, "--provider", "openai", "--base-url",
        f"http://127.0.0.1:{port}/v1", "--out", str(out), "--max-retries", "0",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    for record in _records(out):
        assert record["error"]["kind"] == "connection_refused"
        assert f"connection refused by 127.0.0.1:{port}" in record["error"]["message"]
    assert "Next: cai export" not in result.stderr
    assert "No prompt succeeded, so there is nothing to export" in result.stderr
    assert f"connection refused by 127.0.0.1:{port}" in result.stderr


def test_an_unwritable_out_says_which_folder_and_why(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, "Prompt A")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    with FakeServer() as server:
        result = _generate(server, mini_constitution, prompts, a_file / "run")
        assert server.requests == 0
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "Errno" not in line
    assert line.startswith(f"Error: cannot write the run to {a_file / 'run'}: ")
    assert f"{a_file} is not a folder" in line


def test_a_base_url_with_user_and_password_is_sent_as_basic_auth(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = _prompt_file(tmp_path, "Prompt A")
    out = tmp_path / "run"
    password = "p@ss word-PLANTED-93e7"
    with FakeServer(basic_auth=("alice", password)) as server:
        host = server.url.removeprefix("http://")
        url = f"http://alice:{password.replace('@', '%40').replace(' ', '%20')}@{host}/v1"
        result = _cli(mini_constitution, prompts, "--provider", "openai", "--base-url", url,
                      "--out", str(out), "--max-retries", "0", "--rounds", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["config"]["base_url"] == (
        f"http://{host}/v1"
    )
    for path in out.rglob("*"):
        if path.is_file():
            assert b"PLANTED" not in path.read_bytes(), path


def test_a_cut_off_critique_is_not_a_round_that_found_nothing_to_change(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompt_file(tmp_path, "Prompt A")
    out = tmp_path / "run"
    cut = {
        "id": "chatcmpl-cut",
        "choices": [{"message": {"content": "The response"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 3},
    }
    with FakeServer() as server:
        server.enqueue(Canned(body=cut), match="NO CHANGES NEEDED")  # the first critique
        result = _generate(server, mini_constitution, prompts, out, "--rounds", "1")
    assert result.exit_code == 0, result.output
    (round_,) = _records(out)[0]["rounds"]
    assert round_["critique_failed"] is True and round_["skipped"] is False
    assert round_["problem"] == "length" and round_["revision"] is None
    assert "0 rounds found nothing to change, 1 round cut off or refused" in result.stderr


def test_records_written_before_critique_failed_load_with_the_same_meaning() -> None:
    from cai.records import Record

    old = {"index": 1, "principle": "harm", "critique_request": "?", "critique": "The resp",
           "skipped": True, "critique_finish_reason": "length", "problem": "length"}  # fmt: skip
    no_change = {**old, "critique": "Fine.\nNO CHANGES NEEDED", "problem": None,
                 "critique_finish_reason": "stop"}  # fmt: skip
    record = Record.from_dict({"id": "ab", "prompt": [], "rounds": [old, no_change]})
    cut, fine = record.rounds
    assert (cut.critique_failed, cut.skipped, cut.state) == (True, False, "critique_failed")
    assert (fine.critique_failed, fine.skipped, fine.state) == (False, True, "no_change")
    assert Record.from_dict(record.to_dict()) == record
