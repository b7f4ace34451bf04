"""Named API keys, their limits and their default priority: who is calling, and may they now.

``RERANKER_API_KEYS`` is a JSON object (inline, or the path of a file holding it)::

    {
      "chat":    {"key": "sk-chat-…", "priority": "interactive", "requests_per_second": 20},
      "nightly": {"key_sha256": "9f86d0…", "priority": "batch", "pairs_per_minute": 600000},
      "team-b":  "sk-team-b-…"
    }

A key is given in clear (``key``, or the bare string) or as the hex SHA-256 of the key
(``key_sha256``), so that the file need not hold secrets. ``RERANKER_API_KEY`` (one unnamed
key) still works and is named ``default``. A file is read again when it changes (checked at
most once a second) and on SIGHUP, so keys rotate without a restart; a file that no longer
parses keeps the keys in force and logs why.

Limits are token buckets per key: requests per second, (query, document) pairs per minute and
model tokens per minute, each with a burst (the bucket's size; defaults: one second of
requests, one minute of pairs or tokens). Pairs and tokens count the work the model does for
the request: every window of a chunked document is a pair, and the tokens are those fed to the
model (pairs answered from the key's own score cache cost none), so two documents chunked 100
ways count as the 200 pairs they are. A request whose work exceeds a burst could never pass:
413. Over a limit, the request gets 429 naming the limit, with the Retry-After the bucket
computes, and the key's other buckets and every other key are untouched.

``priority`` is the key's default priority; ``X-Priority`` may lower it, never raise it above
``max_priority`` (default: ``priority``). ``cache_group`` names a score-cache partition: keys
share cached scores only when they name the same group (by default each key has its own, so one
tenant cannot learn from the cache what another asked).

The buckets of one server live in shared memory that its worker processes (``RERANKER_WORKERS``)
map, locked with ``flock`` for each read-modify-write, so a key's limit holds for the server as
a whole. The memory is an anonymous file (``memfd``) that the workers open through ``/proc``: it
vanishes with the last process, even one killed with SIGKILL, so nothing is left in /tmp. With
``RERANKER_REDIS_URL`` the buckets live on Redis (shared.py), so replicas share one limit too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import mmap
import os
import secrets
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ErrorKind, RerankError

__all__ = ["ApiKey", "Bucket", "KeyLimits", "KeyRing", "Priority", "RateLimiter", "parse_keys"]

Priority = Literal["interactive", "batch"]
_RANK: dict[str, int] = {"batch": 0, "interactive": 1}


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    priority: Priority = "interactive"
    requests_per_second: float | None = Field(None, gt=0)
    requests_burst: int | None = Field(None, ge=1)
    pairs_per_minute: float | None = Field(None, gt=0)
    pairs_burst: int | None = Field(None, ge=1)
    tokens_per_minute: float | None = Field(None, gt=0)
    tokens_burst: int | None = Field(None, ge=1)
    max_priority: Priority | None = None
    cache_group: str | None = Field(None, min_length=1)
    admin: bool = False  # may read /metrics and /info's paths (security.py)

    @model_validator(mode="after")
    def _one_key(self) -> _KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
        if self.max_priority is not None and _RANK[self.max_priority] < _RANK[self.priority]:
            raise ValueError(f"max_priority {self.max_priority!r} is below priority {self.priority!r}")
        # The digest of "" (or of blanks) would let `Authorization: Bearer ` in.
        if self.key is not None and not self.key.strip():
            raise ValueError("key: must not be blank")
        if self.key_sha256 is not None and self.key_sha256.lower() in _BLANK_DIGESTS:
            raise ValueError("key_sha256: is the SHA-256 of an empty key; hash the real key")
        return self


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A named key as the server holds it: never the key itself, only its digest."""

    name: str
    digest: bytes
    priority: Priority = "interactive"
    requests_per_second: float | None = None
    requests_burst: int = 1
    pairs_per_minute: float | None = None
    pairs_burst: int = 1
    admin: bool = False
    tokens_per_minute: float | None = None
    tokens_burst: int = 1
    max_priority: Priority = "interactive"  # the highest X-Priority may ask for
    cache_group: str | None = None

    @property
    def cache_partition(self) -> str:
        """The score-cache partition of its requests: its own, or its group's."""
        return f"group:{self.cache_group}" if self.cache_group else f"key:{self.name}"

    def allowed_priority(self, asked: Priority) -> Priority:
        """``asked`` (X-Priority), lowered to ``max_priority`` if above it: a header never raises a key."""
        return asked if _RANK[asked] <= _RANK[self.max_priority] else self.max_priority


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


