"""GRPO (Shao et al. 2024, "DeepSeekMath", section 4): sample G completions per prompt, score each with
rule-based reward functions, turn the rewards into group-relative advantages, and take clipped policy-
gradient steps on them — no value model. With DAPO's token-level loss and clip-higher (Yu et al. 2025) as
the default, and an optional β·KL to a frozen reference.

One trainer step::

    rollout  : prompts_per_step prompts × G completions     (nf.rl.rollout, one batched KV-cache call)
    score    : r = Σ_f w_f · f(prompt, completion, **extras) (plain Python functions)
    advantage: A = (r − mean_group) / (std_group + ε)       (nf.rl.grpo_advantages; or rloo)
    old / ref: log-probs by a no-grad forward of the policy (ratio exactly 1 on the first pass) and of the
               reference (when there is one)
    optimise : num_iterations passes over the batch in minibatches, each an optimizer step on
               nf.rl.grpo_loss (clipped ratio · A, + β·k3 KL)

    trainer = nf.rl.GRPOTrainer(model, opt, prompts, [is_correct, is_short], reward_weights=[1.0, 0.1],
                                num_generations=8, prompts_per_step=4, max_new_tokens=32, decode=tok.decode,
                                max_steps=200)
    history = trainer.train()
"""

import numpy as np

from .. import _core
from .._core import Tensor
from ..exceptions import InvalidArgumentError, ShapeError
from . import _online as ol
from .rollout import rollout

_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
_SCALES = {"group": "group", "batch": "batch", "none": "none", True: "group", False: "none"}


