"""Offline post-training: supervised fine-tuning, a reward model, and DPO — each a ``loss_fn`` and a
batches iterator plugged into the shared loop :class:`nanofrontier.train.Trainer`::

    sft = nf.rl.SFTTrainer(model, opt, [(prompt_ids, completion_ids), ...], batch_size=8, max_steps=200)
    history = sft.train()
    dpo = nf.rl.DPOTrainer(model, opt, [(prompt, chosen, rejected), ...], beta=0.1, epochs=2)
    dpo.train(); dpo.evaluate(held_out_pairs)          # implicit-reward accuracy

What the loop gives every trainer: a tqdm bar (``progress``), the :class:`~nanofrontier.train.History`,
``seed``, ``max_steps`` / ``max_seconds``, the learning-rate schedule, gradient clipping, ``checkpoint`` +
``checkpoint_every``, ``train(resume=path)`` (bit-identical to an uninterrupted run) and Ctrl-C (stops
after the current step, with a checkpoint). Other keyword arguments go to ``Trainer`` unchanged (``lr``,
``schedule``, ``warmup_steps``, ``grad_clip``, ``grad_accum``, ``callbacks``, ``log_every``, ...).

What is here: validation of the examples (once, at construction, naming the bad one), seeded shuffling
(:class:`ShuffledIndices`: epoch e visits every example once in an order drawn from ``(seed, e)``), each
objective, its metrics, and the :class:`~nanofrontier.rl.diagnostics.Diagnostics` that watch the run
(non-finite loss or gradient norm; for DPO, a loss stuck at ln 2).
"""

import math

import numpy as np

from .. import no_grad
from .._core import Tensor, dpo_loss, reward_loss
from ..exceptions import InvalidArgumentError, ShapeError
from ..train import Trainer
from .diagnostics import Diagnostics
from .heads import RewardModel
from .sequences import _token_list, pack, sequence_logprobs

# ------------------------------------------------------------------------------------------- batches


class ShuffledIndices:
    """Endless batches of example indices (int64 arrays of ``batch_size``): one stream of epochs, epoch
    e a permutation of ``range(n)`` drawn from ``numpy.random.default_rng([seed, e])``; a batch may span
    two epochs, so every batch is full. ``state_dict()`` is the position in the stream (and the seed), so
    a resumed run sees the same batches."""

    def __init__(self, n, batch_size, seed=0):
        self.n, self.batch_size = int(n), int(batch_size)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.seed, self.position = int(seed), 0
        self._epoch, self._perm = None, None

    def __iter__(self):
        return self

    def _order(self, epoch):
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def __next__(self):
        out = []
        while len(out) < self.batch_size:
            epoch, i = divmod(self.position, self.n)
            take = min(self.batch_size - len(out), self.n - i)
            out.extend(self._order(epoch)[i:i + take].tolist())
            self.position += take
        return np.array(out, np.int64)

    @property
    def epoch(self):
        """Epochs completed so far, as a fraction."""
        return self.position / self.n

    def state_dict(self):
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state):
        self.position, self.seed, self._epoch = int(state["position"]), int(state["seed"]), None

    def __repr__(self):
        return f"ShuffledIndices(n={self.n}, batch_size={self.batch_size}, epoch={self.epoch:.2f})"


# ------------------------------------------------------------------------------------------- checks


