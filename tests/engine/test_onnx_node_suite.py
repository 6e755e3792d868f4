"""The ONNX backend node suite (``onnx.backend.test``) through the engine's ONNX entry point.

Every node case of the installed onnx package is imported and run by the reference
executor, and compared with the case's expected outputs (dtype and shape exact,
values at rtol 1e-3 / atol 1e-5; bfloat16
outputs at the project's BF16 tolerance 1e-2). The installed wheel ships the cases as Python
generators rather than ``data/node/*/`` files, so they are generated once per onnx
version and cached in pytest's cache directory.

Cases are adapted, not weakened, in two ways an engine build also implies:
- a model whose opset is outside 13-18 is converted with ``onnx.version_converter``
  (the engine takes opsets 13-18; tf2onnx emits 17);
- graph inputs that decide output shapes (``VALUE_INPUTS``: a Reshape target, Slice
  bounds, reduction axes...) become initializers holding the case's values, since an
  engine's shapes may not depend on tensor values.

Anything else is run as is; a case is skipped only through ``EXCLUDED`` with its reason.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from tftrt_lite.engine.onnx_import import MAX_OPSET, MIN_OPSET, SUPPORTED_ONNX_OPS, VALUE_INPUTS, import_onnx
from tftrt_lite.engine.passes import run_pipeline
from tftrt_lite.engine.reference import run_graph

RTOL, ATOL = 1e-3, 1e-5
BF16_TOL = (1e-2, 1e-2)

_TRAINING = "training-only op"
_SEQUENCE = "sequence/optional types"
_STRING = "string dtype"
_RANDOM = "random ops"
_CONTROL = "control flow (subgraph attributes)"
_QUANT = "integer-arithmetic quantized ops (engines compute quantization as float QDQ)"
_DATA_DEPENDENT = "output shape depends on tensor values"
_NEWER = "op introduced after opset 18"

#: op type or case-name regex → why the engine does not run it
EXCLUDED: Dict[str, str] = {
    # whole op families outside an inference engine's scope
    **{op: _TRAINING for op in ("Adagrad", "Adam", "Momentum", "NegativeLogLikelihoodLoss",
                                "SoftmaxCrossEntropyLoss")},
    **{op: _SEQUENCE for op in ("SequenceEmpty", "SequenceInsert", "SequenceLength", "SequenceMap",
                                "SplitToSequence", "OptionalGetElement", "OptionalHasElement")},
    **{op: _STRING for op in ("RegexFullMatch", "StringConcat", "StringNormalizer", "StringSplit",
                              "TfIdfVectorizer", "LabelEncoder")},
    **{op: _RANDOM for op in ("Bernoulli", "RandomUniformLike")},
    **{op: _CONTROL for op in ("If", "Loop", "Scan", "SequenceMap")},
    **{op: _QUANT for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
                             "DynamicQuantizeLinear")},
    **{op: _DATA_DEPENDENT for op in ("NonZero", "Compress", "Unique", "NonMaxSuppression")},
    **{op: _NEWER for op in ("Attention", "RMSNormalization", "RotaryEmbedding", "Swish", "SwiGLU",
                             "TensorScatter", "BitCast", "CumProd", "Gelu", "ImageDecoder",
                             "AffineGrid", "FlexAttention", "LinearAttention", "CausalConvWithState")},
    "ai.onnx.ml": "ONNX-ML domain",
    "ai.onnx.preview": "preview domain",
    # ops an image/NLP inference engine does not need; not implemented
    "LSTM": "recurrent op", "GRU": "recurrent op", "RNN": "recurrent op",
    "DFT": "signal processing", "STFT": "signal processing", "MelWeightMatrix": "signal processing",
    "BlackmanWindow": "signal processing", "HammingWindow": "signal processing",
    "HannWindow": "signal processing",
    "GridSample": "sampling op not implemented", "RoiAlign": "detection op not implemented",
    "DeformConv": "sampling op not implemented", "Col2Im": "not implemented",
    "CenterCropPad": "not implemented", "ReverseSequence": "not implemented",
    "Scatter": "deprecated op", "Upsample": "deprecated op",
    "ScatterElements": "scatter ops not implemented", "ScatterND": "scatter ops not implemented",
    "MaxUnpool": "not implemented", "LRN": "not implemented", "Det": "not implemented",
    "GroupNormalization": "opset-18 GroupNormalization (per-group scale) differs from 21; not implemented",
    # corners of supported ops
    r"^test_maxpool_with_argmax": "MaxPool Indices output",
    r"^test_batchnorm_.*training": "training-mode BatchNormalization",
    r"^test_batchnorm_(epsilon|example)$": "BatchNormalization statistics as run-time inputs "
                                           "(engines fold constant inference statistics only)",
    r"^test_dropout_.*(mask|default_ratio|random)": "training-mode Dropout (random)",
    r"^test_training_dropout": "training-mode Dropout (random)",
    r"^test_resize_.*cubic": "Resize cubic mode",
    r"^test_resize_.*antialias": "Resize antialias",
    r"^test_cast_.*(STRING|FLOAT8|INT4|UINT4|FLOAT4|e4m3|e5m2|e8m0|INT2|UINT2)": "dtype the IR does not have",
    r"^test_(quantizelinear|dequantizelinear)(_axis)?$": "a lone QuantizeLinear or DequantizeLinear: int8 engine "
                                                          "inputs/outputs (engines compute Q→DQ pairs)",
    r"^test_dynamicquantizelinear_.*expanded$": "QuantizeLinear with a scale computed at run time",
    r"_(string|STRING)": _STRING,
    r"^test_identity_(opt|sequence)$": _SEQUENCE,
    r"^test_averagepool_.*dilations": "AveragePool dilations (opset 19)",
    r"^test_castlike_.*_expanded": "Cast saturate attribute (opset 19)",
    r"^test_center_crop_pad_.*_expanded": "crop shape is a run-time input (value-dependent shapes)",
    r"^test_(blackman|hamming|hann)window_.*expanded": "signal processing (window length as a float value)",
}


class OpsetNotConvertible(Exception):
    """The case's opset is outside 13-18 and the version converter cannot bring it in."""


