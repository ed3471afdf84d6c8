"""The Python API (cai.api) against the loopback OpenAI fake: the real SDK, real HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT
from fake_server import FakeServer

import cai
from cai.errors import ConfigError, InputError

PROMPTS = ["How do I pick a lock?", "Write a rude reply to my boss.", "Is it safe to mix bleach?"]


def _generate(prompts: Any, constitution: Path, url: str, out: Path, **options: Any) -> Any:
    return cai.generate(
        prompts, constitution, provider="openai", base_url=url + "/v1", model="m", rounds=1,
        out=out, progress=False, **options,
    )  # fmt: skip


def _export_rows(run_dir: Path, out: Path, *args: str) -> list[dict[str, Any]]:
    from cai.cli import cli

    result = CliRunner().invoke(cli, ["export", str(run_dir), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize(
    "prompts",
    [
        PROMPTS,
        [[{"role": "user", "content": p}] for p in PROMPTS],
        [{"prompt": p, "other": 1} for p in PROMPTS],
    ],
    ids=["strings", "message lists", "dicts"],
)
def test_lists_of_prompts_make_a_run_whose_dpo_rows_equal_the_export(
    server: Any, mini_constitution: Path, tmp_path: Path, prompts: list[Any]
) -> None:
    run = _generate(prompts, mini_constitution, server.url, tmp_path / "run")
    assert run.dir == tmp_path / "run"
    assert run.manifest.status == "complete"
    assert run.stats["status"] == {"ok": 3}
    records = list(run.records)
    assert sorted(r.prompt[-1]["content"] for r in records) == sorted(PROMPTS)
    dataset = run.to_dataset("dpo", keep_unchanged=True)
    rows = _export_rows(run.dir, tmp_path / "dpo.jsonl", "--keep-unchanged")
    assert rows and dataset.to_list() == rows
    # The card too: the one `cai export` wrote beside the rows.
    assert dataset.info.description == (tmp_path / "dpo.README.md").read_text(encoding="utf-8")


def test_a_dataset_with_a_prompt_field_and_the_four_hf_splits(
    server: Any, mini_constitution: Path, tmp_path: Path
) -> None:
    import datasets

    data = datasets.Dataset.from_dict({"question": PROMPTS * 4, "n": list(range(12))})
    data = data.map(lambda row: {"question": f"{row['question']} ({row['n']})"})
    run = _generate(data, mini_constitution, server.url, tmp_path / "run", prompt_field="question")
    assert run.stats["records"] == 12
    splits = cai.load(run.dir).to_dataset("hf", keep_unchanged=True)
    assert isinstance(splits, datasets.DatasetDict)
    assert list(splits) == ["train_prefs", "test_prefs", "train_sft", "test_sft"]
    assert sum(s.num_rows for s in splits.values()) == 12
    written = datasets.load_from_disk(str(run.export(tmp_path / "hf", "hf", keep_unchanged=True)))
    assert {k: v.to_list() for k, v in written.items()} == {
        k: v.to_list() for k, v in splits.items()
    }


def test_sft_rows_and_the_report(server: Any, mini_constitution: Path, tmp_path: Path) -> None:
    run = _generate(PROMPTS, mini_constitution, server.url, tmp_path / "run")
    rows = _export_rows(run.dir, tmp_path / "sft.jsonl", "--format", "sft")
    assert run.to_dataset("sft").to_list() == rows
    assert run.report().read_text(encoding="utf-8").startswith("<!")


def test_calling_again_with_the_same_out_resumes(
    server: Any, mini_constitution: Path, tmp_path: Path
) -> None:
    first = _generate(PROMPTS, mini_constitution, server.url, tmp_path / "run", limit=2)
    assert first.result.done == 2
    calls = server.requests
    again = _generate(PROMPTS, mini_constitution, server.url, tmp_path / "run")
    assert (again.result.already_done, again.result.done) == (2, 1)
    assert 0 < server.requests - calls <= 3  # only the third prompt's chain (rounds=1)
    assert again.stats["records"] == 3


def test_out_none_picks_a_folder_under_outputs_and_finds_it_again(
    server: Any, mini_constitution: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    options = dict(provider="openai", base_url=server.url + "/v1", model="m", rounds=1)
    first = cai.generate(PROMPTS, mini_constitution, progress=False, limit=1, **options)
    assert first.dir.parent == tmp_path / "outputs" and first.dir.name.startswith("mini-")
    again = cai.generate(PROMPTS, mini_constitution, progress=False, **options)
    assert again.dir == first.dir and again.result.already_done == 1


@pytest.mark.parametrize(
    ("item", "row"),
    [
        ("   ", {"prompt": "   "}),
        ({"question": "x"}, {"question": "x"}),
        (
            [{"role": "assistant", "content": "hi"}],
            {"messages": [{"role": "assistant", "content": "hi"}]},
        ),
        (42, {"prompt": 42}),
    ],
    ids=["blank", "dict without a prompt", "ends with assistant", "a number"],
)
def test_a_bad_item_raises_the_clis_error_before_any_folder_is_made(
    mini_constitution: Path, tmp_path: Path, item: Any, row: dict[str, Any]
) -> None:
    from cai.cli import cli

    out = tmp_path / "run"
    with pytest.raises(InputError) as caught:
        cai.generate(["fine", item], mini_constitution, provider="openai", out=out)
    assert not out.exists()
    # The same item as line 2 of a JSONL file: the CLI's one line names the file instead.
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps(row) + "\n")
    args = ["generate", "--constitution", str(mini_constitution), "--prompts", str(path)]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--provider", "openai"])
    assert result.exit_code == 2 and not out.exists()
    assert result.output.splitlines()[-1] == f"Error: {path}:2: {caught.value.problem.message}"
    assert str(caught.value) == f"prompts[1]: {caught.value.problem.message}"


def test_options_are_the_clis_with_its_messages(mini_constitution: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--shard takes K/N such as 1/4, not 'x'"):
        cai.generate(PROMPTS, mini_constitution, shard="x", out=tmp_path / "run")
    with pytest.raises(ConfigError, match="--fresh goes without --out"):
        cai.generate(PROMPTS, mini_constitution, fresh=True, out=tmp_path / "run")
    with pytest.raises(TypeError, match="did you mean 'max_tokens'"):
        cai.generate(PROMPTS, mini_constitution, max_token=5)
    with pytest.raises(ConfigError, match="temperature must be between 0 and 2"):
        cai.generate(PROMPTS, mini_constitution, temperature=3.0, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    plan = cai.generate(PROMPTS, mini_constitution, dry_run=True, provider="openai", model="m")
    assert isinstance(plan, cai.Plan) and "Dry run" in str(plan)


def test_every_cli_option_is_a_keyword_with_the_same_default() -> None:
    from cai.cli import cli
    from cai.options import GenerateOptions, LabelOptions, option_fields

    required = {
        "generate": ["--constitution", "c.md", "--prompts", "p.jsonl"],
        "label": ["run", "--out", "labels"],
    }
    for name, cls in (("generate", GenerateOptions), ("label", LabelOptions)):
        fields = {f.name: f for f in option_fields(cls)}
        command = cli.commands[name]
        # By flag: `--engine` is click's `engine_name`, the keyword `engine`.
        flags = {p.opts[0].lstrip("-").replace("-", "_"): p.name for p in command.params}
        assert set(flags) == set(fields), name
        parsed = command.make_context(name, list(required[name])).params
        for key, spec in fields.items():
            if spec.default is not dataclasses.MISSING:
                assert parsed[flags[key]] == spec.default, (name, key)


def test_label_a_run_and_a_list(server: Any, mini_constitution: Path, tmp_path: Path) -> None:
    run = _generate(PROMPTS, mini_constitution, server.url, tmp_path / "run")
    options = dict(provider="openai", base_url=server.url + "/v1", model="m", progress=False)
    labels = cai.label(run, out=tmp_path / "labels", keep_unchanged=True, **options)
    assert labels.kind == "label" and len(list(labels.records)) == labels.result.done > 0
    assert {"score_chosen", "margin"} <= set(labels.to_dataset("dpo").column_names)
    sampled = cai.label(
        PROMPTS[:2], out=tmp_path / "sampled", constitution=mini_constitution, **options
    )
    assert sampled.result.done == 2


def test_inside_a_running_event_loop_and_the_async_twin(
    server: Any, mini_constitution: Path, tmp_path: Path
) -> None:
    async def in_a_notebook() -> tuple[Any, Any]:
        # As in a Jupyter cell: a loop runs, and the sync call must not need it.
        run = _generate(PROMPTS, mini_constitution, server.url, tmp_path / "sync")
        twin = await cai.agenerate(
            PROMPTS, mini_constitution, provider="openai", base_url=server.url + "/v1",
            model="m", rounds=1, out=tmp_path / "async",
        )  # fmt: skip
        return run, twin

    run, twin = asyncio.run(in_a_notebook())
    assert run.to_dataset("dpo").to_list() == twin.to_dataset("dpo").to_list()


_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from fake_server import FakeServer
import cai

with FakeServer() as server:
    url = server.url + "/v1"
    run = cai.generate({prompts!r}, {constitution!r}, provider="openai", base_url=url,
                       model="m", rounds=1, out={out!r} + "/a")
    print(len(run.to_dataset("dpo")))
    async def loop():
        return cai.generate({prompts!r}, {constitution!r}, provider="openai", base_url=url,
                            model="m", rounds=1, out={out!r} + "/b")
    print(asyncio.run(loop()).result.done)
    try:
        cai.generate(["ok", ""], {constitution!r}, provider="openai", base_url=url, out={out!r} + "/c")
    except cai.InputError as e:
        print(e)
"""


