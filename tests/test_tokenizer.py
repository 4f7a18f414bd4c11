"""The byte-level BPE tokenizer (Rust core, `nanofrontier.tokenizer.BPETokenizer`): exact round trips on random
text, the same merges as a plain-Python reference BPE, save/load, special tokens, and clear errors."""

import os
import random
import re
from collections import Counter

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.tokenizer import BPETokenizer, CharTokenizer

SMALL = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.

All:
We know't, we know't.

First Citizen:
Let us kill him, and we'll have corn at our own price.
Is't a verdict?   It's 1608 -- or 1609; prices: 12d, 3s_6d!!
  Naïve café, straße, ΑΒΓ αβγ, Привет мир, 日本語, emoji 👋🏽 and tabs\t\there.
"""


# ---------------------------------------------------------------- a plain-Python reference BPE

# GPT-2's pattern in Python's `re`: letters = [^\W\d_], digits = \d, other = not space/letter/digit (with "_")
REF_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


def ref_merge(syms, pair, new):
    out, i = [], 0
    while i < len(syms):
        if i + 1 < len(syms) and (syms[i], syms[i + 1]) == pair:
            out.append(new)
            i += 2
        else:
            out.append(syms[i])
            i += 1
    return out


def ref_train(text, vocab_size):
    """Textbook BPE: recount every pair before every merge; the most frequent wins, ties to the smaller pair."""
    words = [(list(w.encode()), n) for w, n in Counter(REF_SPLIT.findall(text)).items()]
    merges = []
    while 256 + len(merges) < vocab_size:
        counts = Counter()
        for syms, n in words:
            for pair in zip(syms, syms[1:]):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        new = 256 + len(merges)
        merges.append(best)
        words = [(ref_merge(syms, best, new), n) for syms, n in words]
    return merges


def ref_encode(merges, text):
    ids = []
    for piece in REF_SPLIT.findall(text):
        syms = list(piece.encode())
        for r, pair in enumerate(merges):
            syms = ref_merge(syms, pair, 256 + r)
        ids += syms
    return ids


# ---------------------------------------------------------------- random text

# fmt: off
POOL = [
    "the", " cat", "'s", "'ll", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n ", "\0", "\0\0", "é", "e\u0301",
    "a\u0308\u0304", "👋🏽", "👨\u200d👩\u200d👧", "🇫🇷", "日本語", "Привет", "مرحبا", "שלום", "123", "4.5", "!?", "...",
    "\u00a0", "\u3000", "\ufffd", "\ufeff", "Ã(", "\u00c3\u00a9", "\\xff", "\u2028", "ǅ", "Ⅻ", "½",
]
# fmt: on


def random_text(rng, max_len=60):
    parts = []
    for _ in range(rng.randrange(max_len)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(POOL))
        elif r < 0.8:
            parts.append(chr(rng.randrange(0x20, 0x7F)))
        else:  # any code point but a surrogate (a str holding one cannot be UTF-8)
            c = rng.randrange(0x110000 - 0x800)
            parts.append(chr(c + 0x800 if c >= 0xD800 else c))
    return "".join(parts)


@pytest.fixture(scope="module")
def shakespeare():
    return nf.data.load_shakespeare()


@pytest.fixture(scope="module")
def tok(shakespeare):
    return BPETokenizer(shakespeare[:200_000], 512, special_tokens=["<|endoftext|>", "<|pad|>"])


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("seed", range(8))
def test_round_trip_is_exact_for_random_strings(tok, seed):
    rng = random.Random(seed)
    texts = [random_text(rng) for _ in range(250)]
    texts += ["", " ", "\0", "<|endoftext|>", "a<|endoftext|>b<|pad|>", "<|endoftext", " " * 1000, "👋" * 300]
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch):
        assert ids == tok.encode(text), f"encode_batch differs from encode on {text!r}"
        assert all(0 <= i < tok.vocab_size for i in ids)
        back = tok.decode(ids)
        assert back == text, f"round trip of {text!r} gave {back!r}"
        assert tok.decode_bytes(ids) == text.encode("utf-8")
        plain = tok.encode(text, allowed_special="none")
        assert tok.decode(plain) == text
        assert not set(plain) & set(tok.special_tokens.values()), (
            f"a special id in the plain encoding of {text!r}"
        )


@pytest.mark.parametrize("seed", range(4))
def test_arbitrary_bytes_round_trip_and_decode_replaces_like_python(tok, seed):
    rng = np.random.default_rng(seed)
    for _ in range(100):
        data = rng.integers(0, 256, size=int(rng.integers(0, 80)), dtype=np.uint8).tobytes()
        ids = tok.encode_bytes(data)
        assert tok.decode_bytes(ids) == data
        assert tok.decode(ids) == data.decode("utf-8", "replace")
        # random ids: a split character anywhere; the str decode must equal Python's "replace"
        ids = rng.integers(0, tok.vocab_size, size=int(rng.integers(0, 30))).tolist()
        raw = tok.decode_bytes(ids)
        assert tok.decode(ids) == raw.decode("utf-8", "replace"), f"ids {ids}"
        assert tok.decode(ids, errors="backslashreplace") == raw.decode("utf-8", "backslashreplace")


def test_ids_that_split_a_character(tok):
    ids = tok.encode_bytes("👋".encode())  # 4 bytes; at vocab 512 on Shakespeare, no merge covers them
    assert len(ids) == 4, ids
    assert tok.decode_bytes(ids[:2]) == "👋".encode()[:2]
    assert tok.decode(ids[:2]) == "\ufffd"
    assert tok.decode(ids[:2] + ids[2:]) == "👋"
    with pytest.raises(UnicodeDecodeError):
        tok.decode(ids[:2], errors="strict")
    assert tok.id_to_token(ids[0]) == "\ufffd"
    assert tok.id_to_token(tok.encode(" the")[0]) == " the"


def test_ids_may_be_a_numpy_array_or_any_iterable(tok):
    ids = tok.encode("To be, or not to be")
    text = "To be, or not to be"
    assert tok.decode(np.array(ids)) == text
    assert tok.decode(np.array(ids, dtype=np.int32)) == text
    assert tok.decode(np.array(ids, dtype=np.uint16)) == text
    assert tok.decode(tuple(ids)) == text
    assert tok.decode(i for i in ids) == text
    assert tok.decode([]) == ""


# ---------------------------------------------------------------- against the reference


def test_pretokenize_matches_gpt2s_pattern():
    rng = random.Random(5)
    # characters on which Rust's char classes and Python's re classes agree
    alphabet = list("abcXYZ019 _'.,!?-\n\t\r\0") + [
        "é",
        "ß",
        "Ω",
        "ж",
        "日",
        "👋",
        "\u00a0",
        "\u2003",
        "'s",
        "'ll",
    ]
    for _ in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
        assert BPETokenizer.pretokenize(s) == REF_SPLIT.findall(s), f"split of {s!r}"
    assert BPETokenizer.pretokenize(SMALL) == REF_SPLIT.findall(SMALL)


def test_merges_equal_a_plain_python_reference_bpe():
    vocab = 256 + 180
    want = ref_train(SMALL, vocab)
    assert len(want) == 180
    tok = BPETokenizer(SMALL, vocab)
    got = tok.merges
    first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
    assert got == want, f"merge {first_diff} differs: rust {got[first_diff]}, reference {want[first_diff]}"
    for text in [SMALL, "you are all resolved, first Citizen?", "Caius Marcius -- 1609!! 👋🏽 naïve"]:
        assert tok.encode(text) == ref_encode(want, text), f"encoding of {text!r}"


def test_training_is_deterministic_and_warns_when_the_text_runs_out_of_pairs():
    a, b = BPETokenizer(SMALL, 400), BPETokenizer.train(SMALL, 400)
    assert a == b and a.merges == b.merges
    with pytest.warns(UserWarning, match="ran out of pairs"):
        small = BPETokenizer("ab ab", 1000)
    assert small.vocab_size == 258
    assert small.merges == [(97, 98), (32, 256)]


# ---------------------------------------------------------------- special tokens


def test_special_tokens_are_atomic_when_allowed():
    eot = "<|endoftext|>"
    tok = BPETokenizer((SMALL + eot) * 3, 300, special_tokens=[eot, "<|pad|>"])
    assert tok.vocab_size == 300
    assert tok.special_tokens == {eot: 298, "<|pad|>": 299}
    assert all(b"<|" not in tok.token_bytes(i) for i in range(256, 298)), (
        "a merge learned from a special's text"
    )
    ids = tok.encode(f"Speak{eot}{eot}<|pad|>")
    assert ids[-3:] == [298, 298, 299]
    only_pad = tok.encode(f"{eot}<|pad|>", allowed_special={"<|pad|>"})
    assert only_pad[-1] == 299 and 298 not in only_pad
    assert tok.decode(only_pad) == f"{eot}<|pad|>"
    assert 298 not in tok.encode(eot, allowed_special="none")
    assert tok.encode(eot, allowed_special=None) == tok.encode(eot, allowed_special=())
    with pytest.raises(nf.InvalidArgumentError, match="not a special token"):
        tok.encode("x", allowed_special=["<|nope|>"])
    with pytest.raises(nf.InvalidArgumentError, match="allowed_special"):
        tok.encode("x", allowed_special="some")


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path, tok, shakespeare):
    path = tmp_path / "shakespeare.bpe"
    tok.save(path)
    back = BPETokenizer.load(path)
    assert back == tok
    assert back.vocab_size == tok.vocab_size and back.special_tokens == tok.special_tokens
    sample = shakespeare[200_000:210_000] + "<|endoftext|>👋"
    assert back.encode(sample) == tok.encode(sample)
    # readable: one merge per line, annotated with the token it makes
    text = path.read_text(encoding="utf-8")
    assert text.startswith("nanofrontier-bpe 1\n")
    assert re.search(r'^\d+ \d+  # 256 ".+"$', text, re.MULTILINE), text[:500]
    # saving again over it is atomic and leaves no temporary file
    tok.save(str(path))
    assert sorted(os.listdir(tmp_path)) == ["shakespeare.bpe"]
    # checkpoint dicts
    d = tok.to_dict()
    assert d["type"] == "bpe" and len(d["merges"]) == tok.vocab_size - 256 - 2
    assert BPETokenizer.from_dict(d) == tok
    import json

    assert BPETokenizer.from_dict(json.loads(json.dumps(d))) == tok


def test_corrupt_or_missing_files_raise_clear_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.bpe")
    with pytest.raises(FileNotFoundError):
        tok.save(tmp_path / "no" / "such" / "dir.bpe")
    good = tok._bpe.to_text()
    lines = good.splitlines()
    cases = {
        "truncated": "\n".join(lines[: len(lines) // 2]),
        "garbage": "hello world\n",
        "binary": b"\x89PNG\r\n\x1a\n\x00\x00",
        "bad merge": good.replace("\n" + lines[9].split("#")[0].strip() + " ", "\nx y ", 1),
        "future id": "\n".join(lines[:9] + ["5000 1"] + lines[10:]),
        "no end": good.replace("\nend\n", "\n"),
        "a JSON file": '{"merges": []}',
    }
    for name, contents in cases.items():
        p = tmp_path / f"{name}.bpe"
        p.write_bytes(contents if isinstance(contents, bytes) else contents.encode())
        with pytest.raises(nf.FileFormatError, match=re.escape(str(p))):
            BPETokenizer.load(p)
    with pytest.raises(nf.InvalidArgumentError, match="not a BPE tokenizer dict"):
        BPETokenizer.from_dict(CharTokenizer("abc").to_dict())
    with pytest.raises(nf.InvalidArgumentError, match="only ids below 256"):
        BPETokenizer.from_dict({"type": "bpe", "merges": [[300, 1]]})
    with pytest.raises(nf.InvalidArgumentError, match="malformed"):
        BPETokenizer.from_dict({"type": "bpe", "merges": [[1]]})


# ---------------------------------------------------------------- bad input


def test_a_vocabulary_smaller_than_the_bytes_plus_specials_is_refused():
    with pytest.raises(nf.InvalidArgumentError, match="smaller than the 256 byte tokens"):
        BPETokenizer(SMALL, 255)
    with pytest.raises(ValueError, match="256 byte tokens \\+ 2 special tokens = 258"):
        BPETokenizer(SMALL, 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(nf.InvalidArgumentError, match="smaller than"):
        BPETokenizer(SMALL, -5)
    with pytest.raises(nf.InvalidArgumentError, match="above the limit"):
        BPETokenizer(SMALL, 10**30)
    with pytest.raises(nf.InvalidArgumentError, match="twice"):
        BPETokenizer(SMALL, 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(nf.InvalidArgumentError, match="empty"):
        BPETokenizer(SMALL, 300, special_tokens=[""])
    assert BPETokenizer(SMALL, 258, special_tokens=["<a>", "<b>"]).merges == []


def test_decoding_an_id_out_of_range_is_refused(tok):
    n = tok.vocab_size
    for bad in [n, n + 100, -1, 2**40]:
        with pytest.raises(nf.OutOfRangeError, match=rf"id {bad} is outside the vocabulary \[0, {n}\)"):
            tok.decode([1, 2, bad])
        with pytest.raises(IndexError):
            tok.decode_bytes([bad])
    with pytest.raises(nf.OutOfRangeError):
        tok.token_bytes(n)


def test_wrong_types_raise_type_error(tok):
    with pytest.raises(TypeError, match="text must be str"):
        BPETokenizer(b"bytes", 300)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer(SMALL, 300.0)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        BPETokenizer(SMALL, "300")
    with pytest.raises(TypeError, match="list of str"):
        BPETokenizer(SMALL, 300, special_tokens="<|eot|>")
    with pytest.raises(TypeError, match="must be str"):
        BPETokenizer(SMALL, 300, special_tokens=[1])
    with pytest.raises(TypeError, match="use encode_bytes"):
        tok.encode(b"abc")
    with pytest.raises(TypeError):
        tok.encode(None)
    with pytest.raises(TypeError, match="one str"):
        tok.encode_batch("abc")
    with pytest.raises(TypeError):
        tok.encode_batch(["a", 1])
    with pytest.raises(TypeError, match="must be bytes"):
        tok.encode_bytes("abc")
    with pytest.raises(TypeError):
        tok.decode("abc")
    with pytest.raises(TypeError):
        tok.decode([1.5])
    with pytest.raises(TypeError):
        tok.decode(np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError):
        tok.token_bytes("a")
    # a str holding a lone surrogate has no UTF-8 form
    with pytest.raises(UnicodeEncodeError):
        tok.encode("a\ud800b")


def test_shakespeare_at_1024_tokens(shakespeare):
    tok = BPETokenizer(shakespeare, 1024)
    assert tok.vocab_size == 1024
    ids = tok.encode(shakespeare)
    assert tok.decode(ids) == shakespeare
    bytes_per_token = len(shakespeare.encode()) / len(ids)
    assert 2.2 < bytes_per_token < 2.8, f"compression {bytes_per_token:.3f} bytes/token"
    train, val = nf.data.shakespeare_splits(tok)
    assert train.dtype == np.int64 and train.max() < 1024 and len(train) > 5 * len(val)
