"""build_engine end to end on small hand-made ONNX models (no GPU needed)."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from tftrt_lite.engine import Engine, build_engine
from tftrt_lite.engine.builder import bind_symbols
from tftrt_lite.engine.costs import symbol_values
from tftrt_lite.engine.plan import NONE_INDEX, Activation, ArgKind, ConvStep, GemmStep, LaunchStep, Storage
from tftrt_lite.errors import ConversionError, NotSupportedYetError, UnsupportedOpError


@pytest.fixture(autouse=True)
def kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TFTRT_LITE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernel_cache"))


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "m", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _mlp(rng):
    inits = {"W1": rng.standard_normal((16, 32)).astype(np.float32),
             "B1": rng.standard_normal(32).astype(np.float32),
             "W2": rng.standard_normal((32, 10)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "B1"], ["hb"], name="add1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["z"], name="mm2"),
             helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return model, inits


def _expected_mlp(x, w):
    z = np.maximum(x @ w["W1"] + w["B1"], 0) @ w["W2"]
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_mlp_builds_runs_and_round_trips():
    rng = np.random.default_rng(0)
    model, inits = _mlp(rng)
    engine = build_engine(model, name="mlp")
    assert engine.name == "mlp" and engine.input_names == ["x"] and engine.output_names == ["y"]
    assert engine.target_archs == ("sm_80", "sm_90")
    s = engine.stats
    assert s["library_calls"] == 2 and s["kernel_count"] == len(engine.kernels) >= 1
    assert s["ops"] == engine.graph.summary() and s["arena_bytes_expr"]
    mem = s["memory_at_binding"]
    assert mem["binding"] == {"N": 1} and 0 < mem["arena_bytes"] <= mem["naive_bytes"]
    for k in engine.kernels:
        assert [im.arch for im in k.images] == ["sm_80", "sm_90"] and k.ptx_arch == "sm_80"
        assert all(im.cubin[:4] == b"\x7fELF" for im in k.images) and ".entry " + k.name in k.ptx
    gemms = [st for st in engine.plan.steps if isinstance(st, GemmStep)]
    assert [g.m.evaluate([7]) for g in gemms] == [7, 7] and [g.k.constant for g in gemms] == [16, 32]
    x = rng.standard_normal((5, 16)).astype(np.float32)
    out = engine.run_reference({"x": x})
    np.testing.assert_allclose(out["y"], _expected_mlp(x, inits), rtol=1e-5, atol=1e-6)

    back = Engine.deserialize(engine.serialize())
    assert back.serialize() == engine.serialize()
    assert [(n.op, n.name, n.inputs, n.outputs) for n in back.graph.nodes] == \
        [(n.op, n.name, n.inputs, n.outputs) for n in engine.graph.nodes]
    for name, t in engine.graph.tensors.items():
        t2 = back.graph.tensors[name]
        assert (t2.dtype, t2.shape) == (t.dtype, t.shape)
        assert (t.value is None) == (t2.value is None)
        if t.value is not None:
            assert t.value.tobytes() == t2.value.tobytes()
    out2 = back.run_reference({"x": x})
    assert out2["y"].tobytes() == out["y"].tobytes()
    assert back.stats == engine.stats and back.precision == "FP32"


def test_every_buffer_and_argument_resolves():
    model, _ = _mlp(np.random.default_rng(1))
    plan = build_engine(model).plan
    names = [b.name for b in plan.buffers]
    assert len(names) == len(set(names))
    storages = {b.name: b.storage for b in plan.buffers}
    assert storages["x"] == Storage.INPUT and storages["y"] == Storage.OUTPUT
    assert sum(1 for s in storages.values() if s == Storage.WEIGHT) >= 2
    for b in plan.buffers:
        if b.storage == Storage.WEIGHT:
            assert b.a + b.b <= len(plan.weights)
    launches = [s for s in plan.steps if isinstance(s, LaunchStep)]
    for st in launches:
        assert st.kernel < len(plan.kernels)
        for a in st.args:
            if a.kind == ArgKind.BUFFER:
                assert a.value < len(plan.buffers)
        assert st.grid[0].evaluate([4]) >= 1


def _conv_model(rng, channels=8):
    """NCHW conv → relu → maxpool → global average pool, as an ONNX exporter writes it."""
    w = rng.standard_normal((8, channels, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat", axis=1)]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], {"w": w, "b": b})
    return model


def test_conv_model_uses_cudnn_step_and_generated_kernels():
    rng = np.random.default_rng(2)
    engine = build_engine(_conv_model(rng), target_arch="sm_90")
    convs = [s for s in engine.plan.steps if isinstance(s, ConvStep)]
    assert len(convs) == 1 and convs[0].groups == 1 and convs[0].k.constant == 8
    assert engine.target_archs == ("sm_90",)
    assert all([im.arch for im in k.images] == ["sm_90"] for k in engine.kernels)
    # the graph output is a view (Flatten) of a kernel's result: it must still be written
    y_buf = [i for i, b in enumerate(engine.plan.buffers) if b.storage == Storage.OUTPUT]
    writers = [s for s in engine.plan.steps if isinstance(s, LaunchStep)
               and any(a.kind == ArgKind.BUFFER and a.value == y_buf[0] for a in s.args)]
    assert writers
    x = rng.standard_normal((2, 8, 8, 8)).astype(np.float32)
    back = Engine.deserialize(engine.serialize())
    assert back.run_reference({"x": x})["y"].tobytes() == engine.run_reference({"x": x})["y"].tobytes()


def test_conv_over_three_channels_is_a_generated_stem_kernel():
    """cuDNN has no tensor-core kernel for an RGB stem; the filter goes into a generated kernel."""
    engine = build_engine(_conv_model(np.random.default_rng(2), channels=3), target_arch="sm_90")
    assert not [s for s in engine.plan.steps if isinstance(s, ConvStep)]
    names = [engine.plan.kernels[s.kernel].name for s in engine.plan.steps if isinstance(s, LaunchStep)]
    assert sum(n.startswith("tl_stemconv_") for n in names) == 1, names


@pytest.mark.parametrize("precision", ["FP16", "FP32"])
def test_resnet_stem_folds_into_a_tensor_core_kernel_in_half_engines(precision):
    """A 7x7 stride-2 conv over RGB (ResNet's stem): in an FP16 engine a space-to-depth
    kernel and the generated tap kernel; FP32 keeps cuDNN's 7x7 conv. Either way the plan's
    math is the original conv's."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 3, 7, 7)).astype(np.float32) / 12
    b = rng.standard_normal(64).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[3, 3, 3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64, 16, 16])], {"w": w, "b": b})
    engine = build_engine(model, target_arch="sm_90", precision=precision)
    convs = [s for s in engine.plan.steps if isinstance(s, ConvStep)]
    names = [engine.plan.kernels[s.kernel].name for s in engine.plan.steps if isinstance(s, LaunchStep)]
    if precision == "FP16":
        assert not convs and sum(n.startswith("tl_space_to_depth_") for n in names) == 1, names
        assert sum(n.startswith("tl_tapconv_") for n in names) == 1, names
        (taps,) = [s for s in engine.plan.steps if isinstance(s, LaunchStep) and s.variants]
        kernels = [engine.plan.kernels[k.kernel] for k in [taps, *taps.variants]]  # timed per shape at run time
        assert len({k.name for k in kernels}) == 4 and all(k.name.startswith("tl_tapconv_") for k in kernels)
        assert all(k.images[0].cubin[:4] == b"\x7fELF" for k in kernels)
    else:
        assert len(convs) == 1 and (convs[0].r.constant, list(convs[0].strides)) == (7, [2, 2])
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    tol = 1e-4 if precision == "FP32" else 1e-2 * np.abs(want).max()
    np.testing.assert_allclose(engine.run_reference({"x": x})["y"], want, rtol=1e-2, atol=tol)


