"""Quantization-aware training (prepare_qat, convert_qat, fake_quant_disabled) and stored dtypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase
from toydata import toy_set

from nas_asc.complexity import count
from nas_asc.models import create_model
from nas_asc.models.layers import AdaResNorm, SubSpectralNorm
from nas_asc.train.quantize import (
    convert_qat,
    fake_quant_disabled,
    prepare_qat,
    quantize_ptq,
    stored_parameters,
)

FAMILIES = ["tfsepnet", "bcresnet"]  # AdaResNorm (deploy_float) and SubSpectralNorm


def _steps(model: nn.Module, data, steps: int, lr: float, seed: int) -> None:
    """A few Adam steps on the toy problem (batches of 32)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=gen)[:32]
        loss = nn.functional.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def _fake_quant_flags(model: nn.Module) -> list[tuple[int, int]]:
    return [
        (int(m.fake_quant_enabled), int(m.observer_enabled))
        for m in model.modules()
        if isinstance(m, FakeQuantizeBase)
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def qat_run(request):
    """Float pre-training, then QAT fine-tuning: the "QAT for the last epochs" recipe."""
    torch.manual_seed(0)
    data = toy_set()
    model = create_model(request.param, width=8, n_classes=3)
    # 40 float steps fit the toy set from every seed tried (0-3: 97-100 %); 24 left tfsepnet at
    # 75 % on seed 0 on a CPU without AVX-512, and its int8 model then predicted only 2 classes
    _steps(model, data, steps=40, lr=2e-2, seed=0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = prepare_qat(model, data.x[:1])
    fresh_training = prepared.training
    _steps(prepared, data, steps=8, lr=5e-3, seed=1)
    prepared.eval()
    prepared.apply(torch.ao.quantization.disable_observer)  # ranges fixed from here on
    state = {k: v.clone() for k, v in prepared.state_dict().items()}
    int8 = convert_qat(prepared)
    return {
        "family": request.param,
        "model": model,
        "before": before,
        "prepared": prepared,
        "fresh_training": fresh_training,
        "state_before_convert": state,
        "int8": int8,
    }


def test_prepare_qat_returns_a_fake_quantized_copy_in_train_mode(qat_run):
    model, prepared = qat_run["model"], qat_run["prepared"]
    assert qat_run["fresh_training"] is True
    assert isinstance(prepared, torch.fx.GraphModule)
    assert any(isinstance(m, FakeQuantizeBase) for m in prepared.modules())
    # conv-BatchNorm pairs train folded
    fused = (torch.ao.nn.intrinsic.qat.ConvBn2d, torch.ao.nn.intrinsic.qat.ConvBnReLU2d)
    assert any(isinstance(m, fused) for m in prepared.modules())
    # the argument is untouched: same weights and statistics, no fake quantizers, still eval
    assert not any(isinstance(m, FakeQuantizeBase) for m in model.modules())
    assert model.training is False
    after = model.state_dict()
    assert after.keys() == qat_run["before"].keys()
    assert all(torch.equal(after[k], v) for k, v in qat_run["before"].items())


def test_convert_qat_gives_int8_kernels_that_agree_with_the_fake_quant_model(qat_run):
    prepared, int8 = qat_run["prepared"], qat_run["int8"]
    convs = [m for m in int8.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]
    assert convs and all(m.weight().dtype == torch.qint8 for m in convs)
    assert not any(isinstance(m, FakeQuantizeBase) for m in int8.modules())
    assert int8.training is False
    test = toy_set(seed=2)
    with torch.no_grad():
        fake = prepared(test.x).argmax(1)
        real = int8(test.x).argmax(1)
    assert len(real.unique()) == 3  # a trained model, not a constant prediction
    assert (fake == real).float().mean().item() >= 0.9
    # convert_qat worked on a copy: the prepared model still fake-quantizes, weights unchanged
    state = prepared.state_dict()
    assert all(torch.equal(state[k], v) for k, v in qat_run["state_before_convert"].items())


def test_qat_keeps_deploy_float_layers_and_subspectralnorm_float(qat_run):
    model, prepared, int8 = qat_run["model"], qat_run["prepared"], qat_run["int8"]
    n_ada = sum(isinstance(m, AdaResNorm) for m in model.modules())
    n_ssn = sum(isinstance(m, SubSpectralNorm) for m in model.modules())
    # AdaResNorm is an opaque float leaf in both the prepared and the converted model
    assert sum(isinstance(m, AdaResNorm) for m in prepared.modules()) == n_ada
    assert sum(isinstance(m, AdaResNorm) for m in int8.modules()) == n_ada
    # SubSpectralNorm cannot fold into its convolution: it stays a float module as well
    assert sum(isinstance(m, SubSpectralNorm) for m in prepared.modules()) == n_ssn
    assert sum(isinstance(m, SubSpectralNorm) for m in int8.modules()) == n_ssn
    assert not any(isinstance(m, torch.ao.nn.quantized.BatchNorm2d) for m in int8.modules())
    stored = stored_parameters(int8)
    rule = count(model, (1, 1, 32, 16))
    assert stored.float32_float_layers == 3 * sum(
        m.channels for m in model.modules() if isinstance(m, AdaResNorm)
    )
    # unfolded norms store weight, bias, running mean and variance: twice the rule's 2 * C * S
    assert stored.float32_norms == 2 * sum(
        2 * m.channels * m.sub_bands for m in model.modules() if isinstance(m, SubSpectralNorm)
    )
    assert stored.bytes > rule.param_bytes  # PyTorch stores biases and these norms in float32
    assert stored_parameters(quantize_ptq(model, toy_set(n=8).x)) == stored  # PTQ alike


def test_fake_quant_disabled_computes_in_float_and_restores_every_flag():
    torch.manual_seed(0)
    model = create_model("bcresnet", width=8, n_classes=3)
    data = toy_set(n=32)
    _steps(model, data, steps=3, lr=1e-2, seed=0)
    model.eval()
    prepared = prepare_qat(model, data.x[:1]).eval()
    with torch.no_grad():
        prepared(data.x)  # observers see data, so fake quantization really rounds
    quantizers = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    quantizers[0].disable_observer()  # a mixed state must come back exactly
    quantizers[1].disable_fake_quant()
    flags = _fake_quant_flags(prepared)
    with torch.no_grad():
        reference = model(data.x)
        rounded = prepared(data.x)
        with fake_quant_disabled(prepared) as same:
            assert same is prepared
            assert _fake_quant_flags(prepared) == [(0, 0)] * len(flags)
            prepared.train()  # e.g. a training step inside: the mode is restored too
            prepared.eval()
            unrounded = prepared(data.x)
    torch.testing.assert_close(unrounded, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rounded, reference, atol=1e-4, rtol=1e-4)
    assert _fake_quant_flags(prepared) == flags
    prepared.train()
    with pytest.raises(RuntimeError, match="inside"):
        with fake_quant_disabled(prepared):
            prepared.eval()
            raise RuntimeError("inside")
    assert _fake_quant_flags(prepared) == flags and prepared.training is True


def test_qat_refuses_bad_inputs_in_one_line():
    model = create_model("tfsepnet", width=8)
    with pytest.raises(ValueError, match=r"QAT example inputs must be .*got \(32, 16\)"):
        prepare_qat(model, torch.zeros(32, 16))
    with pytest.raises(ValueError, match="convert_qat needs a model returned by prepare_qat"):
        convert_qat(model)
