"""reranker-serve: a rerank microservice that speaks the native, TEI, Cohere and Jina APIs."""

from __future__ import annotations

__version__ = "0.1.0"
