"""`cai batch status|cancel`: the provider batches of a --batch run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cai.cli._output import plural
from cai.errors import ConfigError


@click.group()
def batch() -> None:
    """Look at and cancel the provider batches of a `cai generate --batch` or `cai label --batch`
    run."""


_TIMEOUT = click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds before a call to the provider times out (each is tried up to 3 times).",
)


def _batch_rows(run_dir: Path, base_url: str | None, cancel: bool, timeout: float) -> Any:
    import asyncio

    from cai.batch import batch_states, cancel_batches, run_batch_api

    provider, api = run_batch_api(run_dir, base_url, timeout=timeout, max_retries=2)

    async def go() -> Any:
        try:
            return await (cancel_batches if cancel else batch_states)(api, run_dir)
        finally:
            await provider.aclose()

    return asyncio.run(go())


@batch.command("status")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base-url", default=None, help="API base URL (default: the run's).")
@_TIMEOUT
def batch_status(run_dir: Path, base_url: str | None, timeout: float) -> None:
    """List the run's batches by wave, as the progress of a --batch run shows them (the
    provider's state, requests done out of all, time since sent), then each batch: id,
    provider status, request counts, age, results taken in."""
    from cai.batch import describe_batches

    rows = _batch_rows(run_dir, base_url, cancel=False, timeout=timeout)
    click.echo("\n".join([*_wave_lines(rows), describe_batches(rows)]))


def _wave_lines(rows: list[tuple[dict[str, Any], Any]], now: float | None = None) -> list[str]:
    """One line a wave, in the words of the live progress (`wave_line`)."""
    import time

    from cai.batch import BatchState
    from cai.cli._output import BatchView, wave_line
    from cai.cli.progress import batch_view

    now = time.time() if now is None else now
    waves: dict[Any, list[tuple[dict[str, Any], Any]]] = {}
    for entry, state in rows:
        waves.setdefault(entry.get("wave", "?"), []).append((entry, state))
    lines = []
    for wave, members in waves.items():
        views = [
            batch_view(state)
            if isinstance(state, BatchState)
            else BatchView("unknown", False, 0, int(entry.get("requests") or 0))
            for entry, state in members
        ]
        sent = [
            float(e["created"]) for e, _ in members if isinstance(e.get("created"), int | float)
        ]
        lines.append(wave_line(wave, views, now - min(sent) if sent else None))
    return lines


@batch.command("cancel")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base-url", default=None, help="API base URL (default: the run's).")
@_TIMEOUT
def batch_cancel(run_dir: Path, base_url: str | None, timeout: float) -> None:
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
    rows = _batch_rows(run_dir, base_url, cancel=True, timeout=timeout)
    for batch_id, state in rows:
        if isinstance(state, BatchState):
            click.echo(f"{batch_id}  {state.status}")
        else:
            click.echo(f"{batch_id}  not canceled: {state}", err=True)
    click.echo(
        f"{plural(len(rows), 'batch')} asked to cancel. Resume with the same cai "
        f"{manifest.kind if manifest is not None else 'generate'} command "
        f"and --out {run_dir}.",
        err=True,
    )
