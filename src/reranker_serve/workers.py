"""The contract between `python -m reranker_serve` and its worker processes (RERANKER_WORKERS > 1,
or --reload): uvicorn starts each worker as a fresh interpreter that builds its app from
RERANKER_* itself (``app.create_worker_app``); what the parent shares with them travels in the
``_RERANKER_SERVE_*`` variables below, each naming a file or folder the parent made.

- the bucket file: one rate-limit memory for every worker, so a key's limits hold server-wide;
- the failure file: a worker whose model failed to load writes why, and exits with uvicorn's
  start-up failure code, which makes uvicorn's supervisor stop every worker instead of
  restarting this one (and loading the broken model again, forever); the parent reads it to
  exit 1;
- the ready folder: each worker creates a file named by its pid once its models are loaded and
  warmed up, and /ready is 200 only when every live worker has. Each worker accepts connections
  while it loads (so /health answers), so without this a client that waited for /ready could
  reach a worker still warming up and get 503;
- prometheus_client's multiprocess folder (its own PROMETHEUS_MULTIPROC_DIR), summed by the
  parent on RERANKER_METRICS_PORT.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .keys import RateLimiter
from .observability import MULTIPROCESS_VARIABLE

__all__ = ["BUCKETS_FILE_VARIABLE", "FAILURE_FILE_VARIABLE", "READY_DIR_VARIABLE", "STARTUP_FAILURE",
           "WorkerReadiness", "buckets_file", "readiness", "report_failure", "worker_environment"]

BUCKETS_FILE_VARIABLE = "_RERANKER_SERVE_BUCKETS_FILE"
FAILURE_FILE_VARIABLE = "_RERANKER_SERVE_FAILURE_FILE"
READY_DIR_VARIABLE = "_RERANKER_SERVE_READY_DIR"
STARTUP_FAILURE = 3  # uvicorn.server.STARTUP_FAILURE


# -- in a worker ---------------------------------------------------------------------------------
def buckets_file() -> str | None:
    """The rate-limit memory the parent made, or None (one process: its own)."""
    return os.environ.get(BUCKETS_FILE_VARIABLE)


def report_failure(message: str) -> None:
    """Tell the parent why this worker's model failed (it exits 1 saying so)."""
    path = os.environ.get(FAILURE_FILE_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(message + "\n")


class WorkerReadiness:
    """The ready workers of a multi-process server, counted from pid files in one folder."""

    def __init__(self, folder: str, workers: int) -> None:
        self.folder, self.workers = folder, workers

    def mark(self) -> None:
        Path(self.folder, str(os.getpid())).touch()

    def all_ready(self) -> bool:
        ready = 0
        for entry in os.scandir(self.folder):
            try:
                os.kill(int(entry.name), 0)  # a worker that died (and was replaced) does not count
            except (ValueError, ProcessLookupError):
                continue
            except PermissionError:
                pass  # alive, someone else's
            ready += 1
        return ready >= self.workers


def readiness(workers: int) -> WorkerReadiness | None:
    """This worker's share of the ready folder, or None outside a multi-process server."""
    folder = os.environ.get(READY_DIR_VARIABLE)
    return WorkerReadiness(folder, workers) if folder else None


# -- in the parent -------------------------------------------------------------------------------
@contextlib.contextmanager
def worker_environment() -> Iterator[tuple[Path, str]]:
    """Make the shared files and folders, name them in the environment the workers inherit,
    and remove them afterwards. Yields (the failure file, the metrics folder)."""
    buckets, buckets_fd = RateLimiter.create_file()
    os.environ[BUCKETS_FILE_VARIABLE] = buckets
    try:
        with tempfile.NamedTemporaryFile("r", prefix="reranker-serve-", suffix=".failure") as failure, \
                tempfile.TemporaryDirectory(prefix="reranker-serve-ready-") as ready, \
                _metrics_folder() as metrics_dir:
            os.environ[FAILURE_FILE_VARIABLE] = failure.name
            os.environ[READY_DIR_VARIABLE] = ready
            yield Path(failure.name), metrics_dir
    finally:
        RateLimiter.remove_file(buckets, buckets_fd)


@contextlib.contextmanager
def _metrics_folder() -> Iterator[str]:
    """prometheus_client's multiprocess folder for the workers: PROMETHEUS_MULTIPROC_DIR if the
    operator set one (emptied first: files of an earlier run would be summed in), else a fresh one."""
    given = os.environ.get(MULTIPROCESS_VARIABLE)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="reranker-serve-metrics-") as folder:
        os.environ[MULTIPROCESS_VARIABLE] = folder
        yield folder
