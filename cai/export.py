"""Turn a run's records into training data: TRL preference rows (DPO), SFT conversations, or a
Hugging Face `DatasetDict` with preference and SFT splits.

Formats are defined by their keys, as TRL defines them:

- preference: {"prompt", "chosen", "rejected"}; conversational (message lists) or standard
  (plain strings).
- SFT: {"messages"}.

Every row also carries `id`, `principles`, `rounds`, `chosen_round` and `constitution_sha256`
so it can be traced back to its record; TRL ignores columns it does not know. Each column has
one type in every row, as Arrow needs.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.card import is_export_card, render_card
from cai.errors import CaiError, ConfigError
from cai.export_options import FORMATS, STYLES, ExportOptions
from cai.filters import (
    FilterResult,
    Verdict,
    apply_filters,
    for_run,
    prompt_key,
)
from cai.records import Record
from cai.redact import remember_secret
from cai.rundir import atomic_dir, check_out_path, is_run_dir, load_run, write_atomic

__all__ = [
    "FORMATS",
    "SPLITS",
    "STYLES",
    "ExportOptions",
    "ExportResult",
    "PushError",
    "check_out",
    "export_dataset",
    "export_run",
    "prompt_text",
    "push_export",
    "record_to_dpo",
    "record_to_sft",
    "split_verdicts",
    "write_jsonl",
]

SPLITS = ("train_prefs", "test_prefs", "train_sft", "test_sft")
CARD_FILE = "README.md"
# Where AI-feedback labels decide a pair: the soft label of each side, and |p - 0.5|.
SCORE_COLUMNS = ("score_chosen", "score_rejected", "margin")
_SHARD_BYTES = 500 * 2**20  # the size datasets' save_to_disk aims for by default


class PushError(CaiError):
    """The upload to the Hugging Face Hub failed; the local export is complete."""


@dataclass
class ExportResult:
    """What an export wrote: the data (file or directory), the card, and the counts."""

    out: Path
    card: Path
    counts: dict[str, int]
    filtered: FilterResult
    records: int
    data_files: dict[str, str]


def _last_good_round(record: Record) -> int:
    """The round the pipeline's final response comes from; 0 when it is the initial answer."""
    good = [r.index for r in record.rounds if r.revision is not None and r.problem is None]
    return good[-1] if good else 0


def _extra_columns(record: Record, chosen_round: int) -> dict[str, Any]:
    # TRL ignores columns it does not know; these let users trace a row back to its record.
    return {
        "id": record.id,
        "principles": record.principles,
        "rounds": len(record.rounds),
        "chosen_round": chosen_round,
        "constitution_sha256": record.constitution.get("sha256", ""),
    }


# A tagged prompt's labels (`Record.tags`, from `cai prompts generate`), one column each.
TAG_COLUMNS = ("principle", "style", "kind")


def _tag_columns(record: Record) -> dict[str, Any]:
    if record.tags is None:
        return {}
    return {name: record.tags.get(name) for name in TAG_COLUMNS}


def prompt_text(record: Record) -> str:
    """The prompt as one string, for standard style; a prompt with earlier turns is refused."""
    turns = record.prompt
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    where = f" (prompt line {record.source_line})" if record.source_line else ""
    roles = ", ".join(t["role"] for t in turns)
    raise ConfigError(
        f"record {record.id}{where} has {len(turns)} turns ({roles}); --style standard holds "
        "only a single user turn - use --style conversational (the default), which keeps every turn"
    )


def record_to_dpo(
    record: Record,
    *,
    style: str = "conversational",
    chosen: str | None = None,
    chosen_round: int | None = None,
) -> dict[str, Any]:
    """A TRL preference row: chosen = the revision (default: the final one), rejected = the initial."""
    if chosen is None:
        chosen, chosen_round = record.final_response, _last_good_round(record)
    if style == "standard":
        row: dict[str, Any] = {
            "prompt": prompt_text(record),
            "chosen": chosen,
            "rejected": record.initial_response,
        }
    else:
        row = {
            "prompt": record.prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": record.initial_response}],
        }
    row.update(_extra_columns(record, chosen_round or 0))
    row.update(_tag_columns(record))
    return row


