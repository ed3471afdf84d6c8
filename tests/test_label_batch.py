"""`cai label --batch`: AI-feedback votes through the loopback fake's Batch API (OpenAI, with
log-probabilities) and Message Batches (Anthropic, chain of thought), with the guarantees of
`cai generate --batch` (tests/test_batch.py): batch ids journaled, re-attached after SIGKILL,
nothing paid twice, errored requests sent again, half the price, `cai batch status/cancel`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import FIRST_BIAS, PREFERENCE, FakeServer
from test_batch import (
    POLL,
    _batches,
    ctrl_c_while_a_batch_is_open,
    killed_twice_then_resumed,
)
from test_feedback import HARMLESS, generate_run, read_lines, write_prompts

from cai.cli import cli
from cai.rundir import LABELS_FILE

# What the fake feedback model's labels come to: it prefers the revision (response B) with
# 0.70, so log-probability votes give p_a 0.30; chain-of-thought votes are clamped to 0.4-0.6.
EXPECTED_P_A = {"openai": 1 - PREFERENCE, "anthropic": 0.4}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generate run whose revisions the fake feedback model prefers."""
    with FakeServer() as server:
        return generate_run(tmp_path_factory.mktemp("source"), server.url, prompts=16)


def _label(provider: str, server: FakeServer, source: Path, out: Path, *extra: object) -> list:
    base = f"{server.url}/v1" if provider == "openai" else server.url
    args = ["label", source, "--out", out, "--provider", provider, "--base-url", base, *extra]
    return [str(a) for a in args]


def _labels(out: Path) -> dict[str, dict]:
    labels = read_lines(out / LABELS_FILE)
    assert len({label["id"] for label in labels}) == len(labels), "a pair labelled twice"
    return {label["id"]: label for label in labels}


def _calls(out: Path) -> int:
    return len((out / "calls.jsonl").read_text().splitlines())


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_labels_are_the_interactive_labels_at_half_the_cost(
    provider: str, source_run: Path, tmp_path: Path
) -> None:
    runs = {}
    for mode in ("interactive", "batch"):
        with FakeServer() as server:
            out = tmp_path / mode
            args = _label(provider, server, source_run, out, "--votes", 2)
            if mode == "batch":
                args += ["--batch", "--poll-interval", POLL]
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 0, result.output
            manifest = json.loads((out / "manifest.json").read_text())
            runs[mode] = (result.output, manifest, _labels(out))
            if mode == "batch":
                assert {e.api for e in server.log} == {f"{provider}-batch"}  # no direct call
                bodies = [body for b in server.batches.values() for _, body in b["requests"]]
                assert len(bodies) == server.paid_total == _calls(out)
                if provider == "openai":  # the log-probabilities are asked for in the batch
                    assert all(b["logprobs"] is True and b["top_logprobs"] == 10 for b in bodies)
                else:
                    assert all("step by step" in json.dumps(b) for b in bodies)
                    assert not any("logprobs" in b for b in bodies)
    (plain_out, plain, plain_labels), (batch_out, batch, batch_labels) = runs.values()
    assert batch_labels.keys() == plain_labels.keys() and batch_labels
    for pair_id, label in batch_labels.items():
        twin = plain_labels[pair_id]
        assert label["status"] == "ok" and label["position_consistent"]
        assert label["p_a"] == pytest.approx(twin["p_a"], abs=1e-9)
        assert label["p_a"] == pytest.approx(EXPECTED_P_A[provider], abs=0.01)
        assert [v["p_first"] for v in label["votes"]] == [v["p_first"] for v in twin["votes"]]
        if provider == "anthropic":
            assert label["mode"] == "cot"
            assert {v["p_first"] for v in label["votes"]} <= {0.4, 0.6}
        else:
            assert label["mode"] == "logprobs"
            ab = next(v["p_first"] for v in label["votes"] if v["order"] == "ab")
            assert ab == pytest.approx(1 - PREFERENCE + FIRST_BIAS)
    # The same tokens, priced at half; the manifest and the summary say batches were used.
    assert batch["stats"]["usage"] == plain["stats"]["usage"]
    assert batch["stats"]["cost_usd"] == pytest.approx(plain["stats"]["cost_usd"] / 2, abs=1e-6)
    assert batch["stats"]["cost_usd"] > 0
    assert batch["config"]["batch"]["batches"] >= 1 and "batch" not in plain["config"]
    assert batch["settings"] == plain["settings"]
    assert "Priced at the batch rate" in batch_out and "Batches:" not in plain_out
    print(
        f"\n{provider}: {len(batch_labels)} pairs, cost {plain['stats']['cost_usd']} -> "
        f"{batch['stats']['cost_usd']} (batch)"
    )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_killed_twice_while_batches_are_open_then_resumed(
    provider: str, source_run: Path, tmp_path: Path
) -> None:
    """SIGKILL twice while a label run's batch is open, resume: every pair once, every request
    paid once, and the requests that came back errored went out again."""
    out = tmp_path / "labels"
    pairs = len(read_lines(source_run / "records.jsonl"))
    # Anthropic's bodies carry no seed: two votes drawing one principle would be one body,
    # which the fake's count by body could not tell from a request bought twice.
    votes = 2 if provider == "openai" else 1
    # killed_twice_then_resumed holds the batches open until both kills have landed.
    with FakeServer(batch_error_rate=0.1, seed=3) as server:
        args = _label(provider, server, source_run, out, "--votes", votes, "--batch")
        args += ["--poll-interval", POLL]
        open_before, errored = killed_twice_then_resumed(args, out, server)
        labels = _labels(out)
        assert 0 < len(labels) <= pairs
        assert all(label["status"] == "ok" for label in labels.values())
        assert all(
            label["p_a"] == pytest.approx(EXPECTED_P_A[provider], abs=0.01)
            for label in labels.values()
        )
        # Every vote asked and journaled once.
        assert _calls(out) == 2 * votes * len(labels)
        journal = Counter((c["id"], c["step"]) for c in read_lines(out / "calls.jsonl"))
        assert set(journal.values()) == {1}
        print(
            f"\n{provider}: {len(labels)} pairs, {len(_batches(out))} batches, "
            f"{server.paid_total} requests paid (most for one body: {max(server.paid.values())}), "
            f"{errored} errored and resent, {len(open_before)} open after the kills"
        )


