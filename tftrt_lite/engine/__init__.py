"""The engine builder: ONNX → engine IR → passes → generated kernels → versioned plan.

``build_engine`` and ``Engine`` are resolved lazily: the IR, symbolic and pass modules
import ``tftrt_lite.engine.*`` submodules themselves, and loading the builder (which
pulls in codegen and every pass) eagerly here would make those imports circular.
"""
from typing import Any

__all__ = ["Engine", "build_engine"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tftrt_lite.engine import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'tftrt_lite.engine' has no attribute {name!r}")
