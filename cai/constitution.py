"""Constitutions written in Markdown: parse, validate, and look up principles.

The format, in short (see README "Authoring a constitution")::

    ---                 optional YAML front matter: name, description, version
    ---
    ## System           optional system prompt for the initial response
    ## Principle: NAME  Weight: / Critique: / Revision: / Comparison: (for cai label)
    ## Example: TITLE   Principle: / User: / Assistant: / Critique: / Revision:

Key words are case-insensitive at the start of a line; a value runs to the next key line
or heading. Everything outside these sections is documentation.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.errors import ConstitutionError, InputError, Problem

__all__ = [
    "Constitution",
    "Example",
    "Principle",
    "load_constitution",
    "parse_constitution",
]

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SECTION = re.compile(r"^(system|principle|example)\b\s*(?::\s*(.*))?$", re.IGNORECASE)
_KEY = re.compile(
    r"^(weight|critique|revision|comparison|principle|user|assistant)\s*:\s?(.*)$",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_MAX_YAML_DEPTH = 20
_PRINCIPLE_KEYS = {"weight", "critique", "revision", "comparison"}
_EXAMPLE_KEYS = {"principle", "user", "assistant", "critique", "revision"}


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


def load_constitution(path: str | Path, *, option: str | None = "--constitution") -> Constitution:
    """Read and parse a constitution file; raises `InputError`/`ConstitutionError`.

    `option` is the command-line option that named the file, for the hint when it is missing;
    None for a command that takes the path as an argument.
    """
    path = Path(path)
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


def _show(value: str) -> str:
    """A value from the file, quoted on one line and cut short, for an error message."""
    return repr(value if len(value) <= 40 else value[:40] + "…")


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
        for example in examples:
            if example.principle is not None and example.principle.casefold() not in seen:
                self.error(
                    example.line,
                    f"example '{example.title}' names principle {_show(example.principle)}, which is not defined",
                )
        if not principles and not any(s.kind == "principle" for s in sections):
            self.error(None, "no principle found; add a '## Principle: <name>' section")
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
            if heading:
                level, title = len(heading.group(1)), heading.group(2)
                match = _SECTION.match(title) if level == 2 else None
                if match:
                    kind = match.group(1).lower()
                    name = (match.group(2) or "").strip()
                    if kind != "system" and not name:
                        self.error(
                            lineno,
                            f"'## {match.group(1)}' needs a name: '## {match.group(1)}: <name>'",
                        )
                    current = _Section(kind, name, lineno)
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
                key = None if in_fence else _KEY.match(raw)
                allowed = _PRINCIPLE_KEYS if current.kind == "principle" else _EXAMPLE_KEYS
                if key and key.group(1).lower() in allowed:
                    current.values.append((key.group(1).lower(), lineno, [key.group(2)]))
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
                        f"example '{section.title}': '{key.title()}:' after 'Critique:'; put the conversation first",
                    )
                    ok = False
                turns.append((key, value))
            elif key == "principle":
                principle = value
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
