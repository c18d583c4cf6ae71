"""DCASE 2025: the budget rule, the stand-alone int8 networks and the package's runtime."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from nas_asc.budget import PRESETS, Budget, parse_budget
from nas_asc.complexity import count
from nas_asc.deploy import runtime
from nas_asc.deploy.netgen import checker_count, network_source, standalone
from nas_asc.errors import BudgetError, NasAscError
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


@pytest.mark.parametrize(
    "name",
    [
        # two families by default, the other six (14 s) in the slow suite
        name if name in ("tfsepnet", "cpmobile") else pytest.param(name, marks=pytest.mark.slow)
        for name in list_models()
    ],
)
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


# ------------------------------------------------------------------------------------------
# The package's predict() on the organizers' clips: its errors, warnings and device IDs
# ------------------------------------------------------------------------------------------

CHEAP = "Cheap_NASASC_task1"


def _int8(shape, seed):
    torch.manual_seed(seed)
    model = create_model("cpmobile").eval()
    return quantize_ptq(model, torch.randn(8, *shape))


@pytest.fixture(scope="module")
def cheap(tiny_protocol, tmp_path_factory):
    """A package written by the export's own writer without a search: submission 1 is a general
    int8 cpmobile and another for device s1 (random weights), on the tiny test fold's
    normalization. Yields the imported module, the two nas-asc int8 models and the features."""
    import importlib
    from types import SimpleNamespace

    import numpy as np

    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.export.dcase2025 import package

    frontend = FrontEnd(n_mels=32)
    train_set, test_set = load_features(tiny_protocol.test_view(), frontend, progress=False)
    shape = frontend.input_shape()
    int8 = {"general": _int8(shape, 0), "s1": _int8(shape, 1)}
    example = test_set.x[:1]
    networks = {name: standalone(q, example) for name, q in int8.items()}
    counts = {name: checker_count(n.module, (1, *shape)) for name, n in networks.items()}
    per_device = {
        d: dict(zip(("MACs", "Params"), counts.get(d, counts["general"]), strict=True))
        for d in package.DEVICE_IDS
    }
    built = package._Built(
        1,
        SimpleNamespace(number=0),
        "cpmobile",
        frontend,
        train_set.mean,
        train_set.std,
        networks,
        int8,
        per_device,
        np.zeros(0),
        0.0,
        "",
    )
    study = SimpleNamespace(study_name="cheap")
    root = tmp_path_factory.mktemp("cheap") / "pkg"
    root.mkdir()
    package._write(root, CHEAP, study, [built])
    row = {
        "index": 1,
        "trial": 0,
        "family": "cpmobile",
        "devices": ["s1"],
        "max_macs": max(c["MACs"] for c in per_device.values()),
        "max_param_bytes": max(c["Params"] for c in per_device.values()),
        "accuracy": 0.0,
    }
    (root / "README.md").write_text(package._readme(CHEAP, study, [row], ["for the tests"]))
    sys.path.insert(0, str(root))
    try:
        api = importlib.import_module(f"{CHEAP}.{CHEAP}_1")
        yield SimpleNamespace(root=root, api=api, int8=int8, test_set=test_set)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == CHEAP or m.startswith(f"{CHEAP}.")]:
            del sys.modules[name]


def _clip_files(tiny_protocol, test_set, n):
    view = tiny_protocol.test_view()
    return [str(view.path(name)) for name in test_set.filenames[:n]]


def _clip_warnings(fn, *args, **kwargs):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    # the package's own copy of the runtime: its ClipWarning, not nas-asc's
    clip_warning = sys.modules[fn.__module__]._runtime.ClipWarning
    return result, [w for w in caught if issubclass(w.category, clip_warning)]


def test_predict_on_valid_clips_is_nas_ascs_int8_network_bit_for_bit(cheap, tiny_protocol):
    """The organizers' call on the task's clips (1 s, 44.1 kHz, mono): the logits of nas-asc's
    own int8 models on nas-asc's features, bit for bit, in any batch size, and no warning."""
    test_set = cheap.test_set
    n = 48
    files = _clip_files(tiny_protocol, test_set, n)
    devices = [str(d) for d in test_set.devices[:n]]
    devices[::5] = ["s1"] * len(devices[::5])
    x = test_set.x[:n]
    own = torch.tensor([d == "s1" for d in devices])
    with torch.no_grad():
        expected = torch.where(own[:, None], cheap.int8["s1"](x), cheap.int8["general"](x))
    for batch_size in (64, 7):
        (logits, classes), warned = _clip_warnings(
            cheap.api.predict, files, devices, use_cuda=False, batch_size=batch_size
        )
        assert torch.equal(torch.stack(logits), expected)
        assert len(classes) == 10 and warned == []
    inputs = cheap.api.load_inputs(files[:3], devices[:3], cheap.api.load_model())
    assert torch.equal(torch.cat(inputs), x[:3])


