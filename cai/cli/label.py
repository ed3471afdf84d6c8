"""`cai label`: AI-feedback labels for pairs of responses (RL-CAI)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.cli.options import _redact, from_fields, from_params
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_job
from cai.options import LabelOptions


@click.command()
@click.argument("source")
@from_fields(LabelOptions, skip=("source",))
def label(**params: Any) -> None:
    """Label pairs of responses with AI feedback (RL-CAI): soft preferences from a feedback model.

    SOURCE is a run directory (each record's first answer against the revision export would
    choose, with the same --keep-* flags) or a prompts file (--responses N answers per prompt from the policy model, every
    pair labelled). Each pair gets --votes votes, each with a principle drawn by weight (seeded
    by --seed and the pair), each asked in both orders: 2 x votes calls per pair. A vote reads
    the log-probabilities of (A) and (B) where the provider has them (OpenAI, compatible
    servers, the bundled model); else (or with --cot) the model reasons and ends with (A) or
    (B), clamped to --clamp. Labels go to OUT/labels.jsonl; `cai export OUT` makes DPO data.
    With --batch (anthropic, openai) the calls go through the provider's batch API at half the
    price (docs/batch.md); a policy model other than the feedback model is called directly.

    Exit codes: 0 done, 2 bad input, 3 some pairs failed (rerun to retry them), 4 stopped at
    --max-cost (rerun with a higher one), 130 interrupted.
    """
    from cai.api import prepare_label

    opts = from_params(LabelOptions, params)
    job = prepare_label(opts)
    stats = _run_job(job, unit="pair", desc="label")
    if stats is None:  # --dry-run: the plan was printed
        return
    _print_label_summary(stats, job.dir)
    if opts.batch:
        _print_batch_summary(job.backend, stats, job.dir, False)
    _exit_unfinished(stats)


def _print_label_summary(stats: Any, out: Path) -> None:
    from cai.ledger import format_ledger, read_ledger
    from cai.pricing import format_cost

    u = stats.usage
    lines = [
        "",
        f"{'Interrupted' if stats.interrupted else 'Done'} in "
        f"{time.monotonic() - stats.started:.1f}s: {plural(stats.done, 'pair')} labelled, "
        f"{stats.failed} failed, {plural(stats.already_done, 'item')} already done"
        + (f", {stats.too_long} too long for the model (skipped)" if stats.too_long else ""),
        f"Votes: {stats.votes} ({stats.problem_votes} with no usable answer); "
        f"{plural(stats.inconsistent, 'pair')} whose two orders disagree",
        f"Calls: {stats.calls} ({stats.journal_hits} reused from the journal), retries: "
        f"{stats.retries}; tokens: {u.input_tokens:,} in, {u.output_tokens:,} out"
        + (f", {format_cost(stats.cost_usd)}" if stats.cost_usd is not None else "")
        + " this time",
        "The run in all (every invocation, from its call journal):",
        *(f"  {line}" for line in format_ledger(read_ledger(out))),
    ]
    if stats.revision_pairs:
        lines.append(
            f"The feedback model prefers the revision in {stats.revision_preferred} of "
            f"{plural(stats.revision_pairs, 'pair')}."
        )
    lines.append(f"Judged by: {_judge(out)}")
    lines.append(f"Labels: {out / 'labels.jsonl'}")
    # Stopped at --max-cost: the budget's own line (next) says how to go on.
    if (stats.interrupted or stats.failed) and not stats.over_budget:
        lines.append(
            "Run the same command again to resume"
            + (" and retry the failed pairs." if stats.failed else ".")
        )
    if stats.run_counts.get("ok", stats.done):
        lines += [f"See them: cai stats {out}", f"Next: cai export {out} --format dpo"]
    else:
        lines.append("No pair was labelled, so there is nothing to export.")
    click.echo(_redact("\n".join(lines)), err=True)


def _judge(out: Path) -> str:
    """The feedback model as the label run's manifest records it: provider, model and URL."""
    from cai.rundir import read_manifest

    manifest = read_manifest(out)
    config = manifest.config if manifest is not None else {}
    where = f" at {config['base_url']}" if config.get("base_url") else ""
    return f"{config.get('provider')} {config.get('model')}{where}"
