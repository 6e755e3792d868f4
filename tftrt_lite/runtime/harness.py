"""ctypes binding of the plan executor's TensorFlow-free C harness (``runtime/cc/harness.cc``).

``_tftrt_lite_executor.so`` exposes the executor the TftrtLiteEngine op runs, so a plan
can be created, run, profiled step by step and timed end to end on CuPy buffers without
TensorFlow in the loop. Tests check the executor through it, and ``tftrt_lite.profile``
measures engines with it. Loading the library opens no CUDA library; CuPy is imported
only by the calls that touch the GPU, so plan validation works on machines without one.

Memory the executor asks for during a call (outputs, scratch) comes from a callback
that hands out CuPy blocks; the blocks are kept alive until the call's GPU work is done.
"""
import ctypes
import os

import numpy as np

from tftrt_lite.errors import TftrtLiteError

HARNESS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tftrt_lite_executor.so")
#: Largest output rank a run reports (the size of each output's dims slot).
MAX_RANK = 8
ALLOC_FN = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)
# tftrt_lite::Status codes
INVALID_PLAN, UNAVAILABLE, OUT_OF_PROFILE = 1, 2, 3


class ExecutorError(TftrtLiteError, RuntimeError):
    """A harness call failed; ``code`` is the executor's status code, ``message`` its text."""

    def __init__(self, code, message):
        super().__init__(f"[status {code}] {message}")
        self.code = code
        self.message = message


class Harness:
    """ctypes binding of harness.cc."""

    def __init__(self, path=HARNESS_PATH):
        lib = ctypes.CDLL(path)
        lib.tftrt_lite_executor_create.restype = ctypes.c_void_p
        lib.tftrt_lite_executor_create.argtypes = [ctypes.c_char_p, ctypes.c_uint64]
        lib.tftrt_lite_executor_create_with_options.restype = ctypes.c_void_p
        lib.tftrt_lite_executor_create_with_options.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_int]
        lib.tftrt_lite_executor_destroy.restype = None
        lib.tftrt_lite_executor_destroy.argtypes = [ctypes.c_void_p]
        lib.tftrt_lite_executor_last_error.restype = ctypes.c_char_p
        lib.tftrt_lite_executor_last_error_code.restype = ctypes.c_int
        for fn in (lib.tftrt_lite_executor_num_inputs, lib.tftrt_lite_executor_num_outputs,
                   lib.tftrt_lite_executor_num_steps):
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p]
        inputs = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64),
                  ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64), ALLOC_FN, ctypes.c_void_p]
        lib.tftrt_lite_executor_run.restype = ctypes.c_int
        lib.tftrt_lite_executor_run.argtypes = inputs + [
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64),
            ctypes.c_int]
        lib.tftrt_lite_executor_profile.restype = ctypes.c_int
        lib.tftrt_lite_executor_profile.argtypes = inputs + [ctypes.c_int, ctypes.POINTER(ctypes.c_double),
                                                             ctypes.POINTER(ctypes.c_int)]
        lib.tftrt_lite_executor_time_calls.restype = ctypes.c_int
        lib.tftrt_lite_executor_time_calls.argtypes = inputs + [ctypes.c_int, ctypes.c_int,
                                                                ctypes.POINTER(ctypes.c_double)]
        lib.tftrt_lite_cuda_graph_counts.restype = None
        lib.tftrt_lite_cuda_graph_counts.argtypes = [ctypes.POINTER(ctypes.c_int64)] * 3
        self.lib = lib

    def _error(self):
        return ExecutorError(self.lib.tftrt_lite_executor_last_error_code(),
                             self.lib.tftrt_lite_executor_last_error().decode())

    def create(self, plan_bytes, max_cached_shapes=None):
        """An executor of ``plan_bytes``; ``max_cached_shapes`` overrides the default
        number of shapes with a CUDA graph (0: none)."""
        if max_cached_shapes is None:
            handle = self.lib.tftrt_lite_executor_create(plan_bytes, len(plan_bytes))
        else:
            handle = self.lib.tftrt_lite_executor_create_with_options(plan_bytes, len(plan_bytes),
                                                                      max_cached_shapes)
        if not handle:
            raise self._error()
        return Executor(self, handle)

    def cuda_graph_counts(self):
        """Process-wide ``{"captured", "replayed", "uncapturable"}`` counts of the executor's CUDA graphs."""
        values = [ctypes.c_int64() for _ in range(3)]
        self.lib.tftrt_lite_cuda_graph_counts(*[ctypes.byref(v) for v in values])
        return dict(zip(("captured", "replayed", "uncapturable"), (v.value for v in values)))


