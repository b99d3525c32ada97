"""Input names -> keys that are safe as module names, state-dict keys and tensor names.

Input names come from the user's table, so they can be anything: ``Review.Text`` (R's
column names), ``a/b``, or ``type`` and ``training``, which are attributes of every
``nn.Module``. ``nn.ModuleDict`` refuses names with a dot and names of existing attributes,
and tensor names such as ``prep/<input>/<array>`` are split on ``/``. Every place that
turns an input name into a key uses :func:`safe_key`; everything the user sees keeps
the name itself.
"""
from __future__ import annotations

from typing import Iterator, Mapping

from torch import nn

__all__ = ["safe_key", "InputModuleDict"]

_ESCAPED = ".%/>"  # '.' splits module paths, '/' tensor names, '->' pairs of inputs; '%' marks an escaped key


def safe_key(name: str) -> str:
    """The key of an input: the name itself when it is safe, else ``%`` + the name with each of
    ``. % / >`` written as ``%XX`` (its hex code).

    Injective: a name kept as is has no ``%``, an escaped key starts with one and decodes
    uniquely. Ordinary names (``review``, ``photo``, ``Review Text``) are kept, so the
    state-dict keys of models built before escaping existed are unchanged.

    >>> safe_key("review"), safe_key("Review.Text"), safe_key("a/b"), safe_key("type")
    ('review', '%Review%2EText', '%a%2Fb', '%type')
    """
    if name and not any(c in _ESCAPED for c in name) and name not in _reserved():
        return name
    return "%" + "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in name)


_RESERVED: frozenset[str] | None = None


def _reserved() -> frozenset[str]:
    """Attribute names of the containers that hold per-input modules and parameters."""
    global _RESERVED
    if _RESERVED is None:
        _RESERVED = frozenset(dir(InputModuleDict())) | frozenset(dir(nn.ParameterDict()))
    return _RESERVED


class InputModuleDict(nn.ModuleDict):
    """An ``nn.ModuleDict`` indexed by input names, stored under their :func:`safe_key`.

    Indexing, ``in``, iteration, ``keys()`` and ``items()`` use the input names; the module
    names (and so the state-dict keys) are the safe keys.
    """

    def __init__(self, modules: Mapping[str, nn.Module] | None = None):
        super().__init__()
        self._names: dict[str, str] = {}  # safe key -> input name
        for name, module in (modules or {}).items():
            self[name] = module

    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[safe_key(name)]

    def __setitem__(self, name: str, module: nn.Module) -> None:
        key = safe_key(name)
        self.add_module(key, module)
        self._names[key] = name

    def __delitem__(self, name: str) -> None:
        key = safe_key(name)
        del self._modules[key]
        del self._names[key]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and safe_key(name) in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter([self._names[k] for k in self._modules])

    def keys(self):
        return list(self)

    def items(self):
        return [(self._names[k], m) for k, m in self._modules.items()]
