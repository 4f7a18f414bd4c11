"""Checkpoint formats: files ⇄ ``({name: array}, config dict)``. Models come separately; this is only the map.

* :func:`save_safetensors` / :func:`load_safetensors` — Hugging Face's safetensors (Rust; atomic saves;
  reads F32/F16/BF16/F64 as float32).
* :func:`load_llama2c` — Karpathy's llama2.c ``.bin`` (legacy v0).
* :func:`load_gguf` — llama.cpp's GGUF, ``llama`` architecture, F32/F16 (needs ``pip install 'nanofrontier[formats]'``).
* :mod:`.hf` — Hugging Face config.json and state-dict layouts for Llama and GPT-2, RoPE q/k row orders,
  and :func:`check_state`.
* :func:`save_pretrained` / :func:`load_pretrained` — a Hugging Face model directory (config.json +
  model.safetensors) ⇄ our ``(config, state)``; what the models' ``save_pretrained``/``from_pretrained`` call.

Both Llama loaders return HF Llama names and the same config keys, with ``rope_layout="interleaved"``::

    config, state = nf.formats.load_gguf(nf.data.get_file("stories260K/stories260K.gguf"))
"""

from .._core import load_safetensors, save_safetensors
from . import hf
from .gguf import load_gguf, read_gguf_metadata
from .hf import (
    StateMismatchError,
    check_state,
    gpt2_config_from_hf,
    gpt2_config_to_hf,
    gpt2_expected_shapes,
    gpt2_state_from_hf,
    gpt2_state_to_hf,
    llama_config_from_hf,
    llama_config_to_hf,
    llama_expected_shapes,
    llama_rope_layout,
    llama_state_from_hf,
    llama_state_to_hf,
    permute_rope_qk,
)
from .llama2c import load_llama2c, read_llama2c_config
from .pretrained import load_pretrained, save_pretrained

__all__ = [
    "save_safetensors",
    "load_safetensors",
    "load_llama2c",
    "read_llama2c_config",
    "load_gguf",
    "read_gguf_metadata",
    "save_pretrained",
    "load_pretrained",
    "hf",
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
