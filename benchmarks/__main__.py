"""Run the benchmark suite: `python -m benchmarks [--quick] [names...]`.

Each benchmark writes benchmarks/results/<name>.json; then the results table in
benchmarks/README.md (between the `results` markers) is regenerated from every results file,
so the table always shows the latest run of each benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT

__all__ = ["BENCHMARKS", "main", "render_table"]

README = ROOT / "benchmarks" / "README.md"
START, END = "<!-- results -->", "<!-- /results -->"


def _throughput(quick: bool) -> None:
    from benchmarks import throughput

    throughput.main(["--prompts", "300", "--concurrency", "64"] if quick else [])


def _module(name: str) -> Callable[[bool], Any]:
    def run(quick: bool) -> Any:
        import importlib

        return importlib.import_module(f"benchmarks.{name}").main(["--quick"] if quick else [])

    return run


# Cheapest first, the local model (minutes of CPU) last.
BENCHMARKS: dict[str, Callable[[bool], Any]] = {
    "startup": _module("startup"),
    "memory": _module("memory"),
    "overhead": _module("overhead"),
    "cpu_per_call": _module("cpu_per_call"),
    "throughput": _throughput,
    "feedback": _module("feedback"),
    "local_model": _module("local_model"),
}


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _extra_buffers_cell(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "extra buffers off (the CPU advertises AMX)"
    return (
        f"without llama.cpp's extra buffers: prompt {cost['prompt_ratio_off_to_on']:.2f}x, "
        f"generation {cost['generation_ratio_off_to_on']:.2f}x the speed with them"
    )


def _rows() -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, target, verdict, measured) rows from the results files."""
    rows = []
    if data := _load("throughput"):
        for case in data["cases"]:
            if (case["prompts"], case["rounds"], case["latency_s"]) != (1000, 2, 0.1):
                continue
            target = 0.95 if case["concurrency"] == 64 else 0.85
            rows.append(
                (
                    f"Throughput, C={case['concurrency']}",
                    f"{case['ratio_to_bound']:.1%} of the bound ({case['calls']} calls in "
                    f"{case['wall_s']:.2f} s, bound {case['bound_s']:.2f} s; "
                    f"{case['client_cpu_ms_per_call']:.2f} ms CPU/call)",
                    f">= {target:.0%}",
                    _verdict(case["ratio_to_bound"] >= target),
                    data["measured"],
                )
            )
        for case in data["cases"]:
            if (case["latency_s"], case["concurrency"], case.get("no_change_every")) != (
                1.0,
                512,
                0,
            ):
                continue
            rows.append(
                (
                    f"Throughput, C=512, L=1 s, {case['prompts']} prompts x 3 calls",
                    f"{case['ratio_to_bound']:.1%} of the bound ({case['calls']} calls in "
                    f"{case['wall_s']:.2f} s, bound {case['bound_s']:.2f} s; "
                    f"{case['client_cpu_ms_per_call']:.2f} ms CPU/call, load "
                    f"{case['load_average_1m']})",
                    ">= 85%",
                    _verdict(case["ratio_to_bound"] >= 0.85),
                    data["measured"],
                )
            )
    if data := _load("cpu_per_call"):
        for case in data.get("cases", []):
            s, cai, floor = case["settings"], case["cai"], case["floor"]
            rows.append(
                (
                    f"Client CPU per call vs aiohttp floor, C={s['concurrency']}, "
                    f"L={s['latency_s'] * 1000:.0f} ms",
                    f"{case['cpu_ratio']:.2f}x the floor (best {cai['cpu_ms_per_call_best']:.3f}"
                    f" vs {floor['cpu_ms_per_call_best']:.3f} ms; median ratio "
                    f"{case['cpu_ratio_median']:.2f}x; {case['cpu_ratio_floor_json']:.2f}x a "
                    f"json-module floor); {s['calls']} calls of {s['mean_request_bytes']} B"
                    + (
                        f"; before issue 16: {case['baseline']['cpu_ms_per_call_best']:.3f} ms "
                        f"({case['baseline_cpu_ratio']:.2f}x)"
                        if "baseline" in case
                        else ""
                    ),
                    "<= 2x",
                    _verdict(case["cpu_ratio"] <= 2.0),
                    data["measured"],
                )
            )
    if data := _load("feedback"):
        for case in data["cases"]:
            # Each pair's 2 x votes calls are gathered: the last wave of calls is part-full.
            target = 0.90 if case["concurrency"] <= 64 else 0.75
            rows.append(
                (
                    f"Labelling (`cai label`), C={case['concurrency']}",
                    f"{case['ratio_to_bound']:.1%} of the bound ({case['calls']} calls, "
                    f"{case['pairs']} pairs x {case['votes']} votes x 2 orders, in "
                    f"{case['wall_s']:.2f} s, bound {case['bound_s']:.2f} s; "
                    f"{case['client_cpu_ms_per_call']:.2f} ms CPU/call)",
                    f">= {target:.0%}",
                    _verdict(case["ratio_to_bound"] >= target),
                    data["measured"],
                )
            )
    if data := _load("overhead"):
        s = data["settings"]
        rows.append(
            (
                f"Overhead vs bare SDK, C={s['concurrency']}, L={s['latency_s'] * 1000:.0f} ms",
                f"{data['wall_ratio']:.2f}x the wall time of AsyncOpenAI+aiohttp "
                f"({data['cai']['wall_s']:.2f} s vs {data['bare_sdk_aiohttp']['wall_s']:.2f} s; "
                f"{data['wall_ratio_default_sdk']:.2f}x vs SDK defaults, "
                f"{data['bare_sdk']['wall_s']:.2f} s); CPU/call {data['cai']['cpu_ms_per_call']:.2f}"
                f" ms vs {data['bare_sdk_aiohttp']['cpu_ms_per_call']:.2f} ms "
                f"({data['bare_sdk']['cpu_ms_per_call']:.2f} ms defaults); {s['calls']} calls",
                "<= 1.15x",
                _verdict(data["wall_ratio"] <= 1.15),
                data["measured"],
            )
        )
    if data := _load("memory"):
        small, large = data["cases"]
        rows.append(
            (
                "Memory, peak RSS",
                f"{small['peak_rss_mib']:.0f} MiB at {small['prompts']:,} prompts, "
                f"{large['peak_rss_mib']:.0f} MiB at {large['prompts']:,} (ratio "
                f"{data['ratio']:.2f})",
                "<= 1.2x and < 300 MB",
                _verdict(data["ratio"] <= 1.2 and large["peak_rss_mib"] * 1.048576 < 300),
                data["measured"],
            )
        )
    if data := _load("startup"):
        c = data["commands"]
        rows.append(
            (
                "Start-up, `cai --help`",
                f"{c['cai --help']['best_s']:.3f} s best, {c['cai --help']['median_s']:.3f} s "
                f"median (bare `python -c pass`: {c['python -c pass']['best_s']:.3f} s); "
                f"`cai constitution check` {c['cai constitution check']['best_s']:.3f} s; "
                f"heavy modules imported: {', '.join(c['cai --help']['heavy_imports']) or 'none'}",
                "< 0.3 s",
                _verdict(c["cai --help"]["best_s"] < 0.3),
                data["measured"],
            )
        )
    if data := _load("local_model"):
        best = data["best"]
        rows.append(
            (
                "Local model, output tokens/s",
                f"{data['ratio']:.2f}x llama.cpp alone ({best['cai']['tokens_per_s']:.1f} vs "
                f"{best['llama_cpp']['tokens_per_s']:.1f} tok/s); without prefix reuse "
                f"{best['cai_no_reuse']['tokens_per_s']:.1f} tok/s ({data['ratio_no_reuse']:.2f}x); "
                f"prompt tokens evaluated {best['cai']['prompt_tokens_evaluated']:,} vs "
                f"{best['llama_cpp']['prompt_tokens_evaluated']:,} (of "
                f"{best['cai']['input_tokens']:,} sent); llama.cpp busy "
                f"{best['cai']['llama_busy_fraction']:.0%} of cai's wall time; "
                + _extra_buffers_cell(data.get("extra_buffers_cost")),
                ">= 0.9x",
                _verdict(data["ratio"] >= 0.9),
                data["measured"],
            )
        )
    return rows


def render_table() -> str:
    lines = [
        "| Benchmark | Measured | Target | | When (UTC) |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} |" for row in _rows()),
    ]
    loads = [
        f"{name} {data['machine']['load_avg_1m']}"
        for name in BENCHMARKS
        if (data := _load(name)) and "load_avg_1m" in data.get("machine", {})
    ]
    if loads:
        lines += ["", f"1-minute load average when each ran: {', '.join(loads)}."]
    return "\n".join(lines)


def _update_readme() -> None:
    text = README.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{render_table()}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="Smaller cases, fewer repeats.")
    parser.add_argument(
        "names", nargs="*", help=f"Some of: {', '.join(BENCHMARKS)} (default: all)."
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in args.names or BENCHMARKS:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        BENCHMARKS[name](args.quick)
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    _update_readme()
    print(f"Updated the results table in {README.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
