"""Memory: peak RSS of `cai generate` at 10k and at 100k prompts.

The real command runs as its own process (`--provider openai` against the fake server, which
runs as another process with latency 0), with `--rounds 0` so that 100k prompts take
minutes, not hours; a round adds calls, not state that outlives a prompt. The peak RSS of
the `cai` process alone is read from `wait4`. Prompts are streamed, so the peak must not grow
with the prompt count: target 100k / 10k <= 1.2, and under 300 MB.

    python -m benchmarks.memory [--quick]        # --quick: 2k and 20k prompts
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common

__all__ = ["main", "measure", "run", "write_prompts"]


def write_prompts(path: Path, count: int) -> None:
    """`count` distinct prompts, one JSON line each."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"Prompt {i}: how do I keep a sourdough starter alive?"}))
            f.write("\n")


def measure(prompts: int, url: str, tmp: Path, rounds: int = 0, concurrency: int = 64) -> dict:
    """Run `cai generate` over `prompts` prompts; its wall time, CPU time and peak RSS."""
    source = tmp / f"prompts-{prompts}.jsonl"
    write_prompts(source, prompts)
    out = tmp / f"run-{prompts}"
    result = common.run_generate(url, source, out, rounds=rounds, concurrency=concurrency)
    records = sum(1 for _ in (out / "records.jsonl").open())
    if records != prompts:
        raise RuntimeError(f"{records} records for {prompts} prompts")
    return {
        "prompts": prompts,
        "rounds": rounds,
        "wall_s": round(result["wall_s"], 2),
        "cpu_s": round(result["cpu_s"], 2),
        "cpu_ms_per_call": round(result["cpu_s"] * 1000 / result["calls"], 3),
        "peak_rss_mib": result["peak_rss_mib"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    from benchmarks.throughput import _start_server

    small, large = (2_000, 20_000) if quick else (10_000, 100_000)
    server, url = _start_server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cases = [measure(n, url, Path(tmp)) for n in (small, large)]
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {
        "cases": cases,
        "ratio": round(cases[1]["peak_rss_mib"] / cases[0]["peak_rss_mib"], 3),
        "target_ratio": 1.2,
        "target_peak_mib": 300,
    }


def report(result: dict[str, Any]) -> str:
    small, large = result["cases"]
    return (
        f"memory: peak RSS {small['peak_rss_mib']:.0f} MiB at {small['prompts']} prompts, "
        f"{large['peak_rss_mib']:.0f} MiB at {large['prompts']} (ratio {result['ratio']:.2f}); "
        f"{large['cpu_ms_per_call']:.2f} ms CPU per call"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main("memory", __doc__, run, report, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
