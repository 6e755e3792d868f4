"""Per-step FLOPs and bytes of a plan, checked by hand on small engines."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tftrt_lite.engine.builder import build_engine
from tftrt_lite.engine.costs import roofline_share, step_costs, symbol_values
from tftrt_lite.engine.plan import ConvStep, GemmStep, LaunchStep


def _mlp():
    """y = relu(x @ w + b) with x [N, 16], w [16, 32]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Tanh", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv():
    """y = conv(x, w) for x [N, 5, 8, 8], w [6, 5, 3, 3], pads 1 (5 channels: a cuDNN conv, not a stem kernel)."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((6, 5, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_gemm_and_kernel_costs_at_a_bound_batch():
    engine = build_engine(_mlp(), target_arch="sm_80")
    plan = engine.plan
    symbols = symbol_values(plan, [(5, 16)])
    assert symbols == [5]
    costs = step_costs(plan, symbols)
    (gi,) = [i for i, s in enumerate(plan.steps) if isinstance(s, GemmStep)]
    assert costs[gi]["flops"] == 2 * 5 * 32 * 16
    assert costs[gi]["bytes"] == 4 * (5 * 16 + 16 * 32 + 5 * 32 + 32)  # x, w, y, bias
    assert any(isinstance(s, LaunchStep) for s in plan.steps)
    for i, s in enumerate(plan.steps):
        if isinstance(s, LaunchStep):  # the tanh kernel: reads the GEMM's output, writes y
            assert costs[i] == {"flops": 0, "bytes": 2 * 4 * 5 * 32}


def test_conv_costs():
    engine = build_engine(_conv(), target_arch="sm_80")
    plan = engine.plan
    costs = step_costs(plan, symbol_values(plan, [(2, 8, 8, 5)]))
    (ci,) = [i for i, s in enumerate(plan.steps) if isinstance(s, ConvStep)]
    assert costs[ci]["flops"] == 2 * 2 * 8 * 8 * 6 * 3 * 3 * 5
    assert costs[ci]["bytes"] == 4 * (2 * 8 * 8 * 5 + 6 * 3 * 3 * 5 + 2 * 8 * 8 * 6)


def test_roofline_share():
    gemm = GemmStep.__new__(GemmStep)
    gemm.dtype = "float16"
    cost = {"flops": 790e12, "bytes": 4.3e12 / 2}
    assert roofline_share(gemm, cost, 2.0) == pytest.approx(0.5)  # compute-bound: 1 s of 2
    with pytest.raises(ValueError, match="positive"):
        roofline_share(gemm, cost, 0.0)
