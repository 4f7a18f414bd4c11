"""What GRPOTrainer and PPOTrainer share: prompts (with per-prompt extras), reward functions, per-token
log-probs and entropy in one forward, the step loop (budgets, tqdm, Ctrl-C, callbacks) and checkpoints that
hold every model, optimizer and counter of the run, so a resumed run equals the uninterrupted one."""

import inspect
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .. import _core, no_grad
from .. import checkpoint as _checkpoint
from ..exceptions import InvalidArgumentError, ShapeError
from ..functional import token_logprobs
from ..nn import Module
from ..optim import clip_grad_norm_
from ..train import History, _StopOnCtrlC
from .rollout import check_prompts, context_length

# ------------------------------------------------------------------------------------------ arguments


def positive_int(owner, name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"{owner}: {name} must be an integer >= 1, got {v!r}")
    return int(v)


def number(owner, name, v, lo=-math.inf, hi=math.inf, lo_ok=True, hi_ok=True):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo or (lo_ok and v == lo)) and (v < hi or (hi_ok and v == hi))
    if not ok:
        lo_s = "" if lo == -math.inf else f"{lo} {'<=' if lo_ok else '<'} "
        hi_s = "" if hi == math.inf else f" {'<=' if hi_ok else '<'} {hi}"
        raise InvalidArgumentError(f"{owner}: {name} must be a finite number {lo_s}{name}{hi_s}, got {v!r}")
    return float(v)


def derived_seed(base, *keys):
    """A 31-bit seed that depends only on (base, keys): what a step draws never depends on earlier steps."""
    return int(np.random.SeedSequence([int(base), *[int(k) for k in keys]]).generate_state(1)[0] >> 1)


# ------------------------------------------------------------------------------------------ prompts


class Prompts:
    """The training prompts: token-id lists, or dicts ``{"prompt": ids, **extras}`` whose extras (e.g. the
    answer) reach the reward functions. ``indices(step)`` is the prompts of a step: epochs of a permutation
    seeded by (seed, epoch), read ``per_step`` at a time, so any step's prompts follow from its number."""

    def __init__(self, owner, prompts, per_step, vocab):
        if isinstance(prompts, dict) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidArgumentError(f"{owner}: prompts must be a non-empty list of token-id lists or of "
                                       "dicts {'prompt': ids, ...extras}")
        ids, extras = [], []
        for i, p in enumerate(prompts):
            if isinstance(p, dict):
                if "prompt" not in p:
                    raise InvalidArgumentError(f"{owner}: prompt {i} is a dict without a 'prompt' key (its "
                                               f"keys: {sorted(p)})")
                ids.append(p["prompt"])
                extras.append({k: v for k, v in p.items() if k != "prompt"})
            else:
                ids.append(p)
                extras.append({})
        self.ids = check_prompts(ids, vocab, owner)
        self.extras = extras
        self.per_step = positive_int(owner, "prompts_per_step", per_step)
        if self.per_step > len(self.ids):
            raise InvalidArgumentError(f"{owner}: prompts_per_step={self.per_step} is more than the "
                                       f"{len(self.ids)} prompts given")

    def __len__(self):
        return len(self.ids)

    def check_fits(self, owner, model, max_new_tokens):
        """Refuse now (not at some later step) a prompt that leaves no room for ``max_new_tokens``."""
        ctx = context_length(model)
        i = int(np.argmax([len(p) for p in self.ids]))
        if len(self.ids[i]) + max_new_tokens > ctx:
            raise InvalidArgumentError(
                f"{owner}: prompt {i} has {len(self.ids[i])} tokens, so max_new_tokens={max_new_tokens} "
                f"would need {len(self.ids[i]) + max_new_tokens} positions; the model has {ctx}")

    def indices(self, step, seed, shuffle=True):
        n, out = len(self.ids), []
        for pos in range(step * self.per_step, (step + 1) * self.per_step):
            epoch, k = divmod(pos, n)
            out.append(int(self._order(epoch, seed, shuffle)[k]))
        return out

    def _order(self, epoch, seed, shuffle):
        key = (epoch, seed, shuffle)
        if getattr(self, "_cached", (None,))[0] != key:
            order = (np.random.default_rng(derived_seed(seed, epoch, 7)).permutation(len(self.ids)) if shuffle
                     else np.arange(len(self.ids)))
            self._cached = (key, order)
        return self._cached[1]


