"""The model layer's face: what the engine and the API use of it.

``load_model`` (loader.py) turns a ModelSpec into a ``ScoringModel`` (base.py); the families'
runners, templates and attention choice live in the modules beside it.
"""

from __future__ import annotations

from ..families import FAMILIES
from .base import EncodeOptions, Pair, ScoringModel
from .loader import detect_family, load_model

__all__ = ["FAMILIES", "EncodeOptions", "Pair", "ScoringModel", "detect_family", "load_model"]
