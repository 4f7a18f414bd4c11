"""PPO for language models, as in Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences") and Ouyang et al. 2022 (InstructGPT): a policy, a value model (the critic), a frozen
reference, and a reward given once per completion.

One trainer step::

    rollout : prompts_per_step prompts, one completion each       (nf.rl.rollout)
    score   : s = reward_model(prompt + completion), or a Python function, at the end of each completion
    rewards : r_t = −β·kl_t(π_old ‖ π_ref)  (+ s at the last token)  (nf.rl.kl_penalty, k1 or k3;
              β from a FixedKLController or AdaptiveKLController, updated once per step)
    values  : V_t from the value model (no grad) → advantages and returns by GAE(γ, λ)   (nf.rl.gae)
    optimise: ppo_epochs passes of shuffled minibatches, each an optimizer step on
              clipped policy loss + vf_coef · clipped value loss − ent_coef · entropy

    value = nf.rl.ValueModel(policy.copy())
    opt = nf.optim.AdamW(policy.parameters() + value.parameters(), lr=1e-4)
    trainer = nf.rl.PPOTrainer(policy, value, opt, prompts, reward=reward_model, max_new_tokens=32,
                               kl_controller=nf.rl.AdaptiveKLController(0.1, target=6, horizon=10000),
                               max_steps=100)
    history = trainer.train()
"""

import numpy as np

from .. import _core, no_grad
from .._core import Tensor
from ..exceptions import InvalidArgumentError, ShapeError
from ..nn import Module
from . import _online as ol
from .kl_control import AdaptiveKLController, FixedKLController
from .rollout import rollout


