"""One ledger: tokens, calls and cost of a run come from its call journal (calls.jsonl), every
invocation counted and each call priced at its own model and mode; `cai stats`, the dataset
card and the report all show it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer

from cai.cli import cli
from cai.constitution import load_constitution
from cai.ledger import BATCH, INTERACTIVE, Budget, read_ledger, step_kind, tagged_journal
from cai.merge import merge_runs
from cai.pipeline import GenerateConfig, build_manifest, run_generation
from cai.pricing import batch_price, format_cost, load_price_table
from cai.providers import create_provider
from cai.rundir import RunStore
from cai.sources import PromptSource

MODEL = "gpt-5.4-mini"
PRICE = load_price_table().lookup(MODEL)


def test_steps_are_named_by_kind() -> None:
    assert step_kind("initial") == "initial"
    assert step_kind("round2.critique") == "critique"
    assert step_kind("round1.revision") == "revision"
    assert step_kind("0-1.vote3.ab") == "vote"
    assert step_kind("vote1.ba") == "vote"
    assert step_kind("response0") == "policy"
    assert step_kind("prompts3") == "prompts"
    assert step_kind("generate") == step_kind("generate.retry2") == "prompts"
    assert step_kind("something else") == "other"


def _line(record: str, step: str, inp: int, out: int, **tags: str) -> dict:
    usage = {"input_tokens": inp, "output_tokens": out, "calls": 1}
    return {"id": record, "step": step, "text": "t", "usage": usage, **tags}


def _write(run: Path, calls: list[dict], manifest: dict, batches: list[dict] = ()) -> None:
    run.mkdir()
    (run / "calls.jsonl").write_text("".join(json.dumps(c) + "\n" for c in calls))
    (run / "manifest.json").write_text(json.dumps(manifest))
    if batches:
        (run / "batches.jsonl").write_text("".join(json.dumps(b) + "\n" for b in batches))


def test_each_call_is_priced_at_its_own_mode_and_older_lines_read_sensibly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    calls = [
        _line("a", "initial", 1000, 100, provider="openai", model=MODEL, mode=INTERACTIVE),
        _line("a", "round1.critique", 2000, 200, provider="openai", model=MODEL, mode=BATCH),
        # Lines of an older cai name no mode or model: the run's model, and the batch mode
        # when the request went out in one of the run's batches.
        _line("b", "initial", 1000, 100),
        _line("b", "round1.critique", 3000, 300),
    ]
    manifest = {"cai_version": "0", "config": {"provider": "openai", "model": MODEL}}
    batch = {"event": "created", "id": "batch_1", "custom_ids": ["b-round1_critique"]}
    _write(run, calls, manifest, [batch])
    ledger = read_ledger(run)
    half = batch_price(PRICE)
    want = (
        PRICE.cost(_usage(1000, 100))
        + half.cost(_usage(2000, 200))
        + PRICE.cost(_usage(1000, 100))
        + half.cost(_usage(3000, 300))
    )
    assert ledger.cost_usd == pytest.approx(want)
    assert ledger.usage.calls == 4
    assert ledger.usage.input_tokens == 7000 and ledger.usage.output_tokens == 700
    data = ledger.to_dict()
    assert data["by_mode"]["batch"]["calls"] == 2 and data["by_mode"]["interactive"]["calls"] == 2
    assert data["by_step"]["initial"]["cost_usd"] == pytest.approx(
        2 * PRICE.cost(_usage(1000, 100)), abs=1e-6
    )
    assert list(data["by_step"]) == ["initial", "critique"]
    # One record's calls alone (cai compare's shared records).
    only_a = read_ledger(run, ids={"a"})
    assert only_a.usage.calls == 2
    assert only_a.cost_usd == pytest.approx(
        PRICE.cost(_usage(1000, 100)) + half.cost(_usage(2000, 200))
    )
    # The journal as merge copies it names every line's mode, so it prices the same elsewhere.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "calls.jsonl").write_bytes(b"".join(tagged_journal(run)))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert read_ledger(copy).cost_usd == pytest.approx(want)


def _usage(inp: int, out: int):
    from cai.providers.base import Usage

    return Usage(inp, out, calls=1)


def test_a_model_with_no_price_leaves_the_cost_unknown_and_says_which(tmp_path: Path) -> None:
    run = tmp_path / "run"
    calls = [_line("a", "initial", 10, 10, provider="openai", model="no-such-model")]
    _write(
        run, calls, {"cai_version": "0", "config": {"provider": "openai", "model": "no-such-model"}}
    )
    ledger = read_ledger(run)
    assert ledger.cost_usd is None and ledger.unpriced_models == {"no-such-model"}
    assert ledger.usage.calls == 1


# -- a run interrupted twice, resumed, finished in batch mode --------------------------------


def _prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: is this safe?"}) + "\n" for i in range(n))
    )
    return path


def _generate(
    server: FakeServer, constitution: Path, prompts: Path, run: Path, *flags: str
) -> Result:
    """`cai generate` of one round with MODEL on `server` into `run`, and FLAGS; it succeeds."""
    result = CliRunner().invoke(cli, [
        "generate", "--constitution", str(constitution), "--prompts", str(prompts),
        "--provider", "openai", "--model", MODEL, "--base-url", server.url + "/v1",
        "--rounds", "1", "--out", str(run), *flags,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def _invocation(
    server: FakeServer, run: Path, constitution: Path, prompts: Path, stop_after: int | None
) -> None:
    """One interactive invocation of the run, stopped (as by Ctrl-C) once `stop_after` more
    records are written."""
    parsed = load_constitution(constitution)
    source = PromptSource(str(prompts))
    config = GenerateConfig(rounds=1, concurrency=2)
    provider = create_provider("openai", model=MODEL, base_url=server.url + "/v1")
    manifest = build_manifest(parsed, source, config, provider, base_url=server.url + "/v1")
    stop = asyncio.Event()
    written = 0

    def on_event(kind: str, data: object) -> None:
        nonlocal written
        if kind == "record":
            written += 1
            if stop_after is not None and written >= stop_after:
                stop.set()

    async def go():
        try:
            return await run_generation(
                source, parsed, provider, config, RunStore(run), manifest=manifest,
                on_event=on_event, stop=stop,
            )  # fmt: skip
        finally:
            await provider.aclose()

    stats = asyncio.run(go())
    assert stats.interrupted == (stop_after is not None)


def _journal_sum(lines: list[dict], batch_from: int) -> tuple[int, int, int, float]:
    """(input tokens, output tokens, calls, USD) over journal lines, each priced by hand: the
    lines from `batch_from` on were made in batch mode."""
    inp = out = 0
    cost = 0.0
    for n, line in enumerate(lines):
        u = line["usage"]
        inp += u["input_tokens"]
        out += u["output_tokens"]
        rate = batch_price(PRICE) if n >= batch_from else PRICE
        cost += (u["input_tokens"] * rate.input + u["output_tokens"] * rate.output) / 1e6
    return inp, out, len(lines), cost


def _figures(text: str) -> tuple[int, int, int, str]:
    """(in, out, calls, cost) from a ledger's text lines, as stats, the card and the report print."""
    tokens = re.search(r"Tokens: ([\d,]+) in, ([\d,]+) out over ([\d,]+) calls", text)
    cost = re.search(r"Cost: (\$[\d,.]+)", text)
    assert tokens and cost, text
    inp, out, calls = (int(g.replace(",", "")) for g in tokens.groups())
    return inp, out, calls, cost.group(1)


