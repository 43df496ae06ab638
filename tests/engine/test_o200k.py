"""The offline o200k tokenizer must match tiktoken's o200k_harmony exactly."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from tokenizers import Tokenizer

from engine import o200k

# tiktoken's cache key for o200k_base.tiktoken (sha1 of its blob URL); o200k_harmony reuses it.
TIKTOKEN_CACHE_NAME = "fb374d419588a4632f3f557e76b4b70aebbca790"


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return o200k.load_quicktok_ranks()


@pytest.fixture(scope="module")
def enc(ranks, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiktoken")
    (cache / TIKTOKEN_CACHE_NAME).write_bytes(o200k.tiktoken_text(ranks))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        import tiktoken

        return tiktoken.get_encoding("o200k_harmony")


@pytest.fixture(scope="module")
def built(ranks) -> Tokenizer:
    tok = o200k.build_tokenizer(ranks)
    tok.encode_special_tokens = True  # user text: "<|start|>" is plain text
    return tok


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A model dir written by write_tokenizer_files, with a private cache dir."""
    root = tmp_path_factory.mktemp("written")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CACHE_DIR", str(root / "cache"))
        o200k.write_tokenizer_files(root / "model")
    return root


@pytest.fixture(scope="module")
def loaded(written) -> Tokenizer:
    tok = Tokenizer.from_file(str(written / "model" / "tokenizer.json"))
    tok.encode_special_tokens = True
    return tok


def _corpus(seed: int = 20240805) -> list[str]:
    rng = random.Random(seed)
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🧑🏿‍🚀", "🏳️‍🌈", "🇺🇸", "🇯🇵", "1️⃣", "❤️", "🤷‍♀️", "👩🏻‍💻", "🫠", "✨", "🐍"]
    scripts = [
        "東京は日本の首都です。", "我爱编程，也爱喝茶！", "한국어 텍스트입니다", "カタカナとひらがな",
        "مرحبا بالعالم، كيف حالك؟", "नमस्ते दुनिया, आप कैसे हैं?", "Привет, мир! Ёжик", "Καλημέρα κόσμε",
        "สวัสดีชาวโลก", "שלום עולם", "Ça va? Déjà vu, naïve façade, Ærøskøbing, Straße, ĳssel",
        "e\u0301le\u0300ve Cafe\u0301 n\u0303", "Ǆemal ǅemal ǆemal ᾈᾉ", "Zürich İstanbul ıi ŞĞ",
    ]
    code = [
        "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
        "const x = () => { console.log(`hi ${name}`); };", "SELECT * FROM users WHERE id = 42;",
        "if __name__ == '__main__':\r\n    main()\r\n", "#include <stdio.h>\nint main(void){return 0;}",
        "x=[i*i for i in range(10)]  \n\n\n", "<div class=\"a\">&nbsp;</div>", "a_b-c.d/e\\f|g",
    ]
    words = ["hello", "World", "THE", "quick", "brown", "fox's", "it'S", "THEY'LL", "we're", "I'd", "don't",
             "O'Neil", "you’re", "rock'n'roll", "McDonald's", "HTTPServer", "camelCase", "snake_case", "ALLCAPS",
             "IT'Sok", "we'REally", "SHE'Dx", "i'vE", "x'M", "A'LLa", "'s", "'T"]  # case-folded contractions
    specials = ["<|start|>", "<|endoftext|>", "<|end|>", "<|message|>", "<|channel|>", "<|", "|>", "<|return",
                "<|reserved_200013|>", "<|endofprompt|>", "<||>", "<|startoftext|>", "<|call|>"]
    spaces = [" ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "   \n", " \t ", "\u00a0", "\u3000", "\u2003",
              "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2028", "\u2029", "\u200b", "\ufeff", "\u180e", "\u202f"]
    urls = ["https://example.com/a/b?c=1&d=two#frag", "http://xn--80ak6aa92e.com", "ftp://host:21/x.tar.gz",
            "https://github.com/openai/gpt-oss/blob/main/README.md", "mailto:a.b+c@d.org"]
    ranges = [(0x20, 0x7F), (0x80, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700), (0x900, 0x980),
              (0xE00, 0xE80), (0x1100, 0x1200), (0x2000, 0x2070), (0x2190, 0x2500), (0x3000, 0x3100),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE100), (0xFF00, 0xFFF0), (0x1F300, 0x1FAFF),
              (0x10000, 0x10100), (0x20000, 0x20100), (0x0, 0x20), (0xFFF0, 0x10000), (0x10FF00, 0x110000)]

    def number() -> str:
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 30)))
        return rng.choice([digits, "-" + digits, digits + "." + digits[::-1], f"{int(digits):,}", "١٢٣٤٥", "１２３４", "½²³"])

    def soup() -> str:
        out = []
        for _ in range(rng.randint(1, 40)):
            lo, hi = rng.choice(ranges)
            cp = rng.randrange(lo, hi)
            out.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "?")
        return "".join(out)

    def blob() -> str:
        def value(depth: int):
            kind = rng.randrange(6 if depth < 3 else 4)
            if kind == 0:
                return rng.randint(-10**12, 10**12)
            if kind == 1:
                return rng.random() * 10 ** rng.randint(-5, 5)
            if kind == 2:
                return rng.choice(words + scripts + emoji + specials)
            if kind == 3:
                return rng.choice([True, False, None])
            if kind == 4:
                return [value(depth + 1) for _ in range(rng.randint(0, 4))]
            return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 4))}

        return json.dumps(value(0), ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2, "\t"]))

    pieces = [
        lambda: rng.choice(code), lambda: rng.choice(emoji) * rng.randint(1, 3), lambda: rng.choice(scripts),
        lambda: rng.choice(words), number, lambda: rng.choice(spaces) * rng.randint(1, 5), lambda: rng.choice(urls),
        lambda: rng.choice(specials), soup, blob,
    ]
    corpus = ["", " ", "a", "\n", "  trailing  ", "\t\tindent", "a\r\nb\r\n\r\n", "<|start|>user<|message|>hi<|end|>"]
    for make in pieces:  # each kind on its own
        corpus += [make() for _ in range(150)]
    for _ in range(2500):  # and mixed together, with or without separators
        sep = rng.choice(["", " ", "\n", rng.choice(spaces)])
        corpus.append(sep.join(rng.choice(pieces)() for _ in range(rng.randint(2, 12))))
    corpus.append("".join(corpus[:400]))  # one long document
    return list(dict.fromkeys(corpus))


