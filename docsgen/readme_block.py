"""The generated blocks of the docs: every ``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``
block is rendered from committed results files by a script, never typed.  ``BLOCKS`` is the
one registry (file, block name -> source files -> renderer); ``make bench``, ``make
bench-gpu``, ``make demo-docs`` and ``experiments/summarize.py --all-blocks`` refresh blocks
through it, and tests/test_generated_blocks.py re-renders every block and compares.

Renderers:

- ``document``: a benchmark's or the demo's results file (``save`` writes it: the command,
  the environment and the parts of its Markdown, tables as cells), several joined;
- ``summary``: ``experiments/summarize.py`` of ``trainer.evaluation`` results files (the arguments
  are summarize's);
- ``extended``: the extended codecs' settings table (``experiments/extended_settings.py``);
- ``cli``: the reference of every console script of setup.cfg, from the click commands
  (``docsgen/cli_reference.py``).

This folder sits below the scripts that write results files (benchmarks/, experiments/, the
demo): they import :func:`save` and :func:`load` from here.  The two renderers that are
experiment scripts are named as ``module:function``, the way setup.cfg names a console script,
and imported only when one of their blocks is rendered.

    python docsgen/readme_block.py pipeline scale       # refresh these blocks from their files
    python docsgen/readme_block.py --all                 # every block
    python docsgen/readme_block.py --check               # exit 1 when a block differs
"""
from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.atomic import atomic_write, atomic_write_json  # noqa: E402
from pipeline.markdown import (BlockError, block_names, parse_document, read_block,  # noqa: E402, F401
                               render_document, replace_block)
from pipeline.provenance import environment, hardware, inside_path  # noqa: E402
from trainer.clitools import UserError  # noqa: E402

RESULTS = "benchmarks/results"
#: the page of the experiment tables (``experiments/summarize.py --all-blocks`` regenerates its blocks)
RESULTS_PAGE = "docs/results.md"
#: the renderers that are experiment scripts (see the module's docstring)
SUMMARY = "experiments.summarize:block"
EXTENDED = "experiments.extended_settings:render_table"


# --------------------------------------------------------------------------- results files

def command(script: str, argv: list[str]) -> str:
    """The command line a results file records; paths relative to the repository (or their
    names), so that the file names no folder of the machine."""
    def clean(arg: str) -> str:
        opt, eq, val = arg.partition("=")
        if eq and os.path.isabs(val):
            return f"{opt}={inside_path(val, ROOT)}"
        return inside_path(arg, ROOT) if os.path.isabs(arg) else arg
    return shlex.join(["python", script, *(clean(a) for a in argv)])


def save(path: str | os.PathLike, text: str, script: str, argv: list[str], gpu: bool = False, **extra) -> Path:
    """A benchmark's (or the demo's) results file: the command, the environment, the hardware
    in words and the Markdown ``text`` as parts (tables as cells); ``render`` gives ``text``."""
    env = environment(gpu=gpu)
    data = {"command": command(script, argv), "hardware": hardware(env), "environment": env, **extra,
            "parts": parse_document(text)}
    if render_document(data["parts"]).strip() != text.strip():
        raise BlockError(f"{path}: the Markdown does not survive as parts")   # a table this parser cannot read
    return atomic_write_json(path, data)


