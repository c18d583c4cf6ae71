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

The shape of a file (keys, kinds, numbers, booleans) is checked by the pydantic models below, and
fixed values and choices by pydantic against the real type of the dataclass field they set. Every
problem raises ``SpaceError`` with one line naming the file, the dimension (or key), the bad value
(shortened) and the fix.

The named spaces ship inside the package (``nas_asc/search_spaces/``, which the repository's
top-level ``search_spaces/`` links to); a ``./search_spaces/`` folder in the working directory is
searched first for a user's own spaces.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import os
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import optuna
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    TypeAdapter,
    ValidationError,
)

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

_SPEC_KEYS = ("type", "low", "high", "step", "log", "choices")
_YAML_SUFFIXES = (".yaml", ".yml")


# --------------------------------------------------------------------------------------------
# Errors and small helpers
# --------------------------------------------------------------------------------------------


def _fail(source: str, where: str, problem: str, fix: str) -> SpaceError:
    """Build a one-line ``SpaceError``: ``<file>: <where>: <problem>; fix: <fix>``."""
    return SpaceError(" ".join(f"{source}: {where}: {problem}; fix: {fix}".split()))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8


def _short(value: Any) -> str:
    """``repr(value)``, at most 80 characters: a YAML alias bomb can be a value of gigabytes."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_label(value: Any) -> str:
    return "null" if value is None else type(value).__name__


#: Most values a space file may expand to. A real space has a few hundred; YAML aliases can make
#: a file of a few hundred bytes expand to billions (an "alias bomb"), which every later step
#: (checking, hashing, an error message quoting a value) would walk through.
MAX_YAML_NODES = 100_000


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last one) and
    documents whose aliases expand to more than :data:`MAX_YAML_NODES` values."""

    def compose_document(self):  # type: ignore[override]
        node = super().compose_document()
        _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Raise ``ComposerError`` if ``root`` with every alias expanded has too many nodes.

    Aliases share node objects, so the expanded size of each node is computed once (memo by
    identity): linear in the file, whatever it expands to.
    """
    sizes: dict[int, int] = {}
    # post-order walk without recursion: (node, children pushed?)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            sizes[id(node)] = 1
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 1) for c in children)
        sizes[id(node)] = total
        if total > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"its aliases expand to more than {MAX_YAML_NODES:,} values (a space needs a "
                "few hundred)",
                node.start_mark,
            )


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
                f"duplicate key {_short(key)} (first defined on line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


# --------------------------------------------------------------------------------------------
# The file's shape, as pydantic models (strict: no "64" for 64, no 1 for true)
# --------------------------------------------------------------------------------------------

_Number = Annotated[float, Field(allow_inf_nan=False)]  # an int or a float, never a bool
_Scalar = None | bool | int | float | str  # what Optuna takes as a categorical choice
_Mapping = Annotated[dict[Any, Any], Strict(False)]  # any mapping, its values checked later


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _TopLevel(_Strict):
    name: Annotated[str, Field(pattern=r"\S")]
    description: str | None = None
    model: str
    fixed: (
        Annotated[dict[Literal["model", "frontend", "train"], _Mapping | None], Strict(False)]
        | None
    ) = None
    dimensions: _Mapping | None
    references: _Mapping | None = None


class _Range(_Strict):
    low: _Number
    high: _Number
    step: _Number | None = None
    log: bool = False


class _IntSpec(_Range):
    type: Literal["int"]


class _FloatSpec(_Range):
    type: Literal["float"]


class _CategoricalSpec(_Strict):
    type: Literal["categorical"]
    choices: Annotated[list[_Scalar], Strict(False), Field(min_length=1)]


def _kind(spec: Any) -> str | None:
    """The spec's ``type`` if it is one of ``KINDS`` (pydantic would ``str()`` any other tag,
    which for a YAML alias bomb never ends)."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    return kind if isinstance(kind, str) and kind in KINDS else None


