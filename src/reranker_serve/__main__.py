"""`python -m reranker_serve` / `reranker-serve`: serve with uvicorn, configured by RERANKER_*.

Exit codes: 0 after a clean shutdown, 1 when the model failed to load, 2 for bad configuration.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .config import ConfigError, apply_offline_environment, load_settings

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
    except ConfigError as exc:
        print(f"reranker-serve: {exc}", file=sys.stderr)
        return 2
    # Before the model libraries are imported: huggingface_hub reads HF_HUB_OFFLINE once.
    apply_offline_environment(offline=settings.use_offline_mode)
    from .observability import configure_logging

    configure_logging(level=settings.log_level, fmt=settings.log_format)

    import uvicorn

    # log_config=None: uvicorn's loggers propagate to ours instead of getting their own handlers.
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level, log_config=None,
                  timeout_graceful_shutdown=settings.shutdown_timeout)
    if settings.workers > 1 or args.reload:
        # Several processes (or the reloader) need an import string; each reads RERANKER_* itself.
        if overrides:
            import os

            for key, value in overrides.items():
                os.environ[f"RERANKER_{key.upper()}"] = str(value)
        uvicorn.run(
            "reranker_serve.app:create_app", factory=True, workers=settings.workers, reload=args.reload, **common
        )
        return 0

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
    if failures:
        print(f"reranker-serve: model failed to load: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
