"""BC-Res2Net against ``BcRes2NetModel_resnorm_bn_quant`` of ``wsdragon2010/GZHU_DCASE2023_TASK1``.

That class (``pytorch/all_models_softmax.py``) is the submitted student: the repository's
``scripts/dcase_train.sh``, ``dml_train.sh`` and ``kd_fineturn.sh`` train it with
``model_width=3`` (C = 8 * model_width = 24), 256 Mel bins, a 2048-point window and hop 1024 at
32 kHz (1 s: 32 frames). Its front end (torchlibrosa's ``Spectrogram`` and ``LogmelFilterBank``)
is not part of the nas-asc network, whose input is the log-mel map: the check replaces both with
identities and feeds the official model the same map in its ``(batch, 1, frames, bins)`` layout.
torchlibrosa needs librosa; where either is missing, placeholders stand in for the two modules
while the official file is imported (their output is discarded anyway). The published
``pytorch_utils.py`` lacks two of the names the official file imports from it, ``do_mixup`` and
``mixstyle`` (training augmentations no model of the file calls in inference); placeholders that
raise when called stand in for them.
"""

from __future__ import annotations

import contextlib
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas_asc.fidelity.base import (
    OfficialCheck,
    OfficialModel,
    TorchOfficial,
    import_file,
    register_check,
    stand_in_modules,
)

# the official model's modules in forward order -> our ``features`` index (None: a max-pool)
_SEQUENCE = (
    "bn0", "bn1", "input_conv", "t1", "n11", "bn2", None, "t2", "n21", "bn3", None,
    "t3", "n31", "n32", "n33", "bn4", "t4", "n41", "n42", "n43", "bn5",
)  # fmt: skip
_FEATURES = {name: f"features.{i}" for i, name in enumerate(_SEQUENCE) if name}
_HEAD = {"dw_conv": "head_conv", "onexone_conv": "head_pointwise", "head_conv": "classifier"}
# official block member -> ours
_BLOCK = {
    "f2_conv1x1.0": "pointwise.0",  # transition: 1x1 conv, BatchNorm
    "f2_conv1x1.1": "pointwise.1",
    "f1_conv1x1.0": "project.0",  # transition: closing 1x1 conv
    "f_convs": "freq_convs",
    "f_ssn": "freq_norms",
    "t_convs": "time_convs",
}
_NAME = re.compile(r"^(\w+?)\.(f2_conv1x1\.\d|f1_conv1x1\.\d|f_convs|f_ssn|t_convs|t_ssn)(.*)$")


class _Official(TorchOfficial):
    """The official network on our ``(batch, 1, bins, frames)`` log-mel input, logits out."""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        with torch.no_grad():
            out = self.module(torch.from_numpy(x).transpose(2, 3))["clipwise_output"]
        return out.detach().cpu().numpy()


class _Placeholder(nn.Identity):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


def _not_published(name: str):
    def missing(*args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{name} is not in the published pytorch_utils.py")

    return missing


@contextlib.contextmanager
def _helper_module(clone: Path) -> Iterator[None]:
    """The clone's ``pytorch_utils`` as ``pytorch_utils``, with the names it lacks filled in."""
    utils = import_file(Path(clone) / "pytorch" / "pytorch_utils.py", "pytorch_utils")
    for name in ("do_mixup", "interpolate", "pad_framewise_output", "mixstyle", "syn_mixstyle"):
        if not hasattr(utils, name):
            setattr(utils, name, _not_published(name))
    with stand_in_modules({"pytorch_utils": utils}):
        yield


@contextlib.contextmanager
def _front_end_modules() -> Iterator[None]:
    """torchlibrosa as installed, or placeholders for the classes the official file imports."""
    try:
        import torchlibrosa.augmentation  # noqa: F401
        import torchlibrosa.stft  # noqa: F401

        missing = False
    except ImportError:
        missing = True
    if not missing:
        yield
        return
    names = ("torchlibrosa", "torchlibrosa.stft", "torchlibrosa.augmentation")
    stubs = {name: types.ModuleType(name) for name in names}
    for cls in ("Spectrogram", "LogmelFilterBank"):
        setattr(stubs["torchlibrosa.stft"], cls, _Placeholder)
    stubs["torchlibrosa.augmentation"].SpecAugmentation = _Placeholder
    with stand_in_modules(stubs):
        yield


@register_check
class BCRes2NetCheck(OfficialCheck):
    family = "bcres2net"
    repo = "wsdragon2010/GZHU_DCASE2023_TASK1"
    files = ("pytorch/all_models_softmax.py", "pytorch/pytorch_utils.py")
    # the official constructor takes model_width = C / 8; C = 80 is the report's BC-Res2Net_wide
    configs = {
        "C=24 (submission)": {"width": 24},
        "C=16": {"width": 16},
        "C=80 (wide), 3 classes": {"width": 80, "n_classes": 3},
    }
    input_shape = (1, 256, 32)  # its per-bin BatchNorms are built for 256 Mel bins

    def official(self, clone: Path, config: dict[str, Any]) -> OfficialModel:
        with _front_end_modules(), _helper_module(clone):
            module = import_file(
                Path(clone) / "pytorch" / "all_models_softmax.py", "official_gzhu_all_models"
            )
            net = module.BcRes2NetModel_resnorm_bn_quant(
                model_width=config["width"] // 8,
                sample_rate=32000,
                n_fft=2048,
                window_size=2048,
                hop_size=1024,
                mel_bins=256,
                classes_num=config.get("n_classes", 10),
            )
        net.spectrogram_extractor = nn.Identity()
        net.logmel_extractor = nn.Identity()
        return _Official(net)

    def map_weights(
        self, weights: Mapping[str, np.ndarray], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in weights.items():
            top, _, leaf = name.partition(".")
            block = _NAME.match(name)
            if block:
                prefix, member, rest = block.groups()
                if member == "t_ssn":
                    continue  # four BatchNorms per block that the official forward never calls
                ours = f"{_FEATURES[prefix]}.{_BLOCK[member]}{rest}"
            elif top in ("bn0", "bn1", "bn2", "bn3", "bn4", "bn5"):
                ours = f"{_FEATURES[top]}.bn.{leaf}"
            elif top == "input_conv":
                ours = f"{_FEATURES[top]}.{leaf}"
            else:
                ours = f"{_HEAD[top]}.{leaf}"
            out[ours] = torch.from_numpy(np.array(value))
        return out
