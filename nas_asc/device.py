"""Where training runs: ``--device auto|cpu|cuda|cuda:N``, worker placement over GPUs, and the
runtime a trial records.

``auto`` (the default everywhere) takes the first CUDA device when torch sees one and the CPU
otherwise; ``cuda`` or ``cuda:N`` on a machine without that device is refused in one line
(:class:`~nas_asc.errors.NasAscError`, exit code 2 at the command line), before any data is
loaded. Training runs on the chosen device; int8 conversion and int8 evaluation stay on the CPU
(PyTorch's int8 kernels are CPU kernels, and that is what ships).

``--workers N --gpus 0,1`` places N worker processes over the listed GPUs in turn (worker k on
``gpus[k % len(gpus)]``), so several trials share a GPU when N exceeds the GPUs: the tiny models
of this task cannot fill a GPU one at a time. :func:`worker_devices` is that placement.

Example::

    from nas_asc.device import resolve_device, worker_devices

    resolve_device("auto")                 # device(type='cpu') on a machine without CUDA
    worker_devices(4, "cuda", gpus=(0, 1))  # ['cuda:0', 'cuda:1', 'cuda:0', 'cuda:1']
"""

from __future__ import annotations

import platform
import re

import torch

from nas_asc.errors import NasAscError

__all__ = [
    "driver_device",
    "DEVICE_HELP",
    "check_device_spec",
    "parse_gpus",
    "resolve_device",
    "runtime_info",
    "worker_devices",
]

DEVICE_HELP = (
    "where training runs: auto (default: the first CUDA GPU if torch sees one, else the CPU), "
    "cpu, cuda or cuda:N; int8 conversion and evaluation run on the CPU"
)
_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device_spec(spec: str) -> str:
    """``spec`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a one-line error."""
    if not isinstance(spec, str) or _SPEC.fullmatch(spec) is None:
        raise NasAscError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _no_cuda(spec: str) -> NasAscError:
    why = (
        f"this torch {torch.__version__} is built without CUDA"
        if torch.version.cuda is None
        else "torch sees no CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"
    )
    return NasAscError(f"--device {spec}: {why}; use --device cpu (or auto)")


def resolve_device(spec: str = "auto") -> torch.device:
    """The device ``spec`` names on this machine, checked.

    Raises:
        NasAscError: a malformed spec, ``cuda`` without CUDA, or ``cuda:N`` beyond the GPUs.
    """
    check_device_spec(spec)
    count = _cuda_count()
    if spec == "auto":
        return torch.device("cuda:0" if count else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not count:
        raise _no_cuda(spec)
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        raise NasAscError(
            f"--device {spec}: torch sees {count} CUDA device{'s' * (count != 1)} "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def driver_device(spec: str = "auto", ray_address: str | None = None) -> str:
    """The device the command's own process trains on (a search's teacher, evaluate's and
    finetune's retraining, export's verification), resolved and checked before any work.

    A search's workers each take theirs from its settings (``--gpus``). A Ray cluster's GPUs
    are on its nodes: with ``ray_address``, a ``cuda`` spec becomes ``auto`` here (the driver
    trains on what this machine has).
    """
    if ray_address:
        spec = "auto" if spec.startswith("cuda") else spec
    return str(resolve_device(spec))


def parse_gpus(text: str | None) -> tuple[int, ...] | None:
    """``"0,1"`` -> ``(0, 1)``; None stays None (every visible GPU). One-line error otherwise."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() for p in parts):
        raise NasAscError(f"--gpus takes GPU indices separated by commas, e.g. 0,1; got {text!r}")
    gpus = tuple(int(p) for p in parts)
    if len(set(gpus)) != len(gpus):
        raise NasAscError(f"--gpus lists a GPU twice: {text!r}")
    return gpus


def worker_devices(
    workers: int, device: str = "auto", gpus: tuple[int, ...] | None = None
) -> list[str]:
    """The device of each of ``workers`` worker processes.

    On the CPU every worker gets ``cpu``. On CUDA the workers go over ``gpus`` (default: every
    visible GPU, or the one ``cuda:N`` names) in turn: worker k runs on ``gpus[k % len(gpus)]``.

    Raises:
        NasAscError: ``gpus`` with a CPU device, a GPU that torch does not see, or CUDA missing.
    """
    if not isinstance(workers, int) or workers < 1:
        raise NasAscError(f"workers must be an integer >= 1, got {workers!r}")
    check_device_spec(device)
    if device == "cpu" or (device == "auto" and not _cuda_count()):
        if gpus is not None:
            raise NasAscError(
                f"--gpus {','.join(map(str, gpus))} needs CUDA, but training runs on the CPU "
                f"(--device {device}{': torch sees no CUDA device' * (device == 'auto')})"
            )
        return ["cpu"] * workers
    count = _cuda_count()
    if not count:
        raise _no_cuda(device if gpus is None else f"{device} --gpus {','.join(map(str, gpus))}")
    if gpus is None:
        named = device.partition(":")[2]
        gpus = (resolve_device(device).index,) if named else tuple(range(count))
    elif device.partition(":")[2]:
        raise NasAscError(f"--device {device} names one GPU; leave out --gpus or use --device cuda")
    missing = [g for g in gpus if g >= count]
    if missing:
        raise NasAscError(
            f"--gpus {','.join(map(str, gpus))}: torch sees {count} CUDA device"
            f"{'s' * (count != 1)} (0 to {count - 1}), not {', '.join(map(str, missing))}"
        )
    return [f"cuda:{gpus[k % len(gpus)]}" for k in range(workers)]


def runtime_info(device: torch.device | str) -> dict:
    """What a trial records about where it ran: device, its name, library versions."""
    import torchaudio

    device = torch.device(device)
    info = {
        "device": str(device),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=props.name,
            device_memory_bytes=int(props.total_memory),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = platform.processor() or platform.machine()
    return info
