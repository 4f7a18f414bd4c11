"""Prompt + completion rows for post-training, and their log-probs under a model.

Every trainer (SFT, reward model, DPO, PPO, GRPO) scores sequences laid out the same way: one row per
example, the prompt then the completion, RIGHT-padded::

    batch = nf.rl.pack([[5, 6], [7]], [[8, 9, 10], [11]], pad_token_id=0)
    batch.input_ids        # [[5, 6, 8, 9, 10], [7, 11, 0, 0, 0]]         (B, T) int64
    batch.attention_mask   # [[1, 1, 1, 1, 1],  [1, 1, 0, 0, 0]]          (B, T) bool
    batch.completion_mask  # [[0, 0, 1, 1, 1],  [0, 1, 0, 0, 0]]          (B, T) bool
    lp = nf.rl.sequence_logprobs(model, batch.input_ids, batch.completion_mask)   # (B,) sum of log p

Padding comes after every real token, so causal attention never lets a real token see it and positions
start at 0 in every row. Per-token quantities are (B, T-1): column j scores token ``input_ids[:, j+1]``,
and their mask is ``completion_mask[:, 1:]``.
"""

from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .._core import Tensor
from ..exceptions import InvalidArgumentError, ShapeError

REDUCTIONS = ("sum", "mean", "none")


