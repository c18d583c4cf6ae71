"""Teacher ensemble for knowledge distillation, trained once per dataset and cached.

As in the seed reports (shared/seeds/000, 003, 004), students learn from the averaged logits of
an ensemble of wider models: report 000 averages BSRN teachers, report 002 distils BC-ResNet
(c = 80) into c = 40, report 003 a TF-SepNet ensemble, report 004 ResNet38. nas-asc trains the
members on the training split, each its own model family and configuration, seed and
Freq-MixStyle probability (:class:`TeacherMember`), averages their logits over every clip of the
dataset and caches them, keyed by the dataset fingerprint and the whole teacher configuration,
as a ``(rows of meta.csv, classes)`` tensor: the layout in which the DCASE community
distributes ensemble logits. Rows that belong to neither split are NaN.

Such a distributed file can be used instead (:func:`load_teacher_logits`): a torch ``.pt``
(a tensor, or a dictionary with a ``"logits"`` tensor) or a NumPy ``.npy`` array of shape
``(rows of meta.csv, 10)``, row ``i`` holding the logits of the clip on row ``i`` of meta.csv.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_asc._cache import cache_root, content_key, load_torch, save_torch
from nas_asc._registry import build_config, parse_spec
from nas_asc.data.features import FrontEnd, load_features
from nas_asc.errors import NasAscError
from nas_asc.progress import Reporter, reporter_for
from nas_asc.train.accel import AccelOptions
from nas_asc.train.loop import TrainConfig, device_breakdown, evaluate, predict, train

__all__ = [
    "TeacherMember",
    "TeacherConfig",
    "TeacherEnsemble",
    "get_teacher",
    "load_teacher_logits",
    "parse_member",
    "N_CLASSES",
]

_LOG = logging.getLogger(__name__)
_VERSION = 2  # 2: members of any family (TeacherMember)
N_CLASSES = 10  # acoustic scenes of TAU22
_MEMBER_EXAMPLE = "tfsepnet:width=64,mixstyle_p=0.3"


@dataclass(frozen=True)
class TeacherMember:
    """One network of the teacher ensemble.

    Example:
        >>> TeacherMember("bcresnet", {"width": 80, "stem_stride": 1, "pool_after": ()}, 0.3, 1)
    """

    family: str = "tfsepnet"  # registered model family
    model: Mapping[str, Any] = field(default_factory=dict)  # its config fields, e.g. width
    mixstyle_p: float = 0.0  # Freq-MixStyle probability while it trains
    seed: int = 0  # seeds its initialization, shuffling and augmentation

    def __post_init__(self) -> None:
        from nas_asc.models import get_model_config

        # the family's dataclass validates the fields and their values (one-line errors)
        build_config(get_model_config(self.family), self.model, f"teacher member {self.family}")
        if not 0.0 <= self.mixstyle_p <= 1.0:
            raise ValueError(f"teacher member MixStyle p must be in [0, 1], got {self.mixstyle_p}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"teacher member seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "model", dict(self.model))

    def resolved(self) -> dict[str, Any]:
        """The member's full model configuration, the family's defaults filled in."""
        from nas_asc.models import get_model_config

        return dataclasses.asdict(get_model_config(self.family)(**self.model))

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.model.items())
        return f"{self.family}({fields}), MixStyle p={self.mixstyle_p}, seed {self.seed}"


def _default_members() -> tuple[TeacherMember, ...]:
    # cheap enough for the default search on a CPU: two TF-SepNets of width 24
    return tuple(
        TeacherMember("tfsepnet", {"width": 24, "dropout": 0.0}, p, i)
        for i, p in enumerate((0.0, 0.3))
    )


@dataclass(frozen=True)
class TeacherConfig:
    members: tuple[TeacherMember, ...] = field(default_factory=_default_members)  # the networks
    frontend: FrontEnd = field(default_factory=lambda: FrontEnd(n_mels=64))  # teacher input
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=4, batch_size=64, lr=2e-2, kd_lambda=0.0)
    )  # recipe of every member (no distillation; its mixstyle_p is the member's)

    def __post_init__(self) -> None:
        members = tuple(self.members)
        if not members or not all(isinstance(m, TeacherMember) for m in members):
            raise ValueError(
                "teacher ensemble needs at least 1 member, each a TeacherMember, got "
                f"{self.members!r}"
            )
        if getattr(self.train, "quantization", "ptq") != "ptq":
            raise ValueError(
                "teacher members train in float; set the teacher recipe's quantization to "
                f"'ptq', got {self.train.quantization!r}"
            )
        object.__setattr__(self, "members", members)

    @classmethod
    def uniform(cls, n: int, family: str = "tfsepnet", **model: Any) -> TeacherConfig:
        """``n`` members of one configuration, MixStyle p cycling 0 / 0.3, seeds 0..n-1."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"teacher ensemble needs at least 1 member, got {n!r}")
        ps = (0.0, 0.3)
        return cls(members=tuple(TeacherMember(family, model, ps[i % 2], i) for i in range(n)))

    def to_dict(self) -> dict:
        from nas_asc.models._registry import get_model_revision

        out = dataclasses.asdict(self)
        out["train"] = self.train.to_dict()  # (amp only when on: older keys stay valid)
        # the key holds every member's full configuration, so a family's changed default
        # trains a new ensemble instead of reusing logits of another network,
        # and the family's revision, so a changed network does too
        out["members"] = [
            {
                **dataclasses.asdict(m),
                "model": m.resolved(),
                "revision": get_model_revision(m.family),
            }
            for m in self.members
        ]
        return out


