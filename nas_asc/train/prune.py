"""L1-norm structured filter pruning, used as a search operator to fit a candidate into a budget.

The AI4EDGE report (shared/seeds/001, Sec. 5) prunes its over-budget student SM3 by removing whole
convolution filters with the smallest L1 norm ``||w||_1 = sum_i |w_i|`` (Li et al., "Pruning
filters for efficient ConvNets", ICLR 2017; the report's reference [16] is mis-cited) and then
fine-tunes; 20 of its filters go (28 -> 22, 22, 24, 24 in the four inner layers; the first and
last layers keep theirs). It does not say how filters of different layers are ranked against each
other nor in what steps they are removed. Choices made here:

* **Global ranking.** The report removes different numbers of filters from layers of equal width,
  so filters compete across layers. Raw L1 norms grow with a filter's fan-in, so the global ranking
  uses the L1 norm divided by the filter's weight count (its mean absolute weight); within a layer
  this is the plain L1 order. :func:`filter_l1_norms` reports the plain L1 norms of Eq. 1.
* **Greedy, one filter per step.** Each step removes the ``step`` (default 1) lowest-ranked filters
  and ranks again, so a layer whose input channels were removed is ranked on what remains (Li et
  al.'s greedy strategy). Pruning stops at the first step after which the model fits the budget.
  Complexity only falls as filters go, so that step is found by bisection over the precomputed
  greedy sequence: a handful of :func:`nas_asc.complexity.count` calls instead of one per step,
  with the same result as checking after every step.
* **A floor per layer.** No layer goes below ``min_filters`` (default 4) filters; a model that
  does not fit with every prunable layer at its floor is refused before anything is removed
  (:func:`min_complexity` lets a search reject such a candidate before training it).

Which filters a model may lose, and how its consumers shrink, is the model's business: it
implements :class:`Prunable`. The pruned model is a plain ``nn.Module`` with new, smaller
parameter tensors: it trains on (re-create the optimizer) and converts with
:func:`nas_asc.train.quantize.quantize_ptq`.

Example:
    >>> from nas_asc.budget import DEFAULT_BUDGET
    >>> from nas_asc.models import create_model
    >>> model = create_model("cnn", variant="sm3")  # 37 M MACs on the report's 1x140x8 input
    >>> result = prune_to_fit(model, DEFAULT_BUDGET.fits, (1, 140, 8))
    >>> result.after.macs <= 30_000_000
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from nas_asc.complexity import Complexity, count

__all__ = [
    "Prunable",
    "PruneResult",
    "filter_l1_norms",
    "min_complexity",
    "prune_to_fit",
    "DEFAULT_MIN_FILTERS",
]

DEFAULT_MIN_FILTERS = 4  # no prunable layer goes below this many filters by default


@runtime_checkable
class Prunable(Protocol):
    """A model whose convolution filters can be removed structurally.

    ``prunable_layers`` names the convolutions (``model.get_submodule(name)``, with a
    ``weight`` of shape ``(filters, ...)``) that may lose output filters. ``prune_filters``
    keeps only the filters ``keep`` of one of them, in place, and removes what they fed: the
    channels of the following normalization and the matching input channels of every consumer,
    so that the model keeps its forward, trains and quantizes.
    """

    def prunable_layers(self) -> list[str]: ...

    def prune_filters(self, layer: str, keep: torch.Tensor) -> None: ...


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune_to_fit` did to a model."""

    before: Complexity  # complexity of the model as given
    after: Complexity  # complexity of the pruned model
    filters_before: dict[str, int]  # filters per prunable layer before pruning
    kept: dict[str, tuple[int, ...]]  # per prunable layer, original indices of the kept filters
    steps: int  # pruning steps applied (each removes up to `step` filters)
    step: int  # filters removed per step
    evaluated: tuple[tuple[int, Complexity], ...]  # (steps, complexity) for each count made

    @property
    def filters_after(self) -> dict[str, int]:
        """Filters per prunable layer after pruning."""
        return {layer: len(kept) for layer, kept in self.kept.items()}

    @property
    def removed(self) -> dict[str, int]:
        """Filters removed per prunable layer."""
        return {layer: n - len(self.kept[layer]) for layer, n in self.filters_before.items()}

    @property
    def pruned(self) -> bool:
        """Whether any filter was removed."""
        return self.steps > 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (e.g. for Optuna user attributes)."""
        return {
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "filters_before": dict(self.filters_before),
            "filters_after": self.filters_after,
            "removed": self.removed,
            "steps": self.steps,
            "step": self.step,
            "counts": len(self.evaluated),
        }


def _require_prunable(model: nn.Module) -> None:
    if not isinstance(model, Prunable):
        raise TypeError(
            f"{type(model).__name__} does not support filter pruning: it needs the methods "
            "prunable_layers() and prune_filters(layer, keep) (see nas_asc.train.prune.Prunable)"
        )


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"pruning {name} must be an integer >= 1, got {value!r}")


def _weight(model: nn.Module, layer: str) -> torch.Tensor:
    return model.get_submodule(layer).weight.detach()


def filter_l1_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """L1 norm of every output filter of every prunable layer (report Eq. 1).

    Returns:
        ``{layer: norms}`` with ``norms[i] = sum(|weight[i]|)``, a float tensor per layer.
    """
    _require_prunable(model)
    return {
        layer: _weight(model, layer).abs().flatten(1).sum(dim=1)
        for layer in model.prunable_layers()
    }


def _filters(model: nn.Module) -> dict[str, int]:
    return {layer: _weight(model, layer).shape[0] for layer in model.prunable_layers()}


def _greedy_plan(model: nn.Module, step: int, min_filters: int) -> list[dict[str, list[int]]]:
    """The whole greedy pruning sequence down to the floors, on a copy of ``model``.

    Returns one entry per step: the original indices of the filters it removes, by layer.
    """
    work = copy.deepcopy(model)
    origin = {layer: list(range(n)) for layer, n in _filters(work).items()}
    plan: list[dict[str, list[int]]] = []
    while True:
        candidates: list[tuple[float, str, int]] = []
        for layer, norms in filter_l1_norms(work).items():
            n = len(norms)
            if n <= min_filters:
                continue
            fan_in = _weight(work, layer)[0].numel()
            scores = (norms / fan_in).tolist()
            # a layer offers only its lowest filters, as many as it may still lose
            ranked = sorted(range(n), key=lambda i: (scores[i], i))[: min(step, n - min_filters)]
            candidates += [(scores[i], layer, i) for i in ranked]
        if not candidates:
            return plan
        chosen: dict[str, list[int]] = {}
        for _, layer, i in sorted(candidates)[:step]:
            chosen.setdefault(layer, []).append(i)
        removed: dict[str, list[int]] = {}
        for layer, positions in chosen.items():
            drop = set(positions)
            keep = [i for i in range(len(origin[layer])) if i not in drop]
            work.prune_filters(layer, torch.tensor(keep, dtype=torch.long))
            removed[layer] = sorted(origin[layer][i] for i in positions)
            origin[layer] = [origin[layer][i] for i in keep]
        plan.append(removed)


def _kept_after(
    filters: dict[str, int], plan: Sequence[dict[str, list[int]]], steps: int
) -> dict[str, tuple[int, ...]]:
    gone: dict[str, set[int]] = {layer: set() for layer in filters}
    for removed in plan[:steps]:
        for layer, indices in removed.items():
            gone[layer].update(indices)
    return {layer: tuple(sorted(set(range(n)) - gone[layer])) for layer, n in filters.items()}


def _apply(model: nn.Module, kept: dict[str, tuple[int, ...]], filters: dict[str, int]) -> None:
    for layer, indices in kept.items():
        if len(indices) < filters[layer]:
            model.prune_filters(layer, torch.tensor(indices, dtype=torch.long))


def _at_floor(model: nn.Module, min_filters: int) -> nn.Module:
    """A copy of ``model`` with every prunable layer cut to its ``min_filters`` strongest."""
    floor = copy.deepcopy(model)
    for layer, norms in filter_l1_norms(floor).items():
        if len(norms) > min_filters:
            keep = torch.sort(torch.topk(norms, min_filters).indices).values
            floor.prune_filters(layer, keep)
    return floor


def min_complexity(
    model: nn.Module,
    input_shape: str | Sequence[int],
    weight_dtype: str = "int8",
    min_filters: int = DEFAULT_MIN_FILTERS,
    activations: bool = False,
    rule: str = "dcase2024",
) -> Complexity:
    """Complexity of ``model`` with every prunable layer pruned to ``min_filters`` filters.

    The least that :func:`prune_to_fit` can reach: a search can reject a candidate for which
    ``fits(min_complexity(...))`` is false before training it. ``model`` is not changed.
    ``activations``: also count the peak activation RAM (for a budget that limits it);
    ``rule``: the counting rule (:func:`nas_asc.complexity.count`).
    """
    _require_prunable(model)
    _check_int("min_filters", min_filters)
    floor = _at_floor(model, min_filters)
    return count(floor, input_shape, weight_dtype, activations=activations, rule=rule)


def prune_to_fit(
    model: nn.Module,
    fits: Callable[[Complexity], bool],
    input_shape: str | Sequence[int],
    weight_dtype: str = "int8",
    step: int = 1,
    min_filters: int = DEFAULT_MIN_FILTERS,
    activations: bool = False,
    rule: str = "dcase2024",
) -> PruneResult:
    """Remove lowest-L1 filters from ``model``, in place, until its complexity fits.

    Args:
        model: a :class:`Prunable` model, usually trained (the ranking uses its weights).
        fits: budget test, e.g. ``Budget.fits``; called with a :class:`Complexity`.
        input_shape: the input the model sees, as for :func:`nas_asc.complexity.count`.
        weight_dtype: deployed weight dtype for the parameter-bytes count.
        step: filters removed per step (globally lowest-ranked first, re-ranked each step).
        min_filters: no prunable layer is cut below this many filters.
        activations: also count the peak activation RAM of every probe (for a ``fits`` that
            tests it).
        rule: the counting rule (:func:`nas_asc.complexity.count`).

    Returns:
        A :class:`PruneResult`; ``model`` is left unchanged if it already fits.

    Raises:
        TypeError: if ``model`` is not :class:`Prunable`.
        ValueError: if even with every prunable layer at ``min_filters`` the model does not fit
            (``model`` is then left unchanged), or for a bad ``step``/``min_filters``.
    """
    _require_prunable(model)
    _check_int("step", step)
    _check_int("min_filters", min_filters)
    filters = _filters(model)
    before = count(model, input_shape, weight_dtype, activations=activations, rule=rule)
    evaluated = [(0, before)]
    if fits(before):
        kept = {layer: tuple(range(n)) for layer, n in filters.items()}
        return PruneResult(before, before, filters, kept, 0, step, tuple(evaluated))

    plan = _greedy_plan(model, step, min_filters)

    def probe(steps: int) -> Complexity:
        trial = copy.deepcopy(model)
        _apply(trial, _kept_after(filters, plan, steps), filters)
        c = count(trial, input_shape, weight_dtype, activations=activations, rule=rule)
        evaluated.append((steps, c))
        return c

    floor = probe(len(plan))
    if not fits(floor):
        raise ValueError(
            f"cannot prune {type(model).__name__} into the budget: with every prunable layer at "
            f"min_filters={min_filters} it still has {floor.param_bytes:,} parameter bytes and "
            f"{floor.macs:,} MACs on input {floor.input_shape}; choose a smaller candidate or "
            "lower min_filters"
        )
    # smallest number of steps that fits: fits(lo) is false, fits(hi) is true
    lo, hi, best = 0, len(plan), floor
    while hi - lo > 1:
        mid = (lo + hi) // 2
        c = probe(mid)
        if fits(c):
            hi, best = mid, c
        else:
            lo = mid
    kept = _kept_after(filters, plan, hi)
    _apply(model, kept, filters)
    return PruneResult(before, best, filters, kept, hi, step, tuple(evaluated))
