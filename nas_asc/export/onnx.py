"""Int8 ONNX export of an FX-converted model, ONNX Runtime evaluation, and a graph recount.

**Export.** :func:`export_int8_onnx` traces the int8 model made by
:func:`nas_asc.train.quantize.quantize_ptq` and writes it with PyTorch's TorchScript exporter
(``dynamo=False``, opset 17) as a QDQ graph: ``QuantizeLinear -> DequantizeLinear -> Conv/Gemm ->
QuantizeLinear`` with int8 weights (per-channel scales, zero points 0), int32 biases and uint8
activations. Layers that stay float after conversion (``deploy_float``, e.g. AdaResNorm) are
exported as float operators between a ``DequantizeLinear`` and a ``QuantizeLinear``.
Operators the exporter lacks for int8 models get exact symbolics, registered process-wide on the
first export: ``channel_shuffle`` (Reshape-Transpose-Reshape), ``flatten``/``unflatten`` of
tensors whose rank the exporter does not know (quantized ones), ``quantized::batch_norm2d`` (a
BatchNorm that cannot be folded, e.g. SubSpectralNorm's) and ``adaptive_avg_pool2d`` to sizes
that do not divide the input (one Slice and ReduceMean per output cell). Parameters
are kept apart during export (the exporter would otherwise merge equal tensors of different
layers, e.g. untrained norms). The graph is then tidied so that it is plain and loads in ONNX
Runtime with every optimization on: constant nodes become initializers, ``Identity`` and no-op
``Cast`` nodes are removed, constant zero-point subgraphs are folded. Input ``logmel`` is the
standardized log-mel ``(batch, 1, n_mels, frames)`` with a dynamic batch axis; output ``logits``
is ``(batch, classes)``. ONNX Runtime and PyTorch's int8 kernels are not bit-identical: they
round an occasional value differently, so logits may differ by a quantization step and a clip
whose top two scores (nearly) tie may change class.

**Recount** (:func:`count_onnx`). From the graph alone, with the shapes of one clip (inferred
by ONNX, or measured by one ONNX Runtime run where they depend on computed sizes):

* *weight MACs*: ``out_elements * in_channels / groups * kh * kw`` per ``Conv`` /
  ``ConvInteger`` / ``QLinearConv``; ``out_elements * inner`` per ``MatMul`` / ``Gemm`` (and their
  integer forms), as :mod:`nas_asc.complexity` counts them;
* *norm MACs*: ``2 * C`` per ``BatchNormalization`` that int8 conversion could not fold into a
  convolution (e.g. SubSpectralNorm's), the rule's BatchNorm charge; its scale and shift are
  counted apart from the weights, like a folded BatchNorm's;
* *bias adds*: one per output element of every biased ``Conv``/``Gemm``. In the deployed graph
  every BatchNorm is folded into a convolution bias, so this is what the graph executes;
* parameter tensors, by their role in the graph: quantized weights (the data input of a
  ``DequantizeLinear`` that feeds a weight input, int8: one byte each), biases (int32: four
  bytes each as stored), float parameters of float layers (float32 initializers named as a
  parameter of the model: four bytes each), quantization metadata (scales and zero points of
  every ``QuantizeLinear``/``DequantizeLinear``) and other constants (shape vectors, epsilons,
  and tensors the exporter precomputed from parameters, such as AdaResNorm's ``1 - rho``).

**Relation to the DCASE rule** (:func:`dcase_recount`). :func:`nas_asc.complexity.count`
measures the float model: BatchNorm is charged ``2 * C`` MACs and ``2 * C`` parameters (it folds
into the preceding convolution), a convolution bias one MAC per output element, and every
parameter of a converted layer is stored at one byte. Folding erases the BatchNorms from the
graph, so the rule's figure cannot be read from the graph alone. The recount therefore checks the
part both sides have, exactly: the graph's weight MACs and weight bytes (int8 weights at one byte,
float parameters at four) must equal ``count`` of the float model with every BatchNorm removed
and every convolution/linear bias dropped. The DCASE-rule figures of the exported model are then
the graph's weight part plus the rule's bias and BatchNorm terms of the float model; they equal
the trial's figures when the graph is the trial's model, and the budget is checked on them.
Scales and zero points are quantization metadata, not parameters, and are not counted by the
rule; the int32 biases are not counted as such either: the rule counts the parameters they come
from (the BatchNorm's 2C and any convolution bias, one byte each). Beside the rule's figures the
recount records the parameter bytes as stored in the graph (int8 weights, int32 biases at four
bytes, float parameters) and the bytes of all initializers in the file (metadata included).

ONNX and ONNX Runtime are optional dependencies (``pip install 'nas-asc[onnx]'``) imported only
when a function here needs them.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nas_asc.errors import NasAscError

__all__ = [
    "OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "GraphComplexity",
    "OnnxModule",
    "count_onnx",
    "dcase_recount",
    "export_int8_onnx",
    "load_onnx",
    "onnx_session",
    "require_onnx",
]

OPSET = 17
INPUT_NAME = "logmel"
OUTPUT_NAME = "logits"

_CONV_OPS = {"Conv": (1, 2), "ConvInteger": (1, None), "QLinearConv": (3, 8)}  # weight, bias idx
_MATMUL_OPS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}
_FOLDABLE = {"Cast", "ConstantOfShape"}


def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime``, or say how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise NasAscError(
            f"exporting to ONNX needs the onnx and onnxruntime packages ({exc.name} is missing); "
            "install them with: pip install 'nas-asc[onnx]'"
        ) from None
    return onnx, onnxruntime


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

_SYMBOLICS_REGISTERED = False


def _register_symbolics() -> None:
    """ONNX symbolics for operators the TorchScript exporter lacks (``channel_shuffle``)."""
    global _SYMBOLICS_REGISTERED
    if _SYMBOLICS_REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    @sh.quantized_args(True)  # a quantized input is dequantized, shuffled, re-quantized as is
    @sh.parse_args("v", "i")
    def channel_shuffle(g, x, groups):
        # (N, C, H, W) -> (N, g, C/g, H*W) -> swap the two channel axes -> (N, C, H, W). Shapes
        # are read from the graph, as the exporter does not know them for quantized tensors.
        shape = g.op("Shape", x)

        def dims(start: int, end: int):
            return g.op(
                "Slice",
                shape,
                g.op("Constant", value_t=torch.tensor([start])),
                g.op("Constant", value_t=torch.tensor([end])),
            )

        grouped = g.op(
            "Concat",
            dims(0, 1),
            g.op("Constant", value_t=torch.tensor([groups, -1])),
            g.op("Mul", dims(2, 3), dims(3, 4)),
            axis_i=0,
        )
        swapped = g.op("Transpose", g.op("Reshape", x, grouped), perm_i=[0, 2, 1, 3])
        return g.op("Reshape", swapped, shape)

    # The exporter does not know the rank of quantized tensors, so its flatten/unflatten give up
    # on them ("Input rank must be known"); these read the shape from the graph instead and
    # defer to the exporter's own versions where the rank is known.
    builtin = _builtin_symbolics()
    big = torch.iinfo(torch.int64).max

    def shape_slice(g, shape, start: int, end: int):
        return g.op(
            "Slice",
            shape,
            g.op("Constant", value_t=torch.tensor([start])),
            g.op("Constant", value_t=torch.tensor([end])),
        )

    @sh.quantized_args(True)
    @sh.parse_args("v", "i", "i")
    def flatten(g, x, start_dim, end_dim):
        if sh._get_tensor_rank(x) is not None and "flatten" in builtin:
            return builtin["flatten"](g, x, start_dim, end_dim)
        shape = g.op("Shape", x)
        parts = [shape_slice(g, shape, 0, start_dim)] if start_dim != 0 else []
        middle = shape_slice(g, shape, start_dim, big if end_dim == -1 else end_dim + 1)
        parts.append(g.op("ReduceProd", middle, axes_i=[0], keepdims_i=1))
        if end_dim != -1:
            parts.append(shape_slice(g, shape, end_dim + 1, big))
        return g.op("Reshape", x, g.op("Concat", *parts, axis_i=0))

    @sh.quantized_args(True)
    @sh.parse_args("v", "i", "is")
    def unflatten(g, x, dim, sizes):
        shape = g.op("Shape", x)
        parts = [shape_slice(g, shape, 0, dim)] if dim != 0 else []
        parts.append(g.op("Constant", value_t=torch.tensor(list(sizes), dtype=torch.int64)))
        if dim != -1:
            parts.append(shape_slice(g, shape, dim + 1, big))
        return g.op("Reshape", x, g.op("Concat", *parts, axis_i=0))

    # A BatchNorm that cannot be folded into a convolution (e.g. SubSpectralNorm's) is converted
    # to quantized::batch_norm2d, which the exporter lacks: dequantize, normalize, requantize.
    def batch_norm(relu: bool):
        @sh.parse_args("v", "v", "v", "v", "v", "f", "v", "v")
        def symbolic(g, qx, weight, bias, mean, var, eps, scale, zero_point):
            x, _, _, _ = sh.dequantize_helper(g, qx)
            y = g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=eps)
            if relu:
                y = g.op("Relu", y)
            return sh.quantize_helper(g, y, scale, zero_point)

        return symbolic

    # ONNX has no adaptive pooling; the exporter handles output sizes that divide the input.
    # Otherwise each output cell averages rows floor(i * H / oh) to ceil((i + 1) * H / oh) (and
    # likewise columns), as PyTorch does, with bounds computed from the graph's shape.
    @sh.quantized_args(True)
    @sh.parse_args("v", "is")
    def adaptive_avg_pool2d(g, x, output_size):
        if list(output_size) == [1, 1]:
            return g.op("GlobalAveragePool", x)
        shape = g.op("Shape", x)

        def bounds(axis: int, n_out: int, i: int):
            size = shape_slice(g, shape, axis, axis + 1)
            start = g.op(
                "Div",
                g.op("Mul", size, g.op("Constant", value_t=torch.tensor([i]))),
                g.op("Constant", value_t=torch.tensor([n_out])),
            )
            end = g.op(
                "Div",
                g.op(
                    "Add",
                    g.op("Mul", size, g.op("Constant", value_t=torch.tensor([i + 1]))),
                    g.op("Constant", value_t=torch.tensor([n_out - 1])),
                ),
                g.op("Constant", value_t=torch.tensor([n_out])),
            )
            return start, end

        axes = g.op("Constant", value_t=torch.tensor([2, 3]))
        rows = []
        for i in range(output_size[0]):
            h0, h1 = bounds(2, output_size[0], i)
            cells = []
            for j in range(output_size[1]):
                w0, w1 = bounds(3, output_size[1], j)
                starts = g.op("Concat", h0, w0, axis_i=0)
                ends = g.op("Concat", h1, w1, axis_i=0)
                cell = g.op("Slice", x, starts, ends, axes)
                cells.append(g.op("ReduceMean", cell, axes_i=[2, 3], keepdims_i=1))
            rows.append(g.op("Concat", *cells, axis_i=3))
        return g.op("Concat", *rows, axis_i=2)

    torch.onnx.register_custom_op_symbolic("aten::channel_shuffle", channel_shuffle, 13)
    torch.onnx.register_custom_op_symbolic("aten::adaptive_avg_pool2d", adaptive_avg_pool2d, 13)
    torch.onnx.register_custom_op_symbolic("aten::flatten", flatten, 13)
    torch.onnx.register_custom_op_symbolic("aten::unflatten", unflatten, 13)
    torch.onnx.register_custom_op_symbolic("quantized::batch_norm2d", batch_norm(False), 13)
    torch.onnx.register_custom_op_symbolic("quantized::batch_norm2d_relu", batch_norm(True), 13)
    _SYMBOLICS_REGISTERED = True


def _builtin_symbolics() -> dict[str, Any]:
    """The TorchScript exporter's own symbolics that the overrides above defer to."""
    try:
        from torch.onnx._internal.torchscript_exporter import symbolic_opset9
    except ImportError:  # a torch whose private layout differs: the generic versions serve
        return {}
    return {"flatten": symbolic_opset9.flatten}


