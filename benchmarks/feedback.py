"""Labelling throughput: `cai label` against the fake server, as a ratio to the bound.

A generate run of N prompts (one round) is made first against a fake server with no latency;
then `cai label RUN --votes K` (its own process, real SDK, real HTTP, labels and call journal
on disk) judges each record's pair against a second fake server with latency L at
concurrency C, asking for log-probabilities. The bound is `calls x L / C`: the wall time if C
calls were always in flight and the client cost nothing. Figures: wall time, calls per
second, bound / wall (1.0 is perfect), client CPU ms per call (from `wait4`), peak RSS.

    python -m benchmarks.feedback [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, best, run_generate, run_process
from benchmarks.common import main as bench_main

__all__ = ["main", "run"]

LATENCY = 0.1
VOTES = 4


def _prompts(path: Path, count: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"Benchmark prompt {i}: how do I calm a barking dog?"}))
            f.write("\n")
    return path


def _case(prompts: int, concurrency: int, repeats: int) -> dict[str, Any]:
    from benchmarks.throughput import _start_server

    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fast, fast_url = _start_server(0.0)
        try:
            run_dir = tmp_path / "run"
            run_generate(
                fast_url, _prompts(tmp_path / "p.jsonl", prompts), run_dir, rounds=1, concurrency=64
            )
        finally:
            fast.terminate()
            fast.wait(timeout=10)
        server, url = _start_server(LATENCY)
        try:
            for n in range(repeats):
                out = tmp_path / f"labels{n}"
                command = [
                    *(sys.executable, "-m", "cai", "label", str(run_dir), "--out", str(out)),
                    *("--provider", "openai", "--model", "bench-model", "--base-url", url + "/v1"),
                    *("--votes", str(VOTES), "--concurrency", str(concurrency)),
                    "--max-retries=0",
                ]
                figures = run_process(command, tmp_path, tmp_path / f"labels{n}.log")
                manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
                stats = manifest["stats"]
                if stats["failed"] or not stats["done"]:
                    raise RuntimeError(f"the label run was not clean: {stats}")
                samples.append({**figures, "calls": stats["calls"], "pairs": stats["done"]})
        finally:
            server.terminate()
            server.wait(timeout=10)
    wall = best([s["wall_s"] for s in samples])
    sample = next(s for s in samples if s["wall_s"] == wall)
    calls = sample["calls"]
    bound = calls * LATENCY / concurrency
    return {
        "prompts": prompts,
        "pairs": sample["pairs"],
        "votes": VOTES,
        "latency_s": LATENCY,
        "concurrency": concurrency,
        "calls": calls,
        "wall_s": round(wall, 3),
        "walls_s": [round(s["wall_s"], 3) for s in samples],
        "calls_per_s": round(calls / wall, 1),
        "bound_s": round(bound, 3),
        "ratio_to_bound": round(bound / wall, 3),
        "client_cpu_ms_per_call": round(sample["cpu_s"] * 1000 / calls, 3),
        "peak_rss_mib": sample["peak_rss_mib"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    cases = [(150, 64)] if quick else [(600, 64), (600, 256)]
    return {"cases": [_case(p, c, 1 if quick else 3) for p, c in cases]}


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        f"label: {c['pairs']} pairs x {c['votes']} votes x 2 orders = {c['calls']} calls, "
        f"L={c['latency_s'] * 1000:.0f}ms C={c['concurrency']}: {c['wall_s']:.2f}s, "
        f"{c['calls_per_s']:.0f} calls/s, {c['ratio_to_bound']:.0%} of the bound "
        f"({c['bound_s']:.2f}s incl. start-up), {c['client_cpu_ms_per_call']:.2f} ms CPU/call, "
        f"peak RSS {c['peak_rss_mib']:.0f} MiB"
        for c in result["cases"]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return bench_main("feedback", __doc__ or "", run, report, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
