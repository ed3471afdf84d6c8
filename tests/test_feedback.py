"""AI feedback (RL-CAI): comparison prompts, soft labels, order swapping, clamping, label runs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import (
    FIRST_BIAS,
    NO_LETTER,
    PREFERENCE,
    PREFERRED,
    FakeServer,
    comparison_p_first,
)
from procs import count_lines, kill_after_lines

from cai.cli import cli
from cai.constitution import parse_constitution
from cai.feedback import (
    LabelConfig,
    PairItem,
    build_comparison_messages,
    clamp,
    comparison_question,
    cot_letter,
    judge_reply,
    label_scores,
    label_skip_reason,
    letter_probability,
    run_labels,
    summarize_votes,
    vote_principles,
)
from cai.providers import create_provider
from cai.rundir import LABELS_FILE, RunStore

CONSTITUTION = """\
## Principle: harm
Weight: 3
Critique: Identify ways the response is harmful.
Revision: Rewrite the response to remove harmful content.
Comparison: Which of these assistant responses is less harmful?

## Principle: honesty
Critique: Identify claims the response cannot support.
Revision: Rewrite the response so every claim is supported.
"""


def position(token: str, alternatives: dict[str, float]) -> dict:
    return {
        "token": token,
        "logprob": alternatives.get(token, -1.0),
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives.items()],
    }


def test_the_comparison_prompt_has_the_papers_shape() -> None:
    prompt = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Which lock?"},
        {"role": "user", "content": "My own front door."},
    ]
    [message] = build_comparison_messages(
        prompt, "Call a locksmith.", "Use a tension wrench.\nThen rake.", "Which is safer?"
    )
    assert message["role"] == "user"
    lines = message["content"].splitlines()
    assert lines[0] == "Consider the following conversation between a human and an assistant:"
    assert "Human: How do I pick a lock?" in lines
    assert "Assistant: Which lock?" in lines
    assert "Be helpful." not in message["content"]
    at = lines.index("Options:")
    assert lines[at - 1] == "Which is safer?"
    assert lines[at + 1] == "(A) Call a locksmith."
    assert lines[at + 2] == "(B) Use a tension wrench."
    assert lines[-1] == "The answer is:"
    [cot] = build_comparison_messages(prompt, "a", "b", "Which?", cot=True)
    assert "Let's think step by step" in cot["content"].splitlines()[-1]


def test_a_principle_asks_its_own_comparison_or_a_default_from_name_and_critique() -> None:
    c = parse_constitution(CONSTITUTION, path="c.md")
    harm, honesty = c.principles
    assert harm.comparison == "Which of these assistant responses is less harmful?"
    assert comparison_question(harm) == harm.comparison
    assert honesty.comparison is None
    question = comparison_question(honesty)
    assert question.startswith(
        "Which of these assistant responses is better with respect to honesty?"
    )
    assert "Identify claims the response cannot support." in question


def test_an_empty_comparison_is_a_problem_with_its_line() -> None:
    from cai.errors import ConstitutionError

    with pytest.raises(ConstitutionError) as info:
        parse_constitution("## Principle: a\nCritique: c\nRevision: r\nComparison:\n", path="c.md")
    [problem] = info.value.problems
    assert problem.line == 4 and "empty 'Comparison:'" in problem.message


def test_the_soft_label_is_the_softmax_over_the_two_letters_at_the_answer() -> None:
    p = math.log
    logprobs = [
        position(" (", {" (": p(0.9), " The": p(0.05), " B": p(0.01)}),
        position("A", {"A": p(0.6), " A": p(0.1), "B": p(0.2), "C": p(0.1)}),
        position(")", {")": 0.0}),
    ]
    # Letters spelled two ways add up; " B" before the answer is not the answer.
    assert letter_probability(logprobs) == pytest.approx(0.7 / 0.9)
    # With no letter written, the first position holding one among its top tokens counts.
    no_answer_token = [position(" (", {" (": p(0.9), "B": p(0.05), "A": p(0.05)})]
    assert letter_probability(no_answer_token) == pytest.approx(0.5)
    assert letter_probability([position(" I", {" I": p(0.9), " We": p(0.1)})]) is None
    assert letter_probability(None) is None
    # A letter missing from the top tokens counts as probability 0.
    assert letter_probability([position("B", {"B": p(0.7), "C": p(0.2)})]) == 0.0


def test_chain_of_thought_takes_the_last_letter_and_clamps() -> None:
    text = "Option (A) is terse; option (B) is kinder.\nSo the answer is (B)"
    assert cot_letter(text) == "B"
    assert cot_letter("Neither A nor B.") is None
    assert judge_reply(text, "stop", None, cot=True, bounds=(0.4, 0.6)) == (0.4, None)
    assert judge_reply("(A)", "stop", None, cot=True, bounds=(0.4, 0.6)) == (0.6, None)
    assert judge_reply("(A)", "stop", None, cot=True, bounds=None) == (1.0, None)
    # Cut off before its conclusion: a letter in the reasoning is not an answer.
    assert judge_reply("Option (A) is", "length", None, cot=True, bounds=None) == (None, "length")
    assert clamp(0.9, (0.2, 0.8)) == 0.8 and clamp(0.1, (0.2, 0.8)) == 0.2
    assert clamp(0.5, None) == 0.5


def test_a_reply_with_no_letter_is_a_problem_never_a_guess() -> None:
    assert judge_reply("I cannot decide.", "stop", None, cot=True, bounds=(0.4, 0.6)) == (
        None,
        "no_answer",
    )
    flat = [position(" I", {" I": -0.1, " We": -2.0})]
    assert judge_reply(" I", "stop", flat, cot=False, bounds=None) == (None, "no_answer")
    assert judge_reply("", "refusal", None, cot=False, bounds=None) == (None, "refusal")
    # A log-probability vote may stop at the token limit: its first tokens hold the answer.
    answer = [position("A", {"A": math.log(0.8), "B": math.log(0.2)})]
    p, problem = judge_reply("A because", "length", answer, cot=False, bounds=None)
    assert p == pytest.approx(0.8) and problem is None


def vote(k: int, order: str, p_first: float | None) -> dict:
    return {"vote": k, "principle": "harm", "order": order, "p_first": p_first, "reply": ""}


def test_averaging_both_orders_cancels_a_bias_towards_the_first_option() -> None:
    # A is better with 0.70; the model adds 0.15 to whatever is shown first.
    votes = [vote(1, "ab", 0.85), vote(1, "ba", 0.45), vote(2, "ab", 0.85), vote(2, "ba", 0.45)]
    p_a, consistent = summarize_votes(votes)
    assert p_a == pytest.approx(0.70) and consistent
    # Both orders prefer whatever is shown first: inconsistent.
    p_a, consistent = summarize_votes([vote(1, "ab", 0.8), vote(1, "ba", 0.8)])
    assert p_a == pytest.approx(0.5) and not consistent
    # An unanswered order leaves its vote unchecked, and the mean over the answered ones.
    p_a, consistent = summarize_votes([vote(1, "ab", 0.9), vote(1, "ba", None)])
    assert p_a == pytest.approx(0.9) and not consistent
    assert summarize_votes([vote(1, "ab", None), vote(1, "ba", None)]) == (None, False)


def test_votes_draw_principles_by_weight_seeded_by_seed_and_pair() -> None:
    c = parse_constitution(CONSTITUTION, path="c.md")
    draws = vote_principles(c, 400, 0, "abc")
    assert draws == vote_principles(c, 400, 0, "abc")
    assert draws != vote_principles(c, 400, 1, "abc")
    assert draws != vote_principles(c, 400, 0, "abd")
    share = sum(p.name == "harm" for p in draws) / len(draws)
    assert 0.65 < share < 0.85  # weight 3 of 4
    # The first votes do not change when more are asked for.
    assert vote_principles(c, 2, 0, "abc") == draws[:2]


def test_label_scores_and_skip_reasons() -> None:
    assert label_scores(0.7) == {
        "chosen_is_a": True,
        "score_chosen": 0.7,
        "score_rejected": 0.3,
        "margin": 0.2,
    }
    assert label_scores(0.25)["chosen_is_a"] is False
    assert label_scores(0.25)["score_chosen"] == 0.75
    ok = {"status": "ok", "p_a": 0.7, "position_consistent": True}
    assert label_skip_reason(ok) is None
    assert label_skip_reason(ok, min_margin=0.25) == "low_margin"
    assert label_skip_reason({**ok, "position_consistent": False}) == "inconsistent"
    assert label_skip_reason({**ok, "position_consistent": False}, keep_inconsistent=True) is None
    assert label_skip_reason({**ok, "p_a": 0.5}, keep_inconsistent=True) == "low_margin"
    assert label_skip_reason({**ok, "status": "failed", "p_a": None}) == "unlabelled"


def test_the_fake_feedback_model_has_a_known_preference_and_bias() -> None:
    def ask(first: str, second: str) -> float | None:
        [m] = build_comparison_messages([{"role": "user", "content": "q"}], first, second, "Q?")
        return comparison_p_first(m["content"])

    assert ask(f"{PREFERRED} good", "Answer to: q") == pytest.approx(PREFERENCE + FIRST_BIAS)
    assert ask("Answer to: q", f"{PREFERRED} good") == pytest.approx(1 - PREFERENCE + FIRST_BIAS)
    assert ask("same", "same") == pytest.approx(0.5 + FIRST_BIAS)
    assert comparison_p_first("not a comparison") is None
    assert NO_LETTER not in "(A) x"


# -- label runs against the fake server ------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = ROOT / "constitutions" / "harmless.md"


@pytest.fixture
def server(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """The conftest's fake server, with an Anthropic key too."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    return server


