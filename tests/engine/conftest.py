import pytest

from tests.engine.transformers_reference import TransformersReference


@pytest.fixture(scope="session")
def reference() -> TransformersReference:
    return TransformersReference()


@pytest.fixture(scope="session")
def text_engine(tiny_dir, tmp_path_factory):
    """The tiny checkpoint's Engine with its tokenizer and harmony format built once per session
    (the harmony .tiktoken file goes to a private cache dir, not the user's)."""
    from engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CACHE_DIR", str(tmp_path_factory.mktemp("gptoss-cache")))
        mp.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)  # set by harmony loading; restored on exit
        engine = Engine.load(tiny_dir, dtype="float32")
        engine.harmony  # noqa: B018 - builds the tokenizer and the harmony encoding
    return engine
