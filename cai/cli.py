"""The `cai` command line: a thin layer over the library; each command's docstring is its help."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from cai import __version__
from cai.errors import CaiError, ConfigError, InputError

__all__ = ["cli", "main"]

EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Turns a `CaiError` or an OS error into one line on stderr and exit code 2, Ctrl-C into
    exit code 130; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CaiError, OSError) as e:
            if ctx.params.get("debug"):
                raise
            message = str(e) if isinstance(e, CaiError) else _os_error_message(e)
            # A server or a path may echo a key or token back: none reaches the terminal.
            click.echo(f"Error: {_redact(message)}", err=True)
            code = e.exit_code if isinstance(e, CaiError) else 2
            ctx.exit(code if code != 1 else 2)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def _redact(text: str) -> str:
    """`text` without any key or token of the environment (imported late: `--help` stays light)."""
    from cai.rundir import redact_secrets

    return redact_secrets(text)


def _os_error_reason(e: OSError) -> str:
    """Why an OS call failed, in words (never a bare `[Errno N]`)."""
    reason = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    if e.errno == errno.ENOTDIR and e.filename:
        path = Path(os.fsdecode(e.filename))
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            reason = f"{blocker} is not a folder"
    return reason


def _os_error_message(e: OSError) -> str:
    if not e.filename:
        return _os_error_reason(e)
    return f"{os.fsdecode(e.filename)}: {_os_error_reason(e)}"


def _unwritable_run(e: OSError, run_dir: Path) -> CaiError | None:
    """The error to show when `e` came from writing into `run_dir`, else None."""
    if not e.filename:
        return None
    path = Path(os.fsdecode(e.filename)).absolute()
    folder = run_dir.absolute()
    if path != folder and folder not in path.parents and path not in folder.parents:
        return None
    return ConfigError(
        f"cannot write the run to {run_dir}: {_os_error_reason(e)} - "
        "pass --out with a folder you can write to"
    )


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cai")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Generate Constitutional AI preference data: sample, critique, revise, export for DPO.

    \b
    Quick start (offline, on the bundled SmolLM2-135M model):
      cai generate --constitution constitutions/harmless.md --prompts examples/red_team_prompts.jsonl --limit 3
      cai export outputs/<run> --format dpo
    """


def main() -> None:
    cli(prog_name="cai")


# -- constitution -------------------------------------------------------------------------


@cli.group()
def constitution() -> None:
    """Check and show constitution files."""


@constitution.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def constitution_check(paths: tuple[Path, ...]) -> None:
    """Check constitution files: one line per problem; exit 0 when all are valid, 2 if not."""
    from cai.constitution import load_constitution
    from cai.errors import ConstitutionError, InputError

    bad = False
    for path in paths:
        try:
            parsed = load_constitution(path, option=None)
        except ConstitutionError as e:
            bad = True
            for problem in e.problems:
                click.echo(str(problem))
        except InputError as e:
            bad = True
            click.echo(str(e))
        else:
            click.echo(f"{path}: ok - {parsed.summary}")
    if bad:
        sys.exit(2)


