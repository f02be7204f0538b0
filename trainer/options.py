"""Options declared once, on the config dataclasses: a field's metadata holds its help text,
its range and its command-line spelling; :func:`click_options` builds a command's options
from them and :func:`check_ranges` checks a config against them (the one range check: a
value from the command line, a YAML file or the Python API meets the same rule).

Options several commands share (``--device``, ``--workers``, ``--seed`` ...) are defined
once here, with one default, and used by every config that has them.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

import click

from pipeline.classes import MAX_CLASSES

from .clitools import FiniteFloat, UserError, range_problem


#: the bound of a whole-number option without its own (sample counts, steps): every one sizes a loop
MAX_WHOLE = 10**12


class ConfigError(UserError, ValueError):
    """An option outside its range, or a bad config file (the message names it)."""


@dataclass(frozen=True)
class Spec:
    """How a config field is checked and offered on the command line."""
    help: str | None = None
    low: float | None = None               # smallest value (numbers)
    high: float | None = None              # largest value
    low_open: bool = False                 # ``low`` itself is refused
    choices: tuple | Callable[[], tuple] | None = None
    optional: bool | None = None           # None allowed (default: when the default is None)
    flag: str | None = None                # the option's spelling (default: --field-name)
    negatable: bool = False                # --x/--no-x (default: for booleans that default to True)
    metavar: str | None = None
    required: bool = False                 # on the command line
    multiple: bool = False                 # repeatable on the command line (a list field always is)
    cli: bool = True                       # offered on the command line

    def choice_list(self) -> tuple:
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices or ())


def opt(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **spec) -> Any:
    """A config field with its :class:`Spec`."""
    if factory is not None:
        return field(default_factory=factory, metadata={"spec": Spec(**spec)})
    return field(default=default, metadata={"spec": Spec(**spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec") or Spec()


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- the options several commands share --------------------------------------------------------------
def device():
    return opt("auto", help="auto | cpu | cuda (or cuda:N)")


def workers():
    return opt(None, low=0, high=256, help="Loader processes per rank (default: the CPUs available / ranks on the node - 1, "
                                 "1 to 32).")


def seed():
    return opt(0, low=0, high=2**63 - 1)     # what every seeded generator takes


def threads():
    return opt(None, low=1, high=4096, help="torch CPU threads.")


def progress():
    return opt(True)


def precision():
    from .precision import AUTO, CHOICES, HELP
    return opt(AUTO, choices=CHOICES, help=HELP)


def max_skip(what: str = "an epoch"):
    return opt(0.01, low=0, high=1, help=f"Largest fraction of samples {what} may skip (unreadable, undecodable) "
                                         "before it fails.")


def num_classes(help: str | None = None):
    return opt(None, low=1, high=MAX_CLASSES, help=help)   # sizes the classifier head


def shards(help: str, required: bool = False):
    return opt(factory=list, help=help, required=required)


# -- the one range check ------------------------------------------------------------------------------
def _kind(cls, f: dataclasses.Field) -> type:
    """int, float, bool, str, list or tuple: what the field holds (None aside)."""
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = typing.get_origin(hint) or hint
    if base in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        base = typing.get_origin(args[0]) or args[0]
    return base if base in (int, float, bool, str, list, tuple) else object


def check_value(name: str, value: Any, kind: type, spec: Spec, optional: bool) -> None:
    """Raise ConfigError (one line naming the option) unless ``value`` meets ``spec``."""
    if value is None and optional:
        return
    if spec.choices is not None:
        choices = spec.choice_list()
        if value not in choices:
            raise ConfigError(f"{flag(name)} {value!r}: choose from {', '.join(map(str, choices))}")
        return
    if kind in (int, float):
        high = spec.high if spec.high is not None or kind is float else MAX_WHOLE
        problem = range_problem(value, whole=kind is int, low=spec.low, high=high, low_open=spec.low_open)
        if problem is not None:
            raise ConfigError(f"{flag(name)} {value!r}: {problem}")


def check_ranges(config) -> None:
    """Every field of ``config`` against its :class:`Spec` (range, choices)."""
    cls = type(config)
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec.low is None and spec.high is None and spec.choices is None:
            continue
        optional = spec.optional if spec.optional is not None else f.default is None
        check_value(f.name, getattr(config, f.name), _kind(cls, f), spec, optional)


# -- the command line ---------------------------------------------------------------------------------
def click_options(cls, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per field of the config dataclass ``cls`` (in field
    order), spelt, typed, defaulted and explained by the field and its :class:`Spec`."""
    made = []
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if not spec.cli or f.name in skip:
            continue
        kind = _kind(cls, f)
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory
                                                              is not MISSING else None)
        name = spec.flag or flag(f.name)
        kw: dict[str, Any] = {"help": spec.help, "required": spec.required}
        if spec.metavar:
            kw["metavar"] = spec.metavar
        if kind is bool:
            if default is True or spec.negatable:
                decl = f"{name}/--no-{name[2:]}"
                kw.update(default=default, show_default=True)
            else:
                decl = name
                kw.update(is_flag=True, default=False)
        elif kind is list or spec.multiple:
            decl = name
            kw.update(multiple=True)
        else:
            decl = name
            if spec.choices is not None:
                kw["type"] = click.Choice(spec.choice_list())
            elif kind is tuple:
                kw["type"] = tuple(FiniteFloat() if isinstance(v, float) else type(v) for v in default)
            elif kind is int:
                kw["type"] = click.INT
            elif kind is float:
                kw["type"] = FiniteFloat()
            kw.update(default=default, show_default=default is not None)
        made.append(click.option(decl, f.name, **kw))

    def decorate(fn):
        for o in reversed(made):
            fn = o(fn)
        return fn
    return decorate
