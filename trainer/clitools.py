"""What every command of the trainer, its reports and the receiver shares: user errors are one line,
``main(argv)`` returns an exit status (console-script ready, and callable from tests).

Exit status: 0 success, 1 a user error (bad input file, refused checkpoint, data loss ...;
one line on stderr naming the input), 2 a usage error (click's, or a user error whose class
sets ``exit_code = 2``: an option this machine cannot honour), 130 interrupted; every error
is one ``error: ...`` line (:mod:`pipeline.cli`, the pipeline's commands print theirs alike).
"""
from __future__ import annotations

import errno
import math
import sys
from typing import Iterable

import click

from pipeline.atomic import AtomicWriteError, LockedError
from pipeline.cli import show
from pipeline.layout import PairingError
from pipeline.limits import FileKindError, PixelBudgetError
from pipeline.manifest import ManifestError
from pipeline.setting import SettingError
from pipeline.signals import terminate_as_interrupt


class UserError(Exception):
    """Something the user can fix (a bad path, a refused file, data loss past --max-skip ...).
    Its message is one line that names the input; commands print it without a traceback."""


#: errors shown as one line: ours, and the pipeline's about files the user gave us
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, SettingError, ManifestError, AtomicWriteError,
                                                LockedError, PixelBudgetError, PairingError, FileKindError)


#: OSErrors that are the machine's state, not a bug: a full or read-only disk, permissions,
#: a missing or misplaced path, a link where a file should be, too many open files
ENVIRONMENT_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR", "ELOOP", "EFBIG", "EMFILE",
    "ENFILE", "ENAMETOOLONG", "EEXIST", "EXDEV", "EIO") if hasattr(errno, n))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def spread_options(argv: list[str], names: Iterable[str]) -> list[str]:
    """``--shards a b --x`` -> ``--shards a --shards b --x`` for the options in ``names``:
    these took several values after one flag (argparse ``nargs='+'``) before the commands
    moved to click, and scripts rely on it."""
    names = set(names)
    out: list[str] = []
    current = None
    for arg in argv:
        if arg.startswith("-") and arg != "-":
            flag = arg.split("=", 1)[0]
            current = flag if flag in names and "=" not in arg else None
            out.append(arg)
            continue
        if current is not None and out and out[-1] != current:
            out.append(current)
        out.append(arg)
    return out


def run_click(cli: click.Command, argv: list[str] | None, prog_name: str, multi: Iterable[str] = ()) -> int:
    """Run a click command; return its exit status instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if multi:
        args = spread_options(args, multi)
    with terminate_as_interrupt():
        return _run(cli, args, prog_name)


def _run(cli: click.Command, args: list[str], prog_name: str) -> int:
    try:
        return cli.main(args=args, prog_name=prog_name, standalone_mode=False) or 0
    except click.ClickException as exc:
        show(exc)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except USER_ERRORS as exc:
        click.echo(f"error: {one_line(exc)}", err=True)
        return getattr(exc, "exit_code", 1)
    except ValueError as exc:
        if "null byte" not in str(exc):     # a path with a NUL byte that no check above caught
            raise
        click.echo("error: a path holds a NUL byte, which no file name can; refused", err=True)
        return 1
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or one_line(exc)}", err=True)
        return 1


def range_problem(value, *, whole: bool = False, low: float | None = None, high: float | None = None,
                  low_open: bool = False) -> str | None:
    """The one range rule of every option: why ``value`` is not a whole (``whole``) or finite
    number within the bounds ("must be a whole number >= 1"), or None when it is."""
    if whole:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if ok:
        return None
    bounds = [f"{'>' if low_open else '>='} {low:g}"] if low is not None else []
    bounds += [f"<= {high:g}"] if high is not None else []
    return f"must be a {'whole' if whole else 'finite'} number" + (" " + " and ".join(bounds) if bounds else "")


class FiniteFloat(click.ParamType):
    """A float that is finite (click's FloatRange lets NaN through every bound), within the
    bounds given (:func:`range_problem`)."""

    name = "number"

    def __init__(self, min: float | None = None, min_open: bool = False, max: float | None = None):
        self.min, self.min_open, self.max = min, min_open, max

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        problem = range_problem(x, low=self.min, high=self.max, low_open=self.min_open)
        if problem is not None:
            self.fail(f"{value!r} {problem}", param, ctx)
        return x
