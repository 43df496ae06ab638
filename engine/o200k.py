"""The o200k / o200k_harmony tokenizer of gpt-oss, built offline.

The BPE ranks come from the ``quicktok-v1`` wheel (a binary copy of OpenAI's
``o200k_base.tiktoken``) and are checked against the published SHA-256 before
use.  From them we render the ``.tiktoken`` text (read by ``tiktoken`` and
``openai-harmony``) and build a Hugging Face ``tokenizer.json`` shaped like the
one in the gpt-oss repositories, so no model hub access is needed.

Special tokens in user text: ``tokenizers`` splits added tokens out of raw text
by default, so a user typing ``"<|start|>"`` would get id 200006.  Set
``tokenizer.encode_special_tokens = True`` after loading to encode them as plain
text, as tiktoken's ``encode_ordinary`` does.  The flag is runtime-only
(``to_str``/``save`` do not store it), so the written ``tokenizer.json`` keeps
the upstream shape; in ``transformers`` the same switch is
``split_special_tokens=True``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from engine.cache_dir import cache_dir

logger = logging.getLogger(__name__)

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"

SPECIAL_TOKENS: dict[int, str] = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200000: "<|reserved_200000|>",
    200001: "<|reserved_200001|>", 200002: "<|return|>", 200003: "<|constrain|>",
    200004: "<|reserved_200004|>", 200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>",
    200008: "<|message|>", 200009: "<|reserved_200009|>", 200010: "<|reserved_200010|>",
    200011: "<|reserved_200011|>", 200012: "<|call|>", 200013: "<|reserved_200013|>",
    200014: "<|reserved_200014|>", 200015: "<|reserved_200015|>", 200016: "<|reserved_200016|>",
    200017: "<|reserved_200017|>", 200018: "<|endofprompt|>",
}
_FIRST_SPECIAL = min(SPECIAL_TOKENS)

# tiktoken's o200k pre-tokenization regex; the HF Split pre-tokenizer must use the same one.
_CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
PATTERN = "|".join([
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + _CONTRACTIONS,
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + _CONTRACTIONS,
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
])

# Bump when the generated tokenizer.json changes shape, so stale caches are ignored.
_FORMAT_VERSION = 1

# GPT-2's reversible byte -> printable character table that byte-level BPE vocabularies use.
_B2U = {b: chr(b) for b in [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]}
_B2U |= {b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in _B2U)}
_U2B = {c: b for b, c in _B2U.items()}


def _to_unicode(token: bytes) -> str:
    return "".join(_B2U[b] for b in token)


def _sha256_error(ranks: dict[bytes, int]) -> str | None:
    actual = hashlib.sha256(tiktoken_text(ranks)).hexdigest()
    return None if actual == O200K_BASE_SHA256 else f"expected SHA-256 {O200K_BASE_SHA256}, got {actual}"


def tiktoken_text(ranks: dict[bytes, int]) -> bytes:
    """Render ranks as the content of a ``.tiktoken`` file.

    Args:
        ranks: Mergeable token bytes mapped to their BPE rank.

    Returns:
        One ``base64(token) rank`` line per token, in rank order.
    """
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    return b"".join(base64.b64encode(tok) + b" %d\n" % rank for tok, rank in ordered)


def check_ranks(ranks: dict[bytes, int]) -> None:
    """Verify that ranks are exactly OpenAI's ``o200k_base``.

    Args:
        ranks: Mergeable token bytes mapped to their BPE rank.

    Raises:
        ValueError: If the rendered ``.tiktoken`` text has the wrong SHA-256.
    """
    if error := _sha256_error(ranks):
        raise ValueError(f"ranks are not o200k_base.tiktoken: {error}")


# Byte-level characters -> the latin-1 character of the byte they stand for (str.translate is fast).
_BYTE_LEVEL_TO_LATIN1 = str.maketrans({c: chr(b) for c, b in _U2B.items()})


def check_byte_level_vocab(tokens: Iterable[str]) -> None:
    """Verify that byte-level BPE token strings listed in id order (a GGUF's ``tokenizer.ggml.tokens``)
    start with exactly o200k_base's ranks, followed by the harmony special tokens at their ids.

    The ranks are checked by the same SHA-256 as :func:`check_ranks`, computed on the fly, so no
    rank table is built.

    Args:
        tokens: Token strings by id, at least up to the last special token.

    Raises:
        ValueError: Naming the first token that differs, or the hash that does.
    """
    digest, count, last = hashlib.sha256(), 0, max(SPECIAL_TOKENS)
    for i, text in enumerate(tokens):
        if i > last:
            break
        if i >= _FIRST_SPECIAL:
            if text != SPECIAL_TOKENS[i]:
                raise ValueError(f"token {i} is {text!r}, expected {SPECIAL_TOKENS[i]!r}")
        else:
            try:
                token = text.translate(_BYTE_LEVEL_TO_LATIN1).encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"token {i} ({text!r}) is not byte-level encoded") from None
            digest.update(base64.b64encode(token) + b" %d\n" % i)  # a line of tiktoken_text
        count = i + 1
    if count <= last:
        raise ValueError(f"it has {count} tokens, o200k_harmony {last + 1}")
    if digest.hexdigest() != O200K_BASE_SHA256:
        raise ValueError(f"its first {_FIRST_SPECIAL} tokens are not o200k_base's: expected SHA-256 "
                         f"{O200K_BASE_SHA256}, got {digest.hexdigest()}")


def load_quicktok_ranks() -> dict[bytes, int]:
    """Read the o200k ranks shipped in the ``quicktok-v1`` wheel and verify them.

    Returns:
        Mergeable token bytes mapped to their BPE rank (199 998 entries).

    Raises:
        ValueError: If the file is truncated or its ranks fail the SHA-256 check.
    """
    resource = importlib.resources.files("quicktok").joinpath("data", "o200k.vocab")
    data = resource.read_bytes()
    ranks: dict[bytes, int] = {}
    try:
        # Little-endian: u32 count, then per entry u16 length, the raw bytes, u32 rank.
        (count,), pos = struct.unpack_from("<I", data), 4
        for _ in range(count):
            (length,) = struct.unpack_from("<H", data, pos)
            (ranks[data[pos + 2 : pos + 2 + length]],) = struct.unpack_from("<I", data, pos + 2 + length)
            pos += 6 + length
    except struct.error as exc:
        raise ValueError(f"{resource}: truncated o200k vocab ({exc})") from exc
    if error := _sha256_error(ranks):
        raise ValueError(f"{resource}: {error}")
    return ranks


def build_tokenizer(ranks: dict[bytes, int]) -> Tokenizer:
    """Build the gpt-oss Hugging Face tokenizer from o200k ranks.

    Args:
        ranks: Mergeable token bytes mapped to their BPE rank.

    Returns:
        A byte-level BPE ``Tokenizer`` with the 21 harmony special tokens
        (ids 199998..200018); ``encode_special_tokens`` is left at its default.
    """
    # tiktoken repeatedly merges the adjacent pair whose concatenation has the lowest rank.
    # Listing every (left, right) split of every token, ordered by the merged token's rank,
    # makes HF's merge-priority BPE take the same choice at every step.
    merges = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = ranks.get(tok[:i]), ranks.get(tok[i:])
            if left is not None and right is not None:
                merges.append((rank, left, right, tok[:i], tok[i:]))
    merges.sort()
    tok = Tokenizer(models.BPE(
        vocab={_to_unicode(t): rank for t, rank in ranks.items()},
        merges=[(_to_unicode(a), _to_unicode(b)) for *_, a, b in merges],
        ignore_merges=True,  # like tiktoken: a pre-token that is itself in the vocab stays whole
    ))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # Added token ids are assigned in order, right after the base vocab.
    tok.add_special_tokens([
        AddedToken(SPECIAL_TOKENS[i], special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
        for i in sorted(SPECIAL_TOKENS)
    ])
    if any(tok.token_to_id(s) != i for i, s in SPECIAL_TOKENS.items()):
        raise RuntimeError("special tokens did not land on ids 199998..200018")
    return tok


def ranks_from_tokenizer_json(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Recover o200k ranks from a byte-level BPE ``tokenizer.json``.

    Only what the ranks need is parsed (``added_tokens``, ``pre_tokenizer``, the model's ``type`` and
    ``vocab``), member by member, never the merges that make up most of the file: one ``json.loads``
    of the whole file holds the GIL for most of a second, which would stall a server loading it.

    Args:
        path: A ``tokenizer.json``, e.g. from a downloaded gpt-oss model dir.

    Returns:
        Token bytes mapped to their id for the non-added tokens (ids below
        199998).  Run :func:`check_ranks` before trusting them.

    Raises:
        ValueError: If the file is not JSON, not a BPE model, holds tokens outside the byte-level
            alphabet, or splits text with another pre-tokenizer than o200k's.
    """
    try:
        spec = _tokenizer_json_parts(Path(path).read_text(encoding="utf-8"))
        model = spec["model"]
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ValueError("model is not BPE")
        if PATTERN not in _split_patterns(spec.get("pre_tokenizer")):
            raise ValueError("its pre-tokenizer does not split text with o200k's regex")
        added = {t["id"] for t in spec.get("added_tokens") or []}
        ranks: dict[bytes, int] = {}
        for text, rank in model["vocab"].items():
            if not isinstance(rank, int) or rank < 0:
                raise ValueError(f"bad id {rank!r} for {text!r}")
            if rank not in added and rank < _FIRST_SPECIAL:
                if not all(c in _U2B for c in text):
                    raise ValueError(f"token {text!r} is not byte-level encoded")
                ranks[bytes(_U2B[c] for c in text)] = rank
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{path}: not a usable byte-level BPE tokenizer.json ({exc})") from exc
    if len(set(ranks.values())) != len(ranks):
        raise ValueError(f"{path}: duplicate ids in the BPE vocab")
    return ranks


_JSON = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_TOP_MEMBERS = ("added_tokens", "pre_tokenizer", "model")
_MODEL_MEMBERS = ("type", "vocab")


def _tokenizer_json_parts(text: str) -> dict[str, Any]:
    """The members of _TOP_MEMBERS (of "model": _MODEL_MEMBERS) of a tokenizer.json text. Hugging
    Face writes them before the merges; a file in another order is parsed whole."""
    try:
        top, _ = _object_members(text, 0, _TOP_MEMBERS, nested={"model": _MODEL_MEMBERS})
        return top
    except _OutOfOrder:
        spec = json.loads(text)
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
            raise ValueError("no 'model' object") from None
        return spec


class _OutOfOrder(Exception):
    """A nested object stopped early, but members after it were still wanted."""


def _object_members(text: str, pos: int, wanted: tuple[str, ...],
                    nested: dict[str, tuple[str, ...]] | None = None) -> tuple[dict[str, Any], int | None]:
    """The wanted members of the JSON object at text[pos], each parsed by json's own decoder (short
    calls), and the object's end; reading stops as soon as all are found (end None then). Members in
    `nested` are objects read the same way for their own wanted members."""
    nested = nested or {}
    found: dict[str, Any] = {}
    pos = _expect(text, pos, "{")
    if text.startswith("}", pos):
        return found, pos + 1
    while True:
        key, pos = _JSON.raw_decode(text, pos)
        pos = _expect(text, pos, ":")
        if key in nested:
            found[key], end = _object_members(text, pos, nested[key])
            if end is None:
                if set(found) >= set(wanted):
                    return found, None
                raise _OutOfOrder
            pos = end
        else:
            value, pos = _JSON.raw_decode(text, pos)
            if key in wanted:
                found[key] = value
        if set(found) >= set(wanted):
            return found, None
        pos = _SPACE.match(text, pos).end()
        if text.startswith("}", pos):
            return found, pos + 1
        pos = _expect(text, pos, ",")


def _expect(text: str, pos: int, char: str) -> int:
    pos = _SPACE.match(text, pos).end()
    if not text.startswith(char, pos):
        raise ValueError(f"expected {char!r} at character {pos}")
    return _SPACE.match(text, pos + 1).end()


def _split_patterns(pre_tokenizer: Any) -> list[str]:
    """The regexes of the Split steps of a serialized pre-tokenizer (a Sequence or a single step)."""
    if not isinstance(pre_tokenizer, dict):
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [p for step in pre_tokenizer.get("pretokenizers") or [] for p in _split_patterns(step)]
    pattern = pre_tokenizer.get("pattern")
    return [pattern["Regex"]] if pre_tokenizer.get("type") == "Split" and isinstance(pattern, dict) and \
        isinstance(pattern.get("Regex"), str) else []


def _write_atomic(path: Path, data: bytes) -> None:
    # Write a sibling temp file, then rename: readers never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; these are ordinary model files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tokenizer_json_text() -> str:
    cached = cache_dir() / f"o200k_harmony-tokenizer-v{_FORMAT_VERSION}-{O200K_BASE_SHA256}.json"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    logger.info("building o200k_harmony tokenizer.json (cache: %s)", cached)
    text = build_tokenizer(load_quicktok_ranks()).to_str()
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(cached, text.encode("utf-8"))
    except OSError as exc:  # an unwritable cache only costs a rebuild next time
        logger.warning("could not cache tokenizer.json at %s: %s", cached, exc)
    return text


def write_tokenizer_files(out_dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    Args:
        out_dir: Directory to write into; created if missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    special_map = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "added_tokens_decoder": {str(i): {"content": s, **flags} for i, s in sorted(SPECIAL_TOKENS.items())},
        **special_map,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    _write_atomic(out_dir / "tokenizer.json", _tokenizer_json_text().encode("utf-8"))
    for name, obj in [("tokenizer_config.json", config), ("special_tokens_map.json", special_map)]:
        _write_atomic(out_dir / name, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))
