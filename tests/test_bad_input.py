"""Bad input to `cai generate`: exit code 2, one line naming the cause, no traceback, and
nothing written - no run directory, no output. Too-long prompts are skipped with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer

from cai.cli import cli

GOOD = '{"prompt": "How do I pick a lock?"}\n{"prompt": "Is the sky green?"}\n'


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_constitution: Path) -> Path:
    """An empty working directory (where outputs/ would go) holding the constitution."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return tmp_path


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def generate(work: Path, *args: str) -> Result:
    before = files(work)
    result = CliRunner().invoke(
        cli,
        ["generate", "--constitution", str(work / "mini.md"), "--out", "run", *args],
        catch_exceptions=False,
    )
    if result.exit_code == 2:
        assert files(work) == before, "bad input must not write anything"
    return result


def assert_bad(result: Result, message: str) -> None:
    """Exit 2, and stderr is exactly one line: 'Error: <message>'."""
    assert result.exit_code == 2, result.output
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert "Traceback" not in result.output


def write(work: Path, name: str, data: str | bytes) -> str:
    path = work / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return name


def test_missing_prompts_file(work: Path) -> None:
    assert_bad(
        generate(work, "--prompts", "nope.jsonl"),
        "nope.jsonl: no such file or directory; check the --prompts path",
    )


