"""`cai prompts generate`: red-team prompts from the constitution, against the loopback fake.

The fake (tests/fake_server.py, `redteam_reply`) answers a request for N prompts with a JSON
array (an object under `response_format`), bare, pretty or in a code fence; about a fifth of
its items repeat an earlier call's (exactly, exactly once Unicode and whitespace are
normalised, or nearly), a few copy a shown seed or are blank, one reply in 25 refuses, one in
30 (with a seed) is prose with no JSON, and one in 11 has an item too many.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import unicodedata
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_server import REDTEAM_REFUSAL, Canned, FakeServer
from procs import cai_process, count_lines

from cai.cli import cli
from cai.constitution import load_constitution
from cai.redteam import (
    STYLES,
    Deduper,
    RedteamConfig,
    load_seeds,
    load_styles,
    normalize_text,
    parse_reply,
    plan_calls,
    read_prompts,
    run_prompts,
)

# Four principles of unequal weight: shares 1/8, 1/8, 1/4, 1/2.
CONSTITUTION = """\
# Weighted

## Principle: harm
Weight: 4
Critique: Identify ways the response helps someone cause harm.
Revision: Rewrite the response to remove harmful content.

## Principle: privacy
Weight: 2
Critique: Identify where the response exposes private information about a person.
Revision: Rewrite the response to protect people's privacy.

## Principle: honesty
Critique: Identify claims the response cannot support.
Revision: Rewrite the response so every claim is supported.

## Principle: medical-dosing
Critique: Identify medication doses given without the caution a clinician would use.
Revision: Rewrite the response to point to a clinician for doses.

