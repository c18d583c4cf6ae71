"""Model registry: each family registers a constructor and a typed config dataclass by name.

Follows timm's ``_registry.py``: one dictionary, duplicate names refused, unknown names answered
with the list of known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "get_model_config"]

_MODELS: dict[str, tuple[Callable[..., nn.Module], type]] = {}


def register_model(name: str, config_cls: type) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Register ``fn(cfg) -> nn.Module`` under ``name`` with its config dataclass."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls for model {name!r} must be a dataclass, got {config_cls!r}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = (fn, config_cls)
        return fn

    return decorator


def _lookup(name: str) -> tuple[Callable[..., nn.Module], type]:
    if name not in _MODELS:
        known = ", ".join(sorted(_MODELS)) or "(none)"
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return _MODELS[name]


def get_model_config(name: str) -> type:
    """Return the config dataclass of model family ``name``."""
    return _lookup(name)[1]


def list_models() -> list[str]:
    """Names of all registered model families, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build model ``name``; keyword arguments override its config dataclass defaults.

    Example:
        >>> model = create_model("tfsepnet", width=40)
    """
    fn, config_cls = _lookup(name)
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown} for model {name!r}; known fields: {sorted(known)}"
        )
    return fn(config_cls(**cfg))