def record_to_sft(
    record: Record, *, response: str | None = None, chosen_round: int | None = None
) -> dict[str, Any]:
    """An SFT conversation: the prompt's turns, then the answer (default: the final revision)."""
    if response is None:
        response, chosen_round = record.final_response, _last_good_round(record)
    row: dict[str, Any] = {"messages": [*record.prompt, {"role": "assistant", "content": response}]}
    row.update(_extra_columns(record, chosen_round or 0))
    row.update(_tag_columns(record))
    return row


def _dpo_row(verdict: Verdict, style: str) -> dict[str, Any]:
    return record_to_dpo(
        verdict.record, style=style, chosen=verdict.response, chosen_round=verdict.chosen_round
    )


def _sft_row(verdict: Verdict) -> dict[str, Any]:
    return record_to_sft(
        verdict.record, response=verdict.response, chosen_round=verdict.chosen_round
    )


def _split_off(groups: list[list[Verdict]], share: float, rng: random.Random, *, ceil: bool):
    """Shuffle the groups and cut off `share` of them: (the rest, the share)."""
    groups = list(groups)
    rng.shuffle(groups)
    n = len(groups)
    cut = math.ceil(n * share) if ceil else round(n * share)
    if ceil and share < 1:
        cut = min(cut, n - 1) if n > 1 else 0  # a test split never takes the only example
    return groups[cut:], groups[:cut]