def _rows(data, parts, what, names, context):
    """``data`` (a list of tuples of ``parts`` token-id lists) checked and converted to lists of ints."""
    if isinstance(data, (str, bytes)) or not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise TypeError(f"{what} must be a list of {names} tuples, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidArgumentError(f"{what} is empty")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, (tuple, list)):
            raise TypeError(f"{what}[{i}] must be a {names} tuple, got {type(row).__name__}")
        if len(row) != parts:
            raise InvalidArgumentError(f"{what}[{i}] has {len(row)} parts, expected {parts}: {names}")
        seqs = [_token_list(x, f"{what}[{i}] {n}") for x, n in zip(row, names.strip("()").split(", "))]
        if not seqs[0]:
            raise InvalidArgumentError(f"{what}[{i}] has an empty prompt (a row needs one prompt token)")
        for s, n in zip(seqs[1:], names.strip("()").split(", ")[1:]):
            if not s:
                raise InvalidArgumentError(f"{what}[{i}] has an empty {n}: there is nothing to score")
            if len(seqs[0]) + len(s) > context:
                raise ShapeError(f"{what}[{i}]: prompt + {n} = {len(seqs[0])} + {len(s)} = "
                                 f"{len(seqs[0]) + len(s)} tokens, longer than the model's context "
                                 f"({context} positions)")
        out.append(seqs)
    return out


def _check_vocab(rows, vocab, pad, what):
    top = max(max((max(s) for s in r if s), default=0) for r in rows)
    if top >= vocab:
        raise InvalidArgumentError(f"{what} holds token id {top}, outside the model's vocabulary of {vocab}")
    if not (0 <= pad < vocab):
        raise InvalidArgumentError(f"pad_token_id={pad} is outside the model's vocabulary of {vocab}")


def _context(model):
    if not hasattr(model, "_max_len"):
        raise TypeError(f"expected an nf.models.GPT / Llama (or an nf.rl head on one), got "
                        f"{type(model).__name__}")
    return model._max_len()


def _vocab(model):
    cfg = model.config
    return cfg.vocab_size


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _finite(name, v, low=None):
    number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if not (number and math.isfinite(v)) or (low is not None and v < low):
        bound = f" >= {low}" if low is not None else ""
        raise InvalidArgumentError(f"{name} must be a finite number{bound}, got {v!r}")
    return float(v)


class _EvalMode:
    """Eval mode and no gradients for the duration; the mode is restored afterwards."""

    def __init__(self, *models):
        self.models = models

    def __enter__(self):
        self.was = [m.training for m in self.models]
        for m in self.models:
            m.eval()
        self.grad = no_grad().__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for m, w in zip(self.models, self.was):
            m.train(w)
        return False


# ------------------------------------------------------------------------------------------- base


class _PostTrainer:
    """What the three trainers share: the batches, the step budget from ``epochs``, the diagnostics
    callback, and the thin wrappers over :class:`~nanofrontier.train.Trainer`."""

    _NOT_HERE = ("loss_fn", "batches", "eval_batches", "eval_every")

    def __init__(self, model, optimizer, n, *, batch_size, epochs, max_steps, seed, diagnostics, kwargs):
        for k in self._NOT_HERE:
            if k in kwargs:
                raise InvalidArgumentError(f"{type(self).__name__} sets {k} itself; it cannot be given")
        self.batch_size = _positive_int("batch_size", batch_size)
        if epochs is not None:
            if max_steps is not None:
                raise InvalidArgumentError("give epochs or max_steps, not both")
            epochs = _finite("epochs", epochs)
            if epochs <= 0:
                raise InvalidArgumentError(f"epochs must be > 0, got {epochs!r}")
            max_steps = max(1, math.ceil(epochs * n / self.batch_size))
        elif max_steps is None and kwargs.get("max_seconds") is None:
            raise InvalidArgumentError("give a budget: epochs, max_steps or max_seconds")
        if diagnostics is None:
            diagnostics = Diagnostics()
        if not isinstance(diagnostics, Diagnostics):
            raise TypeError(f"diagnostics must be an nf.rl.Diagnostics, got {type(diagnostics).__name__}")
        self.diagnostics = diagnostics
        callbacks = kwargs.pop("callbacks", ())
        callbacks = [callbacks] if callable(callbacks) else list(callbacks)
        self.batches = ShuffledIndices(n, self.batch_size, seed)
        self.trainer = Trainer(model, optimizer, self.batches, loss_fn=self._loss, max_steps=max_steps,
                               seed=seed, callbacks=[self._watch, *callbacks], **kwargs)

    # the loop
    def train(self, resume=None):
        """Run until the budget is spent (or Ctrl-C); returns the :class:`~nanofrontier.train.History`.
        ``resume``: a checkpoint this kind of trainer wrote; the run continues exactly where it stopped
        (build the trainer with the same arguments and the same starting model)."""
        return self.trainer.fit(resume=resume)

    @property
    def history(self):
        return self.trainer.history

    @property
    def step(self):
        return self.trainer.step

    @property
    def model(self):
        return self.trainer.model

    def save(self, path=None):
        """Write a checkpoint now (default: the ``checkpoint`` path)."""
        self.trainer.save(path)

    def _watch(self, trainer, row):
        d, step = self.diagnostics, row["step"]
        d.check_finite("loss", row["loss"], step)
        if "grad_norm" in row:
            d.check_finite("grad_norm", row["grad_norm"], step)
        self._watch_more(row)

    def _watch_more(self, row):
        pass

    def _require_finite(self, name, *tensors):
        """The fused losses refuse NaN inputs; say so in plain words (a TrainingWarning, then an error)."""
        values = np.concatenate([t.numpy().ravel() for t in tensors])
        if not np.isfinite(values).all():
            step = self.trainer.step
            self.diagnostics.check_finite(name, values, step)
            raise FloatingPointError(f"{type(self).__name__}: {name} are not finite at step {step} (the "
                                     "weights have diverged); the run stops here")

    def _chunks(self, n):
        for i in range(0, n, self.batch_size):
            yield np.arange(i, min(n, i + self.batch_size))


# ------------------------------------------------------------------------------------------- SFT


class SFTTrainer(_PostTrainer):
    """Supervised fine-tuning: the mean −log p of the completion tokens (prompt tokens are context only:
    they are not scored and their predictions get no gradient).

    ``examples``: a list of ``(prompt_ids, completion_ids)``; ``batch_size`` examples per step, packed
    right-padded with ``pad_token_id``; ``epochs`` (a number of passes, fractional allowed) or
    ``max_steps`` / ``max_seconds``. ``loss_masks``: optional, one per example (or None for an example
    scored whole): 0/1 per completion token, only the 1s scored — e.g. a ReAct trace with the tool's
    observation tokens masked out (they stay in the context and the model reads them, but it is not
    taught to write them). The loss is a token mean over the scored tokens of the whole batch (long
    completions weigh more than short ones). Metrics: ``tokens`` (for tokens/s) and ``completion_tokens``
    (the scored ones)."""

    def __init__(self, model, optimizer, examples, *, loss_masks=None, batch_size=8, epochs=None,
                 max_steps=None, pad_token_id=0, seed=0, diagnostics=None, **kwargs):
        ctx = _context(model)
        self.examples = _rows(examples, 2, "examples", "(prompt, completion)", ctx)
        self.loss_masks = _check_loss_masks(loss_masks, self.examples)
        _check_vocab(self.examples, _vocab(model), pad_token_id, "examples")
        self.pad_token_id = int(pad_token_id)
        super().__init__(model, optimizer, len(self.examples), batch_size=batch_size, epochs=epochs,
                         max_steps=max_steps, seed=seed, diagnostics=diagnostics, kwargs=kwargs)

    def _pack(self, rows, idx):
        return pack([rows[i][0] for i in idx], [rows[i][1] for i in idx], self.pad_token_id)

    def _scored(self, b, masks, idx):
        """The (B, T) mask of scored tokens: the completion, minus the 0s of the rows' loss masks."""
        if masks is None:
            return b.completion_mask
        scored = b.completion_mask.copy()
        for r, i in enumerate(idx):
            m = masks[i]
            if m is not None:
                p = int(b.prompt_lengths[r])
                scored[r, p:p + len(m)] &= m
        return scored

    def _loss(self, model, idx):
        b = self._pack(self.examples, idx)
        scored = self._scored(b, self.loss_masks, idx)
        lp = sequence_logprobs(model, b.input_ids, scored, reduce="none")
        n = int(scored[:, 1:].sum())
        return -lp.sum() / max(n, 1), {"tokens": int(b.attention_mask.sum()), "completion_tokens": n}

    def evaluate(self, examples, loss_masks=None):
        """The mean −log p per scored completion token on held-out ``examples`` (a token mean over all of
        them; ``loss_masks`` as for training), in eval mode, without gradients."""
        rows = _rows(examples, 2, "examples", "(prompt, completion)", _context(self.model))
        masks = _check_loss_masks(loss_masks, rows)
        _check_vocab(rows, _vocab(self.model), self.pad_token_id, "examples")
        total, count = 0.0, 0
        with _EvalMode(self.model):
            for idx in self._chunks(len(rows)):
                b = self._pack(rows, idx)
                scored = self._scored(b, masks, idx)
                total -= float(sequence_logprobs(self.model, b.input_ids, scored).numpy().sum())
                count += int(scored[:, 1:].sum())
        if count == 0:
            raise InvalidArgumentError("evaluate: the loss masks leave no token to score")
        return total / count


def _check_loss_masks(masks, rows):
    """Each mask as a bool array as long as its completion, holding only 0/1; at least one scored token."""
    if masks is None:
        return None
    if isinstance(masks, (str, bytes)) or not hasattr(masks, "__len__"):
        raise TypeError(f"loss_masks must be a list with one mask per example, got {type(masks).__name__}")
    if len(masks) != len(rows):
        raise InvalidArgumentError(f"loss_masks: {len(masks)} masks for {len(rows)} examples (one each)")
    out = []
    for i, (m, (_, completion)) in enumerate(zip(masks, rows)):
        if m is None:
            out.append(None)
            continue
        a = m.numpy() if isinstance(m, Tensor) else np.asarray(m)
        if a.ndim != 1 or len(a) != len(completion):
            raise ShapeError(f"loss_masks[{i}] has shape {a.shape}, expected one 0/1 per completion "
                             f"token: ({len(completion)},)")
        if a.dtype != bool:
            if a.size and (a.dtype.kind not in "iuf" or not np.isin(a, (0, 1)).all()):
                raise InvalidArgumentError(f"loss_masks[{i}] must hold only 0/1 (or False/True)")
            a = a.astype(bool)
        out.append(a)
    if not any(True if m is None else m.any() for m in out):
        raise InvalidArgumentError("loss_masks: every mask is all 0: there is nothing to train on")
    return out


# ------------------------------------------------------------------------------------------- reward model


def _pair_batch(rows, idx, pad):
    """Chosen rows then rejected rows, packed together: (2B, T), so one forward scores both."""
    prompts = [rows[i][0] for i in idx]
    return pack(prompts + prompts, [rows[i][1] for i in idx] + [rows[i][2] for i in idx], pad)


class RewardTrainer(_PostTrainer):
    """A reward model from preference pairs: Bradley–Terry ``nf.rl.reward_loss`` on the scores of the
    chosen and the rejected completion (both in one forward).

    ``reward_model``: an :class:`nf.rl.RewardModel`. ``pairs``: a list of ``(prompt, chosen, rejected)``
    token-id lists. ``margins``: optional per-pair margins (Llama 2: how much better chosen is), one number
    per pair; ``center_rewards_coefficient``: the reward-centring penalty. Metrics: ``accuracy`` (chosen
    scored higher), ``margin`` (mean score gap), ``chosen``, ``rejected`` (mean scores)."""

    def __init__(self, reward_model, optimizer, pairs, *, batch_size=8, epochs=None, max_steps=None,
                 margins=None, center_rewards_coefficient=0.0, pad_token_id=0, seed=0, diagnostics=None,
                 **kwargs):
        if not isinstance(reward_model, RewardModel):
            raise TypeError(f"reward_model must be an nf.rl.RewardModel, got {type(reward_model).__name__}")
        self.pairs = _rows(pairs, 3, "pairs", "(prompt, chosen, rejected)", _context(reward_model))
        _check_vocab(self.pairs, _vocab(reward_model), pad_token_id, "pairs")
        if margins is not None:
            margins = np.asarray(margins, dtype=np.float64)
            if margins.shape != (len(self.pairs),):
                raise ShapeError(f"margins has shape {margins.shape}, expected one per pair: "
                                 f"({len(self.pairs)},)")
            if not np.isfinite(margins).all():
                raise InvalidArgumentError("margins must be finite numbers")
            margins = margins.astype(np.float32)
        self.margins = margins
        self.center_rewards_coefficient = _finite("center_rewards_coefficient", center_rewards_coefficient, 0)
        self.pad_token_id = int(pad_token_id)
        super().__init__(reward_model, optimizer, len(self.pairs), batch_size=batch_size, epochs=epochs,
                         max_steps=max_steps, seed=seed, diagnostics=diagnostics, kwargs=kwargs)

    def _scores(self, model, rows, idx):
        b = _pair_batch(rows, idx, self.pad_token_id)
        s = model(b.input_ids, b.attention_mask)
        n = len(idx)
        return s.narrow(0, 0, n), s.narrow(0, n, n), int(b.attention_mask.sum())

    def _loss(self, model, idx):
        chosen, rejected, tokens = self._scores(model, self.pairs, idx)
        self._require_finite("reward scores", chosen, rejected)
        margin = None if self.margins is None else self.margins[idx]
        loss, m = reward_loss(chosen, rejected, margin, self.center_rewards_coefficient)
        return loss, {"accuracy": m["accuracy"], "margin": m["mean_gap"], "chosen": m["chosen_mean"],
                      "rejected": m["rejected_mean"], "tokens": tokens}

    def evaluate(self, pairs):
        """Held-out accuracy: the fraction of ``pairs`` whose chosen completion scores strictly higher
        than the rejected one (eval mode, no gradients). Chance is 0.5."""
        rows = _rows(pairs, 3, "pairs", "(prompt, chosen, rejected)", _context(self.model))
        _check_vocab(rows, _vocab(self.model), self.pad_token_id, "pairs")
        wins = 0
        with _EvalMode(self.model):
            for idx in self._chunks(len(rows)):
                c, r, _ = self._scores(self.model, rows, idx)
                wins += int((c.numpy() > r.numpy()).sum())
        return wins / len(rows)

    def scores(self, examples):
        """The reward model's score of each ``(prompt_ids, completion_ids)`` in ``examples``: a (N,)
        float64 array (eval mode, no gradients, ``batch_size`` rows per forward)."""
        rows = _rows(examples, 2, "examples", "(prompt, completion)", _context(self.model))
        _check_vocab(rows, _vocab(self.model), self.pad_token_id, "examples")
        out = []
        with _EvalMode(self.model):
            for idx in self._chunks(len(rows)):
                b = pack([rows[i][0] for i in idx], [rows[i][1] for i in idx], self.pad_token_id)
                out.append(self.model(b.input_ids, b.attention_mask).numpy().astype(np.float64).reshape(-1))
        return np.concatenate(out)


# ------------------------------------------------------------------------------------------- DPO

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


class DPOTrainer(_PostTrainer):
    """Direct Preference Optimization (``nf.rl.dpo_loss``) of ``model`` on ``(prompt, chosen, rejected)``
    pairs against a frozen reference.

    ``ref_model``: the reference (default: ``model.copy().freeze()`` taken at construction, in eval mode).
    Its log-probs are computed once per pair (in fixed chunks of ``batch_size`` pairs, the first time one
    of them is drawn) and cached (:attr:`ref_logps`; ``ref_pairs_computed`` counts them); chosen and
    rejected are scored in one forward.
    ``beta``, ``loss_type`` (``"sigmoid"``, ``"ipo"``, ``"hinge"``) and ``label_smoothing`` (cDPO) go to
    ``dpo_loss``. ``nll_coef`` (default 0: plain DPO): add ``nll_coef`` × the chosen replies' negative
    log-likelihood, a token mean over the batch's chosen tokens as in SFT — "DPO + NLL", the RPO loss of
    Pang et al. 2024 (Iterative Reasoning Preference Optimization), which keeps DPO from lowering the
    chosen replies' log-probs along with the rejected ones. Metrics: ``rewards/chosen``,
    ``rewards/rejected`` (mean implicit rewards β·(log π − log π_ref)), ``margin`` (their mean
    difference), ``accuracy`` (chosen's reward higher), ``logps/chosen``, ``logps/rejected`` (the
    policy's mean summed log-probs: watch whether both fall) and ``nll`` (the chosen replies' NLL per
    token, logged whatever ``nll_coef``). The ln 2 diagnostic watches the DPO part of the loss and the
    margin. To resume, build the trainer from the same starting model (the default reference is its
    copy)."""

    def __init__(self, model, optimizer, pairs, *, ref_model=None, beta=0.1, loss_type="sigmoid",
                 label_smoothing=0.0, nll_coef=0.0, batch_size=8, epochs=None, max_steps=None, pad_token_id=0,
                 seed=0, diagnostics=None, **kwargs):
        ctx = _context(model)
        if not hasattr(model, "head") or not hasattr(model, "hidden"):
            raise TypeError(f"model must be an nf.models.GPT or Llama, got {type(model).__name__}")
        self.pairs = _rows(pairs, 3, "pairs", "(prompt, chosen, rejected)", ctx)
        _check_vocab(self.pairs, _vocab(model), pad_token_id, "pairs")
        if ref_model is None:
            ref_model = model.copy().freeze().eval()
        elif ref_model is model:
            raise InvalidArgumentError("ref_model is the policy itself; pass a copy (model.copy().freeze()) "
                                       "or leave it out")
        elif not hasattr(ref_model, "head") or _vocab(ref_model) != _vocab(model):
            raise InvalidArgumentError("ref_model must be a language model with the policy's vocabulary")
        self.ref_model = ref_model
        self.beta = _finite("beta", beta)
        if self.beta <= 0:
            raise InvalidArgumentError(f"beta must be > 0, got {beta!r}")
        if loss_type not in LOSS_TYPES:
            raise InvalidArgumentError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.label_smoothing = _finite("label_smoothing", label_smoothing, 0)
        if self.label_smoothing >= 0.5:
            raise InvalidArgumentError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
        self.nll_coef = _finite("nll_coef", nll_coef, 0)
        self.pad_token_id = int(pad_token_id)
        self.ref_logps = np.full((len(self.pairs), 2), np.nan, np.float32)  # (chosen, rejected) per pair
        self.ref_pairs_computed = 0
        super().__init__(model, optimizer, len(self.pairs), batch_size=batch_size, epochs=epochs,
                         max_steps=max_steps, seed=seed, diagnostics=diagnostics, kwargs=kwargs)

    def _ref(self, rows, idx):
        """Reference log-probs (B, 2) of chosen and rejected, one forward of the reference."""
        b = _pair_batch(rows, idx, self.pad_token_id)
        with _EvalMode(self.ref_model):
            lp = sequence_logprobs(self.ref_model, b.input_ids, b.completion_mask).numpy()
        return np.stack([lp[:len(idx)], lp[len(idx):]], 1)

    def _cached_ref(self, idx):
        # computed by fixed chunks of the pair list (pairs [cB, (c+1)B)), the first time any of them is
        # drawn: the same forwards, so the same bits, whatever order the batches come in or a resume
        for c in np.unique(idx // self.batch_size):
            chunk = np.arange(c * self.batch_size, min(len(self.pairs), (c + 1) * self.batch_size))
            if np.isnan(self.ref_logps[chunk[0], 0]):
                self.ref_logps[chunk] = self._ref(self.pairs, chunk)
                self.ref_pairs_computed += len(chunk)
        return self.ref_logps[idx]

    def _policy(self, model, rows, idx):
        """The policy's per-token log-probs (2B, T-1) of the chosen rows then the rejected rows, the
        number of chosen tokens, and the number of tokens in the batch."""
        b = _pair_batch(rows, idx, self.pad_token_id)
        lp = sequence_logprobs(model, b.input_ids, b.completion_mask, reduce="none")
        n_chosen = int(b.completion_mask[:len(idx), 1:].sum())
        return lp, n_chosen, int(b.attention_mask.sum())

    def _dpo(self, chosen, rejected, ref):
        return dpo_loss(chosen, rejected, Tensor(ref[:, 0]), Tensor(ref[:, 1]), beta=self.beta,
                        loss_type=self.loss_type, label_smoothing=self.label_smoothing)

    def objective(self, token_logps, n_chosen_tokens, ref):
        """The training loss from the policy's per-token log-probs ``token_logps`` (2B, T-1) (a Tensor:
        B chosen rows, then their B rejected rows, 0 outside the completions), ``n_chosen_tokens`` (the
        chosen rows' scored tokens) and the reference's summed log-probs ``ref`` (B, 2) (chosen, rejected):
        ``dpo_loss`` of the rows' sums, plus ``nll_coef`` × (−sum of the chosen rows / n_chosen_tokens).
        Returns ``(loss, dpo_part, dpo metrics, chosen sums, rejected sums, nll)``."""
        n = len(ref)
        seq = token_logps.sum(-1)
        chosen, rejected = seq.narrow(0, 0, n), seq.narrow(0, n, n)
        self._require_finite("policy log-probs", chosen, rejected)
        dpo, m = self._dpo(chosen, rejected, ref)
        nll = -token_logps.narrow(0, 0, n).sum() / float(max(n_chosen_tokens, 1))
        loss = dpo + nll * self.nll_coef if self.nll_coef > 0 else dpo
        return loss, dpo, m, chosen, rejected, nll

    def _loss(self, model, idx):
        ref = self._cached_ref(idx)
        lp, n_chosen, tokens = self._policy(model, self.pairs, idx)
        loss, dpo, m, chosen, rejected, nll = self.objective(lp, n_chosen, ref)
        return loss, {"rewards/chosen": float(m["chosen_rewards"].numpy().mean()),
                      "rewards/rejected": float(m["rejected_rewards"].numpy().mean()),
                      "margin": m["margin"], "accuracy": m["accuracy"], "dpo_loss": dpo.item(),
                      "logps/chosen": float(chosen.numpy().mean()),
                      "logps/rejected": float(rejected.numpy().mean()), "nll": nll.item(), "tokens": tokens}

    def _watch_more(self, row):
        self.diagnostics.check_dpo_stuck(row["dpo_loss"], row["margin"], row["step"])

    def metrics(self, pairs):
        """``{"accuracy", "margin", "loss"}`` on held-out ``pairs``: implicit-reward accuracy (chosen's
        β·(log π − log π_ref) strictly higher), the mean margin and the mean DPO loss (eval mode, no
        gradients; the reference log-probs of these pairs are computed, not cached)."""
        rows = _rows(pairs, 3, "pairs", "(prompt, chosen, rejected)", _context(self.model))
        _check_vocab(rows, _vocab(self.model), self.pad_token_id, "pairs")
        wins, margin, loss = 0, 0.0, 0.0
        with _EvalMode(self.model):
            for idx in self._chunks(len(rows)):
                ref = self._ref(rows, idx)
                lp, _, _ = self._policy(self.model, rows, idx)
                seq = lp.sum(-1)
                out, m = self._dpo(seq.narrow(0, 0, len(idx)), seq.narrow(0, len(idx), len(idx)), ref)
                rc, rr = m["chosen_rewards"].numpy(), m["rejected_rewards"].numpy()
                wins += int((rc > rr).sum())
                margin += float((rc - rr).sum())
                loss += out.item() * len(idx)
        n = len(rows)
        return {"accuracy": wins / n, "margin": margin / n, "loss": loss / n}

    def rewards(self, examples):
        """DPO's implicit reward of each ``(prompt_ids, completion_ids)`` in ``examples``:
        β·(log π(completion | prompt) − log π_ref(completion | prompt)), a (N,) float64 array (eval mode, no
        gradients). Up to a term that depends on the prompt only, this is the reward the policy is the
        optimum for (Rafailov et al. 2023, eq. 5), so it ranks two completions of one prompt as a reward
        model would; 0 for every completion before training."""
        rows = _rows(examples, 2, "examples", "(prompt, completion)", _context(self.model))
        _check_vocab(rows, _vocab(self.model), self.pad_token_id, "examples")
        out = []
        with _EvalMode(self.model, self.ref_model):
            for idx in self._chunks(len(rows)):
                b = pack([rows[i][0] for i in idx], [rows[i][1] for i in idx], self.pad_token_id)
                pol = sequence_logprobs(self.model, b.input_ids, b.completion_mask).numpy()
                ref = sequence_logprobs(self.ref_model, b.input_ids, b.completion_mask).numpy()
                out.append(self.beta * (pol.astype(np.float64) - ref.astype(np.float64)))
        return np.concatenate(out)

    def evaluate(self, pairs):
        """Held-out implicit-reward accuracy on ``pairs`` (see :meth:`metrics`). Chance is 0.5; the
        untrained policy (equal to its reference) scores 0, every margin being exactly 0."""
        return self.metrics(pairs)["accuracy"]


__all__ = ["LOSS_TYPES", "DPOTrainer", "RewardTrainer", "SFTTrainer", "ShuffledIndices"]
