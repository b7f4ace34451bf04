"""The operator's int8 calibration pairs (RERANKER_QUANTIZE_CALIBRATION): reading and validating the file.

A leaf module (no model libraries) so that start-up (bootstrap) can validate the file
before any model loads; models/quantize.py feeds the pairs to NNCF.

The format is JSON Lines, one object a line: ``{"query": "...", "document": "..."}``, or
``{"query": "...", "documents": ["...", ...]}`` for several documents of one query. Blank lines
are skipped; lines of the same query are grouped.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_calibration"]


def read_calibration(path: Path) -> list[tuple[str, list[str]]]:
    """The (query, documents) of the file, in order; ValueError with the line at fault."""
    topics: dict[str, list[str]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not JSON ({exc})") from None
        docs = None
        if isinstance(item, dict):
            docs = item.get("documents", [item["document"]] if "document" in item else None)
        if not (isinstance(item, dict) and isinstance(item.get("query"), str) and item["query"].strip()
                and isinstance(docs, list) and docs and all(isinstance(d, str) and d.strip() for d in docs)):
            raise ValueError(f'{path}:{number} must be an object with a string "query" and a string "document" '
                             '(or a list of strings "documents"), e.g. {"query": "q", "document": "d"}')
        topics.setdefault(item["query"], []).extend(docs)
    if not topics:
        raise ValueError(f"{str(path)!r} holds no (query, document) pairs")
    return list(topics.items())
