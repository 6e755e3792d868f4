"""The Pad kernel merges neighbouring unpadded dims (an NHWC channel pad is a 2-D copy with
one div/mod per element). Padding the merged view must be the same as padding the tensor:
checked with NumPy for every mode, negative pads (crops) included; the generated kernel of
the channel-pad case has the 2-D form."""
import itertools

import numpy as np
import pytest

from tftrt_lite.codegen import emit_node
from tftrt_lite.codegen.movement import coalesce_pad
from tftrt_lite.engine.ir import Graph, Node, Tensor


def _np_pad(x, begins, ends, mode):
    pos = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    y = np.pad(x, pos, mode=mode) if mode != "constant" else np.pad(x, pos, constant_values=7)
    return y[tuple(slice(-min(b, 0), y.shape[i] + min(e, 0)) for i, (b, e) in enumerate(zip(begins, ends)))]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_padding_the_merged_view_is_padding_the_tensor(mode):
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    choices = (0, 1, 2) if mode == "reflect" else (0, 1, 2, -1)
    for begins in itertools.product(choices, repeat=4):
        ends = begins[::-1]
        dims, b, e = coalesce_pad(x.shape, list(begins) + list(ends))
        assert len(dims) == len(b) == len(e) <= 4
        want = _np_pad(x, begins, ends, mode)
        got = _np_pad(x.reshape(dims), b, e, mode)
        np.testing.assert_array_equal(got.reshape(want.shape), want, err_msg=f"{begins} {ends}")


def test_nhwc_channel_pad_is_a_two_dim_kernel():
    g = Graph("g", ["x"], ["y"])
    g.tensors["x"] = Tensor("x", "float16", ("N", 7, 7, 3))
    g.tensors["y"] = Tensor("y", "float16", ("N", 7, 7, 8))
    g.add_const("p", np.array([0, 0, 0, 0, 0, 0, 0, 5], np.int64))
    node = Node("Pad", "pad", ["x", "p"], ["y"], {"mode": "constant"})
    g.nodes.append(node)
    (spec,) = emit_node(g, node)
    assert coalesce_pad(("N", 7, 7, 3), [0, 0, 0, 0, 0, 0, 0, 5]) == (["49*N", 3], [0, 0], [0, 5])
    assert "rem_ % 8LL" in spec.source and "rem_ % 7LL" not in spec.source
