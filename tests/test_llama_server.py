"""`cai generate --provider openai --base-url` against a real OpenAI-compatible server:
llama-cpp-python's own server, running the bundled SmolLM2 model on a loopback port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cai.providers.local import bundled_model_path

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"llama_cpp.server did not answer at {url} within {seconds:.0f}s")


# llama.cpp's server loads its model with the same setting as cai's local provider, so it runs
# on CPUs that advertise AMX but trap on it (tests/test_local_cpu.py).
_SERVE = """\
import runpy
from cai.providers.local import llama_load_params, use_extra_buffers
with llama_load_params(use_extra_buffers()):
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def llama_server(tmp_path: Path):
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")
    port = _free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SERVE,
            "--model",
            str(bundled_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_generate_against_llama_cpp_server(llama_server: str, tmp_path: Path, root: Path) -> None:
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cai",
            "generate",
            "--constitution",
            str(root / "constitutions" / "harmless.md"),
            "--prompts",
            str(root / "examples" / "red_team_prompts.jsonl"),
            "--provider",
            "openai",
            "--base-url",
            llama_server + "/v1",
            "--limit",
            "2",
            "--rounds",
            "1",
            "--max-tokens",
            "48",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len({r["id"] for r in records}) == 2
    for record in records:
        assert record["status"] == "ok"
        assert record["provider"] == "openai"
        assert record["initial_response"].strip()
        assert record["initial_finish_reason"] in ("stop", "length")
        assert len(record["rounds"]) == 1
        round_ = record["rounds"][0]
        assert round_["critique"].strip() or round_["problem"] == "empty"
        usage = record["usage"]
        assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
        assert usage["calls"] in (2, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["config"]["base_url"] == llama_server + "/v1"
    assert "Done in" in result.stderr and "2 records written, 0 failed" in result.stderr
