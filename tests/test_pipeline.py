from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import MINI_CONSTITUTION
from fakes import FakeProvider, echo_reply

from cai.constitution import parse_constitution
from cai.errors import BadRequestError, ConfigError, RunMismatchError
from cai.pipeline import GenerateConfig, pick_principles, run_chain, run_generation
from cai.prompts import NO_CHANGE_MARKER, is_no_change
from cai.providers.base import Completion, Usage
from cai.records import Record
from cai.rundir import RunStore, read_records
from cai.sources import PromptItem, prompt_id

CONSTITUTION = parse_constitution(MINI_CONSTITUTION, path="mini.md")


def item(text: str) -> PromptItem:
    messages = [{"role": "user", "content": text}]
    return PromptItem(prompt_id(messages), messages, 1)


async def chain(provider: FakeProvider, prompt: PromptItem, **config: object) -> Record:
    journal: dict = {}
    from cai.pipeline import RunStats, _Caller

    caller = _Caller(
        provider,
        GenerateConfig(**config),
        None,
        journal,
        asyncio.Semaphore(4),
        RunStats(),
        lambda k, d: None,
    )
    return await run_chain(prompt, CONSTITUTION, GenerateConfig(**config), caller, provider)


def test_chain_answers_critiques_and_revises_with_few_shot_turns() -> None:
    provider = FakeProvider().enqueue(
        "first answer", "It is rude.", "kind answer", "Still terse.", "final answer"
    )
    record = asyncio.run(chain(provider, item("hello?"), rounds=2))
    assert record.status == "ok"
    assert record.initial_response == "first answer"
    assert [r.critique for r in record.rounds] == ["It is rude.", "Still terse."]
    assert [r.revision for r in record.rounds] == ["kind answer", "final answer"]
    assert record.final_response == "final answer"
    assert record.usage == {
        "input_tokens": 50,
        "output_tokens": 25,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "calls": 5,
    }

    initial, critique, revision, critique2, _ = (c.messages for c in provider.history)
    assert initial == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello?"},
    ]
    # System prompt, then both few-shot examples as real chat turns, then the conversation.
    assert [m["role"] for m in critique] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert critique[1:3] == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ]
    assert critique[4]["content"].endswith(NO_CHANGE_MARKER)
    assert critique[-3:-1] == [
        {"role": "user", "content": "hello?"},
        {"role": "assistant", "content": "first answer"},
    ]
    principle = CONSTITUTION.principle(record.rounds[0].principle)
    assert critique[-1]["content"].startswith(principle.critique)
    assert revision[:-2] == critique
    assert revision[-2] == {"role": "assistant", "content": "It is rude."}
    assert revision[-1]["content"].startswith(principle.revision)
    # Round 2 critiques round 1's revision.
    assert critique2[-2] == {"role": "assistant", "content": "kind answer"}


def test_no_change_critique_skips_the_revision_call() -> None:
    provider = FakeProvider().enqueue("fine answer", f"Nothing wrong here.\n{NO_CHANGE_MARKER}")
    record = asyncio.run(chain(provider, item("hi"), rounds=1))
    assert len(provider.history) == 2
    (round_,) = record.rounds
    assert round_.skipped and round_.revision is None and round_.revision_request is None
    assert record.final_response == "fine answer"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("All good.\nNO CHANGES NEEDED", True),
        ("All good.\n**No changes needed.**", True),
        ("no change needed", True),
        ("It has no changes needed in tone, but the facts are wrong.", False),
        ("NO CHANGES NEEDED\nActually, the second claim is false.", False),
        ("", False),
    ],
)
def test_is_no_change(text: str, expected: bool) -> None:
    assert is_no_change(text) is expected


def test_cut_off_revision_is_recorded_and_not_used() -> None:
    truncated = Completion("half a revi", "length", Usage(calls=1))
    provider = FakeProvider().enqueue("answer", "Fix it.", truncated)
    record = asyncio.run(chain(provider, item("q"), rounds=1))
    (round_,) = record.rounds
    assert round_.problem == "length" and round_.revision == "half a revi"
    assert record.final_response == "answer"


def test_refused_critique_makes_no_revision() -> None:
    provider = FakeProvider().enqueue("answer", Completion("", "refusal", Usage(calls=1)))
    record = asyncio.run(chain(provider, item("q"), rounds=1))
    assert len(provider.history) == 2
    (round_,) = record.rounds
    assert round_.problem == "refusal" and round_.critique_failed and not round_.skipped
    assert round_.state == "critique_failed"


def test_failed_call_marks_the_record_failed() -> None:
    provider = FakeProvider().enqueue(
        "answer", BadRequestError("too long", status=400, request_id="req_1")
    )
    record = asyncio.run(chain(provider, item("q"), rounds=1))
    assert record.status == "failed"
    assert record.error == {
        "kind": "bad_request",
        "message": "too long",
        "status": 400,
        "request_id": "req_1",
    }