# ------------------------------------------------------------------------------------------ rewards


def _name(fn, i):
    return getattr(fn, "__name__", None) or getattr(type(fn), "__name__", f"reward_{i}")


class RewardFunctions:
    """Plain Python reward functions ``fn(prompt, completion, **extras) -> float``, weighted and summed.

    ``prompt`` and ``completion`` are text when a ``decode`` function (ids → str) is given, else token-id
    lists; the completion ends before its stop token. A function is given only the extras its signature
    names (all of them when it takes ``**kwargs``); it returns a number (True / False count as 1 / 0).
    One with a parameter named ``completion`` is called by keyword (``completion=``, and ``prompt=`` only
    if it names it), so ``f(completion, answer)`` works too; any other gets ``(prompt, completion)``
    positionally. ``correctness`` (a function of the list or its index; default: the one with
    ``is_correctness_rule = True``, if any) is the rule whose value > 0 counts a completion as correct,
    for the ``accuracy`` metric."""

    def __init__(self, owner, fns, weights=None, correctness=None):
        self.owner = owner
        fns = [fns] if callable(fns) else list(fns) if isinstance(fns, (list, tuple)) else fns
        if not isinstance(fns, list) or not fns or not all(callable(f) for f in fns):
            raise InvalidArgumentError(f"{owner}: reward_fns must be a function (prompt, completion, "
                                       "**extras) -> float or a non-empty list of them")
        self.fns = fns
        names, seen = [], {}
        for i, f in enumerate(fns):
            n = _name(f, i)
            if n == "<lambda>":
                n = f"reward_{i}"
            seen[n] = seen.get(n, 0) + 1
            names.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
        self.names = names
        if weights is None:
            weights = [1.0] * len(fns)
        if not isinstance(weights, (list, tuple, np.ndarray)) or len(weights) != len(fns):
            raise InvalidArgumentError(f"{owner}: reward_weights must be a list of {len(fns)} numbers (one "
                                       f"per reward function), got {weights!r}")
        self.weights = np.array([number(owner, f"reward_weights[{i}]", w) for i, w in enumerate(weights)],
                                np.float64)
        if correctness is None:
            marked = [i for i, f in enumerate(fns) if getattr(f, "is_correctness_rule", False)]
            if len(marked) > 1:
                raise InvalidArgumentError(f"{owner}: {len(marked)} reward functions are marked "
                                           "is_correctness_rule; pass correctness= to choose one")
            correctness = marked[0] if marked else None
        elif callable(correctness):
            if not any(correctness is f for f in fns):
                raise InvalidArgumentError(f"{owner}: correctness must be one of reward_fns (or its index)")
            correctness = next(i for i, f in enumerate(fns) if f is correctness)
        elif isinstance(correctness, bool) or not isinstance(correctness, (int, np.integer)) \
                or not 0 <= correctness < len(fns):
            raise InvalidArgumentError(f"{owner}: correctness must be one of reward_fns or an index in "
                                       f"[0, {len(fns)}), got {correctness!r}")
        self.correctness = None if correctness is None else int(correctness)
        self._accepts = [self._accepted(f) for f in fns]

    @staticmethod
    def _accepted(fn):
        """``(by_name, wants_prompt, accepts)``: whether ``fn`` names a ``completion`` parameter (then
        prompt and completion go by keyword, the prompt only if it is named) and the extras it takes
        (None: all of them)."""
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return False, True, None  # unknown: (prompt, completion) positionally, every extra
        named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        accepts = None if any(p.kind is p.VAR_KEYWORD for p in params) else named
        return "completion" in named, "prompt" in named, accepts

    def score(self, prompts, completions, extras, prompt_index, first_row=0):
        """``(total (N,), per_function (F, N), correct (N,) bool or None)`` for N rows; errors name row
        ``first_row + r`` (the rows are part of a bigger rollout, as on a Ray worker)."""
        n = len(completions)
        per = np.zeros((len(self.fns), n), np.float64)
        for f, (fn, name, (by_name, wants_prompt, accepts)) in enumerate(zip(self.fns, self.names,
                                                                             self._accepts)):
            for r in range(n):
                kw = {k: v for k, v in extras[r].items()
                      if (accepts is None or k in accepts) and k not in ("prompt", "completion")}
                where = f"row {first_row + r} (prompt {int(prompt_index[r])})"
                try:
                    if by_name:
                        if wants_prompt:
                            kw["prompt"] = prompts[r]
                        v = fn(completion=completions[r], **kw)
                    else:
                        v = fn(prompts[r], completions[r], **kw)
                except Exception as e:
                    raise InvalidArgumentError(f"{self.owner}: reward function {name!r} raised "
                                               f"{type(e).__name__} on {where}: {e}") from e
                if not isinstance(v, (int, float, np.integer, np.floating, np.bool_)):  # bool: 0 / 1
                    raise InvalidArgumentError(f"{self.owner}: reward function {name!r} returned {v!r} on "
                                               f"{where}; a reward must be a finite number")
                if not math.isfinite(v):
                    raise InvalidArgumentError(f"{self.owner}: reward function {name!r} returned {v} on "
                                               f"{where}; a reward must be a finite number")
                per[f, r] = float(v)
        total = self.weights @ per
        correct = None if self.correctness is None else per[self.correctness] > 0
        return total, per, correct


