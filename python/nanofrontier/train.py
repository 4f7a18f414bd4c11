"""The training loop: :func:`fit` and the small :class:`Trainer` behind it.

One optimizer step is the loop every notebook writes by hand, nanoGPT style::

    for step in range(max_steps):
        lr = nf.optim.warmup_cosine(step, max_lr=1e-3, warmup_steps=100, total_steps=max_steps, min_lr=1e-4)
        for g in opt.param_groups:
            g["lr"] = lr                                        # 1. schedule
        x, y = nf.data.get_batch(train_ids, 12, 64, rng)
        _, loss = model(x, y)                                   # 2. forward
        opt.zero_grad()
        loss.backward()                                         # 3. backward
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)       # 4. clip
        opt.step()                                              # 5. step
        print(step, loss.item(), lr)                            # 6. log

:meth:`Trainer.train_step` is these lines (plus gradient accumulation). :meth:`Trainer.fit` runs it with what
a real run needs: a tqdm bar (loss, learning rate, tokens/s; plain prints without tqdm), evaluation on a fixed
set of held-out batches, a step budget and a wall-clock budget, atomic checkpoints, exact resume, Ctrl-C that
stops after the current step, and the metrics history as a list of dicts::

    history = nf.train.fit(model, opt, train_ids, val_ids, batch_size=12, block_size=64, max_steps=2000,
                           lr=1e-3, warmup_steps=100, checkpoint="ckpt.safetensors", checkpoint_every=500)
    history = nf.train.fit(model, opt, train_ids, val_ids, ..., resume="ckpt.safetensors")  # the same run, on

What plugs in (for SFT, reward models, DPO, ...): ``loss_fn(model, batch) -> loss`` or ``(loss, metrics)``,
and ``batches``, any iterator of batches; with ``state_dict()`` / ``load_state_dict()`` its position is saved
in the checkpoint, so a resumed run sees the same batches. Not here: the models, optimizers, schedules,
clipping and the checkpoint format (``nf.models``, ``nf.optim``, ``nf.checkpoint``), which this module only
calls. Reference: karpathy/nanoGPT ``train.py`` (the loop, the schedule, ``estimate_loss``).
"""

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import _core, no_grad
from . import checkpoint as _checkpoint
from ._core import Tensor
from .data import get_batch
from .exceptions import InvalidArgumentError
from .optim import clip_grad_norm_, warmup_cosine, warmup_linear

# ------------------------------------------------------------------------------------------- batches


class RandomBatches:
    """Endless ``(x, y)`` batches of random windows of ``ids`` (:func:`nanofrontier.data.get_batch`), drawn
    from this object's own generator, seeded with ``seed``. ``state_dict()`` is that generator's state, so a
    run resumed from a checkpoint draws the same windows an uninterrupted run would have drawn next."""

    def __init__(self, ids, batch_size, block_size, seed=0):
        self.ids = np.asarray(ids)
        self.batch_size, self.block_size = _positive_int("batch_size", batch_size), _positive_int(
            "block_size", block_size
        )
        get_batch(self.ids, 1, self.block_size, np.random.default_rng(0))  # checks ids and block_size now
        self.rng = np.random.default_rng(seed)

    def __iter__(self):
        return self

    def __next__(self):
        return get_batch(self.ids, self.batch_size, self.block_size, self.rng)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self):
        return (f"RandomBatches({len(self.ids)} tokens, batch_size={self.batch_size}, "
                f"block_size={self.block_size})")


class ListBatches:
    """Cycles through a fixed list of batches in order, epoch after epoch; its state is the position."""

    def __init__(self, batches):
        self.batches = list(batches)
        if not self.batches:
            raise InvalidArgumentError("ListBatches: the list of batches is empty")
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self.position % len(self.batches)]
        self.position += 1
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])

    def __repr__(self):
        return f"ListBatches({len(self.batches)} batches, position={self.position})"


def fixed_batches(ids, n, batch_size, block_size, seed=0):
    """``n`` batches of random windows of ``ids``, drawn once from a generator seeded with ``seed``: an
    evaluation set that stays the same from one evaluation (and one run) to the next."""
    rng = np.random.default_rng(seed)
    return [get_batch(ids, batch_size, block_size, rng) for _ in range(_positive_int("eval_iters", n))]


