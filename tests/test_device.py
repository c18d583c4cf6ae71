"""Where training runs: --device, worker placement over GPUs, Ray's GPU shares, the trainer on
a device, progress inside epochs. CUDA itself is exercised by the ``gpu`` tests at the end,
which skip on a machine without it."""

from __future__ import annotations

import io

import pytest
import torch

from nas_asc.cli import main
from nas_asc.device import parse_gpus, resolve_device, runtime_info, worker_devices
from nas_asc.errors import NasAscError
from nas_asc.progress import ConsoleReporter
from nas_asc.search.backends.ray import trial_resources
from nas_asc.train import accel
from nas_asc.train.loop import TrainConfig, evaluate, train
from tests.toydata import toy_set

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture()
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda_and_the_first_gpu_with_it(no_cuda):
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")


def test_auto_takes_the_first_gpu(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0) == resolve_device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpu", "--device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("cuda:x", "--device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
        ("cuda:2", "--device cuda:2: torch sees 2 CUDA devices (cuda:0 to cuda:1)"),
    ],
)
def test_bad_device_specs_are_one_line(two_gpus, spec, message):
    with pytest.raises(NasAscError) as err:
        resolve_device(spec)
    assert str(err.value) == message


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_refused(no_cuda, spec):
    with pytest.raises(NasAscError, match=rf"^--device {spec}: .*; use --device cpu \(or auto\)$"):
        resolve_device(spec)


@pytest.mark.parametrize(
    ("workers", "device", "gpus", "expected"),
    [
        (4, "cuda", (0, 1), ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]),
        (3, "auto", None, ["cuda:0", "cuda:1", "cuda:0"]),  # every visible GPU, in turn
        (3, "cuda", (1,), ["cuda:1"] * 3),  # three trials share GPU 1
        (2, "cuda:1", None, ["cuda:1", "cuda:1"]),
        (2, "cpu", None, ["cpu", "cpu"]),
    ],
)
def test_workers_are_placed_over_the_gpus_in_turn(two_gpus, workers, device, gpus, expected):
    assert worker_devices(workers, device, gpus) == expected


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda", (0, 2), "--gpus 0,2: torch sees 2 CUDA devices (0 to 1), not 2"),
        ("cuda:1", (0,), "--device cuda:1 names one GPU; leave out --gpus or use --device cuda"),
        ("cpu", (0,), "--gpus 0 needs CUDA, but training runs on the CPU (--device cpu)"),
    ],
)
def test_bad_placements_are_one_line(two_gpus, device, gpus, message):
    with pytest.raises(NasAscError) as err:
        worker_devices(2, device, gpus)
    assert str(err.value) == message


def test_gpus_without_cuda_say_so(no_cuda):
    with pytest.raises(NasAscError) as err:
        worker_devices(2, "auto", (0,))
    assert str(err.value) == (
        "--gpus 0 needs CUDA, but training runs on the CPU (--device auto: torch sees no CUDA "
        "device)"
    )
    assert worker_devices(2, "auto") == ["cpu", "cpu"]


@pytest.mark.parametrize(("text", "expected"), [("0,1", (0, 1)), (" 3 ", (3,)), (None, None)])
def test_parse_gpus(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0,,1", "--gpus takes GPU indices separated by commas, e.g. 0,1; got '0,,1'"),
        ("a", "--gpus takes GPU indices separated by commas, e.g. 0,1; got 'a'"),
        ("1,1", "--gpus lists a GPU twice: '1,1'"),
    ],
)
def test_bad_gpu_lists(text, message):
    with pytest.raises(NasAscError) as err:
        parse_gpus(text)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("workers", "device", "gpus", "expected"),
    [
        (4, "auto", 0, {"cpu": 1}),
        (4, "cpu", 8, {"cpu": 1}),
        (8, "auto", 2, {"cpu": 1, "gpu": 0.25}),  # four trials per GPU fill both
        (4, "cuda", 3, {"cpu": 1, "gpu": 0.5}),  # ceil(4 / 3) = 2 per GPU: all four run
        (2, "cuda", 4, {"cpu": 1, "gpu": 1.0}),
    ],
)
def test_ray_trials_take_a_share_of_a_gpu_that_fills_the_cluster(workers, device, gpus, expected):
    assert trial_resources(workers, device, gpus) == expected


