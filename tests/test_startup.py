"""A first start that explains itself, as a person at a terminal (or reading a daemon's log) meets
it: real server processes, their exit codes and what they print."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import DOCS, QUERY, build_hub_cache, build_tiny_model
from procs import ROOT, free_port, run_daemon, server_env, serving, start_server, wait_ready

NO_HUB = "http://127.0.0.1:9"  # nothing listens on the discard port: refused at once


def run_server(env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reranker_serve"], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RERANKER_", "HF_"))}
    env.update({"PYTHONUNBUFFERED": "1", "RERANKER_PORT": str(free_port()), **extra})
    return env


# -- no hub ---------------------------------------------------------------------------------------
def test_first_start_without_the_hub_fails_at_once_with_the_remedy(tmp_path):
    env = clean_env(HF_ENDPOINT=NO_HUB, RERANKER_MODEL_CACHE_DIR=str(tmp_path / "models"))
    proc = run_server(env, tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if "ERROR" in line]
    assert len(errors) == 1, proc.stderr  # said once
    error = errors[0]
    assert "cannot download BAAI/bge-reranker-v2-m3" in error and "unreachable" in error
    assert "./download_model.sh BAAI/bge-reranker-v2-m3" in error and "RERANKER_MODEL_PATH=" in error
    # No retry loop: huggingface_hub's backoff is what used to take ~24 s and a dozen warnings.
    assert not any("Retry" in line or "WARNING" in line for line in lines), proc.stderr
    assert lines[-1].startswith("reranker-serve: stopped because a model failed to load")


def test_a_cached_model_serves_when_the_hub_is_unreachable(tmp_path):
    cache = build_hub_cache(tmp_path / "models", {"BAAI/bge-reranker-v2-m3": build_tiny_model})
    log = tmp_path / "server.log"
    env = clean_env(HF_ENDPOINT=NO_HUB, RERANKER_MODEL_CACHE_DIR=str(cache), RERANKER_DTYPE="float32")
    with serving(env, log=log) as base:
        r = httpx.post(f"{base}/v1/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCS})
        assert r.status_code == 200 and len(r.json()["results"]) == len(DOCS)
    text = log.read_text()
    assert "unreachable" in text and "loading the copy of BAAI/bge-reranker-v2-m3 cached in" in text


# -- settings that cannot work here -----------------------------------------------------------------
def test_unresolvable_host_is_named_and_exits_2(tmp_path, tiny_model):
    proc = run_server(clean_env(RERANKER_HOST="no-such-host.invalid", RERANKER_MODEL_PATH=str(tiny_model)), tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("reranker-serve: invalid configuration: RERANKER_HOST: cannot resolve "
                                  "'no-such-host.invalid'")


def test_cuda_without_a_gpu_is_named_and_exits_2(tmp_path, tiny_model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_server(clean_env(RERANKER_DEVICE="cuda", RERANKER_MODEL_PATH=str(tiny_model)), tmp_path)
    assert proc.returncode == 2
    assert "RERANKER_DEVICE=cuda, but CUDA is not available" in proc.stderr


def test_a_port_in_use_is_named_and_exits_2(tmp_path, tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_server(clean_env(RERANKER_PORT=str(port), RERANKER_MODEL_PATH=str(tiny_model)), tmp_path)
    assert proc.returncode == 2
    assert f"RERANKER_PORT: port {port} on 127.0.0.1 is already in use" in proc.stderr


# -- logs -------------------------------------------------------------------------------------------
def test_start_up_log_says_what_loads_and_warns_of_typos_and_nothing_misleading(tmp_path, tiny_model):
    log = tmp_path / "server.log"
    env = server_env(tiny_model, free_port(), RERANKER_MODELPATH="/typo", RERANKER_BACTH_SIZE="4")
    with serving(env, log=log) as base:
        for _ in range(3):
            assert httpx.get(f"{base}/health").status_code == 200
        assert httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
    text = log.read_text()
    assert "RERANKER_MODELPATH is not a setting of reranker-serve and does nothing; did you mean RERANKER_MODEL_PATH?" in text
    assert "RERANKER_BACTH_SIZE is not a setting" in text and "did you mean RERANKER_BATCH_SIZE?" in text
    assert f"loading tiny-reranker from folder '{tiny_model}' on cpu (float32)" in text
    assert "tiny-reranker ready in " in text
    assert "loss_type" not in text and "No modules.json" not in text and "initializing a new" not in text
    # Probes at DEBUG (not shown at INFO); real traffic at INFO.
    assert "GET /health" not in text and "GET /ready" not in text
    assert "POST /rerank 200" in text


def test_json_logs_are_all_json_through_failures_and_warnings(tmp_path):
    env = clean_env(HF_ENDPOINT=NO_HUB, RERANKER_MODEL_CACHE_DIR=str(tmp_path / "models"), RERANKER_LOG_FORMAT="json",
                    RERANKER_MODELPATH="/typo")
    proc = run_server(env, tmp_path)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # The last line is the exit notice on stderr; every log line before it is one JSON object.
    records = [json.loads(line) for line in lines[:-1]]
    levels = {r["level"] for r in records}
    assert {"WARNING", "ERROR", "INFO"} <= levels
    assert lines[-1].startswith("reranker-serve: stopped")


def test_request_ids_in_the_text_log_with_several_workers(tmp_path, tiny_model):
    log = tmp_path / "server.log"
    with serving(server_env(tiny_model, free_port(), RERANKER_WORKERS="2"), log=log, timeout=180) as base:
        r = httpx.post(f"{base}/rerank", json={"query": QUERY, "documents": DOCS},
                       headers={"X-Request-ID": "req-worker-42"})
        assert r.status_code == 200
    lines = log.read_text().splitlines()
    assert any("| req-worker-42 | POST /rerank 200" in line for line in lines), log.read_text()[-2000:]


def test_with_several_workers_ready_means_every_worker_is_ready(tmp_path, tiny_model):
    # Each worker accepts connections while it loads (its /health must answer), so /ready from
    # any of them must wait for all: else a client that waited for /ready meets a warming worker.
    from conftest import RunningServer, settings_for
    from reranker_serve.app import create_app
    from reranker_serve.workers import WorkerReadiness

    app = create_app(settings_for(tiny_model))
    app.state.readiness = WorkerReadiness(str(tmp_path), workers=2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / dead.stdout.strip()).write_text("")  # a worker that was ready, then died
    srv = RunningServer(app, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / str(os.getpid())).exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # this worker marks itself once its model is loaded and warmed
        reply = srv.client.get("/ready")
        assert (reply.status_code, reply.json()["status"]) == (503, "loading")  # one live worker of two
        (tmp_path / str(os.getppid())).write_text("")  # the second worker (any live pid) is ready
        assert srv.client.get("/ready").status_code == 200
    finally:
        srv.stop()


def test_several_workers_stop_when_the_model_fails_to_load(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    env = server_env(folder, free_port(), RERANKER_WORKERS="2")
    started = time.monotonic()
    proc = run_server(env, tmp_path, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not a supported reranker" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("reranker-serve: stopped because a model failed to load")
    print(f"stopped after {time.monotonic() - started:.1f} s")


# -- daemon.sh ------------------------------------------------------------------------------------


def test_daemon_does_not_report_ready_when_another_server_owns_the_port(tmp_path, tiny_model):
    # Another HTTP server that answers /ready and /health with 200, as an old instance would.
    site = tmp_path / "site"
    site.mkdir()
    (site / "ready").write_text('{"status": "ready"}')
    (site / "health").write_text('{"status": "ok"}')
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"], cwd=site,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        env = server_env(tiny_model, port, RERANKER_PIDFILE=str(tmp_path / "d.pid"),
                         RERANKER_LOGFILE=str(tmp_path / "d.log"), RERANKER_START_TIMEOUT="60")
        started = run_daemon("start", env)
        assert started.returncode != 0, started.stdout
        assert "ready at" not in started.stdout
        assert f"port {port} on 127.0.0.1 is already in use" in started.stderr
        status = run_daemon("status", env)
        assert status.returncode == 3 and "not running" in status.stdout
    finally:
        other.terminate()
        other.wait(10)


def test_daemon_restart_keeps_the_settings_it_was_started_with(tmp_path, tiny_model):
    port = free_port()
    common = dict(RERANKER_PIDFILE=str(tmp_path / "d.pid"), RERANKER_LOGFILE=str(tmp_path / "d.log"),
                  RERANKER_START_TIMEOUT="120")
    env = server_env(tiny_model, port, RERANKER_SERVED_MODEL_NAME="as-started", **common)
    try:
        assert run_daemon("start", env).returncode == 0
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["model"] == "as-started"
        # Another shell, other exports: restart must not pick them up.
        other_shell = server_env(tiny_model, free_port(), RERANKER_SERVED_MODEL_NAME="from-another-shell", **common)
        restarted = run_daemon("restart", other_shell)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "recorded at the last start" in restarted.stdout
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["model"] == "as-started"
        assert run_daemon("status", other_shell).returncode == 0
    finally:
        assert run_daemon("stop", env).returncode == 0


def test_the_reloader_keeps_the_request_id_column(tmp_path, tiny_model):
    # --reload (run.sh --dev) serves from a child process of the reloader, built by the factory.
    env, log = server_env(tiny_model, free_port()), tmp_path / "reload.log"
    proc = start_server(["-m", "reranker_serve", "--reload"], env, log=log)
    try:
        port = int(env["RERANKER_PORT"])
        wait_ready(port, proc, timeout=180)
        r = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "documents": DOCS},
                       headers={"X-Request-ID": "req-reload-7"})
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert any("| req-reload-7 | POST /rerank 200" in line for line in log.read_text().splitlines())


# -- progress where people wait ---------------------------------------------------------------------
def test_download_progress_is_log_lines_off_a_terminal(monkeypatch, tmp_path):
    from loguru import logger

    from reranker_serve import hub

    seen: dict[str, object] = {}

    def snapshot_download(repo, **kw):
        seen.update(kw)
        bar = kw["tqdm_class"](total=3 * 2**20, unit="B", unit_scale=True, desc="Fetching weights", mininterval=0)
        bar.update(2**20)
        bar.update(2 * 2**20)
        bar.close()
        return str(tmp_path)

    class Api:
        def list_repo_files(self, *a, **kw):
            return ["config.json", "model.safetensors", "onnx/model.onnx"]

    import huggingface_hub

    monkeypatch.setattr(hub, "probe_hub", lambda: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        hub.fetch("org/model", cache_dir=tmp_path, progress="log")
    finally:
        logger.remove(sink)
    assert seen["tqdm_class"] is hub.LoggedProgress
    assert "*.safetensors" in seen["allow_patterns"]
    assert any(line.startswith("Fetching weights: 1.05MB of 3.15MB (33%) after ") for line in lines), lines
    assert any(line.startswith("Fetching weights: 3.15MB of 3.15MB (100%)") for line in lines), lines


FAKE_PIP = r"""#!/usr/bin/env bash
# A stand-in venv python: `import torch` works, pip "installs" three packages slowly.
case "$*" in
  *"import torch"*"reranker_serve"*) echo "reranker-serve 0.0, torch 0.0" ;;
  "-c import torch") exit 0 ;;
  *"pip"*"install"*"-r"*)
    echo "WARNING: Location 'file:///x' is ignored"
    echo "Collecting fastapi<1,>=0.115 (from -r requirements.txt (line 3))"
    echo "  Downloading fastapi-0.1-py3-none-any.whl (95 kB)"
    echo "Collecting uvicorn (from -r requirements.txt (line 4))"
    echo "Installing collected packages: fastapi, uvicorn, h11"
    echo "Successfully installed fastapi-0.1 uvicorn-0.1 h11-0.1" ;;
  *"pip"*) exit 0 ;;
esac
"""


def test_setup_says_what_it_installs_as_it_goes(tmp_path):
    import shutil

    for name in ("setup.sh", "requirements.txt", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PIP)
    python.chmod(0o755)
    done = subprocess.run(["bash", "setup.sh", "--dev"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "[setup]   Collecting fastapi<1,>=0.115" in lines
    assert "[setup]   Downloading fastapi-0.1-py3-none-any.whl" in lines
    assert "[setup]   installing 3 packages" in lines
    assert not any("WARNING" in line for line in lines)  # pip's chatter stays in the log
    assert "WARNING: Location" in (tmp_path / ".venv" / "setup.log").read_text()
