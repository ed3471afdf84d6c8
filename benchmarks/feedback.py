"""Labelling throughput: `cai label`'s engine against the fake server, as a ratio to the bound.

A generate run of N prompts (one round) is made first (`cai generate`, its own process)
against a fake server with no latency. Then its pairs are labelled in this process exactly as
`cai label RUN --provider openai --votes K` labels them (`run_pairs`, `run_labels`: real SDK,
real HTTP, labels and call journal on disk), asking for log-probabilities, against a second
fake server (its own process) with latency L at concurrency C. The bound is
`calls x L / C`: the wall time if C calls were always in flight and the client cost nothing.
Interpreter start-up is left out, as in throughput.py. Figures: wall time, calls per second,
bound / wall (1.0 is perfect), client CPU ms per call, peak RSS.

    python -m benchmarks.feedback [--quick]
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, best, run_generate
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


async def _label(run_dir: Path, out: Path, url: str, concurrency: int) -> Any:
    from cai.constitution import load_constitution
    from cai.feedback import LabelConfig, run_labels, run_pairs
    from cai.providers.openai import OpenAIProvider
    from cai.rundir import LABELS_FILE, RunStore

    started = time.perf_counter()
    _, pairs, _ = run_pairs(run_dir)
    selected = time.perf_counter() - started
    provider = OpenAIProvider("bench-model", base_url=url + "/v1", connections=concurrency)
    config = LabelConfig(votes=VOTES, concurrency=concurrency, max_retries=0)
    try:
        stats = await run_labels(
            pairs,
            load_constitution(ROOT / "constitutions" / "harmless.md"),
            provider,
            config,
            RunStore(out, LABELS_FILE),
        )
        return stats, selected
    finally:
        await provider.aclose()


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
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server, url = _start_server(LATENCY)
        try:
            for n in range(repeats):
                cpu0, wall0 = time.process_time(), time.perf_counter()
                stats, selected = asyncio.run(
                    _label(run_dir, tmp_path / f"labels{n}", url, concurrency)
                )
                # Picking the pairs (reading the run, export's filters) is not calling.
                wall = time.perf_counter() - wall0 - selected
                cpu = time.process_time() - cpu0
                if stats.failed or not stats.done:
                    raise RuntimeError(f"the label run was not clean: {stats.to_dict()}")
                samples.append(
                    {
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "calls": stats.calls,
                        "pairs": stats.done,
                        "select_s": selected,
                    }
                )
        finally:
            server.terminate()
            server.wait(timeout=10)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = sum(
            getattr(children, f) - getattr(children0, f) for f in ("ru_utime", "ru_stime")
        )
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
        "client_cpu_share": round(sample["cpu_s"] / wall, 3),
        # The fake server's CPU over all repeats: near the wall time, the server is the limit.
        "server_cpu_ms_per_call": round(server_cpu * 1000 / (calls * repeats), 3),
        "select_pairs_s": round(sample["select_s"], 3),
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    cases = [(150, 64)] if quick else [(600, 64), (600, 256)]
    return {"cases": [_case(p, c, 1 if quick else 3) for p, c in cases]}


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        f"label: {c['pairs']} pairs x {c['votes']} votes x 2 orders = {c['calls']} calls, "
        f"L={c['latency_s'] * 1000:.0f}ms C={c['concurrency']}: {c['wall_s']:.2f}s, "
        f"{c['calls_per_s']:.0f} calls/s, {c['ratio_to_bound']:.0%} of the bound "
        f"({c['bound_s']:.2f}s), {c['client_cpu_ms_per_call']:.2f} ms CPU/call "
        f"(CPU share {c['client_cpu_share']:.0%}; server {c['server_cpu_ms_per_call']:.2f} ms), "
        f"pairs picked in {c['select_pairs_s']:.2f}s, "
        f"peak RSS {c['peak_rss_mib']:.0f} MiB"
        for c in result["cases"]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return bench_main("feedback", __doc__ or "", run, report, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
