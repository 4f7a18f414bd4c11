"""Text generators for the agent loop, and ReAct traces as training rows.

- :class:`ModelGenerator`: one of our language models (``nf.models.GPT`` / ``Llama``) as a batched text →
  text generator: encode, ``model.generate`` (greedy by default, KV cache) until a stop token (the
  ``Observation`` token, end of text) or ``max_new_tokens``, decode.
- :func:`trace_example`: a prompt and its ReAct completion as ``(prompt_ids, completion_ids, loss_mask)``
  for :class:`nanofrontier.rl.SFTTrainer`: the mask is 0 on every token a tool wrote (the observations),
  so the model learns to act and to read observations, never to invent them.
"""

import numpy as np

from ..exceptions import InvalidArgumentError
from .react import STOP, observation_spans


def _encode_with_offsets(tokenizer, text):
    """Token ids of ``text`` and the character offset where each starts (tokenizers encode whole texts;
    the offsets come from decoding each token, so ``decode(encode(t)) == t`` is required)."""
    ids = tokenizer.encode(text)
    starts, pos = [], 0
    for t in ids:
        starts.append(pos)
        pos += len(tokenizer.decode([t]))
    if pos != len(text):
        raise InvalidArgumentError("trace_example: the tokenizer does not round-trip this text "
                                   "(decode(encode(text)) != text), so observation tokens cannot be located")
    return ids, starts


def trace_example(tokenizer, prompt, completion, eos_id=None):
    """``(prompt_ids, completion_ids, loss_mask)`` of one ReAct row. ``completion`` is the trace after the
    prompt (Thought / Action / Observation lines and the Answer); ``eos_id`` is appended (trained) when
    given. ``loss_mask[i]`` is 0 where completion token i starts inside an observation (see
    :func:`~nanofrontier.agents.react.observation_spans`), else 1. The whole text is encoded at once, so
    the tokens are exactly those the agent loop will feed the model."""
    ids, starts = _encode_with_offsets(tokenizer, prompt + completion)
    p_ids = tokenizer.encode(prompt)
    if ids[:len(p_ids)] != p_ids:
        raise InvalidArgumentError("trace_example: the prompt's tokens change when the completion follows; "
                                   "end the prompt on a token boundary (e.g. a newline)")
    off = len(prompt)
    spans = [(a + off, b + off) for a, b in observation_spans(completion)]
    mask = [0 if any(a <= s < b for a, b in spans) else 1 for s in starts[len(p_ids):]]
    c_ids = ids[len(p_ids):]
    if eos_id is not None:
        c_ids, mask = c_ids + [int(eos_id)], mask + [1]
    return p_ids, c_ids, mask


class ModelGenerator:
    """A language model as the agent's (batched) generator. ``tokenizer``: ``encode``/``decode``;
    ``stop_tokens``: ids that end a reply (default: the tokenizer's encoding of ``"Observation"`` when that
    is one token, and its ``eos_id`` when it has one). ``temperature=0`` is greedy; otherwise ``seed`` makes
    the replies reproducible. Each call writes up to ``max_new_tokens``, fewer when the longest prompt
    leaves less room in the model's context; when that would be fewer than ``min_new_tokens`` (default
    16), the prompts keep only their last tokens. A model with learned positions then sees the transcript
    shifted, which it was not trained on: give it a context longer than its longest trace."""

    batched = True

    def __init__(self, model, tokenizer, *, max_new_tokens=64, min_new_tokens=None, temperature=0.0,
                 stop_tokens=None, seed=0):
        if not hasattr(model, "generate") or not hasattr(model, "_max_len"):
            raise TypeError(f"model must be an nf.models.GPT or Llama, got {type(model).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if max_new_tokens >= model._max_len():
            raise InvalidArgumentError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                                       f"model's context of {model._max_len()}")
        if min_new_tokens is None:
            min_new_tokens = min(16, max_new_tokens)
        if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or \
                not 1 <= min_new_tokens <= max_new_tokens:
            raise InvalidArgumentError(f"min_new_tokens must be an int in [1, max_new_tokens], got "
                                       f"{min_new_tokens!r}")
        if stop_tokens is None:
            stop_tokens = []
            obs = tokenizer.encode(STOP)
            if len(obs) == 1:
                stop_tokens.append(obs[0])
            if getattr(tokenizer, "eos_id", None) is not None:
                stop_tokens.append(int(tokenizer.eos_id))
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.min_new_tokens = max_new_tokens, min_new_tokens
        self.temperature = float(temperature)
        self.stop_tokens, self.seed = [int(t) for t in stop_tokens], seed
        self.calls = 0

    def __call__(self, prompts):
        single = isinstance(prompts, str)
        rows = [prompts] if single else list(prompts)
        if not rows:
            return []
        ctx = self.model._max_len()
        ids = [self.tokenizer.encode(p) for p in rows]
        # as many new tokens as asked for, as far as the context allows; a prompt that leaves no room for
        # min_new_tokens keeps only its last tokens (a model with learned positions then sees them shifted)
        longest = max(len(i) for i in ids)
        n_new = min(self.max_new_tokens, ctx - longest)
        if n_new < self.min_new_tokens:
            n_new = min(self.max_new_tokens, ctx - 1)
            ids = [i[-(ctx - n_new):] for i in ids]
        was = self.model.training
        self.model.eval()
        try:
            seed = None if self.seed is None else [self.seed + 7919 * self.calls + r for r in range(len(ids))]
            tokens, _ = self.model.generate(ids, n_new, temperature=self.temperature, seed=seed,
                                            stop_tokens=self.stop_tokens or None)
        finally:
            self.model.train(was)
        self.calls += 1
        outs = [self.tokenizer.decode(np.asarray(t, np.int64).tolist()) for t in tokens]
        return outs[0] if single else outs

    def __repr__(self):
        return (f"ModelGenerator(max_new_tokens={self.max_new_tokens}, temperature={self.temperature}, "
                f"stop_tokens={self.stop_tokens})")