class GRPOTrainer(ol.OnlineTrainer):
    """Group Relative Policy Optimization on a language model with reward functions.

    Arguments (keywords after ``reward_fns``; each takes effect or is refused):

    - ``model``: an ``nf.models`` GPT/Llama (the policy); ``optimizer``: an ``nf.optim`` optimizer over its
      parameters.
    - ``prompts``: a list of token-id lists, or of dicts ``{"prompt": ids, **extras}`` (e.g.
      ``"answer": 42``); a step takes ``prompts_per_step`` of them (shuffled epochs, ``shuffle=True``).
    - ``reward_fns``: a function ``f(prompt, completion, **extras) -> float`` or a list, summed with
      ``reward_weights``. ``prompt`` / ``completion`` are text when ``decode`` (ids → str) is given, else
      token-id lists; the completion stops before its stop token. A function gets only the extras its
      signature names. ``correctness``: the function (or index) whose value > 0 means correct, for the
      ``accuracy`` metric (default: one marked ``fn.is_correctness_rule = True``). A function that raises,
      or returns None/NaN/inf, stops the step with an error naming it and the row.
    - Sampling: ``num_generations`` (G ≥ 2, the group), ``max_new_tokens``, ``temperature``, ``top_k``,
      ``top_p``, ``stop_tokens``, ``pad_token_id``.
    - Advantages: ``advantage="grpo"`` (``scale_rewards``: "group" std, "batch" std, "none"; True/False =
      "group"/"none") or ``"rloo"`` (leave-one-out baseline, no scaling).
    - Loss (``nf.rl.grpo_loss``): ``loss_type`` ("dapo", "grpo", "bnpo", "dr_grpo"), ``eps_low``,
      ``eps_high`` (clip-higher; default = eps_low), ``beta`` (k3 KL to ``ref_model``; with ``beta > 0``
      and no ``ref_model`` the reference is a frozen copy of the policy at the start). A given
      ``ref_model`` with ``beta=0`` is only measured (the ``kl`` metric).
    - Optimisation: ``num_iterations`` passes over each batch, ``minibatch_size`` rows per optimizer step
      (default: the whole batch of prompts_per_step·G rows; it must divide it), ``grad_clip``.
    - The run: ``max_steps`` / ``max_seconds``, ``seed``, ``progress``, ``checkpoint`` +
      ``checkpoint_every``, ``callbacks`` (``f(trainer, row)``; True stops), ``diagnostics`` (True: warn
      through ``nf.rl.diagnostics`` with the default bounds; False: off; or a ``Diagnostics`` object).
    - ``rollout_backend``: ``"local"`` (sample and score in this process) or ``"ray"`` / an
      ``nf.rl.RayRollouts(num_workers=N)`` (Ray actors sample and score shares of the prompts; the same
      seed gives the same run bit for bit). Needs ``pip install 'nanofrontier[ray]'``.

    Each step's history row: ``reward_mean``, ``reward_std``, ``reward/<fn>`` (each function's mean),
    ``accuracy`` (with a correctness rule), ``kl`` (k3, to the reference, when there is one), ``entropy``,
    ``clip_fraction`` (+ low / high), ``loss``, ``grad_norm``, ``completion_length``,
    ``zero_std_fraction`` (groups whose G rewards are all equal: no signal), ``truncation_rate``,
    ``time``.
    """

    _KIND = "grpo"
    _POSTFIX = ("reward_mean", "accuracy", "kl", "entropy", "completion_length")

    def __init__(self, model, optimizer, prompts, reward_fns, *, reward_weights=None, correctness=None,
                 decode=None, num_generations=4, prompts_per_step=4, minibatch_size=None, num_iterations=1,
                 max_new_tokens=32, temperature=1.0, top_k=None, top_p=None, stop_tokens=None, pad_token_id=0,
                 ref_model=None, beta=0.0, loss_type="dapo", eps_low=0.2, eps_high=None,
                 scale_rewards="group", advantage="grpo", grad_clip=1.0, shuffle=True, max_steps=None,
                 max_seconds=None, seed=0, progress=True, checkpoint=None, checkpoint_every=None,
                 callbacks=(), diagnostics=True, rule_fn=None, rollout_backend="local"):
        owner = "GRPOTrainer"
        self.model = model
        self.optimizer = ol.JointOptimizer(owner, optimizer)
        self.group = ol.positive_int(owner, "num_generations", num_generations)
        if self.group < 2:
            raise InvalidArgumentError(f"{owner}: num_generations must be >= 2 (a group's advantages are "
                                       "relative to its other completions), got 1")
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        self.prompts = ol.Prompts(owner, prompts, prompts_per_step, vocab)
        self.rewards = ol.RewardFunctions(owner, reward_fns, reward_weights, correctness)
        self.rule = None if rule_fn is None else ol.RewardFunctions(owner, [rule_fn])
        if decode is not None and not callable(decode):
            raise InvalidArgumentError(f"{owner}: decode must be a function ids -> str, got "
                                       f"{type(decode).__name__}")
        self.decode = decode
        batch = self.prompts.per_step * self.group
        self.minibatch_size = batch if minibatch_size is None else ol.positive_int(owner, "minibatch_size",
                                                                                   minibatch_size)
        if batch % self.minibatch_size:
            raise InvalidArgumentError(
                f"{owner}: minibatch_size={self.minibatch_size} must divide the batch of prompts_per_step x "
                f"num_generations = {self.prompts.per_step} x {self.group} = {batch} rows")
        self.num_iterations = ol.positive_int(owner, "num_iterations", num_iterations)
        self._init_sampling(owner, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_token_id)
        if loss_type not in _LOSS_TYPES:
            raise InvalidArgumentError(f"{owner}: loss_type must be one of {_LOSS_TYPES}, got {loss_type!r}")
        self.loss_type = loss_type
        self.beta = ol.number(owner, "beta", beta, 0.0)
        self.eps_low = ol.number(owner, "eps_low", eps_low, 0.0, 1.0, hi_ok=False)
        self.eps_high = None if eps_high is None else ol.number(owner, "eps_high", eps_high, 0.0)
        if advantage not in ("grpo", "rloo"):
            raise InvalidArgumentError(f"{owner}: advantage must be 'grpo' or 'rloo', got {advantage!r}")
        self.advantage = advantage
        if not (isinstance(scale_rewards, bool) or scale_rewards in ("group", "batch", "none")):
            raise InvalidArgumentError(f"{owner}: scale_rewards must be 'group', 'batch', 'none' (or True/"
                                       f"False), got {scale_rewards!r}")
        self.scale_rewards = _SCALES[scale_rewards]
        if advantage == "rloo" and self.scale_rewards != "group":
            raise InvalidArgumentError(f"{owner}: scale_rewards applies to advantage='grpo' only (rloo does "
                                       "not scale)")
        self.grad_clip = (None if grad_clip is None
                          else ol.number(owner, "grad_clip", grad_clip, 0.0, lo_ok=False))
        self.shuffle = bool(shuffle)
        if ref_model is None and self.beta > 0:
            ref_model = model.copy().freeze()
        elif ref_model is not None:
            if ref_model is model:
                raise InvalidArgumentError(f"{owner}: ref_model is the policy itself; pass a copy "
                                           "(model.copy().freeze()) or leave it None")
            ref_model.freeze()
        self.ref_model = ref_model
        self._init_loop(owner, max_steps, max_seconds, seed, progress, checkpoint, checkpoint_every,
                        callbacks)
        self.diagnostics = ol.make_diagnostics(owner, diagnostics)
        self._init_backend(owner, rollout_backend)

    # ---- checkpoint contents ----
    def _modules(self):
        mods = {"policy": self.model}
        if self.ref_model is not None:
            mods["ref"] = self.ref_model
        return mods

    # ---- one step ----
    def make_rollout(self, step=None):
        """The rollout of ``step`` (default: the next one): its prompts and sampling seed follow from the
        step number and the run's seed alone."""
        step = self.step if step is None else step
        idx = self.prompts.indices(step, self._base_seed, self.shuffle)
        seed = ol.derived_seed(self._base_seed, step, 1)
        if self.rollout_backend is not None:  # Ray workers sample (and score) their share of the rows
            return self.rollout_backend.rollout(self, idx, self.group, seed)
        ro = rollout(self.model, [self.prompts.ids[i] for i in idx], num_completions=self.group,
                     max_new_tokens=self.max_new_tokens, seed=seed, **self.sampling)
        ro.source_index = np.array(idx, np.int64)[ro.prompt_index]  # row -> position in self.prompts
        return ro

    def score(self, ro):
        """``(rewards (N,), per_function (F, N), correct (N,) or None)`` of a rollout."""
        return ol.score_rows(self.rewards, ro, self.prompts, self.decode, self.stop_tokens, "rewards")

    def _step(self):
        ro = self.make_rollout()
        rewards, per_fn, correct = self.score(ro)
        row = self.learn(ro, rewards)
        for name, vals in zip(self.rewards.names, per_fn):
            row[f"reward/{name}"] = float(vals.mean())
        if correct is not None:
            row["accuracy"] = float(correct.mean())
        if self.rule is not None:
            rule = ol.score_rows(self.rule, ro, self.prompts, self.decode, self.stop_tokens, "rule")[0]
            row["rule_score"] = float(rule.mean())
            if self.diagnostics is not None:
                self.diagnostics.check_reward_hacking(row["reward_mean"], row["rule_score"], self.step)
        return row

    def learn(self, ro, rewards):
        """The optimisation half of a step on a given rollout (an ``nf.rl.Rollout`` whose rows come in
        groups of ``num_generations``) and its (N,) rewards; returns the step's metrics."""
        owner = "GRPOTrainer"
        n, _ = ol.check_rollout(owner, ro)
        rewards = (rewards.numpy() if isinstance(rewards, Tensor) else np.asarray(rewards)).astype(np.float64)
        if rewards.shape != (n,):
            raise ShapeError(f"{owner}: rewards has shape {rewards.shape} for a rollout of {n} rows; give "
                             "one reward per row, (N,)")
        if not np.isfinite(rewards).all():
            r = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise InvalidArgumentError(f"{owner}: the reward of row {r} is {rewards[r]} (not finite)")
        if n % self.group:
            raise InvalidArgumentError(f"{owner}: num_generations={self.group} does not divide the rollout's "
                                       f"{n} rows (rows come in groups of G completions of one prompt)")
        if n % self.minibatch_size:
            raise InvalidArgumentError(f"{owner}: minibatch_size={self.minibatch_size} does not divide the "
                                       f"rollout's {n} rows")
        r32 = rewards.astype(np.float32)
        if self.advantage == "rloo":
            adv = _core.rloo_advantages(r32, self.group).numpy()
        else:
            adv = _core.grpo_advantages(r32, self.group, self.scale_rewards).numpy()
        ids, mask = ro.input_ids, np.asarray(ro.completion_mask, bool)[:, 1:]
        old_lp, ent = ol.no_grad_forward(self.model, ids, entropy=True)
        ref_lp = None if self.ref_model is None else ol.no_grad_forward(self.ref_model, ids)[0]

        mb = self.minibatch_size
        losses, norms, clip, clip_lo, clip_hi = [], [], [], [], []
        for _ in range(self.num_iterations):
            for start in range(0, n, mb):
                rows = slice(start, start + mb)
                # trim the padding this minibatch does not need
                tt = int(np.asarray(ro.attention_mask)[rows].sum(1).max())
                lp, _ = ol.token_logprobs_and_entropy(self.model, ids[rows, :tt])
                kw = dict(ref_logps=None if ref_lp is None else ref_lp[rows, :tt - 1], beta=self.beta,
                          eps_low=self.eps_low, eps_high=self.eps_high, loss_type=self.loss_type)
                if self.loss_type == "dr_grpo":
                    kw["max_completion_length"] = self.max_new_tokens
                loss, m = _core.grpo_loss(lp, old_lp[rows, :tt - 1], adv[rows], mask[rows, :tt - 1], **kw)
                norms.append(self._run_optimizer_step(loss))
                losses.append(loss.item())
                clip.append(m["clip_fraction"])
                clip_lo.append(m["clip_low_fraction"])
                clip_hi.append(m["clip_high_fraction"])

        groups = rewards.reshape(-1, self.group)
        row = {"loss": float(np.mean(losses)), "reward_mean": float(rewards.mean()),
               "reward_std": float(rewards.std())}
        if ref_lp is not None:
            d = ref_lp.astype(np.float64) - old_lp
            row["kl"] = ol.masked_mean(np.exp(d) - d - 1.0, mask)  # k3, per token, at the rollout's policy
        row.update({
            "entropy": ol.masked_mean(ent, mask),
            "clip_fraction": float(np.mean(clip)),
            "clip_low_fraction": float(np.mean(clip_lo)),
            "clip_high_fraction": float(np.mean(clip_hi)),
            "completion_length": float(np.mean(ro.lengths)),
            "zero_std_fraction": float(np.mean(groups.max(1) == groups.min(1))),
            "truncation_rate": float(np.mean(ro.truncated)),
        })
        if self.grad_clip is not None:
            row["grad_norm"] = float(np.mean(norms))
        self.last_rollout, self.last_rewards = ro, rewards
        if self.diagnostics is not None:
            d, s = self.diagnostics, self.step
            for k in ("loss", "reward_mean", "entropy", "kl"):
                if k in row:
                    d.check_finite(k, row[k], s)
            if "kl" in row:
                d.check_kl(row["kl"], s)
            d.check_equal_rewards(rewards, self.group, s)
            d.check_truncation(row["truncation_rate"], s)
            d.check_entropy(row["entropy"], s)
        return row


__all__ = ["GRPOTrainer"]
