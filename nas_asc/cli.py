"""The ``nas-asc`` command line: parses, calls the pipeline stages, reports errors in one line.

Commands: ``search``, ``complexity``, ``data synth``, ``teacher``, ``report``, ``evaluate``,
``dashboard``, ``export``. A problem with the user's input (a bad flag value, a malformed space
or dataset, an unknown study) is printed as one line ``nas-asc: error: ...`` with exit code 2;
set ``NAS_ASC_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from nas_asc import __version__
from nas_asc.errors import NasAscError, ProgramEnd, interrupts_once
from nas_asc.pipeline.search import DEFAULT_TRIALS, DEFAULT_VALIDATION

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (with where to find help), not a usage block.

    ``epilog_fn`` builds the epilog when help is shown (listing the spaces and families imports
    the models, which a command that only runs should not wait for). ``check_fn`` checks flags
    that only make sense together, once all are parsed; its ``NasAscError`` is a usage error.
    """

    epilog_fn = None
    check_fn = None

    def error(self, message: str):  # type: ignore[override]
        # every error line starts "nas-asc: error:", also a subcommand's ("see" names it)
        self.exit(2, f"nas-asc: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if self.check_fn is not None:
            try:
                self.check_fn(namespace)
            except NasAscError as exc:
                self.error(str(exc))
        return namespace, extras


def _add_output_flags(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress output")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="also show Optuna's own log lines",
    )


class _CommandParser(_Parser):
    """A command's parser: it takes ``-q``/``-v`` after the command name too. Their default is
    SUPPRESS, so a flag given before the command name is not reset by the command's parser."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _add_output_flags(self, argparse.SUPPRESS)


def _spaces_epilog() -> str:
    from nas_asc.search.space import list_spaces

    return (
        f"search spaces: {', '.join(list_spaces())} (or a path to a YAML file); "
        f"model families: {_families()}"
    )


def _families_epilog() -> str:
    return f"model families: {_families()}"


def _families() -> str:
    from nas_asc.models import list_models

    return ", ".join(list_models())


def _threads(text: str) -> str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive integer, got {text!r}")
    return str(value)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seeds(text: str) -> int:
    from nas_asc.search.settings import MAX_EVALUATE_SEEDS

    value = _positive_int(text)
    if value > MAX_EVALUATE_SEEDS:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_EVALUATE_SEEDS} seeds (each a full retraining of every chosen "
            f"trial), got {text!r}; pass --seeds {MAX_EVALUATE_SEEDS} or fewer"
        )
    return value


def _check_search(args: argparse.Namespace) -> None:
    """``search`` flags checked together: the workers of a local search must fit this machine
    (a Ray cluster's run on its nodes)."""
    from nas_asc.search.settings import check_workers

    if args.ray_address is None:
        check_workers(args.workers)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a finite positive number, got {text!r}"
        ) from None
    if not 0 < value < float("inf"):  # nan, inf and 1e400 (read as inf) too
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text!r}")
    return value


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default: sqlite:///studies/<study>.db in the working folder)",
    )


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        help="root of a TAU Urban Acoustic Scenes 2022 Mobile development set "
        "(default: the embedded synthetic dataset, generated once into the cache)",
    )
    p.add_argument(
        "--train-split",
        help="training split: fold1 (evaluation_setup/fold1_train.csv) or a DCASE 2024 subset "
        "split5, split10, split25, split50, split100 (default: fold1; split25, the DCASE 2025 "
        "training data, with --budget dcase2025)",
    )


def _add_device(p: argparse.ArgumentParser, what: str = "training") -> None:
    from nas_asc.device import DEVICE_HELP

    p.add_argument(
        "--device",
        default="auto",
        metavar="auto|cpu|cuda|cuda:N",
        help=DEVICE_HELP.replace("training runs", f"{what} runs"),
    )


