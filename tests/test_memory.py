"""Peak activation memory (``nas_asc.memory``): networks small enough to work out by hand, and
every registered family against an independent estimate taken while the model runs.

Hand figures are int8 bytes (one per element) for a ``1 x 4 x 8 x 8`` input (256 bytes) unless
said otherwise.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_asc.complexity import count
from nas_asc.memory import peak_activation_bytes
from nas_asc.models import create_model, list_models


def test_a_chain_peaks_where_a_layer_reads_its_input_and_writes_its_output():
    chain = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 64 in + 256 out = 320
        nn.ReLU(),  # in place: 256
        nn.Conv2d(4, 2, 3, padding=1),  # 256 in + 128 out = 384 (the peak)
        nn.Flatten(),  # a view: nothing new
        nn.Linear(128, 10),  # 128 + 10
    )
    assert peak_activation_bytes(chain, (1, 1, 8, 8)) == 384


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn, self.act = nn.BatchNorm2d(4), nn.ReLU()

    def forward(self, x):
        # the skip keeps x (256) alive across both convolutions: at b, x + a's output + b's
        # output = 768; BatchNorm and ReLU in place; the addition writes into b's output
        return self.b(self.act(self.bn(self.a(x)))) + x


class _Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        # at right: x 256 + left 128 + right 128 = 512; then x dies; the concatenation
        # writes a new 256 beside both branches: 512
        return torch.cat([self.left(x), self.right(x)], dim=1)


class _Shuffle(nn.Module):
    def forward(self, x):
        # views (reshape, transpose) write nothing; contiguous copies: 256 + 256
        n, c, h, w = x.shape
        return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).contiguous().flatten(1)


@pytest.mark.parametrize(
    ("model", "peak"),
    [(_Residual(), 768), (_Branches(), 512), (_Shuffle(), 512)],
    ids=["residual", "branches-joined", "shuffle"],
)
def test_hand_worked_networks(model, peak):
    assert peak_activation_bytes(model, (1, 4, 8, 8)) == peak


def test_element_bytes_scale_the_figure_and_the_mode_is_restored():
    model = _Residual().train()
    assert peak_activation_bytes(model, (1, 4, 8, 8), element_bytes=4) == 4 * 768
    assert model.training


def test_a_model_torch_fx_cannot_trace_has_no_figure():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    assert peak_activation_bytes(DataDependent(), (1, 4, 8, 8)) is None
    assert count(DataDependent(), (4, 8, 8), activations=True).peak_activation_bytes is None


class _Estimate:
    """What running the model shows, independently of the traced graph: every tensor any torch
    function returns (an upper bound: all of them alive at once) and, for each convolution and
    linear layer, its input and output (a lower bound: both are alive while it runs)."""

    def __init__(self, model: nn.Module, shape) -> None:
        from torch.overrides import TorchFunctionMode

        produced = []

        class Record(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor) and not isinstance(t, nn.Parameter):
                        produced.append(t.numel())
                return out

        pairs = []

        def hook(module, inputs, output):
            pairs.append(inputs[0].numel() + output.numel())

        handles = [
            m.register_forward_hook(hook)
            for m in model.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
        ]
        x = torch.zeros(shape)
        model.eval()
        try:
            with torch.no_grad(), Record():
                model(x)
        finally:
            for h in handles:
                h.remove()
        self.lower = max(pairs, default=0)
        self.upper = x.numel() + sum(produced)


@pytest.mark.parametrize("name", list_models())
def test_every_family_lies_within_what_running_it_shows(name):
    model = create_model(name)
    shape = (1, 1, 140, 8) if name == "cnn" else (1, 1, 128, 44)
    peak = peak_activation_bytes(model, shape)
    assert peak is not None, f"{name} cannot be traced"
    estimate = _Estimate(model, shape)
    assert estimate.lower <= peak <= estimate.upper
    assert count(model, shape[1:], activations=True).peak_activation_bytes == peak