@dataclass
class Packed:
    """Right-padded rows of prompt + completion (see the module docstring); ``prompt_lengths`` and
    ``completion_lengths`` are (B,) int64."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    completion_mask: np.ndarray
    prompt_lengths: np.ndarray
    completion_lengths: np.ndarray

    def __len__(self):
        return len(self.input_ids)

    @property
    def token_mask(self):
        """``completion_mask[:, 1:]``: the mask of the (B, T-1) per-token quantities."""
        return self.completion_mask[:, 1:]


def _token_list(x, what):
    """One sequence of token ids as a list of Python ints (a list, tuple or 1-D integer array)."""
    if isinstance(x, Tensor):
        x = x.numpy()
    if isinstance(x, np.ndarray):
        if x.ndim != 1 or (x.size and x.dtype.kind not in "iu"):
            raise InvalidArgumentError(f"{what} must be a 1-D array of integer token ids, got "
                                       f"shape {x.shape} dtype {x.dtype}")
        x = x.tolist()
    if not isinstance(x, (list, tuple)):
        raise TypeError(f"{what} must be a list of token ids, got {type(x).__name__}")
    out = []
    for t in x:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"{what} must hold integer token ids, found {t!r} ({type(t).__name__})")
        if t < 0:
            raise InvalidArgumentError(f"{what} holds a negative token id {int(t)}")
        out.append(int(t))
    return out


def pack(prompts, completions, pad_token_id=0, max_length=None):
    """Lay out ``prompts[i] + completions[i]`` as row i of right-padded arrays (a :class:`Packed`).

    ``prompts``, ``completions``: equally long lists of token-id lists (or 1-D int arrays). Every prompt
    needs at least one token (the first token of a row is never scored); a completion may be empty (its
    row then scores nothing). ``pad_token_id`` fills the padding (any valid id: it is never attended to
    by a real token). ``max_length``: refuse a row longer than this (give the model's context length),
    naming the row."""
    if not isinstance(prompts, (list, tuple)) or not isinstance(completions, (list, tuple)):
        raise TypeError(f"pack: prompts and completions must be lists of token-id lists, got "
                        f"{type(prompts).__name__} and {type(completions).__name__}")
    if len(prompts) != len(completions):
        raise InvalidArgumentError(f"pack: {len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise InvalidArgumentError("pack: no rows (prompts is empty)")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, (int, np.integer)) or pad_token_id < 0:
        raise InvalidArgumentError(f"pack: pad_token_id must be an integer id >= 0, got {pad_token_id!r}")
    whole = isinstance(max_length, (int, np.integer)) and not isinstance(max_length, bool)
    if max_length is not None and not (whole and max_length >= 2):
        raise InvalidArgumentError(f"pack: max_length must be an integer >= 2, got {max_length!r}")
    rows, plens, clens = [], [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p, c = _token_list(p, f"pack: prompt {i}"), _token_list(c, f"pack: completion {i}")
        if not p:
            raise InvalidArgumentError(f"pack: prompt {i} is empty (a row needs at least one prompt token)")
        if max_length is not None and len(p) + len(c) > max_length:
            raise ShapeError(f"pack: row {i} has {len(p)} prompt + {len(c)} completion = {len(p) + len(c)} "
                             f"tokens, more than max_length={max_length} (the model's context)")
        rows.append(p + c)
        plens.append(len(p))
        clens.append(len(c))
    b, t = len(rows), max(len(r) for r in rows)
    ids = np.full((b, t), int(pad_token_id), np.int64)
    attn = np.zeros((b, t), bool)
    comp = np.zeros((b, t), bool)
    for i, (r, p) in enumerate(zip(rows, plens)):
        ids[i, :len(r)] = r
        attn[i, :len(r)] = True
        comp[i, p:len(r)] = True
    return Packed(ids, attn, comp, np.array(plens, np.int64), np.array(clens, np.int64))


def _bool_mask(mask, shape, what):
    m = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.shape != shape:
        raise ShapeError(f"{what} has shape {m.shape} but input_ids have shape {shape}")
    if m.dtype != bool:
        if m.size and not np.isin(m, (0, 1)).all():
            raise InvalidArgumentError(f"{what} must hold only 0/1 (or False/True)")
        m = m.astype(bool)
    return m


def _context_length(model):
    return model._max_len() if hasattr(model, "_max_len") else None


def sequence_logprobs(model, input_ids, completion_mask, reduce="sum"):
    """Log-probs of the completion tokens under ``model``, in one forward call, differentiable.

    ``input_ids`` (B, T) int, ``completion_mask`` (B, T) bool (as :func:`pack` makes them). ``reduce``:
    ``"sum"`` → (B,) log p(completion | prompt); ``"mean"`` → (B,) the per-token mean; ``"none"`` →
    (B, T-1), column j = log p(input_ids[:, j+1] | input_ids[:, :j+1]) where ``completion_mask[:, j+1]``
    and 0 elsewhere. Positions outside the mask give 0 and get no gradient; a row with no completion
    tokens gives 0 for ``"sum"`` and ``"mean"`` (never NaN). The model's train/eval mode applies (dropout)."""
    if reduce not in REDUCTIONS:
        raise InvalidArgumentError(f"sequence_logprobs: reduce must be one of {REDUCTIONS}, got {reduce!r}")
    ids = input_ids.numpy() if isinstance(input_ids, Tensor) else np.asarray(input_ids)
    if ids.ndim != 2:
        raise ShapeError(f"sequence_logprobs: input_ids must be (B, T), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu" and not np.array_equal(ids, np.round(ids)):
        raise InvalidArgumentError("sequence_logprobs: input_ids must be integer token ids")
    ids = ids.astype(np.int64)
    t = ids.shape[1]
    if t < 2:
        raise ShapeError(f"sequence_logprobs: rows need at least 2 tokens (a prompt token, then a scored "
                         f"one), got T={t}")
    ctx = _context_length(model)
    if ctx is not None and t > ctx:
        raise ShapeError(f"sequence_logprobs: rows of {t} tokens are longer than the model's context "
                         f"({ctx} positions)")
    mask = _bool_mask(completion_mask, ids.shape, "sequence_logprobs: completion_mask")[:, 1:]
    targets = np.where(mask, ids[:, 1:], -100)
    logits = model.head(model.hidden(np.ascontiguousarray(ids[:, :-1])))
    lp = F.token_logprobs(logits, targets, ignore_index=-100)  # (B, T-1); 0 and no gradient where masked
    if reduce == "none":
        return lp
    total = lp.sum(-1)
    if reduce == "sum":
        return total
    counts = np.maximum(mask.sum(1), 1).astype(np.float32)
    return total / Tensor(counts)


__all__ = ["REDUCTIONS", "Packed", "pack", "sequence_logprobs"]
