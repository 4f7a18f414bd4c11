"""Rollouts on Ray actors: GRPOTrainer and PPOTrainer sample and score on N worker processes (or machines)
and get the same rows, log-probs and rewards as in-process, so the same seed gives the same run.

    import ray
    ray.init(address="auto")          # a running cluster; without this a local Ray starts on first use
    trainer = nf.rl.GRPOTrainer(model, opt, prompts, rewards, rollout_backend=nf.rl.RayRollouts(4), ...)

The learner (the trainer: forwards, losses, optimizer) stays in this process, the "driver". One step::

    driver : weights = ray.put(model.state_dict())      once per step: numpy arrays in Ray's object store
    driver : the step's prompts cut into contiguous shares, one per worker (rows stay prompt-major)
    worker : loads the weights if it holds older ones; samples its rows, each with the seed it has in the
             whole batch (nf's row seeds); runs the reward functions on them
    driver : joins the shares in order → the Rollout (nf.rl.rollout's layout) and its rewards

Why the rows are the same: a row's tokens and log-probs depend only on its prompt, its seed and the
weights — not on the other rows of its batch, the padding width or the thread count — as long as its
batch takes the same two paths as the whole one: padded (masked attention) or not, and one row
(matrix-vector products) or more. A share that would take another path is sampled beside one companion
row that is then dropped (``plan_shares``). Bit for bit; tests/test_rl_ray.py checks it.

Faults: a worker that dies (its process killed, its node lost) is replaced by a new actor, which loads
the current weights and redoes the same share — same seeds, same rows; after ``max_restarts``
replacements in one rollout the error is raised. An exception in a worker (a reward function that
raises) is raised here as the same exception, chained to the worker's traceback.

Ray is an optional dependency (``pip install 'nanofrontier[ray]'``); it is imported only when a
RayRollouts starts its workers. The workers must be able to import nanofrontier and whatever the reward
functions and ``decode`` need (on a cluster: the same environment on every node, or a Ray runtime_env).
"""

import re
import types

import numpy as np

from .. import _core
from ..exceptions import InvalidArgumentError
from . import _online as ol
from .rollout import pack_rollout


def _ray():
    try:
        import ray
    except ImportError as e:
        raise ImportError("rollout_backend='ray' needs Ray: pip install 'nanofrontier[ray]'") from e
    return ray


