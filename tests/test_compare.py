"""`cai compare`: runs side by side, and a judge between their final answers (issue 22).

The runs are made against the loopback fake OpenAI server; its feedback model prefers a
revision with p = PREFERENCE (0.70) and adds FIRST_BIAS to whichever option is shown first,
so a judge that asks both orders must find a mean preference of 0.70 for the one-round run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import fake_server
import pytest
from click.testing import CliRunner
from fake_server import FIRST_BIAS, PREFERENCE, PREFERRED, FakeServer
from procs import count_lines, kill_after_lines

from cai.cli import cli
from cai.comparison import (
    bootstrap_interval,
    default_judge_dir,
    pair_item_id,
    word_diff,
)
from cai.rundir import LABELS_FILE

ROOT = Path(__file__).resolve().parent.parent
HARMLESS = ROOT / "constitutions" / "harmless.md"
PROMPTS = 50


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    # Every critique asks for a revision, so every one-round record ends with one.
    monkeypatch.setattr(fake_server, "NO_CHANGE_EVERY", 0)
    with FakeServer() as fake:
        yield fake


def invoke(*args: object, code: int = 0):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr)
    return result


def write_prompts(path: Path, n: int, start: int = 0) -> Path:
    path.write_text(
        "".join(
            json.dumps({"prompt": f"How do I deal with problem {i}?"}) + "\n"
            for i in range(start, start + n)
        )
    )
    return path


def generate(tmp_path: Path, url: str, name: str, rounds: int, prompts: Path) -> Path:
    run = tmp_path / name
    invoke(
        "generate", "--constitution", HARMLESS, "--prompts", prompts, "--out", run,
        "--provider", "openai", "--base-url", f"{url}/v1", "--rounds", rounds,
    )  # fmt: skip
    return run


@pytest.fixture
def two_runs(tmp_path: Path, server: FakeServer) -> tuple[Path, Path]:
    prompts = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    before = generate(tmp_path, server.url, "zero", 0, prompts)
    after = generate(tmp_path, server.url, "one", 1, prompts)
    server.reset()
    return before, after


def test_word_diff_rebuilds_both_texts() -> None:
    before, after = "The cat sat on the mat.", "The big cat sat on a mat."
    ops = word_diff(before, after)
    assert "".join(t for op, t in ops if op <= 0) == before
    assert "".join(t for op, t in ops if op >= 0) == after
    assert [1, "big "] in ops or any(op == 1 and "big" in t for op, t in ops)


def test_bootstrap_interval_is_a_percentile_interval_of_the_mean() -> None:
    assert bootstrap_interval([1.0] * 30) == [1.0, 1.0]
    low, high = bootstrap_interval([0.0, 1.0] * 50, seed=3)
    assert 0.35 < low < 0.5 < high < 0.65
    assert bootstrap_interval([]) is None


def test_the_judge_prefers_the_revised_run_with_the_fakes_preference(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    page = tmp_path / "compare.html"
    result = invoke(
        "compare", before, after, "--judge", "--votes", "2", "--provider", "openai",
        "--base-url", f"{server.url}/v1", "--json", "--out", page,
    )  # fmt: skip
    data = json.loads(result.stdout)
    assert data["shared"] == PROMPTS and data["not_shared"] == {"zero": 0, "one": 0}
    first, second = data["runs"]
    assert first["win_rate"] is None and first["revision_rate"] == 0.0
    assert second["revision_rate"] == 1.0 and second["final_is_revision"] == 1.0
    assert second["export_rows"]["preference_pairs"] == PROMPTS
    assert first["export_rows"] == {"preference_pairs": 0, "sft_only": PROMPTS, "kept": PROMPTS}
    assert first["similarity_to_first"] == 1.0 and second["similarity_to_first"] < 0.5
    # The fake adds FIRST_BIAS to whatever is shown first; both orders cancel it.
    assert FIRST_BIAS > 0
    assert second["mean_preference"] == pytest.approx(PREFERENCE, abs=0.02)
    assert second["win_rate"] == 1.0 and second["win_rate_ci"] == [1.0, 1.0]
    assert second["position_consistency"] == 1.0
    judge = second["judge"]
    assert judge["judged"] == PROMPTS and judge["identical"] == 0 and judge["unjudged"] == {}
    assert judge["by_principle"] and all(
        row["mean_preference"] == pytest.approx(PREFERENCE, abs=0.02)
        for row in judge["by_principle"].values()
    )
    assert sum(row["votes"] for row in judge["by_principle"].values()) == 2 * PROMPTS
    # Both runs drew from the same constitution: per-principle effectiveness side by side.
    assert data["shared_principles"] and second["principles"]
    assert sum(p["drawn"] for p in second["principles"].values()) == PROMPTS
    assert sum(p["drawn"] for p in first["principles"].values()) == 0
    # 2 votes in both orders per prompt; the judge's votes are a label run beside the first.
    assert server.requests == 4 * PROMPTS
    judge_dir = default_judge_dir([before, after])
    assert judge_dir == tmp_path / "zero-vs-one" and data["judge"]["dir"] == str(judge_dir)
    labels = [json.loads(x) for x in (judge_dir / LABELS_FILE).read_text().splitlines()]
    assert len(labels) == PROMPTS
    assert all(PREFERRED in label["response_b"] for label in labels)
    assert all(PREFERRED not in label["response_a"] for label in labels)
    assert page.read_text(encoding="utf-8").startswith("<!doctype html>")
    # The judge is no label run *of* either run: `cai stats` must not read its votes as such.
    from cai.effectiveness import find_label_run

    assert find_label_run(before) is None and find_label_run(after) is None

    # The same command again resumes the judge: nothing left to ask, the same figures.
    server.reset()
    again = invoke(
        "compare", before, after, "--judge", "--votes", "2", "--provider", "openai",
        "--base-url", f"{server.url}/v1", "--json", "--out", page,
    )  # fmt: skip
    assert server.requests == 0
    assert json.loads(again.stdout)["runs"][1]["mean_preference"] == second["mean_preference"]

    # The text form, and the votes read back without --judge (no call).
    text = invoke("compare", before, after, "--judge-out", judge_dir)
    assert server.requests == 0
    assert "win rate [95% CI]" in text.stdout and "100% [100%, 100%]" in text.stdout
    assert "Compared on 50 shared prompts" in text.stdout


def test_the_figures_follow_the_judge_another_preference_and_bias(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another preference and a stronger bias the figures move with them: nothing in
    compare knows the fake's 0.70."""
    monkeypatch.setattr(fake_server, "PREFERENCE", 0.6)
    monkeypatch.setattr(fake_server, "FIRST_BIAS", 0.3)
    prompts = write_prompts(tmp_path / "p.jsonl", 12)
    before = generate(tmp_path, server.url, "zero", 0, prompts)
    after = generate(tmp_path, server.url, "one", 1, prompts)
    result = invoke("compare", after, before, "--judge", "--votes", "1", "--json")
    second = json.loads(result.stdout)["runs"][1]
    # The first run is now the revised one: the 0-round run's answers lose.
    assert second["mean_preference"] == pytest.approx(0.4, abs=0.01)
    assert second["win_rate"] == 0.0 and second["win_rate_ci"] == [0.0, 0.0]
    # A bias of 0.3 outweighs a preference of 0.1 in one order: the orders disagree.
    assert second["position_consistency"] == 0.0


