"""Int8 quantization (PyTorch FX graph mode, ``x86`` engine): post-training static (PTQ) and
quantization-aware training (QAT).

Both paths share one configuration: conv-BatchNorm(-ReLU) sequences are fused, weights are
symmetric per-channel int8, activations per-tensor uint8 with the engine's reduced range.

* **PTQ** (:func:`quantize_ptq`): activation ranges are calibrated on a few batches of training
  data and the float model is converted (reports 003 and 004 deploy this way).
* **QAT** (:func:`prepare_qat`, :func:`convert_qat`): the network trains with fake quantization
  (weights and activations rounded to their int8 grid in the forward pass, straight-through
  gradients, Jacob et al., CVPR 2018), so it learns around the rounding; report 000 trains its
  student this way. :func:`fake_quant_disabled` runs the same network in float to measure its
  fp32 accuracy.

What is stored at which dtype (PyTorch's int8 model; :func:`stored_parameters` counts it):

* Convolutions and linear layers: ``qint8`` weights with per-channel scales, ``float32``
  biases. BatchNorm directly after a convolution is folded into it (PTQ: at conversion; QAT:
  trained folded, ``ConvBn2d``): its scale goes into the int8 weights, its shift into the bias.
* Per-sample normalizations (AdaResNorm, ResNorm; class attribute ``deploy_float``) compute
  their statistics from each input, so nothing can be folded into int8 weights. They are not
  traced (opaque leaves), get no qconfig, and run in float between a dequantize and a quantize;
  their parameters are ``float32`` (AdaResNorm: 3 per channel; ResNorm: none).
* SubSpectralNorm cannot be folded either: it keeps one statistic per channel and frequency
  sub-band, while the depthwise convolution before it shares one kernel across the bands. It
  runs in float between a dequantize and a quantize, like a ``deploy_float`` layer (its
  BatchNorm's weight, bias, running mean and variance are ``float32``). Quantizing it instead
  (a quantized BatchNorm, which stores the same four ``float32`` vectors) rounds its data four
  times rather than twice, because FX requantizes around its frequency padding and cropping
  helpers (``torch.fx.wrap`` leaves run in float): on the conformance suite's BC-Res2Net that
  costs 7 points of int8/fp32 agreement (87% vs 93%), and the exported ONNX graph runs the
  normalization in float anyway.
* Any other BatchNorm that cannot be folded (e.g. one after a ReLU) becomes a quantized
  BatchNorm: int8 activations in and out, ``float32`` weight, bias, running mean and variance.

:func:`nas_asc.complexity.count` applies the DCASE rule instead: every parameter of a
converted layer at one byte (BatchNorm's ``2 * C`` included, folded or not, and biases), and
``deploy_float`` parameters at four bytes. The two agree on the int8 weights and the float
layers; they differ on biases (rule: 1 byte per original parameter; PyTorch: float32 per
output channel) and on unfolded BatchNorms, SubSpectralNorm's included (rule: ``2 * C`` bytes;
PyTorch: ``4 * C`` float32 values).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "quantize_ptq",
    "prepare_qat",
    "convert_qat",
    "fake_quant_disabled",
    "StoredParameters",
    "stored_parameters",
    "quantized_engine",
]


def quantized_engine() -> str:
    """The int8 engine in use: ``x86`` where available, else ``fbgemm`` or ``qnnpack``."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            return name
    raise RuntimeError(f"this PyTorch build has no int8 engine (supported: {engines})")


def _float_module_types(model: nn.Module) -> list[type]:
    """Module types the int8 model runs in float: ``deploy_float`` ones and SubSpectralNorm."""
    from nas_asc.models.layers import SubSpectralNorm

    return sorted(
        {
            type(m)
            for m in model.modules()
            if getattr(m, "deploy_float", False) or isinstance(m, SubSpectralNorm)
        },
        key=lambda t: t.__name__,
    )


def _fx_configs(model: nn.Module, qat: bool):
    """QConfig mapping and prepare config shared by PTQ and QAT.

    ``deploy_float`` module types and SubSpectralNorm get no qconfig and are not traced, so
    they stay float32 modules in the converted graph, exactly alike in both paths.
    """
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    engine = quantized_engine()
    torch.backends.quantized.engine = engine
    float_types = _float_module_types(model)
    qmap = (get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping)(engine)
    for cls in float_types:
        qmap = qmap.set_object_type(cls, None)
    custom = PrepareCustomConfig().set_non_traceable_module_classes(float_types)
    return qmap, custom


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        # torch 2.14 announces the deprecation of torch.ao.quantization, of quantized tensors
        # and of reduce_range inside its own FX quantization path; nothing here can act on it,
        # so keep stderr readable.
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*quant_min and quant_max.*")
        yield


def _check_inputs(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{what} must be a non-empty (n, channels, freq, time) tensor, got {shape}; pass "
            "model inputs such as train_set.x[:1]"
        )