class Executor:
    """One executor of one plan (destroyed with this object)."""

    def __init__(self, harness, handle):
        self.harness = harness
        self.handle = handle
        self.num_inputs = harness.lib.tftrt_lite_executor_num_inputs(handle)
        self.num_outputs = harness.lib.tftrt_lite_executor_num_outputs(handle)
        self.num_steps = harness.lib.tftrt_lite_executor_num_steps(handle)

    def __del__(self):
        self.harness.lib.tftrt_lite_executor_destroy(self.handle)

    @staticmethod
    def _call_args(inputs, stream):
        """The leading arguments every harness call takes, and the CuPy blocks the
        allocator callback hands out (they must outlive the call's GPU work).

        NumPy inputs are passed as host memory, which the executor uploads on the stream
        itself, as it does in the op for the int32 inputs TensorFlow keeps on the host;
        CuPy inputs are device memory."""
        import cupy

        blocks = {}

        def allocate(_, nbytes):
            block = cupy.empty(max(int(nbytes), 1), dtype=cupy.uint8)
            blocks[block.data.ptr] = block
            return block.data.ptr

        on_host = [isinstance(a, np.ndarray) for a in inputs]
        arrays = [np.ascontiguousarray(a) if host else cupy.ascontiguousarray(a) for a, host in zip(inputs, on_host)]
        n_in = len(arrays)
        ptrs = (ctypes.c_uint64 * max(n_in, 1))(*[a.ctypes.data if host else a.data.ptr
                                                   for a, host in zip(arrays, on_host)])
        hosts = (ctypes.c_uint8 * max(n_in, 1))(*on_host)
        ranks = (ctypes.c_int32 * max(n_in, 1))(*[a.ndim for a in arrays])
        dims = [d for a in arrays for d in a.shape]
        dims_arr = (ctypes.c_int64 * max(len(dims), 1))(*dims)
        args = [ctypes.c_void_p(stream.ptr), n_in, ptrs, hosts, ranks, dims_arr, ALLOC_FN(allocate), None]
        return args, blocks, arrays

    def run(self, inputs, output_dtypes, stream=None):
        """Run on ``inputs`` (CuPy arrays, or NumPy arrays in host memory) on ``stream`` (a
        CuPy stream); returns CuPy outputs."""
        import cupy

        stream = stream or cupy.cuda.get_current_stream()
        args, blocks, _arrays = self._call_args(inputs, stream)
        n_out = self.num_outputs
        out_ptrs = (ctypes.c_uint64 * n_out)()
        out_ranks = (ctypes.c_int32 * n_out)()
        out_dims = (ctypes.c_int64 * (n_out * MAX_RANK))()
        code = self.harness.lib.tftrt_lite_executor_run(self.handle, *args, out_ptrs, out_ranks, out_dims, MAX_RANK)
        if code != 0:
            raise self.harness._error()
        stream.synchronize()
        outputs = []
        for j in range(n_out):
            shape = tuple(out_dims[j * MAX_RANK + d] for d in range(out_ranks[j]))
            dtype = np.dtype(output_dtypes[j])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            block = blocks[out_ptrs[j]] if nbytes else cupy.empty(1, cupy.uint8)
            outputs.append(block[:nbytes].view(dtype).reshape(shape))
        return outputs

    def profile(self, inputs, repeats, stream=None):
        """(median microseconds of every plan step over ``repeats`` uncaptured runs, the plan
        kernel index each launch step ran or -1 for library steps)."""
        import cupy

        stream = stream or cupy.cuda.get_current_stream()
        args, _blocks, _arrays = self._call_args(inputs, stream)
        step_us = (ctypes.c_double * max(self.num_steps, 1))()
        kernels = (ctypes.c_int * max(self.num_steps, 1))()
        code = self.harness.lib.tftrt_lite_executor_profile(self.handle, *args, repeats, step_us, kernels)
        stream.synchronize()
        if code != 0:
            raise self.harness._error()
        return list(step_us[:self.num_steps]), list(kernels[:self.num_steps])

    def time_calls(self, inputs, warmup, iters, stream=None):
        """Milliseconds per call of ``iters`` back-to-back calls after ``warmup`` calls."""
        import cupy

        stream = stream or cupy.cuda.get_current_stream()
        args, _blocks, _arrays = self._call_args(inputs, stream)
        ms = ctypes.c_double()
        code = self.harness.lib.tftrt_lite_executor_time_calls(self.handle, *args, warmup, iters, ctypes.byref(ms))
        stream.synchronize()
        if code != 0:
            raise self.harness._error()
        return ms.value
