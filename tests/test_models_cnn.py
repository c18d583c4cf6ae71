"""The AI4EDGE student CNNs SM1/SM2/SM3 (shared/seeds/001; official code ipleiria-robotics/DCASE,
``dcase_2023/myDCASE/myLiB/models.py``: ``BM2`` and its ``slightly_more_layers`` variants)."""

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
    get_model_revision,
)
from nas_asc.models.cnn import VARIANTS, CNNConfig
from nas_asc.search.space import load_space

# The official input: 8 kHz, 140 Mel bins, 2048-sample window, hop 1024 -> 8 frames per second
# (Keras input (140, 8, 1): Mel bins first, then frames).
REPORT_INPUT = (1, 1, 140, 8)
PRUNED_SM3 = (20, 22, 22, 24, 24, 16)  # Sec. 5; the code's BM2_slightly_more_layers_bigger_test


def _run_hooked(model: nn.Module, shape, handles: list) -> None:
    """One eval-mode forward of zeros through ``model``, then remove the forward ``handles``."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()


def _out_shapes(model: nn.Module, shape) -> dict[str, tuple[int, ...]]:
    shapes = {}
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
        for n, m in model.named_children()
    ]
    handles += [
        b.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
        for n, b in model.blocks.named_children()
    ]
    _run_hooked(model, shape, handles)
    return shapes


def test_sm1_is_the_official_bm2_layer_by_layer():
    model = create_model("cnn")
    shapes = _out_shapes(model, REPORT_INPUT)
    # Conv-1 | Conv-2, max-pool (1, 2) over time | Conv-3, max-pool (2, 2) | Conv-3_0
    assert [shapes[str(i)] for i in range(4)] == [
        (20, 140, 8),
        (28, 140, 4),
        (28, 70, 2),
        (16, 70, 2),
    ]
    assert (shapes["pool"], shapes["fc1"], shapes["fc2"]) == ((16, 1, 1), (256,), (10,))
    blocks = list(model.blocks)
    assert [b.conv.kernel_size for b in blocks] == [(7, 5), (7, 3), (3, 7), (7, 5)]
    assert [b.conv.padding for b in blocks] == [(3, 2), (3, 1), (1, 3), (3, 2)]  # "same"
    # the first convolution is linear, the others carry their own ReLU before the BatchNorm
    assert [isinstance(b.conv_act, nn.ReLU) for b in blocks] == [False, True, True, True]
    assert all((b.bn.eps, b.bn.momentum) == (1e-3, 0.01) for b in blocks)  # Keras defaults
    assert [getattr(b.pool, "kernel_size", None) for b in blocks] == [None, (1, 2), (2, 2), None]
    assert [getattr(b.drop, "p", 0.0) for b in blocks] == [0.0, 0.1, 0.3, 0.3]
    assert model.drop.p == 0.4


def test_sm2_and_sm3_are_the_official_six_layer_students():
    for variant, inner in (("sm2", 24), ("sm3", 28)):
        model = create_model("cnn", variant=variant)
        assert model.filters == (20, inner, inner, inner, inner, 16)
        shapes = _out_shapes(model, REPORT_INPUT)
        assert [shapes[str(i)][1:] for i in range(6)] == [
            (140, 8),
            (140, 4),
            (140, 4),
            (70, 2),
            (70, 2),
            (70, 2),
        ]
        assert [getattr(b.drop, "p", 0.0) for b in model.blocks] == [0.0, 0.1, 0.0, 0.3, 0.3, 0.3]


# Keras model.summary() of the official BM2: parameters per layer (BatchNorm: gamma, beta and
# the two moving statistics, which are buffers here)
BM2_LAYERS = {
    "Conv-1": 720, "batch_normalization": 80, "Conv-2": 11_788, "batch_normalization_1": 112,
    "Conv-3": 16_492, "batch_normalization_2": 112, "Conv-3_0": 15_696,
    "batch_normalization_3": 64, "lastLayer": 4_352, "dense": 2_570,
}  # fmt: skip


def _keras_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for n, b in module.named_buffers() if not n.endswith("num_batches_tracked")
    )


def test_parameters_per_layer_are_the_official_ones():
    model = create_model("cnn")
    ours = []
    for block in model.blocks:
        ours += [_keras_count(block.conv), _keras_count(block.bn)]
    ours += [_keras_count(model.fc1), _keras_count(model.fc2)]
    assert ours == list(BM2_LAYERS.values())
    assert sum(ours) == 51_986  # Keras "Total params" (51,802 trainable)


# Keras total params of BM2, BM2_slightly_more_layers(_bigger) and ..._bigger_test
KERAS_TOTALS = {
    "sm1": ({}, 51_986),
    "sm2": ({"variant": "sm2"}, 68_090),
    "sm3": ({"variant": "sm3"}, 85_194),
    "sm3_pruned": ({"variant": "sm3", "filters": PRUNED_SM3}, 64_290),
}


@pytest.mark.parametrize("name", sorted(KERAS_TOTALS))
def test_keras_totals_of_the_official_students(name):
    cfg, total = KERAS_TOTALS[name]
    assert _keras_count(create_model("cnn", **cfg)) == total


def _nessi_tflite(model: nn.Module, shape) -> tuple[int, int]:
    """Size (bytes) and MACs as NeSsi reports them for the official int8 TFLite model.

    Read off NeSsi's analysis of the official ``resultados/AI4EDGE_4/student.tflite``: int8
    weights, int32 biases (4 bytes), the first BatchNorm folded into its (linear) convolution,
    each later one (it follows a ReLU) an int8 scale and an int8 shift per channel; 16 bytes of
    int32 operands (the global mean's axes, the flatten's shape). MACs: convolutions without
    bias, one per input element of every pooling window and of the global mean, one per output
    element of each BatchNorm's addition, ``in * out`` per dense layer.
    """
    size = 16
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            size += m.weight.numel() + 4 * m.bias.numel()
    for block in model.blocks:
        if isinstance(block.conv_act, nn.ReLU):
            size += 2 * block.bn.num_features
    macs = 0

    def hook(m, inputs, output):
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            macs += output.numel() * m.weight[0].numel()
        elif isinstance(m, nn.Linear):
            macs += m.weight.numel()
        elif isinstance(m, (nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
            macs += inputs[0].numel()  # windows tile the input exactly on the official input
        elif isinstance(m, nn.BatchNorm2d) and m is not model.blocks[0].bn:
            macs += output.numel()

    _run_hooked(model, shape, [m.register_forward_hook(hook) for m in model.modules()])
    return size, macs


def test_nessi_figures_of_the_official_student_tflite():
    # NeSsi on resultados/AI4EDGE_4/student.tflite (the int8 BM2): 52,852 B, 25,475,456 MACs
    assert _nessi_tflite(create_model("cnn"), REPORT_INPUT) == (52_852, 25_475_456)


# Table 1 (bytes as NeSsi's "# Parameters", MACs in millions, two decimals, truncated: SM1 is
# 25.475 M); SM3 before pruning from Sec. 3.1/5 ("86116 parameters, 37 million MAC").
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
    assert int(nessi_macs / 1e4) / 100 == macs_m


def test_sm3_before_pruning_matches_the_text():
    size, macs = _nessi_tflite(create_model("cnn", variant="sm3"), REPORT_INPUT)
    assert size == 86_116
    assert round(macs / 1e6) == 37


def test_text_figures_of_the_pruned_sm3_are_not_reproducible():
    # Sec. 5 says the pruned SM3 has 61.2 k parameters and 25.7 M MACs; its own layer list
    # (20, 22, 22, 24, 24, 16 filters) gives Table 1's 65.19 k and 26.71 M (NeSsi rule) instead.
    size, macs = _nessi_tflite(create_model("cnn", variant="sm3", filters=PRUNED_SM3), REPORT_INPUT)
    assert (size, int(macs / 1e4) / 100) == (65_192, 26.71)
    assert round(size / 1e3, 1) != 61.2 and round(macs / 1e6, 1) != 25.7


# Exact counts under the DCASE rule of nas_asc.complexity (int8: bytes == params).
DCASE_COUNTS = {
    "sm1": ({}, 51_802, 25_449_026),
    "sm2": ({"variant": "sm2"}, 67_826, 29_285_106),
    "sm3": ({"variant": "sm3"}, 84_898, 36_993_538),
    "sm3_pruned": ({"variant": "sm3", "filters": PRUNED_SM3}, 64_034, 26_694_538),
}


@pytest.mark.parametrize("name", sorted(DCASE_COUNTS))
def test_dcase_rule_counts_at_the_report_input(name):
    cfg, params, macs = DCASE_COUNTS[name]
    c = count(create_model("cnn", **cfg), REPORT_INPUT)
    assert (c.params, c.param_bytes, c.macs) == (params, params, macs)


def test_defaults_build_sm1_within_the_dcase_budget():
    cfg = get_model_config("cnn")()
    assert cfg.variant == "sm1" and cfg.width == 1.0 and cfg.layer_filters() == (20, 28, 28, 16)
    assert (cfg.dense_units, cfg.dropout) == (256, None)
    assert get_model_revision("cnn") == 2
    assert DEFAULT_BUDGET.fits(count(create_model("cnn"), REPORT_INPUT))
    # SM3 is over budget on purpose (37 M MACs): the report prunes it
    assert not DEFAULT_BUDGET.fits(count(create_model("cnn", variant="sm3"), REPORT_INPUT))


def test_weights_start_as_keras_initializes_them():
    model = create_model("cnn")
    assert all(m.bias.abs().sum() == 0 for m in model.modules() if isinstance(m, nn.Conv2d))
    w = model.blocks[1].conv.weight  # Glorot uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= (6 / (20 * 21 + 28 * 21)) ** 0.5


def test_dropout_none_is_official_and_a_number_sets_every_rate():
    assert CNNConfig().layer_dropouts() == (0.0, 0.1, 0.3, 0.3)
    assert CNNConfig().head_dropout() == 0.4
    cfg = CNNConfig(variant="sm2", dropout=0.2)
    assert cfg.layer_dropouts() == (0.0, 0.2, 0.0, 0.2, 0.2, 0.2) and cfg.head_dropout() == 0.2
    model = create_model("cnn", dropout=0.0)
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", [(2, 1, 32, 44), (2, 1, 140, 8), (2, 1, 256, 44)])
def test_variants_run_forward_and_backward_on_any_input_size(variant, shape):
    torch.manual_seed(0)
    model = create_model("cnn", variant=variant, width=0.25)
    out = model(torch.randn(shape))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_it_quantizes_to_int8():
    from nas_asc.train.quantize import quantize_ptq

    torch.manual_seed(0)
    model = create_model("cnn", width=0.5).eval()
    x = torch.randn(8, 1, 32, 8)
    int8 = quantize_ptq(model, x)
    assert int8(x).shape == (8, 10)
    assert any("quantized" in type(m).__module__ for m in int8.modules())


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
    with pytest.raises(ValueError, match="dropout must be None or in \\[0, 1\\)"):
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
