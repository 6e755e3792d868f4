"""The rewrite: segments out, engine nodes in, everything around them unchanged.

Engines run through their native segment here (the op's fallback on CPU), so the
rewritten graph must compute exactly what the original did.
"""
import numpy as np
import pytest
import tensorflow as tf

import tftrt_lite  # noqa: F401  (registers TftrtLiteEngine)
from tftrt_lite.errors import ConversionError
from tftrt_lite.lower import extract_segment_graph_def
from tftrt_lite.replace import EngineSpec, replace_segments
from tftrt_lite.segment import segment_graph


def _graph():
    """x → tanh·c → string round trip → +c → sigmoid, with a control edge across the split.

    The Const ``c`` is read by both segments and by a native string op as well.
    """
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 4), name="x")
        c = tf.constant(np.linspace(0.5, 2.0, 4, dtype=np.float32), name="c")
        a = tf.identity(tf.tanh(x) * c + 1.0, name="a")
        s = tf.strings.to_number(tf.strings.as_string(a, precision=9), name="s")
        with tf.control_dependencies([a.op]):
            b = tf.sigmoid(tf.exp(s + c) * 0.5, name="b")
        tf.identity(b * tf.strings.to_number(tf.strings.as_string(c, precision=9)), name="out")
    return g.as_graph_def()


def _specs(graph_def, segments):
    return [EngineSpec(name=f"engine_{k}", nodes=seg.nodes, inputs=seg.inputs, outputs=seg.outputs,
                       input_dtypes=seg.input_dtypes, input_shapes=seg.input_shapes,
                       output_dtypes=seg.output_dtypes, output_shapes=seg.output_shapes,
                       segment_graph_def=extract_segment_graph_def(graph_def, seg),
                       plan=b"", plan_format_version=1, precision_mode="FP32")
            for k, seg in enumerate(segments)]


def _run(graph_def, x):
    g = tf.Graph()
    with g.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=g) as sess:
        return sess.run("out:0", {"x:0": x})


def test_two_engines_sharing_a_const_compute_what_the_original_did():
    graph_def = _graph()
    segments = segment_graph(graph_def, minimum_segment_size=2, protected=["x", "out"]).segments
    assert len(segments) == 2
    assert "c" in segments[0].nodes and "c" in segments[1].nodes  # duplicated into both
    rewritten = replace_segments(graph_def, _specs(graph_def, segments))
    ops = {n.name: n.op for n in rewritten.node}
    assert [n for n, op in ops.items() if op == "TftrtLiteEngine"] == ["engine_0", "engine_1"]
    assert "c" in ops, "the Const is still read by a native node, so it stays"
    assert len(rewritten.library.function) == 2
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(graph_def, x), rtol=1e-6)


def test_control_edges_move_to_the_engine_nodes():
    graph_def = _graph()
    segments = segment_graph(graph_def, minimum_segment_size=2, protected=["x", "out"]).segments
    rewritten = {n.name: n for n in replace_segments(graph_def, _specs(graph_def, segments)).node}
    # b's segment waited for a's segment; now engine_1 waits for engine_0.
    assert "^engine_0" in rewritten["engine_1"].input


def test_without_native_segments_no_functions_are_added():
    graph_def = _graph()
    segments = segment_graph(graph_def, minimum_segment_size=2, protected=["x", "out"]).segments
    rewritten = replace_segments(graph_def, _specs(graph_def, segments), keep_native_segments=False)
    assert len(rewritten.library.function) == 0
    engine = next(n for n in rewritten.node if n.op == "TftrtLiteEngine")
    assert engine.attr["segment_func"].func.name == ""


def test_a_node_claimed_by_two_engines_is_rejected():
    graph_def = _graph()
    segments = segment_graph(graph_def, minimum_segment_size=2, protected=["x", "out"]).segments
    specs = _specs(graph_def, segments)
    specs[1].nodes = list(specs[1].nodes) + [n for n in specs[0].nodes if n != "c"][:1]
    with pytest.raises(ConversionError, match="is in engines"):
        replace_segments(graph_def, specs)


def _lookup_graph():
    """ids (int32) → gather rows, read before x (float32): segment x·table[ids]."""
    g = tf.Graph()
    with g.as_default():
        ids = tf.compat.v1.placeholder(tf.int32, (None,), name="ids")
        x = tf.compat.v1.placeholder(tf.float32, (None, 3), name="x")
        table = tf.constant(np.arange(30, dtype=np.float32).reshape(10, 3), name="table")
        rows = tf.gather(table, ids, name="rows")
        tf.identity(tf.tanh(rows * 0.1) * x + 1.0, name="out")
    return g.as_graph_def()


def test_int32_inputs_go_last_into_host_tensors():
    """TensorFlow keeps int32 on the host even on a GPU: the engine takes those inputs in
    its second, host-memory list, after the others, in the segment's input order."""
    graph_def = _lookup_graph()
    (segment,) = segment_graph(graph_def, minimum_segment_size=2, protected=["ids", "x", "out"]).segments
    assert segment.inputs == ["x:0", "ids:0"] and segment.input_dtypes == [tf.float32, tf.int32]
    rewritten = replace_segments(graph_def, _specs(graph_def, [segment]))
    engine = next(n for n in rewritten.node if n.op == "TftrtLiteEngine")
    assert list(engine.input) == ["x", "ids"]
    assert list(engine.attr["InT"].list.type) == [tf.float32.as_datatype_enum]
    assert list(engine.attr["HostT"].list.type) == [tf.int32.as_datatype_enum]
    ids = np.array([3, 0, 9, 3], np.int32)
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    feeds = {"ids:0": ids, "x:0": x}
    outs = []
    for gd in (rewritten, graph_def):
        g = tf.Graph()
        with g.as_default():
            tf.graph_util.import_graph_def(gd, name="")
        with tf.compat.v1.Session(graph=g) as sess:
            outs.append(sess.run("out:0", feeds))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)


def test_an_int32_input_before_a_float_one_is_rejected():
    graph_def = _lookup_graph()
    (segment,) = segment_graph(graph_def, minimum_segment_size=2, protected=["ids", "x", "out"]).segments
    (spec,) = _specs(graph_def, [segment])
    spec.inputs, spec.input_dtypes = spec.inputs[::-1], spec.input_dtypes[::-1]
    spec.input_shapes = spec.input_shapes[::-1]
    with pytest.raises(ConversionError, match="int32 inputs must come last"):
        replace_segments(graph_def, [spec])
