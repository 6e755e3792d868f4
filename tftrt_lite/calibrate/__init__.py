"""INT8 calibration: activation ranges from calibration batches, the int8 number format, and
the calibration table that carries the ranges from calibration to the engine builder.

    cal = Calibrator("entropy")
    for batch in batches:                       # name -> array of every tensor to calibrate
        cal.observe_batch(batch)
    table = cal.compute(model=fingerprint)
    table.save("calibration.json")              # or table.to_bytes() as a SavedModel asset
    scale = scale_from_amax(table.amax["t"])    # float32 scale of tensor t
"""
from tftrt_lite.calibrate.calibrators import (
    ALGORITHMS, AMAX_FLOOR, QMAX, AbsHistogram, Calibrator, dequantize, quantize, scale_from_amax, weight_scales)
from tftrt_lite.calibrate.table import FORMAT_VERSION, CalibrationTable, CalibrationTableError

__all__ = ["ALGORITHMS", "AMAX_FLOOR", "QMAX", "AbsHistogram", "Calibrator", "dequantize", "quantize",
           "scale_from_amax", "weight_scales", "FORMAT_VERSION", "CalibrationTable", "CalibrationTableError"]
