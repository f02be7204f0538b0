"""The error convention of every command of the project: a user error is one line,
``error: <input>: <reason>``, on stderr, never a traceback; exit status 1 (2 for a usage
error: a bad option value, a missing option)."""
from __future__ import annotations

import click


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its lines joined)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def show(exc: click.ClickException) -> None:
    """Print a click error the project's way (click's own way adds a usage block)."""
    click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)


class CommandError(click.ClickException):
    """A user error a command stops on: shown as one ``error:`` line, exit status 1."""

    def show(self, file=None) -> None:
        show(self)


class Group(click.Group):
    """A click group whose errors (usage errors too, and the ``user_errors`` its commands let
    through) are shown as one ``error:`` line."""

    #: exceptions that are the user's to fix (a bad setting name, a locked folder ...): exit status 1
    user_errors: tuple[type[BaseException], ...] = ()

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            super().main(*args, standalone_mode=False, **kwargs)
            raise SystemExit(0)      # as click's standalone mode: the process ends here
        except click.ClickException as exc:
            show(exc)
            raise SystemExit(exc.exit_code) from None
        except click.exceptions.Exit as exc:
            raise SystemExit(exc.exit_code) from None
        except self.user_errors as exc:
            click.echo(f"error: {one_line(exc)}", err=True)
            raise SystemExit(1) from None
        except click.Abort:
            click.echo("aborted", err=True)
            raise SystemExit(130) from None
