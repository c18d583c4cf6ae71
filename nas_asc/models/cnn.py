"""AI4EDGE student CNNs SM1, SM2 and SM3 (DCASE 2023), as in the authors' code.

Almeida et al., "AI4EDGE submission to DCASE 2023 low complexity acoustic scene classification
task 1" (shared/seeds/001), Sec. 3.1 and 5, Table 1. The report lists each student's
convolutions (filters and kernels) and its NeSsi size and MACs; the rest of the network is taken
from the authors' code, github.com/ipleiria-robotics/DCASE, ``dcase_2023/myDCASE/myLiB/models.py``:
SM1 is ``BM2`` (the student of ``AI4EDGE_4.py``; its saved Keras config,
``resultados/AI4EDGE_4/student/keras_metadata.pb``, is the same network), SM2 is
``BM2_slightly_more_layers``, SM3 is ``BM2_slightly_more_layers_bigger`` and the pruned SM3 (20,
22, 22, 24, 24, 16 filters) is ``BM2_slightly_more_layers_bigger_test``. The network:

* input ``(batch, 1, n_mels, frames)``; the official input is ``140 x 8`` (Keras
  ``(140, 8, 1)``, channels last: 8 kHz audio, 140 Mel bins, 2048-sample window, hop 1024);
  kernel and pool sizes below are ``(frequency, time)``;
* each layer: a ``same``-padded convolution with bias; for every layer but the first, a ReLU
  (the official ``Conv2D(..., activation="relu")``); BatchNorm (Keras defaults: epsilon 1e-3,
  momentum 0.99, i.e. PyTorch ``momentum=0.01``); ReLU; then the layer's max-pool and dropout,
  where it has them. The first layer's BatchNorm folds into its convolution; the later ones
  follow a ReLU and stay separate operators in the int8 model;
* SM1: 20 (7x5) | 28 (7x3), pool (1, 2) over time, dropout 0.1 | 28 (3x7), pool (2, 2),
  dropout 0.3 | 16 (7x5), dropout 0.3. SM2/SM3: 20 (7x5) | F (7x3), pool (1, 2), dropout 0.1 |
  F (7x3) | F (3x7), pool (2, 2), dropout 0.3 | F (3x7), dropout 0.3 | 16 (7x5), dropout 0.3,
  with F = 24 (SM2) or 28 (SM3);
* head: global average pooling, a 256-unit ReLU dense layer, dropout 0.4, a 10-unit dense layer;
* weights start as Keras' (Glorot-uniform kernels, zero biases).

Checked: ``python -m nas_asc.fidelity cnn --official /path/to/clone``
(``nas_asc/fidelity/checks/cnn.py``; it needs ``tensorflow``) builds the four official Keras
students on the ``140 x 8`` input with random weights and random BatchNorm statistics, copies
them into this network (HWIO kernels to OIHW, dense kernels transposed, BatchNorm
gamma/beta/moving statistics to weight/bias/running statistics) and compares the eval-mode
outputs before the official softmax: at most 1.9e-6 apart, on logits up to 6.3 (TensorFlow
2.21, PyTorch 2.14). NeSsi on the official int8 ``resultados/AI4EDGE_4/student.tflite`` gives
52,852 bytes and 25,475,456 MACs (Table 1: 52.85 k, 25.47 M); ``tests/test_models_cnn.py``
reproduces these, the other published sizes and the Keras parameter counts from this network.

Different, by design:

* the output is logits; the official last layer has a softmax (apply it for probabilities);
* ``width``, ``filters``, ``dropout`` and ``dense_units`` are nas-asc's search knobs; the
  official functions fix them (the defaults are the official values). Global pooling lets the
  network take any input size; MACs scale with it.

Two figures in the report's text contradict its own table and its code and are not reproduced:
the pruned SM3 is said to have 61.2 k parameters and 25.7 M MACs, while its layers (the code's
``BM2_slightly_more_layers_bigger_test``) give Table 1's 65.19 k and 26.71 M.

Revision 2 of the family (revision 1 was reconstructed from the report alone and had the
first pool over frequency, convolution-ReLU-pool-BatchNorm layers, dropout 0.3 throughout and a
5 x 2-grid, 44-unit head; its totals matched Table 1 by coincidence).

The defaults build SM1, the report's basis student (its teacher is ten SM1 networks). The model
implements the :class:`nas_asc.train.prune.Prunable` interface for L1-norm structured filter
pruning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model

__all__ = ["CNNConfig", "CNN", "ConvBlock", "VARIANTS", "LayerSpec", "HEAD_DROPOUT"]


@dataclass(frozen=True)
class LayerSpec:
    """One convolutional layer of a student."""

    filters: int  # output filters
    kernel: tuple[int, int]  # (frequency, time)
    conv_relu: bool  # a ReLU between the convolution and its BatchNorm
    pool: tuple[int, int] | None = None  # max-pool window (frequency, time) after the ReLU
    dropout: float = 0.0  # dropout after the layer (0: none)


def _layers(*specs: tuple) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(*spec) for spec in specs)


def _six(inner: int) -> tuple[LayerSpec, ...]:
    return _layers(
        (20, (7, 5), False),
        (inner, (7, 3), True, (1, 2), 0.1),
        (inner, (7, 3), True),
        (inner, (3, 7), True, (2, 2), 0.3),
        (inner, (3, 7), True, None, 0.3),
        (16, (7, 5), True, None, 0.3),
    )


# The report's students (Sec. 3.1) with the pools and dropouts of the official code.
VARIANTS: dict[str, tuple[LayerSpec, ...]] = {
    "sm1": _layers(
        (20, (7, 5), False),
        (28, (7, 3), True, (1, 2), 0.1),
        (28, (3, 7), True, (2, 2), 0.3),
        (16, (7, 5), True, None, 0.3),
    ),
    "sm2": _six(24),
    "sm3": _six(28),
}
HEAD_DROPOUT = 0.4  # official dropout between the two dense layers


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class CNNConfig:
    variant: str = "sm1"  # student of the report: a key of VARIANTS (sm1 | sm2 | sm3)
    width: float = 1.0  # multiplier on every layer's filter count (rounded, at least 1)
    filters: tuple[int, ...] = ()  # explicit filters per layer (overrides variant and width)
    n_classes: int = 10  # acoustic scenes
    in_channels: int = 1  # log-mel input planes
    dense_units: int = 256  # hidden units of the dense head (official: 256)
    dropout: float | None = None  # every dropout's rate; None: the official 0.1/0.3 and 0.4

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown CNN variant {self.variant!r}; choose one of {sorted(VARIANTS)}"
            )
        w = self.width
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"CNN width multiplier must be a number > 0, got {w!r}")
        self.filters = tuple(self.filters)
        n_layers = len(VARIANTS[self.variant])
        if self.filters and len(self.filters) != n_layers:
            raise ValueError(
                f"CNN filters must list one count per layer of {self.variant} ({n_layers}), "
                f"got {self.filters}"
            )
        if any(not _is_int(f) or f < 1 for f in self.filters):
            raise ValueError(f"CNN filter counts must be integers >= 1, got {self.filters}")
        for name in ("n_classes", "in_channels", "dense_units"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"CNN {name} must be an integer >= 1, got {value!r}")
        p = self.dropout
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0
        ):
            raise ValueError(f"CNN dropout must be None or in [0, 1), got {p!r}")

    def layer_filters(self) -> tuple[int, ...]:
        """Filters of each layer: ``filters`` if given, else the variant's scaled by ``width``."""
        if self.filters:
            return self.filters
        # round half up (Python's round() would send 2.5 to 2)
        return tuple(max(1, int(s.filters * self.width + 0.5)) for s in VARIANTS[self.variant])

    def layer_dropouts(self) -> tuple[float, ...]:
        """Dropout after each layer: the official rates, or ``dropout`` where a layer has one."""
        specs = VARIANTS[self.variant]
        if self.dropout is None:
            return tuple(s.dropout for s in specs)
        return tuple(float(self.dropout) if s.dropout else 0.0 for s in specs)

    def head_dropout(self) -> float:
        """Dropout between the dense layers: official 0.4, or ``dropout`` if set."""
        return HEAD_DROPOUT if self.dropout is None else float(self.dropout)


