from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MINI_CONSTITUTION

from cai.cli import cli
from cai.constitution import load_constitution, parse_constitution
from cai.errors import ConstitutionError, InputError

ROOT = Path(__file__).resolve().parent.parent


def problems_of(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, path="c.md")
    return [(p.line, p.message) for p in info.value.problems]


def test_parses_front_matter_system_principles_and_examples() -> None:
    c = parse_constitution(MINI_CONSTITUTION, path="mini.md")
    assert c.name == "mini"
    assert c.description == "Two principles for tests."
    assert c.system == "You are a helpful assistant."
    assert [(p.name, p.weight, p.line) for p in c.principles] == [
        ("harm", 3.0, 10),
        ("honesty", 1.0, 15),
    ]
    assert c.principles[0].critique == "Identify ways the response is harmful."
    assert c.principles[0].revision == "Rewrite the response to remove harmful content."
    fine, fix = c.examples
    assert fine.principle == "honesty" and fine.revision is None
    assert fine.turns == (("user", "What is 2+2?"), ("assistant", "4."))
    assert fine.critique == "The answer is correct and supported.\nNO CHANGES NEEDED"
    assert fix.principle is None
    assert fix.revision == "If it is your own lock, a locksmith can open it quickly."


def test_name_defaults_to_file_name_and_values_span_lines(tmp_path: Path) -> None:
    path = tmp_path / "policy.md"
    path.write_bytes(
        b"# Policy\r\nProse is documentation.\r\n\r\n## principle: kind\r\ncritique: Is it\r\n"
        b"  unkind in any way?\r\n\r\nREVISION: Make it kind.\r\n### Notes\r\nignored\r\n"
    )
    c = load_constitution(path)
    assert c.name == "policy"
    assert c.principles[0].critique == "Is it\n  unkind in any way?"
    assert c.principles[0].revision == "Make it kind."
    assert c.system is None and c.examples == ()
    assert len(c.sha256) == 64


def test_utf8_bom_and_non_ascii_text(tmp_path: Path) -> None:
    path = tmp_path / "fr.md"
    path.write_text(
        "\ufeff## Principle: équité\nCritique: Est-ce équitable ?\nRevision: Rends-la équitable.\n",
        encoding="utf-8",
    )
    assert load_constitution(path).principles[0].name == "équité"


def test_missing_critique_or_revision_is_reported_with_its_line() -> None:
    text = "## Principle: a\nRevision: r\n\n## Principle: b\nCritique: c\n"
    assert problems_of(text) == [
        (1, "principle 'a' has no critique request; add a 'Critique: ...' line"),
        (4, "principle 'b' has no revision request; add a 'Revision: ...' line"),
    ]


def test_duplicate_names_no_principles_and_bad_weight() -> None:
    dup = "## Principle: a\nCritique: c\nRevision: r\n## Principle: a\nCritique: c\nRevision: r\n"
    assert problems_of(dup) == [
        (4, "duplicate principle name 'a' (first at line 1); names must be unique, ignoring case")
    ]
    assert problems_of("# Just prose\n") == [
        (None, "no principle found; add a '## Principle: <name>' section")
    ]
    for weight in ("0", "-1", "heavy", "nan", "inf"):
        bad = f"## Principle: a\nWeight: {weight}\nCritique: c\nRevision: r\n"
        assert problems_of(bad) == [
            (2, f"weight '{weight}' of principle 'a' must be a positive number")
        ]


def test_invalid_front_matter_is_reported_with_its_line() -> None:
    text = "---\nname: x\ndescription: [unclosed\n---\n## Principle: a\nCritique: c\nRevision: r\n"
    [(line, message)] = problems_of(text)
    assert line is not None and 2 <= line <= 5
    assert message.startswith("front matter is not valid YAML")
    assert problems_of("---\n- a list\n---\n## Principle: a\nCritique: c\nRevision: r\n") == [
        (2, "front matter must be a YAML mapping such as 'name: harmless'")
    ]


def test_examples_are_checked() -> None:
    base = "## Principle: a\nCritique: c\nRevision: r\n"
    assert problems_of(
        base + "## Example: e\nPrinciple: zzz\nUser: u\nAssistant: x\nCritique: k\nRevision: v\n"
    ) == [(5, "example 'e' names principle 'zzz', which is not defined")]
    assert problems_of(base + "## Example: e\nAssistant: x\nCritique: k\n") == [
        (4, "example 'e' needs a 'User:' turn first and an 'Assistant:' turn last")
    ]
    assert problems_of(base + "## Example: e\nUser: u\nAssistant: x\n") == [
        (4, "example 'e' has no 'Critique:'")
    ]


def test_text_before_any_key_in_a_principle_is_an_error() -> None:
    [(line, message)] = problems_of("## Principle: a\nstray words\nCritique: c\nRevision: r\n")
    assert line == 2 and message.startswith("text before any key in principle 'a'")


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_constitution(tmp_path / "nope.md")
    bad = tmp_path / "latin1.md"
    bad.write_bytes(b"## Principle: a\nCritique: caf\xe9\nRevision: r\n")
    with pytest.raises(InputError) as info:
        load_constitution(bad)
    assert (info.value.line, str(info.value)) == (
        2,
        f"{bad}:2: not UTF-8 text; save the file as UTF-8",
    )


def test_shipped_constitutions_are_valid_and_rich() -> None:
    for name, minimum in (("harmless", 12), ("helpful-honest", 3), ("customer-support", 3)):
        c = load_constitution(ROOT / "constitutions" / f"{name}.md")
        assert len(c.principles) >= minimum
        assert len(c.examples) >= 2
        assert any(e.revision is None for e in c.examples), (
            f"{name} needs a nothing-to-change example"
        )


