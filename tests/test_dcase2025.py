"""DCASE 2025: the budget rule, the stand-alone int8 networks and the package's runtime."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from nas_asc.budget import PRESETS, Budget, parse_budget
from nas_asc.complexity import count
from nas_asc.errors import BudgetError, NasAscError
from nas_asc.export.dcase2025 import runtime
from nas_asc.export.dcase2025.netgen import checker_count, network_source, standalone
from nas_asc.models import create_model, list_models
from nas_asc.train.quantize import quantize_ptq, stored_parameters

torchinfo = pytest.importorskip("torchinfo")


def _quantized(name: str, shape=(1, 32, 44)):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(8, *shape)
    return quantize_ptq(model, x), x


def _load_source(source: str, name: str = "net") -> types.ModuleType:
    """Import generated network source the way a package does (``from .._runtime import``)."""
    pkg = types.ModuleType("fakepkg")
    pkg.__path__ = []
    nets = types.ModuleType("fakepkg._nets")
    nets.__path__ = []
    saved = {k: sys.modules.get(k) for k in ("fakepkg", "fakepkg._nets", "fakepkg._runtime")}
    sys.modules.update({"fakepkg": pkg, "fakepkg._nets": nets, "fakepkg._runtime": runtime})
    try:
        module = types.ModuleType(f"fakepkg._nets.{name}")
        module.__package__ = "fakepkg._nets"
        exec(compile(source, f"{name}.py", "exec"), module.__dict__)
        return module
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


@pytest.mark.parametrize("name", list_models())
def test_every_family_becomes_a_standalone_network_the_checker_counts_fully(name):
    """Same weights in, same outputs out, bit for bit: the generated network (loaded from its
    source, without nas-asc's model code) against PyTorch's converted int8 model. And the bytes
    of its ``parameters()`` at their dtype are what PyTorch's int8 model stores (int8 weights,
    float32 biases, norms and float layers; scales and zero points aside): no int8 weight hides
    outside the parameters, where the checker would not count it."""
    q, x = _quantized(name)
    net = standalone(q, x[:1])
    source = network_source({"Net": net}, "test network")
    assert "nas_asc" not in source
    rebuilt = _load_source(source).Net()
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        expected = q(x)
        assert torch.equal(net.module(x), expected)
        assert torch.equal(rebuilt.eval()(x), expected)
    stored = stored_parameters(q)
    params = list(rebuilt.parameters())
    assert sum(p.numel() for p in params if p.dtype == torch.int8) == stored.int8_weights
    assert all(not p.requires_grad for p in params)
    macs, nbytes = checker_count(rebuilt, (1, *x.shape[1:]))
    assert nbytes == stored.bytes
    assert macs == checker_count(net.module, (1, *x.shape[1:]))[0] > 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 10)

    def forward(self, x):
        x = self.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_dcase2025_count_by_hand():
    """Conv 1->2, 3x3 on 4x4 (BatchNorm folded: 18 int8 weights, 2 float32 biases), mean,
    Linear 2->10 (20 int8 weights, 10 float32 biases). torchinfo: a conv counts weights and
    bias per output position, 18 * 16 + 2 * 16 = 320; the linear layer its parameters, 30."""
    c = count(_Tiny(), (1, 4, 4), rule="dcase2025")
    assert (c.macs, c.param_bytes, c.params) == (320 + 30, 18 + 2 * 4 + 20 + 10 * 4, 50)
    old = count(_Tiny(), (1, 4, 4))  # the 2024 rule, on the float model
    assert (old.macs, old.param_bytes) == (18 * 16 + 2 * 2 + 30, 18 + 4 + 30)


def test_dcase2025_budget_preset_and_its_rule():
    budget = parse_budget("dcase2025")
    assert budget == PRESETS["dcase2025"]
    assert (budget.max_param_bytes, budget.max_macs, budget.rule) == (
        128_000,
        30_000_000,
        "dcase2025",
    )
    assert budget.to_dict()["rule"] == "dcase2025"
    assert "rule" not in parse_budget("dcase2024").to_dict()  # older studies compare equal
    assert Budget(**budget.to_dict()) == budget
    assert parse_budget("dcase2025,macs=10M").rule == "dcase2025"
    with pytest.raises(BudgetError, match="dtype=float16 does not apply"):
        parse_budget("dcase2025,dtype=float16")
    with pytest.raises(BudgetError, match="rule must be one of"):
        Budget("x", 1, 1, rule="dcase2030")
    model = create_model("tfsepnet", width=8)
    assert budget.count(model, (1, 32, 44)) == count(model, (1, 32, 44), rule="dcase2025")


def test_runtime_layers_survive_copy_float_and_reload():
    """The checker deep-copies and calls ``.float()``; loading weights repacks them."""
    import copy

    q, x = _quantized("cpmobile")
    net = standalone(q, x[:1]).module
    with torch.no_grad():
        before = net(x)
        assert torch.equal(copy.deepcopy(net).float()(x), before)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        conv = next(m for m in net.modules() if isinstance(m, runtime.QConv2d))
        conv.weight.data.zero_()
        conv._packed = None
        assert not torch.equal(net(x), before)
        net.load_state_dict(state)
        assert torch.equal(net(x), before)


def test_a_foreign_function_on_int8_data_is_refused():
    """nas-asc helpers are specialized to ATen operators only where they run in float; a
    function from outside PyTorch that takes int8 tensors cannot be, and is named."""
    q, x = _quantized("cpmobile")

    def unknown(t):
        return t

    unknown.__module__ = "somewhere_else"
    first = next(n for n in q.graph.nodes if n.target is torch.quantize_per_tensor)
    with q.graph.inserting_after(first):
        node = q.graph.call_function(unknown, (first,))
    first.replace_all_uses_with(node)
    node.args = (first,)
    q.recompile()
    with pytest.raises(NasAscError, match="unknown runs on int8 tensors"):
        standalone(q, x[:1])


def test_the_package_front_end_computes_nas_ascs_features(tiny_protocol):
    """WAV to normalized log-mel in the package (no nas-asc code) against the features nas-asc
    trained and measured on: the same float16-rounded values, bit for bit."""
    from nas_asc.data.features import FrontEnd, load_features

    view = tiny_protocol.test_view()
    frontend = FrontEnd(n_mels=32)
    train_set, test_set = load_features(view, frontend, progress=False)
    config = {**frontend.to_dict(), "mean": train_set.mean, "std": train_set.std}
    files = [str(view.path(name)) for name in test_set.filenames[:40]]
    got = torch.cat(runtime.FrontEnd(config)(files))
    assert got.shape == test_set.x[:40].shape
    assert torch.equal(got, test_set.x[:40])


def _front_study(points):
    import optuna
    from optuna.trial import create_trial

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(["int8_accuracy", "macs", "param_bytes"])
    study.set_user_attr("budget", PRESETS["dcase2025"].to_dict())
    for accuracy, macs, nbytes in points:
        study.add_trial(
            create_trial(values=[accuracy, macs, nbytes], user_attrs={"status": "trained"})
        )
    return study


def test_four_submissions_maximize_the_hypervolume_of_the_set():
    """Five Pareto points; trial 2 is a hair better than trial 1 in accuracy at a little more
    cost, so it adds almost nothing once trial 1 is in: the best four leave it out."""
    from nas_asc.export.dcase2025.package import choose_submissions

    study = _front_study(
        [
            (0.30, 1e6, 10_000),
            (0.50, 10e6, 60_000),
            (0.501, 10.5e6, 61_000),
            (0.60, 25e6, 120_000),
            (0.40, 4e6, 30_000),
        ]
    )
    chosen, reasons = choose_submissions(study)
    assert chosen == [0, 1, 3, 4]
    assert reasons[0].startswith("chose trial(s) 0, 1, 3, 4: 4 of the 5 Pareto trials")
    assert len(reasons) == 5 and all(
        f"trial {n}:" in r for n, r in zip(chosen, reasons[1:], strict=True)
    )
    small = _front_study([(0.3, 1e6, 10_000), (0.5, 10e6, 60_000)])
    assert choose_submissions(small)[0] == [0, 1]


@pytest.mark.parametrize(
    "label",
    [
        "Schmid_task1",
        "schmid-CPJKU_task1",
        "1Schmid_CPJKU_task1",
        "Schmid_CPJKU_task2",
        "",
        "Schmid_CP JKU_task1",
        "Schmid_CPJKU_task1.py",
    ],
)
def test_a_label_not_in_the_dcase_form_is_refused(label):
    from nas_asc.export.dcase2025.package import check_label

    with pytest.raises(NasAscError, match="is not a DCASE submission label"):
        check_label(label)
    assert check_label("Schmid_CPJKU_task1") == "Schmid_CPJKU_task1"
