"""What every dialect route shares: the route class that renders errors in the dialect's shape,
checks the API key before anything else, and drops the work of clients that hang up.

Order of checks on every rerank route (fixed, so each dialect fails the same way):
    API key → JSON body → body schema → service validation (see service.py) → scoring
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import re
from typing import Annotated, Any, Awaitable, Callable, Mapping, Sequence

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from loguru import logger
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from ..config import MAX_CHUNKS_PER_DOC
from ..errors import ErrorKind, RerankError
from ..keys import ApiKey
from ..media import MediaDocument
from ..security import authenticate
from ..service import RerankResult

__all__ = [
    "NON_BLANK", "NON_EMPTY", "ErrorRenderer", "Instruction", "JsonInt", "MaxChunks", "ModelName", "RankedDocument",
    "Text", "TopN", "TextDocument", "Usage", "bearer_scheme", "describe_validation", "dialect_route", "document_texts",
    "ranked_documents", "returned_document", "scrub_surrogates", "timing_headers", "PromptTokensDetails",
]

ErrorRenderer = Callable[[RerankError], Response]

# Declared on the rerank routes when a key is set, so /docs shows the lock; the check itself runs
# in the route class, before the body is parsed, so a request without a key learns nothing more.
bearer_scheme = HTTPBearer(auto_error=False, description="Needed when RERANKER_API_KEY is set.")


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "native", "tei", "cohere", "voyage", "nim", "mixedbread"}


def _location(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "body" or not (part.isidentifier() and part.islower()) or part in _TYPE_LABELS:
            continue  # pydantic's union-branch labels ('str', 'JinaDocument', 'dict[str,any]') mean nothing to a client
        else:
            text += f".{part}" if text else part
    return text or "body"


def describe_validation(errors: Sequence[dict[str, Any]]) -> str:
    """Turn pydantic/FastAPI errors into one readable sentence, e.g.
    ``documents[2]: Input should be a valid string``."""
    if not errors:
        return "invalid request body"
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the request body is not valid JSON{': ' + str(detail) if detail else ''}"
    seen: list[str] = []
    for err in errors:
        loc = _location(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            line = f"{loc}: field required"
        elif loc == "body":
            line = f"the request body must be a JSON object ({msg})"
        else:
            line = f"{loc}: {msg}"
        if line not in seen:
            seen.append(line)
    more = f" (and {len(seen) - 3} more)" if len(seen) > 3 else ""
    return "; ".join(seen[:3]) + more


def _check_api_key(request: Request) -> ApiKey | None:
    """Who is calling (RERANKER_API_KEY / RERANKER_API_KEYS); the key's name goes to
    request.state for limits, priorities, logs and metrics. None: a server without keys."""
    keys = request.app.state.keys
    if not keys.enabled:
        return None
    key = authenticate(keys, request.app.state.auth_throttle, authorization=request.headers.get("authorization", ""),
                       address=request.client.host if request.client else "")
    request.state.api_key = key
    request.state.key_name = key.name  # read by the access log and the metrics (the name, never the key)
    return key


def _check_content_type(request: Request) -> None:
    # No Content-Type is read as JSON (as FastAPI does); a different one is a client mistake
    # (curl -d sends form encoding) that deserves a clearer word than "not a JSON object".
    content_type = request.headers.get("content-type")
    if content_type and "json" not in content_type.lower():
        raise RerankError(
            ErrorKind.VALIDATION,
            f"send the body as JSON with the header 'Content-Type: application/json' (got {content_type!r})",
        )


# Content-Encoding values a body may come in: zlib decodes both (wbits 47: gzip or zlib header).
_DECODED_ENCODINGS = frozenset({"gzip", "x-gzip", "deflate"})


def _decoder(request: Request) -> Any:
    """A zlib decompressor for a gzip/deflate body, None for a plain one; 415 for the rest."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _DECODED_ENCODINGS:
        raise RerankError(ErrorKind.UNSUPPORTED_ENCODING, f"Content-Encoding {encoding!r} is not supported: send the "
                          "body uncompressed, or compressed with gzip or deflate")
    import zlib

    return zlib.decompressobj(wbits=47)