def export_int8_onnx(
    int8_model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    dynamic_batch: bool = True,
) -> Any:
    """Write ``int8_model`` (from :func:`~nas_asc.train.quantize.quantize_ptq`) as a QDQ ONNX file.

    Args:
        int8_model: the FX-converted int8 model.
        example: one model input ``(1, channels, n_mels, frames)``; fixes every axis but batch.
        path: the ``.onnx`` file to write.
        metadata: strings stored as the model's ``metadata_props`` (front end, labels, ...).
        dynamic_batch: make the batch axis dynamic (else the example's batch is fixed).

    Returns:
        The written ``onnx.ModelProto`` (tidied, checked).

    Raises:
        NasAscError: the model uses an operator the exporter cannot convert.
    """
    onnx, _ = require_onnx()
    _register_symbolics()
    int8_model = int8_model.eval()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    buffer = Path(path).with_suffix(".raw.onnx")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter and tracer announce their deprecation on every call
            warnings.simplefilter("ignore")
            # tracing here without the exporter's own trace check halves the export time
            traced = torch.jit.trace(int8_model, (example,), check_trace=False)
            torch.onnx.export(
                traced,
                (example,),
                str(buffer),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                # parameters stay graph inputs here, which keeps the exporter from merging
                # equal parameters of different layers (e.g. untrained norms); _tidy turns
                # them back into plain initializers
                keep_initializers_as_inputs=True,
            )
        model = onnx.load(str(buffer))
    except Exception as exc:  # the exporter raises many types; the user needs the operator
        raise NasAscError(
            f"cannot export the int8 model to ONNX: {_first_line(exc)}; the model uses an "
            "operator or pattern the ONNX exporter does not support"
        ) from None
    finally:
        buffer.unlink(missing_ok=True)
    _tidy(model)
    model.doc_string = "nas-asc int8 (QDQ) acoustic scene classifier"
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError and shape inference errors
        raise NasAscError(
            f"the exported ONNX graph is invalid: {_first_line(exc)}; please report this with "
            "the model's configuration"
        ) from None
    onnx.save(model, str(path))
    return model


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _tidy(model: Any) -> None:
    """Constants to initializers, no Identity / no-op Cast, folded zero-point subgraphs (in place).

    ONNX Runtime's basic optimizations (1.31) reject the exporter's raw graph (an ``Identity``
    of a shared initializer is removed while a later node still reads it); the tidied graph
    computes the same function and loads at every optimization level.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(real_inputs)
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        if node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            tensor = TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            inits[tensor.name] = tensor
            continue
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
            continue
        if node.op_type in _FOLDABLE and all(n in inits for n in node.input if n):
            value = _fold(node, [numpy_helper.to_array(inits[n]) for n in node.input if n])
            inits[node.output[0]] = numpy_helper.from_array(value, node.output[0])
            continue
        kept.append(node)

    types = {t.name: t.data_type for t in inits.values()}
    types.update({i.name: i.type.tensor_type.elem_type for i in graph.input})
    final = []
    for node in kept:  # topological order: producers' types are known before consumers
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast"):
            if node.op_type == "Cast":
                to = helper.get_attribute_value(node.attribute[0])
                if types.get(node.input[0]) == to and node.output[0] not in outputs:
                    rename[node.output[0]] = node.input[0]
                    continue
                types[node.output[0]] = to
            elif node.op_type == "QuantizeLinear" and len(node.input) > 2:
                types[node.output[0]] = types.get(node.input[2], TensorProto.UINT8)
        final.append(node)
    used = {name for node in final for name in node.input} | outputs
    del graph.node[:]
    graph.node.extend(final)
    del graph.initializer[:]
    graph.initializer.extend(t for name, t in inits.items() if name in used)


def _fold(node: Any, args: list[np.ndarray]) -> np.ndarray:
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Cast":
        return np.asarray(args[0]).astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    fill = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in args[0]), fill.reshape(-1)[0], dtype=fill.dtype)


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX file (``onnx.ModelProto``)."""
    onnx, _ = require_onnx()
    return onnx.load(str(path))


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path`` with every graph optimization on."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` call, so that training-side helpers
    (:func:`nas_asc.train.loop.evaluate`) measure the exported model exactly as a PyTorch one."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().cpu().numpy().astype(np.float32, copy=False)}
        return torch.from_numpy(self.session.run(None, feed)[0])


