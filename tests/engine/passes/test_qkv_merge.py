"""qkv_merge: the three projections of an attention become one GEMM read at column offsets,
proven with the reference executor on hand-built graphs (Keras MHA's lowering after the
attention layout and GEMM fusion passes)."""
import numpy as np
import pytest

from tftrt_lite.engine.passes import PassContext, attention_layout, gemm_fusion, qkv_merge

from pass_graphs import GraphBuilder, assert_same_numerics

H, S, D, E = 3, 5, 4, 7


def _mha(b, rng, widths=(H * D, H * D, H * D), shared_input=True, bias=True, trans_b=False):
    """x [N, S, E] → three Dense projections → head-split views → attention → merged heads
    → Relu, after ``attention_layout`` (the GEMMs still MatMul + Add until ``gemm_fusion``)."""
    x = b.input("x", ("N", S, E))
    x2 = b.input("x2", ("N", S, E)) if not shared_input else x
    rows = b.op("Reshape", [x, b.const(np.array([-1, E]))], ("5*N", E), allowzero=0) if trans_b else None
    proj = []
    for i, (name, width) in enumerate(zip("qkv", widths)):
        w = rng.standard_normal((width, E) if trans_b else (E, width)).astype(np.float32)
        src = x if i < 2 else x2
        if trans_b:  # ONNX Gemm on [N·S, E] rows (only with the shared input)
            y = b.op("Gemm", [rows, b.const(w)], ("5*N", width), transB=1)
            y = b.op("Reshape", [y, b.const(np.array([-1, S, width]))], ("N", S, width), allowzero=0)
        else:
            y = b.op("MatMul", [src, b.const(w, name=f"W{name}")], ("N", S, width))
        if bias:
            y = b.op("Add", [y, b.const(rng.standard_normal(width).astype(np.float32))], ("N", S, width))
        proj.append(y)
    q, k, v = (b.op("Reshape", [p, b.const(np.array([-1, S, H, width // H]))], ("N", S, H, width // H),
                    allowzero=0) for p, width in zip(proj, widths))
    q = b.op("Transpose", [q], ("N", H, S, D), perm=[0, 2, 1, 3])
    k = b.op("Transpose", [k], ("N", H, S, D), perm=[0, 2, 1, 3])
    dv = widths[2] // H
    v = b.op("Transpose", [v], ("N", H, S, dv), perm=[0, 2, 1, 3])
    o = b.op("tftrt.Attention", [q, k, v], ("N", H, S, dv), scale=0.5, k_transposed=0)
    o = b.op("Transpose", [o], ("N", S, H, dv), perm=[0, 2, 1, 3])
    o = b.op("Reshape", [o, b.const(np.array([-1, S, H * dv]))], ("N", S, H * dv), allowzero=0)
    g = b.output(b.op("Relu", [o], ("N", S, H * dv)))
    attention_layout.run(g)
    gemm_fusion.run(g)
    g.verify()
    return g


def _attention(g):
    (att,) = [n for n in g.nodes if n.op == "tftrt.Attention"]
    return att


@pytest.mark.parametrize("trans_b", [False, True], ids=["matmul", "gemm_transb"])
def test_projections_merge_into_one_gemm(trans_b):
    g = _mha(GraphBuilder(), np.random.default_rng(0), trans_b=trans_b)
    before = g.copy()
    qkv_merge.run(g, PassContext())
    g.verify()
    gemms = [n for n in g.nodes if n.op == "tftrt.FusedGemm"]
    assert len(gemms) == 1
    w = g.const(gemms[0].inputs[1])
    assert w.shape == ((3 * H * D, E) if trans_b else (E, 3 * H * D))
    assert g.const(gemms[0].inputs[2]).shape == (3 * H * D,)
    att = _attention(g)
    merged = gemms[0].outputs[0]
    assert att.inputs[:3] == [merged] * 3
    layout = att.attrs["layout"]
    assert layout["offsets"] == {"q": 0, "k": H * D, "v": 2 * H * D}
    for x in "qkv":  # rows of 3·H·D now; heads and d unchanged
        assert layout[x] == [S * 3 * H * D, D, 3 * H * D, 1], x
        assert layout["shapes"][x] == (["5*N", 3 * H * D] if trans_b else ["N", S, 3 * H * D])
    for n in (1, 3):
        assert_same_numerics(before, g, bind={"N": n}, seed=n)


def test_value_width_may_differ():
    """V with its own head dim (Dv = 2·D): offsets follow each projection's width."""
    g = _mha(GraphBuilder(), np.random.default_rng(1), widths=(H * D, H * D, 2 * H * D))
    before = g.copy()
    qkv_merge.run(g, PassContext())
    layout = _attention(g).attrs["layout"]
    assert layout["offsets"] == {"q": 0, "k": H * D, "v": 2 * H * D}
    assert layout["v"] == [S * 4 * H * D, 2 * D, 4 * H * D, 1]
    assert_same_numerics(before, g, bind={"N": 2})


@pytest.mark.parametrize("case", ["two_inputs", "bias_on_some", "override"])
def test_left_alone(case):
    rng = np.random.default_rng(2)
    g = _mha(GraphBuilder(), rng, shared_input=case != "two_inputs")
    if case == "bias_on_some":
        gemm = next(n for n in g.nodes if n.op == "tftrt.FusedGemm")
        gemm.inputs[2] = ""
    k_gemm = [n for n in g.nodes if n.op == "tftrt.FusedGemm"][1].name
    ctx = PassContext(precision_overrides={k_gemm: "FP32"} if case == "override" else None)
    before = g.summary()
    qkv_merge.run(g, ctx)
    assert g.summary() == before and "offsets" not in _attention(g).attrs["layout"]


def test_row_strides_must_step_rows_or_stay_in_one():
    assert qkv_merge._row_strides([60, 4, 12, 1], ["N", 3, 5, 4], 12, 36) == [180, 4, 36, 1]
    assert qkv_merge._row_strides(["60*N", 0, 12, 1], [2, 1, 5, 12], 12, 36) == ["180*N", 0, 36, 1]
    # in-row strides reaching past the row (h stride 5 over 3 heads of 4): not a column view
    assert qkv_merge._row_strides([60, 5, 12, 1], ["N", 3, 5, 4], 12, 36) is None
