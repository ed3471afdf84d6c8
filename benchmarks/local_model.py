"""Local model: output tokens per second of a real run on the bundled model, against llama.cpp.

Three sides make the same kind of calls, on the same model file, context size and threads:

- `cai`: the pipeline (`run_generation`) with the `local` provider as `cai generate` uses it,
  at the default concurrency of 32 - calls of different prompts arrive interleaved.
- `cai_no_reuse`: the same with `LocalProvider(reuse_prefixes=False)`: calls in arrival order,
  only llama.cpp's own reuse of the previous call's prefix (what the provider did before).
- `llama_cpp`: `llama_cpp.Llama.create_chat_completion` alone, replaying the exact calls the
  `cai` side made (same messages, seeds, sampling), one prompt's chain after another - the
  natural plain loop, in which llama.cpp reuses each call's prefix for the next.

Figure: output tokens / wall seconds for each side (model load excluded), and the ratio
cai / llama_cpp (target >= 0.9). Sides alternate and repeat; each keeps its best run. From
llama.cpp's own counters, each side also reports how many prompt tokens it really evaluated
(the rest came from the cache) and the share of its wall time llama.cpp spent evaluating.

    python -m benchmarks.local_model [--quick] [--staggered]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import ROOT

__all__ = ["main", "run"]

CONSTITUTION = ROOT / "constitutions" / "harmless.md"
PROMPTS = ROOT / "examples" / "red_team_prompts.jsonl"


class _Recorder:
    """Passes calls to a provider and keeps each call's messages, seed and output length."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.provider, name)

    async def complete(self, messages: Any, sampling: Any, *, seed: int | None = None) -> Any:
        completion = await self.provider.complete(messages, sampling, seed=seed)
        self.calls.append(
            {
                "messages": messages,
                "sampling": sampling,
                "seed": seed,
                "output_tokens": completion.usage.output_tokens,
                "input_tokens": completion.usage.input_tokens,
            }
        )
        return completion


