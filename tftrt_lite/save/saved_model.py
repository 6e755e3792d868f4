"""Write converted signatures as a new SavedModel, atomically.

Each converted signature arrives as a ConcreteFunction rebuilt from its rewritten
GraphDef (``SignatureGraph.to_function``), carrying the original structured input
signature and output structure, so every signature keeps its input names, output
keys, dtypes and shapes. Only those functions are saved — not the original object graph — so
the original variables are not stored a second time next to the frozen copy.

The directory is written under a temporary sibling name and renamed into place,
so a failure never leaves a half-written model where the user asked for one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Dict, Mapping, Optional

import tensorflow as tf

from tftrt_lite.errors import TftrtLiteError

#: Conversion report, written next to the model (assets.extra is TF Serving's place for extras).
REPORT_PATH = os.path.join("assets.extra", "tftrt_lite", "report.json")
#: INT8 models: the calibration table their engines were built with (``calibrate.CalibrationTable``).
CALIBRATION_TABLE_PATH = os.path.join("assets.extra", "tftrt_lite", "calibration_table.json")


def _check_target(output_dir: str) -> None:
    if os.path.isfile(output_dir):
        raise TftrtLiteError(f"cannot save to {output_dir!r}: it is a file")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        is_saved_model = any(os.path.exists(os.path.join(output_dir, f))
                             for f in ("saved_model.pb", "saved_model.pbtxt"))
        if not is_saved_model:
            raise TftrtLiteError(
                f"cannot save to {output_dir!r}: it is a non-empty directory that is not a SavedModel "
                f"(holds {sorted(os.listdir(output_dir))[:5]}); choose an empty or new directory")


def save_functions(functions: Mapping[str, object], output_dir: str,
                   report: Optional[Dict] = None, options: Optional[tf.saved_model.SaveOptions] = None,
                   extra_files: Optional[Mapping[str, bytes]] = None) -> str:
    """Save ``{signature_key: ConcreteFunction}`` as a SavedModel at ``output_dir``, with the
    conversion ``report`` and ``extra_files`` (path in the model → bytes) beside it.

    An existing SavedModel at ``output_dir`` is replaced in one rename; anything
    else there is refused. Returns the absolute output path.
    """
    output_dir = os.path.abspath(output_dir)
    _check_target(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        module = tf.Module()
        module.tftrt_lite_functions = list(functions.values())
        tf.saved_model.save(module, tmp, signatures=dict(functions), options=options)
        if report is not None:
            path = os.path.join(tmp, REPORT_PATH)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                json.dump(report, f, indent=1, sort_keys=True)
        for rel, data in (extra_files or {}).items():
            path = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        if os.path.isdir(output_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
            os.rename(output_dir, os.path.join(old, "m"))
            os.rename(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def read_report(saved_model_dir: str) -> Optional[Dict]:
    """The conversion report saved with a converted model, or None if it has none."""
    path = os.path.join(saved_model_dir, REPORT_PATH)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_calibration_table(saved_model_dir: str):
    """The INT8 calibration table saved with a converted model, or None if it has none."""
    from tftrt_lite.calibrate import CalibrationTable

    path = os.path.join(saved_model_dir, CALIBRATION_TABLE_PATH)
    return CalibrationTable.load(path) if os.path.exists(path) else None
