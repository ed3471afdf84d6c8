"""Constitutions written in Markdown: parse, validate, and look up principles.

The format, in short (see README "Authoring a constitution")::

    ---                 optional YAML front matter: name, description, version
    ---
    ## System           optional system prompt for the initial response
    ## Principle: NAME  Weight: / Critique: / Revision: / Comparison: (for cai label)
    ## Example: TITLE   Principle: / User: / Assistant: / Critique: / Revision:

Key words are case-insensitive at the start of a line, and may be bold (`**Critique:**`); a
value runs to the next key line or heading; in examples, Human:/H: and AI:/A: are User: and
Assistant:. Everything outside these sections is documentation, except a near miss of what
is read (`## Principles: x`, `### Principle: x`, `Revison:`), which is an error with a
did-you-mean, so that nothing is silently dropped (docs/constitutions.md has the rules).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConstitutionError, InputError, Problem

__all__ = [
    "SHIPPED_DIR",
    "Constitution",
    "Example",
    "Principle",
    "load_constitution",
    "parse_constitution",
    "resolve_constitution",
    "shipped_constitutions",
]

# The constitutions that come with the package, each named by its file's stem ("harmless").
SHIPPED_DIR = Path(__file__).parent / "data" / "constitutions"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# A heading's first word, an optional colon, and the rest: "Principle: name", "Principles name".
_HEADING_PARTS = re.compile(r"^([^\W\d_]+)\s*(:)?\s*(.*)$")
_SECTIONS = ("system", "principle", "example")
# A line that looks like a key: a word (or "Critique request"), a colon, the value; the word
# may be bold ("**Critique:**", "**Critique**:", "__Critique:__").
_KEY_LIKE = re.compile(
    r"^(\*\*|__)?([^\W\d_]+(?:[ \t]+request)?)[ \t]*(\*\*|__)?[ \t]*:(\*\*|__)?[ \t]?(.*)$",
    re.IGNORECASE,
)
# A key word with no colon, alone or before a dash or "=": "Revision", "Critique - ...".
_BARE_KEY = re.compile(r"^(\*\*|__)?([^\W\d_]+)(\*\*|__)?(?:[ \t]*$|[ \t]+[-–—=][ \t]*(.*)$)")
# First words of a heading's title that make it prose, not a section's name.
_PROSE_WORDS = {
    "a", "about", "an", "and", "behind", "by", "for", "from", "in", "is", "of", "on", "or",
    "the", "to", "vs", "with",
}  # fmt: skip
_SYSTEM_NAMES = {"prompt", "message", "instructions", "instruction", "prompt text"}
_NUMBERED = re.compile(r"^\d+\s*[:.)]\s*(\S.*)$")
# "##Principle: x": Markdown reads it as text, not as a heading.
_UNSPACED_HEADING = re.compile(r"^(#{1,6})([^\s#].*?)\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_MAX_YAML_DEPTH = 20
_PRINCIPLE_KEYS = {"weight", "critique", "revision", "comparison"}
_EXAMPLE_KEYS = {"principle", "user", "assistant", "critique", "revision"}
# The paper's transcripts write turns as "Human:"/"Assistant:", and some as "H:"/"A:".
_TURN_ALIASES = {"human": "user", "h": "user", "ai": "assistant", "a": "assistant"}
# Ordinary words at the start of a value's line that are one edit from "User:".
_NOT_TYPOS = {"use", "uses", "used"}
# Words people write for a key that are more than two edits from it.
_KEY_MISTAKES = {
    "revised": "revision",
    "rewrite": "revision",
    "critic": "critique",
    "criticism": "critique",
}


@dataclass(frozen=True)
class Principle:
    """One principle: how to critique a response against it, and how to revise it.

    `comparison` is the question a feedback model answers when it compares two responses
    under this principle (`cai label`); None means one built from the name and critique.
    """

    name: str
    critique: str
    revision: str
    weight: float = 1.0
    line: int = 0
    comparison: str | None = None


@dataclass(frozen=True)
class Example:
    """A few-shot demonstration of one critique-and-revision round.

    `turns` is the conversation up to and including the response being critiqued. A
    `revision` of None means the critique found nothing to change.
    """

    title: str
    turns: tuple[tuple[str, str], ...]
    critique: str
    revision: str | None
    principle: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    examples: tuple[Example, ...] = ()
    system: str | None = None
    description: str = ""
    version: str | None = None
    path: str = ""
    sha256: str = ""
    text: str = field(default="", repr=False)

    def principle(self, name: str) -> Principle:
        """The principle of that name; names are compared ignoring case, as the parser does."""
        for principle in self.principles:
            if principle.name.casefold() == name.casefold():
                return principle
        raise KeyError(name)

    @property
    def summary(self) -> str:
        """What `cai constitution check` reports, such as "'harmless', 14 principles, 4 examples"."""
        return (
            f"'{self.name}', {_count(len(self.principles), 'principle')}, "
            f"{_count(len(self.examples), 'example')}"
        )

    @property
    def weights(self) -> list[float]:
        return [p.weight for p in self.principles]


def shipped_constitutions() -> dict[str, Path]:
    """The shipped constitutions' files by name, in name order."""
    return {path.stem: path for path in sorted(SHIPPED_DIR.glob("*.md"))}


