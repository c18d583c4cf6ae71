"""The fidelity checks' base: :class:`OfficialCheck`, the :data:`CHECKS` registry and
:func:`compare`. The checks (``nas_asc.fidelity.checks``) import this module; the package imports
them, so the arrows run one way."""

from __future__ import annotations

import abc
import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_asc._registry import Registry

__all__ = [
    "OfficialModel",
    "OfficialCheck",
    "CHECKS",
    "register_check",
    "Comparison",
    "compare",
    "randomize_",
    "import_file",
    "stand_in_modules",
]

TOLERANCE = 1e-4  # largest absolute logit difference accepted as "the same function"

CHECKS: Registry[type[OfficialCheck]] = Registry("fidelity check")


class OfficialModel(abc.ABC):
    """The official network at one configuration, behind one small interface.

    A PyTorch implementation wraps an ``nn.Module`` (:class:`TorchOfficial`); other frameworks
    (Keras) implement the two methods themselves.
    """

    @abc.abstractmethod
    def randomize(self, seed: int) -> None:
        """Give every weight and normalization statistic a random value (reproducible by seed)."""

    @abc.abstractmethod
    def weights(self) -> dict[str, np.ndarray]:
        """Every weight and statistic by the official name, as float arrays in its own layout."""

    @abc.abstractmethod
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits for ``x`` (``(batch, 1, n_mels, frames)``, float32) in inference mode."""


class TorchOfficial(OfficialModel):
    """An official PyTorch ``nn.Module``."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def randomize(self, seed: int) -> None:
        randomize_(self.module, seed)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).detach().cpu().numpy()


class OfficialCheck(abc.ABC):
    """How one family is compared with its official implementation.

    Subclasses set the class attributes and implement :meth:`official` and :meth:`map_weights`.
    """

    family: str  # the nas-asc model family (a name in nas_asc.models.MODELS)
    repo: str  # GitHub owner/name of the official code
    files: tuple[str, ...]  # the files of that repository the check reads
    #: configurations compared: name -> our model config fields (the first is the reference)
    configs: dict[str, dict[str, Any]]
    input_shape: tuple[int, int, int] = (1, 128, 44)  # (channels, n_mels, frames) of one clip

    @abc.abstractmethod
    def official(self, clone: Path, config: dict[str, Any]) -> OfficialModel:
        """The official model at our ``config``, built from the code in ``clone``."""

    @abc.abstractmethod
    def map_weights(
        self, weights: Mapping[str, np.ndarray], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Our state dict holding the official ``weights`` (names and layouts translated)."""

    def input_for(self, config: dict[str, Any]) -> tuple[int, int, int]:
        """The input shape of one clip at ``config`` (default: :attr:`input_shape`)."""
        return self.input_shape


def register_check(cls: type[OfficialCheck]) -> type[OfficialCheck]:
    """Class decorator: register a check under its family's name."""
    CHECKS.register(cls.family, cls)
    return cls


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values for every floating tensor of ``module``'s state, variances kept positive.

    Kernels (two or more dimensions) get He-scaled normal values (std ``sqrt(2 / fan_in)``) so
    that activations keep their scale through deep networks; per-channel weights ``1 + N(0,
    0.2^2)``, other vectors (biases, shifts) ``N(0, 0.2^2)``; BatchNorm running means ``N(0,
    0.1^2)`` and running variances ``U(0.5, 1.5)``. A mismatch anywhere shows in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * noise)
            elif tensor.dim() >= 2 and tensor.numel() > tensor.shape[0] and tensor.shape[0] > 1:
                fan_in = tensor.numel() // tensor.shape[0]
                tensor.copy_(noise * (2.0 / fan_in) ** 0.5)
            elif name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * noise)
            else:
                tensor.copy_(0.2 * noise)
    return module


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def import_file(path: Path, name: str) -> Any:
    """Import the Python file ``path`` as module ``name``, its folder on ``sys.path`` meanwhile."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is the clone of the official code complete?")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with _on_path(path.parent):
        spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def stand_in_modules(modules: Mapping[str, types.ModuleType]) -> Iterator[None]:
    """``modules`` in ``sys.modules`` meanwhile, by name; what was there before is put back.

    For packages an official file imports but a check does not run (its training helpers,
    quantization toolkits, a front end that the check bypasses).
    """
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@dataclass(frozen=True)
class Comparison:
    family: str
    config: str
    max_abs_diff: float
    logit_scale: float  # largest absolute logit of the official model, for scale

    @property
    def same(self) -> bool:
        return self.max_abs_diff <= TOLERANCE


def compare(
    check: OfficialCheck, clone: Path, name: str, seed: int = 0, batch: int = 4
) -> Comparison:
    """Official and nas-asc outputs for the same random weights at configuration ``name``."""
    from nas_asc.models import create_model

    config = check.configs[name]
    official = check.official(Path(clone), config)
    official.randomize(seed)
    ours = create_model(check.family, **config)
    ours.load_state_dict(check.map_weights(official.weights(), config), strict=True)
    ours.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch, *check.input_for(config)), generator=gen)
    expected = official(x.numpy())
    with torch.no_grad():
        got = ours(x).numpy()
    if got.shape != expected.shape:
        raise AssertionError(f"output shapes differ: ours {got.shape}, official {expected.shape}")
    return Comparison(
        check.family, name, float(np.abs(got - expected).max()), float(np.abs(expected).max())
    )