CORPUS = _corpus()


def test_quicktok_ranks_verify(ranks):
    assert len(ranks) == 199_998
    assert sorted(ranks.values()) == list(range(199_998))
    assert hashlib.sha256(o200k.tiktoken_text(ranks)).hexdigest() == o200k.O200K_BASE_SHA256
    o200k.check_ranks(ranks)


def test_corrupted_ranks_fail_check(ranks):
    bad = dict(ranks)
    bad[b"hello"], bad[b"world"] = ranks[b"world"], ranks[b"hello"]
    with pytest.raises(ValueError, match=f"expected SHA-256 {o200k.O200K_BASE_SHA256}, got [0-9a-f]{{64}}"):
        o200k.check_ranks(bad)
    del bad[b"hello"]
    with pytest.raises(ValueError, match="o200k_base"):
        o200k.check_ranks(bad)


def test_corrupted_quicktok_file_is_rejected(tmp_path, monkeypatch):
    import importlib.resources

    data = bytearray(importlib.resources.files("quicktok").joinpath("data", "o200k.vocab").read_bytes())
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(o200k.importlib.resources, "files", lambda package: tmp_path)
    data[-5] ^= 1  # flip a bit in the last token's bytes
    (tmp_path / "data" / "o200k.vocab").write_bytes(data)
    with pytest.raises(ValueError, match=r"o200k\.vocab: expected SHA-256 [0-9a-f]{64}, got [0-9a-f]{64}"):
        o200k.load_quicktok_ranks()
    (tmp_path / "data" / "o200k.vocab").write_bytes(data[:1000])
    with pytest.raises(ValueError, match=r"o200k\.vocab: truncated"):
        o200k.load_quicktok_ranks()


def test_corpus_is_varied():
    assert len(CORPUS) >= 3000  # distinct strings
    text = "".join(CORPUS)
    for needle in ["<|start|>", "\u200d", "\U0001f3fd", "東", "م", "न", "'LL", "\r\n", "\t", "https://", '": ']:
        assert needle in text, needle


def _assert_same(tok: Tokenizer, enc) -> None:
    got = tok.encode_batch(CORPUS, add_special_tokens=False)
    mismatches = []
    for text, encoding in zip(CORPUS, got):
        want = enc.encode(text, disallowed_special=())
        assert want == enc.encode_ordinary(text)
        if encoding.ids != want:
            mismatches.append((text, encoding.ids, want))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[0]!r}"