_SPEC = TypeAdapter(
    Annotated[
        Annotated[_IntSpec, Tag("int")]
        | Annotated[_FloatSpec, Tag("float")]
        | Annotated[_CategoricalSpec, Tag("categorical")],
        Discriminator(_kind),
    ]
)
_TOP_KEYS = list(_TopLevel.model_fields)
_REQUIRED_TOP_KEYS = [key for key, info in _TopLevel.model_fields.items() if info.is_required()]
_TOP_LEVEL_HELP = {  # key -> (problem, fix) when its value has the wrong type
    "name": ("{value} is not a non-empty string", "give the space a name"),
    "description": (
        "{value} is not a string",
        "write the description as text (quote it if needed)",
    ),
    "fixed": (
        "must be a mapping of section -> field -> value, got {type} {value}",
        "write e.g. fixed: {train: {batch_size: 64}}",
    ),
    "dimensions": (
        "must be a mapping of 'section.field' -> spec, got {type}",
        "write e.g. dimensions: {model.width: {type: int, low: 8, high: 64}}",
    ),
    "references": (
        "must be a mapping of name -> {{dimension: value}}, got {type}",
        "write e.g. references: {c40: {model.width: 40}}",
    ),
}


def _reported(exc: ValidationError) -> list[dict[str, Any]]:
    """The errors one message reports: every unknown key, else every missing one, else the first."""
    errors = exc.errors(include_url=False)
    for kinds in (("extra_forbidden", "invalid_key"), ("missing",)):
        group = [error for error in errors if error["type"] in kinds]
        if group:
            return group
    return errors[:1]


def _unknown_model(source: str, model: Any) -> SpaceError:
    from nas_asc.models import list_models

    return _fail(
        source,
        "key 'model'",
        f"unknown model family {_short(model)}",
        f"use one of {list_models()}",
    )


def _top_level_error(source: str, exc: ValidationError) -> SpaceError:
    errors = _reported(exc)
    kind, loc, value = errors[0]["type"], errors[0]["loc"], errors[0]["input"]
    keys = [error["loc"][-1] for error in errors if error["loc"]]
    if not loc:
        problem, fix = f"must be a mapping, got {_type_label(value)}", f"write the keys {_TOP_KEYS}"
        return _fail(source, "top level", problem, f"{fix} at the top level")
    if kind in ("extra_forbidden", "invalid_key"):
        return _fail(source, "top level", f"unknown key(s) {_short(keys)}", f"use only {_TOP_KEYS}")
    if kind == "missing":
        fix = f"add them; required keys are {_REQUIRED_TOP_KEYS}"
        return _fail(source, "top level", f"missing key(s) {keys}", fix)
    if loc[0] == "model":
        return _unknown_model(source, value)
    if loc[0] == "fixed" and len(loc) > 1:
        where = f"fixed section {_short(loc[1])}"
        if kind == "literal_error":
            return _fail(source, where, "unknown section", f"use one of {list(SECTIONS)}")
        problem = f"must be a mapping of field -> value, got {_type_label(value)} {_short(value)}"
        return _fail(source, where, problem, f"write e.g. fixed: {{{loc[1]}: {{field: value}}}}")
    problem, fix = _TOP_LEVEL_HELP[loc[0]]
    return _fail(
        source, f"key {loc[0]!r}", problem.format(value=_short(value), type=_type_label(value)), fix
    )


