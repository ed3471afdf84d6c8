"""What every benchmark shares: where results go, the machine they were measured on."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "ROOT", "best", "machine", "main", "run_generate", "run_process", "save"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def best(samples: list[float]) -> float:
    """The least disturbed of repeated timings: other processes only ever add time."""
    return min(samples)


def save(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with the time and machine of the measurement."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def run_process(command: list[str], cwd: Path, log: Path) -> dict[str, float]:
    """Run a process to its end with a fake API key; its wall time, CPU seconds and peak RSS.

    Figures come from `wait4`, so they are this process's alone, not its siblings'.
    """
    import os
    import subprocess

    env = dict(os.environ, OPENAI_API_KEY="sk-fake-benchmark-key")  # the fake server's
    with log.open("w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(
            f"{' '.join(command[:4])} exited with {code}:\n{log.read_text()[-2000:]}"
        )
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main(
    name: str,
    doc: str,
    run: Callable[..., dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> dict[str, Any]:
    """A benchmark's command line: `--quick` plus its `options`; runs, saves and reports."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller cases, fewer repeats.")
    if options is not None:
        options(parser)
    result = run(**vars(parser.parse_args(argv)))
    save(name, result)
    print(report(result), flush=True)
    return result


def run_generate(url: str, prompts: Path, out: Path, *, rounds: int, concurrency: int) -> dict:
    """`cai generate --provider openai` against the fake server at `url`, as its own process.

    Returns `run_process`'s figures and the run's call count from its manifest.
    """
    import sys

    command = [
        *(sys.executable, "-m", "cai", "generate"),
        *("--constitution", str(ROOT / "constitutions" / "harmless.md")),
        *("--prompts", str(prompts), "--out", str(out)),
        *("--provider", "openai", "--model", "bench-model", "--base-url", url + "/v1"),
        *("--rounds", str(rounds), "--concurrency", str(concurrency), "--max-retries", "0"),
    ]
    result = run_process(command, out.parent, out.parent / f"{out.name}.log")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return {**result, "calls": manifest["stats"]["calls"]}
