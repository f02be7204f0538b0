"""One Markdown table writer for every report, benchmark and summary."""
from __future__ import annotations

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
