"""Test-wide setup: GPU tests skip cleanly on machines without a usable GPU."""
import pytest

from gpu_check import gpu_available


@pytest.fixture
def no_fallback(monkeypatch):
    """Engines must run: with TFTRT_LITE_ALLOW_NATIVE_FALLBACK=0 a fallback is an error, so a
    GPU test cannot pass on TensorFlow's own kernels."""
    monkeypatch.setenv("TFTRT_LITE_ALLOW_NATIVE_FALLBACK", "0")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in gpu_items:
            item.add_marker(skip)
