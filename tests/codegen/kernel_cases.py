"""One IR node per kernel emitter (and per interesting variant), shared by the NVRTC
compile tests and the GPU numerics tests."""
import numpy as np

from ir_graphs import one_node_graph

F = "float32"

#: id → (op, inputs, outputs, attrs, consts, fragments expected in the kernel source)
CASES = {
    "add_bias_nhwc": ("Add", [("x", F, ("N", 7, 7, 64)), ("b", F, (64,))], [("y", F, ("N", 7, 7, 64))],
                      {}, {}, ["tl_vec<float, 4>", "i64 d0"]),
    "mul_scalar_const": ("Mul", [("x", F, ("N", 5)), ("s", None, None)], [("y", F, ("N", 5))],
                         {}, {"s": np.float32(3.0)}, ["0x1.8000000000000p+1f"]),
    "fused_multi_output": ("tftrt.FusedElementwise", [("a", F, ("N", 3, 4)), ("b", F, (3, 1))],
                           [("y", F, ("N", 3, 4)), ("m", "bool", ("N", 3, 4))],
                           {"program": [{"op": "Mul", "args": ["in0", "in1"], "dtype": F},
                                        {"op": "Tanh", "args": ["v0"], "dtype": F},
                                        {"op": "Const", "args": [], "dtype": F, "value": 0.25},
                                        {"op": "Greater", "args": ["v1", "v2"], "dtype": "bool"}],
                            "outputs": ["v1", "v3"]}, {}, ["tl_tanh", "bool* __restrict__ out1"]),
    "clip_no_max": ("Clip", [("x", F, (2, 50)), ("lo", None, None)], [("y", F, (2, 50))],
                    {}, {"lo": np.float32(-0.5)}, ["tl_inf()"]),
    "cast_to_int": ("Cast", [("x", F, ("N", 6))], [("y", "int32", ("N", 6))], {"to": 6}, {}, ["(int)"]),
    "where": ("Where", [("c", "bool", (4, 1)), ("a", F, (4, 8)), ("b", F, (8,))], [("y", F, (4, 8))],
              {}, {}, ["?"]),
    "reduce_mean_last": ("ReduceMean", [("x", F, ("N", 9, 33)), ("ax", None, None)], [("y", F, ("N", 9, 1))],
                         {"keepdims": 1, "noop_with_empty_axes": 0}, {"ax": np.array([-1], np.int64)},
                         ["__shfl_xor_sync"]),
    "reduce_max_middle": ("ReduceMax", [("x", F, ("N", 4, 5, 16)), ("ax", None, None)], [("y", F, ("N", 16))],
                          {"keepdims": 0, "noop_with_empty_axes": 0}, {"ax": np.array([1, 2], np.int64)},
                          ["tl_max"]),
    "reduce_sum_all": ("ReduceSum", [("x", F, (7, 300))], [("y", F, (1, 1))],
                       {"keepdims": 1, "noop_with_empty_axes": 0}, {}, ["__shfl_xor_sync"]),
    "global_avg_pool": ("GlobalAveragePool", [("x", F, ("N", 8, 5, 5))], [("y", F, ("N", 8, 1, 1))],
                        {}, {}, ["__shfl_xor_sync"]),
    "softmax": ("Softmax", [("x", F, ("N", 3, 70))], [("y", F, ("N", 3, 70))], {"axis": -1}, {},
                ["tl_warp_sum", "tl_exp"]),
    "log_softmax": ("LogSoftmax", [("x", F, (5, 40))], [("y", F, (5, 40))], {"axis": 1}, {}, ["tl_log(sum)"]),
    "tftrt_layernorm": ("tftrt.LayerNorm", [("x", F, ("N", 6, 48)), ("g", F, (48,)), ("bt", F, (48,)),
                                             ("r", F, ("N", 6, 48))],
                        [("y", F, ("N", 6, 48)), ("s", F, ("N", 6, 48))],
                        {"epsilon": 1e-12, "axis": -1, "sum_output": 1}, {}, ["tl_sqrt", "rr[i]"]),
    "layernorm_bert_row": ("tftrt.LayerNorm", [("x", F, ("N", 5, 768)), ("g", F, (768,)), ("bt", F, (768,))],
                           [("y", F, ("N", 5, 768))], {"epsilon": 1e-12, "axis": -1, "sum_output": 0}, {},
                           ["v_[24]"]),
    "layernorm_bert_residual": ("tftrt.LayerNorm", [("x", F, ("N", 4, 768)), ("g", F, (768,)), ("bt", F, (768,)),
                                                     ("r", F, ("N", 4, 768))],
                                [("y", F, ("N", 4, 768)), ("s", F, ("N", 4, 768))],
                                {"epsilon": 1e-12, "axis": -1, "sum_output": 1}, {}, ["tl_vec<float, 4> b"]),
    "layernorm_wide_row": ("tftrt.LayerNorm", [("x", F, (3, 1100)), ("g", F, (1100,))],
                           [("y", F, (3, 1100))], {"epsilon": 1e-5, "axis": -1, "sum_output": 0}, {},
                           ["i += 32"]),
    "onnx_layernorm": ("LayerNormalization", [("x", F, (3, 4, 40)), ("g", F, (40,)), ("bt", F, (40,))],
                       [("y", F, (3, 4, 40))], {"axis": 2, "epsilon": 1e-5, "stash_type": 1}, {}, ["tl_sqrt"]),
    "attention_masked": ("tftrt.Attention", [("q", F, ("N", 2, 37, 16)), ("k", F, ("N", 2, 16, 45)),
                                             ("v", F, ("N", 2, 45, 24)), ("mask", F, ("N", 1, 1, 45))],
                         [("o", F, ("N", 2, 37, 24))], {"scale": 0.25, "k_transposed": 1}, {},
                         ["__shared__ float k_s", "mb[", "__shfl_sync"]),
    "attention_plain": ("tftrt.Attention", [("q", F, (6, 33, 64)), ("k", F, (6, 70, 64)), ("v", F, (6, 70, 64))],
                        [("o", F, (6, 33, 64))], {"scale": 0.125, "k_transposed": 0, "allow_tf32": False}, {}, ["run_max"]),
    "transpose_nchw_nhwc": ("Transpose", [("x", F, ("N", 8, 5, 6))], [("y", F, ("N", 5, 6, 8))],
                            {"perm": [0, 2, 3, 1]}, {}, ["rem_"]),
    "concat": ("Concat", [("a", F, ("N", 3, 4)), ("b", F, ("N", 5, 4))], [("y", F, ("N", 8, 4))],
               {"axis": 1}, {}, ["c1 < 3LL"]),
    "split": ("Split", [("x", F, ("N", 10)), ("sp", None, None)], [("a", F, ("N", 4)), ("b", F, ("N", 6))],
              {"axis": 1}, {"sp": np.array([4, 6], np.int64)}, []),
    "slice_neg": ("Slice", [("x", F, ("N", 10, 8)), ("st", None, None), ("en", None, None), ("ax", None, None),
                            ("sp", None, None)], [("y", F, ("N", 4, 8))], {},
                  {"st": np.array([-2], np.int64), "en": np.array([-10], np.int64),
                   "ax": np.array([1], np.int64), "sp": np.array([-2], np.int64)}, ["-2LL"]),
    "pad_reflect": ("Pad", [("x", F, ("N", 5, 6)), ("p", None, None)], [("y", F, ("N", 7, 9))], {"mode": "reflect"},
                    {"p": np.array([0, 1, 2, 0, 1, 1], np.int64)}, ["2 * ("]),
    "pad_constant": ("Pad", [("x", F, (2, 3)), ("p", None, None), ("cv", None, None)], [("y", F, (4, 5))],
                     {"mode": "constant"}, {"p": np.array([1, 1, 1, 1], np.int64), "cv": np.float32(1.5)}, ["1.8"]),
    "gather": ("Gather", [("x", F, (11, 16)), ("i", "int64", ("N", 7))], [("y", F, ("N", 7, 16))],
               {"axis": 0}, {}, ["k += "]),
    "maxpool_nhwc": ("tftrt.Pool", [("x", F, ("N", 9, 9, 8))], [("y", F, ("N", 5, 5, 8))],
                     {"mode": "max", "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                      "dilations": [1, 1], "ceil_mode": 0, "count_include_pad": 0}, {}, ["tl_max"]),
    "avgpool_nhwc": ("tftrt.Pool", [("x", F, ("N", 8, 7, 16))], [("y", F, ("N", 4, 4, 16))],
                     {"mode": "avg", "kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 1, 0, 0],
                      "dilations": [1, 1], "ceil_mode": 0, "count_include_pad": 0}, {}, ["tl_vec<float, 4>"]),
    "maxpool_nhwc_c6": ("tftrt.Pool", [("x", F, ("N", 6, 6, 6))], [("y", F, ("N", 3, 3, 6))],
                        {"mode": "max", "kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0],
                         "dilations": [1, 1], "ceil_mode": 0, "count_include_pad": 0}, {}, ["acc[0]"]),
    "space_to_depth_stem": ("tftrt.SpaceToDepth", [("x", F, ("N", 9, 10, 3))], [("y", F, ("N", 6, 6, 16))],
                            {"block": 2, "pads": [3, 3, 0, -1], "channels": 16, "dtype": F}, {},
                            ["tl_vec<float, 4>", "inside ?"]),
    "space_to_depth_to_half": ("tftrt.SpaceToDepth", [("x", F, ("N", 7, 7, 1))], [("y", "float16", ("N", 3, 3, 16))],
                               {"block": 3, "pads": [1, 1, 1, 1], "channels": 16, "dtype": "float16"}, {},
                               ["tl_vec<tl_half, 8>"]),
    "avgpool_nchw": ("AveragePool", [("x", F, ("N", 3, 8, 8))], [("y", F, ("N", 3, 4, 4))],
                     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 0, 0], "auto_pad": "NOTSET",
                      "ceil_mode": 0, "count_include_pad": 1}, {}, ["count"]),
    "shape": ("Shape", [("x", F, ("N", 3, 4))], [("y", "int64", (3,))], {"start": 0, "end": 3}, {},
              ["out0[0] = d0"]),
    "tile": ("Tile", [("x", F, (2, 3)), ("r", None, None)], [("y", F, (4, 9))], {},
             {"r": np.array([2, 3], np.int64)}, ["%"]),
    "identity": ("Identity", [("x", F, ("N", 3))], [("y", F, ("N", 3))], {}, {}, ["out0[e] = in0[e]"]),
}


