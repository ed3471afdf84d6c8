"""Crash-safe runs: torn lines, kills between a reply and its record, duplicates, run identity,
interrupts, failed prompts, sharding and merging, and API keys that must reach no file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import MINI_CONSTITUTION
from fake_server import FakeServer
from fakes import FakeProvider, echo_reply

from cai.cli import cli
from cai.constitution import parse_constitution
from cai.errors import (
    BadRequestError,
    ConfigError,
    InputError,
    RateLimitError,
    RunMismatchError,
)
from cai.merge import merge_runs
from cai.pipeline import GenerateConfig, in_shard, run_generation
from cai.rundir import RunStore, read_records
from cai.sources import PromptItem, prompt_id

CONSTITUTION = parse_constitution(MINI_CONSTITUTION, path="mini.md")


def item(text: str, line: int = 1) -> PromptItem:
    messages = [{"role": "user", "content": text}]
    return PromptItem(prompt_id(messages), messages, line)


PROMPTS = [item(f"question {i}", i + 1) for i in range(12)]


def generate(
    run_dir: Path, provider: FakeProvider, prompts=PROMPTS, on_event=None, stop=None, **config
):
    config.setdefault("rounds", 1)
    events: list[tuple[str, object]] = []

    def record(kind: str, data: object) -> None:
        events.append((kind, data))
        if on_event is not None:
            on_event(kind, data)

    async def go():
        return await run_generation(
            prompts, CONSTITUTION, provider, GenerateConfig(**config), RunStore(run_dir),
            on_event=record, stop=stop,
        )  # fmt: skip

    stats = asyncio.run(go())
    return stats, events


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def ids_once(run_dir: Path) -> list[str]:
    """The ids in records.jsonl, checking that each line is whole JSON and each id appears once."""
    ids = [json.loads(line)["id"] for line in lines(run_dir / "records.jsonl")]
    assert len(ids) == len(set(ids)), "a prompt was written twice"
    return sorted(ids)


ALL_IDS = sorted(p.id for p in PROMPTS)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_constitution: Path) -> Path:
    """The current directory for `cai` commands: holds mini.md, gets p.jsonl from `write_prompts`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return tmp_path


def write_prompts(count: int) -> None:
    Path("p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(count))
    )


def cai_generate(server: FakeServer, *extra: str) -> Result:
    """`cai generate` of p.jsonl with mini.md, one round, against the fake server."""
    return CliRunner().invoke(cli, [
        "generate", "--constitution", "mini.md", "--prompts", "p.jsonl", "--rounds", "1",
        "--provider", "openai", "--base-url", server.url + "/v1", *extra,
    ])  # fmt: skip


# -- torn lines, kills between a reply and its record, duplicates -----------------------------


def test_torn_last_record_line_is_reported_repaired_and_never_breaks_export(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:5])
    whole = (run / "records.jsonl").read_bytes()
    last = whole.splitlines(keepends=True)[-1]
    torn = whole[: -len(last)] + last[: len(last) // 2]  # killed halfway through the last write
    (run / "records.jsonl").write_bytes(torn)

    exported = CliRunner().invoke(
        cli, ["export", str(run), "--format", "sft", "--out", str(tmp_path / "sft.jsonl")]
    )
    assert exported.exit_code == 0, exported.output
    assert "Read 4 records" in exported.stderr  # the whole records, not the torn one

    provider = FakeProvider(respond=echo_reply)
    stats, events = generate(run, provider, PROMPTS[:5])
    notices = [data for kind, data in events if kind == "notice"]
    assert notices == [
        f"{run / 'records.jsonl'}: cut a torn last line ({len(last) // 2} bytes) left by a process "
        "that was killed while writing it"
    ]
    assert (stats.already_done, stats.done) == (4, 1)
    assert stats.journal_hits == 3 and stats.calls == 0  # its replies were all in the journal
    assert ids_once(run) == sorted(p.id for p in PROMPTS[:5])


def test_torn_journal_line_is_cut_and_the_call_made_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:1])
    (run / "records.jsonl").write_text("")
    calls = (run / "calls.jsonl").read_bytes()
    (run / "calls.jsonl").write_bytes(calls[:-10])
    provider = FakeProvider(respond=echo_reply)
    stats, events = generate(run, provider, PROMPTS[:1])
    assert [kind for kind, _ in events].count("notice") == 1
    assert stats.journal_hits == 2 and stats.calls == 1  # the torn reply is bought again
    assert ids_once(run) == [PROMPTS[0].id]


