"""tf2onnx handlers for TF ops that tf2onnx 1.17 does not lower but our models need.

Registered with tf2onnx's own ``@tf_op`` decorator when this module is imported, so
every conversion in the process sees them; the op-support registry lists these ops
like any other (with the ONNX ops written here).

- ``Erfc``: Keras 3's exact GELU is ``0.5 * x * erfc(-x / sqrt(2))``, so every BERT-style
  model has it. Lowered as ``1 - Erf(x)``; the absolute error is that of Erf (the
  relative error grows only where erfc itself underflows towards 0).
"""
import numpy as np
from tf2onnx import utils
from tf2onnx.handler import tf_op


@tf_op("Erfc")
class Erfc:
    @classmethod
    def version_9(cls, ctx, node, **kwargs):
        x = node.input[0]
        np_dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
        one = ctx.make_const(utils.make_name(f"{node.name}/one"), np.array(1, dtype=np_dtype))
        erf = ctx.make_node("Erf", [x], op_name_scope=node.name, name="erf",
                            shapes=[ctx.get_shape(x)], dtypes=[ctx.get_dtype(x)])
        node.type = "Sub"
        ctx.replace_inputs(node, [one.output[0], erf.output[0]])
