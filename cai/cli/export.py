"""`cai export` and `cai merge`: runs into training data, and shards into one run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.cli.options import _FILTER_OPTIONS, _filter_config
from cai.errors import ConfigError


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="New run directory for the merged records.",
)
def merge(run_dirs: tuple[Path, ...], out: Path) -> None:
    """Combine runs of one job, e.g. the shards made with --shard K/N, into one run directory.

    Generate runs merge their records.jsonl, label runs their labels.jsonl (one line a pair).

    Each prompt appears once in the result: where runs overlap, a usable record wins over a
    failed one. Runs made with a different constitution or settings are refused. The inputs
    are left as they are; export the result like any run.
    """
    from cai.merge import merge_runs

    result = merge_runs(run_dirs, out)
    counts = ", ".join(f"{v} {k}" for k, v in result.counts.items() if k != "records")
    click.echo(
        f"Merged {plural(len(run_dirs), 'run')} into {out}: "
        f"{plural(result.counts['records'], 'record')}"
        + (f" ({counts})" if counts else "")
        + f", {plural(result.duplicates, 'duplicate')} dropped",
        err=True,
    )
    if result.missing_shards:
        n = result.shards[0][1]
        missing = ", ".join(f"{k}/{n}" for k in result.missing_shards)
        shards = plural(len(result.missing_shards), "shard")
        click.echo(f"Warning: {shards} not given ({missing}); their prompts are missing.", err=True)
    click.echo(f"Next: cai export {out} --format dpo", err=True)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dpo", "sft", "hf"]),
    default="dpo",
    show_default=True,
    help="dpo: TRL preference rows (JSONL); sft: conversations (JSONL); hf: a DatasetDict "
    "with train/test preference and SFT splits, plus Parquet files.",
)
@click.option(
    "--style",
    type=click.Choice(["conversational", "standard"]),
    default="conversational",
    show_default=True,
    help="Preference rows as message lists (conversational) or plain strings (standard).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file, or directory for hf (default: RUN_DIR/<format>.jsonl, RUN_DIR/hf).",
)
@click.option(
    "--sft-share",
    default=0.5,
    show_default=True,
    type=float,
    help="hf: share of the preference prompts used for the SFT splits instead (disjoint).",
)
@click.option(
    "--test-size",
    default=0.1,
    show_default=True,
    type=float,
    help="hf: share of each side's prompts held out in its test split.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="hf: seed of the split.")
@_FILTER_OPTIONS
@click.option(
    "--labels",
    "labels_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="A `cai label` run of this run: keep only the pairs whose revision the feedback "
    "model prefers, with score columns.",
)
@click.option(
    "--min-margin",
    default=0.0,
    show_default=True,
    type=float,
    help="Label runs and --labels: drop pairs whose label p is within this of 0.5.",
)
@click.option(
    "--keep-inconsistent",
    is_flag=True,
    help="Label runs and --labels: keep pairs whose two orders of a vote disagree.",
)
@click.option(
    "--push-to-hub",
    "push_repo",
    default=None,
    metavar="REPO",
    help="Also upload the export to this Hub dataset repo (token from HF_TOKEN).",
)
def export(
    run_dir: Path,
    fmt: str,
    style: str,
    out: Path | None,
    sft_share: float,
    test_size: float,
    seed: int,
    keep_truncated: bool,
    keep_empty: bool,
    keep_meta: bool,
    keep_commentary: bool,
    keep_copied: bool,
    keep_unchanged: bool,
    keep_duplicates: bool,
    similarity: float,
    labels_dir: Path | None,
    min_margin: float,
    keep_inconsistent: bool,
    push_repo: str | None,
) -> None:
    """Export a run as training data for TRL, filtered, with a dataset card (README.md).

    Quality filters are on by default, each with a --keep-* flag to turn it off: cut-off first
    answers, empty answers, meta-text revisions (or echoes of the critique), commentary
    about the response instead of an answer, copies of the constitution's text (its
    few-shot examples, its requests), revisions that barely changed the answer, repeated
    prompts. Failed records are always left out. Records where every critique found nothing to
    change go to SFT only. What each filter removed is printed and written in the card.

    A label run (`cai label`) exports its pairs as the labels say: chosen is the response the
    feedback model prefers, with `score_chosen`, `score_rejected` and `margin` columns.
    """
    from cai.export import ExportOptions, export_run, push_export

    options = ExportOptions(
        fmt=fmt,
        style=style,
        sft_share=sft_share,
        test_size=test_size,
        seed=seed,
        filters=_filter_config(
            keep_truncated,
            keep_empty,
            keep_meta,
            keep_commentary,
            keep_copied,
            keep_unchanged,
            keep_duplicates,
            similarity,
        ),
        labels=labels_dir,
        min_margin=min_margin,
        keep_inconsistent=keep_inconsistent,
    )
    # The token is checked before the export, so a missing one costs no work.
    token = _hub_token() if push_repo else None
    result = export_run(run_dir, out, options)
    _print_export(result, run_dir, fmt, sft_share)
    if push_repo and token:
        with _plain_hub_progress():
            url = push_export(result, push_repo, token=token)
        click.echo(f"Pushed to {url}", err=True)


@contextlib.contextmanager
def _plain_hub_progress() -> Iterator[None]:
    """No upload bars (\r redraws) when stderr is a log file, CI or nohup: the lines around
    the push say what happened."""
    import sys

    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    quiet = not sys.stderr.isatty() and not are_progress_bars_disabled()
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            enable_progress_bars()


def _sft_share_line(result: Any, pairs: int, sft_share: float) -> str:
    """How many preference pairs the hf split gave to SFT instead (--sft-share), and how to
    keep them for preference training."""
    prefs = sum(n for name, n in result.counts.items() if name.endswith("_prefs"))
    moved = max(pairs - prefs, 0)
    keep = (
        "--sft-share 0 keeps every pair for the preference splits"
        if sft_share > 0
        else "--sft-share 0.5 would give half of them to SFT"
    )
    return (
        f"SFT instead: {moved} of the {plural(pairs, 'preference pair')} went to the SFT splits "
        f"rather than the preference splits (--sft-share {sft_share:g}; {keep})."
    )


def _hub_token() -> str:
    """The Hugging Face token --push-to-hub uploads with: HF_TOKEN, else a stored login."""
    import os

    from huggingface_hub import get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ConfigError(
            "--push-to-hub needs a Hugging Face token: set HF_TOKEN (a write token from "
            "https://huggingface.co/settings/tokens)"
        )
    return token


def _print_export(result: Any, run_dir: Path, fmt: str, sft_share: float = 0.5) -> None:
    """What the filters kept, what was written where, and how to load it."""
    f = result.filtered
    removed = ", ".join(f"{k} {n}" for k, n in sorted(f.removed.items())) or "nothing"
    pairs = sum(v.use == "pref" for v in f.kept)
    click.echo(
        f"Read {plural(result.records, 'record')}; filters removed {removed}; kept "
        f"{len(f.kept)} ({pairs} with a preference pair, {f.sft_only} SFT only"
        + (f", {f.fell_back} chose an earlier revision" if f.fell_back else "")
        + ")",
        err=True,
    )
    click.echo(
        "Wrote "
        + ", ".join(f"{k} {n}" for k, n in result.counts.items())
        + f" rows to {result.out}",
        err=True,
    )
    if fmt == "hf":
        click.echo(_sft_share_line(result, pairs, sft_share), err=True)
    click.echo(f"Card: {result.card}", err=True)
    if not sum(result.counts.values()):
        # No "Load it" line: datasets refuses an empty JSONL file (it has no columns).
        click.echo(
            f"Note: no rows passed the filters; `cai stats {run_dir}` shows why, and the "
            "--keep-* flags turn filters off.",
            err=True,
        )
    elif fmt == "hf":
        click.echo(f'Load it: datasets.load_from_disk("{result.out}")', err=True)
    else:
        click.echo(f'Load it: datasets.load_dataset("json", data_files="{result.out}")', err=True)
