"""`--max-cost`: against the loopback fake, with a price table entry for its model, a third of a
full run's cost stops the run with exit 4 having spent no more than that, and a budget that
covers the run (the dry run's high estimate) finishes it within that budget; for `cai
generate`, `cai label` and `--batch`. The dry run prices `--batch` at half."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fake_server import FakeServer

import cai
from cai.cli import cli
from cai.ledger import BudgetExhausted, read_ledger

MODEL = "fake-gpt"
PRICE = {"input": 1.0, "output": 4.0}  # USD per million tokens


@pytest.fixture
def setup(tmp_path: Path, mini_constitution: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"models": {MODEL: PRICE}}))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Question {i}: is this safe?"}) + "\n" for i in range(12))
    )
    return {
        "dir": tmp_path,
        "prices": prices,
        "prompts": prompts,
        "constitution": mini_constitution,
    }


def _generate(server: FakeServer, s: dict, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "generate", "--constitution", str(s["constitution"]), "--prompts", str(s["prompts"]),
        "--provider", "openai", "--model", MODEL, "--base-url", server.url + "/v1",
        "--price-table", str(s["prices"]), "--rounds", "1", "--max-tokens", "64",
        "--concurrency", "4", "--out", str(out), *extra,
    ])  # fmt: skip


def _label(server: FakeServer, s: dict, run: Path, out: Path, *extra: str) -> Result:
    return CliRunner().invoke(cli, [
        "label", str(run), "--out", str(out), "--provider", "openai", "--model", MODEL,
        "--base-url", server.url + "/v1", "--price-table", str(s["prices"]), "--votes", "2",
        "--concurrency", "4", *extra,
    ])  # fmt: skip


def _dry_run_high(result: Result) -> float:
    """The dry run's high estimate, in USD."""
    assert result.exit_code == 0, result.output
    found = re.search(r"to \$([\d.]+) \(|Estimated cost: \$([\d.]+) at most", result.stdout)
    assert found, result.stdout
    return float(found.group(1) or found.group(2))


def _spent(run: Path) -> float:
    cost = read_ledger(run).cost_usd
    assert cost is not None
    return cost


def _check_stopped(result: Result, run: Path, budget: float) -> float:
    assert result.exit_code == 4, result.output
    assert "Stopped at --max-cost" in result.stderr
    assert "same command with a higher --max-cost" in result.stderr
    spent = _spent(run)
    assert 0 < spent <= budget
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["stats"]["budget"]["stopped"] is True
    assert manifest["stats"]["budget"]["spent_usd"] == pytest.approx(spent, abs=1e-6)
    return spent


