"""`python -m reranker_serve` / `reranker-serve`: serve with uvicorn, configured by RERANKER_*.

Exit codes: 0 after a clean shutdown, 1 when the model failed to load, 2 for bad configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from typing import Iterator

from .config import ENV_PREFIX, SCRIPT_VARIABLES, ConfigError, Settings, apply_offline_environment, load_settings

__all__ = ["main"]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="reranker-serve",
        description="Serve a cross-encoder reranker. Every setting is a RERANKER_* variable (see .env.example); "
        "the options below override the matching variables.",
    )
    parser.add_argument("--host", help="RERANKER_HOST")
    parser.add_argument("--port", type=int, help="RERANKER_PORT")
    parser.add_argument("--workers", type=int, help="RERANKER_WORKERS")
    parser.add_argument("--model-path", help="RERANKER_MODEL_PATH")
    parser.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    return parser.parse_args(argv)


def _preflight(settings: Settings) -> None:
    """Settings that parse but cannot work on this machine: found now, named, exit 2 — not a
    traceback from deep inside uvicorn or torch later."""
    import socket

    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"invalid configuration: RERANKER_HOST: cannot resolve {settings.host!r} ({exc.strerror}); "
                          "use an address of this machine, 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, address = infos[0]
    if settings.metrics_port is not None and settings.metrics_port == settings.port:
        raise ConfigError("invalid configuration: RERANKER_METRICS_PORT must differ from RERANKER_PORT "
                          f"({settings.port}); /metrics is on RERANKER_PORT as well, for admin keys")
    ports = [("RERANKER_PORT", settings.port)]
    if settings.metrics_port is not None:
        ports.append(("RERANKER_METRICS_PORT", settings.metrics_port))
    for variable, port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((address[0], port, *address[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"invalid configuration: {variable}: port {port} on {settings.host} is already in use "
                        f"by another process; stop it or choose another {variable}"
                    ) from None
                raise ConfigError(f"invalid configuration: RERANKER_HOST: cannot listen on {settings.host}:{port} "
                                  f"({exc.strerror}); use an address of this machine, 127.0.0.1 or 0.0.0.0") from None
    if settings.device in ("cuda", "mps"):
        from .device import resolve_device

        try:
            resolve_device(settings.device)
        except ConfigError as exc:
            raise ConfigError(f"invalid configuration: {exc}; use RERANKER_DEVICE=auto or cpu") from None


def _warn_unknown_variables(environ: dict[str, str]) -> None:
    """A RERANKER_* variable that is no setting is most likely a typo that silently does nothing."""
    import difflib

    from loguru import logger

    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | set(SCRIPT_VARIABLES)
    for name in sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known):
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see .env.example for the settings"
        logger.warning("{} is not a setting of reranker-serve and does nothing{}", name, hint)


def _env_file_variables() -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(".env").items()} if os.path.isfile(".env") else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:  # `reranker-serve evaluate ...`: the evaluation harness
        from .evaluation.harness import main as evaluate

        return evaluate(argv[1:])
    args = _parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("workers", args.workers),
                           ("model_path", args.model_path))
        if value is not None
    }
    try:
        settings = load_settings(**overrides)
        _preflight(settings)
    except ConfigError as exc:
        print(f"reranker-serve: {exc}", file=sys.stderr)
        return 2
    # Before the model libraries are imported: huggingface_hub reads HF_HUB_OFFLINE once.
    apply_offline_environment(offline=settings.use_offline_mode)
    from .observability import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)
    _warn_unknown_variables({**_env_file_variables(), **os.environ})

    import uvicorn

    # log_config=None: uvicorn's loggers propagate to ours instead of getting their own handlers.
    from .protocol import uvicorn_options

    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
                  timeout_graceful_shutdown=settings.shutdown_timeout, **uvicorn_options(settings))
    if settings.workers > 1 or args.reload:
        return _serve_in_workers(settings, overrides, reload=args.reload, **common)

    from .app import create_app

    failures: list[str] = []
    server: uvicorn.Server | None = None

    def stop_on_load_failure(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(create_app(settings, on_load_failure=stop_on_load_failure), **common))
    # uvicorn drains and then re-raises the SIGTERM it caught, restoring the handler that was
    # there before it started. A drained shutdown is a clean one: let that re-raise land on a
    # no-op so the process exits 0 (systemd, daemon.sh and orchestrators read exit codes).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return _exit_code(failed=bool(failures))


def _exit_code(*, failed: bool) -> int:
    if failed:
        # The cause was logged where it happened, with its remedy; this only closes the story.
        print("reranker-serve: stopped because a model failed to load (the error above says why)", file=sys.stderr)
        return 1
    return 0


def _serve_in_workers(settings: Settings, overrides: dict[str, object], *, reload: bool, **common: object) -> int:
    """Several processes (or the reloader): each worker builds its app from RERANKER_* itself."""
    import tempfile

    import uvicorn

    from .app import FAILURE_FILE_VARIABLE, READY_DIR_VARIABLE
    from .keys import BUCKETS_FILE_VARIABLE, RateLimiter

    for key, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)
    # One bucket memory for every worker: a key's rate limits hold for the server, not per process.
    buckets, buckets_fd = RateLimiter.create_file()
    os.environ[BUCKETS_FILE_VARIABLE] = buckets
    scraped = None
    try:
        with tempfile.NamedTemporaryFile("r", prefix="reranker-serve-", suffix=".failure") as failure, \
                tempfile.TemporaryDirectory(prefix="reranker-serve-ready-") as ready, \
                _metrics_folder() as metrics_dir:
            os.environ[FAILURE_FILE_VARIABLE] = failure.name
            os.environ[READY_DIR_VARIABLE] = ready
            if settings.metrics_port is not None:
                from .observability import serve_metrics, summed_registry

                class Summed:  # read afresh at each scrape: workers come and go
                    def collect(self):  # type: ignore[no-untyped-def]
                        return summed_registry(metrics_dir).collect()

                scraped = serve_metrics(host=settings.host, port=settings.metrics_port, registry=Summed())
            uvicorn.run("reranker_serve.app:create_worker_app", factory=True, workers=settings.workers, reload=reload,
                        **common)  # type: ignore[arg-type]
            failed = failure.read().strip()
    finally:
        RateLimiter.remove_file(buckets, buckets_fd)
        if scraped is not None:
            scraped.shutdown()
            scraped.server_close()
    return _exit_code(failed=bool(failed))

@contextlib.contextmanager
def _metrics_folder() -> Iterator[str]:
    """prometheus_client's multiprocess folder for the workers: PROMETHEUS_MULTIPROC_DIR if the
    operator set one (emptied first: files of an earlier run would be summed in), else a fresh one."""
    import tempfile

    from .observability import MULTIPROCESS_VARIABLE

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


if __name__ == "__main__":
    sys.exit(main())
