from __future__ import annotations

import json
from pathlib import Path

import pytest

from cai.errors import InputError
from cai.sources import PromptSource, normalize_prompt, prompt_id

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "How do I bake bread?"}]
MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Tell me a secret."},
]


def read(spec: str | Path, **kwargs: object) -> list[list[dict[str, str]]]:
    return [item.messages for item in PromptSource(str(spec), **kwargs)]


def test_jsonl_prompt_and_messages(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "How do I bake bread?"})
        + "\n\n"
        + json.dumps({"messages": MULTI})
        + "\n",
        encoding="utf-8",
    )
    items = list(PromptSource(str(path)))
    assert [i.messages for i in items] == [USER, MULTI]
    assert [i.line for i in items] == [1, 3]
    assert items[0].id == prompt_id(USER) and len(items[0].id) == 16


def test_prompt_field_chooses_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"question": "How do I bake bread?", "prompt": "other"}) + "\n", encoding="utf-8"
    )
    assert read(path, prompt_field="question") == [USER]
    with pytest.raises(
        InputError, match=r"p.jsonl:1: no 'nope' field; choose the field with --prompt-field"
    ):
        read(path, prompt_field="nope")


def test_txt_csv_parquet_and_datasets_directory(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("How do I bake bread?\n\nTell me a secret.\n", encoding="utf-8")
    assert read(txt) == [USER, [{"role": "user", "content": "Tell me a secret."}]]

    csv_path = tmp_path / "p.csv"
    csv_path.write_text(
        'id,prompt\n1,"How do I bake bread?"\n2,"line one\nline two"\n', encoding="utf-8"
    )
    assert read(csv_path) == [USER, [{"role": "user", "content": "line one\nline two"}]]

    import datasets

    data = datasets.Dataset.from_dict({"prompt": ["How do I bake bread?"], "messages": [MULTI]})
    data.to_parquet(str(tmp_path / "p.parquet"))
    assert read(tmp_path / "p.parquet") == [MULTI]
    assert read(tmp_path / "p.parquet", prompt_field="prompt") == [USER]
    data.save_to_disk(str(tmp_path / "ds"))
    assert read(tmp_path / "ds") == [MULTI]
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "dd"))
    assert read(tmp_path / "dd", prompt_field="prompt") == [USER]


def test_human_assistant_transcripts_become_turns() -> None:
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a secret.\n\nAssistant: No."
    assert normalize_prompt(text) == MULTI
    # A colon inside a prompt is not a speaker change.
    assert normalize_prompt("Note: a colon here") == [
        {"role": "user", "content": "Note: a colon here"}
    ]


def test_messages_are_checked() -> None:
    with pytest.raises(ValueError, match="role 'bot'"):
        normalize_prompt([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="empty prompt"):
        normalize_prompt("   ")
    with pytest.raises(ValueError, match="last message must be a 'user' turn"):
        normalize_prompt([{"role": "system", "content": "x"}])
    # In a transcript a trailing answer is dropped: it is what we generate (hh-rlhf's form).
    assert (
        normalize_prompt(
            "Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a secret.\n\nAssistant: No."
        )
        == MULTI
    )


SYSTEM = {"role": "system", "content": "Be brief."}
ASSISTANT = {"role": "assistant", "content": "Hello!"}


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        (
            [*MULTI, {"role": "assistant", "content": "No."}],
            "the conversation ends with an 'assistant' turn; the last turn must be the user's",
        ),
        (
            [USER[0], SYSTEM, *MULTI],
            "message 2 is a 'system' turn; a system turn may only come first",
        ),
        (
            [SYSTEM, SYSTEM, *USER],
            "message 2 is a 'system' turn; a system turn may only come first",
        ),
        (
            [*USER, *USER],
            "messages 1 and 2 are both 'user' turns; user and assistant turns must alternate",
        ),
        (
            [SYSTEM, *USER, ASSISTANT, ASSISTANT, *USER],
            "messages 3 and 4 are both 'assistant' turns; user and assistant turns must alternate",
        ),
    ],
)
def test_conversation_shape_is_checked(messages: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_prompt(messages)
    assert str(info.value) == message


def test_transcript_turns_must_alternate() -> None:
    with pytest.raises(ValueError, match="messages 1 and 2 are both 'user' turns"):
        normalize_prompt("Human: Hi\n\nHuman: Are you there?")


def test_a_system_turn_first_is_fine_an_assistant_turn_first_is_not() -> None:
    assert normalize_prompt([SYSTEM, *MULTI]) == [SYSTEM, *MULTI]
    # Issue 19: the model would be asked to answer a conversation the user never opened.
    for opening in ([ASSISTANT, *USER], [SYSTEM, ASSISTANT, *USER]):
        with pytest.raises(ValueError, match=r"^message \d is an 'assistant' turn, but"):
            normalize_prompt(opening)


INVISIBLE = ["\u200b", "\ufeff", "\u2060", " \u200c\u200d ", "\u00a0\u3000", "\t\u200e\n"]


@pytest.mark.parametrize("blank", INVISIBLE)
def test_text_of_only_whitespace_or_invisible_characters_is_empty(blank: str) -> None:
    with pytest.raises(ValueError, match=r"^empty prompt"):
        normalize_prompt(blank)
    with pytest.raises(ValueError, match=r"^empty prompt"):
        normalize_prompt([{"role": "user", "content": blank}])
    with pytest.raises(ValueError, match=r"^message 2 has no text"):
        normalize_prompt([MULTI[0], {"role": "assistant", "content": blank}, MULTI[2]])
    with pytest.raises(ValueError, match=r"^message 1 has no text"):
        normalize_prompt([{"role": "system", "content": blank}, *USER])
    # Invisible characters inside real text are left alone.
    assert normalize_prompt(f"Hi{blank}there") == [{"role": "user", "content": f"Hi{blank}there"}]


def test_bad_line_names_file_and_line_or_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"p.jsonl:2: not valid JSON"):
        read(path)
    source = PromptSource(str(path), skip_bad_lines=True)
    assert [i.messages for i in source] == [[{"role": "user", "content": "ok"}]]
    assert len(source.skipped) == 2 and source.skipped[1].endswith("p.jsonl:3: empty prompt")


def test_bad_conversations_name_file_and_line_or_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        {"prompt": "ok"},
        {"messages": [*MULTI, {"role": "assistant", "content": "No."}]},
        {"prompt": "\u200b\u2060"},
        {"messages": [*USER, SYSTEM]},
        {"messages": MULTI},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(InputError) as info:
        read(path)
    assert str(info.value) == (
        f"{path}:2: the conversation ends with an 'assistant' turn; "
        "the last turn must be the user's"
    )
    source = PromptSource(str(path), skip_bad_lines=True)
    assert [i.line for i in source] == [1, 5]
    assert [s.split(": ", 1)[0] for s in source.skipped] == [f"{path}:{n}" for n in (2, 3, 4)]


def test_txt_line_of_invisible_characters_is_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("first\n\n   \n\u200b\nsecond\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"p.txt:4: empty prompt"):
        read(path)


def test_shipped_red_team_prompts() -> None:
    items = list(PromptSource(str(ROOT / "examples" / "red_team_prompts.jsonl")))
    assert len(items) >= 50
    assert len({i.id for i in items}) == len(items)
    assert sum(len(i.messages) > 1 for i in items) >= 5