def test_whole_last_line_without_its_newline_is_kept(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:3])
    data = (run / "records.jsonl").read_bytes()
    (run / "records.jsonl").write_bytes(data[:-1])  # killed between the line and its newline
    provider = FakeProvider(respond=echo_reply)
    stats, events = generate(run, provider, PROMPTS[:3])
    assert [d for k, d in events if k == "notice"] == [
        f"{run / 'records.jsonl'}: added the newline missing after the last line"
    ]
    assert stats.already_done == 3 and provider.history == []
    assert (run / "records.jsonl").read_bytes() == data


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in cai catches it."""


def test_kill_between_a_reply_and_its_record_resumes_from_the_reply(tmp_path: Path) -> None:
    run = tmp_path / "run"
    paid: list[str] = []

    def dies_at_revision(messages):
        if "revised response only" in messages[-1]["content"]:
            raise Killed
        paid.append(messages[-1]["content"])
        return echo_reply(messages)

    with pytest.raises(Killed):
        generate(run, FakeProvider(respond=dies_at_revision), PROMPTS[:1], concurrency=1)
    assert lines(run / "records.jsonl") == []
    steps = [json.loads(line)["step"] for line in lines(run / "calls.jsonl")]
    assert steps == ["initial", "round1.critique"]

    again = FakeProvider(respond=echo_reply)
    stats, _ = generate(run, again, PROMPTS[:1])
    # Only the call that was never answered is made again.
    assert len(again.history) == 1
    assert "revised response only" in again.history[0].messages[-1]["content"]
    assert stats.journal_hits == 2
    (record,) = read_records(run)
    assert record.initial_response == echo_reply([{"role": "user", "content": paid[0]}])
    assert ids_once(run) == [PROMPTS[0].id]


def test_duplicate_and_foreign_lines_are_compacted_to_one_per_prompt(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:4])
    text = (run / "records.jsonl").read_text()
    first = text.splitlines()[0]
    failed_copy = json.dumps({**json.loads(first), "status": "failed"})
    (run / "records.jsonl").write_text(failed_copy + "\n" + text + first + "\n[1, 2]\n")
    stats, events = generate(run, FakeProvider(respond=echo_reply), PROMPTS[:4])
    assert [d for k, d in events if k == "notice"] == [
        f"{run / 'records.jsonl'}: dropped 1 line unreadable or not of the shape "
        "cai writes (their prompts are made again) and 2 duplicate records"
    ]
    assert stats.already_done == 4 and stats.calls == 0
    assert lines(run / "records.jsonl") == text.splitlines()  # the ok lines, in their order


def test_two_processes_never_write_one_run(tmp_path: Path) -> None:
    first, second = RunStore(tmp_path / "run"), RunStore(tmp_path / "run")
    first.lock()
    with pytest.raises(ConfigError, match=r"is being written by process \d+ \(cai\) on "):
        second.lock()
    first.unlock()
    second.lock()
    second.unlock()


# -- run identity -------------------------------------------------------------------------------


def test_resuming_with_other_settings_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:2], seed=1)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunMismatchError) as error:
        generate(run, FakeProvider(respond=echo_reply), PROMPTS[:2], seed=2, temperature=0.2)
    assert str(error.value) == (
        f"{run} was made with other settings (sampling was {{'temperature': 0.7, 'max_tokens': 512}}, "
        "now {'temperature': 0.2, 'max_tokens': 512}; seed was 1, now 2); "
        "to start a new run, pass --out with a new directory"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_records_without_a_manifest_are_not_resumed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    generate(run, FakeProvider(respond=echo_reply), PROMPTS[:2])
    (run / "manifest.json").unlink()
    with pytest.raises(RunMismatchError, match=r"holds records but no readable manifest\.json"):
        generate(run, FakeProvider(respond=echo_reply), PROMPTS[:2])


def test_cli_refuses_another_constitution_with_what_differs(workdir: Path) -> None:
    write_prompts(1)
    with FakeServer() as server:
        assert cai_generate(server, "--out", "run").exit_code == 0
        other = workdir / "other.md"
        other.write_text(MINI_CONSTITUTION.replace("Weight: 3", "Weight: 2"))
        before = (workdir / "run" / "records.jsonl").read_bytes()
        result = cai_generate(server, "--out", "run", "--constitution", str(other))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    message = result.stderr.strip()
    assert message.startswith("Error: run was made with other settings (constitution_sha256 was '")
    assert message.endswith("to start a new run, pass --out with a new directory")
    assert (workdir / "run" / "records.jsonl").read_bytes() == before


# -- interrupts ---------------------------------------------------------------------------------


def test_stop_finishes_calls_in_flight_and_leaves_their_chains_for_the_next_run(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    stop = asyncio.Event()
    provider = FakeProvider(respond=echo_reply, delay=0.01)

    def on_event(kind: str, data: object) -> None:
        if kind == "record" and sum(1 for _ in read_records(run)) >= 3:
            stop.set()

    stats, _ = generate(run, provider, on_event=on_event, stop=stop, concurrency=4, rounds=2)
    assert stats.interrupted
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    done = ids_once(run)
    assert 3 <= len(done) < len(PROMPTS)
    # Every reply that was bought is in the journal, whole.
    journal = [json.loads(line) for line in lines(run / "calls.jsonl")]
    assert len(journal) == len(provider.history)

    again = FakeProvider(respond=echo_reply)
    stats, _ = generate(run, again, concurrency=4, rounds=2)
    assert stats.already_done == len(done) and not stats.interrupted
    assert ids_once(run) == ALL_IDS
    # Nothing bought twice: the first run's replies for unfinished chains were reused.
    assert len(again.history) + len(provider.history) == len(lines(run / "calls.jsonl"))


def test_stop_does_not_wait_out_a_retry(tmp_path: Path) -> None:
    run = tmp_path / "run"
    stop = asyncio.Event()
    slow_down = PROMPTS[0].messages[0]["content"]

    def respond(messages):
        if messages[-1]["content"] == slow_down:
            return RateLimitError("slow down", status=429, retry_after=30)
        return echo_reply(messages)

    def on_event(kind: str, data: object) -> None:
        if kind == "retry":
            stop.set()

    started = time.monotonic()
    stats, _ = generate(
        run, FakeProvider(respond=respond, delay=0.01), on_event=on_event, stop=stop
    )
    assert time.monotonic() - started < 2  # not the 30 s the server asked for
    assert stats.interrupted and stats.retries == 1
    assert PROMPTS[0].id not in ids_once(run)

    stats, _ = generate(run, FakeProvider(respond=echo_reply))
    assert ids_once(run) == ALL_IDS


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cai", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_until(predicate, what: str = "the event", timeout: float = 300.0) -> None:
    """Poll until PREDICATE holds. The timeout only keeps a broken run from hanging the
    suite: it is far beyond any wait a busy machine needs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        time.sleep(0.01)


