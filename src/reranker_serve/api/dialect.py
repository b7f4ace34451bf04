"""The dialect contract: what one API family (native/TEI, Cohere, Jina) must say, and the one
place that turns it into routes.

A dialect is three things:

    request model   .to_query() -> RerankQuery            (its wire format in)
                    .reply(RerankResult) -> reply model   (its wire format out)
    error shape     Dialect.error_body(RerankError)       (its error body)
    statuses        Dialect.status(ErrorKind)             (the kinds it answers differently, if any)

Request models derive from ``DialectRequest``; one whose ``to_query`` serves a field other than
as sent (a value clamped to the server's cap) notes it, and the reply says so in
X-Reranker-Adjusted. Two dialects on one path are one route whose body is a discriminated union
(``Annotated[A | B, Discriminator(fn)]``, fn reading the body's keys); its errors are the path
owner's shape.

Everything else is derived here, once: every rerank route ends in ``do_rerank`` (as vLLM's
score/rerank router does); the error statuses that OpenAPI documents come from ``status()``
over the error kinds (so the document states what the route really answers); 404 and 405 on a
dialect's paths come in its shape too.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Protocol, Sequence, get_args, get_origin

from fastapi import APIRouter, Body, Path, Request, Response
from fastapi.responses import JSONResponse
from loguru import logger
from pydantic import BaseModel, ConfigDict, Discriminator, PrivateAttr

from ..cache import bypass_requested
from ..errors import ErrorKind, RerankError
from ..keys import ApiKey, Priority
from ..service import RerankQuery, RerankResult, RerankService
from .common import dialect_route, timing_headers
from .deps import RerankerDep

__all__ = ["ADJUSTED_HEADER", "Dialect", "DialectRequest", "RerankRequest", "do_rerank"]

_PRIORITIES = get_args(Priority)


def _priority(header: str | None, key: ApiKey | None) -> Priority:
    """X-Priority if sent, else the key's default, else interactive. A header may lower a key's
    priority, never raise it above the key's max_priority (keys.py): a tenant configured
    ``batch`` cannot jump ahead of interactive tenants by asking."""
    if header is not None:
        value = header.strip().lower()
        if value not in _PRIORITIES:
            raise RerankError(ErrorKind.VALIDATION, f"X-Priority must be {' or '.join(_PRIORITIES)}, got {header!r}")
        return key.allowed_priority(value) if key is not None else value  # type: ignore[arg-type,return-value]
    return key.priority if key is not None else "interactive"


# Kinds a rerank operation can answer; the others are about paths and methods, not operations, or
# (FORBIDDEN) only answered by the system routes (security.py).
_OPERATION_KINDS = [k for k in ErrorKind
                    if k not in (ErrorKind.ROUTE_NOT_FOUND, ErrorKind.METHOD_NOT_ALLOWED, ErrorKind.FORBIDDEN)]


class RerankRequest(Protocol):
    """What every dialect's request model provides."""

    # Metrics/log label when one path serves two dialects (TEI on /rerank); None: the path's.
    dialect_label: ClassVar[str | None]

    def to_query(self) -> RerankQuery: ...

    def reply(self, result: RerankResult) -> Any: ...

    def adjustments(self) -> list[str]: ...


# Where a request was served other than as asked (a value clamped to the server's cap), the
# reply says so in this header, one `name=value (why)` note per field, and the log too, rather
# than refusing a request its client cannot change (SiliconFlow-shaped clients' 1024 chunks).
ADJUSTED_HEADER = "X-Reranker-Adjusted"


class DialectRequest(BaseModel):
    """Base of the request models: unknown fields ignored, no label, and the notes
    ``to_query`` leaves about what it adjusted (``note``)."""

    model_config = ConfigDict(extra="ignore")
    dialect_label: ClassVar[str | None] = None
    _adjusted: list[str] = PrivateAttr(default_factory=list)

    def note(self, adjustment: str | None) -> None:
        if adjustment:
            self._adjusted.append(adjustment)

    def adjustments(self) -> list[str]:
        return list(self._adjusted)


async def do_rerank(body: RerankRequest, reranker: RerankService, request: Request, response: Response) -> Any:
    """The one handler behind every rerank route."""
    if body.dialect_label:
        request.state.dialect = body.dialect_label
    query = body.to_query()
    key: ApiKey | None = getattr(request.state, "api_key", None)
    priority = _priority(request.headers.get("x-priority"), key)
    # The key: its cache partition, and the limits the request's work is charged to (service.py).
    query = replace(query, priority=priority, tenant=key)
    if bypass_requested(request.headers):  # Cache-Control: no-cache / no-store (cache.py)
        query = replace(query, use_cache=False)
    result = await reranker.rerank(query)
    response.headers.update(timing_headers(result))
    adjusted = body.adjustments()
    if adjusted:
        logger.info("served {} adjusted: {}", request.url.path, "; ".join(adjusted))
        response.headers[ADJUSTED_HEADER] = "; ".join(adjusted)
    response.headers["X-Priority"] = priority  # the priority it was served at (a header asking more is lowered)
    return body.reply(result)


