from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cai.cli import cli
from cai.constitution import Example, load_constitution
from cai.errors import ConfigError
from cai.filters import (
    FILTERS,
    FilterConfig,
    apply_filters,
    is_commentary,
    is_meta_text,
    judge_record,
    prompt_key,
    similarity,
)
from cai.records import Record, Round
from cai.rundir import read_records

INITIAL = "You could take the dog to a quiet place and leave it there for good."
GOOD = "Talk with your neighbor first; if the barking goes on, a mediator or the city can help."
CRITIQUE = "The answer suggests abandoning an animal, which is harmful and likely illegal."


def round_(index: int = 1, revision: str | None = GOOD, **kw: object) -> Round:
    fields: dict = {
        "index": index,
        "principle": "harm",
        "critique_request": "Identify ways the response is harmful.",
        "critique": CRITIQUE,
        "revision_request": "Rewrite the response to remove harmful content." if revision else None,
        "revision": revision,
        "revision_finish_reason": "stop" if revision is not None else None,
    }
    fields.update(kw)
    return Round(**fields)


def record(
    prompt: str = "How do I stop my neighbor's dog barking?",
    *,
    rounds: list[Round] | None = None,
    initial: str = INITIAL,
    **kw: object,
) -> Record:
    rounds = [round_()] if rounds is None else rounds
    return Record(
        id=kw.pop("id", "r1"),  # type: ignore[arg-type]
        prompt=[{"role": "user", "content": prompt}],
        initial_response=initial,
        rounds=rounds,
        final_response=rounds[-1].revision if rounds and rounds[-1].revision else initial,
        **kw,  # type: ignore[arg-type]
    )


def use(r: Record, **config: object) -> tuple[str, str | None]:
    verdict = judge_record(r, FilterConfig(**config))  # type: ignore[arg-type]
    return verdict.use, verdict.reason


def test_a_good_record_is_a_preference_pair_with_the_last_revision() -> None:
    verdict = judge_record(record(rounds=[round_(1, "A first fix."), round_(2, GOOD)]))
    assert (verdict.use, verdict.response, verdict.chosen_round, verdict.fell_back) == (
        "pref",
        GOOD,
        2,
        False,
    )


def test_failed_records_are_dropped_whatever_the_flags() -> None:
    failed = record(status="failed", initial="", rounds=[])
    off = {"truncated": False, "empty": False, "meta": False, "unchanged": False}
    assert use(failed) == ("drop", "failed")
    assert use(failed, **off) == ("drop", "failed")
    assert use(record(status="skipped", initial="", rounds=[])) == ("drop", "failed")
    assert use(record()) == ("pref", None)


@pytest.mark.parametrize("reason", ["length", "refusal", "content_filter"])
def test_truncated_first_answer_is_dropped_unless_kept(reason: str) -> None:
    cut = record(initial_finish_reason=reason)
    assert use(cut) == ("drop", "truncated")
    assert use(cut, truncated=False) == ("pref", None)
    assert use(record(initial_finish_reason="stop")) == ("pref", None)


def test_empty_first_answer_is_dropped_unless_kept() -> None:
    empty = record(initial=" \n", initial_finish_reason="empty")
    assert use(empty) == ("drop", "empty")
    assert use(empty, empty=False) == ("pref", None)
    assert use(record(initial="No.")) == ("pref", None)


@pytest.mark.parametrize(
    "revision",
    [
        "Here is a revised response: talk with your neighbor first.",
        "Here's the rewritten answer: talk with your neighbor first.",
        "Revision: talk with your neighbor first.",
        "**Revised response:** talk with your neighbor first.",
        "Sure, here's a kinder version. Talk with your neighbor first.",
        "Certainly! Here is the answer without the harmful part: talk to them.",
        "I have revised the response to remove the harmful advice.",
        "As the critique says, abandoning a dog is wrong; talk with your neighbor.",
        "Talk with your neighbor first.\nNO CHANGES NEEDED",
        CRITIQUE,  # the bundled 135M model often just repeats the critique
        "The answer suggests abandoning an animal which is harmful, and likely illegal!",
        "Rewrite the response to remove harmful content.",  # an echo of the request
    ],
)
def test_meta_revisions_are_dropped_unless_kept(revision: str) -> None:
    meta = record(rounds=[round_(1, revision)])
    assert use(meta) == ("drop", "meta")
    assert use(meta, meta=False, commentary=False) == ("pref", None)


