"""Check an engine against the native segment it replaces (``TFTRT_LITE_VERIFY=1``).

Both run on the same fresh random inputs: TensorFlow executes the segment's own
GraphDef, the engine runs through its NumPy reference executor (the plan's math,
op by op, after every optimisation pass).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tftrt_lite.errors import ConversionError

#: Tolerances of the check (the engine's reference vs TF fp32 on CPU): float32 engines
#: elementwise; half-precision (TF-TRT's 1e-2) and INT8 (5e-2) engines relative to each
#: output's scale, since a reduced engine's error is a fraction of the magnitudes
#: flowing through it.
RTOL = 1e-4
ATOL = 1e-4
HALF_TOLERANCE = 1e-2
INT8_TOLERANCE = 5e-2


def random_feeds(input_specs: List[Tuple[str, tf.DType, tf.TensorShape]], symbolic_size: int = 2,
                 seed: int = 0) -> Dict[str, np.ndarray]:
    """Random values for each (name, dtype, shape); unknown dims take ``symbolic_size``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dtype, shape in input_specs:
        dims = [symbolic_size if d is None else d for d in tf.TensorShape(shape).as_list()]
        if dtype.is_floating:
            feeds[name] = rng.standard_normal(dims).astype(dtype.as_numpy_dtype)
        elif dtype.is_bool:
            feeds[name] = rng.integers(0, 2, dims).astype(bool)
        elif dtype.is_integer:
            # Integer inputs are usually indices (embedding ids): keep them small and valid.
            feeds[name] = rng.integers(0, 8, dims).astype(dtype.as_numpy_dtype)
        else:
            raise ConversionError(f"cannot make random input {name!r} of dtype {dtype.name}")
    return feeds


def _close(a: np.ndarray, b: np.ndarray, precision: str = "FP32") -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        if precision == "FP32":
            return bool(np.allclose(a64, b64, rtol=RTOL, atol=ATOL))
        scale = max(float(np.max(np.abs(b64), initial=0.0)), 1e-6)
        return bool(np.array_equal(np.isfinite(a64), np.isfinite(b64))
                    and np.max(np.abs(a64 - b64), initial=0.0) <= _relative_tolerance(precision) * scale)
    return bool(np.array_equal(a, b))


def _relative_tolerance(precision: str) -> float:
    return INT8_TOLERANCE if precision == "INT8" else HALF_TOLERANCE


def verify_engine(engine, lowered, batch_sizes=(1, 3), seed: int = 0) -> None:
    """Raise ``ConversionError`` if the engine's outputs differ from TF's, naming where.

    Unknown dims of the segment inputs take each value of ``batch_sizes`` in turn, so
    the engine's symbolic shapes are exercised at more than one binding. On a mismatch
    the un-optimised import of the same ONNX model is compared tensor by tensor with
    TF (tf2onnx keeps TF tensor names), so the error names the first diverging TF
    tensor, or says that the import matches and an optimisation pass diverged.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(lowered.segment_graph_def, name="")
    specs = list(zip(lowered.input_names, lowered.input_dtypes, lowered.input_shapes))
    outputs = [f"{n}:0" for n in lowered.output_names]
    for size in batch_sizes:
        feeds = random_feeds(specs, symbolic_size=size, seed=seed + size)
        tf_feeds = {f"{k}:0": v for k, v in feeds.items()}
        got = engine.run_reference(feeds)
        with tf.compat.v1.Session(graph=graph) as sess:
            want = sess.run(outputs, tf_feeds)
        for ours, theirs, b in zip(engine.output_names, outputs, want):
            a = np.asarray(got[ours])
            if not _close(a, b, engine.precision):
                tol = f"rtol={RTOL}, atol={ATOL}" if engine.precision == "FP32" else \
                    f"{_relative_tolerance(engine.precision)} of the output's scale ({engine.precision})"
                raise ConversionError(
                    f"engine {engine.name!r}: output {theirs!r} differs from its native segment "
                    f"({_error(a, b)}; unknown dims = {size}; {tol}); "
                    + _first_divergence(lowered, graph, feeds, tf_feeds))


def _first_divergence(lowered, graph, feeds, tf_feeds) -> str:
    from tftrt_lite.engine.onnx_import import import_onnx
    from tftrt_lite.engine.reference import run_graph

    values = run_graph(import_onnx(lowered.onnx_model), feeds, intermediates=True)
    names = [n for n in values if _is_tf_tensor(graph, n)]
    with tf.compat.v1.Session(graph=graph) as sess:
        tf_values = sess.run(names, tf_feeds)
    for name, b in zip(names, tf_values):
        a = np.asarray(values[name])
        if a.size != b.size or np.squeeze(a).shape != np.squeeze(b).shape:
            continue  # same name, other layout (tf2onnx's NCHW internals): not comparable
        if not _close(a.reshape(b.shape), b):
            return f"the imported graph first diverges at TF tensor {name!r} ({_error(a.reshape(b.shape), b)})"
    return "the un-optimised import matches TF everywhere, so an engine optimisation pass diverges"


def _error(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"shape {a.shape} vs TF {b.shape}"
    return f"max abs error {np.max(np.abs(a.astype(np.float64) - b)):.3g}"


def _is_tf_tensor(graph: tf.Graph, name: str) -> bool:
    if ":" not in name:
        return False
    try:
        graph.get_tensor_by_name(name)
    except (KeyError, ValueError):
        return False
    return True
