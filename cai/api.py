"""The Python API: `cai.generate`, `cai.label`, `cai.generate_prompts` and `cai.load`, each
giving a `Run`.

    import cai
    run = cai.generate(["How do I pick a lock?"], "harmless", provider="openai", model="m")
    run.to_dataset("dpo")  # a datasets.Dataset with the rows `cai export --format dpo` writes

Options. Every option of `cai generate` and `cai label` is a keyword of the same name and
default (`--max-tokens` is `max_tokens=`), because both read one declaration: the dataclasses
of `cai.options`, whose fields carry the default and the help line. The CLI builds its click
options from those fields; this module builds the configs of a run from an instance
(`prepare_generate`, `prepare_label`). To add an option, add a field there and use it here:
the CLI and the API both have it. Bad input raises the `CaiError` the CLI prints, before any
run directory is made.

Runs. A run is what the CLI makes: the same directory, journal, lock and resume rules;
`out=None` picks a folder under outputs/ (or the unfinished run of the same call), and calling
again with the same `out` resumes. The sync functions run the job on a worker thread with its
own event loop, so they work in scripts and under a running loop (Jupyter) alike; the first
Ctrl-C stops taking prompts and lets calls in flight finish, the second cancels them; either
way what was done is kept and `KeyboardInterrupt` is raised. Clients are closed on return and
on error. The CLI uses `prepare_*` and `execute` below and prints around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

from cai.constitution import Constitution, load_constitution
from cai.errors import ConfigError, InputError, RunMismatchError, unwritable_run
from cai.options import CompareOptions, GenerateOptions, LabelOptions, PromptsOptions
from cai.pipeline import GenerateConfig, RunStats, build_manifest, run_generation, run_settings
from cai.providers import Provider, create_provider, default_model
from cai.rundir import Manifest, RunStore, choose_run_dir, read_manifest, redact_secrets
from cai.sources import MemorySource, PromptSource, memory_spec
from cai.words import plural

__all__ = [
    "Comparison",
    "Plan",
    "Prepared",
    "Progress",
    "Run",
    "acompare",
    "agenerate",
    "agenerate_prompts",
    "alabel",
    "batch_backend",
    "call_config",
    "compare",
    "compare_result",
    "count_prompts",
    "execute",
    "generate",
    "generate_prompts",
    "label",
    "load",
    "prepare_compare",
    "prepare_generate",
    "prepare_label",
    "prepare_prompts",
]

log = logging.getLogger("cai")


class Run:
    """A run directory made by `cai generate` or `cai label` (or their Python twins)."""

    def __init__(self, dir: str | Path, result: RunStats | None = None) -> None:
        # Absolute, so the run is found again after a change of working directory.
        self.dir = Path(dir).absolute()
        # The counts of the call that made or resumed the run; None for `cai.load`.
        self.result = result

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    @property
    def manifest(self) -> Manifest:
        manifest = read_manifest(self.dir)
        if manifest is None:
            raise ConfigError(f"{self.dir} holds no manifest.json; is it a cai run directory?")
        return manifest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def stats(self) -> dict[str, Any]:
        """What `cai stats RUN --json` prints."""
        from cai.stats import run_stats

        return run_stats(self.dir)

    @property
    def records(self) -> Iterator[Any]:
        """The run's records (`Record`s; a label run's lines as dicts), read as they are used."""
        from cai.feedback import is_label_run, read_labels
        from cai.rundir import read_records

        if is_label_run(self.dir):
            return iter(read_labels(self.dir))
        return read_records(self.dir)

    def to_dataset(self, format: str = "dpo", **options: Any) -> Any:
        """The rows `cai export RUN --format FORMAT` writes, as a `datasets.Dataset` (dpo, sft)
        or a `DatasetDict` of four splits (hf); the card is in `info.description`. Keywords
        are export's options: style, sft_share, test_size, seed, keep_*, similarity, labels,
        min_margin, keep_inconsistent."""
        from cai.export import export_dataset

        return export_dataset(self.dir, export_options(format, options))

    def export(self, out: str | Path | None = None, format: str = "dpo", **options: Any) -> Path:
        """Write what `cai export` writes (data and card); returns where the data went."""
        from cai.export import export_run

        return export_run(self.dir, out, export_options(format, options)).out

    def report(self, out: str | Path | None = None) -> Path:
        """Write the HTML report (`cai report`); returns its path."""
        from cai.report import write_report

        return write_report(self.dir, out)


def export_options(fmt: str, options: dict[str, Any]) -> Any:
    """`ExportOptions` from `cai export`'s option names (keep_* and similarity included)."""
    from cai.export import ExportOptions
    from cai.options import FilterOptions

    names = {f.name for f in dataclasses.fields(FilterOptions)}
    filters = FilterOptions(**{k: v for k, v in options.items() if k in names})
    rest = {k: v for k, v in options.items() if k not in names}
    _check_keywords("export", rest, {f.name for f in dataclasses.fields(ExportOptions)} - {"fmt"})
    return ExportOptions(fmt=fmt, filters=filters.filter_config(), **rest)


