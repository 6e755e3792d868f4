import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tftrt_lite.engine.onnx_import import SUPPORTED_ONNX_OPS, import_onnx
from tftrt_lite.engine.reference import REFERENCE_OPS, run_graph
from tftrt_lite.errors import ShapeError, UnsupportedModelError, UnsupportedOpError


def _model(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


F = TensorProto.FLOAT


def test_every_supported_op_has_a_reference_implementation():
    assert SUPPORTED_ONNX_OPS - {"Constant"} <= set(REFERENCE_OPS)


def test_attributes_get_their_defaults_and_derived_values():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                helper.make_node("LeakyRelu", ["c"], ["l"], name="lrelu"),
                helper.make_node("Softmax", ["l"], ["y"], name="sm")],
               [_vi("x", F, ["N", 3, 8, 8])], [_vi("y", F, None)], [_const("w", w)])
    g = import_onnx(m)
    conv = g.node("conv")
    assert conv.attrs == {"kernel_shape": [3, 3], "strides": [1, 1], "dilations": [1, 1], "pads": [0, 0, 0, 0],
                          "group": 1, "auto_pad": "NOTSET"}
    assert g.node("lrelu").attrs["alpha"] == pytest.approx(0.01)
    assert g.node("sm").attrs["axis"] == -1
    assert g.tensor("y").shape == ("N", 4, 6, 6)


def test_auto_pad_same_becomes_explicit_pads():
    w = np.ones((2, 1, 3, 3), np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SAME_UPPER", strides=[2, 2])],
               [_vi("x", F, [1, 1, 8, 7])], [_vi("y", F, None)], [_const("w", w)])
    g = import_onnx(m)
    assert g.node("conv").attrs["pads"] == [0, 1, 1, 1]  # totals 1 and 2, extra at the end
    assert g.node("conv").attrs["auto_pad"] == "NOTSET"
    assert g.tensor("y").shape == (1, 2, 4, 4)


def test_reduce_axes_attribute_becomes_an_input_below_opset_18():
    m = _model([helper.make_node("ReduceMean", ["x"], ["y"], name="mean", axes=[1], keepdims=0)],
               [_vi("x", F, ["N", 5, 3])], [_vi("y", F, None)], opset=13)
    g = import_onnx(m)
    node = g.node("mean")
    assert "axes" not in node.attrs and node.attrs["keepdims"] == 0
    assert g.const(node.inputs[1]).tolist() == [1]
    assert g.tensor("y").shape == ("N", 3)


def test_reshape_minus_one_gives_a_product_expression():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
               [_vi("x", F, ["N", 128, 768])], [_vi("y", F, None)], [_const("s", np.array([-1, 768], np.int64))])
    assert import_onnx(m).tensor("y").shape == ("128*N", 768)


