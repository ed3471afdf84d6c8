"""AI feedback (RL-CAI): a feedback model compares two responses under a principle.

The method follows Bai et al. 2022, section 4, with Lee et al. 2023's order swapping:

- the comparison prompt shows the conversation, one principle phrased as a choice, then
  `Options:` with `(A) ...` and `(B) ...` lines and `The answer is:`;
- with log-probabilities, the vote is the softmax over the two option letters, read at the
  first output position where a letter is among the top tokens;
- without them (or with chain of thought), the model reasons and ends with `(A)` or `(B)`;
  such votes are nearly certain and are clamped (to 40-60% by default);
- each vote draws its own principle by weight, and is asked in both orders, so a model's
  taste for whichever option comes first cancels out;
- a reply with no answer letter is a problem recorded on the vote, never a guess.

The functions here are pure, over plain dicts; `run_labels` runs them through the pipeline's
call engine (journal, resume, lock, Ctrl-C, shard). docs/feedback.md has the details.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from cai.constitution import Constitution, Principle

__all__ = [
    "ANSWER_PROMPT",
    "COMPARISON_INTRO",
    "COT_REQUEST",
    "ORDERS",
    "build_comparison_messages",
    "clamp",
    "comparison_question",
    "cot_letter",
    "judge_reply",
    "label_scores",
    "label_skip_reason",
    "letter_probability",
    "p_a_of",
    "render_conversation",
    "summarize_votes",
    "vote_principles",
]

Message = dict[str, str]

COMPARISON_INTRO = "Consider the following conversation between a human and an assistant:"
ANSWER_PROMPT = "The answer is:"
COT_REQUEST = (
    "Let's think step by step. Explain your reasoning briefly, then end your reply with the "
    "better option on its own line, written as (A) or (B)."
)
# "ab": response A shown as option (A); "ba": response B shown as option (A).
ORDERS = ("ab", "ba")
_ROLES = {"user": "Human", "assistant": "Assistant"}
_COT_ANSWER = re.compile(r"\(([AB])\)")
_LETTER = re.compile(r"^\W*([AB])\W*$")


def comparison_question(principle: Principle) -> str:
    """The question the feedback model answers: the principle's `Comparison:`, or one built
    from its name and critique request."""
    own = getattr(principle, "comparison", None)
    if own:
        return " ".join(own.split())
    name = principle.name.replace("-", " ").replace("_", " ")
    critique = " ".join(principle.critique.split())
    return (
        f"Which of these assistant responses is better with respect to {name}? "
        f"Judge them by this request: {critique}"
    )


def render_conversation(messages: Iterable[Message]) -> str:
    """The conversation as "Human: ..." and "Assistant: ..." paragraphs (system turns left out)."""
    return "\n\n".join(
        f"{_ROLES[m['role']]}: {m['content']}" for m in messages if m["role"] in _ROLES
    )


def build_comparison_messages(
    prompt: Sequence[Message], first: str, second: str, question: str, *, cot: bool = False
) -> list[Message]:
    """One user turn asking which of two responses to `prompt` is better, as (A) and (B).

    Each option is a line that begins with `(A) ` or `(B) `; a response's own line breaks are
    kept after it.
    """
    lines = [
        COMPARISON_INTRO,
        "",
        render_conversation(prompt),
        "",
        question,
        "Options:",
        f"(A) {first}",
        f"(B) {second}",
        "",
        COT_REQUEST if cot else ANSWER_PROMPT,
    ]
    return [{"role": "user", "content": "\n".join(lines)}]


def _letter(token: str) -> str | None:
    match = _LETTER.match(token)
    return match.group(1) if match else None


def _letter_mass(position: dict[str, Any]) -> tuple[float, float]:
    """The probabilities of "A" and "B" among one output position's top tokens."""
    candidates = {position.get("token"): position.get("logprob")}
    for alternative in position.get("top_logprobs") or ():
        candidates[alternative.get("token")] = alternative.get("logprob")
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in candidates.items():
        letter = _letter(token) if isinstance(token, str) else None
        if letter is not None and isinstance(logprob, int | float) and math.isfinite(logprob):
            mass[letter] += math.exp(logprob)
    return mass["A"], mass["B"]


def letter_probability(logprobs: Sequence[dict[str, Any]] | None) -> float | None:
    """p(A) among {A, B}: the softmax over the two letters' log-probabilities at the position
    where the model answers; None when no letter is among the top tokens anywhere.

    `logprobs` is `Completion.logprobs`: one `{"token", "logprob", "top_logprobs"}` per output
    token. The answer position is the first whose own token is a letter (a model may first
    write " (" or "The answer is ("); failing that, the first where a letter is among the top
    tokens. Tokens that spell the same letter (" A", "(A", "A") add up; a letter that is not
    among the top tokens there counts as probability 0.
    """
    positions = list(logprobs or ())
    answered = [p for p in positions if _letter(str(p.get("token"))) is not None]
    for position in answered[:1] or positions:
        a, b = _letter_mass(position)
        if a + b > 0:
            return a / (a + b)
    return None


