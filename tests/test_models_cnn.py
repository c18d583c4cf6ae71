"""The AI4EDGE student CNNs SM1/SM2/SM3 (shared/seeds/001, Sec. 3.1 and 5, Table 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.complexity import count
from nas_asc.models import (
    cnn,  # noqa: F401  (registers the family)
    create_model,
    get_model_config,
)
from nas_asc.models.cnn import VARIANTS, CNNConfig
from nas_asc.search.space import load_space

# The report's input: 8 kHz, 140 Mel bins, 2048-sample window, hop 1024 -> 8 frames per second.
REPORT_INPUT = (1, 1, 140, 8)
PRUNED_SM3 = (20, 22, 22, 24, 24, 16)  # Sec. 5: SM3 after removing 20 filters


def _nessi_tflite(model: nn.Module, shape) -> tuple[int, int]:
    """Size (bytes) and MACs as NeSsi reports them for the int8 TFLite model.

    NeSsi sums the bytes of every constant tensor: int8 weights, int32 biases (4 bytes), and
    for a BatchNorm that cannot be folded (it follows the ReLU) an int8 scale and an int8 shift
    per channel. It counts convolution MACs without bias, one MAC per element in every pooling
    window, one per output element of the BatchNorm addition, and ``in * out`` per dense layer.
    """
    size = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            size += m.weight.numel() + 4 * m.bias.numel()
        elif isinstance(m, nn.BatchNorm2d):
            size += 2 * m.num_features
    macs = 0

    def hook(m, inputs, output):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += output.numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            macs += m.weight.numel()
        elif isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            macs += inputs[0].numel()  # windows tile the input exactly on the report's input
        elif isinstance(m, nn.BatchNorm2d):
            macs += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    return size, macs


# Table 1 (bytes as NeSsi's "# Parameters", MACs in millions, two decimals); SM3 before pruning
# from Sec. 3.1/5 ("86116 parameters, 37 million MAC").
PUBLISHED = {
    "sm1": ({}, 52_852, 25.47),
    "sm2": ({"variant": "sm2"}, 68_996, 29.30),
    "sm3_pruned": ({"variant": "sm3", "filters": PRUNED_SM3}, 65_192, 26.71),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_table1_sizes_and_macs_are_reproduced(name):
    cfg, size, macs_m = PUBLISHED[name]
    nessi_size, nessi_macs = _nessi_tflite(create_model("cnn", **cfg), REPORT_INPUT)
    assert nessi_size == size
    assert round(nessi_macs / 1e6, 2) == macs_m


def test_sm3_before_pruning_matches_the_text():
    size, macs = _nessi_tflite(create_model("cnn", variant="sm3"), REPORT_INPUT)
    assert size == 86_116
    assert round(macs / 1e6) == 37


# Exact counts under the DCASE rule of nas_asc.complexity (int8: bytes == params).
DCASE_COUNTS = {
    "sm1": ({}, 52_414, 25_449_638),
    "sm2": ({"variant": "sm2"}, 68_438, 29_285_718),
    "sm3": ({"variant": "sm3"}, 85_510, 36_994_150),
    "sm3_pruned": ({"variant": "sm3", "filters": PRUNED_SM3}, 64_646, 26_695_150),
}


@pytest.mark.parametrize("name", sorted(DCASE_COUNTS))
def test_dcase_rule_counts_at_the_report_input(name):
    cfg, params, macs = DCASE_COUNTS[name]
    c = count(create_model("cnn", **cfg), REPORT_INPUT)
    assert (c.params, c.param_bytes, c.macs) == (params, params, macs)


def _hand_params(filters, kernels, grid=10, dense=44, classes=10) -> int:
    """Per layer: weights k*cin*cout, bias cout, BatchNorm 2*cout; then the dense head."""
    total, cin = 0, 1
    for cout, (kh, kw) in zip(filters, kernels, strict=True):
        total += kh * kw * cin * cout + cout + 2 * cout
        cin = cout
    return total + (cin * grid * dense + dense) + (dense * classes + classes)


def test_parameter_counts_agree_with_a_hand_count_of_the_report_lists():
    # SM1: 700+20+40 | 11760+28+56 | 16464+28+56 | 15680+16+32 | 7084 | 450
    assert _hand_params((20, 28, 28, 16), [(7, 5), (7, 3), (3, 7), (7, 5)]) == 52_414
    for variant in VARIANTS:
        specs = VARIANTS[variant]
        expected = _hand_params([s.filters for s in specs], [s.kernel for s in specs])
        assert count(create_model("cnn", variant=variant), REPORT_INPUT).params == expected


def test_text_figures_of_the_pruned_sm3_are_not_reproducible():
    # Sec. 5 says the pruned SM3 has 61.2 k parameters and 25.7 M MACs; its own layer list
    # (20, 22, 22, 24, 24, 16 filters) gives Table 1's 65.19 k and 26.71 M (NeSsi rule) instead.
    size, macs = _nessi_tflite(create_model("cnn", variant="sm3", filters=PRUNED_SM3), REPORT_INPUT)
    assert (size, round(macs / 1e6, 2)) == (65_192, 26.71)
    assert round(size / 1e3, 1) != 61.2 and round(macs / 1e6, 1) != 25.7


def test_defaults_build_sm1_within_the_dcase_budget():
    cfg = get_model_config("cnn")()
    assert cfg.variant == "sm1" and cfg.width == 1.0 and cfg.layer_filters() == (20, 28, 28, 16)
    assert DEFAULT_BUDGET.fits(count(create_model("cnn"), REPORT_INPUT))
    # SM3 is over budget on purpose (37 M MACs): the report prunes it
    assert not DEFAULT_BUDGET.fits(count(create_model("cnn", variant="sm3"), REPORT_INPUT))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", [(2, 1, 32, 44), (2, 1, 140, 8), (2, 1, 256, 44)])
def test_variants_run_forward_and_backward_on_any_input_size(variant, shape):
    torch.manual_seed(0)
    model = create_model("cnn", variant=variant, width=0.25)
    out = model(torch.randn(shape))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_width_scales_and_rounds_filters():
    assert CNNConfig(width=0.5).layer_filters() == (10, 14, 14, 8)
    assert CNNConfig(variant="sm2", width=0.25).layer_filters() == (5, 6, 6, 6, 6, 4)
    assert CNNConfig(width=0.01).layer_filters() == (1, 1, 1, 1)
    assert CNNConfig(variant="sm3", width=3.0, filters=PRUNED_SM3).layer_filters() == PRUNED_SM3


def test_current_config_rebuilds_the_architecture():
    model = create_model("cnn", variant="sm2", width=0.5)
    assert model.filters == (10, 12, 12, 12, 12, 8)
    rebuilt = create_model("cnn", **vars(model.current_config()))
    assert rebuilt.filters == model.filters


def test_bad_cnn_config_values_are_refused():
    with pytest.raises(ValueError, match="unknown CNN variant 'sm4'"):
        create_model("cnn", variant="sm4")
    with pytest.raises(ValueError, match="width multiplier must be a number > 0"):
        create_model("cnn", width=0)
    with pytest.raises(ValueError, match="one count per layer of sm1 \\(4\\)"):
        create_model("cnn", filters=(8, 8))
    with pytest.raises(ValueError, match="filter counts must be integers >= 1"):
        create_model("cnn", filters=(8, 0, 8, 8))
    with pytest.raises(ValueError, match="dense_units must be an integer >= 1"):
        create_model("cnn", dense_units=0)
    with pytest.raises(ValueError, match="head_grid must be two integers"):
        create_model("cnn", head_grid=(5,))
    with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\)"):
        create_model("cnn", dropout=1.0)


def test_cnn_space_loads_and_straddles_the_budget():
    space = load_space("cnn")
    assert space.model == "cnn"
    shapes = {}
    for which in ("low", "high"):
        cfg = space.corner(which)
        fe = cfg["frontend"]
        frames = fe["sample_rate"] // fe["hop_length"] + 1
        shapes[which] = count(create_model("cnn", **cfg["model"]), (1, fe["n_mels"], frames))
    low, high = shapes["low"], shapes["high"]
    assert DEFAULT_BUDGET.fits(low) and low.param_bytes < 0.25 * DEFAULT_BUDGET.max_param_bytes
    assert high.param_bytes > DEFAULT_BUDGET.max_param_bytes
