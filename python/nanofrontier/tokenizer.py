"""Tokenizers: text ⇄ lists of integer ids.

* :class:`CharTokenizer` — one id per distinct character, ids in sorted character order (nanoGPT's
  ``shakespeare_char``: 65 symbols for tiny Shakespeare). Pure Python; saves into a checkpoint as a dict.
* :class:`BPETokenizer` — byte-level BPE (GPT-2 style) trained and run in Rust (``_core.BPE``): merges learned
  from a text with a priority queue, GPT-2's pre-tokenization split, special tokens, parallel batch encoding,
  a readable save format. Any text round-trips exactly.
* :class:`SentencePieceTokenizer` — wraps Google's ``sentencepiece`` (the Llama 2 / TinyStories tokenizers,
  e.g. ``stories260K/tok512.model``); needs ``pip install 'nanofrontier[formats]'``.
"""

import os
import warnings

from . import _core
from .exceptions import FileFormatError, InvalidArgumentError


class CharTokenizer:
    """Character-level tokenizer: ``itos`` is the sorted list of distinct characters of ``text``, ``stoi``
    its inverse. ``encode`` of a character it has never seen raises ``InvalidArgumentError``."""

    def __init__(self, text):
        chars = sorted(set(text))
        if not chars:
            raise InvalidArgumentError("CharTokenizer: the text is empty, so there is no vocabulary")
        self.itos = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, text):
        """``list[int]``, one id per character."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError as e:
            raise InvalidArgumentError(
                f"CharTokenizer.encode: character {e.args[0]!r} is not in the vocabulary"
            ) from None

    def decode(self, ids):
        """The text of a sequence of ids (any iterable of ints, e.g. a numpy array)."""
        itos, n = self.itos, len(self.itos)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise InvalidArgumentError(f"CharTokenizer.decode: id {i} is outside the vocabulary [0, {n})")
            out.append(itos[i])
        return "".join(out)

    def to_dict(self):
        """A JSON-able dict to store in a checkpoint; :meth:`from_dict` rebuilds the same tokenizer."""
        return {"type": "char", "chars": "".join(self.itos)}

    @classmethod
    def from_dict(cls, d):
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise InvalidArgumentError(f"CharTokenizer.from_dict: not a char tokenizer dict: {d!r:.100}")
        tok = cls(d["chars"])
        if "".join(tok.itos) != d["chars"]:
            raise InvalidArgumentError("CharTokenizer.from_dict: 'chars' must be sorted and without repeats")
        return tok

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class BPETokenizer:
    """Byte-level BPE: tokens 0-255 are the bytes, token 256 + r is the r-th merge learned, special tokens
    come last. ``BPETokenizer(text, vocab_size, special_tokens=())`` (or :meth:`train`) learns
    ``vocab_size - 256 - len(special_tokens)`` merges from ``text``, in Rust.

    How it works: the text is first cut into pieces by GPT-2's split (a word with its leading space, a run of
    digits, of punctuation, of whitespace; see :meth:`pretokenize`), so a merge never joins two words. Then
    the most frequent adjacent pair is merged, again and again; pair counts sit in a priority queue and are
    updated only where a merge changed something. Ties go to the smallest (left id, right id), so training is
    deterministic. Occurrences of the special tokens in ``text`` are left out of training. If the text runs
    out of pairs before ``vocab_size`` is reached, the vocabulary is smaller (a warning says so).

    Round trip: ``decode(encode(s)) == s`` for every ``str`` (emoji, combining marks, NUL, any script), and
    ``decode_bytes(encode_bytes(b)) == b`` for any bytes. A list of ids that cuts a character in two (e.g.
    the first token of "👋" alone) has no text: :meth:`decode_bytes` gives its bytes, :meth:`decode` replaces
    each invalid UTF-8 sequence by U+FFFD (``errors="replace"``, as ``bytes.decode``; pass ``"strict"`` to
    get ``UnicodeDecodeError`` instead).
    """

    def __init__(self, text, vocab_size, special_tokens=()):
        if not isinstance(text, str):
            raise TypeError(
                f"BPETokenizer: text must be str, got {type(text).__name__} (bytes: train on text.decode())"
            )
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"BPETokenizer: vocab_size must be an int, got {type(vocab_size).__name__}")
        specials = _special_list("BPETokenizer", special_tokens)
        # clamped into int64 so that an absurd size gets the core's "above the limit" message, not OverflowError
        self._bpe = _core.BPE.train(text, max(-1, min(vocab_size, 2**62)), specials)
        if self._bpe.vocab_size < vocab_size:
            warnings.warn(
                f"BPETokenizer: the text ran out of pairs to merge; the vocabulary has {self._bpe.vocab_size} "
                f"tokens, not {vocab_size}",
                stacklevel=2,
            )
        self._specials = dict(self._bpe.special_tokens())

    @classmethod
    def train(cls, text, vocab_size, special_tokens=()):
        """Same as ``BPETokenizer(text, vocab_size, special_tokens)``."""
        return cls(text, vocab_size, special_tokens)

    @classmethod
    def _wrap(cls, core):
        tok = cls.__new__(cls)
        tok._bpe = core
        tok._specials = dict(core.special_tokens())
        return tok

    # ---- the vocabulary ----

    @property
    def vocab_size(self):
        return self._bpe.vocab_size

    @property
    def special_tokens(self):
        """``{text: id}`` of the special tokens."""
        return dict(self._specials)

    @property
    def merges(self):
        """``[(left id, right id), ...]`` in the order learned; merge r made token ``256 + r``."""
        return self._bpe.merges()

    def token_bytes(self, i):
        """The bytes of token ``i``."""
        return self._bpe.token_bytes(_check_int("token_bytes", i))

    def id_to_token(self, i):
        """Token ``i`` as text (``" the"``, ``"\\n"``); bytes that are not UTF-8 on their own show as U+FFFD."""
        return self.token_bytes(i).decode("utf-8", "replace")

    @staticmethod
    def pretokenize(text):
        """The pieces GPT-2's split cuts ``text`` into (no token crosses them): ``"Hello world"`` →
        ``["Hello", " world"]``."""
        if not isinstance(text, str):
            raise TypeError(f"BPETokenizer.pretokenize: text must be str, got {type(text).__name__}")
        return _core.BPE.pretokenize(text)

    # ---- encode / decode ----

    def _allowed(self, allowed_special):
        if allowed_special == "all":
            return list(self._specials)
        if allowed_special is None or allowed_special == "none":
            return []
        if isinstance(allowed_special, str):
            raise InvalidArgumentError(
                f"BPETokenizer.encode: allowed_special must be 'all', 'none' or a collection of special tokens, "
                f"got {allowed_special!r}"
            )
        return _special_list("BPETokenizer.encode", allowed_special)

    def encode(self, text, allowed_special="all"):
        """``list[int]``. The special tokens in ``allowed_special`` ("all" by default, "none", or a set of
        them) become one id each where their text occurs; the others are encoded as plain text."""
        if not isinstance(text, str):
            raise TypeError(
                f"BPETokenizer.encode: text must be str, got {type(text).__name__} (bytes: use encode_bytes)"
            )
        return self._bpe.encode(text, self._allowed(allowed_special))

    def encode_batch(self, texts, allowed_special="all"):
        """``[encode(t) for t in texts]``, the texts encoded in parallel on nanofrontier's thread pool."""
        if isinstance(texts, str):
            raise TypeError("BPETokenizer.encode_batch: texts must be a list of str, got one str")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"BPETokenizer.encode_batch: texts must be str, got {type(t).__name__}")
        return self._bpe.encode_batch(texts, self._allowed(allowed_special))

    def encode_bytes(self, data):
        """Arbitrary bytes (not necessarily UTF-8) → ids, as plain text (no special tokens)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"BPETokenizer.encode_bytes: data must be bytes, got {type(data).__name__}")
        return self._bpe.encode_bytes(bytes(data))

    def decode_bytes(self, ids):
        """The bytes of a sequence of ids (exact, also when the ids cut a character in two)."""
        return self._bpe.decode_bytes(_ids(ids))

    def decode(self, ids, errors="replace"):
        """The text of a sequence of ids (any iterable of ints, e.g. a numpy array). Invalid UTF-8 (ids that
        cut a character) is handled as ``bytes.decode(..., errors)`` does: "replace" (default) puts U+FFFD,
        "strict" raises ``UnicodeDecodeError``."""
        if errors == "replace":
            return self._bpe.decode(_ids(ids))
        return self.decode_bytes(ids).decode("utf-8", errors)

    # ---- files and checkpoints ----

    def save(self, path):
        """Write a readable text file (one merge per line, annotated with the token it makes; see
        ``_core.BPE.to_text``), atomically: ``path`` holds the old file or the whole new one."""
        self._bpe.save(os.fspath(path))

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save`. Missing → ``FileNotFoundError``; corrupt, truncated or not a
        BPE file → ``FileFormatError`` naming the file and line."""
        return cls._wrap(_core.BPE.load(os.fspath(path)))

    def to_dict(self):
        """A JSON-able dict to store in a checkpoint; :meth:`from_dict` rebuilds the same tokenizer."""
        return {
            "type": "bpe",
            "merges": [list(m) for m in self.merges],
            "special_tokens": [s for s, _ in sorted(self._specials.items(), key=lambda kv: kv[1])],
        }

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("type") != "bpe":
            raise InvalidArgumentError(f"BPETokenizer.from_dict: not a BPE tokenizer dict: {d!r:.100}")
        try:
            merges = [(int(a), int(b)) for a, b in d["merges"]]
            specials = _special_list("BPETokenizer.from_dict", d.get("special_tokens", []))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"BPETokenizer.from_dict: malformed dict ({e})") from None
        return cls._wrap(_core.BPE.from_merges(merges, specials))

    def __eq__(self, other):
        return isinstance(other, BPETokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size}, special_tokens={list(self._specials)!r})"


