"""Issue 4 evidence: what KD, MixStyle + device simulation and QAT do for a fixed TF-SepNet.

On the embedded synthetic dataset (``nas_asc.data.synth.default_dataset``), a fixed TF-SepNet
(width 24, 64 Mel bins, the front end of ``search_spaces/tfsepnet_recipe.yaml``) is trained with
a few seeds under four recipes that differ from a plain baseline in one element each:

* ``base``: cross-entropy only, no Freq-MixStyle, no device simulation, post-training int8;
* ``kd``: + Hinton KD from the cached teacher ensemble (``nas_asc.train.teacher.get_teacher``);
* ``mixstyle+devsim``: + Freq-MixStyle and impulse-response device simulation (report 003/004);
* ``qat``: quantization-aware training for the last epoch instead of post-training int8.

Every figure is measured int8 accuracy on the evaluate split (held-out locations), overall and on
the unseen devices s4-s6, as the search's accuracy objective is. The table gives mean +- standard
deviation over seeds, the per-seed values and each recipe's difference from ``base`` (paired by
seed). Run from the repository root::

    python benchmarks/recipes.py                # 3 seeds, 4 epochs (about 8 min on one core)
    python benchmarks/recipes.py --seeds 1 --epochs 2 --recipes base kd
    python benchmarks/recipes.py --recipes base kd --teacher-member tfsepnet:width=48 \\
        --teacher-member tfsepnet:width=48 --teacher-epochs 8     # a teacher well above the student
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from nas_asc.data.devicesim import load_simulated_devices
from nas_asc.data.features import FrontEnd, load_features
from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.models import create_model
from nas_asc.search.objective import measure_int8
from nas_asc.train.loop import TrainConfig, train
from nas_asc.train.teacher import TeacherConfig, get_teacher, parse_member

MODEL = dict(width=24, norm="adaresnorm", block="tfsep", dropout=0.1)
FRONTEND = FrontEnd(n_mels=64)
BASE = dict(
    batch_size=64,
    lr=2e-2,
    kd_lambda=0.0,
    mixstyle_p=0.0,
    devicesim_p=0.0,
    quantization="ptq",
)
# each recipe changes the baseline in one element; values are TrainConfig defaults or the
# reports' (MixStyle p 0.4 / alpha 0.3; device simulation on half the device-A clips)
RECIPES = {
    "base": {},
    "kd": dict(kd_lambda=0.5, kd_temperature=2.0),
    "mixstyle+devsim": dict(mixstyle_p=0.4, mixstyle_alpha=0.3, devicesim_p=0.5),
    "qat": dict(quantization="qat", qat_epochs=1),
}


def _run(recipe: TrainConfig, seed: int, data: dict) -> dict:
    """Train one model and measure its fp32 and int8 accuracy on the evaluate split."""
    train_set, eval_set = data["train"], data["eval"]
    torch.manual_seed(seed)
    model = create_model("tfsepnet", **MODEL)
    teacher = data["teacher"] if recipe.kd_lambda > 0 else None
    simulated = data["simulated"] if recipe.devicesim_p > 0 else None
    result = train(model, train_set, recipe, teacher, seed=seed, simulated=simulated)
    fp32, int8, _ = measure_int8(model, result, train_set, eval_set, recipe, seed)
    return {
        "int8": int8.accuracy,
        "unseen": int8.unseen_accuracy,
        "fp32": fp32.accuracy,
        "seconds": result.seconds,
    }


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} ± {100 * std:4.1f}"


def _table(runs: dict[str, list[dict]]) -> str:
    lines = []
    header = (
        f"{'recipe':<16} {'int8 acc %':>12} {'Δ vs base':>12} {'unseen int8 %':>14} "
        f"{'Δ vs base':>12} {'fp32 %':>12}  per-seed int8 %"
    )
    lines += [header, "-" * len(header)]
    base = runs.get("base")
    for name, rs in runs.items():
        int8 = [r["int8"] for r in rs]
        unseen = [r["unseen"] for r in rs]
        fp32 = [r["fp32"] for r in rs]
        if base is not None and name != "base":
            d_int8 = _mean_std([a - b["int8"] for a, b in zip(int8, base, strict=True)])
            d_unseen = _mean_std([a - b["unseen"] for a, b in zip(unseen, base, strict=True)])
        else:
            d_int8 = d_unseen = "-"
        per_seed = ", ".join(f"{100 * v:.1f}" for v in int8)
        lines.append(
            f"{name:<16} {_mean_std(int8):>12} {d_int8:>12} {_mean_std(unseen):>14} "
            f"{d_unseen:>12} {_mean_std(fp32):>12}  {per_seed}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per recipe (default 3)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--teacher-member",
        action="append",
        metavar="FAMILY[:K=V,...]",
        help="teacher ensemble member for the kd recipe, repeatable, as nas-asc teacher "
        "--member (default: nas-asc's default teacher)",
    )
    parser.add_argument(
        "--teacher-epochs", type=int, default=None, help="training epochs per teacher member"
    )
    parser.add_argument(
        "--recipes",
        nargs="+",
        choices=sorted(RECIPES),
        default=list(RECIPES),
        help="recipes to compare (default: all; base is needed for the differences)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.threads < 1:
        parser.error(
            f"--seeds, --epochs and --threads must be >= 1, got {args.seeds}, {args.epochs}, "
            f"{args.threads}"
        )
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    dataset = load_tau22(default_dataset())
    train_set, eval_set = load_features(dataset, FRONTEND)
    recipes = [name for name in RECIPES if name in args.recipes]
    data = {"train": train_set, "eval": eval_set, "teacher": None, "simulated": None}
    teacher_line = ""
    if "kd" in recipes:
        config = TeacherConfig()
        if args.teacher_member:
            members = tuple(parse_member(t, i) for i, t in enumerate(args.teacher_member))
            config = dataclasses.replace(config, members=members)
        if args.teacher_epochs:
            config = dataclasses.replace(
                config, train=dataclasses.replace(config.train, epochs=args.teacher_epochs)
            )
        ensemble = get_teacher(dataset, config)
        data["teacher"] = ensemble.logits
        members = ", ".join(f"{100 * m['accuracy']:.1f}" for m in ensemble.report["members"])
        teacher_line = (
            f"teacher ensemble: {100 * ensemble.report['ensemble_accuracy']:.1f} % "
            f"(members {members} %)"
        )
    if "mixstyle+devsim" in recipes:
        data["simulated"] = load_simulated_devices(dataset, FRONTEND, train_set)
    setup = time.perf_counter() - start

    runs: dict[str, list[dict]] = {}
    for name in recipes:
        recipe = TrainConfig(**{**BASE, **RECIPES[name], "epochs": args.epochs})
        for seed in range(args.seeds):
            r = _run(recipe, seed, data)
            runs.setdefault(name, []).append(r)
            print(
                f"{name} seed {seed}: int8 {100 * r['int8']:.1f} % (unseen "
                f"{100 * r['unseen']:.1f} %, fp32 {100 * r['fp32']:.1f} %), {r['seconds']:.0f} s",
                flush=True,
            )

    print()
    print(
        f"TF-SepNet {MODEL}, {FRONTEND.n_mels} Mel bins, {args.epochs} epochs, "
        f"{args.seeds} seed(s); {len(train_set)} training / {len(eval_set)} evaluate clips "
        "(held-out locations); int8 accuracy on the evaluate split"
    )
    if teacher_line:
        print(teacher_line)
    print(f"baseline recipe (other fields: TrainConfig defaults): {BASE}")
    print("recipes:", {name: RECIPES[name] for name in recipes})
    print()
    print(_table(runs))
    print(f"\nsetup {setup:.0f} s, total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
