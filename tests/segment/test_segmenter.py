"""Segmentation rules on small hand-built graphs (one behaviour per test)."""
import time

import numpy as np
import pytest
import tensorflow as tf

from tftrt_lite.segment import DENYLIST_ENV, segment_graph

F32 = tf.float32


def _graph(build, inputs=(("x", [None, 8]),)):
    """GraphDef of ``build(*placeholders)`` built in TF1 graph mode; returns (graph_def, output names)."""
    graph = tf.Graph()
    with graph.as_default():
        phs = [tf.compat.v1.placeholder(F32, shape, name=name) for name, shape in inputs]
        outs = build(*phs)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        names = [tf.identity(o, name=f"out{i}").op.name for i, o in enumerate(outs)]
    return graph.as_graph_def(), [name for name, _ in inputs] + names


def _ops(graph_def, names):
    types = {n.name: n.op for n in graph_def.node}
    return sorted(types[n] for n in names)


def test_all_supported_chain_is_one_segment_with_absorbed_consts():
    gd, protected = _graph(lambda x: tf.nn.relu(x * 2.0 + 1.0))
    result = segment_graph(gd, protected=protected)
    (seg,) = result.segments
    assert _ops(gd, seg.nodes) == ["AddV2", "Const", "Const", "Mul", "Relu"]
    assert seg.inputs == ["x:0"] and seg.outputs == ["Relu:0"]
    assert seg.input_dtypes == [tf.float32] and seg.input_shapes[0].as_list() == [None, 8]
    assert seg.output_shapes[0].as_list() == [None, 8]
    assert result.report.total_ops == 3 and result.report.converted_ops == 3
    assert result.report.percent == 100.0


def test_unsupported_path_between_two_clusters_prevents_a_cycle():
    # A = x*2 ; B = cumsum(A) (unsupported) ; C = A + B.  Merging A and C would make the
    # segment both feed and wait for B.
    def build(x):
        a = tf.nn.relu(x * 2.0, name="A")
        b = tf.math.cumsum(a, axis=1, name="B")
        return tf.nn.relu(tf.add(a, b, name="C"))

    gd, protected = _graph(build)
    result = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert len(result.segments) == 2
    first, second = result.segments
    assert {"A", "mul"} <= set(first.nodes) and "C" not in first.nodes
    assert "C" in second.nodes
    assert first.outputs == ["A:0"]
    assert set(second.inputs) == {"A:0", "B:0"}
    assert result.report.unsupported["Cumsum"].reasons == {"no lowering for op type Cumsum": 1}


def test_control_dependency_counts_as_an_edge_for_cycles():
    def build(x):
        a = tf.nn.relu(x * 2.0, name="A")
        side = tf.math.cumsum(a, axis=1, name="side")   # native
        with tf.control_dependencies([side]):
            c = tf.tanh(a, name="C")                    # a -> C data, but C waits for side
        return [tf.sigmoid(c), side]

    gd, protected = _graph(build)
    result = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert len(result.segments) == 2
    assert "C" not in result.segments[0].nodes
    assert result.segments[1].control_inputs == ["side"]


def test_minimum_segment_size_counts_effective_ops_only():
    def build(x):
        return tf.identity(tf.identity(tf.nn.relu(x * 2.0)))   # 2 effective ops + Identities + Const

    gd, protected = _graph(build)
    assert segment_graph(gd, minimum_segment_size=2, protected=protected).segments
    result = segment_graph(gd, minimum_segment_size=3, protected=protected)
    assert result.segments == []
    (dropped,) = result.report.dropped_segments
    assert dropped.size == 2 and len(dropped.nodes) == 4
    assert result.report.converted_ops == 0


def test_denylist_argument_and_environment(monkeypatch):
    gd, protected = _graph(lambda x: tf.sigmoid(tf.nn.relu(x * 2.0) + 1.0))
    result = segment_graph(gd, minimum_segment_size=1, denylist=["Relu"], protected=protected)
    assert result.report.unsupported["Relu"].reasons == {"denylisted": 1}
    assert len(result.segments) == 2

    monkeypatch.setenv(DENYLIST_ENV, " Sigmoid, AddV2 ")
    result = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert set(result.report.unsupported) == {"Sigmoid", "AddV2"}
    assert [_ops(gd, s.nodes) for s in result.segments] == [["Const", "Mul", "Relu"]]


def test_string_op_in_the_middle_splits_segments():
    def build(x):
        y = tf.nn.relu(x * 3.0)
        s = tf.strings.as_string(y)
        z = tf.strings.to_number(s)
        return tf.tanh(z + 1.0)

    gd, protected = _graph(build)
    result = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert len(result.segments) == 2
    assert set(result.report.unsupported) == {"AsString", "StringToNumber"}
    assert result.segments[1].inputs == ["StringToNumber:0"]