def test_ray_refuses_cuda_on_a_cluster_without_gpus():
    with pytest.raises(NasAscError, match=r"^--device cuda: the Ray cluster has no GPU"):
        trial_resources(2, "cuda", 0)


@pytest.mark.parametrize(
    "command",
    [
        ["search", "--space", "tfsepnet"],
        ["teacher"],
        ["evaluate", "--study", "x"],
        ["finetune", "--study", "x"],
        ["export", "--study", "x", "--out", "out"],
    ],
)
def test_every_training_command_refuses_cuda_it_does_not_have(no_cuda, command, capsys, tmp_path):
    # checked before anything is read or written: the study "x" does not even exist
    assert (
        main(
            [*command, "--device", "cuda", "--storage", f"sqlite:///{tmp_path}/x.db"]
            if command[0] != "teacher"
            else [*command, "--device", "cuda"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nas-asc: error: --device cuda: ")
    assert not list(tmp_path.iterdir())


def test_runtime_info_names_the_device_and_the_libraries():
    import torchaudio

    info = runtime_info("cpu")
    assert info["device"] == "cpu"
    assert (info["torch"], info["torchaudio"]) == (torch.__version__, torchaudio.__version__)


def test_feature_sets_read_batches_bit_identical_to_the_whole_tensor():
    from nas_asc.data.features import FeatureSet

    raw = (torch.randn(10, 8, 5) * 4 + 2).half()
    fs = FeatureSet(
        raw=raw,
        y=torch.arange(10),
        devices=["a"] * 10,
        filenames=[f"{i}.wav" for i in range(10)],
        rows=torch.arange(10),
        mean=1.7,
        std=3.9,
    )
    idx = torch.tensor([7, 2, 2, 9])
    assert fs.shape == (10, 1, 8, 5) and fs.to("cpu") is fs
    assert torch.equal(fs.batch(idx), fs.x[idx])
    assert torch.equal(fs.x, ((raw.float() - 1.7) / 3.9).unsqueeze(1))
    sub = fs.subset(idx)
    assert torch.equal(sub.x, fs.x[idx]) and sub.filenames == ["7.wav", "2.wav", "2.wav", "9.wav"]
    with pytest.raises(ValueError, match="exactly one of x"):
        FeatureSet(y=fs.y, devices=[], filenames=[], rows=fs.rows)


def test_on_step_sees_every_step_of_every_epoch():
    calls = []
    data = toy_set(40)
    train(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 16, 3)),
        data,
        TrainConfig(epochs=2, batch_size=16, mixstyle_p=0.0),
        on_step=lambda *args: calls.append(args),
    )
    assert calls == [(e, s, 3) for e in range(2) for s in (1, 2, 3)]


def test_explicit_cpu_trains_exactly_as_the_default():
    def run(**options):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 16, 3))
        runtime = accel.AccelOptions(threads=1, **options)
        result = train(
            model, toy_set(48), TrainConfig(epochs=2, batch_size=16), seed=3, runtime=runtime
        )
        return result.history, [p.detach().clone() for p in model.parameters()]

    default, explicit = run(), run(device="cpu")
    assert default[0] == explicit[0]
    assert all(torch.equal(a, b) for a, b in zip(default[1], explicit[1], strict=True))


def test_step_progress_appears_only_inside_long_epochs():
    now = [0.0]
    out = io.StringIO()
    reporter = ConsoleReporter(live=False, stream=out, step_interval=60, clock=lambda: now[0])
    for step in range(1, 101):  # 100 steps, 1 s each: one line 60 s after the first
        now[0] = float(step)
        reporter.step(3, 2, 8, step, 100)
    assert out.getvalue() == ("  trial 3: epoch 2/8, step 61/100 (61%), epoch ETA 39 s\n")
    out.seek(0), out.truncate()
    for step in range(1, 31):  # a 30 s epoch adds nothing
        now[0] = 1000.0 + step
        reporter.step("teacher 1/4", 1, 4, step, 30)
    assert out.getvalue() == ""


