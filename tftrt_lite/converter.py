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
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from tftrt_lite import report as report_lib
from tftrt_lite.engine import build_engine
from tftrt_lite.engine.builder import SUPPORTED_PRECISIONS
from tftrt_lite.engine.passes.precision import compile_overrides
from tftrt_lite.engine.plan import FORMAT_VERSION
from tftrt_lite.errors import NotSupportedYetError, TftrtLiteError
from tftrt_lite.load import load_saved_model
from tftrt_lite.lower import lower_segment
from tftrt_lite.replace import EngineSpec, replace_segments
from tftrt_lite.save import save_functions
from tftrt_lite.segment import segment_graph

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
    if profile_strategy is not None:
        raise NotSupportedYetError(
            f"not supported yet: dynamic_shape_profile_strategy={profile_strategy!r} "
            "(engines already accept every input shape; per-range tactics are not available)")
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

    Arguments are TF-TRT's. ``use_dynamic_shape`` is accepted for compatibility:
    engines are always built with symbolic dimensions, so one engine serves every
    shape the signature allows. ``allow_build_at_runtime`` likewise: engines never
    need a runtime rebuild. ``maximum_cached_engines`` is how many input-shape sets
    per engine get a captured CUDA graph at run time (others run uncaptured).

    Beyond TF-TRT: ``precision_mode`` also takes "BF16"; ``precision_overrides``
    (``{node-name regex: "FP32" | "FP16" | "BF16"}``) pins matching engine nodes to a
    precision (e.g. keep a sensitive layer in FP32 in an FP16 engine); ``allow_tf32=False``
    keeps FP32 math off TF32 tensor cores.
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
                 allow_tf32=True):
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
        if calibration_input_fn is not None:
            raise NotSupportedYetError("not supported yet: calibration_input_fn (INT8 calibration)")
        t0 = time.perf_counter()
        loaded = load_saved_model(self._input_dir, self._tags, self._signature_key)
        self._timings["load_s"] = time.perf_counter() - t0
        for key, sig in loaded.signatures.items():
            self._converted[key] = self._convert_signature(key, sig)
            self._functions[key] = sig.to_function(self._converted[key].graph_def)
        self._timings["total_s"] = time.perf_counter() - t0
        first = next(iter(self._functions.values()), None)
        return first

    def _convert_signature(self, key, sig) -> _ConvertedSignature:
        protected = [b.node_name for b in sig.inputs + sig.outputs]
        t0 = time.perf_counter()
        seg = segment_graph(sig.graph_def, minimum_segment_size=self._params.minimum_segment_size,
                            protected=protected)
        segment_s = time.perf_counter() - t0
        engines, built, failures, records = [], [], [], {}
        for i, segment in enumerate(_progress(seg.segments, f"building engines [{key}]")):
            name = _engine_name(key, i)
            t1 = time.perf_counter()
            try:
                lowered = lower_segment(sig.graph_def, segment)
                engine = build_engine(lowered.onnx_model, precision=self._precision, name=name,
                                      precision_overrides=self._precision_overrides, allow_tf32=self._allow_tf32)
                if os.environ.get("TFTRT_LITE_VERIFY") == "1":
                    from tftrt_lite.verify import verify_engine
                    verify_engine(engine, lowered)
                records[name] = BuiltEngine(engine, lowered)
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
            built.append({"engine": name, "segment": segment.name, "build_s": time.perf_counter() - t1, "stats": engine.stats})
        graph_def = replace_segments(sig.graph_def, engines, keep_native_segments=True)
        report = report_lib.signature_report(key, sig, seg, engines, built, failures,
                                             timings={"load_s": sig.load_seconds, "segment_s": segment_s})
        return _ConvertedSignature(sig, graph_def, engines, records, report)

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
        """Run the converted signatures on ``input_fn``'s inputs, as TF-TRT's ``build``.

        Engines here need no per-shape build; this checks that every engine accepts
        the shapes you will serve and runs them once (first-call setup off the
        serving path). Each item ``input_fn`` yields is one call: a single array,
        a list/tuple (positional, in signature input order), or a dict by input name.
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
            func(**{k: tf.convert_to_tensor(v) for k, v in feeds.items()})
            self._build_shapes.append({k: list(np.shape(v)) for k, v in feeds.items()})

    # -- save --------------------------------------------------------------------
    def save(self, output_saved_model_dir, save_gpu_specific_engines=True, options=None,
             keep_native_segments=True):
        """Write the converted model; every converted signature keeps its name and I/O.

        ``keep_native_segments=False`` drops each engine's native fallback copy (the
        smallest model; it then needs a GPU engine to run).
        """
        if not self._converted:
            raise RuntimeError("Need to call convert() before save()")
        if not save_gpu_specific_engines:
            raise NotSupportedYetError("not supported yet: save_gpu_specific_engines=False")
        functions = self._functions
        if not keep_native_segments:
            functions = {k: c.signature.to_function(
                replace_segments(c.signature.graph_def, c.engines, keep_native_segments=False))
                for k, c in self._converted.items()}
        report = self.report()
        report["keep_native_segments"] = bool(keep_native_segments)
        return save_functions(functions, output_saved_model_dir, report=report, options=options)

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
