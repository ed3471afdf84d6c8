"""`cai report` of a prompts run (`cai prompts generate`): one self-contained page.

It has the coverage of the grid principle x style (each cell's count, shaded), the dedup
drops by reason, refusals, the benign share, calls and tokens per 1,000 prompts, and every
prompt with its cell. Text is escaped on the server; the page runs no script and loads
nothing (its Content-Security-Policy forbids both).
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

__all__ = ["render_prompts_report"]

_CSS = Path(__file__).parent / "templates" / "report.css"


def _table(head: list[str], rows: list[list[str]], *, raw: bool = False) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if raw else escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _coverage(data: dict[str, Any]) -> str:
    styles, coverage = data["styles"], data["coverage"]
    top = max((n for counts in coverage.values() for n in counts.values()), default=0) or 1
    rows = []
    for principle, counts in coverage.items():
        row = [escape(principle)]
        for style in styles:
            n = counts.get(style, 0)
            # Empty cells stand out: the grid's gaps are what a user wants to see.
            shade = f"rgba(69,123,157,{0.1 + 0.6 * n / top:.2f})" if n else "#f4d6d2"
            row.append(f'<span style="display:block;background:{shade}">{n}</span>')
        row.append(str(sum(counts.values())))
        rows.append(row)
    totals = [str(sum(c.get(s, 0) for c in coverage.values())) for s in styles]
    rows.append(["total", *totals, str(data["prompts"])])
    return _table(["principle", *styles, "total"], rows, raw=True)


def render_prompts_report(data: dict[str, Any], rows: list[dict[str, Any]], name: str) -> str:
    """The page of a prompts run: `data` is `cai.redteam.prompts_stats`, `rows` its prompts."""
    share = data["benign_share"]
    per = data["per_1000_prompts"]
    summary = [
        ["prompts", f"{data['prompts']} of {data.get('wanted')} wanted ({data['status']})"],
        ["benign look-alikes", f"{data['benign']}" + (f" ({share:.1%})" if share is not None else "")],
        ["conversations (multi-turn)", str(data["multi_turn"])],
        ["model calls", f"{data['calls']} for {data['planned_calls']} planned calls"],
        ["refusals", str(data["refusals"])],
        ["call cap", f"{data['call_cap']}" + (" (reached before --n)" if data["cap_reached"] else "")],
    ]  # fmt: skip
    if per["calls"] is not None:
        summary.append(
            [
                "per 1,000 prompts",
                f"{per['calls']:g} calls, {per['tokens']:g} tokens, {per['drops']:g} dropped",
            ]
        )
    drops = [[reason, str(n)] for reason, n in data["drops"].items()]
    listing = [
        [
            str(i),
            str(row.get("principle")),
            str(row.get("style")),
            str(row.get("kind")),
            row["prompt"]
            if "prompt" in row
            else "\n".join(f"{m['role']}: {m['content']}" for m in row.get("messages", [])),
        ]
        for i, row in enumerate(rows, 1)
    ]
    css = _CSS.read_text(encoding="utf-8") if _CSS.exists() else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="cai report">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cai prompts: {escape(name)}</title>
<style>{css}
td {{ white-space: pre-wrap; vertical-align: top; }}</style>
</head>
<body>
<main>
<h1>Red-team prompts: {escape(name)}</h1>
<h2>Summary</h2>
{_table(["", ""], summary)}
<h2>Coverage: principle x style</h2>
<p>Prompts kept in each cell of the grid; an empty cell is shaded red.</p>
{_coverage(data)}
<h2>Dropped, by reason</h2>
{_table(["reason", "prompts"], drops)}
<h2>Prompts</h2>
{_table(["#", "principle", "style", "kind", "prompt"], listing)}
</main>
</body>
</html>
"""
