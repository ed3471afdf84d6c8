"""The dataset card (README.md) of an export: how the data was made, what was filtered, how to use it.

The card embeds the full constitution text. The run remembers the constitution by sha256; its
text is taken from the run's own copy (`constitution.md`, written by `cai generate`) or from
the path in the manifest, and only when the bytes still hash to the run's sha256. Otherwise the
card says the text could not be recovered rather than show a constitution the data was not made
with.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from cai._version import __version__
from cai.export_options import ExportOptions
from cai.filters import FILTERS, FilterResult
from cai.ledger import Ledger, format_ledger, read_ledger
from cai.records import Record
from cai.rundir import find_constitution_text

__all__ = ["EXPORT_MARK", "is_export_card", "render_card"]

# The card's last line: what marks an export as cai's, so that a later export may replace it
# and nothing else.
EXPORT_MARK = "<!-- cai export:"


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _front_matter(data_files: dict[str, str], fmt: str) -> str:
    """Hub front matter: the data files by config; preference and SFT splits have other columns,
    so in `hf` they are two configs, `prefs` (the default) and `sft`."""
    configs: dict[str, dict[str, str]] = {}
    for split, path in data_files.items():
        name = split.rsplit("_", 1)[1] if fmt == "hf" else "default"
        configs.setdefault(name, {})[split] = path
    lines = ["---"]
    if configs:  # a split without rows has no file: load_dataset cannot read an empty one
        lines.append("configs:")
    for name, files in configs.items():
        lines.append(f"- config_name: {name}")
        if name == "prefs":
            lines.append("  default: true")
        lines.append("  data_files:")
        for split, path in files.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    tags = ["constitutional-ai", "synthetic", "cai"]
    tags += ["dpo", "sft"] if fmt == "hf" else [fmt]
    lines += ["tags:", *(f"- {t}" for t in tags), "---"]
    return "\n".join(lines)


def _sent(config: dict[str, Any], name: str, value: Any) -> Any:
    """A sampling setting as the provider was sent it: its value, or why it was not sent."""
    sent = config.get("sampling_sent") or {}
    why = (sent.get("not_sent") or {}).get(name)
    return f"not sent ({why})" if why else value


def _models_section(manifest: dict[str, Any], records: list[Record], ledger: Ledger) -> str:
    config = manifest.get("config") or {}
    seen: Counter[str] = Counter()
    for r in records:
        seen[json.dumps([r.provider, r.model, r.sampling, r.seed], sort_keys=True)] += 1
    rows = []
    for key, count in seen.most_common():
        provider, model, sampling, seed = json.loads(key)
        rows.append(
            [
                provider or "?",
                f"`{model}`" if model else "?",
                _sent(config, "temperature", sampling.get("temperature", "?")),
                _sent(config, "top_p", sampling.get("top_p", "provider default")),
                _sent(config, "max_tokens", sampling.get("max_tokens", "?")),
                _sent(config, "seed", seed),
                count,
            ]
        )
    parts = [
        "## Models and sampling",
        "",
        "One model wrote every answer, critique and revision:",
        "",
        _table(
            ["provider", "model", "temperature", "top_p", "max_tokens", "seed", "records"], rows
        ),
        "",
        f"Critique-and-revision rounds per prompt: {config.get('rounds', '?')}.",
    ]
    if config.get("base_url"):
        parts.append(f"API base URL: `{config['base_url']}`.")
    if ledger.usage.calls:
        parts += ["", "Every call of the run, from its call journal (all invocations):", ""]
        parts += [f"- {line}" for line in format_ledger(ledger)]
        parts.append("")
    versions = manifest.get("versions") or {}
    if versions:
        parts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return "\n".join(parts)


def _filters_section(filtered: FilterResult, records: list[Record], options: ExportOptions) -> str:
    statuses = Counter(r.status for r in records)
    rows = []
    for name, (what, flag) in FILTERS.items():
        on = flag is None or getattr(options.filters, name)
        rows.append(
            [f"`{name}`", filtered.removed.get(name, 0) if on else "off", what, flag or "-"]
        )
    kept = len(filtered.kept)
    return "\n".join(
        [
            "## Filters",
            "",
            f"The run holds {len(records)} records ("
            + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
            + f"); {kept} passed the filters. Each record is counted under the first filter "
            "that removed it:",
            "",
            _table(["filter", "removed", "what it removes", "turn off with"], rows),
            "",
            f"- {filtered.sft_only} records where every critique found nothing to change have "
            "no preference pair; they are used for SFT only.",
            f"- {filtered.fell_back} records use an earlier revision as `chosen` because a later "
            "one failed the `meta` check: that earlier revision still answers the critique.",
            f"- `unchanged` compares word sequences (lowercased, punctuation ignored) with "
            f"difflib; threshold {options.filters.similarity} (`--similarity`).",
        ]
    )


def _labels_section(
    labels: list[dict[str, Any]],
    filtered: FilterResult,
    options: ExportOptions,
    manifest: dict[str, Any],
) -> str:
    from cai.feedback import LABEL_FILTERS, label_stats

    data = label_stats(labels)
    settings = (manifest.get("settings") or {}) if manifest.get("kind") == "label" else {}
    mode = settings.get("mode")
    how = (
        "Chosen and rejected follow AI-feedback labels (RL-CAI, Bai et al. 2022): a feedback "
        "model compared the two responses under a principle drawn for each vote, in both "
        "orders, and `p_a` is the mean order-corrected probability that the first is better"
    )
    if mode:
        how += f" ({'chain of thought' if mode == 'cot' else 'log-probabilities'}"
        how += f", {settings.get('votes')} votes, clamp {settings.get('clamp')})"
    rows = [
        [f"`{name}`", filtered.removed.get(name, 0), what] for name, what in LABEL_FILTERS.items()
    ]
    share = data["first_option_share"]
    lines = [
        "## AI-feedback labels",
        "",
        how + f". `score_chosen` is the soft label of `chosen`, `score_rejected` its complement, "
        f"`margin` = |p - 0.5|. Export: `--min-margin {options.min_margin}`"
        + (" `--keep-inconsistent`" if options.keep_inconsistent else "")
        + ".",
        "",
        _table(["label filter", "removed", "what it removes"], rows),
        "",
        f"- {data['pairs']} labels, {data['labelled']} with a label; "
        f"{data['answered_votes']} of {data['votes']} votes answered.",
        f"- Position bias: {'-' if share is None else f'{share:.0%}'} of decided votes chose the "
        "option shown first (50% is none); averaging both orders cancels it.",
        f"- Order consistency: {data['position_consistent']} of {data['labelled']} labelled pairs "
        "prefer the same response in both orders of every vote.",
    ]
    if data["revision_pairs"]:
        lines.append(
            f"- The feedback model prefers the revision in {data['revision_preferred']} of "
            f"{data['revision_pairs']} pairs."
        )
    hist = ", ".join(f"{span}: {n}" for span, n in data["histogram"].items())
    lines.append(f"- Labels (p that response A is better): {hist}.")
    return "\n".join(lines)


def _splits_section(counts: dict[str, int], options: ExportOptions) -> str:
    parts = ["## Splits", "", _table(["split", "rows"], [[k, v] for k, v in counts.items()])]
    if options.fmt == "hf":
        parts += [
            "",
            "No prompt is in both an SFT split and a preference split. Of the prompts with a "
            f"preference pair, a share of {options.sft_share} went to SFT; "
            f"{options.test_size} of each side went to its test split (seed {options.seed}).",
        ]
    return "\n".join(parts)


def _columns_section(options: ExportOptions) -> str:
    shape = "lists of `{role, content}` messages" if options.style != "standard" else "strings"
    lines = ["## Columns", ""]
    if options.fmt in ("dpo", "hf"):
        lines += [
            f"- `prompt`, `chosen`, `rejected` (preference rows; {shape}): `chosen` is the "
            "revised answer, `rejected` the model's first answer.",
        ]
    if options.fmt in ("sft", "hf"):
        lines.append("- `messages` (SFT rows): the prompt's turns, then the revised answer.")
    lines += [
        "- `id`: the prompt's id in the run's `records.jsonl`.",
        "- `principles`: the constitution principle drawn for each round.",
        "- `rounds`: critique-and-revision rounds run; `chosen_round`: the round the answer "
        "comes from (0: the first answer, kept because no critique asked for a change).",
        "- `constitution_sha256`: the sha256 of the constitution file.",
    ]
    return "\n".join(lines)


def _usage_section(options: ExportOptions, out_name: str) -> str:
    if options.fmt == "hf":
        load = (
            "from datasets import load_dataset, load_from_disk\n\n"
            f'data = load_from_disk("{out_name}")  # all four splits, empty ones too\n'
            '# from the Hub: load_dataset("<user>/<repo>") gives the preference splits,\n'
            '# load_dataset("<user>/<repo>", "sft") the SFT splits\n'
            'train, test = data["train_prefs"], data["test_prefs"]'
        )
    else:
        load = (
            "from datasets import load_dataset\n\n"
            f'train = load_dataset("json", data_files="{out_name}", split="train")'
        )
    if options.fmt == "sft":
        train = (
            "from trl import SFTConfig, SFTTrainer\n\n"
            'trainer = SFTTrainer(model="<model>", args=SFTConfig(output_dir="sft"), '
            "train_dataset=train)\ntrainer.train()"
        )
    else:
        train = (
            "from trl import DPOConfig, DPOTrainer\n\n"
            "trainer = DPOTrainer(\n"
            '    model="<model>",  # best: the SFT model of the same prompts\n'
            '    args=DPOConfig(output_dir="dpo", beta=0.1),\n'
            "    train_dataset=train,\n"
            ")\ntrainer.train()"
        )
        if options.fmt == "hf":
            train += (
                '\n# SFT first on data["train_sft"] with trl.SFTTrainer, then DPO on "train_prefs".'
            )
    return "\n".join(
        [
            "## Use",
            "",
            "```python",
            load,
            "```",
            "",
            "Train with [TRL](https://huggingface.co/docs/trl); it ignores the extra columns:",
            "",
            "```python",
            train,
            "```",
            "",
            "`examples/train_dpo.py` in the cai repository runs a few DPO steps on CPU on such "
            "an export.",
        ]
    )


def _constitution_section(
    run_dir: Path, manifest: dict[str, Any], records: list[Record]
) -> tuple[str, str]:
    info = manifest.get("constitution") or {}
    name = info.get("name") or next((r.constitution.get("name") for r in records), "") or "?"
    sha = info.get("sha256") or next((r.constitution.get("sha256") for r in records), "") or "?"
    text, source = find_constitution_text(run_dir, manifest, records)
    parts = [
        "## Constitution",
        "",
        f"Name: **{name}**, sha256 `{sha}`"
        + (f", file `{info['path']}`" if info.get("path") else "")
        + ".",
        "",
    ]
    if text is None:
        parts.append(f"The full text is not included: {source}.")
    else:
        fence = _fence(text)
        parts += [f"Full text ({source}):", "", f"{fence}markdown", text.rstrip("\n"), fence]
    return name, "\n".join(parts)


def render_card(
    *,
    run_dir: Path,
    manifest: dict[str, Any],
    records: list[Record],
    filtered: FilterResult,
    counts: dict[str, int],
    options: ExportOptions,
    data_files: dict[str, str],
    out_name: str,
    labels: list[dict[str, Any]] | None = None,
) -> str:
    """The Markdown dataset card of one export, with Hub front matter naming its data files.

    `labels`: the AI-feedback labels that chose the pairs (a label run, or `--labels`).
    """
    name, constitution = _constitution_section(run_dir, manifest, records)
    kind = {"dpo": "Preference (DPO)", "sft": "SFT", "hf": "Preference (DPO) and SFT"}
    rounds = (manifest.get("config") or {}).get("rounds", "?")
    intro = (
        f"{kind[options.fmt]} data made with cai {__version__} by "
        "Constitutional AI critique and revision: a model answered each prompt, then critiqued "
        "its answer against a principle drawn from the constitution below and revised it, for "
        f"{rounds} rounds. The revised answer is `chosen`, the first answer `rejected`."
    )
    if manifest.get("kind") == "label":
        intro = (
            f"{kind[options.fmt]} data made with cai {__version__} from AI-feedback labels: "
            "a feedback model compared two responses to each prompt under principles drawn from "
            "the constitution below; the one it prefers is `chosen`."
        )
    created, updated = manifest.get("created"), manifest.get("updated")
    prompts = manifest.get("prompts") or {}
    details = [
        f"Run: `{run_dir}`"
        + (f", created {created}" if created else "")
        + (f", last updated {updated}" if updated and updated != created else "")
        + "."
    ]
    if prompts.get("name"):
        details.append(
            f"Prompts: `{prompts['name']}`"
            + (f" (sha256 `{prompts['sha256']}`)" if prompts.get("sha256") else "")
            + "."
        )
    details.append(
        f"Export: `--format {options.fmt} --style {options.style}`"
        + (
            f" `--sft-share {options.sft_share} --test-size {options.test_size} "
            f"--seed {options.seed}`"
            if options.fmt == "hf"
            else ""
        )
        + "."
    )
    sections = [
        _front_matter(data_files, options.fmt),
        f"# {name}: Constitutional AI data",
        intro,
        " ".join(details),
        _splits_section(counts, options),
        _filters_section(filtered, records, options),
        *([_labels_section(labels, filtered, options, manifest)] if labels is not None else []),
        _models_section(manifest, records, read_ledger(run_dir, manifest)),
        constitution,
        _columns_section(options),
        _usage_section(options, out_name),
        f"{EXPORT_MARK} {out_name} (--format {options.fmt}); a later cai export may replace "
        "this card and its data -->",
    ]
    return "\n\n".join(sections) + "\n"


def is_export_card(text: str, out_name: str | None = None) -> bool:
    """Whether `text` is a card cai export wrote (for `out_name`, when given)."""
    for line in reversed(text.splitlines()[-5:]):
        if line.startswith(EXPORT_MARK):
            return out_name is None or line.startswith(f"{EXPORT_MARK} {out_name} (")
    return False
