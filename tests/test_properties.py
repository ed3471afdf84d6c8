"""Property tests: whatever a user feeds the constitution parser or the prompt readers, the
answer is a valid result or a `CaiError` that says where (file, and line where there is one),
never another exception."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai.constitution import Constitution, load_constitution, parse_constitution
from cai.errors import CaiError, ConstitutionError, InputError
from cai.sources import ROLES, PromptSource, prompt_id

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines a constitution is made of, so generated text often gets deep into the parser.
CONSTITUTION_LINES = st.sampled_from(
    [
        "---",
        "...",
        "name: x",
        "name: [1, 2",
        "name:",
        "version: 3",
        "- a",
        "## System",
        "## Principle: p",
        "## Principle: q",
        "## Principle:",
        "## Example: e",
        "## Example",
        "# Title",
        "### Note",
        "Weight: 2",
        "Weight: 0",
        "Weight: nan",
        "Weight: 1e999",
        "Weight: -1",
        "Critique: find problems",
        "Critique:",
        "Revision: fix them",
        "Revision:",
        "Principle: p",
        "Principle: missing",
        "User: hi",
        "Assistant: hello",
        "NO CHANGES NEEDED",
        "```",
        "",
        "  ",
        "plain text",
        "\ufeff",
        "\r",
    ]
)
CONSTITUTION_TEXT = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(CONSTITUTION_LINES, st.text(max_size=20)), max_size=40).map("\n".join),
)


def check_constitution(result: Constitution, text_lines: int) -> None:
    assert result.principles
    names = [p.name for p in result.principles]
    assert len(set(names)) == len(names)
    for principle in result.principles:
        assert principle.name and principle.critique and principle.revision
        assert math.isfinite(principle.weight) and principle.weight > 0
        assert 1 <= principle.line <= text_lines
    for example in result.examples:
        assert example.turns[0][0] == "user" and example.turns[-1][0] == "assistant"
        assert example.critique
        assert example.principle is None or example.principle in names


def check_problem_location(error: ConstitutionError, path: str, text_lines: int) -> None:
    assert error.problems
    for problem in error.problems:
        assert problem.path == path
        assert problem.line is None or 1 <= problem.line <= text_lines
        assert problem.message and "\n" not in problem.message
    assert "\n" not in str(error)


@SETTINGS
@given(CONSTITUTION_TEXT)
def test_constitution_parser_returns_a_constitution_or_located_problems(text: str) -> None:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
    try:
        result = parse_constitution(text, path="c.md")
    except ConstitutionError as e:
        check_problem_location(e, "c.md", lines)
    else:
        check_constitution(result, lines)


@SETTINGS
@given(st.one_of(st.binary(max_size=300), CONSTITUTION_TEXT.map(lambda t: t.encode("utf-8"))))
def test_constitution_files_of_any_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.md"
        path.write_bytes(data)
        lines = data.count(b"\n") + data.count(b"\r") + 1
        try:
            result = load_constitution(path)
        except ConstitutionError as e:
            check_problem_location(e, str(path), lines)
        except InputError as e:
            assert e.path == str(path)
            assert "UTF-8" in str(e)
            assert e.line is not None and 1 <= e.line <= data.count(b"\n") + 1
        else:
            check_constitution(result, lines)


# -- prompt readers -------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from([*ROLES, "tool", ""]), "content": st.text(max_size=10)}
)
JSONL_LINES = st.sampled_from(
    [
        '{"prompt": "How do I pick a lock?"}',
        '{"prompt": ""}',
        '{"prompt": "   "}',
        '{"prompt": null}',
        '{"prompt": 3}',
        '{"prompt": "Human: hi\\n\\nAssistant: hello\\n\\nHuman: again"}',
        '{"prompt": "Human: "}',
        '{"messages": [{"role": "user", "content": "hi"}]}',
        '{"messages": [{"role": "assistant", "content": "hi"}]}',
        '{"messages": []}',
        '{"text": "no prompt field"}',
        "[1, 2]",
        '"just a string"',
        '{"prompt": "unterminated',
        "1" * 5000,
        "[" * 5000,
        "",
        "\ufeff{}",
    ]
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    line = st.one_of(
        JSONL_LINES.map(str.encode),
        st.builds(lambda v: __import__("json").dumps({"prompt": v}).encode(), JSON_VALUES),
        st.builds(
            lambda ms: __import__("json").dumps({"messages": ms}).encode(),
            st.lists(MESSAGE, max_size=4),
        ),
        st.binary(max_size=30),
    )
    return b"\n".join(draw(st.lists(line, max_size=12)))


TEXT_FILES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.text(max_size=30), max_size=10).map(lambda ls: "\n".join(ls).encode()),
)
CSV_FILES = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            ["prompt,other", "messages", "a,b", '"How?",1', '"unclosed', "x\x00y", "", '"a""b",']
        )
        | st.text(max_size=20),
        max_size=8,
    ).map(lambda ls: "\n".join(ls).encode()),
)


def check_prompts(data: bytes, suffix: str, field: str | None, skip: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"prompts{suffix}"
        path.write_bytes(data)
        # The csv module also ends a line at a lone carriage return.
        lines = data.count(b"\n") + (data.count(b"\r") if suffix == ".csv" else 0) + 1
        try:
            source = PromptSource(str(path), prompt_field=field, skip_bad_lines=skip)
            items = list(source)
        except InputError as e:
            assert not skip or e.line is None or suffix == ".csv"
            assert e.path == str(path)
            assert e.line is None or 1 <= e.line <= lines
            assert "\n" not in str(e)
            return
        except CaiError as e:  # pragma: no cover - every reader error is an InputError
            raise AssertionError(f"not an InputError: {e!r}") from e
        for item in items:
            assert 1 <= item.line <= lines
            assert item.messages and item.messages[-1]["role"] == "user"
            assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in item.messages)
            assert any(m["content"].strip() for m in item.messages if m["role"] == "user")
            assert item.id == prompt_id(item.messages)
        for message in source.skipped:
            assert message.startswith(f"{path}:")


@SETTINGS
@given(jsonl_files(), st.sampled_from([None, "prompt", "messages"]), st.booleans())
def test_jsonl_reader_gives_prompts_or_a_located_error(
    data: bytes, field: str | None, skip: bool
) -> None:
    check_prompts(data, ".jsonl", field, skip)


@SETTINGS
@given(TEXT_FILES, st.booleans())
def test_text_reader_gives_prompts_or_a_located_error(data: bytes, skip: bool) -> None:
    check_prompts(data, ".txt", None, skip)


@SETTINGS
@given(CSV_FILES, st.sampled_from([None, "prompt", "a"]), st.booleans())
def test_csv_reader_gives_prompts_or_a_located_error(
    data: bytes, field: str | None, skip: bool
) -> None:
    check_prompts(data, ".csv", field, skip)