def _default_opset(model: onnx.ModelProto) -> Optional[int]:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return versions[0] if versions else None


def exclusion(name: str, model: onnx.ModelProto) -> Optional[str]:
    """The reason a case is not run, or None."""
    keys = {n.op_type for n in model.graph.node} | {n.domain for n in model.graph.node}
    for key, reason in EXCLUDED.items():
        if key in keys or (key.startswith("^") or key.startswith("_")) and re.search(key, name):
            return f"{key}: {reason}"
    return None


def adapt(model: onnx.ModelProto, inputs: List[np.ndarray]) -> Tuple[onnx.ModelProto, Dict[str, np.ndarray]]:
    """The case's model at an opset the engine takes, with shape-deciding inputs frozen."""
    opset = _default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        try:
            model = version_converter.convert_version(model, MAX_OPSET)
        except Exception as e:  # the converter reports unsupported adapters as RuntimeError
            raise OpsetNotConvertible(f"opset {opset}: onnx.version_converter cannot convert to "
                                      f"{MAX_OPSET} ({str(e).splitlines()[0][-80:]})") from e
    graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feeds = dict(zip(graph_inputs, inputs))
    frozen = {n.input[i] for n in model.graph.node for i in VALUE_INPUTS.get(n.op_type, ())
              if i < len(n.input) and n.input[i] in feeds}
    if frozen:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        keep = [i for i in model.graph.input if i.name not in frozen]
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.graph.initializer.extend(numpy_helper.from_array(feeds.pop(k), k) for k in sorted(frozen))
    return model, feeds


