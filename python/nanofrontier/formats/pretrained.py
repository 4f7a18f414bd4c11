"""Hugging Face model directories (``config.json`` + ``model.safetensors``) ⇄ ``(config, state)``.

One side is ours: a config dict with our models' keys and a ``{name: array}`` state in our names (see
:mod:`.hf`); the other is a directory that ``transformers`` loads unchanged (``GPT2LMHeadModel`` /
``LlamaForCausalLM``). ``arch`` is ``"gpt2"`` or ``"llama"``. The models' ``save_pretrained`` and
``from_pretrained`` are one call into here::

    config, state = nf.formats.load_pretrained("out/", "llama")   # checked names and shapes
"""

import json
import os
from pathlib import Path

from .._core import load_safetensors, save_safetensors
from ..exceptions import InvalidArgumentError
from . import hf

ARCHITECTURES = ("gpt2", "llama")


def _check_arch(arch, what):
    if arch not in ARCHITECTURES:
        raise InvalidArgumentError(f"{what}: arch must be one of {ARCHITECTURES}, got {arch!r}")


def to_hf(arch, config, state):
    """Our ``(config, state)`` → HF's ``(config.json dict, state)`` for ``arch``: GPT-2's Conv1D weights
    transposed and ``transformer.``-prefixed; Llama's q/k rows in HF's ``"half"`` RoPE order; a tied head
    left out, as HF saves it."""
    _check_arch(arch, "to_hf")
    if arch == "gpt2":
        return hf.gpt2_config_to_hf(config), hf.gpt2_state_to_hf(state)
    return hf.llama_config_to_hf(config), hf.llama_state_to_hf(state, config)


def from_hf(arch, hf_config, hf_state):
    """HF's ``(config.json dict, state)`` → our ``(config, state)`` for ``arch``, every name and shape
    checked (:class:`.hf.StateMismatchError` lists what is missing, unexpected or mismatched)."""
    _check_arch(arch, "from_hf")
    if arch == "gpt2":
        config = hf.gpt2_config_from_hf(hf_config)
        state = hf.gpt2_state_from_hf(hf_state)
        expected = hf.gpt2_expected_shapes(config)
        hf.check_state(expected, state, "GPT-2 state")
        return config, {k: state[k] for k in expected}  # in model order, as for Llama
    config = hf.llama_config_from_hf(hf_config)
    return config, hf.llama_state_from_hf(hf_state, config)


def save_pretrained(directory, arch, config, state):
    """Write ``config.json`` and ``model.safetensors`` for our ``(config, state)`` into ``directory``
    (created if needed), in the Hugging Face layout of ``arch``. Each file is written atomically."""
    hf_config, hf_state = to_hf(arch, config, state)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_safetensors(str(d / "model.safetensors"), hf_state, {"format": "pt"})
    tmp = d / "config.json.tmp"
    tmp.write_text(json.dumps(hf_config, indent=2) + "\n")
    os.replace(tmp, d / "config.json")


def load_pretrained(directory, arch):
    """Read a directory written by :func:`save_pretrained` or by ``transformers`` (float32/16/bf16 weights)
    as our ``(config, state)`` for ``arch``, checked as :func:`from_hf` does."""
    _check_arch(arch, "load_pretrained")
    d = Path(directory)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d / 'config.json'} not found (expected a Hugging Face model directory)")
    state, _ = load_safetensors(str(d / "model.safetensors"))
    state = {k: v.numpy() for k, v in state.items()}
    return from_hf(arch, json.loads((d / "config.json").read_text()), state)


__all__ = ["ARCHITECTURES", "from_hf", "load_pretrained", "save_pretrained", "to_hf"]
