"""Plain-word warnings for post-training runs that have gone wrong in a known way.

Each trainer owns a :class:`Diagnostics` and feeds it numbers after every step; a check that trips
warns once per cause (a Python ``warnings.warn`` with category :class:`TrainingWarning`), naming the
number and the step, and the run goes on. Silence them all with
``warnings.simplefilter("ignore", nf.rl.TrainingWarning)``, or turn them into errors with ``"error"``::

    diag = nf.rl.Diagnostics(kl_max=10.0)
    diag.check_finite("loss", loss_value, step)
    diag.check_kl(kl, step)

The checks and their defaults:

- ``check_finite``: a NaN or infinite value (names the quantity).
- ``check_dpo_stuck``: DPO loss within ``dpo_tol`` of ln 2 = 0.6931 and |margin| below ``dpo_tol`` for
  ``dpo_stuck_steps`` steps in a row: the policy is not moving away from the reference (learning rate
  too low, policy frozen, or chosen = rejected).
- ``check_kl``: KL to the reference above ``kl_max``: the policy has drifted far.
- ``check_equal_rewards``: the fraction of GRPO groups whose rewards are all equal above
  ``equal_groups_max``: those groups have zero advantage, so no learning signal.
- ``check_truncation``: the fraction of completions cut at the length limit above ``truncation_max``.
- ``check_reward_hacking``: over the last ``hacking_window`` steps the reward rose by more than
  ``hacking_delta`` while a held-out rule score fell by more than ``hacking_delta``.
- ``check_entropy``: mean per-token entropy below ``entropy_min`` nats: the policy has collapsed onto a
  few tokens and stopped exploring.
"""

import math
import warnings
from collections import deque

import numpy as np

from ..exceptions import InvalidArgumentError

LN2 = math.log(2.0)


class TrainingWarning(UserWarning):
    """A post-training run shows a known failure (non-finite values, a stuck loss, KL blow-up, ...)."""


def _number(name, v, low=None, integer=False):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    if integer:
        ok = ok and float(v).is_integer()
    if not ok or (low is not None and v < low):
        kind = "an integer" if integer else "a finite number"
        bound = f" >= {low}" if low is not None else ""
        raise InvalidArgumentError(f"Diagnostics: {name} must be {kind}{bound}, got {v!r}")
    return int(v) if integer else float(v)


