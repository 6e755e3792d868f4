"""What loading yields: one frozen, cleaned graph per signature and its tensor bindings.

Later stages never touch TensorFlow's function objects to find a signature's tensors: the
segmenter must keep the bound nodes, and the saver must re-expose the same names. So the
mapping "signature argument / output key -> graph tensor" is computed once here, checked
against the cleaned GraphDef, and carried as plain data.
"""
import dataclasses
import logging

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.python.eager import context, wrap_function
from tensorflow.python.util import nest

from tftrt_lite.errors import ConversionError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorBinding:
    """One signature input or output: its user-facing ``name`` and the graph ``tensor_name``."""

    name: str
    tensor_name: str
    dtype: tf.DType
    shape: tf.TensorShape

    @property
    def node_name(self) -> str:
        """The graph node producing (input: the Placeholder) or carrying (output) the tensor."""
        return self.tensor_name.rsplit(":", 1)[0]


@dataclasses.dataclass
class SignatureGraph:
    """A signature as a frozen (variables are ``Const``), Grappler-cleaned GraphDef.

    ``inputs`` follow the function's input order (TF orders signature arguments by name);
    ``outputs`` are sorted by output key, the order TF flattens a signature's result dict
    in. Cleanup keeps every bound node's name; an output that depends on no input is
    folded into a ``Const`` of that name. ``frozen_func`` is the frozen ConcreteFunction
    before cleanup: it carries the structured signature the saver reuses.
    ``freeze_seconds`` and ``optimize_seconds`` time the two steps for this signature.
    """

    key: str
    graph_def: graph_pb2.GraphDef
    inputs: list[TensorBinding]
    outputs: list[TensorBinding]
    frozen_func: object
    freeze_seconds: float = 0.0
    optimize_seconds: float = 0.0

    @property
    def load_seconds(self) -> float:
        """Time spent turning this signature into ``graph_def`` (freeze + cleanup)."""
        return self.freeze_seconds + self.optimize_seconds

    def to_function(self, graph_def: graph_pb2.GraphDef | None = None):
        """A ConcreteFunction running ``graph_def`` (default: this one) with this signature.

        It takes the same keyword arguments and, when traced (as ``tf.saved_model.save``
        does), returns the same output dict as the original signature, so any rewritten
        version of the graph (same input/output tensor names) can be saved in its place.
        Called eagerly, TF returns its outputs as a flat list in ``outputs`` order; ``run``
        gives them back by name. Functions in ``graph_def``'s library replace any of the
        same name already registered in the eager context, as a rewrite may have changed
        their bodies.
        """
        graph_def = self.graph_def if graph_def is None else graph_def
        for fdef in graph_def.library.function:
            while context.context().has_function(fdef.signature.name):
                context.context().remove_function(fdef.signature.name)
        func = self.frozen_func
        new_func = wrap_function.function_from_graph_def(
            graph_def, [t.name for t in func.inputs], [t.name for t in func.outputs])
        return adopt_signature_structure(new_func, func)

    def run(self, feeds: dict, graph_def: graph_pb2.GraphDef | None = None) -> dict:
        """Run ``graph_def`` (default: this one) on ``feeds`` (input name -> array).

        Returns ``{output name: tf.Tensor}``. Missing or unknown feed names raise
        ``KeyError`` naming the signature's inputs.
        """
        self._check_feed_names(feeds)
        kwargs = {b.name: tf.convert_to_tensor(feeds[b.name], b.dtype) for b in self.inputs}
        flat = nest.flatten(self.to_function(graph_def)(**kwargs))
        return {b.name: t for b, t in zip(self.outputs, flat)}

    def _check_feed_names(self, feeds: dict) -> None:
        expected = [b.name for b in self.inputs]
        if set(feeds) != set(expected):
            raise KeyError(f"signature {self.key!r} takes inputs {expected}; got {sorted(feeds)}")

    def fetcher(self, tensor_names: list[str]):
        """A function ``feeds (input name -> array) -> {tensor name: ndarray}`` computing
        any tensors of this graph (e.g. the inputs of its segments, for calibration).

        The graph is pruned to what ``tensor_names`` need and built once, so calling it per
        batch costs one TensorFlow call."""
        by_tensor = {b.tensor_name: b.name for b in self.inputs}
        computed = sorted(set(tensor_names) - set(by_tensor))
        func = wrap_function.function_from_graph_def(
            self.graph_def, [b.tensor_name for b in self.inputs], computed) if computed else None

        def fetch(feeds: dict) -> dict:
            self._check_feed_names(feeds)
            values = {}
            if func is not None:
                args = [tf.convert_to_tensor(feeds[b.name], b.dtype) for b in self.inputs]
                values = dict(zip(computed, (t.numpy() for t in nest.flatten(func(*args)))))
            values.update({t: np.asarray(feeds[name]) for t, name in by_tensor.items() if t in tensor_names})
            return values

        return fetch