def invoke(*args: object) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def write_prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"prompt": f"How do I deal with problem {i}?"}) + "\n" for i in range(n))
    )
    return path


def generate_run(tmp_path: Path, url: str, prompts: int = 6) -> Path:
    """A generate run against the fake server: one round, revisions the fake prefers."""
    run = tmp_path / "run"
    invoke(
        "generate", "--constitution", HARMLESS, "--prompts", write_prompts(tmp_path / "p.jsonl", prompts),
        "--out", run, "--provider", "openai", "--base-url", f"{url}/v1", "--rounds", "1",
    )  # fmt: skip
    return run


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_both_orders_cancel_the_bias_and_exports_follow_the_labels(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url)
    labels_dir = tmp_path / "labels"
    server.reset()
    result = invoke(
        "label", run, "--out", labels_dir, "--provider", "openai",
        "--base-url", f"{server.url}/v1", "--votes", "3",
    )  # fmt: skip
    labels = read_lines(labels_dir / LABELS_FILE)
    records = {r["id"]: r for r in read_lines(run / "records.jsonl")}
    pairs = [r for r in records.values() if r["rounds"][0]["revision"]]
    assert {label["id"] for label in labels} == {r["id"] for r in pairs} and labels
    for label in labels:
        record = records[label["id"]]
        assert label["response_a"] == record["initial_response"]
        assert label["response_b"] == record["rounds"][0]["revision"]
        assert label["prompt"] == record["prompt"] and label["status"] == "ok"
        # The fake prefers the revision with 0.70 and adds 0.15 to whatever is shown first.
        assert label["p_a"] == pytest.approx(1 - PREFERENCE, abs=0.01)
        assert label["position_consistent"] is True
        assert [(v["vote"], v["order"]) for v in label["votes"]] == [
            (k, o) for k in (1, 2, 3) for o in ("ab", "ba")
        ]
        firsts = {v["order"]: v["p_first"] for v in label["votes"]}
        assert firsts["ab"] == pytest.approx(1 - PREFERENCE + FIRST_BIAS)
        assert firsts["ba"] == pytest.approx(PREFERENCE + FIRST_BIAS)
        assert all(v["reply"] in (" (A)", " (B)") for v in label["votes"])
    # Every request asked for log-probabilities: 2 x votes per pair.
    bodies = [e.body for e in server.log]
    assert len(bodies) == 6 * len(labels)
    assert all(b["logprobs"] is True and b["top_logprobs"] == 10 for b in bodies)
    assert "prefers the revision in" in result.stderr

    exported = invoke("export", labels_dir, "--format", "dpo")
    rows = read_lines(labels_dir / "dpo.jsonl")
    assert len(rows) == len(labels), exported.stderr
    for row in rows:
        record = records[row["id"]]
        assert row["chosen"] == [{"role": "assistant", "content": record["rounds"][0]["revision"]}]
        assert row["rejected"] == [{"role": "assistant", "content": record["initial_response"]}]
        assert row["score_chosen"] == pytest.approx(PREFERENCE, abs=0.01)
        assert row["score_rejected"] == pytest.approx(1 - PREFERENCE, abs=0.01)
        assert row["margin"] == pytest.approx(PREFERENCE - 0.5, abs=0.01)
    card = (labels_dir / "dpo.README.md").read_text(encoding="utf-8")
    assert "## AI-feedback labels" in card and "Order consistency" in card

    # --min-margin drops every pair (margin 0.2), counted by the command and on the card.
    dropped = invoke("export", labels_dir, "--format", "dpo", "--min-margin", "0.25")
    assert f"low_margin {len(labels)}" in dropped.stderr
    assert read_lines(labels_dir / "dpo.jsonl") == []

    # The SL-CAI pairs checked by the labels: the same pairs, with the score columns.
    invoke("export", run, "--labels", labels_dir, "--format", "dpo", "--out", tmp_path / "c.jsonl")
    checked = read_lines(tmp_path / "c.jsonl")
    assert {r["id"] for r in checked} == {r["id"] for r in rows}
    assert all(r["score_chosen"] == pytest.approx(PREFERENCE, abs=0.01) for r in checked)

    # The hf export loads with datasets, score columns typed.
    import datasets

    invoke("export", labels_dir, "--format", "hf", "--sft-share", "0", "--test-size", "0")
    data = datasets.load_from_disk(str(labels_dir / "hf"))["train_prefs"]
    assert data.num_rows == len(labels)
    assert data.features["score_chosen"].dtype == "float64"
    assert data[0]["score_chosen"] == pytest.approx(PREFERENCE, abs=0.01)

    stats = invoke("stats", labels_dir, "--json")
    data = json.loads(stats.output)
    assert data["kind"] == "label" and data["consistency"] == 1.0 and data["agreement"] == 1.0
    assert data["mean_p_first"] == pytest.approx(0.5 + FIRST_BIAS, abs=0.01)


