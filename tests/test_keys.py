"""Named API keys: per-key limits with a correct Retry-After while other keys are served, hashed
keys, rotation without a restart, the key's name (never the key) in logs and metrics, limits
shared by the worker processes of one server."""

from __future__ import annotations

import hashlib
import json
import signal
import time

import httpx
import pytest

from reranker_serve.bootstrap import start_up_settings
from reranker_serve.config import ConfigError
from conftest import DOCS, QUERY
from procs import free_port, server_env, serving, start_server, wait_ready

CHAT, NIGHTLY, HASHED = "sk-chat-0123456789", "sk-nightly-0123456789", "sk-hashed-0123456789"
KEYS = {
    "chat": {"key": CHAT, "requests_per_second": 0.5, "requests_burst": 2},
    "nightly": {"key": NIGHTLY, "priority": "batch", "pairs_per_minute": 60, "pairs_burst": 10},
    "hashed": {"key_sha256": hashlib.sha256(HASHED.encode()).hexdigest()},
}
BODY = {"query": QUERY, "documents": DOCS}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(serve):
    return serve(api_keys=json.dumps(KEYS))


def test_over_its_request_limit_a_key_gets_429_with_retry_after_while_others_are_served(keyed):
    c = keyed.client
    assert [c.post("/v2/rerank", json=BODY, headers=bearer(CHAT)).status_code for _ in range(2)] == [200, 200]
    r = c.post("/v2/rerank", json=BODY, headers=bearer(CHAT))
    assert r.status_code == 429
    # Two requests in the bucket, refilled at 0.5/s: the next one is there in about 2 s.
    assert r.headers["retry-after"] == "2"
    assert "key 'chat' is over its limit of 0.5 requests per second" in r.json()["message"]
    # Another key is not held back by chat's limit.
    assert c.post("/v2/rerank", json=BODY, headers=bearer(HASHED)).status_code == 200
    time.sleep(2.1)
    assert c.post("/v2/rerank", json=BODY, headers=bearer(CHAT)).status_code == 200


def test_pair_limit_counts_pairs_and_refuses_what_could_never_fit(keyed):
    c = keyed.client
    five = {"query": QUERY, "documents": DOCS[:5]}
    assert c.post("/rerank", json=five, headers=bearer(NIGHTLY)).status_code == 200
    assert c.post("/rerank", json=five, headers=bearer(NIGHTLY)).status_code == 200
    r = c.post("/api/v1/rerank", json=five, headers=bearer(NIGHTLY))
    assert r.status_code == 429 and r.headers["retry-after"] in ("4", "5")  # 5 pairs at 1 pair/s
    assert "60 pairs per minute (pairs_per_minute, chunks included)" in r.json()["detail"]
    eleven = {"query": QUERY, "documents": (DOCS * 3)[:11]}
    r = c.post("/v1/rerank", json=eleven, headers=bearer(NIGHTLY))
    assert r.status_code == 400 and "exceed the 10 that key 'nightly' may send at once" in r.json()["message"]


def test_hashed_keys_and_wrong_keys(keyed):
    assert keyed.client.post("/rerank", json=BODY, headers=bearer(HASHED)).status_code == 200
    r = keyed.client.post("/rerank", json=BODY, headers=bearer("sk-not-a-key-at-all"))
    assert r.status_code == 401 and r.json()["error"] == "invalid API key"
    assert keyed.client.get("/health").status_code == 200  # open routes stay open


def test_x_priority_must_be_a_known_one(keyed):
    r = keyed.client.post("/rerank", json=BODY, headers={**bearer(HASHED), "X-Priority": "urgent"})
    assert r.status_code == 422 and "X-Priority must be interactive or batch" in r.json()["error"]


def test_bad_keys_setting_is_named_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="RERANKER_API_KEYS: key 'x': give exactly one of key and key_sha256"):
        start_up_settings(_env_file=None, api_keys='{"x": {"priority": "batch"}}')
    with pytest.raises(ConfigError, match="RERANKER_API_KEYS: is neither a JSON object nor an existing file"):
        start_up_settings(_env_file=None, api_keys=str(tmp_path / "missing.json"))


def test_keys_rotate_without_a_restart_and_names_not_keys_are_logged(tmp_path, tiny_model):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"team-a": "sk-old-team-a-key"}))
    log = tmp_path / "server.log"
    metrics_port = free_port()  # /metrics needs an admin key on the main port (issue 21): scrape this one
    env = server_env(tiny_model, free_port(), RERANKER_API_KEYS=str(keys), RERANKER_LOG_FORMAT="json",
                     RERANKER_METRICS_PORT=str(metrics_port))
    with serving(env, log=log) as base:
        assert httpx.post(f"{base}/rerank", json=BODY, headers=bearer("sk-old-team-a-key")).status_code == 200
        keys.write_text(json.dumps({"team-a": "sk-new-team-a-key"}))
        # Picked up on the next request after the file changed (checked at most once a second).
        deadline = time.monotonic() + 10
        while httpx.post(f"{base}/rerank", json=BODY, headers=bearer("sk-new-team-a-key")).status_code != 200:
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.2)
        assert httpx.post(f"{base}/rerank", json=BODY, headers=bearer("sk-old-team-a-key")).status_code == 401
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    access = [r for r in records if r.get("access") and r["message"].startswith("POST /rerank 200")]
    assert access and all(r["key"] == "team-a" and r["message"].endswith("key=team-a") for r in access)
    assert any("API keys reloaded" in r["message"] for r in records)
    assert 'key="team-a"' in metrics
    for secret in ("sk-old-team-a-key", "sk-new-team-a-key"):
        assert secret not in log.read_text() and secret not in metrics


