"""DCASE-baseline-style CNN students SM1, SM2 and SM3 of the AI4EDGE report.

Almeida et al., "AI4EDGE submission to DCASE 2023 low complexity acoustic scene classification
task 1" (shared/seeds/001), Sec. 3.1 and 5, Table 1. The report lists each student's convolutions
(filters and kernel sizes) and its size and MACs as measured by NeSsi on the int8 TFLite model; it
refers to its Figure 1 and to the DCASE 2022 Task 1 baseline CNN for the rest. The details below
are the ones that make this network reproduce every published figure exactly under NeSsi's TFLite
conventions (see ``tests/test_models_cnn.py``):

* the input is ``140 x 8`` (Mel bins x frames): 8 kHz audio, 140 Mel bins, a 2048-sample window
  with a 50 % hop (1024 samples; the DCASE baseline also hops half a window), centred frames;
* every layer is a ``same``-padded convolution with bias, then ReLU, then (where the layer pools)
  a max-pool, then BatchNorm, then dropout where the layer pools. BatchNorm after the activation
  cannot be folded into the convolution, which is what the published sizes show: NeSsi counts
  every filter as its int8 weights, a 4-byte int32 bias and the int8 scale and shift of the
  unfolded BatchNorm, 6 bytes per filter beyond its weights;
* the first pooled layer halves the feature map, the second quarters it, and the last layer pools
  to a 5 x 2 grid that is flattened (16 x 5 x 2 = 160 features) into a 44-unit ReLU dense layer
  (dropout 0.3) and a 10-unit output layer. The parameter bytes fix ``160 x 44``, the MACs fix
  where the pools are: SM1 pools after layers 2, 3 and 4, SM2 and SM3 after layers 2, 4 and 6;
* pooling shapes are not given: the 2x pool is over frequency only, ``(2, 1)``, because the
  report's input has only 8 frames, the 4x pool is ``(2, 2)``; the last pool is an adaptive
  average pool to the 5 x 2 grid (the report mentions max and average pooling; average pooling
  stays int8 after PTQ), which equals a fixed ``(7, 2)`` pool on the report's input and lets the
  network accept any input size;
* kernel sizes are ``(frequency, time)``, as the DCASE baseline's ``(mel, time)`` input;
* dropout 0.3 after each pooled layer and the hidden dense layer, as in the DCASE baseline.

Published figures (Table 1, NeSsi on int8 TFLite) and what they are here: SM1 52,852 bytes and
25.47 M MACs, SM2 68,996 bytes and 29.30 M MACs, pruned SM3 65,192 bytes and 26.71 M MACs, SM3
before pruning 86,116 bytes and 37 M MACs are all reproduced by the NeSsi rule (int8 weights,
int32 biases, unfolded BatchNorm as two int8 constants per channel; MACs of convolutions without
bias, pooling windows, BatchNorm additions and dense layers). Under the DCASE rule of
:mod:`nas_asc.complexity` the same SM1 has 52,414 parameters and 25.45 M MACs. Two figures in the
report's text contradict its own table and architecture lists and are not reproducible: the pruned
SM3 is said to have 61.2 k parameters and 25.7 M MACs, while the listed pruned layers (20, 22, 22,
24, 24, 16 filters) give Table 1's 65.19 k and 26.71 M.

The defaults build SM1, the report's basis student (its teacher is ten SM1 networks). ``variant``
selects SM1/SM2/SM3, ``width`` scales every layer's filters, and ``filters`` sets them explicitly
(e.g. the pruned SM3: ``variant="sm3", filters=(20, 22, 22, 24, 24, 16)``). The model implements
the :class:`nas_asc.train.prune.Prunable` interface for L1-norm structured filter pruning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from nas_asc.models._registry import register_model

__all__ = ["CNNConfig", "CNN", "ConvBlock", "VARIANTS", "LayerSpec"]


@dataclass(frozen=True)
class LayerSpec:
    """One convolutional layer of a student: filters, kernel and the pooling after it."""

    filters: int  # output filters
    kernel: tuple[int, int]  # (frequency, time)
    pool: tuple[int, int] | None = None  # max-pool window after the ReLU, or None


def _layers(*specs: tuple[int, tuple[int, int], tuple[int, int] | None]) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(f, k, p) for f, k, p in specs)


# The report's students (Sec. 3.1). The last layer's pool is the adaptive head pool.
VARIANTS: dict[str, tuple[LayerSpec, ...]] = {
    "sm1": _layers(
        (20, (7, 5), None),
        (28, (7, 3), (2, 1)),
        (28, (3, 7), (2, 2)),
        (16, (7, 5), None),
    ),
    "sm2": _layers(
        (20, (7, 5), None),
        (24, (7, 3), (2, 1)),
        (24, (7, 3), None),
        (24, (3, 7), (2, 2)),
        (24, (3, 7), None),
        (16, (7, 5), None),
    ),
    "sm3": _layers(
        (20, (7, 5), None),
        (28, (7, 3), (2, 1)),
        (28, (7, 3), None),
        (28, (3, 7), (2, 2)),
        (28, (3, 7), None),
        (16, (7, 5), None),
    ),
}


@dataclass
class CNNConfig:
    variant: str = "sm1"  # student of the report: a key of VARIANTS (sm1 | sm2 | sm3)
    width: float = 1.0  # multiplier on every layer's filter count (rounded, at least 1)
    filters: tuple[int, ...] = ()  # explicit filters per layer (overrides variant and width)
    n_classes: int = 10  # acoustic scenes
    in_channels: int = 1  # log-mel input planes
    dense_units: int = 44  # hidden units of the dense head (fixed by the published sizes)
    head_grid: tuple[int, int] = (5, 2)  # (frequency, time) grid pooled to before flattening
    dropout: float = 0.3  # after each pooled layer and the hidden dense layer (DCASE baseline)

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
        for f in self.filters:
            if isinstance(f, bool) or not isinstance(f, int) or f < 1:
                raise ValueError(f"CNN filter counts must be integers >= 1, got {self.filters}")
        for name in ("n_classes", "in_channels", "dense_units"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CNN {name} must be an integer >= 1, got {value!r}")
        self.head_grid = tuple(self.head_grid)
        if len(self.head_grid) != 2 or any(
            isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in self.head_grid
        ):
            raise ValueError(
                f"CNN head_grid must be two integers >= 1 (frequency, time), got {self.head_grid}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CNN dropout must be in [0, 1), got {self.dropout}")

    def layer_filters(self) -> tuple[int, ...]:
        """Filters of each layer: ``filters`` if given, else the variant's scaled by ``width``."""
        if self.filters:
            return self.filters
        # round half up (Python's round() would send 2.5 to 2)
        return tuple(max(1, int(s.filters * self.width + 0.5)) for s in VARIANTS[self.variant])


