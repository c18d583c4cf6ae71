"""TF-SepNet against ``TfSepNet`` of ``yqcai888/DCASE2023`` (``tf-sepnet.py``, ``common.py``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
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

# official block member -> ours (each a ConvBlock: .conv and .bn -> .0 and .1)
_BLOCK = {
    "trans_conv": "transition",
    "freq_dw_conv": "freq_dw",
    "temp_dw_conv": "time_dw",
    "freq_pw_conv": "freq_pw",
    "temp_pw_conv": "time_pw",
}
_PART = {"conv": "0", "bn": "1"}
_NAME = re.compile(r"^feature\.(\d+)\.(\w+)\.(conv|bn)\.(.+)$")


@register_check
class TFSepNetCheck(OfficialCheck):
    family = "tfsepnet"
    repo = "yqcai888/DCASE2023"
    files = ("tf-sepnet.py", "common.py")
    # the official code runs where every stage's channel count is a multiple of 10
    configs = {
        "C=40 (submission)": {"width": 40},
        "C=20": {"width": 20},
        "C=60": {"width": 60},
        "C=80, no shuffle": {"width": 80, "block": "tfsep_noshuffle"},
    }
    input_shape = (1, 128, 44)

    def official(self, clone: Path, config: dict[str, Any]) -> OfficialModel:
        module = import_file(Path(clone) / "tf-sepnet.py", "official_tf_sepnet")
        shuffle = config.get("block", "tfsep") != "tfsep_noshuffle"
        return TorchOfficial(
            module.TfSepNet(width=config["width"], dropout_rate=0.2, shuffle=shuffle)
        )

    def map_weights(
        self, weights: Mapping[str, np.ndarray], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        out = {}
        for name, value in weights.items():
            match = _NAME.match(name)
            if match:
                index, member, part, leaf = match.groups()
                ours = f"features.{index}.{_BLOCK[member]}.{_PART[part]}.{leaf}"
            else:  # the stem conv, AdaResNorm's rho/gamma/beta and the classifier
                ours = name.replace("feature.", "features.", 1)
            out[ours] = torch.from_numpy(np.array(value))
        return out
