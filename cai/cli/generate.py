"""`cai generate`: sample, critique and revise each prompt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from cai.cli.options import (
    _BATCH_OPTIONS,
    _CALL_OPTIONS,
    _COST_OPTIONS,
    _ENGINE_OPTIONS,
    _MODEL_OPTIONS,
    _batch_backend,
    _call_config,
    _check_prompts,
    _redact,
)
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_with_progress
from cai.errors import ConfigError, InputError


@click.command()
@click.option(
    "--constitution",
    "constitution_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Constitution Markdown file.",
)
@click.option(
    "--prompts",
    "prompts_spec",
    required=True,
    help="Prompts: .jsonl, .txt, .csv, .parquet, a datasets directory, or hf:NAME[:SPLIT].",
)
@click.option(
    "--prompt-field",
    default=None,
    help="Field or column holding the prompt (default: 'messages', else 'prompt').",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (default: outputs/<constitution>-<timestamp>, or the unfinished run of the same command).",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Start a new run directory instead of resuming the same command's run.",
)
@_MODEL_OPTIONS
@click.option(
    "--rounds",
    default=2,
    show_default=True,
    type=int,
    help="Critique-and-revision rounds per prompt.",
)
@click.option(
    "--temperature", default=0.7, show_default=True, type=float, help="Sampling temperature."
)
@click.option(
    "--skip-bad-lines",
    is_flag=True,
    help="Skip and count malformed prompt lines instead of stopping.",
)
@_CALL_OPTIONS
@_BATCH_OPTIONS
@_COST_OPTIONS
@_ENGINE_OPTIONS
def generate(
    constitution_path: Path,
    prompts_spec: str,
    prompt_field: str | None,
    out: Path | None,
    fresh: bool,
    provider: str,
    model: str | None,
    model_path: str | None,
    base_url: str | None,
    rounds: int,
    seed: int,
    limit: int | None,
    temperature: float,
    max_tokens: int,
    concurrency: int,
    max_retries: int,
    timeout: float,
    shard: str | None,
    skip_bad_lines: bool,
    no_retry_failed: bool,
    rpm: float | None,
    tpm: float | None,
    batch: bool,
    batch_size: int,
    poll_interval: float,
    price_table: Path | None,
    dry_run: bool,
    engine_name: str,
    ray_address: str | None,
    workers: int | None,
) -> None:
    """Answer each prompt, critique and revise the answer against the constitution, save records.

    Each prompt gets an initial response, then --rounds rounds: a principle is drawn by weight
    (seeded by --seed and the prompt), the model critiques its latest answer against it and
    revises it. Records go to RUN_DIR/records.jsonl as each prompt finishes. Running the same
    command again resumes: finished prompts are skipped and failed ones retried.

    Exit codes: 0 done, 2 bad input, 3 some prompts failed (rerun to retry them), 130 interrupted.
    """
    from cai.constitution import load_constitution
    from cai.pipeline import GenerateConfig, build_manifest, run_settings
    from cai.pricing import FREE, load_price_table
    from cai.providers import create_provider, default_model
    from cai.rundir import RunStore, choose_run_dir
    from cai.sources import PromptSource

    if fresh and out is not None:
        raise ConfigError(
            "--fresh goes without --out: --out DIR resumes the run in DIR; "
            "to start afresh, pass --out with a new directory"
        )
    params = click.get_current_context().params
    config = GenerateConfig(rounds=rounds, **_call_config(params))
    parsed = load_constitution(constitution_path)
    source = PromptSource(prompts_spec, prompt_field=prompt_field, skip_bad_lines=skip_bad_lines)
    total = _check_prompts(source)
    if source.skipped:
        click.echo(
            f"Skipping {len(source.skipped)} bad line(s) (--skip-bad-lines), the first: "
            f"{source.skipped[0]}",
            err=True,
        )
    if total == 0:
        raise InputError(
            prompts_spec,
            None,
            f"no usable prompt ({len(source.skipped)} bad lines skipped)"
            if source.skipped
            else "no prompts in the file",
        )
    prices = load_price_table(price_table)
    if dry_run:
        from cai.plan import format_plan, plan_run

        name = model or default_model(provider) or model_path or "the bundled model"
        price = FREE if provider == "local" else prices.lookup(name)
        plan = plan_run(source, parsed, config, model=name, price=price, prices_as_of=prices.as_of)
        click.echo(format_plan(plan))
        return
    from functools import partial

    from cai.engines import make_engine

    # Picklable, so each Ray worker builds a provider of its own with it.
    make_provider = partial(
        create_provider,
        provider,
        model=model,
        base_url=base_url,
        model_path=model_path,
        timeout=timeout,
    )
    engine = make_engine(engine_name, make_provider, workers=workers, address=ray_address)
    backend = make_provider(connections=config.concurrency)
    price = FREE if provider == "local" else prices.lookup(backend.model)
    if not backend.takes_sampling:
        click.echo(
            f"Note: {backend.model} takes no temperature or top_p; they are not sent.", err=True
        )
    if price is None:
        click.echo(
            f"Note: no price for model '{backend.model}'; the cost will not be estimated "
            "(add it with --price-table FILE).",
            err=True,
        )
    run_dir = choose_run_dir(
        out,
        fresh=fresh,
        name=parsed.name,
        settings=run_settings(config, parsed, backend),
        source=prompts_spec,
        shard=config.shard,
    )
    manifest = build_manifest(
        parsed,
        source,
        config,
        backend,
        count=total,
        base_url=base_url,
        timeout=timeout,
        price_table=price_table,
        prices_as_of=prices.as_of,
    )
    if config.limit is not None and total is not None:
        total = min(total, config.limit)
    backend, price = _batch_backend(backend, run_dir, manifest, price, params)
    store = RunStore(run_dir)
    from cai.pipeline import RunStats, run_generation

    stats = RunStats(total=total, price=price)
    start = partial(
        run_generation,
        source,
        parsed,
        backend,
        config,
        store,
        manifest=manifest,
        stats=stats,
        engine=engine,
    )
    stats = _run_with_progress(start, backend, store, stats)
    resume = (
        "Run the same command again"
        if out is not None
        else f"Run the same command{' without --fresh' if fresh else ''} with --out {run_dir}"
    )
    _print_summary(stats, run_dir, source, resume)
    if batch:
        _print_batch_summary(backend, stats, run_dir, out is None)
    _exit_unfinished(stats)


def _print_summary(stats: Any, run_dir: Path, source: Any, resume: str) -> None:
    from cai.ledger import format_ledger, read_ledger
    from cai.pricing import format_cost

    u = stats.usage
    lines = [
        "",
        f"{'Interrupted' if stats.interrupted else 'Done'} in {time.monotonic() - stats.started:.1f}s: "
        f"{stats.done} records written, {stats.failed} failed, {stats.already_done} already done"
        + (f", {stats.duplicates} duplicate prompts skipped" if stats.duplicates else "")
        + (f", {stats.too_long} too long for the model (skipped)" if stats.too_long else "")
        + (f", {len(source.skipped)} bad lines skipped" if source.skipped else ""),
        f"Calls: {stats.calls} ({stats.journal_hits} reused from the journal), retries: {stats.retries}"
        + (
            f" ({', '.join(f'{k} {v}' for k, v in sorted(stats.retries_by_kind.items()))})"
            if stats.retries
            else ""
        ),
        f"This time: {u.input_tokens:,} tokens in, {u.output_tokens:,} out"
        + (f", {format_cost(stats.cost_usd)}" if stats.cost_usd is not None else "")
        + (
            f"; waited {stats.throttled_seconds:.1f}s for rate limits"
            if stats.throttled_seconds >= 0.1
            else ""
        ),
        "The run in all (every invocation, from its call journal):",
        *(f"  {line}" for line in format_ledger(read_ledger(run_dir))),
        f"Rounds: {stats.revised} records revised, {stats.skipped_rounds} rounds found nothing to change, "
        f"{stats.problem_rounds} rounds cut off or refused",
        f"Records: {run_dir / 'records.jsonl'}",
    ]
    kept = stats.failed_in_run - stats.failed
    if kept > 0:
        lines.append(
            f"{kept} failed before, kept (--no-retry-failed); rerun without it to retry them."
        )
    if stats.first_error:
        lines.append(f"First failure: {stats.first_error}")
    if stats.interrupted or stats.failed:
        lines.append(
            f"{resume} to resume" + (" and retry the failed prompts." if stats.failed else ".")
        )
    if stats.run_counts.get("ok", stats.done):
        lines.append(f"Next: cai export {run_dir} --format dpo")
        lines.append(f"Look at the data: cai report {run_dir} (writes {run_dir / 'report.html'})")
    else:
        lines.append("No prompt succeeded, so there is nothing to export.")
    click.echo(_redact("\n".join(lines)), err=True)
