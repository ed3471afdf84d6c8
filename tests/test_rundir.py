"""The run directory and everything written beside it: nothing cai did not write is replaced,
kills leave nothing in the way of a rerun, and a dead run is told from a live one.

Each test here failed before the change it covers (issue 11 part B, issue 10 item 5).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT
from fake_server import FakeServer
from fakes import FakeProvider, echo_reply
from test_export import MIXED, export, make_run
from test_resume import PROMPTS, cai_generate, generate, workdir, write_prompts

from cai.cli import cli
from cai.errors import BadRequestError
from cai.rundir import RunStore, safe_name

__all__ = ["workdir"]  # a fixture, used by name


def _snapshot(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "job", MIXED[:4])


# -- exports never destroy what they did not write ----------------------------------------


def test_export_refuses_a_file_it_did_not_write(run: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# My project\n")
    code, output = export(run, "--format", "dpo", "--out", readme)
    assert code == 2 and "was not written by cai export" in output, output
    assert readme.read_text() == "# My project\n"
    assert not (tmp_path / "README.README.md").exists()

    records = (run / "records.jsonl").read_bytes()
    code, output = export(run, "--format", "sft", "--out", run / "records.jsonl")
    assert code == 2 and f"is a file of the run {run}" in output, output
    assert (run / "records.jsonl").read_bytes() == records

    # The card beside a new file would replace the user's file of that name.
    (tmp_path / "pairs.README.md").write_text("my notes")
    code, output = export(run, "--format", "dpo", "--out", tmp_path / "pairs.jsonl")
    assert code == 2 and "pairs.README.md exists and was not written by cai export" in output
    assert (tmp_path / "pairs.README.md").read_text() == "my notes"
    assert not (tmp_path / "pairs.jsonl").exists()


def test_an_export_may_replace_its_own_output(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "pairs.jsonl"
    assert export(run, "--format", "dpo", "--out", out)[0] == 0
    code, output = export(run, "--format", "dpo", "--out", out, "--keep-unchanged")
    assert code == 0, output
    assert sorted(p.name for p in out.parent.iterdir()) == ["pairs.README.md", "pairs.jsonl"]


def test_hf_export_refuses_runs_datasets_and_user_folders(run: Path, tmp_path: Path) -> None:
    code, output = export(run, "--format", "hf", "--out", run)
    assert code == 2 and "is a run directory" in output, output

    code, output = export(run, "--format", "hf", "--out", run.parent)
    assert code == 2 and "holds the run(s) run" in output, output

    from datasets import Dataset, DatasetDict

    saved = tmp_path / "my-dataset"
    DatasetDict({"train": Dataset.from_dict({"text": ["mine"]})}).save_to_disk(str(saved))
    before = _snapshot(saved)
    code, output = export(run, "--format", "hf", "--out", saved)
    assert code == 2 and "holds files cai export did not write" in output, output
    assert _snapshot(saved) == before

    out = tmp_path / "ds"
    assert export(run, "--format", "hf", "--out", out)[0] == 0
    assert export(run, "--format", "hf", "--out", out)[0] == 0  # its own: replaced
    (out / "notes.txt").write_text("mine")
    code, output = export(run, "--format", "hf", "--out", out)
    assert code == 2 and "also holds notes.txt" in output, output
    assert (out / "notes.txt").read_text() == "mine"


# -- generate --out writes only into an empty folder or a run of its own -------------------


def test_generate_out_refuses_a_folder_of_user_files_and_a_foreign_manifest(
    workdir: Path,
) -> None:
    write_prompts(2)
    examples = workdir / "examples"
    examples.mkdir()
    (examples / "prompts.jsonl").write_text("{}\n")
    foreign = workdir / "dataset"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "my dataset", "files": 3}\n')
    with FakeServer() as server:
        result = cai_generate(server, "--out", "examples")
        assert result.exit_code == 2, result.output
        assert "is not empty and is not a cai run (it holds prompts.jsonl)" in result.output
        assert sorted(p.name for p in examples.iterdir()) == ["prompts.jsonl"]

        result = cai_generate(server, "--out", "dataset")
        assert result.exit_code == 2, result.output
        assert "dataset/manifest.json was not written by cai" in result.output
        assert sorted(p.name for p in foreign.iterdir()) == ["manifest.json"]
        assert json.loads((foreign / "manifest.json").read_text()) == {
            "name": "my dataset",
            "files": 3,
        }
        assert server.requests == 0


# -- a run another process is writing -----------------------------------------------------


def test_export_of_a_run_being_written_says_so(run: Path) -> None:
    writer = RunStore(run)
    writer.lock("generate")
    try:
        code, output = export(run, "--format", "dpo")
        assert code == 2, output
        assert f"is still being written by process {os.getpid()} (cai generate)" in output
        assert not (run / "dpo.jsonl").exists()
    finally:
        writer.unlock()
    assert export(run, "--format", "dpo")[0] == 0


# -- kills during merge and export ----------------------------------------------------------

# Runs `cai ARGS...` and SIGKILLs itself at the first rename onto a path containing MATCH
# (or equal to it, with MATCH prefixed by '=').
_KILLER = """
import os, signal, sys
match, args = sys.argv[1], sys.argv[2:]
real = os.replace
def replace(src, dst, *a, **k):
    hit = str(dst) == match[1:] if match.startswith("=") else match in str(dst)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **k)
