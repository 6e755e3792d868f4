"""The plan format: round trips, validation errors, and Python ⇄ C++ (plan_format.h) agreement."""
import json
import os
import shutil
import struct
import subprocess

import numpy as np
import pytest

from tftrt_lite.engine import ir
from tftrt_lite.engine.plan import (
    DTYPE_CODES, FORMAT_VERSION, MAGIC, NONE_INDEX, WEIGHT_ALIGNMENT, Activation, ArgKind, BufferDesc, ConvStep,
    FilterLayout, GemmStep, KernelArg, KernelEntry, KernelImage, LaunchStep, LaunchVariant, Layout, Plan, PlanExpr,
    PlanFormatError, Section, Storage, SymbolBinding, WeightPacker, deserialize_plan, graph_from_json,
    graph_to_json, read_sections, serialize_plan)
from tftrt_lite.errors import TftrtLiteError

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "tftrt_lite", "runtime", "cc", "plan_format.h")

N = PlanExpr(((1, (0,)),))            # N
NS = PlanExpr(((2, (0, 1)), (3, ())))  # 2*N*S + 3


def _graph(rng):
    g = ir.Graph("tiny", ["x"], ["y"])
    g.tensors["x"] = ir.Tensor("x", "float32", ("N", 4))
    g.add_const("w", rng.standard_normal((4, 3)).astype(np.float32))
    g.add_const("idx", np.array([2, 0, 1], dtype=np.int64))
    g.add_const("half", np.float16(0.5))
    g.tensors["t"] = ir.Tensor("t", "float32", ("N", 3))
    g.tensors["y"] = ir.Tensor("y", "float32", ("N", 3))
    g.nodes.append(ir.Node("MatMul", "mm", ["x", "w"], ["t"], {}))
    g.nodes.append(ir.Node("tftrt.FusedElementwise", "ew", ["t"], ["y"], {
        "program": [{"op": "Const", "args": [], "dtype": "float32", "value": float("inf")},
                    {"op": "Min", "args": ["in0", "v0"], "dtype": "float32"}],
        "outputs": ["v0"], "perm": (1, 0), "blob": b"\x00\xff", "table": np.arange(5, dtype=np.int32),
        "scalar": np.float32(1.25), "nested": {"k": [1, 2.5, None, "s"]}}))
    return g


def _plan(rng):
    g = _graph(rng)
    packer = WeightPacker()
    text, offsets = graph_to_json(g, packer)
    w_off, w_size = offsets["w"]
    buffers = [
        BufferDesc("x", "float32", (N, PlanExpr.const(4)), Storage.INPUT, 0),
        BufferDesc("y", "float32", (N, PlanExpr.const(3)), Storage.OUTPUT, 0),
        BufferDesc("w", "float32", (PlanExpr.const(4), PlanExpr.const(3)), Storage.WEIGHT, w_off, w_size),
        BufferDesc("t", "float32", (N, PlanExpr.const(3)), Storage.ARENA, PlanExpr(((256, (0,)),))),
        BufferDesc("t_view", "float32", (PlanExpr(((3, (0,)),)),), Storage.ALIAS, 3),
    ]
    kernels = [KernelEntry("tl_k", 'extern "C" __global__ void tl_k() {}', "sm_80", "// ptx\n",
                           [KernelImage("sm_80", b"\x7fELF-80"), KernelImage("sm_90", b"\x7fELF-90\x00")])]
    steps = [
        GemmStep("mm", 0, 2, 3, N, PlanExpr.const(3), PlanExpr.const(4), PlanExpr.const(4), PlanExpr.const(3),
                 PlanExpr.const(3), PlanExpr.const(1), PlanExpr.const(0), PlanExpr.const(0), PlanExpr(((3, (0,)),)),
                 bias=NONE_INDEX, activation=Activation.RELU, alpha=0.5),
        LaunchStep("ew", 0, (PlanExpr(((3, (0,)),), 256, True), PlanExpr.const(1), PlanExpr.const(1)),
                   (256, 1, 1), 0, [KernelArg(ArgKind.BUFFER, 3), KernelArg(ArgKind.BUFFER, 1),
                                    KernelArg(ArgKind.EXPR, NS), KernelArg(ArgKind.I64, -7),
                                    KernelArg(ArgKind.F32, 1.5)],
                   [LaunchVariant(0, (PlanExpr(((3, (0,)),), 128, True), PlanExpr.const(2), PlanExpr.const(1)),
                                  (128, 1, 1), 64)]),
        ConvStep("conv", Layout.NHWC, FilterLayout.KRSC, 0, 2, 1, N, *(PlanExpr.const(v) for v in (3, 8, 8, 16, 3, 3, 8, 8)),
                 pads=(1, 1, 1, 1), strides=(1, 1), dilations=(1, 1), groups=1, bias=2, residual=3,
                 activation=Activation.CLIP, act_p0=0.0, act_p1=6.0),
    ]
    meta = {"name": "tiny", "precision": "FP32", "target_archs": ["sm_80", "sm_90"], "stats": {"kernel_count": 1}}
    plan = Plan([SymbolBinding("N", 0, 0), SymbolBinding("S", 0, 1)], buffers, PlanExpr(((768, (0,)),)),
                kernels, steps, packer.getvalue(), text, meta)
    return g, plan


