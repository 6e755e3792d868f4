"""attention_layout: head split/merge views and transposes absorbed into ``tftrt.Attention``'s
operand layout, proven with the reference executor on hand-built graphs and on the zoo's
BERT engine."""
import numpy as np
import pytest

from tftrt_lite.engine.passes import attention_fusion, attention_layout

from pass_graphs import assert_same_numerics

H, S, D = 3, 5, 4


def _keras_mha(b, n="N", with_mask=False):
    """tf2onnx's lowering of Keras MHA's einsums around a fused attention (BERT's pattern):
    Q/K/V [n, S, H*D] → Reshape → Transpose → Reshape [n*H, ...]; O back to [n, S, H*D]."""
    nh = f"{H}*{n}" if isinstance(n, str) else n * H
    proj = {x: b.input(x, (n, S, H * D)) for x in "qkv"}
    q = b.op("Reshape", [proj["q"], b.const(np.array([-1, S, H, 1, D]))], (n, S, H, 1, D), allowzero=0)
    q = b.op("Transpose", [q], (n, H, S, 1, D), perm=[0, 2, 1, 3, 4])
    q = b.op("Reshape", [q, b.const(np.array([-1, S, D]))], (nh, S, D), allowzero=0)
    k = b.op("Reshape", [proj["k"], b.const(np.array([-1, 1, S, H, D]))], (n, 1, S, H, D), allowzero=0)
    k = b.op("Transpose", [k], (n, H, 1, D, S), perm=[0, 3, 1, 4, 2])
    k = b.op("Reshape", [k, b.const(np.array([-1, D, S]))], (nh, D, S), allowzero=0)
    v = b.op("Reshape", [proj["v"], b.const(np.array([-1, S, 1, H, D]))], (n, S, 1, H, D), allowzero=0)
    v = b.op("Transpose", [v], (n, H, 1, S, D), perm=[0, 3, 2, 1, 4])
    v = b.op("Reshape", [v, b.const(np.array([-1, S, D]))], (nh, S, D), allowzero=0)
    inputs = [q, k, v]
    if with_mask:
        inputs.append(b.input("mask", (1, S, S)))
    o = b.op("tftrt.Attention", inputs, (nh, S, D), scale=0.5, k_transposed=1)
    o = b.op("Reshape", [o, b.const(np.array([-1, H, S, D]))], (n, H, S, D), allowzero=0)
    o = b.op("Transpose", [o], (n, S, H, D), perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([-1, S, H * D]))], (n, S, H * D), allowzero=0)
    return b.output(b.op("Relu", [o], (n, S, H * D)))


@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
def test_keras_mha_views_become_the_layout(builder, with_mask):
    g = _keras_mha(builder, with_mask=with_mask)
    before = g.copy()
    attention_layout.run(g)
    g.verify()
    assert g.summary() == {"tftrt.Attention": 1, "Relu": 1}
    (att,) = [n for n in g.nodes if n.op == "tftrt.Attention"]
    assert att.inputs[:3] == ["q", "k", "v"] and att.attrs["k_transposed"] == 0
    assert g.tensor(att.outputs[0]).shape == ("N", S, H * D)  # written in the next op's layout
    layout = att.attrs["layout"]
    assert layout["dims"] == ["N", H, S, S, D, D]
    for x in "qkvo":  # all four in the GEMMs' [N, S, H, D] memory order
        assert layout[x] == [S * H * D, D, H * D, 1], x
    for n in (1, 3):
        assert_same_numerics(before, g, bind={"N": n}, seed=n)


