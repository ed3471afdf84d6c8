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
    # A trailing answer is dropped: it is what we generate.
    assert normalize_prompt([*MULTI, {"role": "assistant", "content": "No."}]) == MULTI


def test_bad_line_names_file_and_line_or_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": \n{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"p.jsonl:2: not valid JSON"):
        read(path)
    source = PromptSource(str(path), skip_bad_lines=True)
    assert [i.messages for i in source] == [[{"role": "user", "content": "ok"}]]
    assert len(source.skipped) == 2 and source.skipped[1].endswith("p.jsonl:3: empty prompt")


def test_shipped_red_team_prompts() -> None:
    items = list(PromptSource(str(ROOT / "examples" / "red_team_prompts.jsonl")))
    assert len(items) >= 50
    assert len({i.id for i in items}) == len(items)
    assert sum(len(i.messages) > 1 for i in items) >= 5