def test_principles_are_sampled_by_weight_and_seed() -> None:
    picks = [p.name for i in range(2000) for p in pick_principles(CONSTITUTION, 1, 0, f"id{i}")]
    assert 0.70 < picks.count("harm") / len(picks) < 0.80  # weight 3 of 4
    a = [p.name for p in pick_principles(CONSTITUTION, 6, 1, "x")]
    assert a == [p.name for p in pick_principles(CONSTITUTION, 6, 1, "x")]
    assert any([p.name for p in pick_principles(CONSTITUTION, 6, s, "x")] != a for s in range(2, 6))


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="rounds must be 0 or more"):
        GenerateConfig(rounds=-1)
    with pytest.raises(ConfigError, match="temperature must be between 0 and 2"):
        GenerateConfig(temperature=3)
    with pytest.raises(ConfigError, match="shard must be K/N"):
        GenerateConfig(shard=(3, 2))


def generate(tmp_path: Path, provider: FakeProvider, prompts: list[PromptItem], **config: object):
    store = RunStore(tmp_path / "run")
    stats = asyncio.run(
        run_generation(prompts, CONSTITUTION, provider, GenerateConfig(**config), store)
    )
    return stats, list(read_records(store.dir))


def test_run_writes_each_prompt_once_and_a_manifest(tmp_path: Path) -> None:
    prompts = [item(f"question {i}") for i in range(5)]
    stats, records = generate(
        tmp_path, FakeProvider(respond=echo_reply), [*prompts, prompts[0]], rounds=1
    )
    assert sorted(r.id for r in records) == sorted(p.id for p in prompts)
    assert (stats.done, stats.failed, stats.duplicates) == (5, 0, 1)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"records": 5, "ok": 5}
    assert manifest["settings"]["constitution_sha256"] == CONSTITUTION.sha256


def test_same_seed_samples_the_same_principles(tmp_path: Path) -> None:
    prompts = [item(f"question {i}") for i in range(8)]
    _, first = generate(tmp_path / "a", FakeProvider(respond=echo_reply), prompts, rounds=3, seed=7)
    _, again = generate(tmp_path / "b", FakeProvider(respond=echo_reply), prompts, rounds=3, seed=7)
    assert {r.id: r.principles for r in first} == {r.id: r.principles for r in again}


def test_slow_prompt_does_not_hold_back_the_others(tmp_path: Path) -> None:
    slow = item("slow one")

    class Slow(FakeProvider):
        async def complete(self, messages, sampling, *, seed=None):
            if any("slow one" in m["content"] for m in messages):
                await asyncio.sleep(0.3)
            return await super().complete(messages, sampling, seed=seed)

    prompts = [slow] + [item(f"fast {i}") for i in range(6)]
    _, records = generate(tmp_path, Slow(respond=echo_reply), prompts, rounds=1, concurrency=4)
    assert records[-1].id == slow.id  # written last although read first


def test_at_most_concurrency_calls_in_flight(tmp_path: Path) -> None:
    in_flight = peak = 0

    class Counting(FakeProvider):
        async def complete(self, messages, sampling, *, seed=None):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return await super().complete(messages, sampling, seed=seed)

    generate(
        tmp_path,
        Counting(respond=echo_reply),
        [item(f"q{i}") for i in range(20)],
        rounds=1,
        concurrency=3,
    )
    assert peak == 3


def test_resume_reuses_paid_replies_and_replaces_the_failed_record(tmp_path: Path) -> None:
    prompts = [item("a"), item("b")]
    failing = FakeProvider(respond=echo_reply)
    failing.enqueue("answer a", "crit a", BadRequestError("boom"))
    stats, records = generate(tmp_path, failing, prompts[:1], rounds=1)
    assert stats.failed == 1 and records[0].status == "failed"

    again = FakeProvider(respond=echo_reply)
    stats, records = generate(tmp_path, again, prompts, rounds=1)
    assert [r.status for r in records] == ["ok", "ok"]
    assert sorted(r.id for r in records) == sorted(p.id for p in prompts)
    by_id = {r.id: r for r in records}
    assert by_id[prompts[0].id].initial_response == "answer a"  # from the journal, not re-bought
    assert stats.journal_hits == 2
    assert all("crit a" not in c.messages[-1]["content"] for c in again.history[:1])


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    generate(tmp_path, FakeProvider(respond=echo_reply), [item("a")], rounds=1)
    with pytest.raises(RunMismatchError, match="rounds was 1, now 2"):
        generate(tmp_path, FakeProvider(respond=echo_reply), [item("a")], rounds=2)


def test_run_counts_skipped_and_cut_off_rounds_apart(tmp_path: Path) -> None:
    provider = FakeProvider().enqueue(
        "answer a",
        Completion("", "refusal", Usage(calls=1)),
        "answer b",
        f"Fine.\n{NO_CHANGE_MARKER}",
    )
    stats, _ = generate(tmp_path, provider, [item("a"), item("b")], rounds=1, concurrency=1)
    assert (stats.skipped_rounds, stats.problem_rounds, stats.revised) == (1, 1, 0)
