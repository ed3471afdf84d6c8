"""How much the export's quality filters and writers cost, against just reading the run.

    python -m benchmarks.export [--records 20000]

Writes a synthetic run (two rounds per record, answers of about 120 words of a Zipf vocabulary; a tenth of the
revisions near-copies of the first answer, a tenth meta-text), then times, best of three:
reading the records (the baseline every export pays), `apply_filters`, and the whole
`export_run` for `dpo` and `hf`. The ratios against reading are the result.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import best, save
from cai.export import ExportOptions, export_run
from cai.filters import apply_filters
from cai.rundir import read_records

# A vocabulary of 3000 words drawn with Zipf-like weights, as in English text.
WORDS = [f"w{i}" for i in range(3000)]
WEIGHTS = [1 / (i + 1) for i in range(3000)]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, WEIGHTS, k=words)) + "."


def write_run(run_dir: Path, records: int) -> None:
    rng = random.Random(0)
    run_dir.mkdir(parents=True)
    with (run_dir / "records.jsonl").open("w", encoding="utf-8") as f:
        for i in range(records):
            initial = _text(rng, 120)
            kind = i % 10
            revision = (
                initial.replace("dog", "pet", 1)
                if kind == 0
                else "Here is a revised response: " + _text(rng, 100)
                if kind == 1
                else _text(rng, 110)
            )
            rounds = [
                {
                    "index": n,
                    "principle": "harm",
                    "critique_request": "Identify ways the response is harmful.",
                    "critique": _text(rng, 40),
                    "revision_request": "Rewrite the response.",
                    "revision": revision if n == 2 else _text(rng, 110),
                }
                for n in (1, 2)
            ]
            record = {
                "id": f"{i:016x}",
                "prompt": [{"role": "user", "content": f"Question {i}: " + _text(rng, 15)}],
                "initial_response": initial,
                "rounds": rounds,
                "final_response": revision,
                "provider": "local",
                "model": "bench.gguf",
                "constitution": {"name": "bench", "sha256": "0" * 64},
                "source_line": i + 1,
            }
            f.write(json.dumps(record) + "\n")


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return best(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_run(run, args.records)
        records = list(read_records(run))
        read_s = timed(lambda: list(read_records(run)))
        filter_s = timed(lambda: apply_filters(records))
        dpo_s = timed(lambda: export_run(run, Path(tmp) / "dpo.jsonl", ExportOptions(fmt="dpo")))
        hf_s = timed(lambda: export_run(run, Path(tmp) / "hf", ExportOptions(fmt="hf")))
        kept = len(apply_filters(records).kept)
    result = {
        "records": args.records,
        "kept": kept,
        "read_s": round(read_s, 3),
        "filters_s": round(filter_s, 3),
        "export_dpo_s": round(dpo_s, 3),
        "export_hf_s": round(hf_s, 3),
        "filters_per_s": round(args.records / filter_s),
        "filters_vs_read": round(filter_s / read_s, 2),
        "export_dpo_vs_read": round(dpo_s / read_s, 2),
        "export_hf_vs_read": round(hf_s / read_s, 2),
    }
    print(json.dumps(result, indent=2))
    save("export", result)


if __name__ == "__main__":
    main()
