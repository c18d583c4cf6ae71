"""The search as one function: :func:`run_search` over a typed :class:`SearchRequest`.

``nas-asc search`` parses its arguments into a request, calls :func:`run_search` and prints the
outcome; a program (a benchmark, a notebook) does the same without argparse::

    outcome = run_search(SearchRequest(space="tfsepnet", trials=12))
    outcome.study.best_trials

The stages, in order: check every input (space, budget, split, study name, storage, folders,
backend settings) before anything is loaded or written; load the dataset and carve the
validation split from its training part; refuse a stored study that was started differently;
compute every front end the space can use in one pass; train (or load) the teacher on the
search's view of the data; run the backend's trials; measure the Pareto set once on the test
fold; write the report and add this run's time to the study's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas_asc.errors import NasAscError

if TYPE_CHECKING:
    import optuna

    from nas_asc.data.protocol import Protocol
    from nas_asc.report.pareto import ReportPaths
    from nas_asc.search.study import TrialCounts

__all__ = [
    "DEFAULT_TRIALS",
    "DEFAULT_VALIDATION",
    "WEAK_TEACHER",
    "SearchOutcome",
    "SearchRequest",
    "load_dataset",
    "run_search",
    "write_study_report",
    "validation_protocol",
    "weak_teacher_note",
]

#: Trained candidates a search reaches unless told otherwise (``--trials``).
DEFAULT_TRIALS = 12
#: :data:`nas_asc.data.protocol.DEFAULT_VALIDATION`, here without importing pandas (the CLI
#: reads it to build its help).
DEFAULT_VALIDATION = 0.2

#: A teacher below this validation accuracy (twice chance for 10 scenes) has learnt too little
#: for its students to learn from it: the search says so before it trains them.
WEAK_TEACHER = 0.2


@dataclass(frozen=True)
class SearchRequest:
    """What one search run is asked to do: the options of ``nas-asc search``, by the same names.

    ``None`` leaves the documented default (``train_split``: ``split25`` under the
    ``dcase2025`` budget, else ``fold1``; ``storage``: ``studies/<study>.db``; ``study``: the
    space's name; ``threads``: each trial's fixed share of the cores, ``"auto"`` to adapt).
    """

    space: str
    trials: int = DEFAULT_TRIALS
    study: str | None = None
    timeout: float | None = None
    seed: int = 0
    data: Path | None = None
    train_split: str | None = None
    validation: float = DEFAULT_VALIDATION
    validation_split: Path | None = None
    storage: str | None = None
    budget: str | None = None
    epochs: int | None = None
    reports: Path = Path("reports")
    artifacts: Path | None = None
    teacher_logits: Path | None = None
    ir_dir: Path | None = None
    backend: str = "optuna"
    workers: int = 1
    ray_address: str | None = None
    sampler: Any = "tpe"
    pruner: Any = "dominance"
    ram_objective: bool = False
    warm_start: bool = True
    threads: int | str | None = None
    device: str = "auto"
    compile: str = "off"
    gpus: str | None = None
    heartbeat: int = 30
    progress: bool = True


@dataclass(frozen=True)
class SearchOutcome:
    """The finished run: the study (reloaded), its report, what its trials came to and the time
    the study has taken over all its runs."""

    study: optuna.Study
    storage: str
    reports: ReportPaths
    counts: TrialCounts
    search_seconds: float
    runs: int
    this_run_seconds: float
    lowered_threads: int


def load_dataset(data: Path | None, train_split: str, progress: bool) -> tuple[Any, str]:
    """The TAU22-layout dataset at ``data`` (None: the embedded synthetic one) and its label."""
    from nas_asc.data.synth import default_dataset
    from nas_asc.data.tau22 import TRAIN_SPLITS, load_tau22

    if train_split not in TRAIN_SPLITS:  # checked before the synthetic dataset is generated
        raise NasAscError(
            f"unknown --train-split {train_split!r}; use one of {', '.join(TRAIN_SPLITS)}"
        )
    if data is None:
        root = default_dataset(progress=progress)
        return load_tau22(root, train_split=train_split), f"synthetic ({root})"
    return load_tau22(data, train_split=train_split), str(Path(data).resolve())


def validation_protocol(
    dataset: Any,
    validation: float,
    validation_split: Path | None,
    seed: int,
    train_split: str,
) -> Protocol:
    """The validation split the search decides on (``--validation``/``--validation-split``)."""
    from nas_asc.data.protocol import ValidationSpec, make_protocol

    file = None if validation_split is None else str(validation_split)
    spec = ValidationSpec(fraction=validation, seed=seed, file=file)
    return make_protocol(dataset, spec, train_split)


def weak_teacher_note(accuracy: float | None, n_train: int) -> str:
    """A note when the teacher learnt little (the data are too few for the epochs), else ""."""
    if accuracy is None or accuracy >= WEAK_TEACHER:
        return ""
    return (
        f"note: the teacher reaches only {accuracy:.1%} on the validation split (chance is "
        f"10%): {n_train:,} training clips are too few to learn from in a few epochs, so the "
        "trials will score near chance too; train on more clips (--train-split, --data) or "
        "for more epochs (--epochs, nas-asc teacher --epochs)"
    )


def write_study_report(study: optuna.Study, reports: Path) -> ReportPaths:
    """Write ``study``'s report into ``reports/<study name>/`` (created if needed)."""
    from nas_asc._paths import writable_dir
    from nas_asc.report.pareto import write_report

    return write_report(study, writable_dir(Path(reports) / study.study_name, "reports"))


