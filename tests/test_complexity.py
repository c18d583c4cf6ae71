"""The DCASE counting rule on networks small enough to count by hand.

The cross-check against torchinfo on every model and space is in test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_asc.complexity import count, parse_input_shape
from nas_asc.models import create_model
from nas_asc.models.layers import AdaResNorm, ResNorm


class _Head(nn.Module):
    def __init__(self, body: nn.Module, flat: int, classes: int = 10) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(flat, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


def test_conv_with_bias_counts_one_mac_per_output_for_the_bias():
    # 4 filters of 1x3x3 over an 8x8 output: 4*9*64 = 2304 weight MACs + 4*64 = 256 bias MACs
    c = count(nn.Conv2d(1, 4, 3, padding=1, bias=True), (1, 8, 8))
    assert c.macs == 2_304 + 256
    assert c.params == 4 * 9 + 4


def test_depthwise_and_strided_convs():
    # depthwise 3x1 over 6 channels, 8x8 output: 6 * 3 * 64 = 1152
    assert (
        count(nn.Conv2d(6, 6, (3, 1), padding=(1, 0), groups=6, bias=False), (6, 8, 8)).macs
        == 1_152
    )
    # 5x5 stride 2, padding 2 on 16x12: output 8x6, 2 filters: 2 * 25 * 48 = 2400
    assert count(nn.Conv2d(1, 2, 5, stride=2, padding=2, bias=False), (1, 16, 12)).macs == 2_400


def test_batchnorm_counts_two_per_channel_and_pooling_activation_count_zero():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 1, bias=False),  # 4 * 1 * 64 = 256
        nn.BatchNorm2d(4),  # 2 * 4 = 8
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
    )
    assert count(net, (1, 8, 8)).macs == 256 + 8


def test_linear_counts_its_parameters():
    # conv 2 filters 1x1 on 4x4 = 2*16 = 32; linear 32 -> 10: 320 + 10
    net = _Head(nn.Conv2d(1, 2, 1, bias=False), flat=32)
    assert count(net, (1, 4, 4)).macs == 32 + 330


def test_non_affine_batchnorm_and_residual_norms_count_zero_macs():
    assert count(nn.BatchNorm2d(4, affine=False), (4, 4, 4)).macs == 0
    assert count(ResNorm(4), (4, 4, 4)).macs == 0
    assert count(AdaResNorm(4), (4, 4, 4)).macs == 0


def test_parameter_bytes_follow_the_deployed_dtype():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), AdaResNorm(4))  # 40 int8 + 12 float32
    c = count(net, (1, 8, 8))
    assert c.params == 52
    assert c.param_bytes == 40 * 1 + 12 * 4
    assert count(net, (1, 8, 8), weight_dtype="float32").param_bytes == 52 * 4
    assert count(net, (1, 8, 8), weight_dtype="float16").param_bytes == 40 * 2 + 12 * 4


def test_count_restores_training_mode():
    model = create_model("tfsepnet", width=8).train()
    count(model, (1, 64, 44))
    assert model.training


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1x128x44", (1, 1, 128, 44)), ("128x44", (1, 1, 128, 44)), ((1, 1, 64, 44), (1, 1, 64, 44))],
)
def test_parse_input_shape(text, shape):
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("bad", ["abc", "0x128x44", "1x2x3x4x5", "2x1x128x44", "44"])
def test_parse_input_shape_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="input shape|one clip"):
        parse_input_shape(bad)
