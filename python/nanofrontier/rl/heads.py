"""Scalar heads on a language model's trunk: a value model (one number per token, for PPO's critic) and
a reward model (one number per sequence, read at its last real token)::

    rm = nf.rl.RewardModel(nf.models.GPT(cfg))
    scores = rm(batch.input_ids, batch.attention_mask)      # (B,)
    vm = nf.rl.ValueModel(policy.copy())                    # or ValueModel.from_reward_model(rm)
    values = vm(batch.input_ids)                            # (B, T)

The head is ``score``, an ``nf.nn.Linear(C, 1, bias=False)`` on ``model.hidden(...)`` (the trunk after
its final norm); the trunk's language-model head is kept but unused. Both are ``nf.nn.Module``s whose
parameters are the trunk's (``model.*``) and ``score.weight``, so optimizers, ``nf.checkpoint`` and
``nf.train.Trainer`` work on them as on the model. ``save_pretrained`` writes the Hugging Face layout of
``GPT2ForSequenceClassification`` / ``LlamaForSequenceClassification`` (trunk under ``transformer.`` /
``model.``, ``score.weight`` of shape (1, C), ``num_labels=1``).
"""

import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import _core
from .._core import Tensor
from ..exceptions import InvalidArgumentError, ShapeError
from ..formats import pretrained
from ..models import GPT, Llama, _CausalLM
from ..nn import Linear, Module

_HF_CLASS = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}
_MODELS = {"gpt2": GPT, "llama": Llama}


def _width(config):
    return config.n_embd if hasattr(config, "n_embd") else config.hidden_size


def _linear(weight):
    """A bias-free Linear holding exactly ``weight`` (out, in), without drawing from the generator."""
    lin = Linear.__new__(Linear)
    lin.out_features, lin.in_features = weight.shape
    lin.weight = Tensor(np.asarray(weight, np.float32), requires_grad=True)
    lin.bias = None
    return lin


def _ids(input_ids, model, what):
    ids = input_ids.numpy() if isinstance(input_ids, Tensor) else np.asarray(input_ids)
    if ids.ndim != 2:
        raise ShapeError(f"{what}: input_ids must be (B, T), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{what}: input_ids must be integer token ids, got dtype {ids.dtype}")
    ctx = model._max_len()
    if ids.shape[1] > ctx:
        raise ShapeError(f"{what}: rows of {ids.shape[1]} tokens are longer than the model's context "
                         f"({ctx} positions)")
    return np.ascontiguousarray(ids, np.int64)


