"""The name of a codec setting — ``jpeg-10``, ``j2k-200``, ``bpg-41``, ``lossless`` — in one place.

A setting is a codec and its quality value.  Its name is the folder the shards of that
setting live in (``OUT/<split>/<name>/``), the ``setting`` of a manifest, the column of an
evaluation row and the label of a plot, so every module formats and parses it here.

Names read from files (manifests, results) are untrusted: :meth:`Setting.parse` accepts
only ``<codec>[-<number>]`` with a lower-case codec name, so a parsed name can never hold
a path separator, ``..`` or anything else that would escape a folder when used in a path.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

LOSSLESS = "lossless"
#: Table 1 of the paper: the reference and its nine codec settings.  ``paper`` in a list of
#: names (``--settings paper``, ``make shards-paper``) stands for all of them.
PAPER_SETTINGS = (LOSSLESS, "jpeg-75", "jpeg-10", "jpeg-5", "j2k-75", "j2k-200", "j2k-400",
                  "bpg-41", "bpg-46", "bpg-51")
PAPER = "paper"
#: WebP, AVIF and JPEG XL at the rates of the paper's j2k-75, j2k-200 and j2k-400 (2003, 761
#: and 390 bytes a crop): for each rate, the quality whose mean bytes on Imagenette val crops
#: come closest (bisected on 300 crops, checked against q - 1 and q + 1 on 1000).  None of the three gets down to 761 bytes on a 224² crop (their lowest
#: quality makes 900-1300 bytes), so its lowest quality stands for both j2k-200 and j2k-400.
#: docs/codecs.md has the numbers; ``experiments/extended_settings.py`` finds and checks them.
#: ``--settings extended``.
EXTENDED_SETTINGS = ("webp-7", "webp-0", "avif-28", "avif-0", "jxl-13", "jxl-0")
EXTENDED = "extended"
#: names that stand for a set of settings in a list of names
SETTING_SETS = {PAPER: PAPER_SETTINGS, EXTENDED: EXTENDED_SETTINGS}

_CODEC = re.compile(r"[a-z][a-z0-9_]*")
_NAME = re.compile(r"(?P<codec>[a-z][a-z0-9_]*)(?:-(?P<q>\d+(?:\.\d+)?))?")


class SettingError(ValueError):
    """A string that is not a setting name (the message says what a name looks like)."""


def format_q(q: float | int) -> str:
    """10 -> "10", 10.0 -> "10", 37.5 -> "37.5": never an exponent, so names parse back."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q < 0:
        raise SettingError(f"a setting's quality value must be a finite number >= 0, got {q!r}")
    if float(q).is_integer():
        return str(int(q))
    text = f"{q:.12f}".rstrip("0").rstrip(".")
    if float(text) != float(q):
        raise SettingError(f"quality value {q!r} has too many digits for a setting name")
    return text


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class Setting:
    """``Setting("jpeg", 10).name == "jpeg-10"``; ``Setting.parse("j2k-200") == Setting("j2k", 200)``."""

    codec: str
    q: int | float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.codec, str) or not _CODEC.fullmatch(self.codec):
            raise SettingError(f"not a codec name: {self.codec!r} (lower-case letters, digits, _)")
        if self.q is not None:
            format_q(self.q)  # validates
            object.__setattr__(self, "q", _number(format_q(self.q)))

    @property
    def name(self) -> str:
        return self.codec if self.q is None else f"{self.codec}-{format_q(self.q)}"

    @property
    def lossless(self) -> bool:
        return self.codec == LOSSLESS

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``"jpeg-10"`` -> Setting("jpeg", 10); ``"lossless"`` -> Setting("lossless")."""
        m = _NAME.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise SettingError(f"not a setting name: {text!r} (expected <codec>-<q> such as jpeg-10, "
                               f"j2k-200, bpg-41, or {LOSSLESS})")
        q = m.group("q")
        return cls(m.group("codec"), None if q is None else _number(q))

    @classmethod
    def parse_list(cls, text: str | Iterable[str]) -> list["Setting"]:
        """``"jpeg-75,jpeg-10,lossless"`` (or a list of names) -> settings, duplicates refused;
        ``paper`` stands for :data:`PAPER_SETTINGS`, ``extended`` for :data:`EXTENDED_SETTINGS`."""
        parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
        parts = [n for p in parts for n in SETTING_SETS.get(p, (p,))]
        out = [cls.parse(p) for p in parts if p]
        if not out:
            raise SettingError(f"no setting names in {text!r}")
        names = [s.name for s in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SettingError(f"setting(s) listed twice: {', '.join(dup)}")
        return out


def is_setting_name(text: str) -> bool:
    try:
        Setting.parse(text)
    except SettingError:
        return False
    return True
