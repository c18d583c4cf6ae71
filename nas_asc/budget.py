"""Hardware budgets: parameter memory and MACs per inference.

The DCASE 2023 and 2024 Task 1 limits (also the Cortex-M4 class target nas-asc is built for):
at most 128,000 bytes of parameters, every parameter at its stored dtype (int8 = one byte), and
at most 30,000,000 multiply-accumulates for one 1-second clip, counted by
:func:`nas_asc.complexity.count`.

The DCASE 2025 limits are the same numbers per device model, counted the way the 2025 checker
counts them (``rule="dcase2025"``, preset ``dcase2025``): on the int8 network an inference package
ships (:mod:`nas_asc.export.dcase2025`), torchinfo's ``total_mult_adds`` for MACs and the bytes
of its ``parameters()`` at their stored dtype (int8 weights: 1, float32 biases and float layers:
4). :func:`nas_asc.complexity.count` applies either rule.

A budget may also limit the RAM the activations take (``--budget ram=64k``): the peak of int8
activation bytes alive at once, :func:`nas_asc.memory.peak_activation_bytes`. A Cortex-M4 part
has 64-256 kB of SRAM, which also holds the stack and the audio buffers. No DCASE rule limits it,
so no preset does.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace

from nas_asc._registry import split_items
from nas_asc.errors import BudgetError

__all__ = ["Budget", "PRESETS", "DEFAULT_BUDGET", "RULES", "parse_budget"]

#: Counting rules: ``dcase2024`` (NeSsi/torchinfo on the float model, every weight at the
#: deployed dtype) and ``dcase2025`` (the 2025 checker on the exported int8 network).
RULES = ("dcase2024", "dcase2025")


@dataclass(frozen=True)
class Budget:
    """A resource limit that a deployable candidate must satisfy."""

    name: str  # preset name, or "custom"
    max_param_bytes: int  # parameter memory limit, bytes at the stored dtype
    max_macs: int  # multiply-accumulates per inference (one clip)
    weight_dtype: str = "int8"  # dtype of deployed weights, for the parameter-bytes count
    max_activation_bytes: int | None = None  # peak int8 activation RAM; None: not limited
    rule: str = "dcase2024"  # how complexity is counted: one of RULES

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise BudgetError(f"budget rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.rule == "dcase2025" and self.weight_dtype != "int8":
            raise BudgetError(
                f"the dcase2025 rule counts the exported int8 network's parameters at the dtype "
                f"each is stored in, so dtype={self.weight_dtype} does not apply; leave out dtype="
            )
        if self.max_activation_bytes is not None and self.max_activation_bytes <= 0:
            raise BudgetError(
                f"budget RAM limit must be positive, got {self.max_activation_bytes}; e.g. "
                "--budget ram=64k"
            )
        if self.max_param_bytes <= 0 or self.max_macs <= 0:
            raise BudgetError(
                f"budget limits must be positive, got param bytes {self.max_param_bytes} and "
                f"MACs {self.max_macs}; e.g. --budget bytes=128k,macs=30M"
            )
        if self.weight_dtype not in ("int8", "float16", "float32"):
            raise BudgetError(
                f"budget weight dtype must be int8, float16 or float32, got {self.weight_dtype!r}"
            )

    @property
    def limits_ram(self) -> bool:
        """Whether the budget limits activation RAM (complexity must then count it)."""
        return self.max_activation_bytes is not None

    def constraints(self, complexity) -> dict[str, float]:
        """Relative excess per limit (``> 0`` means violated), in Optuna's constraint convention.

        ``peak_activation_bytes`` is a key only when the budget limits RAM; a network whose
        activations could not be counted (``None``) then violates it (by 1.0).
        """
        out = {
            "param_bytes": complexity.param_bytes / self.max_param_bytes - 1.0,
            "macs": complexity.macs / self.max_macs - 1.0,
        }
        if self.limits_ram:
            peak = complexity.peak_activation_bytes
            out["peak_activation_bytes"] = (
                1.0 if peak is None else peak / self.max_activation_bytes - 1.0
            )
        return out

    def violations(self, complexity) -> list[str]:
        """Human-readable list of exceeded limits (empty when within budget)."""
        out = []
        if complexity.param_bytes > self.max_param_bytes:
            out.append(f"{complexity.param_bytes:,} parameter bytes > {self.max_param_bytes:,}")
        if complexity.macs > self.max_macs:
            out.append(f"{complexity.macs:,} MACs > {self.max_macs:,}")
        if self.limits_ram:
            peak = complexity.peak_activation_bytes
            if peak is None:
                out.append("activation RAM unknown (the network could not be traced)")
            elif peak > self.max_activation_bytes:
                out.append(f"{peak:,} activation bytes at peak > {self.max_activation_bytes:,}")
        return out

    def fits(self, complexity) -> bool:
        return not self.violations(complexity)

    def to_dict(self) -> dict:
        """The budget as recorded in a study; the RAM limit only when set (studies recorded
        before it existed keep comparing equal)."""
        out = asdict(self)
        if out["max_activation_bytes"] is None:
            del out["max_activation_bytes"]
        if out["rule"] == "dcase2024":  # studies recorded before rules existed compare equal
            del out["rule"]
        return out

    def count(self, model, input_shape, activations: bool = False):
        """:func:`nas_asc.complexity.count` of ``model`` under this budget's rule and dtype."""
        from nas_asc.complexity import count

        return count(model, input_shape, self.weight_dtype, activations=activations, rule=self.rule)


