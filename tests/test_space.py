"""Tests for nas_asc.search.space: loading, sampling, corners, round trips and validation."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import resources
from pathlib import Path

import optuna
import pytest

from nas_asc.data.features import FrontEnd
from nas_asc.errors import SpaceError
from nas_asc.models import get_model_config
from nas_asc.search.space import (
    SECTIONS,
    Dimension,
    SearchSpace,
    list_spaces,
    load_space,
    resolve_space,
    space_dirs,
)
from nas_asc.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TFSEPNET_YAML = REPO / "search_spaces" / "tfsepnet.yaml"
NAMED_SPACES = [
    "bcres2net",
    "bcresnet",
    "blocks",
    "bsconv",
    "cnn",
    "cpmobile",
    "mobilenetv2_ca",
    "tfsepnet",
    "tfsepnet_recipe",
]
EXPECTED_DIMENSIONS = [
    "model.width",
    "model.block",
    "model.dropout",
    "frontend.n_mels",
    "train.mixstyle_alpha",
    "train.mixstyle_p",
    "train.kd_temperature",
    "train.kd_lambda",
    "train.lr",
    "train.epochs",
]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_yaml(TFSEPNET_YAML)


def _build_configs(config: dict) -> None:
    """Every section of a sampled config must construct its dataclass."""
    get_model_config("tfsepnet")(**config["model"])
    FrontEnd(**config["frontend"])
    TrainConfig(**config["train"])


def test_tfsepnet_space_loads(space: SearchSpace) -> None:
    assert space.name == "tfsepnet"
    assert space.model == "tfsepnet"
    assert "Cai" in space.description
    assert [d.name for d in space.dimensions] == EXPECTED_DIMENSIONS
    assert set(space.fixed) == set(SECTIONS)
    assert space.fixed["model"] == {"norm": "adaresnorm"}
    assert space.fixed["frontend"]["hop_length"] == 744
    assert space.fixed["train"] == {"batch_size": 64}
    assert space.source == str(TFSEPNET_YAML)
    width = space.dimensions[0]
    assert (width.kind, width.low, width.high, width.step) == ("int", 8, 80, 4)
    lr = space.dimensions[EXPECTED_DIMENSIONS.index("train.lr")]
    assert lr.log and lr.kind == "float" and lr.bounds() == (5.0e-3, 5.0e-2)


def test_sample_with_a_real_trial(space: SearchSpace) -> None:
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = space.sample(trial)
    assert list(config) == list(SECTIONS)
    assert list(trial.params) == EXPECTED_DIMENSIONS  # suggested in file order
    assert config["model"]["norm"] == "adaresnorm"
    assert config["frontend"]["sample_rate"] == 32000
    assert config["train"]["batch_size"] == 64
    for dim in space.dimensions:
        value = config[dim.section][dim.field]
        assert trial.params[dim.name] == value
        assert dim.distribution()._contains(dim.distribution().to_internal_repr(value))
    assert config["model"]["width"] % 4 == 0
    assert config["frontend"]["n_mels"] in (32, 64)
    assert 5.0e-3 <= config["train"]["lr"] <= 5.0e-2
    _build_configs(config)
    # Sampling does not leak into the shared fixed values.
    assert "width" not in space.fixed["model"]


def test_sample_with_fixed_trial_replays_params(space: SearchSpace) -> None:
    study = optuna.create_study()
    config = space.sample(study.ask())
    replay = space.sample(
        optuna.trial.FixedTrial({d.name: config[d.section][d.field] for d in space.dimensions})
    )
    assert replay == config


@pytest.mark.parametrize("which", ["low", "high"])
def test_corner(space: SearchSpace, which: str) -> None:
    config = space.corner(which)
    index = 0 if which == "low" else 1
    for dim in space.dimensions:
        assert config[dim.section][dim.field] == dim.bounds()[index]
    expected = {"low": (8, "tfsep", 32, 2), "high": (80, "tfsep_noshuffle", 64, 4)}[which]
    got = (
        config["model"]["width"],
        config["model"]["block"],
        config["frontend"]["n_mels"],
        config["train"]["epochs"],
    )
    assert got == expected
    assert isinstance(config["model"]["width"], int)
    _build_configs(config)


def test_corner_rejects_other_values(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="'middle'"):
        space.corner("middle")


def test_distributions_match_dimensions(space: SearchSpace) -> None:
    dists = space.distributions()
    assert list(dists) == EXPECTED_DIMENSIONS
    assert dists["model.width"] == optuna.distributions.IntDistribution(8, 80, step=4)
    assert dists["train.lr"] == optuna.distributions.FloatDistribution(5e-3, 5e-2, log=True)
    assert dists["frontend.n_mels"] == optuna.distributions.CategoricalDistribution((32, 64))


def test_round_trip(space: SearchSpace) -> None:
    data = space.to_dict()
    again = SearchSpace.from_dict(data, source=space.source)
    assert again == space
    assert SearchSpace.from_dict(again.to_dict()).to_dict() == data


def test_round_trip_keeps_step_and_tuple_fixed_values() -> None:
    data = {
        "name": "x",
        "model": "tfsepnet",
        "fixed": {"model": {"depths": [1, 1, 1, 1]}},
        "dimensions": {
            "train.mixstyle_p": {"type": "float", "low": 0, "high": 0.8, "step": 0.2},
            "train.epochs": {"type": "int", "low": 2, "high": 16, "log": True},
        },
    }
    space = SearchSpace.from_dict(data)
    assert space.fixed["model"]["depths"] == (1, 1, 1, 1)
    assert space.description == ""
    assert SearchSpace.from_dict(space.to_dict()) == space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        value = space.sample(study.ask())["train"]["mixstyle_p"]
        assert min(abs(value - grid) for grid in (0.0, 0.2, 0.4, 0.6, 0.8)) < 1e-9


def test_dimension_name_and_bounds() -> None:
    dim = Dimension("frontend", "n_mels", "categorical", choices=(64, 96, 128))
    assert dim.name == "frontend.n_mels"
    assert dim.bounds() == (64, 128)


def test_resolve_by_name_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the named spaces are found in the package
    assert (REPO / "search_spaces").resolve() in space_dirs()
    assert "tfsepnet" in list_spaces()
    assert resolve_space("tfsepnet").resolve() == TFSEPNET_YAML.resolve()
    assert resolve_space(str(TFSEPNET_YAML)) == TFSEPNET_YAML
    assert load_space("tfsepnet").name == "tfsepnet"


def test_working_directory_spaces_come_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local = tmp_path / "search_spaces"
    local.mkdir()
    (local / "tfsepnet.yaml").write_text(
        TFSEPNET_YAML.read_text().replace("name: tfsepnet", "name: local_copy")
    )
    (local / "mine.yml").write_text(TFSEPNET_YAML.read_text())
    monkeypatch.chdir(tmp_path)
    assert space_dirs()[0] == local.resolve()
    assert load_space("tfsepnet").name == "local_copy"
    assert {"tfsepnet", "mine"} <= set(list_spaces())
    assert resolve_space("mine").name == "mine.yml"
    assert resolve_space(os.path.join("search_spaces", "mine.yml")).is_file()


def test_named_spaces_ship_inside_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # from a folder without search_spaces/, as after `pip install nas-asc` anywhere
    monkeypatch.chdir(tmp_path)
    packaged = resources.files("nas_asc") / "search_spaces"
    assert space_dirs() == [Path(str(packaged)).resolve()]
    assert list_spaces() == NAMED_SPACES
    for name in NAMED_SPACES:
        assert (packaged / f"{name}.yaml").is_file()
        assert load_space(name).name == name


def test_top_level_search_spaces_is_the_packaged_folder() -> None:
    # the documented path search_spaces/NAME.yaml is the package's file, not a second copy
    assert (REPO / "search_spaces").resolve() == (REPO / "nas_asc" / "search_spaces").resolve()
    assert sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml")) == NAMED_SPACES


@pytest.mark.slow
def test_built_wheel_carries_the_named_spaces(tmp_path: Path) -> None:
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "nas_asc", source / "nas_asc", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("nas_asc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"nas_asc/search_spaces/{name}.yaml" for name in NAMED_SPACES} <= names


def test_resolve_unknown_name_lists_available() -> None:
    with pytest.raises(SpaceError) as info:
        resolve_space("no_such_space")
    message = str(info.value)
    assert "no_such_space" in message and "tfsepnet" in message
    assert "\n" not in message


def test_resolve_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.yaml"
    with pytest.raises(SpaceError, match=r"nothing\.yaml.*not found"):
        load_space(str(missing))


# --------------------------------------------------------------------------------------------
# Malformed spaces
# --------------------------------------------------------------------------------------------

BASE = """\
name: bad
model: tfsepnet
fixed:
  train: {batch_size: 64}