def _add_validation(p: argparse.ArgumentParser) -> None:
    validation = p.add_mutually_exclusive_group()
    validation.add_argument(
        "--validation",
        type=_fraction,
        default=DEFAULT_VALIDATION,
        metavar="FRACTION",
        help="share of each scene's training locations held out as the validation split that "
        f"every search decision reads (default: {DEFAULT_VALIDATION}); the test fold is measured "
        "once, after the search",
    )
    validation.add_argument(
        "--validation-split",
        type=Path,
        metavar="FILE",
        help="use this validation split instead: a TAB-separated file with a filename column "
        "naming clips of the training split (the DCASE fold-file format)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nas-asc",
        description="Search architectures and hyperparameters for low-complexity acoustic scene "
        "classification under microcontroller budgets (DCASE Task 1).",
    )
    parser.add_argument("--version", action="version", version=f"nas-asc {__version__}")
    _add_output_flags(parser, False)  # before or after the command name (_CommandParser)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    _add_search_command(sub)
    _add_complexity_command(sub)
    _add_data_command(sub)
    _add_teacher_command(sub)
    _add_report_command(sub)
    _add_evaluate_command(sub)
    _add_finetune_command(sub)
    _add_dashboard_command(sub)
    _add_export_command(sub)
    return parser


def _add_search_command(sub) -> None:
    """``nas-asc search``: its options."""
    from nas_asc.search import settings as limits  # the machine limits, named in --help

    p = sub.add_parser(
        "search",
        help="run (or continue) a search and write its report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.epilog_fn = _spaces_epilog
    p.check_fn = _check_search
    p.add_argument(
        "--space",
        required=True,
        help="search space: a name (listed below; ./search_spaces/NAME.yaml first) or a YAML path",
    )
    p.add_argument("--study", help="study name (default: the space name)")
    p.add_argument(
        "--trials",
        type=_positive_int,
        default=DEFAULT_TRIALS,
        help="trained candidates the study should reach; proposals over budget are rejected "
        f"untrained and do not count (default: {DEFAULT_TRIALS})",
    )
    p.add_argument("--timeout", type=_positive_float, help="stop starting trials after SECONDS")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="study seed; trial seeds and the validation split derive from it",
    )
    _add_data(p)
    _add_validation(p)
    _add_storage(p)
    p.add_argument(
        "--budget",
        help="budget preset and/or limits, e.g. dcase2024, bytes=64k,macs=10M or "
        "dcase2024,ram=64k (ram: peak int8 activation bytes; default: dcase2024: 128,000 B, "
        "30,000,000 MACs, RAM not limited)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help="maximum epochs per trial (the upper bound of train.epochs)",
    )
    p.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="folder for reports/<study>/ (default: reports)",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        help="artifact folder for trial checkpoints and confusion images "
        "(default: studies/<study>/artifacts beside the SQLite file)",
    )
    p.add_argument(
        "--teacher-logits",
        type=Path,
        help="distil from this ensemble-logits file (.pt or .npy, shape (rows of meta.csv, 10), "
        "as the DCASE community distributes them) instead of nas-asc's cached teacher",
    )
    p.add_argument(
        "--ir-dir",
        type=Path,
        help="folder of microphone impulse-response WAVs for device simulation "
        "(train.devicesim_p > 0); default: a generated set of plausible microphone responses",
    )
    p.add_argument(
        "--backend",
        default="optuna",
        metavar="NAME",
        help="optuna (default): trials run in this process (or --workers processes sharing a "
        "database); ray: trials run as Ray Tune trials, locally or on a cluster "
        "(pip install 'ray[tune]')",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="trials run in parallel on this machine (default: 1; at most "
        f"{limits.WORKERS_PER_CORE} per core and one per "
        f"{limits.WORKER_PEAK_BYTES / 1e9:.1f} GB of memory, here {limits.max_workers()}; "
        "with --ray-address, on the cluster's nodes); with --backend optuna more than 1 needs "
        "--storage postgresql://...",
    )
    p.add_argument(
        "--ray-address",
        help="address of a running Ray cluster (ray start --head prints it); default: start a "
        "local Ray instance",
    )
    p.add_argument(
        "--sampler",
        default="tpe",
        metavar="NAME[:K=V,...]",
        help="tpe: multivariate, constraint-aware TPE (default; e.g. tpe:n_startup_trials=8); "
        "gp: Gaussian-process Bayesian optimization (constrained multi-objective); nsga2: "
        "NSGA-II (e.g. nsga2:population_size=8); random: uniform sampling",
    )
    p.add_argument(
        "--ram-objective",
        action="store_true",
        help="minimize peak activation RAM as a fourth objective (chosen when the study is "
        "created; limit it instead with --budget ram=64Ki)",
    )
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="do not run the space's reference configurations first in a new study (they run "
        "by default when they fit the budget)",
    )
    p.add_argument(
        "--pruner",
        default="dominance",
        metavar="NAME[:K=V,...]",
        help="dominance: stop a trial whose accuracy after an epoch is beaten by most trials of "
        "equal or lower complexity at that epoch (default; thresholds e.g. "
        "dominance:reduction_factor=3,min_peers=3,min_epochs=2); none: train every trial fully",
    )
    p.add_argument(
        "--threads",
        type=_threads,
        metavar="auto|N",
        help="torch threads per trial (at most "
        f"{limits.THREADS_PER_CORE} per core, here {limits.max_threads()}). Default: each "
        "trial's share of the cores (cores // --workers), fixed whatever the load, so figures "
        "repeat exactly on this machine; N: that many, so they repeat at the same N elsewhere "
        "too; auto: the share lowered to the cores other processes leave free, re-measured "
        "every epoch (faster beside busy processes, but figures then depend on the load; the "
        "summary counts the trials that ran on fewer threads)",
    )
    _add_device(p)
    p.add_argument(
        "--compile",
        choices=("off", "on", "auto"),
        default="off",
        help="torch.compile each trial's network: off (default), on, or auto: only trials "
        "planned to see at least 110,000 training samples, where the compile time (about 3 min "
        "on 2 CPU cores) was measured to pay off; falls back to eager if compiling fails",
    )
    p.add_argument(
        "--gpus",
        metavar="I,J,...",
        help="GPUs the --workers are placed over, in turn (default: every visible GPU); "
        "--workers may exceed them, several trials then share a GPU",
    )
    p.add_argument(
        "--heartbeat",
        type=_positive_int,
        default=30,
        help="seconds between a running trial's heartbeats; a trial silent for 4 heartbeats is "
        "taken as abandoned by a dead worker and re-queued (default: 30)",
    )


