"""The coefficient β of PPO's per-token KL penalty (rewards r_t − β·kl_t), fixed or adapted towards a
target KL as in Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences" (section 2.2)."""

import math

from ..exceptions import InvalidArgumentError


def _number(name, v, lo, lo_ok):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise InvalidArgumentError(f"{name} must be a finite number, got {v!r}")
    if v < lo or (v == lo and not lo_ok):
        raise InvalidArgumentError(f"{name} must be {'>=' if lo_ok else '>'} {lo}, got {v}")
    return float(v)


class FixedKLController:
    """A constant KL coefficient: ``update`` changes nothing (so a trainer can call it either way)."""

    def __init__(self, kl_coef=0.05):
        self.value = _number("kl_coef", kl_coef, 0.0, True)

    def update(self, current_kl, n_steps):
        _number("current_kl", current_kl, -math.inf, True)
        return self.value

    def __repr__(self):
        return f"FixedKLController(kl_coef={self.value})"


class AdaptiveKLController:
    """β ← β·(1 + e·n_steps/horizon) with e = clip(KL/target − 1, −0.2, 0.2): β grows while the
    measured KL is above ``target`` and shrinks while below, by at most 20% per ``horizon`` steps
    (Ziegler et al. 2019). Call ``update(current_kl, n_steps)`` once per batch of ``n_steps`` samples;
    it returns the new β."""

    def __init__(self, init_kl_coef=0.2, target=6.0, horizon=10000):
        self.value = _number("init_kl_coef", init_kl_coef, 0.0, True)
        self.target = _number("target", target, 0.0, False)
        self.horizon = _number("horizon", horizon, 0.0, False)

    def update(self, current_kl, n_steps):
        current_kl = _number("current_kl", current_kl, -math.inf, True)
        n_steps = _number("n_steps", n_steps, 0.0, True)
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def __repr__(self):
        return f"AdaptiveKLController(kl_coef={self.value}, target={self.target}, horizon={self.horizon})"
