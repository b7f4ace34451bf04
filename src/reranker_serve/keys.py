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

Limits are token buckets per key: requests per second and document pairs per minute, each with
a burst (the bucket's size; defaults: one second of requests, one minute of pairs). Over a limit,
the request gets 429 with the Retry-After the bucket computes, and the key's other buckets and
every other key are untouched. The buckets live in a small memory-mapped file shared by the
worker processes of one server (``RERANKER_WORKERS``), locked with ``flock`` for each
read-modify-write, so a key's limit holds for the server as a whole; separate replicas have
separate buckets (a limit is per replica there).
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
from typing import Literal

from loguru import logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ErrorKind, RerankError

__all__ = ["ApiKey", "KeyRing", "Priority", "RateLimiter", "parse_keys"]

Priority = Literal["interactive", "batch"]
BUCKETS_FILE_VARIABLE = "_RERANKER_SERVE_BUCKETS_FILE"  # set by __main__ for worker processes


class _KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(None, min_length=8)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    priority: Priority = "interactive"
    requests_per_second: float | None = Field(None, gt=0)
    requests_burst: int | None = Field(None, ge=1)
    pairs_per_minute: float | None = Field(None, gt=0)
    pairs_burst: int | None = Field(None, ge=1)
    admin: bool = False  # may read /metrics and /info's paths (security.py)

    @model_validator(mode="after")
    def _one_key(self) -> _KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of key and key_sha256")
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
        rps, ppm = entry.requests_per_second, entry.pairs_per_minute
        keys.append(ApiKey(
            name=name,
            digest=bytes.fromhex(entry.key_sha256) if entry.key_sha256 else _digest(entry.key or ""),
            priority=entry.priority,
            requests_per_second=rps,
            requests_burst=entry.requests_burst or max(1, math.ceil(rps or 1)),
            pairs_per_minute=ppm,
            pairs_burst=entry.pairs_burst or max(1, math.ceil(ppm or 1)),
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


class RateLimiter:
    """Token buckets shared by the processes of one server through a memory-mapped file."""

    def __init__(self, path: str | None = None) -> None:
        self._owned = path is None
        if path is None:
            path = self.create_file()
        self.path = path
        self._file = open(path, "r+b")  # noqa: SIM115 - held for the limiter's life
        if os.fstat(self._file.fileno()).st_size < _SLOTS * _SLOT.size:
            self._file.truncate(_SLOTS * _SLOT.size)
        self._map = mmap.mmap(self._file.fileno(), _SLOTS * _SLOT.size)
        self._local = threading.Lock()  # flock is per open file, not per thread

    @staticmethod
    def create_file() -> str:
        fd, path = tempfile.mkstemp(prefix="reranker-serve-", suffix=".buckets")
        os.close(fd)
        return path

    def close(self) -> None:
        self._map.close()
        self._file.close()
        if self._owned:
            Path(self.path).unlink(missing_ok=True)

    def take(self, bucket: str, amount: float, *, rate: float, burst: float) -> float:
        """Take ``amount`` tokens from ``bucket`` (refilled at ``rate`` per second up to
        ``burst``): 0.0 if taken, else the seconds until they would be there (nothing taken)."""
        name = hashlib.blake2b(bucket.encode(), digest_size=16).digest()
        with self._local:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            try:
                slot = self._slot(name)
                _, tokens, stamp = _SLOT.unpack_from(self._map, slot)
                now = time.time()
                tokens = burst if stamp == 0.0 else min(burst, tokens + (now - stamp) * rate)
                wait = 0.0 if tokens >= amount else (amount - tokens) / rate
                if wait == 0.0:
                    tokens -= amount
                _SLOT.pack_into(self._map, slot, name, tokens, now)
                return wait
            finally:
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

    def check(self, key: ApiKey, *, pairs: int | None = None) -> None:
        """Raise 429 (with Retry-After) when ``key`` is over a limit; ``pairs`` None checks the
        request rate, a number the pair rate."""
        if pairs is None:
            if key.requests_per_second is None:
                return
            wait = self.take(f"{key.name}/requests", 1, rate=key.requests_per_second, burst=key.requests_burst)
            limit = f"{key.requests_per_second:g} requests per second"
        else:
            if key.pairs_per_minute is None:
                return
            if pairs > key.pairs_burst:
                raise RerankError(
                    ErrorKind.PAYLOAD_TOO_LARGE,
                    f"{pairs} documents exceed the {key.pairs_burst} that key {key.name!r} may send at once; "
                    "split the request",
                )
            wait = self.take(f"{key.name}/pairs", pairs, rate=key.pairs_per_minute / 60.0, burst=key.pairs_burst)
            limit = f"{key.pairs_per_minute:g} documents per minute"
        if wait > 0:
            raise RerankError(ErrorKind.RATE_LIMITED, f"key {key.name!r} is over its limit of {limit}; "
                              f"retry in {math.ceil(wait)} s", retry_after=math.ceil(wait))
