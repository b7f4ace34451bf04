"""Helpers for tests that run the server as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(model: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RERANKER_", "HF_"))}
    env.update(RERANKER_MODEL_PATH=str(model), RERANKER_PORT=str(port), RERANKER_DTYPE="float32",
               RERANKER_USE_OFFLINE_MODE="true", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def start_server(args: list[str], env: dict[str, str], *, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_ready(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server not ready in time")


@contextmanager
def serving(env: dict[str, str], *, log: Path, timeout: float = 120) -> Iterator[str]:
    """`python -m reranker_serve` with ``env``, ready; yields its base URL; SIGTERM and a clean
    exit (0) when the block ends."""
    import signal

    port = int(env["RERANKER_PORT"])
    proc = start_server(["-m", "reranker_serve"], env, log=log)
    try:
        wait_ready(port, proc, timeout=timeout)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]


def run_daemon(cmd: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "daemon.sh"), cmd], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
