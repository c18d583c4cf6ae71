"""A C header with the int8 weights of an exported model, laid out for CMSIS-NN style kernels.

The header is a weight container for a hand-written or generated inference program; the order of
operations stays in the ONNX graph. For every quantized ``Conv`` / ``Gemm`` / ``MatMul`` of the
tidied QDQ graph written by :func:`nas_asc.export.onnx.export_int8_onnx` it holds, in execution
order:

* the int8 weights in CMSIS-NN order: ``[out][kh][kw][in]`` (OHWI) for a convolution, whose
  activations are channel-last (NHWC, "HWC"); ``[1][kh][kw][out]`` for a depthwise convolution
  (``groups == in_channels``, as ``arm_depthwise_conv_s8`` expects); ``[out][in]`` for a fully
  connected layer;
* the int32 biases (scale ``input_scale * weight_scale[c]``, zero point 0);
* the per-channel requantization ``output_mult`` (Q31) and ``output_shift`` (positive = left)
  of ``input_scale * weight_scale[c] / output_scale``, as ``arm_convolve_s8`` takes them, and
  the float weight scales they come from;
* ``input_offset`` (minus the input zero point), ``output_offset`` (the output zero point) and
  the activation clamp (``act_min`` is the output zero point after a fused ReLU).

The ONNX graph stores activations as uint8 (PyTorch's x86 engine); CMSIS-NN uses int8, so every
activation zero point is given in int8 (``uint8 zero point - 128``), which leaves the real values
unchanged. Float parameters of layers that run in float after conversion (``deploy_float``, e.g.
AdaResNorm's rho, gamma and beta) are written as ``float`` arrays.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["c_header", "write_c_header", "quantize_multiplier"]

_PER_LINE = 16
_LAYER_OPS = {"Conv", "Gemm", "MatMul"}


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real ~= mult * 2**(shift - 31)`` with ``mult`` a Q31 integer in ``[2**30, 2**31)``.

    The CMSIS-NN / TFLite convention: a positive ``shift`` is a left shift.
    """
    if real <= 0.0 or not math.isfinite(real):
        return 0, 0
    fraction, exponent = math.frexp(real)  # real = fraction * 2**exponent, fraction in [0.5, 1)
    mult = int(round(fraction * (1 << 31)))
    if mult == 1 << 31:
        mult //= 2
        exponent += 1
    if exponent < -31:  # too small to represent: the product is zero
        return 0, 0
    return mult, exponent


def _identifier(text: str) -> str:
    ident = re.sub(r"[^0-9A-Za-z_]", "_", text).strip("_") or "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def _ints(values: np.ndarray) -> str:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(flat[i : i + _PER_LINE]) for i in range(0, len(flat), _PER_LINE)]
    return "\n    " + ",\n    ".join(lines) + "\n"


