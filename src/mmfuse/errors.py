"""Exceptions raised by mmfuse.

Every user-facing error subclasses :class:`MmfuseError`, which is a ``ValueError``, so
callers can catch it as a built-in. The command line prints these as one line.
"""
from __future__ import annotations

__all__ = ["MmfuseError", "InputError", "SchemaError", "BundleError", "NotFittedError", "MissingDependencyError",
           "Interrupted"]


class MmfuseError(ValueError):
    """Base class of the errors mmfuse raises on bad input or bad configuration."""


class Interrupted(MmfuseError):
    """A long run (a search) was stopped by Ctrl-C; the message says what was kept and how to resume.
    The command line prints it and exits with 130, as a shell does for Ctrl-C."""


class SchemaError(MmfuseError):
    """A table, schema or settings file cannot be used as given (missing target, duplicate
    columns, a file that is empty, damaged or of another format, ...)."""


class BundleError(MmfuseError):
    """A bundle folder cannot be loaded: it is missing, not a bundle, damaged or of another format version."""


class InputError(MmfuseError):
    """One cell of the table cannot be read.

    The message names the row, the column, the file (when there is one), the reason and
    the fix. The parts are also kept as attributes so that a policy can record them.

    Args:
        row: Row id (the table's index label) of the bad cell.
        column: Column name.
        reason: What is wrong, for example ``"file does not exist"``.
        file: The path as written in the cell, if the cell holds a path.
        resolved: The absolute path the cell resolved to.
        hint: How to fix it.
    """

    def __init__(self, row=None, column: str | None = None, reason: str = "", file: str | None = None,
                 resolved: str | None = None, hint: str | None = None):
        self.row, self.column, self.reason = row, column, reason
        self.file, self.resolved, self.hint = file, resolved, hint
        super().__init__(self._format())

    def _format(self) -> str:
        parts = []
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        where = ", ".join(parts)
        msg = f"{where}: " if where else ""
        if self.file is not None:
            msg += f"file {self.file!r} "
        msg += self.reason
        if self.resolved is not None and self.resolved != self.file:
            msg += f" (resolved to {self.resolved})"
        if self.hint:
            msg += f". {self.hint}"
        return msg

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (_rebuild_input_error, (self.row, self.column, self.reason, self.file, self.resolved, self.hint))

    def to_dict(self) -> dict:
        return {"row": _jsonable(self.row), "column": self.column, "file": self.file, "reason": self.reason}


def _rebuild_input_error(*args):
    return InputError(*args)


def _jsonable(v):
    try:
        return v.item()  # numpy scalar
    except AttributeError:
        return v


class NotFittedError(MmfuseError, AttributeError):
    """A component was used before ``fit``. Catchable as ``ValueError`` or ``AttributeError``."""


class MissingDependencyError(MmfuseError, ImportError):
    """An optional dependency is not installed; the message gives the install command."""


def require(module: str, extra: str):
    """Import an optional dependency or fail with the exact install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{module!r} is required for this feature but is not installed; run: pip install 'mmfuse[{extra}]'"
        ) from e
