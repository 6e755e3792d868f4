"""Whether this machine has a usable GPU: GPU tests skip cleanly where it has none.

A module of its own (not conftest.py) so tests can import it: several test folders have a
conftest.py, and ``import conftest`` would get whichever was imported first.
"""
import functools


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
