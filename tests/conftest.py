"""Test-wide setup: GPU tests skip cleanly on machines without a usable GPU."""
import functools

import pytest


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    """True when a CUDA device can be used (by CuPy, or by TensorFlow)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return True
    except Exception:  # no driver, no device, or CuPy missing: ask TensorFlow
        pass
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in gpu_items:
            item.add_marker(skip)