def graph_for(case_id):
    op, inputs, outputs, attrs, consts, _ = CASES[case_id]
    return one_node_graph(op, inputs, outputs, attrs, consts)


HALF_DTYPES = ("float16", "bfloat16")


def half_graph_for(case_id, dtype):
    """The case with every float32 tensor, constant and instruction in ``dtype`` instead,
    or None when the case has no float32 tensor (nothing to retype)."""
    from tftrt_lite.engine.ir import saturate_cast

    op, inputs, outputs, attrs, consts, _ = CASES[case_id]
    swap = lambda specs: [(t, dtype if dt == F else dt, shape) for t, dt, shape in specs]  # noqa: E731
    new_consts = {k: saturate_cast(v, dtype) if np.asarray(v).dtype == np.float32 else v for k, v in consts.items()}
    new_attrs = dict(attrs)
    if "program" in attrs:
        new_attrs["program"] = [{**ins, "dtype": dtype if ins["dtype"] == F else ins["dtype"]}
                                for ins in attrs["program"]]
    if attrs.get("dtype") == F:
        new_attrs["dtype"] = dtype
    if (swap(inputs), swap(outputs), new_consts) == (inputs, outputs, consts):
        return None
    return one_node_graph(op, swap(inputs), swap(outputs), new_attrs, new_consts)