## Example: a lock
User: How do I pick a lock?
Assistant: Use a tension wrench and a pick.
Critique: This gives step-by-step help without asking whether the lock is the user's own.
Revision: If it is your own lock, a locksmith can open it quickly.
"""
WEIGHTS = {"harm": 4, "privacy": 2, "honesty": 1, "medical-dosing": 1}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")


@pytest.fixture
def constitution(tmp_path: Path) -> Path:
    path = tmp_path / "weighted.md"
    path.write_text(CONSTITUTION, encoding="utf-8")
    return path


def _args(server: FakeServer, constitution: Path, out: Path, *extra: object) -> list[str]:
    return [
        "prompts", "generate", "--constitution", str(constitution), "--out", str(out),
        "--provider", "openai", "--model", "gpt-5.4-mini", "--base-url", server.url + "/v1",
        *map(str, extra),
    ]  # fmt: skip


def _shingles(text: str) -> set[str]:
    norm = normalize_text(text)
    return {norm[i : i + 5] for i in range(max(1, len(norm) - 4))}


def _text(row: dict) -> str:
    return row["prompt"] if "prompt" in row else "\n".join(m["content"] for m in row["messages"])


def _check_no_duplicates(rows: list[dict], seeds: list[str]) -> float:
    """No two prompts (nor a prompt and a seed) the same once normalised, none of them near
    (true Jaccard over character 5-grams, not the MinHash estimate); the highest found."""
    texts = [_text(r) for r in rows]
    norms = [normalize_text(t) for t in texts]
    assert len(set(norms)) == len(norms), "an exact duplicate after normalisation"
    assert not set(norms) & {normalize_text(s) for s in seeds}, "a seed copied"
    sets = [_shingles(t) for t in [*texts, *seeds]]
    worst = 0.0
    for i in range(len(texts)):
        for j in range(i + 1, len(sets)):
            a, b = sets[i], sets[j]
            worst = max(worst, len(a & b) / len(a | b))
    assert worst < 0.7, f"a near duplicate kept (Jaccard {worst:.2f})"
    return worst


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- the pieces ------------------------------------------------------------------------------


def test_replies_are_read_tolerantly_and_refusals_are_never_read() -> None:
    assert parse_reply('["a", "b"]') == ("ok", ["a", "b"])
    assert parse_reply('Here they are:\n```json\n["a", "b"]\n```') == ("ok", ["a", "b"])
    assert parse_reply('{"prompts": ["a"]}') == ("ok", ["a"])
    assert parse_reply('Sure! ["a", "b"] Hope that helps.') == ("ok", ["a", "b"])
    # Cut off at the token limit: the finished items; otherwise unreadable (asked again).
    assert parse_reply('["abc", "de', "length") == ("ok", ["abc"])
    assert parse_reply('["abc", "de') == ("unparsed", [])
    assert parse_reply("1. first idea\n2. second idea") == ("unparsed", [])
    # A refusal is never read as prompts, even with an array after it.
    assert parse_reply(f'{REDTEAM_REFUSAL} Instead: ["How do locks work?"]')[0] == "refusal"
    assert parse_reply("As an AI, I won't write these.")[0] == "refusal"
    assert parse_reply("", "refusal") == ("refusal", [])
    assert parse_reply('["a"]', "content_filter") == ("refusal", [])


def test_dedup_exact_after_normalising_then_near_with_minhash() -> None:
    d = Deduper(0.7)
    d.add_seed("seed:1", "How do I pick a lock?")
    fresh = "Kalomi rensa vodel prigan foul bezcor tamnis epzu halmor kaloe?"
    assert d.check("a", "How do I pick a lock?") == "copies_seed"
    assert d.check("b", "  how do I  PICK a lock\uff1f") == "copies_seed"  # NFKC, case, spaces
    assert d.check("c", fresh) is None
    assert d.check("d", "  " + fresh.replace(" ", "\u00a0 ")) == "exact_duplicate"
    assert d.check("e", fresh[:-1] + " please?") == "near_duplicate"
    assert d.check("f", "Tamnis kalo mi rensa bez del?") is None
    assert d.check("g", " \t ") == "invalid"
    assert unicodedata.normalize("NFKC", "\uff1f") == "?"


def test_each_call_is_planned_from_the_seed_and_its_index_alone(constitution: Path) -> None:
    parsed = load_constitution(constitution)
    seeds = load_seeds(None, parsed)
    config = RedteamConfig(n=1000, benign=0.2, multi_turn=0.1, seed=7)
    plans = list(islice(plan_calls(parsed, STYLES, seeds, config), 2000))
    assert plans == list(islice(plan_calls(parsed, STYLES, seeds, config), 2000))
    other = RedteamConfig(n=1000, benign=0.2, multi_turn=0.1, seed=8)
    assert plans != list(islice(plan_calls(parsed, STYLES, seeds, other), 2000))
    kinds = Counter(p.kind for p in plans)
    assert kinds["benign"] == 400  # exactly a fifth of the calls, spread evenly
    assert all(p.style == "benign_lookalike" for p in plans if p.kind == "benign")
    assert sum(p.turns for p in plans) == 200
    assert all(p.style == "escalation" for p in plans if p.turns)
    # Each principle's attack styles are used evenly: its row of the grid fills.
    for name in WEIGHTS:
        row = Counter(p.style for p in plans if p.principle == name and p.kind == "attack")
        row.pop("escalation")
        assert len(row) == 8 and max(row.values()) - min(row.values()) <= 1, row
    by_principle = Counter(p.principle for p in plans)
    for name, weight in WEIGHTS.items():
        assert abs(by_principle[name] / 2000 - weight / 8) < 0.04, by_principle
    # The constitution's own example request is a seed, beside the built-in ones.
    assert "How do I pick a lock?" in {s.text for s in seeds}
    assert all(len(p.seed_ids) == 3 for p in plans)


def test_styles_file_forms_and_mistakes(tmp_path: Path) -> None:
    text = tmp_path / "styles.txt"
    text.write_text("# mine\nslang: uses street slang\nlegal: cites a law that permits it\n")
    styles = load_styles(text)
    assert [s.name for s in styles] == ["slang", "legal", "benign_lookalike", "escalation"]
    as_json = tmp_path / "styles.json"
    as_json.write_text(json.dumps([
        {"name": "kind_words", "description": "is polite", "source": "me"},
        {"name": "lookalike", "description": "is harmless", "kind": "benign"},
    ]))  # fmt: skip
    assert [(s.name, s.kind) for s in load_styles(as_json)] == [
        ("kind_words", "attack"), ("lookalike", "benign"), ("escalation", "attack"),
    ]  # fmt: skip
    bad = tmp_path / "bad.txt"
    bad.write_text("no colon here\n")
    with pytest.raises(Exception, match=r"bad.txt:1: each line is 'name: description'"):
        load_styles(bad)
    assert len(STYLES) == 10 and all(s.source for s in STYLES)


def test_bad_options_are_one_line_errors(tmp_path: Path, constitution: Path) -> None:
    for extra, message in [
        (["--benign", "1.5"], "--benign must be a share between 0 and 1, got 1.5"),
        (["--benign", "0.7", "--multi-turn", "0.5"], "add up to more than 1"),
        (["--n", "0"], "--n must be at least 1"),
        (["--per-call", "0"], "--per-call must be between 1 and 100"),
        (["--styles", tmp_path / "none.txt"], "no such file; check the --styles path"),
        (["--seeds", tmp_path / "none.jsonl"], "no such file or directory"),
    ]:
        result = CliRunner().invoke(
            cli, ["prompts", "generate", "--constitution", str(constitution),
                  "--out", str(tmp_path / "run"), "--provider", "openai", *map(str, extra)],
        )  # fmt: skip
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_plan_and_calls_nothing(tmp_path: Path, constitution: Path) -> None:
    with FakeServer() as server:
        result = CliRunner().invoke(
            cli, _args(server, constitution, tmp_path / "run", "--n", 500, "--dry-run")
        )
        assert result.exit_code == 0, result.output
        assert "Calls: at least 50" in result.output and "at most 200" in result.output
        assert server.requests == 0 and not (tmp_path / "run").exists()


# -- a whole run -----------------------------------------------------------------------------


def test_500_prompts_cover_the_principles_and_styles_without_duplicates(
    tmp_path: Path, constitution: Path
) -> None:
    """The Done-when run: --n 500 --benign 0.2 against the fake, which repeats itself."""
    run = tmp_path / "run"
    with FakeServer() as server:
        args = _args(server, constitution, run, "--n", 500, "--per-call", 5, "--benign", 0.2)
        result = CliRunner().invoke(cli, [*args, "--concurrency", 8])
        assert result.exit_code == 0, result.output
        bodies = [e.body for e in server.log if e.api == "openai"]
    rows = read_prompts(run)
    assert len(rows) >= 500
    assert len({r["id"] for r in rows}) == len(rows)
    seeds = [s.text for s in load_seeds(None, load_constitution(constitution))]
    _check_no_duplicates(rows, seeds)
    # Every principle, in proportion to its weight within a factor of 2.
    share = Counter(r["principle"] for r in rows)
    for name, weight in WEIGHTS.items():
        ratio = share[name] / len(rows) / (weight / 8)
        assert 0.5 <= ratio <= 2, (name, ratio, share)
    assert len({r["style"] for r in rows}) >= 5
    benign = sum(r["kind"] == "benign" for r in rows) / len(rows)
    assert 0.15 <= benign <= 0.25, benign
    assert all(r["kind"] == "attack" for r in rows if r["style"] != "benign_lookalike")
    conversations = [r for r in rows if "messages" in r]
    assert conversations and all(r["style"] == "escalation" for r in conversations)
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant", "user"]
               for r in conversations)  # fmt: skip
    assert all(len(r["seed_ids"]) == 3 for r in rows)
    # Structured output on an OpenAI-compatible server: a JSON schema with every request.
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    # The drops, by reason; refusals counted, never read; unreadable replies asked again.
    manifest = json.loads((run / "manifest.json").read_text())
    summary = manifest["prompts_summary"]
    drops = summary["drops"]
    for reason in ("exact_duplicate", "near_duplicate", "copies_seed", "over_count"):
        assert drops[reason] > 0, drops
    lines = _lines(run / "generations.jsonl")
    refused = [line for line in lines if line["status"] == "refused"]
    assert refused and summary["refusals"] == len(refused)
    assert all(line["items"] == [] for line in refused)
    assert any(line["attempts"] > 1 for line in lines)  # prose, asked again with a new seed
    kept_and_dropped = len(rows) + sum(drops.values())
    assert kept_and_dropped == sum(len(line["items"]) for line in lines)
    assert manifest["status"] == "complete" and not summary["cap_reached"]
    # What cai stats shows of it.
    stats = CliRunner().invoke(cli, ["stats", str(run)])
    assert stats.exit_code == 0, stats.output
    assert "Principle x style:" in stats.output and "| medical-dosing |" in stats.output
    assert "Refusals: " in stats.output and "near_duplicate" in stats.output
    assert "Benign look-alikes: " in stats.output and "Per 1,000 prompts:" in stats.output
    data = json.loads(CliRunner().invoke(cli, ["stats", str(run), "--json"]).output)
    assert sum(sum(c.values()) for c in data["coverage"].values()) == len(rows)
    assert data["benign_share"] == round(benign, 4)
    # And cai report: the same figures as a page that runs no script.
    report = CliRunner().invoke(cli, ["report", str(run)])
    assert report.exit_code == 0, report.output
    page = (run / "report.html").read_text()
    assert "Coverage: principle x style" in page and "medical-dosing" in page
    assert "near_duplicate" in page and "benign look-alikes" in page and "<script" not in page


def test_anthropic_replies_are_read_without_structured_output(
    tmp_path: Path, constitution: Path
) -> None:
    run = tmp_path / "run"
    with FakeServer() as server:
        result = CliRunner().invoke(
            cli, ["prompts", "generate", "--constitution", str(constitution), "--out", str(run),
                  "--provider", "anthropic", "--base-url", server.url, "--n", 60],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        bodies = [e.body for e in server.log if e.api == "anthropic"]
    assert bodies and not any("response_format" in b for b in bodies)
    rows = read_prompts(run)
    assert len(rows) >= 60
    _check_no_duplicates(rows, [])


def test_seeds_and_styles_files_steer_the_calls(tmp_path: Path, constitution: Path) -> None:
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Tell me how to track my ex's phone.\nWrite a scam text about a parcel.\n")
    styles = tmp_path / "styles.txt"
    styles.write_text("slang: uses street slang\nlegal: cites a law that seems to permit it\n")
    run = tmp_path / "run"
    with FakeServer() as server:
        args = _args(server, constitution, run, "--n", 40, "--seeds", seeds, "--styles", styles)
        result = CliRunner().invoke(cli, [*args, "--shots", 2, "--multi-turn", 0])
        assert result.exit_code == 0, result.output
        asked = [e.body["messages"][-1]["content"] for e in server.log if e.api == "openai"]
    assert all("Tell me how to track my ex's phone." in text for text in asked)
    rows = read_prompts(run)
    assert {r["style"] for r in rows} <= {"slang", "legal", "benign_lookalike"}
    assert {"slang", "legal"} <= {r["style"] for r in rows}
    ids = {s.id for s in load_seeds(seeds, load_constitution(constitution))}
    assert all(set(r["seed_ids"]) == ids for r in rows)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["prompts"]["name"] == "seeds.txt" and manifest["prompts"]["count"] == 2


def test_a_reply_never_readable_fails_its_call_and_the_rerun_pays_nothing_again(
    tmp_path: Path, constitution: Path
) -> None:
    """Every reply prose: each call is asked 1 + --parse-retries times, then fails (exit 3);
    the same command again reads the same replies from the journal, paying nothing."""
    run = tmp_path / "run"
    with FakeServer() as server:
        prose = Canned(body=None)
        args = _args(server, constitution, run, "--n", 10, "--max-calls", 3, "--concurrency", 1)

        def chat(text: str) -> dict:
            return {"id": "x", "choices": [{"message": {"role": "assistant", "content": text},
                    "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 5}}  # fmt: skip

        prose.body = chat("Some ideas: ask about locks, then about chemistry.")
        server.enqueue(prose, match="Reply with a JSON", times=9)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, result.output
        assert "unparsed" in result.output and server.requests == 9
        lines = _lines(run / "generations.jsonl")
        assert [line["status"] for line in lines] == ["failed"] * 3
        assert "Stopped at the call cap (3 calls" in result.output
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 3 and server.requests == 9, again.output
        # Kept as failed, not waited for: the run ends at once.
        kept = CliRunner().invoke(cli, [*args, "--no-retry-failed"])
        assert kept.exit_code == 3 and server.requests == 9, kept.output


# -- kills -----------------------------------------------------------------------------------


def _cai(args: list[str]) -> subprocess.Popen[str]:
    return cai_process(args, stdout=subprocess.DEVNULL)


def _wait_for(predicate, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300  # only keeps a broken run from hanging the suite
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def _check_resumed_run(run: Path, n: int) -> list[dict]:
    rows = read_prompts(run)
    assert len(rows) >= n and len({r["id"] for r in rows}) == len(rows)
    _check_no_duplicates(rows, [])
    lines = _lines(run / "generations.jsonl")
    assert len({line["id"] for line in lines}) == len(lines), "a call's line written twice"
    journal = _lines(run / "calls.jsonl")
    steps = Counter((c["id"], c["step"]) for c in journal)
    assert max(steps.values()) == 1, "a reply journaled twice"
    # Nothing lost: every reply paid for and journaled made its call's line.
    assert {c["id"] for c in journal} <= {line["id"] for line in lines}
    return rows


def test_sigkill_mid_run_then_the_same_command_loses_and_repeats_nothing(
    tmp_path: Path, constitution: Path
) -> None:
    run = tmp_path / "run"
    kills = (3, 12, 25)  # journal lines to wait for before each SIGKILL
    with FakeServer(latency=0.02) as server:
        args = _args(server, constitution, run, "--n", 300, "--concurrency", 4)
        for at in kills:
            proc = _cai(args)
            _wait_for(lambda: count_lines(run / "calls.jsonl") >= at, proc)  # noqa: B023
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
        assert not (run / "prompts.jsonl").exists()  # made when a run ends
        stats = CliRunner().invoke(cli, ["stats", str(run)])
        assert "interrupted: process" in stats.output and "is gone" in stats.output
        early = CliRunner().invoke(
            cli, ["generate", "--constitution", str(constitution), "--prompts", str(run),
                  "--provider", "openai", "--base-url", server.url + "/v1"],
        )  # fmt: skip
        assert early.exit_code == 2 and "has not written prompts.jsonl yet" in early.output
        proc = _cai(args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        journal = count_lines(run / "calls.jsonl")
        paid = sum(server.paid.values())
        bought_twice = sum(n - 1 for n in server.paid.values())
    _check_resumed_run(run, 300)
    # Only replies in flight at a kill (at most --concurrency each) were bought again.
    assert bought_twice <= 4 * len(kills) and paid - journal == bought_twice
    assert "resuming it" in err


def test_ctrl_c_keeps_what_came_back_and_the_same_command_goes_on(
    tmp_path: Path, constitution: Path
) -> None:
    run = tmp_path / "run"
    with FakeServer(latency=0.02) as server:
        args = _args(server, constitution, run, "--n", 200, "--concurrency", 4)
        proc = _cai(args)
        _wait_for(lambda: count_lines(run / "generations.jsonl") >= 3, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 130, err
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "interrupted"
        kept = read_prompts(run)
        assert 0 < len(kept) < 200  # prompts.jsonl holds what came back before the stop
        proc = _cai(args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert max(server.paid.values()) == 1  # nothing in flight was lost: no call again
    rows = _check_resumed_run(run, 200)
    assert {r["id"] for r in kept} <= {r["id"] for r in rows}


def test_sigkill_while_a_batch_is_open_then_resumed_pays_each_call_once(
    tmp_path: Path, constitution: Path
) -> None:
    run = tmp_path / "run"
    with FakeServer(seed=3, batch_error_rate=0.05) as server:
        args = _args(server, constitution, run, "--n", 200, "--batch", "--poll-interval", 0.05)
        server.hold_batches = True  # open until the kill has landed, however busy the machine
        proc = _cai(args)
        batches = run / "batches.jsonl"
        _wait_for(lambda: '"created"' in (batches.read_text() if batches.exists() else ""), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        server.hold_batches = False
        proc = _cai(args)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "re-attached" in err
        assert max(server.paid.values()) == 1  # no call bought twice
        assert server.paid_total == count_lines(run / "calls.jsonl")  # and each one journaled
    _check_resumed_run(run, 200)


# -- into generate and export ----------------------------------------------------------------


def test_generate_reads_the_run_and_export_carries_principle_style_kind(
    tmp_path: Path, constitution: Path
) -> None:
    prompts_run, gen, out = tmp_path / "prompts", tmp_path / "gen", tmp_path / "dpo.jsonl"
    with FakeServer() as server:
        made = CliRunner().invoke(
            cli, _args(server, constitution, prompts_run, "--n", 40, "--benign", 0.25)
        )
        assert made.exit_code == 0, made.output
        rows = {r["id"]: r for r in read_prompts(prompts_run)}
        result = CliRunner().invoke(
            cli, ["generate", "--constitution", str(constitution), "--prompts", str(prompts_run),
                  "--out", str(gen), "--rounds", "1", "--provider", "openai",
                  "--base-url", server.url + "/v1"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    records = _lines(gen / "records.jsonl")
    assert {r["id"] for r in records} == set(rows)  # the same ids: content hashes
    for record in records:
        row = rows[record["id"]]
        assert record["tags"] == {k: row[k] for k in ("principle", "style", "kind")}
    exported = CliRunner().invoke(cli, ["export", str(gen), "--format", "dpo", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    dpo = _lines(out)
    assert dpo and all({"principle", "style", "kind"} <= set(row) for row in dpo)
    assert {row["kind"] for row in dpo} == {"attack", "benign"}
    for row in dpo:
        assert row["style"] == rows[row["id"]]["style"]
    hf = CliRunner().invoke(
        cli, ["export", str(gen), "--format", "hf", "--out", str(tmp_path / "hf")]
    )
    assert hf.exit_code == 0, hf.output
    import datasets

    data = datasets.load_from_disk(str(tmp_path / "hf"))
    assert {"principle", "style", "kind"} <= set(data["train_prefs"].column_names)
    # cai stats on the generation run: the revision rate of each attack style.
    stats = CliRunner().invoke(cli, ["stats", str(gen)])
    assert "Revision rate by attack style" in stats.output, stats.output
    assert "benign_lookalike" in stats.output
    # and the Python API makes the same kind of run.
    import cai

    run = cai.generate_prompts(
        constitution, n=20, provider="openai", base_url=None, out=tmp_path / "api",
        dry_run=True,
    )  # fmt: skip
    assert "Calls: at least 2" in str(run)


def test_the_python_api_runs_a_prompts_job(tmp_path: Path, constitution: Path) -> None:
    import cai

    with FakeServer() as server:
        run = cai.generate_prompts(
            constitution, n=30, provider="openai", model="gpt-5.4-mini",
            base_url=server.url + "/v1", out=tmp_path / "api", progress=False,
        )  # fmt: skip
        assert run.kind == "prompts" and len(read_prompts(run.dir)) >= 30
        gen = cai.generate(
            run.dir, constitution, provider="openai", model="gpt-5.4-mini", rounds=1,
            base_url=server.url + "/v1", out=tmp_path / "gen", progress=False,
        )  # fmt: skip
    rows = gen.to_dataset("dpo")
    assert {"principle", "style", "kind"} <= set(rows.column_names) and len(rows) > 0


def test_run_prompts_from_an_event_loop(tmp_path: Path, constitution: Path) -> None:
    """The library call, as `cai.agenerate_prompts` makes it, with loaded seeds and styles."""
    from cai.providers import create_provider

    parsed = load_constitution(constitution)
    with FakeServer() as server:
        provider = create_provider("openai", model="m", base_url=server.url + "/v1")

        async def main() -> None:
            try:
                await run_prompts(
                    parsed, provider, RedteamConfig(n=25, multi_turn=0), tmp_path / "lib",
                    seeds=load_seeds(None, parsed), styles=STYLES,
                )  # fmt: skip
            finally:
                await provider.aclose()

        asyncio.run(main())
    rows = read_prompts(tmp_path / "lib")
    assert len(rows) >= 25 and not any("messages" in r for r in rows)


@pytest.mark.slow
def test_the_bundled_local_model_writes_prompts_through_a_json_schema_grammar(
    tmp_path: Path,
) -> None:
    """A real model, offline: SmolLM2-135M cannot keep to a JSON array by itself, but llama.cpp
    turns the request's JSON schema into a grammar, so every reply reads."""
    pytest.importorskip("llama_cpp")
    run = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["prompts", "generate", "--constitution", "harmless", "--out", str(run),
              "--n", 10, "--max-calls", 6, "--max-tokens", 300, "--concurrency", 1],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = _lines(run / "generations.jsonl")
    assert lines and all(line["status"] == "ok" and line["attempts"] == 1 for line in lines)
    assert len(read_prompts(run)) >= 10
