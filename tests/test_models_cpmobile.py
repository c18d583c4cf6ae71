"""CP-Mobile, the DCASE 2024 Task 1 baseline: its published per-layer and total complexity."""

from __future__ import annotations

import pytest
import torch

from nas_asc.complexity import count
from nas_asc.models import (
    cpmobile,  # noqa: F401  (registers the family)
    create_model,
    get_model_config,
)
from nas_asc.models.cpmobile import CPMobileBlock, CPMobileConfig, make_divisible, stage_channels

# The baseline's front end: 32 kHz, 256 Mel bins, hop 500 -> 65 frames for 1 s.
BASELINE_INPUT = (1, 1, 256, 65)


def test_baseline_complexity_is_reproduced_exactly():
    # README of CPJKU/dcase2024_task1_baseline: 61,148 parameters and 29,419,156 MACs.
    c = count(create_model("cpmobile"), BASELINE_INPUT)
    assert (c.params, c.param_bytes, c.macs) == (61_148, 61_148, 29_419_156)


def test_channel_rounding():
    assert [make_divisible(v) for v in (32, 57.6, 103.68, 67.2, 117.6)] == [32, 56, 104, 64, 120]
    assert make_divisible(3) == 8
    assert stage_channels(CPMobileConfig()) == [32, 32, 56, 104]


# Per-layer table of the baseline's README: (module, input shape, params, MACs).
def _layers(model):
    b = model.blocks
    return [
        (model.stem[0], (1, 1, 256, 65), 88, 304_144),
        (model.stem[1], (1, 8, 128, 33), 2_368, 2_506_816),
        (b[0].block[0], (1, 32, 64, 17), 2_176, 2_228_352),
        (b[0].block[1], (1, 64, 64, 17), 704, 626_816),
        (b[0].block[2], (1, 64, 64, 17), 2_112, 2_228_288),
        (b[2].block[1], (1, 64, 64, 17), 704, 331_904),
        (b[2].block[2], (1, 64, 64, 9), 2_112, 1_179_712),
        (b[3].block[0], (1, 32, 64, 9), 2_176, 1_179_776),
        (b[3].block[1], (1, 64, 64, 9), 704, 166_016),
        (b[3].block[2], (1, 64, 32, 9), 3_696, 1_032_304),
        (b[4].block[0], (1, 56, 32, 9), 6_960, 1_935_600),
        (b[4].block[1], (1, 120, 32, 9), 1_320, 311_280),
        (b[4].block[2], (1, 120, 32, 9), 6_832, 1_935_472),
        (b[5].block[2], (1, 120, 32, 9), 12_688, 3_594_448),
        (model.classifier, (1, 104, 32, 9), 1_060, 299_540),
    ]


def test_every_layer_matches_the_baseline_table():
    for module, shape, params, macs in _layers(create_model("cpmobile")):
        c = count(module, shape)
        assert (c.params, c.macs) == (params, macs), module


def test_block_strides_and_shortcuts_follow_the_baseline():
    blocks = create_model("cpmobile").blocks
    strides = [b.block[1][0].stride for b in blocks]
    assert strides == [(1, 1), (1, 1), (1, 2), (2, 1), (1, 1), (1, 1)]
    assert [b.use_shortcut for b in blocks] == [True, True, True, False, True, False]
    assert isinstance(blocks[2].shortcut, torch.nn.AvgPool2d)


def test_block_adds_the_pooled_shortcut_when_it_downsamples():
    block = CPMobileBlock(16, 16, expansion_rate=2.0, stride=(2, 1)).eval()
    x = torch.randn(2, 16, 9, 7)
    out = block(x)
    assert out.shape == (2, 16, 5, 7)
    torch.testing.assert_close(out, torch.relu(block.shortcut(x) + block.block(x)))


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"base_channels": 16, "channels_multiplier": 1.4, "expansion_rate": 1.5},
        {"base_channels": 24, "n_blocks": (1, 1), "strides": ((2, 2, 2),)},
    ],
)
def test_builds_and_backpropagates_on_32_mel_bins(cfg):
    torch.manual_seed(0)
    model = create_model("cpmobile", **cfg)
    out = model(torch.randn(2, 1, 32, 44))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _conv(model, where):
    return dict(model.named_modules())[where]