class _ScalarHead(Module):
    """The trunk ``model`` plus ``score``: hidden states (B, T, C) → (B, T) scalars."""

    def __init__(self, model, _weight=None):
        if not isinstance(model, _CausalLM):
            raise TypeError(f"{type(self).__name__} needs an nf.models.GPT or Llama trunk, got "
                            f"{type(model).__name__}")
        c = _width(model.config)
        if _weight is None:  # small normal init from the global seeded generator
            _weight = _core.randn(1, c, std=1.0 / math.sqrt(c + 1)).numpy()
        self.model = model
        self.score = _linear(_weight)
        self.training = model.training

    @property
    def config(self):
        """The trunk's config (so ``nf.checkpoint`` records it)."""
        return self.model.config

    def _max_len(self):
        return self.model._max_len()

    def token_scores(self, input_ids):
        """(B, T): the head at every position of ``input_ids`` (B, T)."""
        ids = _ids(input_ids, self.model, type(self).__name__)
        b, t = ids.shape
        return self.score(self.model.hidden(ids)).reshape(b, t)

    def copy(self):
        """An independent copy (own trunk and head weights), in the same train/eval mode."""
        new = type(self)(self.model.copy(), _weight=self.score.weight.numpy())
        new.train(self.training)
        return new

    def freeze(self):
        """Stop tracking gradients for every parameter (returns self)."""
        for p in self.parameters():
            p.requires_grad = False
        return self

    def extra_repr(self):
        return f"width={self.score.in_features}"

    # ---- Hugging Face layout ----
    def save_pretrained(self, directory, pad_token_id=None):
        """Write ``config.json`` + ``model.safetensors`` as ``transformers`` saves a
        ``GPT2ForSequenceClassification`` / ``LlamaForSequenceClassification`` with ``num_labels=1``.
        ``pad_token_id`` goes into config.json (``transformers`` needs it to find the last real token
        of padded rows; ours reads ``attention_mask`` instead)."""
        arch = self.model._ARCH
        hf_config, hf_state = pretrained.to_hf(arch, asdict(self.model.config), self.model.state_dict())
        hf_config["architectures"] = [_HF_CLASS[arch]]
        hf_config.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        if pad_token_id is not None:
            hf_config["pad_token_id"] = int(pad_token_id)
        hf_state["score.weight"] = self.score.weight.numpy()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _core.save_safetensors(str(d / "model.safetensors"), hf_state, {"format": "pt"})
        tmp = d / "config.json.tmp"
        tmp.write_text(json.dumps(hf_config, indent=2) + "\n")
        os.replace(tmp, d / "config.json")

    @classmethod
    def from_pretrained(cls, directory):
        """Load a directory written by :meth:`save_pretrained` or by ``transformers`` (a
        ``*ForSequenceClassification`` with one label). The global generator is left untouched. An
        untied Llama saved by ``transformers`` has no ``lm_head`` (the classifier does not use one): it is
        filled with zeros."""
        d = Path(directory)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{d / 'config.json'} not found (expected a Hugging Face model "
                                    "directory)")
        hf_config = json.loads((d / "config.json").read_text())
        arch = hf_config.get("model_type")
        if arch not in _MODELS:
            raise InvalidArgumentError(f"{cls.__name__}.from_pretrained: model_type must be one of "
                                       f"{sorted(_MODELS)}, got {arch!r} in {d / 'config.json'}")
        state, _ = _core.load_safetensors(str(d / "model.safetensors"))
        state = {k: v.numpy() for k, v in state.items()}
        if "score.weight" not in state:
            raise InvalidArgumentError(f"{d}: no score.weight (not a sequence-classification checkpoint)")
        weight = state.pop("score.weight")
        untied = arch == "llama" and not hf_config.get("tie_word_embeddings", True)
        if untied and "lm_head.weight" not in state:
            shape = (hf_config["vocab_size"], hf_config["hidden_size"])
            state["lm_head.weight"] = np.zeros(shape, np.float32)
        cfg, trunk_state = pretrained.from_hf(arch, hf_config, state)
        trunk = _MODELS[arch]._from_state(cfg, trunk_state)
        c = _width(trunk.config)
        if weight.shape != (1, c):
            raise ShapeError(f"{d}: score.weight has shape {weight.shape}, expected (1, {c}) "
                             "(one label on the trunk's width)")
        return cls(trunk, _weight=weight)


class ValueModel(_ScalarHead):
    """A value head: ``vm(input_ids)`` → (B, T) values, one per position (PPO's critic). With causal
    attention the value at position t depends only on tokens 0..t, so right padding changes nothing."""

    def forward(self, input_ids):
        return self.token_scores(input_ids)

    @classmethod
    def from_reward_model(cls, reward_model):
        """A value model that starts as a copy of a trained ``nf.rl.RewardModel`` (its trunk and ``score``
        head, copied, in the same train/eval mode), as InstructGPT initialised its value function: the
        critic's first estimates are then the reward model's scores of each prefix, not random numbers.
        The global generator is left untouched."""
        if not isinstance(reward_model, RewardModel):
            raise InvalidArgumentError(f"ValueModel.from_reward_model needs an nf.rl.RewardModel, got "
                                       f"{type(reward_model).__name__}")
        new = cls(reward_model.model.copy(), _weight=reward_model.score.weight.numpy())
        new.train(reward_model.training)
        return new


class RewardModel(_ScalarHead):
    """A reward head: ``rm(input_ids, attention_mask)`` → (B,) scores, each read at its row's last
    ``attention_mask`` token (the last column when no mask is given). Later (padding) tokens change
    nothing: causal attention keeps them out of that position."""

    def forward(self, input_ids, attention_mask=None):
        values = self.token_scores(input_ids)
        b, t = values.shape
        if attention_mask is None:
            last = np.full(b, t - 1)
        else:
            m = attention_mask.numpy() if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
            if m.shape != (b, t):
                raise ShapeError(f"RewardModel: attention_mask has shape {m.shape} but input_ids have "
                                 f"shape {(b, t)}")
            m = m.astype(bool)
            empty = np.flatnonzero(~m.any(1))
            if empty.size:
                raise InvalidArgumentError(f"RewardModel: row {int(empty[0])} of attention_mask has no "
                                           "real token")
            last = t - 1 - np.argmax(m[:, ::-1], axis=1)
        pick = np.zeros((b, t), np.float32)
        pick[np.arange(b), last] = 1.0
        return (values * pick).sum(-1)


__all__ = ["RewardModel", "ValueModel"]
