"""The one interface every codec implements, and the registry that finds codecs by name.

A codec turns a H×W×3 uint8 RGB array into the bytes that would be transmitted, and those
bytes back into pixels.  x̃ is always what ``decode(encode(x))`` returns: never an encoder's
internal reconstruction, so what is measured is what a receiver would see.

Options are declared once, as :class:`Option` entries of ``Codec.options_spec`` (type,
default, help, and the valid range or choices); validation, the command line's
``-o key=value`` and ``python -m pipeline codecs`` all read that one declaration.
Every decoder reads from the header what decoding will cost (size, tiles, frames,
components, scans: :meth:`Codec.header`) and checks it against the decode budget it is
handed (:class:`pipeline.limits.DecodeBudget`) before decoding anything.
"""
from __future__ import annotations

import abc
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from ..limits import DEFAULT_BUDGET, DecodeBudget, PixelBudgetError
from ..registry import Registry
from ..setting import Setting
from .headers import Header


class CodecError(ValueError):
    """Bad codec setting or undecodable bitstream (the message says which)."""


class PictureTooLargeError(CodecError, PixelBudgetError):
    """A bitstream whose header announces more pixels than the pixel budget allows."""


@dataclass(frozen=True)
class Option:
    """One codec option: its type, default and help, and what values are valid."""
    type: type
    default: Any
    help: str
    #: inclusive bounds of a numeric option (None: unbounded)
    range: tuple[float, float] | None = None
    #: the allowed values of a str option
    choices: tuple[str, ...] | None = None
    #: bookkeeping options that never change the bitstream stay out of params()
    in_params: bool = True

    def describe(self) -> str:
        if self.choices:
            allowed = "one of " + ", ".join(self.choices)
        elif self.range:
            allowed = f"{self.type.__name__} in [{self.range[0]:g}, {self.range[1]:g}]"
        else:
            allowed = self.type.__name__
        return f"{allowed}; default {self.default!r}"

    def validate(self, codec: str, key: str, value: Any) -> Any:
        value = _coerce(codec, key, self.type, value)
        if value is None:
            return value
        if self.choices is not None and value not in self.choices:
            raise CodecError(f"codec {codec!r}: option {key}={value!r} is not one of {', '.join(self.choices)}")
        if self.range is not None:
            lo, hi = self.range
            if not lo <= value <= hi:
                raise CodecError(f"codec {codec!r}: option {key}={value!r} is outside [{lo:g}, {hi:g}]")
        return value


@dataclass(frozen=True)
class Probe:
    """What a bitstream's headers say, read without decoding its picture: the codec (by
    content), the picture size, and the codec's own quality value where the format carries
    one (``quality_source`` says where it was read)."""
    codec: str
    width: int
    height: int
    bytes: int
    quality: int | float | None = None
    quality_source: str | None = None

    @property
    def bpp(self) -> float:
        """Bits per pixel of the decoded size: the rate, whatever the picture's size."""
        return 8.0 * self.bytes / (self.width * self.height)


