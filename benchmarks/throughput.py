"""Throughput of `cai generate` against the fake API server: N prompts x R rounds, latency L,
concurrency C.

The fake server (tests/fake_server.py) runs as its own process, so the client's CPU time is
measured alone. The pipeline runs in this process exactly as `cai generate --provider openai`
runs it (real SDK, real HTTP, records and call journal written to a temporary run directory).

The bound is `calls x L / C`: the wall time if C calls were always in flight and the client
cost nothing. Reported: wall time, calls per second, ratio bound / wall (1.0 is perfect),
client CPU milliseconds per call, peak RSS.

    python benchmarks/throughput.py                       # the standard cases
    python benchmarks/throughput.py --prompts 1000 --rounds 2 --latency 0.1 --concurrency 64

Results go to benchmarks/results/throughput.json (one entry per case, replaced per run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "throughput.json"
# (prompts, rounds, latency seconds, concurrency[, no_change_every]). The last is issue 16's
# case: 1,000 prompts x 3 calls (every critique asks for a revision) at C=512, L=1 s.
STANDARD_CASES = [(1000, 2, 0.1, 64), (1000, 2, 0.1, 512), (1000, 1, 1.0, 512, 0)]

__all__ = ["main", "run_case"]


def _start_server(
    latency: float, no_change_every: int = 3, log: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """The fake server in its own process; one critique in `no_change_every` (0: none) finds
    nothing to change, which skips that prompt's revision call. `log` records each request."""
    command = [sys.executable, str(ROOT / "tests" / "fake_server.py"), "--port", "0"]
    command += ["--latency", str(latency), "--no-change-every", str(no_change_every)]
    if log is not None:
        command += ["--log", str(log)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    if not url.startswith("http://"):
        server.kill()
        raise RuntimeError("the fake server did not start")
    return server, url


def _write_prompts(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            prompt = f"Benchmark prompt {i}: explain how to keep a sourdough starter alive."
            f.write(json.dumps({"prompt": prompt}) + "\n")


async def _generate(prompts: Path, run_dir: Path, url: str, rounds: int, concurrency: int):
    from cai.constitution import load_constitution
    from cai.pipeline import GenerateConfig, run_generation
    from cai.providers.openai import OpenAIProvider
    from cai.rundir import RunStore
    from cai.sources import PromptSource

    constitution = load_constitution(ROOT / "constitutions" / "harmless.md")
    provider = OpenAIProvider("bench-model", base_url=url + "/v1", connections=concurrency)
    config = GenerateConfig(rounds=rounds, concurrency=concurrency, max_retries=0)
    try:
        return await run_generation(
            PromptSource(str(prompts)), constitution, provider, config, RunStore(run_dir)
        )
    finally:
        await provider.aclose()


def run_case(
    prompts: int, rounds: int, latency: float, concurrency: int, no_change_every: int = 3
) -> dict:
    """Run one case; returns its figures."""
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server, url = _start_server(latency, no_change_every)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "prompts.jsonl"
            _write_prompts(source, prompts)
            # Imports are start-up (benchmarks/startup.py), paid once per process: not here.
            import aiohttp  # noqa: F401
            import openai  # noqa: F401

            import cai.pipeline
            import cai.providers.openai  # noqa: F401

            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            stats = asyncio.run(_generate(source, Path(tmp) / "run", url, rounds, concurrency))
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
    finally:
        server.terminate()
        server.wait(timeout=10)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime
    if stats.failed or stats.done != prompts:
        raise RuntimeError(f"the run was not clean: {stats.done} done, {stats.failed} failed")
    bound = stats.calls * latency / concurrency
    return {
        "prompts": prompts,
        "rounds": rounds,
        "latency_s": latency,
        "concurrency": concurrency,
        "no_change_every": no_change_every,
        "calls": stats.calls,
        "wall_s": round(wall, 3),
        "calls_per_s": round(stats.calls / wall, 1),
        "bound_s": round(bound, 3),
        "ratio_to_bound": round(bound / wall, 3),
        "client_cpu_ms_per_call": round(cpu * 1000 / stats.calls, 3),
        # The fake server's own CPU: if it nears the wall time, the server is the bottleneck.
        "server_cpu_ms_per_call": round(server_cpu * 1000 / stats.calls, 3),
        # Below ~0.9 with a low ratio, the client was not CPU-bound: something else (often other
        # processes on the machine, see load_average) held it back.
        "client_cpu_share": round(cpu / wall, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        # ru_maxrss is KiB on Linux.
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _save(results: list[dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}

    def key(c: dict) -> tuple:
        return (
            c["prompts"],
            c["rounds"],
            c["latency_s"],
            c["concurrency"],
            c.get("no_change_every", 3),
        )

    cases = {key(c): c for c in previous.get("cases", [])}
    for r in results:
        cases[key(r)] = r
    data = {
        "benchmark": "throughput",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "cases": sorted(cases.values(), key=lambda c: (c["latency_s"], c["concurrency"])),
    }
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument(
        "--no-change-every",
        type=int,
        default=3,
        help="the fake finds nothing to change in one critique in N (0: none, 3 calls a prompt)",
    )
    args = parser.parse_args(argv)
    if (args.prompts is None) != (args.concurrency is None):
        parser.error("give both --prompts and --concurrency, or neither for the standard cases")
    cases = (
        [(args.prompts, args.rounds, args.latency, args.concurrency, args.no_change_every)]
        if args.prompts
        else STANDARD_CASES
    )
    results = []
    for case in cases:
        result = run_case(*case)
        results.append(result)
        print(
            f"N={result['prompts']} R={result['rounds']} L={result['latency_s'] * 1000:.0f}ms "
            f"C={result['concurrency']}: {result['calls']} calls in {result['wall_s']:.2f}s, "
            f"{result['calls_per_s']:.0f} calls/s, {result['ratio_to_bound']:.0%} of the bound "
            f"({result['bound_s']:.2f}s), {result['client_cpu_ms_per_call']:.2f} ms CPU/call "
            f"(server {result['server_cpu_ms_per_call']:.2f}), "
            f"client CPU share {result['client_cpu_share']:.0%}, "
            f"load {result['load_average_1m']:.1f}, "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    _save(results)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
