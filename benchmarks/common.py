"""What every benchmark shares: where results go, the machine they were measured on."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "ROOT", "best", "machine", "peak_rss_mib", "save"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size so far; ru_maxrss is KiB on Linux."""
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def best(samples: list[float]) -> float:
    """The least disturbed of repeated timings: other processes only ever add time."""
    return min(samples)


def save(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json with the time and machine of the measurement."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