def score_rows(fns, ro, prompts, decode, stop_tokens, key):
    """``fns.score`` of a rollout's rows (``ro.source_index``: each row's position in ``prompts``), or
    what the Ray workers that sampled it computed (``ro.worker_scores[key]``: the same numbers)."""
    done = getattr(ro, "worker_scores", None)
    if done is not None:
        return done[key]
    rows = getattr(ro, "source_index", ro.prompt_index)
    ps, cs = reward_inputs(ro, [prompts.ids[i] for i in rows], decode, stop_tokens)
    return fns.score(ps, cs, [prompts.extras[i] for i in rows], rows)


def reward_inputs(ro, ps, decode, stop_tokens):
    """(prompt, completion) per row as the reward functions see them (``ps``: each row's prompt ids):
    decoded text or id lists, the completion without its final stop token."""
    stops = set(stop_tokens or ())
    comps = [c[:-1] if c and c[-1] in stops else list(c) for c in ro.completions]
    if decode is None:
        return [list(p) for p in ps], comps
    return [decode(p) for p in ps], [decode(c) for c in comps]


# ------------------------------------------------------------------------------------------ forward


def token_logprobs_and_entropy(model, input_ids, entropy=False):
    """One forward of ``model`` on right-padded ``input_ids`` (B, T): the (B, T-1) log-probs of the taken
    tokens (column j scores ``input_ids[:, j+1]``, differentiable) and, with ``entropy``, the (B, T-1)
    entropy of the distribution each came from (``nf.rl.entropy_from_logits``)."""
    b, t = input_ids.shape
    logits, _ = model(input_ids)
    targets = np.full((b, t), -100, np.int64)
    targets[:, :-1] = input_ids[:, 1:]
    lp = token_logprobs(logits, targets).narrow(1, 0, t - 1)
    ent = _core.entropy_from_logits(logits).narrow(1, 0, t - 1) if entropy else None
    return lp, ent


def masked_mean(x, mask):
    m = np.asarray(mask, bool)
    return float(np.asarray(x, np.float64)[m].mean()) if m.any() else 0.0


def check_shape(owner, name, arr, shape):
    if tuple(np.shape(arr)) != tuple(shape):
        raise ShapeError(f"{owner}: {name} has shape {tuple(np.shape(arr))}, expected {tuple(shape)}")


