"""The errors a client can see, as one closed set of kinds mapped once to status codes.

    RerankError                    raised anywhere below the routes; carries an ErrorKind
      kind=VALIDATION              the request is malformed or breaks a rule          422
      kind=UNAUTHORIZED            missing or wrong API key                           401
      kind=MODEL_NOT_FOUND         `model` names a model this server does not serve   404
      kind=PAYLOAD_TOO_LARGE       too many documents, or a pair too long with        413
                                   truncation off (TEI answers these with 413 too)
      kind=OVERLOADED              the queue is full; retry later                     429 + Retry-After
      kind=RATE_LIMITED            the API key is over its rate limit                 429 + Retry-After
      kind=NOT_READY               the model is still loading (or failed to load)     503 (+ Retry-After)
      kind=BACKEND                 the forward pass failed                            503
      kind=TIMEOUT                 the request outlived RERANKER_REQUEST_TIMEOUT      504
      kind=INTERNAL                a bug of ours (logged with its traceback)          500
      kind=ROUTE_NOT_FOUND         no route at that path                              404
      kind=METHOD_NOT_ALLOWED      the path exists, for another method (POST)         405
      kind=FORBIDDEN               a key that may not read this system route          403
      kind=UNSUPPORTED_ENCODING    a Content-Encoding the server does not decode      415
      kind=MISDIRECTED             a Host that RERANKER_ALLOWED_HOSTS does not list   421
      kind=REQUEST_TIMEOUT         the body did not arrive within RERANKER_BODY_TIMEOUT 408

Each dialect renders a RerankError in its own body shape (api/dialect.py); only the Cohere
dialect changes a status (Cohere answers a bad request with 400, not 422). Errors that never reach a
client (bad settings, a model folder that does not load) are ``ConfigError`` and
``ModelLoadError``; they stop start-up with one clear line.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

__all__ = ["ErrorKind", "ModelLoadError", "RerankError"]


class ErrorKind(str, enum.Enum):
    VALIDATION = "validation"
    UNAUTHORIZED = "unauthorized"
    MODEL_NOT_FOUND = "model_not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    # The values are internal names (repr, logs): no reply or metric label carries them; each
    # dialect renders a kind its own way (TEI's error_type "Unhealthy", api/native.py).
    NOT_READY = "not_ready"
    BACKEND = "backend"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    FORBIDDEN = "forbidden"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    REQUEST_TIMEOUT = "request_timeout"
    MISDIRECTED = "misdirected"

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS: dict[ErrorKind, int] = {
    ErrorKind.VALIDATION: HTTPStatus.UNPROCESSABLE_ENTITY,
    ErrorKind.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorKind.MODEL_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorKind.PAYLOAD_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorKind.OVERLOADED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorKind.RATE_LIMITED: HTTPStatus.TOO_MANY_REQUESTS,
    ErrorKind.NOT_READY: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorKind.BACKEND: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorKind.TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
    ErrorKind.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorKind.ROUTE_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorKind.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    ErrorKind.FORBIDDEN: HTTPStatus.FORBIDDEN,
    ErrorKind.UNSUPPORTED_ENCODING: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorKind.REQUEST_TIMEOUT: HTTPStatus.REQUEST_TIMEOUT,
    ErrorKind.MISDIRECTED: HTTPStatus.MISDIRECTED_REQUEST,
}


class RerankError(Exception):
    """An error with a kind (hence a status) and a message a human understands."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self._headers = dict(headers or {})

    @property
    def headers(self) -> dict[str, str]:
        headers = dict(self._headers)  # e.g. Allow on a 405
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after)))
        if self.kind is ErrorKind.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        return headers

    def __repr__(self) -> str:
        return f"RerankError({self.kind.value}, {self.message!r})"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the folder or id that failed."""
