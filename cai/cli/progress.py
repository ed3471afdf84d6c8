"""Running a job under progress bars, Ctrl-C and its exit codes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from cai.cli._output import BatchView, duration, plural, states_text, wave_line

EXIT_PARTIAL = 3


EXIT_INTERRUPTED = 130
# The run stopped at --max-cost: what was left could not cover the next call's worst case.
EXIT_BUDGET = 4


def _run_with_progress(job: Any, *, unit: str, desc: str) -> Any:
    """Run a prepared job under a progress bar; the first Ctrl-C stops taking prompts, the
    second quits.

    `job.start(on_event=..., stop=...)` is the job's coroutine (`run_generation`,
    `run_labels`); `cai.api.execute` runs it and closes `job.backend` and `job.others` (e.g. a
    label job's policy model) when it ends; a failed write into the run directory becomes an
    error that says to pass another --out.
    """
    import asyncio
    from functools import partial

    from tqdm import tqdm

    from cai.api import Progress, execute

    # A log file, CI or nohup gets plain lines, not redraws.
    plain = not sys.stderr.isatty()
    bar_class = PlainBar if plain else partial(tqdm, dynamic_ncols=True)
    waves = _WaveBars(plain)
    progress = Progress(
        job.stats,
        unit=unit,
        desc=desc,
        bar_class=bar_class,
        announce=lambda run_dir: click.echo(f"Run directory: {run_dir}", err=True),
        batches=waves.update,
    )
    waves.progress = progress

    async def run() -> Any:
        stop = asyncio.Event()
        _stop_on_signals(
            stop, job.store, progress, job.backend.batched, has_fresh=desc == "generate"
        )
        return await execute(job, on_event=progress.on_event, stop=stop)

    try:
        return asyncio.run(run())
    finally:
        waves.close()
        progress.close()


def _run_job(job: Any, *, unit: str = "prompt", desc: str = "generate") -> Any:
    """A prepared job (`cai.api.prepare_*`): its notes on stderr; a `Plan` (--dry-run) printed
    and None back; else the job run under progress (`_run_with_progress`) and its stats back."""
    from cai.api import Plan

    for note in job.notes:
        click.echo(note, err=True)
    if isinstance(job, Plan):
        click.echo(job.text)
        return None
    return _run_with_progress(job, unit=unit, desc=desc)


def _stop_on_signals(
    stop: Any, store: Any, progress: Any, batching: bool, *, has_fresh: bool = False
) -> None:
    """Ctrl-C (and SIGTERM: a batch scheduler's polite stop) sets `stop`; a second quits."""
    import asyncio
    import signal

    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses > 1:
            _quit_now(store, has_fresh)
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
    """--batch: each wave's batches in the provider's words (validating, in progress,
    finalizing, ended), its requests done out of all, and its time so far, refreshed at each
    poll: a bar per wave on a terminal, else part of the plain progress line (`bar`)."""

    def __init__(self, plain: bool = False) -> None:
        self.plain = plain
        self.progress: Any = None  # the run's `Progress`: in plain mode, its bar prints the waves
        self.bars: dict[int, Any] = {}
        self.states: dict[int, dict[str, Any]] = {}
        self.since: dict[int, float] = {}

    def update(self, kind: str, data: Any) -> None:
        pairs = [(data[0], s) for s in data[1]] if kind == "wave" else data
        if kind == "ended":
            pairs = [data]
        for wave, state in pairs:
            self.states.setdefault(wave, {})[state.id] = state
            self.since.setdefault(wave, clock())
        for wave in {w for w, _ in pairs}:
            self._show(wave)
        bar = getattr(self.progress, "bar", None)
        if self.plain and isinstance(bar, PlainBar):
            for wave in [w for w in sorted(self.states) if self._ended(w)]:
                bar.wave_ended(self.line(wave))
                del self.states[wave]
            bar.set_waves([self.line(w) for w in sorted(self.states)])

    def line(self, wave: int) -> str:
        return wave_line(wave, map(batch_view, self.states[wave].values()), self.elapsed(wave))

    def elapsed(self, wave: int) -> float:
        return clock() - self.since[wave]

    def _ended(self, wave: int) -> bool:
        return all(s.ended for s in self.states[wave].values())

    def _show(self, wave: int) -> None:
        if self.plain:
            return
        from tqdm import tqdm

        views = [batch_view(s) for s in self.states[wave].values()]
        total = sum(v.total for v in views)
        if wave not in self.bars:
            self.bars[wave] = tqdm(
                total=total, unit="request", desc=f"wave {wave}", file=sys.stderr, leave=False
            )
        bar = self.bars[wave]
        bar.total, bar.n = total, sum(v.done for v in views)
        # The states and the time: the bar itself shows the requests done out of all.
        bar.set_postfix_str(f"{states_text(views)}; {duration(self.elapsed(wave))}", refresh=False)
        bar.refresh()
        if self._ended(wave):
            bar.close()
            del self.bars[wave], self.states[wave]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def batch_view(state: Any) -> BatchView:
    """A provider's `BatchState` as a wave line reads it."""
    total = state.counts.get("total") or sum(state.counts.values())
    return BatchView(state.status, state.ended, state.done, total)


# The plain progress line's clock and interval: a test sets `clock` to drive it.
clock = time.monotonic
PLAIN_INTERVAL = 30.0


class PlainBar:
    """Progress for a stderr that is not a terminal (a log file, CI, nohup): one plain line at
    most every `PLAIN_INTERVAL` seconds by `clock`, and one at the end; never a carriage
    return or an escape code. It takes the calls of the `tqdm` bar it stands in for."""

    mininterval = 1.0  # how often `Progress` hands over its counts; `PLAIN_INTERVAL`: printing

    def __init__(self, *, total: int | None, unit: str, desc: str, **_: Any) -> None:
        self.total, self.unit, self.desc, self.n = total, unit, desc, 0
        self.counts: dict[str, Any] = {}
        self.waves: list[str] = []
        self.ended: list[str] = []  # waves that ended since the last line: said once
        self.started = self.shown_at = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        self._tick()

    def set_postfix(self, refresh: bool = True, **counts: Any) -> None:
        self.counts = counts
        self._tick()

    def set_waves(self, lines: list[str]) -> None:
        self.waves = lines
        self._tick()

    def wave_ended(self, line: str) -> None:
        self.ended.append(line)

    def write(self, text: str, file: Any = None) -> None:
        _print_plain(text)

    def close(self) -> None:
        self._print()

    def line(self) -> str:
        done = (
            plural(self.n, self.unit)
            if self.total is None
            else f"{self.n}/{plural(self.total, self.unit)}"
        )
        parts = [f"{self.desc}: {done}", *(f"{k}={v}" for k, v in self.counts.items())]
        parts.append(f"{duration(clock() - self.started)} elapsed")
        return "; ".join([", ".join(parts), *self.ended, *self.waves])

    def _tick(self) -> None:
        if clock() - self.shown_at >= PLAIN_INTERVAL:
            self._print()

    def _print(self) -> None:
        self.shown_at = clock()
        _print_plain(self.line())
        self.ended.clear()


def _print_plain(text: str) -> None:
    # One whole line, whatever a reply or a path held: no \r redraw, no escape code.
    clean = "".join(c if c.isprintable() else " " for c in text)
    sys.stderr.write(clean + "\n")
    sys.stderr.flush()


def _quit_now(store: Any, has_fresh: bool) -> None:
    """The second Ctrl-C: exit at once. Every line is written whole by the event loop, which
    runs this between writes, so the files need no cleanup; the manifest says so."""
    with contextlib.suppress(Exception):
        manifest = store.read_manifest()
        if manifest is not None:
            manifest.status = "interrupted"
            store.write_manifest(manifest)
    sys.stderr.write(
        f"\nQuit. To resume, run the same command with --out {store.dir}"
        + (" (and without --fresh).\n" if has_fresh else ".\n")
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
        f"Batches: {b.batches} created in {plural(b.waves, 'wave')} "
        f"({plural(b.requests, 'request')}), "
        f"{b.reattached} re-attached; results: {b.succeeded} succeeded, {b.errored} errored, "
        f"{b.expired} expired, {b.canceled} canceled. Priced at the batch rate (half).",
    ]
    running = backend.open_batches
    if running:
        args = [a for a in sys.argv[1:] if a != "--fresh"]
        if add_out:
            args += ["--out", str(run_dir)]
        lines.append(
            f"{plural(len(running), 'batch')} still open on {backend.name} (cai batch status {run_dir}). "
            f"To re-attach: cai {shlex.join(args)}"
        )
    click.echo("\n".join(lines), err=True)