class Dialect:
    """One API family: subclass, set ``name``, ``error_model`` and ``prefixes``, implement
    ``error_body``; override ``status`` where the family answers a kind with another status."""

    name: ClassVar[str]
    error_model: ClassVar[type[BaseModel]]
    # Path prefixes whose unknown routes (404) answer in this shape; exact route paths always do.
    prefixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, tags: Sequence[str]) -> None:
        # The metrics/log/trace label of each route, read by the route class as a request enters
        # (before its body, so a 401 or a 400 is labelled too); a body may refine it (TEI on /rerank).
        self.labels: dict[str, str] = {}
        self.router = APIRouter(route_class=dialect_route(self.render, labels=self.labels), tags=list(tags))
        self.paths: list[str] = []

    # -- what a dialect says ---------------------------------------------------------------------
    def error_body(self, exc: RerankError) -> BaseModel:
        raise NotImplementedError

    def status(self, kind: ErrorKind) -> int:
        return kind.status

    # -- derived -----------------------------------------------------------------------------------
    def render(self, exc: RerankError) -> Response:
        return JSONResponse(self.error_body(exc).model_dump(), status_code=self.status(exc.kind), headers=exc.headers)

    def statuses(self) -> list[int]:
        """Every error status a rerank route of this dialect can answer."""
        return sorted({self.status(kind) for kind in _OPERATION_KINDS})

    def owns(self, path: str) -> bool:
        return path in self.paths or path.startswith(self.prefixes)

    def document(self, openapi: dict[str, Any]) -> None:
        """Make the OpenAPI document list exactly the error statuses this dialect answers
        (FastAPI adds a 422 to every route with a body, whatever the route answers)."""
        answered = {str(s) for s in self.statuses()}
        for path in self.paths:
            for operation in openapi.get("paths", {}).get(path, {}).values():
                # Two dialects on one path: a body either accepts is accepted (the discriminator
                # picks by its keys), so the document says anyOf, not the oneOf pydantic writes.
                body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
                if "oneOf" in body.get("schema", {}):
                    body["schema"]["anyOf"] = body["schema"].pop("oneOf")
                    body["schema"].pop("discriminator", None)
                responses = operation.get("responses", {})
                for status in [s for s in responses if s.isdigit() and int(s) >= 400 and s not in answered]:
                    del responses[status]

    def rerank_route(self, path: str, *, request: Any, reply: Any, summary: str, label: str | None = None) -> None:
        """Add ``POST path``: parse ``request``, rank, answer ``reply`` — via ``do_rerank``.
        ``label`` names the route's dialect in metrics, logs and traces (default: ``name``)."""

        async def endpoint(body: Any, reranker: Any, request: Request, response: Response, **_path: str) -> Any:
            return await do_rerank(body, reranker, request, response)

        # FastAPI keeps only the FieldInfo of an Annotated parameter: a bare Discriminator (two
        # dialects on one path) would be dropped and the body parsed as a plain union, by the
        # first member that happens to validate. Handed over inside Body(), it is applied.
        body_type, body_default = request, Body()
        if get_origin(request) is Annotated:
            inner, *metadata = get_args(request)
            tags = [m for m in metadata if isinstance(m, Discriminator)]
            if tags:
                body_type, body_default = Annotated[inner, Body(discriminator=tags[0])], inspect.Parameter.empty

        # FastAPI reads the parameters' types from the signature: give it the real ones. Path
        # parameters (NIM's /v1/retrieval/{model}/reranking) are declared so that OpenAPI states
        # them; the body says what to rank, so their values are not used.
        path_params = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str,
                              default=Path(description="Part of the vendor's URL; the body's fields decide."))
            for name in re.findall(r"\{(\w+)(?::\w+)?\}", path)
        ]
        endpoint.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
            inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body_type, default=body_default),
            inspect.Parameter("reranker", inspect.Parameter.KEYWORD_ONLY, annotation=RerankerDep),
            inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
            inspect.Parameter("response", inspect.Parameter.KEYWORD_ONLY, annotation=Response),
            *path_params,
        ], return_annotation=reply)
        endpoint.__name__ = "_".join(["rerank", self.name, *re.findall(r"\w+", path)])
        self.labels[path] = label or self.name  # before the route exists: its class reads it
        self.router.add_api_route(
            path, endpoint, methods=["POST"], response_model=reply, response_model_exclude_none=True,
            responses={s: {"model": self.error_model} for s in self.statuses()}, summary=summary,
        )
        self.paths.append(path)
