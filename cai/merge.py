"""Combine runs of the same job (shards made on several machines) into one run directory.

Each prompt (of a label run: each pair) ends up once in the result: where runs overlap, a
usable line wins over a skipped one and a skipped one over a failure. Runs are only merged
when they are of one kind (generate or label) and were made with the same constitution and
settings (their manifests' `settings`), so records never mix silently. The inputs are only
read; the result is built in a temporary folder and renamed into place, so a killed merge
leaves nothing in the way of the next one. It can be exported, or resumed with `cai generate
--out` (`cai label --out`) like any run. The call journals of all the runs go into the
result's, so its ledger (tokens, calls, cost) covers every call the shards paid for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConfigError, RunMismatchError
from cai.ledger import tagged_journal
from cai.pipeline import count_statuses, settings_differences
from cai.rundir import (
    CALLS_FILE,
    CONSTITUTION_COPY,
    LABELS_FILE,
    RECORDS_FILE,
    Manifest,
    RunStore,
    atomic_dir,
    best_lines,
    check_out_path,
    held_for_reading,
    read_manifest,
    record_lines,
    save_constitution_copy,
    write_atomic,
    write_manifest,
)

__all__ = ["MergeResult", "merge_runs"]

# Where each kind of run keeps its lines.
_LINES_FILE = {"generate": RECORDS_FILE, "label": LABELS_FILE}


@dataclass
class MergeResult:
    """What a merge wrote: counts by status, duplicates dropped, and shards found or missing."""

    out: Path
    counts: dict[str, int]
    duplicates: int = 0
    shards: list[list[int]] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)


def _check_inputs(run_dirs: Sequence[Path], out: Path) -> list[Manifest]:
    if not run_dirs:
        raise ConfigError("give at least one run directory to merge")
    manifests = []
    for run_dir in run_dirs:
        manifest = read_manifest(run_dir)
        kind = manifest.kind if manifest is not None else "generate"
        name = _LINES_FILE.get(kind, RECORDS_FILE)
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{run_dir}: no {name} here; pass run directories made by cai generate or cai label"
            )
        if manifest is None or not manifest.settings:
            raise RunMismatchError(
                f"{run_dir}: no manifest.json with the run's settings, so it cannot "
                "be checked against the other runs"
            )
        if manifests and kind != manifests[0].kind:
            raise RunMismatchError(
                f"{run_dir} is a cai {kind} run and {run_dirs[0]} a {manifests[0].kind} run; "
                "merge runs of one kind"
            )
        differ = manifests and settings_differences(manifests[0].settings, manifest.settings)
        if differ:
            raise RunMismatchError(
                f"{run_dir} was made with other settings ({'; '.join(differ)}) than "
                f"{run_dirs[0]}; merge only runs made with the same constitution and settings"
            )
        manifests.append(manifest)
    resolved = {p.resolve() for p in run_dirs}
    if out.resolve() in resolved:
        raise ConfigError(f"--out {out} is one of the runs to merge; pass a new directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; pass a new directory")
    return manifests


def merge_runs(run_dirs: Sequence[str | Path], out: str | Path) -> MergeResult:
    """Merge `run_dirs` into the new run directory `out`; raises a `CaiError` if they differ."""
    dirs = [Path(d) for d in run_dirs]
    out = check_out_path(out, folder=True, run=True)
    manifests = _check_inputs(dirs, out)
    lines_file = _LINES_FILE.get(manifests[0].kind, RECORDS_FILE)
    stores = [RunStore(d, lines_file) for d in dirs]
    with contextlib.ExitStack() as held:
        # Not while a generate (or label) process is still writing one of them; the inputs
        # are only read, so they may be on read-only storage.
        for run_dir in {store.dir.resolve(): store.dir for store in stores}.values():
            held.enter_context(held_for_reading(run_dir, "merge"))
        lines = 0

        def numbered() -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
            nonlocal lines
            for index, store in enumerate(stores):
                for lineno, _, data in record_lines(store.records_path):
                    lines += 1
                    yield (index, lineno), data

        best = best_lines(numbered())
        keep = {position for _, position, _ in best.values()}

        def chosen() -> Iterator[bytes]:
            for index, store in enumerate(stores):
                for lineno, raw, _ in record_lines(store.records_path):
                    if (index, lineno) in keep:
                        yield raw if raw.endswith(b"\n") else raw + b"\n"

        counts = count_statuses({i: status for i, (_, _, status) in best.items()})
        shards = [m.config.get("shard") for m in manifests]
        result = MergeResult(out, counts, duplicates=lines - len(best))
        if shards and all(isinstance(s, list) and len(s) == 2 for s in shards):
            result.shards = sorted(shards)
            totals = {n for _, n in shards}
            if len(totals) == 1:
                (n,) = totals
                result.missing_shards = sorted(set(range(1, n + 1)) - {k for k, _ in shards})
        first = manifests[0]
        manifest = Manifest(
            kind=first.kind,
            constitution=first.constitution,
            prompts=first.prompts,
            config={**first.config, "shard": None},
            versions=first.versions,
            settings=first.settings,
            status="merged",
            counts=counts,
            extra={
                "merged_from": [
                    {
                        "run_dir": str(d),
                        "shard": m.config.get("shard"),
                        "status": m.status,
                        "counts": m.counts,
                    }
                    for d, m in zip(dirs, manifests, strict=True)
                ],
                "duplicates_dropped": result.duplicates,
                "missing_shards": result.missing_shards,
            },
        )

        def journals() -> Iterator[bytes]:
            # Every call each shard paid for, so the merged run's ledger counts them all.
            for store, m in zip(stores, manifests, strict=True):
                yield from tagged_journal(store.dir, m)

        with atomic_dir(out) as tmp:
            write_atomic(tmp / lines_file, chosen())
            write_atomic(tmp / CALLS_FILE, journals())
            write_manifest(tmp, manifest)
            sha = first.constitution.get("sha256") or ""
            save_constitution_copy(tmp, dirs[0] / CONSTITUTION_COPY, sha)
        return result
