"""`python -m reranker_serve` / `reranker-serve`: one command line, three subcommands.

    reranker-serve [serve] [--host H] [--port P] [--workers N] [--model-path DIR] [--reload]
    reranker-serve download MODEL [DIR]        (download.py; also download_model.sh)
    reranker-serve evaluate COLLECTION ...     (evaluation/harness.py; also scripts/evaluate.py)

`serve` is the default: with no subcommand the server starts, configured by RERANKER_*.
Exit codes of `serve`: 0 after a clean shutdown, 1 when the model failed to load, 2 for bad
configuration.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from .config import ENV_PREFIX, SCRIPT_VARIABLES, ConfigError, Settings, load_settings, variable_names

__all__ = ["main"]


# Subcommands that keep their own argument parsing (and usage lines, exit codes): everything
# after the name goes to them as it is.
_DELEGATED = {
    "download": "fetch a model for offline use and check that it loads: download MODEL [DIR]",
    "evaluate": "measure retrieval quality with and without reranking: evaluate COLLECTION ... (see --help)",
}


def _serve_options(parser: argparse.ArgumentParser, *, default: object = None) -> None:
    parser.add_argument("--host", default=default, help="RERANKER_HOST")
    parser.add_argument("--port", type=int, default=default, help="RERANKER_PORT")
    parser.add_argument("--workers", type=int, default=default, help="RERANKER_WORKERS")
    parser.add_argument("--model-path", default=default, help="RERANKER_MODEL_PATH")
    parser.add_argument("--reload", action="store_true", default=default or False,
                        help="restart on code changes (development)")


def _parser() -> argparse.ArgumentParser:
    description = ("Serve a cross-encoder reranker. Every setting is a RERANKER_* variable (see .env.example); "
                   "the options below override the matching variables.")
    parser = argparse.ArgumentParser(
        prog="reranker-serve", description=description + " With no subcommand: serve.",
        epilog="`reranker-serve COMMAND --help` describes each subcommand.",
    )
    _serve_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="{serve,download,evaluate}")
    # SUPPRESS: options given before `serve` are not reset by the subcommand's defaults.
    _serve_options(commands.add_parser("serve", help="serve (the default)", description=description),
                   default=argparse.SUPPRESS)
    for name, summary in _DELEGATED.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def _delegate(command: str, argv: list[str]) -> int:
    if command == "download":
        from .download import main as download

        return download(argv)
    from .evaluation.harness import main as evaluate

    return evaluate(argv)


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

    known = variable_names() | set(SCRIPT_VARIABLES)
    for name in sorted(n for n in environ if n.upper().startswith(ENV_PREFIX) and n.upper() not in known):
        close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see .env.example for the settings"
        logger.warning("{} is not a setting of reranker-serve and does nothing{}", name, hint)


def _env_file_variables() -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(".env").items()} if os.path.isfile(".env") else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in _DELEGATED:  # `reranker-serve evaluate ...`: that command's own parser
        return _delegate(argv[0], argv[1:])
    args = _parse_args(argv)
    overrides = {
        key: value
        for key, value in (("host", args.host), ("port", args.port), ("workers", args.workers),
                           ("model_path", args.model_path))
        if value is not None
    }
    # The key ring and tracing (their checks) only now: --help and usage errors stay fast.
    from .bootstrap import check_owned_settings, set_up_process

    try:
        settings = load_settings(**overrides)
        keys = check_owned_settings(settings)
        _preflight(settings)
    except ConfigError as exc:
        print(f"reranker-serve: {exc}", file=sys.stderr)
        return 2
    # Before the model libraries are imported: huggingface_hub reads HF_HUB_OFFLINE once.
    set_up_process(settings)
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

    app = create_app(settings, keys=keys, on_load_failure=stop_on_load_failure)
    server = uvicorn.Server(uvicorn.Config(app, **common))
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
    """Several processes (or the reloader): each worker builds its app from RERANKER_* itself
    (the options given on the command line passed on as variables), sharing what workers.py says."""
    import uvicorn

    from .workers import worker_environment

    for key, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{key.upper()}"] = str(value)
    scraped = None
    try:
        with worker_environment() as (failure, metrics_dir):
            if settings.metrics_port is not None:
                from .observability import serve_metrics, summed_registry

                class Summed:  # read afresh at each scrape: workers come and go
                    def collect(self):  # type: ignore[no-untyped-def]
                        return summed_registry(metrics_dir).collect()

                scraped = serve_metrics(host=settings.host, port=settings.metrics_port, registry=Summed())
            uvicorn.run("reranker_serve.app:create_worker_app", factory=True, workers=settings.workers, reload=reload,
                        **common)  # type: ignore[arg-type]
            failed = failure.read_text(encoding="utf-8").strip()
    finally:
        if scraped is not None:
            scraped.shutdown()
            scraped.server_close()
    return _exit_code(failed=bool(failed))


if __name__ == "__main__":
    sys.exit(main())
