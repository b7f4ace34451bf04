"""Issue 21 (items 4-8): a hostile client without a key, and tenants that should not see each
other, against real servers on loopback: HTTP hygiene (raw sockets), system routes behind keys,
log forging, metrics across workers, and the smaller holes (empty keys, key guessing, Host,
compressed and pathological bodies, a full disk under the log)."""

from __future__ import annotations

import concurrent.futures
import errno
import gzip
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
import pytest
from loguru import logger

from conftest import DOCS, QUERY
from procs import ROOT, free_port, server_env, serving

from reranker_serve.config import ConfigError, load_settings
from reranker_serve.keys import parse_keys
from reranker_serve.observability import WholeLines, escape_controls
from reranker_serve.security import AuthThrottle

KEY, ADMIN = "sk-tenant-key-1", "sk-admin-key-22"
KEYS = json.dumps({"tenant": KEY, "ops": {"key": ADMIN, "admin": True}})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection, then read until the server closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out


# -- item 4: HTTP hygiene ---------------------------------------------------------------------------
def test_an_endless_header_line_gets_431_not_memory(serve):
    srv = serve()
    # The 100 MB header line, cut at what the cap needs to see: 40 KiB with no end.
    reply = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 40_000)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"RERANKER_MAX_HEADER_BYTES" in reply
    assert srv.client.get("/health").status_code == 200


def test_too_many_header_fields_get_431(serve):
    srv = serve()
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    reply = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + fields + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ") and b"RERANKER_MAX_HEADERS" in reply, reply[:200]
    ordinary = b"".join(b"X-H%d: v\r\n" % i for i in range(20))
    reply = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + ordinary + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]


@pytest.fixture(scope="module")
def impatient(serve):
    return serve(header_timeout=0.5, body_timeout=0.5)


def test_slow_headers_get_408_and_the_connection_closes(impatient):
    # Slowloris: the request line, one header, then a byte now and then, never the end.
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(3):
            s.sendall(b"X")
            time.sleep(0.1)
        reply = read_all(s)
    assert reply.startswith(b"HTTP/1.1 408 ") and b"RERANKER_HEADER_TIMEOUT" in reply, reply[:200]


def test_a_connection_that_sends_nothing_is_closed(impatient):
    reply = exchange(impatient.port, b"")
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]


def test_a_slow_body_gets_408_in_the_dialect_shape(impatient):
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as s:
        s.sendall(b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"query\": ")
        reply = read_all(s)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:300]
    assert "RERANKER_BODY_TIMEOUT" in json.loads(body)["error"]  # TEI's shape on /rerank


def test_kept_alive_connections_keep_working_under_the_limits(impatient):
    with httpx.Client(base_url=impatient.url) as client:  # one connection, several requests
        for _ in range(3):
            assert client.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200


