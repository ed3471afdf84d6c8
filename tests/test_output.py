"""What the commands say (issue 21, item 8): `export --format hf` says how many preference pairs
went to SFT instead and the flag that changes it; every summary counts with the right plural
("1 record", "1 wave", "1 batch"), through the one helper in cai/cli/_output.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer

from cai.cli import cli

MODEL = "gpt-5.4-mini"
# A count of one followed by a plural noun: "1 records", "1 waves", "1 batch(es)".
ONE_PLURAL = re.compile(
    r"(?<![\d.,/])\b1 (records|pairs|waves|batches|batch\(es\)|rounds|calls|prompts|examples|"
    r"items|requests|runs|duplicates|tokens|shards|lines)\b"
)


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")


def _invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    assert not ONE_PLURAL.search(result.stderr), result.stderr
    return result


def _generate(server: FakeServer, constitution: Path, tmp_path: Path, n: int, *extra: str) -> Path:
    prompts = tmp_path / f"p{n}.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: is it safe?"}) + "\n" for i in range(n))
    )
    out = tmp_path / f"run{n}"
    _invoke(
        "generate", "--constitution", str(constitution), "--prompts", str(prompts),
        "--provider", "openai", "--model", MODEL, "--base-url", server.url + "/v1",
        "--rounds", "1", "--out", str(out), *extra,
    )  # fmt: skip
    return out


def _sft_line(result: Result) -> tuple[int, int, str]:
    found = re.search(
        r"^SFT instead: (\d+) of the (\d+) preference pairs? went to the SFT splits rather than "
        r"the preference splits \((--sft-share [\d.]+); ",
        result.stderr,
        re.M,
    )
    assert found, result.stderr
    return int(found[1]), int(found[2]), found[3]


def _written(result: Result) -> dict[str, int]:
    found = re.search(r"^Wrote (.*) rows to ", result.stderr, re.M)
    assert found, result.stderr
    return {k: int(n) for k, n in (part.split() for part in found[1].split(", "))}


def test_hf_export_says_how_many_pairs_went_to_sft_and_the_flag(
    tmp_path: Path, mini_constitution: Path
) -> None:
    with FakeServer() as server:
        run = _generate(server, mini_constitution, tmp_path, 16)
    half = _invoke("export", str(run), "--format", "hf", "--out", str(tmp_path / "hf"))
    moved, pairs, flag = _sft_line(half)
    rows = _written(half)
    assert flag == "--sft-share 0.5" and "--sft-share 0 keeps every pair" in half.stderr
    assert pairs >= 2 and 0 < moved < pairs
    # What did not go to SFT is in the preference splits.
    assert rows["train_prefs"] + rows["test_prefs"] == pairs - moved
    kept = _invoke(
        "export", str(run), "--format", "hf", "--sft-share", "0", "--out", str(tmp_path / "hf0")
    )
    assert _sft_line(kept) == (0, pairs, "--sft-share 0")
    assert "--sft-share 0.5 would give half of them to SFT" in kept.stderr
    rows = _written(kept)
    assert rows["train_prefs"] + rows["test_prefs"] == pairs
    # The other formats have no SFT split to speak of.
    dpo = _invoke("export", str(run), "--format", "dpo", "--out", str(tmp_path / "d.jsonl"))
    assert "SFT instead" not in dpo.stderr


def test_summaries_say_one_of_a_thing_in_the_singular(
    tmp_path: Path, mini_constitution: Path
) -> None:
    with FakeServer() as server:
        one = _generate(server, mini_constitution, tmp_path, 1)
        three = _generate(server, mini_constitution, tmp_path, 3)
        labels = _invoke(
            "label", str(three), "--out", str(tmp_path / "labels"), "--votes", "1",
            "--batch", "--poll-interval", "0.05",
        )  # fmt: skip
        status = _invoke("batch", "status", str(tmp_path / "labels"))
    # 3 prompts, of which the fake's critiques leave 1 pair to label: 1 vote, both orders, sent
    # as one batch in one wave.
    assert re.search(r"^Done in [\d.]+s: 1 pair labelled, ", labels.stderr, re.M)
    assert "Batches: 1 created in 1 wave (2 requests)" in labels.stderr
    assert re.search(r"prefers the revision in [01] of 1 pair\.$", labels.stderr, re.M)
    assert status.stdout.startswith("wave 1: 1 batch (1 ended), 2/2 requests done, ")
    merged = _invoke("merge", str(one), "--out", str(tmp_path / "merged"))
    assert "Merged 1 run into " in merged.stderr and ": 1 record (1 ok), 0 duplicates" in (
        merged.stderr
    )
    exported = _invoke("export", str(one), "--format", "sft", "--out", str(tmp_path / "s.jsonl"))
    assert exported.stderr.startswith("Read 1 record;")
