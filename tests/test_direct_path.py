"""The OpenAI provider's direct aiohttp path (cai/providers/direct.py) against the SDK's own path.

Every reply below goes once through each path, each against its own fresh fake server (so
request ids match), and must come out the same: the same completion, or the same error -
kind, status, request id, message, `retry-after` and `x-should-retry`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import asdict
from email.utils import formatdate
from typing import Any

import pytest
from fake_server import Canned, FakeServer

from cai import errors
from cai.providers.base import Completion, Sampling, Usage
from cai.providers.direct import _encode_stdlib, encode_body
from cai.providers.openai import OpenAIProvider
from cai.records import Record, Round

SAMPLING = Sampling(temperature=0.5, max_tokens=64)
HELLO = [{"role": "user", "content": "Tell me about bread, café \u2028 naïve."}]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    for name in ("OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _sdk_http_client() -> Any:
    import openai

    return openai.DefaultAioHttpClient()


async def _call(provider: OpenAIProvider, *, direct: bool) -> Completion | errors.ProviderError:
    try:
        assert (provider._direct_post("/chat/completions") is not None) == direct
        return await provider.complete(HELLO, SAMPLING, seed=7)
    except errors.ProviderError as e:
        return e
    finally:
        await provider.aclose()


def _both(canned: list[Canned] | None = None, **server: Any) -> list[Any]:
    """The outcome of one call through each path, with the body the server received."""
    outcomes = []
    for direct in (True, False):
        with FakeServer(**server) as fake:
            for reply in canned or []:
                fake.enqueue(reply)
            kwargs = {} if direct else {"http_client": _sdk_http_client()}
            provider = OpenAIProvider("gpt-test", base_url=fake.url + "/v1", timeout=5, **kwargs)
            outcome = asyncio.run(_call(provider, direct=direct))
            body = fake.log[0].body if fake.log else None
        outcomes.append((outcome, body))
    return outcomes


def _same(a: Any, b: Any) -> None:
    if isinstance(a, Completion):
        assert isinstance(b, Completion) and a.to_dict() == b.to_dict()
        return
    assert type(a) is type(b), (a, b)
    da, db = a.to_dict(), b.to_dict()
    ra, rb = da.pop("retry_after", None), db.pop("retry_after", None)
    assert da == db
    # An HTTP-date retry-after is counted from the moment each reply was read.
    assert (ra is None) == (rb is None) and (ra is None or abs(ra - rb) < 2.0)
    assert a.retryable == b.retryable


def _error(status: int, message: str = "no", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


CASES = {
    "ok": [],
    "400": [Canned(400, _error(400, "bad request"))],
    "400 x-should-retry": [Canned(400, _error(400), headers={"x-should-retry": "true"})],
    "401": [Canned(401, _error(401, "bad key"))],
    "403": [Canned(403, _error(403))],
    "404": [Canned(404, _error(404, "no such model"))],
    "408": [Canned(408, _error(408))],
    "409": [Canned(409, _error(409))],
    "422": [Canned(422, _error(422))],
    "429 seconds": [Canned(429, _error(429), headers={"retry-after": "2"})],
    "429 ms": [Canned(429, _error(429), headers={"retry-after-ms": "1500"})],
    "429 date": [
        Canned(429, _error(429), headers={"retry-after": formatdate(time.time() + 30, usegmt=True)})
    ],
    "429 quota": [Canned(429, _error(429, "quota", code="insufficient_quota"))],
    "500 x-should-retry false": [Canned(500, _error(500), headers={"x-should-retry": "false"})],
    "502 html": [Canned(502, b"<html>bad gateway</html>")],
    "503": [Canned(503, _error(503))],
    "529": [Canned(529, {"type": "error", "error": {"type": "overloaded_error"}})],
    "200 not json": [Canned(200, b'{"id": "x", "choices": [ {"mess')],
    "200 wrong shape": [Canned(200, {"id": "x", "choices": []})],
}


@pytest.mark.parametrize("case", list(CASES))
def test_both_paths_give_the_same_outcome(case: str) -> None:
    (direct, direct_body), (sdk, sdk_body) = _both(CASES[case])
    _same(direct, sdk)
    assert direct_body == sdk_body and direct_body is not None


@pytest.mark.parametrize("fault", ["drop", "slow"])
def test_transport_faults_give_the_same_kind(fault: str) -> None:
    (direct, _), (sdk, _) = _both(fault_rate=1.0, faults=[fault], slow_seconds=10)
    _same(direct, sdk)
    expected = {"drop": errors.APIConnectionError, "slow": errors.APITimeoutError}[fault]
    assert type(direct) is expected and direct.retryable


def test_a_refused_connection_names_the_address() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    outcomes = []
    for direct in (True, False):
        kwargs = {} if direct else {"http_client": _sdk_http_client()}
        provider = OpenAIProvider("m", base_url=f"http://127.0.0.1:{port}/v1", **kwargs)
        outcomes.append(asyncio.run(_call(provider, direct=direct)))
    _same(*outcomes)
    assert isinstance(outcomes[0], errors.ConnectionRefused)
    assert f"127.0.0.1:{port}" in str(outcomes[0])


def test_the_key_and_basic_auth_are_sent() -> None:
    with FakeServer(api_key="sk-openai-test") as fake:
        completion = asyncio.run(_call(OpenAIProvider("m", base_url=fake.url + "/v1"), direct=True))
    assert isinstance(completion, Completion)
    with FakeServer(basic_auth=("user", "p@ss")) as fake:
        url = fake.url.replace("http://", "http://user:p%40ss@") + "/v1"
        completion = asyncio.run(_call(OpenAIProvider("m", base_url=url), direct=True))
    assert isinstance(completion, Completion)


def test_a_proxy_in_the_environment_leaves_the_call_to_the_sdk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    provider = OpenAIProvider("m", base_url="http://api.example.invalid/v1")
    assert provider._direct_post("/chat/completions") is None


def test_bodies_are_encoded_as_the_sdk_encodes_them() -> None:
    import openai
    from openai._models import FinalRequestOptions

    provider = OpenAIProvider("m", base_url="http://127.0.0.1:9/v1")
    body = provider.request_body(HELLO, SAMPLING, seed=7)
    client = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1")
    options = FinalRequestOptions.construct(method="post", url="/chat/completions", json_data=body)
    sent = client._build_request(options).content
    assert _encode_stdlib(body) == sent
    assert json.loads(encode_body(body)) == json.loads(sent)


def test_spelled_out_to_dicts_match_asdict() -> None:
    for sampling in (Sampling(), Sampling(0.1, 5, 0.9, 3)):
        expected = {k: v for k, v in asdict(sampling).items() if v is not None}
        assert sampling.to_dict() == expected and list(sampling.to_dict()) == list(expected)
    usage = Usage(1, 2, 3, 4, 5)
    assert usage.to_dict() == asdict(usage) and list(usage.to_dict()) == list(asdict(usage))
    record = Record(
        id="r1",
        prompt=[{"role": "user", "content": "hi"}],
        rounds=[Round(1, "harm", "critique?", "fine\nNO CHANGES NEEDED", skipped=True)],
        sampling={"temperature": 0.5},
        error={"kind": "server_error", "status": 500, "details": {"ids": [1, 2]}},
        timings={"seconds": 1.5},
    )
    data = record.to_dict()
    assert json.dumps(data) == json.dumps(asdict(record))  # same keys, same order, same values
    data["prompt"][0]["content"] = "changed"
    data["error"]["details"]["ids"].append(3)
    data["rounds"][0]["critique"] = "changed"
    assert record.prompt[0]["content"] == "hi" and record.error["details"]["ids"] == [1, 2]
    assert record.rounds[0].critique.startswith("fine")
