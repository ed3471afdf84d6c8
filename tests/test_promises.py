"""Issue 19: every surface keeps the core promises (never pay twice, never destroy, never crash
on what a server or a file says). One section per kind of hole; each test failed before its
fix."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import FakeServer
from procs import cai_process
from test_batch import POLL, _args, _batches, _calls, _prompts, _texts, _wait_for

from cai.cli import cli


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")


def _kill_with_a_batch_open(args: list[str], run: Path) -> str:
    """Run `cai ARGS` (the server holds its batches open) and SIGKILL it once its first batch
    is journaled; that batch's id."""
    proc = cai_process(args)
    _wait_for(lambda: len(_batches(run)) >= 1 or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _batches(run)[0]["id"]


# -- 1. paying twice with batches ------------------------------------------------------------


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_resume_with_a_lower_limit_journals_the_results_it_does_not_use(
    provider: str, tmp_path: Path, mini_constitution: Path
) -> None:
    """Killed with a batch open, resumed with --limit 2: the batch's other answers are
    journaled as they are read, so the full resume buys none of them again."""
    prompts = _prompts(tmp_path / "prompts.jsonl", 6)
    run = tmp_path / "run"
    with FakeServer(hold_batches=True) as server:
        args = [*_args(provider, server, mini_constitution, prompts, run), "--batch"]
        args += ["--poll-interval", POLL]
        _kill_with_a_batch_open(args, run)
        server.hold_batches = False
        result = CliRunner().invoke(cli, [*args, "--limit", "2"])
        assert result.exit_code == 0, result.output
        assert len(_texts(run)) == 2
        assert all(b["collected"] for b in _batches(run))
        assert server.paid_total == _calls(run)  # every answer read is in the journal
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert len(_texts(run)) == 6
        assert max(server.paid.values()) == 1
        assert server.paid_total == _calls(run)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_custom_id_answered_twice_takes_the_success(
    provider: str, tmp_path: Path, mini_constitution: Path
) -> None:
    """A batch whose results hold each id twice, an error first, then a success: the success
    is kept, and nothing is sent (and paid) again."""
    prompts = _prompts(tmp_path / "prompts.jsonl", 5)
    run = tmp_path / "run"
    with FakeServer(batch_duplicates=True) as server:
        args = _args(provider, server, mini_constitution, prompts, run)
        args += ["--rounds", "0", "--batch", "--poll-interval", POLL]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert len(_batches(run)) == 1  # no second wave: no request came back failed
        assert max(server.paid.values()) == 1
        assert server.paid_total == _calls(run) == 5
        assert all(t[0] == "ok" for t in _texts(run).values())


# -- 8. hangs --------------------------------------------------------------------------------


def test_a_journaled_batch_the_server_does_not_know_stops_with_one_line(
    tmp_path: Path, mini_constitution: Path
) -> None:
    """Resumed against another --base-url, a journaled batch is refused before any call
    (the URL is part of its identity); at its own server, a batch that answers 404 stops the
    run with one line naming the batch and the URL, where it was polled forever."""
    prompts = _prompts(tmp_path / "prompts.jsonl", 3)
    run = tmp_path / "run"
    with FakeServer(hold_batches=True) as server, FakeServer() as other:
        args = [*_args("openai", server, mini_constitution, prompts, run), "--batch"]
        args += ["--poll-interval", POLL]
        batch_id = _kill_with_a_batch_open(args, run)

        moved = [*_args("openai", other, mini_constitution, prompts, run), "--batch"]
        proc = cai_process([*moved, "--poll-interval", POLL])
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert batch_id in err and f"--base-url {server.url}/v1" in err
        assert other.requests == 0

        del server.batches[batch_id]  # deleted at the provider
        proc = cai_process(args)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert "Traceback" not in err
        (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
        assert batch_id in line and f"{server.url}/v1" in line and "404" in line


def test_batch_status_and_cancel_give_up_after_timeout(tmp_path: Path) -> None:
    """A server that takes the connection and never answers: status and cancel each end
    after --timeout seconds a try (three tries), saying so, instead of waiting for ever."""
    import socket
    import time

    import cai.batch
    from cai.rundir import Manifest, write_manifest

    run = tmp_path / "run"
    run.mkdir()
    config = {"provider": "openai", "model": "gpt-5.4-mini"}
    write_manifest(run, Manifest(kind="generate", config=config, settings={"seed": 0}))
    cai.batch.BatchJournal(run).append(
        {"event": "created", "id": "batch_silent", "provider": "openai", "wave": 1,
         "created": time.time(), "requests": 1, "token": "t", "custom_ids": ["a-initial"]}
    )  # fmt: skip
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes each connection; nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        for command in ("status", "cancel"):
            args = ["batch", command, str(run), "--base-url", url, "--timeout", "0.5"]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
            assert "Traceback" not in result.output
        status = CliRunner().invoke(
            cli, ["batch", "status", str(run), "--base-url", url, "--timeout", "0.5"]
        )
        assert "batch_silent  unknown     could not be looked up" in status.output
        assert "0.5s" in status.output, status.output


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_poll_interval_must_be_a_finite_positive_number(
    value: str, tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 1)
    with FakeServer() as server:
        args = _args("openai", server, mini_constitution, prompts, tmp_path / "run")
        result = CliRunner().invoke(cli, [*args, "--batch", f"--poll-interval={value}"])
        assert result.exit_code == 2, result.output
        assert "--poll-interval must be a positive number" in result.output
        assert server.requests == 0 and not (tmp_path / "run").exists()


# -- shared runs for the label, export and --out sections ------------------------------------

HARMLESS = Path(__file__).resolve().parent.parent / "constitutions" / "harmless.md"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two finished generate runs of different prompts (one round, revisions the fake
    prefers), never written to by the tests that share them."""
    base = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch, FakeServer() as server:
        patch.setenv("OPENAI_API_KEY", "test-key-openai")
        for name in ("a", "b"):
            prompts = base / f"{name}.jsonl"
            prompts.write_text(
                "".join(
                    json.dumps({"prompt": f"How do I deal with problem {i}?"}) + "\n"
                    for i in (range(6) if name == "a" else range(6, 12))
                )
            )
            result = CliRunner().invoke(
                cli,
                [
                    *["generate", "--constitution", str(HARMLESS), "--prompts", str(prompts)],
                    *["--out", str(base / name), "--provider", "openai", "--rounds", "1"],
                    *["--base-url", f"{server.url}/v1"],
                ],
            )
            assert result.exit_code == 0, result.output
    return base / "a", base / "b"


def _label_args(server: FakeServer, out: Path) -> list[str]:
    return [
        "--provider",
        "openai",
        "--base-url",
        f"{server.url}/v1",
        "--votes",
        "1",
        "--out",
        str(out),
    ]


def _one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    (line,) = [x for x in output.splitlines() if x.startswith("Error:")]
    return line


# -- 6. label runs that mix sources ----------------------------------------------------------


def test_a_label_run_resumed_with_another_source_or_other_filters_is_refused(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The source run and the --keep-* flags are settings of a label run: its journaled
    votes are never reused for other pairs, and nothing is called."""
    a, b = runs
    out = tmp_path / "labels"
    with FakeServer() as server:
        result = CliRunner().invoke(cli, ["label", str(a), *_label_args(server, out)])
        assert result.exit_code == 0, result.output
        asked = server.requests
        for source in ([str(b)], [str(a), "--keep-unchanged"]):
            result = CliRunner().invoke(cli, ["label", *source, *_label_args(server, out)])
            assert result.exit_code == 2, result.output
            line = _one_error_line(result.output)
            assert "other settings" in line and "source" in line, line
        assert server.requests == asked
        result = CliRunner().invoke(cli, ["label", str(a), *_label_args(server, out)])
        assert result.exit_code == 0, result.output
        assert server.requests == asked  # the same run, resumed: all done already


def test_export_refuses_the_labels_of_another_run(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    labels = tmp_path / "labels"
    with FakeServer() as server:
        result = CliRunner().invoke(cli, ["label", str(a), *_label_args(server, labels)])
        assert result.exit_code == 0, result.output
    out = tmp_path / "b.jsonl"
    args = ["--labels", str(labels), "--format", "dpo", "--out"]
    result = CliRunner().invoke(cli, ["export", str(b), *args, str(out)])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.output)
    assert str(labels) in line and str(b) in line and "cai label" in line, line
    assert not out.exists()
    result = CliRunner().invoke(cli, ["export", str(a), *args, str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a.jsonl").read_text().strip()


def test_label_refuses_a_run_that_is_being_written(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from cai.rundir import RunStore

    a, _ = runs
    writer = RunStore(a)
    writer.lock("generate")  # as a generate process still running would hold it
    try:
        with FakeServer() as server:
            out = tmp_path / "labels"
            result = CliRunner().invoke(cli, ["label", str(a), *_label_args(server, out)])
            assert result.exit_code == 2, result.output
            line = _one_error_line(result.output)
            assert "still being written" in line and "then label" in line, line
            assert server.requests == 0 and not out.exists()
    finally:
        writer.unlock()


# -- 7. where output lands -------------------------------------------------------------------


def test_report_refuses_to_write_over_a_run_file(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    for name in ("labels.jsonl", "calls.jsonl", "constitution.md"):
        target = a / name
        before = target.read_bytes() if target.exists() else None
        result = CliRunner().invoke(cli, ["report", str(a), "--out", str(target)])
        assert result.exit_code == 2, result.output
        assert "is a file of the run" in _one_error_line(result.output)
        assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize("out", [".", ""], ids=["dot", "empty"])
@pytest.mark.parametrize("command", ["generate", "label", "export", "export-hf", "report", "merge"])
def test_an_out_that_names_no_file_or_folder_is_one_line(
    command: str, out: str, runs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = runs
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # what "." is, so nothing lands beside the tests
    with FakeServer() as server:
        url = ["--provider", "openai", "--base-url", f"{server.url}/v1"]
        args = {
            "generate": [
                *["generate", "--constitution", str(HARMLESS)],
                *["--prompts", str(a.parent / "a.jsonl"), *url],
            ],
            "label": ["label", str(a), *url],
            "export": ["export", str(a), "--format", "dpo"],
            "export-hf": ["export", str(a), "--format", "hf"],
            "report": ["report", str(a)],
            "merge": ["merge", str(a)],
        }[command]
        result = CliRunner().invoke(cli, [*args, "--out", out])
        assert result.exit_code == 2, result.output
        assert "--out" in _one_error_line(result.output)
        assert server.requests == 0
    assert list(here.iterdir()) == []


# -- 10. smaller holes -----------------------------------------------------------------------


def test_weights_whose_sum_overflows_fail_constitution_check(tmp_path: Path) -> None:
    path = tmp_path / "c.md"
    principle = "## Principle: {0}\nWeight: 1e308\nCritique: c {0}\nRevision: r {0}\n\n"
    path.write_text(principle.format("a") + principle.format("b"))
    result = CliRunner().invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:" in result.output and "scale them down" in result.output


def test_a_conversation_that_opens_with_an_assistant_turn_is_refused(tmp_path: Path) -> None:
    from cai.errors import InputError
    from cai.sources import PromptSource

    turns = [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Help?"}]
    for value, line in (
        ({"messages": turns}, 2),
        ({"messages": [{"role": "system", "content": "Be kind."}, *turns]}, 2),
    ):
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps({"prompt": "Fine?"}) + "\n" + json.dumps(value) + "\n")
        with pytest.raises(InputError) as info:
            list(PromptSource(str(path)))
        assert str(info.value).startswith(f"{path}:{line}:"), info.value
        assert "'assistant' turn" in str(info.value)


def test_a_csv_messages_column_holding_json_is_read_as_messages(tmp_path: Path) -> None:
    import csv

    from cai.errors import InputError
    from cai.sources import PromptSource

    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi, a question, with commas."},
    ]
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerow([json.dumps(turns)])
        writer.writerow(["Just text [with brackets]"])
    items = list(PromptSource(str(path)))
    assert [item.messages for item in items] == [
        turns,
        [{"role": "user", "content": "Just text [with brackets]"}],
    ]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["messages"], ['[{"role": "user", "content": "cut off']])
    with pytest.raises(InputError) as info:
        list(PromptSource(str(path)))
    assert f"{path}:2:" in str(info.value) and "not valid JSON" in str(info.value)


def test_kept_no_retry_failed_is_said_only_when_that_flag_was_given(
    tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = _prompts(tmp_path / "prompts.jsonl", 3)
    run = tmp_path / "run"
    with FakeServer(fault_rate=1.0, faults=("500",)) as broken:
        args = _args("openai", broken, mini_constitution, prompts, run)
        result = CliRunner().invoke(cli, [*args, "--max-retries", "0"])
        assert result.exit_code == 3, result.output
    with FakeServer() as server:
        args = _args("openai", server, mini_constitution, prompts, run)
        result = CliRunner().invoke(cli, [*args, "--limit", "1"])
        assert result.exit_code == 3, result.output  # two failed records are still in the run
        assert "--no-retry-failed" not in result.output
        assert "2 failed before and were not retried this time" in result.output
        result = CliRunner().invoke(cli, [*args, "--no-retry-failed"])
        assert "2 failed before, kept (--no-retry-failed)" in result.output


def test_a_full_disk_names_the_file_and_says_the_run_resumes(
    tmp_path: Path, mini_constitution: Path
) -> None:
    """A write that fails for want of space (here: past RLIMIT_FSIZE, EFBIG) stops the run
    with one line naming the file and saying that the same command resumes it; it does."""
    import resource
    import subprocess
    import sys

    prompts = _prompts(tmp_path / "prompts.jsonl", 30)
    run = tmp_path / "run"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    with FakeServer() as server:
        args = _args("openai", server, mini_constitution, prompts, run)
        done = subprocess.run(
            [sys.executable, "-m", "cai", *args, "--concurrency", "2"],
            preexec_fn=small_files,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 2, done.stderr
        line = _one_error_line(done.stderr)
        assert f"cannot write {run}" in line and "run the same command again" in line, line
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert len(_texts(run)) == 30


def test_labels_quit_message_does_not_name_fresh(runs: tuple[Path, Path], tmp_path: Path) -> None:
    from test_batch import _Watched

    a, _ = runs
    out = tmp_path / "labels"
    with FakeServer() as server:
        server.hold_replies = True  # calls stay in flight: the first Ctrl-C cannot end the run
        try:
            proc = _Watched(["label", str(a), *_label_args(server, out)])
            _wait_for(lambda: server.held > 0 or proc.proc.poll() is not None)
            proc.proc.send_signal(signal.SIGINT)
            proc.wait_for_text("Stopping")
            proc.proc.send_signal(signal.SIGINT)
            code, err = proc.finish()
        finally:
            server.hold_replies = False
    assert code == 130, err
    assert f"Quit. To resume, run the same command with --out {out}." in err
    assert "--fresh" not in err


def test_the_next_start_ends_the_processes_of_a_killed_drivers_ray_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bookkeeping of cai.engines.ray on stand-in processes that carry a driver's marker
    in their environment, as a Ray instance's processes inherit it: a note whose driver is
    gone gets its processes ended; one whose driver runs is left alone."""
    import subprocess
    import sys

    from cai.engines import ray as engine

    monkeypatch.setenv("CAI_RAY_NOTES", str(tmp_path / "notes"))
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]

    def marked(marker: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(sleeper, env={**os.environ, engine.OWNER_VARIABLE: marker})

    stray = [marked("gone-1"), marked("gone-1")]
    try:
        marker, note = engine.mark_ray_instance()  # this process: a live driver
        monkeypatch.delenv(engine.OWNER_VARIABLE)
        kept = marked(marker)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a driver killed before its ray.shutdown()
        assert note is not None
        (note.parent / f"{gone.pid}.json").write_text(
            json.dumps({"driver": gone.pid, "started": "1", "marker": "gone-1"})
        )
        assert sorted(engine.end_orphaned_ray()) == sorted(p.pid for p in stray)
        assert [p.wait(timeout=60) for p in stray] == [-signal.SIGKILL] * 2
        assert kept.poll() is None
        assert [p.name for p in note.parent.iterdir()] == [note.name]
    finally:
        for p in [*stray, *([kept] if "kept" in locals() else [])]:
            p.kill()
            p.wait()


def test_a_sigkilled_ray_driver_leaves_nothing_after_the_next_start(
    tmp_path: Path, mini_constitution: Path
) -> None:
    """A real local Ray instance: `cai generate --engine ray` killed by SIGKILL once its
    workers are up leaves Ray processes behind (its agents); the next start ends them."""
    pytest.importorskip("ray")
    from test_batch import _Watched

    from cai.engines import ray as engine

    notes = tmp_path / "notes"
    prompts = _prompts(tmp_path / "prompts.jsonl", 40)
    with FakeServer(latency=0.05) as server, pytest.MonkeyPatch.context() as patch:
        patch.setenv("CAI_RAY_NOTES", str(notes))
        args = _args("openai", server, mini_constitution, prompts, tmp_path / "run")
        driver = _Watched([*args, "--engine", "ray", "--workers", "1", "--concurrency", "2"])
        driver.wait_for_text("Ray workers ready")
        (note,) = (notes / str(os.getuid())).iterdir()
        marker = json.loads(note.read_text())["marker"]
        driver.proc.send_signal(signal.SIGKILL)
        driver.finish()
        assert engine.marked_processes(marker), "nothing of the instance outlived its driver"
        ended = engine.end_orphaned_ray()  # what the next start does first
        assert ended
        _wait_for(lambda: not engine.marked_processes(marker))
        assert not note.exists()
