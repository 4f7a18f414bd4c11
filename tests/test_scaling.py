"""nf.scaling: FLOP and parameter counts by hand, power-law fits on synthetic data, IsoFLOP optima, a tiny
sweep, and bad input refused with a clear error."""

import math

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier import scaling
from nanofrontier.models import GPT, GPTConfig

# ------------------------------------------------------------------------------------------- counting


def hand_gpt(V, T, L, d, bias=True):
    """Parameters and forward FLOPs per token of a GPT, written out matrix by matrix."""
    b = 1 if bias else 0
    per_layer = (
        d + b * d  # ln_1
        + 3 * d * d + b * 3 * d  # c_attn
        + d * d + b * d  # attn c_proj
        + d + b * d  # ln_2
        + d * 4 * d + b * 4 * d  # c_fc
        + 4 * d * d + b * d  # mlp c_proj
    )
    params = V * d + T * d + L * per_layer + d + b * d  # wte, wpe, blocks, ln_f (head tied to wte)
    # forward, one token at position i of a length-T sequence: 2*in*out per matmul, and per layer QK^T over
    # i+1 keys (2*d*(i+1)) and PV (2*d*(i+1)); averaged over i = 0..T-1: 4*d*(T+1)/2 = 2*d*(T+1)
    matmuls = L * 2 * (d * 3 * d + d * d + d * 4 * d + 4 * d * d) + 2 * d * V
    attn = L * sum(4 * d * (i + 1) for i in range(T)) / T
    return params, matmuls + attn


@pytest.mark.parametrize("V,T,L,d,h,bias", [(65, 16, 2, 16, 2, True), (11, 8, 1, 8, 1, False),
                                             (65, 64, 3, 48, 4, True)])