def test_labels_that_prefer_the_first_answer_drop_sl_cai_pairs(tmp_path: Path) -> None:
    from cai.feedback import check_with_labels
    from cai.filters import FilterResult, Verdict
    from cai.records import Record

    def verdict(i: int) -> Verdict:
        record = Record(id=f"r{i}", prompt=[], initial_response=f"first {i}")
        return Verdict(record, "pref", response=f"revised {i}", chosen_round=1)

    def label(i: int, p_a: float, consistent: bool = True, b: str = "") -> dict:
        return {
            "id": f"r{i}", "status": "ok", "p_a": p_a, "position_consistent": consistent,
            "response_a": f"first {i}", "response_b": b or f"revised {i}", "chosen_round": 1,
        }  # fmt: skip

    filtered = FilterResult(kept=[verdict(i) for i in range(6)])
    labels = [label(0, 0.2), label(1, 0.8), label(2, 0.3, False), label(4, 0.3, b="other"),
              label(5, 0.45)]  # fmt: skip
    scores = check_with_labels(filtered, labels, min_margin=0.1)
    assert [v.record.id for v in filtered.kept] == ["r0"]
    assert scores == {"r0": {"score_chosen": 0.8, "score_rejected": 0.2, "margin": 0.3}}
    assert filtered.removed == Counter(
        first_preferred=1, inconsistent=1, unlabelled=2, low_margin=1
    )


