"""`cai generate --batch` against the loopback fake's Message Batches and Batch APIs, through
the real `anthropic` and `openai` SDKs.

The fake counts every request it would bill (an interactive reply, a batch request that
succeeded) by a hash of its body, so "paid once" is checked on the server's side. Its replies
are a function of the request alone, so batch and interactive runs must write the same texts.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import FakeServer
from procs import cai_process

import cai.batch
from cai.cli import cli

MODELS = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-5.4-mini"}
POLL = "0.05"


def _prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": f"Question number {i}: is this safe?"}) + "\n" for i in range(n)
        )
    )
    return path


def _args(
    provider: str, server: FakeServer, constitution: Path, prompts: Path, out: Path
) -> list[str]:
    base = server.url + ("/v1" if provider == "openai" else "")
    return [
        "generate",
        "--constitution",
        str(constitution),
        "--prompts",
        str(prompts),
        "--provider",
        provider,
        "--model",
        MODELS[provider],
        "--base-url",
        base,
        "--rounds",
        "1",
        "--out",
        str(out),
    ]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")


def _batches(run_dir: Path) -> list[dict]:
    return cai.batch.BatchJournal(run_dir).batches()


class _Watched:
    """`cai ARGS` in a subprocess whose stderr is read as it comes, so a test can wait for a
    line to be printed (an event) instead of guessing how long the run takes to print it."""

    def __init__(self, args: list[str]) -> None:
        self.proc = cai_process(args)
        self._err: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self._err.append(line)
                self._changed.notify_all()
        with self._changed:
            self._err.append("")  # end of stream
            self._changed.notify_all()

    def wait_for_text(self, text: str) -> None:
        """Until stderr holds TEXT; fails if the process ends without printing it. The timeout
        only keeps a broken run from hanging the suite."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: text in "".join(self._err) or (self._err and self._err[-1] == ""),
                timeout=600,
            )
            assert ok and text in "".join(self._err), "".join(self._err)[-3000:]

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=600)
        self._reader.join(timeout=600)
        return self.proc.returncode, "".join(self._err)