def test_missing_constitution_file(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    (work / "mini.md").unlink()
    assert_bad(
        generate(work, "--prompts", prompts),
        f"{work / 'mini.md'}: no such file; check the --constitution path",
    )


def test_unreadable_prompts_file(work: Path) -> None:
    # Reading /proc/self/mem at offset 0 fails with EIO even for root, who can read any mode.
    (work / "p.jsonl").symlink_to("/proc/self/mem")
    assert_bad(generate(work, "--prompts", "p.jsonl"), "p.jsonl: cannot read: Input/output error")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files of any mode")
def test_prompts_file_without_read_permission(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    (work / prompts).chmod(0)
    assert_bad(generate(work, "--prompts", prompts), "p.jsonl: cannot read: Permission denied")


def test_directory_that_is_not_a_dataset(work: Path) -> None:
    (work / "p.jsonl").mkdir()
    assert_bad(
        generate(work, "--prompts", "p.jsonl"),
        "p.jsonl: is a directory but not one written by datasets' save_to_disk",
    )


def test_non_utf8_prompts_file(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD.encode() + b'{"prompt": "caf\xe9"}\n')
    assert_bad(
        generate(work, "--prompts", prompts), "p.jsonl:3: not UTF-8 text; save the file as UTF-8"
    )


def test_non_utf8_csv_names_the_line(work: Path) -> None:
    prompts = write(work, "p.csv", b"prompt\nfine\ncaf\xe9\n")
    assert_bad(
        generate(work, "--prompts", prompts), "p.csv:3: not UTF-8 text; save the file as UTF-8"
    )


def test_non_utf8_constitution(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    (work / "mini.md").write_bytes(b"## Principle: a\nCritique: caf\xe9\n")
    assert_bad(
        generate(work, "--prompts", prompts),
        f"{work / 'mini.md'}:2: not UTF-8 text; save the file as UTF-8",
    )


def test_invalid_constitution_names_file_and_line(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    (work / "mini.md").write_text("## Principle: a\nCritique: x\nWeight: lots\nRevision: y\n")
    assert_bad(
        generate(work, "--prompts", prompts),
        f"{work / 'mini.md'}:3: weight 'lots' of principle 'a' must be a positive number",
    )


def test_malformed_jsonl_line(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD + '{"prompt": "unterminated\n')
    assert_bad(
        generate(work, "--prompts", prompts),
        "p.jsonl:3: not valid JSON: Unterminated string starting at (column 12); "
        ".jsonl and .json files hold one JSON object per line",
    )


def test_line_that_is_not_an_object(work: Path) -> None:
    prompts = write(work, "p.jsonl", '["a list"]\n')
    assert_bad(
        generate(work, "--prompts", prompts),
        "p.jsonl:1: each line must be a JSON object; .jsonl and .json files hold one JSON object per line",
    )


def test_missing_prompt_field(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD + '{"question": "where is it?"}\n')
    assert_bad(
        generate(work, "--prompts", prompts),
        "p.jsonl:3: no 'prompt' or 'messages' field; choose the field with --prompt-field",
    )


def test_missing_chosen_prompt_field(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    assert_bad(
        generate(work, "--prompts", prompts, "--prompt-field", "question"),
        "p.jsonl:1: no 'question' field; choose the field with --prompt-field",
    )


@pytest.mark.parametrize("value", ['""', '"   "', '"Human: "', "[]", "null"])
def test_empty_prompt(work: Path, value: str) -> None:
    prompts = write(work, "p.jsonl", GOOD + f'{{"prompt": {value}}}\n')
    message = {
        "[]": "a prompt must be a string or a non-empty list of messages, not list",
        "null": "no 'prompt' or 'messages' field; choose the field with --prompt-field",
    }.get(value, "empty prompt")
    assert_bad(generate(work, "--prompts", prompts), f"p.jsonl:3: {message}")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}',
            "the conversation ends with an 'assistant' turn; the last turn must be the user's",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
            "messages 1 and 2 are both 'user' turns; user and assistant turns must alternate",
        ),
        ('{"prompt": "\\u200b\\ufeff\\u2060"}', "empty prompt: it holds only invisible characters"),
    ],
)
def test_bad_conversation(work: Path, row: str, message: str) -> None:
    prompts = write(work, "p.jsonl", GOOD + row + "\n")
    assert_bad(generate(work, "--prompts", prompts), f"p.jsonl:3: {message}")


def test_empty_file(work: Path) -> None:
    prompts = write(work, "p.jsonl", "\n\n")
    assert_bad(generate(work, "--prompts", prompts), "p.jsonl: no prompts in the file")


def test_all_lines_bad_and_skipped(work: Path) -> None:
    prompts = write(work, "p.jsonl", "not json\n{}\n")
    result = generate(work, "--prompts", prompts, "--skip-bad-lines")
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[-1] == "Error: p.jsonl: no usable prompt (2 bad lines skipped)"
    )
    assert files(work) == {"mini.md", "p.jsonl"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "shard must be K/N with 1 <= K <= N, got 3/2"),
        (["--shard", "0/2"], "shard must be K/N with 1 <= K <= N, got 0/2"),
        (["--shard", "half"], "--shard takes K/N such as 1/4, not 'half'"),
        (
            ["--provider", "openai", "--model-path", "m.gguf"],
            "--model-path goes with --provider local",
        ),
        (
            ["--base-url", "http://127.0.0.1:9/v1"],
            "--base-url goes with --provider openai or anthropic, not local",
        ),
        (
            ["--fresh"],
            "--fresh goes without --out: --out DIR resumes the run in DIR; to start afresh, pass --out with a new directory",
        ),
        (["--rounds", "-1"], "rounds must be 0 or more, got -1"),
        (["--temperature", "5"], "temperature must be between 0 and 2, got 5.0"),
        (["--limit", "0"], "limit must be at least 1, got 0"),
        (["--concurrency", "0"], "concurrency must be at least 1, got 0"),
    ],
)
def test_invalid_option_combinations(work: Path, args: list[str], message: str) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    assert_bad(generate(work, "--prompts", prompts, *args), message)


def test_out_is_a_file(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD)
    write(work, "run", "not a directory")
    assert_bad(
        generate(work, "--prompts", prompts), "--out run is a file; pass a directory for the run"
    )


