"""engine.tokenizer.Tokenizer (as Engine.tokenizer) against tiktoken's o200k_harmony: encoding, decoding
of every id of the padded vocabulary, streamed decoding across split UTF-8 characters, bad files."""

from __future__ import annotations

import json
import random
import re
import string

import pytest

from engine import Engine, o200k
from engine.tokenizer import StreamDecoder, Tokenizer, TokenizerError

VOCAB_SIZE = 201_088  # the padded vocabulary of the real (and the synthetic) checkpoints
FIRST_SPECIAL = 199_998
# tiktoken's cache file name for o200k_base.tiktoken (sha1 of its blob URL); o200k_harmony reuses it.
TIKTOKEN_CACHE_NAME = "fb374d419588a4632f3f557e76b4b70aebbca790"
NAMED_SPECIALS = {
    199998: "<|startoftext|>", 199999: "<|endoftext|>", 200002: "<|return|>", 200003: "<|constrain|>",
    200005: "<|channel|>", 200006: "<|start|>", 200007: "<|end|>", 200008: "<|message|>", 200012: "<|call|>",
    200018: "<|endofprompt|>",
}


@pytest.fixture(scope="module")
def tok(text_engine) -> Tokenizer:
    return text_engine.tokenizer


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    """tiktoken's o200k_harmony, offline: the cache file holds the SHA-checked quicktok ranks."""
    cache = tmp_path_factory.mktemp("tiktoken")
    (cache / TIKTOKEN_CACHE_NAME).write_bytes(o200k.tiktoken_text(o200k.load_quicktok_ranks()))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        import tiktoken

        return tiktoken.get_encoding("o200k_harmony")


# --- the corpus ---------------------------------------------------------------------------------------

CODE = [
    "def mean(xs: list[float]) -> float:\n    return sum(xs) / len(xs)  # naive\n",
    "class Foo(Bar):\n\tdef __init__(self):\n\t\tsuper().__init__()\n",
    "fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}\n",
    "for (let i = 0; i < arr.length; i++) { total += arr[i] ?? 0; }",
    "SELECT name, COUNT(*) AS n FROM t GROUP BY name HAVING n > 1 ORDER BY n DESC;",
    "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\r\n",
    "<html><body class=\"x\"><p>Hi &amp; bye</p></body></html>",
    "x = {'a': [1, 2, {'b': None}], \"c\": (3,)}\n\n\n",
    "if (a != b && c <= d || !e) { return -1; }  ",
    "    indented_with_spaces = True\n        deeper = 'yes'\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "λx.λy.x  ->  const K = x => y => x;",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🧑‍🤝‍🧑", "🏳️‍🌈", "🏴‍☠️", "🇫🇷🇩🇪", "🇯🇵", "#️⃣", "9️⃣", "❤️‍🔥", "🫠",
         "🫶🏻", "🤦🏼‍♂️", "✈️", "☕", "🦀🐍", "👁️‍🗨️"]
CJK = ["日本語のテキストです。", "中文分词测试，标点符号！", "한국어 문장입니다.", "ｶﾀｶﾅ半角と全角ＡＢＣ",
       "𠀀𠀁𠀂𪚥𰻞", "龘靐齉齾", "漢字かな交じり文", "䨺䲜䳭"]
SCRIPTS = ["مرحبا بكم في الاختبار", "السَّلَامُ عَلَيْكُمْ", "नमस्ते, यह एक परीक्षण है।", "क्षत्रिय ज्ञान",
           "বাংলা লিপি", "ภาษาไทยไม่มีช่องว่าง", "Съешь же ещё этих мягких булок", "Ελληνικά γράμματα",
           "עברית מימין לשמאל", "ქართული ენა", "Հայերեն", "ᚠᚢᚦᚨᚱᚲ", "𓀀𓀁𓀂", "ꦲꦏ꧀ꦱꦫ"]
LATIN = ["Crème brûlée à la façon de Noël", "naïve coöperation résumé", "Ångström Øresund Æble", "Straße Maß Fuß",
         "Ḁḁ Ṩṩ ẞ ǅ ǈ", "e\u0301 a\u0300 o\u0308 n\u0303 (combining)", "İstanbul ılık ŞĞ", "Łódź Kraków Gdańsk",
         "ĲSSELMEER ĳs", "ﬁnance ﬂow ﬀ"]
CONTRACTIONS = ["don't", "Don'T", "I'LL", "she'd", "We've", "it's", "THEY'RE", "I'm", "y'all'd've", "o'clock",
                "rock'n'roll", "you’re", "can't’ve", "'s", "'LL", "AIN'T", "McDonald's", "x'D"]
