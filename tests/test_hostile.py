"""Issue 19, kinds 2, 3, 4, 5 and 9: what a hostile run folder, server or file cannot do.

- Run files are opened without following a link, and only when they are regular files: a
  symlink or a FIFO planted in a run folder is refused with one line, never written through
  and never waited on; `merge` only reads its inputs (kind 2).
- A reply holding a lone surrogate is kept (U+FFFD), journaled and answered; such a prompt is
  a FILE:LINE error (kind 3).
- Log-probabilities and usage counts no server should send never crash a run, a resume, stats
  or a report (kind 4).
- A run-file line of the wrong shape is skipped and counted, never a crash (kind 5).
- Every secret cai knows of is redacted in the forms it takes in what cai writes (kind 9).

The loopback fake (`FakeServer(hostile=...)`) sends the hostile replies through the real SDKs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cai.batch import BatchJournal
from cai.cli import cli
from cai.feedback import letter_probability
from cai.providers.base import Completion, Usage
from cai.providers.openai import parse_chat_completion
from cai.records import Record, clean_count
from cai.redact import remember_secret
from cai.rundir import (
    LABELS_FILE,
    RunStore,
    counting_skips,
    open_run_file,
    read_records,
    redact_secrets,
)

HARMLESS = Path(__file__).resolve().parent.parent / "constitutions" / "harmless.md"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-hostile-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-hostile")


def _prompts(path: Path, n: int) -> Path:
    path.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: is it safe?"}) + "\n" for i in range(n))
    )
    return path


def _generate(
    server: FakeServer, tmp_path: Path, out: Path, *extra: str, provider: str = "openai"
) -> Result:
    base = server.url + ("/v1" if provider == "openai" else "")
    args = [
        "generate", "--constitution", str(HARMLESS), "--prompts", str(_prompts(tmp_path / "p.jsonl", 3)),
        "--out", str(out), "--provider", provider, "--base-url", base, "--rounds", "1", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _label(server: FakeServer, source: Path, out: Path, *extra: str) -> Result:
    args = [
        "label", str(source), "--out", str(out), "--provider", "openai",
        "--base-url", server.url + "/v1", "--votes", "1", *extra,
    ]  # fmt: skip
    return CliRunner().invoke(cli, args)


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _snapshot(*dirs: Path) -> dict[str, tuple[str, int]]:
    """Every file under `dirs`: its content hash and mtime."""
    out = {}
    for d in dirs:
        for path in sorted(d.rglob("*")):
            if path.is_file() and not path.is_symlink():
                info = path.stat()
                out[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def done_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished generate run (3 prompts, one round) to copy and spoil."""
    tmp = tmp_path_factory.mktemp("done")
    os.environ.setdefault("OPENAI_API_KEY", "sk-test-hostile-openai")
    with FakeServer() as server:
        result = _generate(server, tmp, tmp / "run")
    assert result.exit_code == 0, result.output
    return tmp / "run"


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.is_file():
            (dst / path.name).write_bytes(path.read_bytes())
    return dst


# == kind 2: run files that are links, FIFOs or read-only ======================================