@pytest.mark.parametrize(
    "revision",
    [
        GOOD,
        "Sure thing is that barking dogs are stressful. Talk with your neighbor first.",
        "Here is what usually works: talk with your neighbor, then a mediator.",
        "A revised plan: talk with your neighbor first, then ask the city for help.",
        "Critique from neighbors is hard to hear; talk with them calmly first.",
    ],
)
def test_answers_that_only_look_like_meta_text_are_kept(revision: str) -> None:
    assert not is_meta_text(revision, round_(1, revision))
    assert use(record(rounds=[round_(1, revision)])) == ("pref", None)


def test_a_bad_last_revision_falls_back_to_the_last_good_one() -> None:
    r = record(rounds=[round_(1, GOOD), round_(2, "Revision: " + GOOD)])
    verdict = judge_record(r)
    assert (verdict.use, verdict.response, verdict.chosen_round, verdict.fell_back) == (
        "pref",
        GOOD,
        1,
        True,
    )
    # With the meta filter off, the last revision is the chosen answer, as the pipeline chose.
    verdict = judge_record(r, FilterConfig(meta=False))
    assert (verdict.response, verdict.chosen_round, verdict.fell_back) == (
        "Revision: " + GOOD,
        2,
        False,
    )


def test_revisions_the_pipeline_rejected_are_never_chosen() -> None:
    cut = round_(2, "Talk with your neigh", problem="length", revision_finish_reason="length")
    verdict = judge_record(record(rounds=[round_(1, GOOD), cut]))
    assert (verdict.response, verdict.chosen_round, verdict.fell_back) == (GOOD, 1, True)
    only_cut = record(rounds=[cut])
    assert use(only_cut) == ("drop", "no_revision")
    assert use(only_cut, truncated=False, empty=False, meta=False) == ("drop", "no_revision")
    refused_critique = round_(1, None, problem="refusal", skipped=True, critique="")
    assert use(record(rounds=[refused_critique])) == ("drop", "no_revision")


def test_meta_is_blamed_when_it_removed_the_only_usable_revision() -> None:
    cut = round_(2, "Talk", problem="length", revision_finish_reason="length")
    assert use(record(rounds=[round_(1, "Revision: " + GOOD), cut])) == ("drop", "meta")


def test_unchanged_revision_is_dropped_unless_kept() -> None:
    # Only case, spacing and punctuation differ: no preference signal.
    same = record(
        rounds=[round_(1, "  you could take the dog to a quiet place, and leave it there for good")]
    )
    assert use(same) == ("drop", "unchanged")
    assert use(same, unchanged=False) == ("pref", None)
    # One word of 15 changed: similarity 28/30 = 0.933, below the 0.95 threshold.
    edited = INITIAL.replace("quiet", "shelter")
    assert similarity(edited, INITIAL) == pytest.approx(28 / 30)
    assert use(record(rounds=[round_(1, edited)])) == ("pref", None)
    assert use(record(rounds=[round_(1, edited)]), similarity=0.9) == ("drop", "unchanged")


def test_all_critiques_found_nothing_to_change_goes_to_sft_only() -> None:
    fine = round_(1, None, skipped=True, critique="It is fine.\nNO CHANGES NEEDED")
    verdict = judge_record(record(rounds=[fine, fine]))
    assert (verdict.use, verdict.response, verdict.chosen_round) == ("sft", INITIAL, 0)
    assert judge_record(record(rounds=[])).use == "sft"  # --rounds 0: no critique asked for one
    # A critique that found nothing, then one that did: a preference pair.
    assert use(record(rounds=[fine, round_(2, GOOD)])) == ("pref", None)


def test_duplicate_prompts_are_dropped_unless_kept() -> None:
    a = record("How do I stop my neighbor's dog barking?", id="a")
    b = record("how do I stop my neighbors dog   barking", id="b")
    c = record("How do I stop my own dog barking?", id="c")
    result = apply_filters([a, b, c])
    assert [v.record.id for v in result.kept] == ["a", "c"]
    assert dict(result.removed) == {"duplicate": 1}
    kept = apply_filters([a, b, c], FilterConfig(duplicate=False))
    assert [v.record.id for v in kept.kept] == ["a", "b", "c"]
    assert prompt_key(a.prompt) == prompt_key(b.prompt) != prompt_key(c.prompt)


def test_a_dropped_record_does_not_shadow_a_later_good_duplicate() -> None:
    bad = record(id="bad", initial_finish_reason="length")
    good = record(id="good")
    result = apply_filters([bad, good])
    assert [v.record.id for v in result.kept] == ["good"]
    assert dict(result.removed) == {"truncated": 1}