def load(run_dir: str | Path) -> Run:
    """The run in `run_dir`, to read or export."""
    run = Run(run_dir)
    if not run.dir.is_dir():
        raise ConfigError(f"{run.dir}: no such run directory")
    run.manifest  # noqa: B018 - refuse a folder that is not a run now, not on first use
    return run


@dataclass(frozen=True)
class Plan:
    """What a dry run found: the text `--dry-run` prints; nothing was called or written."""

    text: str
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.text


@dataclass
class Prepared:
    """A job checked and ready: its providers made, its run directory chosen (not yet made).

    `start(on_event=, stop=)` is its coroutine; `notes` are what the CLI prints as "Note:".
    """

    kind: str
    dir: Path
    start: Callable[..., Any]
    backend: Provider
    store: RunStore
    stats: RunStats
    source: Any
    others: tuple[Provider, ...] = ()
    notes: list[str] = field(default_factory=list)


def _check_keywords(command: str, given: dict[str, Any], known: set[str]) -> None:
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{command}() got an unknown option {name!r}{hint}")


def _options(cls: type, command: str, given: dict[str, Any]) -> Any:
    _check_keywords(command, given, {f.name for f in dataclasses.fields(cls)})
    return cls(**given)


def _constitution(value: Any) -> Constitution:
    if isinstance(value, Constitution):
        return value
    return load_constitution(Path(value))


def _prompt_source(prompts: Any, prompt_field: str | None, skip_bad_lines: bool) -> Any:
    if isinstance(prompts, str | os.PathLike):
        return PromptSource(os.fspath(prompts), prompt_field, skip_bad_lines)
    return MemorySource(memory_spec(prompts), prompt_field, skip_bad_lines, rows=prompts)


def count_prompts(source: Any) -> int | None:
    """Read every prompt once before any call, so bad input stops the run before it costs
    anything; None for a stream (the Hub, an `IterableDataset`)."""
    if source.spec.startswith("hf:"):
        return None
    if isinstance(source, MemorySource) and not hasattr(source.rows, "__len__"):
        return None
    return sum(1 for _ in source)


def call_config(opts: Any) -> dict[str, Any]:
    """`CallConfig`'s fields from a command's options."""
    names = ("seed", "temperature", "max_tokens", "concurrency", "max_retries", "limit")
    fields = {name: getattr(opts, name) for name in (*names, "rpm", "tpm", "shard")}
    if opts.batch:
        from cai.batch import check_batch_options

        # Each item in progress waits on its calls in a wave: a wave's worth of them at once.
        fields["concurrency"] = check_batch_options(
            _provider_name(opts.provider),
            opts.batch_size,
            opts.poll_interval,
            engine=opts.engine,
            rpm=opts.rpm,
            tpm=opts.tpm,
        )
    fields["retry_failed"] = not opts.no_retry_failed
    fields["max_cost"] = opts.max_cost
    return fields


def _provider_name(provider: Any) -> str:
    return provider.name if isinstance(provider, Provider) else str(provider)


def _model_factory(opts: Any) -> Callable[..., Provider]:
    """`make(connections=N)`: the command's model, picklable for Ray workers when named."""
    if isinstance(opts.provider, Provider):
        if opts.engine != "default":
            raise ConfigError("--engine ray builds a model on each worker: pass provider by name")
        given = opts.provider
        return lambda connections=None: given
    return partial(
        create_provider,
        opts.provider,
        model=opts.model,
        base_url=opts.base_url,
        model_path=opts.model_path,
        timeout=opts.timeout,
    )


def _price(opts: Any, model: str) -> tuple[Any, Any]:
    from cai.pricing import FREE, load_price_table

    prices = load_price_table(opts.price_table)
    return prices, FREE if _provider_name(opts.provider) == "local" else prices.lookup(model)


def _manifest(
    parsed: Constitution,
    prompts: Any,
    config: Any,
    backend: Provider,
    opts: Any,
    prices: Any,
    count: int | None = None,
) -> Manifest:
    """`build_manifest` with the base URL, timeout and price table of `opts` (a command's
    options) and the date of the `prices` the run is priced at."""
    return build_manifest(
        parsed,
        prompts,
        config,
        backend,
        count=count,
        base_url=opts.base_url,
        timeout=opts.timeout,
        price_table=opts.price_table,
        prices_as_of=prices.as_of,
    )


def batch_backend(
    backend: Provider, run_dir: Path, manifest: Manifest, price: Any, opts: Any
) -> tuple[Provider, Any]:
    """With --batch, a `BatchProvider` around `backend` at the batch price, its figures in the
    manifest's `config.batch`; without, a run whose batches are not taken in is refused, as
    calling again would pay twice."""
    from cai.batch import BatchProvider, check_no_open_batches
    from cai.pricing import batch_price

    if not opts.batch:
        check_no_open_batches(run_dir)
        return backend, price
    manifest.config["batch"] = {"batch_size": opts.batch_size, "poll_interval": opts.poll_interval}
    batched = BatchProvider(
        backend,
        run_dir,
        batch_size=opts.batch_size,
        poll_interval=opts.poll_interval,
        max_retries=opts.max_retries,
        report=manifest.config["batch"],
    )
    return batched, batch_price(price) if price is not None else None


