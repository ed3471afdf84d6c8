"""`cai` in a subprocess, for the tests that kill it (SIGKILL) and resume it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def count_lines(path: Path) -> int:
    """Lines in a run file (a journal, records, labels); 0 before it exists."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def cai_process(args: list[str], *, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """`python -m cai ARGS`, unbuffered, its stderr piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "cai", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def kill_after_lines(
    command: list[str], journal: Path, more: int, env: dict[str, str], timeout: float
) -> None:
    """Start `command`; once `journal` holds `more` lines beyond what it held at the start (or
    `timeout` seconds have passed), SIGKILL it. It must not end by itself before."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = count_lines(journal)
    deadline = time.monotonic() + timeout
    while count_lines(journal) < start + more and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
