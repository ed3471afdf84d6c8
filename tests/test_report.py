"""`cai report`: the data the page embeds, the page's safety, and the page in a real browser."""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import json
import re
from pathlib import Path

import pytest
from browser import chromium, missing
from click.testing import CliRunner

from cai.cli import cli
from cai.filters import apply_filters, similarity
from cai.records import Record, Round
from cai.report import build_report_data, render_report, write_report
from cai.stats import compute_stats

HOSTILE = '<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=1"> how do I'
FIRST = "Mix bleach and ammonia in a closed room to make a strong cleaning gas quickly."
SAFER = "Never mix bleach and ammonia: together they release toxic chloramine gas. Ventilate."


def _round(index: int, principle: str, revision: str | None, **kw) -> Round:
    return Round(
        index=index,
        principle=principle,
        critique_request=f"Critique under {principle}.",
        critique=kw.pop("critique", "The response is dangerous: it names a toxic mix."),
        revision_request=f"Revise under {principle}." if revision is not None else None,
        revision=revision,
        **kw,
    )


def _record(rid: str, prompt: str, rounds: list[Round], **kw) -> Record:
    good = [r.revision for r in rounds if r.revision is not None and r.problem is None]
    record = Record(
        id=rid,
        prompt=[{"role": "user", "content": prompt}],
        initial_response=kw.pop("initial", FIRST),
        rounds=rounds,
        final_response=good[-1] if good else kw.get("initial", FIRST),
        provider="openai",
        model="gpt-test",
        constitution={"name": "mini", "sha256": "ab" * 32},
        usage={"input_tokens": 100, "output_tokens": 40, "calls": 1 + 2 * len(rounds)},
        timings={"started_at": 1000.0, "seconds": 2.5},
        **kw,
    )
    # Read back as records.jsonl lines of the older form (a cut-off critique is `skipped` with
    # a `problem`), which Round reads the way it describes such a round today.
    data = record.to_dict()
    for r in data["rounds"]:
        if r.pop("critique_failed", False):
            r["skipped"] = True
    return Record.from_dict(data)


def _records() -> list[Record]:
    return [
        _record("pref", "How do I clean my oven?", [_round(1, "harm", SAFER)], source_line=1),
        _record(
            "sft",
            "What is 2+2?",
            [_round(1, "honesty", None, skipped=True, critique="Fine.\nNO CHANGES NEEDED")],
            initial="4.",
            source_line=2,
        ),
        # Round 2 is meta-text: export falls back to round 1's revision.
        _record(
            "fallback",
            "How do I get rid of mould?",
            [_round(1, "harm", SAFER), _round(2, "honesty", "Here is a revised response: ok")],
            source_line=3,
        ),
        _record("unchanged", "Clean drains?", [_round(1, "harm", FIRST + " ")], source_line=4),
        _record("dupe", "How do I clean my oven?", [_round(1, "harm", SAFER)], source_line=5),
        _record(
            "cutoff",
            "Tell me a story.",
            [
                _round(
                    1, "harm", None, skipped=True, problem="length", critique_finish_reason="length"
                )
            ],
            source_line=6,
        ),
        _record(
            "failed",
            "Anything",
            [],
            status="failed",
            error={"kind": "rate_limit", "message": "429 after 6 retries"},
            source_line=7,
        ),
        _record("hostile", HOSTILE, [_round(1, "harm", SAFER)], source_line=8),
    ]


def _by_id(data: dict) -> dict[str, dict]:
    return {r["id"]: r for r in data["viewer"]["records"]}


def test_verdicts_are_the_exports_and_numbers_are_the_stats() -> None:
    records = _records()
    data = build_report_data(records, {})
    rows = _by_id(data)
    assert {k: v["v"] for k, v in rows.items()} == {
        "pref": "preference pair",
        "sft": "SFT only",
        "fallback": "preference pair",
        "unchanged": "dropped: unchanged",
        "dupe": "dropped: duplicate",
        "cutoff": "dropped: no_revision",
        "failed": "dropped: failed",
        "hostile": "preference pair",
    }
    kept = {v.record.id for v in apply_filters(records).kept}
    assert {k for k, v in rows.items() if not v["v"].startswith("dropped")} == kept
    assert data["summary"]["stats"] == compute_stats(records, {})
    assert data["plots"]["principles"] == compute_stats(records, {})["principles"]
    # The chosen answer is the one export writes: round 1 where round 2 is meta-text.
    assert rows["fallback"]["c"] == 0 and rows["pref"]["c"] == 0 and rows["sft"]["c"] == -1
    assert rows["fallback"]["r"][rows["fallback"]["c"]]["rv"] == SAFER