def _closing_on_error(prepare: Callable[..., Prepared | Plan]) -> Callable[..., Prepared | Plan]:
    """Models made before a later check fails are closed (a local model holds memory)."""

    def wrapper(opts: Any) -> Prepared | Plan:
        made: list[Provider] = []
        try:
            return prepare(opts, made)
        except BaseException:
            for model in made:
                model.close()
            raise

    wrapper.__doc__ = prepare.__doc__
    return wrapper


@_closing_on_error
def prepare_generate(opts: GenerateOptions, made: list[Provider]) -> Prepared | Plan:
    """Check a generate job's input and options, make its models; nothing is written. With
    `dry_run`, the plan instead."""
    from cai.engines import make_engine

    config = GenerateConfig(rounds=opts.rounds, **call_config(opts))
    parsed = _constitution(opts.constitution)
    source = _prompt_source(opts.prompts, opts.prompt_field, opts.skip_bad_lines)
    total = count_prompts(source)
    notes = []
    if source.skipped:
        notes.append(
            f"Skipping {plural(len(source.skipped), 'bad line')} (--skip-bad-lines), the first: "
            f"{source.skipped[0]}"
        )
    if total == 0:
        why = f"no usable prompt ({plural(len(source.skipped), 'bad line')} skipped)"
        if isinstance(source, MemorySource):
            raise InputError("prompts", None, why if source.skipped else "no prompts given")
        raise InputError(source.spec, None, why if source.skipped else "no prompts in the file")
    make_provider = _model_factory(opts)
    if opts.dry_run:
        from cai.plan import format_plan, plan_run

        given = opts.provider.model if isinstance(opts.provider, Provider) else None
        name = (
            opts.model or given or default_model(opts.provider) or opts.model_path
        ) or "the bundled model"
        prices, price = _price(opts, name)
        plan = plan_run(
            source,
            parsed,
            config,
            model=name,
            price=price,
            prices_as_of=prices.as_of,
            batch=opts.batch,
        )
        return Plan(format_plan(plan), notes)
    engine = make_engine(opts.engine, make_provider, workers=opts.workers, address=opts.ray_address)
    backend = make_provider(connections=config.concurrency)
    made.append(backend)
    prices, price = _price(opts, backend.model)
    notes += _model_notes(backend, price)
    run_dir = choose_run_dir(
        opts.out,
        fresh=opts.fresh,
        name=parsed.name,
        settings=run_settings(config, parsed, backend),
        source=source.spec,
        shard=config.shard,
    )
    manifest = _manifest(parsed, source, config, backend, opts, prices, count=total)
    if config.limit is not None and total is not None:
        total = min(total, config.limit)
    backend, price = batch_backend(backend, run_dir, manifest, price, opts)
    store = RunStore(run_dir)
    stats = RunStats(total=total, price=price)
    start = partial(
        run_generation, source, parsed, backend, config, store,
        manifest=manifest, stats=stats, engine=engine,
    )  # fmt: skip
    return Prepared("generate", run_dir, start, backend, store, stats, source, notes=notes)


def _model_notes(backend: Provider, price: Any) -> list[str]:
    notes = []
    if not backend.takes_sampling:
        notes.append(f"Note: {backend.model} takes no temperature or top_p; they are not sent.")
    if price is None:
        notes.append(
            f"Note: no price for model '{backend.model}'; the cost will not be estimated "
            "(add it with --price-table FILE)."
        )
    return notes


