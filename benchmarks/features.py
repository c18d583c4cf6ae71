"""Log-mel features at the real dataset's size: time, peak and held memory, before and after.

Builds a TAU22 layout of the real development set's size (or ``--clips N``, a proportional part
of it) whose clips are hard links to the embedded synthetic dataset's
(:func:`nas_asc.data.synth.realsize_layout`), or takes ``--root``, and measures in one run:

* before: the log-mel computation and cache of nas-asc before the memory-mapped cache (kept
  here as a private reference: one process, a chunk at a time, the Mel transform rebuilt per
  chunk, every Mel-bin count recomputed from the WAV files, a ``torch.save`` blob per group and
  front end, loaded whole, indexed per split and normalized from a float32 copy);
* after: :func:`~nas_asc.data.features.precompute_features` (worker processes, one pass for
  every Mel-bin count) and :func:`~nas_asc.data.features.load_features` (memory-mapped).

Each measurement runs in a fresh process (its peak resident set is its own; worker processes
are counted apart). "peak" is the growth of the resident set during the step over what the
process held before it, "held" the growth after the step and one pass over every clip through
``FeatureSet.batch`` (what training reads), "cache" the size of the feature files on disk.
Two processes loading the same features share one copy: the last row shows each one's private
(anonymous) growth and its proportional share (PSS) of the mapped files while both hold them.
Run it with nothing else running::

    python benchmarks/features.py --clips 20000          # a proportional part, minutes
    python benchmarks/features.py                        # the real size (169,300 clips)
    python benchmarks/features.py --root DATA --skip-before
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REAL_CLIPS = 169_300  # fold1 train + fold1 evaluate of TAU22


# --- measuring one process ---------------------------------------------------------------------


def _status() -> dict[str, int]:
    """This process's VmRSS, VmHWM, RssAnon, RssFile (bytes)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _feature_maps() -> dict[str, int]:
    """Rss and Pss (bytes) of this process's maps of feature cache files."""
    out = {"Rss": 0, "Pss": 0}
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header line
                inside = len(fields) >= 6 and "/features/" in fields[5]
            elif inside and fields[0] in ("Rss:", "Pss:"):
                out[fields[0][:-1]] += int(fields[1]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # VmHWM := VmRSS (Linux 4.0+)
        fh.write("5")


class _WorkerPeaks(threading.Thread):
    """Samples the peak resident set (VmHWM) of this process's worker processes (multiprocessing
    children) while it runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for pid in self._children():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if b"spawn_main" not in fh.read():
                            continue  # not a worker (the resource tracker, a shell)
                    with open(f"/proc/{pid}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM:"):
                                peak = int(line.split()[1]) * 1024
                                self.peaks[pid] = max(self.peaks.get(pid, 0), peak)
                except OSError:
                    continue  # it ended

    @staticmethod
    def _children() -> list[int]:
        pids = []
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children") as fh:
                    pids += [int(p) for p in fh.read().split()]
            except OSError:
                continue
        return pids


def _measure(step) -> dict:
    """Run ``step()``; its seconds, and the resident set's growth at its peak and after it."""
    import gc

    gc.collect()
    _reset_peak()
    base = _status()
    workers = _WorkerPeaks()
    workers.start()
    start = time.perf_counter()
    held_objects = step()
    seconds = time.perf_counter() - start
    workers.stop.set()
    workers.join()
    if held_objects:
        _touch(held_objects)
    gc.collect()
    after = _status()
    return {
        "seconds": seconds,
        "peak": max(after["VmHWM"], base["VmHWM"]) - base["VmRSS"],
        "held": after["VmRSS"] - base["VmRSS"],
        "anon": after["RssAnon"] - base["RssAnon"],
        "workers": sorted(workers.peaks.values()),
        "_objects": held_objects,
    }


def _touch(sets, batch: int = 256) -> None:
    """One pass over every clip of every set, in batches as training reads them."""
    for s in sets:
        for start in range(0, len(s), batch):
            if hasattr(s, "batch"):
                s.batch(slice(start, start + batch))
            else:  # the reference's raw tensors
                s[start : start + batch].float()


# --- before: the reference computation and cache ------------------------------------------------


def _old_compute(dataset, filenames, frontend):
    """The log-mel computation before precompute_features (one process, logmel per chunk)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from nas_asc.data.features import logmel
    from nas_asc.data.tau22 import read_audio

    out = torch.empty(len(filenames), frontend.n_mels, frontend.frames(), dtype=torch.float16)
    bar = tqdm(total=len(filenames), desc=f"before: log-mel {frontend.n_mels}", unit="clip")
    for start in range(0, len(filenames), 256):
        names = filenames[start : start + 256]
        by_rate = {}
        for i, name in enumerate(names):
            wave, rate = read_audio(dataset.path(name))
            by_rate.setdefault(rate, []).append((start + i, wave))
        for rate, items in by_rate.items():
            batch = np.zeros((len(items), rate), dtype=np.float32)
            for j, (_, wave) in enumerate(items):
                batch[j, : min(rate, len(wave))] = wave[:rate]
            feats = logmel(torch.from_numpy(batch), rate, frontend)
            out[[idx for idx, _ in items]] = feats.to(torch.float16)
        bar.update(len(names))
    bar.close()
    return out


def _old_path(folder: Path, dataset, source, frontend) -> Path:
    from nas_asc._cache import content_key

    key = content_key(2, dataset.sources[source][0], frontend.to_dict())
    return folder / f"logmel-{key}.pt"


def _old_precompute(dataset, frontend, folder: Path) -> None:
    from nas_asc._cache import save_torch

    for source in ("train", "evaluate"):
        filenames = list(dataset.sources[source][1])
        feats = _old_compute(dataset, filenames, frontend)
        blob = {"filenames": filenames, "logmel": feats, "frontend": frontend.to_dict()}
        save_torch(blob, _old_path(folder, dataset, source, frontend))


def _old_load(dataset, frontend, folder: Path):
    """The loading before the memory-mapped cache: raw split tensors (copies) and stats."""
    import torch

    from nas_asc._cache import load_torch

    groups = {}
    for source in ("train", "evaluate"):
        blob = load_torch(_old_path(folder, dataset, source, frontend))
        groups[source] = ({n: i for i, n in enumerate(blob["filenames"])}, blob["logmel"])
        del blob
    raws = []
    for frame, source in ((dataset.train, "train"), (dataset.evaluate, "evaluate")):
        index, feats = groups[source]
        raws.append(feats[torch.tensor([index[n] for n in frame.filename])])
    del groups
    train_x = raws[0].float()
    mean, std = train_x.mean(), train_x.std()
    del train_x
    return raws, float(mean), float(std)


# --- one scenario in this process ---------------------------------------------------------------


def _scenario(name: str, root: Path, bins: list[int], workers: int | None) -> dict:
    from nas_asc.data.features import FrontEnd, load_features, precompute_features
    from nas_asc.data.protocol import ValidationSpec, make_protocol
    from nas_asc.data.tau22 import load_tau22

    dataset = load_tau22(root)
    frontends = [FrontEnd(n_mels=n) for n in bins]
    old = Path(os.environ["NAS_ASC_CACHE"]) / "features-before"
    old.mkdir(parents=True, exist_ok=True)

    def before_compute():
        for fe in frontends:
            _old_precompute(dataset, fe, old)

    def before_load():
        return [raw for fe in frontends for raw in _old_load(dataset, fe, old)[0]]

    def after_compute():
        precompute_features(dataset, frontends, progress=True, workers=workers)

    def after_load(data):
        return [s for fe in frontends for s in load_features(data, fe, progress=False)]

    steps = {
        "before-compute": before_compute,
        "before-load": before_load,
        "after-compute": after_compute,
        "after-load": lambda: after_load(dataset),
        "after-view": lambda: after_load(make_protocol(dataset, ValidationSpec()).search_view()),
    }
    return _measure(steps[name])


def _shared_worker(root: str, bins: list[int], barrier, queue) -> None:
    from nas_asc.data.features import FrontEnd, load_features
    from nas_asc.data.protocol import ValidationSpec, make_protocol
    from nas_asc.data.tau22 import load_tau22

    view = make_protocol(load_tau22(root), ValidationSpec()).search_view()
    base = _status()
    sets = [s for n in bins for s in load_features(view, FrontEnd(n_mels=n), progress=False)]
    _touch(sets)
    barrier.wait()  # both processes hold their sets now
    now, maps = _status(), _feature_maps()
    queue.put(
        {
            "held": now["VmRSS"] - base["VmRSS"],
            "anon": now["RssAnon"] - base["RssAnon"],
            "maps": maps["Rss"],
            "pss": maps["Pss"],
        }
    )
    barrier.wait()  # neither lets go before the other has measured


def _shared(root: Path, bins: list[int]) -> dict:
    """Two processes load the same search-view features at once: the resident set each one
    gains, its private part, and its proportional share (PSS) of what it maps."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_shared_worker, args=(str(root), bins, barrier, queue)) for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {key: max(r[key] for r in results) for key in ("held", "anon", "maps", "pss")}


# --- the driver ---------------------------------------------------------------------------------


def _run(name: str, root: Path, cache: Path, bins: list[int], workers: int | None) -> dict:
    env = {**os.environ, "NAS_ASC_CACHE": str(cache)}
    cmd = [sys.executable, __file__, "--scenario", name, "--root", str(root)]
    cmd += ["--bins", *map(str, bins)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"scenario {name} failed (exit {r.returncode})")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="a TAU22 root (default: build a layout)")
    parser.add_argument("--clips", type=int, default=REAL_CLIPS, help="clips of the layout")
    parser.add_argument("--bins", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--skip-before", action="store_true", help="measure only the new path")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scenario:
        result = _scenario(args.scenario, args.root, args.bins, args.workers)
        result.pop("_objects", None)
        print(json.dumps(result))
        return

    from nas_asc._cache import DIGESTS, cache_root, content_key
    from nas_asc.data.synth import default_dataset, realsize_layout
    from nas_asc.data.tau22 import load_tau22

    home = cache_root()  # the user's cache: the layout's source and its digest index
    work = Path(tempfile.mkdtemp(prefix="bench-features-", dir=home))
    try:
        root = args.root
        if root is None:
            fraction = min(1.0, args.clips / REAL_CLIPS)
            source = default_dataset(progress=True)
            start = time.perf_counter()
            root = realsize_layout(work / "layout", source, fraction=fraction)
            print(f"layout: {time.perf_counter() - start:.1f} s", flush=True)
        start = time.perf_counter()
        dataset = load_tau22(root)
        n = len(dataset.sources["train"][1]) + len(dataset.sources["evaluate"][1])
        print(f"load_tau22: {time.perf_counter() - start:.1f} s (file digests computed once)")
        with open("/proc/loadavg") as fh:
            load = fh.read().split()[:3]
        print(
            f"{n:,} clips ({n / REAL_CLIPS:.3f} of the real size), {os.cpu_count()} cores, "
            f"load average {' '.join(load)} before the measurements",
            flush=True,
        )
        rows = []
        first = args.bins[:1]
        for label, bins in (
            (f"{first[0]} bins", first),
            ("+".join(map(str, args.bins)) + " bins", args.bins),
        ):
            cache = work / f"cache-{'-'.join(map(str, bins))}"
            # the clips' digests, computed once above (hashing the clips is not what is timed)
            shutil.copytree(home / DIGESTS, cache / DIGESTS, dirs_exist_ok=True)
            if not args.skip_before:
                c = _run("before-compute", root, cache, bins, args.workers)
                lo = _run("before-load", root, cache, bins, args.workers)
                rows.append(("before", label, c, lo, _size(cache / "features-before")))
            c = _run("after-compute", root, cache, bins, args.workers)
            lo = _run("after-load", root, cache, bins, args.workers)
            rows.append(("after", label, c, lo, _size(cache / "features")))
        view = _run("after-view", root, cache, args.bins, args.workers)
        os.environ["NAS_ASC_CACHE"] = str(cache)  # the view's files, written just above
        shared = _shared(root, args.bins)
    finally:
        layout = (work / "layout").resolve()
        shutil.rmtree(work, ignore_errors=True)
        if args.root is None:  # the digest index of the layout just deleted
            (home / DIGESTS / f"{content_key(str(layout))}.json").unlink(missing_ok=True)

    print()
    print(
        f"{'':7}{'front ends':14}{'compute s':>10}{'clips/s':>8}{'peak':>9}{'workers':>13}"
        f"{'load s':>7}{'peak':>9}{'held':>9}{'private':>9}{'peak/held':>10}{'cache':>9}"
    )
    for when, label, c, lo, size in rows:
        ratio = lo["peak"] / lo["held"] if lo["held"] > 0 else math.nan
        worker = f"{len(c['workers'])}x{_gb(max(c['workers']))}" if c["workers"] else "-"
        print(
            f"{when:7}{label:14}{c['seconds']:>10.1f}{n / c['seconds']:>8.0f}{_gb(c['peak']):>9}"
            f"{worker:>13}{lo['seconds']:>7.2f}{_gb(lo['peak']):>9}{_gb(lo['held']):>9}"
            f"{_gb(lo['anon']):>9}{ratio:>10.2f}{_gb(size):>9}"
        )
    print(
        f"\nsearch view, {'+'.join(map(str, args.bins))} bins, first load (writes the training "
        f"part's and validation split's files): {view['seconds']:.2f} s, peak "
        f"{_gb(view['peak'])}, held {_gb(view['held'])}"
    )
    print(
        f"two processes holding that view at once: each gains {_gb(shared['held'])} resident, "
        f"{_gb(shared['anon'])} of it private; of its {_gb(shared['maps'])} of mapped feature "
        f"files its proportional share (PSS) is {_gb(shared['pss'])}: one copy for both"
    )
    with open("/proc/loadavg") as fh:
        print(f"load average after the measurements: {' '.join(fh.read().split()[:3])}")


if __name__ == "__main__":
    main()