def _add_complexity_command(sub) -> None:
    """``nas-asc complexity``: its options."""
    p = sub.add_parser("complexity", help="count parameters, parameter bytes and MACs of a model")
    p.epilog_fn = _families_epilog
    p.add_argument("model", help="registered model family (listed below), e.g. tfsepnet")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set width=40 (repeatable)",
    )
    p.add_argument(
        "--input",
        help="model input CxFxT (default: the family's reference front end, e.g. 1x128x44 for "
        "tfsepnet, 1x256x44 for bcresnet)",
    )
    p.add_argument("--budget", help="budget to check against (default: dcase2024)")
    p.add_argument(
        "--json", action="store_true", help='print {"params": ..., "param_bytes": ..., "macs": ...}'
    )


def _add_data_command(sub) -> None:
    """``nas-asc data``: its options."""
    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND", parser_class=_CommandParser
    )
    s = data_sub.add_parser("synth", help="generate the synthetic dataset in the TAU22 layout")
    s.add_argument("--out", type=Path, required=True, help="output folder (must be new or empty)")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    s.add_argument(
        "--real-size",
        action="store_true",
        help="instead, a layout of the real TAU22 Mobile size (230,350 meta.csv rows, 169,300 "
        "clips in fold1 train + evaluate) whose clips are hard links to the embedded dataset's: "
        "to measure the data pipeline at the real size (seconds, no audio is written)",
    )
    s.add_argument(
        "--fraction",
        type=_size_fraction,
        default=1.0,
        help="with --real-size: scale of every count, in (0, 1] (default: 1)",
    )


def _add_teacher_command(sub) -> None:
    """``nas-asc teacher``: its options."""
    p = sub.add_parser(
        "teacher",
        help="train and cache the teacher ensemble of a search (on the training part, measured "
        "on the validation split)",
    )
    _add_device(p)
    _add_data(p)
    _add_validation(p)
    p.add_argument(
        "--seed", type=int, default=0, help="the search's --seed (it draws the validation split)"
    )
    p.add_argument(
        "--member",
        action="append",
        metavar="FAMILY[:K=V,...]",
        help="one ensemble member, repeatable: a model family and its config fields, plus "
        "mixstyle_p and seed (e.g. --member tfsepnet:width=64 --member "
        "bcresnet:width=80,mixstyle_p=0.3); default: 2 x tfsepnet:width=24",
    )
    p.add_argument(
        "--members", type=_positive_int, help="ensemble size of TF-SepNets (without --member)"
    )
    p.add_argument(
        "--width", type=_positive_int, help="TF-SepNet width C of every member (without --member)"
    )
    p.add_argument("--epochs", type=_positive_int, help="training epochs per member")
    p.add_argument("--retrain", action="store_true", help="train again even if cached")
    p.add_argument(
        "--logits",
        type=Path,
        metavar="FILE",
        help="check an external ensemble-logits file (.pt or .npy, rows of meta.csv x 10) and "
        "report its accuracy on the validation split instead of training",
    )


