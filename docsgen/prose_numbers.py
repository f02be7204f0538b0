"""Every number the prose of README.md and docs/*.md states has a source.

A number outside the generated blocks is *sourced* when

- a committed results file the page names (a Markdown link, or a path in a code span, to a
  ``.json`` / ``.csv`` file of the repository) holds it: some number of the file rounds to it at the
  precision the prose writes (``83.1`` matches 83.13; ``4%`` also matches the fraction 0.04);
- or one of the page's own generated blocks shows it (they are rendered from results files by
  a command, and ``tests/test_generated_blocks.py`` checks them);
- or a comment marks it as derived, naming the numbers and their source, in the same
  paragraph::

      <!-- derived: 0.54 1.3 from experiments/results/deployment-cpu.json (seed-1 minus seed-0 means) -->

  The path after ``from`` must exist in the repository; the parenthesis says how the numbers
  were computed.  Write it where a number is a difference, a ratio or a mean of filed values.

Not findings, so not checked (each a rule, not a list of values): numbers in code spans,
code blocks, link targets and comments; numbers that are part of a name (``j2k-200``,
``ResNet-50``, ``H200``, ``top-1``, ``mobilenet_v2``, ``1000-way``); years; versions
(``3.10.2``, ``v1``, ``Python 3.11``); list markers; settings' values (``σ 1.5``, ``lr 1e-6``, ``default 1%``, a value after an option in a code span:
```--lr-factor`` 0.2``), dimensions (``10000×2``); references to a table, figure, section,
equation or step of a paper or page (``Table 1``, ``Fig. 4``, ``§3``); and whole numbers without
a unit of measurement (counts and settings: "3 seeds", "batch 256", "status 413"), or 0 to 10 with
one (except a percentage).  A number with decimals, or a whole number with a unit (%, ×, points,
bytes, bpp, dB, ms, s, minutes ...), is a measurement and is checked.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the pages checked
PAGES = ("README.md", "docs/*.md")

BLOCK = re.compile(r"<!-- ([\w.-]+):start -->.*?<!-- \1:end -->", re.S)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
DERIVED = re.compile(r"<!--\s*derived:\s*(?P<nums>.*?)\s+from\s+(?P<src>\S+)(?P<how>.*?)-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK_TARGET = re.compile(r"\]\(([^)\s]+)[^)]*\)")
URL = re.compile(r"https?://\S+")
#: a number as prose writes it (a sign, thousands separators, decimals)
NUMBER = re.compile(r"(?<![\w.,/−+-])[−+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,/−+-])[−+-]?\d+(?:\.\d+)?")
#: what before a number makes it a reference, not a value
REFERENCE = re.compile(r"(Table|Tables|Fig\.|Figs\.|Figure|Figures|Section|Sections|§|Eq\.|Equation|Step|step|"
                       r"Algorithm|Appendix|row|rows|column|columns|version|Python|v)\s*$")


#: what before a number makes it a setting's value (a parameter's symbol or name, a default, a version)
OPTION = "¤"
SETTING = re.compile(r"(¤|σ|α|β|sigma|alpha|lr|betas?|K\d|default|torchvision|Pillow|numpy|torch)\s*\(?"
                     r"(\d+(\.\d+)?,\s*)?$")


def _plain(text: str) -> str:
    """The prose of a page: generated blocks, code and comments blanked (line breaks kept)."""
    blank = lambda m: re.sub(r"[^\n]", " ", m.group(0))  # noqa: E731
    for rx in (BLOCK, FENCE, COMMENT, URL):
        text = rx.sub(blank, text)
    text = CODE.sub(lambda m: OPTION * len(m.group(0)), text)    # a code span: an option, a value, a name
    return LINK_TARGET.sub(lambda m: "](" + " " * (len(m.group(0)) - 3) + ")", text)


def _value(token: str) -> tuple[float, int]:
    token = token.replace("−", "-").replace(",", "")
    decimals = len(token.split(".")[1]) if "." in token else 0
    return float(token), decimals


#: what after a whole number makes it a measurement (a whole number without one is a count or a
#: setting: "3 seeds", "batch 256", "status 413")
UNIT = re.compile(r"\s?(%|×|x\b|times\b|points?\b|pp\b|bytes?\b|bpp\b|dB\b|ms\b|s\b|seconds?\b|minutes?\b|"
                  r"min\b|hours?\b|h\b|images?/s\b|crops?/s\b|samples?/s\b|steps?/s\b|requests?/s\b)")


def _exempt(text: str, start: int, end: int, token: str) -> bool:
    before, after = text[max(0, start - 24):start], text[end:end + 12]
    value, decimals = _value(token)
    if decimals == 0 and not UNIT.match(re.sub(r"^[–-]\d+(\.\d+)?", "", after) or after):
        return True            # a count or a setting, not a measurement
    if decimals == 0 and 0 <= abs(value) <= 10 and not re.match(r"\s?%", after):
        return True
    if re.match(r"[-‑][A-Za-z]", after) or re.search(r"[A-Za-z][-_]$", before) or re.search(r"[A-Za-z]$", before):
        return True            # part of a name: j2k-200, 1000-way, ResNet-50, top-1, mobilenet_v2
    if re.match(r"\.\d", after):
        return True            # a version: 3.10.2
    if REFERENCE.search(before) or SETTING.search(before):
        return True
    if re.match(r"[×x]\d", after):
        return True            # a dimension: 10000×2
    line_start = text.rfind("\n", 0, start) + 1
    if re.fullmatch(r"\s*", text[line_start:start]) and re.match(r"\.\s", after):
        return True            # an ordered list's marker
    return False


def _numbers_of(obj, out: list[float]) -> None:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        if math.isfinite(obj):
            out.append(float(obj))
    elif isinstance(obj, dict):
        for v in obj.values():
            _numbers_of(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers_of(v, out)
    elif isinstance(obj, str):
        out.extend(float(m.replace(",", "")) for m in re.findall(r"-?\d+(?:\.\d+)?", obj))


def file_numbers(path: Path) -> list[float]:
    """Every number a results file holds (JSON values and numbers inside its strings; CSV cells)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    out: list[float] = []
    if path.suffix == ".json":
        try:
            _numbers_of(json.loads(text), out)
            return out
        except json.JSONDecodeError:
            pass
    _numbers_of(text, out)
    return out


