import pytest

from pass_graphs import GraphBuilder


@pytest.fixture
def builder():
    """A fresh :class:`GraphBuilder` per test."""
    return GraphBuilder()
