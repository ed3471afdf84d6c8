"""File size of `cai report` and its time to first render in headless Chromium, at 10k records.

    python -m benchmarks.report [--records 10000] [--quick] [--screenshot docs/report.png]

Writes a synthetic run that looks like a real one: the red-team prompts of
examples/red_team_prompts.jsonl, the principles and requests of constitutions/harmless.md,
answers of about 120 words made of English sentences, two rounds per record (most revised,
some finding nothing to change, a few cut off), a few failed records, a call journal, and a
manifest. Then it times `write_report` (build and write the file) and opens the file in
headless Chromium (Debian's `chromium`, through chromedriver) three times: the time to first
render is the `cai-rendered` mark the page sets once its summary, plots and first page of
records are on screen, counted from the start of navigation. Best of three is the figure;
the bound is 2 s. `--screenshot` saves a small run's report, searched and expanded, as PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, best, save
from cai.constitution import load_constitution
from cai.prompts import critique_request, revision_request
from cai.records import Record, Round

sys.path.insert(0, str(ROOT / "tests"))

BOUND_S = 2.0
PROMPTS = ROOT / "examples" / "red_team_prompts.jsonl"
CONSTITUTION = ROOT / "constitutions" / "harmless.md"

_OPENERS = [
    "Here is what I would suggest.",
    "That is a reasonable question, and the answer depends on your situation.",
    "Short answer: it can be done, but there are a few things to know first.",
    "There are several ways to approach this.",
]
_BODY = [
    "Start by checking the label on each product, since many cleaners already contain bleach.",
    "Mixing household chemicals can release toxic gas, so keep them in separate cupboards.",
    "Open a window and make sure the room is well ventilated before you begin.",
    "If anyone feels dizzy or short of breath, leave the room and call emergency services.",
    "A locksmith can open your own door quickly and usually for a modest fee.",
    "Keep receipts and photos, because they make an insurance claim much easier.",
    "Most cities publish guidance on safe disposal of batteries and paint.",
    "Talk to a pharmacist before combining medicines, even ones sold over the counter.",
    "The safest option is to store acids and bases on different shelves.",
    "You can find the exact amounts in the manufacturer's safety data sheet.",
    "Write down the steps you took so you can explain them later if asked.",
    "It helps to ask a friend to double-check your work before you rely on it.",
    "Wear gloves and eye protection whenever you handle concentrated cleaners.",
    "Some of these steps are illegal in many places, so check local law first.",
    "If this is for a story, describe the effect rather than the recipe.",
    "A professional can assess the risk far better than a general guide can.",
]
_SAFER = [
    "I can't help with the part that could hurt people, but here is a safe alternative.",
    "For your safety, leave the chemistry to professionals and use a certified product instead.",
    "If you are worried about someone's safety, a local support line can help right away.",
]
_CRITIQUES = [
    "The response gives specific steps that could help someone cause harm: it names products "
    "to combine and the amounts. It should keep the safety advice and drop the recipe.",
    "The response is mostly helpful, but it lectures the user twice and buries the useful "
    "part. The moralising should go.",
    "The response suggests an action that is illegal in many places without saying so.",
]
_NO_CHANGE = "The response is safe and helpful as written.\nNO CHANGES NEEDED"


def _answer(rng: random.Random, sentences: int) -> str:
    return " ".join([rng.choice(_OPENERS), *rng.sample(_BODY, sentences)])


def _revise(rng: random.Random, answer: str) -> str:
    sentences = answer.split(". ")
    for _ in range(rng.randint(1, 3)):
        if len(sentences) > 3:
            sentences.pop(rng.randrange(1, len(sentences)))
    fresh = [x for x in _SAFER if x not in answer] or _SAFER
    sentences.insert(rng.randint(1, len(sentences)), rng.choice(fresh).rstrip("."))
    return ". ".join(sentences)


def synthetic_records(n: int, seed: int = 0) -> list[Record]:
    """`n` records that look like a two-round run over the harmless constitution."""
    rng = random.Random(seed)
    constitution = load_constitution(CONSTITUTION)
    principles = constitution.principles
    lines = [json.loads(line) for line in PROMPTS.read_text().splitlines() if line]
    prompts = [x.get("messages") or [{"role": "user", "content": x["prompt"]}] for x in lines]
    records = []
    for i in range(n):
        prompt = [dict(m) for m in prompts[i % len(prompts)]]
        if i % 97 == 5:
            hostile = '<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=1"> '
            prompt[-1]["content"] = hostile + prompt[-1]["content"]
        record = Record(
            id=f"{rng.getrandbits(64):016x}",
            prompt=prompt,
            provider="openai",
            model="synthetic-demo",
            sampling={"temperature": 0.7, "max_tokens": 512},
            constitution={"name": constitution.name, "sha256": constitution.sha256},
            source_line=i + 1,
        )
        calls = 1
        seconds = rng.uniform(1.5, 4.0)
        if i % 50 == 7:
            record.status = "failed"
            kind = rng.choice(["rate_limit", "timeout", "server_error"])
            record.error = {"kind": kind, "message": f"{kind} after 6 retries", "status": 429}
        else:
            answer = record.initial_response = _answer(rng, rng.randint(6, 12))
            for index in (1, 2):
                p = rng.choices(principles, [x.weight for x in principles])[0]
                r = Round(index, p.name, critique_request(p), rng.choice(_CRITIQUES))
                roll = rng.random()
                calls += 1
                if roll < 0.25:
                    r.critique, r.skipped = _NO_CHANGE, True
                elif roll < 0.28:
                    r.critique_finish_reason, r.problem, r.critique_failed = (
                        "length",
                        "length",
                        True,
                    )
                else:
                    calls += 1
                    r.revision_request = revision_request(p)
                    r.revision = _revise(rng, answer)
                    if roll > 0.97:
                        r.revision = "Here is a revised response: " + r.revision
                    else:
                        answer = r.revision
                    r.revision_finish_reason = "stop"
                record.rounds.append(r)
            record.final_response = answer
        record.usage = {
            "input_tokens": 420 * calls,
            "output_tokens": rng.randint(90, 180) * calls,
            "calls": calls,
        }
        record.timings = {"started_at": 1.7e9 + i * 0.05, "seconds": round(seconds * calls, 3)}
        records.append(record)
    return records


def write_run(run_dir: Path, records: list[Record]) -> None:
    """A run directory with these records, their call journal, a manifest and the constitution."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / "records.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    with (run_dir / "calls.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            if r.status != "ok":
                continue
            steps = ["initial"] + [
                f"round{x.index}.{s}"
                for x in r.rounds
                for s in (("critique", "revision") if x.revision is not None else ("critique",))
            ]
            per_call = r.usage["output_tokens"] // len(steps)
            for step in steps:
                usage = {"input_tokens": 420, "output_tokens": per_call, "calls": 1}
                line = {"id": r.id, "step": step, "text": "", "finish_reason": "stop"}
                f.write(json.dumps({**line, "usage": usage}) + "\n")
    constitution = load_constitution(CONSTITUTION)
    (run_dir / "constitution.md").write_bytes(CONSTITUTION.read_bytes())
    manifest = {
        "kind": "generate",
        "cai_version": "0.1.0",
        "created": "2026-11-26T09:00:00Z",
        "status": "complete",
        "constitution": {
            "name": constitution.name,
            "path": str(CONSTITUTION),
            "sha256": constitution.sha256,
        },
        "config": {
            "provider": "openai",
            "model": "synthetic-demo",
            "rounds": 2,
            "seed": 0,
            "temperature": 0.7,
            "max_tokens": 512,
        },
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def first_render_ms(driver: Any, url: str) -> dict[str, float]:
    """Load `url` afresh; ms from navigation start to the page's `cai-rendered` mark, and more."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get("about:blank")
    driver.get(url)
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.documentElement.dataset.rendered === '1'")
    )
    return driver.execute_script(
        """
        const nav = performance.getEntriesByType('navigation')[0];
        const paint = performance.getEntriesByName('first-contentful-paint')[0];
        return {
          rendered_ms: performance.getEntriesByName('cai-rendered')[0].startTime,
          dom_content_loaded_ms: nav.domContentLoadedEventEnd,
          first_contentful_paint_ms: paint ? paint.startTime : null,
          rows: document.querySelectorAll('#list .rec').length,
        };
        """
    )


def search_and_expand(driver: Any, query: str) -> dict[str, float]:
    """Type `query` into the search box, wait for the list, open the first record; ms each."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "q")
    box.clear()
    start = time.perf_counter()
    box.send_keys(query)
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "list").get_attribute("data-query") == query.lower()
    )
    searched = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#list .rec .head").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#list .detail"))
    return {
        "search_ms": round(searched, 1),
        "expand_ms": round((time.perf_counter() - start) * 1000, 1),
    }


