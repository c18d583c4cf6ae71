"""Issue 5 evidence: training samples/s of the nas-asc trainer vs a plain eager PyTorch loop.

Both train fresh copies of one model (same initial weights) on the same clips of the embedded
synthetic dataset's log-mel features (``nas_asc.data.synth.default_dataset``, 64 Mel bins), for
the same number of epochs at batch 64 with AdamW and cross-entropy:

* **plain eager loop**: what a typical user writes: a ``torch.utils.data.DataLoader`` over a
  list of per-sample ``(x_i, y_i)`` tensors, ``shuffle=True``, torch's default thread count;
* **nas-asc trainer**: ``nas_asc.train.loop.train`` with its speed settings
  (:mod:`nas_asc.train.accel`) at their defaults, as a search trial runs it, with Freq-MixStyle
  and knowledge distillation off so that both do the same work.

Rows run interleaved (every row once, then again, ...) so that other processes on the machine
disturb them alike; the table gives samples/s per repeat, the median and the median's ratio to
the plain loop's. Rows between the two show one setting at a time, cumulatively: in-memory
batches alone (torch's default threads, contiguous layout, unfused AdamW), then load-aware
threads, fused AdamW, and channels-last forced on. ``--background-load K`` starts K busy
processes for the duration, to measure the trainer among other jobs reproducibly. Run from the
repository root::

    python benchmarks/train_throughput.py                     # tfsepnet C=40, about 2-3 min
    python benchmarks/train_throughput.py --model cpmobile --repeats 5
    python benchmarks/train_throughput.py --set width=24 --background-load 1
    python benchmarks/train_throughput.py --compile           # + torch.compile (minutes)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import statistics
import time

import torch
import torch.nn.functional as F
import yaml

from nas_asc.data.features import FeatureSet, FrontEnd, load_features
from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.models import create_model
from nas_asc.train import accel
from nas_asc.train.loop import TrainConfig, train

BATCH = 64
LR = 1e-2
WEIGHT_DECAY = 1e-4


def plain_loop(model, pairs, epochs: int, seed: int, threads: int) -> None:
    """The baseline: DataLoader over per-sample tensors, AdamW, cross-entropy, eager."""
    torch.set_num_threads(threads)
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            if len(y) < 2:  # as the trainer: BatchNorm needs two samples
                continue
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def nas_asc_trainer(model, train_set: FeatureSet, epochs: int, seed: int, options) -> dict:
    """``nas_asc.train.loop.train`` under ``options``; returns the accel session's summary."""
    accel.configure_threads(parallel_trials=1)
    before = accel.last_session()
    recipe = TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_epochs=0,
        mixstyle_p=0.0,
        kd_lambda=0.0,
    )
    with accel.using(**options):
        train(model, train_set, recipe, teacher_logits=None, seed=seed)
    session = accel.last_session()
    return {} if session is None or session is before else session.summary()


