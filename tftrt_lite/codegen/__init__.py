"""CUDA C code generation for engine IR nodes, and NVRTC compilation.

Codegen is a pure function from an IR node and its tensors' (symbolic) shapes to CUDA C
source plus a launch description (:class:`KernelSpec`), so every kernel can be read,
diffed and compiled on a machine without a GPU. Importing this package registers every
emitter; :func:`emit_node` dispatches on the node's op.
"""
from tftrt_lite.codegen import attention, elementwise, movement, reduction  # noqa: F401  (registers emitters)
from tftrt_lite.codegen.elementwise import emit_activation, emit_copy
from tftrt_lite.codegen.kernel import (
    EMITTERS, LIBRARY_OPS, VIEW_OPS, Arg, KernelSpec, LaunchDim, emit_node)
from tftrt_lite.codegen.nvrtc import CompiledKernel, KernelCompileError, compile_kernel

__all__ = [
    "Arg", "CompiledKernel", "EMITTERS", "KernelCompileError", "KernelSpec", "LIBRARY_OPS", "LaunchDim",
    "VIEW_OPS", "compile_kernel", "emit_activation", "emit_copy", "emit_node",
]
