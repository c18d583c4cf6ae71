"""Run-time support of a DCASE 2025 Task 1 inference package written by nas-asc.

This file is copied verbatim into every package that ``nas-asc export --format dcase2025``
writes (as ``<package>/_runtime.py``), so it imports nothing from nas-asc: only the Python
standard library, NumPy, soundfile, PyTorch and torchaudio. It holds

* the int8 layers the generated networks are built from. Each keeps its int8 weights as an
  ``int8`` :class:`torch.nn.Parameter` and its biases (and any BatchNorm vectors) as ``float32``
  parameters, so the organizers' checker, which counts the bytes of ``model.parameters()`` at
  their dtype, sees every stored value; per-channel scales and zero points are buffers. The
  arithmetic is PyTorch's own int8 kernels (``torch.ops.quantized``, the engine nas-asc measured
  with), so a network computes exactly what nas-asc measured;
* the front end: WAV -> mono -> one second -> resampling -> log-mel -> normalization, exactly as
  nas-asc computed the features the networks were trained and measured on. The task's clips are
  one second of mono audio at 44.1 kHz: another clip is converted so, and a :class:`ClipWarning`
  says what was done (once per kind of conversion and call); a missing, truncated or undecodable
  file, or an argument against the API's rules, is a ``FileNotFoundError`` or ``ValueError``
  that names the file or argument and the rule;
* :class:`Submission`, the model that ``load_model`` returns: the general network, one network
  per device that has its own (device IDs match in any case, ``"S1"`` is ``"s1"``), the front
  end and the class order;
* the four functions of the DCASE 2025 inference API, which each submission module forwards to.

The int8 kernels run on the CPU (PyTorch has no CUDA kernels for them): ``use_cuda`` is
accepted by :func:`predict` as the API asks, and the networks stay on the CPU.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

FORMAT = "nas-asc-dcase2025/1"

# PyTorch 2.14 announces that its quantized tensors will be deprecated; the int8 kernels these
# networks run on are those tensors', so the notice would only be noise in a submission's log.
warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")


def _engine() -> None:
    """Use the int8 engine nas-asc measured with (x86), or the best this build has."""
    engines = torch.backends.quantized.supported_engines
    for name in ("x86", "fbgemm", "qnnpack"):
        if name in engines:
            if torch.backends.quantized.engine != name:
                torch.backends.quantized.engine = name
            return
    raise RuntimeError(f"this PyTorch build has no int8 engine (supported: {engines})")


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


class _Int8Layer(nn.Module):
    """Base of the int8 layers: the packed weights PyTorch's kernels take are built from the
    parameters when first needed and rebuilt after the parameters change (loading, ``.to``)."""

    def __init__(self) -> None:
        super().__init__()
        self._packed = None

    def _pack(self):  # pragma: no cover - every subclass with weights implements it
        raise NotImplementedError

    def packed(self):
        if self._packed is None:
            _engine()
            self._packed = self._pack()
        return self._packed

    def _apply(self, fn, *args, **kwargs):
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_packed"] = None  # packed weights are rebuilt, never copied or pickled
        return state

    def _qweight(self) -> torch.Tensor:
        """The int8 weight parameter as PyTorch's quantized tensor."""
        if self.weight_scale.dim() == 0:
            return torch._make_per_tensor_quantized_tensor(
                self.weight.data, float(self.weight_scale), int(self.weight_zero_point)
            )
        return torch._make_per_channel_quantized_tensor(
            self.weight.data,
            self.weight_scale.double(),
            self.weight_zero_point,
            0,
        )

    def _scale(self) -> float:
        return float(self.out_scale)

    def _zero_point(self) -> int:
        return int(self.out_zero_point)

    def _register_qparams(self, out_features: int, per_channel: bool) -> None:
        shape = (out_features,) if per_channel else ()
        self.register_buffer("weight_scale", torch.ones(shape, dtype=torch.float32))
        self.register_buffer("weight_zero_point", torch.zeros(shape, dtype=torch.int64))
        self.register_buffer("out_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int64))


class QConv2d(_Int8Layer):
    """Int8 2-D convolution (BatchNorm folded in), optionally fused with a ReLU.

    ``weight``: int8 ``(out, in / groups, kh, kw)``; ``bias``: float32 ``(out,)``; input and
    output are quantized (uint8) tensors.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
        bias: bool = True,
        relu: bool = False,
        per_channel: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.groups, self.relu = groups, relu
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = _frozen(torch.zeros(shape, dtype=torch.int8))
        self.bias = _frozen(torch.zeros(out_channels)) if bias else None
        self._register_qparams(out_channels, per_channel)

    def _pack(self):
        bias = None if self.bias is None else self.bias.data.float()
        return torch.ops.quantized.conv2d_prepack(
            self._qweight(), bias, self.stride, self.padding, self.dilation, self.groups
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.quantized.conv2d_relu if self.relu else torch.ops.quantized.conv2d
        return op(x, self.packed(), self._scale(), self._zero_point())


class QLinear(_Int8Layer):
    """Int8 fully connected layer, optionally fused with a ReLU."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        relu: bool = False,
        per_channel: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.relu = in_features, out_features, relu
        self.weight = _frozen(torch.zeros((out_features, in_features), dtype=torch.int8))
        self.bias = _frozen(torch.zeros(out_features)) if bias else None
        self._register_qparams(out_features, per_channel)

    def _pack(self):
        bias = None if self.bias is None else self.bias.data.float()
        return torch.ops.quantized.linear_prepack(self._qweight(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.quantized.linear_relu if self.relu else torch.ops.quantized.linear
        return op(x, self.packed(), self._scale(), self._zero_point())


class QBatchNorm2d(_Int8Layer):
    """A BatchNorm that could not be folded, on int8 activations; its four vectors are float32
    parameters (they are stored values, so they count)."""

    def __init__(self, num_features: int, eps: float = 1e-5, relu: bool = False) -> None:
        super().__init__()
        self.num_features, self.eps, self.relu = num_features, float(eps), relu
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(self, name, _frozen(torch.zeros(num_features)))
        self.register_buffer("out_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = (
            torch.ops.quantized.batch_norm2d_relu if self.relu else torch.ops.quantized.batch_norm2d
        )
        return op(
            x,
            self.weight.float(),
            self.bias.float(),
            self.running_mean.float(),
            self.running_var.float(),
            self.eps,
            self._scale(),
            self._zero_point(),
        )


class QHardswish(_Int8Layer):
    """Hardswish on int8 activations (requantized to its own output scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("out_scale", torch.ones((), dtype=torch.float32))
        self.register_buffer("out_zero_point", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.hardswish(x, self._scale(), self._zero_point())


LAYERS = {cls.__name__: cls for cls in (QConv2d, QLinear, QBatchNorm2d, QHardswish)}


# ------------------------------------------------------------------------------------------
# The task's rules on input
# ------------------------------------------------------------------------------------------

#: The clips of DCASE 2025 Task 1 (TAU Urban Acoustic Scenes 2022 Mobile): 1-second mono WAV
#: files at 44.1 kHz.
CLIP_SAMPLE_RATE = 44100
RULE = "DCASE 2025 Task 1 clips are 1-second mono audio files (WAV) at 44.1 kHz"
DEVICE_RULE = (
    "DCASE 2025 device IDs are strings: 'a', 'b', 'c', 's1' ... 's10' (any case), and any other "
    "(e.g. 'unknown') gets the general model"
)


class ClipWarning(UserWarning):
    """A clip departs from the task's format and was converted as the package's front end does
    for every clip: cut or padded to one second, resampled, or mixed down to mono. Issued once
    per kind of conversion and call, naming how many clips and the first of them."""


def _is_path(value) -> bool:
    return isinstance(value, str | os.PathLike)


def _as_list(value, name: str, what: str) -> list:
    if _is_path(value) or isinstance(value, bytes):
        raise ValueError(
            f"{name} must be a list of {what}, one per clip, got the single value {value!r}; "
            f"pass [{value!r}]"
        )
    try:
        return list(value)
    except TypeError:
        raise ValueError(
            f"{name} must be a list of {what}, one per clip, got {type(value).__name__}"
        ) from None


def device_name(device_id, where: str = "device_id") -> str:
    """The device ID as the models are keyed: stripped and lower case (``"S1"`` is ``"s1"``)."""
    if not isinstance(device_id, str):
        raise ValueError(f"{where} is {device_id!r}, not a string; {DEVICE_RULE}")
    return device_id.strip().lower()


def check_arguments(file_paths, device_ids, batch_size=None) -> tuple[list, list[str]]:
    """The arguments of :func:`load_inputs` and :func:`predict` as lists, or a ``ValueError``
    naming the argument and the rule it breaks (before anything is read)."""
    files = _as_list(file_paths, "file_paths", "audio file paths")
    devices = _as_list(device_ids, "device_ids", "device ID strings")
    if len(files) != len(devices):
        raise ValueError(
            f"file_paths and device_ids must be equally long (one device ID per clip), got "
            f"{len(files)} and {len(devices)}"
        )
    for i, path in enumerate(files):
        if not _is_path(path):
            raise ValueError(
                f"file_paths[{i}] is {path!r} ({type(path).__name__}), not a path; file_paths "
                "holds one audio file path (str) per clip"
            )
    for i, device in enumerate(devices):
        device_name(device, f"device_ids[{i}]")
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive whole number (clips per forward pass), got "
            f"{batch_size!r}"
        )
    return files, devices


def _check_model(model) -> None:
    if not (hasattr(model, "frontend") and hasattr(model, "get_model_for_device")):
        raise ValueError(
            f"model is a {type(model).__name__}, not the model load_model() returns; pass "
            "load_model()'s result"
        )


def _wav_shortfall(path: str) -> tuple[int, int] | None:
    """``(declared, present)`` bytes of a RIFF WAV file's audio when the file holds fewer than
    its header declares (a truncated copy: soundfile would read what is there without a word);
    None for a complete WAV file or another format."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"data":
                present = size - offset - 8
                # 0xFFFFFFFF: an RF64 file or a stream whose length was never written
                if declared != 0xFFFFFFFF and declared > present:
                    return declared, present
                return None
            offset += 8 + declared + (declared & 1)
    return None


def read_clip(path, where: str = "audio file") -> tuple[np.ndarray, int, int]:
    """``(mono float32 samples, sample rate, channels)`` of one clip; channels are averaged.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a folder, an empty, truncated or undecodable file, or one with no samples or
            with NaN or infinite samples; the message names ``where`` and the file.
    """
    import soundfile

    name = os.fspath(path)
    label = f"{where} ({name})" if where != "audio file" else f"audio file {name}"
    if not os.path.exists(name):
        raise FileNotFoundError(
            f"{label} not found; file_paths must name existing audio files ({RULE})"
        )
    if not os.path.isfile(name):
        raise ValueError(f"{label} is not a file (a folder?); {RULE}")
    if os.path.getsize(name) == 0:
        raise ValueError(f"{label} is empty (0 bytes), an interrupted copy?; {RULE}")
    shortfall = _wav_shortfall(name)
    if shortfall is not None:
        declared, present = shortfall
        raise ValueError(
            f"{label} is truncated: its WAV header declares {declared:,} bytes of audio, the "
            f"file holds {present:,}; copy the whole clip again ({RULE})"
        )
    errors = (RuntimeError, OSError, ValueError, getattr(soundfile, "SoundFileError", OSError))
    try:
        data, rate = soundfile.read(name, dtype="float32", always_2d=True)
    except errors as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{label} cannot be decoded as audio ({detail}); {RULE}") from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ValueError(f"{label} holds no samples; {RULE}")
    if not np.isfinite(data).all():
        raise ValueError(f"{label} holds NaN or infinite samples; {RULE}")
    samples = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32), int(rate), int(data.shape[1])


class _Conversions:
    """What the front end did to clips that depart from the task's format, told once per kind
    (:class:`ClipWarning`) when a call ends."""

    def __init__(self, total: int, seconds: float, model_rate: int) -> None:
        self.total, self.seconds, self.model_rate = total, seconds, model_rate
        self.found: dict[str, list] = {}  # kind -> [clips, first path, its detail]

    def _note(self, kind: str, path, detail: str) -> None:
        if kind in self.found:
            self.found[kind][0] += 1
        else:
            self.found[kind] = [1, os.fspath(path), detail]

    def clip(self, path, samples: int, rate: int, channels: int) -> None:
        length = int(round(self.seconds * rate))
        if samples > length:
            self._note("cut", path, f"{samples / rate:.3f} s")
        elif samples < length:
            self._note("padded", path, f"{samples / rate:.3f} s")
        if rate != CLIP_SAMPLE_RATE:
            self._note("resampled", path, f"{rate} Hz")
        if channels != 1:
            self._note("mixed down", path, f"{channels} channels")

    def warn(self) -> None:
        s = f"{self.seconds:g} s"
        done = {
            "cut": f"longer than {s}: only their first {s} is used",
            "padded": f"shorter than {s}: padded with silence to {s}",
            "resampled": (
                f"not at 44.1 kHz: each is resampled from its own rate to the model's "
                f"{self.model_rate} Hz"
            ),
            "mixed down": "not mono: mixed down to mono (the mean of the channels)",
        }
        for kind, (count, path, detail) in self.found.items():
            warnings.warn(
                f"{count} of {self.total} clip(s) are {done[kind]} (first: {path}, {detail}); "
                f"{RULE}",
                ClipWarning,
                stacklevel=4,
            )


# ------------------------------------------------------------------------------------------
# Front end
# ------------------------------------------------------------------------------------------

_CHUNK = 256  # clips per batched resampling and STFT, as nas-asc computed its features


class FrontEnd:
    """WAV files to normalized log-mel inputs ``(1, 1, n_mels, frames)``, as nas-asc computed
    the features its models were trained and measured on: soundfile decoding to float32,
    channels averaged, padded with silence or cut to ``seconds`` at the file's rate, resampled
    by :func:`torchaudio.functional.resample`, torchaudio's power Mel spectrogram, ``log(x +
    1e-5)``, rounded to float16 (nas-asc's feature cache), normalized by the training split's
    mean and standard deviation. A clip that is not one second of mono audio at 44.1 kHz is
    converted so and a :class:`ClipWarning` says so (once per kind of conversion and call); a
    missing, truncated or undecodable file is an error naming it (:func:`read_clip`)."""

    def __init__(self, config: dict) -> None:
        self.config = dict(config)
        self.sample_rate = int(config["sample_rate"])
        self.seconds = float(config.get("seconds", 1.0))
        self.mean = torch.tensor(config["mean"], dtype=torch.float32)
        self.std = torch.tensor(config["std"], dtype=torch.float32)
        self._mel = None

    def mel(self):
        """(power spectrogram, Mel projection): torchaudio's MelSpectrogram in its two steps."""
        if self._mel is None:
            import torchaudio

            c = self.config
            window = {"hann": torch.hann_window, "hamming": torch.hamming_window}[c["window"]]
            spectrogram = torchaudio.transforms.Spectrogram(
                n_fft=c["n_fft"],
                win_length=c["win_length"],
                hop_length=c["hop_length"],
                window_fn=window,
                power=2.0,
            )
            projection = torchaudio.transforms.MelScale(
                n_mels=c["n_mels"],
                sample_rate=self.sample_rate,
                f_min=c["f_min"],
                f_max=c["f_max"],
                n_stft=c["n_fft"] // 2 + 1,
            )
            self._mel = (spectrogram, projection)
        return self._mel

    def _power_to_mel(self, waves: torch.Tensor) -> torch.Tensor:
        # the Mel projection on one thread, as nas-asc computed it: a multi-threaded matrix
        # product splits its float32 sums, and the last bit would follow the thread count
        spectrogram, projection = self.mel()
        power = spectrogram(waves)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return projection(power)
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def read(path: str) -> tuple[np.ndarray, int]:
        """``(mono float32 samples, sample rate)`` of one clip (see :func:`read_clip`)."""
        samples, rate, _ = read_clip(path)
        return samples, rate

    def _logmel(self, batch: np.ndarray, rate: int) -> torch.Tensor:
        waves = torch.from_numpy(batch)
        if rate != self.sample_rate:
            import torchaudio

            waves = torchaudio.functional.resample(waves, rate, self.sample_rate)
        feats = torch.log(self._power_to_mel(waves) + 1e-5).to(torch.float16).float()
        return ((feats - self.mean) / self.std).unsqueeze(1)

    def __call__(self, file_paths: Sequence[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(file_paths)
        conversions = _Conversions(len(file_paths), self.seconds, self.sample_rate)
        for start in range(0, len(file_paths), _CHUNK):
            by_rate: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
            for i, path in enumerate(file_paths[start : start + _CHUNK]):
                wave, rate, channels = read_clip(path, f"file_paths[{start + i}]")
                conversions.clip(path, len(wave), rate, channels)
                by_rate[rate].append((start + i, wave))
            for rate, items in by_rate.items():
                length = int(round(self.seconds * rate))
                batch = np.zeros((len(items), length), dtype=np.float32)
                for j, (_, wave) in enumerate(items):
                    batch[j, : min(length, len(wave))] = wave[:length]
                feats = self._logmel(batch, rate)
                for j, (index, _) in enumerate(items):
                    out[index] = feats[j : j + 1].clone()
        conversions.warn()
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# The model load_model returns, and the API
# ------------------------------------------------------------------------------------------


class Submission(nn.Module):
    """The general int8 network, one per device that has its own, the front end and the class
    order. :meth:`get_model_for_device` gives a device its own network (device IDs match in any
    case: ``"S1"`` is ``"s1"``), and any other device (``"unknown"`` included) the general one."""

    def __init__(self, checkpoint: dict, networks: dict) -> None:
        super().__init__()
        if checkpoint.get("format") != FORMAT:
            raise ValueError(
                f"checkpoint format {checkpoint.get('format')!r} is not {FORMAT!r}; pass a "
                "checkpoint written for this package (or None for the packaged one)"
            )
        self.class_order = list(checkpoint["class_order"])
        self.frontend = FrontEnd(checkpoint["frontend"])
        self.devices = [d for d in checkpoint["models"] if d != "general"]
        self._by_name = {d.strip().lower(): d for d in self.devices}
        self.info = checkpoint.get("info", {})
        nets = {}
        for name, state in checkpoint["models"].items():
            net = networks[checkpoint["architectures"][name]]()
            net.load_state_dict(state, strict=True)
            nets[name] = net.eval()
        self.models = nn.ModuleDict(nets)

    def model_key(self, device_id, where: str = "device_id") -> str:
        """The name of the network that serves ``device_id``: its own, or ``"general"``."""
        return self._by_name.get(device_name(device_id, where), "general")

    def get_model_for_device(self, device_id: str) -> nn.Module:
        return self.models[self.model_key(device_id)]

    def forward(self, x: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        out = torch.empty(len(x), len(self.class_order))
        groups: dict[str, list[int]] = defaultdict(list)
        for i, device in enumerate(device_ids):
            groups[self.model_key(device, f"device_ids[{i}]")].append(i)
        for key, index in groups.items():
            with torch.no_grad():
                out[index] = self.models[key](x[index])
        return out


def load_model(model_file_path, networks: dict) -> Submission:
    """The :class:`Submission` of a checkpoint written by nas-asc.

    Raises:
        FileNotFoundError: no file at ``model_file_path``.
        ValueError: the file is not a checkpoint written for this package.
    """
    _engine()
    if not _is_path(model_file_path):
        raise ValueError(
            f"model_file_path is {model_file_path!r}, not a path; pass the path of a checkpoint "
            "written for this package, or None for the packaged one"
        )
    path = os.fspath(model_file_path)
    hint = "pass a checkpoint written for this package (ckpts/*.pt), or None for the packaged one"
    if not os.path.exists(path):
        raise FileNotFoundError(f"model_file_path {path} not found; {hint}")
    if not os.path.isfile(path):
        raise ValueError(f"model_file_path {path} is not a file (a folder?); {hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever torch.load makes of a foreign file
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise ValueError(
            f"model_file_path {path} is not a PyTorch checkpoint this package can read "
            f"({type(exc).__name__}: {detail}); {hint}"
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        got = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint)
        raise ValueError(
            f"model_file_path {path} is not a checkpoint of this package (format {got!r}, "
            f"expected {FORMAT!r}); {hint}"
        )
    return Submission(checkpoint, networks).eval()


def load_inputs(
    file_paths: Sequence[str], device_ids: Sequence[str], model: Submission
) -> list[torch.Tensor]:
    """One normalized log-mel input ``(1, 1, n_mels, frames)`` per file, in input order."""
    files, _ = check_arguments(file_paths, device_ids)
    _check_model(model)
    return model.frontend(files)


def predict(
    file_paths: Sequence[str],
    device_ids: Sequence[str],
    model: Submission,
    batch_size: int = 64,
) -> tuple[list[torch.Tensor], list[str]]:
    """Logits ``(n_classes,)`` per file in input order, and the class order. Each clip goes to
    its device's own network (device IDs in any case) or the general one."""
    files, devices = check_arguments(file_paths, device_ids, batch_size)
    _check_model(model)
    inputs = model.frontend(files)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, device in enumerate(devices):
        groups[device_name(device)].append(i)
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for device, index in groups.items():
        net = model.get_model_for_device(device)
        for start in range(0, len(index), int(batch_size)):
            chunk = index[start : start + int(batch_size)]
            with torch.no_grad():
                logits = net(torch.cat([inputs[i] for i in chunk]))
            for i, row in zip(chunk, logits, strict=True):
                outputs[i] = row.float().clone()
    return outputs, list(model.class_order)  # type: ignore[return-value]