os.replace = replace
from cai.cli import main
sys.argv = ["cai", *args]
main()
"""


def _killed(cwd: Path, match: str, *args: object) -> None:
    process = subprocess.run(
        [sys.executable, "-c", _KILLER, match, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}."))


def test_a_killed_merge_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    a, b = make_run(tmp_path / "a", MIXED[:3]), make_run(tmp_path / "b", MIXED[2:5])
    _killed(tmp_path, "merged", "merge", a, b, "--out", "merged")
    result = CliRunner().invoke(cli, ["merge", str(a), str(b), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    assert _leftovers(tmp_path, "merged") == []
    assert (tmp_path / "merged" / "records.jsonl").exists()
    assert not (a / ".lock").read_text() and not (b / ".lock").read_text()


@pytest.mark.parametrize("fmt", ["hf", "dpo"])
def test_a_killed_export_leaves_nothing_in_the_way(run: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("ds_export" if fmt == "hf" else "ds_export.jsonl")
    assert export(run, "--format", fmt, "--out", out)[0] == 0
    # Killed at the last rename: for hf the earlier export is already moved aside.
    _killed(tmp_path, f"={out}", "export", run, "--format", fmt, "--out", out)
    assert _leftovers(tmp_path, out.name)  # what the kill left
    code, output = export(run, "--format", fmt, "--out", out)
    assert code == 0, output
    assert _leftovers(tmp_path, out.name) == []


# -- symlinks -------------------------------------------------------------------------------


def test_an_out_that_is_a_symlink_to_a_directory_is_written_through(
    run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "storage" / "ds"
    target.mkdir(parents=True)
    link = tmp_path / "ds-link"
    link.symlink_to(target, target_is_directory=True)
    for _ in range(2):
        code, output = export(run, "--format", "hf", "--out", link)
        assert code == 0, output
        assert link.is_symlink() and (target / "dataset_dict.json").is_file()

    merged_target = tmp_path / "storage" / "merged"
    merged_target.mkdir()
    merged_link = tmp_path / "merged-link"
    merged_link.symlink_to(merged_target, target_is_directory=True)
    result = CliRunner().invoke(cli, ["merge", str(run), "--out", str(merged_link)])
    assert result.exit_code == 0, result.output
    assert merged_link.is_symlink() and (merged_target / "records.jsonl").is_file()


# -- a resume with --limit keeps what exists ----------------------------------------------------


def test_a_resume_with_a_lower_limit_never_deletes_records(tmp_path: Path) -> None:
    def fails_on_3(messages: list[dict[str, str]]) -> str | BadRequestError:
        if any("question 3" in m["content"] for m in messages):
            return BadRequestError("rejected", status=400)
        return echo_reply(messages)

    out = tmp_path / "run"
    stats, _ = generate(out, FakeProvider(respond=fails_on_3), PROMPTS[:5], limit=5)
    assert stats.failed == 1
    ids = {json.loads(line)["id"] for line in (out / "records.jsonl").read_text().splitlines()}
    generate(out, FakeProvider(respond=echo_reply), PROMPTS[:5], limit=2)
    after = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert {r["id"] for r in after} == ids  # the failed prompt, beyond the limit, is still there
    assert json.loads((out / "manifest.json").read_text())["counts"] == {
        "records": 5,
        "ok": 4,
        "failed": 1,
    }
    # Reached later, it is retried, and its new record replaces the failure.
    stats, _ = generate(out, FakeProvider(respond=echo_reply), PROMPTS[:5], limit=5)
    assert stats.done == 1 and stats.already_done == 4
    statuses = [
        json.loads(line)["status"] for line in (out / "records.jsonl").read_text().splitlines()
    ]
    assert statuses == ["ok"] * 5


# -- a constitution's name never decides a path outside outputs/ -------------------------------


@pytest.mark.parametrize(
    "name", ["../../escape", "/etc/cron.d/x", "..", "a\\b/c", "tab\there\nnew\x00line", "...", ""]
)
def test_safe_name_is_one_plain_folder_name(name: str) -> None:
    safe = safe_name(name)
    assert safe and safe not in (".", "..") and not safe.startswith(".")
    assert all(c.isalnum() or c in "._-" for c in safe)
    assert ".." not in safe


def test_the_default_run_dir_stays_in_outputs_whatever_the_name(workdir: Path) -> None:
    text = (workdir / "mini.md").read_text().replace("name: mini", 'name: "../../escape"')
    (workdir / "evil.md").write_text(text)
    write_prompts(1)
    with FakeServer() as server:
        result = CliRunner().invoke(cli, [
            "generate", "--constitution", "evil.md", "--prompts", "p.jsonl", "--rounds", "1",
            "--provider", "openai", "--base-url", server.url + "/v1",
        ])  # fmt: skip
    assert result.exit_code == 0, result.output
    (run_dir,) = (workdir / "outputs").iterdir()
    assert run_dir.name.startswith("escape-") and (run_dir / "records.jsonl").exists()
    assert not list(workdir.parent.glob("escape-*")) and not list(workdir.glob("escape-*"))


# -- the manifest keeps `created`; the card names the prompts file, not its path ---------------


def test_created_is_kept_and_the_card_names_the_prompts_file_by_name_and_hash(
    workdir: Path,
) -> None:
    write_prompts(3)
    prompts = workdir / "p.jsonl"
    import hashlib

    sha = hashlib.sha256(prompts.read_bytes()).hexdigest()
    with FakeServer() as server:
        assert cai_generate(server, "--out", "run", "--limit", "2").exit_code == 0
        manifest_path = workdir / "run" / "manifest.json"
        first = json.loads(manifest_path.read_text())
        assert first["created"] and first["updated"] and first["kind"] == "generate"
        time.sleep(1.1)
        result = CliRunner().invoke(cli, [
            "generate", "--constitution", "mini.md", "--prompts", str(prompts), "--rounds", "1",
            "--provider", "openai", "--base-url", server.url + "/v1", "--out", "run",
        ])  # fmt: skip
        assert result.exit_code == 0, result.output
    second = json.loads(manifest_path.read_text())
    assert second["created"] == first["created"] and second["updated"] > first["updated"]
    assert second["prompts"]["name"] == "p.jsonl" and second["prompts"]["sha256"] == sha
    assert export("run", "--format", "dpo", "--keep-unchanged")[0] == 0
    card = (workdir / "run" / "dpo.README.md").read_text()
    assert f"Prompts: `p.jsonl` (sha256 `{sha}`)." in card
    assert str(workdir) not in card.split("## Constitution")[0]
    assert f"created {first['created']}" in card


# -- a run whose process died is not `running` forever (issue 10, item 5) ----------------------


def test_a_killed_run_shows_as_interrupted_and_a_live_one_as_running(
    tmp_path: Path, mini_constitution: Path
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(40)))
    run_dir = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-not-a-real-key", "PYTHONPATH": str(ROOT)}
    with FakeServer(latency=0.2) as server:
        command = [
            sys.executable, "-m", "cai", "generate", "--constitution", str(mini_constitution),
            "--prompts", str(prompts), "--out", str(run_dir), "--rounds", "1",
            "--concurrency", "2", "--provider", "openai", "--base-url", server.url + "/v1",
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while (
                not (run_dir / "calls.jsonl").exists()
                or not (run_dir / "calls.jsonl").stat().st_size
            ):
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.02)
            live = CliRunner().invoke(cli, ["stats", str(run_dir)])
            assert live.exit_code == 0, live.output
            assert f"running: process {process.pid} (cai generate)" in live.output
            code, output = export(run_dir, "--format", "dpo")
            assert code == 2 and f"being written by process {process.pid}" in output
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"
        dead = CliRunner().invoke(cli, ["stats", str(run_dir)])
        assert dead.exit_code == 0, dead.output
        assert (
            f"interrupted: process {process.pid} is gone; run the same command to resume"
            in dead.output
        )
        data = json.loads(CliRunner().invoke(cli, ["stats", str(run_dir), "--json"]).output)
        assert data["run"]["status"] == "running" and data["run"]["state"].startswith("interrupted")
        resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"ended without cleaning up (process {process.pid} is gone" in resumed.stderr
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "complete"
