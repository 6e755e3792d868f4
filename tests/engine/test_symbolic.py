import pytest

from tftrt_lite.engine import symbolic as sym
from tftrt_lite.errors import ShapeError


def test_canonical_form_is_stable():
    assert sym.normalize("N*128") == "128*N"
    assert sym.normalize("d0_1*N*4") == "4*N*d0_1"
    assert sym.normalize("S*N + N*S") == "2*N*S"
    assert sym.normalize("(N+1)*(N-1)") == "N*N-1"
    assert sym.normalize("3 + N - N") == 3
    assert sym.normalize(7) == 7
    assert sym.normalize("-N+4") == "-N+4"
    assert sym.equal("N*S*2", "2*S*N")


def test_arithmetic():
    assert sym.mul("N", 128) == "128*N"
    assert sym.add("N", "N") == "2*N"
    assert sym.sub("N*S", "N") == "N*S-N"
    assert sym.product(["N", 16, "S"]) == "16*N*S"
    assert sym.numel(("N", 128, 768)) == "98304*N"
    assert sym.numel(()) == 1
    assert sym.substitute("N*S+1", {"S": "2*N"}) == "2*N*N+1"


def test_exact_division():
    assert sym.divide("128*N*S", "N") == "128*S"
    assert sym.divide("768*N", 3) == "256*N"
    assert sym.divide(12, 4) == 3
    with pytest.raises(ShapeError, match="not exactly divisible"):
        sym.divide("3*N", 2)
    with pytest.raises(ShapeError, match="not exactly divisible"):
        sym.divide("N", "S")


def test_terms_and_symbols():
    assert sym.terms("2*N*N*S+3") == [(2, (("N", 2), ("S", 1))), (3, ())]
    assert sym.terms(0) == []
    assert sym.symbols("N*S+M") == frozenset({"N", "S", "M"})
    assert sym.symbols(5) == frozenset()


def test_evaluate():
    assert sym.evaluate("N*S+1", {"N": 2, "S": 3}) == 7
    with pytest.raises(ShapeError, match="no value for S"):
        sym.evaluate("N*S", {"N": 2})


def test_bind_solves_linear_expressions_and_checks_conflicts():
    env = sym.bind(("128*N", 768), (256, 768), {})
    assert env == {"N": 2}
    assert sym.bind(("N", "N*S"), (2, 10), {}) == {"N": 2, "S": 5}
    with pytest.raises(ShapeError, match=r"feed 'x': axis 1 is 3 .* 'N' = 2"):
        sym.bind(("N", "N"), (2, 3), {}, what="feed 'x'")
    with pytest.raises(ShapeError, match="expected rank 2"):
        sym.bind(("N", 4), (2,), {})
    with pytest.raises(ShapeError, match="axis 1 is 5"):
        sym.bind(("N", 4), (2, 5), {})
    with pytest.raises(ShapeError, match="no value of N"):
        sym.bind(("128*N",), (100,), {})


def test_parse_errors_name_the_expression():
    with pytest.raises(ShapeError, match="invalid dimension expression 'N\\*/2'"):
        sym.normalize("N*/2")
    with pytest.raises(ShapeError, match="missing"):
        sym.normalize("(N+1")