@dataclass
class TeacherEnsemble:
    logits: torch.Tensor  # (rows of meta.csv, classes), averaged over members; NaN if unused
    report: dict  # per-member and ensemble accuracy on the evaluate frame, config, seconds


def _cache_path(dataset, config: TeacherConfig):
    return (
        cache_root()
        / "teachers"
        / f"teacher-{content_key(_VERSION, dataset.fingerprint, config.to_dict())}.pt"
    )


def parse_member(text: str, index: int = 0) -> TeacherMember:
    """Parse a command-line member spec ``FAMILY[:KEY=VALUE,...]``.

    Keys are the family's config fields, plus ``mixstyle_p`` and ``seed`` for the member's
    training (defaults: MixStyle p 0.3 for odd ``index``, else 0; seed ``index``). Values are
    YAML scalars or lists: ``bcresnet:width=80,stem_stride=1,pool_after=[]``.

    Args:
        text: the spec.
        index: the member's position in the ensemble (sets the default seed and MixStyle p).
    """
    family, fields = parse_spec(
        text, "teacher member spec", name="model family", example=_MEMBER_EXAMPLE
    )
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    mixstyle_p = fields.pop("mixstyle_p", 0.3 if index % 2 else 0.0)
    seed = fields.pop("seed", index)
    if isinstance(mixstyle_p, bool) or not isinstance(mixstyle_p, (int, float)):
        raise ValueError(f"teacher member mixstyle_p must be a number, got {mixstyle_p!r}")
    return TeacherMember(family, fields, float(mixstyle_p), seed)


def _accuracy_report(logits: torch.Tensor, labels: torch.Tensor, devices: list[str]) -> dict:
    """Accuracy overall, per device and on seen/unseen devices (as ``EvalResult.summary``)."""
    from nas_asc.data.tau22 import SEEN_DEVICES, UNSEEN_DEVICES

    hit = (logits.argmax(1) == labels).numpy()
    device = np.asarray(devices)
    by_device = {d: float(hit[device == d].mean()) for d in sorted(set(devices))}
    seen = [by_device[d] for d in SEEN_DEVICES if d in by_device]
    unseen = [by_device[d] for d in UNSEEN_DEVICES if d in by_device]
    return {
        "accuracy": float(hit.mean()) if len(hit) else float("nan"),
        "accuracy_by_device": by_device,
        "seen_accuracy": float(np.mean(seen)) if seen else float("nan"),
        "unseen_accuracy": float(np.mean(unseen)) if unseen else None,
        "n_clips": int(len(hit)),
    }


def _epoch_line(reporter: Reporter, who: str, epochs: int):
    """An ``on_epoch`` callback that reports a member's epochs (a live line on a terminal)."""

    def on_epoch(epoch: int, record: dict, model) -> None:
        reporter.epoch(who, epoch + 1, epochs, {"loss": record["loss"]})

    return on_epoch


def _step_line(reporter: Reporter, who: str, epochs: int):
    """An ``on_step`` callback: progress and ETA inside a member's long epochs."""

    def on_step(epoch: int, step: int, steps: int) -> None:
        reporter.step(who, epoch + 1, epochs, step, steps)

    return on_step


