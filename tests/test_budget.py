from __future__ import annotations

import pytest

from nas_asc.budget import DEFAULT_BUDGET, PRESETS, Budget, parse_budget
from nas_asc.complexity import Complexity
from nas_asc.errors import BudgetError


def _c(param_bytes: int, macs: int) -> Complexity:
    return Complexity(
        params=param_bytes, param_bytes=param_bytes, macs=macs, input_shape=(1, 1, 1, 1)
    )


def test_default_is_the_dcase_budget():
    assert DEFAULT_BUDGET.max_param_bytes == 128_000
    assert DEFAULT_BUDGET.max_macs == 30_000_000
    assert parse_budget(None) == DEFAULT_BUDGET
    assert set(PRESETS) >= {"dcase2023", "dcase2024"}


def test_limits_are_inclusive_and_constraints_are_relative_excess():
    b = DEFAULT_BUDGET
    assert b.fits(_c(128_000, 30_000_000))
    assert b.violations(_c(128_001, 30_000_000)) == ["128,001 parameter bytes > 128,000"]
    cons = b.constraints(_c(256_000, 15_000_000))
    assert cons["param_bytes"] == pytest.approx(1.0)
    assert cons["macs"] == pytest.approx(-0.5)


@pytest.mark.parametrize(
    ("spec", "bytes_", "macs", "name"),
    [
        ("dcase2023", 128_000, 30_000_000, "dcase2023"),
        ("macs=10M,bytes=64k", 64_000, 10_000_000, "custom"),
        ("dcase2023,macs=2.5M", 128_000, 2_500_000, "dcase2023+custom"),
        ("bytes=1000", 1_000, 30_000_000, "custom"),
    ],
)
def test_parse_budget(spec, bytes_, macs, name):
    b = parse_budget(spec)
    assert (b.max_param_bytes, b.max_macs, b.name) == (bytes_, macs, name)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown budget preset 'nope'"),
        ("macs=lots", "is not a number"),
        ("macs=0", "must be positive"),
        ("bytes=-5", "is not a number"),
        ("speed=3", "unknown budget key 'speed'"),
        ("macs=1M,dcase2023", "must come first"),
        ("dtype=int4", "weight dtype must be"),
    ],
)
def test_bad_budgets_say_what_is_wrong(spec, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(spec)


def test_budget_rejects_non_positive_limits_directly():
    with pytest.raises(BudgetError):
        Budget("x", 0, 1)


def _peak(param_bytes: int, macs: int, peak: int | None) -> Complexity:
    return Complexity(
        params=param_bytes,
        param_bytes=param_bytes,
        macs=macs,
        input_shape=(1, 1, 1, 1),
        peak_activation_bytes=peak,
    )


@pytest.mark.parametrize(
    ("spec", "ram"),
    [("ram=64k", 64_000), ("dcase2024,ram=64Ki", 65_536), ("activation_bytes=1Mi", 1_048_576)],
)
def test_a_budget_can_limit_activation_ram(spec, ram):
    b = parse_budget(spec)
    assert b.max_activation_bytes == ram and b.limits_ram
    assert (b.max_param_bytes, b.max_macs) == (128_000, 30_000_000)
    assert b.to_dict()["max_activation_bytes"] == ram


def test_the_ram_limit_is_a_constraint_and_a_violation_only_when_set():
    unlimited = DEFAULT_BUDGET
    assert "max_activation_bytes" not in unlimited.to_dict()  # studies recorded before compare
    assert set(unlimited.constraints(_peak(1, 1, 10**9))) == {"param_bytes", "macs"}
    assert unlimited.fits(_peak(1, 1, 10**9))
    b = parse_budget("ram=100k")
    assert b.constraints(_peak(1, 1, 50_000))["peak_activation_bytes"] == pytest.approx(-0.5)
    assert b.fits(_peak(1, 1, 100_000))
    assert b.violations(_peak(1, 1, 100_001)) == ["100,001 activation bytes at peak > 100,000"]
    # a network whose activations could not be counted does not pass a RAM limit
    assert b.violations(_peak(1, 1, None)) == [
        "activation RAM unknown (the network could not be traced)"
    ]
    assert b.constraints(_peak(1, 1, None))["peak_activation_bytes"] == 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ram=0", "ram='0' is not a number above zero.*ram=64k"),
        ("ram=lots", "budget ram='lots' is not a number"),
    ],
)
def test_bad_ram_limits_say_what_is_wrong(spec, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "budget '' is empty; name a preset"),
        (",", "budget ',' is empty; name a preset"),
        (" , ", "budget ' , ' is empty; name a preset"),
        ("bytes=64k,bytes=32k", "budget 'bytes=64k,bytes=32k': bytes is given twice"),
        ("dtype=int8,dtype=float32", "budget 'dtype=int8,dtype=float32': dtype is given twice"),
        ("dcase2024,ram=64Ki,ram=1", "budget 'dcase2024,ram=64Ki,ram=1': ram is given twice"),
        (
            "ram=1k,activation_bytes=2k",
            "budget 'ram=1k,activation_bytes=2k': ram and activation_bytes set the same limit",
        ),
    ],
)
def test_an_empty_budget_or_a_limit_given_twice_is_refused(spec, message):
    """Only a missing --budget means the default; a repeated limit is not settled by order."""
    with pytest.raises(BudgetError) as info:
        parse_budget(spec)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_trailing_comma_after_a_preset_is_still_the_preset():
    assert parse_budget("dcase2023,") == PRESETS["dcase2023"]
