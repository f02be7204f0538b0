"""Options declared once, on the config dataclasses (:mod:`trainer.config`): a field's
metadata holds its help text, its range and its command-line spelling.  From them,
:func:`click_options` builds a command's options, :func:`check_ranges` checks a config (the
one range check: a value from the command line, a YAML file or the Python API meets the same
rule), and :func:`check_types` checks a config file's values against the fields' types before
any is used: ``betas: 5`` or ``out: 5`` in a YAML file is one line naming the option and the
type it needs, never a TypeError from deep inside a run, and ``device: 5`` never reaches
torch.  The types are read from the dataclass annotations, so a new option is checked
without a line here.

Options several commands share (``--device``, ``--workers``, ``--seed`` ...) are defined
once here, with one default, and used by every config that has them.
"""
from __future__ import annotations

import dataclasses
import types
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
    if base in (typing.Union, types.UnionType) and args:
        base = typing.get_origin(args[0]) or args[0]
    return base if base in (int, float, bool, str, list, tuple) else object


def value_problem(value: Any, kind: type, spec: Spec, optional: bool) -> str | None:
    """Why ``value`` does not meet ``spec`` ("choose from a, b", "must be a whole number >= 1"),
    or None when it does."""
    if value is None and optional:
        return None
    if spec.choices is not None:
        choices = spec.choice_list()
        return None if value in choices else f"choose from {', '.join(map(str, choices))}"
    if kind in (int, float):
        high = spec.high if spec.high is not None or kind is float else MAX_WHOLE
        return range_problem(value, whole=kind is int, low=spec.low, high=high, low_open=spec.low_open)
    return None


def check_value(name: str, value: Any, kind: type, spec: Spec, optional: bool) -> None:
    """Raise ConfigError (one line naming the option) unless ``value`` meets ``spec``."""
    problem = value_problem(value, kind, spec, optional)
    if problem is not None:
        raise ConfigError(f"{spec.flag or flag(name)} {value!r}: {problem}")


def check_ranges(config) -> None:
    """Every field of ``config`` against its :class:`Spec` (range, choices); no text of it (a
    path, a name) holds a NUL byte, which no file name can."""
    cls = type(config)
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        for text in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(text, str) and "\0" in text:
                raise ConfigError(f"{flag(f.name)} {text!r}: holds a NUL byte, which no path or name can")
    for f in dataclasses.fields(cls):
        spec = spec_of(f)
        if spec.low is None and spec.high is None and spec.choices is None:
            continue
        optional = spec.optional if spec.optional is not None else f.default is None
        check_value(f.name, getattr(config, f.name), _kind(cls, f), spec, optional)


# -- the command line ---------------------------------------------------------------------------------
def click_options(cls, skip: tuple[str, ...] = (), *, only: tuple[str, ...] | None = None,
                  override: dict[str, dict] | None = None, envvar: bool = False, check: bool = False) -> Callable:
    """A decorator adding one click option per field of the config dataclass ``cls`` (in field
    order, or in the order of ``only``), spelt, typed, defaulted and explained by the field and
    its :class:`Spec`.

    A command that offers some of a config's fields with defaults of its own (the experiments,
    the demo) names them in ``only`` and gives ``override``: per field, the ``default`` and the
    :class:`Spec` values (``help``, ``flag`` ...) that differ for it.  ``envvar``: each option is
    also read from the environment variable its flag names (``--train-limit``: TRAIN_LIMIT);
    ``check``: a value outside its range is refused when the command line is parsed (exit
    status 2), not later when the config is resolved."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    override = override or {}
    unknown = sorted(set(only or ()) - set(fields) | set(override) - set(only or fields))
    if unknown:
        raise TypeError(f"{cls.__name__}: no field(s) {', '.join(unknown)} to make options of")
    made = []
    for f in (fields[n] for n in only) if only is not None else fields.values():
        changes = dict(override.get(f.name, {}))
        spec = dataclasses.replace(spec_of(f), **{k: v for k, v in changes.items() if k != "default"})
        if not spec.cli or f.name in skip:
            continue
        kind = _kind(cls, f)
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory
                                                              is not MISSING else None)
        default = changes.get("default", default)
        name = spec.flag or flag(f.name)
        kw: dict[str, Any] = {"help": spec.help, "required": spec.required}
        if spec.metavar:
            kw["metavar"] = spec.metavar
        if envvar:
            kw["envvar"] = name[2:].upper().replace("-", "_")
        if check:
            kw["callback"] = _checker(kind, spec)
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


def _checker(kind: type, spec: Spec) -> Callable:
    def callback(ctx, param, value):
        # None: not given, which the config resolves (a method's learning rate ...)
        problem = value_problem(value, kind, spec, optional=True)
        if problem is not None:
            raise click.BadParameter(f"{value!r}: {problem}", ctx, param)
        return value
    return callback


# -- the types of a config file's values -----------------------------------------------------------
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