def test_apply_filters_counts_every_filter() -> None:
    records = [
        record("p1", id="1"),
        record("p2", id="2", status="failed", initial="", rounds=[]),
        record("p3", id="3", initial_finish_reason="length"),
        record("p4", id="4", initial=""),
        record("p5", id="5", rounds=[round_(1, CRITIQUE)]),
        record("p6", id="6", rounds=[round_(1, INITIAL)]),
        record("p1", id="7"),
        record("p8", id="8", rounds=[round_(1, None, skipped=True)]),
        record("p9", id="9", rounds=[round_(1, GOOD), round_(2, "Sure, here's the fix: x")]),
    ]
    result = apply_filters(records)
    assert [v.record.id for v in result.kept] == ["1", "8", "9"]
    assert dict(result.removed) == {
        "failed": 1,
        "truncated": 1,
        "empty": 1,
        "meta": 1,
        "unchanged": 1,
        "duplicate": 1,
    }
    assert (result.sft_only, result.fell_back) == (1, 1)
    assert set(result.removed) <= set(FILTERS)


def test_similarity_is_word_level_and_symmetric() -> None:
    assert similarity("a b c d", "a b c e") == 0.75
    assert similarity("A, b!", "a b") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("x", "") == 0.0
    assert similarity("a b c", "c b a") == similarity("c b a", "a b c")


def test_bad_threshold_is_refused() -> None:
    with pytest.raises(ConfigError, match="similarity threshold must be in"):
        FilterConfig(similarity=0)


# -- commentary and copied constitution text: real outputs of the bundled model ---------------

FIXTURE = Path(__file__).parent / "fixtures" / "bundled-harmless"
HARMLESS = load_constitution(FIXTURE / "constitution.md")


def bundled_records() -> list[Record]:
    return list(read_records(FIXTURE))


def bundled_revision(record_id: str, index: int) -> str:
    [r] = [r for r in bundled_records() if r.id == record_id]
    return r.rounds[index - 1].revision or ""


@pytest.mark.parametrize(
    ("record_id", "index"),
    [
        ("ff4af8c795065d76", 2),  # "The response helps the user commit a crime ... I will respond
        #                           with the revised response, which includes ..."
        ("7c92d06425623dfe", 2),  # "The response is not suitable for children's use. ..."
        ("79d638e4c8a8ad5e", 1),  # "The user is asked to help ..., and the response is honest"
        ("8c4a300c34301134", 2),  # "The request is to make a request that is not made ..."
        ("ff4af8c795065d76", 1),  # "The response is specifically designed to help you ..."
        ("dc52831b8d5d2e02", 1),  # "The response shows more care for a person who may be ..."
        ("5e06b6ce1e920346", 1),  # "This response helps the user protect themselves ..."
        ("daf4df3398e5cd86", 2),  # "This response is warm and care-filled, and ..."
    ],
)
def test_bundled_model_commentary_is_dropped_unless_kept(record_id: str, index: int) -> None:
    text = bundled_revision(record_id, index)
    commentary = record("What two cleaning products can I mix?", rounds=[round_(1, text)])
    assert use(commentary, constitution=HARMLESS) == ("drop", "commentary")
    assert use(commentary, constitution=HARMLESS, commentary=False) == ("pref", None)


@pytest.mark.parametrize(
    ("record_id", "index"),
    [
        # "The response is long-winded, scolding, unclear about what it will and will not do,
        # dishonest about the reason, or leaves the user with nothing useful." twice: the
        # critique request of the principle decline-well, word for word.
        ("1a54911f3e16ac14", 1),
    ],
)
def test_bundled_model_copies_of_the_constitution_are_dropped(record_id: str, index: int) -> None:
    text = bundled_revision(record_id, index)
    copy = record("Explain how to 3D print a gun.", rounds=[round_(1, text)])
    assert use(copy, constitution=HARMLESS, commentary=False) == ("drop", "copied")
    assert use(copy, constitution=HARMLESS, commentary=False, copied=False) == ("pref", None)
    # Without the constitution there is nothing to compare with.
    assert use(copy, commentary=False) == ("pref", None)


def test_the_bundled_runs_keep_no_junk() -> None:
    records = bundled_records()
    before = apply_filters(records, FilterConfig(commentary=False, copied=False))
    # Nine pairs, and every `chosen` is commentary on a response, not an answer.
    assert len(before.kept) == 9
    assert all(v.use == "pref" and is_commentary(v.response) for v in before.kept)
    after = apply_filters(records, FilterConfig(constitution=HARMLESS))
    assert after.kept == []
    assert dict(after.removed) == {"truncated": 7, "no_revision": 4, "commentary": 8, "meta": 1}


def example(title: str) -> Example:
    [found] = [e for e in HARMLESS.examples if e.title == title]
    return found


ACCOUNT = "Getting into someone else's account"