class ConvBlock(nn.Module):
    """Convolution (same padding, bias), [ReLU], BatchNorm, ReLU, [max-pool], [dropout]."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int],
        conv_relu: bool,
        pool: tuple[int, int] | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=(kernel[0] // 2, kernel[1] // 2))
        # None rather than Identity: an Identity between the convolution and its BatchNorm
        # would keep the int8 conversion from folding the BatchNorm into the convolution
        self.conv_act = nn.ReLU() if conv_relu else None
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)  # Keras' defaults
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(pool) if pool is not None else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.conv_act is not None:
            x = self.conv_act(x)
        return self.drop(self.pool(self.act(self.bn(x))))


class CNN(nn.Module):
    """AI4EDGE student CNN; input ``(batch, in_channels, n_mels, frames)``, output logits."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        specs = VARIANTS[cfg.variant]
        blocks: list[nn.Module] = []
        cin = cfg.in_channels
        for spec, cout, p in zip(specs, cfg.layer_filters(), cfg.layer_dropouts(), strict=True):
            blocks.append(ConvBlock(cin, cout, spec.kernel, spec.conv_relu, spec.pool, p))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(cin, cfg.dense_units)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(cfg.head_dropout())
        self.fc2 = nn.Linear(cfg.dense_units, cfg.n_classes)
        for m in self.modules():  # Keras' initializers: Glorot-uniform kernels, zero biases
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.blocks(x)), 1)
        return self.fc2(self.drop(self.act(self.fc1(x))))

    @property
    def filters(self) -> tuple[int, ...]:
        """Current filters of each layer (smaller than the config's after pruning)."""
        return tuple(block.conv.out_channels for block in self.blocks)

    def current_config(self) -> CNNConfig:
        """A config that rebuilds this network's current (possibly pruned) architecture."""
        return dataclasses.replace(self.cfg, filters=self.filters)

    # --- nas_asc.train.prune.Prunable -----------------------------------------------------

    def prunable_layers(self) -> list[str]:
        """Inner convolutions; as in the report, the first and last layer keep their filters."""
        return [f"blocks.{i}.conv" for i in range(1, len(self.blocks) - 1)]

    def prune_filters(self, layer: str, keep: torch.Tensor) -> None:
        """Keep only filters ``keep`` of convolution ``layer``, in place.

        The convolution's kept filters and biases, the matching BatchNorm channels (affine
        parameters and running statistics) and the matching input channels of the next
        convolution are kept; everything else is removed. The replaced parameters are new
        tensors: re-create the optimizer afterwards.

        Args:
            layer: one of :meth:`prunable_layers`.
            keep: indices of the filters to keep (integer tensor), or a boolean mask over them.
        """
        names = self.prunable_layers()
        if layer not in names:
            raise ValueError(f"{layer!r} is not a prunable layer; prunable layers: {names}")
        index = int(layer.split(".")[1])
        block = self.blocks[index]
        idx = _keep_indices(keep, block.conv.out_channels, layer)
        _select_conv_out(block.conv, idx)
        _select_bn(block.bn, idx)
        consumer = self.blocks[index + 1].conv
        consumer.weight = _selected(consumer.weight, 1, idx)
        consumer.in_channels = len(idx)