async def _read_body(request: Request, limit: int, *, timeout: float) -> None:
    """Read the body, refusing it (413) as soon as it is known to exceed ``limit`` bytes, once
    decompressed when it comes gzipped; 408 when it takes longer than ``timeout`` seconds (a
    client dripping its body would hold a connection and its buffer for ever)."""
    declared = request.headers.get("content-length", "")
    too_large = RerankError(
        ErrorKind.PAYLOAD_TOO_LARGE,
        f"the request body is larger than {limit} bytes (RERANKER_MAX_REQUEST_BYTES); send fewer or shorter documents",
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large  # before reading a byte of it
    decoder = _decoder(request)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                if decoder is not None:
                    chunk = _inflate(decoder, chunk, room=limit - size)
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
    except TimeoutError:
        raise RerankError(ErrorKind.REQUEST_TIMEOUT, f"the request body did not arrive within {timeout:g} s "
                          "(RERANKER_BODY_TIMEOUT); send the whole body at once") from None
    if decoder is not None and not decoder.eof:
        raise RerankError(ErrorKind.VALIDATION, "the gzip-encoded body is cut short: send the whole compressed body")
    # Starlette's documented place for a body read ahead of the handler; FastAPI reuses it.
    request._body = b"".join(chunks)


def _inflate(decoder: Any, chunk: bytes, *, room: int) -> bytes:
    """Decompress ``chunk``, never more than ``room`` + 1 bytes of it (a small gzip bomb
    inflates to gigabytes); the caller refuses what passes the limit."""
    import zlib

    try:
        out = decoder.decompress(chunk, max(room, 0) + 1)
    except zlib.error as exc:
        raise RerankError(ErrorKind.VALIDATION, f"the body is not valid gzip/deflate data ({exc}); send it "
                          "compressed as its Content-Encoding says, or uncompressed without that header") from None
    return out


def _undecodable(body: bytes) -> str:
    """Why FastAPI could not parse a body it refused with 400: bytes that are not UTF-8, a number
    longer than Python's 4,300-digit limit, or nesting deeper than its parser recurses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the request body could not be decoded: send UTF-8 encoded JSON"
    try:
        json.loads(text)
    except RecursionError:
        return ("the request body nests arrays or objects too deeply to parse: the request formats nest "
                "a few levels, send them as documented")
    except ValueError as exc:
        if "digits" in str(exc):
            return (f"the request body holds a number of more than {sys.get_int_max_str_digits()} digits, more "
                    "than JSON numbers are parsed to here; send numbers of ordinary size")
        return f"the request body is not valid JSON ({exc})"
    return "the request body could not be parsed as JSON"


async def _until_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(request: Request, work: Awaitable[Response]) -> Response:
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        # The client hung up: cancelling the handler drops its queued pairs (batcher.submit).
        task.cancel()
        return Response(status_code=499)
    return task.result()


def dialect_route(render: ErrorRenderer, *, labels: Mapping[str, str]) -> type[APIRoute]:
    """A route class whose errors, all of them, come out in one dialect's shape; it records the
    matched route and its dialect label for the access log, metrics and traces
    (observability.RequestContextMiddleware, tracing.RequestSpans)."""

    class DialectRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
            handler = super().get_route_handler()
            label, template = labels[self.path], self.path_format

            async def route(request: Request) -> Response:
                started = time.perf_counter()
                request.state.route, request.state.dialect = template, label
                try:
                    key = _check_api_key(request)
                    if key is not None:  # its request rate, before the body is read
                        await request.app.state.limits.admit(key)
                    _check_content_type(request)
                    # Read now (bounded), so only the disconnect is left to receive.
                    settings = request.app.state.settings
                    await _read_body(request, settings.max_request_bytes, timeout=settings.body_timeout)
                    response = await _cancel_on_disconnect(request, handler(request))
                except RerankError as exc:
                    response = render(exc)
                except RequestValidationError as exc:
                    response = render(RerankError(ErrorKind.VALIDATION, describe_validation(exc.errors())))
                except HTTPException as exc:  # FastAPI's own body errors: bodies json.loads refused
                    detail = _undecodable(request._body) if exc.status_code == 400 else str(exc.detail)
                    response = render(RerankError(ErrorKind.VALIDATION, detail))
                except ClientDisconnect:  # gone while sending its body: nobody to answer
                    response = Response(status_code=499)
                except Exception as exc:  # a bug of ours: still a reply in the client's shape
                    logger.opt(exception=exc).error("unhandled error on {}", request.url.path)
                    response = render(RerankError(ErrorKind.INTERNAL, f"internal error ({type(exc).__name__})"))
                response.headers["X-Total-Time"] = f"{(time.perf_counter() - started) * 1000:.2f}"
                return response

            return route

    return DialectRoute


def timing_headers(result: RerankResult) -> dict[str, str]:
    """TEI's timing headers, in milliseconds (X-Total-Time is added by the route class), and the
    tokens computed for this request (cache hits in the caller's own partition cost none, so
    they say nothing about other tenants)."""
    return {
        "X-Queue-Time": f"{result.queue_time * 1000:.2f}",
        "X-Inference-Time": f"{result.inference_time * 1000:.2f}",
        "X-Compute-Tokens": str(result.usage.computed_tokens),
    }


# -- pieces of the wire formats that several dialects share -------------------------------------
# JSON may carry a lone UTF-16 surrogate ("\ud800": a client that cut text in the middle of an
# emoji); Python decodes it, but no tokenizer or UTF-8 encoder accepts it. Such a code point is
# replaced with U+FFFD, the replacement character, as a UTF-8 decoder would: the rest of the text
# still counts, and a returned document says where the damage was.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (nested too) replaced with U+FFFD."""
    if isinstance(value, str):
        return value if value.isascii() else _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub_surrogates(k): scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_surrogates(v) for v in value]
    return value


