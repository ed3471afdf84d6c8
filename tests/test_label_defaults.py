"""`cai label RUN` judges with the source run's provider, model and base URL unless a flag says
otherwise, from the CLI and from Python; the summary says which model judged (issue 21, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer

import cai
from cai.cli import cli

MODEL = "fake-gpt"


@pytest.fixture
def prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    return path


def _generate(server: FakeServer, prompts: Path, constitution: Path, tmp_path: Path) -> Path:
    """A run in tmp_path/run made with MODEL on `server`."""
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "generate", "--constitution", str(constitution), "--prompts", str(prompts),
        "--provider", "openai", "--model", MODEL, "--base-url", server.url + "/v1",
        "--rounds", "1", "--max-tokens", "64", "--out", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def _label(run: Path, out: Path, *flags: str) -> Result:
    """`cai label RUN --out OUT --votes 1 FLAGS`, which succeeds."""
    result = CliRunner().invoke(cli, ["label", str(run), "--out", str(out), "--votes", "1", *flags])
    assert result.exit_code == 0, result.output
    return result


def _models(server: FakeServer, since: int) -> list[str]:
    return [e.body.get("model") for e in server.log[since:] if e.api == "openai"]


def test_label_with_no_provider_flags_uses_the_runs_server(
    tmp_path: Path, prompts: Path, mini_constitution: Path
) -> None:
    with FakeServer() as server:
        run = _generate(server, prompts, mini_constitution, tmp_path)
        before = len(server.log)
        out = tmp_path / "labels"
        result = _label(run, out)
        sent = _models(server, before)
    labels = (out / "labels.jsonl").read_text().splitlines()
    # 1 vote a pair, asked in both orders: every call to the run's server and model.
    assert labels and sent == [MODEL] * 2 * len(labels)
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["provider"], config["model"]) == ("openai", MODEL)
    assert config["base_url"] == server.url + "/v1"
    assert f"Feedback model: openai {MODEL} at {server.url}/v1, from the source run" in (
        result.stderr
    )
    assert f"Judged by: openai {MODEL} at {server.url}/v1" in result.stderr


def test_label_flags_override_the_runs_model(
    tmp_path: Path, prompts: Path, mini_constitution: Path
) -> None:
    with FakeServer() as server:
        run = _generate(server, prompts, mini_constitution, tmp_path)
        before = len(server.log)
        result = _label(run, tmp_path / "labels", "--model", "judge-x")
        sent = _models(server, before)
    # The model flag wins; the provider and URL still come from the run.
    assert sent and set(sent) == {"judge-x"}
    assert f"Judged by: openai judge-x at {server.url}/v1" in result.stderr


def test_python_label_defaults_to_the_runs_model(
    tmp_path: Path, prompts: Path, mini_constitution: Path
) -> None:
    with FakeServer() as server:
        run = _generate(server, prompts, mini_constitution, tmp_path)
        before = len(server.log)
        labelled = cai.label(cai.load(run), out=tmp_path / "labels", votes=1, progress=False)
        sent = _models(server, before)
    labels = (labelled.dir / "labels.jsonl").read_text().splitlines()
    assert labels and sent == [MODEL] * 2 * len(labels)
    assert labelled.manifest.config["base_url"] == server.url + "/v1"
