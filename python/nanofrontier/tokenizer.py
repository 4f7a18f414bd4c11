"""Tokenizers: text ⇄ lists of integer ids.

* :class:`CharTokenizer` — one id per distinct character, ids in sorted character order (nanoGPT's
  ``shakespeare_char``: 65 symbols for tiny Shakespeare). Pure Python; saves into a checkpoint as a dict.
* :class:`SentencePieceTokenizer` — wraps Google's ``sentencepiece`` (the Llama 2 / TinyStories tokenizers,
  e.g. ``stories260K/tok512.model``); needs ``pip install 'nanofrontier[formats]'``.
"""

import os

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


__all__ = ["CharTokenizer", "SentencePieceTokenizer"]
