"""Per-principle effectiveness over real runs: `cai generate`, `cai label` and `cai stats`
against the loopback fake (tests/fake_server.py), through the real OpenAI SDK.

The fake prefers whichever response holds its PREFERRED text (every fake revision does) with
p = 0.70, and adds 0.15 to whichever option is shown first; a principle whose requests carry a
marker gets canned replies, so that it never changes anything or always writes a worse answer.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import PREFERENCE, PREFERRED, Canned, FakeServer

from cai.cli import cli

PROMPTS = 40

CONSTITUTION = """\
## Principle: careful
Critique: Identify anything careless in the response.
Revision: Rewrite the response to be careful.
Comparison: Which response is more careful?

## Principle: quiet
Critique: Identify anything wrong in the response. [quiet-marker]
Revision: Rewrite the response.
Comparison: Which response is better?
"""

TERSE = """\
## Principle: terse
Critique: Identify anything the response could say in fewer words.
Revision: Rewrite the response in as few words as you can. [terse-marker]
Comparison: Which response is better?
"""


def invoke(*args: object) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def completion(text: str) -> Canned:
    return Canned(
        200,
        {
            "id": "chatcmpl-canned",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        },
    )


def run(tmp_path: Path, url: str, constitution: str, prompt: str, name: str = "run") -> Path:
    """A one-round generate run of PROMPTS prompts, then a label run beside it."""
    path = tmp_path / f"{name}.md"
    path.write_text(constitution, encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": prompt.format(i=i)}) + "\n" for i in range(PROMPTS)),
        encoding="utf-8",
    )
    out = tmp_path / name
    base = ("--provider", "openai", "--base-url", f"{url}/v1")
    invoke("generate", "--constitution", path, "--prompts", prompts, "--out", out, "--rounds", "1", *base)  # fmt: skip
    return out


def rounds_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for line in lines for r in json.loads(line)["rounds"]]


def test_stats_shows_each_principles_rounds_export_and_the_feedback_models_verdict(
    tmp_path: Path, server: FakeServer
) -> None:
    server.enqueue(completion("The response is fine.\nNO CHANGES NEEDED"), match="[quiet-marker]", times=10**6)  # fmt: skip
    out = run(tmp_path, server.url, CONSTITUTION, "How do I deal with problem {i}?")
    labels = tmp_path / "run-labels"
    invoke("label", out, "--out", labels, "--provider", "openai", "--base-url", f"{server.url}/v1", "--votes", "2")  # fmt: skip

    # The label run beside the run is found without being named.
    data = json.loads(invoke("stats", out, "--json"))
    effectiveness = data["effectiveness"]
    careful, quiet = effectiveness["principles"]["careful"], effectiveness["principles"]["quiet"]
    rounds = rounds_of(out)
    drawn = {name: sum(r["principle"] == name for r in rounds) for name in ("careful", "quiet")}
    assert careful["drawn"] == drawn["careful"] and quiet["drawn"] == drawn["quiet"]
    assert careful["drawn"] + quiet["drawn"] == PROMPTS and min(drawn.values()) >= 5
    # The fake's critiques find nothing to change about one time in three.
    assert careful["revised"] > 0 and careful["no_change"] > 0 and careful["failed"] == 0
    assert careful["revised"] + careful["no_change"] == careful["drawn"]
    assert careful["changed"] == careful["revised"]
    # Every revision reaches the export: the per-principle counts add up to export's pairs.
    assert careful["kept"] == careful["revised"] and careful["dropped"] == {}
    assert careful["kept"] == data["export"]["preference_pairs"]
    assert (quiet["revised"], quiet["no_change"], quiet["kept"]) == (0, quiet["drawn"], 0)

    # Labels: every pair of the run is labelled, and the revision always wins; averaging both
    # orders cancels the fake's bias towards the first option.
    assert effectiveness["labels"]["matched"] == careful["kept"]
    assert effectiveness["labels"]["unmatched"] == 0
    assert effectiveness["labels"]["dir"] == str(labels)
    verdict = careful["labels"]
    assert verdict["pairs"] == careful["kept"] == verdict["revision_preferred"]
    assert verdict["preferred_share"] == 1.0
    assert verdict["mean_preference"] == pytest.approx(PREFERENCE, abs=0.01)
    assert verdict["mean_margin"] == pytest.approx(PREFERENCE - 0.5, abs=0.01)
    assert quiet["labels"]["pairs"] == 0

    assert [(f["principle"], f["flag"]) for f in effectiveness["flags"]] == [
        ("quiet", "never_changes")
    ]
    text = invoke("stats", out)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("PRINCIPLE"))
    assert header.split()[:8] == ["PRINCIPLE", "DRAWN", "REVISED", "CHANGED", "NO", "CHANGE", "FAILED", "KEPT"]  # fmt: skip
    assert "P(REVISION)" in header and "MARGIN" in header
    row = next(line for line in lines if line.startswith("careful "))
    n = careful["kept"]
    assert row.split() == [
        "careful", str(careful["drawn"]), str(n), str(n), str(careful["no_change"]), "0",
        str(n), "-", f"{n}/{n}", "(100%)", f"{PREFERENCE:.2f}", f"{PREFERENCE - 0.5:.2f}",
    ]  # fmt: skip
    assert (
        f"Flag: 'quiet' never changed an answer in {quiet['drawn']} rounds "
        f"({quiet['drawn']} no change)"
    ) in lines
    assert f"Labels: {n} of this run's pairs labelled (from {labels})" in lines

    # The report shows the same table, its flag, and the label run found beside the run.
    invoke("report", out)
    page = (out / "report.html").read_text(encoding="utf-8")
    section = page[page.index('<section id="principles">') : page.index('<section id="plots">')]
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td>(.*?)</td>", tr, re.S)]
            for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S)
        )
        if cells
    }  # fmt: skip
    assert rows["careful"] == [
        str(careful["drawn"]), str(n), str(n), str(careful["no_change"]), "0", str(n), "-",
        f"{n}/{n} (100%)", f"{PREFERENCE:.2f}", f"{PREFERENCE - 0.5:.2f}",
    ]  # fmt: skip
    assert rows["quiet"][:2] == [str(quiet["drawn"]), "0"]
    flag = html.unescape(
        re.sub(r"<[^>]+>", "", re.search(r'<p class="flag".*?</p>', section).group())
    )
    assert flag.endswith(
        f"'quiet' never changed an answer in {quiet['drawn']} rounds ({quiet['drawn']} no change)"
    )
    assert '<section id="labels">' in page


def test_a_principle_whose_revisions_lose_is_flagged_with_labels_passed_in(
    tmp_path: Path, server: FakeServer
) -> None:
    # Every first answer holds the fake's preferred text; the terse revisions do not.
    server.enqueue(completion("Short answer."), match="[terse-marker]", times=10**6)
    out = run(tmp_path, server.url, TERSE, PREFERRED + " plan for problem {i}, please?")
    labels = tmp_path / "elsewhere" / "labels"
    invoke("label", out, "--out", labels, "--provider", "openai", "--base-url", f"{server.url}/v1", "--votes", "2")  # fmt: skip
    plain = json.loads(invoke("stats", out, "--json"))
    assert plain["effectiveness"]["labels"] is None  # not beside the run: not found

    data = json.loads(invoke("stats", out, "--json", "--labels", labels))
    terse = data["effectiveness"]["principles"]["terse"]
    assert terse["kept"] > 0 and terse["labels"]["pairs"] == terse["kept"]
    assert terse["labels"]["first_preferred"] == terse["kept"]
    assert terse["labels"]["mean_preference"] == pytest.approx(1 - PREFERENCE, abs=0.01)
    [flag] = data["effectiveness"]["flags"]
    assert flag["flag"] == "revisions_lose" and flag["principle"] == "terse"
    text = invoke("stats", out, "--labels", labels)
    assert (
        "Flag: the feedback model preferred the first answer to the revision of 'terse' in "
        f"{terse['kept']} of {terse['kept']} labelled pairs (mean p(revision better) 0.30)"
    ) in text.splitlines()

    # --labels belongs to the generate run, not to a label run.
    result = CliRunner().invoke(cli, ["stats", str(labels), "--labels", str(labels)])
    assert result.exit_code == 2
    assert "is a label run; --labels goes with the generate run it labelled" in result.output
