"""Counts with their plural, for every message cai writes ("1 batch", "2 batches"): the ground
floor, so the run directory and the pipeline word their counts as the CLI does."""

from __future__ import annotations

_IRREGULAR = {"was": "were", "is": "are", "has": "have", "needs": "need"}


def plural(n: int, word: str, many: str | None = None, *, sep: str = "") -> str:
    """`1 example`, `2 examples`, `1 batch`, `2 batches`; `many` where English is irregular.
    `sep=","` writes the count with thousands separators."""
    return f"{n:{sep}} {word if n == 1 else many or plural_of(word)}"


def plural_of(word: str) -> str:
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    return word + "s"
