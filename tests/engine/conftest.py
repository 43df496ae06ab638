import pytest

from tests.engine.transformers_reference import TransformersReference


@pytest.fixture(scope="session")
def reference() -> TransformersReference:
    return TransformersReference()
