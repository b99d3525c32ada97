"""A small name -> factory registry shared by encoders, fusions and later components."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

from .errors import MmfuseError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. ``kind`` is used in error messages ("encoder", "fusion")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(factory):
            if name in self._entries:
                raise MmfuseError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            factory.registry_name = name
            return factory

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise MmfuseError(unknown_name_message(self.kind, name, self._entries)) from None

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


MAX_KNOWN_SHOWN = 20  # a table may have hundreds of columns: an error line lists this many


def unknown_name_message(kind: str, name, known) -> str:
    """``unknown encoder 'cnn'; known: a, b. Did you mean 'image_cnn'?``

    At most :data:`MAX_KNOWN_SHOWN` known names are listed (``known: a, b, ... (and 180 more)``);
    then up to three closest names are suggested instead of one, since the rest are not shown."""
    known = sorted(map(str, known))
    shown = known if len(known) <= MAX_KNOWN_SHOWN else known[:MAX_KNOWN_SHOWN] + ["..."]
    msg = f"unknown {kind} {name!r}; known: {', '.join(shown)}"
    if len(known) > MAX_KNOWN_SHOWN:
        msg += f" (and {len(known) - MAX_KNOWN_SHOWN} more)"
    n = 1 if len(known) <= MAX_KNOWN_SHOWN else 3
    close = difflib.get_close_matches(str(name), known, n=n, cutoff=0.5)
    if not close:  # substring match catches 'cnn' -> 'image_cnn'
        close = [k for k in known if str(name).lower() in k.lower()][:n]
    if close:
        msg += ". Did you mean " + (" or ".join(map(repr, close))) + "?"
    return msg


def parse_enum(enum_cls, value, what: str):
    """``enum_cls(value)`` or an MmfuseError that lists the allowed values and suggests one."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        raise MmfuseError(unknown_name_message(what, value, [m.value for m in enum_cls])) from None
