import numpy as np
import pytest

from tftrt_lite.engine.fused_ops import check_program
from tftrt_lite.engine.passes import elementwise_fusion

from pass_graphs import assert_same_numerics

RNG = np.random.default_rng(0)
S = ("N", 3, 4)


def test_chain_and_dag_become_one_kernel_with_immediates(builder):
    b = builder
    x = b.input("x", S)
    y = b.input("y", (4,))
    m = b.op("Mul", [x, b.const(np.float32(0.5))], S)
    a = b.op("Add", [m, b.const(RNG.standard_normal(4).astype(np.float32))], S)  # broadcast const
    s = b.op("Sigmoid", [a], S)
    out = b.op("Mul", [b.op("Sub", [s, y], S), a], S)
    c = b.op("Clip", [out, "", b.const(np.float32(1.0))], S)
    g = b.output(c)
    before = g.copy()
    elementwise_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.FusedElementwise": 1}
    n = g.nodes[0]
    assert n.inputs[0] == x and y in n.inputs and len(n.inputs) == 3  # scalars are immediates
    consts = [i for i in n.attrs["program"] if i["op"] == "Const"]
    assert [c["value"] for c in consts] == [0.5, float("-inf"), 1.0]
    assert_same_numerics(before, g, bind={"N": 2})


def test_group_stops_at_non_elementwise_and_exposes_shared_values(builder):
    b = builder
    x = b.input("x", S)
    e = b.op("Exp", [x], S)
    sm = b.op("Softmax", [e], S, axis=-1)
    r = b.op("Add", [b.op("Relu", [sm], S), e], S)
    g = b.output(r)
    before = g.copy()
    elementwise_fusion.run(g)
    assert g.summary() == {"tftrt.FusedElementwise": 2, "Softmax": 1}
    first = g.nodes[0]
    assert first.outputs == [e] and first.attrs["outputs"] == ["v0"]
    assert_same_numerics(before, g, bind={"N": 2})


def test_refuses_a_merge_that_would_make_a_cycle(builder):
    """a = Exp(x); s = Softmax(a); out = a + s: Exp and Add cannot share a kernel."""
    b = builder
    x = b.input("x", S)
    a = b.op("Exp", [x], S)
    s = b.op("Softmax", [a], S, axis=-1)
    out = b.op("Add", [a, s], S)
    g = b.output(out)
    before = g.copy()
    elementwise_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.FusedElementwise": 2, "Softmax": 1}
    assert_same_numerics(before, g, bind={"N": 2})


def test_different_shapes_are_separate_groups_and_dtypes_carry(builder):
    b = builder
    x = b.input("x", S)
    v = b.input("v", ("N", 3, 1))
    neg = b.op("Neg", [v], ("N", 3, 1))
    out = b.op("Add", [x, neg], S)
    flag = b.op("Less", [out, b.const(np.float32(0))], S, dtype="bool")
    sel = b.op("Where", [flag, out, b.const(np.float32(0))], S)
    cast = b.op("Cast", [sel], S, dtype="int32", to=6)
    g = b.output(cast)
    before = g.copy()
    elementwise_fusion.run(g)
    assert g.summary() == {"tftrt.FusedElementwise": 2}
    dtypes = [i["dtype"] for i in g.nodes[1].attrs["program"]]
    assert "bool" in dtypes and dtypes[-1] == "int32"
    assert_same_numerics(before, g, bind={"N": 2})


def test_check_program_names_bad_instruction():
    with pytest.raises(ValueError, match="v1"):
        check_program([{"op": "Exp", "args": ["in0"], "dtype": "float32"},
                       {"op": "Add", "args": ["v0", "v1"], "dtype": "float32"}], 1, ["v1"])
    with pytest.raises(ValueError, match="Frobnicate"):
        check_program([{"op": "Frobnicate", "args": [], "dtype": "float32"}], 0, ["v0"])
