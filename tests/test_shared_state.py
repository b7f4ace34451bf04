"""Issue 21, item 9: two server processes pointed at one real Redis enforce one limit per key and
share cached scores (each in its key's partition); with Redis unreachable they fall back to
their own state, log it and count it, and answer every request.

The Redis is ``RERANKER_TEST_REDIS_URL`` when set (.ci/run starts one), else a redis-server this
module starts on a free loopback port (Debian's package ``redis-server``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import DOCS, QUERY
from procs import free_port, server_env, serving

KEY = "sk-shared-0123456789"
OTHER = "sk-other-0123456789"
TENANT_A, TENANT_B = "sk-tenant-a-0123456789", "sk-tenant-b-0123456789"
ADMIN = "sk-ops-admin-0123456789"  # /metrics needs an admin key where keys are configured
KEYS = json.dumps({"shared": {"key": KEY, "requests_per_second": 0.01, "requests_burst": 3}, "other": OTHER,
                   "a": TENANT_A, "b": TENANT_B, "ops": {"key": ADMIN, "admin": True}})


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port, answering: the process and its URL."""
    import redis

    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed (apt-get install redis-server) or set RERANKER_TEST_REDIS_URL"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    client = redis.Redis(port=port)
    while True:
        try:
            client.ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("RERANKER_TEST_REDIS_URL")
    if given:
        yield given
        return
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _env(model: Path, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    settings = dict(RERANKER_API_KEYS=KEYS, RERANKER_REDIS_URL=redis_url, RERANKER_REDIS_PREFIX=prefix,
                    RERANKER_WARMUP_SECONDS="0", RERANKER_LOG_FORMAT="json")
    return server_env(model, free_port(), **{**settings, **extra})


def post(base: str, key: str, docs: list[str] = DOCS) -> httpx.Response:
    return httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": docs},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture(scope="module")
def two_servers(tmp_path_factory, tiny_model, redis_url) -> Iterator[tuple[str, str, str]]:
    """Two server processes on one Redis: their URLs and the prefix of their Redis keys."""
    prefix = f"test-{os.getpid()}-{time.monotonic_ns()}:"
    logs = tmp_path_factory.mktemp("two-servers")
    with serving(_env(tiny_model, redis_url, prefix), log=logs / "a.log") as a, \
            serving(_env(tiny_model, redis_url, prefix), log=logs / "b.log") as b:
        yield a, b, prefix


def test_two_servers_on_one_redis_enforce_one_limit(two_servers):
    a, b, _ = two_servers
    # One bucket of 3 requests for the key, whichever server a request reaches.
    statuses = [post(base, KEY, DOCS[:1]).status_code for base in (a, b) * 3]
    assert sorted(statuses) == [200] * 3 + [429] * 3, statuses
    # Without Redis each server would have admitted 3; the other key is untouched.
    assert post(b, OTHER).status_code == 200


def test_two_servers_on_one_redis_share_scores_within_a_partition(two_servers, redis_url):
    a, b, prefix = two_servers
    # Scores computed on A are hits on B.
    docs = [f"{d} (shared across replicas)" for d in DOCS]
    first = post(a, OTHER, docs)
    computed = int(first.headers["x-compute-tokens"])
    assert computed > 0
    second = post(b, OTHER, docs)
    assert second.status_code == 200 and int(second.headers["x-compute-tokens"]) == 0
    assert second.json()["results"] == first.json()["results"]  # the very floats, through Redis
    usage = second.json()["usage"]
    assert usage["total_tokens"] == computed and usage["prompt_tokens_details"] == {"cached_tokens": computed}
    # ...for the same key's partition only.
    pair = ["Tenant A asked about this pair."]
    assert int(post(a, TENANT_A, pair).headers["x-compute-tokens"]) > 0
    assert int(post(b, TENANT_B, pair).headers["x-compute-tokens"]) > 0
    assert int(post(b, TENANT_A, pair).headers["x-compute-tokens"]) == 0
    import redis

    client = redis.Redis.from_url(redis_url)
    stored = list(client.scan_iter(match=f"{prefix}score:*"))
    assert len(stored) >= len(docs) + 2  # (and the earlier tests' pairs)
    assert 0 < client.ttl(stored[0]) <= 3600  # RERANKER_REDIS_CACHE_TTL bounds every entry


def test_with_redis_unreachable_limits_and_cache_are_local_and_nothing_fails(tmp_path, tiny_model):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    log = tmp_path / "server.log"
    with serving(_env(tiny_model, dead, "dead:"), log=log) as base:
        statuses = [post(base, KEY, DOCS[:1]).status_code for _ in range(5)]
        assert statuses == [200] * 3 + [429] * 2  # the local bucket of 3 holds
        first, again = post(base, OTHER), post(base, OTHER)
        assert first.status_code == again.status_code == 200
        assert int(again.headers["x-compute-tokens"]) == 0  # the local cache answered
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    warnings = [r for r in records if r["level"] == "WARNING" and "Redis at" in r["message"]]
    assert len(warnings) == 1 and "unreachable" in warnings[0]["message"]
    assert 'reranker_redis_fallbacks_total{operation="limits"}' in metrics
    assert 'reranker_redis_fallbacks_total{operation="cache"}' in metrics


def test_redis_going_away_while_serving_fails_no_request(tmp_path, tiny_model):
    proc, url = start_redis(tmp_path)
    log = tmp_path / "server.log"
    try:
        with serving(_env(tiny_model, url, "going:"), log=log) as base:
            assert post(base, KEY, DOCS[:1]).status_code == 200  # on Redis: its bucket has 2 left
            proc.kill()
            proc.wait(10)
            # The local buckets take over (a full bucket of 3): no 500, and the limit still holds.
            statuses = [post(base, KEY, DOCS[:1]).status_code for _ in range(4)]
            assert statuses == [200] * 3 + [429], statuses
            assert post(base, OTHER, ["A pair scored while Redis is gone."]).status_code == 200
            metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 'reranker_redis_fallbacks_total{operation="limits"}' in metrics
    assert "unreachable" in log.read_text()


def test_a_bad_redis_url_is_named_at_start_up():
    from reranker_serve.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="RERANKER_REDIS_URL: must be a redis://"):
        load_settings(_env_file=None, redis_url="localhost:6379")
    assert load_settings(_env_file=None, redis_url=" ").redis_url is None
