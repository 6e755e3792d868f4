import numpy as np

from tftrt_lite.engine.passes import attention_fusion

from pass_graphs import assert_same_numerics

B, H, S, D = 2, 3, 5, 4


def _einsum_style(b, with_mask=False, k_transpose_node=False):
    """tf2onnx's lowering of Keras MHA's einsums: [B*H, S, D] matmuls inside views."""
    q = b.input("q", (B * H, S, D))
    k = b.input("k", (B * H, S, D) if k_transpose_node else (B * H, D, S))
    v = b.input("v", (B * H, S, D))
    kt = b.op("Transpose", [k], (B * H, D, S), perm=[0, 2, 1]) if k_transpose_node else k
    s = b.op("MatMul", [q, kt], (B * H, S, S))
    r = b.op("Reshape", [s, b.const(np.array([B, H, S, 1, S]))], (B, H, S, 1, S), allowzero=0)
    sq = b.op("Squeeze", [r, b.const(np.array([3]))], (B, H, S, S))
    scaled = b.op("Mul", [sq, b.const(np.float32(0.5))], (B, H, S, S))
    if with_mask:
        scaled = b.op("Reshape", [scaled, b.const(np.array([B * H, S, S]))], (B * H, S, S), allowzero=0)
        mask = b.input("mask", (1, S, S))
        scaled = b.op("Add", [mask, scaled], (B * H, S, S))
    p = b.op("Softmax", [scaled], b.graph.tensor(scaled).shape, axis=-1)
    if not with_mask:
        p = b.op("Unsqueeze", [p, b.const(np.array([3]))], (B, H, S, 1, S))
        p = b.op("Reshape", [p, b.const(np.array([B * H, S, S]))], (B * H, S, S), allowzero=0)
    o = b.op("MatMul", [p, v], (B * H, S, D))
    return b.output(o)


def test_einsum_lowering_becomes_one_attention(builder):
    g = _einsum_style(builder)
    before = g.copy()
    attention_fusion.run(g)
    g.verify()
    assert g.summary() == {"tftrt.Attention": 1}
    n = g.nodes[0]
    assert n.inputs == ["q", "k", "v"] and n.attrs == {"scale": 0.5, "k_transposed": 1}
    assert_same_numerics(before, g)


def test_mask_and_explicit_k_transpose(builder):
    """A mask added to scores of the QK matmul's own shape, K through a Transpose node."""
    g = _einsum_style(builder, with_mask=True, k_transpose_node=True)
    before = g.copy()
    attention_fusion.run(g)
    assert g.summary() == {"tftrt.Attention": 1}
    n = g.nodes[0]
    assert n.inputs == ["q", "k", "v", "mask"] and n.attrs["k_transposed"] == 0
    assert_same_numerics(before, g)


def test_softmax_over_other_axis_is_left_alone(builder):
    b = builder
    q = b.input("q", (2, 3, 4))
    s = b.op("MatMul", [q, b.input("kt", (2, 4, 3))], (2, 3, 3))
    p = b.op("Softmax", [s], (2, 3, 3), axis=1)
    o = b.op("MatMul", [p, b.input("v", (2, 3, 4))], (2, 3, 4))
    g = b.output(o)
    attention_fusion.run(g)
    assert g.summary() == {"MatMul": 2, "Softmax": 1}


def test_mask_added_in_another_view_is_not_fused(builder):
    b = builder
    q, kt, v = b.input("q", (B * H, S, D)), b.input("kt", (B * H, D, S)), b.input("v", (B * H, S, D))
    s = b.op("MatMul", [q, kt], (B * H, S, S))
    r = b.op("Reshape", [s, b.const(np.array([B, H, S, S]))], (B, H, S, S), allowzero=0)
    m = b.op("Add", [r, b.input("mask", (B, 1, 1, S))], (B, H, S, S))
    p = b.op("Softmax", [m], (B, H, S, S), axis=-1)
    p = b.op("Reshape", [p, b.const(np.array([B * H, S, S]))], (B * H, S, S), allowzero=0)
    o = b.op("MatMul", [p, v], (B * H, S, D))
    g = b.output(o)
    attention_fusion.run(g)
    assert "tftrt.Attention" not in g.summary()