@constitution.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def constitution_show(path: Path) -> None:
    """Show a constitution's principles as a table."""
    from cai.constitution import load_constitution

    parsed = load_constitution(path, option=None)
    click.echo(f"{parsed.name}" + (f" (version {parsed.version})" if parsed.version else ""))
    if parsed.description:
        click.echo(parsed.description)
    click.echo(f"sha256 {parsed.sha256}")
    total = sum(parsed.weights)
    rows = [("PRINCIPLE", "WEIGHT", "P(ROUND)", "CRITIQUE REQUEST")]
    for p in parsed.principles:
        critique = " ".join(p.critique.split())
        rows.append(
            (
                p.name,
                f"{p.weight:g}",
                f"{p.weight / total:.0%}",
                critique[:70] + ("…" if len(critique) > 70 else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    click.echo()
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        )
    click.echo()
    from cai.feedback import comparison_question

    own = sum(p.comparison is not None for p in parsed.principles)
    click.echo(
        f"Comparison questions (cai label): {own} from 'Comparison:', "
        f"{len(parsed.principles) - own} built from the name and critique"
    )
    for p in parsed.principles:
        question = comparison_question(p)
        mark = "" if p.comparison is not None else " (default)"
        click.echo(f"  {p.name}{mark}: {question[:90]}" + ("…" if len(question) > 90 else ""))
    click.echo()
    system = "yes" if parsed.system else "no"
    click.echo(f"{len(parsed.examples)} few-shot examples; system prompt: {system}")


# -- generate -----------------------------------------------------------------------------


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes K/N such as 1/4, not '{value}'") from None
    return k, n


def _options(*decorators: Any) -> Any:
    """Several click options as one decorator, listed in the order help shows them."""

    def apply(f: Any) -> Any:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


# The options every command that calls a model shares (generate, label).
_MODEL_OPTIONS = _options(
    click.option(
        "--provider",
        type=click.Choice(["local", "anthropic", "openai"]),
        default="local",
        show_default=True,
        help="Model backend.",
    ),
    click.option("--model", default=None, help="Model name (default per provider)."),
    click.option(
        "--model-path",
        default=None,
        help="GGUF file for --provider local (default: the bundled SmolLM2-135M-Instruct).",
    ),
    click.option(
        "--base-url",
        default=None,
        help="API base URL, e.g. an OpenAI-compatible server (vLLM, Ollama, llama.cpp).",
    ),
)

_CALL_OPTIONS = _options(
    click.option(
        "--seed",
        default=0,
        show_default=True,
        type=int,
        help="Seed for principle and model sampling.",
    ),
    click.option("--limit", default=None, type=int, help="Use only the first N prompts."),
    click.option(
        "--max-tokens", default=512, show_default=True, type=int, help="Most tokens per reply."
    ),
    click.option(
        "--concurrency",
        default=32,
        show_default=True,
        type=int,
        help="Most calls in flight at once.",
    ),
    click.option(
        "--max-retries",
        default=6,
        show_default=True,
        type=int,
        help="Retries per call on rate limits, overload, timeouts, dropped connections.",
    ),
    click.option(
        "--timeout",
        default=600.0,
        show_default=True,
        type=float,
        help="Seconds before a call times out.",
    ),
    click.option(
        "--shard", default=None, help="K/N: take the K-th of N deterministic shards of the prompts."
    ),
    click.option(
        "--no-retry-failed",
        is_flag=True,
        help="On resume, keep prompts that failed before as they are.",
    ),
    click.option("--rpm", default=None, type=float, help="Most requests a minute (client-side)."),
    click.option("--tpm", default=None, type=float, help="Most tokens a minute (client-side)."),
)


def _call_config(params: dict[str, Any]) -> dict[str, Any]:
    """`CallConfig`'s fields from a command's options (`_CALL_OPTIONS`, --temperature and
    `_BATCH_OPTIONS`)."""
    names = ("seed", "temperature", "max_tokens", "concurrency", "max_retries", "limit")
    fields = {name: params[name] for name in (*names, "rpm", "tpm")}
    if params["batch"]:
        from cai.batch import check_batch_options

        # Each item in progress waits on its calls in a wave: a wave's worth of them at once.
        fields["concurrency"] = check_batch_options(
            params["provider"],
            params["batch_size"],
            params["poll_interval"],
            engine=params["engine_name"],
            rpm=params["rpm"],
            tpm=params["tpm"],
        )
    fields.update(shard=_parse_shard(params["shard"]), retry_failed=not params["no_retry_failed"])
    return fields


_COST_OPTIONS = _options(
    click.option(
        "--price-table",
        default=None,
        type=click.Path(path_type=Path),
        help="JSON file of model prices, added to the bundled table (see cai/data/prices.json).",
    ),
    click.option(
        "--dry-run",
        is_flag=True,
        help="Print the number of calls and an estimate of tokens and cost; call nothing.",
    ),
)

_ENGINE_OPTIONS = _options(
    click.option(
        "--engine",
        "engine_name",
        type=click.Choice(["default", "ray"]),
        default="default",
        show_default=True,
        help="Where chains run: in this process, or on Ray workers (pip install 'cai[ray]'; "
        "see docs/distributed.md).",
    ),
    click.option(
        "--ray-address",
        default=None,
        help="--engine ray: the cluster to join (default: $RAY_ADDRESS, else a local instance).",
    ),
    click.option(
        "--workers",
        default=None,
        type=int,
        help="--engine ray: worker actors (default 2); --concurrency, --rpm, --tpm are shared out.",
    ),
)

_BATCH_OPTIONS = _options(
    click.option(
        "--batch",
        is_flag=True,
        help="Send the calls through the provider's batch API (anthropic, openai): half the "
        "price, results within 24 hours; see docs/batch.md.",
    ),
    click.option(
        "--batch-size",
        default=10_000,
        show_default=True,
        type=int,
        help="--batch: most requests per batch (and items in progress at once).",
    ),
    click.option(
        "--poll-interval",
        default=60.0,
        show_default=True,
        type=float,
        help="--batch: seconds between looks at the open batches.",
    ),
)


def _batch_backend(
    backend: Any, run_dir: Path, manifest: Any, price: Any, params: dict[str, Any]
) -> tuple[Any, Any]:
    """The run's provider and price, from a command's options (`_BATCH_OPTIONS`). With
    --batch, a `BatchProvider` around `backend`, priced at the batch rate, its figures kept in
    the manifest's `config.batch`; without, a run whose batches are not taken in is refused,
    as calling again would pay twice."""
    from cai.batch import BatchProvider, check_no_open_batches
    from cai.pricing import batch_price

    if not params["batch"]:
        check_no_open_batches(run_dir)
        return backend, price
    size, interval = params["batch_size"], params["poll_interval"]
    manifest.config["batch"] = {"batch_size": size, "poll_interval": interval}
    batched = BatchProvider(
        backend,
        run_dir,
        batch_size=size,
        poll_interval=interval,
        max_retries=params["max_retries"],
        report=manifest.config["batch"],
    )
    return batched, batch_price(price) if price is not None else None


@cli.command()
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


def _exit_unfinished(stats: Any) -> None:
    """Exit 130 when the run was interrupted, 3 when items of the run failed; else return."""
    if stats.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if stats.failed_in_run:
        sys.exit(EXIT_PARTIAL)


def _check_prompts(source: Any) -> int | None:
    """Read every prompt once before any call, so bad input stops the run before it costs anything."""
    if source.spec.startswith("hf:"):
        return None
    return sum(1 for _ in source)


def _run_with_progress(
    start: Any,
    backend: Any,
    store: Any,
    stats: Any,
    *,
    unit: str = "prompt",
    desc: str = "generate",
    others: tuple[Any, ...] = (),
) -> Any:
    """Run a job under a progress bar; the first Ctrl-C stops taking prompts, the second quits.

    `start(on_event=..., stop=...)` is the job's coroutine (`run_generation`, `run_labels`);
    `backend` and `others` (e.g. a label job's policy model) are closed when it ends. A failed
    write into the run directory becomes an error that says to pass another --out.
    """
    import asyncio
    import signal

    from tqdm import tqdm

    total = stats.total
    bar: Any = None
    batching = backend.batched
    waves = _WaveBars()

    def on_event(kind: str, data: Any) -> None:
        nonlocal bar
        if kind == "start":  # the run is taken: no refusal can follow
            click.echo(f"Run directory: {data}", err=True)
            bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
            return
        if bar is None:
            return
        if kind == "notice":
            data = _redact(str(data))
            bar.write(f"Note: {data}", file=sys.stderr)
        if kind in ("wave", "poll", "ended"):
            waves.update(kind, data)
        if kind in ("record", "skip"):
            bar.update(1)
        # The bar redraws at most every `mininterval` seconds: formatting the counts for each
        # call would cost CPU for nothing (benchmarks/cpu_per_call.py).
        if time.monotonic() - shown_at >= bar.mininterval:
            show_counts()

    shown_at = 0.0

    def show_counts() -> None:
        nonlocal shown_at
        shown_at = time.monotonic()
        elapsed = max(shown_at - stats.started, 1e-6)
        bar.set_postfix(
            calls=stats.calls,
            failed=stats.failed,
            retries=stats.retries,
            tok_s=f"{stats.usage.output_tokens / elapsed:.0f}",
            refresh=False,
        )

    async def run() -> Any:
        stop = asyncio.Event()
        presses = 0

        def on_sigint() -> None:
            nonlocal presses
            presses += 1
            if presses > 1:
                _quit_now(store)
            stop.set()
            (bar or tqdm).write(
                "Stopping: batches keep running on the provider; this run stops waiting for them."
                if batching
                else "Stopping: finishing calls in flight, starting no new ones. "
                "Press Ctrl-C again to quit now.",
                file=sys.stderr,
            )

        with contextlib.suppress(NotImplementedError, RuntimeError):
            # SIGTERM too: a batch scheduler's polite stop ends the run as cleanly as Ctrl-C.
            for signum in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(signum, on_sigint)
        if batching:
            backend.stop, backend.on_event = stop, on_event
        try:
            result = await start(on_event=on_event, stop=stop)
            if batching and not result.interrupted:
                await backend.finish()
            return result
        finally:
            for model in (backend, *others):
                await model.aclose()

    try:
        return asyncio.run(run())
    except OSError as e:
        error = _unwritable_run(e, store.dir)
        if error is None:
            raise
        raise error from e
    finally:
        waves.close()
        if bar is not None:
            show_counts()  # the last counts, not those of the last redraw
            bar.close()
        for model in (backend, *others):
            model.close()


class _WaveBars:
    """--batch: one progress bar per wave, its requests done out of sent, its batches' states."""

    def __init__(self) -> None:
        self.bars: dict[int, Any] = {}
        self.states: dict[int, dict[str, Any]] = {}

    def update(self, kind: str, data: Any) -> None:
        from tqdm import tqdm

        pairs = [(data[0], s) for s in data[1]] if kind == "wave" else data
        if kind == "ended":
            pairs = [data]
        for wave, state in pairs:
            self.states.setdefault(wave, {})[state.id] = state
        for wave in {w for w, _ in pairs}:
            states = self.states[wave].values()
            if wave not in self.bars:
                total = sum(s.counts.get("total") or sum(s.counts.values()) for s in states)
                self.bars[wave] = tqdm(
                    total=total, unit="request", desc=f"wave {wave}", file=sys.stderr, leave=False
                )
            bar = self.bars[wave]
            bar.n = sum(s.done for s in states)
            statuses: dict[str, int] = {}
            for s in states:
                statuses[s.status] = statuses.get(s.status, 0) + 1
            bar.set_postfix_str(", ".join(f"{n} {k}" for k, n in statuses.items()), refresh=False)
            if all(s.ended for s in states):
                bar.close()
                del self.bars[wave]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _print_batch_summary(backend: Any, stats: Any, run_dir: Path, add_out: bool) -> None:
    """--batch: what the batches did, and how to re-attach to those left running."""
    import shlex

    b = backend.stats
    lines = [
        f"Batches: {b.batches} created in {b.waves} waves ({b.requests} requests), "
        f"{b.reattached} re-attached; results: {b.succeeded} succeeded, {b.errored} errored, "
        f"{b.expired} expired, {b.canceled} canceled. Priced at the batch rate (half).",
    ]
    running = backend.open_batches
    if running:
        args = [a for a in sys.argv[1:] if a != "--fresh"]
        if add_out:
            args += ["--out", str(run_dir)]
        lines.append(
            f"{len(running)} batch(es) still open on {backend.name} (cai batch status {run_dir}). "
            f"To re-attach: cai {shlex.join(args)}"
        )
    click.echo("\n".join(lines), err=True)


def _quit_now(store: Any) -> None:
    """The second Ctrl-C: exit at once. Every line is written whole by the event loop, which
    runs this between writes, so the files need no cleanup; the manifest says so."""
    with contextlib.suppress(Exception):
        manifest = store.read_manifest()
        if manifest is not None:
            manifest.status = "interrupted"
            store.write_manifest(manifest)
    sys.stderr.write(
        f"\nQuit. To resume, run the same command with --out {store.dir} (and without --fresh).\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _print_summary(stats: Any, run_dir: Path, source: Any, resume: str) -> None:
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
        f"Tokens: {u.input_tokens} in, {u.output_tokens} out"
        + (
            f", {u.cache_read_input_tokens} cache read, {u.cache_creation_input_tokens} cache write"
            if u.cache_read_input_tokens or u.cache_creation_input_tokens
            else ""
        )
        + (f"; estimated cost {format_cost(stats.cost_usd)}" if stats.cost_usd else "")
        + (
            f"; waited {stats.throttled_seconds:.1f}s for rate limits"
            if stats.throttled_seconds >= 0.1
            else ""
        ),
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


# -- batch --------------------------------------------------------------------------------


@cli.group()
def batch() -> None:
    """Look at and cancel the provider batches of a `cai generate --batch` or `cai label --batch`
    run."""


def _batch_rows(run_dir: Path, base_url: str | None, cancel: bool) -> Any:
    import asyncio

    from cai.batch import batch_states, cancel_batches, run_batch_api

    provider, api = run_batch_api(run_dir, base_url)

    async def go() -> Any:
        try:
            return await (cancel_batches if cancel else batch_states)(api, run_dir)
        finally:
            await provider.aclose()

    return asyncio.run(go())


@batch.command("status")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base-url", default=None, help="API base URL (default: the run's).")
def batch_status(run_dir: Path, base_url: str | None) -> None:
    """List the run's batches: id, provider status, request counts, age, results taken in."""
    from cai.batch import describe_batches

    click.echo(describe_batches(_batch_rows(run_dir, base_url, cancel=False)))


@batch.command("cancel")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base-url", default=None, help="API base URL (default: the run's).")
def batch_cancel(run_dir: Path, base_url: str | None) -> None:
    """Cancel the run's batches that have not ended; the run stays resumable.

    Requests the provider had already answered are kept; the others come back canceled, and
    the next `cai generate` (or `cai label`) of the run sends them again (or drop --batch to
    call directly).
    """
    from cai.batch import BatchState
    from cai.rundir import lock_state, read_manifest

    lock = lock_state(run_dir)
    if lock.held:
        raise ConfigError(
            f"{run_dir} is being written by {lock.who()}: stop it (Ctrl-C) first, "
            "then cancel its batches"
        )
    manifest = read_manifest(run_dir)
    rows = _batch_rows(run_dir, base_url, cancel=True)
    for batch_id, state in rows:
        if isinstance(state, BatchState):
            click.echo(f"{batch_id}  {state.status}")
        else:
            click.echo(f"{batch_id}  not canceled: {state}", err=True)
    click.echo(
        f"{len(rows)} batch(es) asked to cancel. Resume with the same cai "
        f"{manifest.kind if manifest is not None else 'generate'} command "
        f"and --out {run_dir}.",
        err=True,
    )


# -- label --------------------------------------------------------------------------------


# Export's quality filters; `cai label` picks a run's pairs with the same ones.
_FILTER_OPTIONS = _options(
    click.option(
        "--keep-truncated", is_flag=True, help="Keep records whose first answer was cut off."
    ),
    click.option("--keep-empty", is_flag=True, help="Keep records whose first answer is empty."),
    click.option("--keep-meta", is_flag=True, help="Keep revisions that are meta-text or echoes."),
    click.option(
        "--keep-commentary",
        is_flag=True,
        help="Keep revisions that talk about 'the response' instead of being one.",
    ),
    click.option(
        "--keep-copied",
        is_flag=True,
        help="Keep revisions that copy the constitution's few-shot text or requests.",
    ),
    click.option(
        "--keep-unchanged",
        is_flag=True,
        help="Keep pairs whose revision barely changed the answer.",
    ),
    click.option("--keep-duplicates", is_flag=True, help="Keep records with a repeated prompt."),
    click.option(
        "--similarity",
        default=0.95,
        show_default=True,
        type=float,
        help="Word similarity at or above which a revision counts as unchanged.",
    ),
)


def _filter_config(
    keep_truncated: bool,
    keep_empty: bool,
    keep_meta: bool,
    keep_commentary: bool,
    keep_copied: bool,
    keep_unchanged: bool,
    keep_duplicates: bool,
    similarity: float,
) -> Any:
    from cai.filters import FilterConfig

    return FilterConfig(
        truncated=not keep_truncated,
        empty=not keep_empty,
        meta=not keep_meta,
        commentary=not keep_commentary,
        copied=not keep_copied,
        unchanged=not keep_unchanged,
        duplicate=not keep_duplicates,
        similarity=similarity,
    )


def _parse_clamp(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(x) for x in value.split(","))
    except ValueError:
        raise ConfigError(f"--clamp takes LO,HI such as 0.4,0.6, not '{value}'") from None
    return low, high


@cli.command()
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
        + (f"; estimated cost {format_cost(stats.cost_usd)}" if stats.cost_usd else ""),
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


# -- merge --------------------------------------------------------------------------------


@cli.command()
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
        f"Merged {len(run_dirs)} runs into {out}: {result.counts['records']} records"
        + (f" ({counts})" if counts else "")
        + f", {result.duplicates} duplicates dropped",
        err=True,
    )
    if result.missing_shards:
        n = result.shards[0][1]
        missing = ", ".join(f"{k}/{n}" for k in result.missing_shards)
        click.echo(f"Warning: shard(s) {missing} not given; their prompts are missing.", err=True)
    click.echo(f"Next: cai export {out} --format dpo", err=True)


# -- export -------------------------------------------------------------------------------


@cli.command()
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
    import os

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
    token = None
    if push_repo:
        from huggingface_hub import get_token

        token = os.environ.get("HF_TOKEN") or get_token()
        if not token:
            raise ConfigError(
                "--push-to-hub needs a Hugging Face token: set HF_TOKEN (a write token from "
                "https://huggingface.co/settings/tokens)"
            )
    result = export_run(run_dir, out, options)
    f = result.filtered
    removed = ", ".join(f"{k} {n}" for k, n in sorted(f.removed.items())) or "nothing"
    pairs = sum(v.use == "pref" for v in f.kept)
    click.echo(
        f"Read {result.records} records; filters removed {removed}; kept {len(f.kept)} "
        f"({pairs} with a preference pair, {f.sft_only} SFT only"
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
    if push_repo and token:
        url = push_export(result, push_repo, token=token)
        click.echo(f"Pushed to {url}", err=True)


# -- stats --------------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON.")
def stats(run_dir: Path, as_json: bool) -> None:
    """Show what a run holds: statuses, principles used, how often revisions changed the answer,
    lengths before and after, tokens and cost, and what export's default filters would keep."""
    from cai.stats import format_stats, run_stats

    data = run_stats(run_dir)
    click.echo(json.dumps(data, indent=2) if as_json else format_stats(data))


# -- report -------------------------------------------------------------------------------


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="The HTML file to write (default: RUN_DIR/report.html).",
)
def report(run_dir: Path, out: Path | None) -> None:
    """Write one self-contained HTML file to look at a run (generation or label run): a
    summary, plots, and a searchable viewer of every pair. It opens in any browser and loads
    nothing from the network."""
    from cai.report import write_report

    path = write_report(run_dir, out)
    click.echo(
        f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser.", err=True
    )