def _floats(values: np.ndarray) -> str:
    flat = [f"{float(v):.9e}f" for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    per = 6
    lines = [", ".join(flat[i : i + per]) for i in range(0, len(flat), per)]
    return "\n    " + ",\n    ".join(lines) + "\n"


def _array(ctype: str, name: str, values: np.ndarray, comment: str = "") -> str:
    values = np.asarray(values)
    body = _floats(values) if ctype == "float" else _ints(values)
    note = f"  /* {comment} */" if comment else ""
    return f"static const {ctype} {name}[{max(1, values.size)}] = {{{body}}};{note}\n"


class _Graph:
    """Lookups over a tidied QDQ graph."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        self.model = model
        self.inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)

    def dequantized(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(data, scale, zero_point)`` of a ``DequantizeLinear`` of an initializer."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in self.inits:
            return None
        scale = self.inits.get(node.input[1])
        zero = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None:
            return None
        data = self.inits[node.input[0]]
        return data, scale, np.zeros_like(scale, dtype=data.dtype) if zero is None else zero

    def activation_in(self, name: str) -> tuple[float, int] | None:
        """Scale and zero point of a dequantized activation."""
        node = self.producer.get(name)
        if node is None or node.op_type != "DequantizeLinear" or node.input[0] in self.inits:
            return None
        return self._scalar_qparams(node)

    def activation_out(self, name: str) -> tuple[float, int, bool] | None:
        """Scale, zero point and fused ReLU of the ``QuantizeLinear`` after a layer output."""
        relu = False
        for _ in range(3):
            users = self.consumers.get(name, [])
            if len(users) != 1:
                return None
            user = users[0]
            if user.op_type == "QuantizeLinear":
                scale, zero = self._scalar_qparams(user)
                return scale, zero, relu
            if user.op_type != "Relu":
                return None
            relu, name = True, user.output[0]
        return None

    def _scalar_qparams(self, node: Any) -> tuple[float, int]:
        scale = float(np.asarray(self.inits[node.input[1]]).reshape(-1)[0])
        zero_arr = self.inits.get(node.input[2]) if len(node.input) > 2 else None
        zero = 0 if zero_arr is None else int(np.asarray(zero_arr).reshape(-1)[0])
        if zero_arr is not None and np.asarray(zero_arr).dtype == np.uint8:
            zero -= 128  # uint8 activations as CMSIS-NN's int8
        return scale, zero


def _per_channel(values: np.ndarray, channels: int) -> np.ndarray:
    values = np.asarray(values).reshape(-1)
    return np.broadcast_to(values, (channels,)) if values.size == 1 else values


def _layer(graph: _Graph, node: Any, index: int, prefix: str) -> str | None:
    from onnx import helper

    weight = graph.dequantized(node.input[1])
    if weight is None:
        return None
    data, w_scale, _ = weight
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name = f"{prefix}_l{index}"
    lines = [f"\n/* layer {index}: {node.op_type} {node.name!s}"]
    if node.op_type == "Conv":
        out_ch, in_per_group, kh, kw = (list(data.shape) + [1, 1])[:4]
        groups = int(attrs.get("group", 1))
        depthwise = groups > 1 and in_per_group == 1 and out_ch % groups == 0
        if depthwise:
            ordered = data.reshape(out_ch, kh, kw).transpose(1, 2, 0)[None]  # [1][kh][kw][out]
            layout = "[1][kh][kw][out] (depthwise)"
        else:
            ordered = data.reshape(out_ch, in_per_group, kh, kw).transpose(0, 2, 3, 1)
            layout = "[out][kh][kw][in] (OHWI)"
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        strides = list(attrs.get("strides", [1, 1]))
        lines.append(
            f" * kernel {kh}x{kw}, stride {strides[0]}x{strides[-1]}, pads (top, left, bottom, "
            f"right) {pads[0]},{pads[1]},{pads[2]},{pads[3]}, groups {groups}"
        )
        dims = {"OUT_CH": out_ch, "IN_CH": in_per_group * groups, "KH": kh, "KW": kw}
        dims.update({"STRIDE_H": strides[0], "STRIDE_W": strides[-1], "GROUPS": groups})
        dims.update({"PAD_T": pads[0], "PAD_L": pads[1], "PAD_B": pads[2], "PAD_R": pads[3]})
    else:
        trans_b = bool(attrs.get("transB", 0)) if node.op_type == "Gemm" else False
        matrix = data if trans_b else data.T  # [out][in]
        out_ch = matrix.shape[0]
        ordered = matrix
        layout = "[out][in]"
        dims = {"OUT_CH": out_ch, "IN_CH": matrix.shape[1]}
    lines.append(f" * weights {layout}, int8, per-channel scales */")
    text = "\n".join(lines) + "\n"
    upper = name.upper()
    for key, value in dims.items():
        text += f"#define {upper}_{key} {int(value)}\n"
    text += _array("int8_t", f"{name}_weights", ordered, layout)
    w_scale = _per_channel(w_scale, out_ch).astype(np.float64)
    text += _array("float", f"{name}_weight_scale", w_scale, "per output channel")
    bias_idx = 2
    if len(node.input) > bias_idx and node.input[bias_idx]:
        bias = graph.dequantized(node.input[bias_idx])
        if bias is not None:
            text += _array("int32_t", f"{name}_bias", bias[0], "scale input_scale * weight_scale")
    act_in = graph.activation_in(node.input[0])
    act_out = graph.activation_out(node.output[0])
    if act_in is not None and act_out is not None:
        (s_in, zp_in), (s_out, zp_out, relu) = act_in, act_out
        pairs = [quantize_multiplier(s_in * float(s) / s_out) for s in w_scale]
        text += _array("int32_t", f"{name}_output_mult", np.array([p[0] for p in pairs]), "Q31")
        text += _array(
            "int32_t", f"{name}_output_shift", np.array([p[1] for p in pairs]), "> 0: left"
        )
        text += f"#define {upper}_INPUT_OFFSET ({-zp_in})\n"
        text += f"#define {upper}_OUTPUT_OFFSET ({zp_out})\n"
        text += f"#define {upper}_ACT_MIN ({max(zp_out, -128) if relu else -128})\n"
        text += f"#define {upper}_ACT_MAX (127)\n"
        text += f"#define {upper}_INPUT_SCALE {s_in:.9e}f\n"
        text += f"#define {upper}_OUTPUT_SCALE {s_out:.9e}f\n"
    else:
        text += f"/* {name}: activation quantization not found next to this layer (float I/O) */\n"
    return text


def c_header(model: Any, name: str, float_param_names: set[str] | None = None) -> str:
    """The C header text for an exported int8 ONNX model.

    Args:
        model: the tidied ``onnx.ModelProto`` (or a path to it).
        name: used for the include guard and as prefix of every symbol.
        float_param_names: names of float parameters to include (default: every non-scalar
            float initializer outside quantization metadata and weights).
    """
    if isinstance(model, (str, Path)):
        from nas_asc.export.onnx import load_onnx

        model = load_onnx(model)
    graph = _Graph(model)
    prefix = _identifier(name).lower()
    guard = f"{prefix.upper()}_H"
    out = [
        f"/* {name}: int8 weights of a nas-asc model, generated by nas_asc.export; do not edit.",
        " *",
        " * Per layer, in execution order: weights (OHWI, depthwise [1][kh][kw][out], FC "
        "[out][in]),",
        " * int32 bias, per-channel requantization (output_mult Q31, output_shift > 0 = left),",
        " * offsets and activation clamp in int8 (CMSIS-NN convention; activations are NHWC).",
        " * The graph between layers (pooling, residual adds, float layers) is in the ONNX file.",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
    ]
    quantize_in = next(
        (
            n
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] == model.graph.input[0].name
        ),
        None,
    )
    if quantize_in is not None:
        scale, zero = graph._scalar_qparams(quantize_in)
        out.append(f"#define {prefix.upper()}_INPUT_SCALE {scale:.9e}f")
        out.append(f"#define {prefix.upper()}_INPUT_ZERO_POINT ({zero})  /* int8 */")
    index = 0
    for node in model.graph.node:
        if node.op_type not in _LAYER_OPS:
            continue
        text = _layer(graph, node, index, prefix)
        if text is None:
            continue
        out.append(text)
        index += 1
    out.append(f"#define {prefix.upper()}_N_LAYERS {index}\n")
    floats = []
    for init_name, array in graph.inits.items():
        if not np.issubdtype(array.dtype, np.floating):
            continue
        wanted = (
            init_name in float_param_names
            if float_param_names is not None
            else array.size > 1 and not _is_metadata(graph, init_name)
        )
        if wanted:
            floats.append((init_name, array))
    if floats:
        out.append("/* float parameters of layers that run in float (deploy_float) */")
        for init_name, array in floats:
            ident = f"{prefix}_{_identifier(init_name).lower()}"
            out.append(_array("float", ident, array, f"{init_name}, shape {list(array.shape)}"))
    out.append(f"#endif  /* {guard} */\n")
    return "\n".join(out)


def _is_metadata(graph: _Graph, name: str) -> bool:
    for node in graph.consumers.get(name, []):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and name in node.input[1:]:
            return True
        if node.op_type == "DequantizeLinear":  # quantized data (weights, biases)
            return True
    return False


def write_c_header(
    model: Any, path: str | Path, name: str, float_param_names: set[str] | None = None
) -> Path:
    """Write :func:`c_header` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(c_header(model, name, float_param_names), encoding="utf-8")
    return path