def _spec_error(source: str, where: str, exc: ValidationError) -> SpaceError:
    errors = _reported(exc)
    kind, loc, value = errors[0]["type"], errors[0]["loc"], errors[0]["input"]
    tag, key = (loc + (None, None))[:2]  # loc is (dimension kind, spec key, ...)
    if kind == "union_tag_not_found" and not isinstance(value, dict):
        problem = f"the spec must be a mapping, got {_type_label(value)} {_short(value)}"
        fix = "write e.g. {type: int, low: 8, high: 64} or {type: categorical, choices: [a, b]}"
    elif kind == "union_tag_not_found":
        problem = f"type {_short(value['type'])} is not supported" if "type" in value else ""
        problem, fix = problem or "missing 'type'", f"set type to one of {list(KINDS)}"
    elif kind == "extra_forbidden":
        keys = [error["loc"][-1] for error in errors]
        unknown = [key for key in keys if key not in _SPEC_KEYS]
        if unknown:
            problem, fix = (
                f"unknown key(s) {_short(unknown)} in the spec",
                f"use only {list(_SPEC_KEYS)}",
            )
        else:
            problem = f"key(s) {keys} do not apply to a {tag} dimension"
            other = "int/float for a numeric range" if tag == "categorical" else "categorical"
            fix = f"remove them, or use type {other}"
    elif kind == "missing":
        problem = f"missing {key!r}"
        fix = (
            "add choices: [a, b, ...]"
            if key == "choices"
            else f"add {key}: <number> to the {tag} spec"
        )
    elif key == "choices" and kind == "too_short":
        problem, fix = "choices is empty", "list at least one value"
    elif key == "choices" and len(loc) == 2:
        problem = f"choices must be a list, got {_type_label(value)} {_short(value)}"
        fix = "write choices as a YAML list, e.g. choices: [64, 128]"
    elif key == "choices":
        problem = f"choice {_short(value)} is a {_type_label(value)}, not a scalar"
        fix = "use only numbers, strings, booleans or null as choices"
    elif key == "log":
        problem, fix = f"log {_short(value)} is not a boolean", "write log: true or log: false"
    elif kind == "finite_number":
        problem, fix = f"{key} {_short(value)} is not finite", "use a finite number"
    else:  # a bound or step that is not a number
        hint = ""
        if isinstance(value, str) and len(value) < 40:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                hint = f" (YAML reads {value} as text; write {number!r})"
        problem, fix = f"{key} {_short(value)} is not a number{hint}", f"give {key} as a number"
    return _fail(source, where, problem, fix)


# --------------------------------------------------------------------------------------------
# Dataclass field types
# --------------------------------------------------------------------------------------------


def _section_class(section: str, model: str) -> type:
    """The config dataclass behind ``section``."""
    if section == "model":
        from nas_asc.models import get_model_config

        return get_model_config(model)
    if section == "frontend":
        from nas_asc.data.features import FrontEnd

        return FrontEnd
    from nas_asc.train.loop import TrainConfig

    return TrainConfig


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    """Field name -> real type of a config dataclass (``Any`` where it cannot be resolved)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation naming something not importable: accept any value
        hints = {}
    return {field.name: hints.get(field.name, Any) for field in dataclasses.fields(cls)}


def _lax_sequences(hint: Any) -> Any:
    """``hint`` with its tuples and lists made to take a YAML list (strict takes only a tuple)."""
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (tuple, list):
        inner = tuple(arg if arg is Ellipsis else _lax_sequences(arg) for arg in args)
        return Annotated[origin[inner] if inner else origin, Strict(False)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_lax_sequences(arg) for arg in args)]  # noqa: UP007
    return hint


@functools.cache
def _adapter(cls: type, field: str) -> TypeAdapter:
    config = ConfigDict(strict=True, arbitrary_types_allowed=True)
    return TypeAdapter(_lax_sequences(_field_hints(cls)[field]), config=config)


def _mismatch(cls: type, field: str, value: Any) -> dict[str, Any] | None:
    """The pydantic error if ``value`` does not suit the type of ``cls.field``, else ``None``."""
    try:
        _adapter(cls, field).validate_python(value)
    except ValidationError as exc:
        return exc.errors(include_url=False)[0]
    return None


def _describe(hint: Any) -> str:
    """A field type as a YAML author reads it: ``int``, ``float or null``, ``list of int``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "null"
    if origin is Annotated:
        return _describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin in (tuple, list):
        inner = dict.fromkeys(_describe(arg) for arg in args if arg is not Ellipsis)
        return f"list of {' and '.join(inner)}" if inner else "list"
    return getattr(hint, "__name__", str(hint))


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


