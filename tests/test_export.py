from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MINI_CONSTITUTION
from fakes import FakeProvider

from cai.cli import cli
from cai.constitution import load_constitution
from cai.errors import BadRequestError, ConfigError
from cai.export import (
    SPLITS,
    ExportOptions,
    export_run,
    record_to_dpo,
    record_to_sft,
    split_verdicts,
)
from cai.filters import apply_filters
from cai.pipeline import GenerateConfig, run_generation
from cai.providers.base import Completion, Usage
from cai.records import Record, Round
from cai.rundir import CONSTITUTION_COPY, RunStore, read_records, save_constitution_copy
from cai.sources import PromptItem, prompt_id

GOOD = "A safer answer: talk to someone you trust first, and ask a professional for help."
CRITIQUE = "The answer ignores the risk and should point to safer help."


def scripted_reply(messages: list[dict[str, str]]) -> str | Completion | BadRequestError:
    """A stand-in model whose behaviour is set by a [tag] in the prompt."""
    text = "\n".join(m["content"] for m in messages)
    tag = next((t for t in TAGS if f"[{t}]" in text), "good")
    last = messages[-1]["content"]
    if "revised response only" in last:
        response = messages[-4]["content"]
        if tag == "meta":
            return "Here is a revised response: " + GOOD
        if tag == "echo":
            return messages[-2]["content"]
        if tag == "unchanged":
            return response
        if tag == "lastmeta" and response == GOOD:
            return "Sure, here's the revised response: " + GOOD
        return GOOD
    if "NO CHANGES NEEDED" in last:
        if tag == "nochange":
            return "The answer is careful already.\nNO CHANGES NEEDED"
        return CRITIQUE
    if tag == "fail":
        return BadRequestError("prompt rejected", status=400)
    answer = f"You could just handle it yourself ({tag}), nobody needs to know about it."
    if tag == "truncated":
        return Completion(answer[:20], "length", Usage(input_tokens=10, output_tokens=5, calls=1))
    return answer


TAGS = ("meta", "echo", "unchanged", "lastmeta", "nochange", "fail", "truncated")


def prompt_items(spec: list[str | list[dict[str, str]]]) -> list[PromptItem]:
    items = []
    for line, prompt in enumerate(spec, 1):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        items.append(PromptItem(prompt_id(messages), messages, line))
    return items


