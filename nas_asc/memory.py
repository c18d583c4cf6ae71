"""Peak activation memory of a deployed network: the SRAM its inference needs at once.

A microcontroller runs the int8 network operator by operator. Each operator reads its input
tensors and writes its output; a tensor lives from the operator that writes it to the last
operator that reads it. The peak is the largest sum of the tensors alive at once over that
execution order, at one byte per int8 element. Counted as an inference engine lays the network
out (TFLite Micro, CMSIS-NN):

* the network's input counts, from the start to its last reader;
* operators that only re-index a tensor (view, reshape, flatten, squeeze, transpose, permute,
  chunk, split, indexing, dropout and identity at inference) write nothing: the result shares
  the tensor it re-indexes, which lives as long as either is read;
* element-wise operators (activations, BatchNorm, which folds into the convolution before it,
  additions and products) write in place into an input of the same size whose last reader they
  are; otherwise into a new tensor;
* everything else (convolutions, linear layers, pooling, concatenation, a copy made contiguous)
  writes a new tensor while its inputs are still alive.

The execution order is the one the model's ``forward`` gives, traced with ``torch.fx``;
parameters are not activations (``complexity.count`` counts them). A model that ``torch.fx``
cannot trace has no figure (None).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["peak_activation_bytes"]

# operators that re-index their first input: the result is a view of it
_ALIAS_METHODS = {
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
    "transpose",
    "permute",
    "expand",
    "chunk",
    "split",
    "unbind",
    "t",
    "narrow",
    "view_as",
    "reshape_as",
    "expand_as",
    "unflatten",
}
_ALIAS_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.chunk,
    torch.split,
    torch.unbind,
    torch.narrow,
    torch.unflatten,
    operator.getitem,
    nn.functional.dropout,
}
_ALIAS_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d)

# element-wise operators: in place where an input of the output's size dies
_ELEMENTWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "add",
    "add_",
    "mul",
    "mul_",
    "sub",
    "div",
    "clamp",
    "neg",
    "exp",
    "abs",
    "hardtanh",
    "softmax",
    "log_softmax",
    "addcmul",
    "rsqrt",
    "sqrt",
}
_ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.add,
    torch.mul,
    torch.sub,
    torch.div,
    torch.clamp,
    torch.neg,
    torch.exp,
    torch.abs,
    torch.softmax,
    torch.log_softmax,
    torch.addcmul,
    torch.rsqrt,
    torch.sqrt,
    operator.add,
    operator.iadd,
    operator.mul,
    operator.imul,
    operator.sub,
    operator.truediv,
    operator.neg,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.silu,
    nn.functional.gelu,
    nn.functional.hardswish,
    nn.functional.hardsigmoid,
    nn.functional.hardtanh,
    nn.functional.leaky_relu,
    nn.functional.sigmoid,
    nn.functional.softmax,
    nn.functional.log_softmax,
    nn.functional.batch_norm,
}
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softmax,
    nn.LogSoftmax,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
)


class _Tracer(torch.fx.Tracer):
    """``torch.fx``'s tracer, with subclasses of the layers above (a family's own BatchNorm)
    and layers deployed in float (``deploy_float``) kept whole, as int8 conversion keeps them."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            isinstance(m, (*_ALIAS_MODULES, *_ELEMENTWISE_MODULES))
            or getattr(m, "deploy_float", False)
            or super().is_leaf_module(m, module_qualified_name)
        )


def _kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """``alias``, ``elementwise`` or ``new`` for a node that computes something."""
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _ALIAS_MODULES):
            return "alias"
        if isinstance(module, _ELEMENTWISE_MODULES):
            return "elementwise"
        return "new"
    if node.op == "call_method":
        if node.target in _ALIAS_METHODS:
            return "alias"
        return "elementwise" if node.target in _ELEMENTWISE_METHODS else "new"
    if node.target in _ALIAS_FUNCTIONS:
        return "alias"
    return "elementwise" if node.target in _ELEMENTWISE_FUNCTIONS else "new"


def _numel(meta) -> int:
    """Elements of a node's output (a tensor, or a tuple of them: its parts)."""
    if meta is None:
        return 0
    shape = getattr(meta, "shape", None)  # TensorMetadata is a named tuple: look first
    if isinstance(shape, torch.Size):
        return math.prod(shape)
    if isinstance(meta, (tuple, list)):
        return sum(_numel(m) for m in meta)
    return 0


def _tensor_inputs(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [n for n in node.all_input_nodes if n.op != "get_attr"]


def peak_activation_bytes(
    model: nn.Module, input_shape: Sequence[int], element_bytes: int = 1
) -> int | None:
    """The peak of the activation bytes alive at once in one inference of ``model``.

    Args:
        model: the float model (traced as it runs in eval mode; its mode is restored).
        input_shape: the input, batch first (e.g. ``(1, 1, 128, 44)``).
        element_bytes: bytes per activation element (1: int8).

    Returns:
        The peak in bytes, or None if ``torch.fx`` cannot trace the model (or run the traced
        graph).

    Example:
        >>> from torch import nn
        >>> chain = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
        >>> peak_activation_bytes(chain, (1, 1, 8, 8))  # input 64 + conv output 256
        320
    """
    from torch.fx.passes.shape_prop import ShapeProp

    was_training = model.training
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.empty(0)).device
        try:
            graph_module = torch.fx.GraphModule(model, _Tracer().trace(model))
            with torch.no_grad():
                ShapeProp(graph_module).propagate(torch.zeros(tuple(input_shape), device=device))
        except Exception:  # data-dependent control flow, an untraceable call
            return None
    finally:
        model.train(was_training)

    modules = dict(graph_module.named_modules())
    nodes = list(graph_module.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    end = len(nodes)
    # the last step that reads each node's output (the returned outputs: until the end)
    last_read = {
        node: max((end if u.op == "output" else order[u] for u in node.users), default=order[node])
        for node in nodes
    }
    buffer_of: dict[torch.fx.Node, int] = {}  # node -> the buffer that holds its output
    size: list[int] = []  # bytes of each buffer
    last: list[int] = []  # the last step that reads each buffer (through any of its nodes)
    peak = 0
    for i, node in enumerate(nodes):
        if node.op in ("output", "get_attr"):
            continue
        nbytes = _numel(node.meta.get("tensor_meta")) * element_bytes
        kind = "new" if node.op == "placeholder" else _kind(node, modules)
        inputs = [buffer_of[n] for n in _tensor_inputs(node) if n in buffer_of]
        shared = None  # the input buffer this node's output lives in, if any
        if kind == "alias" and inputs:
            shared = inputs[0]
        elif kind == "elementwise":
            # in place into an input of the output's size that nothing reads after this step
            shared = next((b for b in inputs if last[b] <= i and size[b] == nbytes), None)
        if shared is not None:
            buffer_of[node] = shared
            last[shared] = max(last[shared], last_read[node])
        elif nbytes:  # a new tensor (a size or a shape holds nothing)
            buffer_of[node] = len(size)
            size.append(nbytes)
            last.append(max(i, last_read[node]))
        peak = max(peak, _alive(size, last, i))
    return peak


def _alive(size: list[int], last: list[int], step: int) -> int:
    """Bytes of the buffers written so far that are still read at ``step`` or later."""
    return sum(s for s, t in zip(size, last, strict=True) if t >= step)