def get_teacher(
    dataset,
    config: TeacherConfig | None = None,
    progress: bool = True,
    retrain: bool = False,
    runtime: AccelOptions | None = None,
) -> TeacherEnsemble:
    """Load the cached teacher ensemble for ``dataset``, training it first if needed.

    Args:
        dataset: a :class:`~nas_asc.data.tau22.TAU22` dataset.
        config: the members and their recipe (default: :class:`TeacherConfig`).
        progress: print a line per member.
        retrain: train again even if the ensemble is cached.
        runtime: device, threads and compile of the members' training; None: the defaults of
            :class:`~nas_asc.train.accel.AccelOptions` (the CPU).

    Returns:
        The averaged logits, indexed by meta.csv row, and a report with every member's and the
        ensemble's accuracy on ``dataset.evaluate``: the validation split of a search view
        (:meth:`~nas_asc.data.protocol.Protocol.search_view`, on whose training part the
        members train: what a search distils from), the test fold of the whole dataset.
    """
    from nas_asc.models import create_model

    config = config or TeacherConfig()
    path = _cache_path(dataset, config)
    blob = None if retrain else load_torch(path)  # verified; None if absent or corrupt
    if blob is not None:
        return TeacherEnsemble(blob["logits"], blob["report"])

    train_set, eval_set = load_features(dataset, config.frontend, progress=progress)
    reporter = reporter_for(progress)
    n_rows = dataset.n_meta_rows
    all_rows = torch.cat([train_set.rows, eval_set.rows])
    summed = torch.zeros(n_rows, N_CLASSES)
    members = []
    n = len(config.members)
    for i, member in enumerate(config.members):
        recipe = dataclasses.replace(config.train, mixstyle_p=member.mixstyle_p)
        torch.manual_seed(member.seed)
        model = create_model(member.family, **member.model)
        on_epoch = None
        if progress:
            reporter.message(f"teacher {i + 1}/{n}: {member.describe()}, {recipe.epochs} epochs")
            on_epoch = _epoch_line(reporter, f"teacher {i + 1}/{n}", recipe.epochs)
        result = train(
            model,
            train_set,
            recipe,
            seed=member.seed,
            on_epoch=on_epoch,
            on_step=_step_line(reporter, f"teacher {i + 1}/{n}", recipe.epochs),
            runtime=runtime,
        )
        ev = evaluate(model, eval_set)
        summed[train_set.rows] += predict(model, train_set)
        summed[eval_set.rows] += predict(model, eval_set)
        members.append(
            {
                "family": member.family,
                "model": dict(member.model),
                "seed": member.seed,
                "mixstyle_p": member.mixstyle_p,
                "train_seconds": result.seconds,
                **ev.summary(),
            }
        )
        if progress:
            reporter.message(
                f"  accuracy {ev.accuracy:.1%} on {_split_name(dataset)} "
                f"({device_breakdown(ev.seen_accuracy, ev.unseen_accuracy)}) "
                f"in {result.seconds:.0f} s"
            )
    logits = torch.full((n_rows, N_CLASSES), float("nan"))
    logits[all_rows] = summed[all_rows] / n
    ensemble = _accuracy_report(logits[eval_set.rows], eval_set.y, eval_set.devices)
    ens_acc = ensemble["accuracy"]
    report = {
        "config": config.to_dict(),
        "members": members,
        "ensemble_accuracy": ens_acc,
        "ensemble": ensemble,
    }
    if progress:
        reporter.message(
            f"teacher ensemble accuracy {ens_acc:.1%} on {_split_name(dataset)} (cached at {path})"
        )
    save_torch({"logits": logits, "report": report}, path)
    return TeacherEnsemble(logits, report)


def _split_name(dataset) -> str:
    """What ``dataset.evaluate`` is: the validation split of a search view, else the test fold."""
    return "the validation split" if getattr(dataset, "role", None) == "search" else "the test fold"


