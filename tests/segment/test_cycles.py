"""GraphCycles against brute-force reachability on random DAGs."""
import random

from tftrt_lite.segment.cycles import GraphCycles


def _reachable(out, x, y):
    seen, stack = set(), [x]
    while stack:
        n = stack.pop()
        if n == y:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(out[n])
    return False


def _check_ranks(g, alive):
    for x in alive:
        for y in g.out[x]:
            assert g.rank[x] < g.rank[y]


def test_contractions_match_brute_force_and_keep_a_topological_order():
    rng = random.Random(3)
    for _ in range(20):
        n = 40
        g = GraphCycles(n)
        for _ in range(90):
            x, y = sorted(rng.sample(range(n), 2))
            assert g.insert_edge(x, y)
        alive = set(range(n))
        for _ in range(60):
            x = rng.choice(sorted(alive))
            if not g.out[x]:
                continue
            y = rng.choice(sorted(g.out[x]))
            others = {k: set(v) for k, v in enumerate(g.out)}
            others[x].discard(y)
            expect_ok = not _reachable(others, x, y)
            survivor = g.contract_edge(x, y)
            assert (survivor >= 0) == expect_ok
            if survivor >= 0:
                alive.discard(y if survivor == x else x)
            _check_ranks(g, alive)


def test_insert_edge_refuses_a_cycle_and_reorders_otherwise():
    g = GraphCycles(4)
    assert g.insert_edge(2, 3) and g.insert_edge(3, 1)      # against the initial order: reorders
    assert g.is_reachable(2, 1) and not g.is_reachable(1, 2)
    assert not g.insert_edge(1, 2)                          # would close 2 -> 3 -> 1 -> 2
    assert 2 not in g.out[1]
    _check_ranks(g, range(4))