dimensions:
  model.width: {type: int, low: 8, high: 64, step: 4}
"""


def _with_dims(*lines: str) -> str:
    return BASE + "".join(f"  {line}\n" for line in lines)


MALFORMED = {
    "invalid_yaml": ("name: bad\ndimensions: {model.width: [1, 2\n", ["not valid YAML", "line"]),
    "duplicate_key": (
        _with_dims("model.width: {type: int, low: 8, high: 16}"),
        ["duplicate key", "model.width"],
    ),
    "top_level_list": ("- name\n- model\n", ["top level", "mapping"]),
    "unknown_top_key": (BASE + "sampler: tpe\n", ["sampler"]),
    "missing_model": (
        "name: bad\ndimensions: {train.lr: {type: float, low: 0.1, high: 1.0}}\n",
        ["missing", "model"],
    ),
    "unknown_model": (
        BASE.replace("model: tfsepnet", "model: resnet9000"),
        ["resnet9000", "tfsepnet"],
    ),
    "key_without_section": (
        _with_dims("width: {type: int, low: 8, high: 16}"),
        ["'width'", "section.field"],
    ),
    "unknown_section": (
        _with_dims("optim.lr: {type: float, low: 0.1, high: 1.0}"),
        ["optim.lr", "'optim'"],
    ),
    "unknown_field": (
        _with_dims("model.depth_mult: {type: float, low: 0.5, high: 2.0}"),
        ["model.depth_mult", "'depth_mult'", "width"],
    ),
    "unknown_spec_key": (
        _with_dims("train.lr: {type: float, low: 0.1, high: 1.0, logg: true}"),
        ["train.lr", "logg"],
    ),
    "bad_type": (
        _with_dims("train.lr: {type: loguniform, low: 0.1, high: 1.0}"),
        ["train.lr", "loguniform"],
    ),
    "missing_type": (_with_dims("train.lr: {low: 0.1, high: 1.0}"), ["train.lr", "type"]),
    "missing_high": (_with_dims("train.lr: {type: float, low: 0.1}"), ["train.lr", "'high'"]),
    "non_numeric_bound": (
        _with_dims("train.lr: {type: float, low: small, high: 1.0}"),
        ["train.lr", "'small'", "not a number"],
    ),
    "yaml_text_exponent": (
        _with_dims("train.lr: {type: float, low: 1e-3, high: 1.0e-2}"),
        ["train.lr", "'1e-3'", "write 0.001"],
    ),
    "low_above_high": (
        _with_dims("train.epochs: {type: int, low: 9, high: 3}"),
        ["train.epochs", "low 9 > high 3"],
    ),
    "int_fractional_bound": (
        _with_dims("train.epochs: {type: int, low: 2.5, high: 8}"),
        ["train.epochs", "2.5", "integer"],
    ),
    "int_fractional_step": (
        _with_dims("train.epochs: {type: int, low: 2, high: 8, step: 1.5}"),
        ["train.epochs", "1.5"],
    ),
    "zero_step": (
        _with_dims("train.kd_lambda: {type: float, low: 0.0, high: 0.9, step: 0}"),
        ["train.kd_lambda", "step 0", "positive"],
    ),
    "step_not_dividing": (
        _with_dims("train.epochs: {type: int, low: 2, high: 9, step: 2}"),
        ["train.epochs", "multiple of step 2", "8"],
    ),
    "log_nonpositive_low": (
        _with_dims("train.lr: {type: float, low: 0.0, high: 0.1, log: true}"),
        ["train.lr", "low 0.0", "log"],
    ),
    "log_with_step": (
        _with_dims("train.lr: {type: float, low: 0.1, high: 0.5, step: 0.1, log: true}"),
        ["train.lr", "step 0.1", "log"],
    ),
    "log_not_bool": (
        _with_dims("train.lr: {type: float, low: 0.1, high: 0.5, log: maybe}"),
        ["train.lr", "'maybe'"],
    ),
    "categorical_no_choices": (
        _with_dims("model.block: {type: categorical}"),
        ["model.block", "choices"],
    ),
    "categorical_empty": (
        _with_dims("model.block: {type: categorical, choices: []}"),
        ["model.block", "empty"],
    ),
    "categorical_not_list": (
        _with_dims("model.block: {type: categorical, choices: tfsep}"),
        ["model.block", "'tfsep'", "list"],
    ),
    "categorical_duplicate": (
        _with_dims("model.block: {type: categorical, choices: [a, b, a]}"),
        ["model.block", "'a'", "twice"],
    ),
    "categorical_non_scalar": (
        _with_dims("frontend.n_mels: {type: categorical, choices: [[64, 128], 96]}"),
        ["frontend.n_mels", "[64, 128]", "scalar"],
    ),
    "categorical_wrong_type": (
        _with_dims("frontend.n_mels: {type: categorical, choices: [64, many]}"),
        ["frontend.n_mels", "'many'", "int"],
    ),
    "categorical_with_low": (
        _with_dims("model.block: {type: categorical, choices: [a], low: 1}"),
        ["model.block", "low"],
    ),
    "float_on_int_field": (
        _with_dims("train.epochs: {type: float, low: 1.0, high: 3.0}"),
        ["train.epochs", "float", "int"],
    ),
    "int_on_str_field": (
        _with_dims("model.block: {type: int, low: 1, high: 3}"),
        ["model.block", "str"],
    ),
    "spec_not_mapping": (_with_dims("train.lr: 0.01"), ["train.lr", "0.01", "mapping"]),
    "fixed_and_searched": (
        _with_dims("train.batch_size: {type: int, low: 16, high: 64}"),
        ["train.batch_size", "both fixed", "64"],
    ),
    "fixed_unknown_section": (
        BASE.replace("  train: {batch_size: 64}", "  optim: {lr: 0.1}"),
        ["'optim'", "section"],
    ),
    "fixed_unknown_field": (
        BASE.replace("batch_size: 64", "batchsize: 64"),
        ["train.batchsize", "batch_size"],
    ),
    "fixed_wrong_type": (
        BASE.replace("batch_size: 64", "batch_size: sixty-four"),
        ["train.batch_size", "'sixty-four'", "int"],
    ),
    "fixed_tuple_item_wrong_type": (
        BASE.replace("  train: {batch_size: 64}", "  model: {depths: [1, x, 1, 1]}"),
        ["model.depths", "[1, 'x', 1, 1]", "item [1]", "list of int"],
    ),
    "fixed_float_for_int": (
        BASE.replace("batch_size: 64", "batch_size: 64.5"),
        ["train.batch_size", "64.5"],
    ),
    "fixed_not_mapping": (
        BASE.replace("  train: {batch_size: 64}\n", "").replace("fixed:", "fixed: [1, 2]"),
        ["fixed", "[1, 2]"],
    ),
    "no_dimensions": ("name: bad\nmodel: tfsepnet\ndimensions: {}\n", ["dimensions", "no"]),
    "dimensions_null": ("name: bad\nmodel: tfsepnet\ndimensions:\n", ["dimensions", "no"]),
    "dimensions_list": (
        "name: bad\nmodel: tfsepnet\ndimensions: [model.width]\n",
        ["dimensions", "mapping"],
    ),
    "empty_name": (BASE.replace("name: bad", "name: ''"), ["name"]),
    "references_list": (BASE + "references: [c16]\n", ["key 'references'", "mapping"]),
    "reference_not_mapping": (
        BASE + "references:\n  c16: 16\n",
        ["reference 'c16'", "must map dimensions to values"],
    ),
    "reference_unknown_dimension": (
        BASE + "references:\n  c16: {model.width: 16, model.depth: 3}\n",
        ["reference 'c16'", "'model.depth' is not a dimension", "['model.width']"],
    ),
    "reference_off_the_step": (
        BASE + "references:\n  c10: {model.width: 10}\n",
        ["reference 'c10'", "model.width = 10 is outside the dimension"],
    ),
    "reference_of_another_type": (
        BASE + "references:\n  c16: {model.width: 16.0}\n",
        ["model.width = 16.0 is outside"],
    ),
    "reference_without_every_model_dimension": (
        _with_dims("frontend.n_mels: {type: categorical, choices: [32, 64]}")
        + "references:\n  c16: {model.width: 16}\n",
        ["reference 'c16'", "does not set frontend.n_mels"],
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_space_raises(case: str, tmp_path: Path) -> None:
    text, fragments = MALFORMED[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message, message
    assert "fix:" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def _alias_bomb(depth: int = 8) -> str:
    """YAML for a list of 9**(depth + 1) items in a few hundred bytes (aliases share nodes)."""
    text = "[" + ", ".join(["lol"] * 9) + "]"
    for level in range(depth):
        text = f"[&a{level} {text}" + f", *a{level}" * 8 + "]"
    return text


@pytest.mark.parametrize(
    "old, new",
    [
        ("name: bad", "name: {bomb}"),
        ("model: tfsepnet", "model: {bomb}"),
        ("batch_size: 64", "batch_size: {bomb}"),
        ("train: {batch_size: 64}", "model: {{depths: {bomb}}}"),
        ("{type: int, low: 8, high: 64, step: 4}", "{bomb}"),
        ("type: int", "type: {bomb}"),
        ("low: 8", "low: {bomb}"),
        ("{type: int, low: 8, high: 64, step: 4}", "{{type: categorical, choices: [1, {bomb}]}}"),
    ],
)
def test_huge_values_are_not_echoed(tmp_path: Path, old: str, new: str) -> None:
    path = tmp_path / "bomb.yaml"
    # 9**5 values: under the loader's limit, so the checks meet the huge value and must quote
    # only an excerpt of it
    path.write_text(BASE.replace(old, new.format(bomb=_alias_bomb(depth=4))))
    with pytest.raises(SpaceError) as info:
        SearchSpace.from_yaml(path)
    message = str(info.value).removeprefix(str(path))
    assert "fix:" in message and "..." in message and len(message) < 300, message


@pytest.mark.parametrize("old, new", [("name: bad", "name: {bomb}"), ("low: 8", "low: {bomb}")])
def test_alias_bombs_are_refused_while_loading(tmp_path: Path, old: str, new: str) -> None:
    """9**9 values in a few hundred bytes: refused by the YAML loader, before anything walks
    the expanded value (issue 15: one such file took 4.5 GB for its error message)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BASE.replace(old, new.format(bomb=_alias_bomb())))
    with pytest.raises(SpaceError, match=r"aliases expand to more than 100,000 values") as info:
        SearchSpace.from_yaml(path)
    assert len(str(info.value)) < 300


