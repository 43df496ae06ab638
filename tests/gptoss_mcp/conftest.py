import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """GPTOSS_CACHE_DIR for server subprocesses (tokenizer/harmony caches), shared by the session."""
    return tmp_path_factory.mktemp("gptoss-cache")