@pytest.mark.gpu
@cuda
def test_cuda_training_matches_the_cpu_within_float_rounding():
    def run(device: str):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 16, 3))
        runtime = accel.AccelOptions(threads=1, device=device)
        result = train(
            model, toy_set(96), TrainConfig(epochs=3, batch_size=16), seed=1, runtime=runtime
        )
        assert next(model.parameters()).device.type == "cpu"  # back for int8 conversion
        return result, evaluate(model, toy_set(48, seed=1))

    (cpu, cpu_eval), (gpu, gpu_eval) = run("cpu"), run("cuda")
    assert gpu.accel["device"] == "cuda:0"
    for a, b in zip(cpu.history, gpu.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert gpu_eval.accuracy == pytest.approx(cpu_eval.accuracy, abs=0.03)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains(amp):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 16, 3))
    runtime = accel.AccelOptions(device="cuda")
    train(
        model, toy_set(96), TrainConfig(epochs=4, batch_size=16, amp=amp), seed=1, runtime=runtime
    )
    assert evaluate(model, toy_set(48, seed=1)).accuracy > 0.9


def test_search_settings_carry_device_and_compile_to_the_trainer():
    from nas_asc.search.settings import SearchSettings

    settings = SearchSettings("s", "sqlite:///s.db", 1, device="cpu", compile="auto", gpus=[1, 0])
    assert settings.gpus == (1, 0)
    options = settings.runtime("cpu")
    assert (options.device, options.compile) == ("cpu", "auto")
    with pytest.raises(NasAscError, match=r"^compile must be one of off, on, auto, got 'yes'$"):
        SearchSettings("s", "sqlite:///s.db", 1, compile="yes")
    with pytest.raises(NasAscError, match=r"^--device must be auto, cpu, cuda or cuda:N"):
        SearchSettings("s", "sqlite:///s.db", 1, device="gpu")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_the_cpu_too(amp):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 16, 3))
    config = TrainConfig(epochs=4, batch_size=16, amp=amp)
    result = train(model, toy_set(96), config, seed=1, runtime=accel.AccelOptions(threads=1))
    assert result.accel["amp"] == amp and next(model.parameters()).dtype == torch.float32
    assert evaluate(model, toy_set(48, seed=1)).accuracy > 0.9


def test_amp_is_checked_and_kept_out_of_old_keys():
    with pytest.raises(ValueError, match=r"^train config: amp must be one of off, bf16, fp16"):
        TrainConfig(amp="fp8")
    assert "amp" not in TrainConfig().to_dict() and TrainConfig(amp="bf16").to_dict()["amp"]


def test_sets_are_moved_to_a_device_once_per_process_and_freed_with_them():
    import gc

    from nas_asc.data.features import FeatureSet
    from nas_asc.train import loop

    def make():
        return FeatureSet(
            raw=torch.zeros(6, 4, 3, dtype=torch.float16),
            y=torch.arange(6),
            devices=["a"] * 6,
            filenames=[f"{i}.wav" for i in range(6)],
            rows=torch.arange(6),
        )

    meta = torch.device("meta")  # a device without memory: the moves run here without a GPU
    fs = make()
    moved = loop.on_device(fs, meta)
    assert moved.device == meta and moved.raw.dtype == torch.float16 and moved.shape == fs.shape
    assert loop.on_device(fs, meta) is moved and loop.on_device(fs, torch.device("cpu")) is fs
    part = fs.subset(torch.tensor([4, 1]))  # rows of the same map: only they are moved
    assert loop.on_device(part, meta).shape == (2, 1, 4, 3)
    del fs, part
    gc.collect()
    loop.on_device(make(), meta)  # a later move drops the copies of sets that are gone
    assert len(loop._ON_DEVICE) == 1