# Every text a client sends: a str whose lone surrogates are replaced (see above).
Text = Annotated[str, AfterValidator(scrub_surrogates)]

# Constraints the service enforces with its own messages (service.py), also written into the
# OpenAPI schema so that generated clients and tests know them.
NON_BLANK = {"minLength": 1, "pattern": r"\S"}
NON_EMPTY = {"minItems": 1}


def _json_integer(value: Any) -> Any:
    # JSON Schema's integer: 3 and 3.0 yes (JSON has one number type), "3", true and 3.5 no.
    if isinstance(value, (bool, str)):
        raise ValueError("Input should be a valid integer")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_integer)]

# Fields every dialect has, written once so their schema and wording cannot drift apart.
TopN = Annotated[
    JsonInt | None,
    Field(json_schema_extra={"minimum": 0}, description="Return the best N; null, 0 or more than the documents: all."),
]
# An extra field of the dialects that lack it (Cohere v1 has it natively).
MaxChunks = Annotated[
    JsonInt | None,
    Field(
        json_schema_extra={"minimum": 1, "maximum": MAX_CHUNKS_PER_DOC},
        description="Split documents longer than the window into up to N overlapping windows; a document scores "
        "as its best window (null: the server's RERANKER_MAX_CHUNKS_PER_DOC; 1: truncate).",
    ),
]

# The model a request selects, and the instruction of LLM rerankers: extra fields of every dialect.
ModelName = Annotated[
    Text | None,
    Field(description="A served model's name or alias (GET /v1/models); null: the default model."),
]
Instruction = Annotated[
    Text | None,
    Field(description="Task instruction for LLM rerankers (Qwen3-Reranker's <Instruct>, the prompt of "
          "bge-reranker-v2-gemma); null: the model's default. Models without one refuse it."),
]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Of total_tokens, those answered from the score cache (OpenAI's name).")


class Usage(BaseModel):
    """The usage object of the dialects that report one, built from ``RerankResult.usage``."""

    total_tokens: int = Field(description="Tokens this request's pairs cost, every window and special token "
                              "included, whether computed or answered from the cache.")
    prompt_tokens_details: PromptTokensDetails

    @classmethod
    def of(cls, result: RerankResult) -> Usage:
        usage = result.usage
        return cls(total_tokens=usage.total_tokens,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens))


class TextDocument(BaseModel):
    text: str

    @classmethod
    def of(cls, text: str | None) -> TextDocument | None:
        """The `{"text": ...}` form of a returned document, or None when none was asked for."""
        return None if text is None else cls(text=text)


class ImageDocument(BaseModel):
    """A returned image document (media.py), as its client sent it: Jina's `{image, text?}`, vLLM's
    `{text?, multi_modal}`."""

    model_config = ConfigDict(extra="allow")
    image: str | None = None
    text: str | None = None
    multi_modal: dict[str, Any] | None = None


class RankedDocument(BaseModel):
    """A result of the native and Jina replies."""

    index: int = Field(description="Position of the document in the request.")
    relevance_score: float
    # (smart union: an object with more than `text` is an ImageDocument; `{text}` alone a TextDocument)
    document: TextDocument | ImageDocument | None = Field(
        None, description="Present when return_documents is true: {text}, or an image document as sent.")


def ranked_documents(result: RerankResult) -> list[RankedDocument]:
    return [RankedDocument(index=r.index, relevance_score=r.score, document=returned_document(r.document))
            for r in result.results]


def returned_document(document: Any) -> TextDocument | ImageDocument | None:
    """A returned document: ``{"text": ...}``, or an image document (media.py) as its client sent it."""
    if isinstance(document, MediaDocument):
        return ImageDocument.model_validate(document.sent)
    return TextDocument.of(document)


def document_texts(documents: Sequence[str | dict[str, Any]], rank_fields: Sequence[str] | None = None) -> list[str]:
    """The text to rank for each document: a string as is; an object's `text`, or with
    `rank_fields` the named fields (one field: its value; several: `field: value` lines)."""
    fields = list(rank_fields) if rank_fields else ["text"]
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
            continue
        missing = [f for f in fields if f not in doc]
        if missing:
            named = ", ".join(repr(f) for f in missing)
            hint = "" if rank_fields else "; name the fields to rank on in rank_fields"
            raise RerankError(ErrorKind.VALIDATION, f"documents[{i}] has no field {named}{hint}")
        values = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in (doc[f] for f in fields)]
        texts.append(values[0] if len(fields) == 1 else "\n".join(f"{f}: {v}" for f, v in zip(fields, values)))
    return texts
