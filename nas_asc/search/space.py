"""Search spaces as data: a YAML file becomes a validated ``SearchSpace`` that samples configs.

A space names a registered model family, the values every trial uses (``fixed``) and the
dimensions the sampler varies (``dimensions``), each keyed ``"section.field"`` where ``section`` is
one of ``model``, ``frontend`` or ``train`` and ``field`` is a field of that section's config
dataclass (the model family's config, ``FrontEnd`` or ``TrainConfig``). The dotted key is also the
Optuna parameter name. Example (``search_spaces/tfsepnet.yaml``)::

    name: tfsepnet
    description: TF-SepNet width, block and training knobs
    model: tfsepnet
    fixed:
      model: {norm: adaresnorm}
      train: {batch_size: 64}
    dimensions:
      model.width: {type: int, low: 8, high: 64, step: 4}
      frontend.n_mels: {type: categorical, choices: [64, 128]}
      train.lr: {type: float, low: 1.0e-3, high: 2.0e-2, log: true}

Every problem in a space raises ``SpaceError`` with one line naming the file, the dimension (or
key), the bad value and the fix.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from nas_asc.errors import SpaceError

__all__ = [
    "SECTIONS",
    "Dimension",
    "SearchSpace",
    "list_spaces",
    "load_space",
    "resolve_space",
    "space_dirs",
]

SECTIONS = ("model", "frontend", "train")
KINDS = ("int", "float", "categorical")

_TOP_KEYS = ("name", "description", "model", "fixed", "dimensions")
_REQUIRED_TOP_KEYS = ("name", "model", "dimensions")
_NUMERIC_KEYS = ("low", "high", "step", "log")
_SPEC_KEYS = ("type", "low", "high", "step", "log", "choices")
_YAML_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(source: str, where: str, problem: str, fix: str) -> SpaceError:
    """Build a one-line ``SpaceError``: ``<file>: <where>: <problem>; fix: <fix>``."""
    return SpaceError(_one_line(f"{source}: {where}: {problem}; fix: {fix}"))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _type_label(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first defined on line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# --------------------------------------------------------------------------------------------
# Dataclass field types
# --------------------------------------------------------------------------------------------

_SCALAR_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}


def _section_fields(section: str, model: str) -> dict[str, dataclasses.Field]:
    """Return the fields of the config dataclass behind ``section``, by name."""
    if section == "model":
        from nas_asc.models import get_model_config

        cls = get_model_config(model)
    elif section == "frontend":
        from nas_asc.data.features import FrontEnd

        cls = FrontEnd
    else:
        from nas_asc.train.loop import TrainConfig

        cls = TrainConfig
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_types(field: dataclasses.Field) -> frozenset[type]:
    """Types a value of ``field`` may have, from its annotation or else its default.

    Simple annotations such as ``int``, ``str`` or ``float | None`` are read directly (they are
    strings under ``from __future__ import annotations``); for anything else the type of the
    default decides. An empty set means "unknown": any value is accepted.
    """
    annotation = field.type
    if isinstance(annotation, str):
        parts = [part.strip() for part in annotation.split("|")]
        if all(part in _SCALAR_NAMES for part in parts):
            return frozenset(_SCALAR_NAMES[part] for part in parts)
    elif isinstance(annotation, type) and annotation in _SCALAR_NAMES.values():
        return frozenset({annotation})
    default = field.default
    if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    if default is dataclasses.MISSING or default is None:
        return frozenset()
    if isinstance(default, (list, tuple)):
        return frozenset({list, tuple})
    return frozenset({type(default)})


def _describe_types(types: frozenset[type]) -> str:
    names = {int: "int", float: "float", str: "str", bool: "bool", type(None): "null"}
    names.update({list: "list", tuple: "list"})
    return " or ".join(sorted({names.get(t, t.__name__) for t in types}))


def _compatible(value: Any, types: frozenset[type]) -> bool:
    """Whether ``value`` suits a field of ``types`` (int suits float; bool suits no number)."""
    if not types:
        return True
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    if isinstance(value, float):
        return float in types
    if value is None:
        return type(None) in types
    if isinstance(value, (list, tuple)):
        return list in types or tuple in types
    return type(value) in types


# --------------------------------------------------------------------------------------------
# Dimension
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched config field and its distribution.

    Attributes:
        section: Config section, one of ``SECTIONS``.
        field: Field of that section's config dataclass.
        kind: ``"int"``, ``"float"`` or ``"categorical"``.
        low: Smallest value (int and float dimensions).
        high: Largest value, inclusive (int and float dimensions).
        step: Spacing between values, or ``None`` (int dimensions then use 1; float ones are
            continuous).
        log: Sample uniformly in log space (int and float dimensions).
        choices: The values of a categorical dimension, in file order.
    """

    section: str
    field: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple | None = None

    @property
    def name(self) -> str:
        """The dotted ``"section.field"`` name, also used as the Optuna parameter name."""
        return f"{self.section}.{self.field}"

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        """Ask ``trial`` for a value of this dimension.

        Args:
            trial: An Optuna trial (``Trial``, ``FixedTrial`` or ``FrozenTrial``).

        Returns:
            The suggested value.
        """
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        if self.kind == "float":
            return trial.suggest_float(
                self.name, float(self.low), float(self.high), step=self.step, log=self.log
            )
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution that ``suggest`` samples from."""
        if self.kind == "int":
            return optuna.distributions.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        if self.kind == "float":
            return optuna.distributions.FloatDistribution(
                float(self.low), float(self.high), log=self.log, step=self.step
            )
        return optuna.distributions.CategoricalDistribution(self.choices)

    def bounds(self) -> tuple[Any, Any]:
        """The (smallest, largest) value: ``(low, high)``, or the first and last choice."""
        if self.kind == "categorical":
            return self.choices[0], self.choices[-1]
        if self.kind == "int":
            return int(self.low), int(self.high)
        return float(self.low), float(self.high)

    def to_spec(self) -> dict[str, Any]:
        """The YAML mapping of this dimension (inverse of the parsing in ``from_dict``)."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.step is not None:
            spec["step"] = self.step
        if self.log:
            spec["log"] = True
        return spec