def split_verdicts(
    kept: Iterable[Verdict], *, sft_share: float, test_size: float, seed: int
) -> dict[str, list[Verdict]]:
    """Assign kept records to the four splits; no prompt is in both the SFT and preference splits.

    Records with the same prompt stay together. Prompts that only have an SFT answer go to the
    SFT splits; of the prompts with a preference pair, `sft_share` go to SFT instead. Then
    `test_size` of each side (rounded up, never all of it) goes to its test split. The result
    depends only on the records and `seed`, not on their order in the file.
    """
    groups: dict[str, list[Verdict]] = {}
    for verdict in kept:
        groups.setdefault(prompt_key(verdict.record.prompt), []).append(verdict)
    ordered = [groups[k] for k in sorted(groups)]
    rng = random.Random(seed)
    sft_only = [g for g in ordered if any(v.use == "sft" for v in g)]
    prefs, to_sft = _split_off(
        [g for g in ordered if all(v.use == "pref" for v in g)], sft_share, rng, ceil=False
    )
    train_prefs, test_prefs = _split_off(prefs, test_size, rng, ceil=True)
    train_sft, test_sft = _split_off(sft_only + to_sft, test_size, rng, ceil=True)

    def flat(gs: list[list[Verdict]]) -> list[Verdict]:
        return sorted((v for g in gs for v in g), key=lambda v: v.record.id)

    return {
        "train_prefs": flat(train_prefs),
        "test_prefs": flat(test_prefs),
        "train_sft": flat(train_sft),
        "test_sft": flat(test_sft),
    }


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows to `path` atomically (`write_atomic`); returns the count."""
    count = 0

    def lines() -> Iterator[bytes]:
        nonlocal count
        for row in rows:
            yield (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            count += 1

    write_atomic(path, lines())
    return count


def _kind(split: str) -> str:
    """ "prefs" or "sft": the two kinds of split, each with its own columns (TRL's formats)."""
    return split.rsplit("_", 1)[1]


def _features(kind: str, style: str, scores: bool = False, tags: bool = False) -> Any:
    """The Arrow schema of a split, so that empty splits and empty lists still get their types."""
    from datasets import Features, Value

    message = [{"role": Value("string"), "content": Value("string")}]
    text = Value("string") if style == "standard" else message
    columns: dict[str, Any] = (
        {"prompt": text, "chosen": text, "rejected": text}
        if kind == "prefs"
        else {"messages": message}
    )
    columns.update(
        id=Value("string"),
        principles=[Value("string")],
        rounds=Value("int64"),
        chosen_round=Value("int64"),
        constitution_sha256=Value("string"),
    )
    if scores and kind == "prefs":
        columns.update({name: Value("float64") for name in SCORE_COLUMNS})
    if tags:
        columns.update({name: Value("string") for name in TAG_COLUMNS})
    return Features(columns)


def _dataset(rows: list[dict[str, Any]], features: Any, split: str) -> Any:
    """A `Dataset` of `rows` with the given schema; built by column so that no rows works too."""
    from datasets import Dataset

    # A tag column is None in a row whose prompt had no tags (e.g. a merge with other runs).
    columns = {
        name: [row.get(name) if name in TAG_COLUMNS else row[name] for row in rows]
        for name in features
    }
    return Dataset.from_dict(columns, features=features, split=split)


def _datasets(
    splits: dict[str, list[dict[str, Any]]], fmt: str, style: str, scores: bool
) -> dict[str, Any]:
    """Each split's rows as a `Dataset` with its format's schema."""

    def kind(name: str) -> str:
        return _kind(name) if fmt == "hf" else "prefs" if fmt == "dpo" else "sft"

    tags = any(TAG_COLUMNS[0] in row for rows in splits.values() for row in rows)
    return {
        name: _dataset(rows, _features(kind(name), style, scores, tags), name)
        for name, rows in splits.items()
    }


# What an hf export holds; anything else in its folder was put there by someone else.
_HF_ENTRIES = {CARD_FILE, "dataset_dict.json", "data", *SPLITS}


def _listed(names: list[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")


def check_out(out: Path, fmt: str) -> None:
    """Refuse an --out that holds anything an earlier cai export did not write.

    A file export may replace a file whose card beside it (<stem>.README.md) is an export
    card naming it; an hf export may replace a folder holding only an export and its card.
    """
    new = "pass --out with a new path"
    if fmt != "hf":
        card = _card_path(out, fmt)
        if out.is_dir():
            raise ConfigError(f"--out {out} is a directory; --format {fmt} writes a .jsonl file")
        check_out_path(out, folder=False)  # e.g. the link's target: a file of a run
        for path, name in ((out, out.name), (card, out.name)):
            if not path.exists():
                continue
            if not _is_card(card, name):
                raise ConfigError(
                    f"--out {out}: {path} exists and was not written by cai export "
                    f"(no export card {card.name} beside it names it); {new}"
                )
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; --format hf writes a directory; {new}")
    if not out.is_dir():
        return
    if is_run_dir(out):
        raise ConfigError(f"--out {out} is a run directory; {new}")
    entries = list(out.iterdir())
    runs = [p.name for p in entries if p.is_dir() and is_run_dir(p)]
    if runs:
        raise ConfigError(f"--out {out} holds the run(s) {_listed(runs)}; {new}")
    if not entries:
        return
    if not _is_card(out / CARD_FILE):
        raise ConfigError(
            f"--out {out} holds files cai export did not write ({_listed([p.name for p in entries])}); "
            f"{new}"
        )
    foreign = [p.name for p in entries if p.name not in _HF_ENTRIES]
    if foreign:
        raise ConfigError(
            f"--out {out} is an earlier export but also holds {_listed(foreign)}, which cai "
            f"did not write; {new}"
        )


def _is_card(path: Path, out_name: str | None = None) -> bool:
    try:
        return path.is_file() and is_export_card(path.read_text(encoding="utf-8"), out_name)
    except (OSError, UnicodeDecodeError):
        return False


def _card_path(out: Path, fmt: str) -> Path:
    return out / CARD_FILE if fmt == "hf" else out.with_name(f"{out.stem}.{CARD_FILE}")


def _write_hf(
    splits: dict[str, list[dict[str, Any]]], out: Path, style: str, card: str, scores: bool = False
) -> None:
    """Write a DatasetDict (save_to_disk), Parquet files and the card, then swap them into place."""
    import datasets

    bars = not datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one summary line from the CLI says it all
    try:
        with atomic_dir(out) as tmp:
            data = datasets.DatasetDict(_datasets(splits, "hf", style, scores))
            # An empty split must still get one (empty) shard, or load_from_disk cannot read it.
            shards = {
                name: max(1, math.ceil(d.data.nbytes / _SHARD_BYTES)) for name, d in data.items()
            }
            data.save_to_disk(str(tmp), num_shards=shards)
            (tmp / "data").mkdir()
            for name, dataset in data.items():
                if not dataset.num_rows:
                    continue  # load_dataset refuses an empty Parquet split; the card omits it too
                dataset.to_parquet(str(tmp / "data" / f"{name}-00000-of-00001.parquet"))
            write_atomic(tmp / CARD_FILE, card)
    finally:
        if not bars:
            datasets.enable_progress_bars()


def _pairs(run_dir: Path, options: ExportOptions) -> tuple[Any, ...]:
    """The run's manifest and records, the verdicts of the filters; where AI-feedback labels
    decide (a label run, or --labels), the score columns of each kept pair by id and the labels.
    """
    from cai import feedback

    margin = {"min_margin": options.min_margin, "keep_inconsistent": options.keep_inconsistent}
    if feedback.is_label_run(run_dir):
        if options.labels is not None:
            raise ConfigError(f"{run_dir} is a label run; --labels goes with a generate run")
        manifest, labels = feedback.load_labels(run_dir, while_running=False)
        return manifest, *feedback.label_pairs(labels, **margin), labels
    manifest, records = load_run(run_dir, while_running=False)
    # `copied` compares revisions with the constitution the run was made with.
    filtered = apply_filters(records, for_run(options.filters, run_dir, manifest, records))
    if options.labels is None:
        return manifest, records, filtered, None, None
    label_manifest, labels = feedback.load_labels(options.labels, while_running=False)
    ids = {record.id for record in records}
    feedback.check_label_source(options.labels, label_manifest, labels, run_dir, manifest, ids)
    scores = feedback.check_with_labels(filtered, labels, **margin)
    return manifest, records, filtered, scores, labels


@dataclass
class _Built:
    """An export made in memory: its rows by split, the card, and what went into them."""

    rows: dict[str, list[dict[str, Any]]]
    counts: dict[str, int]
    data_files: dict[str, str]
    card: str
    filtered: FilterResult
    records: int
    scores: bool


def _build(run_dir: Path, out: Path, options: ExportOptions) -> _Built:
    """The rows and card of an export of `run_dir` to `out` (whose name the card quotes)."""
    manifest, records, filtered, scores, labels = _pairs(run_dir, options)
    if options.fmt == "hf":
        verdicts = split_verdicts(
            filtered.kept,
            sft_share=options.sft_share,
            test_size=options.test_size,
            seed=options.seed,
        )
        rows = {
            name: [
                _dpo_row(v, options.style) if _kind(name) == "prefs" else _sft_row(v)
                for v in verdicts[name]
            ]
            for name in SPLITS
        }
        data_files = {name: f"data/{name}-*.parquet" for name in SPLITS}
    else:
        split = "train"
        if options.fmt == "dpo":
            rows = {split: [_dpo_row(v, options.style) for v in filtered.kept if v.use == "pref"]}
        else:
            rows = {split: [_sft_row(v) for v in filtered.kept]}
        data_files = {split: out.name}
    if scores is not None:
        for name, split in rows.items():
            if options.fmt == "dpo" or (options.fmt == "hf" and _kind(name) == "prefs"):
                for row in split:
                    row.update(scores[row["id"]])
    counts = {name: len(r) for name, r in rows.items()}
    data_files = {name: path for name, path in data_files.items() if counts[name]}
    card = render_card(
        run_dir=run_dir,
        manifest=manifest.to_dict(),
        records=records,
        filtered=filtered,
        counts=counts,
        options=options,
        data_files=data_files,
        out_name=out.name,
        labels=labels,
    )
    return _Built(rows, counts, data_files, card, filtered, len(records), scores is not None)


def _default_out(run_dir: Path, fmt: str) -> Path:
    return run_dir / ("hf" if fmt == "hf" else f"{fmt}.jsonl")


def export_run(run_dir: str | Path, out: str | Path | None, options: ExportOptions) -> ExportResult:
    """Filter a run's records and write them in `options.fmt`, with a dataset card beside them.

    `dpo` and `sft` write one JSONL file (default RUN_DIR/<fmt>.jsonl) and its card as
    <name>.README.md; `hf` writes a directory (default RUN_DIR/hf) holding the card as README.md.
    Nothing is left half-written when anything fails, nothing that an earlier export did not
    write is replaced (`check_out`), and a run a live process is still writing is refused.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else _default_out(run_dir, options.fmt)
    check_out_path(out, folder=options.fmt == "hf")
    if out.is_symlink():
        out = Path(os.path.realpath(out))  # written through, the link stays
    built = _build(run_dir, out, options)
    check_out(out, options.fmt)
    card_path = _card_path(out, options.fmt)
    if options.fmt == "hf":
        _write_hf(built.rows, out, options.style, built.card, built.scores)
    else:
        # The card first: it is what marks the data file as cai's, so a kill between the two
        # writes leaves nothing that blocks the next export.
        write_atomic(card_path, built.card)
        write_jsonl(built.rows["train"], out)
    return ExportResult(
        out, card_path, built.counts, built.filtered, built.records, built.data_files
    )


def export_dataset(run_dir: str | Path, options: ExportOptions) -> Any:
    """The export `export_run` would write with `options`, in memory, writing nothing: a
    `datasets.Dataset` (dpo, sft) or a `DatasetDict` of the four splits (hf), with the same
    rows, columns and types; the card is each dataset's `info.description`."""
    import datasets

    run_dir = Path(run_dir)
    built = _build(run_dir, _default_out(run_dir, options.fmt), options)
    made = _datasets(built.rows, options.fmt, options.style, built.scores)
    for dataset in made.values():
        dataset.info.description = built.card
    if options.fmt == "hf":
        return datasets.DatasetDict(made)
    return made["train"]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def push_export(result: ExportResult, repo: str, *, token: str) -> str:
    """Upload an export (Parquet or JSONL files and the card) to a Hub dataset repo; its URL.

    The endpoint is read from HF_ENDPOINT at call time, so a mirror or a test server is honoured
    even after huggingface_hub was imported.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    if result.out.is_dir():
        files = {str(p.relative_to(result.out)): p for p in sorted((result.out / "data").glob("*"))}
    else:
        files = {result.out.name: result.out}
    files[CARD_FILE] = result.card
    remember_secret(token)  # e.g. a stored login's: never in an error this push prints
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.create_commit(
            repo,
            [
                CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p))
                for name, p in files.items()
            ],
            commit_message="Upload Constitutional AI data exported by cai",
            repo_type="dataset",
        )
    except Exception as e:  # any failure is reported the same way: the local copy is safe
        raise PushError(
            f"could not push to the Hub dataset {repo} ({type(e).__name__}: {_one_line(e)}); "
            f"the local export at {result.out} is complete - check the network and HF_TOKEN, "
            "then run the export again with --push-to-hub"
        ) from e
    return f"{api.endpoint}/datasets/{repo}"