def test_the_judge_defaults_to_the_first_runs_model_and_url(
    server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    invoke("compare", before, after, "--judge", "--votes", "1", "--limit", "5")
    assert server.requests == 2 * 5
    bodies = [e.body for e in server.log]
    assert all(b["logprobs"] is True for b in bodies)
    manifest = json.loads((default_judge_dir([before, after]) / "manifest.json").read_text())
    assert manifest["kind"] == "label" and manifest["settings"]["provider"] == "openai"


def test_unshared_prompts_are_counted_and_identical_answers_tie_without_a_call(
    tmp_path: Path, server: FakeServer
) -> None:
    a = generate(tmp_path, server.url, "a", 0, write_prompts(tmp_path / "a.jsonl", 8))
    b = generate(tmp_path, server.url, "b", 0, write_prompts(tmp_path / "b.jsonl", 8, start=3))
    server.reset()
    result = invoke(
        "compare", a, b, "--judge", "--provider", "openai", "--base-url", f"{server.url}/v1",
        "--json",
    )  # fmt: skip
    data = json.loads(result.stdout)
    assert data["shared"] == 5 and data["not_shared"] == {"a": 3, "b": 3}
    # Priced from the shared records only.
    assert data["runs"][0]["cost_usd"] < data["runs"][0]["cost_usd_all_records"]
    # Same model, same prompt, no rounds: the same answers, ties that cost nothing.
    assert server.requests == 0
    second = data["runs"][1]
    assert second["judge"]["identical"] == 5 and second["win_rate"] == 0.5
    assert second["mean_preference"] == 0.5 and second["position_consistency"] is None
    # Runs with no prompt in common: one line, exit 2, no judge directory.
    c = generate(tmp_path, server.url, "c", 0, write_prompts(tmp_path / "c.jsonl", 2, start=20))
    apart = invoke("compare", a, c, "--judge", code=2)
    assert "no prompt is in every run (records: a 8, c 2)" in apart.stderr
    assert not (tmp_path / "a-vs-c").exists()


def test_the_judge_through_the_batch_api_gives_the_same_figures(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    paid = server.paid_total  # the runs' own calls
    result = invoke(
        "compare", before, after, "--judge", "--votes", "1", "--limit", "8", "--batch",
        "--poll-interval", "0.01", "--provider", "openai", "--base-url", f"{server.url}/v1",
        "--json",
    )  # fmt: skip
    assert {e.api for e in server.log} == {"openai-batch"}  # no direct call
    assert server.paid_total - paid == 2 * 8
    second = json.loads(result.stdout)["runs"][1]
    assert second["judge"]["judged"] == 8
    assert second["mean_preference"] == pytest.approx(PREFERENCE, abs=0.02)
    assert "Priced at the batch rate" in result.stderr


def test_hostile_prompts_stay_text_in_the_page(tmp_path: Path, server: FakeServer) -> None:
    hostile = ["<script>window.__pwned = 1</script>", "</script><img src=x onerror=alert(1)>"]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in hostile))
    before = generate(tmp_path, server.url, "zero", 0, prompts)
    after = generate(tmp_path, server.url, "one", 1, prompts)
    page = tmp_path / "page.html"
    invoke("compare", before, after, "--judge", "--votes", "1", "--out", page)
    html = page.read_text(encoding="utf-8")
    assert all(text not in html for text in hostile) and "<img" not in html
    block = html.split('<script type="application/json" id="viewer-data">', 1)[1]
    data = json.loads(block.split("</script>", 1)[0])
    assert sorted(p["prompt"][0][1] for p in data["prompts"]) == sorted(hostile)
    # Only the page's own script runs: its hash is the policy's one script source.
    assert html.count("<script>") == 1 and "script-src &#39;sha256-" in html


