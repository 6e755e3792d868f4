"""The precision pass: reduced dtypes inside, casts only at borders, constants converted once."""
import ml_dtypes
import numpy as np
import pytest

from tftrt_lite.engine.passes import PassContext, elementwise_fusion, precision
from tftrt_lite.engine.reference import run_graph

from pass_graphs import GraphBuilder, random_feeds

RNG = np.random.default_rng(3)


def _mlp():
    """x ─MatMul(w1)─► Add(b) ─► Relu ─► MatMul(w2) ─► y, plus Softmax(y) ─► p."""
    b = GraphBuilder()
    x = b.input("x", ("N", 16))
    h = b.op("MatMul", [x, b.const(RNG.standard_normal((16, 32)).astype(np.float32), "w1")], ("N", 32))
    h = b.op("Add", [h, b.const(RNG.standard_normal(32).astype(np.float32), "b1")], ("N", 32))
    h = b.op("Relu", [h], ("N", 32))
    y = b.op("MatMul", [h, b.const(RNG.standard_normal((32, 8)).astype(np.float32), "w2")], ("N", 8))
    p = b.op("Softmax", [y], ("N", 8), axis=-1)
    return b.output(y, p)


def _run(graph, prec, overrides=None, fuse=False):
    g = graph.copy()
    precision.run(g, PassContext(precision=prec, precision_overrides=overrides))
    if fuse:
        elementwise_fusion.run(g)
    g.verify()
    return g


@pytest.mark.parametrize("prec, dtype", [("FP16", "float16"), ("BF16", "bfloat16")])
def test_reduced_inside_float32_at_the_borders(prec, dtype):
    g = _mlp()
    r = _run(g, prec)
    assert [r.tensor(t).dtype for t in r.inputs + r.outputs] == ["float32"] * 3
    for n in r.nodes:
        if n.op in ("MatMul", "Add", "Relu", "Softmax"):
            assert {r.tensor(t).dtype for t in n.inputs + n.outputs} == {dtype}, n.name
    casts = [n for n in r.nodes if n.op == "Cast"]
    # one cast in (x), one out per output (y and p)
    assert sorted((r.tensor(c.inputs[0]).dtype, r.tensor(c.outputs[0]).dtype) for c in casts) == \
        sorted([("float32", dtype), (dtype, "float32"), (dtype, "float32")])
    # weights converted in place: stored once, in the reduced dtype
    assert r.tensor("w1").value.dtype == np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
    assert not any(name.startswith("w1#") for name in r.tensors)


def test_fp16_numerics_within_half_tolerance_and_fp32_is_untouched():
    g = _mlp()
    feeds = random_feeds(g, seed=1, bind={"N": 5})
    want = run_graph(g, feeds)
    fp32 = _run(g, "FP32")
    assert [n.op for n in fp32.nodes] == [n.op for n in g.nodes]
    for prec in ("FP16", "BF16"):
        got = run_graph(_run(g, prec, fuse=True), feeds)
        for name in g.outputs:
            assert got[name].dtype == np.float32
            scale = np.abs(want[name]).max()
            assert np.abs(got[name] - want[name]).max() <= 1e-2 * scale, (prec, name)
            assert not np.array_equal(got[name], want[name])  # it did run in reduced precision


def test_border_casts_join_the_elementwise_kernels():
    r = _run(_mlp(), "FP16", fuse=True)
    assert "Cast" not in r.summary()  # both border casts live inside FusedElementwise programs
    programs = [n.attrs["program"] for n in r.nodes if n.op == "tftrt.FusedElementwise"]
    assert any(ins["op"] == "Cast" for p in programs for ins in p)


def test_override_keeps_a_node_in_float32_with_casts_around_it():
    g = _mlp()
    relu = next(n for n in g.nodes if n.op == "Relu").name
    r = _run(g, "FP16", overrides={f"^{relu}$": "FP32"})
    node = r.node(relu)
    assert r.tensor(node.inputs[0]).dtype == "float32" and r.tensor(node.outputs[0]).dtype == "float32"
    consumer = next(n for n in r.nodes if node.outputs[0] in n.inputs)
    assert consumer.op == "Cast" and r.tensor(consumer.outputs[0]).dtype == "float16"


def test_constant_shared_with_a_float32_node_is_copied_not_changed():
    b = GraphBuilder()
    x = b.input("x", (4, 8))
    c = b.const(RNG.standard_normal((4, 8)).astype(np.float32), "shared")
    y1 = b.op("Add", [x, c], (4, 8))
    y2 = b.op("Sub", [x, c], (4, 8))
    g = b.output(y1, y2)
    sub = next(n for n in g.nodes if n.op == "Sub").name
    r = _run(g, "FP16", overrides={sub: "FP32"})
    assert r.tensor("shared").dtype == "float32"
    assert r.tensor("shared#float16").value.dtype == np.float16


def test_out_of_range_constants_saturate_instead_of_becoming_inf():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    y = b.op("Add", [x, b.const(np.array([-1e9, 1.0, np.inf], np.float32), "mask")], (2, 3))
    r = _run(b.output(y), "FP16")
    np.testing.assert_array_equal(r.tensor("mask").value, np.array([-65504.0, 1.0, np.inf], np.float16))


def test_cast_nodes_follow_their_retyped_output():
    b = GraphBuilder()
    i = b.input("i", (3,), dtype="int32")
    f = b.op("Cast", [i], (3,), to=1)
    y = b.op("Mul", [f, b.const(np.float32(2.0))], (3,))
    r = _run(b.output(y), "FP16")
    cast = next(n for n in r.nodes if n.op == "Cast" and n.inputs == ["i"])
    assert cast.attrs["to"] == 10 and r.tensor(cast.outputs[0]).dtype == "float16"
    got = run_graph(r, {"i": np.array([1, 2, 3], np.int32)})
    np.testing.assert_array_equal(got[y], np.array([2, 4, 6], np.float32))


@pytest.mark.parametrize("overrides, message", [
    ({"conv": "INT4"}, "must be one of"),
    ({"(": "FP32"}, "not a valid regular expression"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        precision.compile_overrides(overrides)
