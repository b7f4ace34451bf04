"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with the limits it lacks.

uvicorn bounds what it can: ``timeout_keep_alive`` closes idle connections *between* requests,
``h11_max_incomplete_event_size`` caps headers, but only for its h11 parser, and
``limit_concurrency`` answers 503 only once a request's headers are complete. With httptools
(uvicorn[standard]'s parser) nothing bounds a request before its headers end: a 100 MB header
line is buffered whole, and a client sending one header byte a second, or nothing at all after
connecting, holds its connection (and a file descriptor) for ever. Here:

- the request line and headers together may be at most ``RERANKER_MAX_HEADER_BYTES``, and at
  most ``RERANKER_MAX_HEADERS`` fields: beyond, 431 and the connection closed;
- a connection has ``RERANKER_HEADER_TIMEOUT`` seconds from its opening (or from the first byte
  of its next request) to complete the headers: then 408 and closed (the body's own deadline,
  ``RERANKER_BODY_TIMEOUT``, is kept where the body is read: api/common.py);
- at most ``RERANKER_MAX_CONNECTIONS`` connections are open per process: one more is answered
  503 at once and closed, and the refusals are logged (the first, then a count every 10 s).

Each refusal is logged with the client's address. Ray Serve has its own HTTP proxy: none of this
applies there.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

import httptools
from loguru import logger
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import Settings

__all__ = ["ConnectionLimits", "GuardedProtocol", "uvicorn_options"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(max_header_bytes=settings.max_header_bytes, max_headers=settings.max_headers,
                   header_timeout=settings.header_timeout, max_connections=settings.max_connections)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn.Config needs to serve with these limits (picklable, for worker processes)."""
    return {"http": functools.partial(GuardedProtocol, limits=ConnectionLimits.of(settings))}


class _Refusals:
    """Connection-cap refusals, logged without flooding: the first at once, then a count."""

    def __init__(self, every: float = 10.0) -> None:
        self.every, self.count, self.since = every, 0, 0.0

    def add(self, client: str, cap: int) -> None:
        now = time.monotonic()
        if self.count == 0 and now - self.since >= self.every:
            logger.warning("refused a connection from {}: {} connections are open (RERANKER_MAX_CONNECTIONS)",
                           client, cap)
            self.since = now
            return
        self.count += 1
        if now - self.since >= self.every:
            logger.warning("refused {} more connections in the last {:.0f} s: {} are open (RERANKER_MAX_CONNECTIONS)",
                           self.count, now - self.since, cap)
            self.count, self.since = 0, now


_REFUSALS = _Refusals()
_LINGER = 1.0  # seconds a refused connection is drained before it closes


class _Reject(Exception):
    """Raised from a parser callback: answer ``status`` with ``message`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class GuardedProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._between = True  # between requests: the next bytes start a request line
        self._in_headers = False  # inside a request's line and headers
        self._header_bytes = 0
        self._header_count = 0
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connections -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refused = True
            _REFUSALS.add(self._peer(), self.limits.max_connections)
            self._answer(503, "the server has too many open connections; retry later", retry_after=1)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "-"

    # -- parsing -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._unset_keepalive_if_required()
        if (self._between or self._in_headers) and self._header_deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            reject = exc.__context__ if isinstance(exc.__context__, _Reject) else None
            if reject is None:
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
            else:
                self._refuse(reject.status, reject.message)
            return
        except _Reject as reject:  # raised outside a callback by some httptools versions
            self._refuse(reject.status, reject.message)
            return
        if self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._refuse(431, f"the request line and headers are larger than {self.limits.max_header_bytes} "
                             "bytes (RERANKER_MAX_HEADER_BYTES)")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._between, self._in_headers, self._header_bytes, self._header_count = False, True, 0, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Reject(431, f"the request has more than {self.limits.max_headers} header fields "
                          "(RERANKER_MAX_HEADERS)")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._between = True  # whatever comes next is the next request's line and headers

    # -- the header deadline --------------------------------------------------------------------------
    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.limits.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if not (self._between or self._in_headers) or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being written: the next request's clock starts after it
        self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout:g} s "
                     "(RERANKER_HEADER_TIMEOUT)")

    # -- answers --------------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str) -> None:
        logger.warning("closed the connection from {}: {} ({})", self._peer(), message, status)
        self._answer(status, message)

    def _answer(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        """A complete response written straight to the socket (no request to hand to the app),
        then the connection closed."""
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined request's headers, while a response is being written
            return
        from http import HTTPStatus

        body = (message + "\n").encode()
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "content-type: text/plain; charset=utf-8",
                f"content-length: {len(body)}", "connection: close"]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        # A lingering close: what the client still sends is read and dropped for a moment before
        # the socket closes; closing with unread bytes would reset the connection, and a reset
        # can discard the answer before the client reads it.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)