def test_chain_of_thought_labels_from_an_anthropic_style_model_are_clamped(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url, prompts=4)
    labels_dir = tmp_path / "labels"
    server.reset()
    result = invoke(
        "label", run, "--out", labels_dir, "--provider", "anthropic", "--base-url", server.url,
        "--votes", "2",
    )  # fmt: skip
    assert "no log-probabilities; the votes use chain of thought" in result.stderr
    labels = read_lines(labels_dir / LABELS_FILE)
    assert labels and all(label["mode"] == "cot" for label in labels)
    for label in labels:
        # Each vote is certain; clamped to 0.4-0.6, both orders agree on the revision.
        assert {v["p_first"] for v in label["votes"]} <= {0.4, 0.6}
        assert label["p_a"] == pytest.approx(0.4) and label["position_consistent"]
        assert all(v["reply"].rstrip().endswith(("(A)", "(B)")) for v in label["votes"])
    assert all(e.api == "anthropic" and "step by step" in json.dumps(e.body) for e in server.log)
    invoke("export", labels_dir, "--format", "dpo")
    rows = read_lines(labels_dir / "dpo.jsonl")
    assert rows and all(r["score_chosen"] == pytest.approx(0.6) for r in rows)
    # --clamp widens the bounds; the run refuses to resume with other settings.
    refused = CliRunner().invoke(
        cli, ["label", str(run), "--out", str(labels_dir), "--provider", "anthropic",
              "--base-url", server.url, "--votes", "2", "--clamp", "0.2,0.8"],
    )  # fmt: skip
    assert refused.exit_code == 2 and "clamp was [0.4, 0.6], now [0.2, 0.8]" in refused.output


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_reply_with_no_letter_is_a_problem_on_its_vote_never_a_guess(
    tmp_path: Path, server: FakeServer, provider: str
) -> None:
    from cai.constitution import load_constitution

    base = f"{server.url}/v1" if provider == "openai" else server.url
    model = create_provider(provider, base_url=base, model="fake")
    items = [
        PairItem("00000000000000aa", [{"role": "user", "content": "q"}], [f"x {NO_LETTER}", "y"]),
        PairItem("00000000000000bb", [{"role": "user", "content": "q"}], ["x", f"{PREFERRED} y"]),
    ]
    store = RunStore(tmp_path / "labels", LABELS_FILE)
    stats = asyncio.run(
        run_labels(items, load_constitution(HARMLESS), model, LabelConfig(votes=2), store)
    )
    lines = {line["id"]: line for line in read_lines(store.records_path)}
    silent = lines["00000000000000aa"]
    assert silent["status"] == "skipped" and silent["error"]["kind"] == "no_answer"
    assert silent["p_a"] is None and not silent["position_consistent"]
    assert all(v["p_first"] is None and v["problem"] == "no_answer" for v in silent["votes"])
    assert len(silent["votes"]) == 4
    answered = lines["00000000000000bb"]
    assert answered["status"] == "ok" and answered["p_a"] == pytest.approx(
        1 - PREFERENCE if provider == "openai" else 0.4, abs=0.01
    )
    assert stats.problem_votes == 4 and stats.done == 1


