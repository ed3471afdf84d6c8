"""How the commands word what they print: counts with their plural, durations, and a batch wave
in one line (the live progress and `cai batch status` say it the same way)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cai.words import plural


def duration(seconds: float) -> str:
    """`45s`, `2m05s`, `1h02m`: elapsed time at a glance."""
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass(frozen=True)
class BatchView:
    """One batch as a wave line reads it: the provider's word for its state, and its requests
    with an outcome out of all of them."""

    status: str
    ended: bool
    done: int
    total: int


# The provider's words, as a person reads them. OpenAI says "completed", Anthropic "ended";
# a batch that failed, expired or was canceled keeps its own word.
_STATE_WORDS = {"completed": "ended", "in_progress": "in progress", "cancelling": "canceling"}


def state_word(status: str) -> str:
    return _STATE_WORDS.get(status, status.replace("_", " "))


def states_text(batches: Iterable[BatchView]) -> str:
    """`1 validating, 2 in progress`: how many batches are in each state."""
    states: dict[str, int] = {}
    for b in batches:
        word = state_word(b.status)
        states[word] = states.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in states.items())


def wave_line(wave: object, batches: Iterable[BatchView], elapsed: float | None) -> str:
    """`wave 2: 3 batches (1 validating, 2 in progress), 120/300 requests done, 2m05s`."""
    batches = list(batches)
    shown = states_text(batches)
    done, total = sum(b.done for b in batches), sum(b.total for b in batches)
    return (
        f"wave {wave}: {plural(len(batches), 'batch')} ({shown}), "
        f"{done:,}/{plural(total, 'request', sep=',')} done"
        + (f", {duration(elapsed)}" if elapsed is not None else "")
    )
