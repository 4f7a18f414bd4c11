"""GGUF files (llama.cpp's format) of the ``llama`` architecture → (config, {HF Llama name: array}).

Reading is done by the ``gguf`` package (llama.cpp's own reader; ``pip install 'nanofrontier[formats]'``).
We map tensor names and metadata keys, and turn GGUF's dimension order around: GGUF lists dims fastest
first (``ne = [in, out]`` for a matrix), numpy slowest first, so a tensor with ``ne = [a, b]`` is the array
of shape ``(b, a)`` over the same bytes — exactly the (out, in) Linear weight.

Only F32 and F16 tensors are read (quantized types are refused, naming the tensor and its type).

RoPE: llama.cpp's ``convert_hf_to_gguf.py`` permutes Hugging Face's q/k rows back to Meta's interleaved
order (and llama.cpp rotates interleaved pairs for ``llama``), so the state comes back with
``rope_layout="interleaved"`` — the same bytes as the llama2.c ``.bin`` of the same model.

``max_position_embeddings`` is ``llama.context_length`` as the file says. NOTE: that number is whatever the
converter wrote, not necessarily the training context: ``stories260K.gguf`` says 2048 although the model
was trained with seq_len 512 (its llama2.c ``.bin`` header says 512). Use the smaller one for evaluation.
"""

import math
import os
import re

import numpy as np

from ..exceptions import FileFormatError
from .hf import check_state, llama_expected_shapes

_INSTALL_HINT = "reading GGUF files needs the 'gguf' package: pip install 'nanofrontier[formats]'"

_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "attn_q": "self_attn.q_proj.weight",
    "attn_k": "self_attn.k_proj.weight",
    "attn_v": "self_attn.v_proj.weight",
    "attn_output": "self_attn.o_proj.weight",
    "ffn_norm": "post_attention_layernorm.weight",
    "ffn_gate": "mlp.gate_proj.weight",
    "ffn_up": "mlp.up_proj.weight",
    "ffn_down": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return gguf


