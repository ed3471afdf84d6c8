"""A loopback fake of the OpenAI Chat Completions and Anthropic Messages APIs, over real HTTP.

The real `openai.AsyncOpenAI` and `anthropic.AsyncAnthropic` SDKs talk to it, so tests run
the SDKs' own request, parsing and error code. It is a small HTTP/1.1 server on asyncio
streams (keep-alive, Content-Length bodies), light enough that benchmarks measure the client.

Endpoints:

- `POST /v1/chat/completions` - OpenAI Chat Completions (non-streaming).
- `POST /v1/messages` - Anthropic Messages (non-streaming).
- `GET /stats` - `{"requests": N, "faults": {kind: count}, "by_api": {...}, "paid": N}` as JSON.
- Batch APIs (see "Batches" below): OpenAI's `POST /v1/files` (multipart, purpose=batch),
  `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`; Anthropic's `POST /v1/messages/batches`,
  `GET /v1/messages/batches/{id}`, `POST /v1/messages/batches/{id}/cancel` and the JSONL at
  the batch's `results_url`, `GET /v1/messages/batches/{id}/results`; and both lists,
  `GET /v1/batches` (with each batch's `metadata`) and `GET /v1/messages/batches`, newest
  first on one page (the query's paging parameters are ignored).

Replies are a deterministic function of the request (never of arrival order):

- the last user turn contains "revised response only" -> a revision, "A careful, honest and
  harmless answer (variant N)." (an answer, so export's meta-text filter keeps it);
- it contains "NO CHANGES NEEDED" -> a critique; about one in three (by a hash of the
  request) ends with the line `NO CHANGES NEEDED`, so both paths of the pipeline run;
- it is a comparison (`cai label`: lines "(A) ..." and "(B) ..." after "Options:") -> the
  feedback mode below;
- otherwise -> an answer, "Answer to: <start of the last user turn>".

Feedback mode. The fake prefers the option whose text contains `PREFERRED` (as every fake
revision does) with probability `PREFERENCE` (0.70), 0.5 when both or neither do,
and adds `FIRST_BIAS` (0.15) to option (A), whichever response is shown there (both are
module settings: a test may patch them; as a process, `--preference` and `--first-bias`). With
`logprobs`/`top_logprobs` in an OpenAI request, the reply is " (A)" or " (B)" and carries
those probabilities in `logprobs.content` (the first position is " (", with no letter among
its top tokens). A chain-of-thought request ("Let's think step by step") gets reasoning that
names both options, then the more likely letter on its last line. An option containing
`NO_LETTER` gets a reply with no answer letter at all.

Usage is counted as about one token per four characters. For Anthropic, when a block of
`system` or `messages` carries `cache_control`, the tokens up to and including the last such
block are the cached prefix: the first request with a given prefix reports them as
`cache_creation_input_tokens`, later ones as `cache_read_input_tokens`.

Faults: each request is faulted with probability `fault_rate`, decided by a hash of
(seed, request body, how many times this same body was seen before), so a given prompt's
attempts fault the same way whatever order requests arrive in, and a retry can succeed.
The fault kind is drawn the same way from `faults`, a subset of `FAULTS`:

- `429` - rate limited, with `retry-after` (seconds, `retry_after`);
- `500` - internal server error;
- `529` - overloaded (Anthropic's code; the OpenAI route sends it too);
- `drop` - the connection is closed without a reply;
- `slow` - the reply comes after `slow_seconds` (set it above the client's timeout);
- `malformed` - status 200 with a body that is not JSON;
- `truncated` - a cut-off reply: `finish_reason: length` / `stop_reason: max_tokens`;
- `refused` - `finish_reason: content_filter` / `stop_reason: refusal`, empty content;
- `quota` (not drawn unless asked for) - OpenAI's 429 `insufficient_quota`, no `retry-after`.

Canned replies: `server.enqueue(Canned(status=200, body=..., headers={...}, trickle=0.05),
match="text", times=3)` answers the next requests whose body contains `match` with exactly
that reply (a body of any shape; `trickle` sends it one byte at a time), e.g. to test replies
of the wrong shape, `x-should-retry` or `retry-after` headers, or a body that never ends.

`latency` seconds are added to every request. While `hold_replies` is true, requests
wait for it to turn false before they are answered (`held` counts them; with `hold_after`
set to N, the first N requests are answered as usual), so a test can have
calls in flight for as long as it needs, whatever the machine's load. With `api_key` set, a request without
that key gets 401; with `basic_auth=(user, password)`, one without that HTTP basic auth. Request headers are never stored. Request n (1-based) carries the header
`x-request-id` (OpenAI) or `request-id` (Anthropic) `req_fake_<n:06d>`, and reply ids
`chatcmpl-fake<n:06d>` / `msg_fake<n:06d>`.

Payment. `paid` counts, by API and a hash of the request body (model, messages, sampling),
every reply a real API would bill: an interactive 200 reply, and each request of a batch that
succeeded. `paid_total` sums it; a body counted twice was bought twice.

Batches. A batch is `in_progress` for `batch_delay` seconds after it is created, and for as
long as `hold_batches` is true, or returns true for it when it is a function of the batch (a
test that must find a batch still open, however busy the machine, holds it and lets go when
it is ready), then ends when next looked at: each request, by a hash of (seed, custom_id, how many times that
custom_id was batched before), is errored with probability `batch_error_rate` (a 500
`api_error`), expired with probability `batch_expire_rate`, and otherwise answered exactly as
the interactive route would answer its body. A canceled batch ends with every request not yet
answered canceled. OpenAI's succeeded requests go to the output file, the others to the error
file (`batch_expired` / `batch_cancelled` lines with `response: null`); a batch with an
expired request ends `expired`. With `batch_duplicates`, each succeeded request's result
comes twice, an errored line first (in OpenAI's output file, a 500 line), as a hostile or
buggy provider might send it. `batches` holds the fake's view of each batch. `reset()` clears the counts and the log but not
the per-body attempt counts, so a second run against the same server draws new faults.

Hostile replies. `hostile`, a set of `HOSTILE` kinds (changeable between requests, e.g. to
let the server behave again), spoils every 200 chat reply, OpenAI's and Anthropic's, as a
broken server would: `surrogate` ends the reply text with a lone surrogate (JSON
`"\\ud800"`; batch results too); `logprobs` gives the answer letters absurd log-probabilities, drawn by a hash
of the request from 1000, a 400-digit integer, NaN, Infinity and -Infinity; `usage` sends
absurd token counts (a 400-digit integer, 1e400, a negative, a string, 1e20).

Use from tests (the server runs in a thread with its own event loop):

    with FakeServer(latency=0.01, fault_rate=0.2, seed=1) as server:
        ...  # point a client at server.url + "/v1" (OpenAI) or server.url (Anthropic)
        server.requests            # how many requests arrived
        server.log                 # one LogEntry per request (api, body, fault, status, at)
        server.fault_counts        # {"429": 3, ...}

or `await server.start_async()` / `await server.stop_async()` inside a running loop.

Or as a process (prints its base URL, e.g. http://127.0.0.1:43127, on stdout, then serves
until SIGTERM/SIGINT):

    python tests/fake_server.py --port 0 --latency 0.1 --fault-rate 0.2 \\
        --faults 429,500,drop --seed 0 [--retry-after 0.05] [--slow-seconds 30] [--log FILE]

`--log FILE` appends one JSON line per request (no headers). The OpenAI route answers for
any key; `cai generate --provider openai --base-url <URL>/v1` works against it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FAULTS",
    "FIRST_BIAS",
    "HOSTILE",
    "NO_LETTER",
    "OTHER_FAULTS",
    "PREFERENCE",
    "PREFERRED",
    "Canned",
    "FakeServer",
    "LogEntry",
    "comparison_p_first",
    "count_tokens",
    "reply_text",
]

FAULTS = ("429", "500", "529", "drop", "slow", "malformed", "truncated", "refused")
HOSTILE = ("surrogate", "logprobs", "usage")
# Log-probabilities no real server sends, written into the reply's JSON as they are.
_ABSURD_LOGPROBS = ("1000", "1" + "0" * 400, "NaN", "Infinity", "-Infinity")
_ABSURD_USAGE = ("1" + "0" * 400, "1e400", "-5", '"many"', "100000000000000000000")
# Not among the defaults: it ends a run. OpenAI's 429 for an account with no quota left.
OTHER_FAULTS = ("quota",)
NO_CHANGE = "NO CHANGES NEEDED"
# One critique in NO_CHANGE_EVERY finds nothing to change; 0: every critique asks for a
# revision (`--no-change-every 0`, e.g. for a benchmark of exactly 3 calls per prompt).
NO_CHANGE_EVERY = 3
PREFERRED = "A careful, honest and harmless"
PREFERENCE = 0.70
FIRST_BIAS = 0.15
NO_LETTER = "[no letter]"
_OPTION = re.compile(r"^\(([AB])\) (.*?)(?=^\([AB]\) |\Z)", re.MULTILINE | re.DOTALL)
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    529: "Overloaded",
}


@dataclass
class LogEntry:
    """One request as the server saw it (never its headers)."""

    n: int
    api: str  # "openai" | "anthropic" | "other"
    path: str
    body: Any
    fault: str | None
    status: int | None  # None when the connection was dropped
    at: float = 0.0  # arrival, time.monotonic()


def count_tokens(text: str) -> int:
    """The fake's tokenizer: about four characters a token, at least one for non-empty text."""
    return (len(text) + 3) // 4


