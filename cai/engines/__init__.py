"""Engines run a job's chains somewhere other than the calling process.

The default engine is `cai.pipeline.ChainRunner`, in the process that owns the run directory.
An engine has the same shape, so `run_generation(..., engine=...)` (and any loop built on
`ChainRunner`) can use it unchanged:

- `info`: what the manifest's `config` records about it (`{"engine": "ray", ...}`);
- `await engine.start(provider, config, store, journal, stats, on_event, stop, chain)`:
  returns a runner with `await run(item) -> Record | None`, `watch(tasks)` and
  `await close()`. `chain(item, call, provider)` runs one item's chain; every reply the
  engine receives goes to `store.append_call` before anything else. A chain that calls
  other providers (a label job's policy model) names them, `call(..., via="policy")`, and
  the engine's `make_provider` makes them too (`make_providers`).

`make_engine` builds one by name for the CLI; the Ray engine needs `pip install 'cai[ray]'`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cai.engines.providers import make_providers
from cai.errors import ConfigError

__all__ = ["ENGINES", "make_engine", "make_providers"]

ENGINES = ("default", "ray")


def make_engine(
    name: str,
    make_provider: Callable[..., Any],
    *,
    workers: int | None = None,
    address: str | None = None,
) -> Any:
    """The engine called `name`; None for the default (chains in this process).

    `make_provider(connections=N)` builds the providers of each worker, with N connections:
    one provider, or several by name (`make_providers`).
    """
    if name == "default":
        if workers is not None or address is not None:
            raise ConfigError("--workers and --ray-address go with --engine ray")
        return None
    if name != "ray":
        raise ConfigError(f"unknown engine '{name}'; choose one of: {', '.join(ENGINES)}")
    from cai.engines.ray import RayEngine

    return RayEngine(make_provider, workers=workers or 2, address=address)
