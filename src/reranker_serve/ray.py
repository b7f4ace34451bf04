"""`python -m reranker_serve.ray`: the same app and engine as N Ray Serve replicas.

    RERANKER_RAY_REPLICAS=2 python -m reranker_serve.ray

Each replica is a Serve deployment whose ASGI app is ``create_app(settings)``: every dialect
route, `/health`, `/ready` and `/metrics` are the single-process server's own code, and each
replica loads its models once, in its own process. Serve's HTTP proxy listens on
RERANKER_HOST:RERANKER_PORT and routes each request to a replica; Ray's autoscaler adds and
removes replicas on ongoing requests (RERANKER_RAY_MAX_REPLICAS > 0). Needs the ``ray`` extra:
``pip install 'reranker-serve[ray]'``.

Differences from the single-process server, all from Serve's design:
- a replica counts as started (and gets traffic) only once its models are loaded and warmed,
  so `/ready` through the proxy answers 200 as soon as Serve routes to any replica;
- `/metrics` answers for the replica that took the request; scrape each replica through Ray's
  own metrics export, or run the plain server per pod where per-process scraping matters;
- replies carry ``X-Reranker-Replica``, the id of the replica that answered.

Exit codes: 0 after SIGTERM/SIGINT and a clean shutdown, 1 when the deployment failed (a model
did not load, or Ray could not start), 2 for bad configuration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from loguru import logger

from reranker_serve.bootstrap import check_owned_settings, set_up_process
from reranker_serve.config import ConfigError, Settings, load_settings

__all__ = ["APP_NAME", "REPLICA_HEADER", "ReplicaFailover", "build_application", "deployment_options", "main",
           "proxy_middlewares"]

APP_NAME = "reranker"
REPLICA_HEADER = "x-reranker-replica"
PROXY_CALLBACK = "reranker_serve.ray.proxy_middlewares"
_READY_POLL_S = 0.1


def deployment_options(settings: Settings) -> dict[str, Any]:
    """`serve.deployment` options from the RERANKER_RAY_* settings: a fixed replica count, or
    Ray's autoscaler between MIN and MAX replicas on ongoing requests per replica."""
    options: dict[str, Any] = {
        "name": "RerankerDeployment",
        "max_ongoing_requests": settings.ray.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.ray.num_cpus, "num_gpus": settings.ray.num_gpus},
        # A replica being replaced gets the same drain time as the plain server after SIGTERM.
        "graceful_shutdown_timeout_s": settings.shutdown_timeout,
    }
    if settings.ray.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": settings.ray.min_replicas,
            "initial_replicas": settings.ray.replicas,
            "max_replicas": settings.ray.max_replicas,
            "target_ongoing_requests": settings.ray.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.ray.replicas
    return options


def _wait_for_models(app: Any) -> None:
    """Make the app's lifespan end its start-up only once every model is loaded.

    The plain server listens at once and loads in the background so that /health answers while
    /ready says 503. Under Serve, a replica whose start-up finished receives traffic, so start-up
    must include the load; a load that fails fails the replica's start-up, which Serve reports
    (and retries) instead of routing requests to a replica that can only answer 503.
    """
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            registry = app_.state.registry
            while not registry.ready:
                if registry.load_error:
                    raise RuntimeError(f"model failed to load: {registry.load_error}")
                await asyncio.sleep(_READY_POLL_S)
            yield state

    app.router.lifespan_context = lifespan


class _ReplicaHeaders:
    """In each replica: name the replica that answered (``X-Reranker-Replica``), so clients and
    tests see how the proxy spreads requests; and leave ``X-Request-ID`` to Serve's proxy, which
    passes the same id in and writes it on every reply (ours would make it appear twice).
    Pure ASGI: bodies and disconnects pass through untouched."""

    def __init__(self, app: Any, *, replica: str) -> None:
        self.app = app
        self.replica = replica.encode("latin-1")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_replica(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (REPLICA_HEADER.encode(), self.replica)]
            await send(message)

        await self.app(scope, receive, send_with_replica if scope["type"] == "http" else send)


class ReplicaFailover:
    """In Serve's HTTP proxy: a request whose replica died (or that Serve could not place) is
    sent again, to another replica; if that keeps failing, the client gets 503 with Retry-After
    instead of Serve's bare 500.

    Every reply a replica writes carries ``X-Reranker-Replica``; a 5xx without it came from Serve
    itself, before or instead of our app, so nothing was answered and scoring is read-only: sending
    the request again is safe. The body is kept (bounded by what the proxy accepts) to replay it.
    """

    retries = 3
    backoff_s = 0.2
    # Bodies are kept up to the server's default RERANKER_MAX_REQUEST_BYTES; a larger one goes
    # through as it comes (the replica answers it, usually 413) without a second chance.
    max_replay_bytes = Settings.model_fields["max_request_bytes"].default

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read: list[dict[str, Any]] = []
        size = 0
        while True:  # read the whole body once, to replay it on every attempt
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read.append(message)
            size += len(message.get("body", b""))
            if size > self.max_replay_bytes:
                await self.app(scope, _prepend(read, receive), send)
                return
            if not message.get("more_body"):
                break
        request = b"".join(message.get("body", b"") for message in read)
        client_gone = asyncio.Event()

        async def client_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                client_gone.set()
            return message

        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            if await self._attempt(scope, request, client_receive, send, last=last) or client_gone.is_set():
                return
            await asyncio.sleep(self.backoff_s * (attempt + 1))
        await _unavailable(send)

    async def _attempt(self, scope: Any, request: bytes, receive: Any, send: Any, *, last: bool) -> bool:
        """One try; False when Serve failed it without an answer from a replica (nothing was sent)."""
        replayed = False
        failed = False
        started = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": request, "more_body": False}
            return await receive()  # then the client's own disconnect, which cancels the request

        async def forward(message: dict[str, Any]) -> None:
            nonlocal failed, started
            if message["type"] == "http.response.start":
                from_replica = any(k.lower() == REPLICA_HEADER.encode() for k, _ in message.get("headers", []))
                failed = message["status"] >= 500 and not from_replica
            if not failed:
                started = True
                await send(message)

        try:
            await self.app(dict(scope), replay, forward)
        except Exception as exc:  # e.g. the replica's actor died while it held the request
            if started:
                raise  # part of a reply went out: nothing better to do than to cut it
            logger.warning("request failed in Serve ({}: {}); {}", type(exc).__name__, exc,
                           "answering 503" if last else "sending it to another replica")
            return False
        # Serve may also end the call without a reply when the replica died (uvicorn would then
        # answer a bare 500): that is a failure to retry as well.
        if not started:
            logger.warning("Serve ended a request without a reply; {}", "answering 503" if last else "sending it again")
        return started