def test_stats_card_and_report_agree_with_the_journal_over_every_invocation(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 12)
    run = tmp_path / "run"
    with FakeServer() as server:
        _invocation(server, run, mini_constitution, prompts, stop_after=3)
        _invocation(server, run, mini_constitution, prompts, stop_after=3)
        interactive = len((run / "calls.jsonl").read_text().splitlines())
        result = _generate(
            server, mini_constitution, prompts, run,
            "--concurrency", "2", "--batch", "--poll-interval", "0.05",
        )  # fmt: skip
    lines = [json.loads(x) for x in (run / "calls.jsonl").read_text().splitlines()]
    assert interactive < len(lines), "the batch invocation made no call"
    inp, out, calls, cost = _journal_sum(lines, interactive)
    want = (inp, out, calls, format_cost(cost))
    # The end-of-run summary shows the run in all, not only its last invocation.
    summary = result.stderr.split("The run in all", 1)[1]
    assert _figures(summary) == want

    data = json.loads(CliRunner().invoke(cli, ["stats", str(run), "--json"]).stdout)
    assert (
        data["usage"]["input_tokens"],
        data["usage"]["output_tokens"],
        data["usage"]["calls"],
    ) == (inp, out, calls)
    assert data["cost_usd"] == pytest.approx(cost, abs=1e-6)
    assert data["ledger"]["by_mode"]["batch"]["calls"] == len(lines) - interactive
    assert data["ledger"]["by_mode"]["interactive"]["calls"] == interactive
    steps = data["ledger"]["by_step"]
    assert sum(s["cost_usd"] for s in steps.values()) == pytest.approx(cost, abs=1e-5)
    assert set(steps) <= {"initial", "critique", "revision"} and "initial" in steps

    text = CliRunner().invoke(cli, ["stats", str(run)]).stdout
    assert _figures(text) == want

    export = CliRunner().invoke(
        cli, ["export", str(run), "--format", "dpo", "--out", str(tmp_path / "dpo.jsonl")]
    )
    assert export.exit_code == 0, export.output
    card = (tmp_path / "dpo.README.md").read_text()
    assert _figures(card) == want

    report = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text()
    tokens = re.search(
        r"<li>([\d,]+) in, ([\d,]+) out</li>\s*(?:<li>.*?</li>\s*)?<li>([\d,]+) calls</li>", html
    )
    assert tokens, html[:2000]
    cost_line = re.search(r"<li>Cost: (\$[\d,.]+)", html)
    assert cost_line
    figures = (*(int(g.replace(",", "")) for g in tokens.groups()), cost_line.group(1))
    assert figures == want


