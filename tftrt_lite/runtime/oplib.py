"""Loading the TftrtLiteEngine op library and reading its call counters.

The op library is C++ compiled against the headers of one TensorFlow release; TF keeps
no ABI promise between releases, so loading it into another one can crash the process
instead of raising. ``setup.py`` therefore records the TensorFlow version it built
against in ``_build_info.json`` beside the library, and this module compares that record
with the imported TensorFlow *before* handing the library to ``tf.load_op_library``.

The engine op counts every call and every fallback to the native segment in
process-wide C++ counters (``runtime/cc/stats.h``); :func:`stats` reads them through
ctypes from the library TensorFlow already loaded, so tests can prove an engine ran.
"""
import ctypes
import json
import os
import threading
import types

import tensorflow as tf

from tftrt_lite.errors import OpLibraryError

LIBRARY_FILE = "_tftrt_lite_ops.so"
BUILD_INFO_FILE = "_build_info.json"
REBUILD_COMMAND = "pip install --no-build-isolation ."

_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_module = None
_counters = None


def library_path(directory: str = _RUNTIME_DIR) -> str:
    """Path of the op library in ``directory`` (by default, the installed one)."""
    return os.path.join(directory, LIBRARY_FILE)


def read_build_info(directory: str = _RUNTIME_DIR) -> dict:
    """The record ``setup.py`` wrote when it built the library in ``directory``.

    Raises :class:`OpLibraryError` when the library or its record is missing or the
    record is unreadable: either way the package was not built by ``setup.py``.
    """
    lib = library_path(directory)
    if not os.path.isfile(lib):
        raise OpLibraryError(
            f"the TftrtLiteEngine op library {lib} does not exist; build it from the "
            f"tftrt_lite source tree with `{REBUILD_COMMAND}` (or `pip install "
            f"--no-build-isolation -e .` for a development checkout)")
    info_path = os.path.join(directory, BUILD_INFO_FILE)
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
        built_for = info["tf_version"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OpLibraryError(
            f"cannot read the build record {info_path} of the op library {lib} "
            f"({e.__class__.__name__}: {e}); rebuild it with `{REBUILD_COMMAND}`") from e
    if not isinstance(built_for, str):
        raise OpLibraryError(
            f"the build record {info_path} has tf_version={built_for!r}, not a version "
            f"string; rebuild the op library with `{REBUILD_COMMAND}`")
    return info


def load_library(directory: str) -> types.ModuleType:
    """Checks the build record in ``directory``, then loads its op library.

    Raises :class:`OpLibraryError` without touching the library when it was built for
    another TensorFlow version than the one imported.
    """
    info = read_build_info(directory)
    if info["tf_version"] != tf.__version__:
        raise OpLibraryError(
            f"the TftrtLiteEngine op library {library_path(directory)} was built for "
            f"TensorFlow {info['tf_version']} but TensorFlow {tf.__version__} is "
            f"imported; rebuild it against TensorFlow {tf.__version__} with "
            f"`{REBUILD_COMMAND}`")
    return tf.load_op_library(library_path(directory))


def load() -> types.ModuleType:
    """The loaded op library of this installation (loaded once per process).

    Its ``tftrt_lite_engine`` function builds ``TftrtLiteEngine`` nodes. Loading also
    registers the op, which ``tf.saved_model.load`` of a converted model needs.
    """
    global _module
    with _lock:
        if _module is None:
            _module = load_library(_RUNTIME_DIR)
        return _module


def _counter_functions():
    """ctypes bindings of the counter functions of the loaded library."""
    global _counters
    load()
    with _lock:
        if _counters is None:
            lib = ctypes.CDLL(library_path())
            lib.tftrt_lite_stats_count.restype = ctypes.c_int
            lib.tftrt_lite_stats_count.argtypes = []
            lib.tftrt_lite_stats_name.restype = ctypes.c_char_p
            lib.tftrt_lite_stats_name.argtypes = [ctypes.c_int]
            lib.tftrt_lite_stats_get.restype = ctypes.c_int64
            lib.tftrt_lite_stats_get.argtypes = [ctypes.c_int]
            lib.tftrt_lite_stats_reset.restype = None
            lib.tftrt_lite_stats_reset.argtypes = []
            _counters = lib
        return _counters


def stats() -> dict:
    """Process-wide TftrtLiteEngine counters, e.g. ``{"engine_calls": 3, ...}``.

    ``engine_calls`` counts every execution, ``fallback_calls`` those served by the
    native segment, ``fallback_<reason>`` splits them by reason, and ``refused_calls``
    counts calls that needed a fallback and failed because it was disabled or absent.
    """
    lib = _counter_functions()
    return {lib.tftrt_lite_stats_name(i).decode(): lib.tftrt_lite_stats_get(i)
            for i in range(lib.tftrt_lite_stats_count())}


def reset_stats() -> None:
    """Sets every counter of :func:`stats` to zero."""
    _counter_functions().tftrt_lite_stats_reset()
