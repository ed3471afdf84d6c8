"""The Ray engine against the default engine: `cai generate` at C=512, L=100 ms, on this machine.

Both run the pipeline in this process as `cai generate --provider openai` does, against the
fake server (tests/fake_server.py) in a process of its own, so its CPU is left out. The Ray
case joins a local Ray instance started here and runs `--engine ray --workers 2`.

Reported for each engine: calls per second, the ratio to the bound `calls x L / C`, and CPU
milliseconds per call. For Ray that CPU is the driver's (this process, with Ray's threads in
it) plus every process Ray started (GCS, raylet, the workers and their own start-up), read
from /proc. Ray's start-up cost: `ray.init` of a local instance, then the workers' start
(an actor process each, importing cai and building its provider) until all are ready.

    python -m benchmarks.ray_engine [--quick] [--prompts N] [--workers W]
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.common import main as run_main
from benchmarks.throughput import _start_server as start_server

__all__ = ["main", "run"]

LATENCY = 0.1
CONCURRENCY = 512
ROUNDS = 2


def _descendants_cpu(exclude: set[int]) -> dict[int, float]:
    """CPU seconds of each live process descended from this one, less `exclude` (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    mine, found = {os.getpid()}, True
    while found:
        found = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                found = True
    return {pid: times[pid] for pid in mine - {os.getpid()} - exclude}


def _case(url: str, prompts: Path, out: Path, engine: Any) -> dict[str, Any]:
    from cai.constitution import load_constitution
    from cai.pipeline import GenerateConfig, run_generation
    from cai.providers import create_provider
    from cai.rundir import RunStore
    from cai.sources import PromptSource

    constitution = load_constitution(ROOT / "constitutions" / "harmless.md")
    config = GenerateConfig(rounds=ROUNDS, concurrency=CONCURRENCY, max_retries=0)
    provider = create_provider(
        "openai", model="bench-model", base_url=url + "/v1", connections=CONCURRENCY
    )

    async def go() -> Any:
        try:
            return await run_generation(
                PromptSource(str(prompts)), constitution, provider, config, RunStore(out),
                engine=engine,
            )  # fmt: skip
        finally:
            await provider.aclose()

    wall0, cpu0 = time.perf_counter(), time.process_time()
    stats = asyncio.run(go())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if stats.failed or stats.done == 0:
        raise RuntimeError(f"the run was not clean: {stats.done} done, {stats.failed} failed")
    bound = stats.calls * LATENCY / CONCURRENCY
    return {
        "calls": stats.calls,
        "wall_s": round(wall, 3),
        "calls_per_s": round(stats.calls / wall, 1),
        "ratio_to_bound": round(bound / wall, 3),
        "driver_cpu_ms_per_call": round(cpu * 1000 / stats.calls, 3),
        "_driver_cpu_s": cpu,
    }


def run(quick: bool, prompts: int | None, workers: int) -> dict[str, Any]:
    import ray

    from cai.engines.ray import RayEngine
    from cai.providers import create_provider

    count = prompts or (300 if quick else 1000)
    os.environ.setdefault("OPENAI_API_KEY", "sk-fake-benchmark-key")  # the workers inherit it
    server, url = start_server(LATENCY)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "prompts.jsonl"
            source.write_text(
                "".join(
                    json.dumps({"prompt": f"Benchmark prompt {i}: how do I keep a starter alive?"})
                    + "\n"
                    for i in range(count)
                ),
                encoding="utf-8",
            )
            default = _case(url, source, Path(tmp) / "default", None)

            before = sum(_descendants_cpu({server.pid}).values())
            began = time.perf_counter()
            ray.init(
                num_cpus=max(os.cpu_count() or 2, workers),
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
            )
            init_s = time.perf_counter() - began
            make = partial(create_provider, "openai", model="bench-model", base_url=url + "/v1")
            engine = RayEngine(make, workers=workers)
            system0 = _descendants_cpu({server.pid})
            try:
                result = _case(url, source, Path(tmp) / "ray", engine)
                # Read before shutdown, while Ray's processes are alive: the run's CPU, the
                # workers' start-up included, none of `ray.init`'s.
                # Per process: one that ended during the run takes its CPU with it (a small
                # undercount), never below the baseline.
                ray_cpu = sum(
                    cpu - system0.get(pid, 0.0)
                    for pid, cpu in _descendants_cpu({server.pid}).items()
                )
            finally:
                ray.shutdown()
            init_cpu = sum(system0.values()) - before
    finally:
        server.terminate()
        server.wait(timeout=10)
    calls = result["calls"]
    result["ray_processes_cpu_ms_per_call"] = round(ray_cpu * 1000 / calls, 3)
    result["total_cpu_ms_per_call"] = round(
        (result.pop("_driver_cpu_s") + ray_cpu) * 1000 / calls, 3
    )
    default["total_cpu_ms_per_call"] = round(default.pop("_driver_cpu_s") * 1000 / calls, 3)
    return {
        "prompts": count,
        "rounds": ROUNDS,
        "latency_s": LATENCY,
        "concurrency": CONCURRENCY,
        "workers": workers,
        "default": default,
        "ray": result,
        "startup": {
            "ray_init_s": round(init_s, 3),
            "ray_init_cpu_s": round(init_cpu, 3),
            "workers_ready_s": engine.startup_seconds,
        },
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def report(result: dict[str, Any]) -> str:
    d, r, s = result["default"], result["ray"], result["startup"]
    return "\n".join(
        [
            f"{result['prompts']} prompts x {result['rounds']} rounds, C={result['concurrency']}, "
            f"L={result['latency_s'] * 1000:.0f} ms (load {result['load_average_1m']}):",
            f"  default: {d['calls_per_s']} calls/s (ratio to bound {d['ratio_to_bound']}), "
            f"{d['total_cpu_ms_per_call']} CPU ms/call",
            f"  ray, {result['workers']} workers: {r['calls_per_s']} calls/s (ratio "
            f"{r['ratio_to_bound']}), {r['total_cpu_ms_per_call']} CPU ms/call "
            f"(driver {r['driver_cpu_ms_per_call']}, Ray processes "
            f"{r['ray_processes_cpu_ms_per_call']})",
            f"  Ray start-up: ray.init {s['ray_init_s']} s ({s['ray_init_cpu_s']} CPU s), "
            f"workers ready {s['workers_ready_s']} s",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def options(parser: Any) -> None:
        parser.add_argument("--prompts", type=int, default=None, help="Prompts (default 1000).")
        parser.add_argument("--workers", type=int, default=2, help="Ray workers (default 2).")

    return run_main("ray_engine", __doc__ or "", run, report, argv, options)


if __name__ == "__main__":
    main()