def run_search(request: SearchRequest, say: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run (or continue) the search ``request`` describes; its progress lines go to ``say``
    (None: the console reporter's, when ``request.progress``).

    Raises:
        NasAscError: a bad input, in one line, before anything is written.
    """
    from nas_asc._cache import cache_root
    from nas_asc._paths import check_creatable, writable_dir
    from nas_asc.budget import parse_budget
    from nas_asc.data.features import precompute_features
    from nas_asc.data.protocol import ValidationSpec
    from nas_asc.device import driver_device, parse_gpus
    from nas_asc.progress import ConsoleReporter, Reporter, reporter_for
    from nas_asc.search.artifacts import default_artifact_dir, open_artifact_store
    from nas_asc.search.backends import create_backend
    from nas_asc.search.holdout import measure_front
    from nas_asc.search.objective import SearchContext
    from nas_asc.search.settings import SearchSettings
    from nas_asc.search.space import load_space
    from nas_asc.search.study import (
        check_existing_study,
        check_storage,
        check_study_name,
        default_storage,
        load_lowered_threads,
        trial_counts,
    )
    from nas_asc.study.record import add_search_time
    from nas_asc.study.storage import safe_url
    from nas_asc.train.teacher import get_teacher

    started = time.perf_counter()
    r, progress = request, request.progress
    if say is None:
        say = reporter_for(progress).message
    space = load_space(r.space)
    if r.epochs is not None:
        space = space.with_max_epochs(r.epochs)
    budget = parse_budget(r.budget)
    # the DCASE 2025 rules come with its training data
    split = r.train_split or ("split25" if budget.rule == "dcase2025" else "fold1")
    ValidationSpec(fraction=r.validation, seed=r.seed)  # a bad seed fails now
    cache_root()  # $NAS_ASC_CACHE naming a file fails now, not inside a trial
    if r.validation_split is not None and not Path(r.validation_split).is_file():
        raise NasAscError(
            f"--validation-split {r.validation_split} is not a file; pass a TAB-separated "
            "file with a filename column naming clips of the training split"
        )
    study_name = check_study_name(
        r.study or space.name, "--study" if r.study else f"the space's name in {r.space}"
    )
    storage = r.storage or default_storage(study_name)
    # the settings, parsed once (sampler and pruner specs become instances) and checked by the
    # backend that will run them, before the data is loaded or a teacher trained
    backend = create_backend(r.backend, address=r.ray_address)
    settings = SearchSettings(
        study_name,
        storage,
        r.trials,
        r.timeout,
        r.seed,
        sampler=r.sampler,
        pruner=r.pruner,
        workers=r.workers,
        heartbeat=r.heartbeat,
        artifact_dir_explicit=r.artifacts is not None,
        ram_objective=r.ram_objective,
        warm_start=r.warm_start,
        # default (None): each trial's share of the cores, fixed; auto: that share, lowered to
        # what other processes leave free
        threads=None if r.threads in (None, "auto") else int(r.threads),
        adapt_threads=r.threads == "auto",
        device=r.device,
        gpus=parse_gpus(r.gpus),
        compile=r.compile,
    )
    backend.check(settings)
    check_storage(storage)
    check_creatable(r.reports, "reports", "--reports")
    if r.artifacts is not None:
        check_creatable(r.artifacts, "artifacts", "--artifacts")
    if r.ir_dir is not None:  # check the folder now, not in the middle of the search
        from nas_asc.data.devicesim import load_impulse_responses

        load_impulse_responses(r.ir_dir, 32000)
    if progress:  # the first line within a second or two: what runs, where it is recorded
        say(
            f"search: space {space.name}, {r.trials} trials, budget {budget.name}, study "
            f"{study_name!r} in {safe_url(storage)}; loading the data"
        )
    dataset, data_label = load_dataset(r.data, split, progress)
    protocol = validation_protocol(dataset, r.validation, r.validation_split, r.seed, split)
    # an existing study must be continued as it was started: checked before the teacher trains
    recorded = check_existing_study(
        storage,
        study_name,
        space.name,
        budget,
        r.seed,
        dataset.fingerprint,
        r.artifacts,
        protocol=protocol.identity(),
        ram_objective=r.ram_objective,
    )
    # a worker joining a shared study keeps checkpoints where the study keeps them
    artifact_dir = r.artifacts or (
        Path(recorded) if recorded else default_artifact_dir(storage, study_name)
    )
    check_creatable(artifact_dir, "artifacts", "--artifacts")
    settings = dataclasses.replace(settings, artifact_dir=str(artifact_dir))
    if progress:
        say(protocol.describe())
    # the search sees the training part and the validation split, never the test fold
    search_data = protocol.search_view()
    if r.teacher_logits is not None:  # a bad file fails here, before any feature is cached
        from nas_asc.train.teacher import load_teacher_logits

        teacher = load_teacher_logits(r.teacher_logits, search_data)
        if progress:
            say(
                f"teacher: {r.teacher_logits} (ensemble accuracy "
                f"{teacher.report['ensemble_accuracy']:.1%} on the validation split)"
            )
    # every front end the space (and the teacher) can use, in one pass over the audio, before
    # any worker starts: the workers then map one shared copy
    frontends = space.frontends()
    if r.teacher_logits is None:
        from nas_asc.train.teacher import TeacherConfig

        frontends = list(dict.fromkeys([TeacherConfig().frontend, *frontends]))
    precompute_features(search_data, frontends, progress=progress)
    if r.teacher_logits is None:
        # the teacher trains here, on the driver's device, with the workers' threads and compile
        runtime = settings.runtime(driver_device(r.device, r.ray_address))
        teacher = get_teacher(search_data, progress=progress, runtime=runtime)
    note = weak_teacher_note(teacher.report.get("ensemble_accuracy"), len(protocol.fit))
    if note and progress:
        say(note)
    # created only once the inputs have been checked, so a bad input leaves no folder behind
    store = open_artifact_store(writable_dir(artifact_dir, "artifacts"))
    ir_dir = None if r.ir_dir is None else str(Path(r.ir_dir).resolve())
    context = SearchContext(
        space,
        budget,
        search_data,
        teacher.logits,
        r.seed,
        progress,
        artifact_store=store,
        ir_dir=ir_dir,
        reporter=ConsoleReporter(total=r.trials) if progress else Reporter(),
    )
    teacher_logits = None if r.teacher_logits is None else str(Path(r.teacher_logits).resolve())
    data_info = {
        "root": str(Path(dataset.root).resolve()),
        "train_split": split,
        "fingerprint": dataset.fingerprint,
        "synthetic": r.data is None,
        "teacher_logits": teacher_logits,  # None: nas-asc's default teacher ensemble
        "ir_dir": ir_dir,
        "protocol": protocol.to_dict(),
    }
    study = backend.run(context, settings, data_label, data_info)
    # the end of the search: its Pareto set measured on the test fold, once
    study = measure_front(study, protocol, progress)
    paths = write_study_report(study, r.reports)
    this_run = time.perf_counter() - started
    total, runs = add_search_time(study, this_run)
    return SearchOutcome(
        study=study,
        storage=storage,
        reports=paths,
        counts=trial_counts(study),
        search_seconds=total,
        runs=runs,
        this_run_seconds=this_run,
        lowered_threads=load_lowered_threads(study),
    )
