"""Start-up: wall time of `cai --help` and `cai constitution check`, and what they import.

Each command runs in a fresh process, interleaved with a bare `python -c pass` (the floor no
command can go under), several times; the best and the median of each are kept. For each
command it also lists which heavy modules were imported (there should be none) and the
slowest imports (from `python -X importtime`).

    python -m benchmarks.startup [--quick]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import ROOT

__all__ = ["COMMANDS", "main", "run"]

HEAVY = ("anthropic", "datasets", "llama_cpp", "numpy", "openai", "pyarrow", "torch", "yaml")
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "cai --help": [sys.executable, "-m", "cai", "--help"],
    "cai constitution check": [
        sys.executable,
        "-m",
        "cai",
        "constitution",
        "check",
        "constitutions/harmless.md",
    ],
}
# What the probe prints: the heavy modules a command left in sys.modules.
_PROBE = (
    "import sys, json\n"
    "sys.argv = ['cai', *sys.argv[1:]]\n"
    "from cai.cli import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
)


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def _heavy(args: list[str]) -> list[str]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _slowest_imports(args: list[str], count: int = 5) -> list[dict[str, Any]]:
    """The top-level modules with the largest cumulative import time, in milliseconds."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cai", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and "." not in name:
            rows.append({"module": name, "ms": round(int(cumulative) / 1000, 1)})
    return sorted(rows, key=lambda r: -r["ms"])[:count]


def run(quick: bool = False) -> dict[str, Any]:
    repeats = 5 if quick else 15
    samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the file cache once
        _wall(command)
    for _ in range(repeats):
        for name, command in COMMANDS.items():
            samples[name].append(_wall(command))
    commands = {
        name: {
            "best_s": round(min(values), 3),
            "median_s": round(statistics.median(values), 3),
        }
        for name, values in samples.items()
    }
    commands["cai --help"]["heavy_imports"] = _heavy(["--help"])
    commands["cai --help"]["slowest_imports"] = _slowest_imports(["--help"])
    check = ["constitution", "check", "constitutions/harmless.md"]
    commands["cai constitution check"]["heavy_imports"] = _heavy(check)
    commands["cai constitution check"]["slowest_imports"] = _slowest_imports(check)
    return {"repeats": repeats, "commands": commands, "target_help_s": 0.3}


def report(result: dict[str, Any]) -> str:
    c = result["commands"]
    return (
        f"start-up: cai --help {c['cai --help']['best_s']:.3f}s best "
        f"({c['cai --help']['median_s']:.3f}s median), constitution check "
        f"{c['cai constitution check']['best_s']:.3f}s, bare python "
        f"{c['python -c pass']['best_s']:.3f}s; heavy imports: "
        f"--help {c['cai --help']['heavy_imports']}, "
        f"check {c['cai constitution check']['heavy_imports']}"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main("startup", __doc__, run, report, argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
