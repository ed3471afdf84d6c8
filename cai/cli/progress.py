"""Running a job under progress bars, Ctrl-C and its exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

EXIT_PARTIAL = 3


EXIT_INTERRUPTED = 130
# The run stopped at --max-cost: what was left could not cover the next call's worst case.
EXIT_BUDGET = 4


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
    `cai.api.execute` runs it and closes `backend` and `others` (e.g. a label job's policy
    model) when it ends; a failed write into the run directory becomes an error that says to
    pass another --out.
    """
    import asyncio
    from functools import partial

    from tqdm import tqdm

    from cai.api import Prepared, Progress, execute

    job = Prepared(desc, store.dir, start, backend, store, stats, None, others)
    waves = _WaveBars()
    progress = Progress(
        stats,
        unit=unit,
        desc=desc,
        bar_class=partial(tqdm, dynamic_ncols=True),
        announce=lambda run_dir: click.echo(f"Run directory: {run_dir}", err=True),
        batches=waves.update,
    )

    async def run() -> Any:
        stop = asyncio.Event()
        _stop_on_signals(stop, store, progress, backend.batched)
        return await execute(job, on_event=progress.on_event, stop=stop)

    try:
        return asyncio.run(run())
    finally:
        waves.close()
        progress.close()


def _stop_on_signals(stop: Any, store: Any, progress: Any, batching: bool) -> None:
    """Ctrl-C (and SIGTERM: a batch scheduler's polite stop) sets `stop`; a second quits."""
    import asyncio
    import signal

    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            _quit_now(store)
        stop.set()
        progress.write(
            "Stopping: batches keep running on the provider; this run stops waiting for them."
            if batching
            else "Stopping: finishing calls in flight, starting no new ones. "
            "Press Ctrl-C again to quit now."
        )

    with contextlib.suppress(NotImplementedError, RuntimeError):
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, on_signal)


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


def _exit_unfinished(stats: Any) -> None:
    """Exit 4 when the run stopped at --max-cost, 130 when it was interrupted, 3 when items of
    the run failed; else return."""
    if getattr(stats, "over_budget", False):
        click.echo(stats.budget.describe(), err=True)
        sys.exit(EXIT_BUDGET)
    if stats.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if stats.failed_in_run:
        sys.exit(EXIT_PARTIAL)


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
