"""The Ray engine: chains run on a pool of Ray actors; the driver keeps the run directory.

The driver (the `cai` process) owns the lock, the manifest, records.jsonl and calls.jsonl,
and runs the pipeline's own loop: it reads prompts, skips finished ones, and hands each
remaining item to `RayEngine.run`. Items go in small batches to a pool of `--workers`
actors. Each actor runs cai's own chain engine (`ChainRunner`: journal replay, retries,
rate limits, stop handling) with a provider client of its own, and its share of the
totals: `--concurrency`, `--rpm` and `--tpm` are divided among the workers.

Every reply a worker receives is sent to the driver at once, on a streaming generator (one
per actor), and the driver appends it to calls.jsonl before anything else; records come
back the same way when their chain ends. So:

- a worker that dies loses only its calls in flight: the driver sends its unfinished items
  to a new worker, with the replies already journaled, which are replayed, not bought again;
- a driver that dies loses only what was in flight; the same command resumes the run from
  records.jsonl and calls.jsonl, as for the default engine;
- with a deterministic provider and seed the records equal the default engine's: the chain
  code, seeds and principles are the same, only the process differs.

docs/distributed.md explains the choice of an actor pool over Ray Data, and how to run on
a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import stat
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cai.errors import CaiError, ConfigError
from cai.providers.base import Usage

__all__ = ["RayEngine", "split_total"]

# A worker that dies is replaced; past this many deaths in one run the run stops.
MAX_DEATHS_PER_WORKER = 3
# How long the dispatcher gathers finished slots before it sends a batch: fewer, larger
# Ray calls at a few milliseconds of delay to a chain's start.
GATHER_SECONDS = 0.005
# How long `close` waits for the calls still in flight on the workers to come back.
DRAIN_SECONDS = 60.0


def split_total(total: float | None, parts: int) -> float | None:
    """One worker's share of a cluster-wide rate (None: no limit)."""
    return None if total is None else total / parts


def _share(total: int, parts: int, index: int) -> int:
    """Worker `index`'s whole share of `total`, so the shares add up to exactly `total`."""
    return total // parts + (1 if index < total % parts else 0)


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray: pip install 'cai[ray]' (or pip install ray)"
        ) from None
    return ray