def resolve_constitution(name_or_path: str | Path) -> Path:
    """The file a constitution argument names: a path wins when a file of that name exists;
    else a shipped constitution of that name (`"harmless"`); else, for a bare name (no folder,
    no `.md`), an `InputError` listing the shipped names. Any other path is returned as given,
    so reading it reports what is wrong with it."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    shipped = shipped_constitutions()
    if text in shipped:
        return shipped[text]
    if path.name == text and path.suffix.lower() != ".md":
        raise InputError(
            text,
            None,
            "no such file, nor a shipped constitution of that name; shipped: " + ", ".join(shipped),
        )
    return path


def load_constitution(path: str | Path, *, option: str | None = "--constitution") -> Constitution:
    """Read and parse a constitution file, or a shipped one by name (`resolve_constitution`);
    raises `InputError`/`ConstitutionError`.

    `option` is the command-line option that named the file, for the hint when it is missing;
    None for a command that takes the path as an argument.
    """
    path = resolve_constitution(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        hint = f"; check the {option} path" if option else ""
        raise InputError(str(path), None, f"no such file{hint}") from None
    except IsADirectoryError:
        raise InputError(str(path), None, "is a directory, not a constitution file") from None
    except OSError as e:
        raise InputError(str(path), None, f"cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(str(path), line, "not UTF-8 text; save the file as UTF-8") from None
    return parse_constitution(
        text, path=str(path), default_name=path.stem, sha256=hashlib.sha256(data).hexdigest()
    )


def parse_constitution(
    text: str, *, path: str = "<string>", default_name: str = "constitution", sha256: str = ""
) -> Constitution:
    """Parse constitution Markdown; every problem found is reported in one `ConstitutionError`."""
    return _Parser(text, path).parse(
        default_name, sha256 or hashlib.sha256(text.encode()).hexdigest()
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _show(value: str, limit: int = 40) -> str:
    """A value from the file, quoted as its first line cut short, for an error message: a
    message quotes one line of the file, never an escaped newline."""
    first, *more = value.strip().split("\n")
    text = first.strip() if len(first) <= limit else first[:limit].rstrip() + "…"
    return f"'{text}{' …' if more and not text.endswith('…') else ''}'"


def _edits(a: str, b: str) -> int:
    """Edits (insert, delete, replace, swap two neighbours) that turn `a` into `b`."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def _near(word: str, known: Iterable[str]) -> str | None:
    """The known word that `word` misspells: within two edits (one for a word of four letters
    or less) and with the same first letter, as a typo keeps it; None if none is that close."""
    word = word.casefold()
    best = None
    for candidate in known:
        budget = 1 if len(candidate) <= 4 else 2
        if word == candidate or word[:1] != candidate[:1]:
            continue
        distance = _edits(word, candidate)
        if distance <= budget and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best else None


def _plural_of(word: str, known: Iterable[str]) -> str | None:
    word = word.casefold()
    return next((k for k in known if word in (k + "s", k + "es")), None)


