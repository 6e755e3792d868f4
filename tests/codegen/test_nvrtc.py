"""NVRTC compilation and its disk cache (runs without a GPU)."""
import os

import pytest

from tftrt_lite.codegen import nvrtc
from tftrt_lite.codegen.nvrtc import KernelCompileError, compile_kernel

SRC = 'extern "C" __global__ void scale2(float* x, long long n) {\n' \
      '  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;\n  if (i < n) x[i] *= 2.f;\n}\n'


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_compiles_cubin_and_ptx(arch):
    k = compile_kernel(SRC, "scale2", arch)
    assert k.cubin[:4] == b"\x7fELF" and k.arch == arch and k.name == "scale2"
    assert ".visible .entry scale2" in k.ptx and f".target {arch}" in k.ptx


def test_cache_hits_and_repairs_corrupt_entries(kernel_cache):
    first = compile_kernel(SRC + "// cache test\n", "scale2", "sm_90")
    key = nvrtc.cache_key(SRC + "// cache test\n", "scale2", "sm_90", nvrtc.DEFAULT_OPTIONS)
    path = os.path.join(nvrtc.cache_dir(), key + ".entry")
    assert os.path.isfile(path) and path.startswith(str(kernel_cache))
    assert not [f for f in os.listdir(nvrtc.cache_dir()) if f.startswith(".tmp-")]
    mtime = os.stat(path).st_mtime_ns
    assert compile_kernel(SRC + "// cache test\n", "scale2", "sm_90") == first
    assert os.stat(path).st_mtime_ns == mtime  # served from the cache, not rewritten
    with open(path, "wb") as f:
        f.write(b"garbage")
    assert compile_kernel(SRC + "// cache test\n", "scale2", "sm_90") == first


def test_cache_key_covers_arch_and_options():
    keys = {nvrtc.cache_key(SRC, "scale2", a, o) for a in ("sm_80", "sm_90")
            for o in (("-std=c++17",), ("-std=c++17", "--use_fast_math"))}
    assert len(keys) == 4


def test_compile_error_names_kernel_and_carries_log():
    bad = 'extern "C" __global__ void broken(float* x) { x[0] = undefined_thing; }\n'
    with pytest.raises(KernelCompileError, match=r"(?s)kernel 'broken' for sm_90.*undefined_thing"):
        compile_kernel(bad, "broken", "sm_90", use_cache=False)


def test_rejects_bad_arch_and_missing_kernel():
    with pytest.raises(ValueError, match="'ampere'"):
        compile_kernel(SRC, "scale2", "ampere")
    with pytest.raises(KernelCompileError, match="'other' is not defined"):
        compile_kernel(SRC, "other", "sm_90")