def check_rollout(owner, ro):
    """(N, T) of a rollout whose arrays agree with each other; ShapeError naming the one that does not."""
    ids = np.asarray(ro.input_ids)
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise ShapeError(f"{owner}: input_ids must be (N, T) with T >= 2, got shape {ids.shape}")
    n, t = ids.shape
    check_shape(owner, "attention_mask", ro.attention_mask, (n, t))
    check_shape(owner, "completion_mask", ro.completion_mask, (n, t))
    check_shape(owner, "lengths", ro.lengths, (n,))
    check_shape(owner, "prompt_lengths", ro.prompt_lengths, (n,))
    check_shape(owner, "truncated", ro.truncated, (n,))
    cm, am = np.asarray(ro.completion_mask, bool), np.asarray(ro.attention_mask, bool)
    if (cm & ~am).any():
        raise InvalidArgumentError(f"{owner}: completion_mask marks tokens that attention_mask does not")
    if not np.array_equal(cm.sum(1), ro.lengths):
        raise InvalidArgumentError(f"{owner}: completion_mask's row sums differ from lengths")
    if (np.asarray(ro.lengths) < 1).any():
        raise InvalidArgumentError(f"{owner}: every row needs at least one completion token")
    return n, t



def make_diagnostics(owner, diagnostics):
    """True → nf.rl.diagnostics.Diagnostics() with its default bounds; False/None → none; else the object."""
    if diagnostics is True:
        from .diagnostics import Diagnostics

        return Diagnostics()
    if diagnostics is False or diagnostics is None:
        return None
    return diagnostics



# ------------------------------------------------------------------------------------------ optimizers


class JointOptimizer:
    """One or more optimizers driven as one (PPO's policy + value optimizers), for stepping and
    checkpoints: ``param_groups`` is their groups in order, ``state_dict`` holds each one's state."""

    def __init__(self, owner, optimizers):
        opts = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        for o in opts:
            if not hasattr(o, "param_groups") or not hasattr(o, "step") or not hasattr(o, "state_dict"):
                raise TypeError(f"{owner}: optimizer must be an nf.optim optimizer (or a list of them), got "
                                f"{type(o).__name__}")
        if not opts:
            raise InvalidArgumentError(f"{owner}: give an optimizer")
        self.optimizers = opts

    @property
    def param_groups(self):
        return [g for o in self.optimizers for g in o.param_groups]

    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        for o in self.optimizers:
            o.zero_grad()

    def step(self):
        for o in self.optimizers:
            o.step()

    def step_clipped(self, grad_clip):
        norm = clip_grad_norm_(self.params(), grad_clip) if grad_clip is not None else None
        self.step()
        return norm


# ------------------------------------------------------------------------------------------ checkpoints


class _Run(Module):
    """Every model of a run under one prefix each (policy., value., ref., ...), for one checkpoint file;
    a tensor shared by two of them is stored once."""

    def __init__(self, modules):
        for k, m in modules.items():
            setattr(self, k, m)


def save_run(path, modules, optimizer, state):
    """Write every model (under its prefix), every optimizer's state, the global RNG and the trainer
    ``state`` (JSON) into one ``nf.checkpoint`` file, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run = _Run(modules)
    if len(optimizer.optimizers) == 1:
        _checkpoint.save(path, run, optimizer.optimizers[0], step=state["step"], extra={"trainer": state})
        return
    # several optimizers: their parameters are disjoint, so one merged view of them saves and loads exactly
    _checkpoint.save(path, run, _MergedOptimizer(optimizer.optimizers), step=state["step"],
                     extra={"trainer": state})


def load_run(path, modules, optimizer, owner, kind):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{owner}: resume: checkpoint {path} does not exist")

    def check(extra):
        st = extra.get("trainer")
        if st is None or st.get("kind") != kind:
            got = "no trainer state" if st is None else f"a {st.get('kind')} run"
            raise InvalidArgumentError(f"{owner}: {path} holds {got}, not a {kind} run; it cannot continue "
                                       "this trainer")

    opts = optimizer.optimizers
    opt = opts[0] if len(opts) == 1 else _MergedOptimizer(opts)
    info = _checkpoint.load(path, _Run(modules), opt, check_extra=check)
    return info["extra"]["trainer"]


class _MergedOptimizer:
    """A read/write view of several optimizers' ``state_dict`` as one (what ``nf.checkpoint`` stores)."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def state_dict(self):
        sds = [o.state_dict() for o in self.optimizers]
        groups = [dict(g, optimizer=i) for i, sd in enumerate(sds) for g in sd["param_groups"]]
        return {"param_groups": groups, "state": [s for sd in sds for s in sd["state"]]}

    def load_state_dict(self, state):
        groups, st = state["param_groups"], list(state["state"])
        for i, o in enumerate(self.optimizers):
            mine = [{k: v for k, v in g.items() if k != "optimizer"} for g in groups if g["optimizer"] == i]
            n = sum(g["n_params"] for g in mine)
            o.load_state_dict({"param_groups": mine, "state": st[:n]})
            st = st[n:]