def test_built_tokenizer_matches_tiktoken(built, enc):
    _assert_same(built, enc)


def test_written_tokenizer_matches_tiktoken(loaded, enc):
    _assert_same(loaded, enc)


def test_decode_round_trip(loaded):
    encodings = loaded.encode_batch(CORPUS, add_special_tokens=False)
    decoded = loaded.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    assert decoded == CORPUS


def test_ranks_from_written_tokenizer_json(written, ranks):
    back = o200k.ranks_from_tokenizer_json(written / "model" / "tokenizer.json")
    assert back == ranks
    o200k.check_ranks(back)


def test_ranks_from_tokenizer_json_rejects_bad_files(tmp_path):
    not_json = tmp_path / "broken.json"
    not_json.write_text("{nope")
    with pytest.raises(ValueError, match="broken.json"):
        o200k.ranks_from_tokenizer_json(not_json)
    wordpiece = tmp_path / "wordpiece.json"
    wordpiece.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
    with pytest.raises(ValueError, match="wordpiece.json.*not BPE"):
        o200k.ranks_from_tokenizer_json(wordpiece)
    not_bytes = tmp_path / "sentencepiece.json"
    not_bytes.write_text(json.dumps({"model": {"type": "BPE", "vocab": {"▁the": 0}, "merges": []}}))
    with pytest.raises(ValueError, match="sentencepiece.json.*byte-level"):
        o200k.ranks_from_tokenizer_json(not_bytes)


def test_special_tokens(loaded, enc):
    assert loaded.get_vocab_size() == 200_019
    assert len(o200k.SPECIAL_TOKENS) == 21
    assert o200k.SPECIAL_TOKENS[199998] == "<|startoftext|>" and o200k.SPECIAL_TOKENS[200018] == "<|endofprompt|>"
    for i, s in o200k.SPECIAL_TOKENS.items():
        assert loaded.token_to_id(s) == i and loaded.id_to_token(i) == s
        assert enc.encode_single_token(s) == i
    added = loaded.get_added_tokens_decoder()
    assert {i: t.content for i, t in added.items()} == o200k.SPECIAL_TOKENS
    assert all(t.special and not t.normalized and not t.lstrip and not t.rstrip for t in added.values())
    # With the flag set, a typed "<|start|>" is several ordinary tokens ...
    assert 200006 not in loaded.encode("<|start|>", add_special_tokens=False).ids
    # ... and without it (the library default) specials parse like tiktoken's allowed_special.
    text = "<|start|>user<|message|>Hi <|endoftext|>!<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>"
    loaded.encode_special_tokens = False
    try:
        assert loaded.encode(text, add_special_tokens=False).ids == enc.encode(text, allowed_special="all")
    finally:
        loaded.encode_special_tokens = True
    assert loaded.decode([200006, 200008], skip_special_tokens=False) == "<|start|><|message|>"


def test_config_files(written):
    model = written / "model"
    config = json.loads((model / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<|startoftext|>" and config["eos_token"] == "<|return|>"
    assert config["pad_token"] == "<|endoftext|>" and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == 1000000000000000019884624838656
    assert config["clean_up_tokenization_spaces"] is False
    assert {int(i): t["content"] for i, t in config["added_tokens_decoder"].items()} == o200k.SPECIAL_TOKENS
    assert all(t["special"] and not t["normalized"] for t in config["added_tokens_decoder"].values())
    special_map = json.loads((model / "special_tokens_map.json").read_text())
    assert special_map == {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}
    spec = json.loads((model / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["ignore_merges"] is True
    assert spec["normalizer"] is None and spec["decoder"]["type"] == "ByteLevel"
    assert [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]] == ["Split", "ByteLevel"]


def test_cache_reused(written, tmp_path, monkeypatch):
    cache = written / "cache"
    assert [p.name for p in cache.iterdir()] == [f"o200k_harmony-tokenizer-v1-{o200k.O200K_BASE_SHA256}.json"]
    monkeypatch.setenv("GPTOSS_CACHE_DIR", str(cache))
    monkeypatch.setattr(o200k, "build_tokenizer", lambda ranks: pytest.fail("rebuilt despite the cache"))
    o200k.write_tokenizer_files(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (written / "model" / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]  # no stray temp files