def _parse_dimension(
    source: str, key: Any, spec: Any, model: str, fields_by_section: dict[str, dict]
) -> Dimension:
    where = f"dimension {key!r}"
    if not isinstance(key, str) or key.count(".") != 1 or "" in key.split("."):
        raise _fail(
            source,
            where,
            "a dimension key must be 'section.field'",
            f"name it like 'model.width' with section one of {list(SECTIONS)}",
        )
    section, field_name = key.split(".")
    if section not in SECTIONS:
        raise _fail(
            source,
            where,
            f"unknown section {section!r}",
            f"use one of {list(SECTIONS)}",
        )
    fields = fields_by_section[section]
    if field_name not in fields:
        raise _fail(
            source,
            where,
            f"unknown field {field_name!r} for section {section!r} (model {model!r})",
            f"use one of {sorted(fields)}",
        )
    if not isinstance(spec, Mapping):
        raise _fail(
            source,
            where,
            f"the spec must be a mapping, got {_type_label(spec)} {spec!r}",
            "write e.g. {type: int, low: 8, high: 64} or {type: categorical, choices: [a, b]}",
        )
    unknown = [k for k in spec if k not in _SPEC_KEYS]
    if unknown:
        raise _fail(
            source,
            where,
            f"unknown key(s) {unknown} in the spec",
            f"use only {list(_SPEC_KEYS)}",
        )
    kind = spec.get("type")
    if kind not in KINDS:
        raise _fail(
            source,
            where,
            f"type {kind!r} is not supported" if "type" in spec else "missing 'type'",
            f"set type to one of {list(KINDS)}",
        )
    types = _field_types(fields[field_name])
    if kind == "categorical":
        return _parse_categorical(source, where, section, field_name, spec, types)
    return _parse_numeric(source, where, section, field_name, kind, spec, types)


