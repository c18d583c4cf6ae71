"""A search beside another busy process: wall time loaded vs alone, per ``--threads`` setting.

On a shared machine (a laptop compiling, a CI runner, a colleague's job) torch threads that
outnumber the free cores stall each other at every OpenMP barrier. ``--threads auto`` (the
default) gives each trial the cores other processes leave free, re-measured every epoch;
``--threads N`` keeps N whatever the load (the figures then repeat exactly at that N).

This benchmark runs the default search (``nas-asc search --space tfsepnet`` through the real
CLI, each run in a fresh folder, with the data, features and teacher already cached, so what is
timed is the search) alone and beside one CPU-bound single-threaded process, for each setting,
and prints the wall times and the ratio loaded / alone. Run it with nothing else running::

    python benchmarks/load.py                        # auto and 2 threads, 12 trials
    python benchmarks/load.py --settings auto --trials 6
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time


def _busy(stop) -> None:
    """One core's worth of pure-Python work until ``stop`` is set (a second process's load)."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 31 + 7) % 1_000_003


def _search(trials: int, threads: str) -> float:
    with tempfile.TemporaryDirectory(prefix="nas-asc-load-") as work:
        start = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "nas_asc", "-q", "search", "--space", "tfsepnet"]
            + ["--trials", str(trials), "--threads", threads],
            cwd=work,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"search failed: {r.stderr.strip()[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--settings", nargs="+", default=["auto", "2"], metavar="THREADS")
    args = parser.parse_args()

    print(f"{os.cpu_count()} cores; warming the caches (data, features, teacher) ...", flush=True)
    _search(1, "2")
    rows = []
    for threads in args.settings:
        alone = _search(args.trials, threads)
        stop = multiprocessing.Event()
        other = multiprocessing.Process(target=_busy, args=(stop,))
        other.start()
        try:
            loaded = _search(args.trials, threads)
        finally:
            stop.set()
            other.join()
        rows.append((threads, alone, loaded))
        print(
            f"--threads {threads}: alone {alone:.0f} s, beside one busy process {loaded:.0f} s, "
            f"ratio {loaded / alone:.2f}",
            flush=True,
        )
    print(f"\n{'--threads':>10} | {'alone s':>8} | {'loaded s':>8} | loaded / alone")
    for threads, alone, loaded in rows:
        print(f"{threads:>10} | {alone:8.0f} | {loaded:8.0f} | {loaded / alone:.2f}")


if __name__ == "__main__":
    main()
