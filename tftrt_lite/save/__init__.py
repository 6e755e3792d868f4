"""Save converted signatures as a SavedModel (atomically) and read back its report."""
from tftrt_lite.save.saved_model import (
    CALIBRATION_TABLE_PATH, REPORT_PATH, read_calibration_table, read_report, save_functions)

__all__ = ["CALIBRATION_TABLE_PATH", "REPORT_PATH", "read_calibration_table", "read_report", "save_functions"]
