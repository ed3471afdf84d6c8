"""Per-principle effectiveness: how each principle's rounds ended, what export kept of their
revisions, how the feedback model judged them, and the flags; over hand-made records here and
over real runs against the loopback fake (tests/test_effectiveness_run.py)."""

from __future__ import annotations

from cai.effectiveness import format_effectiveness, principle_effectiveness
from cai.filters import FilterConfig, apply_filters
from cai.records import Record, Round

ANSWER = "Paris is the capital of France, and it has been for centuries."


def revised(index: int, principle: str, revision: str) -> Round:
    return Round(index, principle, "Critique it.", "It could be clearer.", "Revise it.", revision)


def no_change(index: int, principle: str) -> Round:
    return Round(index, principle, "Critique it.", "Fine.\nNO CHANGES NEEDED", skipped=True)


def failed(index: int, principle: str) -> Round:
    return Round(
        index,
        principle,
        "Critique it.",
        "It could",
        critique_finish_reason="length",
        problem="length",
        critique_failed=True,
    )


def record(rid: str, prompt: str, *rounds: Round, **fields: object) -> Record:
    good = [r.revision for r in rounds if r.state == "revised"]
    return Record(
        id=rid,
        prompt=[{"role": "user", "content": prompt}],
        initial_response=fields.pop("initial", ANSWER),  # type: ignore[arg-type]
        rounds=list(rounds),
        final_response=good[-1] if good else ANSWER,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


def fresh(n: int) -> str:
    return f"A clear answer number {n}: the capital of France is Paris, its largest city."


def label(r: Record, chosen_round: int, p_a: float | None, **extra: object) -> dict:
    revision = next(x.revision for x in r.rounds if x.index == chosen_round)
    return {
        "id": r.id,
        "response_a": r.initial_response,
        "response_b": revision,
        "chosen_round": chosen_round,
        "p_a": p_a,
        "status": "ok" if p_a is not None else "skipped",
        **extra,
    }


def test_each_round_ends_in_one_place_and_revisions_in_the_export_or_a_filter() -> None:
    records = [
        record("kept", "q1", revised(1, "clear", fresh(1))),
        # Round 2's revision is meta-text: export falls back to round 1's, so both of round 1's
        # revisions count as kept, and round 2's as dropped by meta.
        record(
            "fallback",
            "q2",
            revised(1, "clear", fresh(2)),
            revised(2, "short", "Here is a revised response: Paris."),
        ),
        record("same", "q3", revised(1, "short", ANSWER + " ")),  # unchanged
        record("twice", "q1", revised(1, "clear", fresh(3))),  # the same prompt as "kept"
        record("quiet", "q5", no_change(1, "short"), failed(2, "clear")),
        record("cut", "q6", revised(1, "clear", fresh(4)), initial_finish_reason="length"),
        record("broken", "q7", status="failed"),
    ]
    data = principle_effectiveness(records, principles=["clear", "short", "spare"])
    rows = data["principles"]
    clear, short, spare = rows["clear"], rows["short"], rows["spare"]
    assert list(data["principles"]) == ["clear", "short", "spare"]  # the constitution's order
    assert (clear["drawn"], clear["records"], clear["revised"], clear["failed"]) == (5, 5, 4, 1)
    assert clear["kept"] == 2 and clear["dropped"] == {"duplicate": 1, "truncated": 1}
    assert clear["changed"] == 4
    assert (short["drawn"], short["revised"], short["no_change"], short["changed"]) == (3, 2, 1, 1)
    assert short["kept"] == 0 and short["dropped"] == {"meta": 1, "unchanged": 1}
    assert spare["drawn"] == 0 and data["labels"] is None
    # Every drawn round is counted once: revised, no change or failed; every revision once:
    # kept or dropped by one filter.
    for row in data["principles"].values():
        assert row["revised"] + row["no_change"] + row["failed"] == row["drawn"]
        assert row["kept"] + sum(row["dropped"].values()) == row["revised"]
    assert {(f["principle"], f["flag"]) for f in data["flags"]} == {
        ("spare", "never_drawn"),
        ("short", "revisions_dropped"),
    }


def test_the_verdicts_given_are_the_ones_used() -> None:
    records = [record("a", "q", revised(1, "clear", "Here is a revised response: Paris."))]
    strict = principle_effectiveness(records)
    assert strict["principles"]["clear"]["dropped"] == {"meta": 1}
    loose = FilterConfig(meta=False, commentary=False)
    kept = principle_effectiveness(records, apply_filters(records, loose), config=loose)
    assert kept["principles"]["clear"]["kept"] == 1


def test_a_principle_that_never_changes_the_answer_is_flagged() -> None:
    records = [
        record(f"r{i}", f"q{i}", no_change(1, "quiet"), revised(2, "clear", fresh(i)))
        for i in range(3)
    ] + [record("s", "qs", revised(1, "quiet", ANSWER))]
    data = principle_effectiveness(records)
    [flag] = [f for f in data["flags"] if f["flag"] == "never_changes"]
    assert flag["principle"] == "quiet"
    assert flag["message"] == (
        "'quiet' never changed an answer in 4 rounds (3 no change, 1 revised but nearly identical)"
    )


def test_labels_count_for_the_principles_that_revised_towards_the_chosen_answer() -> None:
    records = [
        record("w1", "q1", revised(1, "clear", fresh(1))),
        record("w2", "q2", revised(1, "clear", fresh(2)), revised(2, "short", fresh(20))),
        record("l1", "q3", revised(1, "short", fresh(3))),
        record("l2", "q4", revised(1, "short", fresh(4))),
        record("n1", "q5", no_change(1, "clear"), revised(2, "short", fresh(5))),
    ]
    by_id = {r.id: r for r in records}
    labels = [
        label(by_id["w1"], 1, 0.3),
        label(by_id["w2"], 2, 0.2),  # counts for clear and short
        label(by_id["l1"], 1, 0.8),
        label(by_id["l2"], 1, 0.7),
        label(by_id["n1"], 2, None),  # no label: matched, not counted
        # A label of another revision of w1 (an older run), and of a record not here.
        {**label(by_id["w1"], 1, 0.1), "response_b": "another revision"},
        {**label(by_id["w1"], 1, 0.1), "id": "elsewhere"},
        # Sampled responses of a prompts source: no rounds behind them.
        {"id": "p:0-1", "p_a": 0.1, "status": "ok", "responses": [0, 1]},
    ]
    data = principle_effectiveness(records, labels=labels)
    clear, short = data["principles"]["clear"]["labels"], data["principles"]["short"]["labels"]
    assert clear == {
        "pairs": 2,
        "revision_preferred": 2,
        "first_preferred": 0,
        "preferred_share": 1.0,
        "mean_preference": 0.75,
        "mean_margin": 0.25,
    }
    assert short == {
        "pairs": 3,
        "revision_preferred": 1,
        "first_preferred": 2,
        "preferred_share": 0.3333,
        "mean_preference": 0.4333,
        "mean_margin": 0.2667,
    }
    assert data["labels"] == {"matched": 5, "unmatched": 2}
    [lose] = [f for f in data["flags"] if f["flag"] == "revisions_lose"]
    assert lose["principle"] == "short"
    assert "in 2 of 3 labelled pairs" in lose["message"]
    lines = format_effectiveness(data)
    assert lines[0].split() == [
        "PRINCIPLE", "DRAWN", "REVISED", "CHANGED", "NO", "CHANGE", "FAILED", "KEPT",
        "DROPPED", "REVISION", "WINS", "P(REVISION)", "MARGIN",
    ]  # fmt: skip
    assert lines[1].startswith("short")  # without a constitution: most drawn first
    assert lines[2].split() == [
        "clear",
        "3",
        "2",
        "2",
        "1",
        "0",
        "2",
        "-",
        "2/2",
        "(100%)",
        "0.75",
        "0.25",
    ]
    assert any("2 labels are of other pairs" in line for line in lines)
    assert any(
        line.startswith("Flag: the feedback model preferred the first answer") for line in lines
    )


def test_without_labels_the_table_has_no_label_columns_and_no_rows_means_no_lines() -> None:
    data = principle_effectiveness([record("a", "q", revised(1, "clear", fresh(1)))])
    lines = format_effectiveness(data)
    assert "P(REVISION)" not in lines[0] and len(lines) == 2
    assert format_effectiveness(principle_effectiveness([])) == []
