"""Freezing a signature: its variables become ``Const`` nodes in one self-contained graph.

The segmenter and the engine builder need weights as constants they can read, fold and
pack, so every signature is turned into a variable-free function with TF's own
``convert_variables_to_constants_v2`` (the route TF-TRT takes). Freezing copies every
weight into the GraphDef, and a GraphDef cannot be serialized past protobuf's 2 GiB
limit: TF then fails deep inside with an error that does not name the model. The size is
estimated first from the signature's variables, and an over-large model is refused with
the numbers.
"""
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import convert_to_constants

from tftrt_lite.errors import InvalidSavedModelError
from tftrt_lite.load.signature import adopt_signature_structure

# protobuf refuses to serialize or parse a message of 2 GiB or more.
MAX_GRAPH_DEF_BYTES = 2**31 - 1


def variable_bytes(variable) -> int:
    """Bytes ``variable`` will take as a ``Const`` tensor (string variables: their contents)."""
    if variable.dtype == tf.string:
        return int(sum(len(s) for s in np.ravel(variable.numpy())))
    return int(variable.shape.num_elements() or 0) * variable.dtype.size


def estimate_frozen_bytes(func) -> int:
    """Estimated frozen GraphDef size of ``func``: its graph (with its function library,
    which freezing inlines) plus its weights, which dominate for any model near the limit."""
    graph_bytes = func.graph.as_graph_def().ByteSize()
    return graph_bytes + sum(variable_bytes(v) for v in func.variables)


def freeze_signature(key: str, func, path: str):
    """The frozen ConcreteFunction of signature ``key`` (loaded from ``path``).

    It keeps the signature's keyword arguments and output dict, so it is called exactly
    like the original signature.

    Raises ``InvalidSavedModelError`` when the frozen graph would exceed
    ``MAX_GRAPH_DEF_BYTES``.
    """
    estimate = estimate_frozen_bytes(func)
    if estimate > MAX_GRAPH_DEF_BYTES:
        largest = sorted(func.variables, key=variable_bytes, reverse=True)[:3]
        raise InvalidSavedModelError(
            f"signature {key!r} of SavedModel {path!r} is too large to freeze: its GraphDef with "
            f"{len(func.variables)} variables as constants would be about {estimate:,} bytes, "
            f"over protobuf's limit of {MAX_GRAPH_DEF_BYTES:,} bytes; largest variables: "
            + ", ".join(f"{v.name} {v.shape} ({variable_bytes(v):,} bytes)" for v in largest))
    frozen = convert_to_constants.convert_variables_to_constants_v2(func)
    return adopt_signature_structure(frozen, func)
