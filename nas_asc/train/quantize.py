"""Post-training static int8 quantization (PyTorch FX graph mode, ``x86`` engine).

Conv-BatchNorm-ReLU triples are fused and converted to int8 kernels with per-channel weight
scales; activations are calibrated on a few batches of training data. Layers marked
``deploy_float`` (per-sample normalizations such as AdaResNorm and ResNorm, whose statistics
cannot be folded into weights) are left in float: the converted graph dequantizes before them and
re-quantizes after, and :func:`nas_asc.complexity.count` stores their parameters as float32.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

__all__ = ["quantize_ptq", "quantized_engine"]


def quantized_engine() -> str:
    """The int8 engine in use: ``x86`` where available, else ``fbgemm`` or ``qnnpack``."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise RuntimeError(f"this PyTorch build has no int8 engine (supported: {engines})")


def _float_module_types(model: nn.Module) -> list[type]:
    return sorted(
        {type(m) for m in model.modules() if getattr(m, "deploy_float", False)},
        key=lambda t: t.__name__,
    )


@torch.no_grad()
def quantize_ptq(model: nn.Module, calibration: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Return an int8 copy of ``model`` calibrated on ``calibration`` inputs.

    Args:
        model: the trained float model (left unchanged).
        calibration: model inputs ``(n, channels, freq, time)`` used to set activation ranges.
        batch_size: calibration batch size.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError(
            "calibration inputs must be a non-empty (n, c, f, t) tensor, "
            f"got {tuple(calibration.shape)}"
        )
    engine = quantized_engine()
    torch.backends.quantized.engine = engine
    float_types = _float_module_types(model)
    qmap = get_default_qconfig_mapping(engine)
    for cls in float_types:
        qmap = qmap.set_object_type(cls, None)
    custom = PrepareCustomConfig().set_non_traceable_module_classes(float_types)
    float_model = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch 2.14 announces the deprecation of quantized tensors and of reduce_range inside
        # its own FX quantization path; nothing here can act on it, so keep stderr readable.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*quant_min and quant_max.*")
        prepared = prepare_fx(
            float_model, qmap, example_inputs=(calibration[:1],), prepare_custom_config=custom
        )
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start : start + batch_size])
        return convert_fx(prepared)