# What `Authorization: Bearer ` (and `Bearer  `) hash to once the token is stripped: never a key.
_BLANK_DIGESTS = frozenset({hashlib.sha256(b"").hexdigest()})


def parse_keys(text: str, *, single_key: str | None = None) -> list[ApiKey]:
    """Keys from the JSON of RERANKER_API_KEYS (plus the unnamed RERANKER_API_KEY); ValueError
    with a message naming the entry when something is wrong."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object of name: key or name: {key, limits, priority}")
    # The one unnamed key is the operator's: it may read everything the admin keys may.
    keys = [ApiKey("default", _digest(single_key), admin=True)] if single_key else []
    for name, value in raw.items():
        try:
            entry = _KeyEntry(key=value) if isinstance(value, str) else _KeyEntry.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"key {name!r}: {where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}")
        rps, ppm, tpm = entry.requests_per_second, entry.pairs_per_minute, entry.tokens_per_minute
        keys.append(ApiKey(
            name=name,
            digest=bytes.fromhex(entry.key_sha256) if entry.key_sha256 else _digest(entry.key or ""),
            priority=entry.priority,
            requests_per_second=rps,
            requests_burst=entry.requests_burst or max(1, math.ceil(rps or 1)),
            pairs_per_minute=ppm,
            pairs_burst=entry.pairs_burst or max(1, math.ceil(ppm or 1)),
            tokens_per_minute=tpm,
            tokens_burst=entry.tokens_burst or max(1, math.ceil(tpm or 1)),
            max_priority=entry.max_priority or entry.priority,
            cache_group=entry.cache_group,
            admin=entry.admin,
        ))
    digests = [k.digest for k in keys]
    if len(set(digests)) != len(digests):
        raise ValueError("two names share one key")
    return keys


def read_keys_setting(value: str) -> str:
    """The JSON text of RERANKER_API_KEYS: the value itself, or the file it names."""
    text = value.strip()
    if text.startswith("{"):
        return text
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"is neither a JSON object nor an existing file ({text!r})")
    return path.read_text(encoding="utf-8")


class KeyRing:
    """The keys in force, reloaded from their file when it changes or on ``reload()``."""

    def __init__(self, setting: str | None, *, single_key: str | None = None) -> None:
        self._setting = (setting or "").strip()
        self._single = single_key
        self._path = None if not self._setting or self._setting.startswith("{") else Path(self._setting).expanduser()
        self._checked = 0.0
        self._lock = threading.Lock()
        self._keys = parse_keys(read_keys_setting(self._setting) if self._setting else "", single_key=single_key)
        self._stamp = self._mtime()

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self._path is not None

    def _mtime(self) -> int | None:
        try:
            return self._path.stat().st_mtime_ns if self._path else None
        except OSError:
            return None

    def reload(self) -> None:
        """Read the key file again (SIGHUP); a file that does not parse keeps the keys in force."""
        if self._path is None:
            return
        with self._lock:
            try:
                self._keys = parse_keys(self._path.read_text(encoding="utf-8"), single_key=self._single)
                self._stamp = self._mtime()
                logger.info("API keys reloaded from {}: {}", self._path, ", ".join(k.name for k in self._keys))
            except (OSError, ValueError) as exc:
                self._stamp = self._mtime()  # do not retry a broken file every second
                logger.error("API keys in {} not reloaded, the previous ones stay in force: {}", self._path, exc)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if self._path is None or now - self._checked < 1.0:
            return
        self._checked = now
        if self._mtime() != self._stamp:
            self.reload()

    def identify(self, token: str) -> ApiKey | None:
        """The key a bearer token is, or None. Every key is compared, in constant time, so the
        time taken says nothing about which key (or how much of one) matched."""
        self._maybe_reload()
        if not token.strip():
            return None
        presented = _digest(token)
        found = None
        for key in self._keys:
            if secrets.compare_digest(presented, key.digest):
                found = key
        return found


# -- rate limits ------------------------------------------------------------------------------------
_SLOTS = 512
_SLOT = struct.Struct("<16sdd")  # name digest, tokens, last refill (wall clock, shared by processes)
_SIZE = _SLOTS * _SLOT.size


@dataclass(frozen=True, slots=True)
class Bucket:
    """Take ``amount`` from the bucket ``name``, refilled at ``rate`` per second up to ``burst``."""

    name: str
    amount: float
    rate: float
    burst: float


class RateLimiter:
    """Token buckets in memory shared by the processes of one server.

    ``path`` None: memory of this process alone (one process: nothing on disk at all); else a
    file that ``create_file`` made, which the worker processes open by that path.
    """

    def __init__(self, path: str | None = None) -> None:
        if path is None:
            self._file = None
            self._map = mmap.mmap(-1, _SIZE)
        else:
            self._file = open(path, "r+b")  # noqa: SIM115 - held for the limiter's life
            if os.fstat(self._file.fileno()).st_size < _SIZE:
                self._file.truncate(_SIZE)
            self._map = mmap.mmap(self._file.fileno(), _SIZE)
        self.path = path
        self._local = threading.Lock()  # flock is per open file, not per thread

    @staticmethod
    def create_file() -> tuple[str, int]:
        """Shared memory for the worker processes: the path they open it by, and the descriptor
        that keeps it alive while the caller runs (close it when the server stops).

        On Linux an anonymous memfd, reached through /proc/<pid>/fd: it has no name in any
        folder, so a server killed with SIGKILL leaves nothing behind. Elsewhere a temporary
        file, removed when the server stops (not after SIGKILL)."""
        if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
            fd = os.memfd_create("reranker-serve-buckets")
            os.ftruncate(fd, _SIZE)
            return f"/proc/{os.getpid()}/fd/{fd}", fd
        fd, path = tempfile.mkstemp(prefix="reranker-serve-", suffix=".buckets")
        os.ftruncate(fd, _SIZE)
        return path, fd

    @staticmethod
    def remove_file(path: str, fd: int) -> None:
        os.close(fd)
        if not path.startswith("/proc/"):
            Path(path).unlink(missing_ok=True)

    def close(self) -> None:
        self._map.close()
        if self._file is not None:
            self._file.close()

    def take(self, bucket: str, amount: float, *, rate: float, burst: float) -> float:
        """Take ``amount`` tokens from ``bucket`` (refilled at ``rate`` per second up to
        ``burst``): 0.0 if taken, else the seconds until they would be there (nothing taken)."""
        return self.take_all([Bucket(bucket, amount, rate, burst)])[0]

    def take_all(self, buckets: list[Bucket]) -> tuple[float, int]:
        """Take from every bucket or from none: (0.0, -1) if taken, else the longest wait and the
        index of the bucket that needs it."""
        names = [hashlib.blake2b(b.name.encode(), digest_size=16).digest() for b in buckets]
        with self._local:
            if self._file is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                now = time.time()
                slots, levels = [], []
                wait, short = 0.0, -1
                for i, (name, b) in enumerate(zip(names, buckets)):
                    slot = self._slot(name)
                    _, tokens, stamp = _SLOT.unpack_from(self._map, slot)
                    level = b.burst if stamp == 0.0 else min(b.burst, tokens + max(0.0, now - stamp) * b.rate)
                    slots.append(slot)
                    levels.append(level)
                    if level < b.amount and (b.amount - level) / b.rate > wait:
                        wait, short = (b.amount - level) / b.rate, i
                for name, b, slot, level in zip(names, buckets, slots, levels):
                    _SLOT.pack_into(self._map, slot, name, level - b.amount if wait == 0.0 else level, now)
                return wait, short
            finally:
                if self._file is not None:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def _slot(self, name: bytes) -> int:
        start = int.from_bytes(name[:4], "little") % _SLOTS
        for i in range(_SLOTS):
            offset = ((start + i) % _SLOTS) * _SLOT.size
            held = self._map[offset:offset + 16]
            if held == name or held == bytes(16):
                return offset
        # More buckets than slots (hundreds of keys): buckets hashed to this home slot share it.
        return start * _SLOT.size


class SharedBuckets(Protocol):
    """Buckets shared by replicas (shared.py, on Redis): the wait and the short bucket as
    ``take_all`` gives them, or None when the store cannot be reached (then the local buckets
    decide)."""

    async def take_all(self, buckets: list[Bucket]) -> tuple[float, int] | None: ...


class KeyLimits:
    """A key's limits, checked at two moments: its request rate when the key is recognised,
    the work of its request (pairs, tokens) once it is tokenized and before it is queued."""

    def __init__(self, local: RateLimiter, *, shared: SharedBuckets | None = None) -> None:
        self.local = local
        self.shared = shared

    async def _take(self, buckets: list[Bucket]) -> tuple[float, int]:
        if self.shared is not None:
            taken = await self.shared.take_all(buckets)
            if taken is not None:
                return taken
        return self.local.take_all(buckets)  # no Redis, or Redis unreachable: this server's own

    async def admit(self, key: ApiKey) -> None:
        """Raise 429 (with Retry-After) when ``key`` is over its request rate."""
        if key.requests_per_second is None:
            return
        wait, _ = await self._take([Bucket(f"{key.name}/requests", 1, key.requests_per_second, key.requests_burst)])
        if wait > 0:
            self._refuse(key, f"{key.requests_per_second:g} requests per second (requests_per_second)", wait)

    async def charge(self, key: ApiKey, *, pairs: int, tokens: int) -> None:
        """Take the work of a request from ``key``'s buckets: 413 if it exceeds a burst (it could
        never pass), 429 naming the limit if a bucket is short. Nothing is taken unless all are."""
        buckets, limits = [], []
        if key.pairs_per_minute is not None and pairs:
            if pairs > key.pairs_burst:
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"{pairs} (query, document) pairs (every window of a chunked document is one) exceed the "
                    f"{key.pairs_burst} that key {key.name!r} may send at once (pairs_burst); split the request "
                    "or send fewer chunks",
                )
            buckets.append(Bucket(f"{key.name}/pairs", pairs, key.pairs_per_minute / 60.0, key.pairs_burst))
            limits.append(f"{key.pairs_per_minute:g} pairs per minute (pairs_per_minute, chunks included)")
        if key.tokens_per_minute is not None and tokens:
            if tokens > key.tokens_burst:
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"this request costs {tokens} model tokens (chunks included), more than the {key.tokens_burst} "
                    f"that key {key.name!r} may spend at once (tokens_burst); send fewer or shorter documents, "
                    "or fewer chunks",
                )
            buckets.append(Bucket(f"{key.name}/tokens", tokens, key.tokens_per_minute / 60.0, key.tokens_burst))
            limits.append(f"{key.tokens_per_minute:g} tokens per minute (tokens_per_minute)")
        if not buckets:
            return
        wait, short = await self._take(buckets)
        if wait > 0:
            self._refuse(key, limits[short], wait)

    @staticmethod
    def _refuse(key: ApiKey, limit: str, wait: float) -> None:
        raise RerankError(ErrorKind.RATE_LIMITED, f"key {key.name!r} is over its limit of {limit}; "
                          f"retry in {math.ceil(wait)} s", retry_after=math.ceil(wait))