@dataclasses.dataclass
class LoadedSavedModel:
    """Every selected signature of the SavedModel at ``path`` (MetaGraph chosen by ``tags``).

    ``restore_seconds`` is the time ``tf.saved_model.load`` took (shared by all signatures).
    """

    path: str
    tags: list[str]
    signatures: dict[str, SignatureGraph]
    restore_seconds: float = 0.0


def adopt_signature_structure(new_func, signature_func):
    """Give ``new_func`` the keyword arguments and output dict of ``signature_func``.

    Functions rebuilt from a GraphDef (by freezing or import) take flat positional inputs
    and return a flat list; the saver and callers need the signature's structure back. The
    two must have the same inputs and outputs in the same order. Returns ``new_func``.
    """
    new_func.graph.structured_outputs = nest.pack_sequence_as(
        signature_func.graph.structured_outputs, new_func.graph.structured_outputs)
    new_func.graph.structured_input_signature = signature_func.structured_input_signature
    new_func._function_type = signature_func.function_type  # pylint: disable=protected-access
    return new_func


def signature_bindings(key: str, frozen_func) -> tuple[list[TensorBinding], list[TensorBinding]]:
    """The input and output bindings of the frozen signature function ``frozen_func``.

    A loaded signature takes keyword arguments only and returns a dict; TF orders its graph
    inputs by argument name and flattens its outputs by sorted key, so both lists line up
    with ``frozen_func.inputs`` / ``.outputs`` one to one. Each pairing is checked (count,
    dtype, shape) so a function that breaks this rule is reported, never mis-bound.
    """
    args, kwargs = frozen_func.structured_input_signature
    structured = frozen_func.structured_outputs
    if args or not isinstance(structured, dict):
        raise ConversionError(
            f"signature {key!r} is not a signature function: it takes {len(args)} positional "
            f"arguments and returns {type(structured).__name__} (expected keyword arguments "
            f"and a dict)")
    inputs = _bind(key, "input", {name: kwargs[name] for name in sorted(kwargs)},
                   frozen_func.inputs)
    outputs = _bind(key, "output", {name: structured[name] for name in sorted(structured)},
                    frozen_func.outputs)
    if not inputs or not outputs:
        logger.warning("signature %r has %d inputs and %d outputs; it loads but holds nothing "
                       "to accelerate", key, len(inputs), len(outputs))
    return inputs, outputs


def _bind(key: str, kind: str, specs: dict, tensors) -> list[TensorBinding]:
    if len(specs) != len(tensors):
        raise ConversionError(
            f"signature {key!r}: {len(specs)} declared {kind}s {list(specs)} but the frozen "
            f"function has {len(tensors)} graph {kind}s {[t.name for t in tensors]} "
            f"(a variable left uncaptured?)")
    bindings = []
    for (name, spec), tensor in zip(specs.items(), tensors):
        if spec.dtype != tensor.dtype or not spec.shape.is_compatible_with(tensor.shape):
            raise ConversionError(
                f"signature {key!r}: {kind} {name!r} is declared {spec.dtype.name}{spec.shape} "
                f"but graph tensor {tensor.name!r} is {tensor.dtype.name}{tensor.shape}")
        bindings.append(TensorBinding(name, tensor.name, tensor.dtype, tensor.shape))
    return bindings


def check_bindings_in_graph(key: str, graph_def: graph_pb2.GraphDef,
                            bindings: list[TensorBinding]) -> None:
    """Raise ``ConversionError`` if cleanup lost a node a binding names."""
    names = {node.name for node in graph_def.node}
    missing = [b.tensor_name for b in bindings if b.node_name not in names]
    if missing:
        raise ConversionError(
            f"signature {key!r}: graph cleanup removed the signature tensors {missing}")