def load_teacher_logits(path: str | Path, dataset) -> TeacherEnsemble:
    """Read ensemble logits distributed as a file, indexed by meta.csv row, for ``dataset``.

    Accepts a torch file (``.pt``/``.pth``: a tensor, or a dictionary with a ``"logits"``
    tensor) or a NumPy ``.npy`` array, of shape ``(dataset.n_meta_rows, 10)`` and a floating
    dtype; row ``i`` holds the logits of the clip on row ``i`` of meta.csv. Every training clip's
    row must be finite (rows of clips in neither split may be NaN). The report gives the
    ensemble's accuracy on the evaluate split (on its finite rows).

    Args:
        path: the file.
        dataset: the :class:`~nas_asc.data.tau22.TAU22` dataset the logits belong to.

    Returns:
        A :class:`TeacherEnsemble` with float32 logits.

    Raises:
        NasAscError: a missing or unreadable file, or logits of the wrong kind, shape, dtype or
            with non-finite training rows (the message names the expected shape and the fix).
    """
    path = Path(path)
    expected = f"({dataset.n_meta_rows}, {N_CLASSES})"
    if not path.is_file():
        raise NasAscError(f"teacher logits file {path} does not exist; pass an existing file")
    suffix = path.suffix.lower()
    if suffix not in (".pt", ".pth", ".npy"):
        raise NasAscError(
            f"teacher logits file {path} must be a torch .pt/.pth or a NumPy .npy file, got "
            f"{suffix or 'no suffix'!r}; save the {expected} logits with torch.save or np.save"
        )
    try:
        with warnings.catch_warnings():
            # torch warns on a legacy (non-zip) file it still reads: the one line below or
            # none, never a warning on top
            warnings.simplefilter("ignore")
            if suffix == ".npy":
                # memory-mapped: only the header is read until the shape below is accepted, so
                # a header declaring gigabytes is refused without loading them
                raw: Any = np.load(path, mmap_mode="r", allow_pickle=False)
            else:
                raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors differ by file and version
        raise NasAscError(
            f"cannot read teacher logits file {path}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; write it with torch.save(tensor) "
            "or np.save"
        ) from None
    if isinstance(raw, dict):
        if "logits" not in raw:
            raise NasAscError(
                f"teacher logits file {path} holds a dictionary without a 'logits' entry (keys: "
                f"{sorted(map(str, raw))[:8]}); save {{'logits': tensor}} or the tensor itself"
            )
        raw = raw["logits"]
    if not isinstance(raw, (np.ndarray, torch.Tensor)):
        raise NasAscError(
            f"teacher logits file {path} must hold a tensor or {{'logits': tensor}}, got "
            f"{type(raw).__name__}"
        )
    if tuple(raw.shape) != (dataset.n_meta_rows, N_CLASSES):
        raise NasAscError(
            f"teacher logits in {path} must have shape (rows of meta.csv, classes) = "
            f"{expected}, got {tuple(raw.shape)}; index them by meta.csv row, one column "
            "per scene"
        )
    if isinstance(raw, np.ndarray):
        if not (np.issubdtype(raw.dtype, np.floating)):
            raise NasAscError(
                f"teacher logits in {path} must be floating point, got dtype {raw.dtype}; "
                "save the logits (not class indices or probabilities as integers)"
            )
        raw = torch.from_numpy(np.array(raw))  # read from the memory map, now that it fits
    if not raw.is_floating_point():
        raise NasAscError(
            f"teacher logits in {path} must be floating point, got dtype {raw.dtype}; save the "
            "logits (not class indices)"
        )
    logits = raw.float()
    train_rows = torch.tensor(dataset.train.row.to_numpy(), dtype=torch.long)
    bad = ~torch.isfinite(logits[train_rows]).all(dim=1)
    if bad.any():
        first = int(train_rows[bad][0])
        raise NasAscError(
            f"teacher logits in {path} are not finite on {int(bad.sum())} of "
            f"{len(train_rows)} training clips (first: meta.csv row {first}); they must cover "
            "every clip of the training split"
        )
    ev = dataset.evaluate
    eval_rows = torch.tensor(ev.row.to_numpy(), dtype=torch.long)
    finite = torch.isfinite(logits[eval_rows]).all(dim=1)
    labels = torch.tensor(ev.label.to_numpy(), dtype=torch.long)
    devices = [d for d, ok in zip(ev.device, finite.tolist(), strict=True) if ok]
    ensemble = _accuracy_report(logits[eval_rows][finite], labels[finite], devices)
    report = {
        "source": str(path),
        "members": [],
        "ensemble_accuracy": ensemble["accuracy"],
        "ensemble": ensemble,
    }
    return TeacherEnsemble(logits, report)
