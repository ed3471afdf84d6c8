"""Client CPU per call: `cai generate` against a bare aiohttp loop sending the same bytes.

The fake server (tests/fake_server.py) runs as its own process with latency L. First a
capture run of `cai generate` (N prompts x R rounds, `--provider openai`) goes to a fake
server that logs every request body; those bodies are the floor's plan. Then, against a
fresh fake server, two sides alternate, each in a fresh process, several times:

- **cai**: `cai generate` run in-process through its click command (`cli.main`), exactly as
  the command line runs it: progress bar (to a file), pipeline, provider, call journal and
  records on disk.
- **floor**: a bare `aiohttp` loop that sends every captured body (JSON-encoded per call,
  compact, as cai sends it, with orjson as cai does where it is installed) under an
  `asyncio.Semaphore(C)` on a C-connection pool, reads each reply and decodes its JSON - the
  least any Python client of this API must do. The target ratio is taken against it.
- **floor_json**: the same loop with the json module, as a floor written with the stdlib alone
  would be (reported, not the target).

Each side's figure is its CPU time (`time.process_time`, user + system) from just before its
work to just after, divided by the calls made: interpreter start-up and module imports are
per process, not per call, and are left out on both sides: each imports, before its clock,
what its work imports (for cai, also what the command imports lazily: yaml, cai.batch, ...). CPU time, not wall time, because the machine is shared. Best and median
over the repeats; the ratio is taken on the best of each.

    python -m benchmarks.cpu_per_call [--quick] [--prompts N] [--latency L] [--concurrency C]...

`--baseline DIR` adds a third side: `cai generate` from another checkout (e.g. a `git worktree`
of an older commit), in the same alternation, to measure a change against the floor and
against what it replaced in one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import ROOT
from benchmarks.throughput import _start_server

__all__ = ["main", "run"]

# C=512 is issue 16's case (a self-hosted fleet's concurrency); C=64 is cai's usual scale.
DEFAULT_CONCURRENCY = (512, 64)

# The floor: what any Python client of the API must do per call, and nothing else.
FLOOR = """
import asyncio, json, sys, time
import aiohttp
try:  # the encoder cai uses, so that the floor is no slower than cai at JSON
    from orjson import dumps, loads
except ImportError:
    dumps = None
if dumps is None or sys.argv[2] == "json":  # the floor a user would write with the stdlib
    dumps = lambda body: json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    loads = json.loads

plan = json.load(open(sys.argv[1]))

async def main():
    bodies, concurrency = plan["bodies"], plan["concurrency"]
    url = plan["url"] + "/chat/completions"
    headers = {"Authorization": "Bearer sk-fake-benchmark-key", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    sent = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        async def call(body):
            nonlocal sent
            data = dumps(body)
            sent += len(data)
            async with semaphore:
                async with session.post(url, data=data, headers=headers) as response:
                    raw = await response.read()
                    assert response.status == 200, raw
            return loads(raw)["choices"][0]["message"]["content"]

        replies = await asyncio.gather(*(call(b) for b in bodies))
    assert all(isinstance(r, str) for r in replies)
    return sent

cpu0, wall0 = time.process_time(), time.perf_counter()
sent = asyncio.run(main())
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "calls": len(plan["bodies"]), "bytes_sent": sent}))
"""

# cai: the click command, in-process. What it imports (some lazily, e.g. yaml for the
# constitution) is imported before the clock: imports are per process, not per call
# (benchmarks/startup.py measures them).
CAI = """
import json, sys, time
import aiohttp, multiprocessing, openai, tqdm, yaml
import cai.batch, cai.cli, cai.engines, cai.pipeline, cai.providers.openai