def _parse_references(
    source: str, raw: Mapping, dimensions: tuple[Dimension, ...]
) -> dict[str, dict[str, Any]]:
    """Check the ``references`` mapping: name -> {dimension: value}, every value inside its
    dimension, every ``model.*`` and ``frontend.*`` dimension set."""
    by_name = {dim.name: dim for dim in dimensions}
    required = [d.name for d in dimensions if d.section in ("model", "frontend")]
    out: dict[str, dict[str, Any]] = {}
    for name, values in raw.items():
        where = f"reference {_short(name)}"
        if not isinstance(name, str) or not name.strip():
            raise _fail(source, where, "a reference needs a name", "name it, e.g. c40: {...}")
        if not isinstance(values, Mapping) or not values:
            raise _fail(
                source,
                where,
                f"must map dimensions to values, got {_short(values)}",
                "write e.g. c40: {model.width: 40, frontend.n_mels: 64}",
            )
        for key, value in values.items():
            dim = by_name.get(key)
            if dim is None:
                raise _fail(
                    source,
                    where,
                    f"{_short(key)} is not a dimension of this space",
                    f"use the dimension names {list(by_name)}",
                )
            if not _contains(dim, value):
                raise _fail(
                    source,
                    where,
                    f"{key} = {_short(value)} is outside the dimension ({dim.to_spec()})",
                    "give a value the space can sample, or widen the dimension",
                )
        missing = [key for key in required if key not in values]
        if missing:
            raise _fail(
                source,
                where,
                f"does not set {', '.join(missing)} (the model and front end decide its "
                "complexity)",
                "set every model.* and frontend.* dimension",
            )
        out[name] = dict(values)
    return out


