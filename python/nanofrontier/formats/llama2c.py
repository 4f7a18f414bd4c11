"""llama2.c checkpoints (Karpathy's ``run.c`` "legacy v0" ``.bin``) → (config, {HF Llama name: array}).

Layout (all little-endian): a header of 7 int32 — dim, hidden_dim, n_layers, n_heads, n_kv_heads,
vocab_size (negative ⇒ the classifier is NOT tied to the embedding and is stored at the end), seq_len —
then float32 arrays in this order, matrices (out, in) row-major::

    tok_embeddings (V, D) · rms_att (L, D) · wq (L, D, D) · wk (L, KV*hd, D) · wv (L, KV*hd, D) · wo (L, D, D)
    rms_ffn (L, D) · w1 (L, H, D) · w2 (L, D, H) · w3 (L, H, D) · rms_final (D,)
    freq_cis_real (S, hd/2) · freq_cis_imag (S, hd/2)   (RoPE tables; unused, skipped) · [wcls (V, D) if untied]

q/k rows are in Meta's interleaved RoPE order (``rope_layout="interleaved"``). llama2.c's newer "v1"/"v2"
exports (magic ``ak42``) are not this format and are refused with a clear message.
"""

import math
import os

import numpy as np

from ..exceptions import FileFormatError
from .hf import llama_expected_shapes

_HEADER = 7
_MAGIC_V1 = 0x616B3432  # "ak42": llama2.c export version >= 1


def _read_header(path, f):
    raw = f.read(_HEADER * 4)
    if len(raw) < _HEADER * 4:
        raise FileFormatError(
            f"{path} is not a valid llama2.c checkpoint: the file has {len(raw)} bytes, "
            f"less than the {_HEADER * 4}-byte header"
        )
    hdr = np.frombuffer(raw, dtype="<i4")
    if int(hdr[0]) == _MAGIC_V1:
        raise FileFormatError(
            f"{path} is a llama2.c version>=1 export (magic 'ak42'); only the legacy v0 format is supported "
            "(export with `python export.py --version 0`)"
        )
    return [int(x) for x in hdr]


def _config_from_header(path, hdr):
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = hdr
    problems = []
    for name, v in [
        ("dim", dim),
        ("hidden_dim", hidden),
        ("n_layers", n_layers),
        ("n_heads", n_heads),
        ("n_kv_heads", n_kv),
        ("seq_len", seq_len),
    ]:
        if v <= 0:
            problems.append(f"{name}={v} must be positive")
    if vocab == 0:
        problems.append("vocab_size=0")
    if not problems:
        if dim % n_heads:
            problems.append(f"dim={dim} is not divisible by n_heads={n_heads}")
        elif (dim // n_heads) % 2:
            problems.append(f"head_dim={dim // n_heads} is odd (RoPE needs pairs)")
        if n_heads % n_kv:
            problems.append(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv}")
    if problems:
        raise FileFormatError(
            f"{path} is not a valid llama2.c checkpoint: header {hdr}: " + "; ".join(problems)
        )
    return {
        "vocab_size": abs(vocab),
        "hidden_size": dim,
        "intermediate_size": hidden,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "max_position_embeddings": seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": vocab > 0,
        "rope_layout": "interleaved",
    }


def _sections(c):
    """(name, shape) of each float32 array in file order; the name None marks skipped arrays."""
    v, d, f = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    n_l, h, kv, s = (
        c["num_hidden_layers"],
        c["num_attention_heads"],
        c["num_key_value_heads"],
        c["max_position_embeddings"],
    )
    hd = d // h
    secs = [
        ("tok_embeddings", (v, d)),
        ("rms_att", (n_l, d)),
        ("wq", (n_l, h * hd, d)),
        ("wk", (n_l, kv * hd, d)),
        ("wv", (n_l, kv * hd, d)),
        ("wo", (n_l, d, h * hd)),
        ("rms_ffn", (n_l, d)),
        ("w1", (n_l, f, d)),
        ("w2", (n_l, d, f)),
        ("w3", (n_l, f, d)),
        ("rms_final", (d,)),
        (None, (s, hd // 2)),  # freq_cis_real
        (None, (s, hd // 2)),  # freq_cis_imag
    ]
    if not c["tie_word_embeddings"]:
        secs.append(("wcls", (v, d)))
    return secs


# llama2.c array → HF Llama name of each layer's slice
_PER_LAYER = {
    "rms_att": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "rms_ffn": "post_attention_layernorm.weight",
    "w1": "mlp.gate_proj.weight",
    "w2": "mlp.down_proj.weight",
    "w3": "mlp.up_proj.weight",
}


def read_llama2c_config(path):
    """Only the config of a llama2.c ``.bin`` (reads the 28-byte header)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        return _config_from_header(path, _read_header(path, f))


def load_llama2c(path):
    """Load a llama2.c legacy (v0) ``.bin`` checkpoint.

    Returns ``(config, state)``: config keys ``vocab_size, hidden_size, intermediate_size,
    num_hidden_layers, num_attention_heads, num_key_value_heads, max_position_embeddings (= seq_len),
    rms_norm_eps (1e-5), rope_theta (10000.0), tie_word_embeddings, rope_layout ("interleaved")``; state
    maps HF Llama names to float32 arrays (w1→gate_proj, w3→up_proj, w2→down_proj). When tied,
    ``state["lm_head.weight"]`` is the embedding array itself. The file must be exactly as long as its
    header implies, else ``FileFormatError`` (expected vs actual bytes); a missing file raises
    ``FileNotFoundError``.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)  # FileNotFoundError for a missing file
    with open(path, "rb") as f:
        hdr = _read_header(path, f)
        config = _config_from_header(path, hdr)
        secs = _sections(config)
        n_floats = sum(math.prod(shape) for _, shape in secs)
        expected = _HEADER * 4 + 4 * n_floats
        if size != expected:
            raise FileFormatError(
                f"{path} is not a valid llama2.c checkpoint: its header (dim, hidden_dim, n_layers, n_heads, "
                f"n_kv_heads, vocab_size, seq_len) = {tuple(hdr)}: expected {expected} bytes, "
                f"got {size} ({'truncated' if size < expected else 'trailing data'})"
            )
        arrays = {}
        for name, shape in secs:
            n = math.prod(shape)
            if name is None:
                f.seek(4 * n, os.SEEK_CUR)
                continue
            arr = np.fromfile(f, dtype="<f4", count=n)
            if arr.size != n:  # the file changed under us
                raise FileFormatError(f"{path} ended early while reading {name}")
            arrays[name] = arr.astype(np.float32, copy=False).reshape(shape)

    state = {"model.embed_tokens.weight": arrays["tok_embeddings"]}
    for i in range(config["num_hidden_layers"]):
        for src, dst in _PER_LAYER.items():
            state[f"model.layers.{i}.{dst}"] = arrays[src][i]  # a view of the (L, ...) array
    state["model.norm.weight"] = arrays["rms_final"]
    state["lm_head.weight"] = arrays["tok_embeddings"] if config["tie_word_embeddings"] else arrays["wcls"]
    return config, {k: state[k] for k in llama_expected_shapes(config)}  # the canonical (HF) order


__all__ = ["load_llama2c", "read_llama2c_config"]