class Codec(abc.ABC):
    #: registry name, e.g. "jpeg"
    name: ClassVar[str]
    #: the name tables, figures and help texts show, e.g. "JPEG 2000"
    title: ClassVar[str]
    #: where tables, figures and help texts put it (:func:`in_order`): the reference (lossless)
    #: first, then the paper's codecs, then the others
    order: ClassVar[int]
    #: extension of the bitstream inside a shard sample ("comp.<ext>")
    ext: ClassVar[str]
    #: every extension its bitstreams may have in a shard (default: just ``ext``)
    extensions: ClassVar[tuple[str, ...]] = ()
    #: leading bytes that identify this codec's bitstreams (content sniffing)
    magics: ClassVar[tuple[bytes, ...]] = ()
    #: inclusive range of the quality value; None means the codec takes no quality
    q_range: ClassVar[tuple[float, float] | None] = None
    q_integer: ClassVar[bool] = True
    q_meaning: ClassVar[str] = "quality"
    #: a valid q used when an instance is needed only to decode
    default_q: ClassVar[float | None] = None
    #: codec options by name; the CLI's ``--option name=value``
    options_spec: ClassVar[dict[str, Option]] = {}
    #: the Pillow plugins that may open this codec's bitstreams (decoding and probing)
    pil_formats: ClassVar[tuple[str, ...]] = ()
    #: the project's own reader of the header's counts (:mod:`.headers`, raising ValueError), for
    #: formats whose decoder allocates as soon as it opens a file; None: Pillow's lazy open
    header_reader: ClassVar[Callable[[bytes], Header] | None] = None

    def __init__(self, q: float | None = None, **options: Any):
        self.q = self.validate_q(q)
        self.options = self.validate_options(options)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls.options_spec))
        if unknown:
            known = ", ".join(cls.options_spec) or "none"
            raise CodecError(f"codec {cls.name!r} has no option {', '.join(unknown)} (options: {known})")
        return {key: opt.validate(cls.name, key, options.get(key, opt.default))
                for key, opt in cls.options_spec.items()}

    @classmethod
    def validate_q(cls, q: Any) -> float | int | None:
        if cls.q_range is None:
            if q is not None:
                raise CodecError(f"codec {cls.name!r} takes no quality value (got {q!r})")
            return None
        lo, hi = cls.q_range
        if q is None:
            raise CodecError(f"codec {cls.name!r} needs a {cls.q_meaning} value in [{lo:g}, {hi:g}]")
        try:
            value = float(q)
        except (TypeError, ValueError, OverflowError):
            raise CodecError(f"codec {cls.name!r}: {cls.q_meaning} must be a finite number, got {q!r}") from None
        if not math.isfinite(value):
            raise CodecError(f"codec {cls.name!r}: {cls.q_meaning} must be a finite number, got {q!r}")
        if cls.q_integer:
            if value != int(value):
                raise CodecError(f"codec {cls.name!r}: {cls.q_meaning} must be an integer, got {q!r}")
            value = int(value)
        if not lo <= value <= hi:
            raise CodecError(f"codec {cls.name!r}: {cls.q_meaning} {q!r} is outside [{lo:g}, {hi:g}]")
        return value

    @property
    def setting(self) -> str:
        """Folder name of this setting: ``<codec>-<q>`` (``lossless`` when there is no q)."""
        return Setting(self.name, self.q).name

    @abc.abstractmethod
    def encode(self, rgb: np.ndarray) -> bytes:
        """H×W×3 uint8 RGB -> the bytes that would be transmitted (whole file, headers included)."""

    @abc.abstractmethod
    def decode(self, data: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
        """Bytes from :meth:`encode` -> H×W×3 uint8 RGB; raises CodecError on bad data, and
        PictureTooLargeError (before decoding) when the header is over ``budget`` (None: the
        default :class:`~pipeline.limits.DecodeBudget`)."""

    def params(self) -> dict[str, Any]:
        """Every parameter that determines the bitstream (written into manifests)."""
        return {"q": self.q, **{k: v for k, v in self.options.items() if self.options_spec[k].in_params}}

    @classmethod
    def describe(cls) -> list[str]:
        """What ``python -m pipeline codecs`` prints: the q range and every option's range."""
        q = "no q" if cls.q_range is None else f"q in [{cls.q_range[0]:g}, {cls.q_range[1]:g}] ({cls.q_meaning})"
        lines = [f"{cls.name}: {q}"]
        for key, opt in cls.options_spec.items():
            lines.append(f"    -o {key}=<{opt.type.__name__}>  {opt.describe()}: {opt.help}")
        return lines

    @classmethod
    def header(cls, data: bytes, budget: DecodeBudget | None = None) -> Header:
        """What the header says decoding will cost, checked against ``budget`` before anything
        is decoded: CodecError when the header cannot be read, PictureTooLargeError when a
        count is over its bound.  ``header_reader`` when the codec has one, else Pillow's lazy
        open (which reads the header only)."""
        if cls.header_reader is not None:
            try:
                h = cls.header_reader(data)
            except CodecError:
                raise
            except ValueError as exc:
                raise CodecError(f"undecodable {cls.name} data ({len(data)} bytes): {exc}") from None
        else:
            h = pil_header(data, cls.name, cls.pil_formats)
        cls.check_budget(h, budget)
        return h

    @classmethod
    def check_budget(cls, h: Header, budget: DecodeBudget | None = None) -> None:
        """Every count of a header against its bound (PictureTooLargeError naming it)."""
        check_header(h, budget, f"{cls.name} picture")

    @classmethod
    def probe(cls, data: bytes, budget: DecodeBudget | None = None) -> Probe:
        """The header's size (checked against the budget, :meth:`header`) and quality, nothing decoded."""
        h = cls.header(data, budget)
        return Probe(cls.name, h.width, h.height, len(data), *cls.quality(data))

    @classmethod
    def quality(cls, data: bytes) -> tuple[Any, str | None]:
        """(quality, where it was read) when the format carries one; (None, None) by default."""
        return None, None

    def versions(self) -> dict[str, str]:
        """Versions of the libraries (or tools) behind this codec (written into manifests)."""
        return {}

    @classmethod
    def file_extensions(cls) -> tuple[str, ...]:
        return cls.extensions or (cls.ext,)

    @classmethod
    def sniff(cls, data: bytes) -> bool:
        return any(data.startswith(m) for m in cls.magics)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


def _coerce(codec: str, key: str, typ: type, value: Any) -> Any:
    """Option values arrive as strings from the command line; give them their type."""
    if value is None:
        return value
    bad = CodecError(f"codec {codec!r}: option {key}={value!r} is not a valid {typ.__name__}")
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise bad
    if isinstance(value, bool):
        raise bad
    if typ is int:
        try:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not (math.isfinite(number) and number == int(number)):
                raise ValueError
            return int(number)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
    if typ is float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(number):
            raise bad
        return number
    try:
        return typ(value)
    except (TypeError, ValueError):
        raise bad from None


def check_header(h: Header, budget: DecodeBudget | None, what: str) -> None:
    """Every count of a header against its bound of ``budget`` (None: the default budget):
    PictureTooLargeError naming the count and the bound."""
    budget = budget or DEFAULT_BUDGET
    try:
        budget.check_pixels(h.width, h.height, what)
        if h.frames is None:
            raise PixelBudgetError(f"{what}: an animation whose frame count no header gives (its first "
                                   "shown frame may blend any number of frames); refused")
        for bound in ("tiles", "frames", "components", "scans"):
            budget.check(bound, getattr(h, bound), what)
    except PixelBudgetError as exc:
        raise PictureTooLargeError(str(exc)) from None


def _pil_header(img) -> Header:
    # a camera's multi-picture JPEG (MPO: a preview, a depth or gain map after the photo) is one
    # picture, not an animation: its other pictures are never decoded
    frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)
    return Header(*img.size, frames=frames, components=len(img.getbands()))


