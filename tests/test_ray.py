"""Ray Serve: `RERANKER_RAY_REPLICAS=2 python -m reranker_serve.ray` on a local Ray cluster.

The test runs the real command (which starts a local Ray cluster, Serve's proxy and two replicas
of the tiny model), compares its answers with the single-process server's, watches requests
spread over both replicas (each reply names its replica in ``X-Reranker-Replica``), kills a
replica under load, and stops it with SIGTERM. Kept small for a 2-core machine: half a CPU per
replica, a 200 MB object store, no dashboard.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import CLIENT_ALIASES, DOCS, QUERY
from procs import free_port, server_env, start_server
from reranker_serve.config import Settings
from reranker_serve.ray import REPLICA_HEADER, deployment_options

serve_api = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'reranker-serve[ray]')")

NAMES = ("tiny-reranker", *CLIENT_ALIASES)
# One request per dialect; ids that are random per reply are left out of the comparison.
CALLS = [
    ("/rerank", {"query": QUERY, "documents": DOCS, "return_documents": True}),
    ("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}),
    ("/v1/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS, "top_n": 3}),
    ("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS}),
    ("/api/v1/rerank", {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "documents": DOCS}),
    ("/rerank", {"query": "", "documents": DOCS}),  # a 4xx is the same too
]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(entry.name))
    return kids


def descendants(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out += kids[pid]
        todo += kids[pid]
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


PROGRESS_S = 240  # most seconds the Ray start may go without a replica log line
START_CAP_S = 900  # and in all


def _comparable(path: str, reply: httpx.Response) -> tuple[int, object]:
    body = reply.json()
    if path in ("/v1/rerank", "/v2/rerank") and reply.status_code == 200:
        body.pop("id")
    return reply.status_code, body


@pytest.fixture(scope="module")
def ray_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "ray.log"
    env = server_env(
        tiny_model, port,
        RERANKER_MODELS=",".join(f"{name}={tiny_model}" for name in NAMES),
        RERANKER_DEVICE="cpu", RERANKER_MAX_LENGTH="128", RERANKER_NUM_THREADS="1",
        # No shape sweep: these tests are about Serve, and two replicas warming up at once on a
        # busy 2-core CI machine only lengthen their start.
        RERANKER_WARMUP_SECONDS="0",
        RERANKER_RAY_REPLICAS="2", RERANKER_RAY_NUM_CPUS="0.5",
        # Every request must reach a replica's engine (spread, failover), and answers are compared
        # with a server without the score cache (tests/conftest.py's settings).
        RERANKER_CACHE_MB="0",
        RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES=str(200 * 1024 * 1024),
        RAY_DEDUP_LOGS="0",  # every replica's log lines, not one per cluster
        # Serve's proxy must answer its readiness check in 5 s (3 misses and Serve kills it, and the
        # command exits 1): under CPU load (two busy loops beside the suite) it missed them while
        # importing. A loaded test machine is not a failed proxy.
        RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S="60",
    )
    env.pop("RERANKER_MODEL_PATH")
    proc = start_server(["-m", "reranker_serve.ray"], env, log=log)
    url = f"http://127.0.0.1:{port}"
    # Bounded by progress, not by a fixed time: on a loaded 2-core machine (load average 15 while
    # the suite ran beside other work) two replicas importing torch at half a CPU each took over
    # 240 s, the fixed deadline this wait had, and the module's first test was reported failed
    # (issue 24 item 9). Each replica line (import, load, ready) gives the start another
    # PROGRESS_S; a start that stops making progress, or exits, still fails, named.
    started = time.monotonic()
    deadline, seen = started + PROGRESS_S, 0
    while True:  # the command returns control only once both replicas have loaded their model
        if proc.poll() is not None:
            pytest.fail(f"python -m reranker_serve.ray exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        text = log.read_text()
        # Replica lines reach this log through Ray's log monitor, after the replica wrote them
        # (and possibly after the driver's own "serving" line): wait for both "ready" lines too,
        # so the test's count of model loads does not race the forwarding.
        try:
            if "serving 2 replica" in text and text.count(" ready in ") >= 2 \
                    and httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if text.count("(ServeReplica") > seen:
            seen, deadline = text.count("(ServeReplica"), time.monotonic() + PROGRESS_S
        if time.monotonic() > min(deadline, started + START_CAP_S):
            proc.kill()
            pytest.fail(f"Ray Serve not ready (no replica progress for {PROGRESS_S} s, or {START_CAP_S} s in all):\n"
                        f"{text[-3000:]}")
        time.sleep(0.5)
    client = httpx.Client(base_url=url, timeout=30)
    try:
        yield proc, client, log
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_ray_answers_like_the_single_process_server(ray_server, server):
    _, ray_client, log = ray_server
    for path, body in CALLS:
        expected = _comparable(path, server.client.post(path, json=body))
        got = ray_client.post(path, json=body)
        assert _comparable(path, got) == expected, (path, body)
        assert got.headers[REPLICA_HEADER]
        if got.status_code == 200:
            assert float(got.headers["x-total-time"]) >= 0  # TEI's timing headers come through Serve
    # System routes: the same routes and bodies.
    assert ray_client.get("/health").json() == {"status": "ok"}
    assert (ray_client.get("/ready").status_code, ray_client.get("/ready").json()) == (200, {"status": "ready"})
    info, expected_info = ray_client.get("/info").json(), server.client.get("/info").json()
    assert info == expected_info
    def models(client: httpx.Client) -> list[dict]:  # `created` is each process's start time
        return [{k: v for k, v in m.items() if k != "created"} for m in client.get("/v1/models").json()["data"]]

    assert models(ray_client) == models(server.client)
    metrics = ray_client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    # The same instruments. prometheus_client writes a `<name>_created` gauge family beside a
    # counter or histogram only once it has a labelled child, i.e. once that process has counted
    # something: the replica that answers /metrics may not be the one that scored the requests
    # above (Serve picks it), and then it has no `_created` families while the server has. That
    # was this test's intermittent failure (issue 24 item 9); the instruments are what is compared.
    def instruments(text: str) -> set[str]:
        return {f.name.removesuffix("_created") for f in text_string_to_metric_families(text)}

    families = instruments(metrics.text)
    assert families == instruments(server.client.get("/metrics").text)
    assert "reranker_queue_depth" in families
    # The client's request id comes back once (Serve's proxy writes it; the replica's copy is dropped).
    reply = ray_client.post("/rerank", json={"query": QUERY, "documents": DOCS}, headers={"X-Request-ID": "abc-123"})
    assert reply.headers.get_list("x-request-id") == ["abc-123"]
    # Each replica loaded the model once: two "loaded" lines for two replicas, no more.
    assert log.read_text().count(" ready in ") == 2  # one model load per replica


def test_requests_spread_over_both_replicas(ray_server, server):
    _, client, _ = ray_server
    expected = server.client.post("/rerank", json={"query": QUERY, "documents": DOCS}).json()
    seen: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:
            for _ in range(10):
                r = c.post("/rerank", json={"query": QUERY, "documents": DOCS})
                assert r.status_code == 200 and r.json() == expected
                with lock:
                    seen[r.headers[REPLICA_HEADER]] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sum(seen.values()) == 40
    assert len(seen) == 2 and min(seen.values()) >= 5, seen  # both replicas took a real share


def test_a_killed_replica_loses_no_request(ray_server, server):
    proc, client, log = ray_server
    replicas = [pid for pid in descendants(proc.pid) if "ServeReplica:reranker" in cmdline(pid)]
    assert len(replicas) == 2, [cmdline(p) for p in descendants(proc.pid)]
    body = {"query": QUERY, "documents": DOCS * 4}
    expected = server.client.post("/rerank", json=body).json()
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    replicas_seen: set[str] = set()
    stop_at = time.monotonic() + 8
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(base_url=str(client.base_url), timeout=30) as c:  # a hang would be a timeout
            while time.monotonic() < stop_at:
                try:
                    r = c.post("/rerank", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    if r.status_code == 200 and r.json() == expected:
                        outcomes["ok"] += 1
                        replicas_seen.add(r.headers[REPLICA_HEADER])
                    elif r.status_code == 503 and r.headers.get("retry-after"):
                        outcomes["503 + Retry-After"] += 1  # told, and told when to come back
                    else:
                        problems.append(f"{r.status_code} {dict(r.headers)} {r.text[:200]}")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.kill(replicas[0], signal.SIGKILL)  # mid-load: requests are in flight on both replicas
    for t in threads:
        t.join(60)
    assert not problems, problems[:5]
    assert outcomes["ok"] > 20, outcomes
    # The kill did hit requests in flight, and they were sent again rather than failed: by our
    # failover layer (a request the dead replica held), or by Serve's own router (a request it
    # was assigning to the dead replica, logged with its request id). Which of the two a kill
    # hits is a matter of timing: under load the kill often lands between assignments (seen once
    # in a full run on a loaded 2-core machine), so either is the evidence; no request was lost.
    text = log.read_text()
    assert "Serve ended a request without a reply; sending it again" in text or \
        "sending it to another replica" in text or \
        re.search(r"proxy \S+ [0-9a-f-]{36} -- Replica\(.*\) will not be considered for future requests "
                  r"because it has died", text), "the kill hit no request in flight"
    # Serve replaces the dead replica: a third replica id answers within a bounded time.
    deadline = time.monotonic() + 120
    while len(replicas_seen) < 3 and time.monotonic() < deadline:
        r = client.post("/rerank", json={"query": QUERY, "documents": DOCS})
        assert r.status_code == 200
        replicas_seen.add(r.headers[REPLICA_HEADER])
    assert len(replicas_seen) == 3, replicas_seen


def test_sigterm_shuts_down_cleanly(ray_server):
    proc, client, log = ray_server
    assert client.post("/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
    family = descendants(proc.pid)
    assert any("ServeReplica" in cmdline(pid) for pid in family)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(90) == 0, log.read_text()[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"no exit 90 s after SIGTERM:\n{log.read_text()[-3000:]}")
    deadline = time.monotonic() + 30  # Ray's processes (GCS, raylet, workers) go with it
    while (left := [pid for pid in family if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [cmdline(pid) for pid in left]
    with pytest.raises(httpx.ConnectError):
        httpx.get(str(client.base_url.join("/health")), timeout=2)


def test_deployment_options_come_from_settings():
    fixed = deployment_options(Settings(_env_file=None, ray_replicas=3, ray_num_cpus=2, ray_num_gpus=0.5))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    auto = deployment_options(Settings(_env_file=None, ray_replicas=2, ray_min_replicas=1, ray_max_replicas=8,
                                       ray_target_ongoing_requests=4, shutdown_timeout=45))
    assert "num_replicas" not in auto and auto["graceful_shutdown_timeout_s"] == 45
    # Serve itself accepts them (its own validation of the autoscaling config).
    deployment = serve_api.deployment(**auto)(lambda: None)
    config = deployment._deployment_config.autoscaling_config
    assert (config.min_replicas, config.initial_replicas, config.max_replicas) == (1, 2, 8)
    assert config.target_ongoing_requests == 4


def test_ray_settings_are_validated():
    from reranker_serve.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match="RERANKER_RAY_REPLICAS .5. must lie between RERANKER_RAY_MIN_REPLICAS"):
        load_settings(_env_file=None, ray_replicas=5, ray_max_replicas=4)
    with pytest.raises(ConfigError, match="RERANKER_RAY_NUM_GPUS"):
        load_settings(_env_file=None, ray_num_gpus=-1)


def test_a_model_that_does_not_load_fails_the_command(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["Nope"], "model_type": "nope"}')
    env = server_env(broken, free_port(), RERANKER_RAY_REPLICAS="1", RERANKER_RAY_NUM_CPUS="0.5",
                     RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES=str(200 * 1024 * 1024))
    log = tmp_path / "ray.log"
    proc = start_server(["-m", "reranker_serve.ray"], env, log=log)
    try:
        assert proc.wait(180) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert "not a supported reranker" in text and "Ray Serve deployment failed" in text


# -- the proxy's failover, as an ASGI middleware around stand-ins for Serve's routing ------------
def _run_failover(attempts: list[str], *, body: bytes = b'{"q": 1}', chunks: int = 1) -> tuple[list[dict], int]:
    """Serve's routing answers each attempt as scripted: "replica" (our app's reply), "serve-500"
    (Serve's own 500, no replica header), "silent" (returns without a reply), "raise", "replica-503"."""
    import asyncio

    from reranker_serve.ray import ReplicaFailover

    script = list(attempts)
    calls = 0

    async def routing(scope, receive, send):
        nonlocal calls
        calls += 1
        got = b""
        while True:
            message = await receive()
            got += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert got == body  # every attempt sees the whole body
        what = script.pop(0)
        if what == "silent":
            return
        if what == "raise":
            raise RuntimeError("The actor died unexpectedly before finishing this task.")
        status, headers = {"replica": (200, [(b"x-reranker-replica", b"r1")]), "serve-500": (500, []),
                           "replica-503": (503, [(b"x-reranker-replica", b"r1"), (b"retry-after", b"5")])}[what]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": got})

    middleware = ReplicaFailover(routing)
    middleware.backoff_s = 0
    size = len(body) // chunks
    incoming = [{"type": "http.request", "body": body[i * size:(i + 1) * size if i < chunks - 1 else None],
                 "more_body": i < chunks - 1} for i in range(chunks)]
    sent: list[dict] = []

    async def receive():
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(middleware({"type": "http", "headers": []}, receive, send), 10))
    return sent, calls


@pytest.mark.parametrize("failure", ["serve-500", "silent", "raise"])
def test_failover_sends_a_failed_request_again(failure):
    sent, calls = _run_failover([failure, failure, "replica"])
    assert calls == 3
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]  # one reply only
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"q": 1}'


def test_failover_gives_up_with_503_and_retry_after():
    sent, calls = _run_failover(["serve-500", "silent", "raise", "serve-500"])
    assert calls == 4
    assert sent[0]["status"] == 503 and (b"retry-after", b"1") in sent[0]["headers"]
    assert b"no replica could answer" in sent[1]["body"]


def test_failover_passes_a_replica_answer_through():
    sent, calls = _run_failover(["replica-503"])  # the replica's own 503 (e.g. model loading): not retried
    assert calls == 1 and sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]


def test_failover_streams_bodies_too_large_to_keep():
    from reranker_serve.ray import ReplicaFailover

    body = b"x" * (ReplicaFailover.max_replay_bytes + 10)
    sent, calls = _run_failover(["serve-500", "replica"], body=body, chunks=4)
    assert calls == 1 and sent[0]["status"] == 500  # no copy kept, no second chance