def test_missing_key_for_a_cloud_provider(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    prompts = write(work, "p.jsonl", GOOD)
    result = generate(work, "--prompts", prompts, "--provider", "openai")
    assert_bad(result, result.stderr[len("Error: ") : -1])
    assert "OPENAI_API_KEY" in result.stderr


def test_debug_shows_the_traceback(work: Path) -> None:
    prompts = write(work, "p.jsonl", GOOD + "oops\n")
    args = ["--constitution", "mini.md", "--prompts", prompts, "--out", "run"]
    plain = subprocess.run(
        [sys.executable, "-m", "cai", "generate", *args], capture_output=True, text=True, cwd=work
    )
    debug = subprocess.run(
        [sys.executable, "-m", "cai", "--debug", "generate", *args],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert plain.returncode == 2
    assert plain.stderr.startswith("Error: p.jsonl:3: not valid JSON")
    assert len(plain.stderr.splitlines()) == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "cai.errors.InputError: p.jsonl:3: not valid JSON" in debug.stderr
    assert files(work) == {"mini.md", "p.jsonl"}


# -- bad lines skipped, prompts too long: the run goes on -------------------------------------


def against(server: FakeServer, work: Path, *args: str) -> Result:
    """`generate` with one round against the fake OpenAI server."""
    openai = ["--provider", "openai", "--base-url", server.url + "/v1"]
    return generate(work, "--rounds", "1", *openai, *args)


def test_skip_bad_lines_skips_and_counts(work: Path) -> None:
    prompts = write(work, "p.jsonl", 'oops\n{"prompt": "first"}\n{"x": 1}\n{"prompt": "second"}\n')
    with FakeServer() as server:
        result = against(server, work, "--prompts", prompts, "--skip-bad-lines")
    assert result.exit_code == 0, result.output
    assert (
        "Skipping 2 bad lines (--skip-bad-lines), the first: p.jsonl:1: not valid JSON"
        in result.stderr
    )
    assert ", 2 bad lines skipped" in result.stderr
    records = [json.loads(line) for line in (work / "run" / "records.jsonl").open()]
    assert sorted(r["prompt"][0]["content"] for r in records) == ["first", "second"]
    assert sorted(r["source_line"] for r in records) == [2, 4]
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["prompts"]["skipped_bad_lines"] == 2
    assert manifest["prompts"]["count"] == 2


def test_prompt_longer_than_the_context_is_skipped_with_a_reason(work: Path) -> None:
    # gpt-4o-mini's window is 128,000 tokens; at about four characters a token this is 150,000.
    huge = "word " * 120_000
    prompts = write(work, "p.jsonl", json.dumps({"prompt": huge}) + "\n" + GOOD)
    with FakeServer() as server:
        result = against(server, work, "--prompts", prompts, "--model", "gpt-4o-mini")
        sent = [entry.body for entry in server.log]
    assert result.exit_code == 0, result.output
    assert "1 too long for the model (skipped)" in result.stderr
    records = {
        r["source_line"]: r for r in map(json.loads, (work / "run" / "records.jsonl").open())
    }
    assert sorted(records) == [1, 2, 3]
    skipped = records[1]
    assert skipped["status"] == "skipped"
    assert skipped["error"]["kind"] == "too_long"
    assert skipped["error"]["message"].startswith(
        "too long for the model's context: its longest call needs about "
    )
    assert (
        "but the window is 128000; shorten the prompt or lower --max-tokens"
        in skipped["error"]["message"]
    )
    assert skipped["initial_response"] == "" and skipped["usage"] == {}
    assert [records[2]["status"], records[3]["status"]] == ["ok", "ok"]
    assert not any(huge[:1000] in json.dumps(body) for body in sent)  # never sent
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["counts"] == {"records": 3, "ok": 2, "skipped": 1}

    # Skipped is final: the next run neither retries nor duplicates it.
    with FakeServer() as server:
        again = against(server, work, "--prompts", prompts, "--model", "gpt-4o-mini")
        assert server.requests == 0
    assert again.exit_code == 0
    assert "3 already done" in again.stderr
    assert len((work / "run" / "records.jsonl").read_text().splitlines()) == 3
