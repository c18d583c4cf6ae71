"""CP-Mobile against ``Network`` of ``CPJKU/dcase2024_task1_baseline`` (``models/baseline.py``).

The official file imports ``make_divisible`` from ``models/helpers/utils.py`` (so the clone's root
goes on ``sys.path`` while it is imported) and ``Conv2dNormActivation`` from torchvision, which
this check therefore needs. Our config maps onto ``get_model``'s arguments one to one; our
``strides`` triples ``(block, freq, time)`` become its ``{"b<block>": (freq, time)}`` dict.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_asc.fidelity.base import (
    OfficialCheck,
    OfficialModel,
    TorchOfficial,
    import_file,
    register_check,
)

BASELINE_PY = "models/baseline.py"
_TORCHVISION_MISSING = (
    "this check needs torchvision (the official model imports it): pip install torchvision"
)

# official names -> ours: in_c.<i> -> stem.<i>, stages.s<stage>.b<block> -> blocks.<block - 1>,
# feed_forward.<0|1> (conv, BatchNorm) -> classifier.<0|1>
_BLOCK = re.compile(r"^stages\.s\d+\.b(\d+)\.(.+)$")


@contextlib.contextmanager
def _clone_root_on_path(clone: Path) -> Iterator[None]:
    """The clone's root on ``sys.path``, and its ``models`` package forgotten again afterwards."""
    saved = {k: v for k, v in sys.modules.items() if k == "models" or k.startswith("models.")}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(clone))
    try:
        yield
    finally:
        sys.path.remove(str(clone))
        for name in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def _official_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    from nas_asc.models.cpmobile import CPMobileConfig

    cfg = CPMobileConfig(**config)
    return {
        "n_classes": cfg.n_classes,
        "in_channels": cfg.in_channels,
        "base_channels": cfg.base_channels,
        "channels_multiplier": cfg.channels_multiplier,
        "expansion_rate": cfg.expansion_rate,
        "n_blocks": tuple(cfg.n_blocks),
        "strides": {f"b{block}": (f, t) for block, f, t in cfg.strides},
    }


@register_check
class CPMobileCheck(OfficialCheck):
    family = "cpmobile"
    repo = "CPJKU/dcase2024_task1_baseline"
    files = (BASELINE_PY, "models/helpers/utils.py")
    configs = {
        "baseline (32, 1.8, 2.1)": {},
        "get_model defaults (2.3, 3.0)": {"channels_multiplier": 2.3, "expansion_rate": 3.0},
        "base 24, blocks (2, 2, 2)": {
            "base_channels": 24,
            "n_blocks": (2, 2, 2),
            "strides": ((2, 2, 2), (5, 2, 1)),
        },
        "base 16, blocks (1, 3)": {
            "base_channels": 16,
            "channels_multiplier": 2.0,
            "expansion_rate": 1.5,
            "n_blocks": (1, 3),
            "strides": ((3, 1, 2),),
        },
    }
    input_shape = (1, 256, 65)  # the baseline's front end: 256 Mel bins, 65 frames (1 s)

    def __init__(self) -> None:
        self._modules: dict[Path, Any] = {}

    def _module(self, clone: Path) -> Any:
        clone = Path(clone).resolve()
        if clone not in self._modules:
            try:
                import torchvision.ops.misc  # noqa: F401
            except ImportError as exc:
                raise ImportError(_TORCHVISION_MISSING) from exc
            with _clone_root_on_path(clone):
                module = import_file(clone / BASELINE_PY, "official_cpmobile_baseline")
                self._modules[clone] = module
        return self._modules[clone]

    def official(self, clone: Path, config: dict[str, Any]) -> OfficialModel:
        return TorchOfficial(self._module(clone).get_model(**_official_kwargs(config)))

    def map_weights(
        self, weights: Mapping[str, np.ndarray], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in weights.items():
            block = _BLOCK.match(name)
            if block:
                ours = f"blocks.{int(block.group(1)) - 1}.{block.group(2)}"
            elif name.startswith("in_c."):
                ours = "stem." + name[len("in_c.") :]
            elif name.startswith("feed_forward."):
                ours = "classifier." + name[len("feed_forward.") :]
            else:
                raise KeyError(f"official weight {name!r} has no counterpart in ours")
            out[ours] = torch.from_numpy(np.array(value))
        return out