def _contains(dim: Dimension, value: Any) -> bool:
    """Whether ``value`` is one the dimension can sample (its type, range and step)."""
    if dim.kind == "categorical":
        return any(type(value) is type(c) and value == c for c in dim.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if dim.kind == "int" and not isinstance(value, int):
        return False
    if not dim.low <= value <= dim.high:
        return False
    step = dim.step or (1 if dim.kind == "int" else None)
    if step is None:
        return True
    steps = (value - dim.low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-8)


def _parse_dimension(source: str, key: Any, spec: Any, model: str) -> Dimension:
    where = f"dimension {_short(key)}"
    if not isinstance(key, str) or key.count(".") != 1 or "" in key.split("."):
        raise _fail(
            source,
            where,
            "a dimension key must be 'section.field'",
            f"name it like 'model.width' with section one of {list(SECTIONS)}",
        )
    section, field = key.split(".")
    if section not in SECTIONS:
        problem = f"unknown section {_short(section)}"
        raise _fail(source, where, problem, f"use one of {list(SECTIONS)}")
    cls = _section_class(section, model)
    if field not in _field_hints(cls):
        problem = f"unknown field {_short(field)} for section {section!r} (model {model!r})"
        raise _fail(source, where, problem, f"use one of {sorted(_field_hints(cls))}")
    try:
        parsed = _SPEC.validate_python(dict(spec) if isinstance(spec, Mapping) else spec)
    except ValidationError as exc:
        raise _spec_error(source, where, exc) from None
    field_type = _describe(_field_hints(cls)[field])
    if isinstance(parsed, _CategoricalSpec):
        seen: set[tuple[type, Any]] = set()
        for choice in parsed.choices:
            if _mismatch(cls, field, choice):
                problem = (
                    f"choice {_short(choice)} ({_type_label(choice)}) does not suit field "
                    f"{field!r} of type {field_type}"
                )
                raise _fail(source, where, problem, f"use {field_type} values")
            # 1, 1.0 and true are distinct choices; a repeat of the same type and value is not
            if (type(choice), choice) in seen:
                problem = f"choice {_short(choice)} is listed twice"
                raise _fail(source, where, problem, "remove the duplicate")
            seen.add((type(choice), choice))
        return Dimension(section, field, "categorical", choices=tuple(parsed.choices))
    return _parse_range(source, where, section, field, cls, parsed)


def _parse_range(
    source: str, where: str, section: str, field: str, cls: type, spec: _Range
) -> Dimension:
    kind, field_type = spec.type, _describe(_field_hints(cls)[field])
    number = int if kind == "int" else float
    if any(_mismatch(cls, field, number(bound)) for bound in (spec.low, spec.high)):
        also_int = "int or " if kind == "float" and not _mismatch(cls, field, 1) else ""
        problem = f"type {kind} does not suit field {field!r} of type {field_type}"
        raise _fail(source, where, problem, f"use type {also_int}categorical")
    values = {"low": spec.low, "high": spec.high, "step": spec.step}
    if kind == "int":
        for bound, value in values.items():
            if value is not None and not value.is_integer():
                problem = f"{bound} {value!r} is not an integer in an int dimension"
                raise _fail(
                    source, where, problem, f"use a whole number for {bound}, or type float"
                )
        values = {bound: None if v is None else int(v) for bound, v in values.items()}
    low, high, step = values["low"], values["high"], values["step"]
    if low > high:
        raise _fail(source, where, f"low {low!r} > high {high!r}", "swap them so that low <= high")
    if step is not None:
        if step <= 0:
            raise _fail(source, where, f"step {step!r} <= 0", "use a positive step")
        if spec.log:
            problem = f"log sampling together with step {step!r}"
            raise _fail(source, where, problem, "remove step or remove log: true")
        n_steps = (high - low) / step
        if abs(n_steps - round(n_steps)) > 1e-9 * max(1.0, abs(n_steps)):
            raise _fail(
                source,
                where,
                f"high - low = {high - low!r} is not a multiple of step {step!r}",
                f"set high to {low + math.floor(n_steps) * step!r} or change step",
            )
    if spec.log and low <= 0:
        problem = f"log sampling with low {low!r} <= 0"
        raise _fail(source, where, problem, "use low > 0 or remove log")
    return Dimension(section, field, kind, low=low, high=high, step=step, log=spec.log)


def _check_fixed_values(
    source: str, fixed: Mapping[str, Mapping[str, Any]], dimensions: Sequence[Dimension]
) -> None:
    """Refuse, at load time, fixed train and front-end values the trainer would refuse in every
    trial (``batch_size: 1``, ``lr: -1``): their config is built at both corners of the space,
    and a space that neither corner makes valid fails here, not in each of its trials."""
    from nas_asc.data.features import FrontEnd
    from nas_asc.train.loop import TrainConfig

    for section, build in (("train", TrainConfig), ("frontend", FrontEnd)):
        if not fixed.get(section):
            continue
        problems = []
        for index in (0, 1):
            values = dict(fixed[section])
            values.update({d.field: d.bounds()[index] for d in dimensions if d.section == section})
            try:
                build(**values)
            except (ValueError, TypeError) as exc:
                problems.append(" ".join(str(exc).split())[:200])
        if len(problems) == 2:
            raise _fail(
                source,
                f"fixed {section}",
                problems[0],
                f"change the value in fixed.{section} (every trial would fail with it)",
            )


def _parse_fixed(source: str, fixed: Mapping | None, model: str) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for section, values in (fixed or {}).items():
        cls = _section_class(section, model)
        for field, value in (values or {}).items():
            where = f"fixed {_short(f'{section}.{field}')}"
            if field not in _field_hints(cls):
                problem = f"unknown field {_short(field)} for section {section!r}"
                raise _fail(source, where, problem, f"use one of {sorted(_field_hints(cls))}")
            error = _mismatch(cls, field, value)
            if error:
                field_type = _describe(_field_hints(cls)[field])
                item = "".join(f"[{part}]" for part in error["loc"])
                detail = f" (item {item}: {error['msg']})" if item else ""
                problem = (
                    f"value {_short(value)} ({_type_label(value)}) does not suit a field of type "
                    f"{field_type}{detail}"
                )
                raise _fail(source, where, problem, f"give a value of type {field_type}")
            result[section][field] = tuple(value) if isinstance(value, list) else value
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
        references: Name -> dimension values of known systems (a seed report's models) that a
            new study runs first (warm start). A reference sets every ``model.*`` and
            ``frontend.*`` dimension (they decide its complexity, checked against the budget
            before it is queued); the ``train.*`` ones it leaves out are sampled.
    """

    name: str
    description: str
    model: str
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Mapping[str, Any]]
    source: str = "<dict>"
    references: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

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
        try:
            top = _TopLevel.model_validate(dict(data) if isinstance(data, Mapping) else data)
        except ValidationError as exc:
            raise _top_level_error(source, exc) from None
        from nas_asc.models import list_models

        if top.model not in list_models():
            raise _unknown_model(source, top.model)
        fixed = _parse_fixed(source, top.fixed, top.model)
        if not top.dimensions:
            raise _fail(
                source,
                "key 'dimensions'",
                "no dimensions to search",
                "add at least one, e.g. model.width: {type: int, low: 8, high: 64}",
            )
        dimensions = tuple(
            _parse_dimension(source, key, spec, top.model) for key, spec in top.dimensions.items()
        )
        for dim in dimensions:
            if dim.field in fixed[dim.section]:
                raise _fail(
                    source,
                    f"dimension {dim.name!r}",
                    "the field is both fixed (to "
                    f"{_short(fixed[dim.section][dim.field])}) and searched",
                    f"remove it from fixed.{dim.section} or from dimensions",
                )
        _check_fixed_values(source, fixed, dimensions)
        return cls(
            name=top.name,
            description=(top.description or "").strip(),
            model=top.model,
            dimensions=dimensions,
            fixed=fixed,
            source=source,
            references=_parse_references(source, top.references or {}, dimensions),
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
            elif "aliases expand" in detail:
                fix = "write the values out instead of repeating anchors (&name / *name)"
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
        # a reference's epochs follow the new bound, as the sampled ones do
        references = {
            name: {
                k: min(v, max_epochs) if k == "train.epochs" and isinstance(v, int) else v
                for k, v in values.items()
            }
            for name, values in self.references.items()
        }
        return dataclasses.replace(self, dimensions=tuple(dims), fixed=fixed, references=references)

    def frontends(self, limit: int = 16) -> list:
        """Every front end a trial of this space can use (its ``frontend.*`` dimensions'
        values over the fixed ones), in a stable order; empty when a ``frontend.*`` dimension
        is continuous or there are more than ``limit`` (they are then computed as trials ask).

        The search computes their features in one pass over the audio before its first trial.
        """
        from nas_asc.data.features import FrontEnd

        dims = [d for d in self.dimensions if d.section == "frontend"]
        values = []
        for dim in dims:
            if dim.kind == "categorical":
                values.append(list(dim.choices))
            elif dim.kind == "int" and not dim.log:
                values.append(list(range(int(dim.low), int(dim.high) + 1, int(dim.step or 1))))
            else:
                return []
        combos = list(itertools.product(*values))
        if len(combos) > limit:
            return []
        fixed = dict(self.fixed.get("frontend", {}))
        out = []
        for combo in combos:
            try:
                fe = FrontEnd(**{**fixed, **{d.field: v for d, v in zip(dims, combo, strict=True)}})
            except ValueError:  # a combination no trial can run (it fails as a trial would)
                continue
            if fe not in out:
                out.append(fe)
        return out

    def reference_config(self, name: str) -> dict[str, dict[str, Any]]:
        """The config of reference ``name`` with its ``model`` and ``frontend`` sections
        complete (its ``train`` section holds only what it sets over ``fixed``)."""
        config = self._fixed_copy()
        for key, value in self.references[name].items():
            section, field = key.split(".")
            config[section][field] = value
        return config

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
        out = {
            "name": self.name,
            "description": self.description,
            "model": self.model,
            "fixed": fixed,
            "dimensions": {dim.name: dim.to_spec() for dim in self.dimensions},
        }
        if self.references:
            out["references"] = {name: dict(values) for name, values in self.references.items()}
        return out

    def _fixed_copy(self) -> dict[str, dict[str, Any]]:
        return {section: copy.deepcopy(dict(self.fixed.get(section, {}))) for section in SECTIONS}


# --------------------------------------------------------------------------------------------
# Looking spaces up by name
# --------------------------------------------------------------------------------------------


def space_dirs() -> list[Path]:
    """Directories searched for named spaces, existing ones only, de-duplicated.

    Returns:
        ``./search_spaces`` (relative to the working directory: a user's own spaces), then the
        named spaces shipped in the package (``nas_asc/search_spaces``).
    """
    packaged = Path(str(resources.files("nas_asc") / "search_spaces"))
    result: list[Path] = []
    for candidate in (Path.cwd() / "search_spaces", packaged):
        resolved = candidate.resolve()
        if resolved.is_dir() and resolved not in result:
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
