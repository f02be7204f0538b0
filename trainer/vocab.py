"""The method vocabulary the reports use, without torch: the methods' names in the paper's
column order, their display names, and the one key that tells a run trained on teacher
labels apart (``expert+teacher``, shown "expert (teacher labels)").

The methods are declared once, as the classes :mod:`trainer.methods` registers (their
``name`` and ``title``).  This module reads those declarations from that module's source,
so that the reports know every method without importing torch; a method registered at run
time (a plug-in, a test) declares itself here when it registers.
"""
from __future__ import annotations

import ast
from pathlib import Path

#: where the CE targets come from: the dataset's labels, or g's arg-max on the clean crop
LABEL_SOURCES = ("dataset", "teacher")
#: --bn: ``train`` (batch statistics in training, running statistics updated: the paper's
#: code) or ``frozen`` (every layer with running statistics stays in eval mode: the pretrained
#: statistics are used and kept; the affine weights still train)
BN_MODES = ("train", "frozen")
#: appended to a method's name for runs trained on teacher labels (reports, recommend, summaries)
TEACHER_LABELS = "+teacher"


def _declared(source: Path = Path(__file__).with_name("methods.py")) -> dict[str, str]:
    """name -> title of every ``@register`` class of ``source`` (the title defaults to the
    name), in the order they are declared there."""
    out = {}
    for node in ast.parse(source.read_text(encoding="utf-8"), str(source)).body:
        if not (isinstance(node, ast.ClassDef) and any(isinstance(d, ast.Name) and d.id == "register"
                                                       for d in node.decorator_list)):
            continue
        attrs = {t.id: stmt.value.value for stmt in node.body if isinstance(stmt, ast.Assign)
                 and isinstance(stmt.value, ast.Constant) for t in stmt.targets if isinstance(t, ast.Name)}
        out[attrs["name"]] = attrs.get("title", attrs["name"])
    return out


#: name -> display name, in the paper's column order (declaration order)
_TITLES: dict[str, str] = _declared()


def declare(name: str, title: str) -> None:
    """Add a method to the vocabulary (after the ones declared before it)."""
    if _TITLES.get(name, title) != title:
        raise RuntimeError(f"method {name!r} declared with two titles: {_TITLES[name]!r} and {title!r}")
    _TITLES[name] = title


def forget(name: str) -> None:
    """Remove a method (a plug-in or a test cleaning up after itself)."""
    _TITLES.pop(name, None)


def names() -> tuple[str, ...]:
    """Every method name, in the paper's column order."""
    return tuple(_TITLES)


def key(method: str, labels: str | None = None) -> str:
    """``("expert", "teacher")`` -> ``"expert+teacher"``: a run on teacher labels is its own method."""
    return method + TEACHER_LABELS if labels == "teacher" else method


def split_key(k: str) -> tuple[str, str]:
    """``"expert+teacher"`` -> ``("expert", "teacher")``; ``"expert"`` -> ``("expert", "dataset")``."""
    if k.endswith(TEACHER_LABELS):
        return k[: -len(TEACHER_LABELS)], "teacher"
    return k, "dataset"


def title(k: str) -> str:
    """Display name of a method key: "fine-tune", "expert (teacher labels)"."""
    base, labels = split_key(k)
    name = _TITLES.get(base, base)
    return f"{name} (teacher labels)" if labels == "teacher" else name


def rank(k: str) -> tuple[int, int, str]:
    """Sort key: the paper's order, each teacher-label variant after the dataset-label block."""
    base, labels = split_key(k)
    order = names()
    return (int(labels == "teacher"), order.index(base) if base in order else len(order), base)