@_closing_on_error
def prepare_label(opts: LabelOptions, made: list[Provider]) -> Prepared | Plan:
    """Check a label job's input and options, make its models; nothing is written. With
    `dry_run`, the plan instead."""
    from cai.engines import make_engine, make_providers
    from cai.feedback import (
        LABELS_FILE,
        LabelConfig,
        LabelStats,
        plan_labels,
        policy_factory,
        run_labels,
    )  # fmt: skip
    from cai.rundir import check_run_dir, is_run_dir

    source = opts.source.dir if isinstance(opts.source, Run) else opts.source
    from_run = isinstance(source, str | os.PathLike) and is_run_dir(Path(source))
    opts, judge_note = _feedback_model(opts, Path(source) if from_run else None)
    config = LabelConfig(
        **call_config(opts),
        votes=opts.votes,
        cot=opts.cot,
        clamp=opts.clamp,
        responses=opts.responses,
        policy_temperature=opts.policy_temperature,
    )
    check_run_dir(opts.out, "label")
    notes = [judge_note] if judge_note else []
    pairs = _label_pairs(source, from_run, opts, config.responses)
    items, prompts, total, pairs_from = pairs.items, pairs.prompts, pairs.total, pairs.source
    notes += pairs.notes
    parsed = _constitution(pairs.constitution)
    make_feedback = _model_factory(opts)
    backend = make_feedback(connections=config.concurrency)
    made.append(backend)
    policy = make_policy = None
    if not from_run:
        make_policy = policy_factory(
            backend,
            provider=_provider_name(opts.provider),
            base_url=opts.base_url,
            timeout=opts.timeout,
            policy_provider=opts.policy_provider,
            policy_model=opts.policy_model,
            policy_base_url=opts.policy_base_url,
        )
        policy = backend if make_policy is None else make_policy(connections=config.concurrency)
        made.append(policy)
    engine = make_engine(
        opts.engine,
        partial(make_providers, make_feedback, {"policy": make_policy}),
        workers=opts.workers,
        address=opts.ray_address,
    )
    chain_of_thought, cot_notes = _votes_cot(config, backend, opts.cot)
    notes += cot_notes
    prices, price = _price(opts, backend.model)
    if opts.dry_run:
        if opts.batch and price is not None:
            from cai.pricing import batch_price

            price = batch_price(price)
        text = plan_labels(list(items), parsed, config, chain_of_thought, price=price)
        if opts.batch and price is not None:
            text += "\nPriced at the batch rate (half the interactive price)."
        for model in made:
            model.close()
        return Plan(text, notes)
    manifest = _manifest(parsed, prompts, config, backend, opts, prices, count=total)
    if policy is not None and policy is not backend:
        manifest.config.update(policy_provider=policy.name, policy_model=policy.model)
    direct = backend
    backend, price = batch_backend(backend, opts.out, manifest, price, opts)
    if policy is direct:
        policy = backend  # the feedback model writes the responses: in the same batches
    store = RunStore(opts.out, LABELS_FILE)
    stats = LabelStats(total=total, price=price)
    start = partial(
        run_labels, items, parsed, backend, config, store,
        policy=policy, source=pairs_from, manifest=manifest, stats=stats, engine=engine,
    )  # fmt: skip
    others = (policy,) if policy is not None and policy is not backend else ()
    return Prepared("label", opts.out, start, backend, store, stats, prompts, others, notes)


def _votes_cot(config: Any, backend: Provider, asked: bool) -> tuple[bool, list[str]]:
    """Whether the votes use chain of thought (`--cot`, or a model without log-probabilities),
    and a note when the model made it so."""
    from cai.feedback import uses_cot

    if not uses_cot(config, backend):
        return False, []
    if asked:
        return True, []
    low, high = config.bounds(True)
    return True, [
        f"Note: {backend.name} gives no log-probabilities; the votes use chain of thought, "
        f"clamped to {low:g}-{high:g} (--clamp)."
    ]


@dataclass
class _LabelPairs:
    """What a label job labels: its `items`, the `prompts` (a run's path, or a prompt source)
    they come from, how many (`total`, None when unknown), the constitution whose principles
    the votes draw, the run's `source` (`feedback.run_source`; None for prompts) and notes."""

    items: Any
    prompts: Any
    total: int | None
    constitution: Any
    source: dict[str, Any] | None
    notes: list[str]


def _label_pairs(source: Any, from_run: bool, opts: LabelOptions, responses: int) -> _LabelPairs:
    """A run's pairs (its first answer against the revision export would choose, with the
    --keep-* filters), or a prompt source's (every pair of `responses` answers a prompt)."""
    from cai.feedback import prompt_pairs, run_pairs, run_source

    constitution = opts.constitution
    if not from_run:
        if constitution is None:
            raise ConfigError(f"--constitution is needed to label the prompts in {source}")
        prompts = _prompt_source(source, opts.prompt_field, opts.skip_bad_lines)
        count = count_prompts(prompts)
        if count == 0:
            raise InputError(prompts.spec, None, "no prompts in the file")
        items = prompt_pairs(prompts)
        pairs = math.comb(responses, 2)
        total = None if count is None else min(count, opts.limit or count) * pairs
        return _LabelPairs(items, prompts, total, constitution, None, [])
    filters = opts.filter_config()
    source_manifest, items, left_out = run_pairs(source, filters)
    # The run and filters the pairs come from: a resume with others is refused.
    pairs_from = run_source(source, source_manifest, filters)
    if constitution is None:
        constitution = Path(source) / "constitution.md"
        if not constitution.is_file():
            raise ConfigError(
                f"{source} holds no constitution.md; pass --constitution with the file the "
                "run was made with"
            )
    notes = []
    if left_out:
        notes.append(
            "Not labelled (no pair for export): "
            + ", ".join(f"{k} {n}" for k, n in sorted(left_out.items()))
            + ("" if items else "; the matching --keep-* flags label them anyway")
        )
    return _LabelPairs(items, os.fspath(source), len(items), constitution, pairs_from, notes)


