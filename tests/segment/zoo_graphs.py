"""The reference models as the load stage delivers them, built once per test process.

Building and freezing the zoo is the slow part of these tests (tens of seconds per
image model), and both ``tests/segment`` and ``tests/lower`` need the same graphs, so
they share this process-wide cache instead of per-directory fixtures.
"""
import atexit
import functools
import shutil
import tempfile

import model_zoo
from tftrt_lite.load import load_saved_model

_ROOT = tempfile.mkdtemp(prefix="tftrt_lite_zoo_")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def zoo_signature(name):
    """``SignatureGraph`` of the ``serving_default`` signature of zoo model ``name``."""
    path = model_zoo.build_saved_model(name, _ROOT)
    return load_saved_model(path).signatures["serving_default"]


def protected_nodes(signature):
    return [b.node_name for b in signature.inputs + signature.outputs]