class PPOTrainer(ol.OnlineTrainer):
    """Proximal Policy Optimization with a value model, a KL penalty to a frozen reference and GAE.

    Arguments (keywords after ``prompts``; each takes effect or is refused):

    - ``policy``: an ``nf.models`` GPT/Llama; ``value_model``: an ``nf.rl.ValueModel`` (or any module
      ``value_model(input_ids) -> (B, T)`` values); ``optimizer``: one ``nf.optim`` optimizer over both
      models' parameters, or a list of them (e.g. ``[policy_opt, value_opt]``), all stepped together.
    - ``prompts``: token-id lists, or dicts ``{"prompt": ids, **extras}``; ``prompts_per_step`` per step
      (shuffled epochs), one completion each.
    - ``reward``: an ``nf.rl.RewardModel`` (scores ``prompt + completion`` at its last token, without
      gradient) or a Python function ``f(prompt, completion, **extras) -> float`` (text with ``decode``,
      else ids; the completion stops before its stop token), or a list of functions (with
      ``reward_weights``). A function that raises or returns None/NaN stops with an error naming it and the
      row. ``rule_fn``: an optional held-out rule (same signature), or a list of rules, measured and
      never rewarded: each logged as ``rule/<name>``, the first also as ``rule_score`` (the one the
      reward-hacking diagnostic compares with the reward). Use it to watch what a learned reward model
      does not see, e.g. ``[task.rule_fn("answered"), task.rule_fn("correct")]``.
    - ``ref_model``: the frozen reference (default: a frozen copy of the policy at the start).
    - KL: ``kl_controller`` (``nf.rl.FixedKLController`` / ``AdaptiveKLController``; default
      ``FixedKLController(kl_coef)``, ``kl_coef=0.05``; give one or the other), ``kl_estimator`` ("k1" or
      "k3", per token).
    - ``gamma``, ``lam`` (GAE), ``whiten_advantages`` (masked mean 0, std 1 over the batch).
    - ``ppo_epochs``, ``minibatch_size`` (rows per optimizer step; must divide prompts_per_step),
      ``clip_eps`` (policy), ``value_clip_eps`` (None = unclipped value loss), ``vf_coef``, ``ent_coef``
      (entropy bonus; 0 = off), ``grad_clip``.
    - Sampling: ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``stop_tokens``, ``pad_token_id``.
    - The run: ``max_steps`` / ``max_seconds``, ``seed``, ``progress``, ``checkpoint`` +
      ``checkpoint_every``, ``callbacks``, ``diagnostics``, ``rollout_backend`` (as in GRPOTrainer;
      with Ray the workers run the reward functions, while a reward model scores in this process).

    Each step's history row: ``score`` (mean reward at the end) and ``score_std``, ``reward/<fn>``,
    ``accuracy`` (with a correctness rule), ``rule_score`` and ``rule/<fn>``, ``kl`` (mean per-sequence sum
    of the k1/k3 KL to the reference, measured on the rollout), ``kl_coef`` (β used this step), ``entropy``,
    ``policy_loss``, ``value_loss``, ``clip_fraction``, ``value_clip_fraction``, ``approx_kl``,
    ``explained_variance`` (of the returns by the values), ``completion_length``, ``truncation_rate``,
    ``grad_norm``, ``time``.
    """

    _KIND = "ppo"
    _POSTFIX = ("score", "kl", "kl_coef", "value_loss", "explained_variance")

    def __init__(self, policy, value_model, optimizer, prompts, *, reward, reward_weights=None,
                 correctness=None, rule_fn=None, decode=None, prompts_per_step=8, minibatch_size=None,
                 ppo_epochs=4, max_new_tokens=32, temperature=1.0, top_k=None, top_p=None, stop_tokens=None,
                 pad_token_id=0, ref_model=None, kl_controller=None, kl_coef=None, kl_estimator="k1",
                 gamma=1.0, lam=0.95, whiten_advantages=True, clip_eps=0.2, value_clip_eps=0.2, vf_coef=0.5,
                 ent_coef=0.0, grad_clip=1.0, shuffle=True, max_steps=None, max_seconds=None, seed=0,
                 progress=True, checkpoint=None, checkpoint_every=None, callbacks=(), diagnostics=True,
                 rollout_backend="local"):
        owner = "PPOTrainer"
        self.model = self.policy = policy
        if not isinstance(value_model, Module) or not callable(value_model):
            raise InvalidArgumentError(f"{owner}: value_model must be an nf.rl.ValueModel (a module "
                                       f"input_ids -> (B, T) values), got {type(value_model).__name__}")
        if value_model is policy:
            raise InvalidArgumentError(f"{owner}: value_model is the policy itself; wrap a copy: "
                                       "nf.rl.ValueModel(policy.copy())")
        self.value_model = value_model
        self.optimizer = ol.JointOptimizer(owner, optimizer)
        vocab = getattr(getattr(policy, "config", None), "vocab_size", None)
        self.prompts = ol.Prompts(owner, prompts, prompts_per_step, vocab)
        n = self.prompts.per_step
        self.minibatch_size = n if minibatch_size is None else ol.positive_int(owner, "minibatch_size",
                                                                               minibatch_size)
        if n % self.minibatch_size:
            raise InvalidArgumentError(f"{owner}: minibatch_size={self.minibatch_size} must divide the batch "
                                       f"of prompts_per_step={n} rows")
        self.ppo_epochs = ol.positive_int(owner, "ppo_epochs", ppo_epochs)

        if isinstance(reward, Module):
            if reward_weights is not None or correctness is not None:
                raise InvalidArgumentError(f"{owner}: reward_weights and correctness apply to reward "
                                           "functions, not to a reward model")
            self.reward_model, self.rewards = reward, None
        elif callable(reward) or isinstance(reward, (list, tuple)):
            self.reward_model = None
            self.rewards = ol.RewardFunctions(owner, reward, reward_weights, correctness)
        else:
            raise InvalidArgumentError(f"{owner}: reward must be an nf.rl.RewardModel or a function (prompt, "
                                       f"completion, **extras) -> float, got {type(reward).__name__}")
        if rule_fn is not None and not (callable(rule_fn) or isinstance(rule_fn, (list, tuple))):
            raise InvalidArgumentError(f"{owner}: rule_fn must be a function (prompt, completion, **extras) "
                                       f"-> float or a list of them, got {type(rule_fn).__name__}")
        self.rule = None if rule_fn is None else ol.RewardFunctions(owner, rule_fn)
        if decode is not None and not callable(decode):
            raise InvalidArgumentError(f"{owner}: decode must be a function ids -> str, got "
                                       f"{type(decode).__name__}")
        self.decode = decode

        self._init_sampling(owner, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_token_id)

        if ref_model is None:
            ref_model = policy.copy().freeze()
        elif ref_model is policy:
            raise InvalidArgumentError(f"{owner}: ref_model is the policy itself; pass a copy or leave it "
                                       "None")
        else:
            ref_model.freeze()
        self.ref_model = ref_model
        if kl_controller is not None and kl_coef is not None:
            raise InvalidArgumentError(f"{owner}: give kl_controller or kl_coef, not both (kl_coef is "
                                       "FixedKLController(kl_coef))")
        if kl_controller is None:
            kl_controller = FixedKLController(0.05 if kl_coef is None else kl_coef)
        elif not isinstance(kl_controller, (FixedKLController, AdaptiveKLController)):
            raise InvalidArgumentError(f"{owner}: kl_controller must be an nf.rl.FixedKLController or "
                                       f"AdaptiveKLController, got {type(kl_controller).__name__}")
        self.kl_controller = kl_controller
        if kl_estimator not in ("k1", "k3"):
            raise InvalidArgumentError(f"{owner}: kl_estimator must be 'k1' or 'k3', got {kl_estimator!r}")
        self.kl_estimator = kl_estimator

        self.gamma = ol.number(owner, "gamma", gamma, 0.0, 1.0)
        self.lam = ol.number(owner, "lam", lam, 0.0, 1.0)
        self.whiten_advantages = bool(whiten_advantages)
        self.clip_eps = ol.number(owner, "clip_eps", clip_eps, 0.0, lo_ok=False)
        self.value_clip_eps = (None if value_clip_eps is None
                               else ol.number(owner, "value_clip_eps", value_clip_eps, 0.0, lo_ok=False))
        self.vf_coef = ol.number(owner, "vf_coef", vf_coef, 0.0)
        self.ent_coef = ol.number(owner, "ent_coef", ent_coef, 0.0)
        self.grad_clip = (None if grad_clip is None
                          else ol.number(owner, "grad_clip", grad_clip, 0.0, lo_ok=False))
        self.shuffle = bool(shuffle)
        self._init_loop(owner, max_steps, max_seconds, seed, progress, checkpoint, checkpoint_every,
                        callbacks)
        self.diagnostics = ol.make_diagnostics(owner, diagnostics)
        self._init_backend(owner, rollout_backend)

    # ---- checkpoint contents ----
    def _modules(self):
        return {"policy": self.policy, "value": self.value_model, "ref": self.ref_model}

    def _trained_models(self):
        return [self.policy, self.value_model]

    def _state(self):
        return {"kl_coef": self.kl_controller.value}

    def _load_state(self, state):
        self.kl_controller.value = float(state["kl_coef"])

    # ---- one step ----
    def make_rollout(self, step=None):
        """The rollout of ``step`` (default: the next one), seeded by the step number and the run's seed."""
        step = self.step if step is None else step
        idx = self.prompts.indices(step, self._base_seed, self.shuffle)
        seed = ol.derived_seed(self._base_seed, step, 1)
        if self.rollout_backend is not None:  # Ray workers sample (and score) their share of the rows
            return self.rollout_backend.rollout(self, idx, 1, seed)
        ro = rollout(self.policy, [self.prompts.ids[i] for i in idx], num_completions=1,
                     max_new_tokens=self.max_new_tokens, seed=seed, **self.sampling)
        ro.source_index = np.array(idx, np.int64)
        return ro

    def score(self, ro):
        """``(scores (N,), metrics)``: the reward at the end of each completion (and per-function means,
        accuracy and the held-out rule score when there are functions)."""
        rows = getattr(ro, "source_index", ro.prompt_index)
        metrics = {}
        if self.reward_model is not None:
            with no_grad():
                scores = np.asarray(self.reward_model(ro.input_ids, ro.attention_mask).numpy(), np.float64)
            scores = scores.reshape(-1)
        if self.rewards is not None or self.rule is not None:
            done = getattr(ro, "worker_scores", None)  # scored by the Ray workers that sampled it
            if done is None:
                ps, cs = ol.reward_inputs(ro, [self.prompts.ids[i] for i in rows], self.decode,
                                          self.stop_tokens)
                extras = [self.prompts.extras[i] for i in rows]
                done = {k: fns.score(ps, cs, extras, rows) for k, fns in (("rewards", self.rewards),
                                                                            ("rule", self.rule))
                        if fns is not None}
            if self.rewards is not None:
                scores, per_fn, correct = done["rewards"]
                for name, vals in zip(self.rewards.names, per_fn):
                    metrics[f"reward/{name}"] = float(vals.mean())
                if correct is not None:
                    metrics["accuracy"] = float(correct.mean())
            if self.rule is not None:
                per_rule = done["rule"][1]
                for name, vals in zip(self.rule.names, per_rule):
                    metrics[f"rule/{name}"] = float(np.mean(vals))
                metrics["rule_score"] = float(np.mean(per_rule[0]))
        return scores, metrics

    def _step(self):
        ro = self.make_rollout()
        scores, metrics = self.score(ro)
        row = self.learn(ro, scores)
        row.update(metrics)
        if self.diagnostics is not None and "rule_score" in row:
            self.diagnostics.check_reward_hacking(row["score"], row["rule_score"], self.step)
        return row

    def learn(self, ro, scores):
        """The optimisation half of a step on a given rollout (``nf.rl.Rollout``, one completion per
        prompt) and its (N,) end-of-completion ``scores``; returns the step's metrics. Updates the KL
        controller once."""
        n, t = ol.check_rollout("PPOTrainer", ro)
        scores = np.asarray(scores, np.float64).reshape(-1) if not isinstance(scores, Tensor) \
            else scores.numpy().astype(np.float64).reshape(-1)
        if scores.shape != (n,):
            raise ShapeError(f"PPOTrainer: {scores.size} scores for a rollout of {n} rows")
        if not np.isfinite(scores).all():
            r = int(np.flatnonzero(~np.isfinite(scores))[0])
            raise InvalidArgumentError(f"PPOTrainer: the score of row {r} is {scores[r]} (not finite)")
        if n % self.minibatch_size:
            raise InvalidArgumentError(f"PPOTrainer: minibatch_size={self.minibatch_size} does not divide "
                                       f"the rollout's {n} rows")
        ids, mask = ro.input_ids, ro.token_mask
        maskf = mask.astype(np.float32)
        old_lp, ent = ol.no_grad_forward(self.policy, ids, entropy=True)
        ref_lp = ol.no_grad_forward(self.ref_model, ids)[0]
        with no_grad():
            values = _values(self.value_model, ids, t)
            kl_t = _core.kl_penalty(old_lp, ref_lp, maskf, self.kl_estimator).numpy().astype(np.float64)
        beta = float(self.kl_controller.value)
        rewards = -beta * kl_t * maskf
        last = ro.prompt_lengths + ro.lengths - 2  # the column that scores each row's last token
        rewards[np.arange(n), last] += scores
        # GAE runs over each completion alone: shift rows so that completions start at column 0
        cols = (ro.prompt_lengths - 1)[:, None] + np.arange(int(ro.lengths.max()))[None, :]
        inside = np.arange(cols.shape[1])[None, :] < ro.lengths[:, None]
        cols = np.where(inside, cols, 0)
        take = np.arange(n)[:, None]
        a, r = _core.gae(np.where(inside, rewards[take, cols], 0).astype(np.float32),
                         np.where(inside, values[take, cols], 0).astype(np.float32),
                         inside.astype(np.float32), self.gamma, self.lam)
        adv, ret = np.zeros((n, t - 1), np.float32), np.zeros((n, t - 1), np.float32)
        at = (np.broadcast_to(take, cols.shape)[inside], cols[inside])
        adv[at], ret[at] = a.numpy()[inside], r.numpy()[inside]
        if self.whiten_advantages:
            mu, sd = adv[mask].mean(), adv[mask].std()
            adv = np.where(mask, (adv - mu) / (sd + 1e-8), 0.0).astype(np.float32)

        pol_l, val_l, clip, vclip, akl, norms = [], [], [], [], [], []
        for epoch in range(self.ppo_epochs):
            rng = np.random.default_rng(ol.derived_seed(self._base_seed, self.step, epoch, 3))
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            for start in range(0, n, self.minibatch_size):
                rows = np.sort(order[start:start + self.minibatch_size])
                tt = int(ro.attention_mask[rows].sum(1).max())
                mids, mm = ids[rows, :tt], maskf[rows, :tt - 1]
                lp, e = ol.token_logprobs_and_entropy(self.policy, mids, entropy=self.ent_coef > 0)
                pl, pm = _core.ppo_policy_loss(lp, old_lp[rows, :tt - 1], adv[rows, :tt - 1], mm,
                                               self.clip_eps)
                v = _values(self.value_model, mids, tt)
                vl, vm = _core.ppo_value_loss(v, values[rows, :tt - 1], ret[rows, :tt - 1], mm,
                                              self.value_clip_eps)
                loss = pl + vl * self.vf_coef
                if e is not None:
                    ent_mean = (e * mm).sum() * (1.0 / max(float(mm.sum()), 1.0))
                    loss = loss - ent_mean * self.ent_coef
                norms.append(self._run_optimizer_step(loss))
                pol_l.append(pl.item())
                val_l.append(vl.item())
                clip.append(pm["clip_fraction"])
                akl.append(pm["approx_kl"])
                vclip.append(vm["clip_fraction"])

        seq_kl = (kl_t * maskf).sum(1)
        kl = float(seq_kl.mean())
        self.kl_controller.update(kl, n)
        resid = (ret - values)[mask]
        var_ret = float(np.var(ret[mask])) if mask.any() else 0.0
        row = {"score": float(scores.mean()), "score_std": float(scores.std()), "kl": kl, "kl_coef": beta,
               "entropy": ol.masked_mean(ent, mask), "policy_loss": float(np.mean(pol_l)),
               "value_loss": float(np.mean(val_l)), "clip_fraction": float(np.mean(clip)),
               "value_clip_fraction": float(np.mean(vclip)), "approx_kl": float(np.mean(akl)),
               "explained_variance": 1.0 - float(np.var(resid)) / var_ret if var_ret > 0 else 0.0,
               "completion_length": float(ro.lengths.mean()), "truncation_rate": float(ro.truncated.mean())}
        if self.grad_clip is not None:
            row["grad_norm"] = float(np.mean(norms))
        self.last_rollout, self.last_scores = ro, scores
        self.last_advantages, self.last_returns = adv, ret  # (N, T-1), as the losses used them
        if self.diagnostics is not None:
            d, s = self.diagnostics, self.step
            for k in ("score", "kl", "policy_loss", "value_loss", "entropy"):
                d.check_finite(k, row[k], s)
            d.check_kl(kl, s)
            d.check_truncation(row["truncation_rate"], s)
            d.check_entropy(row["entropy"], s)
        return row


def _values(value_model, ids, t):
    """The value model's (B, T) values, cut to the (B, T-1) columns of the per-token quantities: the value
    at position j is that of the state before token j+1 is chosen."""
    v = value_model(ids)
    shape = tuple(v.shape)
    if shape != (ids.shape[0], t):
        raise ShapeError(f"PPOTrainer: value_model returned shape {shape} for input_ids of shape "
                         f"{ids.shape}; it must give one value per position, (B, T)")
    v = v.narrow(1, 0, t - 1)
    return v if _core.is_grad_enabled() else v.numpy()


__all__ = ["PPOTrainer"]
