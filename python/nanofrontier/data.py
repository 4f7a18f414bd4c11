"""Data files and batches.

Where files live: :func:`data_dir` is ``$NANOFRONTIER_DATA`` when set, else a per-user cache
(``$XDG_CACHE_HOME/nanofrontier`` or ``~/.cache/nanofrontier``). :func:`get_file` returns a file's path
there, checking its sha256, and downloads it first when it is missing and has a public URL (machines
without internet: set ``NANOFRONTIER_DATA`` to a folder holding the files, e.g. the project's shared data).

The files we know (:data:`KNOWN`; sha256 of the copies the project tests with):

=================================  ===============================================================
``tinyshakespeare.txt``            karpathy/char-rnn ``data/tinyshakespeare/input.txt`` (GitHub raw)
``stories260K/stories260K.bin``    llama2.c checkpoint, Hugging Face ``karpathy/tinyllamas``
``stories260K/tok512.model``       its SentencePiece model, same repo
``stories260K/tok512.bin``         the llama2.c tokenizer file, same repo
``stories260K/stories260K.gguf``   no public URL we can vouch for: provide it via ``NANOFRONTIER_DATA``
``stories260K/tok512.vocab``       no public URL: provide it via ``NANOFRONTIER_DATA``
=================================  ===============================================================

NOTE: the project's ``stories260K.bin`` was converted from the GGUF (same tensors, and the same size as
llama2.c's own export). Whether the Hugging Face copy is byte-identical could not be checked offline; if it
is not, its download fails the checksum with a clear error (nothing is saved): then put the file in
``NANOFRONTIER_DATA`` or pass that file's own ``sha256`` to :func:`get_file`.

Batches follow nanoGPT: :func:`shakespeare_splits` (first 90% train, last 10% val) and :func:`get_batch`
(random windows; targets are the inputs shifted by one).
"""

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .exceptions import FileFormatError, InvalidArgumentError

ENV_VAR = "NANOFRONTIER_DATA"

_TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories260K/"

KNOWN = {
    "tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "stories260K/stories260K.bin": (
        _TINYLLAMAS + "stories260K.bin",
        "2fd9074c883b4957f66d996717067176093e7ea5b181a0c1c643018d5233c8b7",
    ),
    "stories260K/tok512.model": (
        _TINYLLAMAS + "tok512.model",
        "fec6aa960a1fb3ebf71d26f9b0e486afcbd76c34cf0fbfb93e21126ca9f778d3",
    ),
    "stories260K/tok512.bin": (
        _TINYLLAMAS + "tok512.bin",
        "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
    ),
    "stories260K/stories260K.gguf": (
        None,
        "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d",
    ),
    "stories260K/tok512.vocab": (
        None,
        "2e9250b58087f2eca24b298a3328de3ce2f8ff22dddd464c40a72dda174bb1bc",
    ),
}
"""``{relative path: (public URL or None, sha256)}`` of the data files nanofrontier uses."""

# files already hashed in this process: path -> (size, mtime_ns, sha256)
_verified = {}


def data_dir():
    """The data folder: ``$NANOFRONTIER_DATA`` if set, else ``$XDG_CACHE_HOME/nanofrontier``, else
    ``~/.cache/nanofrontier``. (Not created until something is downloaded.)"""
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    return _user_cache()


def _user_cache():
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "nanofrontier"


def cache_dir(*parts):
    """Where derived results are kept between runs (pretrained base models of the notebooks, their records):
    ``$NANOFRONTIER_CACHE`` if set, else ``$XDG_CACHE_HOME/nanofrontier`` or ``~/.cache/nanofrontier``,
    joined with ``parts``. One setting moves every cache; deleting the folder only costs recomputation.
    (Not created here.)"""
    env = os.environ.get("NANOFRONTIER_CACHE", "")
    return (Path(env).expanduser() if env else _user_cache()).joinpath(*parts)


def sha256sum(path, chunk=1 << 20):
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check(path, sha256):
    st = path.stat()
    key = (st.st_size, st.st_mtime_ns, sha256)
    if _verified.get(str(path)) == key:
        return
    got = sha256sum(path)
    if got != sha256:
        raise FileFormatError(
            f"{path} is corrupt or not the expected file: its sha256 is {got}, expected {sha256}. "
            "Delete it (it is downloaded again when it has a URL) or replace it with a good copy."
        )
    _verified[str(path)] = key


