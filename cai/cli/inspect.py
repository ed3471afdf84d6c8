"""`cai stats` and `cai report`: look at a run."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
@click.option(
    "--labels",
    "label_run",
    type=click.Path(path_type=Path),
    default=None,
    help="A label run of this run (cai label RUN_DIR --out DIR), for how often the feedback "
    "model prefers each principle's revisions (default: one found beside RUN_DIR).",
)
def stats(run_dir: Path, as_json: bool, label_run: Path | None) -> None:
    """Show what a run holds: statuses, each principle's rounds (revised, no change, failed,
    kept in the export or dropped by which filter, and with labels how often the feedback model
    prefers its revisions), flags for principles that never change anything or whose revisions
    mostly lose, lengths before and after, tokens and cost, and what export's default filters
    would keep."""
    from cai.stats import format_stats, run_stats

    data = run_stats(run_dir, label_run)
    click.echo(json.dumps(data, indent=2) if as_json else format_stats(data))


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="The HTML file to write (default: RUN_DIR/report.html).",
)
@click.option(
    "--labels",
    "label_run",
    type=click.Path(path_type=Path),
    default=None,
    help="A label run of this run, shown per principle and beside each pair (default: one "
    "found beside RUN_DIR).",
)
def report(run_dir: Path, out: Path | None, label_run: Path | None) -> None:
    """Write one self-contained HTML file to look at a run (generation or label run): a
    summary, each principle's figures, plots, and a searchable viewer of every pair. It opens
    in any browser and loads nothing from the network."""
    from cai.report import write_report

    path = write_report(run_dir, out, label_run)
    click.echo(
        f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser.", err=True
    )