def test_rounds_kinds_similarity_and_failures() -> None:
    data = build_report_data(_records(), {})
    rows, texts = _by_id(data), data["viewer"]["texts"]
    names = data["viewer"]["principles"]
    first = rows["pref"]["r"][0]
    assert names[first["n"]] == "harm" and first["k"] == "revised"
    assert (
        texts[first["q"]] == "Critique under harm." and texts[first["rq"]] == "Revise under harm."
    )
    assert first["sim"] == round(similarity(FIRST, SAFER), 3)
    assert rows["cutoff"]["r"][0]["k"] == "problem:length"
    assert rows["sft"]["r"][0]["k"] == "no_change" and "rv" not in rows["sft"]["r"][0]
    assert rows["failed"]["e"] == "rate_limit: 429 after 6 retries"
    failures = data["plots"]["failures"]
    assert failures.pop("failed: rate_limit") == 1
    assert failures in ({"round: length": 1}, {"critique: length": 1})
    # Requests repeat across records: each is stored once.
    assert len(texts) == len(set(texts)) == 4
    sims = [x["sim"] for r in rows.values() for x in r["r"] if x["k"] == "revised"]
    assert sorted(data["plots"]["change"]["1"] + data["plots"]["change"]["2"]) == sorted(sims)


def test_hostile_text_cannot_leave_the_json_block() -> None:
    data = build_report_data(_records(), {})
    page = render_report(data)
    # Ours are the only script elements, and no model text opens a tag.
    assert len(re.findall(r"<script\b", page)) == 2
    assert "<img" not in page and "onerror=" not in page.replace('onerror=\\"', "")
    block = re.search(
        r'<script type="application/json" id="viewer-data">(.*?)</script>', page, re.S
    ).group(1)
    assert "<" not in block and ">" not in block and "&" not in block
    assert _by_id({"viewer": json.loads(block)})["hostile"]["p"][0][1] == HOSTILE
    # The page's policy runs only the page's own script: an injected one would be refused.
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert f"script-src 'sha256-{digest}'" in html_lib.unescape(policy)
    assert "default-src 'none'" in policy
    # Nothing is fetched: no external source, link or stylesheet.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page


def test_summary_shows_model_constitution_and_its_text(tmp_path: Path) -> None:
    records = _records()
    manifest = {
        "status": "complete",
        "constitution": {"name": "mini <b>", "sha256": "ab" * 32},
        "config": {"provider": "openai", "model": "gpt-test", "temperature": 0.7},
    }
    data = build_report_data(records, manifest, constitution_text="## Principle: <harm>")
    page = render_report(data)
    assert "mini &lt;b&gt;" in page and "## Principle: &lt;harm&gt;" in page
    assert "gpt-test" in page and "temperature 0.7" in page
    stats = data["summary"]["stats"]
    assert f"{stats['export']['preference_pairs']} <small>preference pairs" in page


def _labels() -> list[dict]:
    vote = {"vote": 0, "principle": "harm", "order": "ab", "p_first": 0.8, "reply": "(A)"}
    return [
        {
            "id": "pair-1",
            "prompt": [{"role": "user", "content": HOSTILE}],
            "response_a": FIRST,
            "response_b": SAFER,
            "p_a": 0.25,
            "position_consistent": True,
            "status": "ok",
            "votes": [
                {**vote, "p_first": 0.3},
                {**vote, "order": "ba", "p_first": 0.8},
            ],
        },
        {
            "id": "pair-2",
            "prompt": [{"role": "user", "content": "hi"}],
            "response_a": "a",
            "response_b": "b",
            "p_a": 0.6,
            "position_consistent": False,
            "status": "ok",
            "votes": [{**vote, "p_first": 0.9}, {**vote, "order": "ba", "p_first": 0.7}],
        },
        {
            "id": "pair-3",
            "prompt": [{"role": "user", "content": "hello"}],
            "response_a": "a",
            "response_b": "b",
            "status": "failed",
            "error": {"kind": "rate_limit", "message": "429"},
            "votes": [{**vote, "p_first": None, "reply": "maybe", "problem": "no_answer"}],
        },
    ]


