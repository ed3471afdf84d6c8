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

import asyncio
import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.constitution import Constitution, Principle
from cai.errors import AuthenticationError, ConfigError, ProviderError
from cai.pipeline import (
    CallConfig,
    Job,
    RunStats,
    context_window,
    count_message_tokens,
    pick_principles,
    run_job,
)
from cai.providers.base import Completion, Provider, Sampling, Usage
from cai.records import clean_usage
from cai.rundir import LABELS_FILE, Manifest, RunStore

if TYPE_CHECKING:
    from cai.filters import FilterConfig, FilterResult
    from cai.records import Record

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
    "policy_factory",
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
    if principle.comparison:
        return " ".join(principle.comparison.split())
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


def _finite_logprob(value: Any) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _logsumexp(values: Sequence[float]) -> float:
    peak = max(values)
    return peak + math.log(sum(math.exp(v - peak) for v in values))


def _letter_mass(position: dict[str, Any]) -> tuple[float | None, float | None] | None:
    """The log-probabilities of "A" and "B" among one output position's top tokens (None for
    a letter that is not among them); None when a letter's log-probability is not a finite
    number, so nothing can be said."""
    candidates = {position.get("token"): position.get("logprob")}
    for alternative in position.get("top_logprobs") or ():
        if isinstance(alternative, dict):
            candidates[alternative.get("token")] = alternative.get("logprob")
    found: dict[str, list[float]] = {"A": [], "B": []}
    for token, logprob in candidates.items():
        letter = _letter(token) if isinstance(token, str) else None
        if letter is None:
            continue
        value = _finite_logprob(logprob)
        if value is None:
            return None
        found[letter].append(value)
    a, b = (_logsumexp(found[x]) if found[x] else None for x in "AB")
    return a, b


def letter_probability(logprobs: Sequence[dict[str, Any]] | None) -> float | None:
    """p(A) among {A, B}: the softmax over the two letters' log-probabilities at the position
    where the model answers; None when no letter is among the top tokens anywhere.

    `logprobs` is `Completion.logprobs`: one `{"token", "logprob", "top_logprobs"}` per output
    token. The answer position is the first whose own token is a letter (a model may first
    write " (" or "The answer is ("); failing that, the first where a letter is among the top
    tokens. Tokens that spell the same letter (" A", "(A", "A") add up; a letter that is not
    among the top tokens there counts as probability 0. Computed in log space, so a server's
    log-probability of 1000 is no overflow; one that is not a finite number (NaN, Infinity,
    a 400-digit integer) at that position leaves the vote without an answer (None).
    """
    positions = [p for p in logprobs or () if isinstance(p, dict)]
    answered = [p for p in positions if _letter(str(p.get("token"))) is not None]
    for position in answered[:1] or positions:
        mass = _letter_mass(position)
        if mass is None:
            return None
        a, b = mass
        if a is None and b is None:
            continue
        if a is None or b is None:
            return 0.0 if a is None else 1.0
        # The softmax of two: 1 / (1 + e^(b - a)), with the exponent kept from overflowing.
        d = b - a
        return 1.0 / (1.0 + math.exp(d)) if d <= 0 else math.exp(-d) / (1.0 + math.exp(-d))
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


# -- the label run ---------------------------------------------------------------------------

# A log-probability vote needs only the tokens up to its answer letter.
ANSWER_TOKENS = 16
DEFAULT_COT_CLAMP = (0.4, 0.6)


