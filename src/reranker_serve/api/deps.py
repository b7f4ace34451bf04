"""Annotated dependency aliases: routes ask for what they need by type."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..config import Settings
from ..registry import ModelRegistry
from ..service import RerankService

__all__ = ["RegistryDep", "RerankerDep", "SettingsDep"]


def _reranker(request: Request) -> RerankService:
    return request.app.state.reranker


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


def _settings(request: Request) -> Settings:
    return request.app.state.settings


RerankerDep = Annotated[RerankService, Depends(_reranker)]
RegistryDep = Annotated[ModelRegistry, Depends(_registry)]
SettingsDep = Annotated[Settings, Depends(_settings)]