def test_sighup_reloads_the_keys_at_once(tmp_path, tiny_model):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"a": "sk-first-key-123"}))
    port, log = free_port(), tmp_path / "server.log"
    proc = start_server(["-m", "reranker_serve"], server_env(tiny_model, port, RERANKER_API_KEYS=str(keys)), log=log)
    try:
        wait_ready(port, proc)
        base = f"http://127.0.0.1:{port}"
        assert httpx.post(f"{base}/rerank", json=BODY, headers=bearer("sk-first-key-123")).status_code == 200
        keys.write_text(json.dumps({"a": "sk-second-key-456"}))
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert httpx.post(f"{base}/rerank", json=BODY, headers=bearer("sk-second-key-456")).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_limits_hold_across_the_worker_processes(tmp_path, tiny_model):
    keys = json.dumps({"w": {"key": "sk-workers-key-1", "requests_per_second": 0.01, "requests_burst": 3}})
    log = tmp_path / "server.log"
    env = server_env(tiny_model, free_port(), RERANKER_API_KEYS=keys, RERANKER_WORKERS="2",
                     RERANKER_LOG_FORMAT="json")
    with serving(env, log=log, timeout=180) as base:
        # /ready answered from one worker; wait until the other has loaded its model too.
        deadline = time.monotonic() + 120
        while log.read_text().count(" ready in ") < 2:
            assert time.monotonic() < deadline, "the second worker never loaded its model"
            time.sleep(0.2)
        def workers() -> set[int]:
            records = [json.loads(line) for line in log.read_text().splitlines() if line.strip().startswith("{")]
            return {r["pid"] for r in records if r.get("access") and r["message"].startswith("POST /rerank")}

        statuses = []
        # A new connection each: the kernel hands them to whichever worker is accepting, so on a
        # loaded machine one worker may take a long run of them; go on (bounded) until both have
        # answered some. The bucket refills one request per 100 s: far longer than this loop.
        while len(statuses) < 12 or (len(workers()) < 2 and len(statuses) < 60):
            with httpx.Client() as fresh:
                statuses.append(fresh.post(f"{base}/rerank", json=BODY, headers=bearer("sk-workers-key-1")).status_code)
        answered_by = workers()
    assert len(answered_by) == 2, "the requests did not reach both workers"
    # Without a shared bucket each worker would admit its own 3.
    assert sorted(statuses) == [200] * 3 + [429] * (len(statuses) - 3), statuses


def test_a_keys_batch_priority_lets_interactive_requests_pass_its_flood(tiny_model):
    """Over HTTP, with a slow fake model: the nightly key's flood (priority batch by default)
    is overtaken by the chat key's request (interactive)."""
    import threading

    from reranker_serve.app import create_app
    from reranker_serve.engine import Engine
    from conftest import RunningServer, settings_for
    from fakes import FakeModel

    settings = settings_for(tiny_model, api_keys=json.dumps({"nightly": {"key": NIGHTLY, "priority": "batch"},
                                                             "chat": CHAT}), batch_size=2)
    model = FakeModel(delay=0.05)
    srv = RunningServer(create_app(settings, engines=[Engine(model, settings)]))
    finished: list[str] = []

    def post(name: str, key: str, docs: list[str]) -> None:
        r = httpx.post(f"{srv.url}/rerank", json={"query": "q", "documents": docs}, headers=bearer(key), timeout=60)
        assert r.status_code == 200
        finished.append(name)

    try:
        flood = threading.Thread(target=post, args=("nightly", NIGHTLY, ["7 7 7"] * 40))
        flood.start()
        time.sleep(0.3)  # the flood is queued and being served, two pairs a batch
        post("chat", CHAT, ["9 9 9"] * 2)
        flood.join(60)
    finally:
        srv.stop()
    assert finished == ["chat", "nightly"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_server_killed_with_sigkill_leaves_no_bucket_file_behind(tmp_path, tiny_model, workers):
    """Issue 21: kill -9 left /tmp/reranker-serve-*.buckets behind. The buckets are in memory of
    the processes (one process) or a memfd the workers open through /proc (several): no name
    in any folder, whatever ends the server."""
    import os
    import subprocess
    import sys

    from procs import ROOT

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    keys = json.dumps({"k": {"key": "sk-kill-key-0123", "requests_per_second": 0.01, "requests_burst": 2}})
    env = server_env(tiny_model, port, RERANKER_API_KEYS=keys, RERANKER_WORKERS=workers, RERANKER_WARMUP_SECONDS="0",
                     TMPDIR=str(tmp))
    with (tmp_path / "server.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "reranker_serve"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(port, proc, timeout=180)
        statuses = [httpx.post(f"http://127.0.0.1:{port}/rerank", json=BODY, headers=bearer("sk-kill-key-0123"),
                               timeout=60).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]  # the buckets work
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    time.sleep(0.5)  # the workers (same process group) are gone too
    assert not list(tmp.glob("reranker-serve-*.buckets"))
