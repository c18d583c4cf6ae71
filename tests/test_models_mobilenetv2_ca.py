"""MobileNetV2 + coordinate attention (shared/seeds/002, Tables 2-4): per-layer parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toydata import reestimate_batchnorm

from nas_asc.complexity import count
from nas_asc.models import (
    create_model,
    get_model_config,
    get_model_revision,
    mobilenetv2_ca,  # noqa: F401  (registers the family)
)
from nas_asc.models.mobilenetv2_ca import (
    CoordAttention,
    InvertedResidual,
    MobileNetV2CAConfig,
    PlainBatchNorm,
    conv_bn_act,
)

# The report's input: 128 Mel bins x 36 frames; deltas and delta-deltas are stacked in the model.
REPORT_INPUT = (1, 1, 128, 36)


def _keras_count(module: nn.Module) -> int:
    """Parameters as Keras counts them: weights, biases and BatchNorm moving mean and variance."""
    stats = sum(
        b.numel()
        for name, b in module.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    )
    return sum(p.numel() for p in module.parameters()) + stats


# Table 2 rows "Bottleneck" / "Bottleneck-res": (cin, cout, stride) -> published parameters.
TABLE2_BOTTLENECKS = [
    ((32, 32, 2), 5_472),
    ((32, 32, 1), 5_472),
    ((32, 48, 2), 6_576),
    ((48, 48, 1), 11_280),
    ((48, 64, 2), 12_896),
    ((64, 64, 1), 19_136),
]


@pytest.mark.parametrize(("args", "published"), TABLE2_BOTTLENECKS)
def test_bottlenecks_reproduce_table2_rows(args, published):
    cin, cout, stride = args
    assert _keras_count(InvertedResidual(cin, cout, stride=stride, expansion=2.0)) == published


def test_bottleneck_by_hand():
    # Table 3 for 32 -> 32: 1x1 conv 32 -> 64 (2048 + 64 bias), BN 4 * 64, depthwise 3x3
    # (576 + 64), BN 4 * 64, 1x1 conv 64 -> 32 (2048 + 32), BN 4 * 32
    assert 2_112 + 256 + 640 + 256 + 2_080 + 128 == 5_472


def test_stem_head_and_coordinate_attention_reproduce_table2_rows():
    stem = conv_bn_act(3, 32, 3, stride=2, bias=True)
    assert _keras_count(stem[0]) == 896  # Conv2D 32, 3x3
    assert _keras_count(stem[1]) == 128  # BN + ReLU
    # Coordinate attention, r = 4 on 64 channels: 1x1 64 -> 16 (1040), BN 16 (64),
    # two 1x1 16 -> 64 (1088 each)
    assert _keras_count(CoordAttention(64, reduction=4)) == 3_280
    head = create_model("mobilenetv2_ca").head
    rows = [_keras_count(m) for m in head]
    # Conv2D 64 1x1 + BN + ReLU, BN + ReLU, Conv2D 64 1x1, Dropout, CA, BN, Conv2D 10, BN
    assert rows == [4_160 + 256, 128, 0, 4_096, 0, 3_280, 128, 640, 20]


def test_whole_model_reproduces_table2_total():
    model = create_model("mobilenetv2_ca")
    assert _keras_count(model) == 110_452
    assert [_keras_count(b) for b in model.blocks] == [p for _, p in TABLE2_BOTTLENECKS[:2]] + [
        5_472,
        6_576,
        11_280,
        11_280,
        12_896,
        19_136,
        19_136,
    ]


def test_reference_complexity_under_the_dcase_rule():
    # PyTorch keeps BatchNorm moving statistics as buffers: 110,452 - 4,564 = 105,888 parameters.
    # Table 8 lists 11.186 M MACs; this network counts 11,238,704 (0.47 % more, see docstring).
    c = count(create_model("mobilenetv2_ca"), REPORT_INPUT)
    assert (c.params, c.param_bytes, c.macs) == (105_888, 105_888, 11_238_704)
    assert abs(c.macs - 11_186_000) / 11_186_000 < 0.005


def test_feature_map_shapes_follow_table2():
    model = create_model("mobilenetv2_ca").eval()
    x = model.stem(model.deltas(torch.zeros(1, 1, 128, 36)))
    assert x.shape == (1, 32, 64, 18)
    shapes = []
    for block in model.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes[2] == (32, 32, 9)
    assert shapes[5] == (48, 16, 5)
    assert shapes[8] == (64, 8, 3)


def test_residual_only_when_the_block_keeps_its_shape():
    assert InvertedResidual(32, 32).use_residual
    assert not InvertedResidual(32, 32, stride=2).use_residual
    assert not InvertedResidual(32, 48).use_residual


def test_block_attention_inserts_coordinate_attention_after_the_depthwise_conv():
    block = InvertedResidual(16, 16, expansion=2.0, coord_attention=True)
    assert isinstance(block.block[2], CoordAttention)
    assert block(torch.randn(2, 16, 9, 7)).shape == (2, 16, 9, 7)
    plain = create_model("mobilenetv2_ca", width=16)
    attended = create_model("mobilenetv2_ca", width=16, block_attention=True)
    assert sum(p.numel() for p in attended.parameters()) > sum(
        p.numel() for p in plain.parameters()
    )


def test_plain_batchnorm_has_no_parameters_and_stays_float():
    norm = PlainBatchNorm(8)
    assert norm.deploy_float
    assert list(norm.parameters()) == []


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"width": 8, "expansion": 1.5, "depth": 1, "deltas": 0},
        {"width": 12, "expansion": 3.0, "depth": 2, "block_attention": True, "deltas": 1},
    ],
)
def test_builds_and_backpropagates_on_32_mel_bins(cfg):
    torch.manual_seed(0)
    model = create_model("mobilenetv2_ca", **cfg)
    out = model(torch.randn(2, 1, 32, 44))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_int8_conversion_runs_with_attention():
    from nas_asc.train.quantize import quantize_ptq

    torch.manual_seed(0)
    model = create_model("mobilenetv2_ca", width=8, depth=1, block_attention=True).eval()
    x = torch.randn(8, 1, 32, 44)
    int8 = quantize_ptq(model, x)
    with torch.no_grad():
        got, expected = int8(x), model(x)
    assert got.shape == (8, 10)
    assert (got - expected).abs().max() <= 0.1 * expected.abs().max()
    modules = dict(int8.named_modules())
    conv = modules["stem.0"]  # the BatchNorm ("stem.1") is folded into it, the ReLU6 not fused
    assert type(conv).__name__ == "Conv2d" and "quantized" in type(conv).__module__
    assert "stem.1" not in modules and isinstance(modules["stem.2"], nn.ReLU6)


def test_defaults_are_the_report_configuration():
    cfg = get_model_config("mobilenetv2_ca")()
    assert (cfg.width, cfg.expansion, cfg.depth, cfg.ca_reduction) == (32, 2.0, 3, 4)
    assert (cfg.dropout, cfg.deltas, cfg.block_attention) == (0.3, 2, False)
    assert cfg.activation == "relu6"  # the official coordinate-attention code's (revision 2)
    assert get_model_revision("mobilenetv2_ca") == 2


def _activations(model):
    return [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]


@pytest.mark.parametrize(("name", "cls"), [("relu6", nn.ReLU6), ("relu", nn.ReLU)])
def test_activation_applies_to_stem_bottlenecks_and_head(name, cls):
    # stem 1, nine bottlenecks 2 each, head 2 (Table 2's "BN + RELU" rows and Tables 3-4)
    model = create_model("mobilenetv2_ca", activation=name)
    assert _activations(model) == [cls] * (1 + 9 * 2 + 2)
    assert isinstance(model.stem[2], cls) and isinstance(model.head[2], cls)
    # coordinate attention keeps h-swish whatever the activation
    assert isinstance(model.head[5].reduce[2], nn.Hardswish)


def test_relu6_clamps_and_costs_nothing_extra():
    model = create_model("mobilenetv2_ca").eval()
    with torch.no_grad():
        stem = model.stem(model.deltas(100 * torch.randn(2, 1, 128, 36)))
    assert stem.max().item() == 6.0 and stem.min().item() == 0.0
    # the default (ReLU6) counts the same: see test_reference_complexity_under_the_dcase_rule
    relu = count(create_model("mobilenetv2_ca", activation="relu"), REPORT_INPUT)
    assert (relu.params, relu.param_bytes, relu.macs) == (105_888, 105_888, 11_238_704)


def test_hswish_is_the_official_formula():
    # houqb/CoordAttention: h_swish(x) = x * ReLU6(x + 3) / 6; the gates are plain sigmoids
    x = torch.linspace(-8, 8, 1601)
    torch.testing.assert_close(nn.Hardswish()(x), x * nn.functional.relu6(x + 3) / 6)
    ca = CoordAttention(64, reduction=4)
    assert isinstance(ca.gate_f[1], nn.Sigmoid) and isinstance(ca.gate_t[1], nn.Sigmoid)
    assert ca.reduce[0].out_channels == 16 and CoordAttention(64, 32).reduce[0].out_channels == 8


def test_bottleneck_order_follows_hou_et_al():
    # pw conv, BN, act; dw conv, BN, act; coordinate attention; pw-linear conv, BN
    block = InvertedResidual(16, 24, 2, expansion=6, coord_attention=True, activation="relu6")
    kinds = [
        [type(m) for m in unit] if isinstance(unit, nn.Sequential) else type(unit)
        for unit in block.block
    ]
    assert kinds == [
        [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6],
        [nn.Conv2d, nn.BatchNorm2d, nn.ReLU6],
        CoordAttention,
        [nn.Conv2d, nn.BatchNorm2d],
    ]
    assert block.block[1][0].groups == 96 and block.block[1][0].padding == (1, 1)
    assert InvertedResidual(16, 16).block[0][2].__class__ is nn.ReLU  # the blocks family's default


def test_qat_trains_and_converts_with_relu6():
    from nas_asc.train.quantize import convert_qat, prepare_qat

    torch.manual_seed(0)
    model = create_model("mobilenetv2_ca", width=8, depth=1, dropout=0.0)
    x, y = torch.randn(16, 1, 32, 44), torch.arange(16) % 10
    qat = prepare_qat(model, x)
    kinds = {type(m).__name__ for m in qat.modules()}
    assert "ConvBn2d" in kinds and "ReLU6" in kinds and "ConvBnReLU2d" not in kinds
    optimizer = torch.optim.SGD(qat.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(qat(x), y).backward()
        optimizer.step()
    # running statistics of this batch, so that eval-mode logits have their trained size
    reestimate_batchnorm(qat, x)
    qat.eval()
    qat.apply(torch.ao.quantization.disable_observer)
    with torch.no_grad():
        fake = qat(x)
        int8 = convert_qat(qat)(x)
    step = fake.unique().diff().min()  # the fake-quantized logits lie on the output's int8 grid
    assert fake.abs().max() > 5 * step
    # int8 kernels round differently from fake quantization: a few steps of the output grid
    assert (int8 - fake).abs().max() <= 4 * step + 1e-6


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("width", 3, "MobileNetV2-CA width must be an integer >= 4, got 3"),
        ("expansion", 0.5, "MobileNetV2-CA expansion must be a number in \\[1, 8\\]"),
        ("depth", 0, "MobileNetV2-CA depth must be an integer in \\[1, 8\\]"),
        ("block_attention", "yes", "block_attention must be true or false"),
        ("dropout", 1.0, "dropout must be in \\[0, 1\\)"),
        ("deltas", 4, "deltas must be 0, 1 or 2"),
        ("activation", "gelu", "MobileNetV2-CA activation must be one of \\['relu', 'relu6'\\]"),
    ],
)
def test_bad_config_values_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        MobileNetV2CAConfig(**{field: value})