def cot_letter(text: str) -> str | None:
    """The answer a chain-of-thought reply ends with: the last "(A)" or "(B)" in it, or None."""
    found = _COT_ANSWER.findall(text)
    return found[-1] if found else None


def clamp(p: float, bounds: tuple[float, float] | None) -> float:
    """`p` kept within `bounds` (LO, HI); unchanged when there are none."""
    if bounds is None:
        return p
    low, high = bounds
    return min(max(p, low), high)


def judge_reply(
    text: str,
    finish_reason: str,
    logprobs: Sequence[dict[str, Any]] | None,
    *,
    cot: bool,
    bounds: tuple[float, float] | None,
) -> tuple[float | None, str | None]:
    """(p_first, problem) for one reply: the probability that the option shown first, (A), is
    better, or None with the reason there is none ("no_answer", "length", "refusal", ...).

    A log-probability vote may stop at the token limit (only its first tokens matter); a
    chain-of-thought vote that was cut off never reached its answer, whatever it said before.
    """
    if finish_reason in ("refusal", "content_filter"):
        return None, finish_reason
    if cot:
        if finish_reason != "stop":
            return None, finish_reason
        letter = cot_letter(text)
        if letter is None:
            return None, "no_answer"
        return clamp(1.0 if letter == "A" else 0.0, bounds), None
    p = letter_probability(logprobs)
    if p is None:
        return None, "no_answer"
    return clamp(p, bounds), None


def vote_principles(
    constitution: Constitution, votes: int, seed: int, pair_id: str
) -> list[Principle]:
    """Each vote's principle, by weight, from an RNG seeded by `seed` and the pair's id."""
    from cai.pipeline import pick_principles

    # Salted, so a pair's votes are not the same draws as its record's critique rounds.
    return pick_principles(constitution, votes, seed, f"{pair_id}:label")


def p_a_of(vote: dict[str, Any]) -> float | None:
    """The vote's probability that response A is better, undoing the order it was shown in."""
    p = vote.get("p_first")
    if p is None:
        return None
    return p if vote["order"] == "ab" else 1.0 - p


def summarize_votes(votes: Sequence[dict[str, Any]]) -> tuple[float | None, bool]:
    """(p_a, position_consistent) of a pair's votes.

    `p_a` is the mean over answered votes of the order-corrected probability; None when no
    vote was answered. `position_consistent` is True when both orders of every vote were
    answered and prefer the same response (a tie at 0.5 prefers neither).
    """
    corrected = [p for p in map(p_a_of, votes) if p is not None]
    p_a = sum(corrected) / len(corrected) if corrected else None
    by_vote: dict[int, dict[str, float | None]] = {}
    for vote in votes:
        by_vote.setdefault(vote["vote"], {})[vote["order"]] = p_a_of(vote)
    consistent = bool(by_vote) and all(
        pair.get("ab") is not None
        and pair.get("ba") is not None
        and (pair["ab"] - 0.5) * (pair["ba"] - 0.5) > 0
        for pair in by_vote.values()
    )
    return p_a, consistent


# -- labels as training data ---------------------------------------------------------------


def label_skip_reason(
    label: dict[str, Any], *, min_margin: float = 0.0, keep_inconsistent: bool = False
) -> str | None:
    """Why a label makes no training pair ("unlabelled", "inconsistent", "low_margin"), or None."""
    p_a = label.get("p_a")
    if label.get("status") != "ok" or p_a is None:
        return "unlabelled"
    if not keep_inconsistent and not label.get("position_consistent"):
        return "inconsistent"
    if abs(p_a - 0.5) < min_margin or p_a == 0.5:
        return "low_margin"
    return None


def label_scores(p_a: float) -> dict[str, Any]:
    """Which response the label prefers, and the score columns of its training row.

    `score_chosen` is the soft label of the preferred response, `score_rejected` its
    complement, and `margin` is |p_a - 0.5|, the quantity --min-margin compares.
    """
    chosen_is_a = p_a > 0.5
    score = p_a if chosen_is_a else 1.0 - p_a
    return {
        "chosen_is_a": chosen_is_a,
        "score_chosen": round(score, 6),
        "score_rejected": round(1.0 - score, 6),
        "margin": round(abs(p_a - 0.5), 6),
    }
