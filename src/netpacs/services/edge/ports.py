"""What the edge's services need of the regional core (implemented by
:class:`netpacs.adapters.transports.upstream.Upstream`).

Every method raises :class:`UpstreamUnavailable` when the core cannot answer now (no
connection, a timeout, 5xx, 429): callers fall back to what the edge holds, or retry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Protocol


class UpstreamUnavailable(Exception):
    """The core did not answer in time, or answered that it cannot now (5xx, 429).
    The adapter (adapters.transports.upstream) raises this one class."""


class Response(Protocol):
    """The parts of an HTTP answer services read (httpx.Response has them)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...

    def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]: ...


class UpstreamPort(Protocol):
    @property
    def base_url(self) -> str: ...

    def get(
        self,
        path: str,
        *,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> Response: ...

    def post(
        self,
        path: str,
        *,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        content: bytes | Iterator[bytes] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Response: ...

    def stream(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        on_behalf_of: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
    ) -> contextlib.AbstractContextManager[Response]: ...
