"""Small shared test helpers: a toy feature set, a search context with an artifact store."""

from __future__ import annotations

import torch

from nas_asc.data.features import FeatureSet


def reestimate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x`` (one cumulative pass).

    After a few training steps the running statistics lag the weights; with these, eval-mode
    outputs are the fitted ones.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)


def toy_set(n: int = 96, seed: int = 0, devices=("a", "b", "s4")) -> FeatureSet:
    """Three classes, each with a pulsing pattern in its own frequency band.

    The pattern varies over time so that per-frequency normalizations (FreqIN) keep it.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 32, 16, generator=g) * 0.5
    for k in range(3):
        x[y == k, :, 10 * k : 10 * k + 8, ::2] += 3.0
    return FeatureSet(
        x=x,
        y=y,
        devices=[devices[(i // 3) % len(devices)] for i in range(n)],
        filenames=[f"audio/clip-{i}.wav" for i in range(n)],
        rows=torch.arange(n),
    )


def artifact_context(dataset, space: dict, artifact_dir, seed: int = 0):
    """A search context over the ``space`` dict on ``dataset``: random teacher logits indexed by
    meta.csv row, no progress output, checkpoints kept in an artifact store at ``artifact_dir``."""
    from nas_asc.budget import DEFAULT_BUDGET
    from nas_asc.search.artifacts import open_artifact_store
    from nas_asc.search.objective import SearchContext
    from nas_asc.search.space import SearchSpace

    return SearchContext(
        SearchSpace.from_dict(space),
        DEFAULT_BUDGET,
        dataset,
        torch.randn(dataset.n_meta_rows, 10),
        seed=seed,
        progress=False,
        artifact_store=open_artifact_store(artifact_dir),
    )


def record_data(study, protocol, root) -> None:
    """Record on ``study`` the dataset and protocol as ``nas-asc search`` does, for export and
    the test-fold measurement to rebuild the data."""
    study.set_user_attr(
        "data_info",
        {
            "root": str(root),
            "train_split": "fold1",
            "fingerprint": protocol.dataset.fingerprint,
            "synthetic": True,
        },
    )
    study.set_user_attr("protocol", protocol.to_dict())


def sparse_npy(path, shape: tuple[int, ...]) -> None:
    """A complete float32 ``.npy`` of ``shape`` whose data is a hole (no disk used)."""
    import math

    import numpy as np

    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        fh.truncate(fh.tell() + 4 * math.prod(shape))


def searched_study(dataset, protocol, root, tmp_path_factory, space: dict):
    """A one-trial study of ``space`` (named after it) on the tiny dataset, with checkpoints and
    its Pareto set measured on the test fold, as ``nas-asc search`` leaves it."""
    import optuna

    from nas_asc.budget import DEFAULT_BUDGET
    from nas_asc.search.holdout import measure_front
    from nas_asc.search.objective import DIRECTIONS, OBJECTIVE_NAMES, Objective

    artifact_dir = tmp_path_factory.mktemp("artifacts")
    context = artifact_context(dataset, space, artifact_dir, seed=5)
    storage = f"sqlite:///{tmp_path_factory.mktemp('db') / 'study.db'}"
    name = space["name"]
    study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVE_NAMES))
    study.set_user_attr("artifact_dir", str(artifact_dir))
    study.set_user_attr("budget", DEFAULT_BUDGET.to_dict())
    study.set_user_attr("space", name)
    record_data(study, protocol, root)
    study.optimize(Objective(context), n_trials=1)
    return measure_front(study, protocol, progress=False)  # as nas-asc search ends
