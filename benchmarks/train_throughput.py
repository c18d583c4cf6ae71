"""Issue 5 evidence: training samples/s of the nas-asc trainer vs a plain eager PyTorch loop.

Both train fresh copies of one model (same initial weights) on the same clips of the embedded
synthetic dataset's log-mel features (``nas_asc.data.synth.default_dataset``, 64 Mel bins), for
the same number of epochs at batch 64 with AdamW and cross-entropy:

* **plain eager loop**: what a typical user writes: a ``torch.utils.data.DataLoader`` over a
  list of per-sample ``(x_i, y_i)`` tensors, ``shuffle=True``, torch's default thread count;
* **nas-asc trainer**: ``nas_asc.train.loop.train`` with its speed settings
  (:mod:`nas_asc.train.accel`) at their defaults, as a search trial runs it, with Freq-MixStyle
  and knowledge distillation off so that both do the same work.

Rows between the two add one setting at a time: in-memory batches alone (torch's default
threads, unfused AdamW), then fused AdamW, then the defaults (each trial its share of the cores).
Opt-in rows follow: channels-last chosen by timing, load-adaptive threads, ``torch.compile``.

``--parallel N`` runs every row as N trainings at once in N processes, as ``nas-asc search
--workers N`` runs trials, and reports their combined samples/s; the plain loop then runs each
copy at torch's default thread count, as N scripts started side by side would. Rows run
interleaved (every row once, then again, ...) so that other processes on the machine disturb
them alike; the table gives samples/s per repeat, the median and its ratio to the plain loop's
median. Run from the repository root::

    python benchmarks/train_throughput.py                    # tfsepnet C=40, one trial at a time
    python benchmarks/train_throughput.py --parallel 2       # two trials at once
    python benchmarks/train_throughput.py --model cpmobile --repeats 5
    python benchmarks/train_throughput.py --compile          # + torch.compile (minutes)
    python benchmarks/train_throughput.py --device cuda --concurrency 1,2,4,8

``--device cuda`` runs both on the GPU: the plain loop moves each CPU batch to the GPU (its
default settings), the trainer holds the features there and draws and augments batches there
(:func:`nas_asc.train.loop.train`), and an opt-in row adds bf16 autocast (``train.amp``).
``--concurrency 1,2,4,8`` then also runs that many trainer processes at once on the one device
and prints trials per hour, and its ratio to one trial at a time: the tiny models of this task
do not fill a GPU alone.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import torch
import torch.nn.functional as F
import yaml

from nas_asc.data.features import FrontEnd, load_features
from nas_asc.data.synth import default_dataset
from nas_asc.data.tau22 import load_tau22
from nas_asc.models import create_model
from nas_asc.train import accel
from nas_asc.train.loop import TrainConfig, train

BATCH = 64
LR = 1e-2
WEIGHT_DECAY = 1e-4
FRONTEND = FrontEnd(n_mels=64)


def _training_set(clips: int):
    train_set, _ = load_features(
        load_tau22(default_dataset(progress=False)), FRONTEND, progress=False
    )
    return train_set.subset(torch.arange(min(clips, len(train_set))))


def plain_loop(model, pairs, epochs: int, seed: int, device: str = "cpu") -> None:
    """The baseline: DataLoader over per-sample CPU tensors (each batch moved to ``device``),
    AdamW, cross-entropy, eager."""
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            if len(y) < 2:  # as the trainer: BatchNorm needs two samples
                continue
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def nas_asc_trainer(model, train_set, epochs: int, seed: int, options: dict) -> dict:
    """``nas_asc.train.loop.train`` under ``options`` (``amp`` goes to the recipe); returns the
    accel session's summary."""
    options = dict(options)
    amp = options.pop("amp", "off")
    recipe = TrainConfig(
        amp=amp,
        epochs=epochs,
        batch_size=BATCH,
        lr=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_epochs=0,
        mixstyle_p=0.0,
        kd_lambda=0.0,
    )
    runtime = accel.AccelOptions(**options)
    return train(model, train_set, recipe, teacher_logits=None, seed=seed, runtime=runtime).accel


