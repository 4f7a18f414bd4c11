"""Hugging Face layouts: config.json dicts and state-dict names for ``LlamaForCausalLM`` and ``GPT2LMHeadModel``.

Our names (what nanofrontier's models use, and what ``load_llama2c`` / ``load_gguf`` return):

* **Llama** = HF Llama names: ``model.embed_tokens.weight``, ``model.layers.{i}.input_layernorm.weight``,
  ``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.{i}.post_attention_layernorm.weight``,
  ``model.layers.{i}.mlp.{gate,up,down}_proj.weight``, ``model.norm.weight``, ``lm_head.weight``. Linear weights
  are (out, in). The one difference that can hide in the same names is the **RoPE row order** of q/k (see
  :func:`permute_rope_qk`); our configs say which one a state uses in ``config["rope_layout"]``.
* **GPT-2** = nanoGPT names: ``wte.weight``, ``wpe.weight``, ``h.{i}.ln_1.{weight,bias}``,
  ``h.{i}.attn.c_attn.{weight,bias}``, ``h.{i}.attn.c_proj.{weight,bias}``, ``h.{i}.ln_2.{weight,bias}``,
  ``h.{i}.mlp.c_fc.{weight,bias}``, ``h.{i}.mlp.c_proj.{weight,bias}``, ``ln_f.{weight,bias}``, all Linear
  weights (out, in). HF adds a ``transformer.`` prefix and stores the four Conv1D weights transposed (in, out).

Everything here is plain numpy on ``{name: array}`` dicts and plain dicts for configs.
"""

import re

import numpy as np

from ..exceptions import FileFormatError, InvalidArgumentError

ROPE_LAYOUTS = ("interleaved", "half")
"""``"interleaved"``: RoPE rotates pairs (x[2i], x[2i+1]) of each head (Meta's original Llama, llama2.c,
llama.cpp/GGUF). ``"half"``: it rotates (x[i], x[i + head_dim/2]) (Hugging Face ``rotate_half``)."""


class StateMismatchError(FileFormatError):
    """A state dict that does not fit the expected names/shapes. ``missing``, ``unexpected`` (lists of
    names) and ``mismatched`` (``{name: (expected shape, got shape)}``) say exactly what is wrong."""

    def __init__(self, message, missing=(), unexpected=(), mismatched=None):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = dict(mismatched or {})


