"""Each reference model, as the load stage delivers it, becomes exactly one segment."""
import pytest

from tftrt_lite.segment import NON_EFFECTIVE_OPS, segment_graph
from zoo import protected_nodes
from zoo import signature as zoo_signature


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2", "vgg16", "bert_encoder"])
def test_zoo_model_is_one_segment(name):
    sig = zoo_signature(name)
    protected = protected_nodes(sig)
    result = segment_graph(sig.graph_def, protected=protected)
    assert len(result.segments) == 1, result.report.summary()
    (seg,) = result.segments
    outside = {n.name for n in sig.graph_def.node} - set(seg.nodes)
    assert outside == set(protected)            # everything but Placeholder(s) and output Identity
    assert result.report.percent == 100.0 and not result.report.unsupported
    assert seg.inputs == [b.tensor_name for b in sig.inputs]
    assert len(seg.outputs) == len(sig.outputs)
    assert seg.input_shapes[0].as_list()[0] is None          # batch stays symbolic
    assert result.report.segment_sizes[seg.name] == sum(
        n.op not in NON_EFFECTIVE_OPS for n in sig.graph_def.node if n.name in set(seg.nodes))
