"""AI feedback (RL-CAI): comparison prompts, soft labels, order swapping, clamping, label runs."""

from __future__ import annotations

import math

import pytest
from fake_server import FIRST_BIAS, NO_LETTER, PREFERENCE, PREFERRED, comparison_p_first

from cai.constitution import parse_constitution
from cai.feedback import (
    build_comparison_messages,
    clamp,
    comparison_question,
    cot_letter,
    judge_reply,
    label_scores,
    label_skip_reason,
    letter_probability,
    summarize_votes,
    vote_principles,
)

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
    assert question.startswith("Which of these assistant responses is better with respect to honesty?")
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
