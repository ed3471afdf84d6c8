"""`cai prompts generate`: red-team prompts written from the constitution."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.cli.options import _redact, from_fields, from_params
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_job
from cai.options import PromptsOptions

# Every field of PromptsOptions is a flag; --limit and --shard mean nothing here.
_SKIPPED = ("limit", "shard")


@click.group()
def prompts() -> None:
    """Prompts made from a constitution, for `cai generate --prompts`."""


@prompts.command("generate")
@from_fields(PromptsOptions, skip=_SKIPPED)
def generate(**params: Any) -> None:
    """Write red-team prompts that target the constitution's principles, deduplicated.

    Each call picks one cell: a principle drawn by weight (seeded, as cai generate draws
    them) and an attack style; it shows --shots seed prompts and asks for --per-call new
    ones as a JSON array. --benign of the calls ask for harmless look-alikes, --multi-turn
    for conversations that escalate. Every prompt is checked against the seeds and those kept
    so far (exact after Unicode and whitespace normalisation, then MinHash LSH near
    duplicates); calls go on until --n prompts are kept or --max-calls calls were made.
    RUN_DIR/prompts.jsonl is what `cai generate --prompts RUN_DIR` reads. Running the same
    command again resumes (and with a larger --n, goes on).

    Exit codes: 0 done, 2 bad input, 3 some calls failed (rerun to retry them), 4 stopped at
    --max-cost (rerun with a higher one), 130 interrupted.
    """
    from cai.api import prepare_prompts

    opts = from_params(PromptsOptions, params, skip=_SKIPPED)
    job = prepare_prompts(opts)
    stats = _run_job(job, unit="call", desc="prompts")
    if stats is None:  # --dry-run: the plan was printed
        return
    _print_summary(stats, job.dir, opts.out is not None)
    if opts.batch:
        _print_batch_summary(job.backend, stats, job.dir, opts.out is None)
    _exit_unfinished(stats)


def _print_summary(stats: Any, run_dir: Path, has_out: bool) -> None:
    from cai.pricing import format_cost
    from cai.redteam import format_prompts_stats, prompts_stats

    u = stats.usage
    lines = [
        "",
        f"{'Interrupted' if stats.interrupted else 'Done'} in "
        f"{time.monotonic() - stats.started:.1f}s: {plural(stats.prompts, 'prompt')} of "
        f"{stats.wanted} wanted; {plural(stats.done, 'call')} answered, {stats.failed} failed, "
        f"{stats.refusals} refused, "
        f"{stats.already_done} done before",
        f"Calls: {stats.calls} ({stats.journal_hits} reused from the journal), retries: "
        f"{stats.retries}; tokens: {u.input_tokens} in, {u.output_tokens} out"
        + (f"; estimated cost {format_cost(stats.cost_usd)}" if stats.cost_usd else ""),
    ]
    if stats.cap_reached:
        lines.append(
            f"Stopped at the call cap ({plural(stats.call_cap, 'call')}, --max-calls) with "
            f"{stats.prompts} of {plural(stats.wanted, 'prompt')}; raise --max-calls and run again to go on."
        )
    if stats.first_error:
        lines.append(f"First failure: {stats.first_error}")
    # Stopped at --max-cost: the budget's own line (next) says how to go on.
    if (stats.interrupted or stats.failed) and not stats.over_budget:
        again = "Run the same command again" if has_out else f"Run it again with --out {run_dir}"
        lines.append(f"{again} to resume.")
    if (run_dir / "manifest.json").exists():
        lines += ["", format_prompts_stats(prompts_stats(run_dir))]
    lines.append(f"Prompts: {run_dir / 'prompts.jsonl'}")
    lines.append(
        f"Next: cai generate --constitution ... --prompts {run_dir} (principle, style and kind "
        "go into the records and export rows)"
    )
    click.echo(_redact("\n".join(lines)), err=True)
