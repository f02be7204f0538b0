"""Which model answers a received bitstream: the routing rule of the receiver, read from the
bitstream's content and the experts' training settings, never from a file name.

What is read from a bitstream (:func:`pipeline.codecs.probe`, headers only, the pixel budget
checked before anything is decoded): its codec by magic bytes, its rate in bits per pixel of
the decoded size, and the codec's own quality value where the format carries one (a JPEG's
IJG quality from its quantisation tables, a BPG's bpgenc q from its slice QP; JPEG 2000 and
the lossless formats carry none, and their rate tells the setting apart on its own).

What is known of an expert: its checkpoint's ``trained_on`` list (setting, codec, q, mean
bits per pixel), read with :func:`trainer.checkpoint.training_settings`.  A *specialist* was
trained on one setting, a *generalist* on several.

The rule, first match wins:

1. a specialist of the bitstream's codec trained at the quality the bitstream carries;
2. the specialist of that codec whose training rate is nearest, |log(bpp / expert bpp)|;
3. a generalist: one trained on the codec first, then the one trained on most settings;
4. the default model (``--default``).

Every decision says which model answers and why (:class:`Route`).  No torch here: the
routing experiment and the tests route without loading a model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.codecs import Probe
from pipeline.setting import Setting, SettingError

DEFAULT = "default"


class RouteError(ValueError):
    """An expert description that cannot be used for routing (one line, names the expert)."""


@dataclass(frozen=True)
class TrainedSetting:
    """One entry of a checkpoint's ``trained_on``, as routing uses it."""
    setting: str
    codec: str
    q: int | float | None = None
    bpp: float | None = None

    @classmethod
    def from_entry(cls, entry: dict, where: str) -> "TrainedSetting":
        """Validate a ``trained_on`` entry (untrusted: it comes from a file)."""
        try:
            s = Setting.parse(entry.get("setting"))
        except SettingError as exc:
            raise RouteError(f"{where}: trained_on: {exc}") from None
        return cls(s.name, s.codec, s.q, _rate(entry))

    @classmethod
    def named(cls, name: str, where: str) -> "TrainedSetting":
        """A setting known by its name only (its rate unknown)."""
        return cls.from_entry({"setting": name}, where)


def _rate(entry: dict) -> float | None:
    """Bits per pixel of an entry: ``bpp``, else 8 * bytes_per_image / pixels_per_image."""
    bpp = entry.get("bpp")
    if _positive(bpp):
        return float(bpp)
    b, px = entry.get("bytes_per_image"), entry.get("pixels_per_image")
    return 8.0 * b / px if _positive(b) and _positive(px) else None


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@dataclass(frozen=True)
class ExpertCard:
    """What routing knows of an expert: its name (the folder or path it was given as) and the
    settings it was trained on."""
    name: str
    settings: tuple[TrainedSetting, ...] = ()

    @property
    def specialist(self) -> bool:
        return len(self.settings) == 1

    @property
    def generalist(self) -> bool:
        return len(self.settings) > 1

    def describe(self) -> str:
        return ", ".join(s.setting for s in self.settings) or "unknown setting"


@dataclass(frozen=True)
class Route:
    """The model that answers (an expert's name, or ``default``) and the reason, in words."""
    expert: str
    reason: str
    setting: str | None = None      # the training setting the bitstream was matched to


def _bpp(x: float) -> str:
    return f"{x:.3g} bpp" if x < 10 else f"{x:.1f} bpp"


@dataclass
class Router:
    """The routing rule over a set of experts (cards) and a default."""
    cards: list[ExpertCard]
    _by_codec: dict[str, list[tuple[ExpertCard, TrainedSetting]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_codec = {}
        for card in self.cards:
            if card.specialist:
                s = card.settings[0]
                self._by_codec.setdefault(s.codec, []).append((card, s))

    def route(self, probe: Probe) -> Route:
        bpp = probe.bpp
        head = f"{probe.codec}, {_bpp(bpp)}"
        if probe.quality is not None:
            head += f", q {probe.quality:g} ({probe.quality_source})"
        candidates = self._by_codec.get(probe.codec, [])
        # 1. the quality the bitstream carries, when a specialist was trained at exactly it
        for card, s in candidates:
            if probe.quality is not None and s.q is not None and float(s.q) == float(probe.quality):
                return Route(card.name, f"{head}: expert of {s.setting}", s.setting)
        # 2. the nearest training rate
        rated = [(abs(math.log(bpp / s.bpp)), card.name, card, s) for card, s in candidates if s.bpp is not None]
        if rated:
            _, _, card, s = min(rated, key=lambda t: t[:2])
            return Route(card.name, f"{head}, nearest {_bpp(s.bpp)} ({s.setting})", s.setting)
        if candidates:  # specialists of the codec whose rate is unknown: the first by name
            card, s = min(candidates, key=lambda t: t[0].name)
            return Route(card.name, f"{head}: {s.setting} expert (its rate is unknown)", s.setting)
        # 3. a generalist, one that saw this codec first
        generalists = [c for c in self.cards if c.generalist]
        if generalists:
            def rank(c: ExpertCard):
                return (not any(s.codec == probe.codec for s in c.settings), -len(c.settings), c.name)
            g = min(generalists, key=rank)
            return Route(g.name, f"{head}: no {probe.codec} specialist; generalist ({len(g.settings)} settings)")
        # 4. the default model
        return Route(DEFAULT, f"{head}: no expert for {probe.codec}; default model")
