"""The docs hold what they show: every relative link and #anchor of README.md and the docs
resolves, every command the README shows answers ``--help``, every ``make`` target it shows
passes ``make -n``, and docs/cli.md is what the commands render (through the block registry)."""
from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from docsgen import cli_reference  # noqa: E402
from docsgen import readme_block as rb  # noqa: E402
from pipeline.markdown import BlockError  # noqa: E402

README = ROOT / "README.md"


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown a reader follows links through."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "trainer" / "README.md",
            root / "receiver" / "README.md", root / "tools" / "bpg" / "README.md"]


# --------------------------------------------------------------------------- Markdown reading

FENCE = re.compile(r"^(```|~~~)")


def prose_and_code(text: str) -> tuple[list[str], list[str]]:
    """(lines outside fenced code blocks, lines inside them)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, only letters, marks, digits, '_', '-' and
    spaces kept (inline code's backticks and other punctuation dropped), spaces -> '-'."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LM" or unicodedata.category(c) == "Nd")
    return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a page: its headings' slugs (repeats get -1, -2, ... as on GitHub) and
    explicit ``<a id=...>`` / ``<a name=...>``."""
    prose, _ = prose_and_code(text)
    found, seen = set(), {}
    for line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            found.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    found |= set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", "\n".join(prose)))
    return found


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def links(text: str) -> list[str]:
    """The link targets of a page's prose (inline code spans are not links)."""
    prose, _ = prose_and_code(text)
    return [t for line in prose for t in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def broken_links(page: Path) -> list[str]:
    out = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{page.name}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            out.append(f"{page.name}: {target}: no such anchor in {dest.name}")
    return out


def test_every_link_and_anchor_resolves():
    files = pages()
    assert all(p.is_file() for p in files)
    assert sum(len(links(p.read_text(encoding="utf-8"))) for p in files) > 50
    bad = [b for p in files for b in broken_links(p)]
    assert bad == []


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## The `x` option – and more\n\n<a id=\"here\"></a>\n")
    page = tmp_path / "README.md"
    page.write_text("See [a](docs/a.md#the-x-option--and-more), [b](docs/a.md#here), [c](docs/b.md),\n"
                    "[d](docs/a.md#nowhere), [e](#top), `[f](docs/none.md)` and [g](https://example.org/x).\n\n"
                    "```bash\n# top\n[h](docs/none.md)\n```\n")
    assert broken_links(page) == ["README.md: docs/b.md: no such file",
                                  "README.md: docs/a.md#nowhere: no such anchor in a.md",
                                  "README.md: #top: no such anchor in README.md"]


@pytest.mark.parametrize("heading, expected", [
    ("What expert training buys a deployer: retention of held-out classes",
     "what-expert-training-buys-a-deployer-retention-of-held-out-classes"),
    ("Rate–accuracy of the new codecs", "rateaccuracy-of-the-new-codecs"),
    ("m2m-pipeline shards", "m2m-pipeline-shards"),
    ("Results on real ImageNet images (Imagenette)", "results-on-real-imagenet-images-imagenette"),
    ("What each kind of bad input gets (every command)", "what-each-kind-of-bad-input-gets-every-command"),
])
def test_slug_is_githubs(heading, expected):
    assert slug(heading) == expected


# --------------------------------------------------------------------------- the README's commands

def console_scripts() -> dict[str, str]:
    return dict(cli_reference.console_scripts(ROOT / "setup.cfg"))


def optional_modules() -> set[str]:
    """The import names of the optional extras' packages (setup.cfg [options.extras_require])."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    out = set()
    for extra, text in cfg.items("options.extras_require"):
        for line in text.splitlines():
            name = re.split(r"[\[<>=!~;\s]", line.strip(), maxsplit=1)[0]
            if name and not name.startswith("#"):
                out.add(name.replace("-", "_").lower())
    return out


COMMAND = re.compile(r"(?:^|[\s;|&(])(python(?:3)?\s+-m\s+[\w.]+|python(?:3)?\s+(?:experiments|benchmarks)/[\w/]+\.py"
                     r"|m2m-[a-z-]+)((?:\s+[a-z][a-z0-9-]*)?)(?=\s|$)")


def readme_commands(text: str) -> list[tuple[str, ...]]:
    """The distinct commands (with a subcommand when one follows) of the README's code blocks."""
    _, code = prose_and_code(text)
    found = []
    for line in code:
        for m in COMMAND.finditer(re.sub(r"(^|\s)#.*$", "", line)):
            words = tuple(m.group(1).split()) + tuple(m.group(2).split())
            if words not in found:
                found.append(words)
    return found


def help_argv(words: tuple[str, ...]) -> list[str]:
    """The process that prints ``words``' help: a console script runs its entry point."""
    if words[0].startswith("m2m-"):
        target = console_scripts()[words[0]]
        module, _, func = target.partition(":")
        code = f"import sys; from {module} import {func}; sys.exit({func}({list(words[1:]) + ['--help']!r}))"
        return [sys.executable, "-c", code]
    return [sys.executable, *words[1:], "--help"]


def _commands():
    return readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_the_commands_of_the_flow():
    cmds = {" ".join(c) for c in _commands()}
    assert {"python -m trainer.run", "python -m trainer.evaluation", "python -m pipeline summary", "m2m-serve",
            "python -m receiver.predict"} <= cmds


@pytest.mark.parametrize("words", _commands(), ids=" ".join)
def test_readme_command_answers_help(words):
    if words[0].startswith("m2m-"):
        assert words[0] in console_scripts(), f"{words[0]} is not a console script of setup.cfg"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(help_argv(words), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    missing = re.search(r"No module named '([\w.]+)'", r.stderr)
    if r.returncode != 0 and missing and missing.group(1).split(".")[0].lower() in optional_modules():
        pytest.skip(f"{' '.join(words)} needs {missing.group(1)}, an optional extra that is not installed")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Usage:" in r.stdout or "usage:" in r.stdout


def test_command_extraction():
    text = ("intro `python -m nope` in prose\n\n```bash\npython -m pipeline summary shards/val/*   # x\n"
            "m2m-serve --experts runs/ --port 8080\npython experiments/figures.py --out docs\n"
            "# python -m commented.out\nsrun python -m pipeline shards --settings a\n```\n")
    assert readme_commands(text) == [("python", "-m", "pipeline", "summary"), ("m2m-serve",),
                                     ("python", "experiments/figures.py"), ("python", "-m", "pipeline", "shards")]


# --------------------------------------------------------------------------- the README's make targets

def make_lines(text: str) -> list[list[str]]:
    """``make TARGET VAR=VALUE ...`` as shown in the README (code blocks and inline code)."""
    prose, code = prose_and_code(text)
    spans = [s for line in prose for s in re.findall(r"`([^`]*)`", line)]
    out = []
    for line in [re.sub(r"(^|\s)#.*$", "", c) for c in code] + spans:
        for m in re.finditer(r"(?:^|\s)make\s+(.*)", line):
            words = [w for w in shlex.split(m.group(1)) if w != "..."]
            args = [w for w in words if re.fullmatch(r"[a-z][a-z-]*|[A-Z_]+=.*", w)]
            if args and not args[0].count("=") and args not in out:
                out.append(args)
    return out


def test_make_extraction():
    text = "`make help` lists\n\n```bash\nmake shards CODEC=j2k Q=200 SRC=/data/x SPLIT=train   # y\nmake demo DEMO_ARGS=--force\n```\n"
    assert make_lines(text) == [["shards", "CODEC=j2k", "Q=200", "SRC=/data/x", "SPLIT=train"],
                                ["demo", "DEMO_ARGS=--force"], ["help"]]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_readme_make_targets_dry_run():
    shown = make_lines(README.read_text(encoding="utf-8"))
    assert {a[0] for a in shown} >= {"demo", "test", "shards", "shards-paper", "help"}
    for args in shown:
        r = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"make -n {' '.join(args)}: {r.stderr[-1000:]}"


# --------------------------------------------------------------------------- docs/cli.md

def test_cli_reference_is_a_fresh_registry_block():
    block = next(b for b in rb.BLOCKS if b.file == "docs/cli.md")
    text = rb.read_block((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"), block.name)
    assert text is not None and text.strip() == block.render(ROOT).strip(), \
        "docs/cli.md is stale (python docsgen/readme_block.py cli)"
    for name in console_scripts():
        assert f"\n## {name}\n" in text and f"Usage: {name} " in text, name
    assert "### m2m-pipeline shards" in text and "The same command: `python -m trainer.run`." in text


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    before = cli_reference.render(ROOT)
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((40, 20)))
    assert cli_reference.render(ROOT) == before
    assert str(ROOT) not in before and not re.search(r"\[default: /", before)


def test_a_stale_cli_reference_is_found(tmp_path):
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "docs").mkdir()
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    edited = text.replace("Samples per shard.", "Samples per shard (typed).")
    assert edited != text
    (tmp_path / "docs" / "cli.md").write_text(edited, encoding="utf-8")
    block = next(b for b in rb.BLOCKS if b.file == "docs/cli.md")
    got = rb.read_block(edited, block.name)
    assert got.strip() != block.render(tmp_path).strip()
    assert rb.refresh([block], tmp_path) == ["docs/cli.md: cli"]
    assert (tmp_path / "docs" / "cli.md").read_text(encoding="utf-8") == text


def test_machine_dependent_defaults_are_refused():
    @click.command()
    @click.option("--jobs", default=os.cpu_count(), show_default=True)
    def by_cores(jobs):
        pass

    @click.command()
    @click.option("--out", default=str(ROOT / "x"), show_default=True)
    def absolute(out):
        pass

    @click.command()
    @click.option("--jobs", default=os.cpu_count(), show_default="the CPU count")
    @click.option("--out", default="runs/x", show_default=True)
    def portable(jobs, out):
        pass

    for cmd, why in ((by_cores, "CPU count"), (absolute, "absolute path")):
        with pytest.raises(BlockError, match=why):
            cli_reference._section(cmd, cli_reference._context(cmd, "x"), "x", 2, None)
    text = "\n".join(cli_reference._section(portable, cli_reference._context(portable, "x"), "x", 2, None))
    assert "[default: (the CPU count)]" in text and "[default: runs/x]" in text
