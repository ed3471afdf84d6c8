"""`cai compare`: runs made on the same prompts side by side, with an optional judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.cli.options import _redact, from_fields, from_params
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_job
from cai.options import CompareOptions


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "html_out",
    default=None,
    type=click.Path(path_type=Path),
    help="Write the comparison as one self-contained HTML page to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@from_fields(CompareOptions, skip=("runs",))
def compare(html_out: Path | None, as_json: bool, **params: Any) -> None:
    """Compare runs made on the same prompts: two constitutions, two models, 0 rounds or 2.

    Records are matched by prompt id; only the prompts every run holds are compared. Side by
    side: revision rate, filter drops, export rows, answer lengths, similarity to the first
    answer, cost, and per-principle effectiveness. A run's final answer is the revision export
    would choose (the same --keep-* flags), else its first answer.

    With --judge, a feedback model (default: the first run's provider, model and URL) compares
    each later run's final answer with the first run's, per shared prompt, as `cai label`
    does: --votes votes, each drawing a principle and asked in both orders, journaled,
    resumable (--judge-out), --batch, --max-cost. It reports each run's win rate over the
    first with a 95% bootstrap interval, its mean preference and position consistency,
    overall and by principle. Identical answers are ties, judged without a call.
    docs/writing-a-constitution.md walks through it.

    Exit codes: 0 done, 2 bad input, 3 some judge pairs failed (rerun), 4 stopped at
    --max-cost, 130 interrupted.
    """
    from cai.api import compare_result, prepare_compare

    opts = from_params(CompareOptions, params)
    stats = None
    if opts.judge:
        job = prepare_compare(opts)
        stats = _run_job(job, unit="pair", desc="judge")
        if stats is None:  # --dry-run: the plan was printed
            return
        total = job.stats.total
        click.echo(
            f"Judge: {plural(stats.done, 'pair')} judged now, {stats.already_done} already done, "
            f"{stats.failed} failed; {plural(stats.calls, 'call')} ({stats.journal_hits} from "
            "the journal)"
            + (f"; {plural(total, 'pair')} to judge in all" if total else "; nothing to judge")
            + (". Run the same command again to resume." if stats.interrupted else "."),
            err=True,
        )
        if opts.batch:
            _print_batch_summary(job.backend, stats, job.dir, False)
        result = compare_result(opts, job.source, job.dir, stats)
    else:
        result = compare_result(opts)
    if html_out is not None:
        click.echo(f"Comparison page: {result.write_page(html_out)}", err=True)
    if as_json:
        click.echo(json.dumps(result.data, indent=2, ensure_ascii=False))
    else:
        click.echo(_redact(str(result)))
    if stats is not None:
        _exit_unfinished(stats)
