"""`cai label`: AI-feedback labels for pairs of responses (RL-CAI)."""

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
    _FILTER_OPTIONS,
    _MODEL_OPTIONS,
    _batch_backend,
    _call_config,
    _check_prompts,
    _filter_config,
    _parse_clamp,
    _redact,
)
from cai.cli.progress import _exit_unfinished, _print_batch_summary, _run_with_progress
from cai.errors import ConfigError, InputError


@click.command()
@click.argument("source")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Label run directory (running the same command again resumes it).",
)
@click.option(
    "--constitution",
    "constitution_path",
    default=None,
    type=click.Path(path_type=Path),
    help="Constitution whose principles the votes draw (default for a run: the run's own).",
)
@click.option(
    "--prompt-field",
    default=None,
    help="Prompts source: field or column holding the prompt.",
)
@click.option(
    "--skip-bad-lines",
    is_flag=True,
    help="Prompts source: skip and count malformed lines instead of stopping.",
)
@_MODEL_OPTIONS
@click.option(
    "--votes",
    default=4,
    show_default=True,
    type=int,
    help="Votes per pair (each asked in both orders).",
)
@click.option(
    "--cot",
    is_flag=True,
    help="Chain of thought instead of log-probabilities (always so without log-probabilities).",
)
@click.option(
    "--clamp",
    default=None,
    help="LO,HI: keep each vote's probability within (default with chain of thought: 0.4,0.6).",
)
@click.option(
    "--temperature",
    default=0.0,
    show_default=True,
    type=float,
    help="Sampling temperature of the feedback model.",
)
@click.option(
    "--responses",
    default=2,
    show_default=True,
    type=int,
    help="Prompts source: responses sampled per prompt; every pair of them is labelled.",
)
@click.option(
    "--policy-provider",
    type=click.Choice(["local", "anthropic", "openai"]),
    default=None,
    help="Prompts source: the model that writes the responses (default: the feedback model's).",
)
@click.option("--policy-model", default=None, help="Prompts source: the policy model's name.")
@click.option(
    "--policy-base-url",
    default=None,
    help="Prompts source: the policy model's URL (default: --base-url, for the same provider).",
)
@click.option(
    "--policy-temperature",
    default=1.0,
    show_default=True,
    type=float,
    help="Prompts source: the policy model's sampling temperature.",
)
@_FILTER_OPTIONS
@_CALL_OPTIONS
@_BATCH_OPTIONS
@_COST_OPTIONS
@_ENGINE_OPTIONS
def label(
    source: str,
    out: Path,
    constitution_path: Path | None,
    prompt_field: str | None,
    skip_bad_lines: bool,
    provider: str,
    model: str | None,
    model_path: str | None,
    base_url: str | None,
    votes: int,
    cot: bool,
    clamp: str | None,
    temperature: float,
    responses: int,
    policy_provider: str | None,
    policy_model: str | None,
    policy_base_url: str | None,
    policy_temperature: float,
    keep_truncated: bool,
    keep_empty: bool,
    keep_meta: bool,
    keep_commentary: bool,
    keep_copied: bool,
    keep_unchanged: bool,
    keep_duplicates: bool,
    similarity: float,
    seed: int,
    limit: int | None,
    max_tokens: int,
    concurrency: int,
    max_retries: int,
    timeout: float,
    shard: str | None,
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

    Exit codes: 0 done, 2 bad input, 3 some pairs failed (rerun to retry them), 130 interrupted.
    """
    import math
    from functools import partial

    from cai.constitution import load_constitution
    from cai.feedback import (
        LABELS_FILE,
        LabelConfig,
        LabelStats,
        plan_labels,
        policy_factory,
        prompt_pairs,
        run_labels,
        run_pairs,
        uses_cot,
    )
    from cai.pipeline import build_manifest
    from cai.pricing import FREE, load_price_table
    from cai.providers import create_provider
    from cai.rundir import RunStore, check_run_dir, is_run_dir
    from cai.sources import PromptSource

    params = click.get_current_context().params
    config = LabelConfig(
        **_call_config(params),
        votes=votes,
        cot=cot,
        clamp=_parse_clamp(clamp),
        responses=responses,
        policy_temperature=policy_temperature,
    )
    check_run_dir(out, "label")
    from_run = Path(source).is_dir() and is_run_dir(Path(source))
    if from_run:
        filters = _filter_config(
            keep_truncated,
            keep_empty,
            keep_meta,
            keep_commentary,
            keep_copied,
            keep_unchanged,
            keep_duplicates,
            similarity,
        )
        _, items, left_out = run_pairs(source, filters)
        prompts: Any = source
        if constitution_path is None:
            constitution_path = Path(source) / "constitution.md"
            if not constitution_path.is_file():
                raise ConfigError(
                    f"{source} holds no constitution.md; pass --constitution with the file the "
                    "run was made with"
                )
        if left_out:
            click.echo(
                "Not labelled (no pair for export): "
                + ", ".join(f"{k} {n}" for k, n in sorted(left_out.items()))
                + ("" if items else "; the matching --keep-* flags label them anyway"),
                err=True,
            )
        total: int | None = len(items)
    else:
        if constitution_path is None:
            raise ConfigError(f"--constitution is needed to label the prompts in {source}")
        prompts = PromptSource(source, prompt_field=prompt_field, skip_bad_lines=skip_bad_lines)
        count = _check_prompts(prompts)
        if count == 0:
            raise InputError(source, None, "no prompts in the file")
        items = prompt_pairs(prompts)
        pairs = math.comb(config.responses, 2)
        total = None if count is None else min(count, limit or count) * pairs
    parsed = load_constitution(constitution_path)
    prices = load_price_table(price_table)
    # Picklable factories, so each Ray worker builds the feedback (and policy) models itself.
    make_feedback = partial(
        create_provider,
        provider,
        model=model,
        base_url=base_url,
        model_path=model_path,
        timeout=timeout,
    )
    backend = make_feedback(connections=config.concurrency)
    policy = make_policy = None
    if not from_run:
        make_policy = policy_factory(
            backend,
            provider=provider,
            base_url=base_url,
            timeout=timeout,
            policy_provider=policy_provider,
            policy_model=policy_model,
            policy_base_url=policy_base_url,
        )
        policy = backend if make_policy is None else make_policy(connections=config.concurrency)
    from cai.engines import make_engine, make_providers

    engine = make_engine(
        engine_name,
        partial(make_providers, make_feedback, {"policy": make_policy}),
        workers=workers,
        address=ray_address,
    )
    chain_of_thought = uses_cot(config, backend)
    if chain_of_thought and not cot:
        click.echo(
            f"Note: {backend.name} gives no log-probabilities; the votes use chain of thought, "
            f"clamped to {config.bounds(True)[0]:g}-{config.bounds(True)[1]:g} (--clamp).",
            err=True,
        )
    price = FREE if provider == "local" else prices.lookup(backend.model)
    if dry_run:
        click.echo(plan_labels(list(items), parsed, config, chain_of_thought, price=price))
        backend.close()
        return
    manifest = build_manifest(
        parsed,
        prompts,
        config,
        backend,
        count=total,
        base_url=base_url,
        timeout=timeout,
        price_table=price_table,
        prices_as_of=prices.as_of,
    )
    if policy is not None and policy is not backend:
        manifest.config.update(policy_provider=policy.name, policy_model=policy.model)
    direct = backend
    backend, price = _batch_backend(backend, out, manifest, price, params)
    if policy is direct:
        policy = backend  # the feedback model writes the responses: in the same batches
    store = RunStore(out, LABELS_FILE)
    stats = LabelStats(total=total, price=price)
    start = partial(
        run_labels,
        items,
        parsed,
        backend,
        config,
        store,
        policy=policy,
        manifest=manifest,
        stats=stats,
        engine=engine,
    )
    others = (policy,) if policy is not None and policy is not backend else ()
    stats = _run_with_progress(
        start, backend, store, stats, unit="pair", desc="label", others=others
    )
    _print_label_summary(stats, out)
    if batch:
        _print_batch_summary(backend, stats, out, False)
    _exit_unfinished(stats)


def _print_label_summary(stats: Any, out: Path) -> None:
    from cai.ledger import format_ledger, read_ledger
    from cai.pricing import format_cost

    u = stats.usage
    lines = [
        "",
        f"{'Interrupted' if stats.interrupted else 'Done'} in "
        f"{time.monotonic() - stats.started:.1f}s: {stats.done} pairs labelled, {stats.failed} "
        f"failed, {stats.already_done} items already done"
        + (f", {stats.too_long} too long for the model (skipped)" if stats.too_long else ""),
        f"Votes: {stats.votes} ({stats.problem_votes} with no usable answer); "
        f"{stats.inconsistent} pairs whose two orders disagree",
        f"Calls: {stats.calls} ({stats.journal_hits} reused from the journal), retries: "
        f"{stats.retries}; tokens: {u.input_tokens} in, {u.output_tokens} out"
        + (f", {format_cost(stats.cost_usd)}" if stats.cost_usd is not None else "")
        + " this time",
        "The run in all (every invocation, from its call journal):",
        *(f"  {line}" for line in format_ledger(read_ledger(out))),
    ]
    if stats.revision_pairs:
        lines.append(
            f"The feedback model prefers the revision in {stats.revision_preferred} of "
            f"{stats.revision_pairs} pairs."
        )
    lines.append(f"Labels: {out / 'labels.jsonl'}")
    if stats.interrupted or stats.failed:
        lines.append(
            "Run the same command again to resume"
            + (" and retry the failed pairs." if stats.failed else ".")
        )
    if stats.run_counts.get("ok", stats.done):
        lines += [f"See them: cai stats {out}", f"Next: cai export {out} --format dpo"]
    else:
        lines.append("No pair was labelled, so there is nothing to export.")
    click.echo(_redact("\n".join(lines)), err=True)
