"""Teacher ensembles of mixed families, their cache key, and external logits files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nas_asc.errors import NasAscError
from nas_asc.train.teacher import (
    TeacherConfig,
    TeacherMember,
    _cache_path,
    get_teacher,
    load_teacher_logits,
    parse_member,
)

# two tiny members of different families, exactly as `--member` parses them
SPECS = ("tfsepnet:width=8", "bcresnet:width=8")


def _config(**train) -> TeacherConfig:
    base = TeacherConfig()
    members = tuple(parse_member(text, i) for i, text in enumerate(SPECS))
    recipe = dataclasses.replace(base.train, epochs=1, **train)
    return TeacherConfig(members=members, train=recipe)


@pytest.fixture(scope="module")
def ensemble(tiny_dataset):
    return get_teacher(tiny_dataset, _config(), progress=False)


@pytest.fixture(scope="module")
def search_ensemble(tiny_search):
    """The same members trained as a search trains them: on the training part."""
    return get_teacher(tiny_search, _config(), progress=False)


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``nas-asc ARGS`` in this process: (exit code, stdout, stderr)."""
    from nas_asc.cli import main

    code = main(["--quiet", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ configuration


def test_default_is_two_cheap_tfsepnets_with_mixstyle_0_and_0_3():
    members = TeacherConfig().members
    assert [(m.family, m.model["width"], m.mixstyle_p, m.seed) for m in members] == [
        ("tfsepnet", 24, 0.0, 0),
        ("tfsepnet", 24, 0.3, 1),
    ]


def test_parse_member_reads_family_fields_mixstyle_and_seed():
    m = parse_member("bcresnet:width=80,stem_stride=1,pool_after=[],mixstyle_p=0.4,seed=7", 3)
    assert m == TeacherMember("bcresnet", {"width": 80, "stem_stride": 1, "pool_after": ()}, 0.4, 7)
    assert parse_member("tfsepnet", 1) == TeacherMember("tfsepnet", {}, 0.3, 1)
    assert parse_member("bcres2net:multipliers=[1, 1.5, 2, 2.5]").model["multipliers"] == (
        1,
        1.5,
        2,
        2.5,
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope:width=8", "unknown model 'nope'"),
        ("bcresnet:base_channels=80", r"unknown config field\(s\) \['base_channels'\]"),
        ("bcresnet:width", "expected KEY=VALUE"),
        (":width=8", "must start with a model family"),
        ("tfsepnet:mixstyle_p=2", r"MixStyle p must be in \[0, 1\]"),
        ("bcresnet:width=2", "width must be an integer >= 4"),
    ],
)
def test_bad_member_specs_are_one_line_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_member(spec)


def test_cache_key_covers_every_member_setting_and_resolves_defaults(tiny_dataset):
    base = _config()
    a, b = base.members

    def key(*members, **changes):
        return _cache_path(tiny_dataset, dataclasses.replace(base, members=members, **changes))

    reference = key(a, b)
    assert reference == _cache_path(tiny_dataset, _config())
    variants = [
        key(b, a),
        key(a),
        key(dataclasses.replace(a, seed=9), b),
        key(dataclasses.replace(a, mixstyle_p=0.5), b),
        key(TeacherMember("tfsepnet", {"width": 12}), b),
        key(TeacherMember("cnn", {}), b),
        key(a, b, frontend=dataclasses.replace(base.frontend, n_mels=32)),
        key(a, b, train=dataclasses.replace(base.train, epochs=2)),
    ]
    assert len({reference, *variants}) == len(variants) + 1
    # a field given at its default names the same network, hence the same entry
    spelled_out = TeacherMember("tfsepnet", {"width": 8, "dropout": 0.2}, a.mixstyle_p, a.seed)
    assert key(spelled_out, b) == reference


def test_teacher_config_refuses_no_members_and_qat():
    with pytest.raises(ValueError, match="at least 1 member"):
        TeacherConfig(members=())
    with pytest.raises(ValueError, match="at least 1 member"):
        TeacherConfig.uniform(0)
    if "quantization" in {f.name for f in dataclasses.fields(TeacherConfig().train)}:
        with pytest.raises(ValueError, match="teacher members train in float"):
            _config(quantization="qat")


# ------------------------------------------------------------------ training a mixed ensemble


def test_mixed_family_ensemble_reports_each_member_and_the_ensemble(ensemble, tiny_dataset):
    report = ensemble.report
    assert [m["family"] for m in report["members"]] == ["tfsepnet", "bcresnet"]
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in report["members"])
    assert ensemble.logits.shape == (tiny_dataset.n_meta_rows, 10)
    rows = np.concatenate([tiny_dataset.train.row, tiny_dataset.evaluate.row])
    assert torch.isfinite(ensemble.logits[rows]).all()
    ev = tiny_dataset.evaluate
    labels = torch.tensor(ev.label.to_numpy())
    expected = (ensemble.logits[ev.row.to_numpy()].argmax(1) == labels).float().mean().item()
    assert report["ensemble_accuracy"] == pytest.approx(expected)
    assert set(report["ensemble"]["accuracy_by_device"]) == set(ev.device)
    # a second call is served from the cache
    again = get_teacher(tiny_dataset, _config(), progress=False)
    assert torch.equal(again.logits.nan_to_num(), ensemble.logits.nan_to_num())