def hf_name(gguf_name):
    """The HF Llama name of a GGUF tensor name (``blk.3.ffn_gate.weight`` → ``model.layers.3.mlp.gate_proj.weight``),
    or None if it is not one of the llama tensors we know."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _LAYER_RE.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{int(m.group(1))}.{_LAYER_NAMES[m.group(2)]}"
    return None


def _field_value(gguf, field):
    """A metadata value as a Python object (str, int, float, or a list of them). Uses only the reader's
    ``parts``/``data``/``types``, which every gguf version has."""
    vt = gguf.GGUFValueType
    kind = field.types[0]

    def scalar(part, t):
        if t == vt.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        return part.tolist()[0] if len(part) == 1 else part.tolist()

    if kind == vt.ARRAY:
        sub = field.types[-1]
        return [scalar(field.parts[i], sub) for i in field.data]
    return scalar(field.parts[field.data[0]], kind)


def _f32_decimal(x):
    """The shortest decimal that is the same float32 (1e-5 stored as float32 reads 9.99999974738e-06; this gives 1e-05)."""
    return float(str(np.float32(x)))


def read_gguf_metadata(path):
    """All metadata key/value pairs of a GGUF file as a dict (arrays as lists)."""
    gguf = _import_gguf()
    reader = _open(gguf, os.fspath(path))
    return {k: _field_value(gguf, f) for k, f in reader.fields.items()}


def _open(gguf, path):
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # noqa: BLE001  (the reader raises ValueError, struct/IndexError, KeyError... on bad files)
        raise FileFormatError(f"{path} is not a valid GGUF file: {type(e).__name__}: {e}") from None


def load_gguf(path):
    """Load a ``llama``-architecture GGUF file.

    Returns ``(config, state)`` with the same config keys as :func:`load_llama2c` (plus ``bos_token_id`` /
    ``eos_token_id`` when the file has them) and HF Llama names → float32 arrays (F16 is widened exactly).
    ``tie_word_embeddings`` is True when the file has no ``output`` tensor, or one equal to ``token_embd``
    (then ``state["lm_head.weight"]`` is the embedding array itself). A truncated or malformed file, another
    architecture, a quantized tensor or an unknown tensor name raise ``FileFormatError``.
    """
    gguf = _import_gguf()
    path = os.fspath(path)
    reader = _open(gguf, path)
    try:
        meta = {k: _field_value(gguf, f) for k, f in reader.fields.items()}
    except Exception as e:  # noqa: BLE001
        raise FileFormatError(f"{path} is not a valid GGUF file: cannot read its metadata: {e}") from None
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise FileFormatError(f"{path}: GGUF architecture {arch!r} is not supported (only 'llama')")

    def key(name, default=None, required=True):
        k = f"{arch}.{name}"
        if k in meta:
            return meta[k]
        if required and default is None:
            raise FileFormatError(f"{path}: GGUF metadata has no {k!r}")
        return default

    heads = int(key("attention.head_count"))
    dim = int(key("embedding_length"))
    scaling = key("rope.scaling.type", "none", required=False)
    if scaling not in ("none", None):
        raise FileFormatError(f"{path}: RoPE scaling {scaling!r} is not supported")
    rope_dims = key("rope.dimension_count", dim // heads, required=False)
    if heads <= 0 or dim % heads or int(rope_dims) != dim // heads:
        raise FileFormatError(
            f"{path}: unsupported attention shape (embedding_length {dim}, head_count {heads}, "
            f"rope.dimension_count {rope_dims}); RoPE must cover the whole head"
        )

    # ---- tensors ----
    state, unknown = {}, []
    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            unknown.append(t.name)
            continue
        ttype = gguf.GGMLQuantizationType(int(t.tensor_type))
        if ttype not in (F32, F16):
            raise FileFormatError(
                f"{path}: tensor {t.name!r} has type {ttype.name}; only F32 and F16 can be loaded "
                "(dequantize it with llama.cpp first)"
            )
        ne = [int(x) for x in t.shape]
        shape = tuple(reversed(ne))  # ne = [in, out] → (out, in)
        data = np.asarray(t.data)
        if data.size != math.prod(shape) or data.dtype != (np.float32 if ttype == F32 else np.float16):
            raise FileFormatError(
                f"{path} is not a valid GGUF file: tensor {t.name!r} should hold {math.prod(shape)} "
                f"{ttype.name} values (ne={ne}) but the file has {data.size} {data.dtype} values there (truncated?)"
            )
        state[name] = np.array(data, dtype=np.float32).reshape(shape)  # a copy: nothing left on the memmap
    if unknown:
        raise FileFormatError(f"{path}: tensors not part of a llama model we can load: {', '.join(unknown)}")
    del reader

    tokens = meta.get("tokenizer.ggml.tokens")
    emb = state.get("model.embed_tokens.weight")
    vocab = len(tokens) if tokens else key("vocab_size", emb.shape[0] if emb is not None else None)
    head = state.get("lm_head.weight")
    tied = head is None or (emb is not None and np.array_equal(head, emb))
    if tied and emb is not None:
        state["lm_head.weight"] = emb
    config = {
        "vocab_size": int(vocab),
        "hidden_size": dim,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads, required=False)),
        "max_position_embeddings": int(key("context_length")),
        "rms_norm_eps": _f32_decimal(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32_decimal(key("rope.freq_base", 10000.0, required=False)),
        "tie_word_embeddings": bool(tied),
        "rope_layout": "interleaved",
    }
    for k in ("bos_token_id", "eos_token_id"):
        if f"tokenizer.ggml.{k}" in meta:
            config[k] = int(meta[f"tokenizer.ggml.{k}"])
    # in the same order as llama2.c's loader returns them
    expected = llama_expected_shapes(config)
    check_state(expected, state, f"{path} (GGUF llama tensors)")
    return config, {k: state[k] for k in expected}


__all__ = ["load_gguf", "read_gguf_metadata", "hf_name"]
