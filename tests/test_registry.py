"""The one Registry class, the one spec parser, and every registry of the package."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import nas_asc.models  # noqa: F401  (registers the model families and the blocks)
import nas_asc.search.pruning  # noqa: F401
import nas_asc.train.distill  # noqa: F401
from nas_asc._registry import Registry, all_registries, build_config, parse_spec, split_items
from nas_asc.models import create_model, list_models

# registries added later, and the modules that fill them: checked once the modules exist
_LATER = (
    "nas_asc.search.samplers",
    "nas_asc.search.backends",
    "nas_asc.search.backends.base",
    "nas_asc.search.backends.optuna",
    "nas_asc.search.backends.ray",
)
for _module in _LATER:
    try:
        importlib.import_module(_module)
    except ModuleNotFoundError as err:
        # absent (or needing an optional package): skip; a broken import inside nas_asc is a bug
        if err.name != _module and (err.name or "").startswith("nas_asc"):
            raise

PACKAGE_REGISTRIES = all_registries()  # at collection: the package's, none made by a test yet


def _widgets() -> Registry:
    reg: Registry = Registry("widget")
    reg.register("b", 2)
    reg.register("a", 1)
    return reg


def test_register_as_call_and_as_decorator():
    reg: Registry = Registry("widget")
    assert reg.register("one", 1) == 1

    @reg.register("two", colour="blue")
    def two():
        return 2

    assert two() == 2
    assert reg.get("one") == 1 and reg.get("two") is two
    assert reg.meta("two") == {"colour": "blue"} and reg.meta("one") == {}
    assert "one" in reg and "three" not in reg and ["x"] not in reg
    assert len(reg) == 2


def test_names_are_sorted_everywhere():
    reg = _widgets()
    assert reg.names() == ["a", "b"]
    assert list(reg) == ["a", "b"] and sorted(reg) == ["a", "b"]
    assert repr(reg) == "Registry('widget': a, b)"


def test_a_duplicate_name_is_refused_and_the_first_entry_kept():
    reg = _widgets()
    with pytest.raises(ValueError) as err:
        reg.register("a", 3)
    assert str(err.value) == "widget 'a' is already registered"
    with pytest.raises(ValueError, match="already registered"):
        reg.register("b")(lambda: None)
    assert (reg.get("a"), reg.get("b")) == (1, 2)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        _widgets().get("c")
    assert str(err.value) == "unknown widget 'c'; known widgets: a, b"
    with pytest.raises(ValueError) as err:
        Registry("KD strategy").meta("x")
    assert str(err.value) == "unknown KD strategy 'x'; known KD strategies: (none)"


def test_pop_removes_an_entry():
    reg = _widgets()
    assert reg.pop("a") == 1 and reg.pop("a", "gone") == "gone"
    assert reg.names() == ["b"]


def test_an_empty_name_is_refused():
    with pytest.raises(ValueError, match="a widget name must be a non-empty string, got ''"):
        Registry("widget").register("", 1)


def test_every_registry_is_listed():
    reg = _widgets()
    assert any(r is reg for r in all_registries())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dominance", ("dominance", {})),
        (" dominance : ", ("dominance", {})),
        (
            "dominance:reduction_factor=3,min_peers=0.5,on=true,mode=fast",
            ("dominance", {"reduction_factor": 3, "min_peers": 0.5, "on": True, "mode": "fast"}),
        ),
        ("x:lr=1e-3,big=2E4,a=-1.5e+2", ("x", {"lr": 0.001, "big": 20000.0, "a": -150.0})),
        (
            "x:pool=[],m=[1, 1.5],d={a: 1, b: 2},",
            ("x", {"pool": [], "m": [1, 1.5], "d": {"a": 1, "b": 2}}),
        ),
        ("x: a = 1 , b='q,r'", ("x", {"a": 1, "b": "q,r"})),
    ],
)
def test_parse_spec_reads_names_and_yaml_values(text, expected):
    assert parse_spec(text, "pruner") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dominance:x", "pruner 'dominance:x': expected KEY=VALUE, got 'x'"),
        ("dominance:=3", "pruner 'dominance:=3': expected KEY=VALUE, got '=3'"),
        ("dominance:a=", "pruner 'dominance:a=': expected KEY=VALUE, got 'a='"),
        (
            "dominance:a=1,a=2",
            "pruner 'dominance:a=1,a=2': a is given twice; give each key once",
        ),
        (
            "dominance:a=[1",
            "pruner 'dominance:a=[1': cannot read the value of a, '[1', as YAML; quote it or "
            "close its brackets",
        ),
        (":a=1", "pruner ':a=1' must start with a name (NAME or NAME:KEY=VALUE,...)"),
        ("", "pruner '' must start with a name (NAME or NAME:KEY=VALUE,...)"),
        (None, "pruner must be a string NAME or NAME:KEY=VALUE,..., got None"),
    ],
)
def test_parse_spec_errors_are_one_line(text, message):
    with pytest.raises(ValueError) as err:
        parse_spec(text, "pruner")
    assert str(err.value) == message


def test_parse_spec_names_the_missing_name_and_gives_the_example():
    with pytest.raises(ValueError) as err:
        parse_spec(":width=8", "teacher member spec", name="model family", example="cnn:width=2")
    assert str(err.value) == (
        "teacher member spec ':width=8' must start with a model family "
        "(NAME or NAME:KEY=VALUE,...); e.g. cnn:width=2"
    )


def test_split_items_splits_outside_brackets_only():
    assert split_items(" a=1, b=[1,2] ,,c=(3,4),d={e: 5, f: 6} ") == [
        "a=1",
        "b=[1,2]",
        "c=(3,4)",
        "d={e: 5, f: 6}",
    ]
    assert split_items("a='x,y',b=\"[,\"") == ["a='x,y'", 'b="[,"']
    assert split_items("") == []


@dataclasses.dataclass
class _Config:
    rate: float = 1.0
    count: int = 1


def test_build_config_converts_ints_for_float_fields_and_refuses_unknown_keys():
    built = build_config(_Config, {"rate": 2, "count": 3}, "widget")
    assert built == _Config(2.0, 3) and isinstance(built.rate, float)
    assert build_config(_Config, {"rate": True}, "widget").rate is True  # a bool is not an int
    with pytest.raises(ValueError) as err:
        build_config(_Config, {"speed": 1, "colour": 2}, "widget 'w'")
    assert str(err.value) == (
        "widget 'w': unknown config field(s) ['colour', 'speed']; known fields: ['count', 'rate']"
    )


def test_the_package_registries_are_all_found():
    kinds = {r.kind for r in PACKAGE_REGISTRIES}
    assert {"model", "KD strategy", "block", "pruner"} <= kinds


@pytest.mark.parametrize("registry", PACKAGE_REGISTRIES, ids=lambda r: r.kind)
def test_every_package_registry_refuses_duplicates_and_lists_its_names(registry):
    names = registry.names()
    assert names, f"{registry.kind} registry is empty"
    first = registry.get(names[0])
    with pytest.raises(ValueError) as err:
        registry.register(names[0], object())
    assert str(err.value) == f"{registry.kind} {names[0]!r} is already registered"
    assert registry.get(names[0]) is first
    with pytest.raises(ValueError) as err:
        registry.get("no-such-name")
    assert str(err.value) == (
        f"unknown {registry.kind} 'no-such-name'; known {registry.plural}: {', '.join(names)}"
    )


@pytest.mark.parametrize("family", list_models())
def test_complexity_counts_on_the_family_reference_input_by_default(family, capsys):
    import json

    from nas_asc.cli import main
    from nas_asc.complexity import count
    from nas_asc.models import get_reference_input

    shape = get_reference_input(family)
    assert main(["complexity", family, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    c = count(create_model(family), (1, *shape))
    assert (shown["params"], shown["macs"]) == (c.params, c.macs)


def test_reference_inputs_are_the_reports_front_ends():
    from nas_asc.models import get_reference_input

    assert get_reference_input("bcresnet") == (1, 256, 44)  # BC-ResNet student, 256 Mel bins
    assert get_reference_input("cpmobile") == (1, 256, 65)  # the DCASE 2024 baseline
    assert get_reference_input("tfsepnet") == (1, 128, 44)


def test_complexity_under_the_2025_rule_explains_its_other_count(capsys):
    from nas_asc.cli import main

    assert main(["complexity", "tfsepnet", "--budget", "dcase2025"]) == 0
    out = capsys.readouterr().out
    assert "parameters             52,670" in out
    assert "the 2024 rule counts the float network: 54,270 parameters, 57,510 bytes" in out
