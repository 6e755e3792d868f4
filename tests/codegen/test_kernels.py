"""Generated kernels: structure of the emitted CUDA C, and NVRTC compilation for sm_80/sm_90.

Numerical checks of these kernels against the reference executor need a GPU and live in
test_kernels_gpu.py; the cases are shared from here.
"""
import numpy as np
import pytest

from tftrt_lite.codegen import emit_activation, emit_node
from tftrt_lite.codegen.elementwise import coalesce
from tftrt_lite.codegen.movement import coalesce_transpose, slice_start
from tftrt_lite.codegen.nvrtc import compile_kernel
from tftrt_lite.errors import UnsupportedOpError
from ir_graphs import one_node_graph
from kernel_cases import CASES, graph_for, half_graph_for

F = "float32"

@pytest.mark.parametrize("case_id", sorted(CASES))
def test_emits_and_compiles(case_id):
    g = graph_for(case_id)
    specs = emit_node(g, g.nodes[0])
    assert specs
    for spec in specs:
        assert f'extern "C" __global__ void __launch_bounds__({spec.block[0]}) {spec.name}(' in spec.source
        assert "#include" not in spec.source and "template <" not in spec.source.split("extern")[-1]
        assert len(spec.grid) == 3 and spec.node == "n"
        for frag in CASES[case_id][5]:
            assert frag in spec.source, (frag, spec.source[-1500:])
        buffers = {a.value for a in spec.args if a.kind == "buffer"}
        assert buffers <= set(g.tensors)
        for arch in ("sm_80", "sm_90"):
            k = compile_kernel(spec.source, spec.name, arch)
            assert k.cubin[:4] == b"\x7fELF"


def test_symbolic_dims_become_int64_params_and_grid_expressions():
    g = graph_for("add_bias_nhwc")
    (spec,) = emit_node(g, g.nodes[0])
    assert [a.kind for a in spec.args] == ["buffer", "buffer", "buffer", "expr"]
    assert spec.args[3].value == "3136*N"
    assert spec.grid[0].numerator == "3136*N" and spec.grid[0].divisor == 256 * 4
    g_static = graph_for("clip_no_max")
    (spec,) = emit_node(g_static, g_static.nodes[0])
    assert all(a.kind == "buffer" for a in spec.args) and spec.grid[0].numerator == 100


def test_identical_nodes_share_one_kernel_name():
    a = emit_node(graph_for("add_bias_nhwc"), graph_for("add_bias_nhwc").nodes[0])[0]
    g = graph_for("add_bias_nhwc")
    g.nodes[0].name = "other"
    b = emit_node(g, g.nodes[0])[0]
    assert a.name == b.name and a.source == b.source and b.node == "other"


def test_coalescing():
    # bias over NHWC: [N*H*W, C]; same-shape operands: one flat dim
    dims, flags = coalesce(("N", 7, 7, 64), [[True] * 4, [False, False, False, True]])
    assert dims == ["49*N", 64] and flags == [[True, True], [False, True]]
    dims, _ = coalesce((2, 1, 3), [[True, False, True]])
    assert dims == [6]
    # NCHW→NHWC of a 1x1 map is a copy; a real one keeps two groups
    assert coalesce_transpose(("N", 8, 1, 1), [0, 2, 3, 1]) == (["8*N"], [0])
    assert coalesce_transpose(("N", 8, 5, 6), [0, 2, 3, 1]) == (["N", 8, 30], [0, 2, 1])


def test_slice_start_follows_python_slicing():
    for start, step, dim in [(-2, -2, 10), (0, 1, 7), (100, -1, 5), (-100, 1, 5), (3, 2, 9)]:
        assert slice_start(start, step, dim) == range(dim)[slice(start, None, step)].start
    assert slice_start(-1, 1, "N") == "N-1"
    assert slice_start(2 ** 63 - 1, -1, "N") == "N-1"


def test_inplace_activation_kernel():
    g = graph_for("identity")
    spec = emit_activation(g, g.nodes[0], "y", "gelu_erf", [])
    assert [a.value for a in spec.args if a.kind == "buffer"] == ["y"]
    assert "tl_erf" in spec.source and "const float* __restrict__" not in spec.source.split("extern")[-1]
    compile_kernel(spec.source, spec.name, "sm_90")


def test_errors_name_the_node():
    g = one_node_graph("Einsum", [("x", F, (2, 2))], [("y", F, (2, 2))], {"equation": "ij->ji"})
    with pytest.raises(UnsupportedOpError, match="'Einsum'.*node 'n'"):
        emit_node(g, g.nodes[0])
    g = one_node_graph("ReduceSum", [("x", F, (2, 3, 4)), ("ax", None, None)], [("y", F, (3,))],
                       {"keepdims": 0, "noop_with_empty_axes": 0}, {"ax": np.array([0, 2], np.int64)})
    with pytest.raises(UnsupportedOpError, match="non-adjacent axes"):
        emit_node(g, g.nodes[0])
    g = one_node_graph("MatMul", [("a", F, (2, 3)), ("b", F, (3, 4))], [("y", F, (2, 4))])
    with pytest.raises(ValueError, match="library call"):
        emit_node(g, g.nodes[0])


def test_views_have_no_kernel():
    g = one_node_graph("Reshape", [("x", F, (2, 3)), ("s", None, None)], [("y", F, (6,))],
                       consts={"s": np.array([6], np.int64)})
    assert emit_node(g, g.nodes[0]) == []


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_half_precision_variants_compile(case_id, dtype):
    """Every emitter takes half storage types (loads widen to float, stores round)."""
    g = half_graph_for(case_id, dtype)
    if g is None:
        pytest.skip("no float32 tensor in this case")
    for spec in emit_node(g, g.nodes[0]):
        assert "tl_half" in spec.source or "tl_bf16" in spec.source
        compile_kernel(spec.source, spec.name, "sm_80")