# --------------------------------------------------------------------------------------------
# Recount
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphComplexity:
    """Complexity read from an ONNX graph for one input (see the module docstring)."""

    weight_macs: int  # multiply-accumulates of weights and activations (Conv, MatMul, Gemm)
    bias_adds: int  # one per output element of every biased Conv/Gemm
    norm_macs: int  # 2 * C per BatchNormalization left unfolded (the DCASE rule's charge)
    weight_params: int  # elements of weight tensors (quantized or float)
    float_params: int  # elements of float parameters outside weights (float layers)
    bias_params: int  # elements of bias tensors
    norm_params: int  # scales and shifts of unfolded BatchNormalizations (2 * C each)
    weight_bytes: int  # weights at their stored dtype plus float parameters at 4 bytes
    bias_bytes: int  # biases at their stored dtype (int32: 4)
    norm_bytes: int  # unfolded BatchNormalizations' scale, shift, mean and variance as stored
    quant_metadata_bytes: int  # scales and zero points of QuantizeLinear/DequantizeLinear
    constant_bytes: int  # other initializers: shapes, epsilons, ...
    initializer_bytes: int  # every initializer in the file
    n_quantized_weights: int  # weight tensors stored as integers
    n_float_weights: int  # weight tensors stored as floats (unquantized Conv/Gemm)
    input_shape: tuple[int, ...]  # the input the graph was measured on

    @property
    def graph_macs(self) -> int:
        """Multiply-accumulates, bias adds and normalizations as the deployed graph runs them."""
        return self.weight_macs + self.bias_adds + self.norm_macs

    @property
    def stored_param_bytes(self) -> int:
        """Parameter bytes as stored in the graph (int32 biases at 4 bytes), no metadata."""
        return self.weight_bytes + self.bias_bytes + self.norm_bytes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["graph_macs"] = self.graph_macs
        out["stored_param_bytes"] = self.stored_param_bytes
        return out


