"""The strict constitution check: a corpus of realistic mistakes, each an error at its line with
the fix (a did-you-mean where one applies), and look-alikes that must stay documentation.

Each mistake is one edit of tests/fixtures/constitution_mistakes/base.md, a valid constitution;
docs/constitutions.md has the same table for authors.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner

from cai.cli import cli
from cai.constitution import load_constitution, parse_constitution
from cai.errors import ConstitutionError

ROOT = Path(__file__).resolve().parent.parent
BASE = (ROOT / "tests" / "fixtures" / "constitution_mistakes" / "base.md").read_text(
    encoding="utf-8"
)


class Mistake(NamedTuple):
    name: str
    old: str  # text of the valid base file...
    new: str  # ...and what the mistake makes of it
    line: int | None
    message: str


CASES = [
    Mistake(
        "plural heading",
        "## Principle: not-preachy",
        "## Principles: not-preachy",
        19,
        "'## Principles: not-preachy' is not a heading cai reads ('Principles' is a plural), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "plural heading, lower case",
        "## Principle: not-preachy",
        "## principles: not-preachy",
        19,
        "'## principles: not-preachy' is not a heading cai reads ('principles' is a plural), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "plural example heading",
        "## Example: chest pain",
        "## Examples: chest pain",
        23,
        "'## Examples: chest pain' is not a heading cai reads ('Examples' is a plural), so this example would be left out; did you mean '## Example: chest pain'?",
    ),
    Mistake(
        "heading without its colon",
        "## Principle: no-dosing",
        "## Principle no-dosing",
        13,
        "'## Principle no-dosing' is not a heading cai reads (no colon after 'Principle'), so this principle would be left out; did you mean '## Principle: no-dosing'?",
    ),
    Mistake(
        "a dash for the colon",
        "## Principle: not-preachy",
        "## Principle - not-preachy",
        19,
        "'## Principle - not-preachy' is not a heading cai reads (no colon after 'Principle'), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "example heading without its colon",
        "## Example: chest pain",
        "## Example chest pain",
        23,
        "'## Example chest pain' is not a heading cai reads (no colon after 'Example'), so this example would be left out; did you mean '## Example: chest pain'?",
    ),
    Mistake(
        "misspelled example",
        "## Example: chest pain",
        "## Exemple: chest pain",
        23,
        "'## Exemple: chest pain' is not a heading cai reads ('Exemple' is misspelled), so this example would be left out; did you mean '## Example: chest pain'?",
    ),
    Mistake(
        "principal for principle",
        "## Principle: not-preachy",
        "## Principal: not-preachy",
        19,
        "'## Principal: not-preachy' is not a heading cai reads ('Principal' is misspelled), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "letters swapped",
        "## Principle: not-preachy",
        "## Prinicple: not-preachy",
        19,
        "'## Prinicple: not-preachy' is not a heading cai reads ('Prinicple' is misspelled), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "level-3 principle",
        "## Principle: not-preachy",
        "### Principle: not-preachy",
        19,
        "'### Principle: not-preachy' is not a heading cai reads (a level-3 heading; sections are level 2, '## '), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "level-1 example",
        "## Example: already fine",
        "# Example: already fine",
        30,
        "'# Example: already fine' is not a heading cai reads (a level-1 heading; sections are level 2, '## '), so this example would be left out; did you mean '## Example: already fine'?",
    ),
    Mistake(
        "no space after the hashes",
        "## Principle: not-preachy",
        "##Principle: not-preachy",
        19,
        "'##Principle: not-preachy' is not a heading cai reads (no space after '##'), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "principle without a name",
        "## Principle: not-preachy",
        "## Principle:",
        19,
        "'## Principle' needs a name: '## Principle: <name>'",
    ),
    Mistake(
        "a numbered principle",
        "## Principle: not-preachy",
        "## Principle 2: not-preachy",
        19,
        "'## Principle 2: not-preachy' is not a heading cai reads (a number between 'Principle' and the colon), so this principle would be left out; did you mean '## Principle: not-preachy'?",
    ),
    Mistake(
        "a numbered example",
        "## Example: already fine",
        "## Example 2. already fine",
        30,
        "'## Example 2. already fine' is not a heading cai reads (a number between 'Example' and the colon), so this example would be left out; did you mean '## Example: already fine'?",
    ),
    Mistake(
        "a weight with an equals sign",
        "Weight: 2",
        "Weight = 2",
        14,
        "principle 'no-dosing': 'Weight = 2' has no colon after 'Weight', so it is read as text; did you mean 'Weight: ...'?",
    ),
    Mistake(
        "misspelled system",
        "## System",
        "## Sytem",
        10,
        "'## Sytem' is not a heading cai reads ('Sytem' is misspelled), so this system prompt would be left out; did you mean '## System'?",
    ),
    Mistake(
        "system prompt heading",
        "## System",
        "## System prompt",
        10,
        "'## System prompt' is not a heading cai reads (the system prompt's heading is '## System' alone), so this system prompt would be left out; did you mean '## System'?",
    ),
    Mistake(
        "level-3 system",
        "## System",
        "### System",
        10,
        "'### System' is not a heading cai reads (a level-3 heading; sections are level 2, '## '), so this system prompt would be left out; did you mean '## System'?",
    ),
    Mistake(
        "Revison:",
        "Revision: Rewrite the response to drop",
        "Revison: Rewrite the response to drop",
        21,
        "principle 'not-preachy': 'Revison:' is not a key, so the line would be read as part of its 'Critique:'; did you mean 'Revision:'?",
    ),
    Mistake(
        "Critque:",
        "Critique: Point out",
        "Critque: Point out",
        20,
        "principle 'not-preachy': 'Critque:' is not a key, so the line would be read as text; did you mean 'Critique:'?",
    ),
    Mistake(
        "Wieght:",
        "Weight: 2",
        "Wieght: 2",
        14,
        "principle 'no-dosing': 'Wieght:' is not a key, so the line would be read as text; did you mean 'Weight:'?",
    ),
    Mistake(
        "Comparision:",
        "Comparison: Which",
        "Comparision: Which",
        17,
        "principle 'no-dosing': 'Comparision:' is not a key, so the line would be read as part of its 'Revision:'; did you mean 'Comparison:'?",
    ),
    Mistake(
        "Critique request:",
        "Critique: Identify",
        "Critique request: Identify",
        15,
        "principle 'no-dosing': 'Critique request:' is not a key, so the line would be read as part of its 'Weight:'; did you mean 'Critique:'?",
    ),
    Mistake(
        "Revision request:",
        "Revision: Rewrite the response without",
        "Revision request: Rewrite the response without",
        16,
        "principle 'no-dosing': 'Revision request:' is not a key, so the line would be read as part of its 'Critique:'; did you mean 'Revision:'?",
    ),
    Mistake(
        "Revised: for Revision:",
        "Revision: Rewrite the response to drop",
        "Revised: Rewrite the response to drop",
        21,
        "principle 'not-preachy': 'Revised:' is not a key, so the line would be read as part of its 'Critique:'; did you mean 'Revision:'?",
    ),
    Mistake(
        "a dash for a key's colon",
        "Revision: Rewrite the response without",
        "Revision - Rewrite the response without",
        16,
        "principle 'no-dosing': 'Revision - Rewrite the response without specific doses, and…' has no colon after 'Revision', so it is read as text; did you mean 'Revision: ...'?",
    ),
    Mistake(
        "a key alone on its line",
        "Critique: Point out",
        "Critique\nPoint out",
        20,
        "principle 'not-preachy': 'Critique' has no colon after 'Critique', so it is read as text; did you mean 'Critique: ...'?",
    ),
    Mistake(
        "a bold key misspelled",
        "Critique: Point out",
        "**Critque:** Point out",
        20,
        "principle 'not-preachy': 'Critque:' is not a key, so the line would be read as text; did you mean 'Critique:'?",
    ),
    Mistake(
        "Asistant:",
        "Assistant: Take 900",
        "Asistant: Take 900",
        26,
        "example 'chest pain': 'Asistant:' is not a key, so the line would be read as part of its 'User:'; did you mean 'Assistant:'?",
    ),
    Mistake(
        "Usre:",
        "User: I have chest",
        "Usre: I have chest",
        25,
        "example 'chest pain': 'Usre:' is not a key, so the line would be read as part of its 'Principle:'; did you mean 'User:'?",
    ),
    Mistake(
        "Critiqe: in an example",
        "Critique: The answer is correct",
        "Critiqe: The answer is correct",
        33,
        "example 'already fine': 'Critiqe:' is not a key, so the line would be read as part of its 'Assistant:'; did you mean 'Critique:'?",
    ),
    Mistake(
        "Revsion: in an example",
        "Revision: Chest pain",
        "Revsion: Chest pain",
        28,
        "example 'chest pain': 'Revsion:' is not a key, so the line would be read as part of its 'Critique:'; did you mean 'Revision:'?",
    ),
    Mistake(
        "Principel: in an example",
        "\nPrinciple: no-dosing",
        "\nPrincipel: no-dosing",
        24,
        "example 'chest pain': 'Principel:' is not a key, so the line would be read as text; did you mean 'Principle:'?",
    ),
    Mistake(
        "a principle's key in an example",
        "\nPrinciple: no-dosing\n",
        "\nPrinciple: no-dosing\nWeight: 2\n",
        25,
        "example 'chest pain': 'Weight:' is a key of principles, not of examples; did you mean to set it in the '## Principle: <name>' section?",
    ),
    Mistake(
        "an example's key in a principle",
        "Critique: Point out",
        "Principle: Never lecture the user.\nCritique: Point out",
        20,
        "principle 'not-preachy': 'Principle:' is a key of examples, not of principles (they have Critique:, Revision:, Weight: and Comparison:); did you mean to start an example with '## Example: <title>' above it?",
    ),
    Mistake(
        "an example without its heading",
        "\n## Example: already fine\n",
        "\n",
        30,
        "example 'chest pain': 'User:' after 'Critique:'; put the conversation first, or start another example with '## Example: <title>' above it",
    ),
    Mistake(
        "a weight with a unit",
        "Weight: 2",
        "Weight: 2x",
        14,
        "weight '2x' of principle 'no-dosing' must be a positive number",
    ),
    Mistake(
        "a weight in words",
        "Weight: 2",
        "Weight: high",
        14,
        "weight 'high' of principle 'no-dosing' must be a positive number",
    ),
    Mistake(
        "a negative weight",
        "Weight: 2",
        "Weight: -1",
        14,
        "weight '-1' of principle 'no-dosing' must be a positive number",
    ),
    Mistake(
        "a misspelled principle name in an example",
        "\nPrinciple: no-dosing",
        "\nPrinciple: no-dose",
        24,
        "example 'chest pain' names principle 'no-dose', which is not defined; did you mean 'no-dosing'?",
    ),
    Mistake(
        "a duplicate principle name",
        "## Principle: not-preachy",
        "## Principle: No-Dosing",
        19,
        "duplicate principle name 'No-Dosing' (first at line 13: 'no-dosing'); names must be unique, ignoring case",
    ),
    Mistake(
        "the assistant speaks first",
        "User: What is the capital of France?\nAssistant: Paris.",
        "Assistant: Paris.\nUser: What is the capital of France?",
        30,
        "example 'already fine' needs a 'User:' turn first and an 'Assistant:' turn last",
    ),
    Mistake(
        "an example without a critique",
        "Critique: The answer is correct and harmless.\nNO CHANGES NEEDED",
        "NO CHANGES NEEDED",
        30,
        "example 'already fine' has no 'Critique:'",
    ),
    Mistake(
        "an empty comparison",
        "Comparison: Which response avoids giving specific medication doses?",
        "Comparison:",
        17,
        "principle 'no-dosing' has an empty 'Comparison:'; write the question a feedback model answers, or remove the line",
    ),
    Mistake(
        "an unclosed code fence",
        "# Kind helper\n",
        "# Kind helper\n```\n",
        7,
        "code fence '```' is never closed, so everything after it is read as code; add a closing '```' line",
    ),
    Mistake(
        "unclosed front matter",
        "version: 2\n---\n",
        "version: 2\n",
        1,
        "front matter opened with '---' is never closed; add a closing '---' line",
    ),
    Mistake(
        "a second critique",
        "Revision: Rewrite the response to drop",
        "Critique: Also check the tone.\nRevision: Rewrite the response to drop",
        21,
        "principle 'not-preachy' has a second 'Critique:'; keep one",
    ),
]


# Mistakes whose fix is not a rewording of the line (a value, a duplicate, a structure).
NO_DID_YOU_MEAN = {
    "principle without a name",
    "a weight with a unit",
    "a weight in words",
    "a negative weight",
    "a duplicate principle name",
    "the assistant speaks first",
    "an example without a critique",
    "an empty comparison",
    "an unclosed code fence",
    "unclosed front matter",
    "a second critique",
    "an example without its heading",
}


def test_the_base_file_is_valid() -> None:
    parsed = parse_constitution(BASE, path="base.md")
    assert parsed.summary == "'kind-helper', 2 principles, 2 examples"


def test_the_corpus_holds_at_least_thirty_distinct_mistakes() -> None:
    assert len(CASES) >= 30
    assert len({m.name for m in CASES}) == len(CASES)
    assert len({m.new for m in CASES}) == len(CASES)


@pytest.mark.parametrize("mistake", CASES, ids=[m.name for m in CASES])
def test_each_mistake_exits_2_with_its_line_and_fix(tmp_path: Path, mistake: Mistake) -> None:
    assert BASE.count(mistake.old) == 1, "the mistake must edit one place of the base file"
    path = tmp_path / "constitution.md"
    path.write_text(BASE.replace(mistake.old, mistake.new), encoding="utf-8")
    result = CliRunner().invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 2, result.output
    where = f"{path}:{mistake.line}" if mistake.line else str(path)
    assert result.output.splitlines() == [f"{where}: {mistake.message}"]
    assert "Traceback" not in result.output and "\\n" not in result.output
    if mistake.name not in NO_DID_YOU_MEAN:
        assert "did you mean" in mistake.message
    # The same problem, and only it, from the library.
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert [(p.line, p.message) for p in info.value.problems] == [(mistake.line, mistake.message)]


PROSE = """\
---
name: prose
---
# Principles for a support bot

