"""The public converter: TF-TRT's ``TrtGraphConverterV2`` API, without TensorRT.

A TF-TRT script keeps working when only its import changes
(``import tftrt_lite as trt``; ``trt.TrtGraphConverterV2(...)``): names,
arguments and defaults are TF-TRT's. One deliberate difference: with no
``input_saved_model_signature_key``, every signature is converted and saved
(TF-TRT kept only ``serving_default``).

``convert()`` runs the pipeline per signature: load (freeze + cleanup) → segment →
lower each segment to ONNX → build its engine → replace the segment with a
``TftrtLiteEngine`` node. A segment whose lowering or engine build fails stays
native and the reason goes into the report: conversion never fails a whole model
for one unsupported corner.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tftrt_lite import report as report_lib
from tftrt_lite.calibrate import ALGORITHMS, CalibrationTable, CalibrationTableError
from tftrt_lite.engine import build_engine
from tftrt_lite.engine.builder import SUPPORTED_PRECISIONS
from tftrt_lite.engine.passes.precision import compile_overrides
from tftrt_lite.engine.plan import FORMAT_VERSION
from tftrt_lite.errors import NotSupportedYetError, TftrtLiteError
from tftrt_lite.load import load_saved_model
from tftrt_lite.lower import lower_segment
from tftrt_lite.registry import FAKE_QUANT_OPS
from tftrt_lite.replace import EngineSpec, replace_segments
from tftrt_lite.save import CALIBRATION_TABLE_PATH, save_functions
from tftrt_lite.segment import segment_graph
from tftrt_lite.tune import process_tactics

logger = logging.getLogger("tftrt_lite")

DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES = 1 << 30


class TrtPrecisionMode:
    """Precision modes, as TF-TRT names them (BF16 is this project's addition)."""

    FP32 = "FP32"
    FP16 = "FP16"
    BF16 = "BF16"
    INT8 = "INT8"

    @staticmethod
    def supported_precision_modes() -> List[str]:
        modes = [TrtPrecisionMode.FP32, TrtPrecisionMode.FP16, TrtPrecisionMode.BF16, TrtPrecisionMode.INT8]
        return modes + [m.lower() for m in modes]


TrtConversionParams = collections.namedtuple(
    "TrtConversionParams",
    ["max_workspace_size_bytes", "precision_mode", "minimum_segment_size",
     "maximum_cached_engines", "use_calibration", "allow_build_at_runtime"])
TrtConversionParams.__new__.__defaults__ = (
    DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES, TrtPrecisionMode.FP32, 3, 1, True, True)
ConversionParams = TrtConversionParams
#: TF-TRT's optimization-profile strategies (case-insensitive), accepted so its scripts run
#: unchanged. They choose nothing here: see ``TrtGraphConverterV2``.
PROFILE_STRATEGIES = ("Range", "Optimal", "Range+Optimal", "ImplicitBatchModeCompatible")


def _check_params(params: TrtConversionParams, use_dynamic_shape, profile_strategy) -> str:
    precision = str(params.precision_mode).upper()
    if precision not in TrtPrecisionMode.supported_precision_modes():
        raise ValueError(f"precision_mode={params.precision_mode!r} is not one of "
                         f"{TrtPrecisionMode.supported_precision_modes()[:4]}")
    if precision not in SUPPORTED_PRECISIONS:
        raise NotSupportedYetError(f"not supported yet: precision_mode={precision!r} "
                                   f"(available: {', '.join(SUPPORTED_PRECISIONS)})")
    if not isinstance(params.minimum_segment_size, int) or params.minimum_segment_size < 1:
        raise ValueError(f"minimum_segment_size must be a positive int, got {params.minimum_segment_size!r}")
    if not isinstance(params.maximum_cached_engines, int) or params.maximum_cached_engines < 1:
        raise ValueError(f"maximum_cached_engines must be a positive int, got {params.maximum_cached_engines!r}")
    if not isinstance(params.max_workspace_size_bytes, int) or params.max_workspace_size_bytes <= 0:
        raise ValueError(f"max_workspace_size_bytes must be a positive int, got {params.max_workspace_size_bytes!r}")
    if profile_strategy is not None and str(profile_strategy).lower() not in \
            [s.lower() for s in PROFILE_STRATEGIES]:
        raise ValueError(f"dynamic_shape_profile_strategy={profile_strategy!r} is not one of "
                         f"{', '.join(PROFILE_STRATEGIES)}")
    if use_dynamic_shape not in (None, True, False):
        raise ValueError(f"use_dynamic_shape must be a bool or None, got {use_dynamic_shape!r}")
    return precision


@dataclass
class BuiltEngine:
    """An engine with the lowered segment it was built from (kept for checks and reports)."""

    engine: object                         # engine.Engine
    lowered: object                        # lower.LoweredSegment


@dataclass
class _ConvertedSignature:
    signature: object                      # load.SignatureGraph
    graph_def: object                      # rewritten GraphDef
    engines: List[EngineSpec] = field(default_factory=list)
    built: Dict[str, BuiltEngine] = field(default_factory=dict)
    report: Dict = field(default_factory=dict)


class TrtGraphConverterV2:
    """Convert a SavedModel so its supported subgraphs run as tftrt_lite engines.

    Arguments are TF-TRT's. ``use_dynamic_shape`` and ``dynamic_shape_profile_strategy``
    (any of :data:`PROFILE_STRATEGIES`) are accepted for compatibility: engines are
    always built with symbolic dimensions, so one engine serves every shape the
    signature allows and there are no optimization profiles to choose. What TensorRT's
    "Optimal" profiles buy, tactics tuned for the exact shape, every strategy gets here:
    library algorithms are timed per distinct shape on its first call (or in ``build``).
    ``allow_build_at_runtime`` likewise: engines never need a runtime rebuild.
    ``maximum_cached_engines`` is how many input-shape sets per engine get a captured
    CUDA graph at run time (others run uncaptured).

    Beyond TF-TRT: ``precision_mode`` also takes "BF16"; ``precision_overrides``
    (``{node-name regex: "FP32" | "FP16" | "BF16"}``) pins matching engine nodes to a
    precision (e.g. keep a sensitive layer in FP32 in an FP16 engine, or out of INT8);
    ``allow_tf32=False`` keeps FP32 math off TF32 tensor cores.

    INT8 (``convert(calibration_input_fn=...)``, as TF-TRT): the model runs on the
    calibration batches and the ranges of the tensors each engine quantizes are measured
    with ``calibration_algorithm`` ("entropy", TF-TRT's default, "percentile" or "max").
    The ranges form :attr:`calibration_table`, saved with the model; pass it back as
    ``calibration_table`` (a ``CalibrationTable`` or the path of a saved one) to convert
    the same model again without calibrating.

    INT8 with ``use_calibration=False`` (TF-TRT's and TensorRT's explicit precision): a
    quantization-aware model's fake-quant nodes (``FakeQuantWithMinMaxVars``/``Args``,
    ``QuantizeAndDequantizeV2/V3/V4``) are its quantization; engines compute them as
    TensorFlow does and add none of their own, so ``convert()`` takes no calibration data.
    A model without such nodes is refused (calibrate it instead).
    """

    def __init__(self,
                 input_saved_model_dir=None,
                 input_saved_model_tags=None,
                 input_saved_model_signature_key=None,
                 use_dynamic_shape=None,
                 dynamic_shape_profile_strategy=None,
                 max_workspace_size_bytes=DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES,
                 precision_mode=TrtPrecisionMode.FP32,
                 minimum_segment_size=3,
                 maximum_cached_engines=1,
                 use_calibration=True,
                 allow_build_at_runtime=True,
                 conversion_params=None,
                 precision_overrides=None,
                 allow_tf32=True,
                 calibration_algorithm="entropy",
                 calibration_table=None):
        if not input_saved_model_dir:
            raise ValueError("input_saved_model_dir is required")
        if conversion_params is None:
            conversion_params = TrtConversionParams(
                max_workspace_size_bytes=max_workspace_size_bytes,
                precision_mode=precision_mode,
                minimum_segment_size=minimum_segment_size,
                maximum_cached_engines=maximum_cached_engines,
                use_calibration=use_calibration,
                allow_build_at_runtime=allow_build_at_runtime)
        self._precision = _check_params(conversion_params, use_dynamic_shape, dynamic_shape_profile_strategy)
        compile_overrides(precision_overrides)  # a bad pattern or precision fails here, not mid-build
        self._precision_overrides = dict(precision_overrides or {})
        if not isinstance(allow_tf32, bool):
            raise ValueError(f"allow_tf32 must be a bool, got {allow_tf32!r}")
        self._allow_tf32 = allow_tf32
        self._calibration_algorithm, self._given_table = _check_calibration(
            self._precision, conversion_params.use_calibration, calibration_algorithm, calibration_table)
        #: INT8 from the model's own fake-quant nodes (TF-TRT's use_calibration=False)
        self._explicit_int8 = self._precision == "INT8" and not conversion_params.use_calibration
        self._calibration_table = None
        self._calibration_counts = (0, 0)   # (batches, samples) of the last calibration
        self._params = conversion_params
        self._input_dir = os.fspath(input_saved_model_dir)
        self._tags = list(input_saved_model_tags or [tf.saved_model.SERVING])
        self._signature_key = input_saved_model_signature_key
        self._converted: Dict[str, _ConvertedSignature] = {}
        self._functions: Dict[str, object] = {}
        self._timings: Dict[str, float] = {}
        self._build_shapes: List = []

    # -- convert -----------------------------------------------------------------
    def convert(self, calibration_input_fn=None):
        """Segment every selected signature and build an engine per segment.

        Returns the converted function of the (first) converted signature, as TF-TRT does.
        """
        if self._converted:
            raise RuntimeError("convert() was already called on this converter")
        if calibration_input_fn is not None and self._precision != "INT8":
            raise ValueError(f"calibration_input_fn is for precision_mode='INT8' only (this converter "
                             f"builds {self._precision} engines)")
        if self._explicit_int8 and calibration_input_fn is not None:
            raise ValueError("calibration_input_fn: this converter has use_calibration=False, so its INT8 "
                             "engines take their ranges from the model's fake-quant nodes and calibrate nothing")
        if self._precision == "INT8" and not self._explicit_int8 and calibration_input_fn is None \
                and self._given_table is None:
            raise ValueError("an INT8 conversion needs calibration data: convert(calibration_input_fn=...) "
                             "yielding input batches, or Converter(calibration_table=...) from an earlier one")
        if calibration_input_fn is not None and not callable(calibration_input_fn):
            raise TypeError(f"calibration_input_fn must be a callable returning an iterable of input batches, "
                            f"got {type(calibration_input_fn).__name__}")
        t0 = time.perf_counter()
        loaded = load_saved_model(self._input_dir, self._tags, self._signature_key)
        self._timings["load_s"] = time.perf_counter() - t0
        if self._explicit_int8:
            _check_fake_quant_nodes(loaded.signatures)
        ranges: Dict[str, float] = {}
        for key, sig in loaded.signatures.items():
            self._converted[key] = self._convert_signature(key, sig, calibration_input_fn)
            self._functions[key] = sig.to_function(self._converted[key].graph_def)
            for name, built in self._converted[key].built.items():
                ranges.update({f"{name}:{t}": a for t, a in built.engine.activation_ranges.items()})
        if self._precision == "INT8" and not self._explicit_int8:
            self._calibration_table = self._given_table or CalibrationTable(
                amax=ranges, algorithm=self._calibration_algorithm, num_batches=self._calibration_counts[0],
                num_samples=self._calibration_counts[1], model=os.path.basename(os.path.normpath(self._input_dir)))
        self._timings["total_s"] = time.perf_counter() - t0
        first = next(iter(self._functions.values()), None)
        return first

    def _convert_signature(self, key, sig, calibration_input_fn=None) -> _ConvertedSignature:
        protected = [b.node_name for b in sig.inputs + sig.outputs]
        t0 = time.perf_counter()
        seg = segment_graph(sig.graph_def, minimum_segment_size=self._params.minimum_segment_size,
                            protected=protected)
        segment_s = time.perf_counter() - t0
        engines, built, failures, records = [], [], [], {}
        lowered_segments, lower_s = {}, {}
        for i, segment in enumerate(seg.segments):
            name = _engine_name(key, i)
            t1 = time.perf_counter()
            try:
                lowered_segments[name] = (segment, lower_segment(sig.graph_def, segment))
            except TftrtLiteError as e:
                failures.append({"segment": segment.name, "nodes": len(segment.nodes), "reason": str(e)})
                logger.warning("segment %s of signature %r stays native: %s", segment.name, key, e)
            lower_s[name] = time.perf_counter() - t1
        calibration = {}
        if calibration_input_fn is not None and lowered_segments:
            calibration = self._calibration_batches(sig, {n: l for n, (_, l) in lowered_segments.items()},
                                                    calibration_input_fn)
        for name, (segment, lowered) in _progress(list(lowered_segments.items()), f"building engines [{key}]"):
            t1 = time.perf_counter()
            try:
                engine = build_engine(lowered.onnx_model, precision=self._precision, name=name,
                                      precision_overrides=self._precision_overrides, allow_tf32=self._allow_tf32,
                                      calibration_batches=calibration.get(name),
                                      activation_ranges=self._table_ranges(name),
                                      calibration_algorithm=self._calibration_algorithm,
                                      use_calibration=not self._explicit_int8)
                if os.environ.get("TFTRT_LITE_VERIFY") == "1":
                    from tftrt_lite.verify import verify_engine
                    verify_engine(engine, lowered)
                records[name] = BuiltEngine(engine, lowered)
            except CalibrationTableError:
                raise  # a table that does not fit the model must not quietly leave it native
            except TftrtLiteError as e:
                failures.append({"segment": segment.name, "nodes": len(segment.nodes), "reason": str(e)})
                logger.warning("segment %s of signature %r stays native: %s", segment.name, key, e)
                continue
            engines.append(EngineSpec(
                name=name, nodes=list(segment.nodes), inputs=list(segment.inputs), outputs=list(segment.outputs),
                input_dtypes=list(segment.input_dtypes), input_shapes=list(segment.input_shapes),
                output_dtypes=list(segment.output_dtypes), output_shapes=list(segment.output_shapes),
                segment_graph_def=lowered.segment_graph_def, plan=engine.serialize(),
                plan_format_version=FORMAT_VERSION, precision_mode=self._precision,
                max_cached_shapes=self._params.maximum_cached_engines))
            built.append({"engine": name, "segment": segment.name, "build_s": time.perf_counter() - t1 + lower_s[name],
                          "stats": engine.stats})
        graph_def = replace_segments(sig.graph_def, engines, keep_native_segments=True)
        report = report_lib.signature_report(key, sig, seg, engines, built, failures,
                                             timings={"load_s": sig.load_seconds, "segment_s": segment_s})
        return _ConvertedSignature(sig, graph_def, engines, records, report)

    def _calibration_batches(self, sig, lowered: Dict[str, object], calibration_input_fn) -> Dict[str, List[Dict]]:
        """Each engine's inputs for every calibration batch: ``calibration_input_fn``'s items
        (as ``build``'s) run through the signature's graph up to the segments' inputs."""
        names = [b.name for b in sig.inputs]
        fetch = sig.fetcher(sorted({t for low in lowered.values() for t in low.input_tensors}))
        batches: Dict[str, List[Dict]] = {name: [] for name in lowered}
        count = samples = 0
        for item in calibration_input_fn():
            feeds = _as_feeds(item, names)
            values = fetch(feeds)
            for name, low in lowered.items():
                batches[name].append({n: values[t] for n, t in zip(low.input_names, low.input_tensors)})
            count += 1
            samples += (np.shape(feeds[names[0]]) or (1,))[0]
        if count == 0:
            raise ValueError("calibration_input_fn yielded no batches")
        self._calibration_counts = (count, int(samples))
        return batches

    def _table_ranges(self, engine_name: str) -> Optional[Dict[str, float]]:
        """The ranges of ``engine_name``'s tensors in the given calibration table (None: calibrate)."""
        if self._given_table is None:
            return None
        prefix = f"{engine_name}:"
        return {k[len(prefix):]: v for k, v in self._given_table.amax.items() if k.startswith(prefix)}

    @property
    def calibration_table(self) -> Optional[CalibrationTable]:
        """INT8: the activation ranges every engine was built with (keys ``engine:tensor``),
        saved with the model; ``calibration_table.save(path)`` writes it for a later
        ``Converter(calibration_table=path)``. None for other precisions and for INT8 with
        ``use_calibration=False``."""
        return self._calibration_table

    def engines(self, signature_key: Optional[str] = None) -> Dict[str, BuiltEngine]:
        """Built engines by name (of one signature, or of all), with their lowered segments."""
        if not self._converted:
            raise RuntimeError("Need to call convert() before engines()")
        if signature_key is not None and signature_key not in self._converted:
            raise KeyError(f"signature {signature_key!r} was not converted; converted: {sorted(self._converted)}")
        keys = [signature_key] if signature_key is not None else list(self._converted)
        return {name: b for k in keys for name, b in self._converted[k].built.items()}

    # -- build -------------------------------------------------------------------
    def build(self, input_fn: Callable):
        """Run the converted signature on ``input_fn``'s inputs, as TF-TRT's ``build``.

        Engines here need no per-shape build; this checks that every engine accepts the
        shapes you will serve and takes their first-call work off the serving path: each
        input runs twice, the first call choosing every GEMM's and convolution's library
        algorithm and every kernel's variant (timing the candidates on a GPU, see
        docs/tuning.md) and the second
        capturing the shape's CUDA graph (for the first ``maximum_cached_engines``
        shapes). ``save()`` then stores the chosen algorithms in the engines. Each item
        ``input_fn`` yields is one call: a single array, a list/tuple (positional, in
        signature input order), or a dict by input name.
        """
        if not self._converted:
            raise RuntimeError("Need to call convert() before build()")
        if input_fn is None:
            raise RuntimeError("input_fn is None: build() needs input data")
        key = self._signature_key or next(iter(self._functions))
        func = self._functions[key]
        names = [b.name for b in self._converted[key].signature.inputs]
        for item in input_fn():
            feeds = _as_feeds(item, names)
            tensors = {k: tf.convert_to_tensor(v) for k, v in feeds.items()}
            for _ in range(2):  # choose algorithms, then capture the CUDA graph
                func(**tensors)
            self._build_shapes.append({k: list(np.shape(v)) for k, v in feeds.items()})

    # -- save --------------------------------------------------------------------
    def save(self, output_saved_model_dir, save_gpu_specific_engines=True, options=None,
             keep_native_segments=True):
        """Write the converted model; every converted signature keeps its name and I/O.

        ``keep_native_segments=False`` drops each engine's native fallback copy (the
        smallest model; it then needs a GPU engine to run). Engines that ran in this
        process (``build()``) carry the library algorithms they chose in their
        ``tactics`` attr, so a process on the same kind of GPU starts with them.
        """
        if not self._converted:
            raise RuntimeError("Need to call convert() before save()")
        if not save_gpu_specific_engines:
            raise NotSupportedYetError("not supported yet: save_gpu_specific_engines=False")
        engines = {k: [dataclasses.replace(spec, tactics=process_tactics(spec.name)) for spec in c.engines]
                   for k, c in self._converted.items()}
        functions = self._functions
        if not keep_native_segments or any(spec.tactics for specs in engines.values() for spec in specs):
            functions = {k: c.signature.to_function(
                replace_segments(c.signature.graph_def, engines[k], keep_native_segments=keep_native_segments))
                for k, c in self._converted.items()}
        report = self.report()
        report["keep_native_segments"] = bool(keep_native_segments)
        extras = {} if self._calibration_table is None else {CALIBRATION_TABLE_PATH: self._calibration_table.to_bytes()}
        return save_functions(functions, output_saved_model_dir, report=report, options=options, extra_files=extras)

    # -- reports -----------------------------------------------------------------
    def report(self) -> Dict:
        """The conversion report as a dict (also saved with the model)."""
        if not self._converted:
            raise RuntimeError("Need to call convert() before report()")
        return report_lib.model_report(self._input_dir, self._precision,
                                       {k: c.report for k, c in self._converted.items()},
                                       self._timings, self._build_shapes)

    def summary(self, line_length=160, detailed=True, print_fn=None):
        """Print engines (nodes absorbed, I/O shapes and dtypes, precision) and coverage."""
        if not self._converted:
            raise RuntimeError(f"Impossible to call `{type(self).__name__}.summary()` before "
                               f"calling `{type(self).__name__}.convert()`.")
        report_lib.print_summary(self.report(), line_length=line_length, detailed=detailed,
                                 print_fn=print_fn or print)


Converter = TrtGraphConverterV2


def _check_calibration(precision: str, use_calibration, algorithm, table):
    """(algorithm, CalibrationTable or None) after checking the INT8 arguments."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"calibration_algorithm={algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if precision != "INT8":
        if table is not None:
            raise ValueError(f"calibration_table is for precision_mode='INT8' only, not {precision!r}")
        return algorithm, None
    if not use_calibration:
        if table is not None:
            raise ValueError("calibration_table is for use_calibration=True: with use_calibration=False the "
                             "ranges come from the model's fake-quant nodes")
        return algorithm, None
    if table is not None and not isinstance(table, CalibrationTable):
        table = CalibrationTable.load(table)
    return algorithm, table


def _check_fake_quant_nodes(signatures) -> None:
    """Explicit INT8 needs fake-quant nodes left on activations (on weights Grappler folds them
    into the constants): without any, its engines would quantize nothing."""
    found = any(node.op in FAKE_QUANT_OPS for sig in signatures.values() for node in sig.graph_def.node)
    if not found:
        raise ValueError("precision_mode='INT8' with use_calibration=False takes its quantization from the "
                         f"model's fake-quant nodes ({', '.join(FAKE_QUANT_OPS)}) on activations, and this "
                         "model has none: calibrate instead (use_calibration=True and "
                         "convert(calibration_input_fn=...))")


def _engine_name(signature_key: str, index: int) -> str:
    safe = "".join(c if c.isalnum() or c == "_" else "_" for c in signature_key)
    return f"TftrtLiteEngine_{safe}_{index}"


def _as_feeds(item, names) -> Dict[str, np.ndarray]:
    if isinstance(item, dict):
        unknown = set(item) - set(names)
        if unknown:
            raise ValueError(f"input_fn yielded unknown inputs {sorted(unknown)}; signature inputs: {names}")
        return dict(item)
    if not isinstance(item, (list, tuple)):
        item = [item]
    if len(item) != len(names):
        raise ValueError(f"input_fn yielded {len(item)} arrays; the signature takes {len(names)}: {names}")
    return dict(zip(names, item))


def _progress(items, desc):
    """tqdm over ``items`` when stderr is a terminal (quiet in logs and CI)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False, disable=None)
