"""The Ray engine on a local Ray instance (loopback, 2 CPUs), against the loopback fake server.

One Ray instance serves the whole module. Each test compares the Ray engine's records with the
default engine's: the fake server's replies (and its faults) are a function of the request
and of how many times that same request came before, so the same chains give the same texts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
from fake_server import PREFERENCE, PREFERRED, FakeServer
from procs import count_lines

from cai.constitution import load_constitution
from cai.errors import ConfigError
from cai.pipeline import GenerateConfig, RunStats, build_manifest, run_generation
from cai.providers import create_provider
from cai.rundir import RunStore
from cai.sources import PromptSource

ray = pytest.importorskip("ray", reason="the Ray engine needs ray: pip install 'cai[ray]'")

from cai.engines import make_engine  # noqa: E402
from cai.engines.ray import RayEngine  # noqa: E402

PROMPTS = 200
KEY = "sk-fake-key-for-ray-workers"
# Faults a retry mends: the texts depend on the request alone, however often it is sent.
RETRYABLE_FAULTS = ("429", "500", "529", "drop", "malformed")


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray instance for the module; its address, for a driver in another process."""
    # Workers are started by Ray's own processes, with this environment: the key is there.
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"Question number {i}: how do I fix thing {i}?"}) + "\n"
            for i in range(PROMPTS)
        ),
        encoding="utf-8",
    )
    return path


def _make_provider(url: str, timeout: float = 2.0):
    return partial(create_provider, "openai", model="fake-model", base_url=url, timeout=timeout)


def _generate(
    url: str,
    out: Path,
    constitution: Path,
    prompts: Path,
    *,
    engine=None,
    during=None,
    **options,
) -> RunStats:
    """One `run_generation` in this process, as the CLI runs it; `during(engine, stats)` runs
    alongside, e.g. to kill a worker."""
    config = GenerateConfig(**{"concurrency": 32, "max_retries": 6, **options})
    parsed = load_constitution(constitution)
    source = PromptSource(str(prompts))
    provider = _make_provider(url)(connections=config.concurrency)
    manifest = build_manifest(parsed, source, config, provider, count=PROMPTS)
    stats = RunStats()

    async def go() -> RunStats:
        try:
            run = run_generation(
                source,
                parsed,
                provider,
                config,
                RunStore(out),
                manifest=manifest,
                stats=stats,
                engine=engine,
            )
            if during is None:
                return await run
            result, _ = await asyncio.gather(run, during(engine, stats))
            return result
        finally:
            await provider.aclose()

    return asyncio.run(go())


def _records(run_dir: Path) -> dict[str, tuple]:
    """Each record's outcome by id; every line whole and every id once."""
    lines = (run_dir / "records.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    ids = Counter(r["id"] for r in records)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    return {
        r["id"]: (
            r["status"],
            r["initial_response"],
            r["final_response"],
            tuple(
                (x["principle"], x["critique"], x["revision"], x["problem"]) for x in r["rounds"]
            ),
        )
        for r in records
    }


def _journal_steps(run_dir: Path) -> Counter:
    lines = (run_dir / "calls.jsonl").read_text(encoding="utf-8").splitlines()
    return Counter((c["id"], c["step"]) for c in map(json.loads, lines))


def _default_records(tmp_path: Path, constitution: Path, prompts: Path, **server) -> dict:
    with FakeServer(**server) as fake:
        _generate(fake.url + "/v1", tmp_path / "default", constitution, prompts)
    return _records(tmp_path / "default")


def test_faulted_run_equals_default_engine(
    cluster: str, tmp_path: Path, mini_constitution: Path, prompts: Path
) -> None:
    server = {"fault_rate": 0.2, "seed": 3, "retry_after": 0.02, "slow_seconds": 3.0}
    with FakeServer(**server) as fake:
        _generate(fake.url + "/v1", tmp_path / "default", mini_constitution, prompts)
    expected = _records(tmp_path / "default")

    out = tmp_path / "ray"
    with FakeServer(**server) as fake:
        engine = RayEngine(_make_provider(fake.url + "/v1"), workers=2)
        stats = _generate(fake.url + "/v1", out, mini_constitution, prompts, engine=engine)
        faults = dict(fake.fault_counts)
        requests = fake.requests

    # Every fault kind happened, about one request in five, and every prompt is there once.
    assert set(faults) >= {"429", "500", "529", "drop", "malformed", "truncated", "refused"}
    assert 0.15 < sum(faults.values()) / requests < 0.25
    got = _records(out)
    assert len(got) == PROMPTS
    assert got == expected
    assert stats.retries > 0 and stats.calls == sum(_journal_steps(out).values())
    assert max(_journal_steps(out).values()) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["engine"] == "ray" and manifest["config"]["workers"] == 2
    assert manifest["status"] == "complete", manifest["counts"]
    assert manifest["counts"] == {"records": PROMPTS, "ok": PROMPTS}
    assert engine.startup_seconds is not None and len(set(engine.worker_pids)) == 2


