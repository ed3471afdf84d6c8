"""IdSet behaves like a set of strings, for prompt ids and for any other string."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from cai.idset import IdSet


def _id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()[:16]


def test_many_ids_through_several_growths() -> None:
    ids = IdSet()
    for n in range(5000):
        assert _id(n) not in ids
        ids.add(_id(n))
        ids.add(_id(n))
    assert len(ids) == 5000
    assert all(_id(n) in ids for n in range(5000))
    assert not any(_id(n) in ids for n in range(5000, 6000))


def test_strings_that_are_not_ids_never_alias_one() -> None:
    ids = IdSet()
    ids.add("00000000000000ff")
    for alias in (
        "0x000000000000ff",
        "00000000000000FF",
        "+0000000000000ff",
        "ff",
        " 0000000000000ff",
    ):
        assert alias not in ids
    ids.add("0000000000000000")
    ids.add("p1")
    assert "0000000000000000" in ids and "p1" in ids and "p2" not in ids
    assert len(ids) == 3


@given(st.lists(st.one_of(st.text(max_size=18), st.from_regex(r"[0-9a-f]{16}", fullmatch=True))))
def test_agrees_with_a_set(keys: list[str]) -> None:
    ids, reference = IdSet(), set()
    for key in keys:
        assert (key in ids) == (key in reference)
        ids.add(key)
        reference.add(key)
    assert len(ids) == len(reference)
    assert all(key in ids for key in reference)
