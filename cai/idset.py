"""A set of prompt ids that costs 8 to 16 bytes an id, so a run's memory stays flat.

Prompt ids are 16 hex digits (64 bits of a SHA-256). As Python strings in a `set` they cost
about 110 bytes each - 11 MB at 100k prompts, the one thing that grew with the prompt count
(benchmarks/memory.py). Here they are integers in an open-addressing table of unsigned 64-bit
slots. Any other string goes to an ordinary set.
"""

from __future__ import annotations

import re
from array import array

__all__ = ["IdSet"]

_EMPTY = 0
# Only this exact form maps to an integer: "0x..", "+..", "A.." or "_" must not alias an id.
_HEX_ID = re.compile(r"[0-9a-f]{16}")


class IdSet:
    """`in` and `add` for prompt ids, like `set[str]`."""

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._used = 0
        self._has_zero = False  # slot value 0 marks an empty slot
        self._other: set[str] = set()

    def __len__(self) -> int:
        return self._used + self._has_zero + len(self._other)

    def __contains__(self, key: str) -> bool:
        value = _as_int(key)
        if value is None:
            return key in self._other
        if value == _EMPTY:
            return self._has_zero
        slots, mask = self._slots, len(self._slots) - 1
        i = value & mask
        while slots[i] != _EMPTY:
            if slots[i] == value:
                return True
            i = (i + 1) & mask
        return False

    def add(self, key: str) -> None:
        value = _as_int(key)
        if value is None:
            self._other.add(key)
        elif value == _EMPTY:
            self._has_zero = True
        elif self._insert(self._slots, value):
            self._used += 1
            if self._used * 2 > len(self._slots):
                self._grow()

    @staticmethod
    def _insert(slots: array, value: int) -> bool:
        mask = len(slots) - 1
        i = value & mask
        while slots[i] != _EMPTY:
            if slots[i] == value:
                return False
            i = (i + 1) & mask
        slots[i] = value
        return True

    def _grow(self) -> None:
        bigger = array("Q", bytes(16 * len(self._slots)))
        for value in self._slots:
            if value != _EMPTY:
                self._insert(bigger, value)
        self._slots = bigger


def _as_int(key: str) -> int | None:
    return int(key, 16) if _HEX_ID.fullmatch(key) else None