def _busy() -> None:
    while True:
        pass


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}; e.g. --set width=40")
        parsed = yaml.safe_load(value)
        out[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tfsepnet", help="registered model family")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="model config field"
    )
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--clips", type=int, default=1024, help="training clips (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="only the plain loop and the trainer"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add a torch.compile row (minutes of compiling)"
    )
    parser.add_argument(
        "--background-load",
        type=int,
        default=0,
        metavar="K",
        help="run K busy processes meanwhile, as other jobs on the machine (default 0)",
    )
    args = parser.parse_args(argv)
    for name in ("epochs", "clips", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.background_load < 0:
        parser.error(f"--background-load must be >= 0, got {args.background_load}")

    default_threads = torch.get_num_threads()  # torch's choice, before anything changes it
    train_set, _ = load_features(
        load_tau22(default_dataset(progress=False)), FrontEnd(n_mels=64), progress=False
    )
    n = min(args.clips, len(train_set))
    subset = dataclasses.replace(
        train_set,
        x=train_set.x[:n].clone(),
        y=train_set.y[:n].clone(),
        devices=train_set.devices[:n],
        filenames=train_set.filenames[:n],
        rows=train_set.rows[:n].clone(),
    )
    pairs = [(subset.x[i].clone(), subset.y[i].clone()) for i in range(n)]  # per-sample tensors
    model_cfg = _parse_set(args.set)
    if args.model == "tfsepnet" and not model_cfg:
        model_cfg = {"width": 40}
    torch.manual_seed(args.seed)
    init = create_model(args.model, **model_cfg)

    off = dict(threads=default_threads, channels_last=False, fused_optimizer=False)
    rows: list[tuple[str, dict | None]] = [("plain eager loop (DataLoader)", None)]
    if not args.no_breakdown:
        rows += [
            ("nas-asc: in-memory batches only", off),
            (" + load-aware threads", dict(off, threads=None)),
            (" + fused AdamW", dict(off, threads=None, fused_optimizer=True)),
            (" + channels-last forced", dict(threads=None, channels_last=True)),
        ]
    rows.append(("nas-asc trainer (defaults)", {}))
    if args.compile:
        rows.append(("nas-asc + torch.compile", dict(compile="on")))

    samples = n * args.epochs
    loaders = []
    spawn = multiprocessing.get_context("spawn")
    for _ in range(args.background_load):
        proc = spawn.Process(target=_busy, daemon=True)
        proc.start()
        loaders.append(proc)
    print(
        f"train_throughput: {args.model} {model_cfg}, {n} clips x {args.epochs} epoch(s), batch "
        f"{BATCH}, {args.repeats} repeats, {accel.cpu_cores()} cores (torch default threads "
        f"{default_threads}), {args.background_load} busy background process(es)",
        flush=True,
    )
    rates: dict[str, list[float]] = {name: [] for name, _ in rows}
    summaries: dict[str, dict] = {}
    try:
        # untimed: the first steps of a process build oneDNN's kernels for these shapes
        warm = dataclasses.replace(subset, x=subset.x[: 2 * BATCH], y=subset.y[: 2 * BATCH])
        plain_loop(copy.deepcopy(init), pairs[: 2 * BATCH], 1, args.seed, default_threads)
        nas_asc_trainer(copy.deepcopy(init), warm, 1, args.seed, dict(channels_last=True))
        for rep in range(args.repeats):
            for name, options in rows:
                model = copy.deepcopy(init)
                start = time.perf_counter()
                if options is None:
                    plain_loop(model, pairs, args.epochs, args.seed + rep, default_threads)
                else:
                    summaries[name] = nas_asc_trainer(
                        model, subset, args.epochs, args.seed + rep, options
                    )
                rates[name].append(samples / (time.perf_counter() - start))
                print(
                    f"  run {rep + 1} {name.strip()}: {rates[name][-1]:.0f} samples/s", flush=True
                )
    finally:
        for proc in loaders:
            proc.terminate()
            proc.join()
        torch.set_num_threads(default_threads)

    base = statistics.median(rates[rows[0][0]])
    print(
        f"\n{'row':34s} " + " ".join(f"{f'run {i + 1}':>7s}" for i in range(args.repeats)), end=""
    )
    print(f" {'median':>7s} {'vs plain':>8s}")
    for name, _ in rows:
        med = statistics.median(rates[name])
        runs = " ".join(f"{r:7.0f}" for r in rates[name])
        print(f"{name:34s} {runs} {med:7.0f} {med / base:7.2f}x")
    if not summaries.get("nas-asc trainer (defaults)"):
        print(
            "\nnote: nas_asc.train.loop.train does not call nas_asc.train.accel (yet), so the "
            "nas-asc rows differ only in noise"
        )
    else:
        summary = summaries["nas-asc trainer (defaults)"]
        print(
            f"\ntrainer settings (last run): threads per epoch {summary['threads']}, "
            f"channels_last={summary['channels_last']}, fused AdamW="
            f"{summary['fused_optimizer']}, compiled={summary['compiled']}"
        )
        for note in summary["notes"]:
            print(f"  {note}")
    ratio = statistics.median(rates["nas-asc trainer (defaults)"]) / base
    print(f"\nratio nas-asc trainer / plain eager loop (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