def _add_report_command(sub) -> None:
    """``nas-asc report``: its options."""
    p = sub.add_parser("report", help="write the Pareto report of a study")
    p.add_argument("--study", required=True, help="study name")
    _add_storage(p)
    p.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="folder for reports/<study>/ (default: reports)",
    )


def _add_evaluate_command(sub) -> None:
    """``nas-asc evaluate``: its options."""
    from nas_asc.search import settings as limits  # the machine limits, named in --help

    p = sub.add_parser(
        "evaluate",
        help="retrain chosen trials on the whole training split with K seeds, measure on the "
        "test fold (mean ± std)",
    )
    _add_device(p)
    p.add_argument("--study", required=True, help="study name")
    _add_storage(p)
    p.add_argument(
        "--trials",
        type=_trial_list,
        help="comma-separated trial numbers (default: every Pareto-optimal trial)",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=3,
        help=f"retrainings per configuration, each with its own seed (default: 3, at most "
        f"{limits.MAX_EVALUATE_SEEDS}); a rerun trains only the seeds not yet finished",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="dataset root (default: the one the study recorded; its files must be unchanged)",
    )
    p.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="folder for reports/<study>/, rewritten with the results (default: reports)",
    )


def _add_finetune_command(sub) -> None:
    """``nas-asc finetune``: its options."""
    p = sub.add_parser(
        "finetune",
        help="DCASE 2025: fine-tune a copy of chosen trials per recording device (selected on "
        "the validation split, measured on the test fold)",
    )
    _add_device(p)
    p.add_argument("--study", required=True, help="study name")
    _add_storage(p)
    p.add_argument(
        "--trials",
        type=_trial_list,
        help="comma-separated trial numbers (default: every Pareto-optimal trial)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=3,
        help="fine-tuning epochs per device model (default: 3)",
    )
    p.add_argument(
        "--lr-scale",
        type=_positive_float,
        default=0.1,
        help="fine-tuning learning rate as a share of the trial's own (default: 0.1)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="dataset root (default: the one the study recorded; its files must be unchanged)",
    )


def _add_dashboard_command(sub) -> None:
    """``nas-asc dashboard``: its options."""
    p = sub.add_parser("dashboard", help="serve optuna-dashboard for a study")
    p.add_argument("--study", required=True, help="study name")
    _add_storage(p)
    p.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8080, help="TCP port (default: 8080)")


def _add_export_command(sub) -> None:
    """``nas-asc export``: its options."""
    p = sub.add_parser(
        "export",
        help="export Pareto-optimal trials: int8 ONNX, weights, model card, C header; or a DCASE "
        "2025 inference package (--format dcase2025)",
    )
    _add_device(p, "verification")
    p.add_argument("--study", required=True, help="study name")
    _add_storage(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--format",
        choices=("onnx", "dcase2025"),
        default="onnx",
        help="onnx: one folder per trial (default); dcase2025: one installable inference "
        "package of up to four submissions (needs --label)",
    )
    p.add_argument(
        "--label",
        help="dcase2025: the submission label Surname_INST_task1 (the package's import name)",
    )
    p.add_argument(
        "--device-models",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="dcase2025: require every trial's device models from nas-asc finetune "
        "(--no-device-models: general models only; default: device models where fine-tuned)",
    )
    p.add_argument(
        "--trials",
        type=_trial_list,
        help="comma-separated trial numbers (default: every Pareto-optimal trial; dcase2025: "
        "the four whose set has the largest hypervolume)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="dataset root to re-verify on (default: the one the study recorded)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing trial exports")
    p.add_argument(
        "--tolerance-pp",
        type=_positive_float,
        default=1.0,
        help="largest ONNX Runtime vs PyTorch int8 accuracy gap, in percentage points "
        "(default: 1.0)",
    )
    p.add_argument("--no-c-header", action="store_true", help="skip the C header")
    p.add_argument(
        "--tflite",
        action="store_true",
        help="also write model_int8.tflite: the same int8 model as a full-integer TFLite "
        "flatbuffer, verified in TensorFlow Lite Micro, its arena and flash in the card (needs "
        "nas-asc[tflite]; a model with layers that run in float is refused, the layer named)",
    )


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return value


def _size_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return value


def _trial_list(text: str) -> list[int]:
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected trial numbers like 3,5,8, got {text!r}"
        ) from None
    if not numbers or any(n < 0 for n in numbers):
        raise argparse.ArgumentTypeError(f"expected trial numbers like 3,5,8, got {text!r}")
    return numbers


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------