@torch.no_grad()
def quantize_ptq(
    model: nn.Module,
    calibration: torch.Tensor,
    batch_size: int = 128,
) -> nn.Module:
    """Return an int8 copy of ``model`` calibrated on ``calibration`` inputs.

    Args:
        model: the trained float model (left unchanged).
        calibration: model inputs ``(n, channels, freq, time)`` used to set activation ranges.
        batch_size: calibration batch size.
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _check_inputs(calibration, "calibration inputs")
    qmap, custom = _fx_configs(model, qat=False)
    float_model = copy.deepcopy(model).eval()
    with _quiet():
        prepared = prepare_fx(
            float_model, qmap, example_inputs=(calibration[:1],), prepare_custom_config=custom
        )
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start : start + batch_size])
        return convert_fx(prepared)


def prepare_qat(model: nn.Module, example_inputs: torch.Tensor) -> torch.fx.GraphModule:
    """Return a fake-quantized copy of ``model``, in train mode, for quantization-aware training.

    Conv-BatchNorm(-ReLU) sequences become QAT modules that train with BatchNorm folded into
    the fake-quantized weight; every quantized tensor gets a fake quantizer (moving-average
    min/max observer, straight-through gradient). ``deploy_float`` modules stay float, as in
    :func:`quantize_ptq`. Train the returned module (its parameters are new tensors: build the
    optimizer on it), then call :func:`convert_qat`.

    Args:
        model: the float model (left unchanged; it may be trained already or fresh).
        example_inputs: model inputs ``(n, channels, freq, time)``; the first one is used to
            trace the model. The prepared graph does not depend on its size, so a state dict
            of a prepared model loads into any model prepared from the same float network.

    Returns:
        The prepared ``torch.fx.GraphModule``.

    Example:
        >>> qat = prepare_qat(model, train_set.x[:1])  # doctest: +SKIP
        >>> ... train qat ...
        >>> int8_model = convert_qat(qat)  # doctest: +SKIP
    """
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    _check_inputs(example_inputs, "QAT example inputs")
    qmap, custom = _fx_configs(model, qat=True)
    float_model = copy.deepcopy(model).train()
    with _quiet():
        return prepare_qat_fx(
            float_model, qmap, example_inputs=(example_inputs[:1],), prepare_custom_config=custom
        )


def convert_qat(prepared: torch.fx.GraphModule) -> nn.Module:
    """Return the int8 model (eval mode) of a model prepared by :func:`prepare_qat`.

    The fake quantizers' learned ranges become the int8 scales and the folded BatchNorm
    statistics are baked into the int8 weights. ``prepared`` is left unchanged (a copy is
    converted), so training may continue.
    """
    from torch.ao.quantization.quantize_fx import convert_fx

    if not isinstance(prepared, torch.fx.GraphModule) or not any(
        isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in prepared.modules()
    ):
        raise ValueError(
            f"convert_qat needs a model returned by prepare_qat, got {type(prepared).__name__}; "
            "prepare it with prepare_qat(model, example_inputs) and train that"
        )
    converted = copy.deepcopy(prepared).eval()
    with _quiet(), torch.no_grad():
        return convert_fx(converted)


@contextlib.contextmanager
def fake_quant_disabled(prepared: nn.Module) -> Iterator[nn.Module]:
    """Run a QAT-prepared model in float inside the block: fake quantizers and observers off.

    Used to measure the fp32 accuracy of a quantization-aware trained network (its weights
    with BatchNorm folded, unrounded). On exit every fake quantizer's and observer's on/off
    state and the model's train/eval mode are restored as they were, even if the block
    raises (``evaluate`` switches to eval mode inside).

    Example:
        >>> with fake_quant_disabled(qat):  # doctest: +SKIP
        ...     fp32 = evaluate(qat, eval_set)
    """
    from torch.ao.quantization import FakeQuantizeBase

    quantizers = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    saved = [(m.fake_quant_enabled.clone(), m.observer_enabled.clone()) for m in quantizers]
    modes = [(m, m.training) for m in prepared.modules()]
    try:
        for m in quantizers:
            m.disable_fake_quant()
            m.disable_observer()
        yield prepared
    finally:
        for m, (fake, observe) in zip(quantizers, saved, strict=True):
            m.fake_quant_enabled.copy_(fake)
            m.observer_enabled.copy_(observe)
        for m, training in modes:
            m.training = training


@dataclass(frozen=True)
class StoredParameters:
    """Parameter values of a converted int8 model as PyTorch stores them (see
    :func:`stored_parameters`); quantization scales and zero points are not included."""

    int8_weights: int  # qint8 weights of quantized convolutions and linear layers
    float32_biases: int  # their float32 biases (a folded BatchNorm's shift lands here)
    float32_norms: int  # unfolded BatchNorms: weight, bias, running mean and variance
    float32_float_layers: int  # other parameters of layers left in float (deploy_float)

    @property
    def bytes(self) -> int:
        """Bytes as stored: one per int8 weight, four per float32 value."""
        return self.int8_weights + 4 * (
            self.float32_biases + self.float32_norms + self.float32_float_layers
        )


def stored_parameters(quantized: nn.Module) -> StoredParameters:
    """Count the parameter values of a converted int8 model by where and how they are stored.

    Quantized convolutions and linear layers hold ``qint8`` weights and ``float32`` biases;
    a BatchNorm that could not be folded (quantized, or in float inside SubSpectralNorm) holds
    four ``float32`` vectors; other layers left in float hold their parameters in ``float32``.

    Args:
        quantized: a model returned by :func:`quantize_ptq` or :func:`convert_qat`.
    """
    from torch.ao.nn import quantized as nnq
    from torch.ao.nn.quantized.modules.conv import _ConvNd

    weights = biases = norms = floats = 0
    for m in quantized.modules():
        if isinstance(m, (_ConvNd, nnq.Linear)):
            w, b = m.weight(), m.bias()
            if w.dtype != torch.qint8:
                raise TypeError(f"expected qint8 weights in {type(m).__name__}, got {w.dtype}")
            weights += w.numel()
            biases += 0 if b is None else b.numel()
        elif isinstance(m, (nnq.BatchNorm2d, nn.modules.batchnorm._BatchNorm)):
            # quantized or left in float (SubSpectralNorm's): four float32 vectors either way
            stats = (m.weight, m.bias, m.running_mean, m.running_var)
            norms += sum(t.numel() for t in stats if t is not None)
        else:
            floats += sum(t.numel() for t in m.parameters(recurse=False))
    return StoredParameters(weights, biases, norms, floats)
