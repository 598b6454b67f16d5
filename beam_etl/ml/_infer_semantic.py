"""Adapter to the semantic type detector (``beam_etl.ml.semantic``), imported lazily.

If that module is missing or fails, the semantic type is ``None``: one warning per process
says why, and schema inference goes on. No Beam imports.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)
MODULE = "beam_etl.ml.semantic"
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key in _WARNED:
        return
    _WARNED.add(key)
    LOG.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def detector() -> Callable[..., Any] | None:
    """``detect_semantic_type`` when its module imports, else None (with a one-time warning)."""
    try:
        module = importlib.import_module(MODULE)
        return module.detect_semantic_type
    except (ImportError, AttributeError) as err:
        _warn_once("import", f"semantic types are not reported: {MODULE}.detect_semantic_type is unavailable ({err})")
        return None


def detect(values: list[str | None], name: str | None) -> tuple[str | None, float | None, dict[str, Any]]:
    """``(type, confidence, details)`` of a column's sample values, or ``(None, None, {})``."""
    fn = detector()
    if fn is None or not values:
        return None, None, {}
    try:
        result = fn(values, name=name)
    except Exception as err:  # noqa: BLE001 - a detector failure must not fail the inference
        _warn_once(f"fail:{type(err).__name__}", f"semantic type detection failed for column {name!r}: {err!r}")
        return None, None, {}
    kind = getattr(result, "type", None)
    confidence = getattr(result, "confidence", None)
    details = getattr(result, "details", None) or {}
    return (None if kind is None else str(kind), None if confidence is None else float(confidence),
            dict(details) if isinstance(details, dict) else {})


__all__ = ["MODULE", "detect", "detector"]