def test_malformed_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 15


def test_base_of_corpus_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(BASE)
    assert [d.name for d in SearchSpace.from_yaml(path).dimensions] == ["model.width"]


def test_from_dict_names_dict_source() -> None:
    with pytest.raises(SpaceError, match=r"^<dict>: .*'nope'"):
        SearchSpace.from_dict({"name": "x", "model": "nope", "dimensions": {}})


def test_space_error_is_value_error() -> None:
    assert issubclass(SpaceError, ValueError)
    assert dataclasses.is_dataclass(SearchSpace)


def test_references_are_checked_kept_and_follow_the_epoch_bound(tmp_path: Path) -> None:
    path = tmp_path / "refs.yaml"
    path.write_text(
        _with_dims(
            "frontend.n_mels: {type: categorical, choices: [32, 64]}",
            "train.lr: {type: float, low: 0.001, high: 0.1, log: true}",
            "train.epochs: {type: int, low: 2, high: 8}",
        )
        + "references:\n"
        "  c16: {model.width: 16, frontend.n_mels: 64, train.epochs: 6}\n"
        "  c32: {model.width: 32, frontend.n_mels: 32, train.lr: 0.01}\n"
    )
    space = SearchSpace.from_yaml(path)
    assert space.references == {
        "c16": {"model.width": 16, "frontend.n_mels": 64, "train.epochs": 6},
        "c32": {"model.width": 32, "frontend.n_mels": 32, "train.lr": 0.01},
    }
    config = space.reference_config("c32")
    assert config["model"]["width"] == 32 and config["frontend"]["n_mels"] == 32
    assert config["train"] == {"batch_size": 64, "lr": 0.01}  # the rest is sampled
    assert SearchSpace.from_dict(space.to_dict()).references == space.references
    assert space.with_max_epochs(4).references["c16"]["train.epochs"] == 4