def test_device_ids_match_in_any_case_and_others_get_the_general_model(cheap, tiny_protocol):
    model = cheap.api.load_model()
    assert cheap.api.get_model_for_device(model, "S1") is model.models["s1"]
    assert cheap.api.get_model_for_device(model, " s1 ") is model.models["s1"]
    for other in ("unknown", "S4", "a", "x"):
        assert cheap.api.get_model_for_device(model, other) is model.models["general"]
    clip = _clip_files(tiny_protocol, cheap.test_set, 1)[0]
    logits, _ = cheap.api.predict([clip] * 4, ["S1", "s1", "unknown", "a"], use_cuda=False)
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[2], logits[3])
    assert not torch.equal(logits[0], logits[2])


def _wav(path, seconds=1.0, rate=44100, channels=1, seed=0):
    import numpy as np
    import soundfile

    noise = np.random.default_rng(seed).standard_normal((int(seconds * rate), channels)) * 0.05
    soundfile.write(str(path), noise.astype(np.float32), rate, subtype="PCM_24")
    return str(path)


def test_clips_off_the_task_format_are_converted_with_one_warning_per_kind(cheap, tmp_path):
    """A 5-second clip is cut to its first second (its logits are those of that second as a
    clip of its own), 6 channels are mixed down, 22.05 kHz is resampled, half a second is
    padded: each kind is said once per call, with how many clips and the first of them."""
    import soundfile

    long_clip = _wav(tmp_path / "long.wav", seconds=5)
    data, rate = soundfile.read(long_clip, dtype="float32")
    first = tmp_path / "first_second.wav"
    soundfile.write(str(first), data[:rate], rate, subtype="FLOAT")
    files = [
        long_clip,
        _wav(tmp_path / "long2.wav", seconds=5, seed=1),
        _wav(tmp_path / "six.wav", channels=6),
        _wav(tmp_path / "six2.wav", channels=6, seed=1),
        _wav(tmp_path / "slow.wav", rate=22050),
        _wav(tmp_path / "short.wav", seconds=0.5),
        str(first),
    ]
    (logits, _), warned = _clip_warnings(cheap.api.predict, files, ["a"] * 7, use_cuda=False)
    assert len(logits) == 7 and all(t.shape == (10,) for t in logits)
    assert torch.equal(logits[0], logits[6])
    messages = [str(w.message) for w in warned]
    assert len(messages) == 4, messages
    cut, six, short, slow = (
        next(m for m in messages if kind in m)
        for kind in ("longer than", "not mono:", "shorter than", "not at 44.1 kHz")
    )
    assert cut.startswith("2 of 7 clip(s) are longer than 1 s: only their first 1 s is used")
    assert f"(first: {long_clip}, 5.000 s)" in cut
    assert six.startswith("2 of 7 clip(s) are not mono: mixed down") and "6 channels" in six
    assert short.startswith("1 of 7 clip(s) are shorter than 1 s: padded with silence")
    assert slow.startswith("1 of 7 clip(s) are not at 44.1 kHz: each is resampled")
    assert "22050 Hz" in slow and str(tmp_path / "slow.wav") in slow
    assert all(runtime.RULE in m for m in messages)


def _bad_clip(folder, kind):
    path = folder / f"{kind}.wav"
    if kind in ("truncated", "header-only", "no-data-chunk"):  # a 1-s 24-bit WAV, cut short
        size = {"truncated": 60, "header-only": 44, "no-data-chunk": 30}[kind]
        path.write_bytes(open(_wav(path), "rb").read()[:size])  # noqa: SIM115
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not audio")
    elif kind == "folder":
        path.mkdir()
    return str(path)


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("missing", FileNotFoundError, ["file_paths[1]", "not found"]),
        ("truncated", ValueError, ["file_paths[1]", "truncated", "holds 16"]),
        ("header-only", ValueError, ["truncated", "declares 132,300 bytes", "holds 0"]),
        ("no-data-chunk", ValueError, ["file_paths[1]", "cannot be decoded"]),
        ("empty", ValueError, ["0 bytes"]),
        ("text", ValueError, ["cannot be decoded"]),
        ("folder", ValueError, ["is not a file"]),
    ],
)
def test_a_bad_clip_is_an_error_naming_the_file_and_the_rule(
    cheap, tiny_protocol, tmp_path, kind, error, words
):
    good = _clip_files(tiny_protocol, cheap.test_set, 1)[0]
    bad = _bad_clip(tmp_path, kind)
    with pytest.raises(error) as info:
        cheap.api.predict([good, bad], ["a", "b"], use_cuda=False)
    message = str(info.value)
    assert bad in message and runtime.RULE in message, message
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"batch_size": -1}, ValueError, ["batch_size", "positive whole number", "-1"]),
        ({"batch_size": 0}, ValueError, ["batch_size", "positive whole number"]),
        ({"batch_size": 2.5}, ValueError, ["batch_size", "positive whole number"]),
        ({"device_ids": ["a", "b"]}, ValueError, ["equally long", "1 and 2"]),
        ({"device_ids": [None]}, ValueError, ["device_ids[0]", "not a string", "'s1'"]),
        ({"device_ids": "a"}, ValueError, ["device_ids must be a list", "['a']"]),
        ({"file_paths": "x.wav"}, ValueError, ["file_paths must be a list", "['x.wav']"]),
        ({"file_paths": [3]}, ValueError, ["file_paths[0]", "not a path"]),
        ({"model_file_path": "WAV"}, ValueError, ["model_file_path", "not a PyTorch checkpoint"]),
        ({"model_file_path": "NONE"}, FileNotFoundError, ["model_file_path", "not found"]),
        ({"model_file_path": "DIR"}, ValueError, ["model_file_path", "not a file"]),
        ({"model_file_path": "FOREIGN"}, ValueError, ["not a checkpoint of this package"]),
    ],
)
def test_a_bad_argument_is_an_error_naming_it_and_the_rule(
    cheap, tiny_protocol, tmp_path, kwargs, error, words
):
    clip = _clip_files(tiny_protocol, cheap.test_set, 1)[0]
    paths = {
        "WAV": clip,
        "NONE": str(tmp_path / "missing.pt"),
        "DIR": str(tmp_path),
        "FOREIGN": str(tmp_path / "foreign.pt"),
    }
    torch.save({"state_dict": {}}, paths["FOREIGN"])
    if kwargs.get("model_file_path") in paths:
        kwargs = {**kwargs, "model_file_path": paths[kwargs["model_file_path"]]}
        words = [*words, kwargs["model_file_path"]]
    call = {"file_paths": [clip], "device_ids": ["a"], "use_cuda": False, **kwargs}
    with pytest.raises(error) as info:
        cheap.api.predict(**call)
    message = str(info.value)
    assert all(w in message for w in words), message