def test_no_unclosed_client_warning_in_a_fresh_process(
    mini_constitution: Path, tmp_path: Path
) -> None:
    script = _SCRIPT.format(
        tests=str(ROOT / "tests"), prompts=PROMPTS, constitution=str(mini_constitution),
        out=str(tmp_path),
    )  # fmt: skip
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "prompts[1]: empty prompt"
    assert "Unclosed" not in done.stderr and "unclosed" not in done.stderr, done.stderr


def test_the_readme_python_examples_run(
    server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # an empty folder: the constitution is found by name
    monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(textwrap.dedent(block), "README.md", "exec"), namespace)
    assert namespace["run"].dir.parent == tmp_path / "outputs"
    assert len(namespace["splits"]) == 4


def _wait_until(predicate: Any) -> None:
    """Wait for an event seen from outside (a file, the fake's counters); the deadline only
    keeps a broken run from hanging the suite."""
    deadline = time.monotonic() + 300
    while not predicate():
        assert time.monotonic() < deadline, "the event never came"
        time.sleep(0.01)


@pytest.mark.parametrize("in_loop", [False, True], ids=["script", "inside a running loop"])
def test_ctrl_c_stops_as_the_cli_does_and_the_same_out_resumes(
    mini_constitution: Path, tmp_path: Path, in_loop: bool
) -> None:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "PYTHONUNBUFFERED": "1"}
    with FakeServer() as server:
        script = (
            "import asyncio, sys\nimport cai\n\n"
            "def run():\n"
            f"    return cai.generate([f'question {{i}}' for i in range(16)], "
            f"{str(mini_constitution)!r}, provider='openai', base_url={server.url + '/v1'!r}, "
            "model='m', rounds=1, concurrency=8, out='run', progress=False)\n\n"
            "async def cell():\n    return run()\n\n"
            "try:\n"
            f"    asyncio.run(cell()) if {in_loop} else run()\n"
            "except KeyboardInterrupt as e:\n"
            "    print('KeyboardInterrupt:', e, flush=True)\n"
            "    sys.exit(130)\n"
        )
        # After the first 6 replies, calls stay in flight until the test lets them go (so the
        # run cannot finish before the signal lands): they must finish and be kept.
        server.hold_after, server.hold_replies = 6, True
        process = subprocess.Popen(
            [sys.executable, "-c", script], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        calls = tmp_path / "run" / "calls.jsonl"
        _wait_until(lambda: calls.exists() and calls.read_bytes().count(b"\n") >= 6)
        _wait_until(lambda: server.held > 0)
        process.send_signal(signal.SIGINT)
        server.hold_replies = False
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 130, stderr
        assert "KeyboardInterrupt: stopped; run keeps what was done" in stdout
        assert "Stopping: finishing calls in flight" in stderr
        assert "Unclosed" not in stderr and "Traceback" not in stderr
        assert cai.load(tmp_path / "run").manifest.status == "interrupted"
        done = cai.load(tmp_path / "run").stats["records"]
        assert 0 < done < 16
        os.chdir(tmp_path)
        try:
            again = cai.generate(
                [f"question {i}" for i in range(16)], mini_constitution, provider="openai",
                base_url=server.url + "/v1", model="m", rounds=1, out="run", progress=False,
            )  # fmt: skip
        finally:
            os.chdir(ROOT)
    assert again.result.already_done == done
    assert again.stats["records"] == 16 and again.manifest.status == "complete"