def test_the_tfsepnet_references_are_the_reports_systems() -> None:
    refs = load_space("tfsepnet").references
    assert {name: values["model.width"] for name, values in refs.items()} == {
        "tfsepnet-c20": 20,
        "tfsepnet-c40": 40,
        "tfsepnet-c60": 60,
    }


@pytest.mark.parametrize(
    ("dims", "expected"),
    [
        ({"frontend.n_mels": {"type": "categorical", "choices": [128, 64]}}, [128, 64]),
        ({"frontend.n_mels": {"type": "int", "low": 32, "high": 96, "step": 32}}, [32, 64, 96]),
        ({}, [128]),  # the fixed front end alone (FrontEnd's default Mel bins)
        ({"frontend.f_min": {"type": "float", "low": 0.0, "high": 100.0}}, []),  # continuous
        ({"frontend.n_mels": {"type": "int", "low": 1, "high": 17}}, []),  # over the limit
    ],
)
def test_frontends_lists_what_trials_can_use(dims, expected):
    space = SearchSpace.from_dict(
        {
            "name": "fe",
            "model": "tfsepnet",
            "fixed": {"frontend": {"hop_length": 744}},
            "dimensions": {"model.width": {"type": "int", "low": 8, "high": 16}, **dims},
        }
    )
    assert [fe.n_mels for fe in space.frontends()] == expected
