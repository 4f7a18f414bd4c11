"""Rollouts: sample completions of prompts with the policy and pack them for training.

One call samples ``num_completions`` (G) completions of every prompt in a single batched KV-cache
``generate_batch`` call and repacks them as the post-training code wants them, prompt then completion in
one right-padded row::

    ro = nf.rl.rollout(model, [[1, 5, 2], [7]], num_completions=4, max_new_tokens=16, seed=0)
    ro.input_ids        # (8, T) int64: rows 0..3 continue prompt 0, rows 4..7 prompt 1
    ro.completion_mask  # (8, T) bool: the sampled tokens (the ones scored)
    ro.logprobs         # (8, T-1) float32: column j = log p(input_ids[:, j+1]) when it was sampled
    ro.truncated        # (8,) bool: hit max_new_tokens without a stop token

Rows are prompt-major (prompt i's completions are rows i*G .. i*G+G-1), so a GRPO group is a run of G rows.
"""

from dataclasses import dataclass

import numpy as np

from ..exceptions import InvalidArgumentError


@dataclass
class Rollout:
    """G completions per prompt, right-padded: prompt tokens, then completion tokens, then padding.

    - ``input_ids`` (N, T) int64, ``attention_mask`` (N, T) bool (prompt + completion tokens),
      ``completion_mask`` (N, T) bool (the completion tokens), N = number of prompts × G.
    - ``logprobs`` (N, T-1) float32: column j holds log p(input_ids[:, j+1]) under the model that sampled it
      (temperature 1, unfiltered, as ``generate_batch`` reports), 0 where ``completion_mask[:, 1:]`` is False.
    - ``completions``: the sampled token ids of each row (a list per row, ending with its stop token if
      it met one); ``lengths`` (N,) their lengths; ``prompt_lengths`` (N,).
    - ``truncated`` (N,) bool: the row used all ``max_new_tokens`` without sampling a stop token.
    - ``prompt_index`` (N,) int64: which prompt (position in the list given) each row continues.
    - ``num_completions``: G; ``prompts``: the prompts as given (token-id lists).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    completion_mask: np.ndarray
    logprobs: np.ndarray
    completions: list
    lengths: np.ndarray
    prompt_lengths: np.ndarray
    truncated: np.ndarray
    prompt_index: np.ndarray
    num_completions: int
    prompts: list

    def __len__(self):
        return len(self.completions)

    @property
    def token_mask(self):
        """``completion_mask[:, 1:]``: the mask of every (N, T-1) per-token quantity."""
        return self.completion_mask[:, 1:]

    def __repr__(self):
        n, t = self.input_ids.shape
        return (f"Rollout({len(self.prompts)} prompts x {self.num_completions} completions, input_ids "
                f"({n}, {t}), mean length {self.lengths.mean() if n else 0:.1f}, truncated "
                f"{int(self.truncated.sum())}/{n})")


def _int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise InvalidArgumentError(f"rollout: {name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def context_length(model):
    """The longest sequence ``model`` takes (its number of positions)."""
    if hasattr(model, "_max_len"):
        return int(model._max_len())
    raise InvalidArgumentError(f"rollout: {type(model).__name__} does not say its context length")


def vocab_size(model):
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def check_prompts(prompts, vocab=None, what="rollout"):
    """``prompts`` as a list of lists of Python ints, each checked (non-empty, ids in the vocabulary)."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 2:
        prompts = list(prompts)
    if not isinstance(prompts, (list, tuple)) or not prompts:
        got = type(prompts).__name__ if not isinstance(prompts, (list, tuple)) else "an empty list"
        raise InvalidArgumentError(f"{what}: prompts must be a non-empty list of token-id lists, got {got}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (int, np.integer)):
            raise InvalidArgumentError(
                f"{what}: prompts must be a list of token-id lists; element {i} is the int {p} (for one "
                "prompt write [[...]])")
        if not isinstance(p, (list, tuple, np.ndarray)):
            raise InvalidArgumentError(f"{what}: prompt {i} must be a list of token ids, got "
                                       f"{type(p).__name__}")
        arr = np.asarray(p)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidArgumentError(f"{what}: prompt {i} must be a flat list of integer token ids")
        if arr.size == 0:
            raise InvalidArgumentError(f"{what}: prompt {i} is empty (every prompt needs at least one token, "
                                       "e.g. BOS)")
        if vocab is not None and (arr.min() < 0 or arr.max() >= vocab):
            bad = int(arr[(arr < 0) | (arr >= vocab)][0])
            raise InvalidArgumentError(f"{what}: prompt {i} holds token id {bad}, outside the model's "
                                       f"vocabulary [0, {vocab})")
        out.append([int(t) for t in arr])
    return out


def rollout(model, prompts, num_completions=1, max_new_tokens=None, temperature=1.0, top_k=None, top_p=None,
            stop_tokens=None, seed=None, pad_token_id=0):
    """Sample ``num_completions`` completions of each prompt (one batched KV-cache call) → :class:`Rollout`.

    ``prompts``: a list of token-id lists (unequal lengths are fine). Every prompt plus ``max_new_tokens``
    must fit in the model's context (refused otherwise, naming the prompt). ``temperature`` (0 = greedy),
    ``top_k``, ``top_p`` and ``stop_tokens`` (ids that end a completion; the stop token is part of it) are
    those of ``generate_batch``. ``seed``: an int gives every row its own generator derived from it (row r
    draws from the r-th number of ``Rng(seed)``), so the same seed, prompts and model give the same
    rollout; None draws from the global generator. ``pad_token_id`` fills the padding of ``input_ids``."""
    g = _int("num_completions", num_completions, 1)
    if max_new_tokens is None:
        raise InvalidArgumentError("rollout: give max_new_tokens (the longest completion)")
    max_new = _int("max_new_tokens", max_new_tokens, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise InvalidArgumentError(f"rollout: temperature must be a number >= 0, got {temperature!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InvalidArgumentError(f"rollout: seed must be an int >= 0 or None, got {seed!r}")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)):
        raise InvalidArgumentError(f"rollout: pad_token_id must be an int, got {pad_token_id!r}")
    vocab = vocab_size(model)
    prompts = check_prompts(prompts, vocab)
    ctx = context_length(model)
    for i, p in enumerate(prompts):
        if len(p) >= ctx:
            raise InvalidArgumentError(
                f"rollout: prompt {i} has {len(p)} tokens, which leaves no room in the model's context of "
                f"{ctx} positions")
        if len(p) + max_new > ctx:
            raise InvalidArgumentError(
                f"rollout: prompt {i} has {len(p)} tokens, so max_new_tokens={max_new} would need "
                f"{len(p) + max_new} positions; the model has {ctx} (use max_new_tokens <= {ctx - len(p)})")
    stops = None
    if stop_tokens is not None:
        stops = [stop_tokens] if isinstance(stop_tokens, (int, np.integer)) else list(stop_tokens)
        for t in stops:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or (vocab and not 0 <= t < vocab):
                raise InvalidArgumentError(f"rollout: stop token {t!r} is not a token id of the model "
                                           f"(vocabulary [0, {vocab}))")
        stops = [int(t) for t in stops]

    rows = [p for p in prompts for _ in range(g)]  # prompt-major
    gen = model.generate_batch(rows, max_new_tokens=max_new, temperature=float(temperature), top_k=top_k,
                               top_p=top_p, seed=None if seed is None else int(seed), stop_tokens=stops,
                               pad_token_id=pad_token_id)
    completions = [gen.tokens[r, :gen.lengths[r]].tolist() for r in range(len(rows))]
    logprobs = [gen.logprobs[r, :gen.lengths[r]] for r in range(len(rows))]
    return pack_rollout(prompts, g, completions, logprobs, max_new, stops, pad_token_id)


def pack_rollout(prompts, g, completions, logprobs, max_new_tokens, stop_tokens, pad_token_id):
    """The :class:`Rollout` of ``g`` sampled completions per prompt (rows prompt-major): ``completions``
    a token-id list per row, ``logprobs`` a float32 array per row (one log-prob per completion token).
    What ``rollout`` returns after sampling, and what ``nf.rl.RayRollouts`` assembles from its workers."""
    rows = [p for p in prompts for _ in range(g)]
    n = len(rows)
    plens = np.array([len(p) for p in rows], np.int64)
    lengths = np.array([len(c) for c in completions], np.int64)
    t = int((plens + lengths).max())
    input_ids = np.full((n, t), pad_token_id, np.int64)
    attention_mask = np.zeros((n, t), bool)
    completion_mask = np.zeros((n, t), bool)
    logprobs_out = np.zeros((n, t - 1), np.float32)
    for r in range(n):
        lp, lc = plens[r], lengths[r]
        input_ids[r, :lp] = rows[r]
        input_ids[r, lp:lp + lc] = completions[r]
        attention_mask[r, :lp + lc] = True
        completion_mask[r, lp:lp + lc] = True
        logprobs_out[r, lp - 1:lp - 1 + lc] = logprobs[r]  # column j scores token j+1
    stop_set = set(stop_tokens or ())
    truncated = np.array([len(c) == max_new_tokens and c[-1] not in stop_set for c in completions], bool)
    return Rollout(input_ids, attention_mask, completion_mask, logprobs_out, completions, lengths, plens,
                   truncated, np.repeat(np.arange(len(prompts), dtype=np.int64), g), g, prompts)


__all__ = ["Rollout", "rollout"]