def test_cli_check_reports_every_problem_and_exits_2(
    tmp_path: Path, mini_constitution: Path
) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text(
        "## Principle: a\nRevision: r\n## Principle: a\nCritique: c\nRevision: r\n"
        "## Principle: b\nWeight: lots\nCritique: c\nRevision: r\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["constitution", "check", str(mini_constitution), str(bad)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"{mini_constitution}: ok - 'mini', 2 principles, 2 examples",
        f"{bad}:1: principle 'a' has no critique request; add a 'Critique: ...' line",
        f"{bad}:3: duplicate principle name 'a' (first at line 1); names must be unique, ignoring case",
        f"{bad}:7: weight 'lots' of principle 'b' must be a positive number",
    ]
    ok = CliRunner().invoke(cli, ["constitution", "check", str(mini_constitution)])
    assert ok.exit_code == 0


def test_cli_show_prints_a_table(mini_constitution: Path) -> None:
    result = CliRunner().invoke(cli, ["constitution", "show", str(mini_constitution)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "mini"
    assert any(line.startswith("harm       3       75%") for line in lines)
    assert any(line.startswith("honesty    1       25%") for line in lines)
    assert lines[-1] == "2 few-shot examples; system prompt: yes"


PRINCIPLE = "## Principle: a\nCritique: c\nRevision: r\n"


def test_yaml_anchors_and_aliases_in_front_matter_are_refused() -> None:
    text = "---\nname: x\nbase: &b hello\ndescription: *b\n---\n" + PRINCIPLE
    assert problems_of(text) == [
        (
            3,
            "front matter uses a YAML anchor ('&b'); "
            "anchors and aliases are not allowed, write each value out in full",
        )
    ]
    alias_only = "---\nname: x\ndescription: *b\n---\n" + PRINCIPLE
    [(line, message)] = problems_of(alias_only)
    assert line == 3 and "alias ('*b')" in message


def test_billion_laughs_front_matter_is_refused_at_once() -> None:
    # Nine levels of nine aliases: 9**9 strings once expanded, from well under 1 KB of text.
    levels = ['l0: &l0 "lol"'] + [
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)
    ]
    text = "---\nname: bomb\n" + "\n".join(levels) + "\ndescription: *l9\n---\n" + PRINCIPLE
    assert len(text.encode()) < 1000
    start = time.monotonic()
    [(line, message)] = problems_of(text)
    assert time.monotonic() - start < 1
    assert line == 3 and "anchor ('&l0')" in message


def test_deeply_nested_front_matter_is_an_error_not_a_crash() -> None:
    text = "---\nname: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n---\n" + PRINCIPLE
    [(line, message)] = problems_of(text)
    assert line == 3 and "nested" in message


def test_unclosed_code_fence_is_an_error_with_its_line() -> None:
    text = PRINCIPLE + "\n```\nsome code\n\n## Principle: b\nCritique: c\nRevision: r\n"
    assert problems_of(text) == [
        (
            5,
            "code fence '```' is never closed, so everything after it is read as code; "
            "add a closing '```' line",
        )
    ]
    tilde = PRINCIPLE + "~~~~\n## Principle: b\n```\n~~~\n"
    assert problems_of(tilde) == [
        (
            4,
            "code fence '~~~~' is never closed, so everything after it is read as code; "
            "add a closing '~~~~' line",
        )
    ]


def test_closed_code_fences_hide_headings_and_keys() -> None:
    text = PRINCIPLE + "\n~~~markdown\n## Principle: shown\n```\nCritique: not a key\n~~~\n"
    c = parse_constitution(text, path="c.md")
    assert [p.name for p in c.principles] == ["a"]


def test_names_that_differ_only_in_case_are_duplicates() -> None:
    text = PRINCIPLE + "## Principle: A\nCritique: c\nRevision: r\n"
    assert problems_of(text) == [
        (
            4,
            "duplicate principle name 'A' (first at line 1: 'a'); names must be unique, ignoring case",
        )
    ]
    refers = PRINCIPLE + "## Example: e\nPrinciple: A\nUser: u\nAssistant: x\nCritique: k\n"
    c = parse_constitution(refers, path="c.md")
    assert c.principle("A") is c.principles[0]


def test_every_problem_is_reported_with_grammatical_counts() -> None:
    text = "## Principle: a\nRevision: r\n## Principle: a\nCritique: c\nRevision: r\n"
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, path="c.md")
    assert [p.line for p in info.value.problems] == [1, 3]
    assert str(info.value).endswith("(and 1 more problem)")
    three = text + "## Principle: b\nCritique: c\n"
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(three, path="c.md")
    assert str(info.value).endswith("(and 2 more problems)")


def test_cli_check_counts_in_good_grammar(tmp_path: Path) -> None:
    one = tmp_path / "one.md"
    one.write_text(
        PRINCIPLE + "## Example: e\nUser: u\nAssistant: x\nCritique: k\n", encoding="utf-8"
    )
    result = CliRunner().invoke(cli, ["constitution", "check", str(one)])
    assert result.exit_code == 0, result.output
    assert result.output == f"{one}: ok - 'one', 1 principle, 1 example\n"


def test_cli_check_and_show_of_a_missing_file_name_no_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nope.md"
    for command in ("check", "show"):
        result = CliRunner().invoke(cli, ["constitution", command, str(missing)])
        assert result.exit_code == 2
        assert "--constitution" not in result.output
        assert f"{missing}: no such file" in result.output
