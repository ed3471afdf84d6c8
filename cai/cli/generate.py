"""`cai generate`: sample, critique and revise each prompt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.cli.options import _redact, from_fields, from_params
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_job
from cai.options import GenerateOptions


@click.command()
@from_fields(GenerateOptions)
def generate(**params: Any) -> None:
    """Answer each prompt, critique and revise the answer against the constitution, save records.

    Each prompt gets an initial response, then --rounds rounds: a principle is drawn by weight
    (seeded by --seed and the prompt), the model critiques its latest answer against it and
    revises it. Records go to RUN_DIR/records.jsonl as each prompt finishes. Running the same
    command again resumes: finished prompts are skipped and failed ones retried.

    Exit codes: 0 done, 2 bad input, 3 some prompts failed (rerun to retry them), 4 stopped at
    --max-cost (rerun with a higher one), 130 interrupted.
    """
    from cai.api import prepare_generate

    opts = from_params(GenerateOptions, params)
    job = prepare_generate(opts)
    stats = _run_job(job)
    if stats is None:  # --dry-run: the plan was printed
        return
    resume = (
        "Run the same command again"
        if opts.out is not None
        else f"Run the same command{' without --fresh' if opts.fresh else ''} with --out {job.dir}"
    )
    _print_summary(stats, job.dir, job.source, resume, retry_failed=not opts.no_retry_failed)
    if opts.batch:
        _print_batch_summary(job.backend, stats, job.dir, opts.out is None)
    _exit_unfinished(stats)


def _print_summary(
    stats: Any, run_dir: Path, source: Any, resume: str, *, retry_failed: bool = True
) -> None:
    from cai.ledger import format_ledger, read_ledger
    from cai.pricing import format_cost

    u = stats.usage
    lines = [
        "",
        f"{'Interrupted' if stats.interrupted else 'Done'} in {time.monotonic() - stats.started:.1f}s: "
        f"{plural(stats.done, 'record')} written, {stats.failed} failed, "
        f"{stats.already_done} already done"
        + (f", {plural(stats.duplicates, 'duplicate prompt')} skipped" if stats.duplicates else "")
        + (f", {stats.too_long} too long for the model (skipped)" if stats.too_long else "")
        + (f", {plural(len(source.skipped), 'bad line')} skipped" if source.skipped else ""),
        f"Calls: {stats.calls} ({stats.journal_hits} reused from the journal), retries: {stats.retries}"
        + (
            f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.retries_by_kind.items()))})"
            if stats.retries
            else ""
        ),
        f"This time: {plural(u.input_tokens, 'token', sep=',')} in, {u.output_tokens:,} out"
        + (f", {format_cost(stats.cost_usd)}" if stats.cost_usd is not None else "")
        + (
            f"; waited {stats.throttled_seconds:.1f}s for rate limits"
            if stats.throttled_seconds >= 0.1
            else ""
        ),
        "The run in all (every invocation, from its call journal):",
        *(f"  {line}" for line in format_ledger(read_ledger(run_dir))),
        f"Rounds: {plural(stats.revised, 'record')} revised, "
        f"{plural(stats.skipped_rounds, 'round')} found nothing to change, "
        f"{plural(stats.problem_rounds, 'round')} cut off or refused",
        f"Records: {run_dir / 'records.jsonl'}",
    ]
    kept = stats.failed_in_run - stats.failed
    if kept > 0 and not retry_failed:
        lines.append(
            f"{kept} failed before, kept (--no-retry-failed); rerun without it to retry them."
        )
    elif kept > 0:  # outside this invocation's --limit or --shard, or not reached before a stop
        lines.append(
            f"{plural(kept, 'failed before and was', 'failed before and were')} not retried this time."
        )
    if stats.first_error:
        lines.append(f"First failure: {stats.first_error}")
    # Stopped at --max-cost: the budget's own line (next) says how to go on.
    if (stats.interrupted or stats.failed) and not stats.over_budget:
        lines.append(
            f"{resume} to resume" + (" and retry the failed prompts." if stats.failed else ".")
        )
    if stats.run_counts.get("ok", stats.done):
        lines.append(f"Next: cai export {run_dir} --format dpo")
        lines.append(f"Look at the data: cai report {run_dir} (writes {run_dir / 'report.html'})")
    else:
        lines.append("No prompt succeeded, so there is nothing to export.")
    click.echo(_redact("\n".join(lines)), err=True)
