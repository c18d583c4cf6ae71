"""Selection bias: what choosing on the test fold used to report, and what the protocol reports.

A search picks its best models by the accuracy it measures. When that accuracy is the test fold's
(nas-asc before the validation protocol), the chosen model's test accuracy is the maximum of many
noisy measurements and overstates what the model will score on new data. This benchmark runs
real searches on the embedded dataset under today's protocol (every decision on the validation
split), then, for the analysis only, measures **every** trained trial on the test fold, and
prints per study seed:

* ``chosen on validation``: the trial with the best validation int8 accuracy, its validation and
  test accuracy (what nas-asc reports now);
* ``chosen on test``: the best test accuracy over all trained trials (what selecting on the test
  fold reported: an optimistic figure, since the test fold did the choosing);
* the bias: the second minus the test accuracy of the first, and Kendall's tau between
  validation and test accuracy over the trained trials.

    python benchmarks/selection_bias.py                    # tfsepnet, 12 trials, seeds 0 1 2
    python benchmarks/selection_bias.py --trials 30 --seeds 0 1

Medians over seeds close the output. The studies stay in ``--out`` (default: a temporary
folder) for ``nas-asc report --storage``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.pipeline.search import SearchRequest, run_search, validation_protocol
from nas_asc.search.holdout import measure_trials
from nas_asc.search.space import load_space
from nas_asc.study.front import kendall_tau


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tfsepnet")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--validation", type=float, default=0.2)
    parser.add_argument("--out", type=Path, default=None, help="folder for the studies")
    args = parser.parse_args()

    torch.set_num_threads(1)
    out = args.out or Path(tempfile.mkdtemp(prefix="nas-asc-bias-"))
    space = load_space(args.space)
    if args.epochs:
        space = space.with_max_epochs(args.epochs)
    dataset = load_tau22(default_dataset(progress=False))
    print(
        f"space {space.name}, {args.trials} trials per study, seeds {args.seeds}, validation "
        f"{args.validation} of the training locations; studies in {out}\n"
    )
    rows = []
    for seed in args.seeds:
        name = f"bias-{space.name}-seed{seed}"
        # the search as `nas-asc search` runs it, then every trained trial on the test fold
        outcome = run_search(
            SearchRequest(
                args.space,
                args.trials,
                study=name,
                seed=seed,
                validation=args.validation,
                storage=f"sqlite:///{out / (name + '.db')}",
                epochs=args.epochs or None,
                reports=out / "reports",
                artifacts=out / name / "artifacts",  # checkpoints, for the test measurement
                progress=False,
            ),
            say=lambda text: None,
        )
        study = outcome.study
        protocol = validation_protocol(dataset, args.validation, None, seed, "fold1")
        trained = [t for t in study.get_trials() if t.user_attrs.get("status") == "trained"]
        study = measure_trials(study, protocol, trained, progress=False)  # analysis only
        trained = [t for t in study.get_trials() if t.user_attrs.get("status") == "trained"]
        val = [t.user_attrs["int8_accuracy"] for t in trained]
        test = [t.user_attrs["test_int8_accuracy"] for t in trained]
        best_val = max(trained, key=lambda t: (t.user_attrs["int8_accuracy"], -t.number))
        best_test = max(test)
        row = {
            "seed": seed,
            "trained": len(trained),
            "val_of_chosen": best_val.user_attrs["int8_accuracy"],
            "test_of_chosen": best_val.user_attrs["test_int8_accuracy"],
            "best_test": best_test,
            "bias": best_test - best_val.user_attrs["test_int8_accuracy"],
            "tau": kendall_tau(val, test),
        }
        rows.append(row)
        tau = "n/a" if row["tau"] is None else f"{row['tau']:.2f}"
        print(
            f"seed {seed}: {row['trained']} trained; chosen on validation: trial "
            f"{best_val.number}, validation {row['val_of_chosen']:.1%}, test "
            f"{row['test_of_chosen']:.1%}; chosen on test: {best_test:.1%}; bias "
            f"{100 * row['bias']:+.1f} points; Kendall tau {tau}",
            flush=True,
        )
    med = {k: statistics.median(r[k] for r in rows) for k in ("test_of_chosen", "best_test")}
    bias = statistics.median(r["bias"] for r in rows)
    print(
        f"\nmedians over {len(rows)} seeds: chosen on validation scores {med['test_of_chosen']:.1%}"
        f" on the test fold; choosing on the test fold reported {med['best_test']:.1%} "
        f"(selection bias {100 * bias:+.1f} points)"
    )


if __name__ == "__main__":
    main()
