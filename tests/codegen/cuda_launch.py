"""Launching a generated kernel through CuPy: what every GPU kernel test shares.

A :class:`KernelSpec` carries symbolic grid and argument expressions; these helpers bind
them to concrete symbol values, compile the source with NVRTC for the GPU at hand and
move arrays across (bfloat16, which CuPy lacks, travels as its uint16 bits).
"""
import math

import numpy as np
import pytest

from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.ir import saturate_cast
from tftrt_lite.engine.plan import np_dtype


def gpu_arch():
    """``"sm_XY"`` of GPU 0, or None without a GPU (or a driver) visible to CuPy."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return f"sm_{cupy.cuda.Device(0).compute_capability}"
    except Exception:  # no driver / no device: CuPy raises its own runtime errors
        return None


def require_gpu():
    """:func:`gpu_arch`, skipping the calling test where there is no GPU."""
    arch = gpu_arch()
    if arch is None:
        pytest.skip("needs a CUDA GPU visible to CuPy")
    return arch


def random_feeds(g, env, rng, dtype, scale=1.0):
    """Standard-normal values (times ``scale``) rounded to ``dtype`` for every input of
    ``g``, at its shapes with symbols bound by ``env``."""
    return {t: saturate_cast(scale * rng.standard_normal([symbolic.evaluate(d, env) for d in g.tensor(t).shape]),
                             dtype)
            for t in g.inputs}


def to_device(x):
    import cupy

    x = np.asarray(x)
    return cupy.asarray(x.view(np.uint16) if x.dtype == np_dtype("bfloat16") else x)


def to_host(buf, dtype):
    import cupy

    out = cupy.asnumpy(buf)
    return out.view(np_dtype(dtype)) if dtype == "bfloat16" else out


def prepare(spec, buffers, env, arch, tmp_path):
    """The compiled function, grid, block and arguments of one launch of ``spec``."""
    import cupy

    path = tmp_path / f"{spec.name}.cubin"
    path.write_bytes(compile_kernel(spec.source, spec.name, arch).cubin)
    fn = cupy.RawModule(path=str(path)).get_function(spec.name)
    args = []
    for a in spec.args:
        if a.kind == "buffer":
            args.append(buffers[a.value])
        elif a.kind == "expr":
            args.append(np.int64(symbolic.evaluate(a.value, env)))
        elif a.kind == "i64":
            args.append(np.int64(a.value))
        else:
            args.append(np.float32(a.value))
    grid = tuple(max(1, math.ceil(symbolic.evaluate(g.numerator, env) / g.divisor)) for g in spec.grid)
    return fn, grid, spec.block, tuple(args)


def launch(spec, buffers, env, arch, tmp_path):
    """Run ``spec`` once on ``buffers`` (tensor name → CuPy array) and wait for it."""
    import cupy

    fn, grid, block, args = prepare(spec, buffers, env, arch, tmp_path)
    fn(grid, block, args, shared_mem=spec.shared_mem)
    cupy.cuda.Device(0).synchronize()


def launch_guarded(spec, buffers, out_shape, dtype, env, arch, tmp_path):
    """Run ``spec`` with its output ``"y"`` in a NaN-filled allocation that runs 4 KiB past it;
    return the output on the host after checking that nothing past it was written (the
    NaNs inside it show any element the kernel failed to write)."""
    import numpy as np

    size = int(np.prod(out_shape))
    guard = 4096 // np.dtype(np_dtype(dtype)).itemsize
    out = to_device(np.full(size + guard, np.nan, np_dtype(dtype)))
    buffers = {**buffers, "y": out[:size].reshape(out_shape)}
    launch(spec, buffers, env, arch, tmp_path)
    assert np.isnan(to_host(out[size:], dtype).astype(np.float32)).all(), "the kernel wrote past its output"
    return to_host(buffers["y"], dtype)