def lm_loss(model, batch):
    """The default ``loss_fn``: next-token cross-entropy of a language model on ``batch = (x, y)``."""
    x, y = batch
    _, loss = model(x, y)
    return loss


# ------------------------------------------------------------------------------------------- history


class History(list):
    """The metrics of a run: a list with one dict per step, ``{"step", "lr", "loss", ...}``.

    Row ``s`` describes the model after ``s`` optimizer steps: ``loss`` is the training loss of step ``s``
    (the batch it was computed on then moved the weights), ``val_loss`` (on evaluation steps) the loss on the
    fixed evaluation batches. A final evaluation after the last step gets a row of its own. ``time`` (seconds
    since the run started, across resumes) and ``tokens_per_sec`` are clock readings (:attr:`TIME_KEYS`);
    every other value is the same on every run with the same seed. ``stop_reason`` says why the run ended:
    ``"max_steps"``, ``"max_seconds"``, ``"interrupted"`` (Ctrl-C), ``"callback"`` or ``"data"`` (the batches
    ran out)."""

    TIME_KEYS = ("time", "tokens_per_sec")

    def __init__(self, rows=()):
        super().__init__(rows)
        self.stop_reason = None

    def column(self, key):
        """``(steps, values)``: two numpy arrays over the rows that hold ``key`` (e.g. to plot
        ``val_loss``)."""
        rows = [r for r in self if key in r]
        return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)

    def last(self, key):
        """The latest value of ``key`` (``None`` if no row has it)."""
        for r in reversed(self):
            if key in r:
                return r[key]
        return None

    def to_pandas(self):
        """A ``pandas.DataFrame``, one row per step (missing values are NaN). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError(
                "History.to_pandas needs pandas (pip install pandas); the history itself is a list of dicts"
            ) from None
        return pd.DataFrame(list(self))

    def __repr__(self):
        return f"History({len(self)} rows, stop_reason={self.stop_reason!r})"


# ------------------------------------------------------------------------------------------- trainer

_END = object()  # next(batches, _END): the batches ran out
_SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": None}
_RESERVED = {"step", "lr", "loss", "grad_norm", "tokens", "time", "tokens_per_sec"}


class Trainer:
    """Runs :meth:`train_step` (schedule → forward → backward → clip → step) until a budget is spent.

    Arguments (each one takes effect, or is refused with an error that says why):

    - ``model``, ``optimizer``: an ``nf`` model (or any Module) and an ``nf.optim`` optimizer over its
      parameters.
    - ``batches``: an iterator of training batches (``next(batches)`` gives one optimizer step's batch), e.g.
      :class:`RandomBatches`; a list is cycled through (:class:`ListBatches`). Checkpoints need
      ``batches.state_dict()`` / ``load_state_dict()`` (JSON-serialisable), so a resumed run sees the same
      batches.
    - ``loss_fn(model, batch)`` → a scalar loss Tensor, or ``(loss, metrics)`` with ``metrics`` a dict of
      numbers that goes into the history (``metrics["tokens"]``, if given, is the token count for tokens/s).
      Default :func:`lm_loss`.
    - ``eval_batches``: a fixed list of held-out batches; every evaluation averages ``loss_fn`` over exactly
      these (``val_loss``, ``val_<metric>``), in eval mode and without gradients. Evaluations run at step 0,
      every ``eval_every`` steps, and after the last step. They leave the random state untouched, so how often
      you evaluate never changes the training run.
    - ``max_steps`` and/or ``max_seconds``: stop after this many optimizer steps / once this much wall time
      (training and evaluations, summed across resumes) has passed; the step in progress always finishes.
    - The learning rate, set on every parameter group before each step: ``schedule="cosine"`` (linear warmup
      over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` × peak at ``decay_steps``, default
      ``max_steps``; :func:`nanofrontier.optim.warmup_cosine`), ``"linear"``
      (:func:`~nanofrontier.optim.warmup_linear`), ``"constant"`` (warmup, then flat), or a function
      ``step -> lr``. The peak is ``lr``, or each group's own ``lr`` when ``lr`` is not given. Defaults: no
      warmup, ``min_lr_ratio=0.1`` (nanoGPT's 1e-3 → 1e-4).
    - ``grad_clip``: clip the global gradient norm to this (default 1.0; ``None``: no clipping). The norm
      before clipping is logged as ``grad_norm``.
    - ``grad_accum``: split each batch along its first axis into this many micro-batches, run forward and
      backward on each and step once. Each micro-batch loss is divided by ``grad_accum`` before its backward,
      so the gradient is that of the *mean of the micro-batch mean losses*: the same as the whole batch's mean
      loss when every micro-batch has the same number of loss terms (plain language modelling; not when masks
      leave different numbers of tokens per micro-batch). The logged ``loss`` is the same mean.
    - ``checkpoint``: a path; the trainer writes it atomically every ``checkpoint_every`` steps (if given),
      after the last step and on Ctrl-C. It holds weights, optimizer state, random state, step, the batches'
      position, the history and the elapsed time. ``fit(resume=path)`` continues from such a file
      bit-identically.
    - ``progress``: a tqdm bar (loss, lr, tokens/s, refreshed every ``log_every`` steps) and one line per
      evaluation; without tqdm, a printed line every ``log_every`` steps. ``False``: silent.
    - ``seed``: seeds the global generator (dropout, anything ``loss_fn`` draws) when a fresh run starts; a
      resumed run takes the checkpoint's state instead. ``None``: leave it alone.
    - ``callbacks``: functions ``f(trainer, row)`` called after each step with that step's history row; one
      that returns ``True`` stops the run (``stop_reason="callback"``) after that step.

    Ctrl-C (SIGINT, from the main thread) stops after the current step, writes the checkpoint (when a path was
    given) and returns the history; a second Ctrl-C aborts at once, without a checkpoint.
    """

    def __init__(self, model, optimizer, batches, *, loss_fn=None, eval_batches=None, max_steps=None,
                 max_seconds=None, lr=None, schedule="cosine", warmup_steps=None, decay_steps=None,
                 min_lr_ratio=None, grad_clip=1.0, grad_accum=1, eval_every=None, checkpoint=None,
                 checkpoint_every=None, progress=True, log_every=None, seed=0, callbacks=()):
        self.model, self.optimizer = model, optimizer
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "step"):
            raise TypeError(f"optimizer must be an nf.optim optimizer, got {type(optimizer).__name__}")
        self._params = [p for g in optimizer.param_groups for p in g["params"]]

        # budgets
        if max_steps is None and max_seconds is None:
            raise InvalidArgumentError("give a budget: max_steps, max_seconds, or both")
        self.max_steps = None if max_steps is None else _positive_int("max_steps", max_steps)
        if max_seconds is not None and not (_is_number(max_seconds) and max_seconds > 0):
            raise InvalidArgumentError(f"max_seconds must be a number > 0, got {max_seconds!r}")
        self.max_seconds = None if max_seconds is None else float(max_seconds)

        self._init_schedule(lr, schedule, warmup_steps, decay_steps, min_lr_ratio)

        if grad_clip is not None and not (_is_number(grad_clip) and 0 < grad_clip < math.inf):
            raise InvalidArgumentError(
                f"grad_clip must be a finite number > 0 (None turns clipping off), got {grad_clip!r}"
            )
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.grad_accum = _positive_int("grad_accum", grad_accum)

        # data
        if loss_fn is not None and not callable(loss_fn):
            got = type(loss_fn).__name__
            raise TypeError(f"loss_fn must be a function (model, batch) -> loss, not {got}")
        self.loss_fn = loss_fn or lm_loss
        self.batches = _as_batches(batches)
        if eval_batches is not None:
            if hasattr(eval_batches, "__next__"):
                raise InvalidArgumentError(
                    "eval_batches must be a fixed list of batches, so every evaluation sees the same ones; "
                    "draw them once, e.g. nf.train.fixed_batches(val_ids, 20, batch_size, block_size)"
                )
            eval_batches = list(eval_batches)
            if not eval_batches:
                raise InvalidArgumentError("eval_batches is empty")
        self.eval_batches = eval_batches
        if eval_every is not None and eval_batches is None:
            raise InvalidArgumentError(
                f"eval_every={eval_every} needs held-out data: pass eval_batches (or val to fit)"
            )
        self.eval_every = None if eval_every is None else _positive_int("eval_every", eval_every)

        # checkpoints
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if checkpoint_every is not None and checkpoint is None:
            raise InvalidArgumentError(
                f"checkpoint_every={checkpoint_every} needs a checkpoint path (checkpoint=...)"
            )
        self.checkpoint_every = (None if checkpoint_every is None
                                 else _positive_int("checkpoint_every", checkpoint_every))
        if self.checkpoint is not None:
            _require_state_dict(self.batches, "checkpoints")

        # logging, seeds, hooks
        if progress not in (True, False):
            raise InvalidArgumentError(f"progress must be True or False, got {progress!r}")
        if log_every is not None and not progress:
            raise InvalidArgumentError("log_every has no effect with progress=False")
        self.progress = progress
        self.log_every = (_positive_int("log_every", log_every) if log_every is not None
                          else max(1, self.max_steps // 50) if self.max_steps else 10)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed
        self.callbacks = [callbacks] if callable(callbacks) else list(callbacks)
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(f"callbacks must be functions f(trainer, row), got {type(cb).__name__}")

        # run state (all of it goes into the checkpoint)
        self.step = 0  # optimizer steps taken
        self.history = History()
        self.elapsed = 0.0  # seconds of fit() so far, across resumes
        self.tokens = 0  # training tokens seen (when the batches say how many)
        self._seeded = False
        self._stop_requested = False

    # ---- the learning-rate schedule ----
    def _init_schedule(self, lr, schedule, warmup_steps, decay_steps, min_lr_ratio):
        if callable(schedule):
            given = [n for n, v in (("lr", lr), ("warmup_steps", warmup_steps), ("decay_steps", decay_steps),
                                    ("min_lr_ratio", min_lr_ratio)) if v is not None]
            if given:
                raise InvalidArgumentError(
                    f"schedule is a function step -> lr, so {', '.join(given)} would have no effect: leave "
                    "them out or build them into the function"
                )
            self._schedule_fn, self._peaks = schedule, None
            return
        if schedule not in _SCHEDULES:
            raise InvalidArgumentError(
                f"schedule must be 'cosine', 'linear', 'constant' or a function step -> lr, got {schedule!r}"
            )
        if lr is not None and not (_is_number(lr) and 0 < lr < math.inf):
            raise InvalidArgumentError(f"lr must be a finite number > 0, got {lr!r}")
        self._peaks = [float(g["lr"]) if lr is None else float(lr) for g in self.optimizer.param_groups]
        self._warmup = 0 if warmup_steps is None else _nonneg_int("warmup_steps", warmup_steps)
        if schedule == "constant":
            for name, v in (("decay_steps", decay_steps), ("min_lr_ratio", min_lr_ratio)):
                if v is not None:
                    raise InvalidArgumentError(f"{name} has no effect with schedule='constant'")
            self._decay, self._min_ratio, fn = self._warmup, 1.0, warmup_cosine
        else:
            if decay_steps is None and self.max_steps is None:
                raise InvalidArgumentError(
                    f"a {schedule} schedule needs a length: give max_steps, or decay_steps when only "
                    "max_seconds bounds the run (or use schedule='constant')"
                )
            self._decay = self.max_steps if decay_steps is None else _positive_int("decay_steps", decay_steps)
            ratio = 0.1 if min_lr_ratio is None else min_lr_ratio
            if not (_is_number(ratio) and 0 <= ratio <= 1):
                raise InvalidArgumentError(f"min_lr_ratio must be in [0, 1], got {ratio!r}")
            self._min_ratio, fn = float(ratio), _SCHEDULES[schedule]
        self._schedule_fn = fn

    def lr_at(self, step):
        """The learning rate of each parameter group at ``step`` (a list, one per group)."""
        if self._peaks is None:
            return [float(self._schedule_fn(step))] * len(self.optimizer.param_groups)
        return [self._schedule_fn(step, max_lr=p, warmup_steps=self._warmup, total_steps=self._decay,
                                  min_lr=p * self._min_ratio) for p in self._peaks]

    # ---- one step ----
    def train_step(self, batch):
        """One optimizer step on ``batch``; returns its metrics (``lr``, ``loss``, ``grad_norm``,
        ``loss_fn``'s)."""
        lrs = self.lr_at(self.step)
        for g, lr in zip(self.optimizer.param_groups, lrs):  # 1. schedule
            g["lr"] = lr
        self.optimizer.zero_grad()
        losses, metrics = [], []
        for micro in _split(batch, self.grad_accum):
            loss, m = self._loss(micro)  # 2. forward
            # 3. backward; grads add up over the micro-batches, each weighted 1/grad_accum (a mean of means)
            (loss if self.grad_accum == 1 else loss * (1.0 / self.grad_accum)).backward()
            losses.append(loss.item())
            metrics.append(m)
        row = {"lr": lrs[0], "loss": float(np.mean(losses))}
        if self.grad_clip is not None:
            row["grad_norm"] = clip_grad_norm_(self._params, self.grad_clip)  # 4. clip
        self.optimizer.step()  # 5. step
        row.update(_mean_metrics(metrics))
        return row  # 6. log: fit() puts it in the history and on the progress bar

    def _loss(self, batch):
        out = self.loss_fn(self.model, batch)
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(
                "loss_fn must return a scalar loss Tensor or (loss, metrics); got "
                + (f"a Tensor of shape {loss.shape}" if isinstance(loss, Tensor) else type(loss).__name__)
            )
        if not isinstance(metrics, dict):
            raise TypeError(f"loss_fn's metrics must be a dict of numbers, got {type(metrics).__name__}")
        clash = sorted((set(metrics) - {"tokens"}) & _RESERVED)
        if clash:
            raise InvalidArgumentError(f"loss_fn metric name(s) {clash} clash with what the trainer records")
        metrics = {k: float(v) for k, v in metrics.items()}
        if "tokens" not in metrics:
            n = _batch_tokens(batch)
            if n is not None:
                metrics["tokens"] = n
        return loss, metrics

    def evaluate(self):
        """``{"val_loss": ..., "val_<metric>": ...}``: ``loss_fn`` averaged over the fixed ``eval_batches`` (a
        plain mean of the per-batch values), in eval mode, without gradients. The random state and the model's
        train/eval mode are restored afterwards."""
        if self.eval_batches is None:
            raise InvalidArgumentError("evaluate: this trainer has no eval_batches")
        rng = _core.get_rng_state()
        was_training = getattr(self.model, "training", True)
        _set_mode(self.model, False)
        try:
            with no_grad():
                results = [self._loss(b) for b in self.eval_batches]
        finally:
            _set_mode(self.model, was_training)
            _core.set_rng_state(rng)
        out = {"val_loss": float(np.mean([loss.item() for loss, _ in results]))}
        means = _mean_metrics([m for _, m in results])
        means.pop("tokens", None)
        out.update({f"val_{k}": v for k, v in means.items()})
        return out

    # ---- the run ----
    def fit(self, resume=None):
        """Train until a budget is spent (or Ctrl-C, or a callback says stop); returns :attr:`history`.

        ``resume``: a checkpoint written by a Trainer; its weights, optimizer state, random state, batches
        position, history and clock replace this trainer's, and the run continues exactly where it stopped.
        Calling ``fit()`` again on the same trainer also continues (e.g. after Ctrl-C or with a larger
        budget)."""
        if resume is not None:
            self.load(resume)
        if not self._seeded and self.step == 0 and self.seed is not None:
            _core.manual_seed(int(self.seed))
        self._seeded = True
        _set_mode(self.model, True)
        progress = _Progress(self.progress, self.max_steps, self.step, self.log_every)
        start, base = time.perf_counter(), self.elapsed

        def clock():  # seconds of this run, across resumes
            return base + time.perf_counter() - start

        reason, self._stop_requested = None, False
        try:
            with _StopOnCtrlC(self):
                while reason is None:
                    self.elapsed = clock()
                    reason = self._budget_spent()
                    if reason is not None:
                        break
                    if self._eval_due():
                        self._record_eval(progress)
                    batch = next(self.batches, _END)
                    if batch is _END:
                        reason = "data"
                        break
                    row = self._record_step(batch, progress, clock)
                    if any([cb(self, row) is True for cb in self.callbacks]):  # all of them run
                        reason = "callback"
                    if self._stop_requested:
                        reason = "interrupted"
                    elif reason is None and self._checkpoint_due():
                        self.save()
                if reason != "interrupted" and self.eval_batches is not None \
                        and "val_loss" not in self._row_at(self.step):
                    self._record_eval(progress)  # the model as the run leaves it
                    self.elapsed = clock()
                if self.checkpoint is not None:
                    self.save()
        finally:
            progress.close()
        self.history.stop_reason = reason
        if reason == "interrupted" and self.progress:
            where = f"; checkpoint {self.checkpoint}" if self.checkpoint is not None else ""
            print(f"stopped by Ctrl-C after step {self.step}{where}", file=sys.stderr)
        return self.history

    def _record_step(self, batch, progress, clock):
        """Run one training step and put its metrics in the history row of this step."""
        t = time.perf_counter()
        metrics = self.train_step(batch)
        step_time = time.perf_counter() - t
        row = self._row(self.step)
        row.update(metrics)
        tokens = row.pop("tokens", None)
        if tokens is not None:
            self.tokens += int(tokens)
            row["tokens"] = self.tokens  # cumulative
            row["tokens_per_sec"] = tokens / step_time if step_time > 0 else math.inf
        self.step += 1
        self.elapsed = row["time"] = clock()
        progress.update(row, tokens, step_time)
        return row

    def _budget_spent(self):
        if self.max_steps is not None and self.step >= self.max_steps:
            return "max_steps"
        if self.max_seconds is not None and self.elapsed >= self.max_seconds:
            return "max_seconds"
        return None

    def _checkpoint_due(self):  # the last step's checkpoint is written after the final evaluation
        every = self.checkpoint_every
        return every is not None and self.step % every == 0 and self.step != self.max_steps

    def _eval_due(self):
        if self.eval_batches is None or "val_loss" in self._row_at(self.step):
            return False
        return self.step == 0 or (self.eval_every is not None and self.step % self.eval_every == 0)

    def _record_eval(self, progress):
        result = self.evaluate()
        self._row(self.step).update(result)
        train = self.history.last("loss")
        progress.write(f"step {self.step}: val_loss {result['val_loss']:.4f}"
                       + ("" if train is None else f" (train loss {train:.4f})"))

    def _row_at(self, step):
        return self.history[-1] if self.history and self.history[-1]["step"] == step else {}

    def _row(self, step):
        """The history row of ``step``, created if needed (an evaluation and the step's training share it)."""
        if not (self.history and self.history[-1]["step"] == step):
            self.history.append({"step": step})
        return self.history[-1]

    # ---- checkpoints ----
    def save(self, path=None):
        """Write the whole run state to ``path`` (default: the ``checkpoint`` path), atomically."""
        path = self.checkpoint if path is None else Path(path)
        if path is None:
            raise InvalidArgumentError("save: no path given and this trainer has no checkpoint path")
        _require_state_dict(self.batches, "save")
        state = {"version": 1, "step": self.step, "elapsed": self.elapsed, "tokens": self.tokens,
                 "history": list(self.history), "batches": self.batches.state_dict(),
                 "batches_class": type(self.batches).__name__}
        try:
            json.dumps(state)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"the trainer state must be JSON-serialisable (check batches.state_dict()): {e}"
            ) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        _checkpoint.save(path, self.model, self.optimizer, step=self.step, extra={"trainer": state})

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` (weights, optimizer, random state, batches,
        history). A checkpoint of another model shape raises ``ShapeError`` naming the difference; nothing is
        changed when a check fails."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"resume: checkpoint {path} does not exist")
        _require_state_dict(self.batches, "resume")

        def check(extra):
            state = extra.get("trainer")
            if state is None:
                raise InvalidArgumentError(
                    f"{path} holds no trainer state (it was written by nf.checkpoint.save, not by a "
                    "Trainer), so the run cannot continue from it exactly; load its weights with "
                    "nf.checkpoint.load instead"
                )
            if state["batches_class"] != type(self.batches).__name__:
                raise InvalidArgumentError(
                    f"{path} was written with batches of type {state['batches_class']}, but this trainer's "
                    f"batches are {type(self.batches).__name__}: its data position would not fit"
                )

        info = _checkpoint.load(path, self.model, self.optimizer, check_extra=check)
        state = info["extra"]["trainer"]
        self.batches.load_state_dict(state["batches"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.tokens = int(state["tokens"])
        self.history = History(state["history"])
        self._seeded = True
        return info


def fit(model, optimizer, train, val=None, *, batch_size=None, block_size=None, eval_iters=None, eval_seed=0,
        resume=None, **kwargs):
    """Train ``model`` with ``optimizer``; returns the :class:`History` (:class:`Trainer` has the options).

    ``train``: token ids (a 1-D int array; random windows of ``block_size``, default the model's context
    length, ``batch_size`` per step, drawn by :class:`RandomBatches` seeded with ``seed``) or a batches
    iterator/list as :class:`Trainer` takes. ``val``: token ids (``eval_iters`` batches, default 20, drawn
    once with ``eval_seed``, the same in every evaluation and every run) or a list of batches."""
    seed = kwargs.get("seed", 0)
    if _is_token_array(train):
        if batch_size is None:
            raise InvalidArgumentError("fit: give batch_size when train is an array of token ids")
        if block_size is None:
            block_size = _context_length(model)
        batch_size = _positive_int("batch_size", batch_size)
        accum = kwargs.get("grad_accum", 1)
        if isinstance(accum, int) and accum >= 1 and batch_size % accum:
            raise InvalidArgumentError(
                f"fit: grad_accum={accum} must divide batch_size={batch_size} (each step's batch is split "
                f"into {accum} equal micro-batches)"
            )
        batches = RandomBatches(train, batch_size, block_size, seed=0 if seed is None else seed)
    else:
        for name, v in (("batch_size", batch_size), ("block_size", block_size)):
            if v is not None:
                raise InvalidArgumentError(f"fit: {name} only applies when train is an array of token ids")
        batches = train
    if val is None:
        if eval_iters is not None:
            raise InvalidArgumentError("fit: eval_iters needs held-out data (val=...)")
        eval_batches = None
    elif _is_token_array(val):
        if batch_size is None or block_size is None:
            raise InvalidArgumentError(
                "fit: val as token ids needs batch_size and block_size (or pass a list of batches)"
            )
        n = 20 if eval_iters is None else eval_iters
        eval_batches = fixed_batches(val, n, batch_size, block_size, eval_seed)
    else:
        if eval_iters is not None:
            raise InvalidArgumentError("fit: eval_iters only applies when val is an array of token ids")
        eval_batches = val
    trainer = Trainer(model, optimizer, batches, eval_batches=eval_batches, **kwargs)
    return trainer.fit(resume=resume)


# ------------------------------------------------------------------------------------------- helpers


class _StopOnCtrlC:
    """While active (main thread only): the first SIGINT asks the trainer to stop after the current step; the
    Rust core, asking Python about signals mid-call, sees no error and finishes the step. A second SIGINT
    raises ``KeyboardInterrupt`` at once."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.installed, self.old = False, None

    def _handler(self, signum, frame):
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True
        print("\nCtrl-C: stopping after this step (press again to abort without a checkpoint)",
              file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
            self.installed = True
        return self

    def __exit__(self, *exc):
        if self.installed:  # None: the old handler was not set from Python; Python's default is the closest
            signal.signal(signal.SIGINT, signal.default_int_handler if self.old is None else self.old)
        return False


class _Progress:
    """A tqdm bar (loss, lr, tokens/s in its postfix) or, without tqdm, a printed line every ``log_every``
    steps."""

    def __init__(self, enabled, total, initial, log_every):
        self.enabled, self.log_every, self.bar = enabled, log_every, None
        self.window_tokens, self.window_time = 0, 0.0
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, row, tokens, step_time):
        if not self.enabled:
            return
        self.window_tokens += tokens or 0
        self.window_time += step_time
        if self.bar is not None:
            self.bar.update(1)
        if (row["step"] + 1) % self.log_every and row["step"] != 0:
            return
        text = f"loss {row['loss']:.4f} | lr {row['lr']:.2e}"
        if self.window_tokens and self.window_time > 0:
            text += f" | {self.window_tokens / self.window_time:,.0f} tok/s"
        self.window_tokens, self.window_time = 0, 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        else:
            print(f"step {row['step']}: {text}", flush=True)

    def write(self, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _split(batch, k):
    """``batch`` cut into ``k`` equal pieces along the first axis of every array in it (arrays, Tensors, and
    tuples, lists and dicts of them)."""
    if k == 1:
        return [batch]
    sizes = set()

    def lead(x):
        if isinstance(x, (np.ndarray, Tensor)):
            if not len(x.shape):
                raise InvalidArgumentError(f"grad_accum={k}: cannot split a 0-d array in the batch")
            sizes.add(x.shape[0])
        elif isinstance(x, (tuple, list)):
            for v in x:
                lead(v)
        elif isinstance(x, dict):
            for v in x.values():
                lead(v)
        else:
            raise TypeError(
                f"grad_accum={k} splits each batch along its first axis, but the batch holds a "
                f"{type(x).__name__}; batches must be arrays, Tensors, or tuples/lists/dicts of them"
            )

    lead(batch)
    if len(sizes) != 1:
        raise InvalidArgumentError(
            f"grad_accum={k}: the arrays in a batch have different first sizes {sorted(sizes)}"
        )
    n = sizes.pop()
    if n % k:
        raise InvalidArgumentError(f"grad_accum={k} must divide the batch size {n} (micro-batches are equal)")
    m = n // k

    def piece(x, i):
        if isinstance(x, np.ndarray):
            return x[i * m:(i + 1) * m]
        if isinstance(x, Tensor):
            return x.narrow(0, i * m, m)
        if isinstance(x, dict):
            return {key: piece(v, i) for key, v in x.items()}
        return type(x)(piece(v, i) for v in x)

    return [piece(batch, i) for i in range(k)]


def _mean_metrics(metrics):
    keys = dict.fromkeys(k for m in metrics for k in m)
    out = {}
    for k in keys:
        vals = [m[k] for m in metrics if k in m]
        out[k] = sum(vals) if k == "tokens" else float(np.mean(vals))
    return out


def _batch_tokens(batch):
    """Tokens in a ``(x, y)`` batch of int arrays (``x.size``); None for other batch shapes."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], np.ndarray):
        if batch[0].dtype.kind in "iu":
            return int(batch[0].size)
    return None


def _as_batches(batches):
    if hasattr(batches, "__next__"):
        return batches
    if isinstance(batches, (list, tuple)):
        return ListBatches(batches)
    raise TypeError(
        "batches must be an iterator of batches (e.g. nf.train.RandomBatches) or a list, got "
        f"{type(batches).__name__}"
    )


def _require_state_dict(batches, what):
    if not (hasattr(batches, "state_dict") and hasattr(batches, "load_state_dict")):
        raise InvalidArgumentError(
            f"{what} need the batches' position: {type(batches).__name__} has no "
            "state_dict()/load_state_dict(), so a resumed run could not see the same batches; use "
            "nf.train.RandomBatches, a list, or add those methods"
        )


def _set_mode(model, training):
    if hasattr(model, "train"):
        model.train(training)


def _context_length(model):
    if hasattr(model, "_max_len"):
        return model._max_len()
    raise InvalidArgumentError("fit: give block_size (this model does not say its context length)")


def _is_token_array(x):
    return isinstance(x, np.ndarray) and x.ndim == 1 and x.dtype.kind in "iu"


def _is_number(x):
    number = isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
    return number and not math.isnan(x)


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _nonneg_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise InvalidArgumentError(f"{name} must be an integer >= 0, got {v!r}")
    return int(v)


__all__ = ["History", "ListBatches", "RandomBatches", "Trainer", "fit", "fixed_batches", "lm_loss"]