def test_pointwise_convs_become_gemm_steps():
    """1×1 stride-1 unpadded NHWC convs map to cuBLASLt GEMMs over the pixels (residual as
    C with beta 1, relu in the epilogue; relu6 as a kernel after); strided ones stay cuDNN."""
    rng = np.random.default_rng(5)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w1", "b1"], ["c1"], name="pw1"),
             helper.make_node("Add", ["c1", "xt"], ["s"]),
             helper.make_node("Relu", ["s"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], name="pw2"),
             helper.make_node("Clip", ["c2", "lo", "hi"], ["r6"]),
             helper.make_node("Conv", ["r6", "w3"], ["c3"], name="strided", strides=[2, 2]),
             helper.make_node("Transpose", ["c3"], ["y"], perm=[0, 2, 3, 1])]
    inits = {"w1": f32(8, 8, 1, 1), "b1": f32(8), "w2": f32(12, 8, 1, 1), "b2": f32(12),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32), "w3": f32(4, 12, 1, 1)}
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 6, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3, 4])], inits)
    engine = build_engine(model, target_arch="sm_90")
    gemms = [s for s in engine.plan.steps if isinstance(s, GemmStep)]
    convs = [s for s in engine.plan.steps if isinstance(s, ConvStep)]
    assert len(gemms) == 2 and len(convs) == 1 and convs[0].strides == (2, 2)
    residual, relu6 = gemms
    symbols = symbol_values(engine.plan, [(3, 6, 6, 8)])
    assert [e.evaluate(symbols) for e in (residual.m, residual.n, residual.k, residual.ldb, residual.ldd)] == \
        [3 * 36, 8, 8, 8, 8]
    assert residual.trans_b and not residual.trans_a and residual.c != NONE_INDEX and residual.beta == 1.0
    assert residual.activation == Activation.RELU and residual.bias != NONE_INDEX
    assert relu6.c == NONE_INDEX and relu6.beta == 0.0 and relu6.activation == Activation.NONE
    after = engine.plan.steps[engine.plan.steps.index(relu6) + 1]
    assert isinstance(after, LaunchStep)  # the clip to [0, 6], in place
    x = f32(3, 6, 6, 8)
    xt = x.transpose(0, 3, 1, 2)
    r = np.maximum(np.einsum("nchw,kc->nkhw", xt, inits["w1"][:, :, 0, 0]) + inits["b1"][:, None, None] + xt, 0)
    r6 = np.clip(np.einsum("nchw,kc->nkhw", r, inits["w2"][:, :, 0, 0]) + inits["b2"][:, None, None], 0, 6)
    want = np.einsum("nchw,kc->nkhw", r6[:, :, ::2, ::2], inits["w3"][:, :, 0, 0]).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(engine.run_reference({"x": x})["y"], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tagged", ["pw", "strided"])
def test_library_convs_refuse_an_input_activation(monkeypatch, tagged):
    """cuBLASLt (the 1×1 conv) and cuDNN (the strided one) have no prologue: a conv given an
    input activation by some pass must fail the build, naming it, not run without it."""
    from tftrt_lite.engine import passes

    def tag(graph, ctx):
        for n in graph.nodes:
            if n.name.startswith(tagged):  # the IR names nodes after the ONNX ones
                n.attrs.update(input_activation="clip", input_activation_params=[0.0, 6.0])

    monkeypatch.setattr(passes, "PIPELINE", passes.PIPELINE[:-1] + [("tag", tag)] + passes.PIPELINE[-1:])
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w1"], ["c1"], name="pw"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name="strided", strides=[2, 2]),
             helper.make_node("Transpose", ["c2"], ["y"], perm=[0, 2, 3, 1])]
    inits = {"w1": rng.standard_normal((8, 8, 1, 1)).astype(np.float32),
             "w2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32)}
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 6, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3, 4])], inits)
    with pytest.raises(UnsupportedOpError, match=rf"'{tagged}\w*'.*input_activation 'clip' runs only in the depthwise"):
        build_engine(model, target_arch="sm_90")


