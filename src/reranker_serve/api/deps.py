"""Annotated dependency aliases: routes ask for what they need by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..config import Settings
from ..service import Reranker

__all__ = ["RerankerDep", "SettingsDep"]


def _reranker(request: Request) -> Reranker:
    return request.app.state.reranker


def _settings(request: Request) -> Settings:
    return request.app.state.settings


RerankerDep = Annotated[Reranker, Depends(_reranker)]
SettingsDep = Annotated[Settings, Depends(_settings)]