def test_cli_trains_members_of_several_families(search_ensemble, tiny_root, capsys, monkeypatch):
    # same members as the fixture (the CLI's seeds and MixStyle defaults), so the cache serves it
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    members = [x for spec in SPECS for x in ("--member", spec)]
    code, out, err = run(capsys, "teacher", "--data", str(tiny_root), "--epochs", "1", *members)
    assert code == 0, err
    assert "member 0: tfsepnet:width=8 seed 0" in out
    assert "member 1: bcresnet:width=8 seed 1, MixStyle p=0.3" in out
    accuracy = search_ensemble.report["ensemble_accuracy"]
    assert f"ensemble accuracy: {accuracy:.1%}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--member", "tfsepnet", "--members", "3"), "leave out --members/--width"),
        (("--member", "tfsepnet:depth=3"), "unknown config field(s) ['depth']"),
        (("--logits", "x.pt", "--epochs", "2"), "--logits checks an existing logits file"),
    ],
)
def test_cli_teacher_errors_are_one_line(args, message, capsys, monkeypatch):
    monkeypatch.delenv("NAS_ASC_DEBUG", raising=False)
    code, _, err = run(capsys, "teacher", *args)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ external logits files


def test_external_logits_load_from_pt_dict_and_npy(ensemble, tiny_dataset, tmp_path):
    logits = ensemble.logits.nan_to_num(0.0)
    torch.save(logits.double(), tmp_path / "t.pt")
    torch.save({"logits": logits, "info": "ensemble of 2"}, tmp_path / "d.pt")
    np.save(tmp_path / "n.npy", logits.half().numpy())
    for name in ("t.pt", "d.pt", "n.npy"):
        loaded = load_teacher_logits(tmp_path / name, tiny_dataset)
        assert loaded.logits.dtype == torch.float32
        assert loaded.report["source"].endswith(name)
        acc = loaded.report["ensemble_accuracy"]
        assert acc == pytest.approx(ensemble.report["ensemble_accuracy"], abs=0.02)  # fp16


def test_external_logits_may_leave_evaluate_rows_out(ensemble, tiny_dataset, tmp_path):
    logits = ensemble.logits.clone()
    eval_rows = torch.as_tensor(tiny_dataset.evaluate.row.to_numpy())
    logits[eval_rows[: len(eval_rows) // 2]] = float("nan")
    torch.save(logits, tmp_path / "half.pt")
    report = load_teacher_logits(tmp_path / "half.pt", tiny_dataset).report
    assert report["ensemble"]["n_clips"] == len(eval_rows) - len(eval_rows) // 2


def test_bad_external_logits_are_one_line_errors(tiny_dataset, tmp_path):
    n = tiny_dataset.n_meta_rows
    shape = rf"\({n}, 10\)"
    cases = {
        "short.pt": (torch.zeros(n - 1, 10), rf"must have shape .*= {shape}, got \({n - 1}, 10\)"),
        "wide.npy": (np.zeros((n, 11), np.float32), rf"= {shape}, got \({n}, 11\)"),
        "int.pt": (torch.zeros(n, 10, dtype=torch.long), "must be floating point, got dtype"),
        "int.npy": (np.zeros((n, 10), np.int64), "must be floating point, got dtype int64"),
        "keys.pt": ({"scores": torch.zeros(n, 10)}, "without a 'logits' entry"),
        "list.pt": ([1.0, 2.0], "must hold a tensor or"),
    }
    nan = torch.zeros(n, 10)
    nan[int(tiny_dataset.train.row.iloc[0])] = float("nan")
    cases["nan.pt"] = (nan, "not finite on 1 of .* training clips")
    for name, (value, message) in cases.items():
        path = tmp_path / name
        np.save(path, value) if name.endswith(".npy") else torch.save(value, path)
        with pytest.raises(NasAscError, match=message) as info:
            load_teacher_logits(path, tiny_dataset)
        assert "\n" not in str(info.value)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(NasAscError, match=r"must be a torch \.pt/\.pth or a NumPy \.npy"):
        load_teacher_logits(tmp_path / "x.csv", tiny_dataset)
    with pytest.raises(NasAscError, match="does not exist"):
        load_teacher_logits(tmp_path / "missing.pt", tiny_dataset)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(NasAscError, match="cannot read teacher logits file"):
        load_teacher_logits(tmp_path / "junk.pt", tiny_dataset)


def test_cli_reports_the_accuracy_of_an_external_file(search_ensemble, tiny_root, tmp_path, capsys):
    # logits of the training part and validation split (NaN on the test fold): the CLI reports
    # their accuracy on the validation split, as the search sees them
    torch.save(search_ensemble.logits, tmp_path / "ens.pt")
    args = ("teacher", "--data", str(tiny_root), "--logits", str(tmp_path / "ens.pt"))
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert f"{search_ensemble.report['ensemble_accuracy']:.1%}" in out
    assert "ens.pt" in out


def test_a_large_npy_of_the_wrong_shape_is_refused_from_its_header(tiny_dataset, tmp_path):
    """A 1.2 GB array (a sparse file here) of the wrong shape: refused without reading it."""
    import tracemalloc

    from toydata import sparse_npy

    from nas_asc.errors import NasAscError

    path = tmp_path / "logits.npy"
    sparse_npy(path, (30_000_000, 10))
    tracemalloc.start()
    try:
        with pytest.raises(NasAscError, match=r"got \(30000000, 10\)"):
            load_teacher_logits(path, tiny_dataset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000  # bytes: the header, not the 1.2 GB of data