def test_a_killed_worker_loses_nothing_and_duplicates_nothing(
    cluster: str, tmp_path: Path, mini_constitution: Path, prompts: Path
) -> None:
    server = {"latency": 0.05, "fault_rate": 0.2, "faults": RETRYABLE_FAULTS, "seed": 5}
    expected = _default_records(tmp_path, mini_constitution, prompts, **server)
    killed = []

    async def kill_one(engine: RayEngine, stats: RunStats) -> None:
        while stats.calls < 200:
            await asyncio.sleep(0.02)
        slot = engine.slots[0]
        killed.append(len(slot.assigned))
        ray.kill(slot.actor)

    out = tmp_path / "ray"
    with FakeServer(**server) as fake:
        engine = RayEngine(_make_provider(fake.url + "/v1"), workers=2)
        _generate(fake.url + "/v1", out, mini_constitution, prompts, engine=engine, during=kill_one)

    assert killed and killed[0] > 0, "the worker held prompts when it was killed"
    assert engine.deaths == 1
    assert _records(out) == expected
    # No reply was journaled twice: a redone prompt replays what came back before the kill.
    assert max(_journal_steps(out).values()) == 1
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def _sigkill_after(command: list[str], env: dict, journal: Path, calls: int) -> None:
    """Run `command` until `journal` holds `calls` lines, then SIGKILL it."""
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while count_lines(journal) < calls and first.poll() is None:
        assert time.monotonic() < deadline, "the first run made no progress"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run ended before the kill"


def test_a_killed_driver_resumes_with_the_same_command(
    cluster: str, tmp_path: Path, mini_constitution: Path, prompts: Path
) -> None:
    server = {"latency": 0.05, "fault_rate": 0.2, "faults": RETRYABLE_FAULTS, "seed": 7}
    expected = _default_records(tmp_path, mini_constitution, prompts, **server)
    out = tmp_path / "ray"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeServer(**server) as fake:
        command = [
            sys.executable, "-m", "cai", "generate", "--constitution", str(mini_constitution),
            "--prompts", str(prompts), "--provider", "openai", "--base-url", fake.url + "/v1",
            "--model", "fake-model", "--out", str(out), "--concurrency", "32",
            "--engine", "ray", "--ray-address", cluster, "--workers", "2",
        ]  # fmt: skip
        _sigkill_after(command, env, out / "calls.jsonl", 300)
        before = count_lines(out / "records.jsonl")
        assert 0 < before < PROMPTS, "killed mid-run"
        journaled = _journal_steps(out)
        requests_before = fake.requests

        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ended without cleaning up" in second.stderr
    assert f"{before} already done" in second.stderr
    assert _records(out) == expected
    steps = _journal_steps(out)
    assert max(steps.values()) == 1
    assert set(journaled) <= set(steps)
    # The second run bought only what the first had not journaled (and its retries).
    assert fake.requests - requests_before < 1.5 * (sum(steps.values()) - len(journaled)) + 50
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["engine"] == "ray" and manifest["status"] == "complete"


def test_bad_engine_options_are_one_line_errors(cluster: str) -> None:
    with pytest.raises(ConfigError, match="go with --engine ray"):
        make_engine("default", _make_provider("http://127.0.0.1:9/v1"), workers=2)
    with pytest.raises(ConfigError, match="at least 1"):
        RayEngine(_make_provider("http://127.0.0.1:9/v1"), workers=0)


def test_more_workers_than_concurrency_is_refused(
    cluster: str, tmp_path: Path, mini_constitution: Path, prompts: Path
) -> None:
    engine = RayEngine(_make_provider("http://127.0.0.1:9/v1"), workers=4)
    with pytest.raises(ConfigError, match="more than --concurrency 2"):
        _generate("http://127.0.0.1:9/v1", tmp_path / "r", mini_constitution, prompts,
                  engine=engine, concurrency=2)  # fmt: skip
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["status"] == "error"


