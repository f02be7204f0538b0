"""Running a click command from tests: exit status returned, never ``sys.exit``."""
from __future__ import annotations

import click


def run_click(cli: click.Command, argv: list[str] | None, prog_name: str) -> int:
    try:
        return cli.main(args=argv, prog_name=prog_name, standalone_mode=False) or 0
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