def _print_front(study) -> None:
    from nas_asc.report.pareto import format_pareto_table, pareto_frame

    print(
        "\nPareto front (chosen on the validation split: int8 accuracy vs MACs vs parameter "
        "bytes; the test fold measured once, after the search):"
    )
    print(format_pareto_table(pareto_frame(study)))


def _write_report(study, reports: Path):
    from nas_asc.pipeline.search import write_study_report

    paths = write_study_report(study, reports)
    _print_front(study)
    return paths


def cmd_search(args: argparse.Namespace) -> int:
    from nas_asc.pipeline.search import SearchRequest, run_search
    from nas_asc.progress import format_duration
    from nas_asc.study.storage import safe_url

    names = {f.name for f in dataclasses.fields(SearchRequest)} - {"progress"}
    request = SearchRequest(**{name: getattr(args, name) for name in names})
    outcome = run_search(dataclasses.replace(request, progress=not args.quiet))
    _print_front(outcome.study)
    n, paths = outcome.counts, outcome.reports
    retried = f", {n.retried} re-queued after an interrupt or a dead worker" if n.retried else ""
    timing = format_duration(outcome.search_seconds)
    if outcome.runs > 1:
        timing += (
            f" over {outcome.runs} runs (this one {format_duration(outcome.this_run_seconds)})"
        )
    print(
        f"\n{n.done} trials ({n.trained} trained, {n.pruned} stopped early, {n.failed} "
        f"failed{retried}; {n.infeasible} proposals over budget rejected untrained) in "
        f"{timing}\nstudy:   {safe_url(outcome.storage)} (study {outcome.study.study_name!r})\n"
        f"reports: {paths.index_html}\n         {paths.pareto_html}\n"
        f"         {paths.pareto_csv}\n         {paths.trials_csv}"
    )
    if outcome.lowered_threads:
        print(
            f"note: {outcome.lowered_threads} trained trial(s) ran epochs on fewer threads than "
            "their share because other processes kept cores busy (--threads auto), which changes "
            "how gradients are summed: their figures repeat exactly only under the same load; "
            "--threads N fixes them"
        )
    return 0


