"""nas-asc's int8 models as full-integer TFLite flatbuffers, run in TensorFlow Lite Micro.

A converter that re-quantizes the float model (PT2E through ``litert-torch``, or the ONNX route)
ships a different int8 model from the one nas-asc measured: on cpmobile, Google's converter and
nas-asc's int8 model agreed on the top-1 class of only 33 of 64 clips. :func:`convert` writes
the model nas-asc measured instead: the converted int8 model (:mod:`torch.ao` FX, engine
``x86``) becomes a stand-alone network (:func:`nas_asc.deploy.netgen.standalone`) whose every
node is mapped to a TFLite builtin operator, with nas-asc's own int8 weights, per-channel weight
scales, int32 biases and activation scales and zero points. Nothing is calibrated again.

The graph is full-integer:

* the input is ``int8`` ``(1, freq, time, channels)`` (NHWC): the log-mel features, normalized
  as in training (and through the front-end layers, if any), quantized with the scale and zero
  point of the model's first quantize node
  (:attr:`TfliteModel.input_scale`, :attr:`TfliteModel.input_zero_point`):
  ``q = clamp(round(x / scale) + zero_point, -128, 127)``;
* PyTorch's ``quint8`` activations become ``int8`` ones (value - 128, zero point - 128: the
  same real numbers); weights are symmetric per-channel ``int8`` (zero point 0), biases
  ``int32`` at the input scale times each channel's weight scale;
* the output is the ``int8`` logits (their argmax is the class; :attr:`TfliteModel.output_scale`
  and ``output_zero_point`` give the float logits).

Float layers the int8 model runs on its input before quantizing it (bsconv's delta features)
are not part of the graph: they are the firmware's front end, computed in float on the features
like the log-mel itself (:attr:`TfliteModel.front`, named in :attr:`TfliteModel.front_layers`).
What cannot be mapped is refused in one line naming the layer and the operation
(:class:`NotConvertible`): a layer that runs in float between a dequantize and a quantize
(AdaResNorm, ResNorm, SubSpectralNorm, SiLU, ...) has no place in a full-integer graph.

:func:`run` and :func:`arena` run a flatbuffer in TensorFlow Lite Micro's own interpreter (the
``tflite-micro`` package, reference kernels) and read the arena its recording allocator reports.
Both need the optional extra ``nas-asc[tflite]``; :func:`require` names it when it is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from nas_asc.errors import NasAscError

__all__ = [
    "EXTRA",
    "Arena",
    "NotConvertible",
    "TfliteModel",
    "TflmModule",
    "arena",
    "convert",
    "quantize_input",
    "require",
    "run",
]

#: the optional extra that installs TensorFlow Lite Micro's interpreter and TFLite schema
EXTRA = "tflite"


class NotConvertible(NasAscError):
    """A layer of the int8 model has no full-integer TFLite counterpart (named in the message)."""


def require():
    """The ``tflite_micro`` package, or a one-line error naming the extra that installs it."""
    try:
        import tflite_micro
    except ImportError:
        raise NasAscError(
            f"TFLite export and TensorFlow Lite Micro need the optional extra: "
            f"pip install 'nas-asc[{EXTRA}]'"
        ) from None
    return tflite_micro


def _schema():
    require()
    from tflite_micro.tensorflow.lite.micro.compression import model_editor
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    return model_editor, schema


@dataclass(frozen=True)
class TfliteModel:
    """A full-integer TFLite flatbuffer of an int8 model.

    Attributes:
        data: the flatbuffer (what a firmware keeps in flash).
        input_shape: ``(1, freq, time, channels)``, int8.
        input_scale, input_zero_point: how a feature ``x`` becomes the int8 input.
        output_scale, output_zero_point: how the int8 logits become float ones.
        ops: the builtin operators the model needs (a firmware's op resolver), sorted.
        front: the float layers the int8 model runs on its input before quantizing it (None:
            none), which a firmware computes in its front end; :func:`quantize_input` applies
            them.
        front_layers: those layers by name.
    """

    data: bytes
    input_shape: tuple[int, ...]
    input_scale: float
    input_zero_point: int
    output_scale: float
    output_zero_point: int
    ops: tuple[str, ...]
    front: torch.nn.Module | None = field(default=None, compare=False, repr=False)
    front_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Arena:
    """The tensor arena TensorFlow Lite Micro's recording allocator reports, in bytes."""

    head: int
    tail: int

    @property
    def total(self) -> int:
        return self.head + self.tail


# ------------------------------------------------------------------------------------------
# int8 model -> TFLite graph
# ------------------------------------------------------------------------------------------


@dataclass
class _Act:
    """An int8 activation of the TFLite graph: its tensor, NCHW shape in PyTorch, quant params."""

    tensor: Any
    shape: tuple[int, ...]
    scale: float
    zero_point: int  # int8


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    return tuple(shape)


def _record(gm: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, Any]:
    """Every node's value on ``example`` (to read shapes and activation scales)."""
    values: dict[fx.Node, Any] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            values[n] = out
            return out

    with torch.no_grad():
        _Keep(gm).run(example)
    return values


def _name(target: Any) -> str:
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", None) or str(target)


def _same_padding(size: int, kernel: int, stride: int, dilation: int, pad: int) -> bool:
    """Whether TFLite's SAME padding computes what PyTorch's symmetric ``pad`` does."""
    eff = (kernel - 1) * dilation + 1
    out_torch = (size + 2 * pad - eff) // stride + 1
    out_same = -(-size // stride)
    total = max((out_same - 1) * stride + eff - size, 0)
    return out_torch == out_same and total // 2 == pad


class _Writer:
    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
        self.me, self.s = _schema()
        self.gm, self.values = gm, values
        self.model = self.me.Model()
        self.sg = self.model.add_subgraph()
        self.acts: dict[fx.Node, _Act] = {}
        self.ops: set[str] = set()

    # -- tensors and operators ----------------------------------------------------------------
    def act(self, shape, scale: float, zero_point: int, name: str) -> _Act:
        q = self.me.Quantization(scales=[float(scale)], zero_points=[int(zero_point)])
        t = self.sg.add_tensor(
            shape=_nhwc(shape), dtype=self.s.TensorType.INT8, quantization=q, name=name
        )
        return _Act(t, tuple(shape), float(scale), int(zero_point))

    def const(self, array: np.ndarray, dtype, name: str, quant=None):
        return self.sg.add_tensor(
            shape=array.shape, dtype=dtype, data=array, quantization=quant, name=name
        )

    def op(self, code: str, inputs, outputs, options=None, options_type: str | None = None):
        o = self.sg.add_operator(
            opcode=getattr(self.s.BuiltinOperator, code), inputs=inputs, outputs=outputs
        )
        if options is not None:
            o._fb.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            o._fb.builtinOptions = options
        self.ops.add(code)
        return o

    def qout(self, node: fx.Node) -> tuple[tuple[int, ...], float, int]:
        value = self.values[node]
        if not (isinstance(value, torch.Tensor) and value.is_quantized):
            raise NotConvertible(
                f"layer {node.name}: {_name(node.target)} gives a float tensor; the TFLite "
                "export is full-integer"
            )
        if value.qscheme() != torch.per_tensor_affine or value.dtype != torch.quint8:
            raise NotConvertible(f"layer {node.name}: activation is not per-tensor uint8")
        return tuple(value.shape), float(value.q_scale()), int(value.q_zero_point()) - 128

    def pad(self, x: _Act, ph: int, pw: int, value: int | None, name: str) -> _Act:
        """Pad H and W of an NHWC activation (PAD pads with the zero point, PADV2 with
        ``value``)."""
        n, c, h, w = x.shape
        out = self.act((n, c, h + 2 * ph, w + 2 * pw), x.scale, x.zero_point, f"{name}/pad")
        pads = np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], dtype=np.int32)
        paddings = self.const(pads, self.s.TensorType.INT32, f"{name}/paddings")
        if value is None:
            self.op("PAD", [x.tensor, paddings], [out.tensor])
        else:
            fill = self.const(
                np.array([value], dtype=np.int8),
                self.s.TensorType.INT8,
                f"{name}/fill",
                self.me.Quantization(scales=[x.scale], zero_points=[x.zero_point]),
            )
            self.op("PADV2", [x.tensor, paddings, fill], [out.tensor])
        return out

    # -- layers ----------------------------------------------------------------------------------
    def input(self, node: fx.Node) -> None:
        shape, scale, zp = self.qout(node)
        x = self.act(shape, scale, zp, "input")
        self.sg.inputs.append(x.tensor)
        self.acts[node] = x
        self.input_q = (scale, zp)

    def weight_scales(self, node: fx.Node, layer, channels: int) -> np.ndarray:
        """The int8 weights' scales, one per output channel (a per-tensor scale repeated);
        TFLite's int8 weights are symmetric, so their zero points must be 0."""
        if layer.weight_zero_point.abs().sum() != 0:
            raise NotConvertible(f"layer {node.name}: int8 weights with a zero point other than 0")
        scales = layer.weight_scale.detach().double().numpy().reshape(-1)
        return np.repeat(scales, channels) if scales.size == 1 else scales

    def weights_and_bias(self, node: fx.Node, x: _Act, w: np.ndarray, w_scale, axis: int, b):
        """The int8 weight tensor ``w`` (per-channel scales along ``axis``, zero points 0) and
        the int32 bias ``b`` (float; None: zeros) at the input scale times each channel's."""
        channels = len(w_scale)
        wq = self.me.Quantization(
            scales=[float(s) for s in w_scale], zero_points=[0] * channels, axis=axis
        )
        weights = self.const(w, self.s.TensorType.INT8, f"{node.name}/weights", wq)
        bias_scale = x.scale * w_scale
        b = np.zeros(channels) if b is None else b
        bias_q = np.clip(np.round(b / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
        bq = self.me.Quantization(
            scales=[float(s) for s in bias_scale], zero_points=[0] * channels, axis=0
        )
        return weights, self.const(bias_q, self.s.TensorType.INT32, f"{node.name}/bias", bq)

    def convolution(self, x: _Act, weights, bias, out: _Act, relu: bool, padding, **geometry):
        """CONV_2D, or DEPTHWISE_CONV_2D when ``geometry`` holds a ``depthMultiplier``."""
        act = self.s.ActivationFunctionType.RELU if relu else 0
        depthwise = "depthMultiplier" in geometry
        options = (self.s.DepthwiseConv2DOptionsT if depthwise else self.s.Conv2DOptionsT)(
            padding=padding, fusedActivationFunction=act, **geometry
        )
        code, kind = (
            ("DEPTHWISE_CONV_2D", "DepthwiseConv2DOptions")
            if depthwise
            else ("CONV_2D", "Conv2DOptions")
        )
        self.op(code, [x.tensor, weights, bias], [out.tensor], options, kind)

    def conv(self, node: fx.Node, layer) -> None:
        x = self.acts[node.args[0]]
        shape, scale, zp = self.qout(node)
        w = layer.weight.detach().numpy().astype(np.int8)  # (O, I/g, kh, kw)
        out_c, in_c, groups = layer.out_channels, layer.in_channels, layer.groups
        w_scale = self.weight_scales(node, layer, out_c)
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        (ph, pw), (dh, dw) = layer.padding, layer.dilation
        h, wd = x.shape[2], x.shape[3]
        if (ph, pw) == (0, 0):
            padding = self.s.Padding.VALID
        elif _same_padding(h, kh, sh, dh, ph) and _same_padding(wd, kw, sw, dw, pw):
            padding = self.s.Padding.SAME
        else:
            x, padding = self.pad(x, ph, pw, None, node.name), self.s.Padding.VALID
        depthwise = groups > 1 and groups == in_c and out_c % in_c == 0
        if groups > 1 and not depthwise:
            raise NotConvertible(
                f"layer {node.name}: a grouped convolution ({groups} groups of "
                f"{in_c // groups} channels) has no int8 kernel in TensorFlow Lite Micro"
            )
        geometry = dict(strideW=sw, strideH=sh, dilationWFactor=dw, dilationHFactor=dh)
        if depthwise:
            filt = np.ascontiguousarray(w.transpose(1, 2, 3, 0))  # (1, kh, kw, O)
            axis, geometry["depthMultiplier"] = 3, out_c // in_c
        else:
            filt = np.ascontiguousarray(w.transpose(0, 2, 3, 1))  # (O, kh, kw, I)
            axis = 0
        b = layer.bias.detach().double().numpy() if layer.bias is not None else None
        weights, bias = self.weights_and_bias(node, x, filt, w_scale, axis, b)
        out = self.act(shape, scale, zp, node.name)
        self.convolution(x, weights, bias, out, layer.relu, padding, **geometry)
        self.acts[node] = out

    def linear(self, node: fx.Node, layer) -> None:
        x = self.acts[node.args[0]]
        if len(x.shape) != 2:
            raise NotConvertible(f"layer {node.name}: a linear layer on a {len(x.shape)}-D input")
        shape, scale, zp = self.qout(node)
        w = layer.weight.detach().numpy().astype(np.int8)  # (O, I)
        w_scale = self.weight_scales(node, layer, layer.out_features)
        b = layer.bias.detach().double().numpy() if layer.bias is not None else None
        weights, bias = self.weights_and_bias(node, x, w, w_scale, 0, b)
        out = self.act(shape, scale, zp, node.name)
        act = self.s.ActivationFunctionType.RELU if layer.relu else 0
        opts = self.s.FullyConnectedOptionsT(fusedActivationFunction=act)
        self.op(
            "FULLY_CONNECTED",
            [x.tensor, weights, bias],
            [out.tensor],
            opts,
            "FullyConnectedOptions",
        )
        self.acts[node] = out

    def batch_norm(self, node: fx.Node, layer) -> None:
        """An unfolded BatchNorm on int8 activations: a per-channel affine map, written as a 1x1
        depthwise convolution whose per-channel weight is the map's slope (one int8 step of
        127 at that channel's scale, so the slope is kept to float32 precision)."""
        x = self.acts[node.args[0]]
        shape, scale, zp = self.qout(node)
        c = layer.num_features
        inv = 1.0 / np.sqrt(layer.running_var.detach().double().numpy() + layer.eps)
        slope = layer.weight.detach().double().numpy() * inv
        shift = (
            layer.bias.detach().double().numpy()
            - layer.running_mean.detach().double().numpy() * slope
        )
        w_scale = (
            np.where(slope == 0, 1.0, np.abs(slope) / 127.0).astype(np.float32).astype(np.float64)
        )
        w = np.where(slope == 0, 0, np.sign(slope) * 127).astype(np.int8).reshape(1, 1, 1, c)
        weights, bias = self.weights_and_bias(node, x, w, w_scale, 3, shift)
        out = self.act(shape, scale, zp, node.name)
        geometry = dict(strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1)
        self.convolution(
            x, weights, bias, out, layer.relu, self.s.Padding.VALID, depthMultiplier=1, **geometry
        )
        self.acts[node] = out

    def add(self, node: fx.Node, relu: bool) -> None:
        a, b = (self.acts[n] for n in node.args[:2])
        shape, scale, zp = self.qout(node)
        out = self.act(shape, scale, zp, node.name)
        act = self.s.ActivationFunctionType.RELU if relu else 0
        opts = self.s.AddOptionsT(fusedActivationFunction=act)
        self.op("ADD", [a.tensor, b.tensor], [out.tensor], opts, "AddOptions")
        self.acts[node] = out

    def pool(self, node: fx.Node, kind: str) -> None:
        """``avg_pool2d`` (count_include_pad, the default: padded zeros count) or
        ``max_pool2d``."""
        args = list(node.args) + [None] * 8
        x = self.acts[args[0]]
        kernel = _pair(args[1] if args[1] is not None else node.kwargs.get("kernel_size"))
        stride_arg = args[2] if args[2] is not None else node.kwargs.get("stride")
        stride = _pair(stride_arg) if stride_arg not in (None, ()) else kernel
        padding = _pair(args[3] if args[3] is not None else node.kwargs.get("padding", 0))
        if kind == "max":
            dilation = _pair(args[4] if args[4] is not None else node.kwargs.get("dilation", 1))
            ceil = args[5] if args[5] is not None else node.kwargs.get("ceil_mode", False)
            if dilation != (1, 1):
                raise NotConvertible(f"layer {node.name}: max pooling with dilation {dilation}")
        else:
            ceil = args[4] if args[4] is not None else node.kwargs.get("ceil_mode", False)
            include = args[5] if args[5] is not None else node.kwargs.get("count_include_pad", True)
            divisor = args[6] if args[6] is not None else node.kwargs.get("divisor_override")
            if divisor is not None or (not include and padding != (0, 0)):
                raise NotConvertible(f"layer {node.name}: average pooling without padding counted")
        shape, scale, zp = self.qout(node)
        if ceil:
            n, c, h, w = x.shape
            floor = tuple(
                (size + 2 * p - k) // s + 1
                for size, p, k, s in zip((h, w), padding, kernel, stride, strict=True)
            )
            if floor != shape[2:]:
                raise NotConvertible(f"layer {node.name}: pooling with ceil_mode")
        if (scale, zp) != (x.scale, x.zero_point):
            raise NotConvertible(f"layer {node.name}: pooling that requantizes its output")
        if padding != (0, 0):
            value = -128 if kind == "max" else None  # max: padding never wins; avg: real zeros
            x = self.pad(x, *padding, value, node.name)
        out = self.act(shape, scale, zp, node.name)
        opts = self.s.Pool2DOptionsT(
            padding=self.s.Padding.VALID,
            strideW=stride[1],
            strideH=stride[0],
            filterWidth=kernel[1],
            filterHeight=kernel[0],
        )
        code = "MAX_POOL_2D" if kind == "max" else "AVERAGE_POOL_2D"
        self.op(code, [x.tensor], [out.tensor], opts, "Pool2DOptions")
        self.acts[node] = out

    def mean(self, node: fx.Node, dims, keepdim: bool) -> None:
        x = self.acts[node.args[0]]
        dims = tuple(sorted(d % len(x.shape) for d in ((dims,) if isinstance(dims, int) else dims)))
        if len(x.shape) != 4 or dims != (2, 3):
            raise NotConvertible(
                f"layer {node.name}: a mean over dims {dims} (only over freq and time)"
            )
        shape, scale, zp = self.qout(node)
        out = self.act(shape, scale, zp, node.name)
        if not keepdim:  # (N, C) out of an NHWC (N, 1, 1, C): the same bytes
            out.tensor.shape = shape
        axes = self.const(
            np.array([1, 2], dtype=np.int32), self.s.TensorType.INT32, f"{node.name}/axes"
        )
        self.op(
            "MEAN",
            [x.tensor, axes],
            [out.tensor],
            self.s.ReducerOptionsT(keepDims=keepdim),
            "ReducerOptions",
        )
        self.acts[node] = out

    def flatten(self, node: fx.Node) -> None:
        x = self.acts[node.args[0]]
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        shape, scale, zp = self.qout(node)
        if len(x.shape) == 4 and start == 1 and x.shape[2:] == (1, 1):
            out = self.act(shape, scale, zp, node.name)
            new = self.const(
                np.array(shape, dtype=np.int32), self.s.TensorType.INT32, f"{node.name}/shape"
            )
            self.op(
                "RESHAPE",
                [x.tensor, new],
                [out.tensor],
                self.s.ReshapeOptionsT(newShape=list(shape)),
                "ReshapeOptions",
            )
            self.acts[node] = out
            return
        raise NotConvertible(f"layer {node.name}: flatten of a {x.shape} activation")

    # -- the walk ------------------------------------------------------------------------------
    def write(self) -> TfliteModel:
        from nas_asc.deploy import runtime

        gm = self.gm
        output = None
        for node in gm.graph.nodes:
            name = _name(node.target)
            if node.op in ("get_attr",):
                continue
            if node.op == "placeholder":
                continue
            if node.op == "output":
                output = node.args[0]
                break
            if node.op == "call_module":
                layer = gm.get_submodule(node.target)
                if isinstance(layer, runtime.QConv2d):
                    self.conv(node, layer)
                elif isinstance(layer, runtime.QLinear):
                    self.linear(node, layer)
                elif isinstance(layer, runtime.QBatchNorm2d):
                    self.batch_norm(node, layer)
                else:
                    raise NotConvertible(
                        f"layer {node.target}: {type(layer).__name__} has no TFLite counterpart "
                        "in nas-asc's converter"
                    )
                continue
            if node.op == "call_function" and node.target is torch.quantize_per_tensor:
                if self.acts:  # _refuse_float_layers names the float layer before this
                    raise NotConvertible(
                        f"layer {node.name}: a float result is quantized again; the TFLite "
                        "export is full-integer"
                    )
                self.input(node)  # what comes before it is the float front end
                continue
            if not self.acts:
                continue  # the front end (see _front_end): the firmware computes it
            if node.op == "call_method" and node.target == "dequantize":
                users = list(node.users)
                if len(users) == 1 and users[0].op == "output" and node.args[0] in self.acts:
                    continue  # the int8 logits are the output
                consumer = next((u for u in users if u.op != "output"), node)
                raise NotConvertible(
                    f"layer {consumer.name}: {_name(consumer.target)} runs in float; the TFLite "
                    "export is full-integer"
                )
            args_q = [a for a in node.args if isinstance(a, fx.Node) and a in self.acts]
            if not args_q:
                raise NotConvertible(
                    f"layer {node.name}: {name} runs in float; the TFLite export is full-integer"
                )
            if name in ("add", "add_relu") and "quantized" in str(node.target):
                self.add(node, relu=name == "add_relu")
            elif name in ("avg_pool2d", "max_pool2d"):
                self.pool(node, "avg" if name == "avg_pool2d" else "max")
            elif name == "adaptive_avg_pool2d" and _pair(node.args[1]) == (1, 1):
                self.mean(node, (2, 3), keepdim=True)
            elif name == "mean":
                dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
                self.mean(node, dims, bool(node.kwargs.get("keepdim", False)))
            elif name == "flatten":
                self.flatten(node)
            elif name in ("relu", "relu_") and node.op in ("call_function", "call_method"):
                raise NotConvertible(f"layer {node.name}: a ReLU not fused into its layer")
            else:
                raise NotConvertible(
                    f"layer {node.name}: {name} has no int8 TFLite counterpart in nas-asc's "
                    "converter"
                )
        if not isinstance(output, fx.Node) or output.op != "call_method":
            raise NotConvertible("the model's output is not one int8 tensor")
        logits = self.acts[output.args[0]]
        self.sg.outputs.append(logits.tensor)
        data = bytes(self.model.build())
        return TfliteModel(
            data=data,
            input_shape=tuple(self.sg.inputs[0].shape),
            input_scale=self.input_q[0],
            input_zero_point=self.input_q[1],
            output_scale=logits.scale,
            output_zero_point=logits.zero_point,
            ops=tuple(sorted(self.ops)),
        )


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    return f"{node.name} ({_name(node.target)})"


def _front_end(quantized: fx.GraphModule) -> tuple[fx.GraphModule | None, tuple[str, ...]]:
    """The float layers the int8 model runs on its input before quantizing it (e.g. bsconv's
    DeltaFeatures), as a module of their own and by name; (None, ()) when it quantizes the
    input itself. They belong to the front end: a firmware computes them on the features, in
    float like the log-mel, and quantizes their output as the TFLite model's input."""
    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    layers: list[str] = []
    for node in quantized.graph.nodes:
        if node.op == "call_function" and node.target is torch.quantize_per_tensor:
            source = node.args[0]
            if not isinstance(source, fx.Node) or source.op == "placeholder":
                return None, ()
            graph.output(env[source])
            return fx.GraphModule(quantized, graph).eval(), tuple(layers)
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, env.__getitem__)
        if node.op in ("call_module", "call_function", "call_method"):
            layers.append(_describe(quantized, node))
    raise NotConvertible("the int8 model never quantizes its input")


def _refuse_float_layers(quantized: fx.GraphModule) -> None:
    """One line naming the first layer of the int8 model that runs in float between a
    dequantize and a quantize, if any (its float front end aside)."""
    floats = [
        node
        for node in quantized.graph.nodes
        if node.op != "output"
        and any(
            isinstance(a, fx.Node) and a.op == "call_method" and a.target == "dequantize"
            for a in node.args
        )
    ]
    if floats:
        modules = [n for n in floats if n.op == "call_module"]  # a layer rather than a helper
        first = _describe(quantized, (modules or floats)[0])
        more = f" (and {len(floats) - 1} more)" if len(floats) > 1 else ""
        raise NotConvertible(
            f"layer {first} runs in float between a dequantize and a quantize{more}; a "
            "full-integer TFLite graph has no float kernels"
        )


def convert(quantized: fx.GraphModule, example: torch.Tensor) -> TfliteModel:
    """The converted int8 model ``quantized`` as a full-integer TFLite flatbuffer.

    Args:
        quantized: a model from :func:`nas_asc.train.quantize.quantize_ptq` or
            :func:`~nas_asc.train.quantize.convert_qat`.
        example: one model input ``(1, channels, freq, time)`` of the clip's shape.

    Raises:
        NotConvertible: a layer has no full-integer TFLite counterpart (named).
        NasAscError: the extra ``nas-asc[tflite]`` is not installed.
    """
    from nas_asc.deploy.netgen import standalone

    _schema()
    _refuse_float_layers(quantized)
    front, front_layers = _front_end(quantized)
    net = standalone(quantized, example[:1])
    values = _record(net.module, example[:1])
    model = _Writer(net.module, values).write()
    return dataclasses.replace(model, front=front, front_layers=front_layers)


# ------------------------------------------------------------------------------------------
# TensorFlow Lite Micro
# ------------------------------------------------------------------------------------------


def quantize_input(model: TfliteModel, x: torch.Tensor) -> np.ndarray:
    """Features ``(n, channels, freq, time)`` as the model's int8 NHWC inputs (through its float
    front end, if any), rounded exactly as PyTorch's int8 model rounds them."""
    x = x.float()
    if model.front is not None:
        with torch.no_grad():
            x = model.front(x)
    q = torch.quantize_per_tensor(x, model.input_scale, model.input_zero_point + 128, torch.quint8)
    ints = q.int_repr().to(torch.int16) - 128
    return ints.to(torch.int8).permute(0, 2, 3, 1).contiguous().numpy()


@contextlib.contextmanager
def _stderr_to(path: str):
    """Send file descriptor 2 (the C++ runtime's stderr) to ``path`` meanwhile."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _interpreter(model: TfliteModel, arena_size: int | None = None):
    from tflite_micro.python.tflite_micro import runtime

    size = arena_size or max(len(model.data) * 10, 4 << 20)
    return runtime.Interpreter.from_bytes(model.data, arena_size=size)


def run(model: TfliteModel, x: torch.Tensor, interpreter=None) -> np.ndarray:
    """The int8 logits TensorFlow Lite Micro computes for features ``x`` (one clip at a time,
    as on a microcontroller), ``(n, classes)``."""
    require()
    interp = interpreter if interpreter is not None else _interpreter(model)
    inputs = quantize_input(model, x)
    out = []
    for clip in inputs:
        interp.set_input(clip[None], 0)
        interp.invoke()
        out.append(np.asarray(interp.get_output(0)).reshape(-1).copy())
    return np.stack(out)


class TflmModule(torch.nn.Module):
    """TensorFlow Lite Micro behind the ``nn.Module`` call: features in, float logits out
    (the int8 logits dequantized), so :func:`nas_asc.train.loop.evaluate` measures the
    flatbuffer exactly as a PyTorch model."""

    def __init__(self, model: TfliteModel) -> None:
        super().__init__()
        self.model = model
        self.interpreter = _interpreter(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = run(self.model, x.detach().cpu(), self.interpreter).astype(np.float32)
        m = self.model
        return torch.from_numpy((q - m.output_zero_point) * np.float32(m.output_scale))


_ARENA = re.compile(r"\[RecordingMicroAllocator\] Arena allocation (head|tail) (\d+) bytes")


def arena(model: TfliteModel, interpreter=None) -> Arena:
    """The arena TensorFlow Lite Micro allocates for ``model`` (head: the activations its memory
    planner lays out; tail: what persists, tensor and operator data), after one invocation (of
    ``interpreter``, which has run the model, or of a new one)."""
    require()
    interp = interpreter
    if interp is None:
        interp = _interpreter(model)
        interp.set_input(np.zeros(model.input_shape, dtype=np.int8), 0)
        interp.invoke()
    with tempfile.NamedTemporaryFile(suffix=".txt") as log:
        with _stderr_to(log.name):
            interp.print_allocations()
        text = open(log.name, encoding="utf-8", errors="replace").read()
    found = dict((k, int(v)) for k, v in _ARENA.findall(text))
    if set(found) != {"head", "tail"}:
        raise NasAscError(f"TensorFlow Lite Micro did not report its arena: {text.strip()[:200]}")
    return Arena(head=found["head"], tail=found["tail"])
