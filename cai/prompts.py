"""The chat turns sent to the model for the initial response, each critique and each revision.

Few-shot examples go in as real chat turns ahead of the conversation, so the model sees the
exact shape of a critique and of a revision before it writes its own. That prefix is the same
for every call of a run, which is what prompt caching (and llama.cpp's prefix reuse) needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cai.constitution import Constitution, Example, Principle

__all__ = [
    "NO_CHANGE_MARKER",
    "Conversation",
    "Message",
    "build_critique_messages",
    "build_initial_messages",
    "build_revision_messages",
    "critique_request",
    "is_no_change",
    "revision_request",
]

Message = dict[str, str]

NO_CHANGE_MARKER = "NO CHANGES NEEDED"

_CRITIQUE_SUFFIX = (
    "\n\nIf the response already satisfies this fully, say why briefly and end with the line: "
    + NO_CHANGE_MARKER
)
_REVISION_SUFFIX = "\n\nReply with the revised response only: no preamble, no mention of the critique or of this request."
_MARKER = re.compile(r"[\W_]*no[\W_]+changes?[\W_]+(are[\W_]+)?needed[\W_]*", re.IGNORECASE)


class Conversation(list):
    """Chat turns whose first `cached_prefix` turns are the same on every call of a run.

    It is a plain list to every provider; the Anthropic provider puts its prompt-caching
    breakpoint after that prefix (the system prompt and few-shot examples).
    """

    def __init__(self, turns: Iterable[Message] = (), cached_prefix: int = 0) -> None:
        super().__init__(turns)
        self.cached_prefix = cached_prefix


def critique_request(principle: Principle) -> str:
    return principle.critique + _CRITIQUE_SUFFIX


def revision_request(principle: Principle) -> str:
    return principle.revision + _REVISION_SUFFIX


def is_no_change(critique: str) -> bool:
    """True when a critique concludes that nothing needs changing (its last line is the marker)."""
    lines = [line for line in critique.strip().splitlines() if line.strip()]
    return bool(lines) and _MARKER.fullmatch(lines[-1].strip()) is not None


def _example_messages(example: Example, constitution: Constitution) -> list[Message]:
    principle = (
        constitution.principle(example.principle)
        if example.principle
        else constitution.principles[0]
    )
    messages = [{"role": role, "content": text} for role, text in example.turns]
    critique = example.critique
    if example.revision is None and not is_no_change(critique):
        critique = f"{critique}\n{NO_CHANGE_MARKER}"
    messages += [
        {"role": "user", "content": critique_request(principle)},
        {"role": "assistant", "content": critique},
    ]
    if example.revision is not None:
        messages += [
            {"role": "user", "content": revision_request(principle)},
            {"role": "assistant", "content": example.revision},
        ]
    return messages


# The few-shot prefix is the same for every critique and revision of a run: built once per
# constitution (frozen, so it cannot change), not once per call (benchmarks/cpu_per_call.py).
# Callers splice it into new lists and never change its messages.
_PREFIXES: dict[int, tuple[Constitution, list[Message]]] = {}


def _prefix(constitution: Constitution) -> list[Message]:
    cached = _PREFIXES.get(id(constitution))
    if cached is not None and cached[0] is constitution:
        return cached[1]
    messages = _build_prefix(constitution)
    if len(_PREFIXES) >= 8:
        _PREFIXES.clear()
    _PREFIXES[id(constitution)] = (constitution, messages)
    return messages


def _build_prefix(constitution: Constitution) -> list[Message]:
    messages: list[Message] = []
    if constitution.system:
        messages.append({"role": "system", "content": constitution.system})
    for example in constitution.examples:
        messages += _example_messages(example, constitution)
    return messages


def build_initial_messages(constitution: Constitution, prompt: list[Message]) -> Conversation:
    """The conversation for the first answer: the system prompt, then the user's turns.

    Few-shot critique examples are left out here on purpose: they would teach the model to
    answer like a critic, and the initial answer is the one the constitution improves on.
    """
    system = [{"role": "system", "content": constitution.system}] if constitution.system else []
    if prompt and prompt[0]["role"] == "system":
        return Conversation(prompt)
    return Conversation(system + list(prompt), cached_prefix=len(system))


def build_critique_messages(
    constitution: Constitution, prompt: list[Message], response: str, principle: Principle
) -> Conversation:
    prefix = _prefix(constitution)
    return Conversation(
        [
            *prefix,
            *(m for m in prompt if m["role"] != "system"),
            {"role": "assistant", "content": response},
            {"role": "user", "content": critique_request(principle)},
        ],
        cached_prefix=len(prefix),
    )


def build_revision_messages(
    constitution: Constitution,
    prompt: list[Message],
    response: str,
    principle: Principle,
    critique: str,
) -> Conversation:
    turns = build_critique_messages(constitution, prompt, response, principle)
    return Conversation(
        [
            *turns,
            {"role": "assistant", "content": critique},
            {"role": "user", "content": revision_request(principle)},
        ],
        cached_prefix=turns.cached_prefix,
    )