class _Outbox:
    """A worker's stand-in for the run store: each reply becomes an event for the driver."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.wake = asyncio.Event()

    def append_call(self, record_id: str, step: str, completion: dict[str, Any]) -> None:
        self.put(("call", record_id, step, completion))

    def put(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        self.wake.set()

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        self.wake.clear()
        return events


class ChainWorker:
    """One Ray actor: a `ChainRunner` over providers of its own (made with `make_provider`).

    The driver calls `feed` with batches of (item, replies already journaled for it) and
    reads `events`, a streaming generator of lists of events: ("call", id, step, completion),
    ("record", id, record), ("abandoned", id) and ("error", id, exception), each list with
    the worker's retry and journal-hit counts since the last.
    """

    def __init__(self, make_provider: Callable[..., Any], config: Any, chain: Any) -> None:
        from cai.engines.providers import split_providers
        from cai.pipeline import ChainRunner, RunStats

        self.provider, others = split_providers(make_provider(connections=config.concurrency))
        # Each provider once, the job's own first: a name may share it (policy = feedback model).
        self.providers = list({id(p): p for p in (self.provider, *others.values())}.values())
        self.outbox = _Outbox()
        self.stats = RunStats()
        self.journal: dict[tuple[str, str], dict[str, Any]] = {}
        self.stop_event = asyncio.Event()
        self.runner = ChainRunner(
            self.provider,
            config,
            self.outbox,
            self.journal,
            self.stats,
            lambda kind, data: None,
            self.stop_event,
            chain,
            others,
        )
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.finishing = False
        self.sent = {"retries": 0, "journal_hits": 0}
        self.sent_kinds: dict[str, int] = {}
        self.watcher: Any = None

    async def ready(self) -> dict[str, Any]:
        """Where this worker runs; returned once its provider is built."""
        return {"pid": os.getpid()}

    async def feed(self, batch: list[tuple[Any, dict[str, dict[str, Any]]]]) -> None:
        for item, cached in batch:
            for step, completion in cached.items():
                self.journal[(item.id, step)] = completion
            if self.stop_event.is_set():
                self.outbox.put(("abandoned", item.id))
                continue
            self.tasks[item.id] = asyncio.ensure_future(self._one(item))

    async def _one(self, item: Any) -> None:
        try:
            record = await self.runner.run(item)
        except asyncio.CancelledError:  # stopping, and this chain waited with no call in flight
            self.outbox.put(("abandoned", item.id))
            raise
        except Exception as e:  # e.g. a refused key: the driver ends the run with it
            self.outbox.put(("error", item.id, e))
        else:
            self.outbox.put(
                ("abandoned", item.id) if record is None else ("record", item.id, record)
            )
        finally:
            self.tasks.pop(item.id, None)
            self.outbox.wake.set()

    async def stop(self) -> None:
        """No new call starts; chains waiting with none in flight are abandoned."""
        self.stop_event.set()
        if self.watcher is None:
            self.watcher = self.runner.watch(list(self.tasks.values()))

    async def finish(self) -> None:
        """No more items come: `events` ends once the chains it runs have ended."""
        self.finishing = True
        self.outbox.wake.set()

    def _counts(self) -> dict[str, Any]:
        stats = self.stats
        delta = {
            "retries": stats.retries - self.sent["retries"],
            "journal_hits": stats.journal_hits - self.sent["journal_hits"],
            "retries_by_kind": {
                kind: n - self.sent_kinds.get(kind, 0)
                for kind, n in stats.retries_by_kind.items()
                if n != self.sent_kinds.get(kind, 0)
            },
            "throttled_seconds": stats.throttled_seconds,
        }
        self.sent = {"retries": stats.retries, "journal_hits": stats.journal_hits}
        self.sent_kinds = dict(stats.retries_by_kind)
        return delta

    async def events(self) -> Any:
        while True:
            await self.outbox.wake.wait()
            events = self.outbox.take()
            if events:
                yield events, self._counts()
            elif self.finishing and not self.tasks:
                return

    async def close(self) -> None:
        for provider in self.providers:
            with contextlib.suppress(Exception):
                await provider.aclose()
            with contextlib.suppress(Exception):
                provider.close()


@dataclass
class _Slot:
    """One place in the pool: its actor, its share of the totals, the items it holds."""

    index: int
    config: Any
    actor: Any = None
    assigned: dict[str, Any] = field(default_factory=dict)
    consumer: Any = None
    throttled: float = 0.0

    @property
    def free(self) -> int:
        return self.config.concurrency - len(self.assigned)


class RayEngine:
    """Runs chains on `workers` Ray actors; see the module docstring.

    Without `address` it joins the cluster in `RAY_ADDRESS` (as under `ray job submit`), else
    starts a local Ray instance for the job and stops it at the end. `make_provider(
    connections=N)` builds each worker's provider, or its providers by name (a label job's
    feedback and policy models: `cai.engines.make_providers`); `actor_options` go to every
    actor (e.g. `{"num_gpus": 1}`), `init_options` to `ray.init`.
    """

    name = "ray"

    def __init__(
        self,
        make_provider: Callable[..., Any],
        *,
        workers: int = 2,
        address: str | None = None,
        actor_options: dict[str, Any] | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        self.make_provider = make_provider
        self.workers = workers
        self.address = address
        self.actor_options = {"num_cpus": 1, **(actor_options or {})}
        self.init_options = init_options or {}
        self.startup_seconds: float | None = None
        self.deaths = 0
        self.worker_pids: list[int] = []

    @property
    def info(self) -> dict[str, Any]:
        return {"engine": "ray", "workers": self.workers, "ray_address": self.address}

    # -- the driver's side of the runner ---------------------------------------------------

    async def start(
        self,
        provider: Any,
        config: Any,
        store: Any,
        journal: dict[tuple[str, str], dict[str, Any]],
        stats: Any,
        on_event: Callable[[str, Any], None],
        stop: asyncio.Event,
        chain: Any,
    ) -> RayEngine:
        if self.workers > config.concurrency:
            raise ConfigError(
                f"--workers {self.workers} is more than --concurrency {config.concurrency}; "
                "each worker needs at least one call in flight: raise --concurrency"
            )
        ray = self.ray = _require_ray()
        self.store, self.stats, self.on_event, self.stop, self.chain = (
            store,
            stats,
            on_event,
            stop,
            chain,
        )
        # Replies already paid for, by item: sent with the item to whichever worker runs it.
        self.cached: dict[str, dict[str, dict[str, Any]]] = {}
        for (record_id, step), completion in journal.items():
            self.cached.setdefault(record_id, {})[step] = completion
        self.futures: dict[str, asyncio.Future[Any]] = {}
        self.pending: deque[Any] = deque()
        self.wake = asyncio.Event()
        self.closing = False
        self.failure: BaseException | None = None
        began = time.monotonic()
        self.owns_ray = not ray.is_initialized()
        self.ray_note: Path | None = None
        if self.owns_ray:
            ended = end_orphaned_ray()
            if ended:
                on_event(
                    "notice",
                    f"ended {len(ended)} processes of a local Ray instance left by a killed cai",
                )
            options = {"include_dashboard": False, "configure_logging": False}
            _, self.ray_note = mark_ray_instance()
            try:
                ray.init(address=self.address, **{**options, **self.init_options})
            finally:
                # Only the processes started by `init` carry it (and what they start).
                os.environ.pop(OWNER_VARIABLE, None)
        self.actor_class = ray.remote(ChainWorker)
        self.slots = [
            _Slot(
                i,
                replace(
                    config,
                    concurrency=_share(config.concurrency, self.workers, i),
                    rpm=split_total(config.rpm, self.workers),
                    tpm=split_total(config.tpm, self.workers),
                ),
            )
            for i in range(self.workers)
        ]
        try:
            for slot in self.slots:
                self._spawn(slot)
            ready = await asyncio.gather(*(slot.actor.ready.remote() for slot in self.slots))
        except ray.exceptions.RayError as e:
            await self._shutdown()
            raise ConfigError(f"the Ray workers could not start: {_cause(e)}") from None
        self.worker_pids = [r["pid"] for r in ready]
        self.startup_seconds = round(time.monotonic() - began, 3)
        where = self.address or os.environ.get("RAY_ADDRESS") or "a local Ray instance"
        on_event(
            "notice", f"{self.workers} Ray workers ready in {self.startup_seconds:.1f}s on {where}"
        )
        for slot in self.slots:
            slot.consumer = asyncio.ensure_future(self._consume(slot))
        self.dispatcher = asyncio.ensure_future(self._dispatch())
        self.stopper = asyncio.ensure_future(self._on_stop())
        return self

    def _spawn(self, slot: _Slot) -> None:
        slot.actor = self.actor_class.options(max_restarts=0, **self.actor_options).remote(
            self.make_provider, slot.config, self.chain
        )

    async def run(self, item: Any) -> Any:
        """The item's record, from whichever worker ran its chain; None if the run stopped."""
        if self.failure is not None:
            raise self.failure
        if self.stop.is_set():
            return None
        future = asyncio.get_running_loop().create_future()
        self.futures[item.id] = future
        self.pending.append(item)
        self.wake.set()
        return await future

    def watch(self, tasks: list[asyncio.Task[Any]]) -> asyncio.Future[None]:
        # Tasks wait on workers, which abandon their own waits at a stop: cancel none here.
        return asyncio.ensure_future(asyncio.sleep(0))

    async def _on_stop(self) -> None:
        await self.stop.wait()
        for slot in self.slots:
            slot.actor.stop.remote()
        while self.pending:
            self._resolve(self.pending.popleft().id, None)

    async def _dispatch(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(GATHER_SECONDS)
            self.wake.clear()
            while self.pending and not self.stop.is_set():
                slot = max(self.slots, key=lambda s: s.free)
                if slot.free <= 0 or slot.actor is None:
                    break
                batch = []
                share = math.ceil(len(self.pending) / len(self.slots))
                while self.pending and len(batch) < min(slot.free, share):
                    item = self.pending.popleft()
                    slot.assigned[item.id] = item
                    batch.append((item, self.cached.get(item.id, {})))
                slot.actor.feed.remote(batch)

    async def _consume(self, slot: _Slot) -> None:
        """Journal each reply of `slot`'s worker as it arrives; on its death, redo its items."""
        store, stats = self.store, self.stats
        try:
            async for ref in slot.actor.events.remote():
                events, counts = await ref
                for event in events:
                    kind, record_id = event[0], event[1]
                    if kind == "call":
                        _, _, step, completion = event
                        # On disk before anything else: this reply has been paid for.
                        store.append_call(record_id, step, completion)
                        self.cached.setdefault(record_id, {})[step] = completion
                        stats.calls += 1
                        stats.usage.add(Usage.from_dict(completion.get("usage") or {}))
                        continue
                    slot.assigned.pop(record_id, None)
                    if kind == "record":
                        self._resolve(record_id, event[2])
                    elif kind == "abandoned":
                        self._resolve(record_id, None)
                    else:
                        self._resolve(record_id, error=event[2])
                self._count(slot, counts)
                if slot.free > 0 and self.pending:
                    self.wake.set()
        except self.ray.exceptions.RayError as e:
            await self._lost(slot, e)
        except Exception as e:  # not the worker's death: a bug, which no retry will mend
            self.failure = e
            for record_id in list(self.futures):
                self._resolve(record_id, error=e)

    def _count(self, slot: _Slot, counts: dict[str, Any]) -> None:
        stats = self.stats
        stats.retries += counts["retries"]
        stats.journal_hits += counts["journal_hits"]
        for kind, n in counts["retries_by_kind"].items():
            stats.retries_by_kind[kind] = stats.retries_by_kind.get(kind, 0) + n
        slot.throttled = counts["throttled_seconds"]
        stats.throttled_seconds = round(sum(s.throttled for s in self.slots), 3)

    async def _lost(self, slot: _Slot, error: BaseException) -> None:
        """A worker died: its unfinished items go back to the queue, to a new worker."""
        redo = list(slot.assigned.values())
        slot.assigned.clear()
        slot.actor = None
        if self.closing:
            for item in redo:
                self._resolve(item.id, None)
            return
        self.deaths += 1
        if self.deaths > MAX_DEATHS_PER_WORKER * self.workers:
            self.failure = CaiError(
                f"Ray workers died {self.deaths} times; the last: {_cause(error)}. "
                "Replies received are journaled: fix the cause and run the same command again"
            )
            for record_id in list(self.futures):
                self._resolve(record_id, error=self.failure)
            return
        self.on_event(
            "notice",
            f"a Ray worker died ({_cause(error)}); its {len(redo)} unfinished prompts "
            "go to a new worker, with the replies already journaled",
        )
        self.pending.extendleft(reversed(redo))
        self._spawn(slot)
        if self.stop.is_set():
            slot.actor.stop.remote()
        slot.consumer = asyncio.ensure_future(self._consume(slot))
        self.wake.set()

    def _resolve(self, record_id: str, record: Any = None, error: BaseException | None = None):
        self.cached.pop(record_id, None)
        future = self.futures.pop(record_id, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(record)

    async def close(self) -> None:
        """Let the workers finish their calls in flight, journal them, then end the workers."""
        self.closing = True
        for task in (self.dispatcher, self.stopper):
            task.cancel()
        live = [slot for slot in self.slots if slot.actor is not None]
        for slot in live:
            # After an error the driver's tasks are gone: stop the workers' chains too.
            if self.futures or slot.assigned:
                slot.actor.stop.remote()
            slot.actor.finish.remote()
        consumers = [slot.consumer for slot in self.slots if slot.consumer is not None]
        _, late = await asyncio.wait(consumers, timeout=DRAIN_SECONDS) if consumers else ((), ())
        for task in late:
            task.cancel()
        for slot in live:
            if slot.actor is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(slot.actor.close.remote(), 10)
        for record_id in list(self.futures):
            self._resolve(record_id, None)
        await self._shutdown()

    async def _shutdown(self) -> None:
        for slot in self.slots:
            if slot.actor is not None:
                with contextlib.suppress(Exception):
                    self.ray.kill(slot.actor)
                slot.actor = None
        if self.owns_ray:
            self.ray.shutdown()
            if self.ray_note is not None:
                with contextlib.suppress(OSError):
                    self.ray_note.unlink()


# -- local Ray instances cai started ---------------------------------------------------------
#
# `ray.init()` without an address starts a Ray instance (GCS, raylet, agents, workers) that
# `ray.shutdown()` ends. A driver killed by SIGKILL never gets there, and some of those
# processes outlive it (the dashboard and runtime-env agents). Their titles name no session,
# but they inherit the environment: a driver about to start an instance puts a marker of its
# own in it (`OWNER_VARIABLE`), notes the marker in a file of its own, and drops the note
# once it has shut the instance down. Each start ends the processes carrying the marker of a
# note whose driver is gone.

OWNER_VARIABLE = "CAI_RAY_OWNER"


def ray_notes_dir() -> Path | None:
    """The folder of notes, one per driver, this user's own (`CAI_RAY_NOTES` moves it)."""
    path = Path(os.environ.get("CAI_RAY_NOTES") or Path(tempfile.gettempdir()) / "cai-ray")
    path = path / str(os.getuid())
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return None  # a link, or someone else's folder: its notes are not to be trusted
    return path


def _started(pid: int) -> str | None:
    """When process `pid` started (Linux /proc), to tell it from a later one of that number."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def marked_processes(marker: str) -> list[int]:
    """This user's processes whose environment holds `OWNER_VARIABLE=marker`."""
    needle = f"{OWNER_VARIABLE}={marker}\0".encode()
    found = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):  # another user's, or gone meanwhile
                if needle in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
    return found


def mark_ray_instance() -> tuple[str, Path | None]:
    """Before starting a Ray instance: put this driver's marker in the environment its
    processes inherit, and note it; (the marker, the note's path)."""
    started = _started(os.getpid())
    marker = f"{os.getpid()}-{started}"
    os.environ[OWNER_VARIABLE] = marker
    folder = ray_notes_dir()
    if folder is None:
        return marker, None
    note = folder / f"{os.getpid()}.json"
    data = {"driver": os.getpid(), "started": started, "marker": marker}
    try:
        note.write_text(json.dumps(data))
    except OSError:
        return marker, None
    return marker, note


def end_orphaned_ray() -> list[int]:
    """End the processes of each noted Ray instance whose driver is gone (killed before its
    `ray.shutdown()`), and drop those notes; the process ids signalled."""
    folder = ray_notes_dir()
    if folder is None:
        return []
    ended = []
    for note in folder.glob("*.json"):
        try:
            data = json.loads(note.read_text())
            driver, marker = int(data["driver"]), str(data["marker"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        started = _started(driver)
        if started is not None and started == data.get("started"):
            continue  # its driver runs: the instance is in use
        for pid in marked_processes(marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                ended.append(pid)
        with contextlib.suppress(OSError):
            note.unlink()
    return ended


def _cause(error: BaseException) -> str:
    """The first line of a Ray error, which is long and multi-line."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