def test_connections_beyond_the_cap_are_refused_and_logged(serve):
    srv = serve(max_connections=3, header_timeout=30)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
    try:
        for s in held:
            s.sendall(b"GET /health HTTP/1.1\r\n")  # unfinished: each holds its slot
        time.sleep(0.2)  # let the server accept all three before the fourth
        reply = exchange(srv.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in reply.lower(), reply[:200]
        assert any("refused a connection" in line and "RERANKER_MAX_CONNECTIONS" in line for line in lines), lines
    finally:
        logger.remove(sink)
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # the held connections go, and the server takes new ones again
        try:
            if httpx.get(f"{srv.url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


# -- item 5: system routes --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tenants(serve):
    return serve(api_keys=KEYS)


@pytest.mark.parametrize("path", ["/metrics", "/info", "/v1/models", "/docs", "/openapi.json", "/redoc"])
def test_system_routes_need_a_key(tenants, path):
    r = tenants.client.get(path)
    assert r.status_code == 401, (path, r.status_code)
    assert tenants.client.get(path, headers=bearer("sk-wrong-key")).status_code == 401


def test_probes_stay_open_with_keys(tenants):
    assert tenants.client.get("/health").status_code == 200
    assert tenants.client.get("/ready").status_code == 200


def test_metrics_need_an_admin_key(tenants):
    tenants.client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers=bearer(KEY))
    r = tenants.client.get("/metrics", headers=bearer(KEY))
    assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    r = tenants.client.get("/metrics", headers=bearer(ADMIN))
    assert r.status_code == 200 and 'key="tenant"' in r.text


def test_info_shows_folders_only_to_admins(tenants, tiny_model):
    mine = tenants.client.get("/info", headers=bearer(KEY)).json()
    assert str(tiny_model) not in json.dumps(mine) and mine["model_source"] == tiny_model.name
    models = tenants.client.get("/v1/models", headers=bearer(KEY)).json()
    assert str(tiny_model) not in json.dumps(models) and models["data"][0]["root"] == tiny_model.name
    assert tenants.client.get("/info", headers=bearer(ADMIN)).json()["model_source"] == str(tiny_model)
    # The docs open to a key holder (any).
    assert tenants.client.get("/openapi.json", headers=bearer(KEY)).status_code == 200


def test_metrics_port_serves_scrapers_without_a_key(serve):
    port = free_port()
    srv = serve(api_keys=KEYS, metrics_port=port)
    assert srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers=bearer(KEY)).status_code == 200
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert re.search(r'reranker_requests_total\{dialect="native",key="tenant",route="/rerank",status="200"\} [1-9]',
                     text), text[:2000]


# -- item 6: log forging ----------------------------------------------------------------------------
def test_control_characters_cannot_forge_text_log_lines(tiny_model, tmp_path):
    log = tmp_path / "server.log"
    env = server_env(tiny_model, free_port(), RERANKER_LOG_LEVEL="info")
    with serving(env, log=log) as base:
        port = int(base.rsplit(":", 1)[1])
        forged = b"GET /nope%0A2026-12-01%2000:00:00.000%20|%20CRITICAL%20|%20forged HTTP/1.1\r\n"
        assert b" 404 " in exchange(port, forged + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")[:20]
        exchange(port, b"GET /%1b[2J%1b]0;pwned%07 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        r = httpx.get(f"{base}/health", headers={"X-Request-ID": "x | INFO | y"})
        assert r.headers["x-request-id"] != "x | INFO | y" and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
        assert httpx.get(f"{base}/health", headers={"X-Request-ID": "req-ok.1"}).headers["x-request-id"] == "req-ok.1"
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    assert not any(line.startswith("2026-12-01 00:00:00.000") for line in lines), text[-2000:]
    assert "\x1b" not in text and "\x07" not in text
    assert any("/nope\\n2026-12-01 00:00:00.000 | CRITICAL | forged 404" in line for line in lines), text[-2000:]
    assert any("/\\x1b[2J\\x1b]0;pwned\\x07 404" in line for line in lines), text[-2000:]
    assert not any(" | x | INFO | y" in line or " | x " in line for line in lines)


def test_escape_controls():
    assert escape_controls("plain text, ünïcode") == "plain text, ünïcode"
    assert escape_controls("a\r\nb\x1b[2J\x00\x7f\x85\u2028") == "a\\r\\nb\\x1b[2J\\x00\\x7f\\x85\\u2028"


# -- item 7: metrics across workers -----------------------------------------------------------------
def test_metrics_sum_every_worker(tiny_model, tmp_path):
    metrics_port = free_port()
    env = server_env(tiny_model, free_port(), RERANKER_WORKERS="2", RERANKER_METRICS_PORT=str(metrics_port))
    sent = 24
    with serving(env, log=tmp_path / "server.log") as base:
        def one(_: int) -> str:
            # A fresh connection each: the kernel hands connections to both workers.
            r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS}, timeout=60)
            assert r.status_code == 200
            return r.headers["x-request-id"]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(sent)))
        pattern = r'reranker_requests_total\{dialect="native",key="",route="/rerank",status="200"\} ([0-9.]+)'
        for url in [f"{base}/metrics"] * 4 + [f"http://127.0.0.1:{metrics_port}/metrics"]:
            text = httpx.get(url, timeout=10).text
            found = re.search(pattern, text)
            assert found and float(found[1]) == sent, (url, found and found[1])
            assert re.search(r'reranker_queue_depth\{model="tiny-reranker"\} 0', text), text[:3000]


