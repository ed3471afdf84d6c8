"""The export trains: TRL's DPOTrainer runs on an `hf` export (examples/train_dpo.py), on a tiny
Llama built from a config with a tokenizer trained on the export's text, so it needs no download
and no GGUF file, and takes seconds."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_export import GOOD, make_run

from cai.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_dpo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_dpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported(tmp_path: Path, fmt: str, *args: str) -> Path:
    run = make_run(tmp_path, [f"How do I deal with problem number {i}?" for i in range(8)])
    result = CliRunner().invoke(cli, ["export", str(run), "--format", fmt, *args])
    assert result.exit_code == 0, result.output
    return run / ("hf" if fmt == "hf" else f"{fmt}.jsonl")


@pytest.mark.parametrize("fmt", ["hf", "dpo"])
def test_the_example_loads_hf_and_dpo_exports(tmp_path: Path, fmt: str) -> None:
    data = load_script().load_preferences(exported(tmp_path, fmt, "--sft-share", "0"))
    assert data.num_rows == (7 if fmt == "hf" else 8)  # hf holds one of 8 out for test_prefs
    row = data[0]
    assert row["prompt"][0]["content"].startswith("How do I deal with problem number")
    assert row["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert row["rejected"][0]["role"] == "assistant"


def test_the_example_refuses_what_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a cai export"):
        load_script().load_preferences(tmp_path)


def test_dpo_trainer_trains_on_an_hf_export(tmp_path: Path) -> None:
    out = exported(tmp_path, "hf", "--sft-share", "0", "--test-size", "0.25")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--steps", "2", "--max-length", "128", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == 6 and report["steps"] == 2 and report["model"] == "tiny"
    first, second = report["losses"]
    # The policy starts as its reference: every pair's DPO loss is then exactly log 2.
    assert first == pytest.approx(math.log(2), abs=1e-4)
    # One step later the policy prefers the chosen answers: the gradient reached the weights.
    assert math.isfinite(second) and second < first
    assert math.isfinite(report["train_loss"])


def test_dpo_trainer_trains_on_a_label_export(tmp_path: Path, monkeypatch) -> None:
    """RL-CAI data: a run labelled by a feedback model (the fake server's), exported as the
    labels say, trains a DPO step too; the score columns ride along."""
    from fake_server import FakeServer
    from test_feedback import generate_run

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    with FakeServer() as server:
        run = generate_run(tmp_path, server.url, prompts=8)
        labels = tmp_path / "labels"
        result = CliRunner().invoke(
            cli,
            ["label", str(run), "--out", str(labels), "--provider", "openai",
             "--base-url", f"{server.url}/v1", "--votes", "2"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        cli, ["export", str(labels), "--format", "hf", "--sft-share", "0", "--test-size", "0.25"]
    )
    assert result.exit_code == 0, result.output
    out = labels / "hf"
    data = load_script().load_preferences(out)
    assert data.num_rows >= 2 and data[0]["score_chosen"] == pytest.approx(0.7, abs=0.01)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    trained = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--steps", "1", "--max-length", "128", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    report = json.loads(trained.stdout.strip().splitlines()[-1])
    assert report["steps"] == 1 and all(math.isfinite(x) for x in report["losses"])
