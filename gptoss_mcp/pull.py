"""`gptoss-mcp pull ORG/NAME`: fetches a gpt-oss model into the local Hugging Face cache.

Only the files the engine loads for the chosen layout are downloaded (a real gpt-oss repository holds
its weights three times: the Hugging Face layout, `original/` and `metal/`). huggingface_hub does the
transfer: its progress bars, its cache (so `--model ORG/NAME` finds the result) and its resumption
(finished files are kept and a cut transfer is retried from where it stopped). The shards are then
checked against their index before the model counts as pulled. Torch-free.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import snapshot_download

from engine.model_source import LAYOUTS, ModelSource, cached_model
from engine.shard_headers import read_shard_headers

logger = logging.getLogger(__name__)


def pull(repo_id: str, revision: str | None = None, layout: str = "hf") -> ModelSource:
    """Downloads `repo_id` at `revision` (None: the default branch) in `layout` ("hf" or "original")
    into the Hugging Face cache, and checks what arrived.

    Returns:
        The cached model, as `--model ORG/NAME[@REVISION]` will find it.

    Raises:
        ValueError: an unknown layout.
        CheckpointError: a file the engine needs is not in the repository, or a shard does not match
            the index (the message names the shard and the tensor).
        huggingface_hub.errors.HFValidationError: `repo_id` is not a valid repository id.
        huggingface_hub.errors.RepositoryNotFoundError, RevisionNotFoundError: no such repository
            (or no access to it) or revision.
        huggingface_hub.errors.HTTPError, LocalEntryNotFoundError, OSError: the transfer failed
            (running the same command again resumes).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    files = LAYOUTS[layout]
    snapshot = snapshot_download(repo_id, revision=revision, allow_patterns=list(files.allow),
                                 ignore_patterns=list(files.ignore) or None)
    logger.info("downloaded %s%s (%s layout) to %s", repo_id, f"@{revision}" if revision else "", layout, snapshot)
    directory = Path(snapshot) / files.subdirectory
    tensors = read_shard_headers(directory)
    logger.info("checked %d tensors in %d shards against %s", len(tensors),
                len({info.file for info in tensors.values()}), directory)
    return cached_model(repo_id, revision, layouts=(layout,))  # also checks config.json and the tokenizer
