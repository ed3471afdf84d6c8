"""`cai compare`: runs made on the same prompts side by side, with an optional judge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cai.cli.options import (
    _BATCH_OPTIONS,
    _CALL_OPTIONS,
    _COST_OPTIONS,
    _ENGINE_OPTIONS,
    _FILTER_OPTIONS,
    _MODEL_OPTIONS,
    _batch_backend,
    _call_config,
    _filter_config,
    _parse_clamp,
    _redact,
)
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_with_progress


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--judge",
    is_flag=True,
    help="Have a feedback model compare each run's final answers with the first run's.",
)
@click.option(
    "--judge-out",
    default=None,
    type=click.Path(path_type=Path),
    help="The judge's run directory (default: beside the first run, named after the runs); "
    "the same command again resumes it. Without --judge, its votes are read, none asked.",
)
@click.option(
    "--constitution",
    "constitution_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Constitution whose principles the judge's votes draw (default: the first run's).",
)
@_MODEL_OPTIONS
@click.option(
    "--votes", default=4, show_default=True, type=int, help="Judge: votes per prompt and run."
)
@click.option("--cot", is_flag=True, help="Judge: chain of thought instead of log-probabilities.")
@click.option("--clamp", default=None, help="Judge: LO,HI each vote's probability is kept within.")
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=float,
    help="Judge: sampling temperature of the feedback model.",
)
@click.option(
    "--out",
    "html_out",
    default=None,
    type=click.Path(path_type=Path),
    help="Write the comparison as one self-contained HTML page to this file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@_FILTER_OPTIONS
@_CALL_OPTIONS
@_BATCH_OPTIONS
@_COST_OPTIONS
@_ENGINE_OPTIONS
def compare(run_dirs: tuple[Path, ...], **params: Any) -> None:
    """Compare runs made on the same prompts: two constitutions, two models, 0 rounds or 2.

    Records are matched by prompt id; only the prompts every run holds are compared. Side by
    side: revision rate, filter drops, export rows, answer lengths, similarity to the first
    answer, cost, and per-principle effectiveness. A run's final answer is the revision export
    would choose (the same --keep-* flags), else its first answer.

    With --judge, a feedback model (default: the first run's provider, model and URL) compares
    each later run's final answer with the first run's, per shared prompt, as `cai label`
    does: --votes votes, each drawing a principle and asked in both orders, journaled,
    resumable (--judge-out), --batch. It reports each run's win rate over the first with a
    95% bootstrap interval, its mean preference and position consistency, overall and by
    principle. Identical answers are ties, judged without a call.

    Exit codes: 0 done, 2 bad input, 3 some judge pairs failed (rerun), 130 interrupted.
    """
    from cai.compare import compare_runs, format_comparison, load_runs

    if len(run_dirs) < 2:
        raise click.UsageError("give at least two run directories")
    filters = _filter_config(
        *(
            params[k]
            for k in (
                "keep_truncated",
                "keep_empty",
                "keep_meta",
                "keep_commentary",
                "keep_copied",
                "keep_unchanged",
                "keep_duplicates",
                "similarity",
            )
        )
    )
    runs = load_runs(run_dirs, filters)
    labels = judge = None
    stats = None
    if params["judge"]:
        result = _run_judge(runs, run_dirs, params)
        if result is None:  # --dry-run
            return
        labels, judge, stats = result
    elif params["judge_out"] is not None:
        labels, judge = _read_judge(params["judge_out"])
    data = compare_runs(runs, labels=labels, judge=judge, seed=params["seed"])
    if params["html_out"] is not None:
        from cai.report.compare import write_compare_page

        page = write_compare_page(params["html_out"], data, runs, labels)
        click.echo(f"Comparison page: {page}", err=True)
    if params["as_json"]:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(_redact(format_comparison(data)))
    if stats is not None:
        _exit_unfinished(stats)


def _read_judge(judge_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from cai.compare import judge_info
    from cai.feedback import load_labels

    manifest, labels = load_labels(judge_dir)
    return labels, judge_info(judge_dir, manifest, labels)


def _run_judge(
    runs: list[Any], run_dirs: tuple[Path, ...], params: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any], Any] | None:
    """Run (or resume) the judge; its labels, what to say of it and its stats; None after
    --dry-run."""
    from functools import partial

    from cai.compare import default_judge_dir, judge_info, judge_items, judge_pairs, shared_ids
    from cai.engines import make_engine
    from cai.feedback import (
        LabelConfig,
        LabelStats,
        load_labels,
        plan_labels,
        run_labels,
        uses_cot,
    )
    from cai.pipeline import build_manifest
    from cai.pricing import FREE, load_price_table
    from cai.rundir import LABELS_FILE, RunStore, check_run_dir

    config = LabelConfig(
        **_call_config(params),
        votes=params["votes"],
        cot=params["cot"],
        clamp=_parse_clamp(params["clamp"]),
    )
    out = params["judge_out"] or default_judge_dir(run_dirs)
    check_run_dir(out, "label")
    constitution = _judge_constitution(runs, params)
    provider, base_url, make_feedback = _judge_model(runs, params)
    backend = make_feedback(connections=config.concurrency)
    engine = make_engine(
        params["engine_name"],
        make_feedback,
        workers=params["workers"],
        address=params["ray_address"],
    )
    items = judge_items(runs, judge_pairs(runs, shared_ids(runs)))
    chain_of_thought = uses_cot(config, backend)
    prices = load_price_table(params["price_table"])
    price = FREE if provider == "local" else prices.lookup(backend.model)
    if params["dry_run"]:
        click.echo(plan_labels(items, constitution, config, chain_of_thought, price=price))
        backend.close()
        return None
    manifest = build_manifest(
        constitution,
        "compare " + " ".join(str(p) for p in run_dirs),
        config,
        backend,
        count=len(items),
        base_url=base_url,
        timeout=params["timeout"],
        price_table=params["price_table"],
        prices_as_of=prices.as_of,
    )
    manifest.config["compare"] = {"runs": [str(p) for p in run_dirs]}
    backend, price = _batch_backend(backend, out, manifest, price, params)
    store = RunStore(out, LABELS_FILE)
    stats = LabelStats(total=len(items), price=price)
    start = partial(
        run_labels,
        items,
        constitution,
        backend,
        config,
        store,
        manifest=manifest,
        stats=stats,
        engine=engine,
    )
    stats = _run_with_progress(start, backend, store, stats, unit="pair", desc="judge")
    click.echo(_judge_line(stats, len(items)), err=True)
    if params["batch"]:
        _print_batch_summary(backend, stats, out, False)
    judge_manifest, labels = load_labels(out)
    return labels, judge_info(out, judge_manifest, labels), stats


def _judge_constitution(runs: list[Any], params: dict[str, Any]) -> Any:
    """The constitution whose principles the judge draws: --constitution, else the first run's."""
    from cai.constitution import load_constitution
    from cai.errors import ConfigError
    from cai.rundir import CONSTITUTION_COPY

    path = params["constitution_path"] or runs[0].dir / CONSTITUTION_COPY
    if not Path(path).is_file():
        raise ConfigError(
            f"{runs[0].dir} holds no {CONSTITUTION_COPY}; pass --constitution with the file "
            "whose principles the judge should draw"
        )
    return load_constitution(path)


def _judge_line(stats: Any, pairs: int) -> str:
    return (
        f"Judge: {stats.done} pairs judged now, {stats.already_done} already done, "
        f"{stats.failed} failed; {stats.calls} calls ({stats.journal_hits} from the journal)"
        + (f"; {pairs} pairs to judge in all" if pairs else "; nothing to judge")
        + (". Run the same command again to resume." if stats.interrupted else ".")
    )


def _judge_model(runs: list[Any], params: dict[str, Any]) -> tuple[str, str | None, Any]:
    """The judge's provider, base URL and a picklable factory of its model (for Ray workers).
    The judge defaults to the first run's model; an option given on the command line wins."""
    from functools import partial

    from cai.providers import create_provider

    ctx = click.get_current_context()
    given = {
        name
        for name in ("provider", "model", "base_url", "model_path")
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    first = runs[0].manifest.config
    provider = params["provider"] if "provider" in given else first.get("provider") or "local"
    same = provider == first.get("provider")
    model = params["model"] if "model" in given or not same else first.get("model")
    base_url = params["base_url"] if "base_url" in given or not same else first.get("base_url")
    if provider == "local" and "model" not in given and not params["model_path"]:
        model = None  # the bundled model, or the run's model file named by its path
        params["model_path"] = first.get("model_path") if same else None
    make_feedback = partial(
        create_provider,
        provider,
        model=model,
        base_url=base_url,
        model_path=params["model_path"],
        timeout=params["timeout"],
    )
    return provider, base_url, make_feedback
