import numpy as np

from tftrt_lite.engine import symbolic
from tftrt_lite.engine.passes.memory_plan import ALIGNMENT, plan_memory


def _overlap(a, b):
    return a.first <= b.last and b.first <= a.last


def _check_no_live_overlap(plan, env):
    """Tensors alive at the same time never share bytes, at a concrete binding."""
    spans = {t: (symbolic.evaluate(plan.offset(t), env), symbolic.evaluate(plan.size(t), env))
             for t in plan.placements}
    names = list(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = plan.placements[a], plan.placements[b]
            if _overlap(pa, pb):
                (oa, sa), (ob, sb) = spans[a], spans[b]
                assert oa + sa <= ob or ob + sb <= oa, (a, b)
            assert spans[a][0] % ALIGNMENT == 0


def test_chain_reuses_memory_and_views_alias(builder):
    b = builder
    x = b.input("x", ("N", 64))
    t = x
    for _ in range(6):
        t = b.op("Relu", [t], ("N", 64))
    v = b.op("Reshape", [t, b.const(np.array([-1, 8, 8]))], ("N", 8, 8))
    y = b.op("Exp", [v], ("N", 8, 8))
    g = b.output(y)
    plan = plan_memory(g)
    assert set(plan.aliases) == {v}
    assert x not in plan.placements and y not in plan.placements
    assert len(plan.placements) == 6
    # a chain needs two live buffers at a time; the view keeps the last Relu alive into Exp
    assert plan.arena_bytes() == "512*N"
    assert plan.naive_bytes({"N": 1}) == 6 * 256
    _check_no_live_overlap(plan, {"N": 3})


def test_groups_by_monomial_and_evaluates_at_bindings(builder):
    b = builder
    x = b.input("x", ("N", 16, 16, 8))
    a = b.op("Relu", [x], ("N", 16, 16, 8))           # 8192*N bytes
    s = b.op("ReduceMean", [a, b.const(np.array([1, 2]))], ("N", 1, 1, 8), keepdims=1)  # 32*N
    c = b.op("Shape", [a], (4,), dtype="int64", start=0, end=4)  # static: 32 bytes
    y = b.op("Mul", [a, s], ("N", 16, 16, 8))
    g = b.output(y, c)
    plan = plan_memory(g)
    monomials = sorted(str(gr.monomial) for gr in plan.groups)
    assert monomials == ["N"]  # c is a graph output, so not in the arena
    assert plan.peak_bytes({"N": 1}) == 8192 + 256
    assert plan.peak_bytes({"N": 128}) == 128 * (8192 + 256)
    _check_no_live_overlap(plan, {"N": 2})


def test_best_fit_packs_a_diamond(builder):
    b = builder
    x = b.input("x", ("N", 256))
    big = b.op("Exp", [x], ("N", 256))                  # 1024*N bytes
    small = b.op("ReduceMax", [big, b.const(np.array([1]))], ("N", 1), keepdims=1)  # 4*N
    big2 = b.op("Neg", [big], ("N", 256))
    z = b.op("Mul", [small, big2], ("N", 256))
    w = b.op("Sigmoid", [z], ("N", 256))
    g = b.output(w)
    plan = plan_memory(g)
    _check_no_live_overlap(plan, {"N": 5})
    assert plan.peak_bytes({"N": 1}) < plan.naive_bytes({"N": 1})
