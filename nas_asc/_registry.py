"""Named registries and the one parser of ``NAME:KEY=VALUE,...`` specs.

A :class:`Registry` maps names to objects of one kind (model families, KD strategies, blocks,
pruners, ...), as fvcore's ``Registry``: duplicates are refused, an unknown name is answered with
the sorted list of known ones. Every registry is listed by :func:`all_registries`, so that one
test checks them all.

:func:`parse_spec` reads the command-line form ``NAME`` or ``NAME:KEY=VALUE,...`` (``--pruner``,
``--member``); values are YAML scalars or lists. :func:`build_config` checks keys against a
config dataclass and builds it.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import yaml

__all__ = ["Registry", "all_registries", "parse_spec", "split_items", "build_config"]

T = TypeVar("T")

_CREATED: list[weakref.ref[Registry]] = []


def all_registries() -> list[Registry]:
    """Every registry created so far and still alive, in creation order."""
    return [r for r in (ref() for ref in _CREATED) if r is not None]


class Registry(Generic[T]):
    """Objects of one kind by name, with optional metadata per entry.

    Example:
        >>> PRUNERS = Registry("pruner")
        >>> @PRUNERS.register("none")
        ... class NopPruner: ...
        >>> PRUNERS.get("none") is NopPruner
        True

    Args:
        kind: what the entries are, singular (``"model"``, ``"KD strategy"``); used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        vowel = len(kind) > 1 and kind[-2] in "aeiou"
        self.plural = kind[:-1] + "ies" if kind.endswith("y") and not vowel else kind + "s"
        self._entries: dict[str, tuple[T, dict[str, Any]]] = {}
        _CREATED.append(weakref.ref(self))

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does.

        Args:
            name: the entry's name; a name already registered is refused (``ValueError``).
            obj: the object; omit it to use ``register`` as a decorator.
            **meta: metadata kept with the entry, read back by :meth:`meta`.

        Returns:
            ``obj``, or the decorator (which returns the object it decorates).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = (item, dict(meta))
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``ValueError`` listing the known names if none."""
        return self._entry(name)[0]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name`` (a copy)."""
        return dict(self._entry(name)[1])

    def pop(self, name: str, default: Any = None) -> Any:
        """Remove ``name`` and return its object, or ``default`` if it is not registered."""
        entry = self._entries.pop(name, None)
        return default if entry is None else entry[0]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def _entry(self, name: str) -> tuple[T, dict[str, Any]]:
        if name not in self:
            known = ", ".join(self.names()) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.plural}: {known}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


# YAML 1.1 (PyYAML) reads 1e-3 as a string: it wants a dot in the mantissa and a signed exponent
_EXPONENT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def split_items(text: str) -> list[str]:
    """Split ``a=1,b=[1,2],c='x,y'`` at the commas outside brackets and quotes.

    Items are stripped; empty ones are dropped.
    """
    items, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth <= 0:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_spec(
    text: str, what: str, *, name: str = "name", example: str | None = None
) -> tuple[str, dict[str, Any]]:
    """Parse ``NAME`` or ``NAME:KEY=VALUE,...``; values are read as YAML (``3``, ``0.5``, ``[]``).

    Example:
        >>> parse_spec("dominance:reduction_factor=3,min_peers=2", "pruner")
        ('dominance', {'reduction_factor': 3, 'min_peers': 2})

    Args:
        text: the spec.
        what: what it specifies, first word of every error (``"pruner"``).
        name: what the name is, for the error when it is missing (``"model family"``).
        example: a correct spec, appended to every error as ``; e.g. EXAMPLE``.

    Returns:
        The name and the settings, in the order given.

    Raises:
        ValueError: one line naming ``what``, the bad item and the expected form.
    """
    eg = f"; e.g. {example}" if example else ""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string NAME or NAME:KEY=VALUE,..., got {text!r}{eg}")
    head, _, rest = text.partition(":")
    head = head.strip()
    if not head:
        raise ValueError(
            f"{what} {text!r} must start with a {name} (NAME or NAME:KEY=VALUE,...){eg}"
        )
    settings: dict[str, Any] = {}
    for item in split_items(rest):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or not key or not raw:
            raise ValueError(f"{what} {text!r}: expected KEY=VALUE, got {item!r}{eg}")
        if key in settings:
            raise ValueError(f"{what} {text!r}: {key} is given twice; give each key once{eg}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(
                f"{what} {text!r}: cannot read the value of {key}, {raw!r}, as YAML; quote it or "
                f"close its brackets{eg}"
            ) from None
        if isinstance(value, str) and _EXPONENT.fullmatch(raw):
            value = float(value)
        settings[key] = value
    return head, settings


def build_config(cls: Callable[..., T], values: Mapping[str, Any], what: str) -> T:
    """``cls(**values)`` after checking the keys against the fields of the dataclass ``cls``.

    An integer given for a field declared ``float`` is converted (``2`` becomes ``2.0``); a class
    that is not a dataclass takes no keys.

    Args:
        cls: the config dataclass.
        values: the settings, field name to value.
        what: what is configured, first words of the error (``"model 'tfsepnet'"``).

    Raises:
        ValueError: for keys that are not fields, naming them and the known fields.
    """
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    unknown = sorted(set(values) - {f.name for f in fields})
    if unknown:
        known = sorted(f.name for f in fields)
        raise ValueError(f"{what}: unknown config field(s) {unknown}; known fields: {known}")
    floats = {f.name for f in fields if f.type in (float, "float")}
    return cls(
        **{
            k: float(v) if k in floats and isinstance(v, int) and not isinstance(v, bool) else v
            for k, v in values.items()
        }
    )