# ------------------------------------------------------------------------------------------ the loop


class OnlineTrainer:
    """The loop of an RL trainer: ``train()`` runs ``_step()`` (one rollout batch and its optimisation) until
    ``max_steps`` / ``max_seconds`` is spent, a callback returns True, or Ctrl-C; tqdm progress; checkpoints
    every ``checkpoint_every`` steps, at the end and on Ctrl-C; ``resume=`` continues bit-for-bit."""

    _KIND = "online"
    _POSTFIX = ()

    def _init_sampling(self, owner, max_new_tokens, temperature, top_k, top_p, stop_tokens, pad_token_id):
        """The rollout settings both trainers take; every prompt must fit with ``max_new_tokens``."""
        self.max_new_tokens = positive_int(owner, "max_new_tokens", max_new_tokens)
        self.prompts.check_fits(owner, self.model, self.max_new_tokens)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop_tokens=stop_tokens,
                             pad_token_id=pad_token_id)
        self.stop_tokens = (None if stop_tokens is None else [stop_tokens] if np.isscalar(stop_tokens)
                            else list(stop_tokens))

    def _init_backend(self, owner, rollout_backend):
        """Where rollouts are sampled and scored: ``"local"`` (in this process), ``"ray"`` (Ray actors, one
        per CPU of the cluster) or an ``nf.rl.RayRollouts``; the same seed gives the same run with each."""
        from .ray_rollouts import RayRollouts

        if isinstance(rollout_backend, str) and rollout_backend in ("local", "ray"):
            rollout_backend = None if rollout_backend == "local" else RayRollouts()
        elif not isinstance(rollout_backend, RayRollouts):
            raise InvalidArgumentError(f"{owner}: rollout_backend must be 'local', 'ray' or an "
                                       f"nf.rl.RayRollouts, got {rollout_backend!r}")
        self.rollout_backend = rollout_backend
        if rollout_backend is not None:
            rollout_backend.check_trainer(owner, self)

    def _init_loop(self, owner, max_steps, max_seconds, seed, progress, checkpoint, checkpoint_every,
                   callbacks):
        self._owner = owner
        if max_steps is None and max_seconds is None:
            raise InvalidArgumentError(f"{owner}: give a budget: max_steps, max_seconds, or both")
        self.max_steps = None if max_steps is None else positive_int(owner, "max_steps", max_steps)
        self.max_seconds = None if max_seconds is None else number(owner, "max_seconds", max_seconds, 0,
                                                                    lo_ok=False)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise InvalidArgumentError(f"{owner}: seed must be an int >= 0 or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        if progress not in (True, False):
            raise InvalidArgumentError(f"{owner}: progress must be True or False, got {progress!r}")
        self.progress = progress
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        if checkpoint_every is not None and checkpoint is None:
            raise InvalidArgumentError(f"{owner}: checkpoint_every={checkpoint_every} needs a checkpoint "
                                       "path")
        self.checkpoint_every = (None if checkpoint_every is None
                                 else positive_int(owner, "checkpoint_every", checkpoint_every))
        self.callbacks = [callbacks] if callable(callbacks) else list(callbacks)
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(f"{owner}: callbacks must be functions f(trainer, row), got "
                                f"{type(cb).__name__}")
        self.step = 0
        self.history = History()
        self.elapsed = 0.0
        self._base_seed = None  # fixed at the first train(): seed, or a draw from the global generator
        self._stop_requested = False

    def train(self, resume=None):
        """Run until a budget is spent; returns :attr:`history` (one row per step). ``resume``: a
        checkpoint of this kind of trainer; the run continues exactly where it stopped."""
        if resume is not None:
            self.load(resume)
        if self._base_seed is None:
            if self.seed is not None:
                _core.manual_seed(self.seed)
                self._base_seed = self.seed
            else:
                self._base_seed = int(_core.randint(0, 2**31 - 1, [1])[0])
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=self.max_steps, initial=self.step, unit="step", dynamic_ncols=True)
            except ImportError:
                bar = None
        start, base = time.perf_counter(), self.elapsed
        reason, self._stop_requested = None, False
        models = self._trained_models()
        modes = [m.training for m in models]
        for m in models:  # dropout off: the ratio π/π_old needs the same function in both forwards
            m.eval()
        try:
            with _StopOnCtrlC(self):
                while True:
                    self.elapsed = base + time.perf_counter() - start
                    if self.max_steps is not None and self.step >= self.max_steps:
                        reason = "max_steps"
                        break
                    if self.max_seconds is not None and self.elapsed >= self.max_seconds:
                        reason = "max_seconds"
                        break
                    row = {"step": self.step}
                    row.update(self._step())
                    self.step += 1
                    self.elapsed = row["time"] = base + time.perf_counter() - start
                    self.history.append(row)
                    self._show(bar, row)
                    if any([cb(self, row) is True for cb in self.callbacks]):  # noqa: C419 (all run)
                        reason = "callback"
                    if self._stop_requested:
                        reason = "interrupted"
                    if reason is not None:
                        break
                    if self.checkpoint_every and self.step % self.checkpoint_every == 0 \
                            and self.step != self.max_steps:
                        self.save()
                if self.checkpoint is not None:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            for m, mode in zip(models, modes):
                m.train(mode)
        self.history.stop_reason = reason
        if reason == "interrupted" and self.progress:
            where = f"; checkpoint {self.checkpoint}" if self.checkpoint is not None else ""
            print(f"stopped by Ctrl-C after step {self.step}{where}", file=sys.stderr)
        return self.history

    def _show(self, bar, row):
        if not self.progress:
            return
        text = " | ".join(f"{k} {row[k]:.3g}" for k in self._POSTFIX if k in row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(text, refresh=False)
        else:
            print(f"step {row['step']}: {text}", flush=True)

    # ---- checkpoints: subclasses say what to save ----
    def _modules(self):
        raise NotImplementedError

    def _trained_models(self):
        return [self.model]

    def _state(self):
        return {}

    def _load_state(self, state):
        pass

    def _run_params(self):
        """(prefixed name, tensor) of every model the checkpoint holds (policy., value., ref.)."""
        return list(_Run(self._modules()).named_parameters())

    def save(self, path=None):
        """Write the whole run (models, optimizers, RNG, counters, history) to ``path`` (default: the
        ``checkpoint`` path), atomically."""
        path = self.checkpoint if path is None else Path(path)
        if path is None:
            raise InvalidArgumentError(f"{self._owner}: save: no path given and no checkpoint path set")
        state = {"kind": self._KIND, "step": self.step, "elapsed": self.elapsed, "base_seed": self._base_seed,
                 "history": list(self.history), **self._state()}
        try:
            json.dumps(state)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{self._owner}: the run state is not JSON-serialisable: {e}") from None
        save_run(path, self._modules(), self.optimizer, state)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` (every model, optimizer, the RNG and counters)."""
        state = load_run(path, self._modules(), self.optimizer, self._owner, self._KIND)
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self._base_seed = state["base_seed"]
        self.history = History(state["history"])
        self._load_state(state)
        return state

    def _run_optimizer_step(self, loss):
        self.optimizer.zero_grad()
        loss.backward()
        return self.optimizer.step_clipped(self.grad_clip)


def no_grad_forward(model, input_ids, entropy=False):
    """``token_logprobs_and_entropy`` without a graph, in the model's current mode, as numpy arrays."""
    with no_grad():
        lp, ent = token_logprobs_and_entropy(model, input_ids, entropy)
    return lp.numpy(), None if ent is None else ent.numpy()