def _matches(value: float, decimals: int, pool: set[float]) -> bool:
    for x in pool:
        for v in (x, 100 * x):      # a fraction the prose writes as a percentage
            if round(abs(v), decimals) == round(abs(value), decimals) or (
                    decimals == 0 and math.isclose(abs(v), abs(value), rel_tol=0.005)):
                return True
    return False


def linked_files(text: str, page: Path, root: Path = ROOT) -> list[Path]:
    """The committed .json / .csv files a page names (links and code spans), resolved from the
    page's folder or the repository root."""
    names = LINK_TARGET.findall(text) + [m.group(2) for m in CODE.finditer(text)]
    out = []
    for name in names:
        name = name.split("#")[0].strip()
        if not re.search(r"\.(json|csv)$", name) or "*" in name:
            continue
        for base in (page.parent, root):
            p = (base / name).resolve()
            if p.is_file() and root.resolve() in p.parents:
                out.append(p)
                break
    return sorted(set(out))


def _paragraphs(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in re.finditer(r"\n\s*\n", text):
        spans.append((start, m.start()))
        start = m.end()
    return spans + [(start, len(text))]


def unsourced(page: Path, root: Path = ROOT) -> list[str]:
    """The numbers of ``page``'s prose that have no source ("line: number … context")."""
    text = page.read_text(encoding="utf-8")
    pool: set[float] = set()
    for f in linked_files(text, page, root):
        pool.update(file_numbers(f))
    blocks = " ".join(m.group(0) for m in BLOCK.finditer(text))
    pool.update(float(t.replace(",", "").replace("−", "-")) for t in re.findall(r"[−-]?\d+(?:\.\d+)?", blocks))
    problems = []
    derived: list[tuple[int, int, set[float]]] = []
    for m in DERIVED.finditer(text):
        src = m.group("src")
        if not (root / src).exists() and not (page.parent / src).exists():
            problems.append(f"{text.count(chr(10), 0, m.start()) + 1}: derived comment names {src!r}, "
                            "not a file of the repository")
        para = next((a, b) for a, b in _paragraphs(text) if a <= m.start() <= b)
        derived.append((*para, {_value(t)[0] for t in re.findall(r"[−-]?\d+(?:\.\d+)?", m.group("nums"))}))
    plain = _plain(text)
    for m in NUMBER.finditer(plain):
        token = m.group(0)
        if _exempt(plain, m.start(), m.end(), token):
            continue
        value, decimals = _value(token)
        if _matches(value, decimals, pool):
            continue
        if any(a <= m.start() <= b and any(math.isclose(abs(value), abs(v)) for v in nums) for a, b, nums in derived):
            continue
        line = text.count("\n", 0, m.start()) + 1
        context = plain[max(0, m.start() - 30):m.end() + 20].replace("\n", " ").strip()
        problems.append(f"{line}: {token} … {context}")
    return problems


def pages(root: Path = ROOT) -> list[Path]:
    out = []
    for pattern in PAGES:
        out += sorted(root.glob(pattern))
    return out
