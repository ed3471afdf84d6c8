"""Progress a person can read (issue 21, item 7): each batch wave in the provider's words with
its requests done out of all and its time so far, refreshed at each poll, and `cai batch status`
saying the same; when stderr is not a terminal, plain lines at most every 30 s by the display's
clock, never a carriage return or an escape code, for every command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fake_server import FakeServer

from cai.batch import BatchState
from cai.cli import cli, progress
from cai.cli._output import BatchView, duration, plural, wave_line

MODEL = "gpt-5.4-mini"


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The display's clock, set by the test."""
    t = [1000.0]
    monkeypatch.setattr(progress, "clock", lambda: t[0])
    return t


def _prompts(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: is it safe?"}) + "\n" for i in range(n))
    )
    return path


def _generate(server: FakeServer, constitution: Path, prompts: Path, out: Path) -> list[str]:
    return [
        "generate", "--constitution", str(constitution), "--prompts", str(prompts),
        "--provider", "openai", "--model", MODEL, "--base-url", server.url + "/v1",
        "--rounds", "1", "--out", str(out),
    ]  # fmt: skip


def test_words_and_plurals() -> None:
    assert plural(1, "example") == "1 example" and plural(2, "example") == "2 examples"
    assert plural(1, "batch") == "1 batch" and plural(3, "batch") == "3 batches"
    assert plural(0, "wave") == "0 waves" and plural(2, "reply") == "2 replies"
    assert plural(12345, "call", sep=",") == "12,345 calls"
    assert (duration(45), duration(125), duration(3720)) == ("45s", "2m05s", "1h02m")
    views = [
        BatchView("validating", False, 0, 100),
        BatchView("in_progress", False, 20, 100),
        BatchView("in_progress", False, 100, 100),
        BatchView("completed", True, 100, 100),
    ]
    assert wave_line(2, views, 125) == (
        "wave 2: 4 batches (1 validating, 2 in progress, 1 ended), 220/400 requests done, 2m05s"
    )
    assert wave_line(1, views[3:], None) == "wave 1: 1 batch (1 ended), 100/100 requests done"


def test_plain_bar_prints_at_most_every_30_seconds_of_its_clock(
    now: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    bar = progress.PlainBar(total=10, unit="prompt", desc="generate")
    for at in (0, 5, 29.9):
        now[0] = 1000 + at
        bar.update()
        bar.set_postfix(calls=3, failed=0)
    assert capsys.readouterr().err == ""  # not yet 30 s
    now[0] = 1030
    bar.update()
    now[0] = 1059
    bar.update()
    assert capsys.readouterr().err == "generate: 4/10 prompts, calls=3, failed=0, 30s elapsed\n"
    now[0] = 1060
    bar.update()
    now[0] = 1061
    bar.close()  # the last line, whatever the time
    assert capsys.readouterr().err.splitlines() == [
        "generate: 6/10 prompts, calls=3, failed=0, 1m00s elapsed",
        "generate: 6/10 prompts, calls=3, failed=0, 1m01s elapsed",
    ]


def test_plain_waves_refresh_at_each_poll_and_say_once_that_a_wave_ended(
    now: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    bar = progress.PlainBar(total=None, unit="pair", desc="label")
    waves = progress._WaveBars(plain=True)
    waves.progress = SimpleNamespace(bar=bar)
    sent = [
        BatchState("b1", "validating", False, {"total": 5}),
        BatchState("b2", "validating", False, {"total": 5}),
    ]
    waves.update("wave", (1, sent))
    now[0] += 31
    polled = [
        BatchState("b1", "in_progress", False, {"total": 5, "completed": 2}),
        BatchState("b2", "finalizing", False, {"total": 5, "completed": 5}),
    ]
    waves.update("poll", [(1, s) for s in polled])
    assert capsys.readouterr().err == (
        "label: 0 pairs, 31s elapsed; "
        "wave 1: 2 batches (1 in progress, 1 finalizing), 7/10 requests done, 31s\n"
    )
    now[0] += 5
    waves.update("ended", (1, BatchState("b2", "completed", True, {"total": 5, "completed": 5})))
    waves.update("ended", (1, BatchState("b1", "completed", True, {"total": 5, "completed": 5})))
    assert capsys.readouterr().err == ""  # 5 s since the last line
    now[0] += 30
    bar.update()
    bar.update()
    assert capsys.readouterr().err == (
        "label: 1 pair, 1m06s elapsed; wave 1: 2 batches (2 ended), 10/10 requests done, 36s\n"
    )
    bar.close()
    assert capsys.readouterr().err == "label: 2 pairs, 1m06s elapsed\n"


def test_terminal_wave_bar_shows_states_and_time(
    now: list[float], capsys: pytest.CaptureFixture[str]
) -> None:
    waves = progress._WaveBars(plain=False)
    waves.update("wave", (3, [BatchState("b1", "validating", False, {"total": 4})]))
    now[0] += 65
    waves.update(
        "poll", [(3, BatchState("b1", "in_progress", False, {"total": 4, "completed": 1}))]
    )
    err = capsys.readouterr().err
    assert "wave 3" in err and "1/4" in err and "1 in progress; 1m05s" in err
    waves.update("ended", (3, BatchState("b1", "completed", True, {"total": 4, "completed": 4})))
    assert waves.bars == {}
    waves.close()


def test_batch_run_in_plain_lines_and_batch_status_says_the_same(
    tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each reading of the clock is 31 s on: every event may print, so each poll shows its wave.
    ticks = itertools.count(0, 31)
    monkeypatch.setattr(progress, "clock", lambda: float(next(ticks)))
    run = tmp_path / "run"
    with FakeServer(batch_delay=0.2) as server:
        args = _generate(server, mini_constitution, _prompts(tmp_path, 4), run)
        result = CliRunner().invoke(cli, [*args, "--batch", "--poll-interval", "0.05"])
        assert result.exit_code == 0, result.output
        status = CliRunner().invoke(cli, ["batch", "status", str(run)])
    assert status.exit_code == 0, status.output
    err = result.stderr
    assert "\r" not in err and "\x1b[" not in err
    lines = [x for x in err.splitlines() if x.startswith("generate: ")]
    assert "wave 1: 1 batch (1 in progress), 0/4 requests done" in err
    assert "wave 1: 1 batch (1 ended), 4/4 requests done" in err
    assert lines[-1].startswith("generate: 4/4 prompts")
    assert status.stdout.splitlines()[0].startswith(
        "wave 1: 1 batch (1 ended), 4/4 requests done, "
    )


def _no_redraws(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cai", *args],
        capture_output=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=300,
    )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert b"\r" not in done.stderr and b"\x1b[" not in done.stderr, err
    return err


def test_every_command_with_stderr_to_a_pipe_prints_plain_lines(
    tmp_path: Path, mini_constitution: Path
) -> None:
    run, labels = tmp_path / "run", tmp_path / "labels"
    with FakeServer() as server:
        err = _no_redraws(_generate(server, mini_constitution, _prompts(tmp_path, 3), run))
        assert "generate: 3/3 prompts, calls=" in err
        err = _no_redraws(["label", str(run), "--out", str(labels), "--votes", "1"])
        assert "label: 1/1 pair, calls=2," in err  # 2 of the 3 records changed nothing: SFT only
