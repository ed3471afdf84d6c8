"""The providers a job's chain calls, made in whichever process runs the chain.

A chain calls its job's provider, and may name others in its calls (`via="policy"`: a label
job's policy model). An engine cannot send provider objects (their HTTP clients) to its
workers; it sends a picklable `make_provider(connections=N)` instead, which returns one
provider, or `make_providers`'s dict of them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["MAIN", "make_providers", "split_providers"]

# The name of the job's own provider in `make_providers`'s dict.
MAIN = "main"


def make_providers(
    main: Callable[..., Any],
    others: dict[str, Callable[..., Any] | None] | None = None,
    *,
    connections: int,
) -> dict[str, Any]:
    """The providers a job needs, each with `connections`: `main`, and each of `others` by name
    (None: the main provider serves that name too). As `partial(make_providers, main, others)`
    it is an engine's `make_provider`; the names are those the job's calls give as `via=`."""
    providers = {MAIN: main(connections=connections)}
    for name, make in (others or {}).items():
        providers[name] = providers[MAIN] if make is None else make(connections=connections)
    return providers


def split_providers(made: Any) -> tuple[Any, dict[str, Any]]:
    """(the job's provider, the others by name) from what a `make_provider` returned: one
    provider, or `make_providers`'s dict."""
    if not isinstance(made, dict):
        return made, {}
    others = dict(made)
    return others.pop(MAIN), others