def test_a_prompts_file_samples_responses_and_labels_every_pair(
    tmp_path: Path, server: FakeServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    labels_dir = tmp_path / "labels"
    invoke(
        "label", prompts, "--out", labels_dir, "--constitution", HARMLESS, "--responses", "3",
        "--votes", "1", "--provider", "openai", "--base-url", f"{server.url}/v1",
    )  # fmt: skip
    labels = read_lines(labels_dir / LABELS_FILE)
    assert len(labels) == 3 * 3
    assert Counter(label["id"].split(":")[1] for label in labels) == {"0-1": 3, "0-2": 3, "1-2": 3}
    assert all(label["id"].startswith(label["source_id"] + ":") for label in labels)
    responses = [e for e in server.log if not e.body.get("logprobs")]
    votes = [e for e in server.log if e.body.get("logprobs")]
    assert len(responses) == 3 * 3 and len(votes) == 9 * 2
    assert all(e.body["temperature"] == 1.0 for e in responses)
    # Resuming a finished run buys nothing.
    server.reset()
    again = invoke(
        "label", prompts, "--out", labels_dir, "--constitution", HARMLESS, "--responses", "3",
        "--votes", "1", "--provider", "openai", "--base-url", f"{server.url}/v1",
    )  # fmt: skip
    assert server.requests == 0 and "3 items already done" in again.stderr


def test_sigkill_while_labelling_then_resume_labels_every_pair_once(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url, prompts=24)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    labels_dir = tmp_path / "labels"
    with FakeServer(latency=0.03) as server:
        command = [sys.executable, "-m", "cai", "label", str(run), "--out", str(labels_dir),
                   "--provider", "openai", "--base-url", f"{server.url}/v1", "--votes", "2",
                   "--concurrency", "4"]  # fmt: skip
        for wait_for in (5, 12):
            kill_after_lines(command, labels_dir / "calls.jsonl", wait_for, env, timeout=300)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        bodies = Counter(json.dumps(e.body, sort_keys=True) for e in server.log)
    labels = read_lines(labels_dir / LABELS_FILE)
    ids = Counter(label["id"] for label in labels)
    assert all(n == 1 for n in ids.values())
    pairs = [r for r in read_lines(run / "records.jsonl") if r["rounds"][0]["revision"]]
    assert set(ids) == {r["id"] for r in pairs}
    assert all(label["p_a"] == pytest.approx(1 - PREFERENCE, abs=0.01) for label in labels)
    # Every vote was asked; a vote was bought twice only when it was in flight at a kill
    # (at most --concurrency of them each time), never once its reply was on disk.
    assert len(bodies) == 4 * len(pairs)
    bought_twice = sum(n - 1 for n in bodies.values())
    assert bought_twice <= 2 * 4
    journal = Counter((c["id"], c["step"]) for c in read_lines(labels_dir / "calls.jsonl"))
    assert set(journal.values()) == {1} and len(journal) == 4 * len(pairs)


@pytest.mark.slow
def test_the_bundled_model_labels_offline_with_llama_cpp_log_probabilities(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url, prompts=2)
    labels_dir = tmp_path / "labels"
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    result = subprocess.run(
        [sys.executable, "-m", "cai", "label", str(run), "--out", str(labels_dir),
         "--provider", "local", "--votes", "1", "--limit", "1"],
        env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [label] = read_lines(labels_dir / LABELS_FILE)
    assert label["mode"] == "logprobs" and len(label["votes"]) == 2
    journal = read_lines(labels_dir / "calls.jsonl")
    # llama.cpp's log-probabilities are in the journal, top tokens at each position.
    assert all(len(c["logprobs"][0]["top_logprobs"]) == 10 for c in journal)
    for vote in label["votes"]:
        assert vote["p_first"] is None or 0 <= vote["p_first"] <= 1
        assert vote["p_first"] is not None or vote["problem"] == "no_answer"
    export = subprocess.run(
        [sys.executable, "-m", "cai", "export", str(labels_dir), "--format", "dpo",
         "--keep-inconsistent"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    import datasets

    data = datasets.load_dataset("json", data_files=str(labels_dir / "dpo.jsonl"), split="train")
    assert data.num_rows <= 1


def test_constitution_show_lists_each_principles_comparison_question(tmp_path: Path) -> None:
    path = tmp_path / "c.md"
    path.write_text(CONSTITUTION, encoding="utf-8")
    result = invoke("constitution", "show", path)
    lines = result.output.splitlines()
    assert (
        "Comparison questions (cai label): 1 from 'Comparison:', 1 built from the name and critique"
    ) in lines
    assert "  harm: Which of these assistant responses is less harmful?" in lines
    assert any(line.startswith("  honesty (default): Which of these") for line in lines)
    checked = invoke("constitution", "check", path)
    assert "ok - 'c', 2 principles" in checked.output


def test_ctrl_c_while_labelling_keeps_every_paid_vote_then_resume_finishes(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url, prompts=24)
    labels_dir = tmp_path / "labels"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with FakeServer(latency=0.05) as slow:
        command = [sys.executable, "-m", "cai", "label", str(run), "--out", str(labels_dir),
                   "--provider", "openai", "--base-url", f"{slow.url}/v1", "--votes", "2",
                   "--concurrency", "6"]  # fmt: skip
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while count_lines(labels_dir / "calls.jsonl") < 10 and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 130, stderr[-2000:]
        assert "Stopping: finishing calls in flight" in stderr
        manifest = json.loads((labels_dir / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["status"] == "interrupted" and manifest["kind"] == "label"
        asked = len(slow.log)
        # Every call that went out was answered and journaled before the process ended.
        assert count_lines(labels_dir / "calls.jsonl") == asked
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        bodies = Counter(json.dumps(e.body, sort_keys=True) for e in slow.log)
    assert set(bodies.values()) == {1}  # no vote bought twice
    labels = read_lines(labels_dir / LABELS_FILE)
    assert len(labels) == len({label["id"] for label in labels}) == len(bodies) // 4


def test_shards_split_the_pairs_and_a_finished_run_buys_nothing_again(
    tmp_path: Path, server: FakeServer
) -> None:
    run = generate_run(tmp_path, server.url, prompts=12)
    base = ["--provider", "openai", "--base-url", f"{server.url}/v1", "--votes", "1"]
    ids = []
    for k in (1, 2):
        out = tmp_path / f"labels{k}"
        invoke("label", run, "--out", out, "--shard", f"{k}/2", *base)
        shard = [label["id"] for label in read_lines(out / LABELS_FILE)]
        assert all(int(i, 16) % 2 == k - 1 for i in shard)
        ids += shard
    everything = tmp_path / "all"
    invoke("label", run, "--out", everything, *base)
    assert sorted(ids) == sorted(label["id"] for label in read_lines(everything / LABELS_FILE))
    server.reset()
    again = invoke("label", run, "--out", everything, *base)
    assert server.requests == 0 and f"{len(ids)} items already done" in again.stderr

    # The shards merge into the same labels as the whole run, a label run that resumes.
    merged = tmp_path / "merged"
    shards = [tmp_path / "labels1", tmp_path / "labels2", tmp_path / "labels2"]
    result = invoke("merge", *shards, "--out", merged)
    twice = len(read_lines(shards[-1] / LABELS_FILE))
    assert f"{len(ids)} records ({len(ids)} ok), {twice} duplicates dropped" in result.stderr

    def outcome(path: Path) -> dict:
        return {x["id"]: (x["p_a"], x["votes"]) for x in read_lines(path / LABELS_FILE)}

    assert outcome(merged) == outcome(everything)
    assert len(read_lines(merged / LABELS_FILE)) == len(ids)
    assert json.loads((merged / "manifest.json").read_text())["kind"] == "label"
    again = invoke("label", run, "--out", merged, *base)
    assert server.requests == 0 and f"{len(ids)} items already done" in again.stderr
    invoke("export", merged, "--format", "dpo")
    assert len(read_lines(merged / "dpo.jsonl")) == len(ids)
    # A label run and a generate run are not one job.
    mixed = CliRunner().invoke(cli, ["merge", *map(str, (everything, run)), "--out", "-"])
    assert mixed.exit_code == 2 and "merge runs of one kind" in mixed.stderr


def test_policy_factory_defaults_to_the_feedback_model_and_its_url() -> None:
    from fakes import FakeProvider

    from cai.feedback import policy_factory

    feedback = FakeProvider()  # model "fake-model"
    url = "http://127.0.0.1:9/v1"
    common = {"provider": "openai", "base_url": url, "timeout": 5.0}
    # No policy of its own, or the same model at the same URL: the feedback model writes.
    assert policy_factory(feedback, **common) is None
    assert policy_factory(feedback, **common, policy_model="fake-model") is None
    # Another model of the same provider: the same server unless told otherwise.
    other = policy_factory(feedback, **common, policy_model="fake-policy")(connections=4)
    assert (other.name, other.model, str(other.base_url).rstrip("/")) == (
        "openai",
        "fake-policy",
        url,
    )
    moved = policy_factory(
        feedback, **common, policy_model="fake-policy", policy_base_url="http://127.0.0.1:8/v1"
    )
    assert moved.keywords["base_url"] == "http://127.0.0.1:8/v1"
    # Another provider: that provider's own URL, not the feedback model's.
    assert (
        policy_factory(feedback, **common, policy_provider="anthropic").keywords["base_url"] is None
    )
