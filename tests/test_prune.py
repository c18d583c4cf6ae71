"""L1-norm structured filter pruning (nas_asc.train.prune) on the AI4EDGE CNN family."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from nas_asc.budget import DEFAULT_BUDGET
from nas_asc.complexity import count
from nas_asc.models import (
    cnn,  # noqa: F401  (registers the family)
    create_model,
)
from nas_asc.train.prune import (
    Prunable,
    filter_l1_norms,
    min_complexity,
    prune_to_fit,
)
from nas_asc.train.quantize import quantize_ptq

SHAPE = (1, 1, 32, 8)  # small input: 32 Mel bins, 8 frames (the report's frame rate)


def _model(**cfg) -> nn.Module:
    torch.manual_seed(0)
    return create_model("cnn", **cfg)


def test_cnn_is_prunable_and_keeps_first_and_last_layer():
    model = _model(variant="sm3")
    assert isinstance(model, Prunable)
    assert model.prunable_layers() == [f"blocks.{i}.conv" for i in (1, 2, 3, 4)]
    assert not isinstance(nn.Linear(2, 2), Prunable)


def test_filter_l1_norms_are_the_sum_of_absolute_weights():
    model = _model(width=0.5)
    norms = filter_l1_norms(model)
    assert list(norms) == model.prunable_layers()
    w = model.blocks[1].conv.weight.detach()
    expected = torch.stack([w[i].abs().sum() for i in range(w.shape[0])])
    assert torch.allclose(norms["blocks.1.conv"], expected)


def test_prune_filters_keeps_the_chosen_filters_and_their_consumers():
    model = _model(width=0.5).eval()
    model.blocks[1].bn.running_mean.uniform_(-1, 1)
    original = copy.deepcopy(model)
    keep = torch.tensor([0, 3, 5, 9])
    model.prune_filters("blocks.1.conv", keep)
    conv, bn, nxt = model.blocks[1].conv, model.blocks[1].bn, model.blocks[2].conv
    old = original.blocks[1]
    assert torch.equal(conv.weight, old.conv.weight[keep])
    assert torch.equal(conv.bias, old.conv.bias[keep])
    assert torch.equal(bn.running_mean, old.bn.running_mean[keep])
    assert torch.equal(bn.weight, old.bn.weight[keep])
    assert torch.equal(nxt.weight, original.blocks[2].conv.weight[:, keep])
    assert (conv.out_channels, bn.num_features, nxt.in_channels) == (4, 4, 4)
    assert model.filters == (10, 4, 14, 8)


def test_pruned_model_has_exactly_the_counted_parameters():
    model = _model(variant="sm2", width=0.5)
    model.prune_filters("blocks.2.conv", torch.arange(5))
    model.prune_filters("blocks.4.conv", torch.tensor([True] * 3 + [False] * 9))
    c = count(model, SHAPE)
    assert c.params == sum(p.numel() for p in model.parameters())
    assert model.filters == (10, 12, 5, 12, 3, 8)
    rebuilt = count(create_model("cnn", **vars(model.current_config())), SHAPE)
    assert (c.params, c.macs) == (rebuilt.params, rebuilt.macs)


def test_pruning_the_reports_sm3_gives_its_published_pruned_architecture():
    model = _model(variant="sm3")
    for layer, n in zip(model.prunable_layers(), (22, 22, 24, 24), strict=True):
        keep = torch.topk(filter_l1_norms(model)[layer], n).indices
        model.prune_filters(layer, keep)
    assert model.filters == (20, 22, 22, 24, 24, 16)
    c = count(model, (1, 1, 140, 8))
    assert (c.params, c.macs) == (64_034, 26_694_538)  # NeSsi: 65,192 B, 26.71 M (Table 1)


def test_zero_filters_are_removed_without_changing_the_outputs():
    model = _model(variant="sm2", width=0.5).eval()
    x = torch.randn(4, 1, 32, 8)
    with torch.no_grad():
        for layer, dead in (("blocks.1.conv", [2, 7]), ("blocks.3.conv", [0])):
            block = model.get_submodule(layer.rsplit(".", 1)[0])
            block.conv.weight[dead] = 0.0
            block.conv.bias[dead] = 0.0
            block.bn.bias[dead] = 0.0
            block.bn.running_mean[dead] = 0.0
        expected = model(x)
        for layer in ("blocks.1.conv", "blocks.3.conv"):
            norms = filter_l1_norms(model)[layer]
            model.prune_filters(layer, torch.nonzero(norms > 0).flatten())
        assert model.filters == (10, 10, 12, 11, 12, 8)
        assert torch.allclose(model(x), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        (torch.tensor([], dtype=torch.long), "at least one"),
        (torch.tensor([1, 1]), "repeats"),
        (torch.tensor([0, 14]), "must index its 14 filters"),
        (torch.tensor([True, False]), r"shape \(14,\)"),
        (torch.tensor([0.0, 1.0]), "integer index tensor"),
    ],
)
def test_bad_keep_is_refused(keep, message):
    model = _model(width=0.5)
    with pytest.raises(ValueError, match=message):
        model.prune_filters("blocks.1.conv", keep)


def test_only_prunable_layers_can_be_pruned():
    with pytest.raises(ValueError, match="not a prunable layer"):
        _model(width=0.5).prune_filters("blocks.0.conv", torch.arange(3))


def test_prune_to_fit_removes_the_lowest_l1_filters_first():
    model = _model(width=0.5)
    weak = {"blocks.1.conv": [3, 7], "blocks.2.conv": [5]}
    with torch.no_grad():
        for layer, idx in weak.items():
            model.get_submodule(layer).weight[idx] *= 0.01
    target = copy.deepcopy(model)
    for layer, idx in weak.items():
        n = target.get_submodule(layer).out_channels
        target.prune_filters(layer, torch.tensor([i for i in range(n) if i not in idx]))
    limit = count(target, SHAPE).params
    result = prune_to_fit(model, lambda c: c.params <= limit, SHAPE)
    assert result.steps == 3 and result.removed == {"blocks.1.conv": 2, "blocks.2.conv": 1}
    for layer, idx in weak.items():
        assert not set(idx) & set(result.kept[layer])
    assert model.filters == target.filters
    assert torch.equal(model.blocks[2].conv.weight, target.blocks[2].conv.weight)


def test_prune_to_fit_reaches_the_dcase_budget_with_the_fewest_steps():
    model = _model(variant="sm3")  # 36.99 M MACs on the report's input: over budget
    shape = (1, 1, 140, 8)
    result = prune_to_fit(model, DEFAULT_BUDGET.fits, shape)
    assert not DEFAULT_BUDGET.fits(result.before) and DEFAULT_BUDGET.fits(result.after)
    assert count(model, shape) == result.after
    assert result.after.params == sum(p.numel() for p in model.parameters())
    # one step fewer does not fit; and the bisection needed few counts
    one_fewer = dict(result.evaluated)[result.steps - 1]
    assert not DEFAULT_BUDGET.fits(one_fewer)
    assert len(result.evaluated) <= 12
    assert sum(result.removed.values()) == result.steps * result.step
    assert model.filters[0] == 20 and model.filters[-1] == 16
    json.dumps(result.to_dict())


def test_prune_to_fit_leaves_a_fitting_model_alone():
    model = _model(width=0.5)
    result = prune_to_fit(model, DEFAULT_BUDGET.fits, SHAPE)
    assert not result.pruned and result.before == result.after
    assert model.filters == (10, 14, 14, 8)


def test_prune_to_fit_refuses_an_impossible_budget_and_leaves_the_model_unchanged():
    model = _model(width=0.5)
    with pytest.raises(ValueError, match="cannot prune CNN into the budget.*min_filters=4"):
        prune_to_fit(model, lambda c: c.params < 1_000, SHAPE)
    assert model.filters == (10, 14, 14, 8)


def test_min_complexity_is_the_model_with_every_prunable_layer_at_the_floor():
    model = _model(variant="sm3")
    floor = min_complexity(model, SHAPE, min_filters=4)
    expected = count(create_model("cnn", variant="sm3", filters=(20, 4, 4, 4, 4, 16)), SHAPE)
    assert (floor.params, floor.macs) == (expected.params, expected.macs)
    assert model.filters == (20, 28, 28, 28, 28, 16)


def test_pruning_needs_a_prunable_model_and_valid_settings():
    with pytest.raises(TypeError, match="does not support filter pruning"):
        prune_to_fit(nn.Conv2d(1, 4, 3), DEFAULT_BUDGET.fits, SHAPE)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        prune_to_fit(_model(width=0.5), DEFAULT_BUDGET.fits, SHAPE, step=0)
    with pytest.raises(ValueError, match="min_filters must be an integer >= 1"):
        min_complexity(_model(width=0.5), SHAPE, min_filters=0)


def test_pruned_model_keeps_training_and_quantizes_with_matching_predictions():
    torch.manual_seed(0)
    model = _model(width=0.5, dropout=0.0)
    x = torch.randn(32, 1, 32, 8)
    # a learnable target: which quarter of the Mel axis holds the most energy
    y = x[:, 0].reshape(32, 4, 8, 8).sum(dim=(2, 3)).argmax(dim=1)

    def fit(steps: int) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)  # re-created after pruning
        model.train()
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    fit(20)
    limit = count(model, SHAPE).params - 1_000
    result = prune_to_fit(model, lambda c: c.params <= limit, SHAPE)
    assert result.pruned
    fit(10)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    int8 = quantize_ptq(model, x)
    with torch.no_grad():
        agree = (int8(x).argmax(1) == model(x).argmax(1)).float().mean().item()
    assert agree >= 0.9