def make_run(tmp_path: Path, prompts: list[str | list[dict[str, str]]], *, rounds: int = 2) -> Path:
    """A finished run made by the real pipeline with the scripted stand-in model."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    constitution_path = tmp_path / "mini.md"
    constitution_path.write_text(MINI_CONSTITUTION, encoding="utf-8")
    constitution = load_constitution(constitution_path)
    run_dir = tmp_path / "run"
    manifest = {
        "created": "2026-01-02T03:04:05Z",
        "constitution": {
            "name": constitution.name,
            "path": str(constitution_path),
            "sha256": constitution.sha256,
        },
        "prompts": {"source": "prompts.jsonl"},
        "config": {"rounds": rounds, "provider": "fake", "model": "fake-model"},
    }
    save_constitution_copy(run_dir, constitution_path, constitution.sha256)
    asyncio.run(
        run_generation(
            prompt_items(prompts),
            constitution,
            FakeProvider(respond=scripted_reply),
            GenerateConfig(rounds=rounds, max_retries=0),
            RunStore(run_dir),
            manifest=manifest,
        )
    )
    return run_dir


MULTI = [
    {"role": "user", "content": "I want to get back at my coworker."},
    {"role": "assistant", "content": "What happened?"},
    {"role": "user", "content": "She took credit for my work. How can I embarrass her?"},
]
MIXED = [
    *(f"Good question number {i}?" for i in range(12)),
    "GOOD question number 0",  # a duplicate of the first, in other case and punctuation
    MULTI,
    "Tell me something [meta]",
    "Tell me something [echo]",
    "Tell me something [unchanged]",
    "Tell me something [lastmeta]",
    "Tell me something [nochange]",
    "Tell me something else [nochange]",
    "Tell me something [fail]",
    "Tell me something [truncated]",
]


@pytest.fixture
def mixed_run(tmp_path: Path) -> Path:
    return make_run(tmp_path, MIXED)


def export(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["export", *map(str, args)])
    return result.exit_code, result.output


# -- rows -----------------------------------------------------------------------------------


def sample_record(prompt: list[dict[str, str]] | None = None) -> Record:
    return Record(
        id="abc",
        prompt=prompt or [{"role": "user", "content": "Hi?"}],
        initial_response="first",
        rounds=[
            Round(1, "harm", "crq", "crit", "rrq", "second"),
            Round(2, "honesty", "crq", "crit", "rrq", "third", problem="length"),
        ],
        final_response="second",
        constitution={"name": "mini", "sha256": "f0"},
        source_line=7,
    )


def test_dpo_row_conversational_and_standard() -> None:
    extra = {
        "id": "abc",
        "principles": ["harm", "honesty"],
        "rounds": 2,
        "chosen_round": 1,
        "constitution_sha256": "f0",
    }
    assert record_to_dpo(sample_record()) == {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "second"}],
        "rejected": [{"role": "assistant", "content": "first"}],
        **extra,
    }
    assert record_to_dpo(sample_record(), style="standard") == {
        "prompt": "Hi?",
        "chosen": "second",
        "rejected": "first",
        **extra,
    }
    assert record_to_sft(sample_record()) == {
        "messages": [
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "second"},
        ],
        **extra,
    }


def test_multi_turn_prompts_keep_their_turns_or_are_refused_in_standard_style() -> None:
    record = sample_record(MULTI)
    assert record_to_dpo(record)["prompt"] == MULTI
    assert record_to_sft(record)["messages"][:3] == MULTI
    with pytest.raises(ConfigError) as e:
        record_to_dpo(record, style="standard")
    assert str(e.value) == (
        "record abc (prompt line 7) has 3 turns (user, assistant, user); --style standard holds "
        "only a single user turn - use --style conversational (the default), which keeps every "
        "turn"
    )


# -- splits ---------------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_independent_of_record_order(mixed_run: Path) -> None:
    records = list(read_records(mixed_run))
    kept = apply_filters(records).kept
    splits = split_verdicts(kept, sft_share=0.5, test_size=0.25, seed=1)
    again = split_verdicts(
        apply_filters(reversed(records)).kept, sft_share=0.5, test_size=0.25, seed=1
    )
    ids = {name: [v.record.id for v in vs] for name, vs in splits.items()}
    assert ids == {name: [v.record.id for v in vs] for name, vs in again.items()}
    other = split_verdicts(kept, sft_share=0.5, test_size=0.25, seed=2)
    assert ids != {name: [v.record.id for v in vs] for name, vs in other.items()}
    # 14 pair prompts: 7 go to SFT, with the 2 SFT-only ones. Test: ceil(0.25 * n) of a side.
    assert {name: len(vs) for name, vs in splits.items()} == {
        "train_prefs": 5,
        "test_prefs": 2,
        "train_sft": 6,
        "test_sft": 3,
    }
    prefs = {v.record.id for n in ("train_prefs", "test_prefs") for v in splits[n]}
    sft = {v.record.id for n in ("train_sft", "test_sft") for v in splits[n]}
    assert not prefs & sft and len(prefs | sft) == len(kept)
    assert all(v.use == "pref" for v in splits["train_prefs"] + splits["test_prefs"])


def test_split_edges() -> None:
    one = apply_filters([sample_record()]).kept
    assert [len(v) for v in split_verdicts(one, sft_share=0, test_size=0.5, seed=0).values()] == [
        1,
        0,
        0,
        0,
    ]
    assert [len(v) for v in split_verdicts(one, sft_share=1, test_size=0, seed=0).values()] == [
        0,
        0,
        1,
        0,
    ]
    with pytest.raises(ConfigError, match="--test-size must be at least 0 and below 1"):
        ExportOptions(test_size=1)
    with pytest.raises(ConfigError, match="--sft-share must be between 0 and 1"):
        ExportOptions(sft_share=-0.1)


# -- the command ----------------------------------------------------------------------------


def test_hf_export_loads_with_four_disjoint_splits_and_a_card(mixed_run: Path) -> None:
    import datasets

    out = mixed_run.parent / "hf"
    code, output = export(mixed_run, "--format", "hf", "--out", out, "--test-size", "0.25")
    assert code == 0, output
    assert (
        "Read 22 records; filters removed duplicate 1, failed 1, meta 2, truncated 1, "
        "unchanged 1; kept 16 (14 with a preference pair, 2 SFT only, 1 chose an earlier "
        "revision)"
    ) in output
    data = datasets.load_from_disk(str(out))
    assert list(data) == list(SPLITS)
    assert {name: data[name].num_rows for name in SPLITS} == {
        "train_prefs": 5,
        "test_prefs": 2,
        "train_sft": 6,
        "test_sft": 3,
    }
    assert f"Wrote train_prefs 5, test_prefs 2, train_sft 6, test_sft 3 rows to {out}" in output

    def prompts(*names: str) -> set[str]:
        column = "prompt" if names[0].endswith("prefs") else "messages"
        rows = [row for n in names for row in data[n]]
        return {json.dumps(r[column][:-1] if column == "messages" else r[column]) for r in rows}

    prefs, sft = prompts("train_prefs", "test_prefs"), prompts("train_sft", "test_sft")
    assert len(prefs) == 7 and len(sft) == 9 and not prefs & sft
    row = data["train_prefs"][0]
    assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
    assert row["chosen"][0]["content"] == GOOD
    assert data["train_prefs"].features["principles"].feature.dtype == "string"
    nochange = [r for n in ("train_sft", "test_sft") for r in data[n] if "[nochange]" in str(r)]
    assert len(nochange) == 2 and all(r["chosen_round"] == 0 for r in nochange)
    fallback = [r for n in SPLITS for r in data[n] if "[lastmeta]" in str(r)]
    assert [r["chosen_round"] for r in fallback] == [1]

    # The Parquet files hold the same rows, and the card's front matter names them.
    for name in SPLITS:
        parquet = datasets.load_dataset(
            "parquet",
            data_files=str(out / "data" / f"{name}-00000-of-00001.parquet"),
            split="train",
        )
        assert parquet.to_list() == data[name].to_list()
    # The card's front matter names the files by config, as the Hub reads them. (A fresh cache:
    # datasets caches a local directory's build by its name alone.)
    cache = str(out.parent / "cache")
    prefs_config = datasets.load_dataset(str(out), cache_dir=cache)
    sft_config = datasets.load_dataset(str(out), "sft", cache_dir=cache)
    assert list(prefs_config) == ["train_prefs", "test_prefs"]
    assert list(sft_config) == ["train_sft", "test_sft"]
    for name in SPLITS:
        config = prefs_config if name.endswith("prefs") else sft_config
        assert config[name].to_list() == data[name].to_list()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert (
        "- config_name: prefs\n  default: true\n  data_files:\n  - split: train_prefs\n"
        "    path: data/train_prefs-*.parquet\n"
    ) in card
    assert MINI_CONSTITUTION.strip() in card
    assert "Name: **mini**" in card and "`fake-model`" in card
    for line in (
        "| train_prefs | 5 |",
        "| test_sft | 3 |",
        "| `failed` | 1 |",
        "| `meta` | 2 |",
        "| `truncated` | 1 |",
        "| `unchanged` | 1 |",
        "| `duplicate` | 1 |",
        "| `empty` | 0 |",
        "- 2 records where every critique found nothing to change",
        "- 1 records use an earlier revision as `chosen`",
        "The run holds 22 records (1 failed, 21 ok); 16 passed the filters.",
    ):
        assert line in card, line
    assert "load_from_disk" in card and "DPOTrainer" in card


def test_dpo_and_sft_exports_are_jsonl_with_a_card(mixed_run: Path) -> None:
    code, output = export(mixed_run, "--format", "dpo")
    assert code == 0, output
    rows = [json.loads(line) for line in (mixed_run / "dpo.jsonl").read_text().splitlines()]
    assert len(rows) == 14
    assert {json.dumps(r["prompt"]) for r in rows} >= {json.dumps(MULTI)}
    assert all(isinstance(r["prompt"], list) for r in rows)
    card = (mixed_run / "dpo.README.md").read_text()
    assert (
        "- config_name: default\n  data_files:\n  - split: train\n    path: dpo.jsonl" in card
        and "| train | 14 |" in card
    )

    code, output = export(mixed_run, "--format", "sft", "--keep-unchanged")
    assert code == 0, output
    rows = [json.loads(line) for line in (mixed_run / "sft.jsonl").read_text().splitlines()]
    assert len(rows) == 17  # 14 pairs + 2 SFT-only + the unchanged one
    assert all(r["messages"][-1]["role"] == "assistant" for r in rows)
    assert "| `unchanged` | off |" in (mixed_run / "sft.README.md").read_text()


def test_standard_style_refuses_multi_turn_and_writes_nothing(mixed_run: Path) -> None:
    code, output = export(mixed_run, "--format", "dpo", "--style", "standard")
    assert code == 2
    assert output.startswith("Error: record ") and "--style standard holds only" in output
    assert output.count("\n") == 1
    assert not (mixed_run / "dpo.jsonl").exists() and not (mixed_run / "dpo.README.md").exists()


def test_standard_style_gives_plain_strings(tmp_path: Path) -> None:
    run = make_run(tmp_path, ["One?", "Two?", "Three?"])
    code, output = export(run, "--format", "hf", "--style", "standard", "--sft-share", "0")
    assert code == 0, output
    import datasets

    data = datasets.load_from_disk(str(run / "hf"))
    assert data["train_prefs"].num_rows + data["test_prefs"].num_rows == 3
    assert data["test_prefs"].features["prompt"].dtype == "string"
    assert data["train_prefs"][0]["chosen"] == GOOD


def test_failed_run_still_exports_and_an_empty_result_has_typed_splits(tmp_path: Path) -> None:
    run = make_run(tmp_path, ["A [fail]", "B [fail]", "C [truncated]"])
    code, output = export(run, "--format", "hf")
    assert code == 0, output
    assert "filters removed failed 2, truncated 1; kept 0" in output
    assert f"Note: no rows passed the filters; `cai stats {run}` shows why" in output
    import datasets

    data = datasets.load_from_disk(str(run / "hf"))
    assert [data[n].num_rows for n in SPLITS] == [0, 0, 0, 0]
    assert set(data["train_prefs"].column_names) >= {"prompt", "chosen", "rejected"}
    card = (run / "hf" / "README.md").read_text()
    assert "| `failed` | 2 |" in card
    # load_dataset cannot read an empty Parquet split: the files and the card leave them out.
    assert not list((run / "hf" / "data").iterdir()) and "configs:" not in card


def test_hf_export_replaces_an_earlier_export_but_not_another_directory(mixed_run: Path) -> None:
    assert export(mixed_run, "--format", "hf")[0] == 0
    code, output = export(mixed_run, "--format", "hf", "--sft-share", "0")
    assert code == 0, output
    assert "train_sft 1, test_sft 1" in output and not list(mixed_run.glob(".hf*"))
    other = mixed_run / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    code, output = export(mixed_run, "--format", "hf", "--out", other)
    assert code == 2
    assert (
        output == f"Error: --out {other} holds files cai export did not write (notes.txt); "
        "pass --out with a new path\n"
    )
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_a_failed_hf_export_leaves_the_earlier_one_untouched(mixed_run: Path) -> None:
    assert export(mixed_run, "--format", "hf")[0] == 0
    before = sorted(p.relative_to(mixed_run) for p in (mixed_run / "hf").rglob("*"))
    card = (mixed_run / "hf" / "README.md").read_text()
    assert export(mixed_run, "--format", "hf", "--style", "standard")[0] == 2
    assert sorted(p.relative_to(mixed_run) for p in (mixed_run / "hf").rglob("*")) == before
    assert (mixed_run / "hf" / "README.md").read_text() == card
    assert not list(mixed_run.glob(".hf*"))


def test_not_a_run_directory(tmp_path: Path) -> None:
    code, output = export(tmp_path)
    assert code == 2
    assert (
        output
        == f"Error: {tmp_path}: no records.jsonl here; pass a directory made by cai generate\n"
    )


def test_card_says_when_the_constitution_changed(tmp_path: Path) -> None:
    run = make_run(tmp_path, ["One?"])
    (run / CONSTITUTION_COPY).unlink()
    (tmp_path / "mini.md").write_text(MINI_CONSTITUTION + "\nEdited later.\n")
    assert export(run, "--format", "dpo")[0] == 0
    card = (run / "dpo.README.md").read_text()
    assert (
        f"The full text is not included: `{tmp_path / 'mini.md'}` has changed since the run" in card
    )
    assert "Edited later." not in card
    # The run's own copy, written when the run started, still has the text.
    run2 = make_run(tmp_path / "b", ["One?"])
    (tmp_path / "b" / "mini.md").unlink()
    assert export(run2, "--format", "dpo")[0] == 0
    card = (run2 / "dpo.README.md").read_text()
    assert f"Full text (read from `{run2 / CONSTITUTION_COPY}`)" in card
    assert MINI_CONSTITUTION.strip() in card


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def test_push_to_hub_offline_fails_in_one_line_after_the_local_export(
    mixed_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    code, output = export(mixed_run, "--format", "hf", "--push-to-hub", "someone/cai-data")
    assert code == 2
    error = output.splitlines()[-1]
    assert error.startswith("Error: could not push to the Hub dataset someone/cai-data (")
    assert error.endswith(
        f"the local export at {mixed_run / 'hf'} is complete - check the network and HF_TOKEN, "
        "then run the export again with --push-to-hub"
    )
    assert "hf_fake_token_for_tests" not in output
    import datasets

    assert datasets.load_from_disk(str(mixed_run / "hf"))["train_prefs"].num_rows > 0


def test_push_to_hub_without_a_token_stops_before_writing(
    mixed_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    code, output = export(mixed_run, "--format", "dpo", "--push-to-hub", "someone/cai-data")
    assert code == 2
    assert output.startswith("Error: --push-to-hub needs a Hugging Face token: set HF_TOKEN")
    assert not (mixed_run / "dpo.jsonl").exists()


def test_push_error_never_shows_a_stored_hub_token(
    mixed_run: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No HF_TOKEN: the token comes from a stored login (HF_HOME/token), and the Hub answers
    every request with an error that quotes the Authorization header it was sent. The push
    fails in one line that names no token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stored = "hf_storedLoginTokenForPushTest77"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text(stored + "\n")
    import huggingface_hub.constants

    # huggingface_hub reads HF_HOME once, when it is first imported (by an earlier test).
    monkeypatch.setattr(
        huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token")
    )
    monkeypatch.setattr(
        huggingface_hub.constants,
        "HF_STORED_TOKENS_PATH",
        str(tmp_path / "hf-home" / "stored_tokens"),
    )

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _refuse(self) -> None:
            body = json.dumps({"error": f"token refused: {self.headers.get('authorization')}"})
            self.send_response(403)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        do_GET = do_POST = do_PUT = do_HEAD = _refuse

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        code, output = export(mixed_run, "--format", "dpo", "--push-to-hub", "someone/cai-data")
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2, output
    assert output.strip().splitlines()[-1].startswith("Error: could not push"), output
    assert stored not in output


def test_export_run_api_returns_counts(mixed_run: Path) -> None:
    result = export_run(mixed_run, None, ExportOptions(fmt="dpo"))
    assert result.out == mixed_run / "dpo.jsonl" and result.card == mixed_run / "dpo.README.md"
    assert result.counts == {"train": 14} and result.records == 22


class FakeHub:
    """Just enough of the Hub's HTTP API, on 127.0.0.1, for huggingface_hub to create a dataset
    repo and commit files to it; it keeps what it was sent."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hub = self
        self.files: dict[str, bytes] = {}
        self.metadata: dict = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub.requests.append(("POST", self.path, self.headers.get("authorization", "")))
                if self.path == "/api/repos/create":
                    name = json.loads(body)["name"]
                    self.reply({"url": f"{hub.url}/datasets/someone/{name}"})
                elif self.path == "/api/validate-yaml":
                    import yaml

                    content = json.loads(body)["content"]
                    try:
                        hub.metadata = yaml.safe_load(content.split("---\n")[1])
                    except (IndexError, yaml.YAMLError) as e:
                        self.reply({"errors": [{"message": str(e)}]}, status=400)
                        return
                    self.reply({"errors": [], "warnings": []})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self.reply(
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        }
                    )
                elif "/commit/" in self.path:
                    import base64

                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files[value["path"]] = base64.b64decode(value["content"])
                    repo = self.path.split("/api/datasets/")[1].split("/commit/")[0]
                    oid = "1" * 40
                    self.reply(
                        {"commitUrl": f"{hub.url}/datasets/{repo}/commit/{oid}", "commitOid": oid}
                    )
                else:
                    self.reply({"error": "not here"}, status=404)

            def reply(self, data: object, status: int = 200) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub on loopback, with the environment pointing at it."""
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    try:
        yield server
    finally:
        server.close()


def test_push_to_hub_uploads_the_files_and_the_card(mixed_run: Path, hub: FakeHub) -> None:
    code, output = export(mixed_run, "--format", "hf", "--push-to-hub", "someone/cai-data")
    assert code == 0, output
    assert output.splitlines()[-1] == f"Pushed to {hub.url}/datasets/someone/cai-data"
    # Output not to a terminal: no upload bar redrawn with \r (issue 21 item 7).
    assert "\r" not in output and "\x1b[" not in output
    out = mixed_run / "hf"
    assert sorted(hub.files) == [
        "README.md",
        *(f"data/{name}-00000-of-00001.parquet" for name in sorted(SPLITS)),
    ]
    assert hub.files["README.md"] == (out / "README.md").read_bytes()
    for name in SPLITS:
        path = f"data/{name}-00000-of-00001.parquet"
        assert hub.files[path] == (out / path).read_bytes()
    assert all(auth == "Bearer hf_fake_token_for_tests" for _, _, auth in hub.requests)
    assert [path.split("?")[0] for _, path, _ in hub.requests] == [
        "/api/repos/create",
        "/api/validate-yaml",
        "/api/datasets/someone/cai-data/preupload/main",
        "/api/datasets/someone/cai-data/commit/main",
    ]
    # The card's front matter, as the Hub parses it: two configs, preferences first.
    assert hub.metadata["configs"] == [
        {
            "config_name": "prefs",
            "default": True,
            "data_files": [
                {"split": "train_prefs", "path": "data/train_prefs-*.parquet"},
                {"split": "test_prefs", "path": "data/test_prefs-*.parquet"},
            ],
        },
        {
            "config_name": "sft",
            "data_files": [
                {"split": "train_sft", "path": "data/train_sft-*.parquet"},
                {"split": "test_sft", "path": "data/test_sft-*.parquet"},
            ],
        },
    ]


def test_cli_similarity_default_is_the_filters_threshold() -> None:
    from cai.filters import SIMILARITY_THRESHOLD

    option = next(p for p in cli.commands["export"].params if p.name == "similarity")
    assert option.default == SIMILARITY_THRESHOLD


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("--keep-truncated", "truncated"),
        ("--keep-empty", "empty"),
        ("--keep-meta", "meta"),
        ("--keep-unchanged", "unchanged"),
        ("--keep-duplicates", "duplicate"),
    ],
)
def test_each_keep_flag_turns_its_filter_off(mixed_run: Path, flag: str, name: str) -> None:
    code, output = export(mixed_run, "--format", "sft", flag)
    assert code == 0, output
    card = (mixed_run / "sft.README.md").read_text()
    assert f"| `{name}` | off |" in card
    assert card.count("| off |") == 1
    assert f" {name} " not in output.splitlines()[0].split(";")[1]  # not among the removed


def test_push_of_a_jsonl_export_uploads_the_file_and_its_card_as_readme(
    mixed_run: Path, hub: FakeHub
) -> None:
    code, output = export(mixed_run, "--format", "dpo", "--push-to-hub", "someone/pairs")
    assert code == 0, output
    assert sorted(hub.files) == ["README.md", "dpo.jsonl"]
    assert hub.files["dpo.jsonl"] == (mixed_run / "dpo.jsonl").read_bytes()
    assert hub.files["README.md"] == (mixed_run / "dpo.README.md").read_bytes()
    assert hub.metadata["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "dpo.jsonl"}]}
    ]


def test_constitution_copy_is_exact_and_never_replaces_another(tmp_path: Path) -> None:
    import hashlib

    source = tmp_path / "c.md"
    source.write_bytes(MINI_CONSTITUTION.encode())
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    run = tmp_path / "run"
    save_constitution_copy(run, source, "0" * 64)  # the file changed since it was parsed
    assert not (run / CONSTITUTION_COPY).exists()
    save_constitution_copy(run, source, sha)
    assert (run / CONSTITUTION_COPY).read_bytes() == source.read_bytes()
    source.write_text("# Another constitution\n")
    save_constitution_copy(run, source, hashlib.sha256(source.read_bytes()).hexdigest())
    assert (run / CONSTITUTION_COPY).read_bytes() == MINI_CONSTITUTION.encode()
