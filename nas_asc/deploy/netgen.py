"""An int8 model of nas-asc as a stand-alone network: generated Python source plus a state dict.

A DCASE 2025 inference package must run without nas-asc, and the organizers' checker counts
``model.parameters()`` at their dtype and runs torchinfo on the device's sub-model. PyTorch's
converted int8 model (``torch.ao`` FX) fits neither: its int8 weights live in packed objects,
not parameters (the checker would count none of them), and its graph calls nas-asc's own
modules where layers stay in float. :func:`standalone` turns it into a ``torch.fx`` graph over

* the int8 layers of :mod:`nas_asc.deploy.runtime` (int8 weights as ``int8``
  parameters; they call the same ``torch.ops.quantized`` kernels with the same weights and
  scales, so the output is bit for bit the converted model's);
* PyTorch functions only: every other module (pooling, shuffles, the float layers such as
  AdaResNorm or SubSpectralNorm) is traced into its functions, its tensors becoming ``float32``
  parameters of the network (stored values count); nas-asc helpers that branch on the input size
  (``torch.fx.wrap`` leaves) are specialized to the clip's fixed shape with ``make_fx``, so they
  become ATen operators;

and :func:`network_source` prints it as a Python class. :func:`submission_complexity` counts a
network the way the 2025 checker does, which is the ``dcase2025`` budget rule.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from nas_asc.errors import NasAscError

__all__ = ["Standalone", "standalone", "network_source", "checker_count", "submission_complexity"]

_ALLOWED_MODULES = ("torch", "_operator", "operator", "builtins", "math")


@dataclass
class Standalone:
    """A converted int8 model as a stand-alone network.

    Attributes:
        module: the network (a ``torch.fx.GraphModule`` over runtime layers and PyTorch ops).
        layers: ``{attribute: (runtime class name, constructor kwargs)}``.
        tensors: ``{attribute: (is parameter, shape, dtype name)}`` held by the network itself.
    """

    module: fx.GraphModule
    layers: dict[str, tuple[str, dict[str, Any]]]
    tensors: dict[str, tuple[bool, tuple[int, ...], str]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


class _TraceAll(fx.Tracer):
    """Traces into every module, PyTorch's own included (pooling, shuffles); a BatchNorm (in
    eval mode) becomes ``F.batch_norm`` on its running statistics, since its own forward checks
    the input's rank, which symbolic tracing cannot."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return False

    def call_module(self, m, forward, args, kwargs):
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            return super().call_module(m, forward, args, kwargs)
        if m.running_mean is None or m.running_var is None:
            raise NasAscError(f"BatchNorm {self.path_of_module(m)} keeps no running statistics")
        path = self.path_of_module(m)

        def attr(name: str):
            if getattr(m, name) is None:
                return None
            return self.create_proxy("get_attr", f"{path}.{name}", (), {})

        stats = (attr("running_mean"), attr("running_var"), attr("weight"), attr("bias"))
        return self.create_proxy(
            "call_function",
            nn.functional.batch_norm,
            (args[0], *stats),
            {"training": False, "momentum": 0.0, "eps": m.eps},
        )


def _flat(name: str) -> str:
    flat = re.sub(r"[^0-9A-Za-z_]", "_", name).strip("_") or "t"
    return flat if not flat[0].isdigit() else f"t_{flat}"


class _Builder:
    def __init__(self) -> None:
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.layers: dict[str, tuple[str, dict[str, Any]]] = {}
        self.tensors: dict[str, tuple[bool, tuple[int, ...], str]] = {}
        self._names: set[str] = set()

    def name(self, wanted: str) -> str:
        base = _flat(wanted)
        name, k = base, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        return name

    def tensor(self, wanted: str, value: torch.Tensor, parameter: bool) -> fx.Node:
        name = self.name(wanted)
        value = value.detach().clone()
        if parameter:
            if value.is_floating_point() and value.dtype != torch.float32:
                value = value.float()
            self.root.register_parameter(name, nn.Parameter(value, requires_grad=False))
        else:
            self.root.register_buffer(name, value)
        self.tensors[name] = (
            parameter,
            tuple(value.shape),
            str(value.dtype).removeprefix("torch."),
        )
        return self.graph.get_attr(name)

    def layer(self, wanted: str, module: nn.Module, kwargs: dict[str, Any]) -> str:
        name = self.name(wanted)
        self.root.add_module(name, module)
        self.layers[name] = (type(module).__name__, kwargs)
        return name


