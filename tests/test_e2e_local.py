"""End to end on the real bundled SmolLM2-135M model: generate, export, load with datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def cai(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "cai", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "three.jsonl"
    lines = (ROOT / "examples" / "red_team_prompts.jsonl").read_text(encoding="utf-8").splitlines()
    multi = next(line for line in lines if '"messages"' in line)
    path.write_text("\n".join([lines[0], lines[1], multi]) + "\n", encoding="utf-8")
    return path


def run_job(prompts: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return cai(
        "generate",
        "--constitution",
        str(ROOT / "constitutions" / "harmless.md"),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--rounds",
        "2",
        "--max-tokens",
        "48",
        "--seed",
        "3",
        cwd=out.parent,
    )


def test_generate_and_export_with_the_bundled_model(tmp_path: Path, prompts: Path) -> None:
    result = run_job(prompts, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "3 records written, 0 failed" in result.stderr
    assert f"Next: cai export {tmp_path / 'run'} --format dpo" in result.stderr

    records = [
        json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()
    ]
    assert len(records) == 3
    for record in records:
        assert record["status"] == "ok" and record["provider"] == "local"
        assert record["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert record["initial_response"].strip()
        assert len(record["rounds"]) == 2
        assert record["usage"]["calls"] >= 3 and record["usage"]["output_tokens"] > 0
    assert any(len(r["prompt"]) == 3 for r in records)  # the multi-turn prompt kept its turns
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["ok"] == 3

    # At 48 tokens the 135M model's answers and critiques are mostly cut off, and the quality
    # filters drop such records, so the export may hold no pair; its splits are still typed.
    exported = cai("export", str(tmp_path / "run"), "--format", "hf", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "Read 3 records; filters removed " in exported.stderr
    import datasets

    splits = datasets.load_from_disk(str(tmp_path / "run" / "hf"))
    assert list(splits) == ["train_prefs", "test_prefs", "train_sft", "test_sft"]
    data = splits["train_prefs"]
    assert {"prompt", "chosen", "rejected"} <= set(data.column_names)
    for row in data:
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"

    # Same seed, same principles - and with llama.cpp's seeded sampler, the same text.
    again = run_job(prompts, tmp_path / "again")
    assert again.returncode == 0, again.stderr
    second = {
        r["id"]: r
        for r in map(json.loads, (tmp_path / "again" / "records.jsonl").read_text().splitlines())
    }
    for record in records:
        assert [x["principle"] for x in record["rounds"]] == [
            x["principle"] for x in second[record["id"]]["rounds"]
        ]
