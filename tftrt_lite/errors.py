"""Exceptions raised by tftrt_lite.

Every error a user can cause has its own type and a message that names the offending
path, key, node or option and, where it helps, lists what does exist. Each type also
derives from the built-in exception a caller would naturally catch (``ValueError``,
``FileNotFoundError``...), so generic handlers keep working.
"""


class TftrtLiteError(Exception):
    """Base class of every tftrt_lite error."""


class SavedModelNotFoundError(TftrtLiteError, FileNotFoundError):
    """The input path does not exist or holds no SavedModel."""


class InvalidSavedModelError(TftrtLiteError, ValueError):
    """The SavedModel exists but cannot be read (truncated, corrupt, too large)."""


class UnknownTagError(TftrtLiteError, ValueError):
    """No MetaGraph carries the requested tag set."""


class UnknownSignatureError(TftrtLiteError, KeyError):
    """The requested signature key is not in the SavedModel."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class NotSupportedYetError(TftrtLiteError, NotImplementedError):
    """An option whose machinery is not part of this release was requested."""


class ConversionError(TftrtLiteError, RuntimeError):
    """Conversion of a graph or segment failed."""


class UnsupportedOpError(TftrtLiteError, ValueError):
    """The engine builder met an op it cannot build; names the op and node."""


class OpLibraryError(TftrtLiteError, ImportError):
    """The TftrtLiteEngine op library is missing or was built for another TensorFlow."""


class UnsupportedModelError(TftrtLiteError, ValueError):
    """The engine builder cannot take this model as a whole (opset, domain, value types)."""


class ShapeError(TftrtLiteError, ValueError):
    """Shapes do not agree: inference found a conflict, a symbolic dimension cannot be
    resolved, or a run-time tensor does not match the engine's shapes."""


class FeedError(TftrtLiteError, ValueError):
    """The inputs given to an engine run do not match its inputs (names or dtypes)."""
