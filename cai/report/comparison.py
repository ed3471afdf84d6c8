"""`cai compare --out FILE.html`: the comparison of runs as one self-contained page.

It is the report's page in style and safety (the same CSS, Content-Security-Policy, and text
only as escaped JSON written with `textContent`): the table of `cai compare`, plots, and a
viewer of each shared prompt's final answers side by side, each against the first run's as a
word diff, with the judge's votes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.comparison import RunSide, prompt_details
from cai.errors import ConfigError
from cai.report import _csp_hash, _environment, _figure, _script_json, _svg

__all__ = ["COMPARE_MARK", "render_compare_page", "write_compare_page"]

_TEMPLATES = Path(__file__).parent / "templates"
COMPARE_MARK = b'<meta name="generator" content="cai compare">'
_PALETTE = ["#457b9d", "#2a9d8f", "#e9c46a", "#e76f51", "#8d99ae", "#6a4c93"]


def _color(k: int) -> str:
    return _PALETTE[k % len(_PALETTE)]


def _judge_plot(data: dict[str, Any]) -> Any:
    others = [run for run in data["runs"][1:] if run["win_rate"] is not None]
    fig = _figure(7, max(1.6, 0.45 * len(others) + 1.0))
    ax = fig.add_subplot()
    ys = list(range(len(others)))[::-1]
    for y, run, k in zip(ys, others, range(1, len(others) + 1), strict=True):
        ci = run["win_rate_ci"] or [run["win_rate"], run["win_rate"]]
        err = [[run["win_rate"] - ci[0]], [ci[1] - run["win_rate"]]]
        ax.errorbar(run["win_rate"], y, xerr=err, fmt="o", color=_color(k), capsize=4)
        if run["mean_preference"] is not None:
            ax.plot(run["mean_preference"], y, marker="d", color="black", linestyle="none")
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_yticks(ys, [f"{run['name']} vs {data['runs'][0]['name']}" for run in others])
    ax.set_xlim(0, 1)
    ax.set_xlabel("win rate with its 95% bootstrap interval (dot); mean preference (diamond)")
    ax.set_title("Which run's final answers the judge prefers", loc="left")
    return fig


def _by_principle_plot(data: dict[str, Any]) -> Any:
    others = [run for run in data["runs"][1:] if run["judge"] and run["judge"]["by_principle"]]
    names = sorted({n for run in others for n in run["judge"]["by_principle"]})[:30]
    fig = _figure(7, max(1.8, 0.3 * len(names) * max(1, len(others)) ** 0.5 + 1.0))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(others))
    for k, run in enumerate(others, 1):
        rows = run["judge"]["by_principle"]
        ys = [len(names) - 1 - i + (k - 1) * height for i in range(len(names))]
        values = [rows[n]["mean_preference"] if n in rows else 0 for n in names]
        ax.barh(ys, values, height=height, color=_color(k), label=run["name"])
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle=":")
    ax.set_yticks(range(len(names))[::-1], [n if len(n) <= 40 else n[:39] + "…" for n in names])
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"mean preference over {data['runs'][0]['name']} (votes drawing the principle)")
    if len(others) > 1:
        ax.legend(frameon=False)
    ax.set_title("By principle", loc="left")
    return fig


def _lengths_plot(details: list[dict[str, Any]], names: list[str]) -> Any:
    fig = _figure(7, 2.6)
    ax = fig.add_subplot()
    words = [[len(d["answers"][k].split()) for d in details if d["answers"][k] is not None]
             for k in range(len(names))]  # fmt: skip
    hi = max([w for ws in words for w in ws] + [1])
    bins = [hi * i / 30 for i in range(31)]
    for k, ws in enumerate(words):
        ax.hist(ws, bins=bins, histtype="step", linewidth=1.5, color=_color(k), label=names[k])
    ax.set_xlabel("words in the final answer")
    ax.set_ylabel("prompts")
    ax.legend(frameon=False)
    ax.set_title("Length of the final answers", loc="left")
    return fig


def _cost(usd: float | None) -> str:
    from cai.pricing import format_cost

    return "unknown" if usd is None else format_cost(usd)


def render_compare_page(
    data: dict[str, Any], details: list[dict[str, Any]], *, title: str = ""
) -> str:
    """The page: `data` from `compare_runs`, `details` from `prompt_details`."""
    import markupsafe

    from cai.filters import FILTERS

    names = [run["name"] for run in data["runs"]]
    figures: dict[str, Any] = {}
    if any(run["win_rate"] is not None for run in data["runs"][1:]):
        figures["judge"] = _judge_plot(data)
        if any(run["judge"]["by_principle"] for run in data["runs"][1:] if run["judge"]):
            figures["by_principle"] = _by_principle_plot(data)
    if details:
        figures["lengths"] = _lengths_plot(details, names)
    svgs = {name: markupsafe.Markup(_svg(fig)) for name, fig in figures.items()}
    script = (_TEMPLATES / "compare.js").read_text(encoding="utf-8")
    style = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
    viewer = {"names": names, "prompts": details, "page_size": 20}
    costs = [_cost(run["cost_usd"]) for run in data["runs"]]
    return (
        _environment()
        .get_template("compare.html.j2")
        .render(
            title=title or " vs ".join(names),
            d=data,
            runs=data["runs"],
            others=data["runs"][1:],
            judge=data.get("judge"),
            judge_cost=_cost((data.get("judge") or {}).get("cost_usd")),
            judge_principles=sorted(
                {
                    n
                    for run in data["runs"][1:]
                    if run["judge"]
                    for n in run["judge"]["by_principle"]
                }
            ),
            costs=costs,
            filters=FILTERS,
            svgs=svgs,
            viewer_json=markupsafe.Markup(_script_json(viewer)),
            script=markupsafe.Markup(script),
            style=markupsafe.Markup(style),
            script_hash=_csp_hash(script),
        )
    )


def _is_compare_page(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return COMPARE_MARK in f.read(4096)
    except OSError:
        return False


def write_compare_page(
    out: str | Path,
    data: dict[str, Any],
    runs: Sequence[RunSide],
    labels: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write the page to `out`, whole or not at all; an existing file is replaced only when
    it is a page `cai compare` wrote."""
    from cai.rundir import write_atomic

    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; pass --out with a file name ending in .html")
    if out.exists() and not _is_compare_page(out):
        raise ConfigError(
            f"{out} exists and is not a page cai compare wrote; pass --out with a new file name"
        )
    html = render_compare_page(data, prompt_details(runs, labels))
    write_atomic(out, html.encode("utf-8"))
    return out