@pytest.mark.parametrize("name", [".lock", "records.jsonl", "calls.jsonl", "manifest.json"])
@pytest.mark.parametrize("command", ["generate", "merge"])
def test_a_symlinked_run_file_is_refused_and_its_target_never_changes(
    name: str, command: str, done_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    outside = tmp_path / "outside.txt"
    outside.write_bytes((run / name).read_bytes() if (run / name).exists() else b"precious\n")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(outside)
    before = outside.read_bytes(), outside.stat().st_mtime_ns
    with FakeServer() as server:
        if command == "generate":
            result = _generate(server, tmp_path, run)
        else:
            result = CliRunner().invoke(cli, ["merge", str(run), "--out", str(tmp_path / "m")])
    assert "is a symbolic link, not a regular file" in _one_line_error(result)
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == before
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", [".lock", "records.jsonl", "calls.jsonl"])
def test_a_fifo_in_a_run_folder_is_refused_without_waiting_on_it(
    name: str, done_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    with FakeServer() as server:
        result = _generate(server, tmp_path, run)
        assert server.requests == 0  # refused before any call
    assert "is a FIFO (named pipe), not a regular file" in _one_line_error(result)
    if name == "records.jsonl":  # what stats reads
        assert "FIFO" in _one_line_error(CliRunner().invoke(cli, ["stats", str(run)]))


def test_open_run_file_refuses_links_fifos_and_extra_hard_links(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"mine")
    (tmp_path / "link").symlink_to(target)
    os.mkfifo(tmp_path / "fifo")
    os.link(target, tmp_path / "hard")
    for mode in ("rb", "ab", "r+b"):
        for name in ("link", "fifo"):
            with pytest.raises(Exception, match="not a regular file"):
                open_run_file(tmp_path / name, mode)
    with pytest.raises(Exception, match="hard link"):
        open_run_file(tmp_path / "hard", "ab")
    assert target.read_bytes() == b"mine"


def test_merge_only_reads_its_inputs(done_run: Path, tmp_path: Path) -> None:
    run = _copy_run(done_run, tmp_path / "in")
    (run / ".lock").write_text('{"pid": 1, "hostname": "elsewhere"}')  # a lock left by a writer
    for path in [run, *run.iterdir()]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _snapshot(run)
    try:
        result = CliRunner().invoke(cli, ["merge", str(run), "--out", str(tmp_path / "m")])
        assert result.exit_code == 0, result.output
        assert _snapshot(run) == before  # not a byte nor a timestamp changed (root ignores chmod)
        assert sorted(p.name for p in run.iterdir()) == sorted(Path(k).name for k in before)
        assert len(list(read_records(tmp_path / "m"))) == 3
    finally:
        for path in [run, *run.iterdir()]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


# == kind 3: lone surrogates =====================================================================


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("batch", [False, True])
def test_a_reply_with_a_lone_surrogate_is_kept_journaled_and_never_bought_again(
    provider: str, batch: bool, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    extra = ["--batch", "--poll-interval", "0.05"] if batch else []
    with FakeServer(hostile={"surrogate"}) as server:
        result = _generate(server, tmp_path, out, *extra, provider=provider)
        assert result.exit_code == 0, result.output
        paid = server.paid_total
        records = list(read_records(out))
        assert [r.status for r in records] == ["ok"] * 3
        assert all(r.initial_response.endswith("\ufffd") for r in records)
        calls = (out / "calls.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(calls) == paid and all("\ufffd" in json.loads(c)["text"] for c in calls)
        server.hostile = set()  # the server behaves again; nothing is left to buy
        again = _generate(server, tmp_path, out, *extra, provider=provider)
        assert again.exit_code == 0, again.output
        assert server.paid_total == paid


def test_completion_mends_a_lone_surrogate_wherever_it_is_made() -> None:
    body = json.loads('{"id": "x", "choices": [{"message": {"content": "a\\ud800b"}, '
                      '"finish_reason": "stop"}], "usage": {}}')  # fmt: skip
    assert parse_chat_completion(body).text == "a\ufffdb"
    assert Completion.from_dict({"text": "\udfff"}).text == "\ufffd"


@pytest.mark.parametrize("skip", [False, True])
def test_a_prompt_with_a_lone_surrogate_is_a_file_line_error(skip: bool, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "half \\ud800 of a pair"}\n')
    with FakeServer() as server:
        args = [
            "generate", "--constitution", str(HARMLESS), "--prompts", str(prompts),
            "--out", str(tmp_path / "run"), "--provider", "openai",
            "--base-url", server.url + "/v1", "--rounds", "1",
        ] + (["--skip-bad-lines"] if skip else [])  # fmt: skip
        result = CliRunner().invoke(cli, args)
    if skip:
        assert result.exit_code == 0, result.output
        assert len(list(read_records(tmp_path / "run"))) == 1
        assert "p.jsonl:2" in result.output
    else:
        line = _one_line_error(result)
        assert f"{prompts}:2" in line and "lone surrogate" in line and "--skip-bad-lines" in line
        assert server.requests == 0


# == kind 4: numbers from a server ===============================================================


def _position(a: object, b: object) -> list[dict]:
    return [{"token": "A", "logprob": a, "top_logprobs": [{"token": "A", "logprob": a}, {"token": "B", "logprob": b}]}]  # fmt: skip


def test_letter_probability_is_computed_in_log_space() -> None:
    assert letter_probability(_position(1000, 999)) == pytest.approx(1 / (1 + math.exp(-1)))
    assert letter_probability(_position(-1000, -1001)) == pytest.approx(1 / (1 + math.exp(-1)))
    assert letter_probability(_position(-0.1, -900)) == pytest.approx(1.0)
    for bad in (float("nan"), float("inf"), float("-inf"), 10**400, "x", None):
        assert letter_probability(_position(bad, -1.0)) is None, bad  # the vote: no_answer


@given(
    st.one_of(st.floats(), st.integers(), st.text(), st.none()),
    st.one_of(st.floats(), st.integers()),
)
def test_letter_probability_never_raises(a: object, b: object) -> None:
    p = letter_probability(_position(a, b))
    assert p is None or 0.0 <= p <= 1.0


def test_absurd_counts_are_read_as_nothing() -> None:
    for value in (10**20 * 10**400, float("inf"), float("nan"), -5, "7", True, None, [1]):
        assert clean_count(value) == 0, value
    assert clean_count(12) == 12 and clean_count(12.0) == 12
    assert Usage.from_dict({"input_tokens": "abc", "output_tokens": 1e400}).input_tokens == 0


def test_a_label_run_meeting_absurd_logprobs_and_usage_finishes(
    done_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels"
    with FakeServer(hostile={"logprobs", "usage"}) as server:
        result = _label(server, done_run, out)
        assert result.exit_code in (0, 3), result.output  # 3: some pairs got no answer
        assert "Traceback" not in result.output
        paid = server.paid_total
        labels = [json.loads(line) for line in (out / LABELS_FILE).read_text().splitlines()]
        votes = [v for label in labels for v in label["votes"]]
        assert votes and all(v["p_first"] is None or 0 <= v["p_first"] <= 1 for v in votes)
        assert any(v.get("problem") == "no_answer" for v in votes)  # NaN, Infinity, 400 digits
        server.hostile = set()
        again = _label(server, done_run, out)
        assert "Traceback" not in again.output
        assert server.paid_total == paid  # the journaled replies were used, not bought again
    for command in (["stats", str(out)], ["report", str(out), "--out", str(tmp_path / "r.html")]):
        shown = CliRunner().invoke(cli, command)
        assert shown.exit_code == 0, shown.output


def test_a_generate_run_meeting_absurd_usage_finishes_and_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeServer(hostile={"usage"}) as server:
        result = _generate(server, tmp_path, out)
        assert result.exit_code == 0, result.output
        paid = server.paid_total
        again = _generate(server, tmp_path, out)
        assert again.exit_code == 0 and server.paid_total == paid, again.output
    for command in (
        ["stats", str(out)],
        ["report", str(out)],
        ["export", str(out), "--format", "sft"],
    ):
        shown = CliRunner().invoke(cli, command)
        assert shown.exit_code == 0, shown.output


# == kind 5: run-file lines of the wrong shape ===================================================


def _spoil_line(path: Path, index: int, **fields: object) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    data = json.loads(lines[index])
    data.update(fields)
    lines[index] = json.dumps(data)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_record_of_the_wrong_shape_is_skipped_counted_and_made_again(
    done_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    _spoil_line(run / "records.jsonl", 0, rounds="abc")
    for command in (
        ["stats", str(run)],
        ["export", str(run), "--format", "sft"],
        ["report", str(run)],
    ):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert "skipped 1 line of" in result.output and "records.jsonl" in result.output
    with FakeServer() as server:
        resumed = _generate(server, tmp_path, run)
        assert resumed.exit_code == 0, resumed.output
        assert server.paid_total == 0  # remade from the journal: its calls were paid for
    assert len(list(read_records(run))) == 3


def test_a_label_line_of_the_wrong_shape_is_skipped_and_counted(
    done_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "labels"
    with FakeServer() as server:
        assert _label(server, done_run, out).exit_code == 0
    _spoil_line(out / LABELS_FILE, 0, p_a="x")
    for command in (["stats", str(out)], ["report", str(out), "--out", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
        assert "skipped 1 line of" in result.output


def test_a_batch_journal_line_of_the_wrong_shape_is_skipped(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path)
    good = {
        "event": "created",
        "id": "b1",
        "wave": 1,
        "created": 1.0,
        "token": "t",
        "custom_ids": ["x"],
    }
    journal.append(good)
    journal.append({**good, "id": "b2", "wave": None})
    journal.append({**good, "id": "b3", "custom_ids": "oops"})
    with counting_skips() as skipped:
        assert [b["id"] for b in journal.batches()] == ["b1"]
    assert sum(map(len, skipped.values())) == 2


def test_a_call_line_of_the_wrong_shape_is_not_reused(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.open()
    store.append_call("r1", "initial", {"text": "ok", "usage": {"calls": 1}})
    store.append_call("r2", "initial", {"text": 5})
    store.append_call("r3", "initial", {"text": "x", "finish_reason": "weird"})
    store.close()
    with counting_skips() as skipped:
        assert list(store.journal(set())) == [("r1", "initial")]
    assert sum(map(len, skipped.values())) == 2


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_RECORD = {"id": "r", "prompt": [{"role": "user", "content": "q"}], "rounds": [], "status": "ok"}
_LABEL = {"id": "l", "source_id": "s", "prompt": [], "response_a": "a", "response_b": "b",
          "p_a": 0.3, "votes": [{"vote": 1, "order": "ab", "p_first": 0.3, "principle": "p", "reply": "r"}],
          "position_consistent": True, "status": "ok"}  # fmt: skip
_CALL = {"id": "r", "step": "initial", "text": "t", "finish_reason": "stop", "usage": {"calls": 1}}
_BATCH = {
    "event": "created",
    "id": "b",
    "wave": 1,
    "created": 1.0,
    "token": "t",
    "custom_ids": ["x"],
}


def _read_back(tmp_path: Path, name: str, line: dict) -> list:
    path = tmp_path / name
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    if name == "records.jsonl":
        return list(read_records(tmp_path))
    if name == "batches.jsonl":
        return BatchJournal(tmp_path).batches()
    if name == "calls.jsonl":
        found = RunStore(tmp_path).journal(set())
        return [Completion.from_dict(c) for c in found.values()]
    from cai.feedback import label_stats, read_labels

    labels = read_labels(tmp_path)
    label_stats(labels)
    return labels


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(
        [
            ("records.jsonl", _RECORD),
            (LABELS_FILE, _LABEL),
            ("calls.jsonl", _CALL),
            ("batches.jsonl", _BATCH),
        ]
    ),
    st.data(),
)
def test_any_json_in_any_field_is_read_or_skipped_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, file: tuple[str, dict], data: st.DataObject
) -> None:
    name, line = file
    field = data.draw(st.sampled_from([*line, "rounds", "usage", "votes"]))
    value = data.draw(_JSON)
    tmp = tmp_path_factory.mktemp("p")
    with counting_skips() as skipped:
        read = _read_back(tmp, name, {**line, field: value})
    assert len(read) + sum(map(len, skipped.values())) == 1
    # What reads back is used whole downstream: written back, counted, reported, exported.
    if name == "records.jsonl" and read:
        from cai.report import build_report_data
        from cai.stats import compute_stats

        Record.from_dict(read[0].to_dict())
        compute_stats(read)
        build_report_data(read)
    if name == LABELS_FILE and read:
        from cai.feedback import label_pairs
        from cai.report import build_report_data

        label_pairs(read, keep_inconsistent=True)
        build_report_data([], labels=read)
    if name == "calls.jsonl" and read:
        from cai.report import build_report_data

        build_report_data([], calls=[{"step": "initial", **read[0].to_dict()}])


# == kind 9: secrets =============================================================================


@pytest.mark.parametrize("secret", ['sk-quote"and\\slash-1234', "sk-plain-abcdef123"])
def test_a_key_is_redacted_in_its_json_escaped_forms(
    secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    store = RunStore(tmp_path)
    store.open()
    store.append_call("r", "initial", {"text": f"echo {secret} and {json.dumps(secret)}"})
    store.close()
    written = (tmp_path / "calls.jsonl").read_text()
    assert "[REDACTED]" in written
    for form in (secret, json.dumps(secret)[1:-1], json.dumps(json.dumps(secret))[1:-1]):
        assert form not in written
    assert redact_secrets(repr(secret.encode())) == "b'[REDACTED]'"


def test_basic_auth_from_base_url_is_redacted_when_a_server_echoes_it(tmp_path: Path) -> None:
    user, password = "alice", "pa55-w0rd!x"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    with FakeServer(basic_auth=(user, password)) as server:
        from fake_server import Canned

        echo = {"error": {"message": f"bad header Authorization: Basic {token} ({user}:{password})", "type": "invalid_request_error"}}  # fmt: skip
        server.enqueue(Canned(status=400, body=echo), times=50)
        url = server.url.replace("http://", f"http://{user}:{password}@") + "/v1"
        args = [
            "generate", "--constitution", str(HARMLESS), "--prompts", str(_prompts(tmp_path / "p.jsonl", 2)),
            "--out", str(tmp_path / "run"), "--provider", "openai", "--base-url", url, "--rounds", "1",
        ]  # fmt: skip
        result = CliRunner().invoke(cli, args)
    assert server.requests > 0
    for path in (tmp_path / "run").iterdir():
        text = path.read_text(encoding="utf-8")
        assert token not in text and password not in text, path
    assert token not in result.output and password not in result.output


def test_a_stored_hub_token_is_a_known_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = "hf_storedTOKENnotInTheEnvironment42"
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_TOKEN_PATH", raising=False)
    (tmp_path / "token").write_text(stored + "\n")
    assert redact_secrets(f"401 for token {stored}") == "401 for token [REDACTED]"
    (tmp_path / "token").unlink()
    (tmp_path / "stored_tokens").write_text(f"[work]\nhf_token = {stored}\n")
    assert stored not in redact_secrets(f"push failed: {json.dumps({'t': stored})}")


def test_a_base_url_password_is_a_known_secret_once_a_provider_is_made() -> None:
    from cai.providers import create_provider

    create_provider("openai", base_url="http://alice:base-url-pass-9@127.0.0.1:9/v1")
    token = base64.b64encode(b"alice:base-url-pass-9").decode()
    hint = f"resume with --base-url http://alice:base-url-pass-9@host/v1 (Basic {token})"
    assert (
        redact_secrets(hint)
        == "resume with --base-url http://[REDACTED]@host/v1 (Basic [REDACTED])"
    )
    remember_secret("told-by-a-caller")
    assert redact_secrets("x told-by-a-caller y") == "x [REDACTED] y"


def test_the_batch_re_attach_hint_never_repeats_a_base_url_password(tmp_path: Path) -> None:
    from test_batch import ctrl_c_while_a_batch_is_open

    user, password = "bob", "hint-pass-77"
    with FakeServer(hold_batches=True, basic_auth=(user, password)) as server:
        url = server.url.replace("http://", f"http://{user}:{password}@") + "/v1"
        args = [
            "generate", "--constitution", str(HARMLESS), "--prompts", str(_prompts(tmp_path / "p.jsonl", 2)),
            "--out", str(tmp_path / "run"), "--provider", "openai", "--base-url", url, "--rounds", "1",
            "--batch", "--poll-interval", "0.05",
        ]  # fmt: skip
        err, _ = ctrl_c_while_a_batch_is_open(args, tmp_path / "run")
        server.hold_batches = False
    assert "To re-attach: cai generate" in err and "--base-url" in err
    assert (
        password not in err and base64.b64encode(f"{user}:{password}".encode()).decode() not in err
    )
    assert "[REDACTED]" in err


def test_batch_result_lines_of_another_shape_are_sent_again_never_a_crash() -> None:
    import asyncio
    from types import SimpleNamespace

    from cai.batch import BatchState, batch_api
    from cai.errors import ServerError
    from cai.providers import create_provider

    good = {"status_code": 200, "body": {"id": "c", "choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}], "usage": {}}}  # fmt: skip
    lines = [
        {"custom_id": "a", "response": "oops", "error": None},
        {"custom_id": "b", "response": {"status_code": "teapot", "body": "x"}, "error": None},
        {"custom_id": "c", "response": good, "error": None},
        {"custom_id": "d", "response": None, "error": ["not", "an", "object"]},
    ]
    with FakeServer() as server:
        server.files["file-hostile"] = "".join(json.dumps(x) + "\n" for x in lines).encode()
        provider = create_provider("openai", base_url=server.url + "/v1")
        raw = SimpleNamespace(status="completed", output_file_id="file-hostile", error_file_id=None)
        state = BatchState("batch_x", "completed", True, raw=raw)

        async def collect() -> dict:
            try:
                return {cid: outcome async for cid, outcome in batch_api(provider).results(state)}
            finally:
                await provider.aclose()

        outcomes = asyncio.run(collect())
    assert outcomes["c"].text == "fine"
    for cid in "abd":
        assert isinstance(outcomes[cid], ServerError) and outcomes[cid].retryable, cid


def test_batch_status_and_a_resume_say_how_many_journal_lines_they_skipped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with FakeServer() as server:
        assert _generate(server, tmp_path, out, "--batch", "--poll-interval", "0.05").exit_code == 0
        paid = server.paid_total
        with (out / "batches.jsonl").open("a") as f:
            f.write(
                json.dumps(
                    {"event": "created", "id": "batch_spoilt", "wave": None, "custom_ids": []}
                )
                + "\n"
            )
        status = CliRunner().invoke(cli, ["batch", "status", str(out)])
        assert status.exit_code == 0, status.output
        assert "skipped 1 line of" in status.output and "batches.jsonl" in status.output
        resumed = _generate(server, tmp_path, out, "--batch", "--poll-interval", "0.05")
        assert resumed.exit_code == 0, resumed.output
        assert "skipped 1 line of" in resumed.output and server.paid_total == paid


def test_label_out_refuses_a_symlinked_labels_file(done_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels"
    with FakeServer() as server:
        assert _label(server, done_run, out).exit_code == 0
        outside = tmp_path / "outside.jsonl"
        outside.write_bytes((out / LABELS_FILE).read_bytes())
        (out / LABELS_FILE).unlink()
        (out / LABELS_FILE).symlink_to(outside)
        before = outside.read_bytes()
        result = _label(server, done_run, out)
    assert "is a symbolic link, not a regular file" in _one_line_error(result)
    assert outside.read_bytes() == before


def test_a_hand_edited_lone_surrogate_in_a_record_is_mended_on_reading(
    done_run: Path, tmp_path: Path
) -> None:
    run = _copy_run(done_run, tmp_path / "run")
    _spoil_line(run / "records.jsonl", 0, initial_response="half \udc00 a pair")
    assert "\\udc00" in (run / "records.jsonl").read_text()  # written as JSON's escape
    assert any(r.initial_response == "half \ufffd a pair" for r in read_records(run))
    for command in (
        ["export", str(run), "--format", "sft"],
        ["export", str(run), "--format", "dpo", "--out", str(tmp_path / "dpo.jsonl")],
        ["report", str(run)],
        ["stats", str(run)],
    ):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