def pil_header(data: bytes, name: str, formats: Sequence[str]) -> Header:
    """A header read by Pillow's lazy open (size, frames, bands), nothing decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as img:
            return _pil_header(img)
    except Image.DecompressionBombError as exc:   # Pillow's own bound, far above ours: over budget too
        raise PictureTooLargeError(f"{name} picture: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hostile data must end in CodecError, whatever broke
        raise CodecError(f"unreadable {name} header ({len(data)} bytes): {exc}") from None


def pil_decode(data: bytes, what: str, formats: Sequence[str], budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode the first picture with Pillow, opening only the named ``formats`` (EPS and friends
    never reach their plugins), after checking what Pillow's open read of the header (size,
    frames, bands) against the budget, and convert it to RGB the pipeline's way
    (:func:`pipeline.pixels.to_rgb`: 16-bit scaled, colour behind alpha composited over white)."""
    from PIL import Image

    from ..pixels import to_rgb

    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as img:
            check_header(_pil_header(img), budget, f"{what} picture")
            img.load()
            # to_rgb() leaves an RGB picture as it is: no copy per decoded image in the loader
            return np.asarray(to_rgb(img))
    except PixelBudgetError:
        raise
    except Image.DecompressionBombError as exc:
        raise PictureTooLargeError(f"{what} picture: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - hostile data must end in CodecError, whatever broke
        raise CodecError(f"undecodable {what} data ({len(data)} bytes): {exc}") from exc


REGISTRY: Registry[type[Codec]] = Registry("codec", CodecError)
register = REGISTRY.register
get = REGISTRY.get


def available() -> list[str]:
    return sorted(REGISTRY.names())


def in_order() -> list[type[Codec]]:
    """The registered codecs in the order tables, figures and help texts show them."""
    return sorted(REGISTRY, key=lambda cls: (cls.order, cls.name))


def create(name: str, q: Any = None, **options: Any) -> Codec:
    return get(name)(q, **options)


def detect(data: bytes) -> type[Codec]:
    """The codec whose bitstream this is, judged by content, not by file name."""
    for cls in REGISTRY:
        if cls.sniff(data):
            return cls
    head = bytes(data[:8]).hex(" ") if data else "empty input"
    raise CodecError(f"not a bitstream of any known codec ({', '.join(available())}): starts with {head}")


_DECODERS: dict[type[Codec], Codec] = {}


def probe(data: bytes, budget: DecodeBudget | None = None) -> Probe:
    """:meth:`Codec.probe` of the codec this bitstream belongs to (by content)."""
    return detect(data).probe(data, budget)


def decode_any(data: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode a bitstream of any registered codec (:func:`in_order`), recognised by its content,
    within ``budget`` (None: the default decode budget)."""
    return decode_as(detect(data), data, budget)


def decode_as(cls: type[Codec], data: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
    """Decode a bitstream already recognised as ``cls``'s (:func:`probe` names it), with that
    codec's decoder (one per codec, made on first use), within ``budget``."""
    if cls not in _DECODERS:
        _DECODERS[cls] = cls(cls.default_q)
    return _DECODERS[cls].decode(data, budget)
