"""The SDK's request sent straight over aiohttp: the official SDK's headers, URL, transport
error mapping and status errors, without its per-call request and response models.

Per call the SDKs copy their request options (pydantic models), build an `httpx.Request`,
hand it to their aiohttp transport, which builds an aiohttp request from it, and wrap the
reply in an `httpx.Response`. At a self-hosted fleet's concurrency that bookkeeping is most
of the client's CPU per call (docs/throughput.md). `DirectPost` asks the SDK client once,
when made, for the exact URL and headers its request would carry, then sends each call's
JSON body with one aiohttp session. What a failure becomes stays the SDK's: transport errors
go through the SDK's own aiohttp-to-httpx mapping into `APITimeoutError` or
`APIConnectionError`, and a reply that is not 2xx is handed, as an `httpx.Response`, to the
client's own status-error constructor - so `translate_sdk_error` sees exactly the exceptions
the SDK path raises (kinds, status, request id, `retry-after`, `x-should-retry`).

`DirectPost.create` returns None wherever the two paths could differ (an injected HTTP client,
a proxy from the environment, custom auth, an SDK without the pieces used here); the caller
then sends through the SDK as before.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from types import ModuleType
from typing import Any

__all__ = ["DirectPost", "encode_body"]


def _encode_stdlib(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


try:  # the same JSON text, encoded about ten times faster than by the json module
    from orjson import dumps as _encode_orjson
except ImportError:  # pragma: no cover - depends on the environment
    _encode_orjson = None


def encode_body(body: dict[str, Any]) -> bytes:
    """A request body as the SDKs encode it: compact UTF-8 JSON, no ASCII escapes."""
    if _encode_orjson is not None:
        try:
            return _encode_orjson(body)
        except TypeError:  # what orjson will not write (e.g. a lone surrogate): as json does
            pass
    return _encode_stdlib(body)


class DirectPost:
    """POSTs JSON bodies to one SDK endpoint over one aiohttp session (made on first use).

    It sets no timeouts: its caller bounds each call as a whole (`SDKProvider.complete`)."""

    def __init__(
        self,
        sdk: ModuleType,
        client: Any,
        url: str,
        headers: dict[str, str],
        connections: int,
        map_errors: Any,
        owns_client: bool = False,
    ) -> None:
        self._sdk = sdk
        self._client = client
        self._url = url
        self._headers = headers
        self._connections = max(connections, 1)
        self._map_errors = map_errors
        self._owns_client = owns_client
        self._session: Any = None

    @classmethod
    def create(
        cls,
        sdk: ModuleType,
        client: Any,
        path: str,
        connections: int,
        *,
        owns_client: bool = False,
    ) -> DirectPost | None:
        """The direct path for `client`'s `path`, or None where only the SDK's path is exact.
        With `owns_client`, `aclose` closes `client` too."""
        try:
            from aiohttp.helpers import get_env_proxy_for_url
            from yarl import URL

            transport = importlib.import_module(sdk.__name__ + "._vendor.httpx_aiohttp.transport")
            final_options = importlib.import_module(sdk.__name__ + "._models").FinalRequestOptions
        except (ImportError, AttributeError):
            return None
        # A key from a callback, a workload identity or custom auth is the SDK's to apply per call.
        if any(
            getattr(client, name, None) is not None
            for name in ("custom_auth", "_provider_runtime", "_api_key_provider")
        ):
            return None
        options = final_options.construct(
            method="post", url=path, json_data={}, security={"bearer_auth": True}
        )
        try:
            request = client._build_request(options)
        except Exception:  # an SDK whose internals moved: its own path still works
            return None
        url = str(request.url)
        if not url.startswith(("http://", "https://")):
            return None
        with contextlib.suppress(LookupError):
            get_env_proxy_for_url(URL(url))
            return None  # a proxy applies: the SDK's HTTP client knows how to use it
        # aiohttp sets these itself, per connection and per body.
        own = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in own}
        return cls(sdk, client, url, headers, connections, transport, owns_client)

    @staticmethod
    def inert_http_client() -> Any:
        """An HTTP client for an SDK client that must never send: made cheaply (no pool, no
        TLS context), it refuses any request."""
        import httpx2

        def refuse(request: Any) -> Any:
            raise RuntimeError("this SDK client only describes requests; DirectPost sends them")

        return httpx2.AsyncClient(transport=httpx2.MockTransport(refuse), trust_env=False)

    def _open(self) -> Any:
        import aiohttp

        ssl: Any = True
        if self._url.startswith("https://"):
            import httpx2

            ssl = httpx2.create_ssl_context(verify=True, trust_env=True)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._connections, ssl=ssl),
            # No timer of aiohttp's own: each call runs under `SDKProvider.complete`'s deadline,
            # which a read or connect timeout of the same length could only follow.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=None, sock_connect=None, sock_read=None
            ),
            headers=self._headers,
        )
        return self._session

    async def post(self, body: bytes) -> bytes:
        """The reply body of a 2xx; the SDK's exception for anything else."""
        session = self._session or self._open()
        try:
            async with session.post(self._url, data=body) as response:
                raw = await response.read()
                status = response.status
                if status < 400:
                    return raw
                raw_headers = response.raw_headers
        except Exception as e:
            # Its cause is set: the SDK's exception from the SDK's mapped transport error.
            raise self._transport_error(e)  # noqa: B904
        import httpx2

        reply = httpx2.Response(
            status, headers=raw_headers, content=raw, request=httpx2.Request("POST", self._url)
        )
        raise self._client._make_status_error_from_response(reply)

    def _transport_error(self, e: Exception) -> Exception:
        """The SDK's exception for a transport failure, as its aiohttp transport raises it."""
        import httpx2

        request = httpx2.Request("POST", self._url)
        try:
            with self._map_errors.map_aiohttp_exceptions():
                raise e
        except httpx2.TimeoutException as mapped:
            error: Exception = self._sdk.APITimeoutError(request=request)
            error.__cause__ = mapped
        except httpx2.TransportError as mapped:
            error = self._sdk.APIConnectionError(request=request)
            error.__cause__ = mapped
        except Exception as other:  # not a transport failure (e.g. a torn JSON body later)
            return other
        return error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._owns_client:
            await self._client.close()
            self._owns_client = False