def _feedback_model(opts: LabelOptions, run_dir: Path | None) -> tuple[LabelOptions, str | None]:
    """`opts` with the feedback model: the flags given, each one, else the source run's
    provider, model and base URL (as `cai batch status` reads them), else the local model; and
    a note naming the model when it came from the run."""
    if run_dir is None or isinstance(opts.provider, Provider):
        return dataclasses.replace(opts, provider=opts.provider or "local"), None
    manifest = read_manifest(run_dir)
    judge = _judge_model(opts, manifest.config if manifest is not None else {})
    chose = (judge.provider, judge.model, judge.base_url)
    taken = chose != (opts.provider, opts.model, opts.base_url)
    chosen = dataclasses.replace(
        opts, provider=judge.provider, model=judge.model, base_url=judge.base_url
    )
    if not taken:
        return chosen, None
    where = f" at {judge.base_url}" if judge.base_url else ""
    return chosen, (
        f"Feedback model: {judge.provider} "
        f"{judge.model or default_model(judge.provider) or 'default'}{where}, from the source "
        "run (--provider, --model and --base-url choose another)."
    )


@_closing_on_error
def prepare_prompts(opts: PromptsOptions, made: list[Provider]) -> Prepared | Plan:
    """Check a prompts job's input and options, make its model; nothing is written. With
    `dry_run`, the plan instead."""
    from types import SimpleNamespace

    from cai.redteam import (
        GENERATIONS_FILE,
        PromptStats,
        RedteamConfig,
        load_seeds,
        load_styles,
        plan_prompts,
        prompts_settings,
        run_prompts,
        seeds_info,
    )  # fmt: skip

    # No --limit, --shard or --engine: a prompts run decides its calls as answers come.
    in_process = SimpleNamespace(**{**vars(opts), "engine": "default"})
    config = RedteamConfig(
        **call_config(in_process),
        n=opts.n,
        per_call=opts.per_call,
        shots=opts.shots,
        benign=opts.benign,
        multi_turn=opts.multi_turn,
        near_threshold=opts.near_threshold,
        max_calls=opts.max_calls,
        structured=not opts.no_structured,
    )
    parsed = _constitution(opts.constitution)
    styles = load_styles(opts.styles)
    seeds = load_seeds(opts.seeds, parsed)
    make_provider = _model_factory(in_process)
    if opts.dry_run:
        name = opts.model or default_model(_provider_name(opts.provider)) or opts.model_path
        prices, price = _price(opts, name or "the bundled model")
        text = plan_prompts(parsed, styles, seeds, config, model=name or "", price=price)
        return Plan(text)
    backend = make_provider(connections=config.concurrency)
    made.append(backend)
    prices, price = _price(opts, backend.model)
    notes = _model_notes(backend, price)
    info = seeds_info(opts.seeds, len(seeds))
    run_dir = choose_run_dir(
        opts.out,
        fresh=opts.fresh,
        name=f"prompts-{parsed.name}",
        settings=prompts_settings(config, parsed, backend, styles, seeds),
        source=info["source"],
        shard=None,
    )
    manifest = _manifest(parsed, info["source"], config, backend, opts, prices)
    manifest.prompts = info
    backend, price = batch_backend(backend, run_dir, manifest, price, opts)
    store = RunStore(run_dir, GENERATIONS_FILE)
    stats = PromptStats(price=price)
    start = partial(
        run_prompts, parsed, backend, config, run_dir,
        seeds=seeds, styles=styles, manifest=manifest, stats=stats,
    )  # fmt: skip
    return Prepared("prompts", run_dir, start, backend, store, stats, None, notes=notes)


async def execute(
    job: Prepared,
    *,
    on_event: Callable[[str, Any], None] = lambda kind, data: None,
    stop: asyncio.Event | None = None,
) -> RunStats:
    """Run a prepared job to its end (or until `stop` is set); its models are closed after."""
    stop = stop or asyncio.Event()
    backend = job.backend
    if backend.batched:
        backend.stop, backend.on_event = stop, on_event
    try:
        result = await job.start(on_event=on_event, stop=stop)
        if backend.batched and not result.interrupted:
            await backend.finish()
        return result
    except OSError as e:
        error = unwritable_run(e, job.dir)
        if error is None:
            raise
        raise error from e
    finally:
        for model in (backend, *job.others):
            await model.aclose()
        for model in (backend, *job.others):
            model.close()