def _cai_side(
    prompts: int, rounds: int, max_tokens: int, threads: int, reuse: bool, concurrency: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from cai.constitution import load_constitution
    from cai.pipeline import GenerateConfig, run_generation
    from cai.providers.local import LocalProvider
    from cai.rundir import RunStore
    from cai.sources import PromptSource

    constitution = load_constitution(CONSTITUTION)
    provider = LocalProvider(n_threads=threads, reuse_prefixes=reuse)
    _perf(provider._load(), reset=True)  # model load is not what is measured
    recorder = _Recorder(provider)
    config = GenerateConfig(
        rounds=rounds, max_tokens=max_tokens, limit=prompts, concurrency=concurrency
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            stats = asyncio.run(
                run_generation(
                    PromptSource(str(PROMPTS)), constitution, recorder, config, RunStore(tmp)
                )
            )
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        perf = _perf(provider._llama)
    finally:
        hits = provider.snapshot_hits
        provider.close()
    if stats.failed or stats.done != prompts:
        raise RuntimeError(f"the run was not clean: {stats.done} done, {stats.failed} failed")
    return {
        "calls": stats.calls,
        "input_tokens": stats.usage.input_tokens,
        "output_tokens": stats.usage.output_tokens,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_s": round(stats.usage.output_tokens / wall, 2),
        "snapshot_restores": hits,
        **perf,
    }, recorder.calls


def _llama_side(calls: list[dict[str, Any]], threads: int) -> dict[str, Any]:
    from cai.providers.local import bundled_model_path, load_llama

    llama = load_llama(bundled_model_path(), n_ctx=4096, n_threads=threads, verbose=False)
    _perf(llama, reset=True)
    try:
        output = prompt = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for call in calls:
            sampling = call["sampling"]
            result = llama.create_chat_completion(
                messages=call["messages"],
                temperature=sampling.temperature,
                max_tokens=sampling.max_tokens,
                top_p=sampling.top_p if sampling.top_p is not None else 0.95,
                seed=call["seed"],
            )
            output += result["usage"]["completion_tokens"]
            prompt += result["usage"]["prompt_tokens"]
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        perf = _perf(llama)
    finally:
        llama.close()
    return {
        "calls": len(calls),
        "input_tokens": prompt,
        "output_tokens": output,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_s": round(output / wall, 2),
        **perf,
    }


def _perf(llama: Any, reset: bool = False) -> dict[str, Any]:
    """llama.cpp's own counters: tokens it evaluated in batches (prompts) and one by one."""
    import llama_cpp

    if reset:
        llama_cpp.llama_perf_context_reset(llama.ctx)
        return {}
    data = llama_cpp.llama_perf_context(llama.ctx)
    return {
        "prompt_tokens_evaluated": data.n_p_eval,
        "prompt_eval_s": round(data.t_p_eval_ms / 1000, 2),
        "tokens_generated": data.n_eval,
        "generation_s": round(data.t_eval_ms / 1000, 2),
    }


def run(
    quick: bool = False,
    threads: int | None = None,
    concurrency: int = 32,
    staggered: bool = False,
) -> dict[str, Any]:
    from cai.providers.local import default_threads, use_extra_buffers

    threads = threads or default_threads()
    # What turning llama.cpp's extra buffers off costs, measured where both settings run (not
    # on a CPU that advertises AMX: there the default is already off, and on is unsafe).
    extra_buffers = use_extra_buffers()
    prompts, rounds, max_tokens, repeats = (2, 1, 64, 1) if quick else (3, 2, 96, 2)
    if staggered:  # more prompts than calls in flight: chains start as others end
        prompts, rounds, max_tokens, concurrency = 5, 1, 48, 2
    sides: dict[str, list[dict[str, Any]]] = {"cai": [], "cai_no_reuse": [], "llama_cpp": []}
    for _ in range(repeats):
        result, calls = _cai_side(prompts, rounds, max_tokens, threads, True, concurrency)
        sides["cai"].append(result)
        sides["llama_cpp"].append(_llama_side(_replay_order(calls), threads))
        if not sides["cai_no_reuse"]:  # once: it only shows what the reuse is worth
            result, _ = _cai_side(prompts, rounds, max_tokens, threads, False, concurrency)
            sides["cai_no_reuse"].append(result)
    for runs in sides.values():
        for r in runs:
            # The share of the wall time llama.cpp spent evaluating: the rest is overhead.
            r["llama_busy_fraction"] = round(
                (r["prompt_eval_s"] + r["generation_s"]) / r["wall_s"], 3
            )
    best = {name: max(runs, key=lambda r: r["tokens_per_s"]) for name, runs in sides.items()}
    return {
        "settings": {
            "prompts": prompts,
            "rounds": rounds,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "n_threads": threads,
            "repeats": repeats,
            "constitution": CONSTITUTION.name,
            "extra_buffers": extra_buffers,
        },
        "runs": sides,
        "best": best,
        "ratio": round(best["cai"]["tokens_per_s"] / best["llama_cpp"]["tokens_per_s"], 3),
        "ratio_no_reuse": round(
            best["cai_no_reuse"]["tokens_per_s"] / best["llama_cpp"]["tokens_per_s"], 3
        ),
        # What turning llama.cpp's extra buffers off costs; None where only "off" can run.
        "extra_buffers_cost": _extra_buffers_cost(threads) if extra_buffers else None,
    }


def _replay_order(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prompt's calls together, in its chain's order (calls arrive sorted by step per chain)."""
    order: dict[int, list[dict[str, Any]]] = {}
    for call in calls:
        order.setdefault(_prompt_index(call["messages"]), []).append(call)
    return [call for index in sorted(order) for call in order[index]]


def _prompt_index(messages: list[dict[str, str]]) -> int:
    """Which benchmark prompt a call belongs to: the prompt's first user turn is among its turns."""
    turns = {m["content"] for m in messages if m["role"] == "user"}
    for i, text in enumerate(_prompt_texts()):
        if text in turns:
            return i
    raise ValueError("a call whose prompt is not one of the benchmark prompts")


_PROMPT_TEXTS: list[str] = []


def _prompt_texts() -> list[str]:
    from cai.sources import PromptSource

    if not _PROMPT_TEXTS:
        for item in PromptSource(str(PROMPTS)):
            _PROMPT_TEXTS.append(next(m["content"] for m in item.messages if m["role"] == "user"))
    return _PROMPT_TEXTS


def report(result: dict[str, Any]) -> str:
    best = result["best"]
    return (
        f"local model: cai {best['cai']['tokens_per_s']:.1f} tok/s, "
        f"llama.cpp alone {best['llama_cpp']['tokens_per_s']:.1f} tok/s "
        f"(ratio {result['ratio']:.2f}); without prefix reuse "
        f"{best['cai_no_reuse']['tokens_per_s']:.1f} tok/s (ratio {result['ratio_no_reuse']:.2f})"
        + _extra_buffers_report(result)
    )


def _extra_buffers_cost(threads: int, repeats: int = 4) -> dict[str, Any]:
    """Prompt evaluation and generation speed of llama.cpp with and without its extra buffer
    types, on one long prompt (about 1,300 tokens) and 64 output tokens, greedy.

    Both models stay loaded and the two settings alternate (on, off, then off, on, ...), so a
    change in the machine's load falls on both; the median of `repeats` runs is kept.
    """
    import statistics

    import llama_cpp

    from cai.providers.local import bundled_model_path, load_llama

    document = CONSTITUTION.read_text(encoding="utf-8")[:6000]
    messages = [{"role": "user", "content": f"Summarise this in three sentences:\n{document}"}]
    models = {
        on: load_llama(
            bundled_model_path(), extra_buffers=on, n_ctx=4096, n_threads=threads, verbose=False
        )
        for on in (True, False)
    }
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        for i in range(repeats):
            for on in (True, False) if i % 2 == 0 else (False, True):
                llama = models[on]
                llama.reset()  # evaluate the whole prompt every time
                llama_cpp.llama_perf_context_reset(llama.ctx)
                llama.create_chat_completion(
                    messages=messages, max_tokens=64, temperature=0.0, seed=0
                )
                perf = llama_cpp.llama_perf_context(llama.ctx)
                runs[on].append(
                    (
                        perf.n_p_eval / (perf.t_p_eval_ms / 1000),
                        perf.n_eval / (perf.t_eval_ms / 1000),
                    )
                )
    finally:
        for llama in models.values():
            llama.close()
    result: dict[str, Any] = {"repeats": repeats}
    for on, name in ((True, "on"), (False, "off")):
        result[f"prompt_tokens_per_s_{name}"] = round(statistics.median(r[0] for r in runs[on]), 1)
        result[f"generation_tokens_per_s_{name}"] = round(
            statistics.median(r[1] for r in runs[on]), 1
        )
    result["prompt_ratio_off_to_on"] = round(
        result["prompt_tokens_per_s_off"] / result["prompt_tokens_per_s_on"], 3
    )
    result["generation_ratio_off_to_on"] = round(
        result["generation_tokens_per_s_off"] / result["generation_tokens_per_s_on"], 3
    )
    return result


def _extra_buffers_report(result: dict[str, Any]) -> str:
    cost = result.get("extra_buffers_cost")
    if not cost:
        return "; extra buffers off (the CPU advertises AMX), so their cost was not measured"
    return (
        f"; llama.cpp without extra buffers: prompt {cost['prompt_tokens_per_s_off']:.0f} vs "
        f"{cost['prompt_tokens_per_s_on']:.0f} tok/s ({cost['prompt_ratio_off_to_on']:.2f}x), "
        f"generation {cost['generation_tokens_per_s_off']:.1f} vs "
        f"{cost['generation_tokens_per_s_on']:.1f} tok/s ({cost['generation_ratio_off_to_on']:.2f}x)"
    )


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads.")
    parser.add_argument(
        "--staggered",
        action="store_true",
        help="5 prompts, 1 round, concurrency 2: chains start as others end, so initial "
        "answers fall between critiques (results in local_model_staggered.json).",
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    staggered = "--staggered" in (sys.argv[1:] if argv is None else argv)
    name = "local_model_staggered" if staggered else "local_model"
    return common.main(name, __doc__, run, report, argv, options=_options)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