def test_mobilenet_v2_relu6_of_expand_convs_runs_in_the_depthwise_kernels():
    """Every MobileNetV2 expand conv (1×1, ReLU6, read by a depthwise conv) keeps a ReLU in
    its GEMM epilogue and its depthwise conv clips what it loads, so no clip kernel runs
    after those GEMMs; the one left is the head conv's, read by the global average pool.
    The engine still matches TF."""
    import zoo
    from tftrt_lite.codegen.conv import is_depthwise, is_pointwise
    from tftrt_lite.verify import verify_engine

    engine = zoo.engine("mobilenetv2")
    g = engine.graph
    readers = g.consumers()
    pointwise = {n.name: n for n in g.nodes if is_pointwise(g, n)}
    expand = [n for n in pointwise.values() if all(is_depthwise(g, r) for r in readers[n.outputs[0]])]
    assert len(expand) == 16
    for n in expand:
        assert n.attrs["activation"] == "relu"
        assert all(r.attrs["input_activation"] == "clip" and r.attrs["input_activation_params"] == [0.0, 6.0]
                   for r in readers[n.outputs[0]])
    gemms = {s.name for s in engine.plan.steps if isinstance(s, GemmStep)}
    assert set(pointwise) <= gemms
    (left,) = [s.name for s in engine.plan.steps if isinstance(s, LaunchStep) and s.name in pointwise]
    assert pointwise[left].attrs["activation"] == "clip"
    assert [r.op for r in readers[pointwise[left].outputs[0]]] == ["ReduceMean"]
    verify_engine(engine, zoo.lowered("mobilenetv2"), batch_sizes=(2,))