def _special_list(where, special_tokens):
    if isinstance(special_tokens, (str, bytes)):
        raise TypeError(
            f"{where}: special tokens must be a list of str, got one {type(special_tokens).__name__}"
        )
    out = list(special_tokens)
    for s in out:
        if not isinstance(s, str):
            raise TypeError(f"{where}: special tokens must be str, got {type(s).__name__}")
    return out


def _check_int(where, i):
    if isinstance(i, bool) or not hasattr(i, "__index__"):
        raise TypeError(f"BPETokenizer.{where}: an id must be an int, got {type(i).__name__}")
    return int(i)


def _ids(ids):
    """Ids as the core takes them: a list of ints or a 1-D int64 array (any iterable of ints is accepted)."""
    import numpy as np

    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"token ids must be integers, got an array of {ids.dtype}")
        if ids.ndim != 1:
            raise TypeError(f"token ids must be a 1-D sequence, got an array of shape {ids.shape}")
        return ids.astype(np.int64, copy=False)
    if isinstance(ids, (str, bytes, bytearray)):
        raise TypeError(f"token ids must be a sequence of ints, got {type(ids).__name__}")
    return ids if isinstance(ids, (list, tuple)) else list(ids)


class SentencePieceTokenizer:
    """A SentencePiece model (``.model`` file). ``encode(text, bos=True, eos=False)`` → ``list[int]``;
    ``decode(ids)`` → text (BOS/EOS/control ids are dropped, byte-fallback pieces become UTF-8)."""

    def __init__(self, model_path):
        try:
            import sentencepiece as spm
        except ImportError as e:
            raise ImportError(
                "SentencePieceTokenizer needs the 'sentencepiece' package: pip install 'nanofrontier[formats]'"
            ) from e
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "No such file or directory", path)
        self.model_path = path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except (OSError, RuntimeError) as e:
            raise FileFormatError(f"{path} is not a valid SentencePiece model: {e}") from None

    @property
    def vocab_size(self):
        return self.sp.GetPieceSize()

    @property
    def bos_id(self):
        return self.sp.bos_id()

    @property
    def eos_id(self):
        return self.sp.eos_id()

    def encode(self, text, bos=True, eos=False):
        ids = list(self.sp.EncodeAsIds(text))
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids):
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise InvalidArgumentError(f"SentencePieceTokenizer.decode: ids {bad[:5]} are outside [0, {n})")
        return self.sp.DecodeIds(ids)

    def id_to_piece(self, i):
        """The piece string of one id (``'▁time'``, ``'<0x0A>'``, ``'<s>'``...)."""
        return self.sp.IdToPiece(int(i))

    def __repr__(self):
        return f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


__all__ = ["BPETokenizer", "CharTokenizer", "SentencePieceTokenizer"]