def test_a_prompts_source_batches_the_policy_responses_then_the_votes(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 5)
    out = tmp_path / "labels"
    with FakeServer() as server:
        args = _label("openai", server, prompts, out, "--constitution", HARMLESS)
        args += ["--responses", "3", "--votes", "1", "--batch", "--poll-interval", POLL]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert {e.api for e in server.log} == {"openai-batch"}
        waves = {}
        for b in _batches(out):
            bodies = [body for _, body in server.batches[b["id"]]["requests"]]
            waves.setdefault(b["wave"], []).extend(bodies)
        # First every prompt's responses, then every pair's votes, with log-probabilities.
        assert sorted(waves) == [1, 2]
        assert len(waves[1]) == 5 * 3 and not any(b.get("logprobs") for b in waves[1])
        assert len(waves[2]) == 5 * 3 * 2 and all(b["logprobs"] for b in waves[2])
        assert len(_labels(out)) == 5 * 3 and max(server.paid.values()) == 1


def test_ctrl_c_then_status_cancel_and_resume_of_a_label_run(
    source_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels"
    with FakeServer(hold_batches=True) as server:
        args = _label("openai", server, source_run, out, "--votes", 1, "--batch")
        args += ["--poll-interval", POLL]
        err, batch_id = ctrl_c_while_a_batch_is_open(args, out)
        assert "To re-attach: cai label" in err
        requests = len(server.batches[batch_id]["requests"])

        # An interactive resume would buy the batch's votes again: refused.
        plain = _label("openai", server, source_run, out, "--votes", 1)
        result = CliRunner().invoke(cli, plain)
        assert result.exit_code == 2 and "--batch first" in result.output

        result = CliRunner().invoke(cli, ["batch", "status", str(out)])
        assert result.exit_code == 0, result.output
        assert batch_id in result.output and "in_progress" in result.output
        assert f"total {requests}" in result.output

        result = CliRunner().invoke(cli, ["batch", "cancel", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{batch_id}  cancelled" in result.output
        assert "Resume with the same cai label command" in result.output

        # Resumed: the canceled votes go out again, nothing was paid for them before.
        server.hold_batches = False
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert len(_labels(out)) == requests // 2
        assert max(server.paid.values()) == 1 and server.paid_total == _calls(out) == requests

        # Then interactively: every pair is done, nothing is bought.
        result = CliRunner().invoke(cli, plain)
        assert result.exit_code == 0, result.output
        assert server.paid_total == requests