def _parse_set(items: Sequence[str]) -> dict:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise NasAscError(f"--set takes KEY=VALUE, got {item!r}; e.g. --set width=40")
        parsed = yaml.safe_load(value) if value.strip() else value
        out[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def cmd_complexity(args: argparse.Namespace) -> int:
    from nas_asc.budget import parse_budget
    from nas_asc.complexity import parse_input_shape
    from nas_asc.models import create_model, get_reference_input

    budget = parse_budget(args.budget)
    model = create_model(args.model, **_parse_set(args.set))
    if args.input is None:
        args.input = "x".join(map(str, get_reference_input(args.model)))
    shape = parse_input_shape(args.input)
    try:
        c = budget.count(model, shape, activations=True)
    except RuntimeError as exc:  # the model cannot run on that input (a pooling output below 1)
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise NasAscError(
            f"{args.model} cannot run on --input {args.input} ({detail}); pass a larger input "
            "CxFxT, e.g. 1x128x44"
        ) from None
    if args.json:
        figures = {"params": c.params, "param_bytes": c.param_bytes, "macs": c.macs}
        print(json.dumps({**figures, "peak_activation_bytes": c.peak_activation_bytes}))
        return 0
    violations = budget.violations(c)
    verdict = "within budget" if not violations else "OVER budget: " + "; ".join(violations)
    print(
        f"{args.model} on input {'x'.join(map(str, shape[1:]))}\n"
        f"  parameters       {c.params:>12,}\n"
        f"  parameter bytes  {c.param_bytes:>12,}  (limit {budget.max_param_bytes:,})\n"
        f"  MACs             {c.macs:>12,}  (limit {budget.max_macs:,})\n"
        f"  peak activations {_peak_text(c.peak_activation_bytes, budget)}\n"
        f"  {verdict} ({budget.name})"
    )
    if budget.rule == "dcase2025":
        from nas_asc.complexity import count

        old = count(model, shape, budget.weight_dtype)
        print(
            "  DCASE 2025 rule: the organizers' checker counts the exported int8 network, with "
            "every BatchNorm folded into its convolution (its 2C parameters gone, a bias in "
            "their place), biases and float layers' parameters at 4 bytes (float32) and MACs "
            "as torchinfo counts them; the 2024 "
            f"rule counts the float network: {old.params:,} parameters, {old.param_bytes:,} "
            f"bytes, {old.macs:,} MACs"
        )
    return 0


def _peak_text(peak: int | None, budget) -> str:
    if peak is None:
        return f"{'—':>12}  (the model cannot be traced with torch.fx)"
    limit = f", limit {budget.max_activation_bytes:,}" if budget.limits_ram else ""
    return f"{peak:>12,}  (int8 bytes alive at once{limit})"


def cmd_data(args: argparse.Namespace) -> int:
    from nas_asc._paths import check_creatable
    from nas_asc.data.synth import SynthConfig, generate

    check_creatable(args.out, "output", "--out")
    if args.real_size:
        from nas_asc.data.synth import realsize_layout

        out = realsize_layout(args.out, fraction=args.fraction, progress=not args.quiet)
        print(f"real-size TAU22 layout (links to the embedded dataset's clips) written to {out}")
        return 0
    if args.fraction != 1.0:
        raise NasAscError("--fraction belongs to --real-size; add it or leave --fraction out")
    out = generate(args.out, SynthConfig(seed=args.seed), progress=not args.quiet)
    print(f"synthetic TAU22-layout dataset written to {out}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from nas_asc.pipeline.search import load_dataset, validation_protocol
    from nas_asc.train.teacher import (
        TeacherConfig,
        get_teacher,
        load_teacher_logits,
        parse_member,
    )

    if args.train_split is None:
        args.train_split = "fold1"

    if args.logits is not None:
        if args.member or args.members or args.width or args.epochs or args.retrain:
            raise NasAscError(
                "--logits checks an existing logits file and trains nothing; leave out "
                "--member, --members, --width, --epochs and --retrain"
            )
        dataset, _ = load_dataset(args.data, args.train_split, not args.quiet)
        teacher = load_teacher_logits(
            args.logits,
            validation_protocol(
                dataset, args.validation, args.validation_split, args.seed, args.train_split
            ).search_view(),
        )
        _print_ensemble(teacher.report)
        return 0
    if args.member and (args.members or args.width):
        raise NasAscError(
            "--member lists every member; leave out --members/--width, or use those two "
            "alone for an ensemble of TF-SepNets"
        )
    if args.member:
        members = tuple(parse_member(text, i) for i, text in enumerate(args.member))
        config = TeacherConfig(members=members)
    elif args.members or args.width:
        default = TeacherConfig().members
        width = args.width or default[0].model["width"]
        config = TeacherConfig.uniform(args.members or len(default), width=width, dropout=0.0)
    else:
        config = TeacherConfig()
    if args.epochs:
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, epochs=args.epochs)
        )
    dataset, _ = load_dataset(args.data, args.train_split, not args.quiet)
    # the teacher a search with the same --validation and --seed distils from
    search_data = validation_protocol(
        dataset, args.validation, args.validation_split, args.seed, args.train_split
    ).search_view()
    teacher = get_teacher(
        search_data, config, progress=not args.quiet, retrain=args.retrain, runtime=args.runtime
    )
    for i, m in enumerate(teacher.report["members"]):
        fields = ",".join(f"{k}={v}" for k, v in m.get("model", {}).items())
        print(
            f"member {i}: {m.get('family', 'tfsepnet')}:{fields} seed {m['seed']}, "
            f"MixStyle p={m['mixstyle_p']}: accuracy {m['accuracy']:.1%}"
        )
    _print_ensemble(teacher.report)
    return 0


def _print_ensemble(report: dict) -> None:
    ensemble = report.get("ensemble") or {}
    from nas_asc.train.loop import device_breakdown

    detail = (
        f" ({device_breakdown(ensemble.get('seen_accuracy'), ensemble.get('unseen_accuracy'))}; "
        f"{ensemble['n_clips']} clips)"
        if ensemble
        else ""
    )
    source = f" of {report['source']}" if report.get("source") else ""
    print(f"ensemble accuracy{source}: {report['ensemble_accuracy']:.1%}{detail}")


def _existing_study(name: str, storage: str | None):
    from nas_asc.search.study import check_study_name, open_existing_study

    check_study_name(name)
    return open_existing_study(name, storage)


