"""The o200k_harmony tokenizer, from the model directory's `tokenizer.json` (for a GGUF file, whose
vocabulary the loader checked, from the o200k ranks bundled with the engine).

The file's BPE ranks are read and checked to be o200k's (SHA-256); encoding then goes through
openai-harmony's own o200k_harmony encoding (tiktoken's algorithm) built from those ranks, with
special-token parsing switched off, so text is encoded like tiktoken's `encode_ordinary`: a user
typing "<|start|>" gets plain-text tokens, never the control token. (Loading the file into the
Hugging Face `tokenizers` library instead would hold the GIL for over a second: its 446k merges.)
Decoding goes through a byte table built from the same ranks, so every id of the model's vocabulary
decodes (the HF file names only ids below 200 019; the padding ids above are rendered as
`<|reserved_N|>`, as harmony names them), and streamed text never splits a UTF-8 character.
"""

from __future__ import annotations

import codecs
import os
import tempfile
from pathlib import Path

import openai_harmony as oh

from engine import o200k
from engine.cache_dir import cache_dir


# tiktoken's o200k_harmony encode_ordinary of this text: splitting, contractions, digits, specials-as-text.
_PROBE_TEXT = "Hello world, Straße 12345 <|start|>\n\tdon't 数学"
_PROBE_IDS = [13225, 2375, 11, 71184, 220, 7633, 2548, 464, 91, 5236, 91, 523, 5971, 263, 1507, 71324, 8590]


class TokenizerError(ValueError):
    """tokenizer.json (or a GGUF file's vocabulary) is missing, malformed, or not o200k; names the file."""


class Tokenizer:
    def __init__(self, path: str | Path, vocab_size: int):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: tokenizer file not found")
        try:
            ranks = o200k.ranks_from_tokenizer_json(path)
            o200k.check_ranks(ranks)
        except ValueError as e:
            raise TokenizerError(f"{path}: not the o200k_harmony tokenizer: {e}") from None
        self._build(ranks, vocab_size, path)

    @classmethod
    def o200k_harmony(cls, vocab_size: int) -> Tokenizer:
        """From the o200k ranks bundled with the engine (checked by SHA-256), for a checkpoint without a
        tokenizer.json whose vocabulary was checked to be o200k_harmony's (a GGUF file)."""
        tokenizer = cls.__new__(cls)
        tokenizer._build(o200k.load_quicktok_ranks(), vocab_size, "the bundled o200k ranks")
        return tokenizer

    def _build(self, ranks: dict[bytes, int], vocab_size: int, origin: str | Path) -> None:
        self.ranks = ranks
        self.encoding = _harmony_encoding(self.ranks)
        if self.encode(_PROBE_TEXT) != _PROBE_IDS:  # the ranks were checked; this checks the encoding's rules
            raise TokenizerError(f"{origin}: encodes differently from o200k_harmony")
        self.vocab_size = vocab_size
        self._bytes: list[bytes] = [b""] * vocab_size
        for token, rank in self.ranks.items():
            self._bytes[rank] = token
        for i in range(len(self.ranks), vocab_size):
            self._bytes[i] = o200k.SPECIAL_TOKENS.get(i, f"<|reserved_{i}|>").encode()

    def encode(self, text: str) -> list[int]:
        """Ordinary-text token ids; special-token strings are not parsed."""
        return self.encoding.encode(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode_bytes(self, ids: list[int]) -> bytes:
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return b"".join(self._bytes[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def is_special(self, token: int) -> bool:
        return token >= len(self.ranks)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns tokens into text deltas one at a time, holding back incomplete UTF-8 sequences."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


def _harmony_encoding(ranks: dict[bytes, int]) -> oh.HarmonyEncoding:
    # openai-harmony reads o200k_base.tiktoken from TIKTOKEN_ENCODINGS_BASE instead of downloading it;
    # the ranks were checked to be o200k's, so the file written from them is the official one.
    directory = cache_dir() / f"tiktoken-{o200k.O200K_BASE_SHA256[:16]}"
    target = directory / "o200k_base.tiktoken"
    if not target.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(o200k.tiktoken_text(ranks))
        os.replace(tmp, target)
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(directory)
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
