"""`cai constitution list|check|show`: the shipped constitutions, and constitution files."""

from __future__ import annotations

import sys
from pathlib import Path

import click


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
    """Show a constitution's principles (a file or a shipped name) as a table."""
    from cai.constitution import load_constitution

    parsed = load_constitution(path, option=None)
    click.echo(f"{parsed.name}" + (f" (version {parsed.version})" if parsed.version else ""))
    if parsed.description:
        click.echo(parsed.description)
    click.echo(f"sha256 {parsed.sha256}")
    total = sum(parsed.weights)
    rows = [("PRINCIPLE", "WEIGHT", "P(ROUND)", "CRITIQUE REQUEST")]
    for p in parsed.principles:
        critique = " ".join(p.critique.split())
        rows.append(
            (
                p.name,
                f"{p.weight:g}",
                f"{p.weight / total:.0%}",
                critique[:70] + ("…" if len(critique) > 70 else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    click.echo()
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3]
        )
    click.echo()
    from cai.feedback import comparison_question

    own = sum(p.comparison is not None for p in parsed.principles)
    click.echo(
        f"Comparison questions (cai label): {own} from 'Comparison:', "
        f"{len(parsed.principles) - own} built from the name and critique"
    )
    for p in parsed.principles:
        question = comparison_question(p)
        mark = "" if p.comparison is not None else " (default)"
        click.echo(f"  {p.name}{mark}: {question[:90]}" + ("…" if len(question) > 90 else ""))
    click.echo()
    system = "yes" if parsed.system else "no"
    click.echo(f"{len(parsed.examples)} few-shot examples; system prompt: {system}")