def test_output_that_is_an_input_gets_a_copy_step():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                    helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], {})
    plan = build_engine(model, target_arch="sm_80").plan
    outs = sorted(b.a for b in plan.buffers if b.storage == Storage.OUTPUT)
    assert outs == [0, 1]
    assert len([s for s in plan.steps if isinstance(s, LaunchStep)]) == 2


def test_bind_symbols_rejects_unbindable_dims():
    from tftrt_lite.engine import ir
    g = ir.Graph("g", ["x"], ["y"])
    g.tensors["x"] = ir.Tensor("x", "float32", ("2*B", 4))
    g.tensors["y"] = ir.Tensor("y", "float32", ("2*B", 4))
    with pytest.raises(ConversionError, match="B are not an axis of any engine input"):
        bind_symbols(g)


def test_rejects_other_precisions_and_bad_archs():
    model, _ = _mlp(np.random.default_rng(3))
    with pytest.raises(NotSupportedYetError, match="'FP8'"):
        build_engine(model, precision="FP8")
    with pytest.raises(ConversionError, match="calibration_batches or activation_ranges"):
        build_engine(model, precision="INT8")
    with pytest.raises(ValueError, match="'ampere'"):
        build_engine(model, target_arch="ampere")


def test_unsupported_op_names_op_and_node():
    nodes = [helper.make_node("NonMaxSuppression", ["b", "s"], ["y"], name="nms")]
    model = _model(nodes, [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
                           helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 3])], {})
    with pytest.raises(UnsupportedOpError, match=r"NonMaxSuppression.*nms|nms.*NonMaxSuppression"):
        build_engine(model)


def test_build_from_path(tmp_path):
    import onnx
    model, inits = _mlp(np.random.default_rng(4))
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    engine = build_engine(str(path), target_arch=["sm_90", "sm_80"])
    assert engine.target_archs == ("sm_80", "sm_90")
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(engine.run_reference({"x": x})["y"], _expected_mlp(x, inits), rtol=1e-5, atol=1e-6)
