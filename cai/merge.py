"""Combine runs of the same job (shards made on several machines) into one run directory.

Each prompt ends up once in the result: where runs overlap, a usable record wins over a
skipped one and a skipped one over a failure. Runs are only merged when they were made with
the same constitution and settings (their manifests' `settings`), so records never mix
silently. The inputs are only read; the result is written atomically and can be exported,
or resumed with `cai generate --out` like any run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai import __version__
from cai.errors import ConfigError, RunMismatchError
from cai.pipeline import count_statuses, settings_differences
from cai.records import RECORDS_FILE, RunStore, best_lines, record_lines, write_lines_atomic

__all__ = ["MergeResult", "merge_runs"]


@dataclass
class MergeResult:
    """What a merge wrote: counts by status, duplicates dropped, and shards found or missing."""

    out: Path
    counts: dict[str, int]
    duplicates: int = 0
    shards: list[list[int]] = field(default_factory=list)
    missing_shards: list[int] = field(default_factory=list)


def _check_inputs(run_dirs: Sequence[Path], out: Path) -> list[dict[str, Any]]:
    if not run_dirs:
        raise ConfigError("give at least one run directory to merge")
    manifests = []
    for run_dir in run_dirs:
        if not (run_dir / RECORDS_FILE).is_file():
            raise ConfigError(
                f"{run_dir}: no {RECORDS_FILE} here; pass run directories made by cai generate"
            )
        manifest = RunStore(run_dir).read_manifest()
        if manifest is None or not isinstance(manifest.get("settings"), dict):
            raise RunMismatchError(
                f"{run_dir}: no readable manifest.json with the run's settings, so it cannot "
                "be checked against the other runs"
            )
        differ = manifests and settings_differences(manifests[0]["settings"], manifest["settings"])
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
    out = Path(out)
    manifests = _check_inputs(dirs, out)
    stores = [RunStore(d) for d in dirs]
    result_store = RunStore(out)
    locked: list[RunStore] = []
    try:
        # Not while a generate process is still writing one of them.
        unique = {store.dir.resolve(): store for store in [*stores, result_store]}
        for store in unique.values():
            store.lock()
            locked.append(store)
        lines = 0

        def numbered() -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
            nonlocal lines
            for index, run_dir in enumerate(dirs):
                for lineno, _, data in record_lines(run_dir / RECORDS_FILE):
                    lines += 1
                    yield (index, lineno), data

        best = best_lines(numbered())
        keep = {position for _, position, _ in best.values()}

        def chosen() -> Iterator[bytes]:
            for index, run_dir in enumerate(dirs):
                for lineno, raw, _ in record_lines(run_dir / RECORDS_FILE):
                    if (index, lineno) in keep:
                        yield raw if raw.endswith(b"\n") else raw + b"\n"

        write_lines_atomic(result_store.records_path, chosen())
        counts = count_statuses({i: status for i, (_, _, status) in best.items()})
        shards = [m.get("config", {}).get("shard") for m in manifests]
        result = MergeResult(out, counts, duplicates=lines - len(best))
        if shards and all(isinstance(s, list) and len(s) == 2 for s in shards):
            result.shards = sorted(shards)
            totals = {n for _, n in shards}
            if len(totals) == 1:
                (n,) = totals
                result.missing_shards = sorted(set(range(1, n + 1)) - {k for k, _ in shards})
        first = manifests[0]
        result_store.write_manifest(
            {
                "cai_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "constitution": first.get("constitution"),
                "prompts": first.get("prompts"),
                "config": {**first.get("config", {}), "shard": None},
                "versions": first.get("versions"),
                "settings": first["settings"],
                "status": "merged",
                "merged_from": [
                    {
                        "run_dir": str(d),
                        "shard": m.get("config", {}).get("shard"),
                        "status": m.get("status"),
                        "counts": m.get("counts"),
                    }
                    for d, m in zip(dirs, manifests, strict=True)
                ],
                "counts": counts,
                "duplicates_dropped": result.duplicates,
                "missing_shards": result.missing_shards,
            }
        )
        return result
    finally:
        for store in locked:
            store.unlock()