def _prepend(messages: list[dict[str, Any]], receive: Any) -> Any:
    """A `receive` that gives the messages already read again, then the client's own."""
    pending = list(messages)

    async def replay() -> dict[str, Any]:
        return pending.pop(0) if pending else await receive()

    return replay


async def _unavailable(send: Any) -> None:
    body = b'{"error":"no replica could answer this request; retry shortly","error_type":"Unhealthy"}'
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
    ]})
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the
    middlewares the proxy wraps around its routing."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaFailover)]


def build_application(settings: Settings) -> Any:
    """The Serve application: ``create_app(settings)`` behind `@serve.ingress`, bound and ready
    for ``serve.run``. Settings travel to the replicas with the deployment (not through their
    environment), so replicas on other nodes serve the same configuration."""
    from ray import serve

    @serve.ingress()
    class RerankerDeployment:
        def __init__(self, settings: Settings) -> None:
            # Before any Hugging Face library is imported in this worker process.
            set_up_process(settings)
            self.settings = settings

        def __serve_build_asgi_app__(self) -> Any:
            # Called by Serve in the replica, after __init__; the app's lifespan (model loading)
            # runs right after, and the replica takes traffic only when it has finished.
            from reranker_serve.app import create_app

            app = create_app(self.settings)
            _wait_for_models(app)
            app.add_middleware(_ReplicaHeaders, replica=serve.get_replica_context().replica_id.unique_id)
            return app

    return serve.deployment(**deployment_options(settings))(RerankerDeployment).bind(settings)


def _start_ray(settings: Settings) -> None:
    import ray

    if settings.ray.address:
        ray.init(address=settings.ray.address, logging_level="warning")
        return
    # The proxy that Serve starts in this cluster inherits this variable and installs our failover
    # (a cluster started elsewhere needs it set where it starts: docs/deployment.md).
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    # A new local cluster, without the dashboard (its extra processes and port); address="local"
    # even where RAY_ADDRESS or a `ray start` on this machine would make Ray join that cluster
    # (whose Serve our shutdown would then stop). Ray's own variables still apply, e.g.
    # RAY_DEFAULT_OBJECT_STORE_MAX_MEMORY_BYTES caps its shared memory.
    ray.init(address="local", include_dashboard=False, logging_level="warning")


def main(argv: list[str] | None = None) -> int:
    """Start (or join) Ray, run the deployment with Serve's proxy on HOST:PORT, serve until
    SIGTERM/SIGINT, then shut Serve and Ray down."""
    del argv  # every option is a RERANKER_* variable
    try:
        settings = load_settings()
        check_owned_settings(settings)
    except ConfigError as exc:
        print(f"reranker-serve[ray]: {exc}", file=sys.stderr)
        return 2
    try:
        from ray import serve
    except ImportError:
        print("reranker-serve[ray]: Ray Serve is not installed: pip install 'reranker-serve[ray]'", file=sys.stderr)
        return 2
    # Ray reports usage statistics to its developers unless told not to: the server opens no
    # outside connection. Set before Ray starts, so every process of a local cluster inherits it.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    set_up_process(settings)
    try:
        _start_ray(settings)
        serve.start(http_options={"host": settings.host, "port": settings.port})
        # Blocks until every replica has loaded its models (or raises when one cannot).
        serve.run(build_application(settings), name=APP_NAME, route_prefix="/", blocking=False)
    except Exception as exc:  # a model that does not load, a port in use, a cluster not reachable
        logger.error("Ray Serve deployment failed: {}", exc)
        _shutdown(joined=bool(settings.ray.address))
        return 1
    # After ray.init: Ray's core installs its own SIGTERM handler, which would kill this process
    # without shutting Serve down.
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logger.info("serving {} replica(s) on http://{}:{}", settings.ray.replicas, settings.host, settings.port)
    stop.wait()
    logger.info("shutting down: draining replicas")
    _shutdown(joined=bool(settings.ray.address))
    return 0


def _shutdown(*, joined: bool) -> None:
    """Our own local cluster: stop Serve and Ray. A cluster we joined: delete only our
    application (other applications may be served there) and disconnect."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    # Re-import under the package's name: Ray pickles the deployment class by reference, and
    # replicas must find it as `reranker_serve.ray`, not as this process's `__main__`.
    from reranker_serve.ray import main as _main

    sys.exit(_main())
