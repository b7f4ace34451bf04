"""Operations: metrics, logs, request ids, offline docs, graceful shutdown, daemon, downloads."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import DOCS, QUERY
from netguard import network_guard
from procs import ROOT, free_port, run_daemon, server_env, serving, start_server, wait_ready


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_what_happened(serve):
    srv = serve(served_model_name="metrics-probe")  # a server of its own: counts start at zero
    c = srv.client
    for _ in range(2):
        assert c.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
    assert c.post("/rerank", json={"query": QUERY, "texts": DOCS[:3]}).status_code == 200
    assert c.post("/v2/rerank", json={"query": "", "documents": DOCS}).status_code == 400
    m = samples(c.get("/metrics").text)
    req = "reranker_requests_total"
    assert m[(req, (("dialect", "native"), ("key", ""), ("route", "/rerank"), ("status", "200")))] == 2
    assert m[(req, (("dialect", "tei"), ("key", ""), ("route", "/rerank"), ("status", "200")))] == 1
    assert m[(req, (("dialect", "cohere-v2"), ("key", ""), ("route", "/v2/rerank"), ("status", "400")))] == 1
    model = (("model", "metrics-probe"),)
    assert m[("reranker_documents_total", model)] == 2 * len(DOCS) + 3
    assert m[("reranker_tokens_total", model)] > 0
    assert m[("reranker_request_duration_seconds_count", (("dialect", "native"),))] == 2
    assert m[("reranker_queue_wait_seconds_count", model)] == 3
    assert m[("reranker_inference_seconds_count", model)] == 3
    assert m[("reranker_batch_size_count", model)] >= 3
    assert m[("reranker_batch_size_sum", model)] == 2 * len(DOCS) + 3
    assert m[("reranker_queue_depth", model)] == 0
    assert m[("reranker_model_load_seconds", model)] > 0


def test_auth_failures_are_counted(serve):
    srv = serve(api_key="k1", served_model_name="auth-metrics")
    srv.client.post("/api/v1/rerank", json={"query": QUERY, "documents": DOCS})
    srv.client.post("/api/v1/rerank", json={"query": QUERY, "documents": DOCS}, headers={"Authorization": "Bearer no"})
    m = samples(srv.client.get("/metrics", headers={"Authorization": "Bearer k1"}).text)  # the admin's key
    assert m[("reranker_auth_failures_total", (("dialect", "jina"),))] == 2


def test_request_id_is_echoed_or_made(client):
    r = client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "trace-42"})
    assert r.headers["x-request-id"] == "trace-42"
    made = client.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_local_assets(client, page):
    html = client.get(page).text
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + re.findall(r"url:\s*'([^']+)'", html)
    refs += re.findall(r"""spec-url=["']([^"']+)["']""", html)
    assert refs, html
    for ref in refs:
        assert ref.startswith("/"), f"{page} references a remote asset: {ref}"
        assert client.get(ref).status_code == 200, ref
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html


@pytest.mark.skipif(not any(Path(p).exists() for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")),
                    reason="Debian's chromium is not installed (apt-get install chromium; bash .ci/run installs it)")
def test_docs_render_in_headless_chromium_without_network(server, tmp_path):
    chromium = next(p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists())
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
         # Every host but loopback resolves nowhere: the page must render from local assets.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=8000",
         "--dump-dom", f"{server.url}/docs"],
        capture_output=True, text=True, timeout=90,
    )
    assert "opblock" in proc.stdout and "/v2/rerank" in proc.stdout, proc.stderr[-2000:]


def test_json_logs_with_request_ids_and_no_api_key(tiny_model, tmp_path):
    log = tmp_path / "server.log"
    env = server_env(tiny_model, free_port(), RERANKER_LOG_FORMAT="json", RERANKER_API_KEY="super-secret-key-123")
    with serving(env, log=log) as base:
        ok = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS},
                        headers={"Authorization": "Bearer super-secret-key-123", "X-Request-ID": "req-abc"})
        assert ok.status_code == 200
        bad = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS},
                         headers={"Authorization": "Bearer wrong-key-456"})
        assert bad.status_code == 401
    lines = [l for l in log.read_text().splitlines() if l.strip()]
    records = [json.loads(l) for l in lines]  # every line is JSON, uvicorn's own included
    assert any("Uvicorn running on" in r["message"] for r in records)
    access = [r for r in records if r.get("access")]
    assert any(r["request_id"] == "req-abc" and r["message"].startswith("POST /rerank 200") for r in access)
    assert any(r["message"].startswith("POST /rerank 401") for r in access)
    text = log.read_text()
    assert "super-secret-key-123" not in text and "wrong-key-456" not in text


def test_sigterm_drains_in_flight_requests(tiny_model, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    env = server_env(tiny_model, port, RERANKER_TEST_DELAY="2")
    proc = start_server([str(ROOT / "tests" / "slow_main.py")], env, log=log)
    try:
        wait_ready(port, proc)
        result: dict = {}

        def slow_request() -> None:
            result["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/rerank", json={"query": QUERY, "documents": DOCS},
                                     timeout=60)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.7)  # the request is in the model now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.HTTPError):  # no longer accepting
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
        t.join(30)
        assert result["r"].status_code == 200 and len(result["r"].json()["results"]) == len(DOCS)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_offline_start_opens_no_outside_connection(tiny_model, tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    guard = tmp_path / "guarded_main.py"
    attempts = tmp_path / "attempts.txt"
    guard.write_text(network_guard(attempts) + '''
from reranker_serve.__main__ import main
sys.exit(main())
''')
    env = server_env(tiny_model, port)
    proc = start_server([str(guard)], env, log=log)
    try:
        wait_ready(port, proc)
        r = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert not attempts.exists(), attempts.read_text()


def test_download_fails_fast_and_cleanly_without_the_hub(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "http://127.0.0.1:9", "HOME": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "download_model.sh"), "BAAI/bge-reranker-base", str(tmp_path / "m")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 15
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot download BAAI/bge-reranker-base" in lines[0] and "unreachable" in lines[0]
    assert "Traceback" not in proc.stderr


def test_daemon_lifecycle_with_a_stale_pidfile(tiny_model, tmp_path):
    port = free_port()
    pidfile, logfile = tmp_path / "run" / "rs.pid", tmp_path / "run" / "rs.log"
    env = server_env(tiny_model, port, RERANKER_PIDFILE=str(pidfile), RERANKER_LOGFILE=str(logfile),
                     RERANKER_START_TIMEOUT="120", RERANKER_STOP_TIMEOUT="20")
    pidfile.parent.mkdir()
    # A pid that is certainly not running: a process that has just exited.
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(str(dead.pid))
    try:
        assert run_daemon("status", env).returncode != 0
        started = run_daemon("start", env)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "stale pidfile" in started.stdout
        pid = int(pidfile.read_text())
        assert run_daemon("status", env).returncode == 0
        again = run_daemon("start", env)
        assert again.returncode == 0 and "already running" in again.stdout and int(pidfile.read_text()) == pid
        r = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 200
        restarted = run_daemon("restart", env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert int(pidfile.read_text()) != pid
        assert run_daemon("status", env).returncode == 0
    finally:
        stopped = run_daemon("stop", env)
    assert stopped.returncode == 0 and not pidfile.exists()
    assert run_daemon("status", env).returncode != 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)


def test_daemon_start_fails_with_the_log_tail(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    env = server_env(folder, free_port(), RERANKER_PIDFILE=str(tmp_path / "p.pid"),
                     RERANKER_LOGFILE=str(tmp_path / "l.log"))
    proc = run_daemon("start", env)
    assert proc.returncode != 0
    assert "exited during start-up" in proc.stdout and "failed to load" in proc.stderr
    assert not (tmp_path / "p.pid").exists()
