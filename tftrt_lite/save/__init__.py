"""Save converted signatures as a SavedModel (atomically) and read back its report."""
from tftrt_lite.save.saved_model import REPORT_PATH, read_report, save_functions

__all__ = ["REPORT_PATH", "read_report", "save_functions"]
