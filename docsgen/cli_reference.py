"""The command reference of docs/cli.md, rendered from the click command objects of every
console script that setup.cfg declares, so that the page cannot drift from the options.

Each entry point ``NAME = MODULE:FUNC`` is documented through ``MODULE.cli``, the click
command its ``main`` runs; groups list their subcommands, each with its own help.  The help
is formatted at a fixed width and every default is shown as the command declares it, so the
page reads the same on every machine and terminal: a default computed from the machine (the
CPU count) must declare a ``show_default`` text, and one that would print an absolute path
is an error here, naming the option.
"""
from __future__ import annotations

import configparser
import importlib
import os
import re
from pathlib import Path

import click

from pipeline.markdown import BlockError

#: the width the help is formatted at (click's own default is the terminal's)
WIDTH = 100


def console_scripts(setup_cfg: Path) -> list[tuple[str, str]]:
    """(name, "module:function") of every console script, in setup.cfg's order."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg, encoding="utf-8")
    text = cfg.get("options.entry_points", "console_scripts", fallback="")
    out = []
    for line in text.splitlines():
        name, eq, target = (s.strip() for s in line.partition("="))
        if eq and name:
            out.append((name, target))
    if not out:
        raise BlockError(f"{setup_cfg}: no console_scripts in [options.entry_points]")
    return out


def command_of(target: str) -> tuple[click.Command, str]:
    """The click command behind an entry point, and the module it lives in."""
    module_name = target.partition(":")[0]
    module = importlib.import_module(module_name)
    cmd = getattr(module, "cli", None)
    if not isinstance(cmd, click.Command):
        raise BlockError(f"{target}: its module has no click command named cli")
    return cmd, module_name


def module_command(module_name: str) -> str | None:
    """``python -m ...`` for a module that runs as a script, else None."""
    module = importlib.import_module(module_name)
    source = Path(module.__file__).read_text(encoding="utf-8")
    if not re.search(r"""^if __name__ == ["']__main__["']""", source, re.M):
        return None
    return "python -m " + module_name.removesuffix(".__main__")


def _context(cmd: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    """The context ``cmd`` runs in (its context_settings), at the fixed width."""
    settings = {**cmd.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(cmd, info_name=name, parent=parent, **settings)


def _check_portable(cmd: click.Command, ctx: click.Context, where: str) -> None:
    for param in cmd.params:
        if not isinstance(param, click.Option):
            continue
        shown = param.show_default if param.show_default is not None else ctx.show_default
        if not shown or isinstance(shown, str):
            continue
        default = param.default() if callable(param.default) else param.default
        if default is None:
            continue
        values = default if isinstance(default, (list, tuple)) else [default]
        if any(isinstance(v, (str, os.PathLike)) and os.path.isabs(os.fspath(v)) for v in values):
            raise BlockError(f"{where} {param.opts[-1]}: its default is an absolute path; show a relative one")
        if param.name in ("jobs", "workers", "threads") and default == os.cpu_count():
            raise BlockError(f"{where} {param.opts[-1]}: its default is this machine's CPU count; "
                             "give the option a show_default text")


def _help(cmd: click.Command, ctx: click.Context) -> str:
    formatter = ctx.make_formatter()
    cmd.format_help(ctx, formatter)
    return formatter.getvalue().rstrip()


def _section(cmd: click.Command, ctx: click.Context, title: str, level: int, also: str | None) -> list[str]:
    _check_portable(cmd, ctx, title)
    parts = [f"{'#' * level} {title}", ""]
    if also:
        parts += [f"The same command: `{also}`.", ""]
    parts += ["```text", _help(cmd, ctx), "```", ""]
    if isinstance(cmd, click.Group):
        for sub_name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, sub_name)
            sub_ctx = _context(sub, sub_name, ctx)
            parts += _section(sub, sub_ctx, f"{title} {sub_name}", level + 1,
                              f"{also} {sub_name}" if also else None)
    return parts


def render(root: Path) -> str:
    """The reference of every console script of ``root``'s setup.cfg."""
    scripts = console_scripts(Path(root) / "setup.cfg")
    parts = ["Commands: " + ", ".join(f"[`{name}`](#{name})" for name, _ in scripts) + ".", ""]
    for name, target in scripts:
        cmd, module_name = command_of(target)
        ctx = _context(cmd, name)
        parts += _section(cmd, ctx, name, 2, module_command(module_name))
    return "\n".join(parts).rstrip() + "\n"