def _wait_for(predicate, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _texts(run_dir: Path) -> dict[str, tuple]:
    lines = (run_dir / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({r["id"] for r in records}) == len(records), "a record written twice"
    return {
        r["id"]: (
            r["status"],
            r["initial_response"],
            r["final_response"],
            tuple((x["principle"], x["critique"], x["revision"]) for x in r["rounds"]),
        )
        for r in records
    }


def _calls(run_dir: Path) -> int:
    return len((run_dir / "calls.jsonl").read_text().splitlines())


def killed_twice_then_resumed(
    args: list[str], run_dir: Path, server: FakeServer
) -> tuple[list[str], int]:
    """Run `cai ARGS` and SIGKILL it once it has a batch of its own open at the provider,
    twice, then run it to the end. Checks that it re-attached, that every request was paid
    once and journaled, and that some came back errored and went out again; returns the ids
    of the batches the kills left open and how many requests came back errored."""
    # Each kill lands while a batch of the run is open, however busy the machine: the first
    # batch is held until the first kill; then it may end (so the resumed run collects it and
    # sends what errored in a new batch) while every newer batch is held until the second.
    server.hold_batches = True
    for kill in (1, 2):
        seen = len(_batches(run_dir))
        if kill == 2:
            older = set(server.batches)
            server.hold_batches = lambda batch: batch["id"] not in older  # noqa: B023
        proc = cai_process(args)
        _wait_for(lambda: len(_batches(run_dir)) > seen or proc.poll() is not None)  # noqa: B023
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert any(b["results"] is None for b in server.batches.values())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"kill {kill}"
    open_before = [b["id"] for b in _batches(run_dir) if not b["collected"]]
    assert open_before, "no batch was left open by the kills"
    server.hold_batches = False
    proc = cai_process(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "re-attached" in err
    # Never paid twice, and every reply paid for is in the journal.
    assert max(server.paid.values()) == 1
    assert server.paid_total == _calls(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["batch"]["reattached"] >= 1
    errored = sum(
        kind == "errored" for b in server.batches.values() for kind, _ in b["results"].values()
    )
    assert errored > 0  # some requests came back errored and were sent again
    return open_before, errored


def ctrl_c_while_a_batch_is_open(args: list[str], run_dir: Path) -> tuple[str, str]:
    """Run `cai ARGS` and press Ctrl-C once its first batch is open; its stderr (it exited
    130, saying the batch is still open) and the batch's id."""
    proc = cai_process(args)
    _wait_for(lambda: len(_batches(run_dir)) == 1)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "1 batch still open" in err
    (batch_id,) = [b["id"] for b in _batches(run_dir)]
    return err, batch_id


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_killed_twice_while_batches_are_open_then_resumed(
    provider: str, tmp_path: Path, mini_constitution: Path
) -> None:
    """100 prompts x 1 round: SIGKILL twice while a batch is open, resume; every request is
    paid once, and the records are an interactive run's."""
    prompts = _prompts(tmp_path / "prompts.jsonl", 100)
    run = tmp_path / "batch-run"
    with FakeServer(batch_error_rate=0.05, seed=3) as server:
        args = [*_args(provider, server, mini_constitution, prompts, run), "--batch"]
        args += ["--poll-interval", POLL]
        open_before, errored = killed_twice_then_resumed(args, run, server)
        batch_texts = _texts(run)
        assert len(batch_texts) == 100
        assert all(t[0] == "ok" for t in batch_texts.values())
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stats"]["usage"]["calls"] >= 1
        print(
            f"\n{provider}: {len(_batches(run))} batches, {server.paid_total} requests paid "
            f"(most for one body: {max(server.paid.values())}), {errored} errored and resent, "
            f"{len(open_before)} open after the kills, {_calls(run)} journaled calls"
        )
    with FakeServer() as server:
        plain = tmp_path / "plain-run"
        result = CliRunner().invoke(cli, _args(provider, server, mini_constitution, prompts, plain))
        assert result.exit_code == 0, result.output
        assert server.paid_total == _calls(plain) == _calls(run)
    assert _texts(plain) == batch_texts


@pytest.mark.parametrize("created", [True, False], ids=["created", "never-created"])
@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_killed_before_the_batch_id_was_journaled_then_resumed(
    provider: str, created: bool, tmp_path: Path, mini_constitution: Path
) -> None:
    """A kill after the provider created a batch but before its id reached batches.jsonl
    (reproduced by a SIGKILL right after, then taking the `created` line back out): the
    resumed run finds the batch at the provider, by its tag (OpenAI) or by its custom_ids once
    it has ended (Anthropic), instead of paying for its requests again. When the provider
    never created it (the fake forgets it), the requests go out again, once."""
    prompts = _prompts(tmp_path / "prompts.jsonl", 20)
    run = tmp_path / "batch-run"
    with FakeServer(hold_batches=True, seed=3) as server:
        args = [*_args(provider, server, mini_constitution, prompts, run), "--batch"]
        args += ["--poll-interval", POLL]
        proc = cai_process(args)
        _wait_for(lambda: len(_batches(run)) == 1 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        journal = run / "batches.jsonl"
        kept = [x for x in journal.read_text().splitlines() if '"event": "created"' not in x]
        assert [json.loads(x)["event"] for x in kept] == ["intent"]
        journal.write_text("".join(x + "\n" for x in kept))
        (lost,) = server.batches  # at the provider, unknown to the run
        if not created:
            del server.batches[lost]
        plain_args = _args(provider, server, mini_constitution, prompts, run)
        refused = CliRunner().invoke(cli, plain_args)  # that batch may be open: no double pay
        assert refused.exit_code == 2 and "intent-" in refused.output, refused.output
        resumed = _Watched(args)
        if created:  # the batch is held open until the resumed run has met it
            resumed.wait_for_text(f"it may be {lost}" if provider == "anthropic" else lost)
        server.hold_batches = False
        returncode, err = resumed.finish()
        assert returncode == 0, err
        events = [e["event"] for e in cai.batch.BatchJournal(run).entries()]
        if created:
            assert f"re-attached to {lost}" in err
            if provider == "anthropic":  # still running at the resume: not told apart yet
                assert f"it may be {lost}" in err
            assert server.batches[lost]["results"] is not None
            (found,) = [b for b in _batches(run) if b.get("found")]
            assert found["id"] == lost and len(found["custom_ids"]) == 20
        else:
            assert "re-attached to" not in err and "unsent" in events
        assert max(server.paid.values()) == 1
        assert server.paid_total == _calls(run)
        batch_texts = _texts(run)
    with FakeServer() as server:
        plain = tmp_path / "plain-run"
        result = CliRunner().invoke(cli, _args(provider, server, mini_constitution, prompts, plain))
        assert result.exit_code == 0, result.output
        assert server.paid_total == _calls(plain) == _calls(run)
    assert _texts(plain) == batch_texts


def _summary_cost(output: str) -> float:
    """The run's cost as the end-of-run summary prints it (its ledger's Cost line)."""
    ledger = output.split("The run in all", 1)[1].splitlines()
    line = next(x for x in ledger if x.strip().startswith("Cost: $"))
    return float(line.split("$")[1].split()[0].replace(",", ""))


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_batch_cost_is_half_the_interactive_cost(
    provider: str, tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 12)
    runs = {}
    for mode in ("interactive", "batch"):
        with FakeServer() as server:
            out = tmp_path / mode
            args = _args(provider, server, mini_constitution, prompts, out)
            if mode == "batch":
                args += ["--batch", "--poll-interval", POLL]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
            runs[mode] = (result.output, json.loads((out / "manifest.json").read_text()))
    (plain_out, plain), (batch_out, batch) = runs["interactive"], runs["batch"]
    assert batch["stats"]["usage"] == plain["stats"]["usage"]
    # The manifest rounds to a millionth of a dollar.
    assert batch["stats"]["cost_usd"] == pytest.approx(plain["stats"]["cost_usd"] / 2, abs=1e-6)
    assert batch["stats"]["cost_usd"] > 0
    assert _summary_cost(batch_out) == pytest.approx(_summary_cost(plain_out) / 2, abs=1e-4)
    assert "Priced at the batch rate" in batch_out
    print(
        f"\n{provider}: cost {plain['stats']['cost_usd']} -> {batch['stats']['cost_usd']} (batch)"
    )
    assert batch["config"]["batch"]["batches"] >= 2 and "batch" not in plain["config"]


def test_errored_requests_go_out_again_in_the_next_wave(
    tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 20)
    out = tmp_path / "run"
    with FakeServer(batch_error_rate=0.3, seed=5) as server:
        args = _args("anthropic", server, mini_constitution, prompts, out)
        args += ["--rounds", "0", "--batch", "--poll-interval", POLL]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        batches = _batches(out)
        first = server.batches[batches[0]["id"]]["results"]
        errored = sorted(cid for cid, (kind, _) in first.items() if kind == "errored")
        assert errored and len(batches[0]["custom_ids"]) == 20
        # The next wave is exactly the requests that came back errored.
        assert sorted(batches[1]["custom_ids"]) == errored
        assert len(_texts(out)) == 20 and max(server.paid.values()) == 1
        assert "server_error" in result.output  # the retries, by kind, in the summary


def test_a_request_that_keeps_failing_fails_its_record_with_the_reason(
    tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 3)
    out = tmp_path / "run"
    with FakeServer(batch_expire_rate=1.0) as server:
        args = _args("openai", server, mini_constitution, prompts, out)
        args += ["--batch", "--poll-interval", POLL, "--max-retries", "1"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, result.output
        records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
        assert [r["status"] for r in records] == ["failed"] * 3
        assert {r["error"]["kind"] for r in records} == {"batch_expired"}
        assert len(_batches(out)) == 2  # the first try and one retry, each a wave
        assert server.paid_total == 0


def test_a_wave_is_split_at_the_provider_byte_limit(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 1500
    monkeypatch.setitem(cai.batch.LIMITS, "openai", (50_000, cai.batch._BYTES_MARGIN + limit))
    prompts = _prompts(tmp_path / "prompts.jsonl", 10)
    out = tmp_path / "run"
    with FakeServer() as server:
        args = _args("openai", server, mini_constitution, prompts, out)
        args += ["--rounds", "0", "--batch", "--poll-interval", POLL]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        batches = _batches(out)
        assert len(batches) > 1 and {b["wave"] for b in batches} == {1}
        for b in server.batches.values():
            lines = [
                json.dumps(
                    {"custom_id": c, "method": "POST", "url": "/v1/chat/completions", "body": body}
                )
                for c, body in b["requests"]
            ]
            assert sum(len(x) + 1 for x in lines) <= limit
        assert len(_texts(out)) == 10


def test_ctrl_c_leaves_batches_running_then_status_cancel_and_resume(
    tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 10)
    run = tmp_path / "run"
    with FakeServer(hold_batches=True) as server:
        args = [*_args("openai", server, mini_constitution, prompts, run), "--batch"]
        args += ["--poll-interval", POLL]
        err, batch_id = ctrl_c_while_a_batch_is_open(args, run)
        assert "To re-attach: cai generate" in err and f"--out {run}" in err
        assert server.batches[batch_id]["results"] is None  # still running at the provider

        # An interactive resume would buy the batch's requests again: refused.
        result = CliRunner().invoke(cli, _args("openai", server, mini_constitution, prompts, run))
        assert result.exit_code == 2 and "--batch first" in result.output

        result = CliRunner().invoke(cli, ["batch", "status", str(run)])
        assert result.exit_code == 0, result.output
        assert batch_id in result.output and "in_progress" in result.output
        assert "total 10" in result.output

        result = CliRunner().invoke(cli, ["batch", "cancel", str(run)])
        assert result.exit_code == 0, result.output
        assert f"{batch_id}  cancelled" in result.output
        result = CliRunner().invoke(cli, ["batch", "status", str(run)])
        assert "cancelled" in result.output and "failed 10" in result.output

        # Resumed: the canceled requests go out again, nothing was paid for them before.
        server.hold_batches = False
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert len(_texts(run)) == 10
        assert max(server.paid.values()) == 1 and server.paid_total == _calls(run)

        # Then interactively: everything is done, nothing is bought.
        paid = server.paid_total
        result = CliRunner().invoke(cli, _args("openai", server, mini_constitution, prompts, run))
        assert result.exit_code == 0, result.output
        assert server.paid_total == paid


def test_status_of_a_run_without_batches_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["batch", "status", str(tmp_path)])
    assert result.exit_code == 2
    assert "no batches" in result.output and "--batch" in result.output


def test_batch_refuses_the_local_provider(tmp_path: Path, mini_constitution: Path) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 1)
    result = CliRunner().invoke(
        cli,
        [
            *["generate", "--constitution", str(mini_constitution), "--prompts", str(prompts)],
            *["--batch", "--out", str(tmp_path / "run")],
        ],
    )
    assert result.exit_code == 2
    assert "--batch goes with --provider anthropic or openai" in result.output
    assert not (tmp_path / "run").exists()
