"""The calibration table: one symmetric range ``amax`` per activation tensor, as a file.

Why a file of its own: calibration runs the engine IR over the user's calibration batches,
which is the slow part of an INT8 conversion; the table it leaves is small and is what the
engine builder needs (``scale = amax / 127``). Keeping it as a versioned JSON document lets a
conversion reuse it (``save``/``load``) and lets a converted SavedModel carry it as an asset
(``to_bytes``/``from_bytes``), so the ranges an engine was built with can always be read back.

Format (UTF-8 JSON object, keys sorted)::

    {"format": "tftrt_lite.calibration_table", "version": 1,
     "algorithm": "entropy", "num_batches": 8, "num_samples": 256, "model": "<fingerprint>",
     "amax": {"conv1/Relu:0": 6.02, ...}, "warnings": {"t": "ignored 3 non-finite value(s) ..."}}

Every table is validated when built, so an invalid one cannot exist in memory; reading a
file or bytes reports the first problem together with where the table came from.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import types
from typing import Any, Dict, Mapping, Union

from tftrt_lite.errors import TftrtLiteError
from tftrt_lite.fileutil import write_atomically

FORMAT = "tftrt_lite.calibration_table"
FORMAT_VERSION = 1

_REQUIRED = ("format", "version", "algorithm", "num_batches", "num_samples", "amax")
_OPTIONAL = ("model", "warnings")


class CalibrationTableError(TftrtLiteError, ValueError):
    """A calibration table (in memory, in a file or in bytes) is malformed; names the problem
    and where the table came from."""


@dataclasses.dataclass(frozen=True)
class CalibrationTable:
    """Activation ranges from one calibration run, plus what is needed to judge them.

    ``amax``: tensor name → symmetric range (finite, > 0), in the engine IR's tensor names.
    ``algorithm``: how the ranges were chosen (``"entropy"``, ``"percentile"``, ``"max"``).
    ``num_batches`` / ``num_samples``: how much data they rest on.
    ``model``: a free-form fingerprint of the model the ranges belong to, so a stale table can
    be recognised; empty when unknown.
    ``warnings``: tensor name → what was odd about that tensor's data (non-finite values,
    all zeros); each name must also be in ``amax``.

    The mappings are read-only views; use ``dataclasses.replace`` to derive a changed table.
    """

    amax: Mapping[str, float]
    algorithm: str
    num_batches: int
    num_samples: int
    model: str = ""
    warnings: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "amax", types.MappingProxyType(_check_amax(self.amax)))
        if not isinstance(self.algorithm, str) or not self.algorithm:
            raise CalibrationTableError(f"'algorithm' must be a non-empty string, got {self.algorithm!r}")
        for key in ("num_batches", "num_samples"):
            value = getattr(self, key)
            if not _is_int(value) or value < 0:
                raise CalibrationTableError(f"{key!r} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, key, int(value))
        if not isinstance(self.model, str):
            raise CalibrationTableError(f"'model' must be a string, got {type(self.model).__name__}")
        object.__setattr__(self, "warnings", types.MappingProxyType(_check_warnings(self.warnings, self.amax)))

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document (plain dicts), with format marker and version."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "algorithm": self.algorithm,
                "num_batches": self.num_batches, "num_samples": self.num_samples, "model": self.model,
                "amax": dict(self.amax), "warnings": dict(self.warnings)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration table") -> "CalibrationTable":
        """Validate a parsed document; errors start with ``source`` (a path, or what the bytes were)."""
        try:
            return cls._from_dict(data)
        except CalibrationTableError as e:
            raise CalibrationTableError(f"{source}: {e}") from None

    @classmethod
    def _from_dict(cls, data: Any) -> "CalibrationTable":
        if not isinstance(data, dict):
            raise CalibrationTableError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise CalibrationTableError(
                f"not a tftrt_lite calibration table ('format' is {data.get('format')!r}, expected {FORMAT!r})")
        version = data.get("version")
        if not _is_int(version):
            raise CalibrationTableError(f"'version' must be an integer, got {version!r}")
        if version != FORMAT_VERSION:
            newer = " (written by a newer tftrt_lite)" if version > FORMAT_VERSION else ""
            raise CalibrationTableError(
                f"unsupported format version {version}{newer}; this tftrt_lite reads version {FORMAT_VERSION}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise CalibrationTableError(f"missing key(s): {', '.join(missing)}")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise CalibrationTableError(
                f"unknown key(s): {', '.join(unknown)}; known: {', '.join(_REQUIRED + _OPTIONAL)}")
        return cls(amax=data["amax"], algorithm=data["algorithm"], num_batches=data["num_batches"],
                   num_samples=data["num_samples"], model=data.get("model", ""),
                   warnings=data.get("warnings", {}))

    def to_bytes(self) -> bytes:
        """UTF-8 JSON, keys sorted: equal tables give equal bytes (stable asset fingerprints)."""
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "calibration table bytes") -> "CalibrationTable":
        """Parse and validate :meth:`to_bytes` output; errors start with ``source``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{source}: expected bytes, got {type(data).__name__}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise CalibrationTableError(f"{source}: not UTF-8 text ({e})") from None
        try:
            document = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as e:
            raise CalibrationTableError(f"{source}: not valid JSON ({e})") from None
        except CalibrationTableError as e:
            raise CalibrationTableError(f"{source}: {e}") from None
        return cls.from_dict(document, source)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the table to ``path`` atomically.

        The bytes go to a temporary file next to ``path``, are flushed to disk, and then
        renamed over ``path`` in one step: a reader sees the old file or the complete new one,
        never a partial table, and a failed write leaves ``path`` as it was and no temporary
        file behind.
        """
        write_atomically(path, self.to_bytes())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "CalibrationTable":
        """Read and validate a table written by :meth:`save`; errors name ``path``."""
        path = os.fspath(path)
        with open(path, "rb") as f:
            data = f.read()
        return cls.from_bytes(data, source=path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_amax(amax: Any) -> Dict[str, float]:
    if not isinstance(amax, Mapping):
        raise CalibrationTableError(f"'amax' must map tensor names to numbers, got {type(amax).__name__}")
    checked = {}
    for name, value in amax.items():
        if not isinstance(name, str) or not name:
            raise CalibrationTableError(f"'amax' has an invalid tensor name {name!r} (must be a non-empty string)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CalibrationTableError(f"amax of {name!r} must be a number, got {type(value).__name__}")
        value = float(value)
        if not (math.isfinite(value) and value > 0):
            raise CalibrationTableError(f"amax of {name!r} is {value!r}; it must be finite and > 0")
        checked[name] = value
    return checked


def _check_warnings(warnings: Any, amax: Mapping[str, float]) -> Dict[str, str]:
    if not isinstance(warnings, Mapping):
        raise CalibrationTableError(f"'warnings' must map tensor names to text, got {type(warnings).__name__}")
    for name, text in warnings.items():
        if name not in amax:
            raise CalibrationTableError(f"'warnings' names tensor {name!r}, which has no amax")
        if not isinstance(text, str):
            raise CalibrationTableError(f"warning of {name!r} must be a string, got {type(text).__name__}")
    return dict(warnings)


def _reject_duplicate_keys(pairs):
    """json object hook: a key given twice means a corrupt or hand-merged table; JSON would keep
    the last value silently."""
    duplicates = sorted(k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1)
    if duplicates:
        raise CalibrationTableError(f"duplicate key(s) in one JSON object: {', '.join(map(repr, duplicates))}")
    return dict(pairs)