class Diagnostics:
    """Warn-once-per-cause checks on a run's numbers (see the module docstring for each check).

    ``enabled=False`` makes every check a no-op. ``warned`` is the set of causes already reported."""

    def __init__(self, *, enabled=True, dpo_stuck_steps=20, dpo_tol=1e-3, kl_max=10.0, equal_groups_max=0.9,
                 truncation_max=0.5, hacking_window=20, hacking_delta=0.05, entropy_min=0.05):
        self.enabled = bool(enabled)
        self.dpo_stuck_steps = _number("dpo_stuck_steps", dpo_stuck_steps, 1, integer=True)
        self.dpo_tol = _number("dpo_tol", dpo_tol, 0)
        self.kl_max = _number("kl_max", kl_max, 0)
        self.equal_groups_max = _number("equal_groups_max", equal_groups_max, 0)
        self.truncation_max = _number("truncation_max", truncation_max, 0)
        self.hacking_window = _number("hacking_window", hacking_window, 2, integer=True)
        self.hacking_delta = _number("hacking_delta", hacking_delta, 0)
        self.entropy_min = _number("entropy_min", entropy_min, 0)
        self.warned = set()
        self._dpo_run = 0
        self._rewards = deque(maxlen=self.hacking_window)
        self._rules = deque(maxlen=self.hacking_window)

    def warn(self, cause, message):
        """Warn with ``message`` unless ``cause`` was already reported; True if it warned."""
        if not self.enabled or cause in self.warned:
            return False
        self.warned.add(cause)
        warnings.warn(message, TrainingWarning, stacklevel=3)
        return True

    def check_finite(self, name, value, step):
        """``value`` (a number or array) holds NaN or ±inf."""
        arr = np.asarray(value, dtype=np.float64)
        bad = arr[~np.isfinite(arr)]
        if bad.size:
            return self.warn(f"non_finite:{name}",
                             f"{name} is {bad.flat[0]} at step {step} (not a finite number): the run has "
                             "diverged; lower the learning rate or check the inputs")
        return False

    def check_dpo_stuck(self, loss, margin, step):
        """The DPO loss has sat at ln 2 = 0.6931 with zero margins for ``dpo_stuck_steps`` steps."""
        if abs(loss - LN2) < self.dpo_tol and abs(margin) < self.dpo_tol:
            self._dpo_run += 1
        else:
            self._dpo_run = 0
        if self._dpo_run >= self.dpo_stuck_steps:
            return self.warn("dpo_stuck",
                             f"DPO loss is {loss:.4f} (ln 2 = 0.6931) with margin {margin:.2e} for "
                             f"{self._dpo_run} steps (at step {step}): the policy is not moving away from "
                             "the reference; check the learning rate, that the policy is not frozen, and "
                             "that chosen != rejected")
        return False

    def check_kl(self, kl, step):
        """The KL to the reference is above ``kl_max``."""
        if kl > self.kl_max:
            return self.warn("kl", f"KL to the reference is {kl:.4g} at step {step}, above {self.kl_max:g}: "
                                   "the policy has drifted far; raise the KL coefficient or lower the "
                                   "learning rate")
        return False

    def check_equal_rewards(self, rewards, group_size, step):
        """Too many GRPO groups have all-equal rewards (zero advantages). ``rewards`` (N,), grouped in
        consecutive runs of ``group_size``; returns whether it warned. The fraction is in the message."""
        r = np.asarray(rewards, dtype=np.float64).reshape(-1)
        g = _number("group_size", group_size, 1, integer=True)
        if r.size % g:
            raise InvalidArgumentError(
                f"check_equal_rewards: {r.size} rewards do not split into groups of {g}")
        groups = r.reshape(-1, g)
        frac = float(np.mean(groups.max(1) == groups.min(1))) if groups.size else 0.0
        if frac > self.equal_groups_max:
            return self.warn("equal_rewards",
                             f"{frac:.0%} of the {len(groups)} groups have all-equal rewards at step {step} "
                             f"(above {self.equal_groups_max:.0%}): they give no learning signal; make the "
                             "task easier or harder, or sample more completions per prompt")
        return False

    def check_truncation(self, rate, step):
        """The fraction of completions cut at the length limit is above ``truncation_max``."""
        if rate > self.truncation_max:
            return self.warn("truncation",
                             f"{rate:.0%} of the completions hit the length limit at step {step} (above "
                             f"{self.truncation_max:.0%}): raise max_new_tokens or penalise length")
        return False

    def check_reward_hacking(self, reward, rule_score, step):
        """Record this step's mean reward and held-out rule score; over a full window, warn if the reward
        rose (second half vs first half of the window) by more than ``hacking_delta`` while the rule
        score fell by more than it."""
        self._rewards.append(float(reward))
        self._rules.append(float(rule_score))
        if len(self._rewards) < self.hacking_window:
            return False
        half = self.hacking_window // 2
        r, s = np.array(self._rewards), np.array(self._rules)
        rise = r[-half:].mean() - r[:half].mean()
        fall = s[:half].mean() - s[-half:].mean()
        if rise > self.hacking_delta and fall > self.hacking_delta:
            return self.warn("reward_hacking",
                             f"reward rose by {rise:.3g} while the held-out rule score fell by {fall:.3g} "
                             f"over the {self.hacking_window} steps to step {step}: the policy may be "
                             "exploiting the reward; inspect samples, raise the KL coefficient or fix the "
                             "reward")
        return False

    def check_entropy(self, entropy, step):
        """The mean per-token entropy is below ``entropy_min`` nats."""
        if entropy < self.entropy_min:
            return self.warn("entropy",
                             f"mean entropy is {entropy:.4f} nats at step {step}, below "
                             f"{self.entropy_min:g}: the policy has collapsed onto a few tokens; raise the "
                             "temperature, add an entropy bonus or lower the learning rate")
        return False

    def __repr__(self):
        return f"Diagnostics(enabled={self.enabled}, warned={sorted(self.warned)})"


__all__ = ["LN2", "Diagnostics", "TrainingWarning"]
