"""Test-wide setup: GPU tests skip cleanly on machines without a usable GPU."""
import pytest

from gpu_check import gpu_available


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not gpu_available():
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in gpu_items:
            item.add_marker(skip)
