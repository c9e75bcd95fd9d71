import pytest


@pytest.fixture(autouse=True, scope="session")
def _prompt_cache_in_a_temporary_directory(tmp_path_factory):
    """Cached prompt embeddings go to a directory of this test session, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFTRACK_CACHE", str(tmp_path_factory.mktemp("difftrack-cache")))
    yield
    mp.undo()
