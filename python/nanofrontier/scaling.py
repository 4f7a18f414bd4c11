"""Scaling laws from your own runs: FLOP counts, a compute-budget sweep, power-law fits, compute-optimal size.

The guide's Part 4: "plot loss against compute on a log-log scale — it's a straight line". This module draws
that line from runs made here::

    from nanofrontier import scaling
    configs = [GPTConfig(n_layer=2, n_head=2, n_embd=d, block_size=64) for d in (32, 48, 64, 96)]
    runs = scaling.sweep(configs, budgets=[1e11, 3e11, 1e12], train_ids=train, val_ids=val)
    optima = scaling.isoflop_optima(runs)                 # the best size for each budget (parabola in log N)
    law = scaling.fit_power_law([o.budget for o in optima], [o.loss for o in optima])
    law.alpha, law.r2                                     # L(C) = a * C^-alpha, and how straight the line is
    scaling.compute_optimal(1e13, optima)                 # N*, D*, tokens per parameter at a larger budget

Compute is counted exactly from the model's shapes (:func:`training_flops_per_token`: every matmul of the
forward pass, causal attention included, times 3 for forward + backward), not with the ``6·N·D`` rule of
thumb; :func:`chinchilla_flops` gives that rule for models known only by their published N and D (the guide's
GPT-2 and GPT-3, :data:`GUIDE_MODELS`). Fits are least squares in log space and report R² there. References:
Kaplan et al. 2020 (arXiv:2001.08361, the L(C) power law), Hoffmann et al. 2022 (arXiv:2203.15556, IsoFLOP
parabolas and tokens per parameter).
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import _core
from .exceptions import InvalidArgumentError

# ------------------------------------------------------------------------------------------- counting

_EMBEDDING_NAMES = ("wte.", "wpe.", "embed_tokens.")


def count_params(model, non_embedding=False):
    """Number of trainable weights of ``model`` (an ``nf`` model or Module, or a :class:`GPTConfig`).

    Tied weights count once (GPT's head is the token embedding). ``non_embedding=True`` leaves out the token
    and position embeddings (Kaplan et al.'s N)."""
    from .models import GPTConfig

    if isinstance(model, GPTConfig):
        return _gpt_params(model, non_embedding)
    if not hasattr(model, "named_parameters"):
        raise TypeError(f"count_params: expected a model or a GPTConfig, got {type(model).__name__}")
    total = 0
    for name, p in model.named_parameters():
        if non_embedding and name.startswith(_EMBEDDING_NAMES):
            continue
        total += p.numel()
    return int(total)


def _gpt_params(c, non_embedding):
    d, L = c.n_embd, c.n_layer
    b = 1 if c.bias else 0
    ln = d * (1 + b)  # LayerNorm: weight (+ bias)
    block = 2 * ln + (3 * d * d + b * 3 * d) + (d * d + b * d) + (4 * d * d + b * 4 * d) + (4 * d * d + b * d)
    emb = 0 if non_embedding else c.vocab_size * d + c.block_size * d
    return int(emb + L * block + ln)


def training_flops_per_token(model, seq_len=None):
    """Training FLOPs per token (forward + backward = 3 × forward) at sequence length ``seq_len`` (default:
    the model's context).

    For a model with ``flops_per_token`` (every ``nf.models`` model) that count is used; for a
    :class:`GPTConfig` the same count by hand: ``2·in·out`` per projection and for the head, plus causal
    attention (QKᵀ and PV), ``2·n_embd·(seq_len + 1)`` per layer on average over the sequence."""
    from .models import GPTConfig

    if isinstance(model, GPTConfig):
        T = model.block_size if seq_len is None else _positive_int("seq_len", seq_len)
        return 3.0 * _gpt_forward_flops(model, T)
    if not hasattr(model, "flops_per_token"):
        raise TypeError(
            f"training_flops_per_token: {type(model).__name__} has no flops_per_token; pass an nf model or a "
            "GPTConfig"
        )
    if seq_len is not None:
        seq_len = _positive_int("seq_len", seq_len)
    return float(model.flops_per_token(seq_len)["training"])


def _gpt_forward_flops(c, T):
    d, L = c.n_embd, c.n_layer
    per_layer = 2 * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + 2 * d * (T + 1)
    return float(L * per_layer + 2 * d * c.vocab_size)


def training_flops_per_step(model, batch_size, block_size):
    """FLOPs of one optimizer step on ``batch_size`` sequences of ``block_size`` tokens."""
    batch_size, block_size = _positive_int("batch_size", batch_size), _positive_int("block_size", block_size)
    return training_flops_per_token(model, block_size) * batch_size * block_size


def chinchilla_flops(n_params, n_tokens):
    """The ``6·N·D`` rule of thumb for training compute (2 FLOPs per weight per token forward, 4 backward)."""
    n, d = float(n_params), float(n_tokens)
    if not (n > 0 and d > 0 and math.isfinite(n) and math.isfinite(d)):
        raise InvalidArgumentError(
            f"chinchilla_flops: N and D must be finite and > 0, got {n_params}, {n_tokens}")
    return 6.0 * n * d


#: The guide's models with their parameter count N and training tokens D (6·N·D places them on the compute
#: axis). GPT-3 175B: 300 billion tokens (Brown et al. 2020, table 2.2). GPT-2 1.5B: OpenAI published the data
#: (WebText, about 40 GB of text) but not the token count or the number of passes; 1e10 tokens here is an
#: estimate (40 GB at about 4 bytes per token), good to a factor of a few.
GUIDE_MODELS = {
    "GPT-2 1.5B": {"params": 1.5e9, "tokens": 1.0e10, "tokens_published": False},
    "GPT-3 175B": {"params": 175e9, "tokens": 300e9, "tokens_published": True},
}


# ------------------------------------------------------------------------------------------- the sweep

_WORKER_DATA = None  # (train_ids, val_ids) inside a sweep's worker process


@dataclass
class Run:
    """One training run of a sweep: a model size trained on one compute budget.

    ``flops`` is what the run actually spent (``steps × training_flops_per_step``, at most ``budget``);
    ``seconds`` its wall time and ``cpu_seconds`` the process CPU time (user + system) during it."""

    name: str
    config: dict
    params: int
    non_embedding_params: int
    budget: float
    steps: int
    tokens: int
    flops: float
    val_loss: float
    train_loss: float
    seconds: float
    cpu_seconds: float
    lr: float
    stop_reason: str = "max_steps"

    def as_dict(self):
        return asdict(self)


class Sweep(list):
    """The runs of :func:`sweep` (a list of :class:`Run`); ``stop_reason`` is ``"done"`` or ``"interrupted"``
    and ``skipped`` lists ``(name, budget, why)`` for pairs that were not run."""

    def __init__(self, runs=()):
        super().__init__(runs)
        self.stop_reason = "done"
        self.skipped = []

    def budgets(self):
        """The distinct budgets, ascending."""
        return sorted({r.budget for r in self})

    def at(self, budget):
        """The runs of one budget, smallest model first."""
        return sorted([r for r in self if r.budget == budget], key=lambda r: r.params)

    def __repr__(self):
        return f"Sweep({len(self)} runs, {len(self.budgets())} budgets, stop_reason={self.stop_reason!r})"


def _cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_one(config, budget, train_ids, val_ids, *, batch_size=16, block_size=64, lr=3e-3, warmup_frac=0.05,
              min_lr_ratio=0.1, weight_decay=0.1, eval_iters=20, seed=0, name=None):
    """Train one GPT of ``config`` on ``budget`` training FLOPs; returns its :class:`Run`.

    The step count is the largest that fits the budget; the learning rate warms up over ``warmup_frac`` of the
    steps and decays on a cosine to ``min_lr_ratio`` × ``lr`` at the last step (each run's schedule fits its
    own budget, as in Hoffmann et al.); AdamW with betas (0.9, 0.99) and ``weight_decay``. ``lr`` is a number
    or a function ``config -> lr``. The model is initialised from the global generator seeded with ``seed``.
    ``val_loss`` is the mean loss on ``eval_iters`` fixed held-out batches (the same batches for every run).
    If Ctrl-C stops the run early, ``stop_reason`` is ``"interrupted"`` and ``val_loss`` is the one measured
    before training (no final evaluation)."""
    from . import optim, train
    from .models import GPT, GPTConfig

    if not isinstance(config, GPTConfig):
        raise TypeError(f"train_one: config must be a GPTConfig, got {type(config).__name__}")
    budget = _positive_number("budget", budget)
    block_size = _positive_int("block_size", block_size)
    if block_size > config.block_size:
        raise InvalidArgumentError(
            f"train_one: block_size {block_size} is longer than the model's context {config.block_size}"
        )
    per_step = training_flops_per_step(config, batch_size, block_size)
    steps = int(budget // per_step)
    if steps < 1:
        raise InvalidArgumentError(
            f"train_one: a budget of {budget:.3g} FLOPs buys no step of this model "
            f"({per_step:.3g} FLOPs each)"
        )
    peak = _positive_number("lr", lr(config) if callable(lr) else lr)
    if not (isinstance(warmup_frac, (int, float)) and 0 <= warmup_frac < 1):
        raise InvalidArgumentError(f"train_one: warmup_frac must be in [0, 1), got {warmup_frac!r}")
    _core.manual_seed(int(seed))
    model = GPT(config)
    opt = optim.AdamW(model.parameters(), lr=peak, betas=(0.9, 0.99), weight_decay=weight_decay)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    hist = train.fit(model, opt, train_ids, val_ids, batch_size=batch_size, block_size=block_size,
                     eval_iters=eval_iters, max_steps=steps, lr=peak,
                     warmup_steps=max(1, int(warmup_frac * steps)), min_lr_ratio=min_lr_ratio,
                     seed=int(seed), progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    done = int(hist.last("step") or 0)
    cfg = asdict(config)
    return Run(
        name=name or f"L{config.n_layer}-d{config.n_embd}", config=cfg, params=count_params(model),
        non_embedding_params=count_params(model, non_embedding=True), budget=budget, steps=done,
        tokens=done * batch_size * block_size, flops=done * per_step, val_loss=float(hist.last("val_loss")),
        train_loss=float(hist.last("loss")), seconds=seconds, cpu_seconds=cpu, lr=peak,
        stop_reason=hist.stop_reason,
    )


def sweep(configs, budgets, train_ids, val_ids, *, min_steps=20, select=None, workers=1, threads=1,
          progress=True, **train_kwargs):
    """Train every GPT config in ``configs`` on every compute budget in ``budgets`` (training FLOPs), all on
    the same data with the same seed and recipe (:func:`train_one`'s keyword arguments); returns a
    :class:`Sweep` of :class:`Run` records, smallest budget first.

    ``select(config, budget) -> bool``, if given, picks which pairs to run (e.g. only the sizes near the
    expected optimum of each budget); the others are listed in ``Sweep.skipped``, as are pairs whose budget
    buys fewer than ``min_steps`` steps (such a run measures the learning-rate warmup, not the model).

    ``workers``: how many runs train at once, each in its own process with ``threads`` threads (tiny models
    gain little from a second thread, so two one-thread workers use two cores better than one two-thread
    run). Every run seeds itself, so the records are the same for any number of workers (except the clock
    readings). A callable ``lr`` is evaluated here, in this process, so it need not be picklable. Workers are
    started with ``spawn``: in a script, call ``sweep(..., workers=2)`` under ``if __name__ == "__main__":``.

    ``progress``: a tqdm bar over the runs (plain prints without tqdm). Ctrl-C stops cleanly: runs in progress
    are dropped and the finished runs are returned (``stop_reason="interrupted"``)."""
    from .models import GPTConfig

    configs = list(configs)
    if not configs:
        raise InvalidArgumentError("sweep: no configs")
    for c in configs:
        if not isinstance(c, GPTConfig):
            raise TypeError(f"sweep: configs must be GPTConfig, got {type(c).__name__}")
    budgets = sorted(_positive_number("budget", b) for b in budgets)
    if not budgets:
        raise InvalidArgumentError("sweep: no budgets")
    min_steps = _positive_int("min_steps", min_steps)
    workers, threads = _positive_int("workers", workers), _positive_int("threads", threads)
    if select is not None and not callable(select):
        raise TypeError(f"sweep: select must be a function (config, budget) -> bool, "
                        f"got {type(select).__name__}")
    batch_size = train_kwargs.get("batch_size", 16)
    block_size = train_kwargs.get("block_size", 64)
    lr = train_kwargs.pop("lr", 3e-3)
    plan, out = [], Sweep()
    for b in budgets:
        for c in configs:
            steps = int(b // training_flops_per_step(c, batch_size, block_size))
            name = f"L{c.n_layer}-d{c.n_embd}"
            if steps < min_steps:
                out.skipped.append((name, b, f"{steps} steps < min_steps={min_steps}"))
            elif select is not None and not select(c, b):
                out.skipped.append((name, b, "not selected"))
            else:
                plan.append((c, b, dict(train_kwargs, name=name, lr=float(lr(c) if callable(lr) else lr))))
    bar = _bar(len(plan), progress)
    done = {}

    def record(i, run):
        if run.stop_reason == "interrupted":  # Ctrl-C inside fit: the run is incomplete, drop it
            return False
        done[i] = run
        c, b, kw = plan[i]
        bar.update(f"{kw['name']} @ {b:.2g} FLOPs: val {run.val_loss:.3f} ({run.seconds:.1f} s)")
        return True

    try:
        if workers == 1:
            before = _core.get_num_threads()
            _core.set_num_threads(threads)
            try:
                for i, (c, b, kw) in enumerate(plan):
                    if not record(i, train_one(c, b, train_ids, val_ids, **kw)):
                        out.stop_reason = "interrupted"
                        break
            finally:
                _core.set_num_threads(before)
        else:
            out.stop_reason = _sweep_parallel(plan, train_ids, val_ids, workers, threads, record)
    except KeyboardInterrupt:
        out.stop_reason = "interrupted"
    finally:
        bar.close()
    out.extend(done[i] for i in sorted(done))
    return out


def _worker_init(train_ids, val_ids, threads):
    global _WORKER_DATA
    _WORKER_DATA = (train_ids, val_ids)
    _core.set_num_threads(threads)


def _worker_run(c, b, kw):
    train_ids, val_ids = _WORKER_DATA
    return train_one(c, b, train_ids, val_ids, **kw)


def _sweep_parallel(plan, train_ids, val_ids, workers, threads, record):
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked Rust thread pool
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(np.asarray(train_ids), np.asarray(val_ids), threads))
    try:
        futures = {pool.submit(_worker_run, c, b, kw): i for i, (c, b, kw) in enumerate(plan)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                if not record(futures[f], f.result()):
                    return "interrupted"
        return "done"
    except KeyboardInterrupt:  # Ctrl-C: stop the workers now rather than after their current runs
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _bar:
    def __init__(self, total, enabled):
        self.enabled, self.n, self.total, self.tqdm = enabled, 0, total, None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.tqdm = tqdm(total=total, desc="sweep", unit="run")
            except ImportError:
                pass

    def update(self, msg):
        self.n += 1
        if self.tqdm is not None:
            self.tqdm.set_postfix_str(msg, refresh=False)
            self.tqdm.update(1)
        elif self.enabled:
            print(f"[{self.n}/{self.total}] {msg}", flush=True)

    def close(self):
        if self.tqdm is not None:
            self.tqdm.close()


# ------------------------------------------------------------------------------------------- fits


@dataclass
class PowerLaw:
    """``L(C) = E + a · C^(-alpha)`` fitted by least squares in log space; ``r2`` is the coefficient of
    determination of log L (1 = a perfect line on log-log axes); ``E = 0`` when no irreducible term was
    fitted."""

    a: float
    alpha: float
    E: float = 0.0
    r2: float = float("nan")
    n: int = 0

    def __call__(self, C):
        return self.predict(C)

    def predict(self, C):
        C = np.asarray(C, dtype=float)
        return self.E + self.a * C ** (-self.alpha)

    def __str__(self):
        e = f"{self.E:.3f} + " if self.E else ""
        return f"L(C) = {e}{self.a:.4g} * C^-{self.alpha:.4f}  (R^2 = {self.r2:.4f}, {self.n} points)"


def _xy(name, C, L, min_points):
    C = np.asarray(C, dtype=float)
    L = np.asarray(L, dtype=float)
    if C.ndim != 1 or L.ndim != 1 or C.shape != L.shape:
        raise InvalidArgumentError(
            f"{name}: C and L must be 1-D and of the same length, got shapes {C.shape} and {L.shape}"
        )
    if len(C) < min_points:
        raise InvalidArgumentError(f"{name}: needs at least {min_points} points, got {len(C)}")
    for nm, v in (("C", C), ("L", L)):
        if not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise InvalidArgumentError(f"{name}: every {nm} must be finite and > 0, got {v.tolist()}")
    if np.unique(C).size < 2:
        raise InvalidArgumentError(f"{name}: C must hold at least 2 distinct values to fit a slope")
    return C, L


def _line(x, y):
    """Least-squares y = c0 + c1 x; returns (c0, c1, sse)."""
    A = np.stack([np.ones_like(x), x], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    r = y - A @ coef
    return float(coef[0]), float(coef[1]), float(r @ r)


def fit_power_law(C, L, irreducible=False):
    """Fit ``L = a · C^(-alpha)`` (``irreducible=True``: ``L = E + a · C^(-alpha)``, ``0 <= E < min L``) by
    least squares on ``log L``; returns a :class:`PowerLaw` with ``a``, ``alpha``, ``E`` and ``r2``.

    Without ``E`` it is a straight line through ``(log C, log L)``. With ``E``, the line is fitted through
    ``(log C, log(L - E))`` for each candidate ``E`` and the ``E`` whose curve has the smallest squared error
    in ``log L`` is kept (a grid over ``[0, min L)``, then golden-section refinement). Needs ≥ 3 points
    (≥ 4 with ``E``), all finite and > 0, with at least 2 distinct ``C``."""
    C, L = _xy("fit_power_law", C, L, 4 if irreducible else 3)
    x, y = np.log(C), np.log(L)
    sst = float(((y - y.mean()) ** 2).sum())

    def r2(sse):
        return 1.0 - sse / sst if sst > 0 else 1.0

    if not irreducible:
        c0, c1, sse = _line(x, y)
        return PowerLaw(a=math.exp(c0), alpha=-c1, E=0.0, r2=r2(sse), n=len(C))

    def fit_at(E):
        c0, c1, _ = _line(x, np.log(L - E))
        pred = np.log(E + math.exp(c0) * C ** c1)
        return float(((y - pred) ** 2).sum()), c0, c1

    hi = float(L.min()) * (1 - 1e-9)
    grid = np.linspace(0.0, hi, 401)[:-1]
    errs = [fit_at(E)[0] for E in grid]
    k = int(np.argmin(errs))
    g = (math.sqrt(5) - 1) / 2
    a_, b_ = float(grid[max(k - 1, 0)]), float(grid[k + 1]) if k + 1 < len(grid) else hi
    for _ in range(60):
        c_, d_ = b_ - g * (b_ - a_), a_ + g * (b_ - a_)
        if fit_at(c_)[0] < fit_at(d_)[0]:
            b_ = d_
        else:
            a_ = c_
    E = (a_ + b_) / 2
    if fit_at(E)[0] > errs[k]:
        E = float(grid[k])
    sse, c0, c1 = fit_at(E)
    return PowerLaw(a=math.exp(c0), alpha=-c1, E=float(E), r2=r2(sse), n=len(C))


@dataclass
class IsoFLOPOptimum:
    """The best model size for one budget, from a parabola fitted to val loss against log10(params).

    ``params`` (N*) and ``loss`` are the parabola's vertex; ``tokens`` (D*) comes from the runs' own
    tokens-versus-params line on log axes, evaluated at N*. ``interior`` is False when the vertex lies outside
    the sizes that were run (an extrapolation: widen the family of sizes)."""

    budget: float
    params: float
    tokens: float
    loss: float
    interior: bool
    coeffs: tuple = field(default=(), repr=False)  # (c2, c1, c0): loss = c2 x^2 + c1 x + c0, x = log10 N
    runs: list = field(default_factory=list, repr=False)

    @property
    def tokens_per_param(self):
        return self.tokens / self.params


def isoflop_optima(runs, min_runs=3):
    """For each budget with at least ``min_runs`` runs of distinct sizes: the :class:`IsoFLOPOptimum` (a
    parabola in log10 N through that budget's val losses). Budgets whose parabola opens downwards (no minimum)
    are left out."""
    runs = list(runs)
    if not runs:
        raise InvalidArgumentError("isoflop_optima: no runs")
    min_runs = _positive_int("min_runs", min_runs)
    if min_runs < 3:
        raise InvalidArgumentError("isoflop_optima: a parabola needs min_runs >= 3")
    out = []
    for b in sorted({r.budget for r in runs}):
        group = sorted([r for r in runs if r.budget == b], key=lambda r: r.params)
        x = np.log10([r.params for r in group])
        if np.unique(x).size < min_runs:
            continue
        y = np.array([r.val_loss for r in group])
        c2, c1, c0 = np.polyfit(x, y, 2)
        if c2 <= 0:
            continue
        xs = -c1 / (2 * c2)
        t0, t1, _ = _line(x, np.log10([r.tokens for r in group]))
        out.append(IsoFLOPOptimum(
            budget=float(b), params=float(10 ** xs), tokens=float(10 ** (t0 + t1 * xs)),
            loss=float(c0 - c1 * c1 / (4 * c2)), interior=bool(x.min() <= xs <= x.max()),
            coeffs=(float(c2), float(c1), float(c0)), runs=group,
        ))
    return out


@dataclass
class ComputeOptimal:
    """The compute-optimal model for a budget, from power laws fitted through the IsoFLOP optima:
    ``N* = kN · C^aN``, ``D* = kD · C^aD`` and ``L* = E + a · C^-alpha``."""

    budget: float
    params: float
    tokens: float
    loss: float
    params_exponent: float
    tokens_exponent: float
    loss_law: PowerLaw

    @property
    def tokens_per_param(self):
        return self.tokens / self.params


def compute_optimal(budget, optima, irreducible=False, interior_only=True):
    """N*, D*, tokens per parameter and the loss to expect at ``budget`` FLOPs, extrapolated from
    :func:`isoflop_optima` (only optima that lie inside the sizes run, unless ``interior_only=False``)."""
    budget = _positive_number("budget", budget)
    pts = [o for o in optima if o.interior or not interior_only]
    if len(pts) < 3:
        raise InvalidArgumentError(
            f"compute_optimal: needs at least 3 IsoFLOP optima"
            f"{' inside the sizes run' if interior_only else ''}, got {len(pts)}"
        )
    C = np.array([o.budget for o in pts])
    n0, n1, _ = _line(np.log(C), np.log([o.params for o in pts]))
    d0, d1, _ = _line(np.log(C), np.log([o.tokens for o in pts]))
    law = fit_power_law(C, [o.loss for o in pts], irreducible=irreducible)
    return ComputeOptimal(
        budget=budget, params=math.exp(n0 + n1 * math.log(budget)),
        tokens=math.exp(d0 + d1 * math.log(budget)),
        loss=float(law.predict(budget)), params_exponent=n1, tokens_exponent=d1, loss_law=law,
    )


# ------------------------------------------------------------------------------------------- helpers


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def _positive_number(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{name} must be a number > 0, got {v!r}")
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise InvalidArgumentError(f"{name} must be finite and > 0, got {v!r}")
    return v


__all__ = [
    "count_params",
    "training_flops_per_token",
    "training_flops_per_step",
    "chinchilla_flops",
    "GUIDE_MODELS",
    "Run",
    "Sweep",
    "train_one",
    "sweep",
    "PowerLaw",
    "fit_power_law",
    "IsoFLOPOptimum",
    "isoflop_optima",
    "ComputeOptimal",
    "compute_optimal",
]
