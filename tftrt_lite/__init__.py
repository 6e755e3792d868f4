"""tftrt_lite: TF-TRT's converter for TensorFlow 2.21, with its own engines instead of TensorRT.

``import tftrt_lite`` registers the ``TftrtLiteEngine`` op, which is all a process
needs to load and run a converted SavedModel. The converter and the engine builder
(ONNX, tf2onnx, NVRTC) load on first use, so serving processes never pay for them.
"""
import importlib

from tftrt_lite.runtime.oplib import load as _load_op_library
from tftrt_lite.runtime.oplib import reset_stats, stats

__version__ = "0.1.0"

_load_op_library()

_LAZY = {
    "Converter": "tftrt_lite.converter",
    "TrtGraphConverterV2": "tftrt_lite.converter",
    "TrtConversionParams": "tftrt_lite.converter",
    "ConversionParams": "tftrt_lite.converter",
    "TrtPrecisionMode": "tftrt_lite.converter",
    "DEFAULT_TRT_MAX_WORKSPACE_SIZE_BYTES": "tftrt_lite.converter",
    "build_engine": "tftrt_lite.engine",
    "Engine": "tftrt_lite.engine",
}

__all__ = sorted(_LAZY) + ["stats", "reset_stats", "__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tftrt_lite' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
