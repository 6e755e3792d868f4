"""Tactic tuning of a converted SavedModel: time its engines' library algorithms on this
GPU once, and ship the winners inside the model.

An engine chooses the cuBLASLt and cuDNN algorithms of each distinct GEMM and convolution,
and the variant of each generated kernel that has some (tiling choices), on the first call
of an input shape, by timing the candidates (milliseconds per problem)
unless the process's tactic store already holds a winner (from the tactic cache file, or
from the model itself; ``runtime/cc/tactics.h``). :func:`tune_saved_model` runs every
signature of a converted model at the batch sizes you will serve, so every engine times
its problems, then writes a copy of the model whose ``TftrtLiteEngine`` nodes carry the
winners in their ``tactics`` attr. A serving process on the same kind of GPU, with the
same cuBLASLt and cuDNN versions, then starts with them and times nothing; elsewhere the
carried winners fail their check and the engines time as usual. See docs/tuning.md.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading
from typing import Dict, Optional, Sequence

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from tftrt_lite.compare import CompareError, random_inputs
from tftrt_lite.errors import TftrtLiteError
from tftrt_lite.load.freeze import freeze_signature
from tftrt_lite.load.proto import read_saved_model_proto
from tftrt_lite.load.signature import SignatureGraph, signature_bindings
from tftrt_lite.replace.rewrite import ENGINE_OP
from tftrt_lite.report import engines_in_saved_model
from tftrt_lite.runtime import oplib
from tftrt_lite.save import REPORT_PATH, read_report, save_functions

logger = logging.getLogger("tftrt_lite")

#: Counts of the process's tactic store (``tftrt_lite_tactics_count`` in tactics.h).
COUNT_NAMES = ("gemm_timed", "conv_timed", "cache_hits", "cache_rejected", "candidates_rejected", "split_k_chosen",
               "kernel_timed")

_lock = threading.Lock()
_library = None


class TuneError(TftrtLiteError, RuntimeError):
    """Tuning cannot run: no GPU, a model without engines, inputs that cannot be drawn."""


def _tactics_library():
    """ctypes bindings of the tactic functions of the op library TensorFlow loaded."""
    global _library
    oplib.load()
    with _lock:
        if _library is None:
            lib = ctypes.CDLL(oplib.library_path())
            lib.tftrt_lite_tactics_dump.restype = ctypes.c_char_p
            lib.tftrt_lite_tactics_dump.argtypes = [ctypes.c_char_p, ctypes.c_int]
            lib.tftrt_lite_tactics_count.restype = ctypes.c_int64
            lib.tftrt_lite_tactics_count.argtypes = [ctypes.c_char_p]
            _library = lib
        return _library


def process_tactics(engine_name: str = "") -> str:
    """Tactic cache text of the winners this process's engines chose or reused: those of
    the engine named ``engine_name`` (its ``engine_name`` attr), or all of them.
    Empty when there are none (e.g. no engine ran on a GPU)."""
    return _tactics_library().tftrt_lite_tactics_dump(engine_name.encode(), 0).decode()


def tactic_counts() -> Dict[str, int]:
    """Process-wide counts of the tactic store: problems timed, stored winners reused or
    rejected, GEMM candidates rejected by their output check, split-K winners, kernel steps
    whose variants were timed."""
    lib = _tactics_library()
    return {name: lib.tftrt_lite_tactics_count(name.encode()) for name in COUNT_NAMES}


def set_engine_tactics(graph_def: graph_pb2.GraphDef) -> Dict[str, int]:
    """Sets the ``tactics`` attr of every ``TftrtLiteEngine`` node of ``graph_def`` (and of
    its function library) to this process's winners for that engine; an engine without
    any keeps what it carries. Returns the number of winner lines per engine name."""
    nodes = [n for n in graph_def.node if n.op == ENGINE_OP]
    nodes += [n for f in graph_def.library.function for n in f.node_def if n.op == ENGINE_OP]
    lines = {}
    for node in nodes:
        name = node.attr["engine_name"].s.decode()
        text = process_tactics(name)
        if text:
            node.attr["tactics"].s = text.encode()
        carried = node.attr["tactics"].s.decode() if "tactics" in node.attr else ""  # reading would add it
        lines[name] = sum(1 for line in carried.splitlines() if not line.startswith("#"))
    return lines


@dataclasses.dataclass
class TuneReport:
    """What :func:`tune_saved_model` did: where the model went, the winner lines each
    engine carries, the tactic store's counts and how many calls fell back to the native
    segment (an engine that falls back is not tuned)."""

    output_dir: str
    engine_tactics: Dict[str, int]
    counts: Dict[str, int]
    fallback_calls: int


def tune_saved_model(model_dir: str, output_dir: str, batch_sizes: Optional[Sequence[int]] = None,
                     signature_key: Optional[str] = None, seed: int = 0) -> TuneReport:
    """Time the engines of converted model ``model_dir`` and save it with their winners.

    Every signature (or only ``signature_key``) runs twice per batch size on random inputs
    (``tftrt_lite.compare.random_inputs``; ``batch_sizes`` fill an unknown batch dim), so
    each engine chooses its algorithms and captures its CUDA graph. The model is written to
    ``output_dir`` atomically (``output_dir`` may be ``model_dir``). Raises
    :class:`TuneError` without a GPU, for a model without engines, or when inputs cannot
    be drawn for a signature.
    """
    if not tf.config.list_physical_devices("GPU"):
        raise TuneError("tuning times the engines on a GPU and TensorFlow sees none; run it on the kind of "
                        "GPU the model will serve on")
    batches = list(batch_sizes) if batch_sizes else [None]
    bad = [b for b in batches if b is not None and (not isinstance(b, int) or b < 1)]
    if bad:
        raise TuneError(f"batch sizes must be positive integers, got {bad}")
    model_dir = os.fspath(model_dir)
    read_saved_model_proto(model_dir)  # a missing or broken directory gets an error naming it
    if not engines_in_saved_model(model_dir):
        raise TuneError(f"{model_dir!r} has no {ENGINE_OP} nodes to tune; convert it first (tftrt-lite convert)")
    loaded = tf.saved_model.load(model_dir)
    keys = sorted(loaded.signatures.keys())
    if signature_key is not None:
        if signature_key not in loaded.signatures:
            raise TuneError(f"SavedModel {model_dir!r} has no signature {signature_key!r}; signatures: {keys}")
        keys = [signature_key]
    before = oplib.stats()
    for key in keys:
        _run_signature(loaded.signatures[key], key, batches, seed)
    fallback_calls = oplib.stats()["fallback_calls"] - before["fallback_calls"]
    if fallback_calls:
        logger.warning("%d engine call(s) ran their native segment while tuning, so those engines are not "
                       "tuned (tftrt_lite.stats() says why)", fallback_calls)

    out, engine_tactics = save_with_tactics(model_dir, output_dir, loaded, {"batch_sizes": batches, "signatures": keys})
    return TuneReport(out, engine_tactics, tactic_counts(), fallback_calls)


def save_with_tactics(model_dir: str, output_dir: str, loaded=None, tuning: Optional[Dict] = None):
    """Write converted model ``model_dir`` (``loaded``: it as ``tf.saved_model.load`` gave
    it) to ``output_dir`` with every engine carrying this process's winners for it.

    Each signature is frozen (its function calls inlined, nothing else rewritten), its
    engine nodes get their ``tactics`` attr (:func:`set_engine_tactics`), and the functions
    are saved atomically with the model's extra files (``assets.extra``: the conversion
    report, to which ``tuning`` is added, and e.g. an INT8 calibration table). Returns the
    absolute output path and the winner lines per engine.
    """
    loaded = tf.saved_model.load(model_dir) if loaded is None else loaded
    functions, engine_tactics = {}, {}
    for key in sorted(loaded.signatures.keys()):
        frozen = freeze_signature(key, loaded.signatures[key], model_dir)
        graph_def = frozen.graph.as_graph_def()
        engine_tactics.update(set_engine_tactics(graph_def))
        inputs, outputs = signature_bindings(key, frozen)
        functions[key] = SignatureGraph(key, graph_def, inputs, outputs, frozen).to_function()
    report = read_report(model_dir)
    if report is not None and tuning is not None:
        report["tuning"] = dict(tuning, engine_tactics=engine_tactics)
    out = save_functions(functions, output_dir, report=report, extra_files=_extra_files(model_dir))
    return out, engine_tactics


def _extra_files(model_dir: str) -> Dict[str, bytes]:
    """The files under ``assets.extra`` of ``model_dir`` but the report, by path in the model."""
    extras = {}
    for folder, _, names in os.walk(os.path.join(model_dir, "assets.extra")):
        for name in names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, model_dir)
            if rel != REPORT_PATH:
                with open(path, "rb") as f:
                    extras[rel] = f.read()
    return extras


def _run_signature(func, key: str, batches: Sequence[Optional[int]], seed: int) -> None:
    """Calls ``func`` twice per batch size: the first call chooses (times) each engine's
    algorithms, the second captures the shape's CUDA graph."""
    specs = func.structured_input_signature[1]
    for batch in batches:
        try:
            feeds = random_inputs(specs, seed, batch)
        except CompareError as e:
            raise TuneError(f"cannot draw random inputs for signature {key!r}: {e}") from e
        tensors = {name: tf.constant(value) for name, value in feeds.items()}
        for _ in range(2):
            func(**tensors)
