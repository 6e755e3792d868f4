import math

import numpy as np
import pytest

from tftrt_lite.engine.passes import gemm_fusion

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _gelu_erf(b, y, shape):
    """x * 0.5 * (1 + erf(x / sqrt(2))) associated as (x * 0.5) * (...)."""
    e = b.op("Erf", [b.op("Mul", [y, b.const(np.float32(1 / math.sqrt(2)))], shape)], shape)
    return b.op("Mul", [b.op("Mul", [b.const(np.float32(0.5)), y], shape),
                        b.op("Add", [b.const(np.float32(1)), e], shape)], shape)


def _gelu_erfc(b, y, shape):
    """TF's 0.5 * x * erfc(-x / sqrt(2)) with erfc lowered to 1 - erf."""
    neg = b.op("Mul", [b.op("Neg", [y], shape), b.const(np.float32(1 / math.sqrt(2)))], shape)
    one_minus = b.op("Sub", [b.const(np.float32(1)), b.op("Erf", [neg], shape)], shape)
    return b.op("Mul", [b.op("Mul", [b.const(np.float32(0.5)), y], shape), one_minus], shape)


def _gelu_tanh(b, y, shape):
    cube = b.op("Pow", [y, b.const(np.float32(3))], shape)
    inner = b.op("Add", [y, b.op("Mul", [b.const(np.float32(0.044715)), cube], shape)], shape)
    t = b.op("Tanh", [b.op("Mul", [inner, b.const(np.float32(math.sqrt(2 / math.pi)))], shape)], shape)
    half = b.op("Mul", [y, b.const(np.float32(0.5))], shape)
    return b.op("Mul", [half, b.op("Add", [t, b.const(np.float32(1))], shape)], shape)


def _relu(b, y, shape):
    return b.op("Relu", [y], shape)


@pytest.mark.parametrize("act,name", [(_gelu_erf, "gelu_erf"), (_gelu_erfc, "gelu_erf"),
                                      (_gelu_tanh, "gelu_tanh"), (_relu, "relu")])
def test_matmul_bias_activation(builder, act, name):
    b = builder
    x = b.input("x", ("N", 6, 8))
    mm = b.op("MatMul", [x, b.const(_rand(8, 5))], ("N", 6, 5))
    y = act(b, b.op("Add", [mm, b.const(_rand(5))], ("N", 6, 5)), ("N", 6, 5))
    g = b.output(y)
    before = g.copy()
    gemm_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.FusedGemm": 1}
    n = g.nodes[0]
    assert n.attrs["activation"] == name and n.inputs[2] and n.outputs == [y]
    assert_same_numerics(before, g, bind={"N": 2})


def test_epilogue_through_tensordot_reshape(builder):
    """Dense on a sequence: Reshape(2-D) → MatMul → Reshape(3-D) → Add(bias) → gelu."""
    b = builder
    x = b.input("x", ("N", 4, 8))
    flat = b.op("Reshape", [x, b.const(np.array([-1, 8]))], ("4*N", 8), allowzero=0)
    mm = b.op("MatMul", [flat, b.const(_rand(8, 6))], ("4*N", 6))
    back = b.op("Reshape", [mm, b.const(np.array([-1, 4, 6]))], ("N", 4, 6), allowzero=0)
    y = _gelu_erf(b, b.op("Add", [back, b.const(_rand(6))], ("N", 4, 6)), ("N", 4, 6))
    g = b.output(y)
    before = g.copy()
    gemm_fusion.run(g)
    assert g.summary() == {"Reshape": 2, "tftrt.FusedGemm": 1}
    assert g.nodes[-1].op == "Reshape" and g.nodes[-1].outputs == [y]
    assert_same_numerics(before, g, bind={"N": 3})


def test_head_split_bias_of_einsum_dense(builder):
    """EinsumDense: MatMul → Reshape [.., H*D] → [.., H, D] → Add(bias [H, D])."""
    b = builder
    x = b.input("x", ("N", 5, 8))
    mm = b.op("MatMul", [x, b.const(_rand(8, 6))], ("N", 5, 6))
    heads = b.op("Reshape", [mm, b.const(np.array([-1, 5, 2, 3]))], ("N", 5, 2, 3), allowzero=0)
    y = b.op("Add", [heads, b.const(_rand(2, 3))], ("N", 5, 2, 3))
    g = b.output(y)
    before = g.copy()
    gemm_fusion.run(g)
    assert g.summary() == {"tftrt.FusedGemm": 1, "Reshape": 1}
    assert g.nodes[-1].outputs == [y]
    assert_same_numerics(before, g, bind={"N": 2})


def test_bias_varying_across_rows_is_not_fused(builder):
    b = builder
    x = b.input("x", ("N", 5, 8))
    mm = b.op("MatMul", [x, b.const(_rand(8, 6))], ("N", 5, 6))
    y = b.op("Add", [mm, b.const(_rand(5, 1))], ("N", 5, 6))
    g = b.output(y)
    gemm_fusion.run(g)
    assert g.summary() == {"tftrt.FusedGemm": 1, "Add": 1}


def test_onnx_gemm_with_bias_vector_and_batched_matmul(builder):
    b = builder
    x = b.input("x", (3, 8))
    gm = b.op("Gemm", [x, b.const(_rand(5, 8)), b.const(_rand(1, 5))], (3, 5),
              alpha=0.5, beta=2.0, transA=0, transB=1)
    q = b.input("q", (2, 3, 4))
    k = b.input("k", (2, 4, 3))
    bm = b.op("MatMul", [q, k], (2, 3, 3))
    g = b.output(gm, bm)
    before = g.copy()
    gemm_fusion.run(g)
    assert g.summary() == {"tftrt.FusedGemm": 2}
    assert_same_numerics(before, g)


def test_silu_is_not_a_gemm_epilogue(builder):
    b = builder
    x = b.input("x", (3, 8))
    mm = b.op("MatMul", [x, b.const(_rand(8, 5))], (3, 5))
    y = b.op("Mul", [mm, b.op("Sigmoid", [mm], (3, 5))], (3, 5))
    g = b.output(y)
    gemm_fusion.run(g)
    assert g.summary() == {"tftrt.FusedGemm": 1, "Sigmoid": 1, "Mul": 1}
