"""Containers of per-input modules, stored under safe keys (see :mod:`mmfuse._names`)."""
from __future__ import annotations

from typing import Iterator, Mapping

from torch import nn

from ._names import safe_key

__all__ = ["InputModuleDict"]


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
