"""Optimizers, gradient clipping and learning-rate schedules, torch.optim style.

``step()`` updates every parameter in one Rust call (parallel, without the GIL). Hyper-parameters live in
``optimizer.param_groups`` (a list of dicts) so a schedule can change ``lr`` between steps, as in torch::

    opt = nf.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    for step in range(n):
        for g in opt.param_groups:
            g["lr"] = nf.optim.warmup_cosine(step, max_lr=3e-4, warmup_steps=100, total_steps=n)
        loss = ...; opt.zero_grad(); loss.backward()
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
"""

import math

from . import _core
from ._core import Tensor


class Optimizer:
    """Holds ``param_groups``: a list of dicts with ``params`` plus per-group hyper-parameters.

    ``params`` may be an iterable of Tensors or of dicts (``{"params": [...], "weight_decay": 0.0}``) whose
    missing keys take the constructor's defaults. Every setting a group holds applies to that group
    (``lr``, ``weight_decay`` and the optimizer's own, e.g. AdamW's ``betas``); a key the optimizer does
    not take is refused with an ``InvalidArgumentError`` naming it, at construction and at ``step()``."""

    def __init__(self, params, defaults, core):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.defaults = dict(defaults)
        self._core = core
        self.param_groups = []
        seen = set()
        for g in groups:
            g = {**self.defaults, **g, "params": list(g["params"])}
            for p in g["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"optimizer parameters must be Tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one parameter group")
                seen.add(id(p))
            self.param_groups.append(g)
        self._core.check_groups(self.param_groups)

    def step(self):
        """Update every parameter that has a gradient, each with its group's settings (one Rust call)."""
        self._core.step(self.param_groups)

    def zero_grad(self):
        """Drop every parameter's ``.grad`` (so the next backward starts from zero)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad()

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """Settings of each group and the per-parameter state (numpy arrays), in parameter order.
        Parameters are identified by position, as in torch: load into an optimizer built the same way."""
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "n_params": len(g["params"])}
                  for g in self.param_groups]
        return {"param_groups": groups, "state": self._core.get_state(self._params())}

    def load_state_dict(self, state):
        """Restore the group settings and state saved by ``state_dict`` (same parameter layout). The saved
        settings are checked first: a bad one (or a key this optimizer does not take) changes nothing."""
        groups = state["param_groups"]
        if [g["n_params"] for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("load_state_dict: the saved optimizer has a different parameter-group layout")
        merged = [{**g, **{k: v for k, v in saved.items() if k not in ("n_params", "params")}}
                  for g, saved in zip(self.param_groups, groups)]
        self._core.check_groups(merged)
        self._core.set_state(self._params(), state["state"])
        for g, new in zip(self.param_groups, merged):
            g.update(new)

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        n = sum(len(g["params"]) for g in self.param_groups)
        return f"{type(self).__name__}({n} tensors in {len(self.param_groups)} group(s), {hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (torch.optim.SGD semantics).

    weight_decay here is L2: it is added to the gradient (g + wd * p) before momentum. Each group may set
    its own ``lr``, ``momentum``, ``dampening``, ``nesterov`` and ``weight_decay``."""

    def __init__(self, params, lr=1e-2, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay), _core.SGD(momentum, dampening, nesterov))


class AdamW(Optimizer):
    """Adam with decoupled weight decay (torch.optim.AdamW semantics): p -= lr*wd*p, then the Adam update
    with bias-corrected moments. Parameters without a gradient are skipped. Each group may set its own
    ``lr``, ``betas``, ``eps`` and ``weight_decay``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay),
                         _core.AdamW(float(betas[0]), float(betas[1]), float(eps)))


def clip_grad_norm_(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most ``max_norm``; returns the norm
    before clipping (torch.nn.utils.clip_grad_norm_ semantics)."""
    return _core.clip_grad_norm(list(params), float(max_norm))


# ---- learning-rate schedules: pure functions of the step, so a loop can print or plot them ----
def warmup_cosine(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup from 0 to ``max_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at
    ``total_steps`` (and ``min_lr`` after)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step, *, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup to ``max_lr``, then linear decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max_lr + (min_lr - max_lr) * progress


class LRScheduler:
    """Sets every group's ``lr`` from a schedule function each time ``step()`` is called.

    ``LRScheduler(opt, warmup_cosine, warmup_steps=100, total_steps=1000)`` uses each group's initial lr
    as ``max_lr`` (and ``min_lr_ratio`` times it as ``min_lr``)."""

    def __init__(self, optimizer, schedule, *, warmup_steps, total_steps, min_lr_ratio=0.0):
        self.optimizer, self.schedule = optimizer, schedule
        self.kw = dict(warmup_steps=warmup_steps, total_steps=total_steps)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.min_lr_ratio = min_lr_ratio
        self.last_step = -1
        self.step()

    def step(self):
        """Advance one step and update the learning rates; returns the first group's lr."""
        self.last_step += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.schedule(self.last_step, max_lr=base, min_lr=base * self.min_lr_ratio, **self.kw)
        return self.optimizer.param_groups[0]["lr"]


__all__ = ["Optimizer", "SGD", "AdamW", "clip_grad_norm_", "warmup_cosine", "warmup_linear", "LRScheduler"]
