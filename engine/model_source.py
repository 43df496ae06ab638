"""Where the files of a `--model` argument are: a local directory, a GGUF file (llama.cpp's format, one
file or `NAME-00001-of-0000N.gguf` splits), or a Hugging Face id `ORG/NAME[@REVISION]` found in the
local Hugging Face cache.

A Hugging Face id is looked up with huggingface_hub's own cache logic (HF_HOME, HF_HUB_CACHE, refs,
snapshots) and never over the network: a model that is not in the cache is an error naming the
`gptoss-mcp pull` command that fetches it. "demo" is the server's business and not handled here.
Torch-free, so that `pull` and the server resolve a model without importing torch.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.shard_headers import INDEX_NAME, CheckpointError, shard_files

logger = logging.getLogger(__name__)

# ORG/NAME as the Hub spells repository ids, optionally @ a branch, tag or commit ("refs/pr/1" too).
_HF_ID = re.compile(r"(?P<repo_id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^@\s]+))?")
# llama.cpp's split files (llama_split_path): PREFIX-00001-of-00003.gguf, numbered from 1.
_GGUF_SPLIT = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf", re.IGNORECASE)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class Layout:
    """The repository files the engine loads in one checkpoint layout, as huggingface_hub patterns."""

    subdirectory: str             # where config.json and the shards are, relative to the repository root
    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()


LAYOUTS = {
    # Top level only: the real repositories also hold the weights again under original/ and metal/.
    "hf": Layout("", ("config.json", "generation_config.json", INDEX_NAME, "*.safetensors", *TOKENIZER_FILES),
                 ignore=("*/*",)),
    # The engine reads an original/ directory's tokenizer from beside it.
    "original": Layout("original", ("original/*", *TOKENIZER_FILES)),
}


@dataclass(frozen=True)
class ModelSource:
    """What a `--model` argument named and the files the engine loads for it (reported by the server)."""

    kind: Literal["path", "hf", "gguf"]
    id: str                   # the directory or GGUF file as given, or the Hugging Face ORG/NAME
    revision: str | None      # hf: the revision asked for (None: the default branch)
    path: Path                # what Engine.load reads: the given directory, a snapshot, its original/, or
                              # the (first) GGUF file
    files: list[str]          # what the engine reads, relative to the given directory, the snapshot or
                              # the GGUF file's directory
    commit: str | None = None  # hf: the commit of the snapshot
    tensor_types: dict[str, int] | None = None  # gguf, once loaded: tensors per ggml type ("MXFP4": 72, ...)


def resolve_model(spec: str | Path, *, cache_dir: str | Path | None = None) -> ModelSource:
    """Resolves a model directory, a `.gguf` file or a Hugging Face id `ORG/NAME[@REVISION]` to the
    files to load.

    An existing directory wins over a Hugging Face id of the same spelling (with a warning). A
    directory's or GGUF file's contents are left for Engine.load to check, which names the file at
    fault; a cached snapshot must hold a loadable layout (the Hugging Face one, else `original/`).

    Args:
        spec: a directory, a `.gguf` file (any one of a set of split files), or `ORG/NAME[@REVISION]`
            (a branch, tag or commit hash).
        cache_dir: the Hugging Face hub cache; None for huggingface_hub's own (HF_HUB_CACHE, HF_HOME).

    Raises:
        CheckpointError: no such directory or GGUF file (or a split file missing), and not a Hugging
            Face id in the cache (the message names the `gptoss-mcp pull` command), or a cached
            snapshot that misses files.
    """
    path = Path(spec).expanduser()
    hf_id = _HF_ID.fullmatch(str(spec))
    if path.is_dir():
        if hf_id:
            logger.warning("%s is both a local directory (%s) and a Hugging Face id: loading the directory",
                           spec, path.resolve())
        return directory_source(path)
    if path.suffix.lower() == ".gguf":
        return gguf_source(path)
    if hf_id is None:
        raise CheckpointError(f"{path}: model directory not found")
    return cached_model(hf_id["repo_id"], hf_id["revision"], cache_dir=cache_dir)


def directory_source(path: Path) -> ModelSource:
    """A local model directory as a source: the files the engine would read there, as far as they exist."""
    present, _ = _inventory(path)
    return ModelSource("path", str(path), None, path, [os.path.relpath(f, path) for f in present])


def gguf_source(path: Path) -> ModelSource:
    """A GGUF file as a source: the file, or all of the split files it is one of.

    Raises:
        CheckpointError: the file, or one of its split files, does not exist.
    """
    split = _GGUF_SPLIT.fullmatch(path.name)
    files = [path]
    if split:
        count, index = int(split["count"]), int(split["index"])
        if not 1 <= index <= count:
            raise CheckpointError(f"{path}: a split GGUF file is numbered 1 to its count, not {index} of {count}")
        files = [path.with_name(f"{split['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        where = f" (split files of {path.name} in {path.parent})" if split else ""
        raise CheckpointError(f"{path}: GGUF file(s) not found: {', '.join(missing)}{where}")
    logger.info("%s: GGUF, %d file(s): %s", path, len(files), ", ".join(f.name for f in files))
    return ModelSource("gguf", str(path), None, files[0], [f.name for f in files])


def cached_model(repo_id: str, revision: str | None = None, layouts: tuple[str, ...] = ("hf", "original"), *,
                 cache_dir: str | Path | None = None) -> ModelSource:
    """The snapshot of a Hugging Face model in the local cache, in the first of `layouts` it holds
    completely; no network access.

    Raises:
        CheckpointError: the model (at that revision) is not in the cache, or not in any of the layouts;
            the message names the `gptoss-mcp pull` command that fetches it.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    name = repo_id if revision is None else f"{repo_id}@{revision}"
    pull = f"gptoss-mcp pull {repo_id}" + (f" --revision {revision}" if revision else "")
    incomplete: list[str] = []
    for layout in layouts:
        files = LAYOUTS[layout]
        try:
            # Complete as far as huggingface_hub knows (it checks the tree listing a download left).
            snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                              allow_patterns=list(files.allow),
                                              ignore_patterns=list(files.ignore) or None))
        except HFValidationError as e:
            raise CheckpointError(f"{name}: no such model directory, and not a valid Hugging Face id ({e})") from None
        except LocalEntryNotFoundError:
            continue  # not cached at this revision, or this layout's files only in part
        directory = snapshot / files.subdirectory
        if not directory.is_dir():
            continue  # e.g. no original/ in this snapshot
        present, problems = _inventory(directory)
        if not problems:
            source = ModelSource("hf", repo_id, revision, directory,
                                 sorted(os.path.relpath(f, snapshot) for f in present), commit=snapshot.name)
            logger.info("%s: Hugging Face snapshot %s (%d files)", name, directory, len(source.files))
            return source
        incomplete.append(f"{directory}: {', '.join(problems)}")
    if incomplete:
        raise CheckpointError(f"{name}: the cached snapshot lacks files the engine loads ({'; '.join(incomplete)}): "
                              f"fetch them with `{pull}`")
    raise CheckpointError(f"{name}: no such model directory, and the Hugging Face model is not in the local cache "
                          f"{cache_dir or constants.HF_HUB_CACHE} (or only in part): fetch it with `{pull}`")


def _inventory(directory: Path) -> tuple[list[Path], list[str]]:
    """The files Engine.load reads from `directory` that exist, and what it needs but does not find."""
    present, problems = [], []
    for name in ("config.json", INDEX_NAME):
        if (directory / name).is_file():
            present.append(directory / name)
    if directory / "config.json" not in present:
        problems.append("no config.json")
    try:
        shards = shard_files(directory)
    except CheckpointError as e:  # no shards at all, or an unreadable index
        problems.append(str(e))
    else:
        present += [directory / f for f in shards if (directory / f).is_file()]
        problems += [f"no {f}" for f in shards if not (directory / f).is_file()]
    # As Engine.tokenizer looks for it: beside the weights, else beside an original/ directory.
    tokenizer = next((p for p in (directory / "tokenizer.json", directory.parent / "tokenizer.json") if p.is_file()),
                     None)
    if tokenizer is None:
        problems.append("no tokenizer.json")
    else:
        present.append(tokenizer)
    return present, problems
