"""Overhead against the bare SDK: `cai generate` versus a plain `AsyncOpenAI` loop, same calls.

The fake server runs as its own process with latency L. First `cai generate --provider openai`
runs N prompts x R rounds at concurrency C as its own process; then a bare script, also its own
process, makes exactly as many chat calls with `AsyncOpenAI.chat.completions.create` under an
`asyncio.Semaphore(C)`, each carrying a critique-sized request (system prompt, few-shot turns,
prompt, answer, critique request) built from the same constitution. The bare script runs twice:
with the SDK's defaults, and with the SDK's aiohttp transport and a C-connection pool (the
faster baseline, which the target ratio is taken against). Every side pays its own interpreter
start and imports. The sides alternate and repeat; each keeps its best wall time.

Figures: wall-time ratio cai / bare (target <= 1.15 at C=64, L=50 ms) and CPU ms per call of
each process (from `wait4`).

    python -m benchmarks.overhead [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import ROOT
from benchmarks.memory import write_prompts

__all__ = ["BARE_LOOP", "main", "run"]

CONSTITUTION = ROOT / "constitutions" / "harmless.md"

# The baseline: what a user would write by hand with the SDK. Reads its plan from argv[1].
BARE_LOOP = """
import asyncio, json, sys
import openai

plan = json.load(open(sys.argv[1]))

async def main():
    http_client = None
    if sys.argv[2] == "aiohttp":
        limits = openai.DEFAULT_CONNECTION_LIMITS
        limits = type(limits)(max_connections=plan["concurrency"], max_keepalive_connections=plan["concurrency"])
        http_client = openai.DefaultAioHttpClient(limits=limits)
    client = openai.AsyncOpenAI(
        base_url=plan["url"], api_key="sk-fake-benchmark-key", max_retries=0, http_client=http_client
    )
    semaphore = asyncio.Semaphore(plan["concurrency"])
    prefix, prompts = plan["prefix"], plan["prompts"]

    async def call(i):
        prompt = prompts[i % len(prompts)]
        messages = prefix + [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "Answer to: " + prompt},
            {"role": "user", "content": plan["request"]},
        ]
        async with semaphore:
            reply = await client.chat.completions.create(
                model="bench-model", messages=messages, max_tokens=512, temperature=0.7, seed=i
            )
        return reply.choices[0].message.content

    replies = await asyncio.gather(*(call(i) for i in range(plan["calls"])))
    assert all(replies)
    await client.close()

asyncio.run(main())
"""


def _plan(url: str, prompts: int, calls: int, concurrency: int, path: Path) -> None:
    from cai.constitution import load_constitution
    from cai.prompts import build_critique_messages, critique_request

    constitution = load_constitution(CONSTITUTION)
    principle = constitution.principles[0]
    prefix = build_critique_messages(constitution, [], "", principle)[:-2]
    texts = [f"Prompt {i}: how do I keep a sourdough starter alive?" for i in range(prompts)]
    plan = {
        "url": url + "/v1",
        "concurrency": concurrency,
        "calls": calls,
        "prefix": prefix,
        "prompts": texts,
        "request": critique_request(principle),
    }
    path.write_text(json.dumps(plan), encoding="utf-8")


def run(quick: bool = False, latency: float = 0.05, concurrency: int = 64) -> dict[str, Any]:
    from benchmarks.throughput import _start_server

    prompts, rounds, repeats = (500, 2, 1) if quick else (2000, 2, 2)
    server, url = _start_server(latency)
    runs: dict[str, list[dict[str, Any]]] = {"cai": [], "bare_sdk": [], "bare_sdk_aiohttp": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            source = tmp_path / "prompts.jsonl"
            write_prompts(source, prompts)
            for k in range(repeats):
                out = tmp_path / f"run{k}"
                runs["cai"].append(
                    common.run_generate(url, source, out, rounds=rounds, concurrency=concurrency)
                )
                plan = tmp_path / "plan.json"
                if not plan.exists():
                    _plan(url, prompts, runs["cai"][0]["calls"], concurrency, plan)
                for transport in ("httpx", "aiohttp"):
                    bare = [sys.executable, "-c", BARE_LOOP, str(plan), transport]
                    log = tmp_path / f"bare-{transport}{k}.log"
                    name = "bare_sdk" if transport == "httpx" else "bare_sdk_aiohttp"
                    runs[name].append(common.run_process(bare, tmp_path, log))
    finally:
        server.terminate()
        server.wait(timeout=10)
    best = {name: min(samples, key=lambda r: r["wall_s"]) for name, samples in runs.items()}
    calls = best["cai"]["calls"]
    figures = {
        name: {
            "wall_s": round(r["wall_s"], 3),
            "cpu_ms_per_call": round(r["cpu_s"] * 1000 / calls, 3),
        }
        for name, r in best.items()
    }
    return {
        "settings": {
            "prompts": prompts,
            "rounds": rounds,
            "latency_s": latency,
            "concurrency": concurrency,
            "calls": calls,
            "repeats": repeats,
        },
        "bound_s": round(calls * latency / concurrency, 3),
        **figures,
        # Against the faster of the two bare loops: the SDK with its aiohttp transport.
        "wall_ratio": round(best["cai"]["wall_s"] / best["bare_sdk_aiohttp"]["wall_s"], 3),
        "cpu_ratio": round(best["cai"]["cpu_s"] / best["bare_sdk_aiohttp"]["cpu_s"], 3),
        "wall_ratio_default_sdk": round(best["cai"]["wall_s"] / best["bare_sdk"]["wall_s"], 3),
        "all_runs": runs,
        "target_wall_ratio": 1.15,
    }


def report(result: dict[str, Any]) -> str:
    s = result["settings"]
    return (
        f"overhead: {s['calls']} calls at C={s['concurrency']}, L={s['latency_s'] * 1000:.0f}ms: "
        f"cai {result['cai']['wall_s']:.2f}s, bare SDK+aiohttp "
        f"{result['bare_sdk_aiohttp']['wall_s']:.2f}s (ratio {result['wall_ratio']:.2f}), "
        f"bare SDK defaults {result['bare_sdk']['wall_s']:.2f}s, bound {result['bound_s']:.2f}s; "
        f"CPU/call cai {result['cai']['cpu_ms_per_call']:.2f} ms, bare+aiohttp "
        f"{result['bare_sdk_aiohttp']['cpu_ms_per_call']:.2f} ms, bare defaults "
        f"{result['bare_sdk']['cpu_ms_per_call']:.2f} ms"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main("overhead", __doc__, run, report, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
