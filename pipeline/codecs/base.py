"""The one interface every codec implements, and the registry that finds codecs by name.

A codec turns a H×W×3 uint8 RGB array into the bytes that would be transmitted, and those
bytes back into pixels.  x̃ is always what ``decode(encode(x))`` returns: never an encoder's
internal reconstruction, so what is measured is what a receiver would see.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from ..setting import Setting


class CodecError(ValueError):
    """Bad codec setting or undecodable bitstream (the message says which)."""


class Codec(abc.ABC):
    #: registry name, e.g. "jpeg"
    name: ClassVar[str]
    #: extension of the bitstream inside a shard sample ("comp.<ext>")
    ext: ClassVar[str]
    #: leading bytes that identify this codec's bitstreams (content sniffing)
    magics: ClassVar[tuple[bytes, ...]] = ()
    #: inclusive range of the quality value; None means the codec takes no quality
    q_range: ClassVar[tuple[float, float] | None] = None
    q_integer: ClassVar[bool] = True
    q_meaning: ClassVar[str] = "quality"
    #: a valid q used when an instance is needed only to decode
    default_q: ClassVar[float | None] = None
    #: codec options: name -> (type, default, help); the CLI's ``--option name=value``
    options_spec: ClassVar[dict[str, tuple[type, Any, str]]] = {}
    #: allowed values of str options, name -> choices
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, q: float | None = None, **options: Any):
        self.q = self.validate_q(q)
        self.options = self.validate_options(options)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(cls.options_spec))
        if unknown:
            known = ", ".join(cls.options_spec) or "none"
            raise CodecError(f"codec {cls.name!r} has no option {', '.join(unknown)} (options: {known})")
        resolved = {}
        for key, (typ, default, _help) in cls.options_spec.items():
            value = _coerce(cls.name, key, typ, options.get(key, default))
            choices = cls.option_choices.get(key)
            if choices is not None and value not in choices:
                raise CodecError(f"codec {cls.name!r}: option {key}={value!r} is not one of {', '.join(choices)}")
            resolved[key] = value
        return resolved

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
        except (TypeError, ValueError):
            raise CodecError(f"codec {cls.name!r}: {cls.q_meaning} must be a number, got {q!r}") from None
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
    def decode(self, data: bytes) -> np.ndarray:
        """Bytes from :meth:`encode` -> H×W×3 uint8 RGB; raises CodecError on bad data."""

    def params(self) -> dict[str, Any]:
        """Every parameter that determines the bitstream (written into manifests)."""
        return {"q": self.q, **self.options}

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the libraries behind this codec (written into manifests)."""
        return {}

    @classmethod
    def sniff(cls, data: bytes) -> bool:
        return any(data.startswith(m) for m in cls.magics)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


def _coerce(codec: str, key: str, typ: type, value: Any) -> Any:
    """Option values arrive as strings from the command line; give them their type."""
    if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    text = str(value).strip().lower()
    try:
        if typ is bool:
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return typ(value)
    except (TypeError, ValueError):
        raise CodecError(f"codec {codec!r}: option {key}={value!r} is not a valid {typ.__name__}") from None


_REGISTRY: dict[str, type[Codec]] = {}


def register(cls: type[Codec]) -> type[Codec]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"two codecs registered as {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Codec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; available: {', '.join(available())}") from None


def create(name: str, q: Any = None, **options: Any) -> Codec:
    return get(name)(q, **options)


def detect(data: bytes) -> type[Codec]:
    """The codec whose bitstream this is, judged by content, not by file name."""
    for cls in _REGISTRY.values():
        if cls.sniff(data):
            return cls
    head = bytes(data[:8]).hex(" ") if data else "empty input"
    raise CodecError(f"not a bitstream of any known codec ({', '.join(available())}): starts with {head}")


_DECODERS: dict[type[Codec], Codec] = {}


def decode_any(data: bytes) -> np.ndarray:
    """Decode a JPEG / JPEG 2000 / BPG / PNG bitstream, recognised by its content."""
    cls = detect(data)
    if cls not in _DECODERS:
        _DECODERS[cls] = cls(cls.default_q)
    return _DECODERS[cls].decode(data)