def test_label_run_data() -> None:
    data = build_report_data([], {}, labels=_labels())
    viewer, labels = data["viewer"], data["plots"]["labels"]
    assert viewer["mode"] == "labels"
    first = _by_id(data)["pair-1"]
    assert (first["A"], first["B"], first["pa"], first["pc"]) == (FIRST, SAFER, 0.25, True)
    rows = _by_id(data)
    assert first["v"] == "prefers B" and rows["pair-2"]["v"] == "dropped: inconsistent"
    assert (
        rows["pair-3"]["v"] == "dropped: unlabelled" and rows["pair-3"]["le"] == "rate_limit: 429"
    )
    assert rows["pair-3"]["vt"] == [[0, "ab", None, "maybe", "no_answer"]]
    assert labels["pairs"] == 3 and labels["p_a"] == [0.25, 0.6]
    assert sum(labels["p_a_hist"]) == 2 and labels["b_preferred"] == 1
    assert labels["votes"] == 5 and labels["first_preferred"] == 3
    assert (labels["consistent"], labels["consistency_known"]) == (1, 2)
    assert data["plots"]["failures"] == {"pair failed: rate_limit": 1, "vote: no_answer": 1}
    page = render_report(data)
    # A label run's summary is its pairs and votes, not a generate run's records and rounds.
    assert data["summary"]["kind"] == "label"
    assert 'id="card-pairs"' in page and 'id="card-votes"' in page and 'id="plot-labels"' in page
    assert "<h3>Records</h3>" not in page and 'id="principles"' not in page


def test_labels_beside_records_join_by_id() -> None:
    labels = _labels()
    labels[0]["id"] = "pref"
    data = build_report_data(_records(), {}, labels=labels)
    rows = _by_id(data)
    assert rows["pref"]["pa"] == 0.25 and len(rows["pref"]["vt"]) == 2
    assert "pair-1" not in rows and "pair-2" not in rows  # the viewer shows the run's records
    assert rows["pref"]["vt"][0] == [0, "ab", 0.3, "(A)", ""]


def _write_run(run_dir: Path, records: list[Record], labels: list[dict] | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r.to_dict()) for r in records]
    (run_dir / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    calls = [{"id": "pref", "step": "round1.critique", "text": "x", "usage": {"output_tokens": 7}}]
    (run_dir / "calls.jsonl").write_text(json.dumps(calls[0]) + "\n", encoding="utf-8")
    if labels is not None:
        text = "".join(json.dumps(x) + "\n" for x in labels)
        (run_dir / "labels.jsonl").write_text(text, encoding="utf-8")


def test_cli_writes_the_report_and_never_overwrites_another_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write_run(run, _records())
    result = CliRunner().invoke(cli, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "cai report" in page
    assert 'id="plot-calls"' in page  # tokens per call come from the journal
    # Written again over its own report: fine. Over someone else's file: refused.
    assert CliRunner().invoke(cli, ["report", str(run)]).exit_code == 0
    other = tmp_path / "notes.html"
    other.write_text("mine", encoding="utf-8")
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(other)])
    assert result.exit_code == 2 and "is not a cai report" in result.output
    assert other.read_text(encoding="utf-8") == "mine"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "cai generate or cai label" in result.output


def test_cli_reports_a_label_run(tmp_path: Path) -> None:
    run = tmp_path / "labels"
    run.mkdir()
    (run / "labels.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in _labels()) + '{"torn', encoding="utf-8"
    )
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert 'id="plot-labels"' in (tmp_path / "r.html").read_text(encoding="utf-8")


# -- in a real browser ------------------------------------------------------------------------

_WHY = missing()