def test_totals_are_shared_among_workers() -> None:
    from cai.engines.ray import _share, split_total

    assert [_share(33, 4, i) for i in range(4)] == [9, 8, 8, 8]
    assert split_total(600.0, 3) == 200.0 and split_total(None, 3) is None


def _gpu_reason() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "needs a GPU machine (no nvidia-smi here)"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "needs vllm (pip install vllm) on the GPU machine"
    if not os.environ.get("CAI_VLLM_MODEL"):
        return "set CAI_VLLM_MODEL to a local model directory for vLLM to serve"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")
def test_workers_call_a_vllm_server_on_the_gpu(
    cluster: str, tmp_path: Path, mini_constitution: Path
) -> None:
    """vLLM's OpenAI-compatible server on this GPU; two Ray workers send it the chains."""
    import urllib.request

    model = os.environ["CAI_VLLM_MODEL"]
    port = 8765
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
         "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "vLLM did not start"
                time.sleep(2)
        prompts = tmp_path / "p.txt"
        prompts.write_text(
            "".join(f"Give me tip number {i} for a safe kitchen.\n" for i in range(20))
        )
        url = f"http://127.0.0.1:{port}/v1"
        make = partial(create_provider, "openai", model=model, base_url=url, timeout=120.0)
        engine = RayEngine(make, workers=2, actor_options={"num_cpus": 0})
        config = GenerateConfig(concurrency=16, max_tokens=128, temperature=0.0)
        parsed = load_constitution(mini_constitution)
        provider = make(connections=16)
        store = RunStore(tmp_path / "run")
        asyncio.run(
            run_generation(PromptSource(str(prompts)), parsed, provider, config, store,
                           engine=engine)
        )  # fmt: skip
        records = _records(tmp_path / "run")
        assert len(records) == 20 and all(r[0] == "ok" and r[1] for r in records.values())
    finally:
        server.terminate()
        server.wait(60)


# -- cai label on Ray ------------------------------------------------------------------------

PAIRS = 60


def _pair_items() -> list:
    """Pairs whose second response the fake feedback model prefers (0.70, +0.15 to (A))."""
    from cai.feedback import PairItem

    return [
        PairItem(f"{i:016x}", [{"role": "user", "content": f"How do I fix thing {i}?"}],
                 [f"Fix {i} somehow.", f"{PREFERRED} answer about thing {i}."])
        for i in range(PAIRS)
    ]  # fmt: skip


def _label(url: str, out: Path, constitution: Path, items, *, engine=None, during=None,
           policy_model: str | None = None, **options):  # fmt: skip
    """One `run_labels` in this process, as the CLI runs it: the feedback model, and a policy
    model of its own when `policy_model` is given (each Ray worker makes both)."""
    from cai.engines import make_providers
    from cai.feedback import LabelConfig, LabelStats, run_labels
    from cai.rundir import LABELS_FILE

    config = LabelConfig(**{"concurrency": 16, "max_retries": 6, "votes": 2, **options})
    make_policy = policy_model and partial(
        create_provider, "openai", model=policy_model, base_url=url, timeout=2.0
    )
    if engine == "ray":
        engine = RayEngine(partial(make_providers, _make_provider(url), {"policy": make_policy}))
    provider = _make_provider(url)(connections=config.concurrency)
    policy = make_policy(connections=config.concurrency) if make_policy else None
    stats = LabelStats()

    async def go():
        try:
            run = run_labels(items, load_constitution(constitution), provider, config,
                             RunStore(out, LABELS_FILE), policy=policy, stats=stats,
                             engine=engine)  # fmt: skip
            if during is None:
                return await run
            return (await asyncio.gather(run, during(engine, stats)))[0]
        finally:
            for p in {provider, policy} - {None}:
                await p.aclose()

    return asyncio.run(go()), engine


def _labels(run_dir: Path) -> dict[str, tuple]:
    """Each label's outcome by id; every line whole and every pair once."""
    lines = [json.loads(x) for x in (run_dir / "labels.jsonl").read_text().splitlines()]
    assert Counter(x["id"] for x in lines).most_common(1)[0][1] == 1
    return {x["id"]: (x["status"], x["p_a"], x["response_a"], x["response_b"], x["votes"])
            for x in lines}  # fmt: skip


