"""What the `openai` and `anthropic` SDK providers share: the HTTP client, the API key, the
whole-call deadline, and the mapping of SDK errors to `cai.errors` kinds.

Both SDKs are generated from the same template, so their exception classes share names.
Retry decisions follow the SDKs' own rules (408, 409, 429 and 5xx are retried; a server's
`x-should-retry` header wins; `retry-after-ms` and `retry-after`, in seconds or as an HTTP
date, say how long to wait), but the retries themselves are `cai.retry`'s.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import importlib
import importlib.util
import os
import time
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit, urlunsplit

from cai import errors
from cai.providers.base import Completion, Provider, ProviderInfo, Sampling
from cai.providers.direct import DirectPost
from cai.redact import remember_secret

__all__ = [
    "SDKProvider",
    "api_key",
    "make_http_client",
    "parse_retry_after",
    "split_credentials",
    "translate_sdk_error",
]

_deadline = getattr(asyncio, "timeout", None)

# Compatible servers take any key; the SDKs insist on one.
_NO_KEY = "no-key-needed"


def api_key(info: ProviderInfo, base_url: str | None) -> str:
    """The provider's key from its environment variable; `MissingKeyError` when there is none.

    An OpenAI-compatible server (`--base-url`) may need no key: a placeholder is sent.
    """
    key = os.environ.get(info.key_variable or "", "").strip()
    if key:
        return key
    if base_url and not info.key_required_with_base_url:
        return _NO_KEY
    hint = (
        ""
        if info.key_required_with_base_url
        else ", or pass --base-url for a server that needs none"
    )
    raise errors.MissingKeyError(f"No key found - set {info.key_variable}{hint}")


def split_credentials(url: str | None) -> tuple[str | None, tuple[str, str] | None]:
    """`url` without `user:password@`, and the (user, password) it held, if any."""
    if not url:
        return url, None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    # Whatever echoes them later (a server's error, a hint that repeats the URL) is redacted.
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    # With no password, the user is the credential (a key passed as `KEY@host`).
    remember_secret(
        basic, *((password, parts.password, f"{user}:{password}") if password else (user,))
    )
    return bare, (user, password)


class SDKProvider(Provider):
    """A provider backed by an official async SDK client, made on first use and closed once.

    Subclasses name their table row, the SDK module and its client class, and implement
    `_complete`. `http_client` (an `httpx.AsyncClient`) replaces the pooled client the
    provider would make, e.g. one on `httpx.MockTransport` in tests.

    `--base-url` may carry `user:password@`: they are sent as HTTP basic auth (in place of
    OpenAI's bearer key; beside Anthropic's `x-api-key`), never as part of the URL.
    """

    info: ClassVar[ProviderInfo]
    sdk_module: ClassVar[str]  # "openai" | "anthropic"
    client_class: ClassVar[str]  # "AsyncOpenAI" | "AsyncAnthropic"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 600.0,
        connections: int = 100,
        http_client: Any = None,
    ) -> None:
        if not timeout > 0:
            raise errors.ConfigError(
                f"--timeout must be a positive number of seconds, got {timeout}"
            )
        self.model = model or self.info.default_model or ""
        self.base_url, self._basic_auth = split_credentials(base_url)
        self._key = api_key(self.info, base_url)
        self._timeout = timeout
        self._connections = connections
        self._http_client = http_client
        self._client: Any = None
        self._direct: Any = None
        self._direct_checked = False

    def __repr__(self) -> str:
        # Never the key, nor a password.
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def _get_client(self) -> Any:
        if self._client is None:
            sdk = importlib.import_module(self.sdk_module)
            self._client = self._make_client(
                sdk,
                self._http_client or make_http_client(sdk, self._connections, self._timeout),
            )
        return self._client

    def _make_client(self, sdk: ModuleType, http_client: Any) -> Any:
        headers = {}
        if self._basic_auth is not None:
            token = base64.b64encode(":".join(self._basic_auth).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        # Retries are ours (cai.retry), so the SDK makes exactly one attempt per call.
        return getattr(sdk, self.client_class)(
            api_key=self._key,
            base_url=self.base_url,
            max_retries=0,
            timeout=self._timeout,
            default_headers=headers or None,
            http_client=http_client,
        )

    async def complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None = None
    ) -> Completion:
        """One call, bounded as a whole by `timeout`: the SDK's timeouts bound each read, so
        a body that trickles in a byte at a time would otherwise never time out."""
        if sampling.logprobs is not None and not self.supports_logprobs:
            raise errors.ConfigError(f"provider {self.name} cannot return logprobs")
        try:
            if _deadline is None:  # Python 3.10
                return await asyncio.wait_for(
                    self._complete(messages, sampling, seed=seed), self._timeout
                )
            # Unlike `wait_for` before 3.12, no task of its own per call.
            async with _deadline(self._timeout):
                return await self._complete(messages, sampling, seed=seed)
        except asyncio.TimeoutError:
            raise errors.APITimeoutError(
                f"no complete reply within {self._timeout:g}s (--timeout)"
            ) from None

    async def _complete(
        self, messages: list[dict[str, str]], sampling: Sampling, *, seed: int | None
    ) -> Completion:
        raise NotImplementedError

    def _direct_post(self, path: str) -> DirectPost | None:
        """The SDK client's request for `path` sent straight over aiohttp (cai.providers.direct),
        or None where only the SDK's own path is exact (e.g. an injected `http_client`)."""
        if not self._direct_checked:
            self._direct_checked = True
            if self._http_client is None:
                sdk = importlib.import_module(self.sdk_module)
                # The SDK client only says what a request carries and builds status errors:
                # it never sends, so it gets no connection pool of its own.
                spec = self._client or self._make_client(sdk, DirectPost.inert_http_client())
                self._direct = DirectPost.create(
                    sdk,
                    spec,
                    path,
                    self._connections,
                    owns_client=spec is not self._client,
                )
        return self._direct

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.aclose()
            self._direct = None
            self._direct_checked = False
        if self._client is not None:
            await self._client.close()
            self._client = None


