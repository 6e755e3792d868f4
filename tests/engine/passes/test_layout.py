import numpy as np

from tftrt_lite.engine.passes import cleanup, layout

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv(b, x, cin, cout, hw, stride=1):
    return b.op("Conv", [x, b.const(_rand(cout, cin, 3, 3)), b.const(_rand(cout))], ("N", cout, hw, hw),
                strides=[stride, stride], pads=[1, 1, 1, 1], dilations=[1, 1], group=1,
                kernel_shape=[3, 3], auto_pad="NOTSET")


def _nchw_net(b):
    """What tf2onnx leaves for a Keras NHWC CNN: one input transpose, an NCHW body."""
    x = b.input("x", ("N", 8, 8, 3))
    t = b.op("Transpose", [x], ("N", 3, 8, 8), perm=[0, 3, 1, 2])
    c1 = _conv(b, t, 3, 4, 8)
    r1 = b.op("Relu", [b.op("Add", [c1, b.const(_rand(4, 1, 1))], ("N", 4, 8, 8))], ("N", 4, 8, 8))
    p = b.op("Pad", [r1, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))], ("N", 4, 10, 10), mode="constant")
    mp = b.op("MaxPool", [p], ("N", 4, 5, 5), kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1],
              dilations=[1, 1], ceil_mode=0, storage_order=0, auto_pad="NOTSET")
    c2 = _conv(b, mp, 4, 4, 5)
    cat = b.op("Concat", [c2, mp], ("N", 8, 5, 5), axis=1)
    ap = b.op("AveragePool", [cat], ("N", 8, 3, 3), kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1],
              dilations=[1, 1], ceil_mode=0, count_include_pad=0, auto_pad="NOTSET")
    gap = b.op("GlobalAveragePool", [ap], ("N", 8, 1, 1))
    flat = b.op("Squeeze", [gap, b.const(np.array([2, 3]))], ("N", 8))
    red = b.op("ReduceMax", [ap, b.const(np.array([1]))], ("N", 3, 3), keepdims=0)
    return b.output(flat, red)


def test_cnn_ends_with_zero_transposes(builder):
    g = _nchw_net(builder)
    before = g.copy()
    layout.run(g)
    cleanup.run(g)
    g.verify()
    ops = g.summary()
    assert "Transpose" not in ops, ops
    assert ops["tftrt.FusedConv"] == 2 and ops["tftrt.Pool"] == 2 and "Conv" not in ops
    convs = [n for n in g.nodes if n.op == "tftrt.FusedConv"]
    assert convs[0].inputs[0] == "x"  # the input transpose cancelled against the first conv's
    assert_same_numerics(before, g, bind={"N": 2})


def test_transpose_feeding_unabsorbable_op_stays_correct(builder):
    b = builder
    x = b.input("x", ("N", 6, 6, 2))
    t = b.op("Transpose", [x], ("N", 2, 6, 6), perm=[0, 3, 1, 2])
    c = _conv(b, t, 2, 3, 6)
    s = b.op("Softmax", [c], ("N", 3, 6, 6), axis=1)
    g = b.output(s)
    before = g.copy()
    layout.run(g)
    cleanup.run(g)
    assert g.summary() == {"tftrt.FusedConv": 1, "Transpose": 1, "Softmax": 1}
    assert_same_numerics(before, g, bind={"N": 2})


def test_elementwise_with_non_transposed_operand_is_not_pushed(builder):
    """Pushing a transpose through Add(t, y) with y in the other layout would add one."""
    b = builder
    x = b.input("x", (2, 3, 4, 5))
    y = b.input("y", (2, 5, 3, 4))
    t = b.op("Transpose", [x], (2, 5, 3, 4), perm=[0, 3, 1, 2])
    a = b.op("Add", [t, y], (2, 5, 3, 4))
    g = b.output(a)
    before = g.copy()
    layout.run(g)
    assert g.summary() == {"Transpose": 1, "Add": 1}
    assert_same_numerics(before, g)


def test_transpose_hoists_above_head_merge_and_composes(builder):
    """Attention's value path: T(split heads) → Reshape(merge B, H) → T(swap last two)."""
    b = builder
    x = b.input("x", ("N", 5, 3, 4))
    t1 = b.op("Transpose", [x], ("N", 3, 4, 5), perm=[0, 2, 3, 1])
    r = b.op("Reshape", [t1, b.const(np.array([-1, 4, 5]))], ("3*N", 4, 5), allowzero=0)
    t2 = b.op("Transpose", [r], ("3*N", 5, 4), perm=[0, 2, 1])
    y = b.op("Relu", [t2], ("3*N", 5, 4))
    g = b.output(y)
    before = g.copy()
    layout.run(g)
    cleanup.run(g)
    assert g.summary() == {"Transpose": 1, "Reshape": 1, "Relu": 1}
    assert g.nodes[0].attrs["perm"] == [0, 2, 1, 3]
    assert_same_numerics(before, g, bind={"N": 2})