def test_round_trip_is_exact():
    rng = np.random.default_rng(0)
    g, plan = _plan(rng)
    data = serialize_plan(plan)
    assert data[:8] == MAGIC and struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION
    back = deserialize_plan(data)
    assert back.symbols == plan.symbols and back.buffers == plan.buffers and back.steps == plan.steps
    assert back.kernels == plan.kernels and back.arena_size == plan.arena_size and back.meta == plan.meta
    assert serialize_plan(back) == data
    g2 = graph_from_json(back.graph_json, back.weights)
    assert g2.inputs == g.inputs and g2.outputs == g.outputs and list(g2.tensors) == list(g.tensors)
    for name, t in g.tensors.items():
        t2 = g2.tensors[name]
        assert (t2.dtype, t2.shape) == (t.dtype, t.shape)
        if t.value is not None:
            assert t2.value.dtype == t.value.dtype and t2.value.tobytes() == t.value.tobytes()
    a, b = g.nodes[1].attrs, g2.nodes[1].attrs
    assert b["perm"] == (1, 0) and b["blob"] == b"\x00\xff" and b["nested"] == a["nested"]
    assert b["table"].dtype == np.int32 and np.array_equal(b["table"], a["table"])
    assert isinstance(b["scalar"], np.float32) and b["scalar"] == a["scalar"]
    assert b["program"] == a["program"]


def test_weights_are_256_byte_aligned():
    _, plan = _plan(np.random.default_rng(1))
    data = serialize_plan(plan)
    count = struct.unpack_from("<I", data, 12)[0]
    entries = [struct.unpack_from("<IQQ", data, 24 + 20 * i) for i in range(count)]
    (offset,) = [off for kind, off, _ in entries if kind == Section.WEIGHTS]
    assert offset % WEIGHT_ALIGNMENT == 0
    assert all(b.a % WEIGHT_ALIGNMENT == 0 for b in plan.buffers if b.storage == Storage.WEIGHT)
    assert len(read_sections(data)) == 8


def test_expression_evaluation_rounds():
    e = PlanExpr(((2, (0, 0)), (-3, (1,)), (5, ())), divisor=4, ceil=True)  # ceil((2N^2 - 3S + 5) / 4)
    assert e.evaluate([3, 2]) == -(-(18 - 6 + 5) // 4)
    assert PlanExpr(((-7, ()),), divisor=2).evaluate([]) == -4
    assert PlanExpr(((-7, ()),), divisor=2, ceil=True).evaluate([]) == -3
    assert PlanExpr.const(0).evaluate([]) == 0 and PlanExpr.const(12).constant == 12 and N.constant is None


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"XXXXXXX\0" + d[8:], "not a tftrt_lite plan"),
    (lambda d: d[:8] + struct.pack("<I", FORMAT_VERSION + 1) + d[12:], f"format version {FORMAT_VERSION + 1} is not supported"),
    (lambda d: d[:-1], "header says"),
    (lambda d: d[:16] + struct.pack("<Q", len(d) + 100) + d[24:] + b"\0" * 100, "lies outside"),
])
def test_bad_plans_are_rejected_with_clear_errors(mutate, message):
    _, plan = _plan(np.random.default_rng(2))
    data = serialize_plan(plan)
    bad = mutate(data)
    if message == "lies outside":  # grow the file and point a section past its end
        bad = bytearray(bad)
        struct.pack_into("<Q", bad, 24 + 4, len(bad) + 8)
        bad = bytes(bad)
    with pytest.raises(PlanFormatError, match=message) as raised:
        deserialize_plan(bad)
    assert isinstance(raised.value, TftrtLiteError)   # callers catch the project's errors in one place