def make_http_client(sdk: ModuleType, connections: int, timeout: float) -> Any:
    """The SDK's own async HTTP client, with a pool that keeps `connections` alive.

    The SDKs keep at most 100 idle connections; above that concurrency every call would
    open a new connection. Where aiohttp is installed, the SDK's aiohttp transport is used:
    its connection pool costs the client far less CPU per call at high concurrency than the
    default one (see benchmarks/throughput.py).
    """
    limits = type(sdk.DEFAULT_CONNECTION_LIMITS)(
        max_connections=max(connections, 1), max_keepalive_connections=max(connections, 1)
    )
    aiohttp_client = getattr(sdk, "DefaultAioHttpClient", None)
    if aiohttp_client is not None and importlib.util.find_spec("aiohttp") is not None:
        return aiohttp_client(limits=limits, timeout=timeout)
    return sdk.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds to wait, from `retry-after-ms`, or `retry-after` in seconds or as an HTTP date."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _should_retry(headers: Any) -> bool | None:
    """The server's `x-should-retry` header: True, False, or None when absent or unclear."""
    value = (headers.get("x-should-retry") or "").strip().lower()
    return {"true": True, "false": False}.get(value)


def _refused_address(e: BaseException) -> str | None:
    """`HOST:PORT` when `e` was caused by a refused connection, else None."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            break
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    request = getattr(e, "request", None)
    url = getattr(request, "url", None)
    if url is None:
        return "the server"
    port = url.port or {"https": 443, "http": 80}.get(url.scheme)
    return f"{url.host}:{port}"


def translate_sdk_error(e: Exception, sdk: ModuleType, key_variable: str) -> errors.ProviderError:
    """The `cai.errors` kind for an SDK exception, or for a reply body that is not valid JSON."""
    if not isinstance(e, sdk.APIError):
        # The SDK parses the body inside `create`; a torn or non-JSON body surfaces as ValueError.
        return errors.BadResponseError(f"the server's reply is not valid JSON ({e})")
    status = getattr(e, "status_code", None)
    request_id = getattr(e, "request_id", None)
    response = getattr(e, "response", None)
    headers = response.headers if response is not None else {}
    retry_after = parse_retry_after(headers)
    message = f"{type(e).__name__}: {getattr(e, 'message', e)}"
    refused = _refused_address(e) if status is None else None
    if refused is not None:
        cls: type[errors.ProviderError] = errors.ConnectionRefused
        message = f"connection refused by {refused} - is the server running, and is the URL right?"
    elif isinstance(e, sdk.APITimeoutError) and "disconnected" in str(e.__cause__).lower():
        # openai's aiohttp transport reports a dropped connection as a connect timeout.
        cls = errors.APIConnectionError
    elif isinstance(e, sdk.APITimeoutError):
        cls = errors.APITimeoutError
    elif isinstance(e, sdk.APIConnectionError):
        cls = errors.APIConnectionError
    elif isinstance(e, sdk.APIResponseValidationError) or status is None:
        cls = errors.BadResponseError
    elif status == 429 and getattr(e, "code", None) == "insufficient_quota":
        # Not a passing limit: no retry helps, and every call would fail the same way.
        cls = errors.AuthenticationError
        message = (
            f"the account of the key in {key_variable} has no quota left "
            "(429 insufficient_quota) - check its plan and billing"
        )
    else:
        cls = errors.status_error_class(status)
        if cls is errors.AuthenticationError:
            message = f"the server refused the key ({status}) - check {key_variable}"
    if request_id:
        message += f" (request id {request_id})"
    return cls(
        message,
        status=status,
        request_id=request_id,
        retry_after=retry_after,
        retryable=_should_retry(headers),
    )