def run_case(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The engine's outputs for ``feeds``: the one place that names the entry point.

    Import and every optimisation pass of the builder, then the reference executor: the
    builder's math minus kernel compilation (NVRTC per case would not fit CI's budget;
    kernels are compiled and checked for every zoo engine in tests/test_converter.py).
    """
    graph, _ = run_pipeline(import_onnx(model))
    return run_graph(graph, feeds)


def check_outputs(model: onnx.ModelProto, got: Dict[str, np.ndarray], expected: List[np.ndarray]) -> None:
    for vi, want in zip(model.graph.output, expected):
        out = got[vi.name]
        want = np.asarray(want)
        assert out.dtype == want.dtype, f"output {vi.name!r}: dtype {out.dtype}, expected {want.dtype}"
        assert out.shape == want.shape, f"output {vi.name!r}: shape {out.shape}, expected {want.shape}"
        if want.dtype.kind in "fc" or str(want.dtype) == "bfloat16":
            # bfloat16's epsilon (7.8e-3) is above RTOL: its outputs use the project's BF16 tolerance
            tol = BF16_TOL if str(want.dtype) == "bfloat16" else (RTOL, ATOL)
            np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=tol[0],
                                       atol=tol[1], equal_nan=True, err_msg=f"output {vi.name!r}")
        else:
            np.testing.assert_array_equal(out, want, err_msg=f"output {vi.name!r}")


def _array(x) -> np.ndarray:
    """Case data comes as arrays, or as TensorProtos where NumPy has no dtype for it."""
    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else np.asarray(x)


def _load_cases(cache) -> list:
    """(name, model bytes, data sets) of every node case, generated once per onnx version.

    The installed onnx ships the case generators, not their data files; generating takes
    ~25 s, so the result is kept in pytest's cache when there is one.
    """
    from onnx.backend.test.case import node

    if cache is None:
        with np.errstate(all="ignore"):
            return [(c.name, c.model.SerializeToString(), c.data_sets) for c in node.collect_testcases(None)]
    path = os.path.join(str(cache.mkdir(f"onnx-node-cases-{onnx.__version__}")), "cases.pkl")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    with np.errstate(all="ignore"):
        cases = [(c.name, c.model.SerializeToString(), c.data_sets) for c in node.collect_testcases(None)]
    with open(path + ".tmp", "wb") as f:
        pickle.dump(cases, f)
    os.replace(path + ".tmp", path)
    return cases


def test_onnx_node_suite(request):
    cases = _load_cases(getattr(request.config, "cache", None))
    assert len(cases) > 1000, f"only {len(cases)} node cases found"
    passed, excluded, failed = [], {}, {}
    for name, blob, data_sets in cases:
        model = onnx.ModelProto.FromString(blob)
        reason = exclusion(name, model)
        if reason is not None:
            excluded[name] = reason
            continue
        try:
            for inputs, outputs in data_sets:
                adapted, feeds = adapt(model, [_array(x) for x in inputs])
                outputs = [_array(x) for x in outputs]
                with np.errstate(all="ignore"):
                    check_outputs(adapted, run_case(adapted, feeds), outputs)
        except OpsetNotConvertible as e:
            excluded[name] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - every failure is reported in the table below
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        passed.append(name)
    _report(request, len(cases), passed, excluded, failed)
    assert not failed, f"{len(failed)} node cases failed:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(failed.items()))


class _Summary:
    """Writes the suite's summary in pytest's terminal summary, after the session."""

    def __init__(self, lines: List[str]):
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("ONNX node suite")
        for line in self.lines:
            terminalreporter.write_line(line)


def _report(request, total, passed, excluded, failed) -> None:
    """Summary in the terminal summary and in the JUnit properties."""
    by_reason: Dict[str, int] = {}
    for reason in excluded.values():
        key = reason.split(" (")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    lines = [f"ONNX node suite: {len(passed)} passed / {len(excluded)} excluded / {len(failed)} failed "
             f"of {total} cases"]
    lines += [f"  excluded {n:4d}  {reason}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])]
    request.node.user_properties.append(("node_suite", lines[0]))
    request.config.pluginmanager.register(_Summary(lines), "onnx-node-suite-summary")


def test_exclusions_name_only_unsupported_ops_or_case_patterns():
    """An op listed in EXCLUDED must really be unsupported; an op-level exclusion of a
    supported op would hide cases the engine claims to run."""
    listed = {k for k in EXCLUDED if not k.startswith(("^", "_")) and "." not in k and k != "ai.onnx.ml"}
    assert not listed & SUPPORTED_ONNX_OPS, sorted(listed & SUPPORTED_ONNX_OPS)