# --------------------------------------------------------------------------- C++ agreement
_PROGRAM = r"""
#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>
#include "plan_format.h"
using namespace tftrt_lite::plan;
int main(int argc, char** argv) {
  std::ifstream f(argv[1], std::ios::binary);
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Plan plan;
  std::string error;
  if (!ParsePlan(data.data(), data.size(), &plan, &error)) { std::printf("ERROR %s\n", error.c_str()); return 2; }
  std::vector<int64_t> sym;
  for (int i = 2; i < argc; ++i) sym.push_back(std::atoll(argv[i]));
  std::printf("version %u\n", plan.format_version);
  for (auto& s : plan.symbols) std::printf("symbol %s %u %u\n", s.name.c_str(), s.input_index, s.axis);
  std::printf("arena %lld\n", (long long)plan.exprs[plan.arena_size_expr].Evaluate(sym));
  for (auto& b : plan.buffers) {
    std::printf("buffer %s %u %u", b.name.c_str(), b.dtype, b.storage);
    for (uint32_t e : b.shape) std::printf(" %lld", (long long)plan.exprs[e].Evaluate(sym));
    std::printf("\n");
  }
  for (auto& k : plan.kernels) {
    std::printf("kernel %s %s %zu", k.name.c_str(), k.ptx_arch.c_str(), k.ptx.size());
    for (auto& im : k.images) std::printf(" %s:%llu", im.arch.c_str(), (unsigned long long)im.cubin_size);
    std::printf("\n");
  }
  std::printf("steps %zu\n", plan.steps.size());
  for (auto& s : plan.steps) {
    std::printf("step %u %s", s.kind, s.name.c_str());
    if (s.kind == kLaunch) {
      for (auto& k : s.launch.configs)
        std::printf(" kernel %u grid %lld,%lld block %u smem %u", k.kernel,
                    (long long)plan.exprs[k.grid[0]].Evaluate(sym), (long long)plan.exprs[k.grid[1]].Evaluate(sym),
                    k.block[0], k.shared_mem);
      std::printf(" args");
      for (auto& a : s.launch.args)
        std::printf(" %u:%lld", a.kind, a.kind == kArgExpr ? (long long)plan.exprs[a.value].Evaluate(sym) : (long long)a.value);
    } else if (s.kind == kGemm) {
      std::printf(" m %lld act %u alpha %g", (long long)plan.exprs[s.gemm.m].Evaluate(sym), s.gemm.epilogue.activation, s.gemm.epilogue.alpha);
    } else if (s.kind == kConv) {
      std::printf(" n %lld k %lld groups %u act %u", (long long)plan.exprs[s.conv.n].Evaluate(sym),
                  (long long)plan.exprs[s.conv.k].Evaluate(sym), s.conv.groups, s.conv.epilogue.activation);
    }
    std::printf("\n");
  }
  std::printf("weights %llu graph %zu meta %zu\n", (unsigned long long)plan.weights_size, plan.graph_json.size(), plan.meta_json.size());
  return 0;
}
"""


def _arg_value(arg: KernelArg, sym):
    if arg.kind == ArgKind.EXPR:
        return arg.value.evaluate(sym)
    if arg.kind == ArgKind.F32:
        return struct.unpack("<I", struct.pack("<f", arg.value))[0]
    return arg.value


def _python_view(plan: Plan, sym):
    lines = [f"version {FORMAT_VERSION}"]
    lines += [f"symbol {s.name} {s.input_index} {s.axis}" for s in plan.symbols]
    lines.append(f"arena {plan.arena_size.evaluate(sym)}")
    for b in plan.buffers:
        lines.append(" ".join([f"buffer {b.name} {DTYPE_CODES[b.dtype]} {b.storage}"]
                              + [str(d.evaluate(sym)) for d in b.shape]))
    for k in plan.kernels:
        lines.append(" ".join([f"kernel {k.name} {k.ptx_arch} {len(k.ptx.encode())}"]
                              + [f"{im.arch}:{len(im.cubin)}" for im in k.images]))
    lines.append(f"steps {len(plan.steps)}")
    for s in plan.steps:
        if isinstance(s, LaunchStep):
            configs = "".join(f" kernel {k.kernel} grid {k.grid[0].evaluate(sym)},{k.grid[1].evaluate(sym)} "
                              f"block {k.block[0]} smem {k.shared_mem}" for k in [s, *s.variants])
            args = " ".join(f"{a.kind}:{_arg_value(a, sym)}" for a in s.args)
            lines.append(f"step 1 {s.name}{configs} args {args}")
        elif isinstance(s, GemmStep):
            lines.append(f"step 2 {s.name} m {s.m.evaluate(sym)} act {s.activation} alpha {s.alpha:g}")
        else:
            lines.append(f"step 3 {s.name} n {s.n.evaluate(sym)} k {s.k.evaluate(sym)} groups {s.groups} act {s.activation}")
    lines.append(f"weights {len(plan.weights)} graph {len(plan.graph_json.encode())} "
                 f"meta {len(json.dumps(plan.meta, sort_keys=True).encode())}")
    return lines


@pytest.fixture(scope="module")
def reader(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    d = tmp_path_factory.mktemp("plan_reader")
    src = d / "reader.cc"
    src.write_text(_PROGRAM)
    exe = d / "reader"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.dirname(HEADER),
                    str(src), "-o", str(exe)], check=True, capture_output=True, text=True)
    return exe


def test_cpp_reader_agrees_with_python(reader, tmp_path):
    _, plan = _plan(np.random.default_rng(3))
    path = tmp_path / "tiny.plan"
    path.write_bytes(serialize_plan(plan))
    for sym in ([1, 1], [64, 5]):
        out = subprocess.run([str(reader), str(path)] + [str(s) for s in sym], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines() == _python_view(plan, sym)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:8] + struct.pack("<I", FORMAT_VERSION + 1) + d[12:], f"format version {FORMAT_VERSION + 1} is not supported"),
    (lambda d: b"NOTAPLAN" + d[8:], "bad magic"),
    (lambda d: d[:-3], "header says"),
])
def test_cpp_reader_rejects_bad_plans(reader, tmp_path, mutate, message):
    _, plan = _plan(np.random.default_rng(4))
    path = tmp_path / "bad.plan"
    path.write_bytes(mutate(serialize_plan(plan)))
    out = subprocess.run([str(reader), str(path), "1", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stdout
