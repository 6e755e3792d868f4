"""The runtime side of tftrt_lite: the TftrtLiteEngine op library and its counters.

The op's C++ sources live in ``runtime/cc``; ``setup.py`` compiles them into
``_tftrt_lite_ops.so`` beside this file.
"""
from tftrt_lite.runtime.oplib import load, load_library, read_build_info, reset_stats, stats

__all__ = ["load", "load_library", "read_build_info", "reset_stats", "stats"]