def check_state(expected, got, what="state dict"):
    """Check that ``got`` ({name: array}) has exactly the names of ``expected`` ({name: shape}) with those
    shapes. Raises :class:`StateMismatchError` listing every missing name, every unexpected name and every
    shape mismatch (``name: expected (a, b), got (c, d)``); returns None when all is well."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = {}
    for k, shape in expected.items():
        if k in got:
            have = tuple(np.shape(got[k]))
            if have != tuple(shape):
                mismatched[k] = (tuple(shape), have)
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} does not match the expected layout:"]
    if missing:
        lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
    if mismatched:
        lines.append(f"  wrong shape ({len(mismatched)}):")
        lines += [f"    {k}: expected {e}, got {g}" for k, (e, g) in mismatched.items()]
    raise StateMismatchError("\n".join(lines), missing, unexpected, mismatched)


# ------------------------------------------------------------------------------------------------ RoPE


def permute_rope_qk(w, n_heads, layout_from, layout_to):
    """Reorder the output rows of a q or k projection weight (``(n_heads * head_dim, in)``, or a bias of
    shape ``(n_heads * head_dim,)``) between RoPE layouts. Pass ``n_heads = num_key_value_heads`` for k.

    ``interleaved -> half`` is the permutation Hugging Face's ``convert_llama_weights_to_hf`` applies to
    Meta's checkpoints: inside each head, row ``2i`` goes to row ``i`` and row ``2i + 1`` to row
    ``i + head_dim/2``. With the rows moved this way, a model that rotates halves computes exactly what the
    original computed rotating pairs (q·k is unchanged because q and k are permuted alike). ``half ->
    interleaved`` is the inverse (what llama.cpp's converter does). Returns a new C-contiguous array.
    """
    for lay in (layout_from, layout_to):
        if lay not in ROPE_LAYOUTS:
            raise InvalidArgumentError(
                f"permute_rope_qk: unknown rope layout {lay!r}; expected one of {ROPE_LAYOUTS}"
            )
    w = np.asarray(w)
    if w.ndim not in (1, 2):
        raise InvalidArgumentError(f"permute_rope_qk: expected a 1-D or 2-D array, got shape {w.shape}")
    rows = w.shape[0]
    if n_heads <= 0 or rows % n_heads or (rows // n_heads) % 2:
        raise InvalidArgumentError(
            f"permute_rope_qk: {rows} rows cannot be split into {n_heads} heads of an even head_dim"
        )
    if layout_from == layout_to:
        return np.ascontiguousarray(w.copy())
    half = rows // n_heads // 2
    rest = w.shape[1:]
    if layout_from == "interleaved":  # rows (head, i, pair) -> (head, pair, i)
        out = w.reshape(n_heads, half, 2, *rest).swapaxes(1, 2)
    else:  # rows (head, pair, i) -> (head, i, pair)
        out = w.reshape(n_heads, 2, half, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(out.reshape(w.shape))


def llama_rope_layout(state, config, layout):
    """Return ``(state, config)`` with every ``q_proj``/``k_proj`` weight permuted from
    ``config["rope_layout"]`` to ``layout`` (and the config saying so). Other arrays are shared, not copied."""
    old = config.get("rope_layout")
    if old not in ROPE_LAYOUTS:
        raise InvalidArgumentError(f"config['rope_layout'] must be one of {ROPE_LAYOUTS}, got {old!r}")
    heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}
    out = {}
    for name, arr in state.items():
        m = re.fullmatch(r"model\.layers\.\d+\.self_attn\.([qk]_proj)\.(weight|bias)", name)
        out[name] = permute_rope_qk(arr, heads[m.group(1)], old, layout) if m else arr
    return out, {**config, "rope_layout": layout}


# ------------------------------------------------------------------------------------------------ Llama


def llama_expected_shapes(config):
    """``{name: shape}`` of a Llama state dict with this config (``lm_head.weight`` always included)."""
    d, v, f = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    h, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // h
    shapes = {"model.embed_tokens.weight": (v, d)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (h * hd, d),
                p + "self_attn.k_proj.weight": (kv * hd, d),
                p + "self_attn.v_proj.weight": (kv * hd, d),
                p + "self_attn.o_proj.weight": (d, h * hd),
                p + "post_attention_layernorm.weight": (d,),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
            }
        )
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (v, d)
    return shapes


def llama_config_to_hf(config):
    """Our Llama config → a ``LlamaForCausalLM`` config.json dict. The weights must be in the ``"half"``
    RoPE layout to match it (use :func:`llama_rope_layout` / :func:`llama_state_to_hf`)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(config["hidden_size"]),
        "intermediate_size": int(config["intermediate_size"]),
        "num_attention_heads": int(config["num_attention_heads"]),
        "num_hidden_layers": int(config["num_hidden_layers"]),
        "num_key_value_heads": int(config["num_key_value_heads"]),
        "head_dim": int(config["hidden_size"]) // int(config["num_attention_heads"]),
        "rms_norm_eps": float(config["rms_norm_eps"]),
        "rope_theta": float(config["rope_theta"]),
        "rope_scaling": None,
        "vocab_size": int(config["vocab_size"]),
        "max_position_embeddings": int(config["max_position_embeddings"]),
        "tie_word_embeddings": bool(config["tie_word_embeddings"]),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(config.get("bos_token_id", 1)),
        "eos_token_id": int(config.get("eos_token_id", 2)),
        "torch_dtype": "float32",
    }