# -- item 8: empty keys -----------------------------------------------------------------------------
def test_a_blank_api_key_stops_start_up(monkeypatch, tiny_model):
    monkeypatch.setenv("RERANKER_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("RERANKER_API_KEY", "   ")
    with pytest.raises(ConfigError, match="RERANKER_API_KEY: is whitespace only"):
        load_settings(_env_file=None)
    monkeypatch.setenv("RERANKER_API_KEY", "")
    monkeypatch.setenv("RERANKER_HOST", "0.0.0.0")
    with pytest.raises(ConfigError, match="RERANKER_API_KEY is set but empty while RERANKER_HOST=0.0.0.0"):
        load_settings(_env_file=None)
    monkeypatch.setenv("RERANKER_HOST", "127.0.0.1")  # the .env.example line: no key, on loopback
    assert load_settings(_env_file=None).api_key is None


def test_the_server_refuses_to_start_with_a_blank_key(tiny_model):
    env = server_env(tiny_model, free_port(), RERANKER_API_KEY=" ", RERANKER_HOST="0.0.0.0")
    proc = subprocess.run([sys.executable, "-m", "reranker_serve"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "RERANKER_API_KEY" in proc.stderr, proc.stderr


def test_the_digest_of_an_empty_key_is_refused():
    empty = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ValueError, match="SHA-256 of an empty key"):
        parse_keys(json.dumps({"a": {"key_sha256": empty}}))
    with pytest.raises(ValueError, match="must not be blank"):
        parse_keys(json.dumps({"a": " " * 12}))
    assert parse_keys(json.dumps({"a": {"key_sha256": hashlib.sha256(b"real").hexdigest()}}))


# -- item 8: guessing keys --------------------------------------------------------------------------
def test_wrong_keys_are_throttled_per_address(serve):
    srv = serve(api_key=KEY, auth_failures_per_minute=3)
    body = {"query": QUERY, "documents": DOCS}
    for _ in range(3):
        assert srv.client.post("/rerank", json=body, headers=bearer("sk-guess-000")).status_code == 401
    r = srv.client.post("/rerank", json=body, headers=bearer("sk-guess-001"))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
    assert "too many wrong API keys" in r.json()["error"]
    # The right key too, from that address: else a 200 among the 429s would confirm a guess.
    assert srv.client.post("/rerank", json=body, headers=bearer(KEY)).status_code == 429
    assert srv.client.get("/info", headers=bearer(KEY)).status_code == 429
    assert srv.client.get("/health").status_code == 200


def test_auth_throttle_refills_and_stays_bounded():
    now = [0.0]
    throttle = AuthThrottle(6, size=100, clock=lambda: now[0])
    for _ in range(6):
        assert throttle.wait("10.0.0.1") == 0.0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == pytest.approx(10.0)  # one token per 10 s
    assert throttle.wait("10.0.0.2") == 0.0  # another address is untouched
    now[0] = 10.0
    assert throttle.wait("10.0.0.1") == 0.0
    for i in range(1000):  # a spray of addresses keeps the table at its size
        throttle.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(throttle._buckets) == 100


# -- item 8: Host ---------------------------------------------------------------------------------------
def test_a_loopback_server_refuses_foreign_host_names(serve):
    srv = serve()  # 127.0.0.1: loopback names only, by default
    r = srv.client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 421 and "RERANKER_ALLOWED_HOSTS" in r.json()["error"], r.text
    assert srv.client.get("/health", headers={"Host": "rebind.attacker.example:8000"}).status_code == 421
    for host in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", "[::1]"):
        assert srv.client.get("/health", headers={"Host": host}).status_code == 200, host


def test_redirects_do_not_echo_the_host(serve):
    srv = serve(allowed_hosts="*")
    r = srv.client.post("/rerank/", json={"query": QUERY, "documents": DOCS}, headers={"Host": "evil.example"},
                        follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/rerank", r.headers
    r = srv.client.post("/rerank/", json={"query": QUERY, "documents": DOCS}, follow_redirects=True)
    assert r.status_code == 200  # clients follow a relative Location


# -- item 8: bodies -------------------------------------------------------------------------------------
def test_gzip_bodies_are_decoded(client, reference):
    body = gzip.compress(json.dumps({"query": QUERY, "documents": DOCS, "raw_scores": True}).encode())
    r = client.post("/rerank", content=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    expected = reference.logits(QUERY, DOCS)
    for result in r.json()["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)


def test_a_gzip_bomb_is_cut_at_the_size_limit(serve):
    srv = serve(max_request_bytes=1 << 20)
    bomb = gzip.compress(b'{"query": "q", "documents": ["' + b"a" * (64 << 20) + b'"]}')
    assert len(bomb) < 1 << 20
    r = srv.client.post("/rerank", content=bomb, headers={"Content-Type": "application/json",
                                                         "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "RERANKER_MAX_REQUEST_BYTES" in r.json()["error"], r.text


def test_other_encodings_get_415(client):
    r = client.post("/v2/rerank", content=b"\x1b\x00", headers={"Content-Type": "application/json",
                                                               "Content-Encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding 'br' is not supported" in r.json()["message"], r.text


def test_a_5000_digit_number_is_named(client):
    body = b'{"query": "q", "documents": ["a"], "top_n": ' + b"1" * 5000 + b"}"
    r = client.post("/rerank", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "more than 4300 digits" in r.json()["error"], r.text
    assert "UTF-8" not in r.json()["error"]


def test_deep_nesting_is_named(client):
    body = b'{"query": "q", "documents": ["a"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = client.post("/api/v1/rerank", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "nests" in r.json()["detail"], r.text


def test_bytes_that_are_not_utf8_still_say_so(client):
    r = client.post("/rerank", content=b'{"query": "\xff\xfe"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "UTF-8" in r.json()["error"]


# -- item 8: a full disk under the log ----------------------------------------------------------------------
def test_log_lines_stay_whole_when_the_disk_fills():
    written: list[bytes] = []
    # What the disk does to each write(2): all of it, 5 bytes of it, or ENOSPC.
    script = iter(["ok", "half", "full", "full", "full", "ok", "ok"])

    def write(fd: int, data: bytes) -> int:
        step = next(script)
        if step == "full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        kept = data[:5] if step == "half" else data
        written.append(kept)
        return len(kept)

    sink = WholeLines(write=write)
    sink.write("line one\n")
    sink.write("line two is long\n")  # 5 bytes land, then the disk is full (the warning is lost too)
    sink.write("line three\n")  # lost
    assert sink.dropped == 2
    sink.write("line four\n")  # the disk has room again
    lines = b"".join(written).decode().splitlines(keepends=True)
    assert lines[0] == "line one\n"
    assert lines[1] == "line \n"  # the cut line is ended, not fused with the next
    assert lines[2].endswith("| WARNING  | - | 2 log lines were lost while the log could not be written\n")
    assert lines[3:] == ["line four\n"]
    assert sink.dropped == 0


def test_writing_to_a_full_device_drops_lines_and_does_not_raise():
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        sink = WholeLines(fd)
        for i in range(5):
            sink.write(f"line {i}\n")
        assert sink.dropped == 5
    finally:
        os.close(fd)