def test_labels_on_ray_equal_the_default_engine_and_cancel_the_bias(
    cluster: str, tmp_path: Path, mini_constitution: Path
) -> None:
    with FakeServer() as fake:
        _label(fake.url + "/v1", tmp_path / "default", mini_constitution, _pair_items())
        expected = _labels(tmp_path / "default")
        stats, engine = _label(fake.url + "/v1", tmp_path / "ray", mini_constitution,
                               _pair_items(), engine="ray")  # fmt: skip
    got = _labels(tmp_path / "ray")
    assert got == expected and len(got) == PAIRS
    # Both orders of each vote cancel the fake's +0.15 for (A): the unbiased 0.30 for A.
    assert all(abs(p_a - (1 - PREFERENCE)) <= 0.01 for _, p_a, *_ in got.values())
    assert stats.done == PAIRS and stats.votes == PAIRS * 4
    steps = _journal_steps(tmp_path / "ray")
    assert len(steps) == PAIRS * 4 and max(steps.values()) == 1 and stats.calls == PAIRS * 4
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["kind"] == "label" and manifest["config"]["engine"] == "ray"
    assert manifest["status"] == "complete" and len(set(engine.worker_pids)) == 2


def test_a_killed_worker_loses_no_label_and_buys_no_vote_twice(
    cluster: str, tmp_path: Path, mini_constitution: Path
) -> None:
    server = {"latency": 0.05, "fault_rate": 0.2, "faults": RETRYABLE_FAULTS, "seed": 11}
    with FakeServer(**server) as fake:
        _label(fake.url + "/v1", tmp_path / "default", mini_constitution, _pair_items())
    expected = _labels(tmp_path / "default")
    killed = []

    async def kill_one(engine: RayEngine, stats) -> None:
        while stats.calls < 60:
            await asyncio.sleep(0.02)
        slot = engine.slots[0]
        killed.append(len(slot.assigned))
        ray.kill(slot.actor)

    with FakeServer(**server) as fake:
        _, engine = _label(fake.url + "/v1", tmp_path / "ray", mini_constitution, _pair_items(),
                           engine="ray", during=kill_one)  # fmt: skip
    assert killed and killed[0] > 0, "the worker held pairs when it was killed"
    assert engine.deaths == 1
    assert _labels(tmp_path / "ray") == expected
    # Every vote journaled once: a redone pair replays what came back before the kill.
    steps = _journal_steps(tmp_path / "ray")
    assert len(steps) == PAIRS * 4 and max(steps.values()) == 1


def test_label_from_prompts_killed_driver_resumes_on_ray_with_its_policy_model(
    cluster: str, tmp_path: Path, mini_constitution: Path, prompts: Path
) -> None:
    """`cai label PROMPTS --engine ray` with a policy model of its own: SIGKILL, then resume."""
    out = tmp_path / "labels"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with FakeServer(latency=0.1) as fake:
        command = [
            sys.executable, "-m", "cai", "label", str(prompts), "--out", str(out),
            "--constitution", str(mini_constitution), "--limit", "80", "--votes", "1",
            "--provider", "openai", "--base-url", fake.url + "/v1", "--model", "fake-model",
            "--policy-model", "fake-policy", "--concurrency", "16",
            "--engine", "ray", "--ray-address", cluster, "--workers", "2",
        ]  # fmt: skip
        _sigkill_after(command, env, out / "calls.jsonl", 100)
        before = count_lines(out / "labels.jsonl")
        assert 0 < before < 80, "killed mid-run"
        journaled = _journal_steps(out)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        models = Counter(e.body.get("model") for e in fake.log)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (
        "ended without cleaning up" in second.stderr
        and f"{before} items already done" in second.stderr
    )
    labels = _labels(out)
    assert len(labels) == 80 and all(s == "ok" and p == 0.5 for s, p, *_ in labels.values())
    steps = _journal_steps(out)
    assert len(steps) == 80 * 4 and max(steps.values()) == 1 and set(journaled) <= set(steps)
    # The workers sampled the responses from the policy model and asked the feedback model.
    assert models["fake-policy"] >= 160 and models["fake-model"] >= 160
    assert set(models) == {"fake-policy", "fake-model"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["engine"] == "ray" and manifest["status"] == "complete"
