"""INT8 calibration of one engine: the ranges of the tensors its convolutions and GEMMs quantize.

Why on the engine's own graph rather than on TensorFlow's: the tensors an INT8 engine
quantizes are the data inputs of its convolutions and GEMMs as they stand after BN
folding, layout and conv/GEMM fusion (``passes.CALIBRATION_POINT``); many have no name
in the TensorFlow graph, and a range measured elsewhere would be a guess. The graph at
that point is still all float32, so the NumPy reference executor runs it on each
calibration batch of engine inputs and a :class:`~tftrt_lite.calibrate.Calibrator`
keeps the statistics of exactly those tensors (nothing else is held beyond one batch).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from tftrt_lite.calibrate import Calibrator, CalibrationTable, CalibrationTableError
from tftrt_lite.engine.ir import Graph
from tftrt_lite.engine.passes.quantize import quantizable_inputs
from tftrt_lite.errors import ConversionError


def tensors_to_calibrate(graph: Graph) -> List[str]:
    """The activation tensors whose ranges an INT8 build of ``graph`` needs, in node order
    (``graph`` as it stands at the calibration point)."""
    return list(dict.fromkeys(quantizable_inputs(graph).values()))


def calibrate_graph(graph: Graph, batches: Iterable[Mapping[str, np.ndarray]],
                    calibrator: Optional[Calibrator] = None) -> CalibrationTable:
    """Run ``graph`` on every batch of ``batches`` (engine input name → array), let
    ``calibrator`` (default: a new entropy calibrator) observe each tensor of
    :func:`tensors_to_calibrate`, and return the table of their ranges (keys: tensor names)."""
    from tftrt_lite.engine.reference import run_graph

    calibrator = calibrator or Calibrator("entropy")
    wanted = tensors_to_calibrate(graph)
    if not wanted:  # nothing to quantize: the engine is float16 throughout
        return CalibrationTable(amax={}, algorithm=calibrator.algorithm, num_batches=0, num_samples=0,
                                model=graph.name)
    for count, feeds in enumerate(batches):
        missing = [n for n in graph.inputs if n not in feeds]
        if missing:
            raise ConversionError(f"calibration batch {count} of engine {graph.name!r} lacks inputs {missing}")
        values = run_graph(graph, {n: feeds[n] for n in graph.inputs}, intermediates=True)
        first = np.shape(feeds[graph.inputs[0]]) if graph.inputs else ()
        calibrator.observe_batch({t: values[t] for t in wanted}, batch_size=int(first[0]) if first else 1)
    if calibrator.num_batches == 0:
        raise ConversionError(f"engine {graph.name!r}: calibration got no batches")
    return calibrator.compute(model=graph.name)


def ranges_for(graph: Graph, table: CalibrationTable) -> Dict[str, float]:
    """``{tensor: amax}`` of :func:`tensors_to_calibrate` from ``table``. A missing tensor
    raises ``CalibrationTableError``: the table was made for another model, and building
    with guessed ranges would hide that."""
    ranges = {}
    for t in tensors_to_calibrate(graph):
        if t not in table.amax:
            raise CalibrationTableError(
                f"the calibration table has no range for tensor {t!r} of engine {graph.name!r}: it was made "
                f"for another model or segmentation; calibrate again with calibration_input_fn")
        ranges[t] = float(table.amax[t])
    return ranges