_DCASE = Budget("dcase2024", max_param_bytes=128_000, max_macs=30_000_000)
PRESETS: dict[str, Budget] = {
    "dcase2024": _DCASE,
    "dcase2023": replace(_DCASE, name="dcase2023"),
    "cortex-m4": replace(_DCASE, name="cortex-m4"),
    "dcase2025": replace(_DCASE, name="dcase2025", rule="dcase2025"),
}
DEFAULT_BUDGET = _DCASE

_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "ki": 1024, "mi": 1024**2}
_KEYS = {
    "bytes": "max_param_bytes",
    "param_bytes": "max_param_bytes",
    "macs": "max_macs",
    "dtype": "weight_dtype",
    "ram": "max_activation_bytes",
    "activation_bytes": "max_activation_bytes",
}


_EXAMPLE = {"macs": "30M", "ram": "64k", "activation_bytes": "64k"}


def _number(key: str, text: str) -> int:
    # the sign is matched so that a negative limit is refused as such, not as "not a number"
    match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmg]?|[km]i)\s*", text.lower())
    if not match:
        raise BudgetError(
            f"budget {key}={text!r} is not a number; write e.g. {key}=30M, {key}=128k or "
            f"{key}=30000000"
        )
    scaled = float(match.group(1)) * _SUFFIX[match.group(2)]
    if not math.isfinite(scaled) or scaled >= 1e18:  # 1e999 is inf; no model counts 1e18
        raise BudgetError(
            f"budget {key}={text!r} is too large (limits are below 1e18); write e.g. "
            f"{key}={_EXAMPLE.get(key, '128k')}"
        )
    value = int(round(scaled))
    if value <= 0:
        raise BudgetError(
            f"budget {key}={text!r} is not a number above zero (limits must be positive); "
            f"write e.g. {key}={_EXAMPLE.get(key, '128k')}"
        )
    return value


def parse_budget(spec: str | None) -> Budget:
    """Parse ``--budget``: a preset name, ``key=value`` overrides, or both.

    Examples: ``dcase2024``, ``macs=10M,bytes=64k``, ``dcase2023,macs=20M``, ``dtype=float16``,
    ``dcase2024,ram=64Ki`` (also limit the peak activation RAM to 65,536 bytes). Suffixes: k, M,
    G are powers of 1,000 (the DCASE limits are 128,000 bytes and 30,000,000 MACs); Ki and Mi
    powers of 1,024 (SRAM sizes). Only ``None`` (no ``--budget``) means the default: an empty
    spec (``""``, ``","``) and a limit given twice (``bytes=64k,bytes=32k``, or as ``bytes`` and
    ``param_bytes``) are refused.
    """
    if spec is None:
        return DEFAULT_BUDGET
    # values carry unit suffixes (64k, 30M), not YAML: only the item splitting of parse_spec fits
    parts = split_items(spec)
    if not parts:  # "" or ",": a typo or an empty variable, not a request for the default
        raise BudgetError(
            f"budget {spec!r} is empty; name a preset ({', '.join(sorted(PRESETS))}) or limits "
            "such as bytes=128k,macs=30M, or leave out --budget for dcase2024"
        )
    budget, preset, overrides, given = DEFAULT_BUDGET, None, {}, {}
    for i, part in enumerate(parts):
        if "=" not in part:
            if i != 0:
                raise BudgetError(f"budget preset {part!r} must come first in {spec!r}")
            if part not in PRESETS:
                raise BudgetError(
                    f"unknown budget preset {part!r}; choose one of {sorted(PRESETS)} or give "
                    "limits as bytes=128k,macs=30M"
                )
            budget, preset = PRESETS[part], part
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in _KEYS:
            raise BudgetError(
                f"unknown budget key {key!r} in {spec!r}; use bytes, macs, ram or dtype"
            )
        field = _KEYS[key]
        if field in given:  # bytes=64k,bytes=32k: which one was meant is not for us to guess
            twice = (
                f"{key} is given twice"
                if given[field] == key
                else f"{given[field]} and {key} set the same limit"
            )
            raise BudgetError(f"budget {spec!r}: {twice}; give each limit once")
        given[field] = key
        overrides[field] = value if key == "dtype" else _number(key, value)
    if overrides:
        name = f"{preset}+custom" if preset else "custom"
        budget = replace(budget, name=name, **overrides)
    return budget
