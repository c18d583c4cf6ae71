"""Checks that a model family computes the function of its authors' public code.

Each family whose official implementation is public has a :class:`OfficialCheck`: where that code
lives (a GitHub repository and the files in it), the configurations to compare, how to build the
official model from a clone the user made, and how the official weights' names map onto ours.
Nothing of the official code is part of nas-asc: a check imports it at run time from the clone.

:func:`compare` builds the official model at one configuration, gives it random weights (and
random BatchNorm running statistics, so that eval mode is not an identity), copies those weights
into our model by the mapping (``strict`` loading: every tensor of ours must be set), runs both
in eval mode on the same random input and returns the largest absolute difference of the logits.

Run it against a clone::

    git clone https://github.com/yqcai888/DCASE2023 /tmp/DCASE2023
    python -m nas_asc.fidelity tfsepnet --official /tmp/DCASE2023
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas_asc.fidelity.base import (
    CHECKS,
    TOLERANCE,
    Comparison,
    OfficialCheck,
    OfficialModel,
    compare,
    import_file,
    randomize_,
    register_check,
    stand_in_modules,
)

__all__ = [
    "OfficialModel",
    "OfficialCheck",
    "CHECKS",
    "register_check",
    "Comparison",
    "compare",
    "randomize_",
    "import_file",
    "stand_in_modules",
    "load_checks",
    "main",
]


def load_checks() -> None:
    """Register every family's check (one module per family, in ``nas_asc.fidelity.checks``)."""
    from nas_asc.fidelity import checks  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    load_checks()
    parser = argparse.ArgumentParser(
        prog="python -m nas_asc.fidelity",
        description="Compare a family with its authors' code (a clone you made) on random weights.",
    )
    parser.add_argument("family", choices=CHECKS.names())
    parser.add_argument("--official", required=True, type=Path, help="folder of the clone")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check = CHECKS.get(args.family)()
    if not args.official.is_dir():
        print(
            f"error: --official {args.official} is not a folder; clone "
            f"https://github.com/{check.repo} there first",
            file=sys.stderr,
        )
        return 2
    worst = 0.0
    print(f"{check.family} against github.com/{check.repo} ({', '.join(check.files)})")
    width = max(len(name) for name in check.configs)
    for name in check.configs:
        try:
            result = compare(check, args.official, name, seed=args.seed)
        except (FileNotFoundError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        worst = max(worst, result.max_abs_diff)
        verdict = "same" if result.same else "DIFFERENT"
        print(
            f"  {name:<{width}}  max |ours - official| = {result.max_abs_diff:.2e}"
            f" (logits up to {result.logit_scale:.2f}): {verdict}"
        )
    return 0 if worst <= TOLERANCE else 1
