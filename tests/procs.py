"""Helpers for tests that run the server as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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