def _one(job: dict) -> tuple[float, dict]:
    """Run one row's training in this process; returns (seconds, trainer summary)."""
    torch.set_num_threads(job["default_threads"])
    train_set = job["train_set"]
    model = create_model(job["model"], **job["model_cfg"])
    model.load_state_dict(job["init"])
    device = job["device"]
    if job["options"] is None:
        pairs = [(train_set.x[i].clone(), train_set.y[i].clone()) for i in range(len(train_set))]
        model.to(device)
        start = time.perf_counter()
        plain_loop(model, pairs, job["epochs"], job["seed"], device)
        _sync(device)
        return time.perf_counter() - start, {}
    accel.configure_threads(parallel_trials=job["parallel"])
    start = time.perf_counter()
    options = dict(job["options"], device=device)
    summary = nas_asc_trainer(model, train_set, job["epochs"], job["seed"], options)
    _sync(device)  # (train() ends by moving the networks to the CPU, which waits anyway)
    return time.perf_counter() - start, summary


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


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
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="only the plain loop and the trainer"
    )
    parser.add_argument(
        "--compile", action="store_true", help="add a torch.compile row (minutes of compiling)"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu (default) or cuda[:N]: where both loops train"
    )
    parser.add_argument(
        "--concurrency",
        default="",
        metavar="N,M,...",
        help="also run N trainer processes at once on the device and print trials per hour "
        "(e.g. 1,2,4,8)",
    )
    args = parser.parse_args(argv)
    from nas_asc.device import resolve_device

    args.device = str(resolve_device(args.device))
    try:
        levels = [int(v) for v in args.concurrency.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--concurrency takes counts like 1,2,4,8, got {args.concurrency!r}")
    if any(n < 1 for n in levels):
        parser.error(f"--concurrency counts must be >= 1, got {args.concurrency!r}")
    for name in ("epochs", "clips", "repeats", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    default_threads = torch.get_num_threads()  # torch's choice, before anything changes it
    train_set = _training_set(args.clips)
    model_cfg = _parse_set(args.set)
    if args.model == "tfsepnet" and not model_cfg:
        model_cfg = {"width": 40}
    torch.manual_seed(args.seed)
    init = create_model(args.model, **model_cfg).state_dict()

    # in-memory batches only: torch's default threads in every process, unfused AdamW
    bare = dict(threads=default_threads, fused_optimizer=False)
    rows: list[tuple[str, dict | None]] = [("plain eager loop (DataLoader)", None)]
    if not args.no_breakdown:
        rows += [
            ("nas-asc: in-memory batches only", bare),
            (" + fused AdamW", dict(bare, fused_optimizer=True)),
        ]
    rows.append(("nas-asc trainer (defaults)", {}))
    if not args.no_breakdown:
        rows += [
            ("opt-in: + channels-last by timing", dict(channels_last=None)),
            ("opt-in: + load-adaptive threads", dict(adapt_threads=True)),
        ]
    if args.compile:
        rows.append(("opt-in: + torch.compile", dict(compile="on")))
    if args.device.startswith("cuda"):
        rows.append(("opt-in: + bf16 autocast (train.amp)", dict(amp="bf16")))

    samples = len(train_set) * args.epochs * args.parallel
    print(
        f"train_throughput: {args.model} {model_cfg}, {len(train_set)} clips x {args.epochs} "
        f"epoch(s), batch {BATCH}, {args.parallel} training(s) at once, {args.repeats} repeats, "
        f"{accel.cpu_cores()} cores (torch default threads {default_threads}), device "
        f"{_device_name(args.device)}; torch {torch.__version__}",
        flush=True,
    )
    spawn = multiprocessing.get_context("spawn")
    rates: dict[str, list[float]] = {name: [] for name, _ in rows}
    summaries: dict[str, dict] = {}
    with spawn.Pool(max([args.parallel, *levels])) as pool:

        def run(
            options, epochs, clips_set, seed, parallel=args.parallel
        ) -> tuple[float, list[dict]]:
            job = dict(
                model=args.model,
                model_cfg=model_cfg,
                init=init,
                train_set=clips_set,
                epochs=epochs,
                seed=seed,
                options=options,
                parallel=parallel,
                default_threads=default_threads,
                device=args.device,
            )
            start = time.perf_counter()
            out = pool.map(_one, [dict(job, seed=seed + k) for k in range(parallel)])
            return time.perf_counter() - start, [summary for _, summary in out]

        # untimed: the first steps of a process build oneDNN's kernels for these shapes
        warm = train_set.subset(torch.arange(min(2 * BATCH, len(train_set))))
        for _, options in rows:
            run(options, 1, warm, args.seed)
        for rep in range(args.repeats):
            for name, options in rows:
                seconds, out = run(options, args.epochs, train_set, args.seed + rep)
                rates[name].append(samples / seconds)
                if out and out[0]:
                    summaries[name] = out[0]
                print(
                    f"  run {rep + 1} {name.strip()}: {rates[name][-1]:.0f} samples/s", flush=True
                )
        per_hour = _concurrency(run, levels, train_set, args)

    base = statistics.median(rates[rows[0][0]])
    heads = " ".join(f"{f'run {i + 1}':>7s}" for i in range(args.repeats))
    print(f"\n{'row':36s} {heads} {'median':>7s} {'vs plain':>8s}")
    for name, _ in rows:
        med = statistics.median(rates[name])
        runs = " ".join(f"{r:7.0f}" for r in rates[name])
        print(f"{name:36s} {runs} {med:7.0f} {med / base:7.2f}x")
    summary = summaries.get("nas-asc trainer (defaults)", {})
    if summary:
        print(
            f"\ntrainer defaults (last run, one process): threads per epoch "
            f"{summary['threads']}, channels_last={summary['channels_last']}, fused AdamW="
            f"{summary['fused_optimizer']}, compiled={summary['compiled']}"
        )
    ratio = statistics.median(rates["nas-asc trainer (defaults)"]) / base
    print(f"\nratio nas-asc trainer / plain eager loop (medians): {ratio:.2f}x")
    if per_hour:
        one = statistics.median(per_hour[levels[0]])
        print(
            f"\nconcurrent trials on {_device_name(args.device)} (trainer defaults, "
            f"{len(train_set)} clips x {args.epochs} epoch(s) per trial)"
        )
        print(f"{'trials at once':>14s} {'trials/hour (median)':>21s} {f'vs {levels[0]}':>8s}")
        for n in levels:
            med = statistics.median(per_hour[n])
            print(f"{n:14d} {med:21.1f} {med / one:7.2f}x")


def _concurrency(run, levels: list[int], train_set, args) -> dict[int, list[float]]:
    """Trials per hour with ``n`` trainer processes at once, for each ``n`` of ``levels``
    (interleaved over the repeats, as the rows above)."""
    per_hour: dict[int, list[float]] = {n: [] for n in levels}
    for rep in range(args.repeats if levels else 0):
        for n in levels:
            seconds, _ = run({}, args.epochs, train_set, args.seed + rep, parallel=n)
            per_hour[n].append(n * 3600.0 / seconds)
            print(f"  run {rep + 1} {n} at once: {per_hour[n][-1]:.1f} trials/hour", flush=True)
    return per_hour


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


if __name__ == "__main__":
    main()