def test_every_command_the_package_readme_names_works(cheap, tmp_path):
    """The README's commands: ``pip install -e .`` (a wheel of the folder holds the package,
    its checkpoints and resources), ``pip install torchinfo`` and ``python test_complexity.py``,
    which prints the checker's figures and writes the complexity.json the export wrote."""
    import importlib.util
    import json
    import re
    import shlex
    import shutil
    import subprocess
    import zipfile

    readme = (cheap.root / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command)
        if argv == ["pip", "install", "-e", "."]:
            copy = tmp_path / "copy"
            shutil.copytree(cheap.root, copy)
            done = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
                + ["--no-index", "-q", "-w", str(tmp_path / "wheel"), str(copy)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            (wheel,) = (tmp_path / "wheel").glob("*.whl")
            names = set(zipfile.ZipFile(wheel).namelist())
            for rel in ("_runtime.py", f"{CHEAP}_1.py", "_nets/net_1.py"):
                assert f"{CHEAP}/{rel}" in names, rel
            assert {f"{CHEAP}/ckpts/{CHEAP}_1.pt", f"{CHEAP}/resources/dummy.wav"} <= names
        elif argv == ["pip", "install", "torchinfo"]:
            assert importlib.util.find_spec("torchinfo") is not None
        elif argv[:2] == ["python", "test_complexity.py"]:
            script = cheap.root / argv[1]
            env = {**os.environ, "PYTHONPATH": str(cheap.root)}
            done = subprocess.run(
                [sys.executable, str(script), *argv[2:]],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp_path,
                check=False,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            assert "s10 | MACs:" in done.stdout and "limits: 30,000,000 MACs" in done.stdout
            rel = f"predictions/{CHEAP}_1/complexity.json"
            got = json.loads((tmp_path / rel).read_text())
            assert got == json.loads((cheap.root / rel).read_text())
        else:
            pytest.fail(f"the README names a command the test does not know: {command}")


def test_folders_of_killed_exports_are_removed_and_no_other(tmp_path):
    """A killed export's folder (its pid no longer runs) goes; one whose writer runs, one
    without the mark, a file and a symlink of that name stay."""
    import json
    import socket
    import subprocess
    import time

    from nas_asc.export.dcase2025.package import _WORKDIR_MARK, remove_stale_workdirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:

        def workdir(name, pid, mark=True):
            folder = tmp_path / f".{name}.tmp-{pid}-abc_123"
            (folder / "pkg").mkdir(parents=True)
            if mark:
                record = {"tool": "nas-asc export", "pid": pid, "host": socket.gethostname()}
                (folder / _WORKDIR_MARK).write_text(json.dumps({**record, "created": time.time()}))
            return folder

        stale = workdir("pkg", dead.pid)
        other_out = workdir("submission", dead.pid)
        running = workdir("pkg", alive.pid)
        mine = workdir("pkg", os.getpid())
        unmarked = workdir("pkg", dead.pid + 100_000_000, mark=False)
        (tmp_path / f".x.tmp-{dead.pid}-file").write_text("a file")
        (tmp_path / f".y.tmp-{dead.pid}-link").symlink_to(stale)
        (tmp_path / "pkg").mkdir()
        removed = remove_stale_workdirs(tmp_path)
        assert sorted(removed) == sorted([stale, other_out])
        assert not stale.exists() and not other_out.exists()
        for kept in (running, mine, unmarked, tmp_path / "pkg"):
            assert kept.is_dir(), kept
        assert (tmp_path / f".x.tmp-{dead.pid}-file").is_file()
        assert (tmp_path / f".y.tmp-{dead.pid}-link").is_symlink()
    finally:
        alive.kill()
        alive.wait()