def test_counts_match_hand_counts(V, T, L, d, h, bias):
    cfg = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=h, n_embd=d, bias=bias)
    params, fwd = hand_gpt(V, T, L, d, bias)
    nf.manual_seed(0)
    model = GPT(cfg)
    assert scaling.count_params(model) == params == model.num_parameters()
    assert scaling.count_params(cfg) == params
    assert scaling.count_params(model, non_embedding=True) == params - V * d - T * d
    assert scaling.count_params(cfg, non_embedding=True) == params - V * d - T * d
    for src in (model, cfg):
        assert scaling.training_flops_per_token(src) == pytest.approx(3 * fwd, rel=1e-12)
        assert scaling.training_flops_per_step(src, 4, T) == pytest.approx(3 * fwd * 4 * T, rel=1e-12)
    # a shorter sequence: attention costs less, the matmuls the same
    _, fwd_half = hand_gpt(V, T // 2, L, d, bias)
    assert scaling.training_flops_per_token(cfg, T // 2) == pytest.approx(3 * fwd_half, rel=1e-12)
    assert scaling.training_flops_per_token(model, T // 2) == pytest.approx(
        scaling.training_flops_per_token(cfg, T // 2), rel=1e-12)


def test_six_n_d_and_guide_models():
    assert scaling.chinchilla_flops(175e9, 300e9) == pytest.approx(3.15e23)
    gpt3 = scaling.GUIDE_MODELS["GPT-3 175B"]
    assert scaling.chinchilla_flops(gpt3["params"], gpt3["tokens"]) == pytest.approx(3.15e23)
    # 6*N per token is close to our exact count when the context is short and the vocabulary small
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=256)
    exact = scaling.training_flops_per_token(cfg, 64)
    approx = 6 * scaling.count_params(cfg, non_embedding=True)
    assert abs(exact / approx - 1) < 0.05
    with pytest.raises(nf.InvalidArgumentError, match="finite and > 0"):
        scaling.chinchilla_flops(0, 1e9)


def test_counting_refuses_bad_input():
    with pytest.raises(TypeError, match="model or a GPTConfig"):
        scaling.count_params([1, 2, 3])
    with pytest.raises(TypeError, match="flops_per_token"):
        scaling.training_flops_per_token(nf.nn.Linear(2, 2))
    with pytest.raises(nf.InvalidArgumentError, match="batch_size"):
        scaling.training_flops_per_step(GPTConfig.tiny(), 0, 8)
    with pytest.raises(nf.InvalidArgumentError, match="seq_len"):
        scaling.training_flops_per_token(GPTConfig.tiny(), -1)


# ------------------------------------------------------------------------------------------- fits


def test_fit_recovers_a_known_exponent_exactly():
    C = np.logspace(9, 13, 7)
    L = 40.0 * C ** -0.12
    law = scaling.fit_power_law(C, L)
    assert law.alpha == pytest.approx(0.12, abs=1e-10)
    assert law.a == pytest.approx(40.0, rel=1e-8)
    assert law.E == 0 and law.r2 == pytest.approx(1.0, abs=1e-12) and law.n == 7
    assert law.predict(1e15) == pytest.approx(40.0 * 1e15 ** -0.12, rel=1e-8)
    assert "R^2 = 1.0000" in str(law)


def test_fit_recovers_the_exponent_through_noise():
    rng = np.random.default_rng(3)
    C = np.logspace(10, 12, 12)
    alphas = []
    for _ in range(20):
        L = 12.0 * C ** -0.09 * np.exp(rng.normal(0, 0.01, C.size))  # 1% multiplicative noise
        law = scaling.fit_power_law(C, L)
        assert law.r2 > 0.9
        alphas.append(law.alpha)
    # the estimate is unbiased and its spread matches least squares' standard error
    x = np.log(C)
    se = 0.01 / math.sqrt(((x - x.mean()) ** 2).sum())
    assert abs(np.mean(alphas) - 0.09) < 3 * se / math.sqrt(20)
    assert max(abs(a - 0.09) for a in alphas) < 4 * se


def test_fit_with_an_irreducible_term():
    C = np.logspace(9, 14, 12)
    L = 1.3 + 25.0 * C ** -0.2
    law = scaling.fit_power_law(C, L, irreducible=True)
    assert law.E == pytest.approx(1.3, abs=2e-3)
    assert law.alpha == pytest.approx(0.2, abs=2e-3)
    assert law.r2 > 0.99999
    # the pure power law bends away from this curve: its fit is worse and its exponent too small
    plain = scaling.fit_power_law(C, L)
    assert plain.r2 < law.r2 and plain.alpha < 0.2
    # with noise the irreducible term is still found to within a few percent
    rng = np.random.default_rng(0)
    noisy = L * np.exp(rng.normal(0, 0.003, C.size))
    law = scaling.fit_power_law(C, noisy, irreducible=True)
    assert law.E == pytest.approx(1.3, rel=0.05) and law.alpha == pytest.approx(0.2, rel=0.1)
    # no irreducible term in the data: E comes out near 0
    law = scaling.fit_power_law(C, 25.0 * C ** -0.2, irreducible=True)
    assert law.E < 0.01 and law.alpha == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize("C,L,irr,msg", [
    ([1e9, 1e10], [3.0, 2.0], False, "at least 3 points"),
    ([1e9, 1e10, 1e11], [3.0, 2.0, 1.5], True, "at least 4 points"),
    ([1e9, 1e10, 1e11], [3.0, 2.0], False, "same length"),
    ([[1e9, 1e10, 1e11]], [[3.0, 2.0, 1.0]], False, "1-D"),
    ([1e9, -1e10, 1e11], [3.0, 2.0, 1.0], False, "every C must be finite and > 0"),
    ([1e9, 1e10, 1e11], [3.0, 0.0, 1.0], False, "every L must be finite and > 0"),
    ([1e9, 1e10, 1e11], [3.0, float("nan"), 1.0], False, "every L"),
    ([1e9, 1e9, 1e9], [3.0, 2.0, 1.0], False, "2 distinct"),
])
def test_fit_refuses_bad_input(C, L, irr, msg):
    with pytest.raises(nf.InvalidArgumentError, match=msg):
        scaling.fit_power_law(C, L, irreducible=irr)


def synthetic_runs(budgets, sizes_per_budget=5, alpha_n=0.5):
    """Runs whose loss is a parabola in log10 N around N* = 0.05 * C^0.5, with min loss 30 * C^-0.1."""
    runs = []
    for C in budgets:
        n_opt = 0.05 * C ** alpha_n
        for k in np.linspace(-0.6, 0.6, sizes_per_budget):
            N = n_opt * 10 ** k
            runs.append(scaling.Run(
                name=f"n{N:.0f}", config={}, params=int(round(N)), non_embedding_params=int(N), budget=C,
                steps=1, tokens=int(C / (6 * N)), flops=C, val_loss=30 * C ** -0.1 + 0.8 * k * k,
                train_loss=0.0, seconds=0.0, cpu_seconds=0.0, lr=0.0))
    return runs


def test_isoflop_optima_and_compute_optimal_on_synthetic_runs():
    budgets = np.logspace(10, 12, 5)
    optima = scaling.isoflop_optima(synthetic_runs(budgets))
    assert len(optima) == 5
    for o, C in zip(optima, budgets):
        assert o.interior
        assert o.params == pytest.approx(0.05 * C ** 0.5, rel=1e-3)
        assert o.loss == pytest.approx(30 * C ** -0.1, rel=1e-4)  # params are rounded to ints
        assert o.tokens == pytest.approx(C / (6 * o.params), rel=1e-3)
        assert o.tokens_per_param == pytest.approx(C / (6 * o.params ** 2), rel=1e-3)
    best = scaling.compute_optimal(1e14, optima)
    assert best.params == pytest.approx(0.05 * 1e7, rel=1e-3)
    assert best.params_exponent == pytest.approx(0.5, abs=1e-3)
    assert best.tokens_exponent == pytest.approx(0.5, abs=1e-3)
    assert best.loss == pytest.approx(30 * 1e14 ** -0.1, rel=1e-4)
    assert best.tokens_per_param == pytest.approx(1e14 / (6 * (0.05 * 1e7) ** 2), rel=1e-2)
    assert best.loss_law.r2 == pytest.approx(1.0)


def test_isoflop_edge_optimum_is_flagged_and_bad_input_refused():
    # only sizes below the optimum: the vertex lies outside them
    small = [r for r in synthetic_runs([1e11], sizes_per_budget=9) if r.params < 0.05 * 1e11 ** 0.5 * 0.9]
    (o,) = scaling.isoflop_optima(small)
    assert not o.interior
    with pytest.raises(nf.InvalidArgumentError, match="at least 3 IsoFLOP optima"):
        scaling.compute_optimal(1e12, [o])
    with pytest.raises(nf.InvalidArgumentError, match="no runs"):
        scaling.isoflop_optima([])
    with pytest.raises(nf.InvalidArgumentError, match="min_runs >= 3"):
        scaling.isoflop_optima(small, min_runs=2)
    with pytest.raises(nf.InvalidArgumentError, match="budget"):
        scaling.compute_optimal(-1, scaling.isoflop_optima(synthetic_runs(np.logspace(10, 12, 3))))
    # two sizes per budget are not enough for a parabola: nothing comes back
    assert scaling.isoflop_optima(synthetic_runs([1e11], sizes_per_budget=2)) == []


# ------------------------------------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    text = np.tile(np.arange(11), 400) + 0  # a repeating pattern: learnable in a few steps
    noise = rng.integers(0, 11, text.size)
    ids = np.where(rng.random(text.size) < 0.05, noise, text).astype(np.int64)
    return ids[:3600], ids[3600:]


def tiny_configs():
    return [GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=d) for d in (8, 16, 24)]


def test_sweep_on_tiny_configs(data):
    train_ids, val_ids = data
    cfgs = tiny_configs()
    kw = dict(batch_size=4, block_size=16, lr=1e-2, eval_iters=4, seed=1)
    per_step = [scaling.training_flops_per_step(c, 4, 16) for c in cfgs]
    budgets = [30 * per_step[-1], 90 * per_step[-1]]
    runs = scaling.sweep(cfgs, budgets, train_ids, val_ids, min_steps=40, progress=False, **kw)
    # the largest model at the small budget buys 30 < 40 steps: skipped and said so
    assert len(runs) == 5 and len(runs.skipped) == 1 and runs.skipped[0][0] == "L1-d24"
    assert runs.stop_reason == "done" and runs.budgets() == sorted(budgets)
    for r in runs:
        i = [c.n_embd for c in cfgs].index(r.config["n_embd"])
        assert r.steps == int(r.budget // per_step[i]) and r.flops <= r.budget
        assert r.flops == pytest.approx(r.steps * per_step[i]) and r.tokens == r.steps * 4 * 16
        assert r.params == scaling.count_params(cfgs[i]) and r.stop_reason == "max_steps"
        assert math.isfinite(r.val_loss) and r.val_loss < math.log(11)  # it learned something
        assert r.seconds > 0 and r.cpu_seconds >= 0
    assert [r.params for r in runs.at(budgets[1])] == sorted(scaling.count_params(c) for c in cfgs)
    # seeded: the same run twice gives the same numbers
    again = scaling.train_one(cfgs[0], budgets[0], train_ids, val_ids, name="L1-d8", **kw)
    first = runs.at(budgets[0])[0]
    assert again.val_loss == first.val_loss and again.train_loss == first.train_loss
    # more compute for the same model: lower loss
    assert runs.at(budgets[1])[0].val_loss < first.val_loss
    # select: only the pairs it accepts run
    picked = scaling.sweep(cfgs, budgets[:1], train_ids, val_ids, select=lambda c, b: c.n_embd == 16,
                           progress=False, **kw)
    assert [r.name for r in picked] == ["L1-d16"] and picked[0].val_loss == runs.at(budgets[0])[1].val_loss
    assert ("L1-d8", budgets[0], "not selected") in picked.skipped


def test_sweep_in_two_worker_processes_gives_the_same_runs(data):
    train_ids, val_ids = data
    cfgs = tiny_configs()
    budget = 50 * scaling.training_flops_per_step(cfgs[-1], 4, 16)
    kw = dict(batch_size=4, block_size=16, eval_iters=4, seed=2, progress=False, min_steps=10,
              lr=lambda c: 0.1 / c.n_embd)  # a lambda: evaluated in this process, never pickled
    one = scaling.sweep(cfgs, [budget], train_ids, val_ids, **kw)
    two = scaling.sweep(cfgs, [budget], train_ids, val_ids, workers=2, **kw)
    assert len(one) == len(two) == 3 and two.stop_reason == "done"
    for a, b in zip(one, two):
        keys = ("name", "steps", "lr", "val_loss", "train_loss", "flops")
        assert [getattr(a, k) for k in keys] == [getattr(b, k) for k in keys]
    assert [r.lr for r in one] == [0.1 / c.n_embd for c in cfgs]


def test_sweep_stops_cleanly_on_ctrl_c(data, monkeypatch):
    train_ids, val_ids = data
    calls = []
    real = scaling.train_one

    def interrupted_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scaling, "train_one", interrupted_second)
    cfgs = tiny_configs()
    budget = 50 * scaling.training_flops_per_step(cfgs[-1], 4, 16)
    runs = scaling.sweep(cfgs, [budget], train_ids, val_ids, progress=False, batch_size=4, block_size=16,
                         eval_iters=2)
    assert runs.stop_reason == "interrupted" and len(runs) == 1


def test_sweep_refuses_bad_input(data):
    train_ids, val_ids = data
    cfg = tiny_configs()[0]
    with pytest.raises(nf.InvalidArgumentError, match="no configs"):
        scaling.sweep([], [1e9], train_ids, val_ids)
    with pytest.raises(TypeError, match="GPTConfig"):
        scaling.sweep([{"n_embd": 8}], [1e9], train_ids, val_ids)
    with pytest.raises(nf.InvalidArgumentError, match="budget must be finite and > 0"):
        scaling.sweep([cfg], [float("inf")], train_ids, val_ids)
    with pytest.raises(TypeError, match="select must be a function"):
        scaling.sweep([cfg], [1e9], train_ids, val_ids, select=True)
    with pytest.raises(nf.InvalidArgumentError, match="workers"):
        scaling.sweep([cfg], [1e9], train_ids, val_ids, workers=0)
    with pytest.raises(nf.InvalidArgumentError, match="no budgets"):
        scaling.sweep([cfg], [], train_ids, val_ids)
    with pytest.raises(nf.InvalidArgumentError, match="buys no step"):
        scaling.train_one(cfg, 10.0, train_ids, val_ids, batch_size=4, block_size=16)
    with pytest.raises(nf.InvalidArgumentError, match="lr must be finite and > 0"):
        scaling.train_one(cfg, 1e9, train_ids, val_ids, batch_size=4, block_size=16, lr=-1.0)
    with pytest.raises(nf.InvalidArgumentError, match="warmup_frac"):
        scaling.train_one(cfg, 1e9, train_ids, val_ids, batch_size=4, block_size=16, warmup_frac=1.5)
    with pytest.raises(nf.InvalidArgumentError, match="longer than the model's context"):
        scaling.train_one(cfg, 1e12, train_ids, val_ids, batch_size=4, block_size=32)
