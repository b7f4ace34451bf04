"""The score cache: raw logits of (query, document) pairs already scored, so a pair asked again
(retries, pagination, chat turns over the same retrieved chunks) skips the model.

What a key is: a 128-bit BLAKE2b digest of whose cache it is and of everything that changes a
raw score —

    the partition   the API key's (or its cache_group's, keys.py): tenants never see each
                    other's entries, so a hit (its speed, its X-Compute-Tokens: 0) tells a
                    tenant only what it asked itself; "" on a server without keys

    the model       its ModelSpec but the names (source, model type, per-model options such as
                    the default instruction, layer-wise cutoff, compression), and what loading
                    resolved: family, backend, dtype, device, window; plus a nonce per loaded
                    engine (a model loaded again is a new model)
    the encoding    every field of EncodeOptions: max_length, truncate, truncation_direction,
                    max_doc_tokens, max_chunks, chunk_overlap, instruction (None: the model's
                    configured default, part of the model above) — and any field added later
    the texts       query and document, each length-prefixed so that ("ab", "c") ≠ ("a", "bc")

The texts themselves are never kept: only digests (16 bytes), the float32-exact logit the
model produced, so a hit returns the very float a computation returned (the activation is
applied by the service, after the cache, exactly as for a computed score), and the tokens the
pair cost, so usage counts a cached pair as what it costs (``cached_tokens``).

Bounded by ``max_bytes`` (RERANKER_CACHE_MB), least recently used evicted first. Each entry is
charged what it really costs in CPython: the key object, the float object and the ordered
dict's per-entry share (measured with tracemalloc: ~150-180 bytes an entry in all; the test
suite checks the charge against tracemalloc).

One cache per server process (a worker of RERANKER_WORKERS has its own), shared by the served
models; operations take a lock, so the event loop and any thread may use it. A request reaches
it through scoring.py (its lookups, the Redis tier and the single-flight of pairs in flight). With
RERANKER_REDIS_URL a second tier on Redis is shared by every replica (shared.py); its keys
identify the model by its weights (``stable=True``), not by this process's nonce.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence

if TYPE_CHECKING:
    from .engine import Engine
    from .models import EncodeOptions
    from .observability import Metrics

__all__ = ["ENTRY_BYTES", "CachedScore", "ScoreCache", "bypass_requested"]


class CachedScore(NamedTuple):
    score: float  # the raw logit, as the model produced it
    tokens: int  # what computing the pair cost (all windows of a chunked document)


_DIGEST = 16  # bytes: 128 bits, no collision in any cache that fits in memory (birthday bound 2^64)
# What one entry costs: the key (a 16-byte bytes object), the value (a 2-tuple of a float and an
# int) and the OrderedDict's share (hash table slot, index and the order list's node), measured
# with tracemalloc over 1k-100k entries (112 bytes is the high end: the table grows in steps).
ENTRY_BYTES = (sys.getsizeof(b"\0" * _DIGEST) + sys.getsizeof(CachedScore(0.5, 1000)) + sys.getsizeof(0.5)
               + sys.getsizeof(1000) + 112)


def _text(value: str) -> bytes:
    # Length-prefixed, so no two (query, document) splits of one byte string collide. Texts are
    # already free of lone surrogates (the dialects replace them); surrogatepass is belt and braces.
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "little") + data


def bypass_requested(headers: Mapping[str, str]) -> bool:
    """Whether a request asks not to use the cache: ``Cache-Control: no-cache`` or ``no-store``
    (or HTTP/1.0's ``Pragma: no-cache``). Either means: neither read nor write it."""
    directives = {d.split("=", 1)[0].strip().lower() for d in headers.get("cache-control", "").split(",")}
    return bool(directives & {"no-cache", "no-store"}) or "no-cache" in headers.get("pragma", "").lower()


class ScoreCache:
    """An LRU map from pair digests to (raw score, tokens), at most ``max_bytes`` big."""

    def __init__(self, *, max_bytes: int, metrics: Metrics | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max(1, max_bytes // ENTRY_BYTES)
        self._entries: OrderedDict[bytes, CachedScore] = OrderedDict()
        self._lock = threading.Lock()
        # Per loaded engine: the digest state of its identity, computed once.
        self._models: weakref.WeakKeyDictionary[Engine, hashlib.blake2b] = weakref.WeakKeyDictionary()
        self._metrics = metrics
        if metrics is not None:
            # Read at scrape time: no bookkeeping on the request path.
            metrics.cache_bytes.set_function(lambda: self.bytes)
            metrics.cache_entries.set_function(lambda: len(self._entries))

    @property
    def bytes(self) -> int:
        return len(self._entries) * ENTRY_BYTES

    def __len__(self) -> int:
        return len(self._entries)

    # -- keys ------------------------------------------------------------------------------------
    def _model(self, engine: Engine) -> hashlib.blake2b:
        try:
            state = self._models.get(engine)
        except TypeError:  # an engine that cannot be weakly referenced: keyed by its description alone
            return self._describe(engine)
        if state is None:
            state = self._describe(engine)
            # The same folder loaded twice (a reload, new weights on disk) must not share entries.
            state.update(os.urandom(16))
            self._models[engine] = state
        return state

    def _stable(self, engine: Engine) -> hashlib.blake2b:
        # Shared by replicas: the model is its weights' fingerprint, the same in every process.
        state = self._describe(engine)
        state.update(b"fingerprint:" + (engine.fingerprint or b""))
        return state

    @staticmethod
    def _describe(engine: Engine) -> hashlib.blake2b:
        model = engine.model
        # Names select a model but do not change its scores: aliases share entries.
        spec = dataclasses.replace(engine.spec, names=())
        identity = (spec, model.family, model.backend, model.dtype_name, model.device, model.max_length)
        return hashlib.blake2b(repr(identity).encode("utf-8", "surrogatepass"), digest_size=_DIGEST)

    def keys(self, engine: Engine, options: EncodeOptions, query: str, documents: Sequence[str], *,
             partition: str = "", stable: bool = False) -> list[bytes]:
        """One digest per document of the request, in ``partition`` (whose cache: keys.py);
        ``stable``: the digest replicas share (shared.py), for an engine with a fingerprint."""
        base = self._stable(engine) if stable else self._model(engine).copy()
        base.update(_text(partition))
        # A dataclass's repr names every field and its value: a field added to EncodeOptions joins
        # the key by itself.
        base.update(repr(options).encode("utf-8", "surrogatepass"))
        base.update(_text(query))
        keys = []
        for doc in documents:
            h = base.copy()
            h.update(_text(doc))
            keys.append(h.digest())
        return keys

    # -- lookups ---------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[bytes]) -> list[CachedScore | None]:
        """The cached (raw score, tokens) of each key (None: not cached); hits become most recently used."""
        out: list[CachedScore | None] = []
        with self._lock:
            entries = self._entries
            for key in keys:
                value = entries.get(key)
                if value is not None:
                    entries.move_to_end(key)
                out.append(value)
        return out

    def put_many(self, items: Sequence[tuple[bytes, CachedScore]]) -> None:
        """Store (raw score, tokens); the least recently used entries make room."""
        evicted = 0
        with self._lock:
            entries = self._entries
            for key, value in items:
                entries[key] = value
                entries.move_to_end(key)
            while len(entries) > self.max_entries:
                entries.popitem(last=False)
                evicted += 1
        if evicted and self._metrics is not None:
            self._metrics.cache_evictions.inc(evicted)

    def count(self, model: str, *, hits: int, misses: int) -> None:
        if self._metrics is not None:
            if hits:
                self._metrics.cache_hits.labels(model).inc(hits)
            if misses:
                self._metrics.cache_misses.labels(model).inc(misses)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
