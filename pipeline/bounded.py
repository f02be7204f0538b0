"""Bounded reading of the JSON and YAML files users hand us (manifests, records, results,
run configs, cache entries): every such file is read here, never with a bare ``json.loads``.

A file is untrusted input.  The standard parsers recurse once per nesting level (a 2 KB file
of 1000 ``[`` ends in a RecursionError), read a file of any size into memory, turn a
5000-digit number into a ValueError of their own, and YAML's aliases let a 1 KB file stand
for a tree of 10^9 nodes (the "billion laughs"), which anything that walks it (a ``str()``,
a dump) expands.  Here a file is refused, as one :class:`BoundedReadError` naming it, when it
is larger than ``max_bytes``, nests deeper than ``max_depth``, or holds more than
``max_nodes`` values once its aliases are expanded; the nesting is measured before the
parser runs, so no limit depends on the parser's own recursion.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any

import numpy as np

from .limits import FileKindError, read_regular

#: defaults: far above what this project writes (a 1.28 M-image manifest is ~1 MB, depth 4)
MAX_BYTES = 256 << 20
MAX_DEPTH = 64
MAX_NODES = 10_000_000
#: run configs are typed by hand: smaller bounds
CONFIG_MAX_BYTES = 1 << 20
CONFIG_MAX_NODES = 100_000


class BoundedReadError(ValueError):
    """A JSON or YAML file that is missing, unreadable or beyond a bound (one line, names it)."""


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
#: YAML's quoted scalars (a '' inside single quotes is an escaped quote) and comments
_YAML_QUOTED = re.compile(rb'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|#[^\n]*', re.S)


def _depth(text: bytes, opening: bytes, closing: bytes) -> int:
    """The deepest bracket nesting of ``text`` (strings already removed), in C loops."""
    a = np.frombuffer(text, dtype=np.uint8)
    if not a.size:
        return 0
    step = np.isin(a, np.frombuffer(opening, np.uint8)).astype(np.int32) \
        - np.isin(a, np.frombuffer(closing, np.uint8)).astype(np.int32)
    return int(np.cumsum(step).max(initial=0))


def _read(path: str | os.PathLike, what: str, max_bytes: int) -> bytes:
    """The one way a user's file is read (:func:`pipeline.limits.read_regular`): a regular file
    only, opened without blocking (a FIFO or /dev/zero is refused), at most ``max_bytes``."""
    try:
        return read_regular(path, what, max_bytes)
    except FileNotFoundError:
        raise
    except FileKindError as exc:
        raise BoundedReadError(str(exc)) from None
    except OSError as exc:
        raise BoundedReadError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


def read_text(path: str | os.PathLike, what: str = "text file", *, max_bytes: int = 16 << 20) -> str:
    """A UTF-8 text file of at most ``max_bytes`` (a regular file: a FIFO or /dev/zero is
    refused, not read for ever).  FileNotFoundError passes; the rest is a BoundedReadError."""
    data = _read(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BoundedReadError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _count_nodes(obj: Any, limit: int, where: str) -> None:
    """Refuse a tree of more than ``limit`` values, counting a shared subtree (a YAML alias)
    once per reference: what a walk over it would visit.  Iterative, stops at the limit."""
    stack, n = [obj], 0
    while stack:
        o = stack.pop()
        n += 1
        if n > limit:
            raise BoundedReadError(f"{where}: more than {limit:,} values once its aliases are expanded; refused")
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)


def loads_json(data: bytes | str, where: str = "JSON text", *, max_depth: int = MAX_DEPTH,
               max_nodes: int = MAX_NODES) -> Any:
    """``json.loads`` with the bounds above; NaN and infinities are refused (not JSON)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    depth = _depth(_JSON_STRING.sub(b"", raw), b"[{", b"]}")
    if depth > max_depth:
        raise BoundedReadError(f"{where}: nested {depth} levels deep, more than the limit of {max_depth}; refused")

    def constant(name: str):
        raise ValueError(f"{name} is not a JSON number")
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text, parse_constant=constant)
    except UnicodeDecodeError as exc:
        raise BoundedReadError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise BoundedReadError(f"{where}: nested too deep; refused") from None
    except ValueError as exc:   # JSONDecodeError, and a number of more than 4300 digits
        raise BoundedReadError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:160]})") from None
    _count_nodes(obj, max_nodes, where)
    return obj


def read_json(path: str | os.PathLike, what: str = "JSON file", *, max_bytes: int = MAX_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """A JSON file, bounded.  A missing file raises FileNotFoundError (callers say what to
    do about it); everything else wrong is a :class:`BoundedReadError` naming the file."""
    return loads_json(_read(path, what, max_bytes), str(path), max_depth=max_depth, max_nodes=max_nodes)


def read_yaml(path: str | os.PathLike, what: str = "YAML file", *, max_bytes: int = CONFIG_MAX_BYTES,
              max_depth: int = MAX_DEPTH, max_nodes: int = CONFIG_MAX_NODES) -> Any:
    """A YAML file with the safe loader (plain data only), bounded.  The nesting and the
    aliases are counted on the parser's event stream (no recursion) before anything is built."""
    import yaml

    data = _read(path, what, max_bytes)
    where = str(path)
    # flow collections first, in C loops: PyYAML's scanner slows down with every open bracket
    flow = _depth(_YAML_QUOTED.sub(b"", data), b"[{", b"]}")
    if flow > max_depth:
        raise BoundedReadError(f"{where}: nested {flow} levels deep, more than the limit of {max_depth}; refused")
    try:
        text = data.decode("utf-8")
        depth = events = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            events += 1
            if events > max_nodes:
                raise BoundedReadError(f"{where}: more than {max_nodes:,} values; refused")
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise BoundedReadError(f"{where}: nested more than {max_depth} levels deep; refused")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        obj = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise BoundedReadError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise BoundedReadError(f"{where}: nested too deep; refused") from None
    except yaml.YAMLError as exc:
        raise BoundedReadError(f"{where}: not a readable {what} ({str(exc).splitlines()[0][:160]})") from None
    except (ValueError, TypeError, OverflowError) as exc:   # a 5000-digit int, an unhashable key ...
        if isinstance(exc, BoundedReadError):
            raise
        raise BoundedReadError(f"{where}: not a readable {what} ({str(exc).splitlines()[0][:160]})") from None
    _count_nodes(obj, max_nodes, where)
    return obj
