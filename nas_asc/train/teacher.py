"""Teacher ensemble for knowledge distillation, trained once per dataset and cached.

As in the seed reports (shared/seeds/000, 003, 004), students learn from the averaged logits of
an ensemble of wider models. nas-asc trains the members on the training split (each with its own
seed and Freq-MixStyle probability), averages their logits over every clip of the dataset and
caches them, keyed by the dataset fingerprint and the teacher configuration, as a
``(rows of meta.csv, classes)`` tensor: the layout in which the DCASE community distributes
ensemble logits. Rows that belong to neither split are NaN.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from nas_asc._cache import atomic_file, cache_root, content_key
from nas_asc.data.features import FrontEnd, load_features
from nas_asc.train.loop import TrainConfig, evaluate, predict, train

__all__ = ["TeacherConfig", "TeacherEnsemble", "get_teacher"]

_LOG = logging.getLogger(__name__)
_VERSION = 1


@dataclass(frozen=True)
class TeacherConfig:
    model: str = "tfsepnet"  # registered family of every member
    width: int = 24  # member width
    members: int = 2  # ensemble size
    mixstyle_p: tuple[float, ...] = (0.0, 0.3)  # Freq-MixStyle p per member, cycled
    dropout: float = 0.0  # TF-SepConv dropout of every member
    frontend: FrontEnd = field(default_factory=lambda: FrontEnd(n_mels=64))  # teacher input
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(epochs=4, batch_size=64, lr=2e-2, kd_lambda=0.0)
    )  # member recipe (no distillation)
    seed: int = 0  # member i uses seed + i

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"teacher ensemble needs at least 1 member, got {self.members}")
        if not self.mixstyle_p:
            raise ValueError("teacher mixstyle_p needs at least one value")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TeacherEnsemble:
    logits: torch.Tensor  # (rows of meta.csv, classes), averaged over members; NaN if unused
    report: dict  # per-member and ensemble accuracy on the evaluate split, config, seconds


def _cache_path(dataset, config: TeacherConfig):
    return (
        cache_root()
        / "teachers"
        / f"teacher-{content_key(_VERSION, dataset.fingerprint, config.to_dict())}.pt"
    )


def get_teacher(
    dataset, config: TeacherConfig | None = None, progress: bool = True, retrain: bool = False
) -> TeacherEnsemble:
    """Load the cached teacher ensemble for ``dataset``, training it first if needed."""
    from nas_asc.models import create_model

    config = config or TeacherConfig()
    path = _cache_path(dataset, config)
    if path.exists() and not retrain:
        blob = torch.load(path, weights_only=False)
        return TeacherEnsemble(blob["logits"], blob["report"])

    train_set, eval_set = load_features(dataset, config.frontend, progress=progress)
    n_rows = dataset.n_meta_rows
    all_rows = torch.cat([train_set.rows, eval_set.rows])
    all_x = torch.cat([train_set.x, eval_set.x])
    summed = torch.zeros(n_rows, 10)
    members = []
    for i in range(config.members):
        seed = config.seed + i
        p = config.mixstyle_p[i % len(config.mixstyle_p)]
        recipe = dataclasses.replace(config.train, mixstyle_p=p)
        torch.manual_seed(seed)
        model = create_model(config.model, width=config.width, dropout=config.dropout)
        if progress:
            print(
                f"teacher {i + 1}/{config.members}: {config.model} width {config.width}, "
                f"MixStyle p={p}, {recipe.epochs} epochs",
                flush=True,
            )
        result = train(model, train_set, recipe, seed=seed)
        ev = evaluate(model, eval_set)
        summed[all_rows] += predict(model, all_x)
        members.append(
            {"seed": seed, "mixstyle_p": p, "train_seconds": result.seconds, **ev.summary()}
        )
        if progress:
            print(
                f"  accuracy {ev.accuracy:.1%} (seen {ev.seen_accuracy:.1%}, "
                f"unseen {ev.unseen_accuracy or float('nan'):.1%}) in {result.seconds:.0f} s",
                flush=True,
            )
    logits = torch.full((n_rows, 10), float("nan"))
    logits[all_rows] = summed[all_rows] / config.members
    ens_acc = (logits[eval_set.rows].argmax(1) == eval_set.y).float().mean().item()
    report = {"config": config.to_dict(), "members": members, "ensemble_accuracy": ens_acc}
    if progress:
        print(f"teacher ensemble accuracy {ens_acc:.1%} (cached at {path})", flush=True)
    with atomic_file(path) as fh:
        torch.save({"logits": logits, "report": report}, fh)
    return TeacherEnsemble(logits, report)