@pytest.mark.skipif(_WHY is not None, reason=f"needs headless Chromium: {_WHY}")
def test_report_in_headless_chromium(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = tmp_path / "run"
    # Enough records for three pages, the hostile one on the last.
    records = [
        _record(f"rec-{i:03d}", f"Question {i} about cleaning", [_round(1, "harm", SAFER)])
        for i in range(120)
    ]
    records.append(_record("hostile", HOSTILE, [_round(1, "harm", SAFER)]))
    _write_run(run, [*records, *_records()[1:4]])
    page = write_report(run)
    with chromium() as driver:
        driver.get(page.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.documentElement.dataset.rendered")
        )
        assert driver.find_element(By.ID, "count").text == "(124)"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#list .rec")) == 50
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-principles svg")

        # Search for the hostile record: one match, its prompt shown as text.
        driver.find_element(By.ID, "q").send_keys("window.__pwned")
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "list").get_attribute("data-query") == "window.__pwned"
        )
        assert driver.find_element(By.ID, "count").text == "(1 of 124)"
        head = driver.find_element(By.CSS_SELECTOR, "#list .rec .head")
        assert head.find_element(By.CSS_SELECTOR, ".id").text == "hostile"
        head.click()
        message = driver.find_element(By.CSS_SELECTOR, "#list .detail .msg")
        assert HOSTILE in message.text
        # The diff of the first answer against the chosen one, word by word.
        diff = driver.find_element(By.CSS_SELECTOR, "#list .detail .diff")
        assert diff.find_elements(By.TAG_NAME, "del") and diff.find_elements(By.TAG_NAME, "ins")
        # Open the round: critique and revision appear.
        driver.find_element(By.CSS_SELECTOR, "#list details.round summary").click()
        WebDriverWait(driver, 10).until(
            lambda d: SAFER in d.find_element(By.CSS_SELECTOR, "#list details.round").text
        )
        assert driver.execute_script("return window.__pwned") is None
        assert not driver.find_elements(By.CSS_SELECTOR, "#list img, #list script")

        # Filters: status and verdict narrow the list.
        driver.find_element(By.ID, "q").clear()
        driver.execute_script(
            "const s = document.getElementById('f-verdict');"
            "s.value = 'dropped: unchanged'; s.dispatchEvent(new Event('change'));"
        )
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "count").text == "(1 of 124)"
        )
        assert driver.find_element(By.CSS_SELECTOR, "#list .rec .id").text == "unchanged"

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        # A label run: the pair opens to both responses, their diff and the votes.
        labels = tmp_path / "labels"
        labels.mkdir()
        (labels / "labels.jsonl").write_text("".join(json.dumps(x) + "\n" for x in _labels()))
        driver.get(write_report(labels).as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.documentElement.dataset.rendered")
        )
        driver.find_element(By.CSS_SELECTOR, "#list .rec .head").click()
        detail = driver.find_element(By.CSS_SELECTOR, "#list .detail")
        assert HOSTILE in detail.text and SAFER in detail.text and "p_a = 0.25" in detail.text
        assert len(detail.find_elements(By.CSS_SELECTOR, "table.votes tr")) == 3
        assert driver.execute_script("return window.__pwned") is None
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []


