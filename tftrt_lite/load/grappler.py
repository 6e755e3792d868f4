"""Grappler cleanup of a frozen signature graph, as TF-TRT runs it before segmenting.

Freezing leaves Identity chains, ``ReadVariableOp`` remnants turned into ``Identity``,
constant subgraphs (weight transposes, shape arithmetic) and dead branches. Constant
folding, dependency optimization and pruning remove them, so segments hold only real
math. Only those cleanup optimizers run, listed explicitly (an explicit list disables
Grappler's defaults): the layout optimizer would insert NCHW transposes, and the
remapper and arithmetic optimizer would create fused ops (``_FusedConv2D``,
``_FusedMatMul``) that tf2onnx cannot lower and the engine does its own fusion for.

Freezing a signature with control flow also leaves ``unused_control_flow_input``
Placeholders that nothing reads; Grappler keeps every Placeholder as a possible feed, so
they are dropped here, leaving exactly the signature's inputs as Placeholders.
"""
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
from tensorflow.python.grappler import tf_optimizer
from tensorflow.python.training import saver

# TF-TRT's non-TensorRT optimizer list minus "layout", in Grappler's default order:
# dependency optimization runs after constant folding so it removes the Identity nodes
# and control edges that folding leaves behind (e.g. a BiasAdd of an all-zero bias).
CLEANUP_OPTIMIZERS = (
    "pruning",
    "debug_stripper",
    "common_subgraph_elimination",
    "constfold",
    "dependency",
)


def cleanup_rewriter_config() -> rewriter_config_pb2.RewriterConfig:
    """Exactly ``CLEANUP_OPTIMIZERS``, applied to graphs of any size.

    Two rounds: the second folds what the first round's dependency pass exposed (ResNet50
    shrinks a further quarter), at a cost of well under a second.
    """
    config = rewriter_config_pb2.RewriterConfig()
    config.optimizers.extend(CLEANUP_OPTIMIZERS)
    config.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.TWO
    config.min_graph_nodes = -1
    return config


def clean_frozen_graph(frozen_func):
    """The GraphDef of ``frozen_func`` after Grappler cleanup.

    Device assignments are cleared (the engine decides placement). The function's inputs
    and outputs form the ``train_op`` fetch collection, which Grappler preserves by name,
    so the signature's placeholders and output nodes keep their names (an output that
    depends on no input may become a ``Const`` of the same name).
    """
    graph_def = frozen_func.graph.as_graph_def()
    for node in graph_def.node:
        node.device = ""
    meta_graph = saver.export_meta_graph(graph_def=graph_def, graph=frozen_func.graph)
    fetch = meta_graph_pb2.CollectionDef()
    for tensor in list(frozen_func.inputs) + list(frozen_func.outputs):
        fetch.node_list.value.append(tensor.name)
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    session_config = config_pb2.ConfigProto()
    session_config.graph_options.rewrite_options.CopyFrom(cleanup_rewriter_config())
    cleaned = tf_optimizer.OptimizeGraph(session_config, meta_graph, graph_id=b"tftrt_lite_load")
    drop_unread_placeholders(cleaned, keep={t.op.name for t in frozen_func.inputs})
    return cleaned


def drop_unread_placeholders(graph_def, keep) -> None:
    """Remove, in place, the Placeholder nodes of ``graph_def`` that no node reads, except
    those named in ``keep``."""
    read = {name.lstrip("^").split(":")[0] for node in graph_def.node for name in node.input}
    kept = [node for node in graph_def.node
            if node.op != "Placeholder" or node.name in keep or node.name in read]
    if len(kept) != len(graph_def.node):
        del graph_def.node[:]
        graph_def.node.extend(kept)