def _parse_categorical(
    source: str,
    where: str,
    section: str,
    field_name: str,
    spec: Mapping,
    types: frozenset[type],
) -> Dimension:
    extra = [k for k in _NUMERIC_KEYS if k in spec]
    if extra:
        raise _fail(
            source,
            where,
            f"key(s) {extra} do not apply to a categorical dimension",
            "remove them, or use type int/float for a numeric range",
        )
    if "choices" not in spec:
        raise _fail(
            source, where, "categorical dimension without 'choices'", "add choices: [a, b, ...]"
        )
    choices = spec["choices"]
    if not isinstance(choices, (list, tuple)):
        raise _fail(
            source,
            where,
            f"choices must be a list, got {_type_label(choices)} {choices!r}",
            "write choices as a YAML list, e.g. choices: [64, 128]",
        )
    if not choices:
        raise _fail(source, where, "choices is empty", "list at least one value")
    for choice in choices:
        if not _is_scalar(choice):
            raise _fail(
                source,
                where,
                f"choice {choice!r} is a {_type_label(choice)}, not a scalar",
                "use only numbers, strings, booleans or null as choices",
            )
        if not _compatible(choice, types):
            raise _fail(
                source,
                where,
                f"choice {choice!r} ({_type_label(choice)}) does not suit field "
                f"{field_name!r} of type {_describe_types(types)}",
                f"use {_describe_types(types)} values",
            )
    seen: list[Any] = []
    for choice in choices:
        # Compare by type and value so that 1, 1.0 and true count as distinct but repeats don't.
        if any(type(choice) is type(prev) and choice == prev for prev in seen):
            raise _fail(source, where, f"choice {choice!r} is listed twice", "remove the duplicate")
        seen.append(choice)
    return Dimension(section, field_name, "categorical", choices=tuple(choices))


