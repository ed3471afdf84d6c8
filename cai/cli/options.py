"""The options several commands share, and how their values (and OS errors) become the
library's inputs and one-line messages."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import click

from cai.errors import CaiError, ConfigError


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


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes K/N such as 1/4, not '{value}'") from None
    return k, n


def _parse_clamp(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        low, high = (float(x) for x in value.split(","))
    except ValueError:
        raise ConfigError(f"--clamp takes LO,HI such as 0.4,0.6, not '{value}'") from None
    return low, high


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


def _check_prompts(source: Any) -> int | None:
    """Read every prompt once before any call, so bad input stops the run before it costs anything."""
    if source.spec.startswith("hf:"):
        return None
    return sum(1 for _ in source)


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