@dataclass
class LabelConfig(CallConfig):
    """Settings of a label job; the CLI's `label` options map one to one onto these fields.

    `max_tokens` bounds a chain-of-thought vote and a sampled policy response; a
    log-probability vote stops after `answer_tokens`.
    """

    temperature: float = field(
        default=0.0, metadata={"help": "Sampling temperature of the feedback model."}
    )
    votes: int = field(default=4, metadata={"help": "Votes per pair, each asked in both orders."})
    cot: bool = field(
        default=False,
        metadata={"help": "Chain of thought instead of log-probabilities (forced without them)."},
    )
    clamp: tuple[float, float] | None = field(
        default=None,
        metadata={"help": "(LO, HI) each vote's probability is kept within; CoT: 0.4-0.6."},
    )
    answer_tokens: int = field(
        default=ANSWER_TOKENS, metadata={"help": "Most tokens of a log-probability vote."}
    )
    top_logprobs: int = field(
        default=10, metadata={"help": "Most likely tokens returned at each reply position."}
    )
    responses: int = field(
        default=2, metadata={"help": "Prompts source: responses sampled per prompt (N >= 2)."}
    )
    policy_temperature: float = field(
        default=1.0, metadata={"help": "Prompts source: the policy model's temperature."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.votes < 1:
            raise ConfigError(f"--votes must be at least 1, got {self.votes}")
        if self.responses < 2:
            raise ConfigError(f"--responses must be at least 2 (a pair), got {self.responses}")
        if self.answer_tokens < 1:
            raise ConfigError(f"answer_tokens must be at least 1, got {self.answer_tokens}")
        if not 1 <= self.top_logprobs <= 20:
            raise ConfigError(f"top_logprobs must be between 1 and 20, got {self.top_logprobs}")
        if not (math.isfinite(self.policy_temperature) and 0 <= self.policy_temperature <= 2):
            raise ConfigError(
                f"policy temperature must be between 0 and 2, got {self.policy_temperature}"
            )
        if self.clamp is not None:
            low, high = self.clamp
            if not 0 <= low <= high <= 1:
                raise ConfigError(
                    f"--clamp takes LO,HI with 0 <= LO <= HI <= 1, got {low:g},{high:g}"
                )

    def bounds(self, cot: bool) -> tuple[float, float] | None:
        """Each vote's clamp: --clamp, else 0.4-0.6 with chain of thought, else none."""
        if self.clamp is not None:
            return self.clamp
        return DEFAULT_COT_CLAMP if cot else None

    def vote_sampling(self, cot: bool) -> Sampling:
        if cot:
            return Sampling(self.temperature, self.max_tokens, self.top_p)
        return Sampling(self.temperature, self.answer_tokens, self.top_p, self.top_logprobs)

    @property
    def policy_sampling(self) -> Sampling:
        return Sampling(self.policy_temperature, self.max_tokens, self.top_p)


@dataclass
class PairItem:
    """One item of a label job: a prompt and its responses (None: sample them from the policy).

    A run-directory source gives one pair per record (its first answer and the revision export
    would choose); a prompts source gives every pair of `--responses` sampled responses.
    """

    id: str
    messages: list[Message]
    responses: list[str] | None = None
    line: int | None = None
    chosen_round: int | None = None


def pair_id(item_id: str, i: int, j: int, *, sampled: bool) -> str:
    """A pair's id: its record's for a run source, `<prompt id>:<i>-<j>` for sampled responses."""
    return f"{item_id}:{i}-{j}" if sampled else item_id


def unit_of(line_id: str) -> str:
    """The item (record or prompt) a label line belongs to."""
    return line_id.split(":", 1)[0]


def policy_factory(
    feedback: Provider,
    *,
    provider: str,
    base_url: str | None,
    timeout: float,
    policy_provider: str | None = None,
    policy_model: str | None = None,
    policy_base_url: str | None = None,
) -> Callable[..., Provider] | None:
    """How to make the policy model that writes a prompts source's responses, as a picklable
    factory (each Ray worker calls it); None when the feedback model writes them itself.

    Like the provider, the policy's URL defaults to the feedback model's (e.g. another model
    of the same vLLM server); with another provider, to that provider's own.
    """
    from cai.providers import create_provider

    same_provider = policy_provider in (None, provider)
    url = policy_base_url or (base_url if same_provider else None)
    if same_provider and policy_model in (None, feedback.model) and url == base_url:
        return None
    return partial(
        create_provider,
        policy_provider or provider,
        model=policy_model,
        base_url=url,
        timeout=timeout,
    )


def prompt_pairs(prompts: Iterable[Any]) -> Iterable[PairItem]:
    """Items whose responses the policy model samples, from `PromptItem`s."""
    for item in prompts:
        yield PairItem(item.id, item.messages, None, item.line)


def run_pairs(
    run_dir: str | Path, filters: FilterConfig | None = None
) -> tuple[Manifest, list[PairItem], Counter[str]]:
    """The pairs of a generate run, each record's first answer and the revision that export
    would choose with `filters` (default: all on); and how many records gave none, by reason."""
    from cai.filters import FilterConfig, apply_filters, for_run
    from cai.rundir import check_not_writing, load_run

    if Path(run_dir).is_dir():
        # Its last records are not written yet: labelling it now would label part of it.
        check_not_writing(run_dir, then="label it")
    manifest, records = load_run(run_dir)
    filters = for_run(filters or FilterConfig(), run_dir, manifest, records)
    if manifest.kind != "generate":
        raise ConfigError(
            f"{run_dir} is a cai {manifest.kind} run; cai label takes a generate run "
            "or a prompts file"
        )
    filtered = apply_filters(records, filters)
    left_out = Counter(filtered.removed)
    items = []
    for verdict in filtered.kept:
        if verdict.use != "pref":
            left_out["sft_only"] += 1
            continue
        record = verdict.record
        items.append(
            PairItem(
                record.id,
                record.prompt,
                [record.initial_response, verdict.response],
                record.source_line,
                verdict.chosen_round,
            )
        )
    return manifest, items, left_out


@dataclass
class LabelStats(RunStats):
    """A label run's counts; `done`, `failed` and `too_long` count pairs."""

    votes: int = 0
    problem_votes: int = 0
    inconsistent: int = 0
    revision_preferred: int = 0
    revision_pairs: int = 0


def run_source(
    run_dir: str | Path, manifest: Manifest, filters: FilterConfig | None = None
) -> dict[str, Any]:
    """Which pairs a label run of a generate run judges: that run (its path and when it was
    created) and the filters that chose the pairs (`run_pairs`'s). Part of the label run's
    settings, so its journaled votes are never reused for the pairs of another run."""
    from dataclasses import fields

    from cai.filters import FilterConfig

    filters = filters or FilterConfig()
    return {
        "run": str(Path(run_dir).resolve()),
        "created": manifest.created,
        "filters": {
            f.name: getattr(filters, f.name)
            for f in fields(filters)
            if f.name not in ("constitution", "copy_index")
        },
    }


def check_label_source(
    labels_dir: str | Path,
    label_manifest: Manifest,
    labels: Sequence[dict[str, Any]],
    run_dir: str | Path,
    manifest: Manifest,
    record_ids: set[str],
) -> None:
    """Refuse the labels of another run (`cai export RUN --labels DIR`): they would leave
    every pair unlabelled, and the export empty."""
    source = label_manifest.settings.get("source")
    fix = f"pass the labels made from {run_dir} (cai label {run_dir} --out DIR)"
    if isinstance(source, dict):
        here = {"run": str(Path(run_dir).resolve()), "created": manifest.created}
        if {k: source.get(k) for k in here} != here:
            raise ConfigError(
                f"{labels_dir} holds the labels of the run {source.get('run')} "
                f"(created {source.get('created')}), not of {run_dir}: {fix}"
            )
    elif labels and not any(label.get("id") in record_ids for label in labels):
        # A label run of an older cai, or of a prompts file: told apart by its pairs.
        raise ConfigError(
            f"{labels_dir} holds no label of a record of {run_dir}: its labels were made "
            f"from another run or a prompts file; {fix}"
        )


def label_settings(
    config: LabelConfig,
    constitution: Constitution,
    provider: Provider,
    policy: Provider | None,
    cot: bool,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings that change labels: a label run may only be resumed with the same ones.
    `source`: the generate run it labels (`run_source`)."""
    bounds = config.bounds(cot)
    settings: dict[str, Any] = {
        "constitution": constitution.name,
        "constitution_sha256": constitution.sha256,
        "provider": provider.name,
        "model": provider.model,
        "mode": "cot" if cot else "logprobs",
        "votes": config.votes,
        "clamp": list(bounds) if bounds else None,
        "seed": config.seed,
        "sampling": config.vote_sampling(cot).to_dict(),
    }
    if policy is not None:
        settings.update(
            responses=config.responses,
            policy_provider=policy.name,
            policy_model=policy.model,
            policy_sampling=config.policy_sampling.to_dict(),
        )
    if source is not None:
        settings["source"] = source
    return settings


async def label_chain(
    constitution: Constitution,
    config: LabelConfig,
    cot: bool,
    item: PairItem,
    call: Callable[..., Any],
    provider: Provider,
) -> list[dict[str, Any]]:
    """The label job's chain, `partial(label_chain, constitution, config, cot)`: plain data
    only, so an engine can send it to workers (cai/engines/ray.py). `provider` is the feedback
    model of the process it runs in as `ChainRunner` passes it, whose `gather` makes independent
    calls at once; sampled responses come from the provider named "policy"."""
    return await _PairJudge(constitution, config, provider, cot)(item, call)


class _PairJudge:
    """One item's labelling: sample its responses if it has none, then judge each pair."""

    def __init__(
        self, constitution: Constitution, config: LabelConfig, provider: Provider, cot: bool
    ) -> None:
        self.constitution = constitution
        self.config = config
        self.provider = provider
        self.cot = cot
        self.bounds = config.bounds(cot)
        self.sampling = config.vote_sampling(cot)
        self.window = context_window(provider)

    async def __call__(self, item: PairItem, call: Callable[..., Any]) -> list[dict[str, Any]]:
        # The runner's provider (`pipeline._InFlight`) makes a chain's independent calls at once.
        gather = self.provider.gather
        started = time.time()
        sampled = item.responses is None
        usage = Usage()
        if sampled:
            replies = await gather(
                *(
                    call(
                        item.id,
                        f"response{n}",
                        list(item.messages),
                        usage,
                        sampling=self.config.policy_sampling,
                        via="policy",
                    )
                    for n in range(self.config.responses)
                )
            )
            error = _error_of(replies)
            if error is not None:
                line = self._line(item, 0, 1, "", "", True)
                line.update(status="failed", error=error.to_dict())
                return [self._finish(line, usage, started)]
            responses: list[Completion] = replies
        else:
            responses = [Completion(text) for text in item.responses or ()]
        pairs = []
        for i, j in itertools.combinations(range(len(responses)), 2):
            line = self._line(item, i, j, responses[i].text, responses[j].text, sampled)
            asks = self._asks(line, item, responses[i], responses[j])
            # The responses' usage goes with the first pair, so a sum over lines counts it once.
            pairs.append((line, asks, usage if not pairs else Usage(), f"{i}-{j}."))
        replies = await gather(
            *(
                call(
                    item.id,
                    f"{prefix}vote{k}.{order}",
                    messages,
                    pair_usage,
                    sampling=self.sampling,
                )
                for _, asks, pair_usage, prefix in pairs
                for k, _, order, messages in asks
            )
        )
        at = 0
        for line, asks, pair_usage, _ in pairs:
            self._votes(line, asks, replies[at : at + len(asks)])
            at += len(asks)
            self._finish(line, pair_usage, started)
        return [line for line, *_ in pairs]

    def _line(
        self, item: PairItem, i: int, j: int, a: str, b: str, sampled: bool
    ) -> dict[str, Any]:
        line: dict[str, Any] = {
            "id": pair_id(item.id, i, j, sampled=sampled),
            "source_id": item.id,
            "prompt": item.messages,
            "response_a": a,
            "response_b": b,
            "p_a": None,
            "votes": [],
            "position_consistent": False,
            "status": "ok",
            "error": None,
            "mode": "cot" if self.cot else "logprobs",
            "provider": self.provider.name,
            "model": self.provider.model,
            "constitution_sha256": self.constitution.sha256,
        }
        if sampled:
            line["responses"] = [i, j]
        else:
            line["chosen_round"] = item.chosen_round
        if item.line is not None:
            line["source_line"] = item.line
        return line

    @staticmethod
    def _finish(line: dict[str, Any], usage: Usage, started: float) -> dict[str, Any]:
        line["usage"] = usage.to_dict()
        line["timings"] = {
            "started_at": round(started, 3),
            "seconds": round(time.time() - started, 3),
        }
        return line

    def _too_long(self, messages: list[Message]) -> str | None:
        if self.window is None:
            return None
        need = count_message_tokens(self.provider, messages) + self.sampling.max_tokens
        if need <= self.window:
            return None
        return (
            f"too long for the feedback model's context: a comparison needs {need} tokens "
            f"(both responses, the conversation and up to {self.sampling.max_tokens} for the "
            f"reply) but the window is {self.window}"
        )

    def _asks(
        self, line: dict[str, Any], item: PairItem, first: Completion, second: Completion
    ) -> list[tuple[int, str, str, list[Message]]]:
        """Each vote's (number, principle, order, messages); none when the pair is skipped."""
        unusable = first.problem or second.problem
        if unusable is not None:
            line.update(
                status="skipped",
                error={"kind": unusable, "message": f"a sampled response is unusable ({unusable})"},
            )
            return []
        asks = []
        principles = vote_principles(
            self.constitution, self.config.votes, self.config.seed, line["id"]
        )
        for k, principle in enumerate(principles, 1):
            question = comparison_question(principle)
            for order in ORDERS:
                shown = (first.text, second.text) if order == "ab" else (second.text, first.text)
                messages = build_comparison_messages(item.messages, *shown, question, cot=self.cot)
                asks.append((k, principle.name, order, messages))
        reason = self._too_long(max((m for *_, m in asks), key=lambda m: len(m[0]["content"])))
        if reason is not None:
            line.update(status="skipped", error={"kind": "too_long", "message": reason})
            return []
        return asks

    def _votes(
        self, line: dict[str, Any], asks: list[tuple[int, str, str, Any]], replies: list[Any]
    ) -> None:
        """Fill in a pair's votes from its replies, and its label."""
        if not asks:
            return
        error = _error_of(replies)
        if error is not None:
            line.update(status="failed", error=error.to_dict())
            return
        for (k, name, order, _), reply in zip(asks, replies, strict=True):
            p_first, problem = judge_reply(
                reply.text, reply.finish_reason, reply.logprobs, cot=self.cot, bounds=self.bounds
            )
            vote: dict[str, Any] = {
                "vote": k,
                "principle": name,
                "order": order,
                "p_first": None if p_first is None else round(p_first, 6),
                "reply": reply.text,
            }
            if problem is not None:
                vote["problem"] = problem
            line["votes"].append(vote)
        p_a, consistent = summarize_votes(line["votes"])
        line["p_a"] = None if p_a is None else round(p_a, 6)
        line["position_consistent"] = consistent
        if p_a is None:
            line.update(
                status="skipped",
                error={"kind": "no_answer", "message": "no vote's reply held an answer letter"},
            )


def count_label(stats: LabelStats, line: dict[str, Any]) -> None:
    """Add a written label line to the run's counts."""
    if line["status"] == "failed":
        stats.failed += 1
    elif line["status"] == "skipped":
        stats.too_long += (line.get("error") or {}).get("kind") == "too_long"
    else:
        stats.done += 1
    stats.votes += len(line["votes"])
    stats.problem_votes += sum("problem" in v for v in line["votes"])
    stats.inconsistent += line["status"] == "ok" and not line["position_consistent"]
    if line.get("chosen_round") is not None and line["p_a"] is not None:
        stats.revision_pairs += 1
        stats.revision_preferred += line["p_a"] < 0.5


def _error_of(results: Sequence[Any]) -> ProviderError | None:
    """The provider error among gathered results, if any; anything else that went wrong (the
    run stopping, a refused key) is raised, as it ends the item or the run, not the pair."""
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if not isinstance(error, ProviderError) or isinstance(error, AuthenticationError):
            raise error
    return errors[0] if errors else None  # type: ignore[return-value]


def uses_cot(config: LabelConfig, provider: Provider) -> bool:
    """Chain of thought when asked for, or when the feedback model gives no log-probabilities."""
    return config.cot or not provider.supports_logprobs


def label_job(
    constitution: Constitution,
    provider: Provider,
    config: LabelConfig,
    stats: LabelStats,
    *,
    policy: Provider | None = None,
    source: dict[str, Any] | None = None,
) -> Job:
    """The `cai label` job. With `policy`, items are prompts whose responses it samples;
    `source` (`run_source`) names the generate run whose pairs the items are."""
    cot = uses_cot(config, provider)
    return Job(
        kind="label",
        settings=label_settings(config, constitution, provider, policy, cot, source),
        provider=provider,
        chain=partial(label_chain, constitution, config, cot),
        count=partial(count_label, stats),
        unit_of=unit_of,
        lines_per_item=math.comb(config.responses, 2) if policy is not None else 1,
        constitution=constitution,
        others={"policy": provider if policy is None else policy},
    )


async def run_labels(
    items: Iterable[PairItem],
    constitution: Constitution,
    provider: Provider,
    config: LabelConfig,
    store: RunStore,
    *,
    policy: Provider | None = None,
    source: dict[str, Any] | None = None,
    manifest: Manifest | dict[str, Any] | None = None,
    on_event: Callable[[str, Any], None] = lambda kind, data: None,
    stop: asyncio.Event | None = None,
    stats: LabelStats | None = None,
    engine: Any = None,
) -> LabelStats:
    """Label (or resume labelling) `items` into `store` (a `RunStore` of `LABELS_FILE`).

    Items with responses are judged as they are; items without are sampled from `policy`
    first. Items from `run_pairs` come with `source=run_source(...)`: a resume with another
    source run or other filters is then refused before any call. The run has the guarantees of a generate run (`cai.pipeline.run_job`): calls
    journaled, resume, lock, a clean stop on `stop`. `engine` (e.g. `RayEngine`, whose
    `make_provider` makes a "policy" provider too: `cai.engines.make_providers`) runs the
    chains elsewhere.
    """
    if store.records_path.name != LABELS_FILE:
        raise ConfigError(f"a label run writes {LABELS_FILE}: use RunStore(dir, LABELS_FILE)")
    stats = stats or LabelStats()
    job = label_job(constitution, provider, config, stats, policy=policy, source=source)
    run = {"manifest": manifest, "on_event": on_event, "stop": stop, "engine": engine}
    await run_job(items, job, config, store, stats=stats, **run)
    return stats


# -- label runs as training data and statistics ----------------------------------------------


def load_labels(
    run_dir: str | Path, *, while_running: bool = True
) -> tuple[Manifest, list[dict[str, Any]]]:
    """A label run's manifest and lines; unless `while_running`, refused while it is written."""
    from cai.rundir import check_not_writing, read_manifest

    labels = read_labels(run_dir)
    if not while_running:
        check_not_writing(run_dir)
    return read_manifest(run_dir) or Manifest(cai_version=""), labels


def read_labels(run_dir: str | Path) -> list[dict[str, Any]]:
    """A label run's lines, one per pair (the best line where a pair has several)."""
    from cai.rundir import best_lines, record_lines

    path = Path(run_dir) / LABELS_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir}: no {LABELS_FILE} here; pass a directory made by cai label")
    lines = [data for _, _, data in record_lines(path)]
    best = best_lines(enumerate(lines))
    return [lines[position] for _, position, _ in sorted(best.values(), key=lambda b: b[1])]


def is_label_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / LABELS_FILE).is_file()


def label_verdicts(
    labels: Iterable[dict[str, Any]],
    *,
    min_margin: float = 0.0,
    keep_inconsistent: bool = False,
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], Counter[str]]:
    """The labels that make training pairs, each with its score columns, and how many of the
    others each reason left out ("unlabelled", "inconsistent", "low_margin")."""
    kept = []
    removed: Counter[str] = Counter()
    for label in labels:
        reason = label_skip_reason(
            label, min_margin=min_margin, keep_inconsistent=keep_inconsistent
        )
        if reason is None:
            kept.append((label, label_scores(label["p_a"])))
        else:
            removed[reason] += 1
    return kept, removed


