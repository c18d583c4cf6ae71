"""Model registry: each family registers a constructor and a typed config dataclass by name.

Follows timm's ``_registry.py``: one :class:`~nas_asc._registry.Registry` of constructors, each
with its config dataclass as metadata; duplicate names are refused, unknown names answered with
the list of known ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from nas_asc._registry import Registry, build_config

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "get_model_config",
    "get_model_revision",
    "get_reference_input",
    "MODELS",
]

# name -> fn(cfg) -> nn.Module, with meta "config": the family's config dataclass
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_MODELS = MODELS  # the former name, kept for code that removes a test family


def register_model(
    name: str,
    config_cls: type,
    revision: int = 1,
    reference_input: tuple[int, int, int] = (1, 128, 44),
) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Register ``fn(cfg) -> nn.Module`` under ``name`` with its config dataclass.

    Args:
        name: the family's name.
        config_cls: its config dataclass.
        revision: raised whenever the function a config builds changes (a layer, its order, a
            normalization's formula): checkpoints record it, and one of another revision is
            refused instead of being loaded into a different network.
        reference_input: ``(channels, mel bins, frames)`` of one clip through the front end of
            the family's report (what ``nas-asc complexity`` counts on by default).
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config_cls for model {name!r} must be a dataclass, got {config_cls!r}")
    if not isinstance(revision, int) or revision < 1:
        raise ValueError(f"model {name!r} revision must be an integer >= 1, got {revision!r}")
    shape = tuple(reference_input)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"model {name!r} reference_input must be (channels, mel bins, frames), got "
            f"{reference_input!r}"
        )
    return MODELS.register(name, config=config_cls, revision=revision, reference_input=shape)


def get_reference_input(name: str) -> tuple[int, int, int]:
    """``(channels, mel bins, frames)`` of one clip through the front end of family ``name``'s
    report, e.g. ``(1, 256, 44)`` for ``bcresnet``."""
    return MODELS.meta(name).get("reference_input", (1, 128, 44))


def get_model_revision(name: str) -> int:
    """The revision of model family ``name`` (see :func:`register_model`)."""
    return MODELS.meta(name)["revision"]


def get_model_config(name: str) -> type:
    """Return the config dataclass of model family ``name``."""
    return MODELS.meta(name)["config"]


def list_models() -> list[str]:
    """Names of all registered model families, sorted."""
    return MODELS.names()


def create_model(name: str, **cfg: Any) -> nn.Module:
    """Build model ``name``; keyword arguments override its config dataclass defaults.

    Example:
        >>> model = create_model("tfsepnet", width=40)
    """
    fn = MODELS.get(name)
    return fn(build_config(get_model_config(name), cfg, f"model {name!r}"))
