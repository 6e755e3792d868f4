"""Check an engine against the native segment it replaces (``TFTRT_LITE_VERIFY=1``).

Both run on the same fresh random inputs: TensorFlow executes the segment's own
GraphDef, the engine runs through its NumPy reference executor (the plan's math,
op by op). On a mismatch the error names the first diverging tensor: tf2onnx keeps
TF tensor names for the ONNX values it emits, and fused IR ops keep the name of
the last value they compute, so every engine tensor that still carries a TF name
is compared in execution order.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tftrt_lite.errors import ConversionError

#: Tolerances of the check (fp32 reference vs TF fp32 on CPU).
RTOL = 1e-4
ATOL = 1e-4


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


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=RTOL, atol=ATOL))
    return bool(np.array_equal(a, b))


def verify_engine(engine, lowered, batch_sizes=(1, 3), seed: int = 0) -> None:
    """Raise ``ConversionError`` naming the first tensor where engine and TF disagree.

    Unknown dims of the segment inputs take each value of ``batch_sizes`` in turn, so
    the engine's symbolic shapes are exercised at more than one binding.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(lowered.segment_graph_def, name="")
    specs = list(zip(lowered.input_names, lowered.input_dtypes, lowered.input_shapes))
    for size in batch_sizes:
        feeds = random_feeds(specs, symbolic_size=size, seed=seed + size)
        values = engine.run_reference(feeds, intermediates=True)
        inner = [n for n in values if _is_tf_tensor(graph, n)]
        outputs = [f"{n}:0" for n in lowered.output_names]
        with tf.compat.v1.Session(graph=graph) as sess:
            got = sess.run(inner + outputs, {f"{k}:0": v for k, v in feeds.items()})
        tf_values = dict(zip(inner + outputs, got))
        pairs = [(n, n) for n in inner] + list(zip(engine.output_names, outputs))
        for ours, theirs in pairs:
            a, b = np.asarray(values[ours]), tf_values[theirs]
            if not _close(a, b):
                err = (f"max abs error {np.max(np.abs(a.astype(np.float64) - b)):.3g}"
                       if a.shape == b.shape else f"shape {a.shape} vs TF {b.shape}")
                raise ConversionError(
                    f"engine {engine.name!r} diverges from its native segment first at tensor {theirs!r} "
                    f"({err}; unknown dims = {size}; rtol={RTOL}, atol={ATOL})")


def _is_tf_tensor(graph: tf.Graph, name: str) -> bool:
    if ":" not in name:
        return False
    try:
        graph.get_tensor_by_name(name)
    except (KeyError, ValueError):
        return False
    return True
