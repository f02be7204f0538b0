"""The values of a config file checked against the types of the config dataclass's fields,
before any of them is used: ``betas: 5`` or ``out: 5`` in a YAML file is one line naming the
option and the type it needs, never a TypeError from deep inside a run, and ``device: 5``
never reaches torch.  The types are read from the dataclass annotations, so a new option is
checked without a line here.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} {' and '.join(_describe(a) for a in typing.get_args(tp))}"
    return {str: "text", int: "a whole number", float: "a number", bool: "true or false"}.get(tp, str(tp))


def fits(value: Any, tp) -> bool:
    """Whether a plain (YAML / JSON) value fits the annotation ``tp``."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp)
        # one path where a list of paths is expected is what a user means
        return (item is str and isinstance(value, str)) or \
            (isinstance(value, (list, tuple)) and all(fits(v, item) for v in value))
    if origin is tuple:
        args = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and len(value) == len(args) and \
            all(fits(v, a) for v, a in zip(value, args))
    return isinstance(value, tp) if isinstance(tp, type) else True


def check_types(cls, data: dict[str, Any], source: str, error: Callable[[str], Exception]) -> None:
    """Raise ``error(message)`` for the first value of ``data`` that does not fit its field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not fits(data[f.name], hints[f.name]):
            shown = repr(data[f.name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise error(f"{source}: {f.name} {shown}: expected {_describe(hints[f.name])}")
