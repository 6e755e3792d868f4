import numpy as np

from tftrt_lite.engine.passes import cleanup

from pass_graphs import assert_same_numerics


def test_removes_identities_and_noop_views(builder):
    b = builder
    x = b.input("x", ("N", 3, 4))
    a = b.op("Identity", [x], ("N", 3, 4))
    d = b.op("Dropout", [a], ("N", 3, 4), seed=0)
    c = b.op("Cast", [d], ("N", 3, 4), to=1)
    r = b.op("Reshape", [c, b.const(np.array([-1, 3, 4]))], ("N", 3, 4), allowzero=0)
    t = b.op("Transpose", [r], ("N", 3, 4), perm=[0, 1, 2])
    y = b.op("Relu", [t], ("N", 3, 4))
    dead = b.op("Exp", [x], ("N", 3, 4))
    g = b.output(y)
    before = g.copy()
    cleanup.run(g)
    g.verify()
    assert g.summary() == {"Relu": 1}
    assert g.nodes[0].inputs == ["x"] and dead not in g.tensors
    assert_same_numerics(before, g, bind={"N": 2})


def test_transpose_pairs_compose_and_cancel(builder):
    b = builder
    x = b.input("x", (2, 3, 4, 5))
    t1 = b.op("Transpose", [x], (2, 4, 5, 3), perm=[0, 2, 3, 1])
    t2 = b.op("Transpose", [t1], (2, 3, 4, 5), perm=[0, 3, 1, 2])
    y = b.op("Relu", [t2], (2, 3, 4, 5))
    t3 = b.op("Transpose", [x], (3, 2, 4, 5), perm=[1, 0, 2, 3])
    t4 = b.op("Transpose", [t3], (4, 2, 3, 5), perm=[2, 1, 0, 3])
    g = b.output(y, t4)
    before = g.copy()
    cleanup.run(g)
    assert g.summary() == {"Relu": 1, "Transpose": 1}
    (t,) = [n for n in g.nodes if n.op == "Transpose"]
    assert t.inputs == [x] and t.attrs["perm"] == [2, 0, 1, 3]
    assert_same_numerics(before, g)


def test_view_chain_becomes_one_reshape(builder):
    b = builder
    x = b.input("x", ("N", 6, 1))
    s = b.op("Squeeze", [x, b.const(np.array([2]))], ("N", 6))
    r = b.op("Reshape", [s, b.const(np.array([-1, 2, 3]))], ("N", 2, 3), allowzero=0)
    g = b.output(r)
    before = g.copy()
    cleanup.run(g)
    assert g.summary() == {"Reshape": 1}
    assert_same_numerics(before, g, bind={"N": 3})


def test_keeps_graph_output_names(builder):
    b = builder
    x = b.input("x", (2, 3))
    y = b.op("Exp", [x], (2, 3))
    out = b.op("Identity", [y], (2, 3))
    passthrough = b.op("Identity", [x], (2, 3))
    g = b.output(out, passthrough)
    before = g.copy()
    cleanup.run(g)
    g.verify()
    assert g.outputs == [out, passthrough]
    # the Exp now writes the output directly; an Identity of a graph input must stay
    assert g.summary() == {"Exp": 1, "Identity": 1}
    assert_same_numerics(before, g)
