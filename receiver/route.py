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
        """Validate a ``trained_on`` entry (untrusted: it comes from a file): a setting of a
        registered codec, its quality within the codec's range, and a rate that is either absent
        or a sane number of bits per pixel (checked on the value computed, not only its parts)."""
        from pipeline.codecs import CodecError, get

        try:
            s = Setting.parse(entry.get("setting"))
        except SettingError as exc:
            raise RouteError(f"{where}: trained_on: {exc}") from None
        try:
            codec = get(s.codec)
            if s.q is not None or codec.q_range is not None:
                codec.validate_q(s.q)
        except CodecError as exc:
            raise RouteError(f"{where}: trained_on: setting {s.name}: {exc}") from None
        return cls(s.name, s.codec, s.q, _rate(entry, f"{where}: trained_on: {s.name}"))

    @classmethod
    def named(cls, name: str, where: str) -> "TrainedSetting":
        """A setting known by its name only (its rate unknown)."""
        return cls.from_entry({"setting": name}, where)


#: the rates a trained setting may claim: a 224² crop at a few bytes up to 16-bit RGB with room
#: to spare.  Anything outside is not a rate but a corrupt or hostile file.
MIN_BPP, MAX_BPP = 1e-4, 64.0


def _rate(entry: dict, where: str) -> float | None:
    """Bits per pixel of an entry: ``bpp``, else 8 * bytes_per_image / pixels_per_image; None
    when the entry gives neither; RouteError for a rate that is not a number in
    [MIN_BPP, MAX_BPP] (inf, NaN, 0, 10**400, or a ratio of such parts)."""
    bpp = entry.get("bpp")
    if bpp is None:
        b, px = entry.get("bytes_per_image"), entry.get("pixels_per_image")
        if b is None or px is None:
            return None
        b, px = _number(b, "bytes_per_image", where), _number(px, "pixels_per_image", where)
        try:
            bpp = 8.0 * b / px
        except (ZeroDivisionError, OverflowError):
            raise RouteError(f"{where}: bytes_per_image {b!r} / pixels_per_image {px!r} is not a rate") from None
    else:
        bpp = _number(bpp, "bpp", where)
    if not (math.isfinite(bpp) and MIN_BPP <= bpp <= MAX_BPP):
        raise RouteError(f"{where}: a rate of {bpp!r} bits per pixel is outside [{MIN_BPP:g}, {MAX_BPP:g}]")
    return float(bpp)


def _number(x, key: str, where: str) -> float:
    """A finite float of a number read from a file (10**400 and bools refused, not raised on)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RouteError(f"{where}: {key} must be a number, got {type(x).__name__}")
    try:
        value = float(x)
    except OverflowError:
        raise RouteError(f"{where}: {key} is too large to be a number of this kind") from None
    if not math.isfinite(value):
        raise RouteError(f"{where}: {key} must be finite, got {value!r}")
    return value


def trained_settings(entries: list[dict], where: str) -> tuple[TrainedSetting, ...]:
    """The settings a checkpoint's ``trained_on`` says it was trained on: those of weight > 0
    (a setting weighted 0 was never sampled), each once (a repeat is refused: it would turn a
    specialist into a "generalist" and win the most-settings rule by repetition)."""
    out: list[TrainedSetting] = []
    for e in entries:
        w = e.get("weight")
        if w is not None:
            w = _number(w, "weight", f"{where}: trained_on: {e.get('setting')}")
            if w < 0:
                raise RouteError(f"{where}: trained_on: {e.get('setting')}: a negative weight ({w:g})")
            if w == 0:
                continue
        out.append(TrainedSetting.from_entry(e, where))
    check_unique([s.setting for s in out], f"{where}: trained_on")
    return tuple(out)


def check_unique(names: list[str], where: str) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RouteError(f"{where}: setting(s) listed more than once: {', '.join(dup)}")


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
    cell: str | None = None         # a calibrated routing table's cell (receiver.routing_table)


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