@dataclass
class _Section:
    kind: str  # "system" | "principle" | "example" | "doc"
    title: str
    line: int
    values: list[tuple[str, int, list[str]]] = field(default_factory=list)  # key, line, lines
    body: list[str] = field(default_factory=list)  # for "system"


class _Parser:
    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self.problems: list[Problem] = []
        # (line, example title, name) of each example's "Principle:", checked once all
        # principles are read.
        self.principle_refs: list[tuple[int, str, str]] = []

    def error(self, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def parse(self, default_name: str, sha256: str) -> Constitution:
        meta, start = self._front_matter()
        sections = self._sections(start)
        system = None
        principles: list[Principle] = []
        examples: list[Example] = []
        # casefolded name -> (line, name) of its first section, valid or not, so that a
        # duplicate is reported even when the first one has problems of its own
        seen: dict[str, tuple[int, str]] = {}
        for section in sections:
            if section.kind == "system":
                if system is not None:
                    self.error(section.line, "a second '## System' section; keep one")
                system = "\n".join(section.body).strip() or None
            elif section.kind == "principle":
                principle = self._principle(section)
                key = section.title.casefold()
                if key and key in seen:
                    first_line, first = seen[key]
                    same = "" if first == section.title else f": '{first}'"
                    self.error(
                        section.line,
                        f"duplicate principle name '{section.title}' (first at line "
                        f"{first_line}{same}); names must be unique, ignoring case",
                    )
                    continue
                if key:
                    seen[key] = (section.line, section.title)
                if principle is not None:
                    principles.append(principle)
            elif section.kind == "example":
                example = self._example(section)
                if example is not None:
                    examples.append(example)
        for line, title, named in self.principle_refs:
            if named.casefold() not in seen:
                close = difflib.get_close_matches(named.casefold(), list(seen), n=1, cutoff=0.6)
                hint = f"; did you mean '{seen[close[0]][1]}'?" if close else ""
                self.error(
                    line,
                    f"example '{title}' names principle {_show(named)}, which is not defined"
                    + hint,
                )
        # Without other problems: an unclosed fence or front matter hides every principle.
        if not self.problems and not any(s.kind == "principle" for s in sections):
            self.error(None, "no principle found; add a '## Principle: <name>' section")
        if not math.isfinite(sum(p.weight for p in principles)):
            # Each is finite, but a draw by weight divides by their sum.
            self.error(
                max(principles, key=lambda p: p.weight).line,
                "the principles' weights add up to more than a number can hold; "
                "scale them down (only their ratios matter)",
            )
        if self.problems:
            raise ConstitutionError(sorted(self.problems, key=lambda p: p.line or 0))
        name = meta.get("name", default_name)
        return Constitution(
            name=str(name),
            principles=tuple(principles),
            examples=tuple(examples),
            system=system,
            description=str(meta.get("description") or ""),
            version=None if meta.get("version") is None else str(meta["version"]),
            path=self.path,
            sha256=sha256,
            text="\n".join(self.lines),
        )

    def _front_matter(self) -> tuple[dict, int]:
        if not self.lines or self.lines[0].strip() != "---":
            return {}, 0
        for i in range(1, len(self.lines)):
            if self.lines[i].strip() in ("---", "..."):
                break
        else:
            self.error(
                1, "front matter opened with '---' is never closed; add a closing '---' line"
            )
            return {}, len(self.lines)
        import yaml  # only constitutions with front matter pay for it

        text = "\n".join(self.lines[1:i])
        try:
            if not self._plain_yaml(yaml, text):
                return {}, i + 1
            meta = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 2 if mark is not None else 1
            problem = getattr(e, "problem", None) or "invalid YAML"
            self.error(line, f"front matter is not valid YAML: {problem}")
            return {}, i + 1
        if not isinstance(meta, dict):
            self.error(2, "front matter must be a YAML mapping such as 'name: harmless'")
            return {}, i + 1
        if "name" in meta and (
            not isinstance(meta["name"], str | int) or not str(meta["name"]).strip()
        ):
            self.error(2, "front matter 'name' must be a non-empty string")
            meta = {k: v for k, v in meta.items() if k != "name"}
        return meta, i + 1

    def _plain_yaml(self, yaml: Any, text: str) -> bool:
        """Refuse anchors, aliases and deep nesting before anything is built from the YAML.

        An alias repeats a whole value, so a few hundred bytes of aliases to aliases expand to
        billions of values (the "billion laughs"); and PyYAML builds nested values by
        recursion. The scan takes time in proportion to the text and builds nothing.
        """
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 2  # the front matter starts on line 2
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                sign, kind = (
                    ("*", "alias") if isinstance(event, yaml.AliasEvent) else ("&", "anchor")
                )
                self.error(
                    line,
                    f"front matter uses a YAML {kind} ('{sign}{anchor}'); anchors and aliases "
                    "are not allowed, write each value out in full",
                )
                return False
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_YAML_DEPTH:
                    self.error(
                        line,
                        f"front matter is nested more than {_MAX_YAML_DEPTH} levels deep; "
                        "use plain values such as 'name: harmless'",
                    )
                    return False
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return True

    def _sections(self, start: int) -> list[_Section]:
        sections: list[_Section] = []
        current = _Section("doc", "", start)
        fence = ""  # the open code fence's marker, such as "```"; headings inside are code
        fence_line = 0
        for index in range(start, len(self.lines)):
            raw = self.lines[index]
            lineno = index + 1
            marker = _FENCE.match(raw)
            if marker and not fence:
                fence, fence_line = marker.group(1), lineno
            elif (
                marker
                and marker.group(1)[0] == fence[0]
                and len(marker.group(1)) >= len(fence)
                and not raw.strip().strip(fence[0])
            ):
                fence = ""
            in_fence = bool(fence) or bool(marker)
            heading = None if in_fence else _HEADING.match(raw)
            if heading is None and not in_fence:
                unspaced = _UNSPACED_HEADING.match(raw)
                if unspaced is not None:
                    level = len(unspaced.group(1))
                    section = self._heading(level, unspaced.group(2), lineno, raw, unspaced=True)
                    if section is not None:
                        current = section
                        sections.append(current)
                        continue
            if heading:
                level, title = len(heading.group(1)), heading.group(2)
                section = self._heading(level, title, lineno, raw)
                if section is not None:
                    current = section
                    sections.append(current)
                    continue
                if level <= 2:
                    current = _Section("doc", title, lineno)
                    continue
                # A deeper heading ends the value it interrupts; what follows is documentation.
                if current.kind in ("principle", "example"):
                    current.values.append(("", lineno, []))
                    continue
            if current.kind == "system":
                current.body.append(raw)
            elif current.kind in ("principle", "example"):
                allowed = _PRINCIPLE_KEYS if current.kind == "principle" else _EXAMPLE_KEYS
                key = None if in_fence else self._key(raw, lineno, current, allowed)
                if key is not None:
                    current.values.append((key[0], lineno, [key[1]]))
                elif current.values:
                    current.values[-1][2].append(raw)
                elif raw.strip():
                    keys = ", ".join(k.title() + ":" for k in sorted(allowed))
                    self.error(
                        lineno,
                        f"text before any key in {current.kind} '{current.title}'; start the line with one of {keys}",
                    )
        if fence:
            self.error(
                fence_line,
                f"code fence '{fence}' is never closed, so everything after it is read as code; "
                f"add a closing '{fence}' line",
            )
        return sections

    def _heading(
        self, level: int, title: str, lineno: int, raw: str, *, unspaced: bool = False
    ) -> _Section | None:
        """The section a heading opens; None when it is documentation.

        A near miss of a section heading (a plural, a missing colon, a wrong level, a
        misspelling) is an error with the heading it should be, and is then read as that
        section, so that one mistake gives one message. Headings that are not near misses
        ("## Background", "### Principles of this file", "## Examples") are documentation.
        """
        plain = title.replace(title[:2], "").strip() if title[:2] in ("**", "__") else title
        parts = _HEADING_PARTS.match(plain)
        if parts is None:
            return None
        word, colon, rest = parts.group(1), bool(parts.group(2)), parts.group(3).strip()
        if len(rest) > 4 and rest[:2] in ("**", "__") and rest.endswith(rest[:2]):
            rest = rest[2:-2].strip()  # "## Principle: **kind**" names 'kind'
        lower = word.casefold()
        exact = lower in _SECTIONS
        singular = None if exact else _plural_of(lower, _SECTIONS)
        kind = lower if exact else singular or _near(lower, _SECTIONS)
        if kind is None:
            return None
        plural = singular is not None
        if exact and level == 2 and (colon or not rest) and not unspaced:
            if kind != "system" and not rest:
                self.error(lineno, f"'## {word}' needs a name: '## {word}: <name>'")
            return _Section(kind, rest, lineno)
        wrong_level = level != 2
        # Prose after the word reads as a title, not a name: "## Principle of least privilege",
        # "## System requirements".
        prose = bool(rest) and (
            rest.split()[0].casefold() in _PROSE_WORDS
            if kind != "system"
            else rest.casefold() not in _SYSTEM_NAMES
        )
        near_miss = (
            colon
            or (unspaced and level == 2)
            or (exact and level == 2 and not prose)  # "## Principle no-dosing", "## System prompt"
            or (not rest and not plural)  # "## Sytem", "### System"
        )
        if not near_miss or (exact and wrong_level and not rest and kind != "system"):
            return None
        reasons = []
        if unspaced:
            reasons.append(f"no space after '{'#' * level}'")
        if plural:
            reasons.append(f"'{word}' is a plural")
        elif not exact:
            reasons.append(f"'{word}' is misspelled")
        if wrong_level:
            reasons.append(f"a level-{level} heading; sections are level 2, '## '")
        # "## Principle 2: honesty": the number is not part of the name.
        numbered = None if colon else _NUMBERED.match(rest)
        if numbered is not None and kind != "system":
            reasons.append(f"a number between '{word}' and the colon")
        elif not colon and rest and kind != "system":
            reasons.append(f"no colon after '{word}'")
        if kind == "system" and rest and not colon:
            reasons.append("the system prompt's heading is '## System' alone")
        name = (numbered.group(1) if numbered else rest).lstrip("-–—=: ").strip()
        fixed = "## System" if kind == "system" else f"## {kind.title()}: {name or '<name>'}"
        noun = "system prompt" if kind == "system" else kind
        self.error(
            lineno,
            f"{_show(raw, 60)} is not a heading cai reads ({'; '.join(reasons)}), so this "
            f"{noun} would be left out; did you mean '{fixed}'?",
        )
        return _Section(kind, "" if kind == "system" else name, lineno)

    def _key(
        self, raw: str, lineno: int, section: _Section, allowed: set[str]
    ) -> tuple[str, str] | None:
        """(key, value) of a key line of a principle or example; None for a line of a value.

        Bold keys are keys. In examples, Human:/H: and AI:/A: are User: and Assistant:. A line
        that looks like a key but is within two edits of one (or a key of the other kind of
        section) is an error with a did-you-mean; the near miss is then read as the key it
        misspells, so that one mistake gives one message.
        """
        match = _KEY_LIKE.match(raw)
        if match is None:
            bare = _BARE_KEY.match(raw)
            if bare is not None and bare.group(2).casefold() in allowed:
                word = bare.group(2)
                self.error(
                    lineno,
                    f"{section.kind} '{section.title}': {_show(raw, 60)} has no colon after "
                    f"'{word}', so it is read as text; did you mean '{word.title()}: ...'?",
                )
                return word.casefold(), bare.group(4) or ""
            return None
        bold, word, close, close_after, value = match.groups()
        lower = " ".join(word.casefold().split())
        if lower in allowed:
            return lower, value  # "**Critique:" with its closing "**" forgotten is a key too
        if (bold or close or close_after) and (
            bold is None
            or (close is None) == (close_after is None)
            or bold not in (close, close_after)
        ):
            return None  # "Note**:" and the like: emphasis that makes no key
        if section.kind == "example" and lower in _TURN_ALIASES:
            return _TURN_ALIASES[lower], value
        where = f"{section.kind} '{section.title}'"
        now = (
            f"read as part of its '{section.values[-1][0].title()}:'"
            if section.values and section.values[-1][0]
            else "read as text"
        )
        request = lower.removesuffix(" request")
        target = None
        if lower != request:
            target = request if request in allowed else None
        elif lower in _KEY_MISTAKES:
            target = _KEY_MISTAKES[lower] if _KEY_MISTAKES[lower] in allowed else None
        elif lower not in _NOT_TYPOS:
            target = _plural_of(lower, allowed) or _near(lower, allowed)
        if target is not None:
            self.error(
                lineno,
                f"{where}: '{word}:' is not a key, so the line would be {now}; "
                f"did you mean '{target.title()}:'?",
            )
            return target, value
        if section.kind == "principle" and lower in _EXAMPLE_KEYS | {"human", "ai"}:
            self.error(
                lineno,
                f"{where}: '{word}:' is a key of examples, not of principles (they have "
                "Critique:, Revision:, Weight: and Comparison:); did you mean to start an "
                "example with '## Example: <title>' above it?",
            )
        elif section.kind == "example" and lower in _PRINCIPLE_KEYS:
            self.error(
                lineno,
                f"{where}: '{word}:' is a key of principles, not of examples; did you mean to "
                "set it in the '## Principle: <name>' section?",
            )
        else:
            return None
        return "", value  # reported: ends the value before it, and is read as nothing

    def _principle(self, section: _Section) -> Principle | None:
        fields: dict[str, tuple[int, str]] = {}
        for key, line, lines in section.values:
            if not key:
                continue
            if key in fields:
                self.error(
                    line, f"principle '{section.title}' has a second '{key.title()}:'; keep one"
                )
                continue
            fields[key] = (line, "\n".join(lines).strip())
        ok = bool(section.title)
        for key in ("critique", "revision"):
            if key not in fields or not fields[key][1]:
                line = fields[key][0] if key in fields else section.line
                self.error(
                    line,
                    f"principle '{section.title}' has no {key} request; add a '{key.title()}: ...' line",
                )
                ok = False
        weight = 1.0
        if "weight" in fields:
            line, value = fields["weight"]
            try:
                weight = float(value)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                self.error(
                    line,
                    f"weight {_show(value)} of principle '{section.title}' must be a positive number",
                )
                ok = False
        if not ok:
            return None
        comparison = fields["comparison"][1] if "comparison" in fields else None
        if comparison is not None and not comparison:
            self.error(
                fields["comparison"][0],
                f"principle '{section.title}' has an empty 'Comparison:'; write the question "
                "a feedback model answers, or remove the line",
            )
            return None
        return Principle(
            section.title,
            fields["critique"][1],
            fields["revision"][1],
            weight,
            section.line,
            comparison=comparison,
        )

    def _example(self, section: _Section) -> Example | None:
        turns: list[tuple[str, str]] = []
        fields: dict[str, str] = {}
        principle = None
        ok = bool(section.title)
        for key, line, lines in section.values:
            value = "\n".join(lines).strip()
            if key in ("user", "assistant"):
                if "critique" in fields:
                    self.error(
                        line,
                        f"example '{section.title}': '{key.title()}:' after 'Critique:'; put the "
                        "conversation first, or start another example with '## Example: "
                        "<title>' above it",
                    )
                    # What follows is likely another example's: its keys would only repeat this.
                    return None
                turns.append((key, value))
            elif key == "principle":
                principle = value
                if value:
                    self.principle_refs.append((line, section.title, value))
            elif key:
                if key in fields:
                    self.error(
                        line, f"example '{section.title}' has a second '{key.title()}:'; keep one"
                    )
                    ok = False
                fields[key] = value
        roles = [role for role, _ in turns]
        if not turns or roles[0] != "user" or roles[-1] != "assistant":
            self.error(
                section.line,
                f"example '{section.title}' needs a 'User:' turn first and an 'Assistant:' turn last",
            )
            ok = False
        elif any(a == b for a, b in itertools.pairwise(roles)):
            self.error(
                section.line,
                f"example '{section.title}': 'User:' and 'Assistant:' turns must alternate",
            )
            ok = False
        if not fields.get("critique"):
            self.error(section.line, f"example '{section.title}' has no 'Critique:'")
            ok = False
        if not ok:
            return None
        return Example(
            title=section.title,
            turns=tuple(turns),
            critique=fields["critique"],
            revision=fields.get("revision") or None,
            principle=principle or None,
            line=section.line,
        )