def test_merged_shards_count_every_call_of_every_shard(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 8)
    runs = []
    with FakeServer() as server:
        for k in (1, 2):
            run = tmp_path / f"shard{k}"
            _generate(server, mini_constitution, prompts, run, "--shard", f"{k}/2")
            runs.append(run)
    merged = tmp_path / "merged"
    merge_runs(runs, merged)
    each = [read_ledger(r) for r in runs]
    ledger = read_ledger(merged)
    assert ledger.usage.calls == sum(x.usage.calls for x in each) > 0
    assert ledger.cost_usd == pytest.approx(sum(x.cost_usd for x in each))


def test_budget_waits_for_calls_in_flight_and_refuses_only_when_none_could_free_room() -> None:
    async def go() -> None:
        budget = Budget(1.0, spent=0.2)
        closed = []
        budget.on_closed = lambda: closed.append(True)
        assert await budget.reserve(0.5)
        # 0.2 spent + 0.5 reserved + 0.5 > 1.0, but the call in flight may cost less: wait.
        waiter = asyncio.ensure_future(budget.reserve(0.5))
        await asyncio.sleep(0)
        assert not waiter.done()
        budget.settle(0.5, 0.1)  # it cost 0.1: room for the waiter
        assert await waiter
        assert budget.spent == pytest.approx(0.3) and budget.reserved == pytest.approx(0.5)
        # More than is left even if the call in flight cost nothing: refused at once.
        assert not await budget.reserve(0.8)
        assert budget.closed and not closed  # the call in flight is still to be journaled
        budget.settle(0.5, 0.4)
        assert closed == [True]
        assert budget.spent == pytest.approx(0.7) and budget.spent <= budget.limit
        assert not await budget.reserve(0.01)  # closed: nothing more is sent

    asyncio.run(go())