def test_max_cost_stops_the_judge_and_a_higher_one_finishes_it_without_paying_twice(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    judge = ["compare", before, after, "--judge", "--votes", "1", "--judge-out", tmp_path / "j",
             "--provider", "openai", "--base-url", f"{server.url}/v1", "--concurrency", "1"]  # fmt: skip
    stopped = invoke(*judge, "--max-cost", "0.002", "--json", code=4)
    assert "Stopped at --max-cost" in stopped.stderr
    partial = json.loads(stopped.stdout)["runs"][1]["judge"]
    assert 0 < partial["judged"] < PROMPTS and partial["unjudged"]["not_judged"] > 0
    done = invoke(*judge, "--max-cost", "1", "--json")
    assert json.loads(done.stdout)["runs"][1]["judge"]["judged"] == PROMPTS
    bodies = Counter(json.dumps(e.body, sort_keys=True) for e in server.log)
    assert len(bodies) == 2 * PROMPTS and set(bodies.values()) == {1}


def test_changed_answers_get_new_judge_items() -> None:
    assert pair_item_id("p1", "x", "y") != pair_item_id("p1", "x", "z")
    assert re.fullmatch(r"p1-[0-9a-f]{12}", pair_item_id("p1", "x", "y"))


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    only = invoke("compare", before, code=2)
    assert "at least two" in only.output
    twice = invoke("compare", before, before, code=2)
    assert "given twice" in twice.stderr and "Traceback" not in twice.stderr
    missing = invoke("compare", before, tmp_path / "nope", code=2)
    assert "no records.jsonl" in missing.stderr
    foreign = tmp_path / "mine.html"
    foreign.write_text("my own notes")
    refused = invoke("compare", before, after, "--out", foreign, code=2)
    assert "not a page cai compare wrote" in refused.stderr
    assert foreign.read_text() == "my own notes"
    # A label run (the judge's own directory) is not a run to compare.
    invoke("compare", before, after, "--judge", "--votes", "1", "--limit", "2")
    label_run = default_judge_dir([before, after])
    as_run = invoke("compare", before, label_run, code=2)
    assert "label run" in as_run.stderr
    # The judge again with other settings: refused, with the option that picks another folder.
    other = invoke("compare", before, after, "--judge", "--votes", "2", code=2)
    assert "votes was 1, now 2" in other.stderr and "pass --judge-out with" in other.stderr


def test_compare_from_python(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    import cai

    before, after = two_runs
    plain = cai.compare([before, cai.load(after)])
    assert plain.data["shared"] == PROMPTS and plain.data["runs"][1]["win_rate"] is None
    assert plain.judge is None and "Compared on 50 shared prompts" in str(plain)
    judged = cai.compare(
        [before, after], judge=True, votes=1, limit=10, judge_out=tmp_path / "j",
        provider="openai", base_url=f"{server.url}/v1", progress=False,
    )  # fmt: skip
    assert server.requests == 2 * 10
    second = judged.data["runs"][1]
    assert second["judge"]["judged"] == 10 and second["judge"]["unjudged"] == {"not_judged": 40}
    assert second["mean_preference"] == pytest.approx(PREFERENCE, abs=0.02)
    assert judged.judge is not None and judged.judge.dir == tmp_path / "j"
    page = judged.write_page(tmp_path / "page.html")
    assert 'content="cai compare"' in page.read_text(encoding="utf-8")
    plan = cai.compare([before, after], judge=True, dry_run=True, judge_out=tmp_path / "k")
    assert isinstance(plan, cai.Plan) and "feedback calls" in plan.text
    assert not (tmp_path / "k").exists()
    with pytest.raises(cai.ConfigError, match="at least two"):
        cai.compare([before])


def test_sigkill_in_the_middle_of_the_judge_then_the_same_command_buys_no_vote_twice(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    before, after = two_runs
    judge_dir = tmp_path / "judge"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    concurrency = 4
    with FakeServer(latency=0.02) as slow:
        command = [
            sys.executable, "-m", "cai", "compare", str(before), str(after), "--judge",
            "--judge-out", str(judge_dir), "--votes", "2", "--provider", "openai",
            "--base-url", f"{slow.url}/v1", "--concurrency", str(concurrency), "--json",
        ]  # fmt: skip
        calls = judge_dir / "calls.jsonl"
        for wait_for in (7, 30):
            kill_after_lines(command, calls, wait_for, env, timeout=120)
        assert count_lines(calls) < 4 * PROMPTS  # killed in the middle, not after the end
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        bodies = Counter(json.dumps(e.body, sort_keys=True) for e in slow.log)
    data = json.loads(done.stdout)
    assert data["runs"][1]["mean_preference"] == pytest.approx(PREFERENCE, abs=0.02)
    assert data["runs"][1]["win_rate"] == 1.0
    # Every vote was asked; one was bought twice only while it was in flight at a kill.
    assert len(bodies) == 4 * PROMPTS
    assert sum(n - 1 for n in bodies.values()) <= 2 * concurrency
    journal = Counter((c["id"], c["step"]) for c in map(json.loads, calls.read_text().splitlines()))
    assert set(journal.values()) == {1} and len(journal) == 4 * PROMPTS


# -- the page in a real browser ------------------------------------------------------------------

from browser import chromium, missing  # noqa: E402

_WHY = missing()


@pytest.mark.skipif(_WHY is not None, reason=f"needs headless Chromium: {_WHY}")
def test_the_comparison_page_renders_in_headless_chromium(
    tmp_path: Path, server: FakeServer, two_runs: tuple[Path, Path]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    before, after = two_runs
    page = tmp_path / "compare.html"
    invoke(
        "compare", before, after, "--judge", "--votes", "2", "--provider", "openai",
        "--base-url", f"{server.url}/v1", "--out", page,
    )  # fmt: skip
    with chromium() as driver:
        driver.get(page.as_uri())
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.documentElement.dataset.rendered")
        )
        assert driver.find_element(By.ID, "count").text == f"({PROMPTS} of {PROMPTS})"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#list .rec")) == 20
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-judge svg")
        assert driver.find_elements(By.CSS_SELECTOR, "#plot-by_principle svg")
        assert "100% [100%, 100%]" in driver.find_element(By.ID, "judge-table").text
        head = driver.find_element(By.CSS_SELECTOR, "#list .rec .head")
        head.click()
        detail = driver.find_element(By.CSS_SELECTOR, "#list .detail")
        diff = detail.find_element(By.CSS_SELECTOR, ".diff")
        assert diff.find_elements(By.TAG_NAME, "del") and diff.find_elements(By.TAG_NAME, "ins")
        assert PREFERRED in diff.text and "judge prefers one" in detail.text
        detail.find_element(By.CSS_SELECTOR, "details.round summary").click()
        assert len(detail.find_elements(By.CSS_SELECTOR, "table.votes tr")) == 1 + 2 * 2
        # The filter: the first run is never preferred.
        driver.execute_script(
            "const s = document.getElementById('f-judge');"
            "s.value = 'loss'; s.dispatchEvent(new Event('change'));"
        )
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "count").text == f"(0 of {PROMPTS})"
        )
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
