"""BC-Res2Net family (shared/seeds/004, Table 1 and the complexity of Table 3; the authors'
``BcRes2NetModel_resnorm_bn_quant`` in ``wsdragon2010/GZHU_DCASE2023_TASK1``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from toydata import toy_set

from nas_asc.complexity import count
from nas_asc.models import (
    bcres2net,  # noqa: F401  (registers the family)
    create_model,
    get_model_config,
    get_model_revision,
)
from nas_asc.models.bcres2net import BCRes2Block, BCRes2NetConfig, FreqBatchNorm
from nas_asc.models.layers import AdaResNorm, ResNorm, SubSpectralNorm
from nas_asc.search.space import load_space
from nas_asc.train.loop import TrainConfig, train
from nas_asc.train.quantize import quantize_ptq

# The student's input: 256 log-mel bins; 1 s at 32 kHz with hop 1024 gives 32 frames.
REPORT_INPUT = (1, 1, 256, 32)


def _transition_params(cin: int, cout: int, scale: int = 4, sub_bands: int = 4) -> int:
    """Hand count of a transition block (module docstring), all convs biased."""
    entry = cin * cout + cout + 2 * cout  # 1x1 conv + BatchNorm
    return entry + _normal_params(cout, scale, sub_bands) + cout * cout + cout  # + closing 1x1


def _normal_params(c: int, scale: int = 4, sub_bands: int = 4) -> int:
    """Hand count of a normal block: per group a (3,1) and a (1,3) conv w->w and an SSN."""
    w = c // scale
    return scale * (2 * (3 * w * w + w) + 2 * w * sub_bands)


# (cin, cout) of the C=24 student's blocks, stage by stage
STUDENT_BLOCKS = [(48, 24), (24, 24), (24, 36), (36, 36), (36, 48)] + [(48, 48)] * 3
STUDENT_BLOCKS += [(48, 60)] + [(60, 60)] * 3


@pytest.mark.parametrize(("cin", "cout"), sorted(set(STUDENT_BLOCKS)))
def test_blocks_match_the_hand_count(cin, cout):
    expected = _normal_params(cout) if cin == cout else _transition_params(cin, cout)
    assert count(BCRes2Block(cin, cout), (cin, 8, 8)).params == expected


# the per-bin BatchNorms of the official student, in forward order: (features index, bins)
INPUT_BN = (0, 256)  # bn0, over the 256 Mel bins
RESNORM_BNS = [(1, 256), (5, 128), (9, 64), (15, 32), (20, 32)]  # bn1..bn5: x + BN(x)


def test_student_total_is_the_hand_count():
    stem = 48 * 25 + 48
    blocks = sum(
        _normal_params(b) if a == b else _transition_params(a, b) for a, b in STUDENT_BLOCKS
    )
    head = (60 * 3 * 25 + 60) + (60 * 96 + 96) + (96 * 10 + 10)  # 5x5 in 20 groups, 1x1, 1x1
    assert stem + blocks + head == 74_266
    norms = 2 * INPUT_BN[1] + sum(2 * bins for _, bins in RESNORM_BNS)
    assert norms == 512 + 1_024
    assert count(create_model("bcres2net"), REPORT_INPUT).params == 74_266 + norms == 75_802


def test_per_bin_batchnorms_have_the_official_sizes_and_places():
    model = create_model("bcres2net")
    for index, bins in [INPUT_BN, *RESNORM_BNS]:
        layer = model.features[index]
        assert isinstance(layer, FreqBatchNorm) and layer.bins == bins
        assert layer.residual == (index != INPUT_BN[0])
        assert sum(p.numel() for p in layer.parameters()) == 2 * bins
    assert sum(isinstance(m, FreqBatchNorm) for m in model.modules()) == 6
    assert isinstance(model.features[2], nn.Conv2d)  # the stem follows bn0 and bn1
    assert [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)] == [6, 10]


def test_student_layer_shapes():
    shapes = {k: tuple(v.shape) for k, v in create_model("bcres2net").state_dict().items()}
    assert shapes["features.0.bn.weight"] == (256,)
    assert shapes["features.1.bn.running_var"] == (256,)
    assert shapes["features.2.weight"] == (48, 1, 5, 5)
    assert shapes["features.3.pointwise.0.weight"] == (24, 48, 1, 1)
    assert shapes["features.3.freq_convs.0.weight"] == (6, 6, 3, 1)
    assert shapes["features.3.freq_norms.0.bn.weight"] == (24,)  # 6 channels x 4 sub-bands
    assert shapes["features.3.time_convs.3.weight"] == (6, 6, 1, 3)
    assert shapes["features.3.project.0.weight"] == (24, 24, 1, 1)
    assert shapes["features.20.bn.weight"] == (32,)
    assert shapes["head_conv.weight"] == (60, 3, 5, 5)
    assert shapes["head_pointwise.weight"] == (96, 60, 1, 1)
    assert shapes["classifier.weight"] == (10, 96, 1, 1)


def test_student_with_the_unused_batchnorms_is_table3():
    # Table 3 lists 76,906 parameters: the official blocks also build four BatchNorms each
    # (``t_ssn``, 2 * C / 4 per group) that their forward never calls: 1,104 at C = 24
    unused = sum(4 * 2 * (b // 4) for _, b in STUDENT_BLOCKS)
    assert unused == 1_104
    c = count(create_model("bcres2net"), REPORT_INPUT)
    assert c.params + unused == 76_906
    assert c.param_bytes == c.params  # int8 everywhere under the DCASE rule


def test_student_reproduces_table3_macs():
    c = count(create_model("bcres2net"), REPORT_INPUT)
    assert c.macs == 23_971_450  # BatchNorm: 2 * C each, the per-bin ones' 1,536 included
    assert round(c.macs / 1e6, 2) == 23.97


def test_revision_2_is_the_authors_network():
    assert get_model_revision("bcres2net") == 2


def test_freq_batchnorm_normalizes_each_bin_over_batch_channels_and_time():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 5)
    layer = FreqBatchNorm(4, residual=True).train()
    flat = x.transpose(0, 2).reshape(4, -1)  # bin -> its batch x channel x time values
    mean, var = flat.mean(1), flat.var(1, correction=0)
    expected = x + (x - mean.view(1, 1, 4, 1)) / torch.sqrt(var.view(1, 1, 4, 1) + 1e-5)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
    # fewer bins than it was built for: the lowest bins' statistics; eval is per-bin affine
    layer.eval()
    with torch.no_grad():
        layer.bn.running_mean.copy_(torch.arange(4.0))
    assert torch.equal(layer(x[:, :, :3]), layer(x)[:, :, :3])


def test_head_groups_matter_for_the_macs():
    # Table 1 reads "Group=2.5C" (depthwise); that network would count 23.64 M, not 23.97 M.
    depthwise = count(create_model("bcres2net", head_groups=60), REPORT_INPUT)
    assert depthwise.macs == 23_635_450 and round(depthwise.macs / 1e6, 2) == 23.64


def test_stem_strides_frequency_only():
    model = create_model("bcres2net").eval()
    stem = next(m for m in model.features if isinstance(m, nn.Conv2d))
    assert stem(torch.zeros(1, 1, 256, 32)).shape == (1, 48, 128, 32)
    feats = model.features(torch.zeros(REPORT_INPUT))
    assert feats.shape == (1, 60, 32, 8)  # (2.5C, F/8, T/4)


def test_defaults_are_the_submitted_student():
    cfg = get_model_config("bcres2net")()
    assert (cfg.width, cfg.scale, cfg.depths, cfg.stem_stride) == (24, 4, (2, 2, 4, 4), (2, 1))
    assert (cfg.norm, cfg.n_mels, cfg.head_groups, cfg.dropout) == ("resnorm_bn", 256, 20, 0.1)


# ------------------------------------------------------------------ shapes, blocks, validation


@pytest.mark.parametrize("n_mels", [32, 64, 128, 256])
def test_every_mel_count_runs_forward_and_backward(n_mels):
    torch.manual_seed(0)
    model = create_model("bcres2net", width=8, n_mels=n_mels)
    out = model(torch.randn(2, 1, n_mels, 44))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_inputs_with_more_bins_than_n_mels_are_refused():
    model = create_model("bcres2net", width=8, n_mels=64)
    assert model(torch.randn(2, 1, 40, 44)).shape == (2, 10)  # fewer: the lowest bins' stats
    with pytest.raises(ValueError, match="built for n_mels=64 Mel bins, got an input with 128"):
        model(torch.randn(2, 1, 128, 44))


def test_block_stride_dilation_and_scale():
    x = torch.randn(2, 8, 16, 10)
    assert BCRes2Block(8, 8, stride=2)(x).shape == (2, 8, 8, 10)
    assert BCRes2Block(8, 8, dilation=2)(x).shape == x.shape
    assert BCRes2Block(8, 12, scale=2)(x).shape == (2, 12, 16, 10)
    assert sum(isinstance(m, SubSpectralNorm) for m in BCRes2Block(8, 12, scale=2).modules()) == 2
    with pytest.raises(ValueError, match="multiple of scale 4, got 10"):
        BCRes2Block(8, 10)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (dict(width=3), "BC-Res2Net width must be an integer >= 4, got 3"),
        (dict(scale=0), "scale must be an integer >= 1"),
        (dict(width=12), "head_groups must be an integer dividing the last stage's 32 channels"),
        (dict(stem_stride=(2,)), "stem_stride must be two integers >= 1"),
        (dict(sub_bands=0), "sub_bands must be an integer >= 1"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
        (dict(depths=(1, 1)), "must have equal length"),
        (dict(pool_after=(5,)), r"pool_after must name stages 0..3"),
        (
            dict(norm=True),
            r"norm must be one of \['resnorm_bn', 'resnorm', 'adaresnorm', 'none'\], got True",
        ),
        (dict(n_mels=0), "BC-Res2Net n_mels must be an integer >= 1, got 0"),
    ],
)
def test_bad_configs_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        BCRes2NetConfig(**bad)


# builds and runs four full-size networks (5 s)
@pytest.mark.slow
def test_norm_choices_change_only_the_residual_normalizations():
    # the report's ResNorm (Kim et al.) on the input (1 channel) and after each stage (24, 36,
    # 48, 60 channels at C = 24); the published counts on 256 bins are pinned above
    shape = (1, 1, 64, 32)
    res = count(create_model("bcres2net", norm="resnorm"), shape)
    none = count(create_model("bcres2net", norm="none"), shape)
    ada = count(create_model("bcres2net", norm="adaresnorm"), shape)
    official = count(create_model("bcres2net", n_mels=64), shape)
    assert (res.params, res.macs) == (none.params, none.macs)
    assert res.params == 74_266 and ada.macs == res.macs
    channels = 1 + 24 + 36 + 48 + 60
    assert ada.params - res.params == 3 * channels
    assert ada.param_bytes - res.param_bytes == 4 * 3 * channels  # deploy_float: float32
    # the official: an input BatchNorm and x + BatchNorm over 64, 64, 32, 16 and 8 bins
    bins = 2 * 64 + 2 * (64 + 32 + 16 + 8 + 8)
    assert official.params - res.params == official.macs - res.macs == bins
    assert official.param_bytes == official.params  # int8 under the rule, like any BatchNorm
    model = create_model("bcres2net", width=8, norm="adaresnorm")
    assert sum(isinstance(m, AdaResNorm) for m in model.modules()) == 5
    assert not any(isinstance(m, FreqBatchNorm) for m in model.modules())
    assert model(torch.randn(2, 1, 32, 44)).shape == (2, 10)
    model = create_model("bcres2net", width=8, norm="resnorm")
    assert sum(isinstance(m, ResNorm) for m in model.modules()) == 5
    assert not any(isinstance(m, FreqBatchNorm) for m in model.modules())


# ------------------------------------------------------------------ int8 PTQ


# a full-size PTQ (6 s)
@pytest.mark.slow
def test_ptq_keeps_subspectralnorm_in_float_between_int8_convolutions():
    # it cannot fold into its convolution (nas_asc.train.quantize explains the choice); the six
    # per-bin BatchNorms become quantized BatchNorms, as in the authors' int8 submission
    torch.manual_seed(0)
    model = create_model("bcres2net", width=8, n_mels=64).eval()
    x = torch.randn(8, 1, 64, 44)
    q = quantize_ptq(model, x)
    assert q(x).shape == (8, 10)
    n_ssn = sum(isinstance(m, SubSpectralNorm) for m in model.modules())
    assert n_ssn == 48 and sum(isinstance(m, SubSpectralNorm) for m in q.modules()) == n_ssn
    assert sum(isinstance(m, torch.ao.nn.quantized.BatchNorm2d) for m in q.modules()) == 6
    assert any(isinstance(m, torch.ao.nn.quantized.Conv2d) for m in q.modules())


@pytest.mark.slow
def test_int8_agrees_with_fp32_after_training():
    # the conformance suite checks agreement after 15 Adam steps; this uses the training loop
    torch.manual_seed(0)
    data = toy_set()
    model = create_model("bcres2net", width=16, n_classes=3, n_mels=data.x.shape[2])
    cfg = TrainConfig(epochs=6, batch_size=16, lr=1e-2, mixstyle_p=0.0, kd_lambda=0.0)
    train(model, data, cfg, seed=0)
    q = quantize_ptq(model, data.x[:64])
    test = toy_set(seed=2)
    with torch.no_grad():
        agree = (model(test.x).argmax(1) == q(test.x).argmax(1)).float().mean().item()
    assert agree >= 0.9


# ------------------------------------------------------------------ search space


# counts the space's corners at full size (5 s)
@pytest.mark.slow
def test_space_loads_and_straddles_the_budget():
    space = load_space("bcres2net")
    assert space.model == "bcres2net"
    dim = next(d for d in space.dimensions if d.name == "model.width")
    # the space's norms are the report's ResNorm, AdaResNorm and none
    assert "resnorm_bn" not in next(d for d in space.dimensions if d.name == "model.norm").choices
    sizes = {
        w: count(create_model("bcres2net", width=w, norm="resnorm"), (1, 1, 64, 44)).param_bytes
        for w in (int(dim.low), 24, int(dim.high))
    }
    assert sizes[24] == 74_266
    assert sizes[int(dim.low)] < 20_000
    assert sizes[int(dim.high)] > 128_000  # recorded as infeasible, never trained


@pytest.mark.parametrize("which", ["low", "high"])
def test_space_corners_build_and_run(which):
    cfg = load_space("bcres2net").corner(which)
    model = create_model("bcres2net", **cfg["model"])
    assert model(torch.randn(2, 1, cfg["frontend"]["n_mels"], 44)).shape == (2, 10)
