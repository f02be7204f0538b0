"""The method vocabulary the reports use, without torch: the methods' names in the paper's
column order, their display names, and the one key that tells a run trained on teacher
labels apart (``expert+teacher``, shown "expert (teacher labels)").

The paper's methods are declared here; :mod:`trainer.methods` holds their losses, and a
method registered there declares itself here too (its class's ``name`` and ``title``), so
that adding a method stays one class.
"""
from __future__ import annotations

#: where the CE targets come from: the dataset's labels, or g's arg-max on the clean crop
LABEL_SOURCES = ("dataset", "teacher")
#: --bn: ``train`` (batch statistics in training, running statistics updated: the paper's
#: code) or ``frozen`` (every layer with running statistics stays in eval mode: the pretrained
#: statistics are used and kept; the affine weights still train)
BN_MODES = ("train", "frozen")
#: appended to a method's name for runs trained on teacher labels (reports, recommend, summaries)
TEACHER_LABELS = "+teacher"

#: name -> display name, in the paper's column order (declaration order)
_TITLES: dict[str, str] = {}


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


# the paper's methods, in its column order (their losses: trainer.methods)
declare("pretrained", "pretrained")
declare("stability", "stability")
declare("finetune", "fine-tune")
declare("expert", "expert")
