"""The checks against the authors' code: what runs without a clone of it.

The comparisons themselves need the official repositories, which nas-asc does not ship; the
families' test files hold the facts those comparisons established (layer shapes, permutations,
counts).
"""

from __future__ import annotations

import pytest

from nas_asc.fidelity import CHECKS, load_checks, main, randomize_
from nas_asc.models import MODELS, create_model

load_checks()


@pytest.mark.parametrize("name", CHECKS.names())
def test_every_check_names_a_family_and_builds_its_configurations(name):
    check = CHECKS.get(name)()
    assert check.family == name and name in MODELS
    assert check.repo.count("/") == 1 and check.files
    for config in check.configs.values():
        create_model(check.family, **config)


def test_a_missing_clone_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["tfsepnet", "--official", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --official {tmp_path / 'none'} is not a folder; clone "
        "https://github.com/yqcai888/DCASE2023 there first"
    ]


def test_a_clone_without_the_official_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["tfsepnet", "--official", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'tf-sepnet.py'} not found")


def test_randomize_sets_every_tensor_and_keeps_variances_positive():
    model = create_model("tfsepnet", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomize_(model, seed=3)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert not value.equal(before[key]), key
        if key.endswith("running_var"):
            assert bool((value >= 0.5).all())
