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
  nas-asc computed the features the networks were trained and measured on;
* :class:`Submission`, the model that ``load_model`` returns: the general network, one network
  per device that has its own, the front end and the class order;
* the four functions of the DCASE 2025 inference API, which each submission module forwards to.

The int8 kernels run on the CPU (PyTorch has no CUDA kernels for them): ``use_cuda`` is
accepted by :func:`predict` as the API asks, and the networks stay on the CPU.
"""

from __future__ import annotations

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
# Front end
# ------------------------------------------------------------------------------------------

_CHUNK = 256  # clips per batched resampling and STFT, as nas-asc computed its features


class FrontEnd:
    """WAV files to normalized log-mel inputs ``(1, 1, n_mels, frames)``, as nas-asc computed
    the features its models were trained and measured on: soundfile decoding to float32,
    channels averaged, padded with silence or cut to ``seconds`` at the file's rate, resampled
    by :func:`torchaudio.functional.resample`, torchaudio's power Mel spectrogram, ``log(x +
    1e-5)``, rounded to float16 (nas-asc's feature cache), normalized by the training split's
    mean and standard deviation."""

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
        import soundfile

        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise ValueError(f"audio file {path} holds no samples")
        if not np.isfinite(data).all():
            raise ValueError(f"audio file {path} holds NaN or infinite samples")
        samples = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
        return np.ascontiguousarray(samples, dtype=np.float32), int(rate)

    def _logmel(self, batch: np.ndarray, rate: int) -> torch.Tensor:
        waves = torch.from_numpy(batch)
        if rate != self.sample_rate:
            import torchaudio

            waves = torchaudio.functional.resample(waves, rate, self.sample_rate)
        feats = torch.log(self._power_to_mel(waves) + 1e-5).to(torch.float16).float()
        return ((feats - self.mean) / self.std).unsqueeze(1)

    def __call__(self, file_paths: Sequence[str]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(file_paths)
        for start in range(0, len(file_paths), _CHUNK):
            by_rate: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
            for i, path in enumerate(file_paths[start : start + _CHUNK]):
                wave, rate = self.read(path)
                by_rate[rate].append((start + i, wave))
            for rate, items in by_rate.items():
                length = int(round(self.seconds * rate))
                batch = np.zeros((len(items), length), dtype=np.float32)
                for j, (_, wave) in enumerate(items):
                    batch[j, : min(length, len(wave))] = wave[:length]
                feats = self._logmel(batch, rate)
                for j, (index, _) in enumerate(items):
                    out[index] = feats[j : j + 1].clone()
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------
# The model load_model returns, and the API
# ------------------------------------------------------------------------------------------


class Submission(nn.Module):
    """The general int8 network, one per device that has its own, the front end and the class
    order. :meth:`get_model_for_device` gives a device its own network, and any other device
    (``"unknown"`` included) the general one."""

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
        self.info = checkpoint.get("info", {})
        nets = {}
        for name, state in checkpoint["models"].items():
            net = networks[checkpoint["architectures"][name]]()
            net.load_state_dict(state, strict=True)
            nets[name] = net.eval()
        self.models = nn.ModuleDict(nets)

    def get_model_for_device(self, device_id: str) -> nn.Module:
        key = str(device_id)
        return self.models[key] if key in self.devices else self.models["general"]

    def forward(self, x: torch.Tensor, device_ids: Sequence[str]) -> torch.Tensor:
        out = torch.empty(len(x), len(self.class_order))
        groups: dict[str, list[int]] = defaultdict(list)
        for i, device in enumerate(device_ids):
            groups[str(device)].append(i)
        for device, index in groups.items():
            with torch.no_grad():
                out[index] = self.get_model_for_device(device)(x[index])
        return out


def load_model(model_file_path, networks: dict) -> Submission:
    """The :class:`Submission` of a checkpoint written by nas-asc."""
    _engine()
    checkpoint = torch.load(str(model_file_path), map_location="cpu", weights_only=True)
    return Submission(checkpoint, networks).eval()


def load_inputs(
    file_paths: Sequence[str], device_ids: Sequence[str], model: Submission
) -> list[torch.Tensor]:
    """One normalized log-mel input ``(1, 1, n_mels, frames)`` per file, in input order."""
    if len(file_paths) != len(device_ids):
        raise ValueError(
            f"file_paths and device_ids must be equally long, got {len(file_paths)} and "
            f"{len(device_ids)}"
        )
    return model.frontend(list(file_paths))


def predict(
    file_paths: Sequence[str],
    device_ids: Sequence[str],
    model: Submission,
    batch_size: int = 64,
) -> tuple[list[torch.Tensor], list[str]]:
    """Logits ``(n_classes,)`` per file in input order, and the class order."""
    inputs = load_inputs(file_paths, device_ids, model)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, device in enumerate(device_ids):
        groups[str(device)].append(i)
    outputs: list[torch.Tensor | None] = [None] * len(inputs)
    for device, index in groups.items():
        net = model.get_model_for_device(device)
        for start in range(0, len(index), batch_size):
            chunk = index[start : start + batch_size]
            with torch.no_grad():
                logits = net(torch.cat([inputs[i] for i in chunk]))
            for i, row in zip(chunk, logits, strict=True):
                outputs[i] = row.float().clone()
    return outputs, list(model.class_order)  # type: ignore[return-value]
