"""Process environment helpers shared by the pipeline stages."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """Set environment variable ``name`` to ``value`` for a ``with`` block, then restore it.

    Why: tf2onnx and the TftrtLiteEngine op read switches from the environment, and a
    library call must not leave the caller's process configured differently.
    """
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            del os.environ[name]
        else:
            os.environ[name] = previous