class ConvBlock(nn.Module):
    """Convolution (same padding, bias), ReLU, optional pool, BatchNorm, optional dropout."""

    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int], pool: nn.Module | None, dropout: float
    ) -> None:
        super().__init__()
        padding = (kernel[0] // 2, kernel[1] // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=True)
        self.act = nn.ReLU()
        self.pool = pool if pool is not None else nn.Identity()
        self.bn = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(dropout) if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.pool(self.act(self.conv(x)))))


class CNN(nn.Module):
    """AI4EDGE student CNN; input ``(batch, in_channels, n_mels, frames)``, output logits."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        specs = VARIANTS[cfg.variant]
        filters = cfg.layer_filters()
        blocks: list[nn.Module] = []
        cin = cfg.in_channels
        for i, (spec, cout) in enumerate(zip(specs, filters, strict=True)):
            last = i == len(specs) - 1
            if last:
                pool: nn.Module | None = nn.AdaptiveAvgPool2d(cfg.head_grid)
            elif spec.pool is not None:
                pool = nn.MaxPool2d(spec.pool)
            else:
                pool = None
            blocks.append(ConvBlock(cin, cout, spec.kernel, pool, cfg.dropout))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self._grid = cfg.head_grid[0] * cfg.head_grid[1]
        self.fc1 = nn.Linear(cin * self._grid, cfg.dense_units)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.dense_units, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.blocks(x), 1)
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
        convolution (or input features of the dense layer) are kept; everything else is removed.
        The replaced parameters are new tensors: re-create the optimizer afterwards.

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


@register_model("cnn", CNNConfig)
def cnn(cfg: CNNConfig) -> CNN:
    """AI4EDGE student CNN; defaults build the report's SM1."""
    return CNN(cfg)