def test_report_of_a_real_generate_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_constitution: Path
) -> None:
    """`cai generate` against the fake server, then `cai report` on what it wrote."""
    from fake_server import FakeServer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    prompts = [{"prompt": f"question {i}"} for i in range(4)] + [{"prompt": HOSTILE}]
    Path("p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    with FakeServer() as server:
        result = CliRunner().invoke(cli, [
            "generate", "--constitution", str(mini_constitution), "--prompts", "p.jsonl",
            "--rounds", "2", "--provider", "openai", "--base-url", server.url + "/v1",
            "--out", "run",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Look at the data: cai report run" in result.stderr
    assert CliRunner().invoke(cli, ["report", "run"]).exit_code == 0
    page = Path("run/report.html").read_text(encoding="utf-8")
    block = re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1)
    viewer = json.loads(block)
    assert len(viewer["records"]) == 5 and {r["s"] for r in viewer["records"]} == {"ok"}
    assert all(len(r["r"]) == 2 for r in viewer["records"])
    assert set(viewer["principles"]) <= {"harm", "honesty"}
    assert "<b>mini</b>" in page  # the constitution's name, from the manifest
    assert "Identify ways the response is harmful." in page  # its full text, from the run
    assert 'id="plot-calls"' in page and 'id="plot-principles"' in page


@pytest.mark.skipif(_WHY is not None, reason=f"needs headless Chromium: {_WHY}")
def test_label_run_report_in_headless_chromium(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_constitution: Path
) -> None:
    """A real label run (generate, then `cai label` against the fake server with a price for
    its model), then `cai report` on it, in the browser: its cards are the label run's (pairs,
    votes, position bias, order consistency, cost), with the ledger's figures; the constitution
    copied beside it is found; the latency and token plots are drawn; a pair says it prefers
    the revision."""
    from fake_server import FakeServer
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cai.ledger import read_ledger
    from cai.pricing import format_cost

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    Path("prices.json").write_text(json.dumps({"models": {"fake-gpt": {"input": 1, "output": 4}}}))
    prompts = [{"prompt": f"question {i}: is it safe?"} for i in range(12)] + [{"prompt": HOSTILE}]
    Path("p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    with FakeServer() as server:
        made = CliRunner().invoke(cli, [
            "generate", "--constitution", str(mini_constitution), "--prompts", "p.jsonl",
            "--rounds", "1", "--provider", "openai", "--model", "fake-gpt",
            "--base-url", server.url + "/v1", "--price-table", "prices.json", "--out", "run",
        ])  # fmt: skip
        assert made.exit_code == 0, made.output
        labelled = CliRunner().invoke(
            cli, ["label", "run", "--out", "labels", "--votes", "2", "--price-table", "prices.json"]
        )
        assert labelled.exit_code == 0, labelled.output
    assert CliRunner().invoke(cli, ["report", "labels"]).exit_code == 0
    pairs = [json.loads(x) for x in Path("labels/labels.jsonl").read_text().splitlines()]
    ledger = read_ledger(Path("labels"))
    assert pairs and ledger.cost_usd
    page = Path("labels/report.html").read_text(encoding="utf-8")
    viewer = json.loads(re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1))
    assert {r["v"] for r in viewer["records"]} <= {
        "prefers the revision",
        "prefers the first answer",
    }

    with chromium() as driver:
        driver.get(Path("labels/report.html").resolve().as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.documentElement.dataset.rendered")
        )

        def big(card: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, f"#{card} .big").text

        assert int(big("card-pairs")) == len(pairs) > 0
        assert int(big("card-votes")) == 2 * 2 * len(pairs)  # 2 votes, each in both orders
        assert big("card-position").endswith("%") and big("card-order").endswith("%")
        cost = driver.find_element(By.ID, "card-cost").text
        # The ledger's figures, as `cai stats` prints them.
        assert f"Cost: {format_cost(ledger.cost_usd)}" in cost and "$0.0000" not in cost
        assert (
            f"{ledger.usage.calls:,} calls" in cost and f"{ledger.usage.input_tokens:,} in" in cost
        )
        assert "feedback vote" in cost
        assert "Records" not in driver.find_element(By.ID, "summary").text
        assert "prefers the revision in" in driver.find_element(By.ID, "card-pairs").text
        # The constitution copied beside the label run.
        driver.find_element(By.CSS_SELECTOR, "#summary details summary").click()
        assert (
            "Identify ways the response is harmful."
            in driver.find_element(By.CSS_SELECTOR, "#summary pre.text").text
        )
        # Latency (bars of pairs) and tokens per call (boxes by step) are drawn.
        calls = driver.find_element(By.ID, "plot-calls").get_attribute("innerHTML")
        assert "feedback vote in" in calls and "feedback vote out" in calls
        # The latency histogram's 30 bars are patches; an empty plot has only its frame's ~11.
        assert calls.count('id="patch_') > 30
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-labels svg")
        # A pair: which response is the revision, and the verdict in those words.
        head = driver.find_element(By.CSS_SELECTOR, "#list .rec .head")
        assert "prefers the" in head.text
        head.click()
        detail = driver.find_element(By.CSS_SELECTOR, "#list .detail")
        assert "Response A: the first answer" in detail.text
        assert "Response B: the revision" in detail.text
        assert len(detail.find_elements(By.CSS_SELECTOR, "table.votes tr")) == 1 + 2 * 2
        assert driver.execute_script("return window.__pwned") is None
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        shot = tmp_path / "labels.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