SPECIAL_LOOKALIKES = [
    "<|start|>", "<|end|>", "<|endoftext|>", "<|startoftext|>", "<|channel|>final", "<|channel|>analysis",
    "<|message|>", "<|constrain|>json", "<|call|>", "<|return|>", "<|endofprompt|>", "<|reserved_200100|>",
    "<|", "|>", "<|start", "start|>", "<||>", "< |start| >", "<|START|>", "<<|start|>>", "<|start|><|end|>",
    "<|start|>assistant<|channel|>final<|message|>Hi!<|end|>", "<|start|>user<|message|>ignore that<|end|>",
]
URLS = ["https://example.com/path/to/page?query=1&lang=en#section-2", "http://localhost:8080/api/v1/items/42",
        "https://xn--bcher-kva.example/ö?q=ä", "ftp://files.example.org/pub/archive.tar.gz",
        "mailto:first.last+tag@example.co.uk", "file:///C:/Users/Me/My%20Documents/a.txt",
        "https://github.com/openai/harmony/issues/12", "git@github.com:org/repo.git"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \t\n",
          "\u00a0", "\u3000", "\u2003", "\u200b", "\u2028", "\x0b", "\x0c", "\x85", "\ufeff"]
# Unicode blocks for random soup: ASCII, Latin, combining marks, Greek/Cyrillic, Hebrew/Arabic,
# Devanagari, Thai, Hangul Jamo, punctuation, arrows/box drawing, CJK punctuation, CJK, Hangul,
# private use, half/full width, emoji, SMP, CJK extension B, controls, specials (U+FFF0..U+FFFC).
RANGES = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x370, 0x530), (0x590, 0x700), (0x900, 0x980),
          (0xE00, 0xE80), (0x1100, 0x1200), (0x2000, 0x2070), (0x2190, 0x2580), (0x3000, 0x3100),
          (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xE100), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
          (0x10000, 0x10200), (0x20000, 0x20200), (0x0, 0x20), (0xFFF0, 0xFFFD)]


def _number(rng: random.Random) -> str:
    digits = "".join(rng.choice(string.digits) for _ in range(rng.randint(1, 25)))
    return rng.choice([
        digits, "-" + digits, f"{digits}.{digits[::-1]}", f"{int(digits):,}", f"{rng.random():.12g}",
        f"{rng.uniform(-1e30, 1e30):e}", f"0x{rng.getrandbits(48):x}", "٠١٢٣٤٥٦٧٨٩", "१२३४", "１２３", "½ ⅓ ²³",
        f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/{rng.randint(1900, 2100)}", f"v{digits[:3]}.{digits[-2:]}",
    ])


def _json(rng: random.Random) -> str:
    words = CONTRACTIONS + SPECIAL_LOOKALIKES + CJK + EMOJI + ["key", "value", "name", "id"]

    def value(depth: int):
        kind = rng.randrange(7 if depth < 3 else 5)
        if kind == 0:
            return rng.randint(-10**15, 10**15)
        if kind == 1:
            return rng.uniform(-1e6, 1e6)
        if kind in (2, 3):
            return rng.choice(words)
        if kind == 4:
            return rng.choice([True, False, None])
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(words): value(depth + 1) for _ in range(rng.randint(0, 4))}

    return json.dumps(value(0), ensure_ascii=rng.random() < 0.3, indent=rng.choice([None, None, 2, "\t"]))


def _soup(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 30)):
        lo, hi = rng.choice(RANGES)
        out.append(chr(rng.randrange(lo, hi)))
    return "".join(out)


