"""The work of each plan step at one input shape: FLOPs and bytes moved, for roofline reports.

Why from the plan and not the IR: a profile times plan steps (library calls and kernel
launches), so its denominators must be counted per step, at the symbol values the profile
ran with. Library steps count their exact multiply-adds (2 FLOPs each) and the bytes of
their operands read once and the output written once (the minimum traffic any kernel
needs); a generated kernel counts the bytes of every buffer it is given (each read or
written once) and no FLOPs (elementwise, reduction and data-movement kernels are bound by
memory; the attention kernel is the exception and is reported by its bytes only).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from tftrt_lite.engine.plan import NONE_INDEX, ArgKind, ConvStep, GemmStep, LaunchStep, Plan, np_dtype

#: Ceilings for "share of roofline", NVIDIA H200: HBM3e bandwidth and fp16/bf16 dense GEMM
#: as measured on the machine; TF32 dense tensor-core throughput from the datasheet.
H200_CEILINGS = {"hbm_bytes_per_s": 4.3e12, "half_flops_per_s": 790e12, "tf32_flops_per_s": 494e12}


def symbol_values(plan: Plan, input_shapes: Sequence[Sequence[int]]) -> List[int]:
    """The plan's symbol values for engine inputs of ``input_shapes`` (in input order)."""
    return [int(input_shapes[s.input_index][s.axis]) for s in plan.symbols]


def buffer_bytes(plan: Plan, index: int, symbols: Sequence[int]) -> int:
    buf = plan.buffers[index]
    count = 1
    for d in buf.shape:
        count *= d.evaluate(symbols)
    return count * np_dtype(buf.dtype).itemsize


def step_costs(plan: Plan, symbols: Sequence[int]) -> List[Dict[str, int]]:
    """``[{"flops": ..., "bytes": ...}]``, one per plan step."""
    out = []
    for step in plan.steps:
        if isinstance(step, GemmStep):
            m, n, k, batch = (e.evaluate(symbols) for e in (step.m, step.n, step.k, step.batch))
            elem = np_dtype(step.dtype).itemsize
            a_batches = batch if step.stride_a.evaluate(symbols) else 1
            b_batches = batch if step.stride_b.evaluate(symbols) else 1
            moved = a_batches * m * k + b_batches * k * n + batch * m * n * (2 if step.c != NONE_INDEX else 1)
            moved += n if step.bias != NONE_INDEX else 0
            out.append({"flops": 2 * m * n * k * batch, "bytes": moved * elem})
        elif isinstance(step, ConvStep):
            n, c, h, w, k, r, s, oh, ow = (e.evaluate(symbols) for e in (
                step.n, step.c, step.h, step.w_in, step.k, step.r, step.s, step.out_h, step.out_w))
            elem = np_dtype(step.dtype).itemsize
            per_group = c // step.groups
            moved = n * h * w * c + k * r * s * per_group + n * oh * ow * k
            moved += n * oh * ow * k if step.residual != NONE_INDEX else 0
            moved += k if step.bias != NONE_INDEX else 0
            out.append({"flops": 2 * n * oh * ow * k * r * s * per_group, "bytes": moved * elem})
        elif isinstance(step, LaunchStep):
            buffers = {int(a.value) for a in step.args if a.kind == ArgKind.BUFFER}
            out.append({"flops": 0, "bytes": sum(buffer_bytes(plan, b, symbols) for b in buffers)})
        else:
            raise TypeError(f"step {getattr(step, 'name', step)!r}: no cost model for {type(step).__name__}")
    return out


def roofline_share(step, cost: Dict[str, int], seconds: float, ceilings: Dict[str, float] = H200_CEILINGS) -> float:
    """The fraction of the roofline a step reached: its lower-bound time (FLOPs at the
    tensor-core peak of its dtype, or bytes at HBM bandwidth, whichever is longer) over the
    measured time."""
    if seconds <= 0:
        raise ValueError(f"measured time must be positive, got {seconds}")
    half = getattr(step, "dtype", "float32") in ("float16", "bfloat16")
    peak = ceilings["half_flops_per_s" if half else "tf32_flops_per_s"]
    bound = max(cost["flops"] / peak, cost["bytes"] / ceilings["hbm_bytes_per_s"])
    return bound / seconds
