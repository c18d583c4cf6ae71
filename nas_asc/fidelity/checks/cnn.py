"""AI4EDGE CNN against ``ipleiria-robotics/DCASE`` (``dcase_2023/myDCASE/myLiB/models.py``, Keras).

The official students are Keras functions without arguments beyond the input shape: ``BM2``
(SM1, the submitted student), ``BM2_slightly_more_layers`` (SM2),
``BM2_slightly_more_layers_bigger`` (SM3) and ``BM2_slightly_more_layers_bigger_test`` (SM3
pruned to 20, 22, 22, 24, 24, 16 filters). Each is built on the official ``140 x 8`` input; its
last layer's softmax is switched off so that the logits are compared.
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

from nas_asc.fidelity.base import (
    OfficialCheck,
    OfficialModel,
    import_file,
    register_check,
    stand_in_modules,
)

MODELS_PY = "dcase_2023/myDCASE/myLiB/models.py"
PRUNED_SM3 = (20, 22, 22, 24, 24, 16)

# our config -> the official function that builds it
_FUNCTIONS = {
    ("sm1", ()): "BM2",
    ("sm2", ()): "BM2_slightly_more_layers",
    ("sm3", ()): "BM2_slightly_more_layers_bigger",
    ("sm3", PRUNED_SM3): "BM2_slightly_more_layers_bigger_test",
}

# official layer names (Keras names after clear_session) -> ours
_CONVS = {  # the official convolutions, in order, by the number of layers
    4: ("Conv-1", "Conv-2", "Conv-3", "Conv-3_0"),
    6: ("Conv-1", "Conv-2", "Conv-3", "Conv-4", "Conv-5", "Conv-5_0"),
}
_BN = re.compile(r"^batch_normalization(?:_(\d+))?$")
_BN_LEAF = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
_DENSE = {"lastLayer": "fc1", "dense": "fc2"}

_TF_MISSING = "this check needs tensorflow: pip install tensorflow-cpu"


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ImportError(_TF_MISSING) from exc
    return tf


@contextlib.contextmanager
def _tfmot_stand_in() -> Iterator[None]:
    """Placeholders for the ``tensorflow_model_optimization`` names models.py imports.

    models.py imports them at its top for its QAT variants; the students compared here do not
    use them. Where the package is importable it is used as is.
    """
    try:
        import tensorflow_model_optimization.python.core.quantization.keras.quantize  # noqa: F401

        usable = True
    except Exception:  # absent, or incompatible with the installed Keras
        usable = False
    if usable:
        yield
        return
    base = "tensorflow_model_optimization.python.core.quantization.keras"
    names = [
        "tensorflow_model_optimization",
        "tensorflow_model_optimization.python",
        "tensorflow_model_optimization.python.core",
        "tensorflow_model_optimization.python.core.quantization",
        base,
        f"{base}.quantizers",
        f"{base}.quantize",
        f"{base}.quantize_config",
    ]
    modules = {name: types.ModuleType(name) for name in names}
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    modules[f"{base}.quantizers"].LastValueQuantizer = object
    modules[f"{base}.quantizers"].MovingAverageQuantizer = object
    modules[f"{base}.quantize"].quantize_annotate_layer = lambda layer, **_: layer
    modules[f"{base}.quantize_config"].QuantizeConfig = type("QuantizeConfig", (), {})
    with stand_in_modules(modules):
        yield


class KerasOfficial(OfficialModel):
    """An official Keras model; outputs are taken before its final softmax."""

    def __init__(self, model: Any) -> None:
        tf = _tensorflow()
        self.model = model
        last = model.layers[-1]
        if getattr(last, "activation", None) is not None:
            last.activation = tf.keras.activations.linear

    def _variables(self) -> Iterator[tuple[str, Any]]:
        for layer in self.model.layers:
            for var in layer.weights:
                leaf = var.name.rsplit("/", 1)[-1].split(":", 1)[0]
                yield f"{layer.name}/{leaf}", var

    def randomize(self, seed: int) -> None:
        """Random kernels scaled by fan-in, random biases, BatchNorm affines and statistics.

        Kernels are N(0, 2 / fan_in) (He scaling), so that logits stay of order 1-10 and the
        comparison measures the function rather than float32 rounding of huge values; biases
        and BatchNorm shifts and means are N(0, 0.1^2), scales and variances U(0.5, 1.5).
        """
        rng = np.random.default_rng(seed)
        for name, var in self._variables():
            shape = tuple(var.shape)
            leaf = name.rsplit("/", 1)[-1]
            if leaf == "kernel":  # Conv2D (kh, kw, cin, cout) or Dense (in, out)
                fan_in = int(np.prod(shape[:-1]))
                value = np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)
            elif leaf in ("gamma", "moving_variance"):
                value = 0.5 + rng.random(shape)
            else:  # bias, beta, moving_mean
                value = 0.1 * rng.standard_normal(shape)
            var.assign(value.astype(np.float32))

    def weights(self) -> dict[str, np.ndarray]:
        return {name: np.array(var.numpy()) for name, var in self._variables()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # ours: (batch, 1, n_mels, frames); Keras, channels last: (batch, n_mels, frames, 1)
        channels_last = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
        return np.asarray(self.model(channels_last, training=False))


@register_check
class CNNCheck(OfficialCheck):
    family = "cnn"
    repo = "ipleiria-robotics/DCASE"
    files = (MODELS_PY,)
    configs = {
        "SM1 (BM2, submitted)": {},
        "SM2": {"variant": "sm2"},
        "SM3": {"variant": "sm3"},
        "SM3 pruned": {"variant": "sm3", "filters": PRUNED_SM3},
    }
    input_shape = (1, 140, 8)  # the official input: 140 Mel bins x 8 frames

    def __init__(self) -> None:
        self._modules: dict[Path, Any] = {}

    def _module(self, clone: Path) -> Any:
        clone = Path(clone).resolve()
        if not (clone / MODELS_PY).is_file():
            raise FileNotFoundError(
                f"{clone / MODELS_PY} not found: is the clone of the official code complete?"
            )
        if clone not in self._modules:
            _tensorflow()
            with _tfmot_stand_in():
                self._modules[clone] = import_file(clone / MODELS_PY, "official_ai4edge_models")
        return self._modules[clone]

    def official(self, clone: Path, config: dict[str, Any]) -> OfficialModel:
        key = (config.get("variant", "sm1"), tuple(config.get("filters", ())))
        module = self._module(clone)
        tf = _tensorflow()
        tf.keras.backend.clear_session()  # layer names as in the saved model (no suffixes)
        channels, n_mels, frames = self.input_for(config)
        return KerasOfficial(getattr(module, _FUNCTIONS[key])((n_mels, frames, channels)))

    def map_weights(
        self, weights: Mapping[str, np.ndarray], config: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        convs = {name: i for i, name in enumerate(_CONVS[len(_layers_of(config))])}
        out: dict[str, torch.Tensor] = {}
        for name, value in weights.items():
            layer, leaf = name.split("/")
            value = np.asarray(value, dtype=np.float32)
            bn = _BN.match(layer)
            if layer in convs:
                ours = f"blocks.{convs[layer]}.conv"
                if leaf == "kernel":  # HWIO -> OIHW
                    value = value.transpose(3, 2, 0, 1)
                out[f"{ours}.{'weight' if leaf == 'kernel' else leaf}"] = _tensor(value)
            elif bn is not None:
                ours = f"blocks.{int(bn.group(1) or 0)}.bn"
                out[f"{ours}.{_BN_LEAF[leaf]}"] = _tensor(value)
                out[f"{ours}.num_batches_tracked"] = torch.tensor(0)
            elif layer in _DENSE:
                if leaf == "kernel":  # (in, out) -> (out, in)
                    value = value.T
                out[f"{_DENSE[layer]}.{'weight' if leaf == 'kernel' else leaf}"] = _tensor(value)
            else:
                raise KeyError(f"official weight {name!r} has no counterpart in ours")
        return out


def _layers_of(config: dict[str, Any]) -> tuple:
    from nas_asc.models.cnn import VARIANTS

    return VARIANTS[config.get("variant", "sm1")]


def _tensor(value: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value))
