"""SIGKILL a real `cai generate` process at a dozen different points, resume it each time, and
check that the final records equal a clean run's: every prompt exactly once, nothing lost, no
reply bought twice once it was on disk.

The process talks to the loopback fake OpenAI server through the real `openai` SDK; the
server's replies are a function of the request alone, so a resumed run's records must match
a clean run's exactly (apart from timings).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_server import FakeServer
from procs import count_lines

PROMPTS = 45
# (what to wait for, how much) before each SIGKILL: new journal lines, new records, the
# manifest rewritten by this attempt, or seconds since the process started (which may land
# before anything is written, or in the middle of a write).
KILL_POINTS = [
    ("seconds", 0.4),
    ("calls", 1),
    ("records", 1),
    ("manifest", 0),
    ("calls", 3),
    ("seconds", 0.9),
    ("records", 2),
    ("calls", 2),
    ("calls", 7),
    ("records", 1),
    ("calls", 5),
    ("manifest", 0),
    ("calls", 1),
]


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def _records(run_dir: Path) -> dict[str, tuple]:
    """Each record's outcome by id, checking every line is whole JSON and each id appears once."""
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    ids = Counter(r["id"] for r in records)
    assert all(n == 1 for n in ids.values()), (
        f"duplicated ids: {[i for i, n in ids.items() if n > 1]}"
    )
    return {
        r["id"]: (
            r["status"],
            r["initial_response"],
            r["final_response"],
            tuple(round_["principle"] for round_ in r["rounds"]),
        )
        for r in records
    }


@pytest.fixture
def job(tmp_path: Path, mini_constitution: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"Question number {i}: is this safe?"}) + "\n"
            for i in range(PROMPTS)
        )
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "PYTHONUNBUFFERED": "1"}
    with FakeServer(latency=0.04) as server:

        def start(run_dir: Path) -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-m", "cai", "generate", "--constitution", str(mini_constitution),
                 "--prompts", str(prompts), "--out", str(run_dir), "--rounds", "1",
                 "--concurrency", "4", "--provider", "openai", "--base-url", server.url + "/v1"],
                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip

        yield start, server


def _wait_and_kill(process: subprocess.Popen, run_dir: Path, what: str, amount: float) -> None:
    calls, records, manifest = (
        run_dir / "calls.jsonl",
        run_dir / "records.jsonl",
        run_dir / "manifest.json",
    )
    calls_at, records_at, manifest_at = count_lines(calls), count_lines(records), _mtime(manifest)
    started = time.monotonic()
    while time.monotonic() - started < 300:
        if process.poll() is not None:
            raise AssertionError(f"the run ended by itself before kill point {what} {amount}")
        if (
            (what == "seconds" and time.monotonic() - started >= amount)
            or (what == "calls" and count_lines(calls) >= calls_at + amount)
            or (what == "records" and count_lines(records) >= records_at + amount)
            or (what == "manifest" and _mtime(manifest) != manifest_at)
        ):
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert process.returncode == -signal.SIGKILL
            return
        time.sleep(0.002)
    raise AssertionError(f"kill point {what} {amount} never came")


def test_sigkill_at_many_points_then_resume_equals_a_clean_run(tmp_path: Path, job) -> None:
    start, server = job
    clean_dir = tmp_path / "clean"
    clean = start(clean_dir)
    assert clean.wait(timeout=600) == 0, clean.stderr.read().decode()
    clean_requests = server.requests
    expected = _records(clean_dir)
    assert len(expected) == PROMPTS and {r[0] for r in expected.values()} == {"ok"}

    run_dir = tmp_path / "killed"
    torn = 0
    journaled: list[int] = []  # journal lines after each kill
    for what, amount in KILL_POINTS:
        _wait_and_kill(start(run_dir), run_dir, what, amount)
        journaled.append(count_lines(run_dir / "calls.jsonl"))
        for name in ("records.jsonl", "calls.jsonl"):
            path = run_dir / name
            torn += (
                path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
            )

    final = start(run_dir)
    _, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr.decode()
    assert "Done in" in stderr.decode()

    # No loss, no duplicate, and the same records as the clean run.
    assert _records(run_dir) == expected
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"records": PROMPTS, "ok": PROMPTS}
    # A reply on disk is never bought again: each (prompt, step) is journaled once.
    journal = [json.loads(line) for line in (run_dir / "calls.jsonl").read_text().splitlines()]
    steps = Counter((c["id"], c["step"]) for c in journal)
    assert all(n == 1 for n in steps.values())
    # Only replies lost in flight at a kill were bought twice.
    resumed_requests = server.requests - clean_requests
    assert resumed_requests - len(journal) <= 4 * len(KILL_POINTS)
    print(
        f"\n{len(KILL_POINTS)} kills, {torn} torn last lines, journal lines after each: "
        f"{journaled}; requests: clean run {clean_requests}, "
        f"killed and resumed {resumed_requests} ({resumed_requests / clean_requests:.2f}x)"
    )