def test_shape_subgraph_is_folded_symbolically():
    """tf2onnx's dynamic reshape: y = reshape(x, [shape(x)[0], shape(x)[1] * 4, -1])."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "i0"], ["n"], name="g0", axis=0),
        helper.make_node("Gather", ["shp", "i1"], ["s"], name="g1", axis=0),
        helper.make_node("Mul", ["s", "four"], ["s4"], name="mul"),
        helper.make_node("Concat", ["n", "s4", "m1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    inits = [_const("i0", np.array([0], np.int64)), _const("i1", np.array([1], np.int64)),
             _const("four", np.array([4], np.int64)), _const("m1", np.array([-1], np.int64))]
    m = _model(nodes, [_vi("x", F, ["N", "S", 8])], [_vi("y", F, None)], inits)
    g = import_onnx(m)
    assert g.summary() == {"Reshape": 1}
    assert g.tensor("y").shape == ("N", "4*S", 2)
    assert g.const(g.node("reshape").inputs[1]).tolist() == [0, -1, 2]
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(g, {"x": x})["y"], x.reshape(2, 12, 2))


def test_static_shape_values_become_constants():
    nodes = [helper.make_node("Shape", ["x"], ["shp"], name="shape"),
             helper.make_node("ConstantOfShape", ["shp"], ["y"], name="fill",
                              value=numpy_helper.from_array(np.array([2.5], np.float32)))]
    g = import_onnx(_model(nodes, [_vi("x", F, [2, 3])], [_vi("y", F, None)]))
    assert [n.op for n in g.nodes] == ["ConstantOfShape"]
    assert g.const(g.nodes[0].inputs[0]).tolist() == [2, 3]


def test_symbolic_expand_target_stays_computed():
    nodes = [helper.make_node("Shape", ["x"], ["shp"], name="shape"),
             helper.make_node("Expand", ["b", "shp"], ["y"], name="expand")]
    g = import_onnx(_model(nodes, [_vi("x", F, ["N", 4]), _vi("b", F, [1, 4])], [_vi("y", F, None)]))
    assert g.tensor("y").shape == ("N", 4)
    assert [n.op for n in g.nodes] == ["Shape", "Expand"]


def test_broadcasting_two_input_symbols_unifies_them():
    m = _model([helper.make_node("Add", ["a", "b"], ["y"], name="add")],
               [_vi("a", F, ["N", 4]), _vi("b", F, ["M", 4])], [_vi("y", F, None)])
    g = import_onnx(m)
    assert g.tensor("a").shape == g.tensor("b").shape == g.tensor("y").shape == ("M", 4)


def test_anonymous_and_odd_dims_get_symbol_names():
    vi = _vi("x", F, [None, "batch size", 3])
    g = import_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], [vi], [_vi("y", F, None)]))
    assert g.tensor("x").shape == ("d0_0", "batch_size", 3)
    assert g.nodes[0].name == "Relu_0"


def test_einsum_shape():
    m = _model([helper.make_node("Einsum", ["q", "k"], ["y"], name="e", equation="bqhd,bkhd->bhqk")],
               [_vi("q", F, ["B", 16, 4, 8]), _vi("k", F, ["B", 12, 4, 8])], [_vi("y", F, None)])
    assert import_onnx(m).tensor("y").shape == ("B", 4, 16, 12)


def test_unsupported_op_names_op_and_node():
    m = _model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [_vi("x", F, [3])],
               [_vi("y", TensorProto.INT64, None)])
    with pytest.raises(UnsupportedOpError, match="NonZero node 'nz': op 'NonZero' is not supported"):
        import_onnx(m)


def test_other_domains_and_opsets_are_rejected():
    node = helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.microsoft")
    with pytest.raises(UnsupportedOpError, match="Gelu node 'g': domain 'com.microsoft'"):
        import_onnx(_model([node], [_vi("x", F, [3])], [_vi("y", F, None)]))
    relu = helper.make_node("Relu", ["x"], ["y"])
    with pytest.raises(UnsupportedModelError, match="opset 19 is not supported"):
        import_onnx(_model([relu], [_vi("x", F, [3])], [_vi("y", F, None)], opset=19))
    with pytest.raises(UnsupportedModelError, match="LayerNormalization does not exist at opset 13"):
        import_onnx(_model([helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln")],
                           [_vi("x", F, [2, 3]), _vi("s", F, [3])], [_vi("y", F, None)], opset=13))


def test_value_dependent_shape_is_rejected():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
               [_vi("x", F, [2, 6]), _vi("s", TensorProto.INT64, [2])], [_vi("y", F, None)])
    with pytest.raises(UnsupportedOpError, match=r"Reshape node 'r': input 1 \('s'\) decides the output shape"):
        import_onnx(m)


def test_shape_conflicts_name_the_node():
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
               [_vi("a", F, [2, 3]), _vi("b", F, [4, 5])], [_vi("y", F, None)])
    with pytest.raises(ShapeError, match="MatMul node 'mm'.*dims 3 and 4 do not broadcast"):
        import_onnx(m)


def test_dead_nodes_are_removed_and_graph_verifies():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="used"),
             helper.make_node("Exp", ["x"], ["unused"], name="dead")]
    g = import_onnx(_model(nodes, [_vi("x", F, [2])], [_vi("y", F, None)]))
    assert [n.name for n in g.nodes] == ["used"]
    assert "unused" not in g.tensors


def test_quantize_linear_types_and_refusals():
    """Q gives the zero point's type (uint8 without one), DQ float32; what the IR's 8-bit QDQ
    cannot hold is refused at import, naming the node."""
    scale, zp = _const("s", np.float32([0.1, 0.2, 0.3])), _const("zp", np.int8([0, 1, -1]))
    q = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q", axis=1)
    dq = helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq", axis=1)
    g = import_onnx(_model([q, dq], [_vi("x", F, ["N", 3, 4])], [_vi("y", F, None)], [scale, zp]))
    assert (g.tensor("q").dtype, g.tensor("y").dtype, g.node("q").attrs["axis"]) == ("int8", "float32", 1)
    uint8 = import_onnx(_model([helper.make_node("QuantizeLinear", ["x", "t"], ["q"])], [_vi("x", F, [2])],
                               [_vi("q", TensorProto.UINT8, None)], [_const("t", np.float32(0.5))]))
    assert uint8.tensor("q").dtype == "uint8"
    with pytest.raises(ShapeError, match="QuantizeLinear node 'q': 3 scales for 4 channels on axis 2"):
        import_onnx(_model([helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q", axis=2), dq],
                           [_vi("x", F, ["N", 3, 4])], [_vi("y", F, None)], [scale, zp]))
    with pytest.raises(UnsupportedOpError, match="QuantizeLinear node 'q': input of dtype float16"):
        import_onnx(_model([q, dq], [_vi("x", TensorProto.FLOAT16, ["N", 3, 4])], [_vi("y", F, None)],
                           [scale, zp], opset=17))
