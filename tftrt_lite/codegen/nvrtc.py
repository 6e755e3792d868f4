"""NVRTC compilation of generated kernels, with a content-addressed disk cache.

Why NVRTC through CuPy's bindings: they load ``libnvrtc`` without needing a GPU or a
driver, so a CPU-only build machine can produce sm_80/sm_90 cubins for a plan. Why a
cache: the same fused kernel recurs across engines and rebuilds (every ResNet block's
residual add is one source), and NVRTC costs ~50-200 ms per program.

The cache key covers everything that changes the output: the source, the kernel name,
the target arch, the options and the NVRTC version. Entries are written to a temporary
file and renamed into place, so concurrent builders never read half an entry; an entry
that does not parse is treated as a miss and rewritten.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from tftrt_lite.fileutil import write_atomically

#: Options every kernel is compiled with. No ``--use_fast_math``: fp32 engines must match
#: the reference executor to 1e-5, and fast-math's approximate exp/div/sqrt do not.
DEFAULT_OPTIONS: Tuple[str, ...] = ("-std=c++17",)

_ARCH_RE = re.compile(r"^sm_(\d{2,3})a?$")
_CACHE_MAGIC = b"TLKC1\0"


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel; the message carries the kernel name, arch and NVRTC log."""


@dataclass(frozen=True)
class CompiledKernel:
    """One kernel compiled for one arch: the cubin the runtime loads, and its PTX.

    The PTX lets the runtime JIT the kernel for a newer GPU than the plan targets.
    """

    name: str
    arch: str
    cubin: bytes
    ptx: str


def nvrtc_version() -> Tuple[int, int]:
    from cupy_backends.cuda.libs import nvrtc

    major, minor = nvrtc.getVersion()
    return int(major), int(minor)


def supported_archs() -> Tuple[str, ...]:
    """The ``sm_XX`` targets the installed NVRTC can generate code for."""
    from cupy_backends.cuda.libs import nvrtc

    return tuple(f"sm_{a}" for a in nvrtc.getSupportedArchs())


def cache_dir() -> str:
    """``$TFTRT_LITE_CACHE_DIR`` or ``~/.cache/tftrt_lite``; kernels live under ``kernels/``."""
    root = os.environ.get("TFTRT_LITE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tftrt_lite")
    return os.path.join(root, "kernels")


def _check_arch(arch: str) -> None:
    if not _ARCH_RE.match(arch):
        raise ValueError(f"target arch {arch!r} is not of the form 'sm_XX' (e.g. 'sm_90')")


def cache_key(source: str, name: str, arch: str, options: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (source, name, arch, "\0".join(options), "%d.%d" % nvrtc_version()):
        data = part.encode("utf-8")
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def _read_entry(path: str, name: str, arch: str) -> Optional[CompiledKernel]:
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    head = len(_CACHE_MAGIC) + 8
    if len(blob) < head or not blob.startswith(_CACHE_MAGIC):
        return None
    (cubin_size,) = struct.unpack_from("<Q", blob, len(_CACHE_MAGIC))
    if head + cubin_size > len(blob):
        return None
    cubin = blob[head:head + cubin_size]
    try:
        ptx = blob[head + cubin_size:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return CompiledKernel(name, arch, cubin, ptx)


def _write_entry(path: str, kernel: CompiledKernel) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    blob = _CACHE_MAGIC + struct.pack("<Q", len(kernel.cubin)) + kernel.cubin + kernel.ptx.encode("utf-8")
    write_atomically(path, blob, durable=False)


def _compile_uncached(source: str, name: str, arch: str, options: Sequence[str]) -> CompiledKernel:
    from cupy_backends.cuda.libs import nvrtc

    prog = nvrtc.createProgram(source, f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, [*options, f"-arch={arch}"])
        except nvrtc.NVRTCError as e:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(
                f"NVRTC failed to compile kernel {name!r} for {arch}: {e}\n{log}") from None
        cubin = bytes(nvrtc.getCUBIN(prog))
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode("utf-8") if isinstance(ptx, bytes) else str(ptx)
        return CompiledKernel(name, arch, cubin, ptx.rstrip("\0"))
    finally:
        nvrtc.destroyProgram(prog)


def compile_kernel(source: str, name: str, arch: str = "sm_90",
                   options: Sequence[str] = DEFAULT_OPTIONS, use_cache: bool = True) -> CompiledKernel:
    """Compile ``source`` (which defines ``extern "C" __global__ name``) for ``arch``.

    Returns the cubin and PTX; raises :class:`KernelCompileError` with the NVRTC log.
    """
    _check_arch(arch)
    if f" {name}(" not in source and f"\n{name}(" not in source:
        raise KernelCompileError(f"kernel {name!r} is not defined in the source given to compile_kernel")
    options = tuple(options)
    path = os.path.join(cache_dir(), cache_key(source, name, arch, options) + ".entry") if use_cache else None
    if path is not None:
        hit = _read_entry(path, name, arch)
        if hit is not None:
            return hit
    kernel = _compile_uncached(source, name, arch, options)
    if path is not None:
        _write_entry(path, kernel)
    return kernel