class Progress:
    """A job's progress as a `tqdm.auto` bar (a widget in notebooks) over its items, with its
    counts; `on_event` is the job's event handler. The CLI passes a terminal bar
    (`bar_class`), prints the run directory (`announce`) and draws batch waves (`batches`)."""

    def __init__(
        self,
        stats: RunStats,
        *,
        unit: str,
        desc: str,
        enabled: bool = True,
        bar_class: Callable[..., Any] | None = None,
        announce: Callable[[Path], None] | None = None,
        batches: Callable[[str, Any], None] | None = None,
    ) -> None:
        self.stats, self.unit, self.desc, self.enabled = stats, unit, desc, enabled
        self.bar_class, self.batches = bar_class, batches
        self.announce = announce or (lambda run_dir: log.info("Run directory: %s", run_dir))
        self.bar: Any = None
        self.shown_at = 0.0

    def on_event(self, kind: str, data: Any) -> None:
        if kind == "start":  # the run is taken: no refusal can follow
            self.announce(data)
            if self.enabled:
                if self.bar_class is None:
                    from tqdm.auto import tqdm

                    self.bar_class = tqdm
                total = self.stats.total
                self.bar = self.bar_class(
                    total=total, unit=self.unit, desc=self.desc, file=sys.stderr
                )
            return
        if kind == "notice":
            self.write(f"Note: {redact_secrets(str(data))}")
        if self.bar is None:
            return
        if kind in ("wave", "poll", "ended") and self.batches is not None:
            self.batches(kind, data)
        if kind in ("record", "skip"):
            self.bar.update(1)
        # The bar redraws at most every `mininterval` seconds: formatting the counts for each
        # call would cost CPU for nothing (benchmarks/cpu_per_call.py).
        if time.monotonic() - self.shown_at >= self.bar.mininterval:
            self.show_counts()

    def show_counts(self) -> None:
        stats, self.shown_at = self.stats, time.monotonic()
        elapsed = max(self.shown_at - stats.started, 1e-6)
        self.bar.set_postfix(
            calls=stats.calls,
            failed=stats.failed,
            retries=stats.retries,
            tok_s=f"{stats.usage.output_tokens / elapsed:.0f}",
            refresh=False,
        )

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            log.warning("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.show_counts()  # the last counts, not those of the last redraw
            self.bar.close()


@contextlib.contextmanager
def _ctrl_c_raises() -> Iterator[None]:
    """Ctrl-C raises `KeyboardInterrupt` in this thread while a job runs, whatever handler the
    caller put in place: asyncio.run's only cancels its task, which is blocked in this call."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run_sync(job: Prepared, progress: bool) -> RunStats:
    """Run `job` on a worker thread with its own event loop, whether or not this thread has
    one running (Jupyter); Ctrl-C here stops it there."""
    unit = {"generate": "prompt", "prompts": "call"}.get(job.kind, "pair")
    bars = Progress(job.stats, unit=unit, desc=job.kind, enabled=progress)
    box: dict[str, Any] = {}
    ready, done = threading.Event(), threading.Event()

    async def main() -> RunStats:
        box["loop"], box["stop"] = asyncio.get_running_loop(), asyncio.Event()
        box["task"] = asyncio.current_task()
        ready.set()
        return await execute(job, on_event=bars.on_event, stop=box["stop"])

    def work() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e
        finally:
            ready.set()
            done.set()

    thread = threading.Thread(target=work, name="cai-run", daemon=True)
    thread.start()
    presses = 0
    with _ctrl_c_raises():
        while not done.is_set():
            try:
                done.wait()
            except KeyboardInterrupt:
                presses += 1
                ready.wait()
                if "loop" in box and not done.is_set():
                    stop = box["stop"].set if presses == 1 else box["task"].cancel
                    box["loop"].call_soon_threadsafe(stop)
                    if presses == 1:
                        bars.write("Stopping: finishing calls in flight, starting no new ones. "
                                   "Interrupt again to stop now.")  # fmt: skip
    thread.join()
    bars.close()
    error = box.get("error")
    if error is None and box["result"].over_budget:
        return box["result"]  # `_finish` says so, naming the run
    if isinstance(error, asyncio.CancelledError) or (error is None and box["result"].interrupted):
        raise KeyboardInterrupt(f"stopped; {job.dir} keeps what was done (call again to resume)")
    if error is not None:
        raise error
    return box["result"]


def _finish(job: Prepared, result: RunStats) -> Run:
    if result.over_budget:
        from cai.ledger import BudgetExhausted

        raise BudgetExhausted(result.budget.describe(), job.dir)
    if result.failed_in_run:
        log.warning("%s of the run failed; call again with out=%r to retry them.",
                    result.failed_in_run, str(job.dir))  # fmt: skip
    return Run(job.dir, result)


def _prepare(kind: str, given: dict[str, Any]) -> Prepared | Plan:
    if kind == "generate":
        job = prepare_generate(_options(GenerateOptions, kind, given))
    elif kind == "generate_prompts":
        job = prepare_prompts(_options(PromptsOptions, kind, given))
    else:
        job = prepare_label(_options(LabelOptions, kind, given))
    for note in job.notes:
        log.warning("%s", note)
    return job


def _run(job: Prepared | Plan, progress: bool) -> Run | Plan:
    return job if isinstance(job, Plan) else _finish(job, _run_sync(job, progress))


async def _arun(job: Prepared | Plan) -> Run | Plan:
    return job if isinstance(job, Plan) else _finish(job, await execute(job))


# A dry run gives its Plan; any other call its Run (typed so, for editors and type checkers).
@overload
def generate(
    prompts: Any, constitution: Any, *, dry_run: Literal[True], progress: bool = ..., **options: Any
) -> Plan: ...
@overload
def generate(prompts: Any, constitution: Any, *, progress: bool = ..., **options: Any) -> Run: ...
def generate(
    prompts: Any, constitution: Any, *, progress: bool = True, **options: Any
) -> Run | Plan:
    """Answer each prompt, critique and revise the answer against the constitution; the run.

    `prompts`: a path (any format `cai generate --prompts` reads), a list of strings, of
    message lists or of dicts (rows, as in JSONL), or a `datasets.Dataset`. `constitution`: a
    path, a shipped name or a `Constitution`. `options`: `cai generate`'s options by their
    Python names (`provider="openai"`, `model=`, `base_url=`, `rounds=`, `out=`, ...; see
    `cai.options.GenerateOptions`); `provider` may be a `Provider`. With `dry_run=True`, the
    `Plan` instead. Raises `KeyboardInterrupt` when stopped (the run keeps what was done).
    """
    job = _prepare("generate", {"prompts": prompts, "constitution": constitution, **options})
    return _run(job, progress)


@overload
async def agenerate(
    prompts: Any, constitution: Any, *, dry_run: Literal[True], **options: Any
) -> Plan: ...
@overload
async def agenerate(prompts: Any, constitution: Any, **options: Any) -> Run: ...
async def agenerate(prompts: Any, constitution: Any, **options: Any) -> Run | Plan:
    """`generate` in the caller's event loop (no progress bar; cancel the task to stop it)."""
    job = _prepare("generate", {"prompts": prompts, "constitution": constitution, **options})
    return await _arun(job)


@overload
def label(
    source: Any, *, out: str | Path, dry_run: Literal[True], progress: bool = ..., **options: Any
) -> Plan: ...
@overload
def label(source: Any, *, out: str | Path, progress: bool = ..., **options: Any) -> Run: ...
def label(source: Any, *, out: str | Path, progress: bool = True, **options: Any) -> Run | Plan:
    """Label pairs of responses with AI feedback (`cai label`); the label run.

    `source`: a generate `Run` or its directory (each record's first answer against its
    revision), or prompts as `generate` takes them (`responses` answers per prompt from the
    policy model, every pair labelled; `constitution=` is then needed). `options`: `cai
    label`'s options by their Python names (`cai.options.LabelOptions`). The feedback model
    defaults to a source run's provider, model and base URL; `provider=`, `model=` and
    `base_url=` override each.
    """
    job = _prepare("label", {"source": source, "out": out, **options})
    return _run(job, progress)


@overload
async def alabel(
    source: Any, *, out: str | Path, dry_run: Literal[True], **options: Any
) -> Plan: ...
@overload
async def alabel(source: Any, *, out: str | Path, **options: Any) -> Run: ...
async def alabel(source: Any, *, out: str | Path, **options: Any) -> Run | Plan:
    """`label` in the caller's event loop."""
    job = _prepare("label", {"source": source, "out": out, **options})
    return await _arun(job)


def generate_prompts(constitution: Any, *, progress: bool = True, **options: Any) -> Run | Plan:
    """Write red-team prompts from the constitution (`cai prompts generate`); the prompts run,
    whose `prompts.jsonl` `generate` takes as prompts (`generate(run.dir, ...)`).

    `constitution`: a path, a shipped name or a `Constitution`. `options`: the command's
    options by their Python names (`n=500`, `per_call=`, `benign=0.2`, `seeds=`, `styles=`,
    `provider=`, `out=`, ...; see `cai.options.PromptsOptions`). With `dry_run=True`, the
    `Plan` instead. docs/redteam.md has the method.
    """
    job = _prepare("generate_prompts", {"constitution": constitution, **options})
    return _run(job, progress)


async def agenerate_prompts(constitution: Any, **options: Any) -> Run | Plan:
    """`generate_prompts` in the caller's event loop."""
    job = _prepare("generate_prompts", {"constitution": constitution, **options})
    return await _arun(job)


# -- compare ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    """What `compare` found. `data` holds `cai compare --json`'s figures (`shared`, and per run
    `win_rate`, `win_rate_ci`, `mean_preference`, `position_consistency` against the first);
    `judge` is the judge's label run (None when there is none); `str()` is the CLI's text."""

    data: dict[str, Any]
    runs: list[Any]  # cai.comparison.RunSide, each run as compared
    labels: list[dict[str, Any]] | None = None
    judge: Run | None = None

    def __str__(self) -> str:
        from cai.comparison import format_comparison

        return format_comparison(self.data)

    def write_page(self, out: str | Path) -> Path:
        """The comparison as one self-contained HTML page (`cai compare --out`)."""
        from cai.report.comparison import write_compare_page

        return write_compare_page(out, self.data, self.runs, self.labels)


def _judge_model(opts: Any, first: dict[str, Any]) -> Any:
    """`opts` with the judge's model: the options given, else the first run's model and URL."""
    from types import SimpleNamespace

    given = opts.provider is not None
    provider = opts.provider if given else first.get("provider") or "local"
    same = _provider_name(provider) == first.get("provider")
    model, base_url, model_path = opts.model, opts.base_url, opts.model_path
    if same and _provider_name(provider) != "local":
        model = model if model is not None else first.get("model")
        base_url = base_url if base_url is not None else first.get("base_url")
    return SimpleNamespace(
        **{**vars(opts), "provider": provider, "model": model, "base_url": base_url,
           "model_path": model_path},
    )  # fmt: skip


@_closing_on_error
def prepare_compare(opts: CompareOptions, made: list[Provider]) -> Prepared | Plan:
    """Check the runs and the judge's options, make the judge's model; nothing is written.
    The job's `source` is the runs (`cai.comparison.RunSide`). With `dry_run`, the plan instead."""
    from cai.comparison import default_judge_dir, judge_items, judge_pairs, load_runs, shared_ids
    from cai.engines import make_engine
    from cai.feedback import LABELS_FILE, LabelConfig, LabelStats, plan_labels, run_labels
    from cai.rundir import CONSTITUTION_COPY, check_run_dir

    runs = load_runs(opts.runs, opts.filter_config())
    judge = _judge_model(opts, runs[0].manifest.config)
    config = LabelConfig(**call_config(judge), votes=opts.votes, cot=opts.cot, clamp=opts.clamp)
    out = opts.judge_out or default_judge_dir([run.dir for run in runs])
    check_run_dir(out, "label")
    constitution = opts.constitution
    if constitution is None:
        constitution = runs[0].dir / CONSTITUTION_COPY
        if not constitution.is_file():
            raise ConfigError(
                f"{runs[0].dir} holds no {CONSTITUTION_COPY}; pass --constitution with the file "
                "whose principles the judge's votes should draw"
            )
    parsed = _constitution(constitution)
    make_feedback = _model_factory(judge)
    backend = make_feedback(connections=config.concurrency)
    made.append(backend)
    engine = make_engine(opts.engine, make_feedback, workers=opts.workers, address=opts.ray_address)
    items = judge_items(runs, judge_pairs(runs, shared_ids(runs)))
    chain_of_thought, notes = _votes_cot(config, backend, opts.cot)
    prices, price = _price(judge, backend.model)
    if opts.dry_run:
        text = plan_labels(items, parsed, config, chain_of_thought, price=price)
        backend.close()
        return Plan(text, notes)
    # Not a run's path: `find_label_run` must never take the judge for a label run of a run.
    source = "cai compare"
    manifest = _manifest(parsed, source, config, backend, judge, prices, count=len(items))
    manifest.config["compare"] = {"runs": [os.fspath(run.dir) for run in runs]}
    backend, price = batch_backend(backend, out, manifest, price, judge)
    store = RunStore(out, LABELS_FILE)
    stats = LabelStats(total=len(items), price=price)
    judge_run = partial(
        run_labels, items, parsed, backend, config, store,
        manifest=manifest, stats=stats, engine=engine,
    )  # fmt: skip

    async def start(**run: Any) -> RunStats:
        try:
            return await judge_run(**run)
        except RunMismatchError as e:
            # The label run's advice names --out, which is the page's option here.
            message = str(e).replace("pass --out with", "pass --judge-out with")
            raise RunMismatchError(message) from None

    return Prepared("compare", out, start, backend, store, stats, runs, notes=notes)


