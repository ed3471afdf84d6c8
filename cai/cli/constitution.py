"""`cai constitution list|check|show`: the shipped constitutions, and constitution files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cai.cli._output import plural


@click.group()
def constitution() -> None:
    """List the shipped constitutions; check and show constitution files.

    Wherever a constitution file goes (--constitution, check, show), a shipped constitution's
    name does too (`cai generate --constitution harmless`); a file of that name wins.
    """


@constitution.command("list")
def constitution_list() -> None:
    """List the shipped constitutions: name, principles, description."""
    from cai.constitution import load_constitution, shipped_constitutions

    rows = [("NAME", "PRINCIPLES", "DESCRIPTION")]
    for name, path in shipped_constitutions().items():
        parsed = load_constitution(path, option=None)
        about = " ".join(parsed.description.split())
        rows.append(
            (name, str(len(parsed.principles)), about[:90] + ("…" if len(about) > 90 else ""))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for name, count, about in rows:
        click.echo(f"{name.ljust(widths[0])}  {count.rjust(widths[1])}  {about}".rstrip())


@constitution.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
def constitution_check(paths: tuple[Path, ...]) -> None:
    """Check constitution files (or shipped names): one line per problem; exit 0 when all are
    valid, 2 if not."""
    from cai.constitution import load_constitution
    from cai.errors import ConstitutionError, InputError

    bad = False
    for path in paths:
        try:
            parsed = load_constitution(path, option=None)
        except ConstitutionError as e:
            bad = True
            for problem in e.problems:
                click.echo(str(problem))
        except InputError as e:
            bad = True
            click.echo(str(e))
        else:
            click.echo(f"{path}: ok - {parsed.summary}")
    if bad:
        sys.exit(2)


@constitution.command("show")
@click.argument("path", type=click.Path(path_type=Path))
def constitution_show(path: Path) -> None:
    """Show a constitution (a file or a shipped name): its principles' weights, their critique
    and revision requests and comparison questions in full."""
    from cai.constitution import load_constitution

    parsed = load_constitution(path, option=None)
    click.echo(f"{parsed.name}" + (f" (version {parsed.version})" if parsed.version else ""))
    if parsed.description:
        click.echo(parsed.description)
    click.echo(f"sha256 {parsed.sha256}")
    total = sum(parsed.weights)
    rows = [("PRINCIPLE", "WEIGHT", "P(ROUND)", "LINE")]
    for p in parsed.principles:
        rows.append((p.name, f"{p.weight:g}", f"{p.weight / total:.0%}", str(p.line)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo()
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    from cai.feedback import comparison_question

    # The requests in full, as the model is sent them (before cai's own short instructions).
    for p in parsed.principles:
        click.echo()
        click.echo(f"Principle {p.name!r} (line {p.line}):")
        for key, value in (("Critique", p.critique), ("Revision", p.revision)):
            click.echo(f"{key}: " + value.replace("\n", "\n  "))
    click.echo()
    own = sum(p.comparison is not None for p in parsed.principles)
    click.echo(
        f"Comparison questions (cai label): {own} from 'Comparison:', "
        f"{len(parsed.principles) - own} built from the name and critique"
    )
    for p in parsed.principles:
        mark = "" if p.comparison is not None else " (default)"
        click.echo(f"  {p.name}{mark}: " + comparison_question(p).replace("\n", "\n    "))
    click.echo()
    system = "yes" if parsed.system else "no"
    click.echo(f"{plural(len(parsed.examples), 'few-shot example')}; system prompt: {system}")
