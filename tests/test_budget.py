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