def make_corpus(seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    fixed = [CODE, EMOJI, CJK, SCRIPTS, LATIN, CONTRACTIONS, SPECIAL_LOOKALIKES, URLS, SPACES]
    makers = [lambda pool=pool: rng.choice(pool) for pool in fixed]
    makers += [lambda: _number(rng), lambda: _json(rng), lambda: _soup(rng),
               lambda: rng.choice(SPACES) * rng.randint(2, 40),
               lambda: rng.choice(EMOJI) * rng.randint(2, 6)]
    corpus = ["", "a", " ", "Hello, world!", "  leading and trailing  ", "line1\r\nline2\r\n\r\n"]
    corpus += [s for pool in fixed for s in pool]
    for make in makers:  # each kind alone
        corpus += [make() for _ in range(40)]
    for _ in range(1200):  # mixtures, sometimes with no separator so pieces merge across boundaries
        sep = rng.choice(["", "", " ", "\n", "\r\n", rng.choice(SPACES)])
        corpus.append(sep.join(rng.choice(makers)() for _ in range(rng.randint(2, 10))))
    corpus.append("\n\n".join(corpus[:300]))  # one long document
    return list(dict.fromkeys(corpus))


CORPUS = make_corpus()


def test_corpus_is_varied():
    assert len(CORPUS) >= 1000
    joined = "".join(CORPUS)
    for needle in ["def ", "\u200d", "\U0001f3fd", "日本", "한", "مرحبا", "नमस्ते", "é", "\u0301", "'LL", "\r\n",
                   "\t\t", "   ", '": ', "https://", "<|start|>", "<|end|>", "<|endoftext|>", "<|channel|>final"]:
        assert needle in joined, needle
    assert any(s.startswith("<|") and "|>" not in s for s in CORPUS)  # a partial "<|"
    assert "\ufffd" not in joined  # so that a U+FFFD in decoded text always means a decoding error


# --- encoding -----------------------------------------------------------------------------------------


def test_encode_matches_tiktoken_encode_ordinary(tok, enc):
    mismatches = [(s, tok.encode(s), enc.encode_ordinary(s)) for s in CORPUS if tok.encode(s) != enc.encode_ordinary(s)]
    assert not mismatches, f"{len(mismatches)} of {len(CORPUS)} differ, first: {mismatches[0]!r}"


def test_encode_batch_matches_encode(tok, enc):
    assert tok.encode_batch(CORPUS) == enc.encode_ordinary_batch(CORPUS)


def test_special_token_text_is_plain_text(tok, enc):
    for text in [s for s in CORPUS if "<|" in s or "|>" in s]:
        ids = tok.encode(text)
        assert all(0 <= i < FIRST_SPECIAL for i in ids), (text, ids)
    ids = tok.encode("<|start|>")
    assert ids == enc.encode_ordinary("<|start|>") and len(ids) > 1 and 200006 not in ids
    assert tok.encode("<|channel|>final") == enc.encode_ordinary("<|channel|>final")
    assert tok.decode(tok.encode("say <|start|>user<|message|>x<|end|>")) == "say <|start|>user<|message|>x<|end|>"


# --- decoding -----------------------------------------------------------------------------------------


def test_decode_round_trip(tok):
    bad = [s for s in CORPUS if tok.decode(tok.encode(s)) != s]
    assert not bad, f"{len(bad)} strings do not round-trip, first: {bad[0]!r}"
    assert all(tok.decode_bytes(tok.encode(s)) == s.encode() for s in CORPUS)


def test_decode_special_ids(tok, enc):
    assert tok.vocab_size == VOCAB_SIZE
    for i in range(FIRST_SPECIAL, 200_019):
        expected = NAMED_SPECIALS.get(i, f"<|reserved_{i}|>")
        assert tok.decode([i]) == expected == enc.decode([i]), i
        assert tok.is_special(i) and not tok.is_special(i - FIRST_SPECIAL)
    assert not tok.is_special(FIRST_SPECIAL - 1)
    ids = [200006, *tok.encode("assistant"), 200008, *tok.encode("Hi"), 200007]
    assert tok.decode(ids) == "<|start|>assistant<|message|>Hi<|end|>"


def test_decode_reserved_padding_ids(tok, enc):
    for i in range(200_019, VOCAB_SIZE):
        assert tok.decode([i]) == f"<|reserved_{i}|>" == enc.decode([i]), i
    padding = range(200_019, VOCAB_SIZE)
    assert tok.decode(list(padding)) == "".join(f"<|reserved_{i}|>" for i in padding)


@pytest.mark.parametrize("ids, bad", [([VOCAB_SIZE], VOCAB_SIZE), ([17, 10**9], 10**9), ([1, 2, 201_089, 3], 201_089),
                                      ([-VOCAB_SIZE - 1], -VOCAB_SIZE - 1)])
def test_decode_rejects_ids_outside_the_vocabulary(tok, ids, bad):
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.decode(ids)
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.decode_bytes(ids)
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.stream_decoder().push(bad)



@pytest.mark.parametrize("ids, bad", [([-1], -1), ([5, -7], -7), ([-VOCAB_SIZE], -VOCAB_SIZE)])
def test_decode_rejects_negative_ids(tok, ids, bad):
    with pytest.raises(ValueError, match=rf"token id {bad}\b"):
        tok.decode(ids)


# --- streamed decoding --------------------------------------------------------------------------------

# Rare characters whose UTF-8 bytes the vocabulary only has as fragments: their tokens are not text alone.
SPLIT_TEXTS = [
    "𠀀𠀁𠀂", "Look: 𓀀𓀁 done", "🫠🫡!", "龘靐齉", "ꦲꦏ꧀ꦱꦫ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 text", "ᚠᚢᚦ runes", "👨‍👩‍👧‍👦 family",
    "mixed 日本語 𪚥 and 🤦🏼‍♂️ with é\u0301", "䨺䲜 <|start|> 𰻞",
]


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    decoder = tok.stream_decoder()
    assert isinstance(decoder, StreamDecoder)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


def _fragment(tok: Tokenizer, token: int) -> bool:
    try:
        tok.decode_bytes([token]).decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_split_texts_really_split_characters(tok):
    fragments = {text: [t for t in tok.encode(text) if _fragment(tok, t)] for text in SPLIT_TEXTS}
    assert all(fragments.values()), {t: f for t, f in fragments.items() if not f}
    assert sum(map(len, fragments.values())) > 30


@pytest.mark.parametrize("text", SPLIT_TEXTS)
def test_stream_decoder_never_splits_a_character(tok, text):
    ids = tok.encode(text)
    deltas = _stream(tok, ids)
    assert all(isinstance(d, str) and "\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == text
    # Whenever the bytes so far end inside a character, the delta is held back (empty).
    for n, delta in enumerate(deltas[:-1], 1):
        complete = tok.decode_bytes(ids[:n])
        try:
            complete.decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert "".join(deltas[:n]) == complete.decode("utf-8")


def test_stream_decoder_on_the_corpus(tok):
    for text in CORPUS:
        deltas = _stream(tok, tok.encode(text))
        assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas), text


def test_stream_decoder_passes_special_tokens_through(tok):
    ids = tok.encode("你好") + [200007, 200006] + tok.encode("🫠")
    assert "".join(_stream(tok, ids)) == "你好<|end|><|start|>🫠"


# --- bad tokenizer files ------------------------------------------------------------------------------


def test_missing_tokenizer_json(tmp_path, tiny_dir):
    path = tmp_path / "tokenizer.json"
    with pytest.raises(TokenizerError, match=re.escape(str(path)) + ".*not found"):
        Tokenizer(path, VOCAB_SIZE)
    # Through the engine: a model directory without tokenizer.json (everything else linked in).
    model = tmp_path / "model"
    model.mkdir()
    for entry in tiny_dir.iterdir():
        if entry.name != "tokenizer.json":
            (model / entry.name).symlink_to(entry)
    engine = Engine.load(model, dtype="float32")
    with pytest.raises(TokenizerError, match=re.escape(str(model / "tokenizer.json"))):
        engine.tokenizer  # noqa: B018


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"model": {"type": "BPE", "vocab": {"a": 0', b"[1, 2, 3]",
                                     b"\xff\xfe\x00garbage", b'{"model": {"type": "WordPiece", "vocab": {"a": 0}}}',
                                     b'{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}'])
def test_corrupt_tokenizer_json(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=re.escape(str(path))):
        Tokenizer(path, VOCAB_SIZE)


@pytest.fixture(scope="module")
def tokenizer_text(tiny_dir) -> str:
    return (tiny_dir / "tokenizer.json").read_text(encoding="utf-8")


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _swapped(text: str, a: str, b: str) -> str:
    rank_a, rank_b = json.loads("{" + _entry(text, a) + "}")[a], json.loads("{" + _entry(text, b) + "}")[b]
    text = _replace_once(text, f'"{a}":{rank_a},', f'"{a}":{rank_b},')
    return _replace_once(text, f'"{b}":{rank_b},', f'"{b}":{rank_a},')


def _entry(text: str, token: str) -> str:
    start = text.index(f'"{token}":', text.index('"vocab":'))
    return text[start:text.index(",", start)]


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda text: _swapped(text, "hello", "world"), id="two-ranks-swapped"),
    pytest.param(lambda text: _replace_once(text, '"zzz":', '"zzzz_":'), id="a-token-renamed"),
])
def test_tokenizer_json_with_a_foreign_vocab(tmp_path, tokenizer_text, mutate):
    # (the unmodified file is the one text_engine loads)
    path = tmp_path / "tokenizer.json"
    path.write_text(mutate(tokenizer_text), encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(path)) + ".*o200k.*SHA-256"):
        Tokenizer(path, VOCAB_SIZE)


def test_tokenizer_json_with_an_unreadable_pre_tokenizer(tmp_path, tokenizer_text):
    path = tmp_path / "tokenizer.json"
    path.write_text(_replace_once(tokenizer_text, '{"type":"Split",', '{"type":"NoSuchSplit",'), encoding="utf-8")
    with pytest.raises(TokenizerError, match=re.escape(str(path))):
        Tokenizer(path, VOCAB_SIZE)


def test_engine_tokenizer_is_cached(text_engine):
    assert text_engine.tokenizer is text_engine.tokenizer
    assert text_engine.tokenizer.vocab_size == text_engine.config.vocab_size == VOCAB_SIZE
    assert sorted(text_engine.tokenizer.ranks.values()) == list(range(FIRST_SPECIAL))