def _download(url, dest, sha256):
    """url → dest, through a temporary file in dest's folder renamed into place only when complete and
    (if given) matching ``sha256``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False)
            except ImportError:
                pass
            try:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and h.hexdigest() != sha256:
            raise FileFormatError(
                f"downloaded {url} but it is not the expected file: sha256 {h.hexdigest()}, expected {sha256} "
                f"(nothing was saved). Put a good copy at {dest} or set {ENV_VAR} to a folder that holds it."
            )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def get_file(relpath, url=None, sha256=None):
    """Path of the data file ``relpath`` (e.g. ``"tinyshakespeare.txt"``, ``"stories260K/stories260K.gguf"``)
    inside :func:`data_dir`.

    For files in :data:`KNOWN`, ``url`` and ``sha256`` default to the table's. A present file is checked
    against ``sha256`` (mismatch → ``FileFormatError`` saying it is corrupt). A missing file is downloaded
    from ``url`` (temporary file + atomic rename, checksum verified, tqdm progress if installed). If it is
    missing and cannot be downloaded, ``FileNotFoundError`` says to set ``NANOFRONTIER_DATA``.
    """
    rel = Path(relpath)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InvalidArgumentError(f"get_file: {relpath!r} must be a relative path inside the data folder")
    key = rel.as_posix()
    known_url, known_sha = KNOWN.get(key, (None, None))
    url = url if url is not None else known_url
    sha256 = sha256 if sha256 is not None else known_sha
    root = data_dir()
    path = root / rel
    if path.is_file():
        if sha256 is not None:
            _check(path, sha256)
        return path
    where = (
        f"{ENV_VAR}={os.environ[ENV_VAR]}"
        if os.environ.get(ENV_VAR)
        else f"the cache {root} ({ENV_VAR} is not set)"
    )
    if url is None:
        raise FileNotFoundError(
            f"data file {key!r} is not in {where} and has no public download URL. "
            f"Set {ENV_VAR} to a folder that holds {key} (for example the project's shared/data)."
        )
    try:
        _download(url, path, sha256)
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, FileFormatError):
            raise
        reason = getattr(e, "reason", None) or e
        raise FileNotFoundError(
            f"data file {key!r} is not in {where} and downloading it from {url} failed ({reason}). "
            f"Without internet, set {ENV_VAR} to a folder that holds {key} (for example the project's shared/data)."
        ) from None
    if sha256 is not None:
        _verified[str(path)] = (path.stat().st_size, path.stat().st_mtime_ns, sha256)
    return path


# ------------------------------------------------------------------------------------------------ text


def load_shakespeare():
    """Tiny Shakespeare as one string (1,115,394 characters)."""
    with open(get_file("tinyshakespeare.txt"), encoding="utf-8", newline="") as f:
        return f.read()


def shakespeare_splits(tokenizer=None):
    """``(train_ids, val_ids)``: the text's first 90% and last 10% (split on characters, as nanoGPT does),
    each encoded with ``tokenizer`` (default: a :class:`~nanofrontier.tokenizer.CharTokenizer` of the whole
    text) into an int64 array."""
    text = load_shakespeare()
    if tokenizer is None:
        from .tokenizer import CharTokenizer

        tokenizer = CharTokenizer(text)
    n = int(len(text) * 0.9)
    train = np.asarray(tokenizer.encode(text[:n]), dtype=np.int64)
    val = np.asarray(tokenizer.encode(text[n:]), dtype=np.int64)
    return train, val


def get_batch(ids, batch_size, block_size, rng):
    """``(x, y)``, two int64 arrays of shape (batch_size, block_size): ``batch_size`` windows of ``ids`` at
    random starts drawn from ``rng`` (a ``numpy.random.Generator``), and ``y`` = the same windows one token
    later (the next-token targets)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"get_batch: rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InvalidArgumentError(
            f"get_batch: ids must be a 1-D integer array, got {ids.dtype} of shape {ids.shape}"
        )
    if batch_size < 1 or block_size < 1:
        raise InvalidArgumentError(
            f"get_batch: batch_size ({batch_size}) and block_size ({block_size}) must be >= 1"
        )
    if len(ids) <= block_size:
        raise InvalidArgumentError(
            f"get_batch: {len(ids)} tokens are too few for a window of block_size {block_size} plus its target"
        )
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)
    windows = ids[starts[:, None] + np.arange(block_size + 1)].astype(np.int64, copy=False)  # (B, T+1)
    return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


__all__ = [
    "ENV_VAR",
    "KNOWN",
    "data_dir",
    "get_file",
    "sha256sum",
    "load_shakespeare",
    "shakespeare_splits",
    "get_batch",
]
