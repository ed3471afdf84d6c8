"""How long a resume takes to get going on a big run, against the least any resume must do.

A run of N finished prompts (records of realistic size, five journaled calls each) plus a
tail of unfinished chains is written once. Then, best of three:

- baseline: read records.jsonl and parse every line (the least a resume can do to learn
  which prompts are done), and read calls.jsonl through without parsing it;
- resume: what `run_generation` does before its first call - `repair`, `compact` and
  `journal` of a `RunStore`.

The ratio resume / baseline is the number to watch; the absolute times depend on the disk.

    python -m benchmarks.resume [--records 20000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import best, save
from cai.rundir import RunStore

STEPS = ("initial", "round1.critique", "round1.revision", "round2.critique", "round2.revision")


def _text(i: int, n: int) -> str:
    return (f"sentence {i} of a reply that goes on for a while. " * (n // 48 + 1))[:n]


def write_run(run_dir: Path, records: int, unfinished: int) -> None:
    run_dir.mkdir(parents=True)
    usage = {"input_tokens": 900, "output_tokens": 120, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0, "calls": 1}  # fmt: skip
    with (run_dir / "records.jsonl").open("w") as rec, (run_dir / "calls.jsonl").open("w") as calls:
        for i in range(records + unfinished):
            record_id = f"{i:016x}"
            for step in STEPS if i < records else STEPS[:2]:
                calls.write(json.dumps({"id": record_id, "step": step, "text": _text(i, 700),
                                        "finish_reason": "stop", "usage": usage,
                                        "request_id": f"req-{i}-{step}"}) + "\n")  # fmt: skip
            if i >= records:
                continue
            rounds = [
                {
                    "index": r,
                    "principle": "harmful-content",
                    "critique_request": _text(r, 300),
                    "critique": _text(i, 500),
                    "revision_request": _text(r, 200),
                    "revision": _text(i, 700),
                    "skipped": False,
                    "critique_finish_reason": "stop",
                    "revision_finish_reason": "stop",
                    "problem": None,
                }
                for r in (1, 2)
            ]
            rec.write(json.dumps({
                "id": record_id, "prompt": [{"role": "user", "content": _text(i, 200)}],
                "status": "ok", "initial_response": _text(i, 700), "initial_finish_reason": "stop",
                "rounds": rounds, "final_response": _text(i, 700), "provider": "openai",
                "model": "gpt-4.1-mini", "sampling": {"temperature": 0.7, "max_tokens": 512},
                "seed": 0, "constitution": {"name": "harmless", "sha256": "0" * 64},
                "usage": usage, "timings": {"started_at": 0.0, "seconds": 1.0}, "error": None,
                "source_line": i + 1,
            }) + "\n")  # fmt: skip
    (run_dir / "manifest.json").write_text("{}")


def baseline(run_dir: Path) -> float:
    started = time.perf_counter()
    with (run_dir / "records.jsonl").open("rb") as f:
        done = {json.loads(line)["id"] for line in f}
    with (run_dir / "calls.jsonl").open("rb") as f:
        for _ in f:
            pass
    assert done
    return time.perf_counter() - started


def resume(run_dir: Path, unfinished: int) -> float:
    started = time.perf_counter()
    store = RunStore(run_dir)
    store.repair()
    done = set(store.compact())
    journal = store.journal(done)
    elapsed = time.perf_counter() - started
    assert len(journal) == 2 * unfinished
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--unfinished", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        write_run(run_dir, args.records, args.unfinished)
        size = sum(p.stat().st_size for p in run_dir.iterdir()) / 2**20
        base = best([baseline(run_dir) for _ in range(3)])
        ours = best([resume(run_dir, args.unfinished) for _ in range(3)])
    result = {
        "records": args.records,
        "unfinished_chains": args.unfinished,
        "run_mib": round(size, 1),
        "baseline_s": round(base, 3),
        "resume_s": round(ours, 3),
        "ratio": round(ours / base, 2),
    }
    print(json.dumps(result))
    print(f"saved {save('resume', result)}")


if __name__ == "__main__":
    main()