_COUNTED_OPS = {*_CONV_OPS, *_MATMUL_OPS, "BatchNormalization"}


def _static_shapes(model: Any, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Shape of every value of ``model`` for a fixed input shape (batch 1).

    ONNX shape inference first; the values that the counted operators read or write and whose
    shape it cannot derive (e.g. a Slice whose end is computed from a Shape) are then measured
    by running the graph once in ONNX Runtime on a zero input.
    """
    import onnx

    fixed = copy.deepcopy(model)
    dims = fixed.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != len(input_shape):
        raise NasAscError(
            f"the ONNX input has {len(dims)} axes but the recount was given shape "
            f"{tuple(input_shape)}; pass the model's (1, channels, n_mels, frames)"
        )
    for dim, size in zip(dims, input_shape, strict=True):
        dim.Clear()
        dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises its own error types; the user needs one line
        raise NasAscError(
            f"cannot infer the shapes of the ONNX graph ({_first_line(exc)}); the MAC recount "
            "needs them"
        ) from None
    shapes: dict[str, list[int]] = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor_type = info.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[info.name] = [
                d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim
            ]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    wanted = {
        name
        for node in inferred.graph.node
        if node.op_type in _COUNTED_OPS
        for name in (*node.input, *node.output)
        if name and any(d < 0 for d in shapes.get(name, [-1]))
    }
    if wanted:
        types = {
            info.name: info.type.tensor_type.elem_type
            for info in (*inferred.graph.input, *inferred.graph.value_info)
        }
        shapes.update(_measured_shapes(fixed, input_shape, sorted(wanted), types))
    return shapes


def _measured_shapes(
    model: Any, input_shape: Sequence[int], names: list[str], types: dict[str, int]
) -> dict[str, list[int]]:
    """Shapes of ``names`` measured by running ``model`` once in ONNX Runtime on zeros."""
    from onnx import helper

    _, ort = require_onnx()
    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    names = [n for n in names if types.get(n)]
    probe.graph.output.extend(
        helper.make_tensor_value_info(n, types[n], None) for n in names if n not in existing
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        feed = {probe.graph.input[0].name: np.zeros(tuple(input_shape), np.float32)}
        outputs = [o.name for o in session.get_outputs()]
        values = session.run(outputs, feed)
    except Exception as exc:  # ONNX Runtime raises its own error types
        raise NasAscError(
            f"cannot run the ONNX graph to measure its shapes: {_first_line(exc)}"
        ) from None
    return {n: list(np.shape(v)) for n, v in zip(outputs, values, strict=True) if n in names}


def _shape(shapes: dict[str, list[int]], name: str, node: Any) -> list[int]:
    shape = shapes.get(name)
    if shape is None or any(d < 0 for d in shape):
        raise NasAscError(
            f"cannot infer a static shape for {name!r} (input of {node.op_type} node "
            f"{node.name!r}); the MAC recount needs every shape known for a fixed input"
        )
    return shape


def count_onnx(
    model: Any, input_shape: Sequence[int], float_param_names: set[str] | None = None
) -> GraphComplexity:
    """Recount MACs and parameter bytes of an ONNX graph (see the module docstring).

    Args:
        model: an ``onnx.ModelProto`` or the path of an ``.onnx`` file.
        input_shape: one clip, e.g. ``(1, 1, 128, 44)``.
        float_param_names: names of the model's parameters (``named_parameters``); a float
            initializer of that name, outside the weights and biases, is a parameter of a
            float layer. Tensors the exporter derived from parameters by constant folding
            (e.g. AdaResNorm's ``1 - rho``) are then precomputed constants, not parameters.
            Without names, every non-scalar float initializer outside the weights, biases and
            quantization metadata counts as a parameter.
    """
    from onnx import numpy_helper

    if isinstance(model, (str, Path)):
        model = load_onnx(model)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    shapes = _static_shapes(model, input_shape)

    roles: dict[str, str] = {}

    def stored(name: str) -> str | None:
        """The initializer a (possibly dequantized) tensor comes from."""
        if name in inits:
            return name
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
            return node.input[0]
        return None

    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            for name in node.input[1:]:
                if name in inits:
                    roles[name] = "metadata"
        if node.op_type in ("QLinearConv", "QLinearMatMul"):
            for i in (1, 2, 4, 5, 6, 7):
                if i < len(node.input) and node.input[i] in inits:
                    roles[node.input[i]] = "metadata"

    weight_macs = bias_adds = norm_macs = 0
    for node in graph.node:
        op = node.op_type
        if op in _CONV_OPS:
            w_idx, b_idx = _CONV_OPS[op]
            out = _shape(shapes, node.output[0], node)
            weight = _shape(shapes, node.input[w_idx], node)
            weight_macs += math.prod(out) * math.prod(weight[1:])
            source = stored(node.input[w_idx])
            if source:
                roles[source] = "weight"
            if b_idx is not None and b_idx < len(node.input) and node.input[b_idx]:
                bias_adds += math.prod(out)
                source = stored(node.input[b_idx])
                if source:
                    roles[source] = "bias"
        elif op in _MATMUL_OPS:
            a_idx, b_idx = (0, 3) if op == "QLinearMatMul" else (0, 1)
            out = _shape(shapes, node.output[0], node)
            a = _shape(shapes, node.input[a_idx], node)
            trans_a = any(x.name == "transA" and x.i for x in node.attribute)
            inner = a[0] if (op == "Gemm" and trans_a) else a[-1]
            weight_macs += math.prod(out) * inner
            for idx in (a_idx, b_idx):
                source = stored(node.input[idx])
                if source:
                    roles[source] = "weight"
            if op == "Gemm" and len(node.input) > 2 and node.input[2]:
                bias_adds += math.prod(out)
                source = stored(node.input[2])
                if source:
                    roles[source] = "bias"
        elif op == "BatchNormalization":
            channels = _shape(shapes, node.input[1], node)[0]
            norm_macs += 2 * channels * _shape(shapes, node.input[0], node)[0]
            for i, name in enumerate(node.input[1:5], start=1):
                source = stored(name)
                if source:
                    roles[source] = "norm_param" if i <= 2 else "norm_stat"

    counts = {
        "weight_params": 0,
        "float_params": 0,
        "bias_params": 0,
        "norm_params": 0,
        "weight_bytes": 0,
        "bias_bytes": 0,
        "norm_bytes": 0,
        "quant_metadata_bytes": 0,
        "constant_bytes": 0,
        "initializer_bytes": 0,
        "n_quantized_weights": 0,
        "n_float_weights": 0,
    }
    for name, init in inits.items():
        array = numpy_helper.to_array(init)
        role = roles.get(name)
        if role is None:
            # a float tensor of a float layer (AdaResNorm's rho, gamma, beta) is a parameter;
            # float scalars (epsilons, constants 1.0) and integer shape vectors are constants
            is_float = np.issubdtype(array.dtype, np.floating)
            if float_param_names is not None:
                is_param = is_float and name in float_param_names
            else:
                is_param = is_float and array.size > 1
            role = "float_param" if is_param else "constant"
        counts["initializer_bytes"] += array.nbytes
        if role == "weight":
            counts["weight_params"] += array.size
            counts["weight_bytes"] += array.nbytes
            integer = np.issubdtype(array.dtype, np.integer)
            counts["n_quantized_weights" if integer else "n_float_weights"] += 1
        elif role == "float_param":
            counts["float_params"] += array.size
            counts["weight_bytes"] += array.size * 4
        elif role == "bias":
            counts["bias_params"] += array.size
            counts["bias_bytes"] += array.nbytes
        elif role in ("norm_param", "norm_stat"):
            counts["norm_params"] += array.size if role == "norm_param" else 0
            counts["norm_bytes"] += array.nbytes
        elif role == "metadata":
            counts["quant_metadata_bytes"] += array.nbytes
        else:
            counts["constant_bytes"] += array.nbytes
    return GraphComplexity(
        weight_macs=int(weight_macs),
        bias_adds=int(bias_adds),
        norm_macs=int(norm_macs),
        input_shape=tuple(int(d) for d in input_shape),
        **{k: int(v) for k, v in counts.items()},
    )


def _strip_bias_and_norms(model: nn.Module) -> nn.Module:
    """A copy without BatchNorms (Identity) and without Conv/Linear biases: the weights alone.

    Layers inside ``deploy_float`` modules are left as they are: they run in float and keep
    their own parameters in the graph.
    """
    stripped = copy.deepcopy(model).eval()
    float_prefixes = [n for n, m in stripped.named_modules() if getattr(m, "deploy_float", False)]

    def in_float(name: str) -> bool:
        return any(name == p or name.startswith(f"{p}.") for p in float_prefixes if p)

    for name, module in list(stripped.named_modules()):
        if not name or in_float(name):
            continue
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent_name, _, child = name.rpartition(".")
            setattr(stripped.get_submodule(parent_name), child, nn.Identity())
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and module.bias is not None:
            module.bias = None
    return stripped


def dcase_recount(
    float_model: nn.Module, graph: GraphComplexity, input_shape: Sequence[int]
) -> dict[str, Any]:
    """Relate a graph recount to :func:`nas_asc.complexity.count` of the float model.

    Returns a dictionary with the DCASE-rule figures of the exported model (``macs``,
    ``param_bytes``, ``params``), the float model's figures (``reference_*``), the weight part
    both sides count (``expected_weight_macs``, ``expected_weight_bytes``) and whether the graph
    matches it exactly (``weights_match``). See the module docstring for the rule.
    """
    from nas_asc.complexity import count

    reference = count(float_model, input_shape, "int8")
    weights = count(_strip_bias_and_norms(float_model), input_shape, "int8")
    graph_params = graph.weight_params + graph.float_params
    match = (
        graph.weight_macs == weights.macs
        and graph.weight_bytes == weights.param_bytes
        and graph_params == weights.params
    )
    return {
        "macs": graph.weight_macs + (reference.macs - weights.macs),
        "param_bytes": graph.weight_bytes + (reference.param_bytes - weights.param_bytes),
        "params": graph_params + (reference.params - weights.params),
        "reference_macs": reference.macs,
        "reference_param_bytes": reference.param_bytes,
        "reference_params": reference.params,
        "expected_weight_macs": weights.macs,
        "expected_weight_bytes": weights.param_bytes,
        "expected_weight_params": weights.params,
        "weights_match": bool(match),
    }