def _keep_indices(keep: torch.Tensor, n: int, layer: str) -> torch.Tensor:
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.shape != (n,):
            raise ValueError(
                f"boolean keep mask for {layer!r} must have shape ({n},), got {tuple(keep.shape)}"
            )
        keep = keep.nonzero().flatten()
    if keep.dtype.is_floating_point or keep.ndim != 1:
        raise ValueError(
            f"keep for {layer!r} must be a 1-D integer index tensor or boolean mask, "
            f"got dtype {keep.dtype} and shape {tuple(keep.shape)}"
        )
    idx = torch.unique(keep.long())  # sorted
    if len(idx) != len(keep):
        raise ValueError(f"keep for {layer!r} repeats filter indices: {keep.tolist()}")
    if len(idx) == 0:
        raise ValueError(f"keep for {layer!r} must keep at least one of its {n} filters")
    if idx[0] < 0 or idx[-1] >= n:
        raise ValueError(f"keep for {layer!r} must index its {n} filters, got {keep.tolist()}")
    return idx


def _selected(param: nn.Parameter, dim: int, idx: torch.Tensor) -> nn.Parameter:
    data = param.detach().index_select(dim, idx.to(param.device)).clone()
    return nn.Parameter(data, requires_grad=param.requires_grad)


def _select_conv_out(conv: nn.Conv2d, idx: torch.Tensor) -> None:
    conv.weight = _selected(conv.weight, 0, idx)
    if conv.bias is not None:
        conv.bias = _selected(conv.bias, 0, idx)
    conv.out_channels = len(idx)


def _select_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    if bn.affine:
        bn.weight = _selected(bn.weight, 0, idx)
        bn.bias = _selected(bn.bias, 0, idx)
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean.index_select(0, idx.to(bn.running_mean.device))
        bn.running_var = bn.running_var.index_select(0, idx.to(bn.running_var.device))
    bn.num_features = len(idx)


@register_model("cnn", CNNConfig, revision=2, reference_input=(1, 140, 8))
def cnn(cfg: CNNConfig) -> CNN:
    """AI4EDGE student CNN; defaults build the report's SM1 (the official ``BM2``)."""
    return CNN(cfg)