class RayRollouts:
    """A rollout backend for ``GRPOTrainer`` / ``PPOTrainer(rollout_backend=...)``: ``num_workers`` Ray
    actors, each with a copy of the policy, sample and score contiguous shares of every step's prompts.

    - ``num_workers``: actors (default: the cluster's CPUs / ``num_cpus_per_worker``, read when they
      start). A step with fewer prompts than workers leaves some idle.
    - ``num_cpus_per_worker``: the CPUs Ray reserves for each actor (a fraction shares a CPU);
      ``threads_per_worker``: nanofrontier's threads in each (default: ``num_cpus_per_worker`` rounded
      down, at least 1). Results do not depend on either.
    - ``max_restarts``: dead workers replaced (and their shares redone) per rollout before giving up.

    The actors start at the first rollout (``ray.init()`` first to choose the cluster) and live until
    :meth:`shutdown` or until this object is garbage-collected. One RayRollouts serves one trainer.
    ``restarts`` counts the workers replaced so far."""

    def __init__(self, num_workers=None, num_cpus_per_worker=1, threads_per_worker=None, max_restarts=3):
        owner = "RayRollouts"
        self.num_workers = None if num_workers is None else ol.positive_int(owner, "num_workers",
                                                                             num_workers)
        self.num_cpus_per_worker = ol.number(owner, "num_cpus_per_worker", num_cpus_per_worker, 0.0,
                                             lo_ok=False)
        self.threads_per_worker = (max(1, int(self.num_cpus_per_worker)) if threads_per_worker is None
                                   else ol.positive_int(owner, "threads_per_worker", threads_per_worker))
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, (int, np.integer)) \
                or max_restarts < 0:
            raise InvalidArgumentError(f"{owner}: max_restarts must be an integer >= 0, got {max_restarts!r}")
        self.max_restarts = int(max_restarts)
        self.restarts = 0
        self._trainer = None
        self._actors = []
        self._job = None
        self._version = 0

    def __repr__(self):
        n = self.num_workers if self.num_workers is not None else "one per CPU"
        return (f"RayRollouts(num_workers={n}, num_cpus_per_worker={self.num_cpus_per_worker:g}, "
                f"threads_per_worker={self.threads_per_worker}, max_restarts={self.max_restarts}; "
                f"{len(self._actors)} running)")

    # ---- set-up ----
    def check_trainer(self, owner, trainer):
        """Called by the trainer's constructor: refuse now what the workers could not do later."""
        from ..models import _CausalLM

        if self._trainer is not None and self._trainer is not trainer:
            raise InvalidArgumentError(f"{owner}: this RayRollouts already serves another trainer; give each "
                                       "trainer its own")
        if not isinstance(trainer.model, _CausalLM):
            raise InvalidArgumentError(f"{owner}: rollout_backend='ray' needs an nf.models GPT or Llama "
                                       "policy (the workers rebuild it from its config), got "
                                       f"{type(trainer.model).__name__}")
        _ray()
        self._trainer = trainer

    def _start(self, trainer):
        ray = _ray()
        if not ray.is_initialized():
            ray.init()
        fns = {"rewards": getattr(trainer, "rewards", None), "rule": getattr(trainer, "rule", None)}
        s, model = trainer.sampling, trainer.model
        job = {"arch": type(model), "config": model.config, "threads": self.threads_per_worker,
               "prompt_ids": trainer.prompts.ids, "extras": trainer.prompts.extras,
               "fns": {k: f for k, f in fns.items() if f is not None}, "decode": trainer.decode,
               "generate": {"max_new_tokens": trainer.max_new_tokens, "temperature": float(s["temperature"]),
                            "top_k": s["top_k"], "top_p": s["top_p"], "pad_token_id": s["pad_token_id"],
                            "stop_tokens": None if trainer.stop_tokens is None
                            else [int(t) for t in trainer.stop_tokens]}}
        try:
            self._job = ray.put(job)
        except Exception as e:  # cloudpickle refuses something: say what it was
            raise InvalidArgumentError(
                f"{trainer._owner}: the prompts, reward functions and decode function must be picklable to "
                f"reach the Ray workers; pickling them failed: {type(e).__name__}: {e}") from e
        n, cpus = self.num_workers, ray.cluster_resources().get("CPU", 0)
        if n is None:
            n = max(1, int(cpus // self.num_cpus_per_worker))
        if n * self.num_cpus_per_worker > cpus:  # Ray would wait for them forever
            raise InvalidArgumentError(
                f"{trainer._owner}: {n} Ray workers x {self.num_cpus_per_worker:g} CPUs need "
                f"{n * self.num_cpus_per_worker:g} CPUs; the Ray cluster has {cpus:g} (lower num_workers or "
                "num_cpus_per_worker)")
        self._actors = [self._new_actor() for _ in range(n)]
        try:  # a worker that cannot even start (e.g. no nanofrontier on its node) fails here, clearly
            ray.get([a.ready.remote() for a in self._actors])
        except ray.exceptions.RayError as e:
            self.shutdown()
            raise RuntimeError(f"{trainer._owner}: the Ray rollout workers could not start: {_plain(e)}") \
                from None

    def _new_actor(self):
        ray = _ray()
        cls = ray.remote(num_cpus=self.num_cpus_per_worker, max_restarts=0)(_Worker)
        return cls.remote(self._job)

    def shutdown(self):
        """Stop the workers (a later rollout starts new ones)."""
        if self._actors:
            ray = _ray()
            for a in self._actors:
                try:
                    ray.kill(a)
                except Exception:  # already gone
                    pass
        self._actors = []

    @property
    def actors(self):
        """The worker actor handles (empty until the first rollout)."""
        return list(self._actors)

    # ---- one rollout ----
    def rollout(self, trainer, idx, g, seed):
        """The rollout of prompts ``idx`` (positions in ``trainer.prompts``), ``g`` completions each,
        sampled with ``seed`` as ``nf.rl.rollout`` would, plus each reward function set's scores
        (``ro.worker_scores``); ``ro.source_index`` maps rows to prompts."""
        ray = _ray()
        if self._trainer is not trainer:
            raise InvalidArgumentError("RayRollouts: this backend serves another trainer")
        if not self._actors:
            self._start(trainer)
        weights = ray.put(trainer.model.state_dict())  # once per step; every worker reads this copy
        self._version += 1
        idx = [int(i) for i in idx]
        seeds = _core.row_seeds(seed, len(idx) * g)
        bf16 = _core._bf16_enabled()  # the driver's nf.autocast scope, which the workers sample in too
        plan = plan_shares([len(trainer.prompts.ids[i]) for i in idx], g, len(self._actors))
        shares = [(w, a, b, c) for w, (a, b, c) in enumerate(plan) if b > a]

        def call(w, a, b, companion):
            args = ([weights], self._version, idx[a:b], g, seeds[a * g:b * g], a * g,
                    None if companion is None else idx[companion], bf16)
            return self._actors[w].sample.remote(*args)

        pending = {call(*s): s for s in shares}
        done, lost = {}, 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            share = pending.pop(ready[0])
            try:
                done[share] = ray.get(ready[0])
            except ray.exceptions.RayActorError as e:
                lost += 1
                if lost > self.max_restarts:
                    raise RuntimeError(f"{trainer._owner}: Ray rollout workers died {lost} times in one "
                                       f"rollout (max_restarts={self.max_restarts}); the last: {_plain(e)}") \
                        from None
                self.restarts += 1
                w = share[0]
                self._actors[w] = self._new_actor()  # loads the current weights, redoes the same rows
                pending[call(*share)] = share
            except ray.exceptions.RayTaskError as e:
                raise _as_raised_in_worker(e) from _RemoteTraceback(_plain(e))

        completions, logprobs, scores = [], [], {}
        for share in shares:
            c, lp, sc = done[share]
            completions += c
            logprobs += lp
            for k, v in sc.items():
                scores.setdefault(k, []).append(v)
        prompts = [trainer.prompts.ids[i] for i in idx]
        ro = pack_rollout(prompts, g, completions, logprobs, trainer.max_new_tokens, trainer.stop_tokens,
                          trainer.sampling["pad_token_id"])
        ro.source_index = np.array(idx, np.int64)[ro.prompt_index]
        ro.worker_scores = {k: _join(v) for k, v in scores.items()}
        return ro


def plan_shares(lengths, g, workers):
    """Cut a step's prompts (their ``lengths``, ``g`` rows each) into ``workers`` contiguous shares
    ``(start, stop, companion)``: ``companion`` is None or the position of a prompt to sample beside
    the share and drop, so that the share runs down the same paths as the whole batch —

    - the whole batch has prompts of unequal lengths (it is padded: masked attention) but the share's
      are all equal (it would run unmasked, which rounds differently): a prompt of another length;
    - the share is one row of a bigger batch (a batch of one row takes the matrix-vector path): itself.

    Within those paths a row's tokens and log-probs depend on nothing but its prompt, seed and the weights
    (padding width, batch size and thread count do not change a bit)."""
    bounds = np.linspace(0, len(lengths), workers + 1).round().astype(int)
    padded = len(set(lengths)) > 1
    plan = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        companion = None
        if padded and b > a and len(set(lengths[a:b])) == 1:
            companion = next(j for j, n in enumerate(lengths) if n != lengths[a])
        elif (b - a) * g == 1 and len(lengths) * g > 1:
            companion = a
        plan.append((a, b, companion))
    return plan


def sample_share(model, prompt_ids, idx, g, seeds, companion, **generate):
    """Sample prompts ``idx`` (positions in ``prompt_ids``) × ``g`` rows with their ``seeds`` (and the
    companion row ``plan_shares`` asked for, dropped): (completions, log-probs), a list each per row."""
    rows = [prompt_ids[i] for i in idx for _ in range(g)]
    n, seeds = len(rows), list(seeds)
    if companion is not None:
        rows, seeds = rows + [prompt_ids[companion]], seeds + seeds[:1]
    gen = model.generate_batch(rows, seed=seeds, **generate)
    return ([gen.tokens[r, :gen.lengths[r]].tolist() for r in range(n)],
            [gen.logprobs[r, :gen.lengths[r]].copy() for r in range(n)])


def _join(parts):
    """Concatenate the shares' ``(total (n,), per_function (F, n), correct (n,) or None)``."""
    total = np.concatenate([p[0] for p in parts])
    per = np.concatenate([p[1] for p in parts], axis=1)
    correct = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return total, per, correct


# ------------------------------------------------------------------------------------------ errors


class _RemoteTraceback(Exception):
    """The worker's traceback, as the cause of the exception raised again here."""

    def __str__(self):
        return self.args[0]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(e):
    return _ANSI.sub("", str(e))


def _as_raised_in_worker(e):
    """The exception the worker raised (same type, same message), or Ray's wrapper if it did not survive
    the trip (it could not be pickled)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


# ------------------------------------------------------------------------------------------ the worker


class _Worker:
    """One Ray actor: a copy of the policy, the prompts and the reward functions of one run."""

    def __init__(self, job):
        import nanofrontier as nf

        nf.set_num_threads(job["threads"])
        self.job = job
        self.model = job["arch"](job["config"])
        self.model.eval()
        self.version = None

    def ready(self):
        return True

    def sample(self, weights, version, idx, g, seeds, first_row, companion, bf16=False):
        """Rows ``first_row ..`` of a step: prompts ``idx`` × ``g`` with their ``seeds`` (``companion``:
        see ``plan_shares``), under ``nf.autocast("bf16")`` when the driver sampled in that scope (a
        worker whose CPU lacks it raises InvalidArgumentError). Returns (completions, log-probs per
        completion, {name: scores})."""
        import ray

        import nanofrontier as nf

        if version != self.version:  # new weights since this worker's last share
            self.model.load_state_dict(ray.get(weights[0]))
            self.version = version
        job = self.job
        with nf.autocast("bf16" if bf16 else "f32"):
            completions, logprobs = sample_share(self.model, job["prompt_ids"], idx, g, seeds, companion,
                                                 **job["generate"])
        scores = {}
        if job["fns"]:
            source = [i for i in idx for _ in range(g)]
            ps, cs = ol.reward_inputs(types.SimpleNamespace(completions=completions),
                                      [job["prompt_ids"][i] for i in source], job["decode"],
                                      job["generate"]["stop_tokens"])
            extras = [job["extras"][i] for i in source]
            for k, fns in job["fns"].items():
                scores[k] = fns.score(ps, cs, extras, source, first_row=first_row)
        return completions, logprobs, scores


__all__ = ["RayRollouts"]
