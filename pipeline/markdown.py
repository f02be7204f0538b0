"""One Markdown table writer for every report, benchmark and summary."""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

BLANK = "—"


def cell(value: Any, digits: int | None = None) -> str:
    """None -> "—"; floats with ``digits`` decimals when given; '|' escaped."""
    if value is None:
        return BLANK
    if digits is not None and isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub Markdown table.  ``align``: one letter per column, ``l`` or ``r``
    (default: the first column left, the others right, as numbers read best)."""
    header = [cell(h) for h in header]
    n = len(header)
    align = align or ("l" + "r" * (n - 1))
    if len(align) != n or set(align) - {"l", "r"}:
        raise ValueError(f"align must be {n} letters of l/r, got {align!r}")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    for row in rows:
        row = [cell(c) for c in row]
        if len(row) != n:
            raise ValueError(f"a row has {len(row)} cells for {n} columns: {row!r}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# A *document* is what a benchmark writes into its results file and a README block shows:
# paragraphs and tables, kept apart so that the table cells stay machine-readable.

def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def parse_document(text: str) -> list[dict]:
    """Markdown -> parts: ``{"text": paragraph}`` or ``{"table": {"header", "align", "rows"}}``
    (blank-line separated; ``render_document`` gives the text back)."""
    parts = []
    for chunk in text.strip().split("\n\n"):
        lines = chunk.split("\n")
        if len(lines) >= 2 and all(x.startswith("|") and x.endswith("|") for x in lines) \
                and re.fullmatch(r"\|(-{3,}:?\|)+", lines[1]):
            align = "".join("r" if c.endswith(":") else "l" for c in lines[1].strip("|").split("|"))
            parts.append({"table": {"header": _cells(lines[0]), "align": align,
                                    "rows": [_cells(x) for x in lines[2:]]}})
        else:
            parts.append({"text": chunk})
    return parts


def render_document(parts: Sequence[dict]) -> str:
    """Parts -> Markdown (``parse_document``'s inverse)."""
    return "\n\n".join(p["text"] if "text" in p else table(p["table"]["header"], p["table"]["rows"],
                                                             p["table"]["align"]) for p in parts)


# -- generated blocks: <!-- NAME:start --> ... <!-- NAME:end --> -------------------------------------
class BlockError(ValueError):
    """The file has no such block, or a block's source is missing or unreadable."""


def replace_block(text: str, name: str, content: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise BlockError(f"no '{start}' ... '{end}' block in the file")
    return pattern.sub(lambda _: f"{start}\n{content.strip()}\n{end}", text)


def read_block(text: str, name: str) -> str | None:
    """The content of block ``name`` (None when the file has none)."""
    m = re.search(rf"<!-- {re.escape(name)}:start -->\n(.*?)\n?<!-- {re.escape(name)}:end -->", text, re.S)
    return m.group(1) if m else None


def block_names(text: str) -> list[str]:
    """The names of every start/end block of a Markdown text, in order."""
    return re.findall(r"<!-- ([\w.-]+):start -->", text)
