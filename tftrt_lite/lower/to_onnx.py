"""Segment GraphDef → ONNX model through tf2onnx, with a stable interface.

The opset is pinned (``ONNX_OPSET``): the op-support registry lists the ONNX ops
tf2onnx emits *at this opset*, and the engine importer is written against it, so
changing it is a deliberate, tested change. Graph inputs/outputs are renamed from
tf2onnx's ``input_0:0`` to ``input_0``/``output_0``, and unknown input dimensions get
the symbols the engine's shape code expects: ``N`` for axis 0 (the batch, shared by all
inputs), ``d<i>_<axis>`` otherwise.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

import onnx
import tensorflow as tf
import tf2onnx
from tensorflow.core.framework import graph_pb2
from tf2onnx import constants as tf2onnx_constants

import tftrt_lite.lower.tf2onnx_handlers  # noqa: F401  (registers handlers with tf2onnx)
from tftrt_lite.envutil import scoped_env

ONNX_OPSET = 17

#: Loggers tf2onnx writes progress and per-op chatter to during a conversion.
_CHATTY_LOGGERS = ("tf2onnx", "tensorflow")


@contextlib.contextmanager
def quiet_tf2onnx() -> Iterator[None]:
    """Silence tf2onnx (and the TF v1-API deprecation notes it triggers) for one conversion.

    Unsupported ops are not lost: they stay in the model under their TF op type and the
    caller's ONNX-op check reports them with the segment's context.
    """
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def symbolic_dim(input_index: int, axis: int) -> str:
    return "N" if axis == 0 else f"d{input_index}_{axis}"


def graph_def_to_onnx(segment_graph_def: graph_pb2.GraphDef, input_names: Sequence[str],
                      output_names: Sequence[str], input_shapes: Sequence[tf.TensorShape],
                      name: str, opset: int = ONNX_OPSET) -> onnx.ModelProto:
    """Convert; graph inputs/outputs end up named exactly ``input_names``/``output_names``."""
    renames = {f"{n}:0": n for n in list(input_names) + list(output_names)}
    kwargs = dict(name=name, input_names=[f"{n}:0" for n in input_names],
                  output_names=[f"{n}:0" for n in output_names], opset=opset, tensors_to_rename=renames)
    with quiet_tf2onnx():
        try:
            with scoped_env(tf2onnx_constants.ENV_TF2ONNX_CATCH_ERRORS, "FALSE"):
                model, _ = tf2onnx.convert.from_graph_def(segment_graph_def, **kwargs)
        except Exception:  # an optimizer pass failed: redo with tf2onnx's rollback per pass
            with scoped_env(tf2onnx_constants.ENV_TF2ONNX_CATCH_ERRORS, "TRUE"):
                model, _ = tf2onnx.convert.from_graph_def(segment_graph_def, **kwargs)
    by_name = {v.name: v for v in model.graph.input}
    for i, (in_name, shape) in enumerate(zip(input_names, input_shapes)):
        shape = tf.TensorShape(shape)
        if shape.rank is None:
            continue
        value_dims = by_name[in_name].type.tensor_type.shape.dim
        for axis, dim in enumerate(shape.as_list()):
            if dim is None:
                value_dims[axis].ClearField("dim_value")
                value_dims[axis].dim_param = symbolic_dim(i, axis)
    return model
