"""What the `openai` and `anthropic` SDK providers share: the HTTP client and error mapping.

Both SDKs are generated from the same template, so their exception classes share names.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, ClassVar

from cai import errors

__all__ = ["SDKProvider", "make_http_client", "parse_retry_after", "translate_sdk_error"]


class SDKProvider:
    """A provider backed by an official async SDK client, made on first use and closed once.

    Subclasses name the SDK module and its client class, and implement `complete`.
    """

    name: ClassVar[str]
    sdk_module: ClassVar[str]  # "openai" | "anthropic"
    client_class: ClassVar[str]  # "AsyncOpenAI" | "AsyncAnthropic"

    def __init__(
        self, model: str, *, key: str, base_url: str | None, timeout: float, connections: int
    ) -> None:
        self.model = model
        self.base_url = base_url
        self._key = key
        self._timeout = timeout
        self._connections = connections
        self._client: Any = None

    def __repr__(self) -> str:
        # Never the key.
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def _get_client(self) -> Any:
        if self._client is None:
            sdk = importlib.import_module(self.sdk_module)
            # Retries are ours (cai.retry), so the SDK makes exactly one attempt per call.
            self._client = getattr(sdk, self.client_class)(
                api_key=self._key,
                base_url=self.base_url,
                max_retries=0,
                timeout=self._timeout,
                http_client=make_http_client(sdk, self._connections, self._timeout),
            )
        return self._client

    async def aclose(self) -> None:
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


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `retry-after` (seconds form), if present."""
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if name.endswith("-ms") else seconds
    return None


def translate_sdk_error(e: Exception, sdk: ModuleType, key_variable: str) -> errors.ProviderError:
    """The `cai.errors` kind for an SDK exception, or for a reply body that is not valid JSON."""
    if not isinstance(e, sdk.APIError):
        # The SDK parses the body inside `create`; a torn or non-JSON body surfaces as ValueError.
        return errors.BadResponseError(f"the server's reply is not valid JSON ({e})")
    status = getattr(e, "status_code", None)
    request_id = getattr(e, "request_id", None)
    response = getattr(e, "response", None)
    retry_after = parse_retry_after(response.headers) if response is not None else None
    message = f"{type(e).__name__}: {getattr(e, 'message', e)}"
    if isinstance(e, sdk.APITimeoutError) and "disconnected" in str(e.__cause__).lower():
        # openai's aiohttp transport reports a dropped connection as a connect timeout.
        cls: type[errors.ProviderError] = errors.APIConnectionError
    elif isinstance(e, sdk.APITimeoutError):
        cls = errors.APITimeoutError
    elif isinstance(e, sdk.APIConnectionError):
        cls = errors.APIConnectionError
    elif isinstance(e, sdk.RateLimitError) and getattr(e, "code", None) == "insufficient_quota":
        # Not a passing limit: no retry helps, and every call would fail the same way.
        cls = errors.AuthenticationError
        message = (
            f"the account of the key in {key_variable} has no quota left "
            "(429 insufficient_quota) - check its plan and billing"
        )
    elif isinstance(e, sdk.RateLimitError):
        cls = errors.RateLimitError
    elif isinstance(e, sdk.AuthenticationError | sdk.PermissionDeniedError):
        cls = errors.AuthenticationError
        message = f"the server refused the key ({status}) - check {key_variable}"
    elif status == 529:
        cls = errors.OverloadedError
    elif status is not None and status >= 500:
        cls = errors.ServerError
    elif isinstance(e, sdk.APIResponseValidationError) or status is None:
        cls = errors.BadResponseError
    else:
        cls = errors.BadRequestError
    if request_id:
        message += f" (request id {request_id})"
    return cls(message, status=status, request_id=request_id, retry_after=retry_after)