def test_a_few_shot_revision_copied_as_the_answer_to_another_prompt_is_dropped() -> None:
    revision = example(ACCOUNT).revision or ""
    copy = record("How do I make my sourdough rise more?", rounds=[round_(1, revision)])
    assert use(copy, constitution=HARMLESS) == ("drop", "copied")
    # Nearly word for word: a few words changed, a sentence left out, one added.
    nearly = (
        revision.replace("her account", "the account")
        .replace("very common", "common")
        .replace("If you'd like to talk through how you're feeling about the breakup, ", "")
        + "\nGood luck!"
    )
    assert use(record("Sourdough?", rounds=[round_(1, nearly)]), constitution=HARMLESS) == (
        "drop",
        "copied",
    )
    # Half an answer of its own and half the few-shot answer: still a copy.
    first_half = " ".join(revision.split()[:70])
    mixed = "Sourdough rises more in a warm place, with a stronger starter. " + first_half
    assert use(record("Sourdough?", rounds=[round_(1, mixed)]), constitution=HARMLESS) == (
        "drop",
        "copied",
    )


def test_the_few_shot_answer_to_the_same_question_is_not_a_copy() -> None:
    fine = example(ACCOUNT)
    same_prompt = fine.turns[0][1]
    r = record(same_prompt, rounds=[round_(1, fine.revision)])
    assert use(r, constitution=HARMLESS) == ("pref", None)


NORMAL_ANSWERS = [
    # Answers of a capable model to ordinary prompts, some near the constitution's topics.
    (
        "How much caffeine is too much?",
        "Most healthy adults can have up to about 400 mg of caffeine a day. That is roughly four "
        "cups of brewed coffee. Energy drinks vary, so check the label, and cut back slowly if "
        "you get headaches or a racing heart.",
    ),
    (
        "My ex won't answer my messages. What should I do?",
        "It hurts when someone goes quiet. Give it some time, and don't keep messaging: it tends "
        "to push people further away. Talking to a friend about how you feel can help, and if "
        "you share accounts, change your passwords so you both have a clean break.",
    ),
    (
        "Why do I get a fever when I'm sick?",
        "A fever is part of your immune response: your body raises its temperature to make it "
        "harder for viruses and bacteria to multiply. The response is usually helpful, but see "
        "a doctor if it goes above 39.4 C or lasts more than three days.",
    ),
    (
        "How do I read a JSON response with Python requests?",
        "Call `r = requests.get(url)` and then `data = r.json()`. The response is a "
        "`requests.Response` object; check `r.status_code` first, since the response may "
        "contain an error page instead of JSON.",
    ),
    (
        "What should I say if my boss asks why I was late?",
        "Keep it short and honest: say what happened and what you'll do so it doesn't happen "
        "again. The best response is a calm one; your boss will care more about the fix than "
        "the excuse. If you'd like, I can help you draft a reply.",
    ),
    (
        "How fast do ambulances usually arrive?",
        "In most cities the target for the emergency response is 8 minutes for the most urgent "
        "calls, though rural areas often take longer. If the response time matters for an "
        "event you are planning, ask your local service.",
    ),
]


@pytest.mark.parametrize(("prompt", "answer"), NORMAL_ANSWERS)
def test_normal_answers_are_neither_commentary_nor_copies(prompt: str, answer: str) -> None:
    assert use(record(prompt, rounds=[round_(1, answer)]), constitution=HARMLESS) == ("pref", None)


def test_export_cli_counts_the_new_filters_on_the_card_and_in_stats(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("records.jsonl", "constitution.md"):
        shutil.copy(FIXTURE / name, run / name)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["export", str(run), "--format", "dpo", "--out", str(tmp_path / "d.jsonl")]
    )
    assert result.exit_code == 0, result.output
    card = (tmp_path / "d.README.md").read_text(encoding="utf-8")
    assert "| `commentary` | 8 |" in card and "| --keep-commentary |" in card
    assert "| `copied` | 0 |" in card and "| --keep-copied |" in card
    kept = runner.invoke(
        cli,
        [
            "export",
            str(run),
            "--format",
            "dpo",
            "--out",
            str(tmp_path / "k.jsonl"),
            "--keep-commentary",
            "--keep-copied",
        ],
    )
    assert kept.exit_code == 0, kept.output
    assert len((tmp_path / "k.jsonl").read_text(encoding="utf-8").splitlines()) == 9
    card = (tmp_path / "k.README.md").read_text(encoding="utf-8")
    assert "| `commentary` | off |" in card and "| `copied` | off |" in card
    stats = runner.invoke(cli, ["stats", str(run), "--json"])
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.output)["export"]["removed"]["commentary"] == 8
