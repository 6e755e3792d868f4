import numpy as np
import pytest

from tftrt_lite.engine.passes import bn_folding

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv(b, x, out_ch, in_ch, shape, group=1, bias=True):
    ins = [x, b.const(_rand(out_ch, in_ch // group, 3, 3))] + ([b.const(_rand(out_ch))] if bias else [])
    return b.op("Conv", ins, shape, strides=[1, 1], pads=[1, 1, 1, 1], dilations=[1, 1],
                group=group, kernel_shape=[3, 3], auto_pad="NOTSET")


def test_batchnorm_folds_into_conv(builder):
    b = builder
    x = b.input("x", ("N", 3, 6, 6))
    c = _conv(b, x, 4, 3, ("N", 4, 6, 6), bias=False)
    var = np.abs(_rand(4)) + 0.1
    y = b.op("BatchNormalization", [c, b.const(_rand(4)), b.const(_rand(4)), b.const(_rand(4)), b.const(var)],
             ("N", 4, 6, 6), epsilon=1e-3, momentum=0.9, training_mode=0)
    g = b.output(y)
    before = g.copy()
    bn_folding.run(g)
    g.verify()
    assert g.summary() == {"Conv": 1}
    assert g.nodes[0].outputs == [y] and g.nodes[0].inputs[2]
    assert_same_numerics(before, g, bind={"N": 2})


@pytest.mark.parametrize("group", [1, 4])
def test_const_mul_add_fold_into_conv(builder, group):
    """tf2onnx leaves Keras BN as Mul/Add by constants after depthwise convs."""
    b = builder
    x = b.input("x", ("N", 4, 5, 5))
    c = _conv(b, x, 4, 4, ("N", 4, 5, 5), group=group)
    m = b.op("Mul", [b.const(_rand(1, 4, 1, 1)), c], ("N", 4, 5, 5))
    s = b.op("Sub", [m, b.const(_rand(4, 1, 1))], ("N", 4, 5, 5))
    y = b.op("Relu", [s], ("N", 4, 5, 5))
    g = b.output(y)
    before = g.copy()
    bn_folding.run(g)
    assert g.summary() == {"Conv": 1, "Relu": 1}
    assert_same_numerics(before, g, bind={"N": 2})


def test_scale_folds_into_matmul_weight(builder):
    b = builder
    x = b.input("x", ("N", 8))
    mm = b.op("MatMul", [x, b.const(_rand(8, 5))], ("N", 5))
    y = b.op("Div", [mm, b.const(_rand(5) + 3)], ("N", 5))
    g = b.output(y)
    before = g.copy()
    bn_folding.run(g)
    assert g.summary() == {"MatMul": 1}
    assert_same_numerics(before, g, bind={"N": 3})


def test_not_folded_when_output_has_other_readers_or_not_per_channel(builder):
    b = builder
    x = b.input("x", ("N", 3, 6, 6))
    c = _conv(b, x, 4, 3, ("N", 4, 6, 6))
    m = b.op("Mul", [c, b.const(_rand(4, 1, 1))], ("N", 4, 6, 6))
    c2 = _conv(b, x, 4, 3, ("N", 4, 6, 6))
    m2 = b.op("Mul", [c2, b.const(_rand(1, 1, 6))], ("N", 4, 6, 6))  # varies along W: not foldable
    g = b.output(m, c, m2)
    bn_folding.run(g)
    assert g.summary() == {"Conv": 2, "Mul": 2}


def test_lone_batchnorm_becomes_mul_add(builder):
    b = builder
    x = b.input("x", ("N", 3, 4, 4))
    var = np.abs(_rand(3)) + 0.1
    y = b.op("BatchNormalization", [x, b.const(_rand(3)), b.const(_rand(3)), b.const(_rand(3)), b.const(var)],
             ("N", 3, 4, 4), epsilon=1e-5, momentum=0.9, training_mode=0)
    g = b.output(y)
    before = g.copy()
    bn_folding.run(g)
    assert g.summary() == {"Mul": 1, "Add": 1}
    assert_same_numerics(before, g, bind={"N": 2})