def test_convolutions_start_he_normal_with_the_fan_out():
    # the baseline's initialize_weights: nn.init.kaiming_normal_(weight, mode="fan_out")
    torch.manual_seed(0)
    model = create_model("cpmobile")
    for where, fan_out in [
        ("blocks.4.block.0.0", 120),  # 1x1 expansion 56 -> 120: fan-in would be 56
        ("blocks.5.block.2.0", 104),  # 1x1 projection 120 -> 104
        ("blocks.4.block.1.0", 120 * 9),  # depthwise 3x3: the groups do not enter the fan-out
    ]:
        w = _conv(model, where).weight.detach()
        expected = (2.0 / fan_out) ** 0.5
        assert abs(w.std().item() / expected - 1) < 0.06, where
        assert abs(w.mean().item()) < 0.1 * expected, where
    # normal, not uniform: a uniform draw never exceeds sqrt(3) standard deviations
    w = _conv(model, "blocks.4.block.0.0").weight.detach()
    assert w.abs().max().item() > 3.0 * w.std().item()


def test_batchnorm_starts_at_one_and_zero_and_no_convolution_has_a_bias():
    model = create_model("cpmobile")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2 + 3 * 6 + 1
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_init_weights_follows_the_baseline_for_biases_norms_and_linear_layers():
    from nas_asc.models.cpmobile import init_weights_

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 256, 3, bias=True)
    linear = torch.nn.Linear(512, 256)
    norm = torch.nn.GroupNorm(4, 16)
    with torch.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(2.0)
    for m in (conv, linear, norm):
        init_weights_(m)
    assert torch.equal(conv.bias, torch.zeros(256))
    assert abs(conv.weight.std().item() / (2.0 / (256 * 9)) ** 0.5 - 1) < 0.03
    assert abs(linear.weight.std().item() / 0.01 - 1) < 0.03
    assert torch.equal(linear.bias, torch.zeros(256))
    assert torch.equal(norm.weight, torch.ones(16)) and torch.equal(norm.bias, torch.zeros(16))


def test_int8_conversion_runs():
    from nas_asc.train.quantize import quantize_ptq

    model = create_model("cpmobile", base_channels=16).eval()
    x = torch.randn(8, 1, 32, 44)
    assert quantize_ptq(model, x)(x).shape == (8, 10)


def test_defaults_are_the_baseline_configuration():
    cfg = get_model_config("cpmobile")()
    assert (cfg.base_channels, cfg.channels_multiplier, cfg.expansion_rate) == (32, 1.8, 2.1)
    assert cfg.n_blocks == (3, 2, 1)
    assert cfg.strides == ((3, 1, 2), (4, 2, 1))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"base_channels": 4}, "base_channels must be an integer >= 8, got 4"),
        ({"channels_multiplier": 0.5}, "channels_multiplier must be a number in \\[1, 4\\]"),
        ({"expansion_rate": 9}, "expansion_rate must be a number in \\[1, 8\\]"),
        ({"n_blocks": (3, 0)}, "n_blocks must be a non-empty list of integers >= 1"),
        ({"strides": ((7, 2, 2),)}, "stride for block 7, but n_blocks \\(3, 2, 1\\) has only 6"),
        ({"strides": ((3, 2),)}, "strides must be \\[block, freq_stride, time_stride\\]"),
        ({"strides": ((3, 1, 2), (3, 2, 1))}, "strides name a block twice"),
    ],
)
def test_bad_config_values_are_refused(cfg, message):
    with pytest.raises(ValueError, match=message):
        CPMobileConfig(**cfg)
