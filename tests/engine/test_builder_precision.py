"""FP16 and BF16 engines of the zoo models: the reference executor of each reduced plan
against TF's float32 output, and weights stored once in the reduced dtype."""
import numpy as np
import pytest

import zoo
from tftrt_lite.engine.builder import build_engine
from tftrt_lite.verify import verify_engine


@pytest.mark.parametrize("precision", ["FP16", "BF16"])
@pytest.mark.parametrize("name", zoo.ZOO)
def test_reduced_engine_matches_tf_within_half_tolerance(name, precision):
    lowered = zoo.lowered(name)
    engine = build_engine(lowered.onnx_model, precision=precision, name=name)
    assert engine.precision == precision
    half = "float16" if precision == "FP16" else "bfloat16"
    dtypes = {engine.graph.tensor(t).dtype for n in engine.graph.nodes for t in n.outputs if t}
    assert half in dtypes
    assert [engine.graph.tensor(t).dtype for t in engine.input_names + engine.output_names] == \
        [zoo.engine(name).graph.tensor(t).dtype for t in engine.input_names + engine.output_names]
    verify_engine(engine, lowered, batch_sizes=(2,))  # 1e-2 of each output's scale
    # every float weight converted once: about half the float32 engine's bytes
    fp32_bytes = zoo.engine(name).stats["weight_bytes"]
    assert engine.stats["weight_bytes"] < 0.56 * fp32_bytes


def test_exact_fp32_plan_records_its_math_mode():
    from tftrt_lite.engine.plan import GemmStep, MathMode

    lowered = zoo.lowered("bert_encoder")
    exact = build_engine(lowered.onnx_model, allow_tf32=False)
    assert exact.plan.meta["allow_tf32"] is False
    gemms = [s for s in exact.plan.steps if isinstance(s, GemmStep)]
    assert gemms and all(s.math == MathMode.EXACT for s in gemms)
    assert all(n.attrs.get("allow_tf32") is False for n in exact.graph.nodes if n.op == "tftrt.Attention")
    assert all(s.math == MathMode.TF32 for s in zoo.engine("bert_encoder").plan.steps if isinstance(s, GemmStep))
