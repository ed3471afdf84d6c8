"""The options several commands share, and how their values (and OS errors) become the
library's inputs and one-line messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from cai.errors import os_error_message
from cai.options import FilterOptions, option_fields


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


def from_params(cls: type, params: dict[str, Any], *, skip: tuple[str, ...] = ()) -> Any:
    """An instance of a `cai.options` dataclass from a command's click parameters (those of
    `from_fields(cls, skip=skip)`)."""
    return cls(
        **{
            f.name: params[f.metadata.get("param") or f.name]
            for f in option_fields(cls)
            if f.name not in skip
        }
    )


# Export's quality filters; `cai label` picks a run's pairs with the same ones.
_FILTER_OPTIONS = from_fields(FilterOptions)


def _filter_config(*keeps: Any) -> Any:
    """`FilterConfig` from the `_FILTER_OPTIONS` values, in their order."""
    names = [f.name for f in option_fields(FilterOptions)]
    return FilterOptions(**dict(zip(names, keeps, strict=True))).filter_config()


def _redact(text: str) -> str:
    """`text` without any key or token of the environment (imported late: `--help` stays light)."""
    from cai.rundir import redact_secrets

    return redact_secrets(text)


# One wording for OS errors, shared with the API (kept under the name the commands import).
_os_error_message = os_error_message