def _wait_for_lines(path: Path, count: int) -> None:
    _wait_until(
        lambda: path.exists() and path.read_bytes().count(b"\n") >= count,
        f"{path} reach {count} lines",
    )


CLI_PROMPTS = 16


@pytest.fixture
def cli_env(tmp_path: Path, mini_constitution: Path) -> dict[str, str]:
    (tmp_path / "p.jsonl").write_text(
        "".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(CLI_PROMPTS))
    )
    return {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize(
    "signals", [[signal.SIGINT], [signal.SIGINT, signal.SIGINT], [signal.SIGTERM]]
)
def test_ctrl_c_once_stops_cleanly_twice_quits_now(
    tmp_path: Path, cli_env: dict[str, str], signals: list[signal.Signals]
) -> None:
    presses = len(signals)
    with FakeServer() as server:
        args = ["generate", "--constitution", "mini.md", "--prompts", "p.jsonl", "--out", "run",
                "--rounds", "1", "--concurrency", "8", "--provider", "openai",
                "--base-url", server.url + "/v1"]  # fmt: skip
        # After the first 6 replies, calls stay in flight until the test lets them go, so
        # "at once" is an event (the process ended while calls were held), not a guess at how
        # long a reply takes, and the run cannot finish before the signals land.
        server.hold_after, server.hold_replies = 6, True
        process = _cli(*args, cwd=tmp_path, env=cli_env)
        _wait_for_lines(tmp_path / "run" / "calls.jsonl", 6)
        _wait_until(lambda: server.held > 0)
        for signum in signals:
            process.send_signal(signum)
            time.sleep(0.05)
        if presses == 2:
            _, stderr = process.communicate(timeout=300)
            assert server.held > 0, "quit only after the calls in flight"
            server.hold_replies = False
        else:
            server.hold_replies = False
            _, stderr = process.communicate(timeout=300)
        assert process.returncode == 130, stderr
        assert "Stopping: finishing calls in flight, starting no new ones." in stderr
        if presses == 2:
            assert (
                "Quit. To resume, run the same command with --out run (and without --fresh)."
                in stderr
            )
        else:
            assert "Run the same command again to resume." in stderr
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        done = ids_once(tmp_path / "run")
        assert len(done) < CLI_PROMPTS
        for line in lines(tmp_path / "run" / "calls.jsonl"):
            json.loads(line)  # every line whole

        resumed = _cli(*args, cwd=tmp_path, env=cli_env)
        _, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
        assert f"{len(done)} already done" in stderr
    assert len(ids_once(tmp_path / "run")) == CLI_PROMPTS


def test_an_error_mid_stream_keeps_what_was_done_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"

    def stream():
        yield from PROMPTS[:6]
        raise InputError("hf:some/dataset", 7, "empty prompt")

    with pytest.raises(InputError, match="hf:some/dataset:7: empty prompt"):
        generate(run, FakeProvider(respond=echo_reply), stream(), concurrency=2)
    assert json.loads((run / "manifest.json").read_text())["status"] == "error"
    done = ids_once(run)
    assert set(done) <= {p.id for p in PROMPTS[:6]}
    stats, _ = generate(run, FakeProvider(respond=echo_reply))
    assert stats.already_done == len(done)
    assert ids_once(run) == ALL_IDS


# -- failed prompts -----------------------------------------------------------------------------


def test_failed_prompts_are_retried_unless_no_retry_failed(workdir: Path) -> None:
    write_prompts(4)

    def run(server: FakeServer, *extra: str) -> Result:
        return cai_generate(server, "--out", "run", "--max-retries", "0", *extra)

    with FakeServer(fault_rate=1.0, faults=["500"]) as server:
        first = run(server)
    assert first.exit_code == 3
    assert "Run the same command again to resume and retry the failed prompts." in first.stderr
    statuses = lambda: sorted(r.status for r in read_records(workdir / "run"))  # noqa: E731
    assert statuses() == ["failed"] * 4

    with FakeServer() as server:
        kept = run(server, "--no-retry-failed")
        assert server.requests == 0
    # The run still ends with failed prompts: exit 3, and the summary says they were kept.
    assert kept.exit_code == 3 and "4 already done" in kept.stderr
    assert "4 failed before, kept (--no-retry-failed)" in kept.stderr
    assert statuses() == ["failed"] * 4

    with FakeServer() as server:
        retried = run(server)
    assert retried.exit_code == 0, retried.output
    assert statuses() == ["ok"] * 4
    assert len(ids_once(workdir / "run")) == 4


def test_default_run_dir_resumes_the_same_command_and_fresh_starts_anew(workdir: Path) -> None:
    write_prompts(1)
    with FakeServer() as server:
        first = cai_generate(server)
        again = cai_generate(server)
        fresh = cai_generate(server, "--fresh")
        other = cai_generate(server, "--seed", "5")
    assert [r.exit_code for r in (first, again, fresh, other)] == [0, 0, 0, 0]
    runs = sorted(p.name for p in (workdir / "outputs").iterdir())
    assert len(runs) == 3  # the same command resumed; --fresh and another seed made new runs
    assert "1 already done" in again.stderr
    assert first.stderr.splitlines()[0] == again.stderr.splitlines()[0]  # "Run directory: ..."
    assert first.stderr.splitlines()[0] != fresh.stderr.splitlines()[0]


# -- sharding and merging ---------------------------------------------------------------------


def test_shards_are_disjoint_and_cover_every_prompt() -> None:
    ids = [prompt_id([{"role": "user", "content": f"p{i}"}]) for i in range(500)]
    for n in (1, 2, 3, 7):
        shares = [[i for i in ids if in_shard(i, (k, n))] for k in range(1, n + 1)]
        assert sorted(i for share in shares for i in share) == sorted(ids)
        assert all(len(s) > 500 / n * 0.7 for s in shares)  # roughly even


def _content(run_dir: Path) -> dict[str, tuple]:
    return {r.id: (r.status, r.final_response, tuple(r.principles)) for r in read_records(run_dir)}


def test_merged_shards_equal_a_clean_run(tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    generate(clean, FakeProvider(respond=echo_reply))
    shards = [tmp_path / f"shard{k}" for k in (1, 2, 3)]
    for k, run in enumerate(shards, 1):
        stats, _ = generate(run, FakeProvider(respond=echo_reply), shard=(k, 3))
        assert stats.done == len(ids_once(run)) > 0
    # A shard given twice (copied from another machine) only adds duplicates.
    result = merge_runs([*shards, shards[0]], tmp_path / "merged")
    assert result.duplicates == len(ids_once(shards[0]))
    assert result.counts == {"records": 12, "ok": 12}
    assert result.missing_shards == []
    assert ids_once(tmp_path / "merged") == ALL_IDS
    assert _content(tmp_path / "merged") == _content(clean)
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["status"] == "merged"
    assert manifest["settings"] == json.loads((clean / "manifest.json").read_text())["settings"]
    assert [m["shard"] for m in manifest["merged_from"]] == [None, None, None, None]  # library runs
    # A merged run resumes like any run: nothing is left to do.
    stats, _ = generate(tmp_path / "merged", FakeProvider(respond=echo_reply))
    assert stats.already_done == 12 and stats.calls == 0


def test_merge_prefers_a_usable_record_to_a_failure(tmp_path: Path) -> None:
    failing = FakeProvider(respond=lambda m: BadRequestError("no"))
    generate(tmp_path / "a", failing, PROMPTS[:3])
    generate(tmp_path / "b", FakeProvider(respond=echo_reply), PROMPTS[1:4])
    result = merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert result.counts == {"records": 4, "failed": 1, "ok": 3}
    by_id = {r.id: r.status for r in read_records(tmp_path / "m")}
    assert by_id == {PROMPTS[0].id: "failed", **{p.id: "ok" for p in PROMPTS[1:4]}}


def test_merge_leaves_out_a_torn_line_of_a_killed_shard(tmp_path: Path) -> None:
    generate(tmp_path / "a", FakeProvider(respond=echo_reply), PROMPTS[:3])
    with (tmp_path / "a" / "records.jsonl").open("a") as f:
        f.write('{"id": "0123456789abcdef", "prompt": [{"ro')  # killed mid-write
    result = merge_runs([tmp_path / "a"], tmp_path / "m")
    assert result.counts == {"records": 3, "ok": 3}
    assert ids_once(tmp_path / "m") == sorted(p.id for p in PROMPTS[:3])
    assert (tmp_path / "a" / "records.jsonl").read_text().endswith('[{"ro')  # inputs untouched


def test_merge_refuses_runs_of_other_settings_or_constitutions(tmp_path: Path) -> None:
    generate(tmp_path / "a", FakeProvider(respond=echo_reply), PROMPTS[:2])
    generate(tmp_path / "b", FakeProvider(respond=echo_reply), PROMPTS[2:4], rounds=2)
    with pytest.raises(RunMismatchError) as error:
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert str(error.value) == (
        f"{tmp_path / 'b'} was made with other settings (rounds was 1, now 2) than "
        f"{tmp_path / 'a'}; merge only runs made with the same constitution and settings"
    )
    assert not (tmp_path / "m").exists()
    other = parse_constitution(
        MINI_CONSTITUTION + "\n## Principle: extra\nCritique: c\nRevision: r\n", path="x.md"
    )
    asyncio.run(
        run_generation(
            PROMPTS[4:5],
            other,
            FakeProvider(respond=echo_reply),
            GenerateConfig(rounds=1),
            RunStore(tmp_path / "c"),
        )
    )
    with pytest.raises(
        RunMismatchError, match=r"constitution_sha256 was '[0-9a-f]+', now '[0-9a-f]+'"
    ):
        merge_runs([tmp_path / "a", tmp_path / "c"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_cli_merge_of_shards_warns_of_a_missing_one(workdir: Path) -> None:
    write_prompts(9)
    with FakeServer() as server:
        for k in (1, 2, 3):
            result = cai_generate(server, "--shard", f"{k}/3", "--out", f"s{k}")
            assert result.exit_code == 0, result.output
    sizes = [len(ids_once(workdir / f"s{k}")) for k in (1, 2, 3)]
    assert sum(sizes) == 9

    partial = CliRunner().invoke(cli, ["merge", "s1", "s3", "--out", "m13"])
    assert partial.exit_code == 0
    assert partial.stderr.splitlines() == [
        f"Merged 2 runs into m13: {sizes[0] + sizes[2]} records ({sizes[0] + sizes[2]} ok), 0 duplicates dropped",
        "Warning: 1 shard not given (2/3); their prompts are missing.",
        "Next: cai export m13 --format dpo",
    ]
    full = CliRunner().invoke(cli, ["merge", "s1", "s2", "s3", "--out", "all"])
    assert full.exit_code == 0 and "9 records (9 ok)" in full.stderr
    assert len(ids_once(workdir / "all")) == 9

    again = CliRunner().invoke(cli, ["merge", "s1", "s2", "--out", "all"])
    assert again.exit_code == 2
    assert (
        again.stderr == "Error: --out all already exists and is not empty; pass a new directory\n"
    )
    missing = CliRunner().invoke(cli, ["merge", "s1", "nowhere", "--out", "x"])
    assert missing.stderr == (
        "Error: nowhere: no records.jsonl here; pass run directories made by cai generate "
        "or cai label\n"
    )
    assert not (workdir / "x").exists()


# -- secrets ------------------------------------------------------------------------------------

PLANTED = "sk-test-PLANTED-1234"


def test_planted_key_reaches_no_file_of_a_run_an_export_or_a_merge(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    write_prompts(6)
    outputs = []
    with FakeServer(
        api_key=PLANTED, fault_rate=0.3, faults=["429", "500"], retry_after=0.01
    ) as server:
        for k in (1, 2):
            outputs.append(cai_generate(server, "--shard", f"{k}/2", "--out", f"s{k}"))
        assert server.requests > 0
    outputs.append(CliRunner().invoke(cli, ["merge", "s1", "s2", "--out", "merged"]))
    for fmt in ("dpo", "sft"):
        outputs.append(CliRunner().invoke(cli, ["export", "merged", "--format", fmt]))
        outputs.append(
            CliRunner().invoke(cli, ["export", "s1", "--format", fmt, "--out", f"e-{fmt}.jsonl"])
        )
    assert [r.exit_code for r in outputs] == [0] * len(outputs), [r.output for r in outputs]
    assert len(ids_once(workdir / "merged")) == 6
    written = [
        p for p in workdir.rglob("*") if p.is_file() and p.name not in ("mini.md", "p.jsonl")
    ]
    assert {"records.jsonl", "calls.jsonl", "manifest.json", "dpo.jsonl", "sft.jsonl"} <= {
        p.name for p in written
    }
    for path in written:
        assert PLANTED.encode() not in path.read_bytes(), path
    for result in outputs:
        assert PLANTED not in result.output


def test_a_key_echoed_back_by_a_server_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED)
    echoing = FakeProvider(
        respond=lambda m: BadRequestError(f"invalid key {PLANTED} for this model")
    )
    generate(tmp_path / "run", echoing, PROMPTS[:1])
    (record,) = read_records(tmp_path / "run")
    assert record.error["message"] == "invalid key [REDACTED] for this model"
    for path in (tmp_path / "run").iterdir():
        assert PLANTED.encode() not in path.read_bytes()


def test_base_url_is_stored_without_credentials() -> None:
    from cai.rundir import public_url

    assert public_url(f"https://user:{PLANTED}@llm.example:8443/v1?api-key={PLANTED}") == (
        "https://llm.example:8443/v1"
    )
    assert public_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert public_url(None) is None
