"""Model complexity under the DCASE Task 1 counting rule.

The rule (DCASE 2022-2024 Task 1, as computed by the challenge's NeSsi tool with torchinfo's
``total_mult_adds``), applied to one inference on one clip, on the input the model really sees
after the front end (e.g. ``1 x 128 x 44`` log-mel for TF-SepNet):

* one fused multiply-add is one MAC;
* a convolution counts ``out_elements * in_channels / groups * kernel_h * kernel_w`` for its
  weight, plus one MAC per output element for its bias, if it has one;
* an affine BatchNorm counts its parameters, ``2 * C`` (it folds into the preceding convolution);
* a Linear layer counts its parameters (weights and bias);
* pooling, activations, additions, concatenation, shuffles and parameter-free normalizations
  count 0;
* matrix products between activations (``matmul``/``bmm``/``einsum``, e.g. attention) count their
  multiply-adds. torchinfo misses these; nas-asc counts them so that a model cannot hide compute.

Parameter memory counts every parameter at the dtype it is stored in when deployed: layers that
the int8 quantizer converts (convolutions, linear layers, BatchNorm folded into them) at the
deployed weight dtype (int8, one byte), and layers that stay in float after conversion (those
marked ``deploy_float``, e.g. AdaResNorm, whose statistics are per sample) at four bytes.

The DCASE 2025 rule (``rule="dcase2025"``) counts instead what the 2025 checker counts on the
int8 network an inference package ships: torchinfo's ``total_mult_adds`` of that network and the
bytes of its ``parameters()`` at their stored dtype (:mod:`nas_asc.deploy.netgen`):
folded BatchNorms count no MACs of their own but each convolution's bias counts one MAC per
output element; int8 weights one byte, float32 biases and float layers four.

MACs are measured with fvcore's JIT tracer, whose per-operator handles are replaced by the rule
above; ``tests/test_complexity.py`` checks them against torchinfo on every registered model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore scripts a helper with torch.jit.script at import, which torch 2.14 deprecates; the
    # tracing analysis used here is unaffected, so the warning would only confuse users.
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    from fvcore.nn.jit_analysis import JitModelAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ["Complexity", "count", "parse_input_shape", "DTYPE_BYTES"]

DTYPE_BYTES = {"int8": 1, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Complexity:
    """Complexity of one model on one input shape."""

    params: int  # number of parameters
    param_bytes: int  # bytes of all parameters at their deployed dtype
    macs: int  # multiply-accumulates for one inference (DCASE rule)
    input_shape: tuple[int, ...]  # the input the count was measured on (batch first)
    # int8 activation bytes alive at once at the peak (nas_asc.memory); None: not counted
    peak_activation_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_none(value: Any) -> bool:
    return value.type().kind() == "NoneType"


def _conv_macs(inputs: list[Any], outputs: list[Any]) -> int:
    out_shape = get_shape(outputs[0])
    w_shape = get_shape(inputs[1])  # (out, in / groups, *kernel)
    out_elements = math.prod(out_shape)
    macs = out_elements * math.prod(w_shape[1:])
    if not _is_none(inputs[2]):
        macs += out_elements
    return macs


def _batch_norm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    if _is_none(inputs[1]):  # not affine: nothing to fold
        return 0
    batch = get_shape(outputs[0])[0]
    return batch * 2 * get_shape(inputs[1])[0]


def _linear_macs(inputs: list[Any], outputs: list[Any]) -> int:
    batch = get_shape(outputs[0])[0]
    n = math.prod(get_shape(inputs[1]))
    if not _is_none(inputs[2]):
        n += math.prod(get_shape(inputs[2]))
    return batch * n


def _addmm_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # addmm(bias, x, w^T): a traced Linear on 2-D input
    batch = get_shape(outputs[0])[0]
    n_in, n_out = get_shape(inputs[2])
    return batch * (n_in * n_out + n_out)


def _matmul_macs(inputs: list[Any], outputs: list[Any]) -> int:
    a, b = get_shape(inputs[0]), get_shape(inputs[1])
    inner = a[-1]
    return math.prod(get_shape(outputs[0])) * inner if b else 0


def _einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    from fvcore.nn.jit_handles import einsum_flop_jit

    return int(einsum_flop_jit(inputs, outputs))


_HANDLES = {
    "aten::_convolution": _conv_macs,
    "aten::convolution": _conv_macs,
    "aten::conv2d": _conv_macs,
    "aten::conv1d": _conv_macs,
    "aten::batch_norm": _batch_norm_macs,
    "aten::linear": _linear_macs,
    "aten::addmm": _addmm_macs,
    "aten::matmul": _matmul_macs,
    "aten::mm": _matmul_macs,
    "aten::bmm": _matmul_macs,
    "aten::einsum": _einsum_macs,
}


def parse_input_shape(shape: str | Sequence[int]) -> tuple[int, ...]:
    """Normalize an input shape to ``(1, channels, freq, time)``.

    Accepts ``"1x128x44"``, ``"128x44"`` or a sequence of 2 to 4 positive ints; a leading batch
    dimension must be 1 (the rule counts one inference).
    """
    if isinstance(shape, str):
        try:
            dims = tuple(int(d) for d in shape.lower().replace("×", "x").split("x"))
        except ValueError:
            raise ValueError(
                f"input shape must look like 1x128x44 (channels x mel bins x frames), got {shape!r}"
            ) from None
    else:
        dims = tuple(int(d) for d in shape)
    if not 2 <= len(dims) <= 4 or any(d <= 0 for d in dims):
        raise ValueError(
            f"input shape must have 2 to 4 positive dimensions (e.g. 1x128x44), got {shape!r}"
        )
    if len(dims) == 4 and dims[0] != 1:
        raise ValueError(f"complexity is counted for one clip: batch must be 1, got {shape!r}")
    while len(dims) < 4:
        dims = (1, *dims)
    return dims


def _param_bytes(model: nn.Module, weight_bytes: int) -> int:
    total = 0
    seen: set[int] = set()
    float_prefixes = [
        name for name, mod in model.named_modules() if getattr(mod, "deploy_float", False)
    ]
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        in_float = any(name.startswith(f"{p}.") or not p for p in float_prefixes)
        total += param.numel() * (4 if in_float else weight_bytes)
    return total


def count(
    model: nn.Module,
    input_shape: str | Sequence[int],
    weight_dtype: str = "int8",
    activations: bool = False,
    rule: str = "dcase2024",
) -> Complexity:
    """Count parameters, parameter bytes and MACs of ``model`` under the DCASE rule.

    Args:
        model: the float model (its training/eval mode is restored afterwards).
        input_shape: the shape the model sees after the front end, e.g. ``(1, 128, 44)``.
        weight_dtype: dtype of quantized weights when deployed: ``int8``, ``float16`` or
            ``float32``.
        activations: also count ``peak_activation_bytes``, the int8 activation memory the
            inference needs at once (:func:`nas_asc.memory.peak_activation_bytes`; a trace and
            one more forward pass, about a third of the count's time).
        rule: ``"dcase2024"`` (the rule above) or ``"dcase2025"`` (the 2025 checker's count of
            the int8 network a DCASE 2025 inference package ships; ``weight_dtype`` must be
            ``int8``).

    Returns:
        A :class:`Complexity`.

    Example:
        >>> from nas_asc.models import create_model
        >>> c = count(create_model("tfsepnet", width=40), (1, 128, 44))
        >>> (c.params, c.macs)
        (54270, 10220340)
    """
    if weight_dtype not in DTYPE_BYTES:
        raise ValueError(f"weight_dtype must be one of {sorted(DTYPE_BYTES)}, got {weight_dtype!r}")
    if rule not in ("dcase2024", "dcase2025"):
        raise ValueError(f"rule must be dcase2024 or dcase2025, got {rule!r}")
    shape = parse_input_shape(input_shape)
    if rule == "dcase2025":
        return _count_2025(model, shape, weight_dtype, activations)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        x = torch.zeros(shape, device=device)
        analysis = JitModelAnalysis(model, (x,))
        analysis.set_op_handle(**_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        with torch.no_grad():
            macs = int(analysis.total())
    finally:
        model.train(was_training)
    peak = None
    if activations:
        from nas_asc.memory import peak_activation_bytes

        peak = peak_activation_bytes(model, shape)
    return Complexity(
        params=params,
        param_bytes=_param_bytes(model, DTYPE_BYTES[weight_dtype]),
        macs=macs,
        input_shape=shape,
        peak_activation_bytes=peak,
    )


def _count_2025(
    model: nn.Module, shape: tuple[int, ...], weight_dtype: str, activations: bool
) -> Complexity:
    from nas_asc.deploy.netgen import submission_complexity

    if weight_dtype != "int8":
        raise ValueError(
            f"the dcase2025 rule counts the int8 network at its stored dtypes, got weight_dtype "
            f"{weight_dtype!r}"
        )
    params, param_bytes, macs = submission_complexity(model, shape)
    peak = None
    if activations:
        from nas_asc.memory import peak_activation_bytes

        peak = peak_activation_bytes(model, shape)
    return Complexity(
        params=params,
        param_bytes=param_bytes,
        macs=macs,
        input_shape=shape,
        peak_activation_bytes=peak,
    )
