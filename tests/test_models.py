"""Model registry and the TF-SepNet family (shared/seeds/003, Tables 1 and 3)."""

from __future__ import annotations

import pytest
import torch

from nas_asc.complexity import count
from nas_asc.models import create_model, get_model_config, list_models, register_model
from nas_asc.models.layers import shuffle_groups_for
from nas_asc.models.tfsepnet import BLOCK_VARIANTS, TFSepNetConfig
from nas_asc.search.space import list_spaces, load_space


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_runs_and_backpropagates(name):
    torch.manual_seed(0)
    model = create_model(name)
    x = torch.randn(3, 1, 64, 44)
    out = model(x)
    assert out.shape == (3, 10)
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; known models: .*tfsepnet"):
        create_model("nope")


def test_unknown_config_field_is_refused():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['depth'\]"):
        create_model("tfsepnet", depth=3)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("tfsepnet", TFSepNetConfig)(lambda cfg: None)


def test_config_defaults_are_the_reference_configuration():
    assert get_model_config("tfsepnet")().width == 40


# Table 3 of the TF-SepNet report: parameters (exact, from the per-layer structure) and MACs
# (millions, two decimals) on a 1x128x44 input.
TABLE3 = {12: (6_838, 1.65), 20: (15_890, 3.42), 40: (54_270, 10.22), 60: (115_150, 20.39)}


@pytest.mark.parametrize("width", sorted(TABLE3))
def test_tfsepnet_reproduces_table3(width):
    params, macs_m = TABLE3[width]
    c = count(create_model("tfsepnet", width=width), (1, 128, 44))
    assert c.params == params
    assert round(c.macs / 1e6, 2) == macs_m


def test_tfsepnet_c40_reference_count_is_exact():
    c = count(create_model("tfsepnet", width=40), (1, 1, 128, 44))
    assert (c.params, c.macs) == (54_270, 10_220_340)


def test_tfsepnet_c160_parameters_match_table3():
    # Table 3 lists 757.05 K parameters; its 242.18 M MACs are not reproducible (see docstring).
    assert count(create_model("tfsepnet", width=160), (1, 128, 44)).params == 757_050


def test_tfsepnet_resnorm_has_fewer_parameters_than_adaresnorm():
    ada = count(create_model("tfsepnet", width=40, norm="adaresnorm"), (1, 128, 44))
    res = count(create_model("tfsepnet", width=40, norm="resnorm"), (1, 128, 44))
    # 5 AdaResNorms with 3 parameters per channel: (80 + 40 + 60 + 80 + 100) * 3
    assert ada.params - res.params == 1_080
    assert ada.macs == res.macs


@pytest.mark.parametrize("block", sorted(BLOCK_VARIANTS))
def test_tfsepnet_block_variants_build(block):
    out = create_model("tfsepnet", width=16, block=block)(torch.randn(2, 1, 64, 44))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("channels", range(2, 401, 2))
def test_channel_shuffle_groups_divide_every_even_channel_count(channels):
    g = shuffle_groups_for(channels)
    assert channels % g == 0
    if channels % 10 == 0:  # the official ShuffleLayer(group=10) is ChannelShuffle(C // 10)
        assert g == channels // 10


def test_shuffle_group_fallback_takes_the_divisor_nearest_to_ten():
    # 16: runs of 8 (2 groups); 12: one run of 12 (nearest to 10 of 1, 2, 3, 4, 6, 12): no shuffle
    assert shuffle_groups_for(16) == 2
    assert shuffle_groups_for(12) == 1
    assert shuffle_groups_for(18) == 2  # runs of 9
    assert shuffle_groups_for(40, group_size=4) == 10


def test_tfsepnet_shuffle_is_the_official_channel_permutation():
    # 40 channels in runs of 10: output channel g * 4 + a is input channel a * 10 + g
    block = create_model("tfsepnet", width=40).features[2]  # first block of stage 1 (80 -> 40)
    perm = block.shuffle(torch.arange(40.0).view(1, 40, 1, 1)).flatten().long().tolist()
    assert perm == [a * 10 + g for g in range(10) for a in range(4)]
    # so the frequency branch sees input channels 0, 10, 20, 30, 1, 11, ... 4, 14, 24, 34
    assert perm[:20] == [0, 10, 20, 30, 1, 11, 21, 31, 2, 12, 22, 32, 3, 13, 23, 33, 4, 14, 24, 34]


def test_adaresnorm_uses_the_unbiased_variance_over_channels_and_time():
    from nas_asc.models.layers import AdaResNorm

    norm = AdaResNorm(2)
    with torch.no_grad():
        norm.rho.zero_()  # pure FreqIN
    x = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(1, 2, 1, 2)  # mean 4, unbiased var 20 / 3
    expected = (x - 4.0) / torch.sqrt(torch.tensor(20.0 / 3.0 + 1e-5))
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-6)


def test_tfsepnet_layer_shapes_at_the_submission_width():
    model = create_model("tfsepnet", width=40)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["features.0.weight"] == (80, 1, 5, 5)
    assert shapes["features.1.rho"] == (1, 80, 1, 1)
    assert shapes["features.2.transition.0.weight"] == (40, 80, 1, 1)
    assert shapes["features.2.freq_dw.0.weight"] == (20, 1, 3, 1)
    assert shapes["features.2.time_dw.0.weight"] == (20, 1, 1, 3)
    assert shapes["features.2.freq_pw.0.weight"] == (20, 20, 1, 1)
    assert shapes["classifier.weight"] == (10, 100, 1, 1)
    assert shapes["classifier.bias"] == (10,)


def test_widths_of_every_space_build_with_valid_shuffles():
    for name in list_spaces():
        space = load_space(name)
        if space.model != "tfsepnet":
            continue
        dim = next((d for d in space.dimensions if d.name == "model.width"), None)
        if dim is None:  # a recipe space fixes the width
            widths = [space.fixed["model"]["width"]]
        else:
            widths = range(int(dim.low), int(dim.high) + 1, int(dim.step or 1))
        for width in widths:
            model = create_model("tfsepnet", width=width)
            assert model(torch.randn(2, 1, 64, 44)).shape == (2, 10)


@pytest.mark.parametrize("width", [7, 10, 14, 18])
def test_widths_not_divisible_by_four_round_channels_to_even(width):
    model = create_model("tfsepnet", width=width)
    assert model(torch.randn(2, 1, 64, 44)).shape == (2, 10)


def test_bad_tfsepnet_config_values_are_refused():
    with pytest.raises(ValueError, match="width C must be an integer >= 2"):
        create_model("tfsepnet", width=1)
    with pytest.raises(ValueError, match="unknown TF-SepNet block 'x'"):
        create_model("tfsepnet", block="x")
    with pytest.raises(ValueError, match="unknown norm 'x'"):
        create_model("tfsepnet", norm="x")