def _qparams(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    if q.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        if q.q_per_channel_axis() != 0:
            raise NasAscError("int8 weights quantized along an axis other than 0 are not exported")
        return q.q_per_channel_scales(), q.q_per_channel_zero_points(), True
    return torch.tensor(q.q_scale()), torch.tensor(q.q_zero_point()), False


def _set_qparams(layer: nn.Module, qweight: torch.Tensor | None, scale: float, zp: int) -> None:
    if qweight is not None:
        scales, zps, _ = _qparams(qweight)
        if not torch.equal(scales.float().double(), scales.double()):
            raise NasAscError("an int8 weight scale is not a float32 value; it cannot be exported")
        layer.weight_scale.copy_(scales.float().reshape(layer.weight_scale.shape))
        layer.weight_zero_point.copy_(zps.long().reshape(layer.weight_zero_point.shape))
        layer.weight.data.copy_(qweight.int_repr())
    scale = float(scale)
    if float(np.float32(scale)) != scale:
        raise NasAscError("an int8 activation scale is not a float32 value; it cannot be exported")
    layer.out_scale.fill_(float(scale))
    layer.out_zero_point.fill_(int(zp))


def _runtime_layer(module: nn.Module):
    """The runtime layer and its constructor kwargs for a converted int8 module, or None."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    from nas_asc.deploy import runtime

    if isinstance(module, nnq.Conv2d):  # ConvReLU2d is a subclass
        if module.padding_mode != "zeros":
            raise NasAscError(
                f"int8 convolutions with padding_mode={module.padding_mode!r} are not exported"
            )
        w, b = module.weight(), module.bias()
        kwargs = dict(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=list(module.kernel_size),
            stride=list(module.stride),
            padding=list(module.padding),
            dilation=list(module.dilation),
            groups=module.groups,
            bias=b is not None,
            relu=isinstance(module, nniq.ConvReLU2d),
            per_channel=_qparams(w)[2],
        )
        layer = runtime.QConv2d(**kwargs)
    elif isinstance(module, nnq.Linear):  # LinearReLU is a subclass
        w, b = module.weight(), module.bias()
        kwargs = dict(
            in_features=module.in_features,
            out_features=module.out_features,
            bias=b is not None,
            relu=isinstance(module, nniq.LinearReLU),
            per_channel=_qparams(w)[2],
        )
        layer = runtime.QLinear(**kwargs)
    elif isinstance(module, nnq.BatchNorm2d):  # BNReLU2d is a subclass
        kwargs = dict(
            num_features=module.num_features,
            eps=float(module.eps),
            relu=isinstance(module, nniq.BNReLU2d),
        )
        layer = runtime.QBatchNorm2d(**kwargs)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(layer, name).data.copy_(getattr(module, name).detach().float())
        _set_qparams(layer, None, module.scale, module.zero_point)
        return layer, kwargs
    elif isinstance(module, nnq.Hardswish):
        kwargs = {}
        layer = runtime.QHardswish()
        _set_qparams(layer, None, module.scale, module.zero_point)
        return layer, kwargs
    else:
        return None
    with torch.no_grad():
        _set_qparams(layer, w, module.scale, module.zero_point)
        if b is not None:
            layer.bias.data.copy_(b.detach().float())
    return layer, kwargs


def _is_dropped(module: nn.Module) -> bool:
    import torch.ao.nn.quantized as nnq

    return isinstance(
        module, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.Dropout3d, nnq.Dropout)
    )


def _copy_into(graph: fx.Graph, sub: fx.Graph, inputs: list[Any], get_attr) -> Any:
    """Copy the nodes of ``sub`` into ``graph`` (at its insertion point), its placeholders bound
    to ``inputs`` and each of its ``get_attr`` nodes to ``get_attr(node)``; returns the value of
    its output."""
    env: dict[fx.Node, Any] = {}
    bound = iter(inputs)
    out = None
    for node in sub.nodes:
        if node.op == "placeholder":
            env[node] = next(bound)
        elif node.op == "get_attr":
            env[node] = get_attr(node)
        elif node.op == "output":
            out = fx.node.map_arg(node.args[0], env.__getitem__)
        elif node.op == "call_module":
            raise NasAscError(f"could not trace into {node.target}")
        else:
            env[node] = graph.node_copy(node, env.__getitem__)
    return out


def _inline(builder: _Builder, prefix: str, sub: fx.GraphModule, args: list[Any]) -> Any:
    """Copy ``sub``'s graph into the builder's, its placeholders bound to ``args``; its tensors
    become float32 parameters of the network; returns the value of its output."""

    def tensor(node: fx.Node) -> fx.Node:
        value = _attr(sub, node.target)
        if not isinstance(value, torch.Tensor):
            raise NasAscError(f"{prefix}: attribute {node.target} is not a tensor")
        return builder.tensor(f"{prefix}_{node.target}", value, parameter=True)

    return _copy_into(builder.graph, sub.graph, args, tensor)


def _attr(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _torch_target(target: Any) -> bool:
    if isinstance(target, str):
        return True
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return True
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] in _ALLOWED_MODULES


def _specialize(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Replace calls of functions outside PyTorch (nas-asc helpers that branch on the input
    size) by the ATen operators they run on this input's shapes (``make_fx``)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    foreign = [n for n in gm.graph.nodes if n.op == "call_function" and not _torch_target(n.target)]
    if not foreign:
        return
    seen: dict[fx.Node, tuple] = {}

    class _Record(fx.Interpreter):
        def run_node(self, n):
            if n in foreign:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                seen[n] = (args, kwargs)
            return super().run_node(n)

    with torch.no_grad():
        _Record(gm).run(example)
    for node in foreign:
        args, kwargs = seen[node]
        flat, spec = torch.utils._pytree.tree_flatten((args, kwargs))
        tensor_pos = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor)]
        if any(flat[i].is_quantized for i in tensor_pos):
            raise NasAscError(
                f"{node.target.__name__} runs on int8 tensors; only float helpers are exported"
            )
        node_flat, _ = torch.utils._pytree.tree_flatten((node.args, node.kwargs))

        def call(*tensors, _flat=flat, _spec=spec, _pos=tensor_pos, _fn=node.target):
            values = list(_flat)
            for i, t in zip(_pos, tensors, strict=True):
                values[i] = t
            a, k = torch.utils._pytree.tree_unflatten(values, _spec)
            return _fn(*a, **k)

        traced = make_fx(call)(*[flat[i] for i in tensor_pos])
        bindings = [node_flat[i] for i in tensor_pos]

        def refuse(_node, _name=node.target.__name__):
            raise NasAscError(f"{_name} creates tensors; it cannot be specialized")

        with gm.graph.inserting_before(node):
            result = _copy_into(gm.graph, traced.graph, bindings, refuse)
        if not isinstance(result, fx.Node):
            raise NasAscError(f"{node.target.__name__} does not return one tensor")
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def standalone(quantized: fx.GraphModule, example: torch.Tensor) -> Standalone:
    """The converted int8 model ``quantized`` as a stand-alone network.

    Args:
        quantized: a model returned by :func:`nas_asc.train.quantize.quantize_ptq` or
            :func:`~nas_asc.train.quantize.convert_qat`.
        example: one model input ``(1, channels, freq, time)`` of the shape it will see (helpers
            that branch on the shape are specialized to it).

    Raises:
        NasAscError: the model holds something that cannot be exported (named).
    """
    if not isinstance(quantized, fx.GraphModule):
        raise NasAscError(
            "expected a converted int8 model (torch.fx.GraphModule), got "
            f"{type(quantized).__name__}"
        )
    b = _Builder()
    env: dict[fx.Node, Any] = {}
    for node in quantized.graph.nodes:
        if node.op == "placeholder":
            env[node] = b.graph.placeholder("x")
        elif node.op == "get_attr":
            value = _attr(quantized, node.target)
            if not isinstance(value, torch.Tensor):
                raise NasAscError(f"attribute {node.target} of the int8 model is not a tensor")
            env[node] = b.tensor(node.target, value, parameter=isinstance(value, nn.Parameter))
        elif node.op == "call_module":
            module = quantized.get_submodule(node.target)
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if _is_dropped(module):
                env[node] = args[0]
                continue
            made = _runtime_layer(module)
            if made is not None:
                name = b.layer(node.target, *made)
                env[node] = b.graph.call_module(name, tuple(args), dict(kwargs))
                continue
            if kwargs:
                raise NasAscError(f"module {node.target} is called with keyword arguments")
            # wrapped, so that a BatchNorm at the top of the layer is a call_module as well
            sub = nn.Sequential(copy.deepcopy(module)).eval()
            try:
                traced = fx.GraphModule(sub, _TraceAll().trace(sub))
            except Exception as exc:
                raise NasAscError(
                    f"layer {node.target} ({type(module).__name__}) cannot be traced for the "
                    f"package: {type(exc).__name__}: {exc}"
                ) from None
            env[node] = _inline(b, _flat(node.target), traced, list(args))
        elif node.op == "output":
            b.graph.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
        else:
            env[node] = b.graph.node_copy(node, lambda n: env[n])
    gm = fx.GraphModule(b.root, b.graph, class_name="Net")
    gm.eval()
    _specialize(gm, example)
    # tensors the specialization or the dropped layers left unused
    used = {n.target for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for name in [n for n in b.tensors if n not in used]:
        delattr(gm, name)
        del b.tensors[name]
    for name in [n for n in b.layers if n not in used]:
        delattr(gm, name)
        del b.layers[name]
    _check_globals(gm)
    return Standalone(gm, b.layers, b.tensors)


def _check_globals(gm: fx.GraphModule) -> None:
    code = gm.graph.python_code(root_module="self")
    for name, value in code.globals.items():
        module = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if isinstance(value, type(math)):
            module = value.__name__
        if name in ("inf", "nan") or value is None or isinstance(value, (int, float, str)):
            continue
        if module.split(".")[0] not in _ALLOWED_MODULES:
            raise NasAscError(
                f"the network calls {name} from {module}, which the package cannot import; "
                "only PyTorch functions can be exported"
            )


def _import_lines(gm: fx.GraphModule) -> list[str]:
    """Import lines for the globals the forward code uses (FX lists more than it uses)."""
    code = gm.graph.python_code(root_module="self")
    lines = ["import torch"]
    for name, value in sorted(code.globals.items()):
        if name == "torch" or not re.search(rf"\b{re.escape(name)}\b", code.src):
            continue
        if isinstance(value, type(math)):
            lines.append(f"import {value.__name__} as {name}")
        elif name in ("inf", "nan"):
            lines.append(f"from math import {name}")
        elif value is type(None):
            lines.append(f"{name} = type(None)")
        elif getattr(value, "__module__", None) == "builtins":
            lines.append(f"{name} = {value.__name__}")
        elif isinstance(value, type) and value.__module__ == "torch":
            lines.append(f"{name} = torch.{value.__name__}")
        else:
            module = value.__module__
            if module == "_operator":
                module = "operator"
            lines.append(f"from {module} import {value.__name__} as {name}")
    return lines


def network_source(networks: dict[str, Standalone], header: str) -> str:
    """Python source of one class per distinct network (``{class name: Standalone}``)."""
    lines = [f'"""{header}"""', "", "# ruff: noqa", ""]
    imports: list[str] = []
    for net in networks.values():
        for line in _import_lines(net.module):
            if line not in imports:
                imports.append(line)
    used = sorted({cls for net in networks.values() for cls, _ in net.layers.values()})
    lines += imports
    if used:
        lines.append(f"from .._runtime import {', '.join(used)}")
    lines += ["", ""]
    for class_name, net in networks.items():
        lines.append(f"class {class_name}(torch.nn.Module):")
        lines.append("    def __init__(self):")
        lines.append("        super().__init__()")
        for name, (cls, kwargs) in net.layers.items():
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            lines.append(f"        self.{name} = {cls}({args})")
        for name, (parameter, shape, dtype) in net.tensors.items():
            empty = f"torch.zeros({shape!r}, dtype=torch.{dtype})"
            if parameter:
                lines.append(
                    f"        self.{name} = torch.nn.Parameter({empty}, requires_grad=False)"
                )
            else:
                lines.append(f"        self.register_buffer({name!r}, {empty})")
        forward = net.module.code.strip("\n").splitlines()
        lines.append("")
        lines += [f"    {line}" if line.strip() else "" for line in forward]
        lines += ["", ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------
# The 2025 checker's count
# ------------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    torch.float32: 4,
    torch.float16: 2,
    torch.bfloat16: 2,
    torch.int8: 1,
    torch.uint8: 1,
    torch.int32: 4,
    torch.qint8: 1,
    torch.quint8: 1,
}


def checker_count(network: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(MACs, parameter bytes)`` of a device's network as the DCASE 2025 checker counts them:
    torchinfo's ``total_mult_adds`` of a float copy (``copy.deepcopy(net).float()``) on the
    input shape ``load_inputs`` gives (``(1, 1, n_mels, frames)``), and the bytes of
    ``network.parameters()`` at their dtype (int8: 1, float16: 2, float32: 4)."""
    import torchinfo

    profiled = copy.deepcopy(network).float()
    summary = torchinfo.summary(profiled, input_size=tuple(input_shape), verbose=0)
    total = 0
    for p in network.parameters():
        if p.dtype not in _DTYPE_BYTES:
            raise NasAscError(f"parameter of dtype {p.dtype} has no byte size in the 2025 rule")
        total += p.numel() * _DTYPE_BYTES[p.dtype]
    return int(summary.total_mult_adds), int(total)


def submission_complexity(model: nn.Module, input_shape: tuple[int, ...]):
    """``(params, param_bytes, MACs)`` of ``model`` under the DCASE 2025 rule.

    The float model is converted to int8 the way a trial is (FX PTQ; the values of its weights
    and calibration do not change the structure, so a random batch calibrates it), made into
    the stand-alone network the inference package ships (:func:`standalone`), and counted as the
    2025 checker counts it (:func:`checker_count`).
    """
    from nas_asc.train.quantize import quantize_ptq

    was_training = model.training
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((2, *tuple(input_shape)[1:]), generator=generator)
    try:
        net = standalone(quantize_ptq(model, example), example[:1]).module
    finally:
        model.train(was_training)
    macs, param_bytes = checker_count(net, tuple(input_shape))
    params = sum(p.numel() for p in net.parameters())
    return params, param_bytes, macs