def _digest(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


def reply_text(last_user: str, key: str) -> str:
    """The reply to a conversation whose last user turn is `last_user`; `key` varies it."""
    h = _digest(key)
    p_first = comparison_p_first(last_user)
    if p_first is not None:
        letter = "A" if p_first >= 0.5 else "B"
        if NO_LETTER in last_user:
            return "Both options have merits, and I cannot decide between them."
        if "step by step" in last_user:
            return f"Option (A) and option (B) differ; weighing them, one is better.\n({letter})"
        return f" ({letter})"
    if "revised response only" in last_user:
        return f"{PREFERRED} answer (variant {h % 1000})."
    if NO_CHANGE in last_user:
        critique = f"Critique {h % 1000}: the response could be clearer about its limits."
        if NO_CHANGE_EVERY and h % NO_CHANGE_EVERY == 0:
            return f"The response is fine as it stands.\n{NO_CHANGE}"
        return critique
    head = " ".join(last_user.split())[:60]
    return f"Answer to: {head}"


def comparison_p_first(last_user: str) -> float | None:
    """The fake feedback model's p(A) for a comparison prompt, or None if it is not one."""
    if "\nOptions:\n" not in last_user:
        return None
    options = dict(_OPTION.findall(last_user.split("\nOptions:\n", 1)[1]))
    if set(options) != {"A", "B"}:
        return None
    a, b = (PREFERRED in options["A"]), (PREFERRED in options["B"])
    p = 0.5 if a == b else (PREFERENCE if a else 1 - PREFERENCE)
    return min(max(p + FIRST_BIAS, 0.01), 0.99)


def _comparison_logprobs(last_user: str, k: int) -> dict[str, Any] | None:
    """OpenAI's `logprobs` of the reply " (A)" / " (B)", with `k` top tokens a position."""
    p = comparison_p_first(last_user)
    if p is None:
        return None
    if NO_LETTER in last_user:
        positions = [{" I": -0.1, " We": -2.4}, {" cannot": -0.05, " can": -3.0}]
    else:
        letter = "A" if p >= 0.5 else "B"
        positions = [
            {" (": math.log(0.98), " The": math.log(0.02)},
            {"A": math.log(p), "B": math.log(1 - p), "C": -9.0},
            {")": 0.0},
        ]
        positions[1] = dict(sorted(positions[1].items(), key=lambda t: -t[1]))
        assert max(positions[1], key=positions[1].get) == letter
    content = []
    for top in positions:
        token = max(top, key=top.get)
        content.append(
            {
                "token": token,
                "logprob": top[token],
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode())}
                    for t, lp in list(top.items())[: max(k, 1)]
                ],
            }
        )
    return {"content": content, "refusal": None}