out, args = sys.argv[1], sys.argv[2:]
cpu0, wall0 = time.process_time(), time.perf_counter()
cai.cli.cli.main(args, standalone_mode=False)
cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
calls = json.load(open(out + "/manifest.json"))["stats"]["calls"]
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "calls": calls}))
"""


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=10)


def _cai_args(url: str, prompts: Path, out: Path, rounds: int, concurrency: int) -> list[str]:
    return [
        *("generate", "--constitution", str(ROOT / "constitutions" / "harmless.md")),
        *("--prompts", str(prompts), "--out", str(out)),
        *("--provider", "openai", "--model", "bench-model", "--base-url", url + "/v1"),
        *("--rounds", str(rounds), "--concurrency", str(concurrency), "--max-retries", "0"),
    ]


def _child(code: str, args: list[str], cwd: Path, log: Path, root: Path = ROOT) -> dict[str, Any]:
    env = dict(os.environ, OPENAI_API_KEY="sk-fake-benchmark-key")  # the fake server's
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"exited with {done.returncode}:\n{log.read_text()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_prompts(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i in range(count):
            prompt = f"Benchmark prompt {i}: explain how to keep a sourdough starter alive."
            f.write(json.dumps({"prompt": prompt}) + "\n")


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    per_call = [s["cpu_s"] * 1000 / s["calls"] for s in samples]
    return {
        "cpu_ms_per_call_best": round(min(per_call), 3),
        "cpu_ms_per_call_median": round(statistics.median(per_call), 3),
        "wall_s_best": round(min(s["wall_s"] for s in samples), 3),
        "calls": samples[0]["calls"],
    }


def run(
    quick: bool = False,
    prompts: int | None = None,
    rounds: int = 1,
    latency: float = 0.1,
    concurrency: list[int] | None = None,
    repeats: int | None = None,
    baseline: str | None = None,
) -> dict[str, Any]:
    prompts = prompts or (300 if quick else 1000)
    repeats = repeats or (2 if quick else 5)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = tmp / "prompts.jsonl"
        _write_prompts(source, prompts)
        # The capture run: cai's own requests, logged by the server, become the floor's plan.
        log = tmp / "requests.jsonl"
        server, url = _start_server(latency, log=log)
        try:
            args = _cai_args(url, source, tmp / "capture", rounds, 64)
            _child(CAI, [str(tmp / "capture"), *args], tmp, tmp / "capture.log")
        finally:
            _stop(server)
        with log.open(encoding="utf-8") as f:
            bodies = [e["body"] for e in map(json.loads, f) if e["api"] == "openai"]
        cases = []
        for c in concurrency or DEFAULT_CONCURRENCY:
            case = _case(tmp, source, bodies, prompts, rounds, latency, c, repeats, baseline)
            cases.append(case)
    return {"cases": cases}


def _case(
    tmp: Path,
    source: Path,
    bodies: list[Any],
    prompts: int,
    rounds: int,
    latency: float,
    concurrency: int,
    repeats: int,
    baseline: str | None,
) -> dict[str, Any]:
    """The sides alternated `repeats` times at one concurrency, against a fresh server."""
    samples: dict[str, list[dict[str, Any]]] = {"cai": [], "floor": [], "floor_json": []}
    if baseline:
        samples["baseline"] = []
    server, url = _start_server(latency)
    try:
        plan = tmp / "plan.json"
        plan.write_text(
            json.dumps({"url": url + "/v1", "concurrency": concurrency, "bodies": bodies})
        )
        for k in range(repeats):
            out = tmp / f"run{concurrency}-{k}"
            args = _cai_args(url, source, out, rounds, concurrency)
            samples["cai"].append(_child(CAI, [str(out), *args], tmp, tmp / f"{out.name}.log"))
            samples["floor"].append(
                _child(FLOOR, [str(plan), "orjson"], tmp, tmp / f"floor{concurrency}-{k}.log")
            )
            samples["floor_json"].append(
                _child(FLOOR, [str(plan), "json"], tmp, tmp / f"floor_json{concurrency}-{k}.log")
            )
            if baseline:
                out = tmp / f"base{concurrency}-{k}"
                args = [str(out), *_cai_args(url, source, out, rounds, concurrency)]
                base = _child(CAI, args, tmp, tmp / f"{out.name}.log", Path(baseline).resolve())
                samples["baseline"].append(base)
    finally:
        _stop(server)
    cai, floor = _summary(samples["cai"]), _summary(samples["floor"])
    floor_json = _summary(samples["floor_json"])
    if cai["calls"] != floor["calls"]:
        raise RuntimeError(f"cai made {cai['calls']} calls, the floor {floor['calls']}")
    extra: dict[str, Any] = {}
    if baseline:
        extra["baseline"] = {"checkout": baseline, **_summary(samples["baseline"])}
        extra["baseline_cpu_ratio"] = round(
            extra["baseline"]["cpu_ms_per_call_best"] / floor["cpu_ms_per_call_best"], 3
        )
    return {
        "settings": {
            "prompts": prompts,
            "rounds": rounds,
            "latency_s": latency,
            "concurrency": concurrency,
            "repeats": repeats,
            "calls": cai["calls"],
            "mean_request_bytes": round(samples["floor"][0]["bytes_sent"] / floor["calls"]),
        },
        "cai": cai,
        "floor": floor,
        # The same loop with the json module: what a floor written with the stdlib costs.
        "floor_json": floor_json,
        "cpu_ratio_floor_json": round(
            cai["cpu_ms_per_call_best"] / floor_json["cpu_ms_per_call_best"], 3
        ),
        "cpu_ratio": round(cai["cpu_ms_per_call_best"] / floor["cpu_ms_per_call_best"], 3),
        "cpu_ratio_median": round(
            cai["cpu_ms_per_call_median"] / floor["cpu_ms_per_call_median"], 3
        ),
        "target_cpu_ratio": 2.0,
        **extra,
        "all_runs": samples,
    }


def report(result: dict[str, Any]) -> str:
    lines = []
    for case in result["cases"]:
        s, cai, floor = case["settings"], case["cai"], case["floor"]
        lines.append(
            f"cpu_per_call: {s['calls']} calls ({s['mean_request_bytes']} B each) at "
            f"C={s['concurrency']}, L={s['latency_s'] * 1000:.0f}ms: cai "
            f"{cai['cpu_ms_per_call_best']:.3f} ms (median {cai['cpu_ms_per_call_median']:.3f}), "
            f"floor {floor['cpu_ms_per_call_best']:.3f} ms "
            f"(median {floor['cpu_ms_per_call_median']:.3f}); ratio {case['cpu_ratio']:.2f} "
            f"(median {case['cpu_ratio_median']:.2f}, target <= 2); floor with the json module "
            f"{case['floor_json']['cpu_ms_per_call_best']:.3f} ms "
            f"(ratio {case['cpu_ratio_floor_json']:.2f})"
            + (
                f"; baseline {case['baseline']['cpu_ms_per_call_best']:.3f} ms "
                f"(ratio {case['baseline_cpu_ratio']:.2f})"
                if "baseline" in case
                else ""
            )
        )
    return "\n".join(lines)


def _options(parser: Any) -> None:
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help=f"repeatable; default {' and '.join(map(str, DEFAULT_CONCURRENCY))}",
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--baseline", default=None, help="another checkout of cai, measured too")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main("cpu_per_call", __doc__, run, report, argv, _options)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
