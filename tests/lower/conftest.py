"""Puts ``tests/`` (``model_zoo``) and ``tests/segment`` (``zoo_graphs``, shared) on ``sys.path``."""
import os
import sys

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (_TESTS, os.path.join(_TESTS, "segment")):
    if path not in sys.path:
        sys.path.insert(0, path)
