"""An NVRTC kernel cache private to the test session."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """Compile into a fresh cache so tests exercise NVRTC and never read a stale entry."""
    path = tmp_path_factory.mktemp("kernel_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TFTRT_LITE_CACHE_DIR", str(path))
    yield path
    mp.undo()