# Red-team prompt requests (`cai prompts generate`): the last user turn asks for "exactly N
# items" as a JSON array (or, with `response_format`, an object holding one).
_REDTEAM_ASK = re.compile(r"Reply with a JSON (?:array|object)\b.*?exactly (\d+) items", re.DOTALL)
_SHOWN = re.compile(r"^\d+\. (.+)$", re.MULTILINE)
_SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "vo", "del", "pri", "gan", "fo", "ul", "bez",
              "cor", "tam", "nis", "ep", "zu", "hal", "mor")  # fmt: skip
# Repeated items are drawn from this many, so later calls repeat earlier ones.
REDTEAM_POOL = 60
REDTEAM_REFUSAL = (
    "I'm sorry, but I can't help write prompts meant to get around an assistant's safeguards."
)


def _sentence(*key: object, words: int = 10) -> str:
    out = []
    for i in range(words):
        d = _digest(*key, i)
        out.append("".join(_SYLLABLES[(d >> (5 * k)) % len(_SYLLABLES)] for k in range(2 + d % 2)))
    return " ".join(out).capitalize() + "?"


def _redteam_item(j: int, key: str, salt: object, shown: list[str], turns: bool) -> Any:
    """Item j of a reply: mostly new, else a repeat (exact, or exact once normalised), a near
    repeat of an earlier call's item, a copy of a shown example, or a blank."""
    d = _digest(key, salt, j)
    r, pool = d % 100, (d // 100) % REDTEAM_POOL
    if r < 20:
        text = _sentence("pool", pool)
        if r < 10 and (d >> 20) % 2:
            text = "  " + text.replace(" ", "  ").replace("?", "\uff1f")  # NFKC makes it "?"
        elif 10 <= r < 17:
            text = text[:-1] + " please?"
        elif r >= 17 and shown and not turns:
            text = shown[(d >> 24) % len(shown)]
    elif r < 21 and not turns:
        return "   "
    else:
        text = _sentence(key, salt, j)
    if turns:
        return [text, "I can tell you a little about that.", _sentence("turn", text, words=8)]
    return text


def redteam_reply(
    messages: list[dict[str, Any]], salt: object, structured: bool
) -> tuple[str, bool] | None:
    """(reply, refused) for a red-team prompt request, None for any other request.

    Deterministic in the messages and `salt` (the request's seed): one request in 25 is
    refused; with a seed, one in 30 is prose with no JSON (a retry, with another seed, reads);
    one in 11 has an item too many; the form varies (bare, pretty, in a code fence).
    """
    last_user = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    ask = _REDTEAM_ASK.search(last_user)
    if ask is None:
        return None
    key = "\x1f".join(f"{m.get('role')}:{_text_of(m.get('content'))}" for m in messages)
    if _digest(key, "refuse") % 25 == 0:
        return REDTEAM_REFUSAL, True
    if salt is not None and _digest(key, salt, "garble") % 30 == 0:
        return "Here are some ideas: first, ask about locks; then, ask about chemistry.", False
    turns = "(user turn, assistant turn" in last_user
    shown = _SHOWN.findall(last_user)
    count = int(ask.group(1)) + (_digest(key, salt, "extra") % 11 == 0)
    items = [_redteam_item(j, key, salt, shown, turns) for j in range(count)]
    if structured:
        return json.dumps({"prompts": items}), False
    form = _digest(key, salt, "form") % 3
    if form == 0:
        return "Here are the prompts:\n```json\n" + json.dumps(items, indent=2) + "\n```", False
    return json.dumps(items, indent=2 if form == 1 else None, ensure_ascii=False), False


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


def _reply(
    messages: list[dict[str, Any]], fault: str | None, reasons: tuple[str, str, str]
) -> tuple[str, str]:
    """The reply text and stop reason; `reasons` names (stop, cut off, refused) in the API's terms."""
    last_user = next(
        (_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    key = "\x1f".join(f"{m.get('role')}:{_text_of(m.get('content'))}" for m in messages)
    text = reply_text(last_user, key)
    if fault == "truncated":
        return text[: max(1, len(text) // 2)], reasons[1]
    if fault == "refused":
        return "", reasons[2]
    return text, reasons[0]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Canned:
    """A reply queued with `FakeServer.enqueue`: any status, headers and body (JSON-encoded
    unless bytes), optionally sent one byte every `trickle` seconds."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    trickle: float = 0.0

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


class _Trickle(bytes):
    """A reply body to send one byte every `delay` seconds."""

    def __new__(cls, data: bytes, delay: float) -> _Trickle:
        obj = super().__new__(cls, data)
        obj.delay = delay
        return obj


class FakeServer:
    """The fake API server; see the module docstring."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] | list[str] = FAULTS,
        seed: int = 0,
        retry_after: float = 0.01,
        slow_seconds: float = 30.0,
        api_key: str | None = None,
        log_path: str | None = None,
        keep_bodies: bool = True,
        basic_auth: tuple[str, str] | None = None,
        batch_delay: float = 0.0,
        batch_error_rate: float = 0.0,
        batch_expire_rate: float = 0.0,
        hold_batches: bool | Callable[[dict[str, Any]], bool] = False,
        batch_duplicates: bool = False,
        hostile: tuple[str, ...] | set[str] = (),
    ) -> None:
        unknown = set(faults) - set(FAULTS + OTHER_FAULTS)
        if unknown:
            known = FAULTS + OTHER_FAULTS
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {known}")
        self.host = host
        self.port = port
        self.latency = latency
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.seed = seed
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.api_key = api_key
        self.log_path = log_path
        self.keep_bodies = keep_bodies
        self.requests = 0
        self.log: list[LogEntry] = []
        self.fault_counts: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._cached_prefixes: set[str] = set()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._log_file: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.basic_auth = basic_auth
        self._canned: list[list[Any]] = []  # [match, Canned, times left]
        self.batch_delay = batch_delay
        self.batch_error_rate = batch_error_rate
        self.batch_expire_rate = batch_expire_rate
        self.hold_batches = hold_batches
        self.batch_duplicates = batch_duplicates
        if set(hostile) - set(HOSTILE):
            raise ValueError(f"unknown hostile kinds {sorted(set(hostile) - set(HOSTILE))}")
        self.hostile = set(hostile)
        self.hold_replies = False
        self.hold_after = 0  # hold_replies holds only the requests after this many
        self.held = 0  # requests waiting on hold_replies
        self.paid: Counter[str] = Counter()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._batched: Counter[str] = Counter()  # custom_id -> times batched
        self._ids = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start_async(self) -> None:
        if self.log_path:
            self._log_file = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop_async(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def start(self) -> FakeServer:
        """Serve from a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop_async())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-api-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget counts and the log (fault draws keep counting attempts per body)."""
        self.requests = 0
        self.log.clear()
        self.fault_counts.clear()

    # -- HTTP ------------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                reply = await self._handle(method, path, headers, body)
                if reply is None:  # a dropped connection
                    writer.transport.abort()
                    return
                status, extra, payload = reply
                trickle = payload.delay if isinstance(payload, _Trickle) else 0.0
                payload = bytes(payload)
                head_out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
                head_out += [f"{k}: {v}" for k, v in extra.items()]
                head_out += ["content-type: application/json", f"content-length: {len(payload)}"]
                head_bytes = ("\r\n".join(head_out) + "\r\n\r\n").encode("latin-1")
                if trickle:
                    writer.write(head_bytes)
                    for i in range(len(payload)):
                        writer.write(payload[i : i + 1])
                        await writer.drain()
                        await asyncio.sleep(trickle)
                else:
                    writer.write(head_bytes + payload)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # Stopping: end quietly (the streams callback reports a cancelled task as an error).
            return
        finally:
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes] | None:
        path = path.split("?", 1)[0]
        if method == "GET" and path == "/stats":
            return 200, {}, json.dumps(self.stats()).encode()
        if path.startswith(("/v1/files", "/v1/batches", "/v1/messages/batches")):
            return self._batch_route(method, path, headers, raw)
        api = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}.get(path, "other")
        self.requests += 1
        n = self.requests
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fault = self._draw_fault(raw) if api != "other" else None
        entry = LogEntry(n, api, path, body, fault, None, time.monotonic())
        self.log.append(entry)
        if fault:
            self.fault_counts[fault] += 1
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.hold_replies and n > self.hold_after:
                self.held += 1
                while self.hold_replies:
                    await asyncio.sleep(0.005)
                self.held -= 1
            if api == "other" or method != "POST":
                raise _HTTPError(404, f"no route {method} {path}")
            if self.basic_auth is not None and headers.get("authorization") != "Basic " + (
                base64.b64encode(":".join(self.basic_auth).encode()).decode()
            ):
                raise _HTTPError(401, "basic auth required")
            canned = self._take_canned(raw)
            if canned is not None:
                entry.status = canned.status
                payload = canned.payload()
                headers_out = {**self._id_header(api, n), **canned.headers}
                if canned.trickle:
                    return canned.status, headers_out, _Trickle(payload, canned.trickle)
                return canned.status, headers_out, payload
            if self.api_key is not None and self.api_key not in (
                headers.get("x-api-key"),
                headers.get("authorization", "").removeprefix("Bearer "),
            ):
                raise _HTTPError(401, "invalid api key")
            if not isinstance(body, dict):
                raise _HTTPError(400, "the request body is not a JSON object")
            if fault == "drop":
                return None
            if fault == "slow":
                await asyncio.sleep(self.slow_seconds)
            if fault == "malformed":
                entry.status = 200
                return 200, self._id_header(api, n), b'{"id": "broken", "choices": [ {"mess'
            if fault in ("429", "500", "529"):
                raise _HTTPError(int(fault), f"fake fault {fault}")
            if fault == "quota":
                raise _HTTPError(429, "You exceeded your current quota.", "insufficient_quota")
            answer = self._openai if api == "openai" else self._anthropic
            payload = answer(body, n, fault)
            self._pay(api, body)
            entry.status = 200
            return 200, self._id_header(api, n), self._spoil(api, payload, raw)
        except _HTTPError as e:
            entry.status = e.status
            extra = self._id_header(api, n)
            if e.status == 429 and e.code is None:
                extra["retry-after"] = f"{self.retry_after:g}"
            return e.status, extra, json.dumps(self._error(api, e)).encode()
        finally:
            if self._log_file is not None:
                self._log_file.write(json.dumps(asdict(entry)) + "\n")
                self._log_file.flush()
            if not self.keep_bodies:
                entry.body = None

    def enqueue(self, *replies: Canned, match: str | None = None, times: int = 1) -> FakeServer:
        """Answer the next requests whose body contains `match` (any, if None) with `replies`,
        in order, each `times` times, instead of the generated reply (auth is still checked)."""
        for reply in replies:
            self._canned.append([match, reply, times])
        return self

    def _take_canned(self, raw: bytes) -> Canned | None:
        text = raw.decode("utf-8", "replace")
        for slot in self._canned:
            match, reply, _ = slot
            if match is None or match in text:
                slot[2] -= 1
                if slot[2] <= 0:
                    self._canned.remove(slot)
                return reply
        return None

    def _draw_fault(self, raw: bytes) -> str | None:
        if not self.fault_rate or not self.faults:
            return None
        key = hashlib.sha256(raw).hexdigest()
        attempt = self._seen[key]
        self._seen[key] += 1
        h = _digest(self.seed, key, attempt)
        if (h % 1_000_000) / 1_000_000 >= self.fault_rate:
            return None
        return self.faults[(h // 1_000_000) % len(self.faults)]

    @staticmethod
    def _id_header(api: str, n: int) -> dict[str, str]:
        return {"request-id" if api == "anthropic" else "x-request-id": f"req_fake_{n:06d}"}

    @staticmethod
    def _error(api: str, e: _HTTPError) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            500: "api_error",
            529: "overloaded_error",
        }.get(e.status, "api_error")
        if api == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": str(e)}}
        return {"error": {"message": str(e), "type": kind, "code": e.code, "param": None}}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "faults": dict(self.fault_counts),
            "by_api": dict(Counter(e.api for e in self.log)),
            "paid": self.paid_total,
        }

    # -- payment and the batch APIs --------------------------------------------------------

    @property
    def paid_total(self) -> int:
        return sum(self.paid.values())

    def _pay(self, api: str, body: dict[str, Any]) -> None:
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        self.paid[f"{api}:{key}"] += 1

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids:06d}"

    def _batch_route(
        self, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        self.requests += 1
        n = self.requests
        api = "anthropic" if path.startswith("/v1/messages/") else "openai"
        entry = LogEntry(n, f"{api}-batch", path, None, None, None, time.monotonic())
        self.log.append(entry)
        try:
            if self.api_key is not None and self.api_key not in (
                headers.get("x-api-key"),
                headers.get("authorization", "").removeprefix("Bearer "),
            ):
                raise _HTTPError(401, "invalid api key")
            parts = path.strip("/").split("/")
            if api == "anthropic":
                status, payload = self._anthropic_batches(method, parts[3:], raw)
            else:
                status, payload = self._openai_batches(method, parts[1:], headers, raw)
            entry.status = status
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            return status, self._id_header(api, n), body
        except _HTTPError as e:
            entry.status = e.status
            return e.status, self._id_header(api, n), json.dumps(self._error(api, e)).encode()

    def _batch_of(self, batch_id: str, api: str) -> dict[str, Any]:
        batch = self.batches.get(batch_id)
        if batch is None or batch["api"] != api:
            raise _HTTPError(404, f"no batch {batch_id}")
        self._advance(batch)
        return batch

    def _new_batch(self, api: str, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        ids = [cid for cid, _ in requests]
        if len(set(ids)) != len(ids):
            raise _HTTPError(400, "custom_id values must be unique within a batch")
        batch = {
            "id": self._new_id("msgbatch_fake" if api == "anthropic" else "batch_fake"),
            "api": api,
            "requests": requests,
            "created": time.time(),
            "canceled": False,
            "results": None,  # custom_id -> ("succeeded", reply) | ("errored" | ...,  None)
        }
        self.batches[batch["id"]] = batch
        return batch

    def _advance(self, batch: dict[str, Any]) -> None:
        """End the batch once its delay is over (or it was canceled): decide every request."""
        if batch["results"] is not None:
            return
        held = self.hold_batches(batch) if callable(self.hold_batches) else self.hold_batches
        if not batch["canceled"] and (held or time.time() < batch["created"] + self.batch_delay):
            return
        results: dict[str, tuple[str, Any]] = {}
        for custom_id, body in batch["requests"]:
            attempt = self._batched[custom_id]
            self._batched[custom_id] += 1
            if batch["canceled"]:
                results[custom_id] = ("canceled", None)
                continue
            h = (_digest(self.seed, "batch", custom_id, attempt) % 1_000_000) / 1_000_000
            if h < self.batch_error_rate:
                results[custom_id] = ("errored", None)
            elif h < self.batch_error_rate + self.batch_expire_rate:
                results[custom_id] = ("expired", None)
            else:
                self._ids += 1
                answer = self._openai if batch["api"] == "openai" else self._anthropic
                reply = answer(body, self._ids, None)
                self._add_surrogate(batch["api"], reply)  # batch results carry it too
                results[custom_id] = ("succeeded", reply)
                self._pay(batch["api"], body)
        batch["results"] = results
        batch["ended"] = time.time()

    def _counts(self, batch: dict[str, Any]) -> Counter[str]:
        results = batch["results"]
        if results is None:
            return Counter({"processing": len(batch["requests"])})
        return Counter(kind for kind, _ in results.values())

    @staticmethod
    def _rfc3339(t: float | None) -> str | None:
        if t is None:
            return None
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

    def _listing(self, api: str, shape: Any) -> dict[str, Any]:
        """`GET .../batches`: every batch of `api`, newest first, on one page."""
        batches = [b for b in reversed(self.batches.values()) if b["api"] == api]
        for batch in batches:
            self._advance(batch)
            if api == "openai":
                self._openai_files(batch)
        data = [shape(b) for b in batches]
        ids = [b["id"] for b in data]
        return {
            "object": "list",
            "data": data,
            "has_more": False,
            "first_id": ids[0] if ids else None,
            "last_id": ids[-1] if ids else None,
        }

    def _anthropic_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts = self._counts(batch)
        ended = batch["results"] is not None
        status = "ended" if ended else ("canceling" if batch["canceled"] else "in_progress")
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                k: counts.get(k, 0)
                for k in ("processing", "succeeded", "errored", "canceled", "expired")
            },
            "created_at": self._rfc3339(batch["created"]),
            "ended_at": self._rfc3339(batch.get("ended")),
            "expires_at": self._rfc3339(batch["created"] + 86400),
            "archived_at": None,
            "cancel_initiated_at": self._rfc3339(batch.get("cancel_at")),
            "results_url": f"{self.url}/v1/messages/batches/{batch['id']}/results"
            if ended
            else None,
        }

    def _anthropic_batches(
        self, method: str, parts: list[str], raw: bytes
    ) -> tuple[int, dict[str, Any] | bytes]:
        if method == "POST" and not parts:
            body = json.loads(raw or b"null")
            requests = body.get("requests") if isinstance(body, dict) else None
            if not isinstance(requests, list) or not requests:
                raise _HTTPError(400, "requests: a non-empty list is required")
            if not all(
                re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(r.get("custom_id"))) for r in requests
            ):
                raise _HTTPError(400, "custom_id must match ^[a-zA-Z0-9_-]{1,64}$")
            pairs = [(r["custom_id"], r["params"]) for r in requests]
            return 200, self._anthropic_batch(self._new_batch("anthropic", pairs))
        if method == "GET" and not parts:
            return 200, self._listing("anthropic", self._anthropic_batch)
        if not parts:
            raise _HTTPError(404, "no such route")
        batch = self._batch_of(parts[0], "anthropic")
        if method == "GET" and len(parts) == 1:
            return 200, self._anthropic_batch(batch)
        if method == "POST" and parts[1:] == ["cancel"]:
            if batch["results"] is None:
                batch["canceled"], batch["cancel_at"] = True, time.time()
            return 200, self._anthropic_batch(batch)
        if method == "GET" and parts[1:] == ["results"]:
            if batch["results"] is None:
                raise _HTTPError(400, f"batch {batch['id']} is still processing")
            lines = []
            for custom_id, (kind, reply) in batch["results"].items():
                if kind == "succeeded" and self.batch_duplicates:
                    error = {"type": "error", "error": {"type": "api_error", "message": "dup"}}
                    lines.append(
                        json.dumps(
                            {"custom_id": custom_id, "result": {"type": "errored", "error": error}}
                        )
                    )
                result: dict[str, Any] = {"type": kind}
                if kind == "succeeded":
                    result["message"] = reply
                elif kind == "errored":
                    result["error"] = {
                        "type": "error",
                        "error": {"type": "api_error", "message": "fake batch error"},
                    }
                lines.append(json.dumps({"custom_id": custom_id, "result": result}))
            return 200, ("\n".join(lines) + "\n").encode()
        raise _HTTPError(404, "no such route")

    def _openai_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts = self._counts(batch)
        results = batch["results"]
        if results is None:
            status = "cancelling" if batch["canceled"] else "in_progress"
        elif batch["canceled"]:
            status = "cancelled"
        else:
            status = "expired" if counts.get("expired") else "completed"
        return {
            "id": batch["id"],
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": batch["input_file_id"],
            "completion_window": "24h",
            "status": status,
            "output_file_id": batch.get("output_file_id"),
            "error_file_id": batch.get("error_file_id"),
            "created_at": int(batch["created"]),
            "completed_at": int(batch["ended"]) if results is not None else None,
            "cancelled_at": int(batch["ended"]) if batch["canceled"] and results else None,
            "request_counts": {
                "total": len(batch["requests"]),
                "completed": counts.get("succeeded", 0),
                "failed": sum(v for k, v in counts.items() if k not in ("succeeded", "processing")),
            },
            "metadata": batch.get("metadata"),
        }

    def _openai_files(self, batch: dict[str, Any]) -> None:
        """Write the output and error files of an ended batch, once."""
        if batch["results"] is None or "files_written" in batch:
            return
        batch["files_written"] = True
        out, err = [], []
        for custom_id, (kind, reply) in batch["results"].items():
            line: dict[str, Any] = {"id": self._new_id("batch_req_"), "custom_id": custom_id}
            if kind == "succeeded":
                if self.batch_duplicates:
                    body = {"error": {"message": "dup", "type": "server_error"}}
                    failed = {"status_code": 500, "request_id": line["id"], "body": body}
                    out.append({**line, "response": failed, "error": None})
                response = {"status_code": 200, "request_id": line["id"], "body": reply}
                out.append({**line, "response": response, "error": None})
            elif kind == "errored":
                body = {"error": {"message": "fake batch error", "type": "server_error"}}
                response = {"status_code": 500, "request_id": line["id"], "body": body}
                err.append({**line, "response": response, "error": None})
            else:
                code = "batch_expired" if kind == "expired" else "batch_cancelled"
                message = f"This request was not run ({kind})."
                err.append({**line, "response": None, "error": {"code": code, "message": message}})
        for name, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                file_id = self._new_id("file-fake")
                self.files[file_id] = "".join(json.dumps(x) + "\n" for x in lines).encode()
                batch[name] = file_id

    def _openai_batches(
        self, method: str, parts: list[str], headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any] | bytes]:
        if parts[:1] == ["files"]:
            if method == "POST" and len(parts) == 1:
                fields = _multipart(headers.get("content-type", ""), raw)
                if fields.get("purpose") != b"batch" or "file" not in fields:
                    raise _HTTPError(400, "a file with purpose=batch is required")
                file_id = self._new_id("file-fake")
                self.files[file_id] = fields["file"]
                return 200, {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(fields["file"]),
                    "created_at": int(time.time()),
                    "filename": "batch.jsonl",
                    "purpose": "batch",
                }
            if method == "GET" and len(parts) == 3 and parts[2] == "content":
                if parts[1] not in self.files:
                    raise _HTTPError(404, f"no file {parts[1]}")
                return 200, self.files[parts[1]]
            raise _HTTPError(404, "no such route")
        parts = parts[1:]
        if method == "POST" and not parts:
            body = json.loads(raw or b"null")
            file_id = body.get("input_file_id") if isinstance(body, dict) else None
            if file_id not in self.files or body.get("endpoint") != "/v1/chat/completions":
                raise _HTTPError(400, "input_file_id and endpoint /v1/chat/completions required")
            pairs = []
            for line in self.files[file_id].decode().splitlines():
                item = json.loads(line)
                if item.get("method") != "POST" or item.get("url") != "/v1/chat/completions":
                    raise _HTTPError(400, f"bad line in {file_id}: {line[:80]}")
                pairs.append((item["custom_id"], item["body"]))
            batch = self._new_batch("openai", pairs)
            batch["input_file_id"], batch["metadata"] = file_id, body.get("metadata")
            return 200, self._openai_batch(batch)
        if method == "GET" and not parts:
            return 200, self._listing("openai", self._openai_batch)
        if not parts:
            raise _HTTPError(404, "no such route")
        batch = self._batch_of(parts[0], "openai")
        if method == "POST" and parts[1:] == ["cancel"]:
            if batch["results"] is None:
                batch["canceled"] = True
                self._advance(batch)
        elif not (method == "GET" and len(parts) == 1):
            raise _HTTPError(404, "no such route")
        self._openai_files(batch)
        return 200, self._openai_batch(batch)

    def _add_surrogate(self, api: str, payload: dict[str, Any]) -> None:
        if "surrogate" not in self.hostile:
            return
        if api == "openai":
            message = payload["choices"][0]["message"]
            message["content"] = (message["content"] or "") + "\ud800"
        elif payload["content"]:
            payload["content"][0]["text"] += "\ud800"

    def _spoil(self, api: str, payload: dict[str, Any], raw: bytes) -> bytes:
        """The reply's JSON, spoiled as `hostile` says (module docstring)."""
        d = _digest("hostile", raw)
        self._add_surrogate(api, payload)
        marks: dict[str, str] = {}
        if "usage" in self.hostile:
            names = (
                ("prompt_tokens", "completion_tokens")
                if api == "openai"
                else ("input_tokens", "output_tokens")
            )
            for i, name in enumerate(names):
                mark = f"@@usage{i}@@"
                payload["usage"][name] = mark
                marks[json.dumps(mark)] = _ABSURD_USAGE[(d + i) % len(_ABSURD_USAGE)]
        logprobs = payload["choices"][0].get("logprobs") if api == "openai" else None
        if "logprobs" in self.hostile and logprobs:
            for position in logprobs["content"]:
                for entry in [position, *position["top_logprobs"]]:
                    if entry["token"] in ("A", "B"):
                        mark = f"@@logprob{len(marks)}@@"
                        marks[json.dumps(mark)] = _ABSURD_LOGPROBS[
                            (d + len(marks)) % len(_ABSURD_LOGPROBS)
                        ]
                        entry["logprob"] = mark
        text = json.dumps(payload)  # ASCII: a lone surrogate goes out as "\ud800"
        for mark, value in marks.items():
            text = text.replace(mark, value)
        return text.encode()

    # -- the two APIs ----------------------------------------------------------------------

    def _openai(self, body: dict[str, Any], n: int, fault: str | None) -> dict[str, Any]:
        messages = body.get("messages") or []
        text, finish = _reply(messages, fault, ("stop", "length", "content_filter"))
        red = redteam_reply(messages, body.get("seed"), "response_format" in body)
        refusal = None
        if red is not None:
            text = {"length": red[0][: len(red[0]) // 2], "content_filter": ""}.get(finish, red[0])
            if red[1] and finish == "stop" and "response_format" in body:
                text, refusal = None, red[0]  # structured output refuses in its own field
        logprobs = None
        if body.get("logprobs") and finish == "stop":
            last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
            logprobs = _comparison_logprobs(
                _text_of(last.get("content")), int(body.get("top_logprobs") or 0)
            )
        prompt_tokens = sum(count_tokens(_text_of(m.get("content"))) for m in messages)
        completion_tokens = count_tokens(text or refusal or "")
        return {
            "id": f"chatcmpl-fake{n:06d}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": refusal},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _anthropic(self, body: dict[str, Any], n: int, fault: str | None) -> dict[str, Any]:
        system = body.get("system") or []
        blocks = [system] if isinstance(system, str) else list(system)
        for m in body.get("messages") or []:
            content = m.get("content")
            blocks += [content] if isinstance(content, str) else list(content or [])
        texts = [_text_of([b]) if isinstance(b, dict) else str(b) for b in blocks]
        marked = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
        prefix_end = marked[-1] + 1 if marked else 0
        prefix_tokens = sum(count_tokens(t) for t in texts[:prefix_end])
        rest_tokens = sum(count_tokens(t) for t in texts[prefix_end:])
        cache_read = cache_write = 0
        if prefix_end:
            prefix_key = hashlib.sha256(json.dumps(blocks[:prefix_end]).encode()).hexdigest()
            if prefix_key in self._cached_prefixes:
                cache_read = prefix_tokens
            else:
                self._cached_prefixes.add(prefix_key)
                cache_write = prefix_tokens
        text, stop = _reply(
            body.get("messages") or [], fault, ("end_turn", "max_tokens", "refusal")
        )
        red = redteam_reply(body.get("messages") or [], None, False)
        if red is not None:
            text = {"max_tokens": red[0][: len(red[0]) // 2], "refusal": ""}.get(stop, red[0])
        return {
            "id": f"msg_fake{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "fake"),
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {
                "input_tokens": rest_tokens,
                "output_tokens": count_tokens(text),
                "cache_creation_input_tokens": cache_write,
                "cache_read_input_tokens": cache_read,
            },
        }


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, by name."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if match is None:
        raise _HTTPError(400, "not a multipart/form-data body")
    fields = {}
    for part in raw.split(b"--" + match.group(1).encode())[1:]:
        head, _, data = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name is not None:
            fields[name.group(1).decode()] = data.removesuffix(b"\r\n")
    return fields


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic API server (loopback).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each reply")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=0.01)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    parser.add_argument("--api-key", default=None, help="require this key (else any key)")
    parser.add_argument("--log", default=None, help="append one JSON line per request here")
    parser.add_argument(
        "--no-change-every",
        type=int,
        default=3,
        help="one critique in N finds nothing to change (0: none)",
    )
    parser.add_argument(
        "--preference",
        type=float,
        default=PREFERENCE,
        help="feedback mode: probability that the option holding PREFERRED is better",
    )
    parser.add_argument(
        "--first-bias",
        type=float,
        default=FIRST_BIAS,
        help="feedback mode: added to the option shown first, whichever it is",
    )
    args = parser.parse_args(argv)
    globals()["NO_CHANGE_EVERY"] = args.no_change_every
    globals()["PREFERENCE"], globals()["FIRST_BIAS"] = args.preference, args.first_bias
    server = FakeServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        fault_rate=args.fault_rate,
        faults=[f for f in args.faults.split(",") if f],
        seed=args.seed,
        retry_after=args.retry_after,
        slow_seconds=args.slow_seconds,
        api_key=args.api_key,
        log_path=args.log,
        keep_bodies=False,
    )

    async def serve() -> None:
        await server.start_async()
        print(server.url, flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await server.stop_async()

    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
