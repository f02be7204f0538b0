"""Classes by name: the one registry behind codecs (``pipeline.codecs``) and training methods
(``trainer.methods``).  A string that picks behaviour is looked up here, never in an if-chain."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``REG = Registry("codec", CodecError)``; ``@REG.register`` on a class with a ``name``;
    ``REG.get(name)`` (unknown names raise ``error`` listing the known ones); iteration and
    ``names()`` keep registration order."""

    def __init__(self, kind: str, error: Callable[[str], Exception] = KeyError):
        self.kind, self.error = kind, error
        self._classes: dict[str, T] = {}

    def register(self, cls: T) -> T:
        name = cls.name
        if name in self._classes and self._classes[name] is not cls:
            raise RuntimeError(f"two {self.kind}s registered as {name!r}")
        self._classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Remove a class (tests and plug-ins that clean up after themselves)."""
        self._classes.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._classes[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join(self._classes)}") from None

    def names(self) -> list[str]:
        return list(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[T]:
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)
