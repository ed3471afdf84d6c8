from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_export import MIXED, make_run

from cai.cli import cli
from cai.pricing import run_cost
from cai.records import Record
from cai.stats import compute_stats, format_stats, run_stats


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("stats"), MIXED)


def test_stats_of_a_run(mixed_run: Path) -> None:
    data = run_stats(mixed_run)
    assert data["records"] == 22
    assert data["status"] == {"failed": 1, "ok": 21}
    assert data["initial_finish_reasons"] == {"length": 1, "stop": 20}
    # 19 chains revised twice; in the second round most revisions repeat the first one.
    assert data["rounds"] == {
        "total": 42,
        "revised": 38,
        "changed": 19,
        "no_change": 4,
        "problem": 0,
    }
    principles = data["principles"]
    assert set(principles) <= {"harm", "honesty"}
    assert sum(p["rounds"] for p in principles.values()) == 42
    for key in ("revised", "changed", "no_change"):
        assert sum(p[key] for p in principles.values()) == data["rounds"][key]
    assert data["answer_changed"] == {"records": 18, "share": round(18 / 21, 4)}
    assert data["lengths"]["initial"]["median_words"] == 13
    assert data["lengths"]["final"]["median_words"] == 15
    # Every str reply of the fake costs 10 tokens in, 5 out; the failed chain made no call.
    assert data["usage"] == {
        "input_tokens": 1010,
        "output_tokens": 505,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "calls": 101,
    }
    assert data["cost_usd"] is None  # the fake model has no price
    assert data["export"] == {
        "kept": 16,
        "preference_pairs": 14,
        "sft_only": 2,
        "fell_back": 1,
        "removed": {"duplicate": 1, "failed": 1, "meta": 2, "truncated": 1, "unchanged": 1},
    }
    assert data["run"]["dir"] == str(mixed_run)


def test_stats_command_text_and_json(mixed_run: Path) -> None:
    result = CliRunner().invoke(cli, ["stats", str(mixed_run), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == run_stats(mixed_run)

    text = CliRunner().invoke(cli, ["stats", str(mixed_run)]).output
    for line in (
        "Records: 22 (1 failed, 21 ok)",
        "Initial answers: 1 length, 20 complete",
        "Rounds: 42: 38 revised (19 changed the answer), 4 found nothing to change, "
        "0 cut off or refused",
        "Final answer differs from the first: 18 of 21 records (86%)",
        "Tokens: 1,010 in, 505 out over 101 calls",
        "Cost: unknown (no price for fake-model; add it with --price-table FILE)",
        "Export with default filters: 14 preference pairs, 2 SFT-only; removed: duplicate 1, "
        "failed 1, meta 2, truncated 1, unchanged 1",
    ):
        assert line in text.splitlines(), line
    # Each principle's rounds, and where its revisions went: kept in the export, or which
    # filter dropped them (a fallback keeps round 1's revision and drops round 2's as meta).
    assert text.splitlines()[6:9] == [
        "PRINCIPLE  DRAWN  REVISED  CHANGED  NO CHANGE  FAILED  KEPT  DROPPED",
        "harm       35     31       16       4          0       24    meta 5, truncated 2",
        "honesty    7      7        3        0          0       3     duplicate 2, unchanged 2",
    ]
    effectiveness = json.loads(result.output)["effectiveness"]
    assert effectiveness["principles"]["honesty"] == {
        "drawn": 7,
        "records": 5,
        "revised": 7,
        "changed": 3,
        "no_change": 0,
        "failed": 0,
        "kept": 3,
        "dropped": {"duplicate": 2, "unchanged": 2},
        "labels": None,
    }
    assert effectiveness["flags"] == [] and effectiveness["labels"] is None
    assert format_stats(run_stats(mixed_run)) + "\n" == text


def test_stats_of_a_directory_without_records(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["stats", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output == (
        f"Error: {tmp_path}: no records.jsonl here; pass a directory made by cai generate\n"
    )


def usage(inp: int, out: int, read: int = 0) -> dict[str, int]:
    return {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": read, "calls": 1}


def test_cost_is_priced_from_every_record_with_the_runs_price_table(tmp_path: Path) -> None:
    table = tmp_path / "prices.json"
    table.write_text(
        json.dumps({"models": {"my-model": {"input": 2.0, "output": 10.0, "cache_read": 0.5}}})
    )
    records = [
        Record("a", [], provider="openai", model="my-model", usage=usage(1_000_000, 100_000)),
        Record("b", [], provider="openai", model="my-model", usage=usage(0, 0, 2_000_000)),
    ]
    manifest = {"config": {"price_table": str(table)}, "stats": {"cost_usd": 0.5}}
    # 2.0 for input, 1.0 for output, 1.0 for cache reads - not the manifest's last session.
    assert run_cost(records, manifest) == pytest.approx(4.0)
    assert compute_stats(records, manifest)["cost_usd"] == pytest.approx(4.0)
    # A model without a price: the manifest's own figure, if it has one.
    unpriced = [Record("c", [], provider="openai", model="unknown-x", usage=usage(5, 5))]
    assert run_cost(unpriced, manifest) == 0.5
    assert run_cost(unpriced, {}) is None
    local = [Record("d", [], provider="local", model="x.gguf", usage=usage(5, 5))]
    assert run_cost(local, {}) == 0.0