def _parse_numeric(
    source: str,
    where: str,
    section: str,
    field_name: str,
    kind: str,
    spec: Mapping,
    types: frozenset[type],
) -> Dimension:
    if "choices" in spec:
        raise _fail(
            source,
            where,
            f"'choices' does not apply to a {kind} dimension",
            "remove it, or use type categorical",
        )
    if kind == "float" and types and float not in types:
        raise _fail(
            source,
            where,
            f"type float does not suit field {field_name!r} of type {_describe_types(types)}",
            "use type int or categorical" if int in types else "use type categorical",
        )
    if kind == "int" and types and int not in types and float not in types:
        raise _fail(
            source,
            where,
            f"type int does not suit field {field_name!r} of type {_describe_types(types)}",
            "use type categorical",
        )
    values: dict[str, Any] = {}
    for bound in ("low", "high"):
        if bound not in spec:
            raise _fail(
                source, where, f"missing {bound!r}", f"add {bound}: <number> to the {kind} spec"
            )
    for bound in ("low", "high", "step"):
        if bound not in spec or (bound == "step" and spec[bound] is None):
            continue
        value = spec[bound]
        if not _is_number(value):
            hint = ""
            if isinstance(value, str):
                try:
                    number = float(value)
                except ValueError:
                    number = math.nan
                if math.isfinite(number):
                    hint = f" (YAML reads {value} as text; write {number!r})"
            raise _fail(
                source,
                where,
                f"{bound} {value!r} is not a number{hint}",
                f"give {bound} as a number",
            )
        if not math.isfinite(value):
            raise _fail(source, where, f"{bound} {value!r} is not finite", "use a finite number")
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise _fail(
                    source,
                    where,
                    f"{bound} {value!r} is not an integer in an int dimension",
                    f"use a whole number for {bound}, or type float",
                )
            value = int(value)
        else:
            value = float(value)
        values[bound] = value
    low, high, step = values["low"], values["high"], values.get("step")
    if low > high:
        raise _fail(source, where, f"low {low!r} > high {high!r}", "swap them so that low <= high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise _fail(source, where, f"log {log!r} is not a boolean", "write log: true or log: false")
    if step is not None:
        if step <= 0:
            raise _fail(source, where, f"step {step!r} <= 0", "use a positive step")
        if log:
            raise _fail(
                source,
                where,
                f"log sampling together with step {step!r}",
                "remove step or remove log: true",
            )
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9 * max(1.0, abs(n_steps)):
            raise _fail(
                source,
                where,
                f"high - low = {high - low!r} is not a multiple of step {step!r}",
                f"set high to {low + math.floor(n_steps) * step!r} or change step",
            )
    if log and low <= 0:
        raise _fail(
            source, where, f"log sampling with low {low!r} <= 0", "use low > 0 or remove log"
        )
    return Dimension(section, field_name, kind, low=low, high=high, step=step, log=log)


def _parse_fixed(
    source: str, fixed: Any, fields_by_section: dict[str, dict]
) -> dict[str, dict[str, Any]]:
    if fixed is None:
        fixed = {}
    if not isinstance(fixed, Mapping):
        raise _fail(
            source,
            "key 'fixed'",
            f"must be a mapping of section -> field -> value, got {_type_label(fixed)} {fixed!r}",
            "write e.g. fixed: {train: {batch_size: 64}}",
        )
    result: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for section, values in fixed.items():
        where = f"fixed section {section!r}"
        if section not in SECTIONS:
            raise _fail(source, where, "unknown section", f"use one of {list(SECTIONS)}")
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise _fail(
                source,
                where,
                f"must be a mapping of field -> value, got {_type_label(values)} {values!r}",
                f"write e.g. fixed: {{{section}: {{field: value}}}}",
            )
        fields = fields_by_section[section]
        for field_name, value in values.items():
            where = f"fixed '{section}.{field_name}'"
            if field_name not in fields:
                raise _fail(
                    source,
                    where,
                    f"unknown field {field_name!r} for section {section!r}",
                    f"use one of {sorted(fields)}",
                )
            types = _field_types(fields[field_name])
            if not _compatible(value, types):
                raise _fail(
                    source,
                    where,
                    f"value {value!r} ({_type_label(value)}) does not suit a field of type "
                    f"{_describe_types(types)}",
                    f"give a value of type {_describe_types(types)}",
                )
            if isinstance(value, list):
                value = tuple(value)
            result[section][field_name] = value
    return result


# --------------------------------------------------------------------------------------------
# SearchSpace
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Build one with ``from_yaml`` / ``load_space`` (or ``from_dict``), never directly: the
    constructor does not validate. ``fixed`` is shared, so treat it as read-only; ``sample`` and
    ``corner`` return fresh dictionaries.

    Attributes:
        name: Short name of the space.
        description: Free text (source of the design, what is varied).
        model: Registered model family.
        dimensions: Searched fields, in file order.
        fixed: Section -> field -> value used by every trial (all ``SECTIONS`` present).
        source: The YAML path the space came from, or ``"<dict>"``.
    """

    name: str
    description: str
    model: str
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Mapping[str, Any]]
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "<dict>") -> SearchSpace:
        """Validate a parsed space and build it.

        Args:
            data: The mapping read from YAML (keys name, description, model, fixed, dimensions).
            source: Where ``data`` came from, for error messages.

        Returns:
            The search space.

        Raises:
            SpaceError: For any malformed or unknown key, value or dimension.
        """
        source = str(source)
        if not isinstance(data, Mapping):
            raise _fail(
                source,
                "top level",
                f"must be a mapping, got {_type_label(data)}",
                f"write the keys {list(_TOP_KEYS)} at the top level",
            )
        unknown = [k for k in data if k not in _TOP_KEYS]
        if unknown:
            raise _fail(
                source, "top level", f"unknown key(s) {unknown}", f"use only {list(_TOP_KEYS)}"
            )
        missing = [k for k in _REQUIRED_TOP_KEYS if k not in data]
        if missing:
            raise _fail(
                source,
                "top level",
                f"missing key(s) {missing}",
                f"add them; required keys are {list(_REQUIRED_TOP_KEYS)}",
            )
        name = data["name"]
        if not isinstance(name, str) or not name.strip():
            raise _fail(
                source, "key 'name'", f"{name!r} is not a non-empty string", "give the space a name"
            )
        description = data.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise _fail(
                source,
                "key 'description'",
                f"{description!r} is not a string",
                "write the description as text (quote it if needed)",
            )
        model = data["model"]
        from nas_asc.models import list_models

        known_models = list_models()
        if not isinstance(model, str) or model not in known_models:
            raise _fail(
                source,
                "key 'model'",
                f"unknown model family {model!r}",
                f"use one of {known_models}",
            )
        fields_by_section = {section: _section_fields(section, model) for section in SECTIONS}
        fixed = _parse_fixed(source, data.get("fixed"), fields_by_section)

        raw_dims = data["dimensions"]
        if raw_dims is None or (isinstance(raw_dims, Mapping) and not raw_dims):
            raise _fail(
                source,
                "key 'dimensions'",
                "no dimensions to search",
                "add at least one, e.g. model.width: {type: int, low: 8, high: 64}",
            )
        if not isinstance(raw_dims, Mapping):
            raise _fail(
                source,
                "key 'dimensions'",
                f"must be a mapping of 'section.field' -> spec, got {_type_label(raw_dims)}",
                "write e.g. dimensions: {model.width: {type: int, low: 8, high: 64}}",
            )
        dimensions = tuple(
            _parse_dimension(source, key, spec, model, fields_by_section)
            for key, spec in raw_dims.items()
        )
        for dim in dimensions:
            if dim.field in fixed[dim.section]:
                raise _fail(
                    source,
                    f"dimension {dim.name!r}",
                    f"the field is both fixed (to {fixed[dim.section][dim.field]!r}) and searched",
                    f"remove it from fixed.{dim.section} or from dimensions",
                )
        return cls(
            name=name,
            description=description.strip(),
            model=model,
            dimensions=dimensions,
            fixed=fixed,
            source=source,
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read and validate a space from a YAML file.

        Args:
            path: The YAML file.

        Returns:
            The search space, with ``source`` set to ``path``.

        Raises:
            SpaceError: If the file cannot be read, is not valid YAML or is not a valid space.
        """
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _fail(
                source, "file", "not found", "check the path, or pass a space name"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(source, "file", f"cannot be read ({exc})", "check the file") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            detail = f"{context}: {problem}" if context else problem
            fix = "fix the YAML syntax at that line (indentation, colons, brackets, quotes)"
            if "duplicate key" in detail:
                fix = "keep only one of the two entries"
            raise _fail(source, line, f"not valid YAML ({detail})", fix) from None
        return cls.from_dict(data, source=source)

    def sample(self, trial: optuna.trial.BaseTrial) -> dict[str, dict[str, Any]]:
        """Suggest every dimension (in file order) and merge the values over ``fixed``.

        Args:
            trial: The Optuna trial to ask.

        Returns:
            ``{"model": {...}, "frontend": {...}, "train": {...}}``.
        """
        config = self._fixed_copy()
        for dim in self.dimensions:
            config[dim.section][dim.field] = dim.suggest(trial)
        return config

    def corner(self, which: str) -> dict[str, dict[str, Any]]:
        """The config with every dimension at its smallest or largest bound.

        Args:
            which: ``"low"`` or ``"high"``.

        Returns:
            The config, shaped like ``sample``'s.

        Raises:
            ValueError: If ``which`` is neither ``"low"`` nor ``"high"``.
        """
        if which not in ("low", "high"):
            raise ValueError(f"corner() takes 'low' or 'high', got {which!r}")
        index = 0 if which == "low" else 1
        config = self._fixed_copy()
        for dim in self.dimensions:
            config[dim.section][dim.field] = dim.bounds()[index]
        return config

    def with_max_epochs(self, max_epochs: int) -> SearchSpace:
        """A copy whose ``train.epochs`` is at most ``max_epochs`` (the ``--epochs`` flag).

        A searched ``train.epochs`` gets ``high = max_epochs`` (and its ``low`` clipped to it);
        a fixed one, or the ``TrainConfig`` default when the space leaves epochs out, is clipped.
        """
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise SpaceError(f"--epochs must be a positive integer, got {max_epochs!r}")
        dims = []
        for dim in self.dimensions:
            if dim.name == "train.epochs":
                if dim.kind == "categorical":
                    kept = tuple(c for c in dim.choices if c <= max_epochs) or (max_epochs,)
                    dim = dataclasses.replace(dim, choices=kept)
                else:
                    low = min(int(dim.low), max_epochs)
                    dim = dataclasses.replace(dim, low=low, high=max_epochs, step=None)
            dims.append(dim)
        fixed = {section: dict(self.fixed.get(section, {})) for section in SECTIONS}
        if not any(d.name == "train.epochs" for d in dims):
            from nas_asc.train.loop import TrainConfig

            default = fixed["train"].get("epochs", TrainConfig.epochs)
            fixed["train"]["epochs"] = min(default, max_epochs)
        return dataclasses.replace(self, dimensions=tuple(dims), fixed=fixed)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distribution of every dimension, keyed by dotted name, in file order."""
        return {dim.name: dim.distribution() for dim in self.dimensions}

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-dumpable mapping that ``from_dict`` turns back into this space."""
        fixed = {
            section: {
                field: list(value) if isinstance(value, tuple) else value
                for field, value in self.fixed.get(section, {}).items()
            }
            for section in SECTIONS
        }
        return {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "fixed": fixed,
            "dimensions": {dim.name: dim.to_spec() for dim in self.dimensions},
        }

    def _fixed_copy(self) -> dict[str, dict[str, Any]]:
        return {section: copy.deepcopy(dict(self.fixed.get(section, {}))) for section in SECTIONS}


# --------------------------------------------------------------------------------------------
# Looking spaces up by name
# --------------------------------------------------------------------------------------------


def space_dirs() -> list[Path]:
    """Directories searched for named spaces, existing ones only, de-duplicated.

    Returns:
        ``./search_spaces`` (relative to the working directory), then the repository's
        ``search_spaces/`` next to the ``nas_asc`` package.
    """
    package_root = Path(__file__).resolve().parents[1]  # .../nas_asc
    candidates = [Path.cwd() / "search_spaces", package_root.parent / "search_spaces"]
    result: list[Path] = []
    seen: set[Path] = set()
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_dir() and resolved not in seen:
            seen.add(resolved)
            result.append(resolved)
    return result


def _space_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in _YAML_SUFFIXES and p.is_file())


def list_spaces() -> list[str]:
    """Names (file stems) of the YAML spaces in ``space_dirs()``, sorted and de-duplicated."""
    names = {path.stem for directory in space_dirs() for path in _space_files(directory)}
    return sorted(names)


def resolve_space(name_or_path: str) -> Path:
    """Turn a space name or a YAML path into the path of the space file.

    Args:
        name_or_path: A path (ends with ``.yaml``/``.yml`` or contains a path separator) or the
            name of a space in ``space_dirs()``.

    Returns:
        The YAML file's path.

    Raises:
        SpaceError: If the path does not exist or no space has that name.
    """
    text = str(name_or_path)
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if text.endswith(_YAML_SUFFIXES) or any(sep in text for sep in separators):
        path = Path(text).expanduser()
        if path.is_dir():
            raise _fail(
                text,
                "space file",
                "is a folder, not a YAML file",
                f"pass a .yaml file (e.g. {path / 'my_space.yaml'}) or one of the space names "
                f"{list_spaces()}",
            )
        if not path.is_file():
            raise _fail(
                text,
                "space file",
                "not found",
                f"check the path, or pass one of the space names {list_spaces()}",
            )
        return path
    for directory in space_dirs():
        for suffix in _YAML_SUFFIXES:
            candidate = directory / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    searched = [str(d) for d in space_dirs()] or ["./search_spaces (missing)"]
    raise _fail(
        text,
        "space name",
        f"no search space named {text!r} in {searched}",
        f"use one of {list_spaces()} or pass a path to a .yaml file",
    )


def load_space(name_or_path: str) -> SearchSpace:
    """Resolve (see ``resolve_space``) and load a validated search space.

    Args:
        name_or_path: A space name or a YAML path.

    Returns:
        The search space.

    Raises:
        SpaceError: If the space cannot be found or is malformed.
    """
    return SearchSpace.from_yaml(resolve_space(name_or_path))
