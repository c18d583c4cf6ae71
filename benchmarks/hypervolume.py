"""Search efficiency: hypervolume reached by the default sampler vs random sampling.

Runs the same space with nas-asc's default sampler (multivariate, constraint-aware TPE) and with
random sampling, the same number of trials and the same three study seeds, on the embedded
synthetic dataset, and prints the final hypervolume of each study (Optuna's implementation, with
the reference point at chance accuracy and the budget: ``nas_asc.report.hypervolume``), the
hypervolume after every trial for the medians, and the ratio of medians.

    python benchmarks/hypervolume.py                       # tfsepnet, 12 trials, seeds 0 1 2
    python benchmarks/hypervolume.py --trials 20 --epochs 3 --space tfsepnet

Every study is a real search (training, int8 quantization, evaluation on the validation split);
the studies are kept in ``--out`` (default: a temporary folder) for inspection with ``nas-asc
report --storage``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nas_asc.budget import parse_budget
from nas_asc.data.protocol import ValidationSpec, make_protocol
from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.report.hypervolume import hypervolume_history
from nas_asc.search.backend import run_search
from nas_asc.search.objective import SearchContext
from nas_asc.search.settings import SearchSettings
from nas_asc.search.space import load_space
from nas_asc.search.study import trial_counts
from nas_asc.train.teacher import get_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tfsepnet")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"])
    parser.add_argument("--pruner", default="dominance")
    parser.add_argument("--out", type=Path, default=None, help="folder for the study databases")
    args = parser.parse_args()

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="nas-asc-hv-"))
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(args.space)
    if args.epochs:
        space = space.with_max_epochs(args.epochs)
    dataset = load_tau22(default_dataset(progress=False))
    budget = parse_budget(None)
    print(
        f"space {space.name}, {args.trials} trials per study, seeds {args.seeds}, "
        f"pruner {args.pruner}, {torch.get_num_threads()} torch thread(s)\n"
        f"studies in {out}\n"
    )
    final: dict[str, list[float]] = {s: [] for s in args.samplers}
    curves: dict[str, list[list[float]]] = {s: [] for s in args.samplers}
    for seed in args.seeds:
        # as nas-asc search does: the validation split and its teacher follow the study seed
        search_data = make_protocol(dataset, ValidationSpec(seed=seed)).search_view()
        teacher = get_teacher(search_data, progress=False)
        for sampler in args.samplers:
            name = f"hv-{space.name}-{sampler}-seed{seed}"
            context = SearchContext(
                space, budget, search_data, teacher.logits, seed, progress=False
            )
            settings = SearchSettings(
                name,
                f"sqlite:///{out / (name + '.db')}",
                args.trials,
                seed=seed,
                sampler=sampler,
                pruner=args.pruner,
            )
            start = time.perf_counter()
            study = run_search(context, settings, "synthetic")
            seconds = time.perf_counter() - start
            history = hypervolume_history(study)
            curve = _per_trial(history, len(study.trials))
            final[sampler].append(curve[-1] if curve else 0.0)
            curves[sampler].append(curve)
            n = trial_counts(study)
            print(
                f"{sampler:>6} seed {seed}: hypervolume {final[sampler][-1]:.4f} "
                f"({n.trained} trained, {n.infeasible} over budget, {n.pruned} stopped early, "
                f"{n.failed} failed; {seconds:.0f} s)",
                flush=True,
            )

    print("\nfinal hypervolume (normalized; max 0.9)")
    print(f"{'sampler':>8} | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median | mean")
    for sampler in args.samplers:
        values = final[sampler]
        print(
            f"{sampler:>8} | "
            + " | ".join(f"{v:.4f}" for v in values)
            + f" | {statistics.median(values):.4f} | {statistics.mean(values):.4f}"
        )
    if {"tpe", "random"} <= set(args.samplers):
        rnd = statistics.median(final["random"])
        tpe = statistics.median(final["tpe"])
        ratio = tpe / rnd if rnd > 0 else float("inf")
        print(f"\nratio of medians, tpe / random: {ratio:.2f}")
    print("\nmedian hypervolume after each trial")
    for sampler in args.samplers:
        per_trial = [statistics.median(c[i] for c in curves[sampler]) for i in range(args.trials)]
        print(f"{sampler:>8}: " + " ".join(f"{v:.3f}" for v in per_trial))


def _per_trial(history, n_trials: int) -> list[float]:
    """Hypervolume after each trial number (carried forward over trials that add nothing)."""
    by_trial = dict(zip(history["trial"], history["hypervolume"], strict=True))
    curve, best = [], 0.0
    for number in range(n_trials):
        best = max(best, by_trial.get(number, best))
        curve.append(best)
    return curve


if __name__ == "__main__":
    main()