def compare_result(
    opts: CompareOptions,
    runs: list[Any] | None = None,
    judge_dir: Path | None = None,
    stats: RunStats | None = None,
) -> Comparison:
    """The comparison of `opts.runs` (or of `runs`, already loaded) with the judge's votes in
    `judge_dir` (default: `opts.judge_out`, if given; without either, no judge)."""
    from cai.comparison import compare_runs, judge_info, load_runs
    from cai.feedback import load_labels

    if runs is None:
        runs = load_runs(opts.runs, opts.filter_config())
    judge_dir = judge_dir or opts.judge_out
    labels = info = None
    if judge_dir is not None:
        manifest, labels = load_labels(judge_dir)
        info = judge_info(judge_dir, manifest, labels)
    data = compare_runs(runs, labels=labels, judge=info, seed=opts.seed)
    judge = Run(judge_dir, stats) if judge_dir is not None else None
    return Comparison(data, runs, labels, judge)


def compare(
    runs: Any, *, judge: bool = False, progress: bool = True, **options: Any
) -> Comparison | Plan:
    """Compare runs made on the same prompts (`cai compare`); with `judge=True`, a feedback
    model compares each run's final answers with the first run's (a label run, resumed when
    called again).

    `runs`: run directories or `Run`s, the first the baseline. `options`: `cai compare`'s
    options by their Python names (`provider=`, `model=`, `votes=`, `judge_out=`, `keep_*`,
    `max_cost=`, ...; see `cai.options.CompareOptions`); the judge defaults to the first run's
    model. With `dry_run=True`, the judge's `Plan` instead.
    """
    opts = _options(CompareOptions, "compare", {"runs": runs, "judge": judge, **options})
    if not opts.judge:
        return compare_result(opts)
    job = prepare_compare(opts)
    for note in job.notes:
        log.warning("%s", note)
    if isinstance(job, Plan):
        return job
    stats = _run_sync(job, progress)
    return compare_result(opts, job.source, job.dir, stats)


async def acompare(runs: Any, *, judge: bool = False, **options: Any) -> Comparison | Plan:
    """`compare` in the caller's event loop."""
    opts = _options(CompareOptions, "compare", {"runs": runs, "judge": judge, **options})
    if not opts.judge:
        return compare_result(opts)
    job = prepare_compare(opts)
    if isinstance(job, Plan):
        return job
    stats = await execute(job)
    return compare_result(opts, job.source, job.dir, stats)