## Background
Note: this file is read by cai; everything outside the sections is documentation.
Note: principles are drawn at random, one per round.
Summary: two principles and one example.
Use: run `cai constitution check` before a run.

### Principles of this file
Each principle below has a critique and a revision request.

## Examples
The few-shot examples come last.

## Systemic risks
## Principle of least privilege
## Example for the reader
## System requirements
Revison: a word that only looks like a key, in documentation.

## Principle: **kind**
**Weight:** 2
**Critique:** Point out anything unkind in the response.
Note: tone matters more than length.
**Revision**: Rewrite the response to be kind.
__Comparison:__ Which response is kinder?

## Principle: honest
Critique: Identify claims the response cannot support.
Uses: every factual claim.
Revision: Rewrite the response so every claim is supported.

### Notes
A deeper heading ends the value above it; this line is documentation.

## Example: a greeting
Principle: kind
Human: Hi!
AI: Hello, how can I help?
H: Is this a key?
A: Yes: H:/A: are User:/Assistant: too.
Critique: Friendly and helpful.
Uses: none.
NO CHANGES NEEDED
"""


def test_prose_headings_note_lines_and_look_alikes_pass(tmp_path: Path) -> None:
    path = tmp_path / "prose.md"
    path.write_text(PROSE, encoding="utf-8")
    result = CliRunner().invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 0, result.output
    parsed = load_constitution(path)
    kind, honest = parsed.principles
    assert (kind.name, kind.weight, kind.comparison) == (
        "kind",
        2.0,
        "Which response is kinder?",
    )
    assert (
        kind.critique
        == "Point out anything unkind in the response.\nNote: tone matters more than length."
    )
    assert kind.revision == "Rewrite the response to be kind."
    assert (
        honest.critique
        == "Identify claims the response cannot support.\nUses: every factual claim."
    )
    [example] = parsed.examples
    assert example.turns == (
        ("user", "Hi!"),
        ("assistant", "Hello, how can I help?"),
        ("user", "Is this a key?"),
        ("assistant", "Yes: H:/A: are User:/Assistant: too."),
    )
    assert example.critique == "Friendly and helpful.\nUses: none.\nNO CHANGES NEEDED"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "constitutions").glob("*.md")), ids=lambda p: p.name
)
def test_shipped_constitutions_pass_the_strict_check(path: Path) -> None:
    result = CliRunner().invoke(cli, ["constitution", "check", str(path)])
    assert result.exit_code == 0, result.output


def test_a_value_is_quoted_as_one_line_of_the_file() -> None:
    text = "## Principle: a\nWeight: 0.5 or so\nif needed\nCritique: c\nRevision: r\n"
    with pytest.raises(ConstitutionError) as info:
        parse_constitution(text, path="c.md")
    [problem] = info.value.problems
    assert (problem.line, problem.message) == (
        2,
        "weight '0.5 or so …' of principle 'a' must be a positive number",
    )


def test_show_prints_every_request_in_full(tmp_path: Path) -> None:
    path = tmp_path / "long.md"
    critique = (
        "Identify any specific medication doses in the response that the user should get "
        "from a doctor or pharmacist instead"
    )
    path.write_text(
        f"## Principle: no-dosing\nCritique: {critique},\nand say why.\n"
        "Revision: Rewrite the response without doses.\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli, ["constitution", "show", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index("Principle 'no-dosing' (line 1):")
    assert lines[start + 1 : start + 4] == [
        f"Critique: {critique},",
        "  and say why.",
        "Revision: Rewrite the response without doses.",
    ]
    assert "…" not in result.output


def test_the_docs_table_lists_every_mistake_of_the_corpus() -> None:
    docs = (ROOT / "docs" / "constitutions.md").read_text(encoding="utf-8")
    rows = [line for line in docs.splitlines() if line.startswith("| ") and " | " in line]
    for i, mistake in enumerate(CASES, 1):
        message = mistake.message.replace("|", "\\|")
        assert any(
            row.startswith(f"| {i} | {mistake.name} |")
            and row.endswith(f"| {mistake.line or '-'} | {message} |")
            for row in rows
        ), mistake.name