def cmd_report(args: argparse.Namespace) -> int:
    study, _ = _existing_study(args.study, args.storage)
    paths = _write_report(study, args.reports)
    print(
        f"reports: {paths.index_html}\n         {paths.pareto_html}\n"
        f"         {paths.pareto_csv}\n         {paths.trials_csv}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nas_asc._paths import check_creatable
    from nas_asc.evaluate import evaluate_study, format_evaluation

    study, _ = _existing_study(args.study, args.storage)
    check_creatable(args.reports, "reports", "--reports")
    study = evaluate_study(
        study,
        args.trials,
        args.seeds,
        data_root=args.data,
        progress=not args.quiet,
        runtime=args.runtime,
    )
    paths = _write_report(study, args.reports)
    print(
        "\nretrained on the whole training split, int8, on the test fold (mean ± std over seeds):"
    )
    print(format_evaluation(study, args.trials))
    print(f"\nreports: {paths.index_html}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from nas_asc.report.dashboard import serve

    study, storage = _existing_study(args.study, args.storage)
    serve(study, storage, args.host, args.port)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from nas_asc.finetune import finetune_study, format_finetune

    study, _ = _existing_study(args.study, args.storage)
    study = finetune_study(
        study,
        args.trials,
        epochs=args.epochs,
        lr_scale=args.lr_scale,
        data_root=args.data,
        progress=not args.quiet,
        runtime=args.runtime,
    )
    print(format_finetune(study, args.trials))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.format == "dcase2025":
        return _export_dcase2025(args)
    from nas_asc.export import export_study

    for flag, value in (("--label", args.label), ("--device-models", args.device_models)):
        if value is not None:
            raise NasAscError(f"{flag} belongs to --format dcase2025; add it or leave {flag} out")
    study, _ = _existing_study(args.study, args.storage)
    results = export_study(
        study,
        args.out,
        trials=args.trials,
        data_root=args.data,
        overwrite=args.overwrite,
        progress=not args.quiet,
        tolerance_pp=args.tolerance_pp,
        c_header=not args.no_c_header,
        runtime=args.runtime,
        tflite=args.tflite,
    )
    print(
        f"exported {len(results)} model(s), each re-verified with ONNX Runtime"
        + (" and TensorFlow Lite Micro" if args.tflite else "")
        + f", to {args.out} "
        f"(index: {args.out / 'index.json'})"
    )
    return 0


def _export_dcase2025(args: argparse.Namespace) -> int:
    from nas_asc.export.dcase2025.package import check_label, export_dcase2025

    if args.label is None:
        raise NasAscError(
            "--format dcase2025 needs --label Surname_INST_task1 (the submission label, which "
            "names the package)"
        )
    check_label(args.label)
    for flag, value in (
        ("--overwrite", args.overwrite),
        ("--no-c-header", args.no_c_header),
        ("--tflite", args.tflite),
    ):
        if value:
            raise NasAscError(
                f"{flag} does not apply to --format dcase2025 (the package is written to a new "
                "folder and holds PyTorch networks: no C header, no TFLite)"
            )
    study, _ = _existing_study(args.study, args.storage)
    result = export_dcase2025(
        study,
        args.out,
        args.label,
        trials=args.trials,
        device_models=args.device_models,
        data_root=args.data,
        tolerance_pp=args.tolerance_pp,
        progress=not args.quiet,
    )
    print(f"\nDCASE 2025 inference package {result.label} written to {result.directory}:")
    for row in result.submissions:
        own = ", ".join(row["devices"]) or "none"
        print(
            f"  {result.label}_{row['index']}: trial {row['trial']} ({row['family']}; own device "
            f"models: {own}), at most {row['max_macs']:,} MACs and {row['max_param_bytes']:,} "
            f"parameter bytes per device, test accuracy {row['accuracy']:.1%} (nas-asc's int8 "
            f"scene on {row['agreement']:.1%} of the clips)"
        )
    print(f"install it with: pip install -e {result.directory}")
    return 0


_COMMANDS = {
    "search": cmd_search,
    "complexity": cmd_complexity,
    "data": cmd_data,
    "teacher": cmd_teacher,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
    "dashboard": cmd_dashboard,
    "export": cmd_export,
    "finetune": cmd_finetune,
}


def _quiet_libraries(verbose: bool) -> None:
    """Optuna's INFO lines (a trial finished, a study created) only with ``-v``."""
    import logging

    import optuna  # its first import sets its loggers to INFO: set them after it

    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


def _scrubber(args: argparse.Namespace):
    """A function masking the storage URL (and its password) of ``args`` in a text."""
    url = getattr(args, "storage", None)
    if not url:
        return lambda text: text

    def scrub(text: str) -> str:
        from nas_asc.study.storage import scrub as scrub_url

        return scrub_url(text, url)

    return scrub


def _debug_traceback(exc: BaseException, scrub) -> None:
    """The traceback for ``NAS_ASC_DEBUG``, with the storage password masked."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    print(scrub(text), file=sys.stderr, end="")


def _is_storage_error(exc: BaseException) -> bool:
    optuna = sys.modules.get("optuna")  # only a command that opened a study can meet one
    return optuna is not None and isinstance(exc, optuna.exceptions.StorageInternalError)


def _debug_enabled(value: str) -> bool:
    """``NAS_ASC_DEBUG``: 1/true/yes/on show tracebacks; unset, empty, 0/false/no/off do not."""
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _runtime(args: argparse.Namespace):
    """The command's runtime (:class:`~nas_asc.train.accel.AccelOptions`): its ``--device``,
    checked before any work (CUDA missing is one line, exit 2); None for a command without one.
    Each command passes it to the stage it calls."""
    spec = getattr(args, "device", None)
    if spec is None:
        return None
    from nas_asc.device import driver_device
    from nas_asc.train.accel import AccelOptions

    return AccelOptions(device=driver_device(spec, getattr(args, "ray_address", None)))


def main(argv: Sequence[str] | None = None) -> int:
    from nas_asc.redact import masked_output, url_password

    argv = list(sys.argv[1:] if argv is None else argv)
    # one mask over all the command prints (messages, Reporter, logging, warnings, tracebacks,
    # argparse's own errors): no form of a storage password reaches the screen
    with masked_output(url_password(arg) for arg in argv):
        return _main(argv)


def _main(argv: list[str]) -> int:
    # Ctrl-C or SIGTERM at any moment is one line and exit code 130: while parsing and importing,
    # in the command, in its clean-up (a second one is ignored) and, for the nas-asc process,
    # after the command returned until the process ends
    end = ProgramEnd.of(argv)
    with interrupts_once():
        try:
            code = _command(argv)
        except KeyboardInterrupt:  # before a command started (parsing, importing Optuna)
            print("nas-asc: interrupted", file=sys.stderr)
            code = 130
        return code if end is None else end.finished(code)


def _command(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    scrub = _scrubber(args)
    debug = _debug_enabled(os.environ.get("NAS_ASC_DEBUG", ""))
    try:
        args.runtime = _runtime(args)
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        # a search re-queues the trial it was running (same parameters and seed)
        detail = (
            "; finished trials are kept and the running one is re-queued: run the same "
            "command to continue"
            if args.command == "search"
            else ""
        )
        print(f"nas-asc: interrupted{detail}", file=sys.stderr)
        return 130
    except (NasAscError, ValueError, TypeError, OSError) as exc:
        if debug:
            _debug_traceback(exc, scrub)
            return 2
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            message = (
                f"{exc.strerror or exc}: {exc.filename}; check that path (a folder, writable, "
                "with free space) or choose another"
            )
        if isinstance(exc, OSError) and args.command == "search":
            # the machine's fault, met before or inside a trial (which is then re-queued)
            message += "; finished trials are kept: run the same command again to continue"
        print(f"nas-asc: error: {scrub(message)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if _is_storage_error(exc):  # the study's database refused a write (locked, full disk)
            if debug:
                _debug_traceback(exc, scrub)
                return 2
            from nas_asc.search.objective import machine_error_text

            when = "once the database is free (not locked, its disk not full)"
            detail = (
                "; finished trials are kept and the running one is re-queued: run the same "
                f"command again {when}"
                if args.command == "search"
                else f"; run the command again {when}"
            )
            print(
                scrub(f"nas-asc: error: the study's database failed ({machine_error_text(exc)})")
                + detail,
                file=sys.stderr,
            )
            return 2
        # not a problem with the input but a bug or an unforeseen failure: still one line, with
        # the way to the traceback, never a traceback the user has to read past
        if debug:
            _debug_traceback(exc, scrub)
            return 1
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            scrub(
                f"nas-asc: error: unexpected {type(exc).__name__}"
                f"{': ' + detail if detail else ''}; re-run with NAS_ASC_DEBUG=1 for the "
                "traceback and report it"
            ),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # python -m nas_asc.cli, as well as python -m nas_asc
    raise SystemExit(main())