def llama_config_from_hf(hf):
    """A ``LlamaForCausalLM`` config.json dict → our Llama config (``rope_layout="half"``, HF's order).
    Features we do not implement (rope_scaling, biases, other activations) are an error, not ignored."""
    mt = hf.get("model_type", "llama")
    if mt != "llama":
        raise InvalidArgumentError(f"llama_config_from_hf: model_type is {mt!r}, expected 'llama'")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise InvalidArgumentError(f"llama_config_from_hf: hidden_act {act!r} is not supported (only 'silu')")
    if hf.get("rope_scaling"):
        raise InvalidArgumentError(
            f"llama_config_from_hf: rope_scaling {hf['rope_scaling']!r} is not supported"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise InvalidArgumentError(f"llama_config_from_hf: {flag}=True is not supported")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if hf.get("head_dim") not in (None, d // h) or d % h:
        raise InvalidArgumentError(
            f"llama_config_from_hf: head_dim {hf.get('head_dim')} != hidden_size / num_attention_heads ({d}/{h})"
        )
    config = {
        "vocab_size": int(hf["vocab_size"]),
        "hidden_size": d,
        "intermediate_size": int(hf["intermediate_size"]),
        "num_hidden_layers": int(hf["num_hidden_layers"]),
        "num_attention_heads": h,
        "num_key_value_heads": int(hf.get("num_key_value_heads") or h),
        "max_position_embeddings": int(hf.get("max_position_embeddings", 2048)),
        "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_theta": float(hf.get("rope_theta", 10000.0)),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_layout": "half",
    }
    for k in ("bos_token_id", "eos_token_id"):
        if isinstance(hf.get(k), int):
            config[k] = hf[k]
    return config


def llama_state_to_hf(state, config):
    """Our Llama state → what ``LlamaForCausalLM`` loads: q/k rows in the ``"half"`` layout, and
    ``lm_head.weight`` left out when the embeddings are tied (as HF saves it)."""
    out, _ = llama_rope_layout(state, config, "half")
    if config["tie_word_embeddings"]:
        out.pop("lm_head.weight", None)
    return out


def llama_state_from_hf(state, config):
    """A ``LlamaForCausalLM`` state → ours (layout stays ``"half"``, as ``llama_config_from_hf`` says), in
    model order, checked with :func:`check_state`. With tied embeddings ``lm_head.weight`` may be absent; it
    is then the embedding array itself. ``rotary_emb.inv_freq`` buffers of old checkpoints are dropped."""
    out = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if config["tie_word_embeddings"] and "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    expected = llama_expected_shapes(config)
    check_state(expected, out, "Llama state")
    return {k: out[k] for k in expected}  # in model order (safetensors files list names sorted)


# ------------------------------------------------------------------------------------------------ GPT-2

# the four Linear layers HF GPT-2 implements as Conv1D, with the weight stored transposed (in, out)
_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
# causal-mask buffers some HF GPT-2 checkpoints carry; they are not parameters
_GPT2_BUFFERS = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")


def gpt2_expected_shapes(config):
    """``{name: shape}`` of our GPT-2 state dict for this config (no ``lm_head``: it is ``wte``)."""
    c, v, t = config["n_embd"], config["vocab_size"], config["block_size"]
    bias = config.get("bias", True)
    shapes = {"wte.weight": (v, c), "wpe.weight": (t, c)}

    def lin(name, out, inp):
        shapes[name + ".weight"] = (out, inp)
        if bias:
            shapes[name + ".bias"] = (out,)

    def ln(name):
        shapes[name + ".weight"] = (c,)
        if bias:
            shapes[name + ".bias"] = (c,)

    for i in range(config["n_layer"]):
        p = f"h.{i}."
        ln(p + "ln_1")
        lin(p + "attn.c_attn", 3 * c, c)
        lin(p + "attn.c_proj", c, c)
        ln(p + "ln_2")
        lin(p + "mlp.c_fc", 4 * c, c)
        lin(p + "mlp.c_proj", c, 4 * c)
    ln("ln_f")
    return shapes


def gpt2_config_to_hf(config):
    """Our GPT config (vocab_size, n_embd, n_layer, n_head, block_size, bias, layer_norm_eps) → a
    ``GPT2LMHeadModel`` config.json dict. HF GPT-2 always has biases, so ``bias=False`` is an error."""
    if not config.get("bias", True):
        raise InvalidArgumentError(
            "gpt2_config_to_hf: HF GPT-2 has no bias-free variant (config has bias=False)"
        )
    hf = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": int(config["vocab_size"]),
        "n_embd": int(config["n_embd"]),
        "n_layer": int(config["n_layer"]),
        "n_head": int(config["n_head"]),
        "n_positions": int(config["block_size"]),
        "n_inner": None,
        "layer_norm_epsilon": float(config.get("layer_norm_eps", 1e-5)),
        "activation_function": "gelu_new",
        "resid_pdrop": float(config.get("dropout", 0.0)),
        "embd_pdrop": float(config.get("dropout", 0.0)),
        "attn_pdrop": float(config.get("dropout", 0.0)),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    for k in ("bos_token_id", "eos_token_id"):
        if k in config:
            hf[k] = int(config[k])
    return hf


def gpt2_config_from_hf(hf):
    """A ``GPT2LMHeadModel`` config.json dict → our GPT config. Only the tanh GELU ('gelu_new') and
    the standard 4x MLP are supported; anything else is an error."""
    mt = hf.get("model_type", "gpt2")
    if mt != "gpt2":
        raise InvalidArgumentError(f"gpt2_config_from_hf: model_type is {mt!r}, expected 'gpt2'")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise InvalidArgumentError(
            f"gpt2_config_from_hf: activation_function {act!r} is not supported (only the tanh GELU 'gelu_new')"
        )
    c = int(hf.get("n_embd", hf.get("hidden_size", 768)))
    if hf.get("n_inner") not in (None, 4 * c):
        raise InvalidArgumentError(f"gpt2_config_from_hf: n_inner {hf['n_inner']} is not 4 * n_embd")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise InvalidArgumentError(f"gpt2_config_from_hf: {flag}=True is not supported")
    if hf.get("scale_attn_weights") is False:
        raise InvalidArgumentError("gpt2_config_from_hf: scale_attn_weights=False is not supported")
    config = {
        "vocab_size": int(hf.get("vocab_size", 50257)),
        "n_embd": c,
        "n_layer": int(hf.get("n_layer", 12)),
        "n_head": int(hf.get("n_head", 12)),
        "block_size": int(hf.get("n_positions", hf.get("n_ctx", 1024))),
        "bias": True,
        "layer_norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
    }
    for k in ("bos_token_id", "eos_token_id"):
        if isinstance(hf.get(k), int):
            config[k] = hf[k]
    return config


def gpt2_state_to_hf(state):
    """Our GPT-2 state → HF ``GPT2LMHeadModel`` names: ``transformer.`` prefix, Conv1D weights transposed to
    (in, out). ``lm_head.weight`` is left out when it is absent or equal to ``wte.weight`` (tied, as HF saves
    it); an untied one is kept."""
    out = {}
    for name, arr in state.items():
        if name == "lm_head.weight":
            continue
        arr = np.asarray(arr)
        out["transformer." + name] = np.ascontiguousarray(arr.T) if _CONV1D.fullmatch(name) else arr
    head = state.get("lm_head.weight")
    if head is not None and not np.array_equal(np.asarray(head), np.asarray(state.get("wte.weight"))):
        out["lm_head.weight"] = np.asarray(head)
    return out


def gpt2_state_from_hf(state):
    """An HF GPT-2 state (with or without the ``transformer.`` prefix, with or without ``lm_head.weight``)
    → ours: Conv1D weights transposed back to (out, in), mask buffers (``attn.bias``/``attn.masked_bias``)
    dropped, and ``lm_head.weight`` dropped when it equals ``wte.weight`` (kept when untied)."""
    out = {}
    head = None
    for name, arr in state.items():
        if name == "lm_head.weight":
            head = arr
            continue
        key = name.removeprefix("transformer.")
        if _GPT2_BUFFERS.fullmatch(key):
            continue
        arr = np.asarray(arr)
        out[key] = np.ascontiguousarray(arr.T) if _CONV1D.fullmatch(key) else arr
    if head is not None and not np.array_equal(np.asarray(head), out.get("wte.weight")):
        out["lm_head.weight"] = np.asarray(head)
    return out


__all__ = [
    "ROPE_LAYOUTS",
    "StateMismatchError",
    "check_state",
    "permute_rope_qk",
    "llama_rope_layout",
    "llama_expected_shapes",
    "llama_config_to_hf",
    "llama_config_from_hf",
    "llama_state_to_hf",
    "llama_state_from_hf",
    "gpt2_expected_shapes",
    "gpt2_config_to_hf",
    "gpt2_config_from_hf",
    "gpt2_state_to_hf",
    "gpt2_state_from_hf",
]
