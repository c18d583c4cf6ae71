"""Search efficiency: hypervolume per sampler, with and without warm start, against random search.

Runs real searches (training, int8 quantization, evaluation on the validation split) of one space
on the embedded synthetic dataset: every sampler in ``--samplers`` with warm start off and (with
``--warm-start both``) on, for every study seed, each to ``--trials`` trained candidates, and
random search without warm start, the reference, to ``--reference-trials``. From
each study it takes the normalized hypervolume (Optuna's, reference point chance accuracy and the
budget: ``nas_asc.report.hypervolume``) after every trained candidate, and the wall time at which
that candidate finished (from the study's own timestamps: training, rejected proposals and the
sampler's own time all count). It prints:

* the hypervolume after each ``--checkpoints`` count of trained candidates (median and range over
  the seeds) and its ratio to random search's median at that count;
* the wall time each configuration needs to reach random search's median hypervolume at the last
  checkpoint it ran to, and its ratio to random search's wall time for that many candidates.

The default (20 candidates each, 40 for random search) decides both of the project's goals: the
ratio at 20 candidates, and reaching random search's 40-candidate hypervolume within a third of
its wall time, which a configuration must do well inside its own 20 candidates or not at all
unless its candidates train much faster than random search's (the table says how far each ran).

Searches run in ``--jobs`` processes of one torch thread each (all configurations under the same
load, so their wall times compare); each finished study writes ``<name>.json`` in ``--out``, and a
rerun with the same ``--out`` skips them (an interrupted benchmark continues). Configurations
run in the order given, each for every seed, so a benchmark cut short leaves whole
configurations; a later run with fewer ``--samplers`` or another ``--warm-start`` prints the
tables of what it names from the results already there::

    python benchmarks/hypervolume.py                          # the README's configuration
    python benchmarks/hypervolume.py --trials 40 --samplers random tpe --warm-start off
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

from nas_asc.budget import parse_budget
from nas_asc.data.features import FrontEnd
from nas_asc.data.protocol import ValidationSpec, make_protocol
from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.report.hypervolume import hypervolume_history
from nas_asc.search.space import load_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tfsepnet")
    parser.add_argument(
        "--trials",
        type=int,
        default=20,
        help="trained candidates per study (random search without warm start: --reference-trials)",
    )
    parser.add_argument(
        "--reference-trials",
        type=int,
        default=40,
        help="trained candidates of random search without warm start, the reference: its "
        "hypervolume after them is the target the others race to, its wall time the yardstick",
    )
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["random", "tpe", "gp", "nsga2"])
    parser.add_argument("--warm-start", choices=["off", "on", "both"], default="both")
    parser.add_argument("--pruner", default="dominance")
    parser.add_argument("--jobs", type=int, default=2, help="searches run at once")
    parser.add_argument("--out", type=Path, default=None, help="folder for studies and results")
    args = parser.parse_args()
    if "random" not in args.samplers:
        parser.error("--samplers must include random (the reference)")
    longest = max(args.trials, args.reference_trials)
    checkpoints = sorted(c for c in args.checkpoints if c <= longest) or [longest]

    out = args.out or Path(tempfile.mkdtemp(prefix="nas-asc-hv-"))
    out.mkdir(parents=True, exist_ok=True)
    warm = {"off": [False], "on": [True], "both": [False, True]}[args.warm_start]
    # without warm start first (random's is the reference), then with it (random's last: it only
    # says what the references alone are worth)
    configs = [(s, w) for w in warm for s in args.samplers]
    configs.sort(key=lambda c: c[1] and c[0] == "random")
    print(
        f"space {args.space}, {args.trials} trained candidates per study "
        f"({args.reference_trials} for random search), seeds {args.seeds}, "
        f"max epochs {args.epochs or 'as the space'}, pruner {args.pruner}, {args.jobs} "
        f"searches at once (1 torch thread each)\nstudies and results in {out}\n",
        flush=True,
    )
    _prepare(args.space, args.epochs, args.seeds)
    tasks = [
        (
            args.space,
            args.epochs,
            args.reference_trials if (sampler, w) == ("random", False) else args.trials,
            args.pruner,
            sampler,
            w,
            seed,
            str(out),
        )
        for sampler, w in configs
        for seed in args.seeds
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
        runs = list(pool.imap_unordered(_run, tasks))
    results = {(r["sampler"], r["warm"], r["seed"]): r for r in runs}
    _print_tables(results, configs, args.seeds, checkpoints)
    _print_pooled(out, args.space, results, configs, args.seeds, checkpoints)


def _label(sampler: str, warm: bool) -> str:
    return f"{sampler}{' + warm' if warm else ''}"


def _prepare(space_name: str, epochs: int | None, seeds: list[int]) -> None:
    """Train each seed's teacher and compute every front end's features once, in this process,
    so that the parallel searches only read the caches."""
    from nas_asc.search.objective import SearchContext
    from nas_asc.train.teacher import get_teacher

    space = load_space(space_name)
    dataset = load_tau22(default_dataset(progress=False))
    mels = next((d.choices for d in space.dimensions if d.name == "frontend.n_mels"), None)
    for seed in seeds:
        view = make_protocol(dataset, ValidationSpec(seed=seed)).search_view()
        teacher = get_teacher(view, progress=False)
        ctx = SearchContext(space, parse_budget(None), view, teacher.logits, seed, progress=False)
        for n_mels in mels or [space.fixed["frontend"].get("n_mels", FrontEnd.n_mels)]:
            ctx.features(FrontEnd(**{**space.fixed["frontend"], "n_mels": n_mels}))


def _run(task) -> dict:
    space_name, epochs, trials, pruner, sampler, warm, seed, out = task
    name = _study_name(space_name, sampler, warm, seed)
    result_path = Path(out) / f"{name}.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        if result.get("trials", len(result["curve"])) >= trials:
            return result

    import optuna
    import torch

    from nas_asc.pipeline.search import SearchRequest, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    db = Path(out) / f"{name}.db"
    db.unlink(missing_ok=True)  # a study left by an interrupted run starts again
    request = SearchRequest(
        space_name,
        trials,
        study=name,
        seed=seed,
        storage=f"sqlite:///{db}",
        epochs=epochs or None,
        reports=Path(out) / "reports",
        artifacts=Path(out) / name,
        sampler=sampler,
        pruner=pruner,
        warm_start=warm,
        threads=1,
        progress=False,
    )
    start = time.perf_counter()
    # the whole search as `nas-asc search` runs it (the curve reads the trials' own timestamps,
    # so the end-of-search test measurement and the report do not count in it)
    outcome = run_search(request, say=lambda text: None)
    study, counts = outcome.study, outcome.counts
    seconds = time.perf_counter() - start
    result = {
        "sampler": sampler,
        "warm": warm,
        "seed": seed,
        "trials": trials,
        "seconds": seconds,
        "curve": _curve(study),
        "counts": counts.__dict__,
    }
    result_path.write_text(json.dumps(result))
    print(
        f"{_label(sampler, warm):>14} seed {seed}: hypervolume {result['curve'][-1][1]:.4f} "
        f"after {len(result['curve'])} trained candidates, {seconds:.0f} s "
        f"({result['counts']['infeasible']} proposals over budget rejected)",
        flush=True,
    )
    return result


def _curve(study) -> list[tuple[float, float]]:
    """``(seconds since the study's first trial started, hypervolume)`` after each trial that
    counts towards ``--trials`` (trained, stopped early or failed), in the order they finished."""
    from optuna.trial import TrialState

    history = hypervolume_history(study)
    hv_at = dict(zip(history["trial"], history["hypervolume"], strict=True))
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete is not None]
    trials.sort(key=lambda t: t.datetime_complete)
    t0 = min(t.datetime_start for t in trials if t.datetime_start is not None)
    curve, best = [], 0.0
    for t in trials:
        best = max(best, hv_at.get(t.number, best))
        counted = t.state in (TrialState.PRUNED, TrialState.FAIL) or (
            t.state == TrialState.COMPLETE and t.user_attrs.get("status") != "infeasible"
        )
        if counted:
            curve.append(((t.datetime_complete - t0).total_seconds(), best))
    return curve


def _spread(values: list[float], fmt: str = "{:.4f}") -> str:
    return (
        f"{fmt.format(statistics.median(values))} "
        f"({fmt.format(min(values))}-{fmt.format(max(values))})"
    )


def _print_tables(results: dict, configs: list, seeds: list[int], checkpoints: list[int]) -> None:
    def hv(config, seed, k):
        """Hypervolume after ``k`` trained candidates; None when the study ran fewer."""
        curve = results[(*config, seed)]["curve"]
        return curve[k - 1][1] if len(curve) >= k else None

    reference_config = ("random", False)
    random_median = {}
    for k in checkpoints:
        values = [hv(reference_config, s, k) for s in seeds]
        if None not in values:
            random_median[k] = statistics.median(values)
    print("\nhypervolume after k trained candidates: median (min-max) over seeds; ratio of medians")
    print(f"{'sampler':>14} | " + " | ".join(f"{f'k = {k}':^31}" for k in checkpoints))
    for config in configs:
        cells = []
        for k in checkpoints:
            values = [hv(config, s, k) for s in seeds]
            if None in values:
                cells.append(f"{'not run to k':^31}")
                continue
            base = random_median.get(k)
            ratio = f"{statistics.median(values) / base:5.2f}x" if base else "    -"
            cells.append(f"{_spread(values)} {ratio}")
        print(f"{_label(*config):>14} | " + " | ".join(cells))

    last = max(random_median, default=None)
    if last is None:
        return
    target = random_median[last]

    def time_to(config, seed):
        for seconds, value in results[(*config, seed)]["curve"]:
            if value >= target:
                return seconds
        return math.inf  # not reached in the candidates it ran

    # random search's wall time for its `last` candidates, median over the seeds
    reference = statistics.median(
        results[(*reference_config, s)]["curve"][last - 1][0] for s in seeds
    )
    print(
        f"\nwall time to reach random search's median hypervolume after {last} candidates "
        f"({target:.4f}): median over the seeds (a seed that does not reach it counts as "
        f"never); ratio to random search's median wall time for {last} candidates "
        f"({reference:.0f} s)"
    )
    for config in configs:
        times = [time_to(config, s) for s in seeds]
        reached = sum(math.isfinite(t) for t in times)
        ends = [results[(*config, s)]["curve"][-1][0] for s in seeds]
        ran = statistics.median(ends)
        candidates = min(len(results[(*config, s)]["curve"]) for s in seeds)
        med = statistics.median(times)
        if math.isfinite(med):
            text = f"{med:7.0f} s  {med / reference:5.2f}x"
        else:
            # most seeds never reached it: the median is beyond the earliest of their ends
            bound = min(e for e, t in zip(ends, times, strict=True) if not math.isfinite(t))
            text = f"> {bound:5.0f} s > {bound / reference:4.2f}x"
        print(
            f"{_label(*config):>14} | {text}  ({reached}/{len(seeds)} seeds reach it in "
            f"{candidates} candidates, {ran:.0f} s median)"
        )


def _study_name(space_name: str, sampler: str, warm: bool, seed: int) -> str:
    return f"hv-{space_name}-{sampler}{'-warm' if warm else ''}-seed{seed}"


def _print_pooled(
    out: Path, space_name: str, results: dict, configs: list, seeds: list[int], checkpoints
) -> None:
    """How close each configuration comes to the best front known: the hypervolume of every
    candidate trained for the seed in any of the studies (all samplers, all trials), pooled.

    A sampler can at most reach what the space holds; the pooled front is a lower bound of
    that, and random search's share of it bounds the ratio any sampler can show."""
    import optuna

    pooled = {}
    for seed in seeds:
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        for sampler, warm in configs:
            name = _study_name(space_name, sampler, warm, seed)
            source = optuna.load_study(study_name=name, storage=f"sqlite:///{out / name}.db")
            study.set_user_attr("budget", source.user_attrs.get("budget"))
            study.add_trials(
                t for t in source.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
            )
        history = hypervolume_history(study)
        pooled[seed] = float(history["hypervolume"].max()) if len(history) else 0.0
    print(
        "\nshare of the pooled front (every candidate trained for the seed by any configuration "
        "above): hypervolume / pooled hypervolume, median (min-max) over seeds"
    )
    print("pooled hypervolume per seed: " + ", ".join(f"{pooled[s]:.4f}" for s in seeds))
    for config in configs:
        cells = []
        for k in checkpoints:
            curves = [results[(*config, s)]["curve"] for s in seeds]
            if any(len(c) < k for c in curves):
                cells.append(f"{'not run to k':^24}")
                continue
            shares = [c[k - 1][1] / pooled[s] for c, s in zip(curves, seeds, strict=True)]
            cells.append(f"k = {k}: {_spread(shares, '{:.2f}')}")
        print(f"{_label(*config):>14} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
