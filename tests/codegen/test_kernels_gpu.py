"""Every generated kernel launched on the GPU (its NVRTC cubin, through CuPy) against the
NumPy reference executor, on fresh random inputs with a symbolic batch bound to 3."""
import numpy as np
import pytest

from tftrt_lite.codegen import emit_activation, emit_node
from tftrt_lite.engine import symbolic
from tftrt_lite.engine.fused_ops import apply_activation
from tftrt_lite.engine.reference import np_dtype, run_graph
from cuda_launch import gpu_arch, launch, to_device, to_host
from ir_graphs import random_array
from kernel_cases import CASES, HALF_DTYPES, graph_for, half_graph_for

cupy = pytest.importorskip("cupy")


ARCH = gpu_arch()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ARCH is None, reason="needs a CUDA GPU visible to CuPy")]
ENV = {"N": 3}


def _launch(spec, buffers, tmp_path):
    launch(spec, buffers, ENV, ARCH, tmp_path)


def _compare(got, want, what):
    if np.dtype(want.dtype).kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_kernel_matches_reference(case_id, tmp_path):
    g = graph_for(case_id)
    rng = np.random.default_rng(sorted(CASES).index(case_id))
    feeds = {t: random_array(rng, g.tensors[t].dtype, tuple(symbolic.evaluate(d, ENV) for d in g.tensors[t].shape))
             for t in g.inputs}
    want = run_graph(g, feeds)
    buffers = {t: cupy.asarray(v) for t, v in feeds.items()}
    buffers.update({t: cupy.asarray(tt.value) for t, tt in g.tensors.items() if tt.value is not None})
    for o in g.outputs:
        shape = tuple(symbolic.evaluate(d, ENV) for d in g.tensors[o].shape)
        buffers[o] = cupy.full(shape, 77, dtype=g.tensors[o].dtype)  # unwritten elements show up
    for spec in emit_node(g, g.nodes[0]):
        _launch(spec, buffers, tmp_path)
    for o in g.outputs:
        _compare(cupy.asnumpy(buffers[o]), want[o], f"{case_id}: output {o!r}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_half_kernel_matches_reference(case_id, dtype, tmp_path):
    """The half-storage variant of each case: float math inside, one rounding per store."""
    g = half_graph_for(case_id, dtype)
    if g is None:
        pytest.skip("no float32 tensor in this case")
    rng = np.random.default_rng(sorted(CASES).index(case_id))
    feeds = {}
    for t in g.inputs:
        dt = g.tensors[t].dtype
        shape = tuple(symbolic.evaluate(d, ENV) for d in g.tensors[t].shape)
        feeds[t] = random_array(rng, "float32", shape).astype(np_dtype(dt)) if dt in HALF_DTYPES \
            else random_array(rng, dt, shape)
    want = run_graph(g, feeds)
    buffers = {t: to_device(v) for t, v in feeds.items()}
    buffers.update({t: to_device(tt.value) for t, tt in g.tensors.items() if tt.value is not None})
    for o in g.outputs:
        shape = tuple(symbolic.evaluate(d, ENV) for d in g.tensors[o].shape)
        buffers[o] = to_device(np.full(shape, 77, dtype=np_dtype(g.tensors[o].dtype)))
    for spec in emit_node(g, g.nodes[0]):
        _launch(spec, buffers, tmp_path)
    for o in g.outputs:
        want_o = want[o]
        got = to_host(buffers[o], g.tensors[o].dtype)
        if np.dtype(want_o.dtype).kind in "fV":
            np.testing.assert_allclose(got.astype(np.float32), want_o.astype(np.float32), rtol=1e-2, atol=1e-2,
                                       err_msg=f"{case_id} {dtype}: output {o!r}")
        else:
            np.testing.assert_array_equal(got, want_o, err_msg=f"{case_id} {dtype}: output {o!r}")


@pytest.mark.parametrize("activation, params", [("gelu_erf", []), ("gelu_tanh", []), ("silu", []),
                                                ("leaky_relu", [0.1]), ("clip", [0.0, 6.0])])
def test_inplace_activation_matches_fused_ops(activation, params, tmp_path):
    g = graph_for("identity")
    x = np.random.default_rng(7).standard_normal((3, 3)).astype(np.float32) * 4
    buffers = {"y": cupy.asarray(x)}
    _launch(emit_activation(g, g.nodes[0], "y", activation, params), buffers, tmp_path)
    _compare(cupy.asnumpy(buffers["y"]), apply_activation(x, activation, params), activation)


@pytest.mark.parametrize("dtype", ("float32",) + HALF_DTYPES)
@pytest.mark.parametrize("case_id", ("layernorm_bert_residual", "maxpool_nhwc", "avgpool_nhwc",
                                     "space_to_depth_stem"))
def test_vector_kernels_off_16_byte_alignment_match_reference(case_id, dtype, tmp_path):
    """The 16-byte word paths need aligned buffers; buffers one element off alignment take
    the scalar accesses of the same register layout and give the same results."""
    g = graph_for(case_id) if dtype == "float32" else half_graph_for(case_id, dtype)
    rng = np.random.default_rng(11)
    feeds = {t: random_array(rng, "float32", tuple(symbolic.evaluate(d, ENV) for d in g.tensors[t].shape))
             .astype(np_dtype(g.tensors[t].dtype)) for t in g.inputs}
    want = run_graph(g, feeds)

    def misaligned(value):  # a view starting one element into a fresh allocation
        flat = to_device(np.concatenate([np.zeros(1, value.dtype), value.ravel()]))
        return flat[1:].reshape(value.shape)

    buffers = {t: misaligned(v) for t, v in feeds.items()}
    for o in g.outputs:
        shape = tuple(symbolic.evaluate(d, ENV) for d in g.tensors[o].shape)
        buffers[o] = misaligned(np.full(shape, 77, dtype=np_dtype(g.tensors[o].dtype)))
    for spec in emit_node(g, g.nodes[0]):
        assert "tl_vec" in spec.source
        _launch(spec, buffers, tmp_path)
    tol = 1e-5 if dtype == "float32" else 1e-2
    for o in g.outputs:
        np.testing.assert_allclose(to_host(buffers[o], g.tensors[o].dtype).astype(np.float32),
                                   want[o].astype(np.float32), rtol=tol, atol=tol,
                                   err_msg=f"{case_id} {dtype}: output {o!r}")