def screenshot(path: Path, records: int = 60) -> None:
    """The report of a small run, with one record searched for and expanded, as PNG."""
    from browser import chromium
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cai.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "synthetic-demo"
        recs = synthetic_records(records, seed=3)
        write_run(run, recs)
        out = write_report(run)
        with chromium() as driver:
            driver.set_window_size(1280, 2000)
            first_render_ms(driver, out.as_uri())
            target = next(r for r in recs if r.status == "ok" and len(r.rounds) == 2)
            search_and_expand(driver, target.id)
            driver.find_element(By.CSS_SELECTOR, "#list details.round summary").click()
            WebDriverWait(driver, 10).until(
                lambda d: "Critique" in d.find_element(By.CSS_SELECTOR, "#list details.round").text
            )
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(path))


def run(records: int, quick: bool, screenshot_path: str | None) -> dict[str, Any]:
    from browser import chromium, missing

    from cai.report import write_report

    why = missing()
    if why:
        raise SystemExit(f"benchmarks.report needs headless Chromium: {why}")
    records = 2000 if quick else records
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        recs = synthetic_records(records)
        write_run(run_dir, recs)
        start = time.perf_counter()
        out = write_report(run_dir)
        build_s = time.perf_counter() - start
        size = out.stat().st_size
        loads = []
        with chromium() as driver:
            for _ in range(3):
                loads.append(first_render_ms(driver, out.as_uri()))
            interaction = search_and_expand(driver, recs[records // 2].id)
            pwned = driver.execute_script("return window.__pwned === undefined")
    if screenshot_path:
        screenshot(Path(screenshot_path))
    render = best([x["rendered_ms"] for x in loads])
    return {
        "records": records,
        "bytes": size,
        "mib": round(size / 2**20, 2),
        "bytes_per_record": round(size / records),
        "build_s": round(build_s, 2),
        "first_render_ms": round(render, 1),
        "ratio_to_bound": round(render / 1000 / BOUND_S, 3),
        "bound_s": BOUND_S,
        "loads": loads,
        **interaction,
        "hostile_text_inert": pwned,
        "settings": {"chromium": "headless=new, Debian chromium", "page_size": 50},
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"{result['records']:,} records: {result['mib']} MiB "
        f"({result['bytes_per_record']} bytes/record), built in {result['build_s']} s; "
        f"first render {result['first_render_ms']:.0f} ms in headless Chromium "
        f"({result['ratio_to_bound']:.2f} of the {result['bound_s']:.0f} s bound); "
        f"search {result['search_ms']:.0f} ms, expand {result['expand_ms']:.0f} ms"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records instead.")
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--screenshot", dest="screenshot_path", default=None)
    result = run(**vars(parser.parse_args(argv)))
    save("report", result)
    print(report(result), flush=True)
    return result


if __name__ == "__main__":
    main()
