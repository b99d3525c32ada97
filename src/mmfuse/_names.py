"""Input names -> keys that are safe as module names, state-dict keys and tensor names.

Input names come from the user's table, so they can be anything: ``Review.Text`` (R's
column names), ``a/b``, or ``type`` and ``training``, which are attributes of every
``nn.Module``. ``nn.ModuleDict`` refuses names with a dot and names of existing attributes,
and tensor names such as ``prep/<input>/<array>`` are split on ``/``. Every place that
turns an input name into a key uses :func:`safe_key`; everything the user sees keeps
the name itself.
"""
from __future__ import annotations

import re

__all__ = ["safe_key", "key_name"]  # and InputModuleDict (mmfuse._modules), imported on first use

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
        from torch import nn

        from ._modules import InputModuleDict

        _RESERVED = frozenset(dir(InputModuleDict())) | frozenset(dir(nn.ParameterDict()))
    return _RESERVED


def key_name(key: str) -> str:
    """The input name of a key: the inverse of :func:`safe_key`.

    >>> key_name("%Review%2EText"), key_name("review")
    ('Review.Text', 'review')
    """
    if not key.startswith("%"):
        return key
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), key[1:])


def __getattr__(name):  # InputModuleDict needs torch; the names themselves do not (mmfuse.onnx reads them)
    if name == "InputModuleDict":
        from ._modules import InputModuleDict

        return InputModuleDict
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
