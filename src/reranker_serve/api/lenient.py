"""Field types that accept what the ecosystem sends, no more.

Some clients send booleans as the strings "true"/"false" (RAGFlow's Xinference provider, whose
server coerces them), and SiliconFlow-shaped clients ask for more chunks than any server gives
(`max_chunks_per_doc: 1024`). These are accepted here, at the edge, with the same rules in the
OpenAPI schema; anything else ("maybe", 1, "yes") is still refused with a 4xx.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = ["LenientBool", "clamp"]

_STRINGS = {"true": True, "false": False}


def _bool(value: Any) -> Any:
    if isinstance(value, str) and value in _STRINGS:
        return _STRINGS[value]
    if not isinstance(value, bool):
        raise ValueError('Input should be a valid boolean (true or false, or the strings "true" or "false")')
    return value


# A JSON boolean, or the strings "true" / "false" (lowercase, as clients write them).
LenientBool = Annotated[
    bool,
    BeforeValidator(_bool),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}]}),
]


def clamp(name: str, value: int | None, cap: int, why: str) -> tuple[int | None, str | None]:
    """``value`` capped at ``cap``, and the note that says so (None when nothing changed)."""
    if value is None or value <= cap:
        return value, None
    return cap, f"{name}={cap} (asked {value}; {why})"
