"""Who may reach what, before any route runs: the Host allowlist, API keys on the system routes,
and throttling of clients that keep sending wrong keys.

- **Host allowlist** (``RERANKER_ALLOWED_HOSTS``). A keyless server on loopback is reachable
  from any web page the user opens through DNS rebinding (a name the attacker controls that
  resolves to 127.0.0.1): the browser then sends that name as ``Host``. On a loopback bind only
  the loopback names are served by default, so such requests fail. Redirects (``/rerank/`` to
  ``/rerank``) carry a relative ``Location``, never one built from the caller's ``Host``.
- **System routes.** With keys configured, ``/info``, ``/v1/models`` and the API documents need
  a key (any), ``/metrics`` an admin key (``"admin": true``, or the unnamed RERANKER_API_KEY):
  it names every tenant and their traffic. Scrapers that hold no key read
  ``RERANKER_METRICS_PORT`` instead. ``/health`` and ``/ready`` stay open for probes.
- **Wrong keys** cost a token from a per-address bucket (``RERANKER_AUTH_FAILURES_PER_MINUTE``,
  burst of the same size); an address with none left gets 429 with Retry-After for every
  request that carries a key, the right one included (else the 429/200 difference would keep
  answering the guess). The table is bounded: the least recently seen addresses go first.
  Per server process, as the limits of keys.py were before they were shared.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from typing import Callable, Sequence
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import Settings, is_loopback
from .errors import ErrorKind, RerankError
from .keys import ApiKey, KeyRing

__all__ = ["AuthThrottle", "HostGuard", "SystemRouteGuard", "allowed_hosts", "authenticate"]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts(settings: Settings) -> list[str] | None:
    """The Host names served, or None for any."""
    if settings.allowed_hosts:
        if "*" in settings.allowed_hosts:
            return None
        return [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in settings.allowed_hosts]
    return list(_LOOPBACK_NAMES) if is_loopback(settings.host) else None


class HostGuard:
    """Refuses requests for other Host names (421), and makes redirect Locations relative."""

    def __init__(self, app: ASGIApp, *, hosts: Sequence[str] | None,
                 render: Callable[[str, RerankError], JSONResponse]) -> None:
        self.app, self.hosts, self.render = app, hosts, render

    def _allowed(self, host: str) -> bool:
        assert self.hosts is not None
        return any(host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in self.hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.hosts is not None:
            header = Headers(scope=scope).get("host")
            host = _host_name(header)
            if host is None or not self._allowed(host):
                error = RerankError(ErrorKind.MISDIRECTED, f"Host {header!r} is not served here: use one of "
                                    f"{', '.join(self.hosts)}, or list it in RERANKER_ALLOWED_HOSTS")
                await self.render(scope["path"], error)(scope, receive, send)
                return

        async def relative_redirects(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                message["headers"] = [(k, _relative(v) if k.lower() == b"location" else v)
                                      for k, v in message.get("headers", [])]
            await send(message)

        await self.app(scope, receive, relative_redirects)


_HOST = re.compile(r"(?P<name>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")


def _host_name(header: str | None) -> str | None:
    """The name of a Host header without its port ("[::1]" keeps its brackets); None if malformed."""
    found = _HOST.fullmatch(header.strip()) if header else None
    return found["name"].lower().rstrip(".") if found else None


def _relative(location: bytes) -> bytes:
    # Starlette builds the slash redirect's URL from the request's Host: keep path and query only.
    parts = urlsplit(location.decode("latin-1"))
    if not parts.netloc:
        return location
    return (parts.path or "/").encode("latin-1") + (b"?" + parts.query.encode("latin-1") if parts.query else b"")


class AuthThrottle:
    """Wrong API keys per client address: a token bucket each, in a bounded table."""

    def __init__(self, per_minute: int, *, size: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.size, self.clock = per_minute, size, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, stamp)
        self._lock = threading.Lock()

    def _tokens(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - stamp) * self.per_minute / 60.0)

    def wait(self, address: str) -> float:
        """Seconds until ``address`` may try a key again (0.0: now)."""
        if not self.per_minute:
            return 0.0
        with self._lock:
            if address not in self._buckets:
                return 0.0
            tokens = self._tokens(address, self.clock())
        return 0.0 if tokens >= 1 else (1 - tokens) * 60.0 / self.per_minute

    def failed(self, address: str) -> None:
        if not self.per_minute:
            return
        with self._lock:
            now = self.clock()
            self._buckets[address] = (max(0.0, self._tokens(address, now) - 1), now)
            self._buckets.move_to_end(address)
            while len(self._buckets) > self.size:
                self._buckets.popitem(last=False)


def authenticate(keys: KeyRing, throttle: AuthThrottle, *, authorization: str, address: str) -> ApiKey:
    """The key an Authorization header holds, or the RerankError to answer (401, or 429 for an
    address that sent too many wrong keys)."""
    if not authorization:
        raise RerankError(ErrorKind.UNAUTHORIZED, "missing API key: send the header 'Authorization: Bearer <key>'")
    wait = throttle.wait(address)
    if wait > 0:
        raise RerankError(ErrorKind.RATE_LIMITED, f"too many wrong API keys from {address} "
                          f"(RERANKER_AUTH_FAILURES_PER_MINUTE={throttle.per_minute}); retry in {math.ceil(wait)} s",
                          retry_after=math.ceil(wait))
    scheme, _, token = authorization.partition(" ")
    key = keys.identify(token.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        throttle.failed(address)
        raise RerankError(ErrorKind.UNAUTHORIZED, "invalid API key")
    return key


# System routes that need a key when keys are configured; the value: whether only admin keys may.
_GUARDED = {"/metrics": True, "/info": False, "/v1/models": False, "/docs": False, "/docs/oauth2-redirect": False,
            "/redoc": False, "/openapi.json": False}


class SystemRouteGuard:
    """API keys on the system routes (see the module docstring); sets ``state.api_key``."""

    def __init__(self, app: ASGIApp, *, keys: KeyRing, throttle: AuthThrottle) -> None:
        self.app, self.keys, self.throttle = app, keys, throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin_only = _GUARDED.get(scope.get("path", "")) if scope["type"] == "http" else None
        if admin_only is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["api_key"] = None
        if self.keys.enabled:
            client = scope.get("client")
            try:
                key = authenticate(self.keys, self.throttle, authorization=Headers(scope=scope).get("authorization", ""),
                                   address=client[0] if client else "")
                if admin_only and not key.admin:
                    raise RerankError(ErrorKind.FORBIDDEN, f"key {key.name!r} may not read {scope['path']}: use a key "
                                      "with \"admin\": true in RERANKER_API_KEYS, or scrape RERANKER_METRICS_PORT")
            except RerankError as exc:
                await JSONResponse({"detail": exc.message}, status_code=exc.kind.status,
                                   headers=exc.headers)(scope, receive, send)
                return
            state["api_key"], state["key_name"] = key, key.name
        await self.app(scope, receive, send)