def test_settings_not_sent_say_so_in_the_manifest_card_and_report(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """claude-sonnet-5-5 takes no temperature or top_p, and Anthropic no seed: the run records
    temperature 0.7 as asked but says it was not sent, wherever the settings are shown."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    run = tmp_path / "run"
    with FakeServer() as server:
        result = CliRunner().invoke(cli, [
            "generate", "--constitution", str(mini_constitution), "--prompts", str(prompts),
            "--provider", "anthropic", "--model", "claude-sonnet-5-5", "--base-url", server.url,
            "--rounds", "1", "--temperature", "0.7", "--out", str(run),
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
        sent_bodies = [e.body for e in server.log if isinstance(e.body, dict)]
    assert sent_bodies and not any("temperature" in b for b in sent_bodies)
    sent = json.loads((run / "manifest.json").read_text())["config"]["sampling_sent"]
    assert sent["sent"] == {"max_tokens": 512}
    assert sent["not_sent"]["temperature"] == "claude-sonnet-5-5 takes no temperature"
    assert sent["not_sent"]["seed"] == "anthropic takes no seed"
    assert set(sent["not_sent"]) == {"temperature", "top_p", "seed"}

    export = CliRunner().invoke(
        cli, ["export", str(run), "--format", "sft", "--out", str(tmp_path / "s.jsonl")]
    )
    assert export.exit_code == 0, export.output
    card = (tmp_path / "s.README.md").read_text()
    assert "not sent (claude-sonnet-5-5 takes no temperature)" in card
    assert "not sent (anthropic takes no seed)" in card
    assert (
        CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r.html")]).exit_code
        == 0
    )
    html = (tmp_path / "r.html").read_text()
    assert "temperature not sent (claude-sonnet-5-5 takes no temperature)" in html
    # Anthropic reports prompt-cache reads and writes: the ledger shows them.
    data = json.loads(CliRunner().invoke(cli, ["stats", str(run), "--json"]).stdout)
    usage = data["ledger"]["usage"]
    assert usage["cache_read_input_tokens"] > 0 and usage["cache_creation_input_tokens"] > 0
    text = CliRunner().invoke(cli, ["stats", str(run)]).stdout
    assert f"{usage['cache_read_input_tokens']:,} cached input read" in text


def test_settings_sent_are_recorded_as_sent(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    run = tmp_path / "run"
    with FakeServer() as server:
        _generate(server, mini_constitution, prompts, run, "--temperature", "0.3")
        assert all(e.body["temperature"] == 0.3 for e in server.log if isinstance(e.body, dict))
    sent = json.loads((run / "manifest.json").read_text())["config"]["sampling_sent"]
    assert sent["sent"] == {"temperature": 0.3, "max_tokens": 512, "seed": "per call, drawn from 0"}
    assert sent["not_sent"] == {"top_p": "unset: the provider's default applies"}


def test_a_label_runs_report_shows_the_votes_settings_as_sent(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vote is sent its own few tokens, not the run's --max-tokens: the label run's report
    shows what was sent (it showed 512)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    run, labels = tmp_path / "run", tmp_path / "labels"
    with FakeServer() as server:
        _generate(server, mini_constitution, prompts, run)
        result = CliRunner().invoke(cli, ["label", str(run), "--out", str(labels)])
        assert result.exit_code == 0, result.output
        votes = [e.body["max_tokens"] for e in server.log if "logprobs" in (e.body or {})]
    sent = json.loads((labels / "manifest.json").read_text())["config"]["sampling_sent"]
    assert votes and set(votes) == {sent["sent"]["max_tokens"]} and votes[0] != 512
    page = tmp_path / "r.html"
    assert CliRunner().invoke(cli, ["report", str(labels), "--out", str(page)]).exit_code == 0
    html = page.read_text()
    assert f"max_tokens {votes[0]}" in html and "max_tokens 512" not in html