def test_from_the_fusion_on_einsum_scores(builder):
    """attention_fusion then attention_layout on the full lowering with the scores' views."""
    b = builder
    n = 2
    proj = {x: b.input(x, (n, S, H * D)) for x in "qkv"}
    q = b.op("Reshape", [proj["q"], b.const(np.array([n, S, H, D]))], (n, S, H, D), allowzero=0)
    q = b.op("Transpose", [q], (n, H, S, D), perm=[0, 2, 1, 3])
    q = b.op("Reshape", [q, b.const(np.array([n * H, S, D]))], (n * H, S, D), allowzero=0)
    k = b.op("Reshape", [proj["k"], b.const(np.array([n, S, H, D]))], (n, S, H, D), allowzero=0)
    k = b.op("Transpose", [k], (n, H, D, S), perm=[0, 2, 3, 1])
    k = b.op("Reshape", [k, b.const(np.array([n * H, D, S]))], (n * H, D, S), allowzero=0)
    v = b.op("Reshape", [proj["v"], b.const(np.array([n, S, H, D]))], (n, S, H, D), allowzero=0)
    v = b.op("Transpose", [v], (n, H, S, D), perm=[0, 2, 1, 3])
    v = b.op("Reshape", [v, b.const(np.array([n * H, S, D]))], (n * H, S, D), allowzero=0)
    s = b.op("MatMul", [q, k], (n * H, S, S))
    p = b.op("Softmax", [b.op("Mul", [s, b.const(np.float32(0.5))], (n * H, S, S))], (n * H, S, S), axis=-1)
    o = b.op("MatMul", [p, v], (n * H, S, D))
    o = b.op("Reshape", [o, b.const(np.array([n, H, S, D]))], (n, H, S, D), allowzero=0)
    o = b.op("Transpose", [o], (n, S, H, D), perm=[0, 2, 1, 3])
    g = b.output(o)  # the merged output is itself a graph output: written directly
    before = g.copy()
    attention_fusion.run(g)
    attention_layout.run(g)
    g.verify()
    assert g.summary() == {"tftrt.Attention": 1}
    att = g.nodes[0]
    assert att.outputs == g.outputs and att.attrs["layout"]["k"] == [S * H * D, D, H * D, 1]
    assert att.attrs["layout"]["o"] == [S * H * D, D, H * D, 1]
    assert_same_numerics(before, g)


def test_shared_or_nonview_chains_stay(builder):
    """An intermediate with another reader, or a non-view op, ends a chain; operands with
    nothing absorbable keep their tensors, and an attention with none is left alone."""
    b = builder
    x = b.input("x", (2, S, H * D))
    r = b.op("Reshape", [x, b.const(np.array([2, S, H, D]))], (2, S, H, D), allowzero=0)
    q = b.op("Transpose", [r], (2, H, S, D), perm=[0, 2, 1, 3])
    side = b.op("Neg", [q], (2, H, S, D))  # q is read twice: the Transpose stays
    k, v = b.input("k", (2, H, S, D)), b.input("v", (2, H, S, D))
    o = b.op("tftrt.Attention", [q, k, v], (2, H, S, D), scale=0.5, k_transposed=0)
    g = b.output(o, side)
    summary = g.summary()
    attention_layout.run(g)
    (att,) = [n for n in g.nodes if n.op == "tftrt.Attention"]
    assert "layout" not in att.attrs and g.summary() == summary


def test_partial_absorption_keeps_other_operands_contiguous(builder):
    """Only V comes through a head split; Q, K (plain [N*H, S, D] tensors) get contiguous strides."""
    b = builder
    q, k = b.input("q", ("2*N", S, D)), b.input("k", ("2*N", S, D))
    x = b.input("x", ("N", S, 2 * D))
    v = b.op("Reshape", [x, b.const(np.array([-1, S, 2, D]))], ("N", S, 2, D), allowzero=0)
    v = b.op("Transpose", [v], ("N", 2, S, D), perm=[0, 2, 1, 3])
    v = b.op("Reshape", [v, b.const(np.array([-1, S, D]))], ("2*N", S, D), allowzero=0)
    o = b.op("tftrt.Attention", [q, k, v, b.input("mask", ("2*N", S, S))], ("2*N", S, D),
             scale=0.5, k_transposed=0)
    g = b.output(o)
    before = g.copy()
    attention_layout.run(g)
    assert g.summary() == before.summary(), "a mask over merged batch·heads keeps the views"
    g.nodes[-1].inputs.pop()
    before = g.copy()
    attention_layout.run(g)
    assert g.summary() == {"tftrt.Attention": 1}
    layout = g.nodes[0].attrs["layout"]
    assert layout["dims"] == ["N", 2, S, S, D, D]
    assert layout["q"] == [2 * S * D, S * D, D, 1] and layout["v"] == [2 * S * D, D, 2 * D, 1]
    assert_same_numerics(before, g, bind={"N": 3, "2*N": 6})


def test_zoo_bert_engine_has_no_transposes():
    """The converted BERT encoder: every head split/merge transpose gone, the engine (plan,
    memory plan, reference) still matching TensorFlow."""
    import zoo
    from tftrt_lite.verify import verify_engine

    engine = zoo.engine("bert_encoder")
    ops = engine.graph.summary()
    assert "Transpose" not in ops and ops["tftrt.Attention"] == 2, ops
    for att in (n for n in engine.graph.nodes if n.op == "tftrt.Attention"):
        # the QKV merge (later in the pipeline) adds the projections' offsets
        assert set(att.attrs["layout"]) == {"dims", "q", "k", "v", "o", "shapes", "offsets"}
    verify_engine(engine, zoo.lowered("bert_encoder"), batch_sizes=(2,))
