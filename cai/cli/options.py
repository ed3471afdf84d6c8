"""The options several commands share, and how their values (and OS errors) become the
library's inputs and one-line messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from cai.errors import os_error_message, unwritable_run
from cai.options import (
    BatchOptions,
    CallOptions,
    CostOptions,
    EngineOptions,
    FilterOptions,
    ModelOptions,
    option_fields,
    parse_pair,
)


def _options(*decorators: Any) -> Any:
    """Several click options as one decorator, listed in the order help shows them."""

    def apply(f: Any) -> Any:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def from_fields(cls: type, *, skip: tuple[str, ...] = ()) -> Any:
    """click options from the fields of a `cai.options` dataclass (their names, defaults and
    help), in the order `--help` lists them: the one declaration the Python API reads too."""
    decorators = []
    for spec in option_fields(cls):
        if spec.name in skip:
            continue
        meta = spec.metadata
        default = None if spec.default is dataclasses.MISSING else spec.default
        names = ["--" + spec.name.replace("_", "-"), meta.get("param") or spec.name]
        if isinstance(default, bool):
            decorators.append(click.option(*names, is_flag=True, help=meta["help"]))
            continue
        kind = meta.get("type") or type(default)
        if meta.get("choices"):
            kind = click.Choice(list(meta["choices"]))
        elif kind is Path:
            kind = click.Path(path_type=Path)
        decorators.append(
            click.option(
                *names,
                type=kind,
                default=default,
                required=spec.default is dataclasses.MISSING,
                show_default=default is not None,
                metavar=meta.get("metavar"),
                help=meta["help"],
            )
        )
    return _options(*decorators)


def from_params(cls: type, params: dict[str, Any]) -> Any:
    """An instance of a `cai.options` dataclass from a command's click parameters."""
    return cls(**{f.name: params[f.metadata.get("param") or f.name] for f in option_fields(cls)})


# The options every command that calls a model shares (generate, label, compare).
_MODEL_OPTIONS = from_fields(ModelOptions)
_CALL_OPTIONS = from_fields(CallOptions)


def _call_config(params: dict[str, Any]) -> dict[str, Any]:
    """`CallConfig`'s fields from a command's options (`_CALL_OPTIONS`, --temperature and
    `_BATCH_OPTIONS`)."""
    from cai.api import call_config

    return call_config(_namespace(params))


def _namespace(params: dict[str, Any]) -> Any:
    """The options as `cai.api` reads them: by field name, shard and clamp parsed."""
    names = {**params, "engine": params.get("engine_name", params.get("engine"))}
    names["shard"] = _parse_shard(params.get("shard"))
    return SimpleNamespace(**names)


_COST_OPTIONS = from_fields(CostOptions)
_ENGINE_OPTIONS = from_fields(EngineOptions)
_BATCH_OPTIONS = from_fields(BatchOptions)
# Export's quality filters; `cai label` picks a run's pairs with the same ones.
_FILTER_OPTIONS = from_fields(FilterOptions)


def _filter_config(*keeps: Any) -> Any:
    """`FilterConfig` from the `_FILTER_OPTIONS` values, in their order."""
    from cai.filters import FilterConfig

    names = [f.name for f in option_fields(FilterOptions)]
    return FilterConfig(**FilterOptions(**dict(zip(names, keeps, strict=True))).filter_fields())


def _parse_shard(value: Any) -> tuple[int, int] | None:
    return parse_pair(value, "--shard", "/", "K/N such as 1/4", int)


def _parse_clamp(value: Any) -> tuple[float, float] | None:
    return parse_pair(value, "--clamp", ",", "LO,HI such as 0.4,0.6", float)


def _batch_backend(
    backend: Any, run_dir: Path, manifest: Any, price: Any, params: dict[str, Any]
) -> tuple[Any, Any]:
    """The run's provider and price, from a command's options (`cai.api.batch_backend`)."""
    from cai.api import batch_backend

    return batch_backend(backend, run_dir, manifest, price, _namespace(params))


def _check_prompts(source: Any) -> int | None:
    """Read every prompt once before any call, so bad input stops the run before it costs anything."""
    from cai.api import count_prompts

    return count_prompts(source)


def _redact(text: str) -> str:
    """`text` without any key or token of the environment (imported late: `--help` stays light)."""
    from cai.rundir import redact_secrets

    return redact_secrets(text)


# One wording for OS errors, shared with the API (kept under the names the commands import).
_os_error_message = os_error_message
_unwritable_run = unwritable_run
