import numpy as np

from tftrt_lite.engine.passes import constant_folding

from pass_graphs import assert_same_numerics


def test_folds_const_chains_and_static_shape(builder):
    rng = np.random.default_rng(0)
    b = builder
    x = b.input("x", (2, 4, 3))
    w = b.op("Transpose", [b.const(rng.standard_normal((5, 3)).astype(np.float32))], (3, 5), perm=[1, 0])
    w2 = b.op("Mul", [w, b.const(np.float32(2.0))], (3, 5))
    y = b.op("MatMul", [x, w2], (2, 4, 5))
    shape = b.op("Shape", [y], (3,), dtype="int64", start=0, end=3)
    g = b.output(y, shape)
    before = g.copy()
    constant_folding.run(g)
    g.verify()
    assert g.summary() == {"MatMul": 1}
    np.testing.assert_array_equal(g.const(shape), [2, 4, 5])
    np.testing.assert_allclose(g.const(g.nodes[0].inputs[1]),
                               before.const("c1").T * 2, rtol=1e-6)
    assert_same_numerics(before, g)


def test_keeps_shape_of_symbolic_tensor_and_runtime_nodes(builder):
    b = builder
    x = b.input("x", ("N", 4))
    y = b.op("Relu", [x], ("N", 4))
    s = b.op("Shape", [y], (2,), dtype="int64", start=0, end=2)
    g = b.output(s)
    constant_folding.run(g)
    assert g.summary() == {"Relu": 1, "Shape": 1}


def test_does_not_inflate_small_constants(builder):
    b = builder
    x = b.input("x", (4096, 4096))
    big = b.op("Expand", [b.const(np.float32(1.5)), b.const(np.array([4096, 4096]))], (4096, 4096))
    y = b.op("Add", [x, big], (4096, 4096))
    g = b.output(y)
    constant_folding.run(g)
    assert g.summary() == {"Expand": 1, "Add": 1}


def test_a_dequantized_weight_folds_whatever_its_size(builder):
    """int8 → float32 grows a weight fourfold past the inflation limit; it folds anyway (the
    engine has no int8 kernels: its GEMM reads the float weight)."""
    b = builder
    x = b.input("x", ("N", 2048))
    q = np.random.default_rng(1).integers(-128, 128, (2048, 2049)).astype(np.int8)
    assert q.size * 4 > constant_folding.MAX_INFLATED_BYTES
    w = b.op("DequantizeLinear", [b.const(q), b.const(np.float32(0.01)), b.const(np.int8(3))], (2048, 2049),
             axis=1)
    g = b.output(b.op("MatMul", [x, w], ("N", 2049)))
    constant_folding.run(g)
    assert g.summary() == {"MatMul": 1}
    np.testing.assert_array_equal(g.const(g.nodes[0].inputs[1]), (q.astype(np.float32) - 3) * np.float32(0.01))