def test_cond_in_the_middle_splits_segments():
    @tf.function(input_signature=[tf.TensorSpec([None, 8], F32, name="x")])
    def f(x):
        y = tf.nn.relu(x * 3.0)
        z = tf.cond(tf.reduce_sum(y) > 0.0, lambda: y * 2.0, lambda: y - 1.0)
        return tf.tanh(z + 1.0)

    gd = f.get_concrete_function().graph.as_graph_def()
    result = segment_graph(gd, minimum_segment_size=1, protected=["x", "Identity"])
    cond_types = {"If", "StatelessIf"} & set(result.report.unsupported)
    assert cond_types, result.report.summary()
    assert len(result.segments) == 2
    types = {n.name: n.op for n in gd.node}
    assert all(types[n] not in ("If", "StatelessIf") for s in result.segments for n in s.nodes)


def test_device_pins():
    def build(x):
        with tf.device("/device:GPU:0"):
            a = tf.nn.relu(x * 2.0, name="a")
        with tf.device("/device:GPU:1"):
            b = tf.tanh(a * 3.0, name="b")
        with tf.device("/device:CPU:0"):
            c = tf.sigmoid(b, name="c")
        return tf.nn.relu(c)

    gd, protected = _graph(build)
    result = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert result.report.unsupported["Sigmoid"].reasons == {"pinned to /device:CPU:0": 1}
    segment_of = {n: s.name for s in result.segments for n in s.nodes}
    assert segment_of["a"] != segment_of["b"]          # GPU:0 vs GPU:1 never merge
    assert "c" not in segment_of


def test_const_read_outside_is_duplicated_not_exported():
    def build(x):
        k = tf.constant(np.arange(8, dtype=np.float32), name="k")
        inside = tf.nn.relu(x * k)
        outside = tf.math.cumsum(k)
        return [inside, outside]

    gd, protected = _graph(build)
    (seg,) = segment_graph(gd, minimum_segment_size=1, protected=protected).segments
    assert "k" in seg.nodes and seg.duplicated_consts == ["k"]
    assert "k:0" not in seg.inputs and "k:0" not in seg.outputs


def test_protected_node_stays_native_and_its_input_is_exported():
    gd, protected = _graph(lambda x: tf.nn.relu(tf.tanh(x * 2.0, name="mid")))
    result = segment_graph(gd, minimum_segment_size=1, protected=protected + ["mid"])
    assert all("mid" not in s.nodes for s in result.segments)
    assert "mul:0" in result.segments[0].outputs


def test_rejects_unknown_protected_node_and_bad_minimum():
    gd, protected = _graph(lambda x: tf.nn.relu(x))
    with pytest.raises(ValueError, match="nope"):
        segment_graph(gd, protected=["nope"])
    with pytest.raises(ValueError, match="minimum_segment_size"):
        segment_graph(gd, minimum_segment_size=0)


def test_segmentation_is_deterministic_and_report_summarises():
    def build(x):
        a = tf.nn.relu(x * 2.0)
        b = tf.math.cumsum(a, axis=1)
        return tf.tanh(b) + tf.sigmoid(a)

    gd, protected = _graph(build)
    first = segment_graph(gd, minimum_segment_size=1, protected=protected)
    second = segment_graph(gd, minimum_segment_size=1, protected=protected)
    assert [(s.name, s.nodes, s.inputs, s.outputs) for s in first.segments] == \
        [(s.name, s.nodes, s.inputs, s.outputs) for s in second.segments]
    text = first.report.summary()
    assert "Cumsum x1: no lowering for op type Cumsum (x1)" in text
    assert first.report.to_dict()["unsupported"]["Cumsum"]["count"] == 1


def test_wide_graph_segments_quickly():
    # ~2.6k nodes with many diamonds through native nodes: the cycle check must stay cheap.
    def build(x):
        h = x
        for i in range(360):
            a = tf.nn.relu(h * 1.5)
            side = tf.math.cumsum(a, axis=1) if i % 10 == 0 else tf.tanh(a)
            h = tf.sigmoid(a + side) + h
        return h

    gd, protected = _graph(build)
    assert len(gd.node) > 2500
    start = time.perf_counter()
    result = segment_graph(gd, protected=protected)
    assert time.perf_counter() - start < 10.0
    # each of the 36 cumsums splits the chain; the piece before the first is 2 ops, too small
    assert len(result.segments) == 36
    assert [d.size for d in result.report.dropped_segments] == [2]