def test_generate_stops_at_a_third_and_finishes_within_a_budget_that_covers_it(
    setup: dict,
) -> None:
    s = setup
    with FakeServer() as server:
        full = s["dir"] / "full"
        assert _generate(server, s, full).exit_code == 0
        cost = _spent(full)
        high = _dry_run_high(_generate(server, s, s["dir"] / "unused", "--dry-run"))
        assert cost < high

        run = s["dir"] / "run"
        third = cost / 3
        _check_stopped(_generate(server, s, run, "--max-cost", f"{third:.8f}"), run, third)
        # Resumed under the same budget: what was spent counts, so nothing more is sent.
        before = server.requests
        again = _generate(server, s, run, "--max-cost", f"{third:.8f}")
        assert again.exit_code == 4, again.output
        assert server.requests == before and _spent(run) <= third

        done = _generate(server, s, run, "--max-cost", f"{high:.8f}")
    assert done.exit_code == 0, done.output
    assert _spent(run) <= high
    records = [json.loads(x) for x in (run / "records.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["status"] == "ok" for r in records)
    # Nothing was bought twice: the stopped run and its resumes cost what one run costs.
    assert _spent(run) == pytest.approx(cost)
    assert "The run in all" in done.stderr


def test_label_stops_at_a_third_and_finishes_within_a_budget_that_covers_it(setup: dict) -> None:
    s = setup
    with FakeServer() as server:
        source = s["dir"] / "source"
        assert _generate(server, s, source).exit_code == 0
        full = s["dir"] / "labels-full"
        result = _label(server, s, source, full)
        assert result.exit_code == 0, result.output
        cost = _spent(full)
        high = _dry_run_high(_label(server, s, source, s["dir"] / "unused", "--dry-run"))
        batched = _label(server, s, source, s["dir"] / "unused", "--dry-run", "--batch")
        assert "Priced at the batch rate (half" in batched.stdout
        assert _dry_run_high(batched) == pytest.approx(high / 2, abs=1e-4)

        run = s["dir"] / "labels"
        third = cost / 3
        _check_stopped(_label(server, s, source, run, "--max-cost", f"{third:.8f}"), run, third)
        done = _label(server, s, source, run, "--max-cost", f"{high:.8f}")
    assert done.exit_code == 0, done.output
    assert _spent(run) <= high
    assert _spent(run) == pytest.approx(cost)
    assert read_ledger(run).to_dict()["by_step"].keys() == {"vote"}


def test_batch_dry_run_is_half_and_a_batch_run_keeps_the_budget(setup: dict) -> None:
    s = setup
    with FakeServer() as server:
        interactive = _generate(server, s, s["dir"] / "unused", "--dry-run")
        batched = _generate(server, s, s["dir"] / "unused", "--dry-run", "--batch")
        assert "at the batch rate (half" in batched.stdout
        assert _dry_run_high(batched) == pytest.approx(_dry_run_high(interactive) / 2, abs=1e-4)
        low = re.search(r"Cost: \$([\d.]+) to", batched.stdout)
        assert low and float(low.group(1)) <= _dry_run_high(batched)  # one round: low == high

        poll = ("--batch", "--poll-interval", "0.05")
        full = s["dir"] / "full"
        assert _generate(server, s, full, *poll).exit_code == 0
        cost = _spent(full)
        assert read_ledger(full).to_dict()["by_mode"].keys() == {"batch"}
        run = s["dir"] / "run"
        third = cost / 3
        result = _generate(server, s, run, *poll, "--max-cost", f"{third:.8f}")
        _check_stopped(result, run, third)
        high = _dry_run_high(batched)
        done = _generate(server, s, run, *poll, "--max-cost", f"{high:.8f}")
    assert done.exit_code == 0, done.output
    assert _spent(run) <= high
    assert _spent(run) == pytest.approx(cost)


def test_max_cost_without_a_price_is_refused_before_any_call(setup: dict) -> None:
    s = setup
    with FakeServer() as server:
        result = CliRunner().invoke(cli, [
            "generate", "--constitution", str(s["constitution"]), "--prompts", str(s["prompts"]),
            "--provider", "openai", "--model", "unpriced-model", "--base-url", server.url + "/v1",
            "--out", str(s["dir"] / "run"), "--max-cost", "1",
        ])  # fmt: skip
        assert server.requests == 0
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "unpriced-model" in line and "--price-table FILE" in line


def test_the_python_api_takes_max_cost(setup: dict) -> None:
    s = setup
    options = {
        "provider": "openai",
        "model": MODEL,
        "rounds": 1,
        "max_tokens": 64,
        "price_table": s["prices"],
        "progress": False,
    }
    with FakeServer() as server:
        options["base_url"] = server.url + "/v1"
        full = cai.generate(s["prompts"], s["constitution"], out=s["dir"] / "full", **options)
        third = _spent(full.dir) / 3
        with pytest.raises(BudgetExhausted, match="higher --max-cost") as stopped:
            cai.generate(
                s["prompts"], s["constitution"], out=s["dir"] / "run", max_cost=third, **options
            )
    assert Path(stopped.value.run_dir) == s["dir"] / "run"
    assert _spent(s["dir"] / "run") <= third


def test_max_cost_is_refused_where_this_process_cannot_hold_calls_back() -> None:
    """An engine's workers call from other processes: --max-cost cannot be kept there."""
    from fakes import FakeProvider

    from cai.ledger import CallPricer
    from cai.pipeline import Job, check_prices
    from cai.pricing import Price, PriceTable

    provider = FakeProvider()
    job = Job(kind="generate", settings={}, provider=provider, chain=lambda *a: None)
    priced = CallPricer(PriceTable({provider.model: Price(1.0, 2.0)}))
    check_prices(job, priced)  # a priced model in this process: fine
    with pytest.raises(cai.errors.ConfigError, match="drop --engine, or drop --max-cost"):
        check_prices(job, priced, engine=object())
    with pytest.raises(cai.errors.ConfigError, match="--price-table FILE"):
        check_prices(job, CallPricer(PriceTable({})))