def load(path: str | os.PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BlockError(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("parts"), list):
        raise BlockError(f"{path}: no 'parts' list (write it with the benchmark's --json)")
    return data


# --------------------------------------------------------------------------- renderers

def render_documents(sources: list[str], root: Path) -> str:
    return "\n\n".join(render_document(load(root / s)["parts"]) for s in sources)


def script_function(target: str):
    """The function that ``module:function`` names, its module imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def render_summary(argv: list[str], root: Path) -> str:
    return script_function(SUMMARY)(argv, root=root)


def summary_sources(argv: list[str]) -> list[str]:
    """The results files named by summarize arguments (``LABEL=FILE`` of --compare too), with
    their meta files when present."""
    files, it = [], iter(argv)
    for arg in it:
        if arg == "--compare":
            files.append(next(it).partition("=")[2])
        elif arg in ("--setting", "--view"):
            next(it)
        else:
            files.append(arg)
    return files


def render_extended(sources: list[str], root: Path) -> str:
    return script_function(EXTENDED)(json.loads((root / sources[0]).read_text(encoding="utf-8")))


def render_cli(sources: list[str], root: Path) -> str:
    from docsgen import cli_reference
    return cli_reference.render(root)


RENDERERS = {"document": (render_documents, lambda args: list(args)), "summary": (render_summary, summary_sources),
             "extended": (render_extended, lambda args: list(args)), "cli": (render_cli, lambda args: list(args))}


@dataclass(frozen=True)
class Block:
    file: str          # the Markdown file, from the repository root
    name: str          # <!-- NAME:start -->
    renderer: str      # a key of RENDERERS
    args: tuple        # document: the results files; summary: summarize's arguments; cli: setup.cfg

    def render(self, root: Path = ROOT) -> str:
        return RENDERERS[self.renderer][0](list(self.args), Path(root))

    def sources(self) -> list[str]:
        return RENDERERS[self.renderer][1](self.args)


def _doc(file: str, name: str, *sources: str) -> Block:
    return Block(file, name, "document", sources)


def _summary(name: str, *argv: str) -> Block:
    """An experiment table of RESULTS_PAGE: its name and summarize's arguments (paths from the
    repository root)."""
    return Block(RESULTS_PAGE, name, "summary", argv)


BLOCKS = [
    _doc("docs/format.md", "mixing", f"{RESULTS}/mixing.json"),
    _doc("docs/format.md", "storage", f"{RESULTS}/storage.json"),
    _doc("docs/benchmarks.md", "pipeline", f"{RESULTS}/pipeline.json"),
    _doc("docs/benchmarks.md", "scale", f"{RESULTS}/scale.json"),
    _doc("docs/benchmarks.md", "bpg", f"{RESULTS}/bpg.json"),
    _doc("docs/benchmarks.md", "loader", f"{RESULTS}/loader.json"),
    _doc("docs/benchmarks.md", "trainer", f"{RESULTS}/trainer.json"),
    _doc("docs/benchmarks.md", "precision", f"{RESULTS}/precision.json"),
    _doc("docs/benchmarks.md", "precision-accuracy", "experiments/results/precision-cpu.json"),
    _doc("README.md", "demo", "docs/demo-results.json"),
    _doc("docs/receiver.md", "serve", f"{RESULTS}/serve.json"),
    _doc("docs/receiver.md", "serve-stall", f"{RESULTS}/serve-stall.json"),
    _doc("docs/receiver.md", "mixed-traffic", "experiments/results/mixed-traffic-cpu-bn-frozen.json"),
    _summary("imagenette", "experiments/results/imagenette-cpu.json"),
    _summary("imagenette-order-cpu", "--compare", "sorted=experiments/results/imagenette-cpu-sorted.json",
             "--compare", "mixed=experiments/results/imagenette-cpu.json", "--setting", "j2k-200"),
    _summary("retention", "experiments/results/retention-cpu.json"),
    _summary("retention-bn", "experiments/results/retention-cpu-pretrained-bn.json"),
    _summary("retention-bn-frozen", "experiments/results/retention-bn-frozen-cpu.json"),
    Block("docs/deployment.md", "deployment", "summary",
          ("--view", "deployment", "experiments/results/deployment-cpu.json")),
    Block("docs/deployment.md", "deployment-variants", "summary",
          ("--view", "deployment", "experiments/results/deployment-variants-cpu.json")),
    _doc("tools/bpg/README.md", "bpg-tuning", f"{RESULTS}/bpg-tune.json"),
    _doc("tools/bpg/README.md", "bpg-bench", f"{RESULTS}/bpg.json"),
    Block("docs/codecs.md", "extended-settings", "extended", ("docs/results/extended-settings.json",)),
    Block("docs/codecs.md", "imagenette-extended", "summary",
          ("experiments/results/imagenette-cpu-extended.json", "experiments/results/imagenette-cpu.json")),
    Block("docs/cli.md", "cli", "cli", ("setup.cfg",)),
]

#: the Markdown files whose blocks are all generated (a block not in BLOCKS is an error)
DOCS = ("README.md", "tools/bpg/README.md", "trainer/README.md", "receiver/README.md", "docs")


def doc_files(root: Path = ROOT) -> list[Path]:
    out = []
    for d in DOCS:
        p = Path(root) / d
        out += sorted(p.rglob("*.md")) if p.is_dir() else [p] if p.exists() else []
    return out


def refresh(blocks: list[Block], root: Path = ROOT) -> list[str]:
    """Write each block from its sources; returns what changed ("FILE: NAME")."""
    changed = []
    for b in blocks:
        path = Path(root) / b.file
        text = path.read_text(encoding="utf-8")
        new = replace_block(text, b.name, b.render(root))
        if new != text:
            atomic_write(path, new)
            changed.append(f"{b.file}: {b.name}")
    return changed


def stale(root: Path = ROOT) -> list[str]:
    """Blocks whose text is not what their sources render, and blocks of no registry entry."""
    known = {(b.file, b.name) for b in BLOCKS}
    out = []
    for b in BLOCKS:
        text = (Path(root) / b.file).read_text(encoding="utf-8")
        got = read_block(text, b.name)
        if got is None:
            out.append(f"{b.file}: no block {b.name}")
        elif got.strip() != b.render(root).strip():
            out.append(f"{b.file}: block {b.name} differs from what {', '.join(b.sources())} renders")
    for path in doc_files(root):
        rel = path.relative_to(root).as_posix()
        out += [f"{rel}: block {n} has no source in docsgen/readme_block.py"
                for n in block_names(path.read_text(encoding="utf-8")) if (rel, n) not in known]
    return out


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args == ["--check"]:
            bad = stale()
            for line in bad:
                print(f"error: {line}", file=sys.stderr)
            return 1 if bad else 0
        names = {b.name for b in BLOCKS}
        unknown = [a for a in args if a != "--all" and a not in names]
        if not args or unknown:
            print(f"error: name blocks to refresh ({', '.join(sorted(names))}) or give --all"
                  + (f"; unknown: {', '.join(unknown)}" if unknown else ""), file=sys.stderr)
            return 2
        chosen = [b for b in BLOCKS if "--all" in args or b.name in args]
        for line in refresh(chosen):
            print(f"{line} refreshed")
    except (BlockError, UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