def label_stats(labels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a label run holds: statuses, votes and their problems, position bias, order
    consistency, a histogram of the labels, and how often the revision is preferred."""
    statuses = Counter(str(label.get("status")) for label in labels)
    votes = [v for label in labels for v in label.get("votes") or ()]
    answered = [v for v in votes if v.get("p_first") is not None]
    problems = Counter(v["problem"] for v in votes if v.get("problem"))
    ok = [label for label in labels if label.get("status") == "ok" and label.get("p_a") is not None]
    bins = [0] * 10
    for label in ok:
        bins[min(int(label["p_a"] * 10), 9)] += 1
    revision = [label for label in ok if label.get("chosen_round") is not None]
    decided = [v for v in answered if v["p_first"] != 0.5]
    first = sum(v["p_first"] > 0.5 for v in decided)
    principles = Counter(v.get("principle") for v in votes)
    return {
        "pairs": len(labels),
        "statuses": dict(statuses),
        "votes": len(votes),
        "answered_votes": len(answered),
        "vote_problems": dict(problems),
        "decided_votes": len(decided),
        "first_option_votes": first,
        # The share of votes for whichever option was shown first: 0.5 without position bias.
        "first_option_share": round(first / len(decided), 4) if decided else None,
        "mean_p_first": round(sum(v["p_first"] for v in answered) / len(answered), 4)
        if answered
        else None,
        "position_consistent": sum(bool(label.get("position_consistent")) for label in ok),
        "labelled": len(ok),
        "consistency": round(sum(bool(lb.get("position_consistent")) for lb in ok) / len(ok), 4)
        if ok
        else None,
        "histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": n for i, n in enumerate(bins)},
        "revision_pairs": len(revision),
        # How often the feedback model agrees that the revision (response B) is better.
        "revision_preferred": sum(label["p_a"] < 0.5 for label in revision),
        "agreement": round(sum(lb["p_a"] < 0.5 for lb in revision) / len(revision), 4)
        if revision
        else None,
        "principles": dict(principles.most_common()),
    }


def format_label_stats(data: dict[str, Any]) -> str:
    """`label_stats` as text for `cai stats`."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.0%}"

    statuses = ", ".join(f"{n} {s}" for s, n in sorted(data["statuses"].items())) or "none"
    problems = ", ".join(f"{k} {n}" for k, n in sorted(data["vote_problems"].items()))
    lines = [
        f"Pairs: {data['pairs']} ({statuses}); {data['labelled']} with a label",
        f"Votes: {data['votes']} asked, {data['answered_votes']} answered"
        + (f"; problems: {problems}" if problems else ""),
        f"Position bias: {pct(data['first_option_share'])} of decided votes chose the option "
        f"shown first (mean p(first) {data['mean_p_first']}); 50% is none",
        f"Order consistency: {data['position_consistent']} of {data['labelled']} pairs "
        f"({pct(data['consistency'])}) prefer the same response in both orders of every vote",
    ]
    if data["revision_pairs"]:
        lines.append(
            f"Agreement: the feedback model prefers the revision in {data['revision_preferred']} "
            f"of {data['revision_pairs']} pairs ({pct(data['agreement'])})"
        )
    peak = max(data["histogram"].values(), default=0) or 1
    lines.append("Labels p(A better):")
    for span, n in data["histogram"].items():
        lines.append(f"  {span}  {'#' * round(20 * n / peak):<20} {n}")
    return "\n".join(lines)


def _score_columns(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: scores[k] for k in ("score_chosen", "score_rejected", "margin")}


def label_pairs(
    labels: Sequence[dict[str, Any]], *, min_margin: float = 0.0, keep_inconsistent: bool = False
) -> tuple[list[Record], FilterResult, dict[str, dict[str, Any]]]:
    """A label run as export's pairs: one record per label, chosen and rejected as the label
    says; the kept ones as verdicts, with their score columns by id."""
    from cai.filters import FilterResult, Verdict
    from cai.records import Record

    def record(label: dict[str, Any], chosen: str, rejected: str) -> Record:
        return Record(
            id=str(label["id"]),
            prompt=label.get("prompt") or [],
            status=str(label.get("status", "ok")),
            initial_response=rejected,
            final_response=chosen,
            provider=str(label.get("provider", "")),
            model=str(label.get("model", "")),
            constitution={"sha256": str(label.get("constitution_sha256", ""))},
            usage=clean_usage(label.get("usage")),
            source_line=label.get("source_line"),
        )

    kept, removed = label_verdicts(
        labels, min_margin=min_margin, keep_inconsistent=keep_inconsistent
    )
    chosen_ids = {label["id"] for label, _ in kept}
    records = [
        record(label, label.get("response_b") or "", label.get("response_a") or "")
        for label in labels
        if label["id"] not in chosen_ids
    ]
    filtered = FilterResult(removed=removed)
    scores = {}
    for label, score in kept:
        a, b = label["response_a"], label["response_b"]
        chosen, rejected = (a, b) if score["chosen_is_a"] else (b, a)
        records.append(record(label, chosen, rejected))
        filtered.kept.append(Verdict(records[-1], "pref", response=chosen))
        scores[label["id"]] = _score_columns(score)
    return records, filtered, scores


def check_with_labels(
    filtered: FilterResult,
    labels: Sequence[dict[str, Any]],
    *,
    min_margin: float = 0.0,
    keep_inconsistent: bool = False,
) -> dict[str, dict[str, Any]]:
    """Check SL-CAI pairs against a label run of the same records (`cai export --labels`).

    A pair is dropped when the feedback model prefers the first answer ("first_preferred"),
    when it has no label for exactly this pair ("unlabelled": none, or made for another
    revision), or by the label filters; `filtered` is changed in place. Returns the score
    columns of the pairs kept, by record id.
    """
    by_id = {label["id"]: label for label in labels if label.get("chosen_round") is not None}
    scores = {}
    kept = []
    for verdict in filtered.kept:
        if verdict.use != "pref":
            kept.append(verdict)
            continue
        label = by_id.get(verdict.record.id)
        if (
            label is None
            or label.get("response_a") != verdict.record.initial_response
            or label.get("response_b") != verdict.response
        ):
            reason: str | None = "unlabelled"
        else:
            reason = label_skip_reason(
                label, min_margin=min_margin, keep_inconsistent=keep_inconsistent
            )
            if reason is None and label["p_a"] > 0.5:
                reason = "first_preferred"
        if reason is not None:
            filtered.removed[reason] += 1
            continue
        kept.append(verdict)
        scores[verdict.record.id] = _score_columns(label_scores(label["p_a"]))
    filtered.kept[:] = kept
    return scores


# What each label filter of `cai export` removes, for the card and the command's summary.
LABEL_FILTERS = {
    "unlabelled": "pairs with no label: every vote failed or gave no letter, or (with --labels) "
    "the label run has no label for this exact pair",
    "inconsistent": "pairs whose two orders of some vote prefer different responses "
    "(--keep-inconsistent keeps them)",
    "low_margin": "pairs whose label is within --min-margin of 0.5, or exactly 0.5",
    "first_preferred": "--labels: pairs where the feedback model prefers the first answer to "
    "the revision",
}


def plan_labels(
    items: Sequence[PairItem],
    constitution: Constitution,
    config: LabelConfig,
    cot: bool,
    *,
    price: Any = None,
) -> str:
    """What `cai label --dry-run` prints: the calls a label run makes, its tokens and cost."""
    from cai.pricing import estimate_tokens, format_cost

    items = list(items)[: config.limit] if config.limit else list(items)
    sampled = sum(item.responses is None for item in items)
    pairs = sampled * math.comb(config.responses, 2) + (len(items) - sampled)
    votes = pairs * config.votes * 2
    policy_calls = sampled * config.responses
    reply = config.vote_sampling(cot).max_tokens
    tokens_in = tokens_out = 0
    for item in items:
        texts = item.responses or ["x" * 4 * config.max_tokens] * config.responses
        n = math.comb(len(texts), 2)
        principles = vote_principles(constitution, config.votes, config.seed, item.id)
        for principle in principles:
            messages = build_comparison_messages(
                item.messages, texts[0], texts[1], comparison_question(principle), cot=cot
            )
            tokens_in += 2 * n * estimate_tokens(messages)
            tokens_out += 2 * n * (reply if cot else 3)
        if item.responses is None:
            tokens_in += config.responses * estimate_tokens(item.messages)
            tokens_out += config.responses * config.max_tokens
    lines = [
        f"{len(items)} items, {pairs} pairs, {config.votes} votes each in both orders: "
        f"{votes} feedback calls ({'chain of thought' if cot else 'log-probabilities'})"
        + (f" and {policy_calls} policy responses" if policy_calls else ""),
        f"About {tokens_in:,} input and at most {tokens_out:,} output tokens (estimated, "
        "about four characters a token)",
    ]
    if price is not None:
        lines.append(
            f"Estimated cost: {format_cost(price.cost(Usage(tokens_in, tokens_out)))} at most"
        )
    return "\n".join(lines)
