"""nanofrontier.rl objectives against independent numpy formulas (float64), finite-difference gradient
checks, the edge cases the trainers hit (all-masked rows, chosen == rejected, β → 0, log-ratios of ±100,
groups with equal rewards, length-1 completions), every argument taking effect, and bad input refused."""

import math

import nanofrontier as nf
import numpy as np
import pytest
from nanofrontier.testing import gradcheck

rl = nf.rl
RNG = np.random.default_rng(0)


def f64(t):
    return np.asarray(t.numpy() if isinstance(t, nf.Tensor) else t, dtype=np.float64)


def close(got, want, atol=1e-5, rtol=1e-5, what=""):
    got, want = f64(got), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    diff = np.abs(got - want)
    ok = (diff <= atol + rtol * np.abs(want)) | (got == want)
    worst = np.max(np.where(ok, 0, diff))
    assert ok.all(), f"{what}: max |diff| {worst:.3g}; got {got.ravel()[:6]} want {want.ravel()[:6]}"


def np_log_sigmoid(x):
    # −log(1 + e^−x), written two ways so numpy never exponentiates a large positive number
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, -np.log1p(np.exp(-np.abs(x))), x - np.log1p(np.exp(-np.abs(x))))


# ---------------------------------------------------------------- reward model


def np_reward_loss(c, r, margin=None, k=0.0):
    c, r = np.float64(c), np.float64(r)
    m = np.zeros_like(c) if margin is None else np.float64(margin)
    return float(np.mean(-np_log_sigmoid(c - r - m)) + k * np.mean((c + r) ** 2))


def test_reward_loss_matches_numpy_and_gradcheck():
    c, r = RNG.normal(0, 2, 8).astype(np.float32), RNG.normal(0, 2, 8).astype(np.float32)
    m = RNG.uniform(0, 1, 8).astype(np.float32)
    for margin, k in [(None, 0.0), (m, 0.0), (m, 0.05), (None, 0.3)]:
        loss, met = rl.reward_loss(c, r, margin=margin, center_rewards_coefficient=k)
        close(loss, np_reward_loss(c, r, margin, k), what=f"margin={margin is not None} k={k}")
        gradcheck(
            lambda a, b, m=margin, k=k: rl.reward_loss(a, b, margin=m, center_rewards_coefficient=k)[0],
            [c, r],
        )
    assert met["accuracy"] == pytest.approx(np.mean(c > r))
    assert met["mean_gap"] == pytest.approx(np.mean(np.float64(c) - r))
    assert met["chosen_mean"] == pytest.approx(np.mean(np.float64(c)))
    # every argument moves the loss
    base = rl.reward_loss(c, r)[0].item()
    assert rl.reward_loss(c, r, margin=m)[0].item() > base
    assert rl.reward_loss(c, r, center_rewards_coefficient=0.1)[0].item() > base


def test_reward_loss_any_gap_and_ties():
    loss, met = rl.reward_loss([100.0, -100.0], [0.0, 0.0])
    close(loss, 50.0, what="gap ±100")
    c = nf.tensor([np.inf, 0.0, 1.0], requires_grad=True)
    r = nf.tensor([0.0, np.inf, 1.0], requires_grad=True)
    loss, _ = rl.reward_loss(c, r)
    assert loss.item() == np.inf  # −log σ(−inf) = inf, never nan
    loss.backward()
    close(c.grad, [0.0, -1 / 3, -1 / 6], what="dc at ±inf")
    loss, met = rl.reward_loss([0.5, -1.0], [0.5, -1.0])
    close(loss, math.log(2), what="chosen == rejected")
    assert met["accuracy"] == 0.0 and met["mean_gap"] == 0.0


def test_reward_loss_bad_input():
    with pytest.raises(nf.ShapeError, match=r"rejected_rewards has shape \(3,\) but chosen_rewards"):
        rl.reward_loss([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(nf.ShapeError, match="margin has shape"):
        rl.reward_loss([1.0, 2.0], [1.0, 2.0], margin=[1.0])
    with pytest.raises(nf.InvalidArgumentError, match="center_rewards_coefficient must be >= 0"):
        rl.reward_loss([1.0], [0.0], center_rewards_coefficient=-0.1)
    with pytest.raises(nf.ShapeError, match="must be 1-D"):
        rl.reward_loss([[1.0]], [[0.0]])
    with pytest.raises(nf.InvalidArgumentError, match=r"rejected_rewards\[0\] is NaN; rewards may be ±inf"):
        rl.reward_loss([1.0], [np.nan])


# ---------------------------------------------------------------- DPO


def np_dpo(pc, pr, rc, rr, beta, loss_type, eps):
    u = (np.float64(pc) - rc) - (np.float64(pr) - rr)
    if loss_type == "sigmoid":
        losses = -(1 - eps) * np_log_sigmoid(beta * u) - eps * np_log_sigmoid(-beta * u)
    elif loss_type == "ipo":
        losses = (u - 1 / (2 * beta)) ** 2
    else:
        losses = np.maximum(0.0, 1 - beta * u)
    cr, rjr = beta * (np.float64(pc) - rc), beta * (np.float64(pr) - rr)
    return losses.mean(), cr, rjr, np.mean(cr - rjr), np.mean(cr > rjr)


def dpo_inputs(b=6):
    return [RNG.normal(-5, 1.5, b).astype(np.float32) for _ in range(4)]


@pytest.mark.parametrize(
    "loss_type,beta,eps",
    [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.25), ("ipo", 0.3, 0.0), ("hinge", 0.1, 0.0)],
)
def test_dpo_matches_numpy_and_gradcheck(loss_type, beta, eps):
    pc, pr, rc, rr = dpo_inputs()
    if loss_type == "hinge":  # keep 1 − βu away from its kink at 0
        u = (pc - rc) - (pr - rr)
        pc = np.where(np.abs(1 - beta * u) < 0.2, pc + 3.0, pc).astype(np.float32)
    loss, met = rl.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    want, cr, rjr, margin, acc = np_dpo(pc, pr, rc, rr, beta, loss_type, eps)
    close(loss, want, what=loss_type)
    close(met["chosen_rewards"], cr, what="chosen_rewards")
    close(met["rejected_rewards"], rjr, what="rejected_rewards")
    assert met["margin"] == pytest.approx(margin, abs=1e-6) and met["accuracy"] == pytest.approx(acc)
    assert not met["chosen_rewards"].requires_grad
    gradcheck(
        lambda a, b: rl.dpo_loss(a, b, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)[0],
        [pc, pr],
    )


def test_dpo_reference_gets_no_gradient():
    pc, pr, rc, rr = (nf.tensor(x, requires_grad=True) for x in dpo_inputs())
    loss, _ = rl.dpo_loss(pc, pr, rc, rr)
    loss.backward()
    assert pc.grad is not None and pr.grad is not None
    assert rc.grad is None and rr.grad is None


def test_dpo_edge_cases():
    x = np.array([-3.0, -7.0], np.float32)
    r = np.array([-2.0, -1.0], np.float32)
    loss, met = rl.dpo_loss(x, x, r, r)
    close(loss, math.log(2), what="chosen == rejected")
    assert met["margin"] == 0.0 and met["accuracy"] == 0.0
    # β → 0: ln 2 and gradient −β/2 per pair (over B)
    pc = nf.tensor([0.0, 5.0], requires_grad=True)
    loss, _ = rl.dpo_loss(pc, [-4.0, 1.0], [0.0, 0.0], [0.0, 0.0], beta=1e-8)
    close(loss, math.log(2), what="beta 1e-8")
    loss.backward()
    close(pc.grad, [-0.25e-8, -0.25e-8], atol=1e-14, what="beta 1e-8 grad")
    # log-ratios ±100
    for loss_type in ["sigmoid", "ipo", "hinge"]:
        pc = nf.tensor([100.0, -100.0], requires_grad=True)
        loss, _ = rl.dpo_loss(pc, [-100.0, 100.0], [0.0, 0.0], [0.0, 0.0], beta=1.0, loss_type=loss_type)
        want = np_dpo([100.0, -100.0], [-100.0, 100.0], 0.0, 0.0, 1.0, loss_type, 0.0)[0]
        close(loss, want, rtol=1e-5, what=f"{loss_type} ±100")
        loss.backward()
        assert np.isfinite(pc.grad.numpy()).all()


def test_dpo_every_argument_takes_effect():
    pc, pr, rc, rr = dpo_inputs()
    base = rl.dpo_loss(pc, pr, rc, rr)[0].item()
    for kw in [{"beta": 0.5}, {"label_smoothing": 0.2}, {"loss_type": "ipo"}, {"loss_type": "hinge"}]:
        assert abs(rl.dpo_loss(pc, pr, rc, rr, **kw)[0].item() - base) > 1e-4, kw
    assert abs(rl.dpo_loss(pc, pr, rr, rc)[0].item() - base) > 1e-4


def test_dpo_bad_input():
    a = [-1.0, -2.0]
    with pytest.raises(nf.ShapeError, match="ref_rejected_logps has shape \\(3,\\)"):
        rl.dpo_loss(a, a, a, [-1.0, -2.0, -3.0])
    with pytest.raises(nf.InvalidArgumentError, match="beta must be > 0 and finite, got -0.1"):
        rl.dpo_loss(a, a, a, a, beta=-0.1)
    with pytest.raises(nf.InvalidArgumentError, match="unknown loss_type 'kto'|unknown loss_type \"kto\""):
        rl.dpo_loss(a, a, a, a, loss_type="kto")
    with pytest.raises(nf.InvalidArgumentError, match="label_smoothing applies to loss_type='sigmoid' only"):
        rl.dpo_loss(a, a, a, a, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(nf.InvalidArgumentError, match="label_smoothing must be in \\[0, 0.5\\]"):
        rl.dpo_loss(a, a, a, a, label_smoothing=0.9)
    with pytest.raises(nf.InvalidArgumentError, match="policy_chosen_logps\\[1\\] is NaN"):
        rl.dpo_loss([-1.0, np.nan], a, a, a)


# ---------------------------------------------------------------- PPO


def np_ppo(lp, old, adv, mask, eps):
    lp, old, adv, mask = (np.float64(x) for x in (lp, old, adv, mask))
    if adv.shape != lp.shape:
        adv = np.repeat(adv[:, None], lp.shape[1], axis=1)
    ratio = np.exp(lp - old)
    per_tok = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    clipped = (np.clip(ratio, 1 - eps, 1 + eps) * adv < ratio * adv).astype(np.float64)
    n = mask.sum()
    if n == 0:
        return 0.0, 0.0, 0.0
    return (per_tok * mask).sum() / n, (0.5 * (lp - old) ** 2 * mask).sum() / n, (clipped * mask).sum() / n


def logps_away_from_kinks(shape, edges=(0.8, 1.2)):
    old = RNG.normal(-2, 0.5, shape)
    d = RNG.uniform(-0.5, 0.5, shape)
    for e in np.log(edges):
        near = np.abs(d - e) < 0.03
        d = np.where(near, e + 0.03 * np.sign(d - e + 1e-12), d)
    return (old + d).astype(np.float32), old.astype(np.float32)


MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)


def test_ppo_policy_loss_matches_numpy_and_gradcheck():
    lp, old = logps_away_from_kinks((4, 5))
    adv = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    for mask, eps, a in [(None, 0.2, adv), (MASK, 0.2, adv), (MASK, 0.1, adv), (MASK, 0.2, adv[:, 0])]:
        loss, met = rl.ppo_policy_loss(lp, old, a, mask=mask, clip_eps=eps)
        want, kl, clip = np_ppo(lp, old, a, np.ones_like(lp) if mask is None else mask, eps)
        close(loss, want, what=f"ppo eps {eps}")
        assert met["approx_kl"] == pytest.approx(kl) and met["clip_fraction"] == pytest.approx(clip)
    gradcheck(lambda x: rl.ppo_policy_loss(x, old, adv, mask=MASK)[0], [lp])
    # a boolean mask is the same mask
    as_bool = rl.ppo_policy_loss(lp, old, adv, mask=MASK.astype(bool))[0].item()
    assert as_bool == rl.ppo_policy_loss(lp, old, adv, mask=MASK)[0].item()
    # clip_eps and mask each change the result
    base = rl.ppo_policy_loss(lp, old, adv, mask=MASK)[0].item()
    assert rl.ppo_policy_loss(lp, old, adv, mask=MASK, clip_eps=0.05)[0].item() != base
    assert rl.ppo_policy_loss(lp, old, adv)[0].item() != base


def test_ppo_policy_loss_edge_cases():
    # an all-masked batch: 0 and zero gradient, not nan
    lp = nf.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, met = rl.ppo_policy_loss(lp, [[-1.0, -2.0]], [[1.0, 1.0]], mask=[[0.0, 0.0]])
    assert loss.item() == 0.0 and met == {"approx_kl": 0.0, "clip_fraction": 0.0}
    loss.backward()
    assert (lp.grad.numpy() == 0).all()
    # log-ratios ±100: finite (the log-ratio is clamped to ±20 before exp, as veRL does)
    lp = nf.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    loss, met = rl.ppo_policy_loss(lp, np.zeros((1, 4), np.float32), [[1.0, 1.0, -1.0, -1.0]])
    want = (-1.2 - math.exp(-20) + math.exp(20) + 0.8) / 4
    close(loss, want, rtol=1e-6, what="±100")
    loss.backward()
    assert np.isfinite(lp.grad.numpy()).all() and met["clip_fraction"] == 0.5
    # length-1 completion: −A at ratio 1
    loss, _ = rl.ppo_policy_loss([[-0.7]], [[-0.7]], [2.0])
    assert loss.item() == -2.0


def test_ppo_value_loss_matches_numpy():
    v = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    vo = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    ret = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    for clip in [None, 0.2, 10.0]:
        loss, met = rl.ppo_value_loss(v, vo, ret, mask=MASK, clip_eps=clip)
        e1 = (np.float64(v) - ret) ** 2
        e2 = e1 if clip is None else (vo + np.clip(np.float64(v) - vo, -clip, clip) - ret) ** 2
        close(loss, (0.5 * np.maximum(e1, e2) * MASK).sum() / MASK.sum(), what=f"clip {clip}")
        assert met["clip_fraction"] == pytest.approx(((e2 > e1) * MASK).sum() / MASK.sum())
    # gradcheck with a clip range away from every |V − V_old|
    d = np.abs(v - vo)
    eps = next(e for e in np.arange(0.05, 3, 0.05) if (np.abs(d - e) > 0.03).all())
    gradcheck(lambda x: rl.ppo_value_loss(x, vo, ret, mask=MASK, clip_eps=float(eps))[0], [v])
    clipped = rl.ppo_value_loss(v, vo, ret, clip_eps=0.1)[0]
    plain = rl.ppo_value_loss(v, vo, ret, clip_eps=None)[0]
    assert clipped.item() != plain.item()


def np_gae(r, v, mask, gamma, lam):
    r, v = np.float64(r), np.float64(v)
    adv = np.zeros_like(r)
    for b in range(r.shape[0]):
        n = int(mask[b].sum())
        vv = np.append(v[b, :n], 0.0)
        delta = r[b, :n] + gamma * vv[1:] - vv[:-1]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
    return adv, (adv + v) * mask


def test_gae_matches_numpy():
    r = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    v = RNG.normal(0, 1, (4, 5)).astype(np.float32)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)]:
        adv, ret = rl.gae(r, v, mask=MASK, gamma=gamma, lam=lam)
        want_a, want_r = np_gae(r, v, MASK, gamma, lam)
        close(adv, want_a, what=f"advantages γ {gamma} λ {lam}")
        close(ret, want_r, what="returns")
        assert not adv.requires_grad
    close(rl.gae(r, v)[0], np_gae(r, v, np.ones_like(r), 1.0, 0.95)[0], what="mask None")
    with pytest.raises(nf.InvalidArgumentError, match="mask row 0 is not right-padded: a 1 at position 2"):
        rl.gae(r, v, mask=[[1, 0, 1, 0, 0]] + [[1] * 5] * 3)
    with pytest.raises(nf.InvalidArgumentError, match="lam must be in \\[0, 1\\], got 2"):
        rl.gae(r, v, lam=2.0)
    with pytest.raises(nf.ShapeError, match="values has shape \\(4, 4\\)"):
        rl.gae(r, v[:, :4])


def test_kl_penalty_matches_numpy_and_gradcheck():
    lp = RNG.normal(-2, 1, (4, 5)).astype(np.float32)
    ref = RNG.normal(-2, 1, (4, 5)).astype(np.float32)
    x = np.float64(ref) - lp
    for est, want in [("k1", -x), ("k3", np.exp(x) - x - 1)]:
        close(rl.kl_penalty(lp, ref, mask=MASK, estimator=est), want * MASK, what=est)
        gradcheck(lambda a, est=est: rl.kl_penalty(a, ref, mask=MASK, estimator=est), [lp])
    k3 = rl.kl_penalty([[100.0, -100.0]], [[0.0, 0.0]], estimator="k3").numpy()
    assert np.isfinite(k3).all()
    with pytest.raises(nf.InvalidArgumentError, match="unknown estimator 'k2'|unknown estimator \"k2\""):
        rl.kl_penalty(lp, ref, estimator="k2")


def test_entropy_matches_numpy_and_gradcheck():
    x = RNG.normal(0, 2, (3, 4, 7)).astype(np.float32)
    z = np.float64(x) - x.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    close(rl.entropy_from_logits(x), -(np.exp(logp) * logp).sum(-1), what="entropy")
    gradcheck(lambda a: rl.entropy_from_logits(a), [x[0]])
    close(rl.entropy_from_logits(np.zeros((2, 5), np.float32)), [math.log(5)] * 2, what="uniform")


def test_kl_controllers():
    c = rl.AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=100)
    # KL twice the target: error clipped to +0.2 → β·(1 + 0.2·10/100)
    assert c.update(12.0, 10) == pytest.approx(0.2 * 1.02)
    assert c.update(6.0, 10) == pytest.approx(0.2 * 1.02)  # on target: unchanged
    assert c.update(3.0, 10) == pytest.approx(0.2 * 1.02 * (1 - 0.2 * 0.1))  # error −0.5, clipped to −0.2
    assert rl.FixedKLController(0.1).update(50.0, 10) == 0.1
    with pytest.raises(nf.InvalidArgumentError, match="target must be > 0"):
        rl.AdaptiveKLController(target=0.0)
    with pytest.raises(nf.InvalidArgumentError, match="current_kl must be a finite number"):
        c.update(float("nan"), 1)


# ---------------------------------------------------------------- GRPO


def np_grpo_advantages(r, g, scale):
    r = np.float64(r).reshape(-1, g)
    dev = r - r.mean(1, keepdims=True)
    if scale == "group":
        std = r.std(1, ddof=1, keepdims=True) if g > 1 else np.zeros((r.shape[0], 1))
    elif scale == "batch":
        std = np.full((r.shape[0], 1), r.ravel().std(ddof=1))
    else:
        std = np.full((r.shape[0], 1), 1.0 - 1e-4)
    return (dev / (std + 1e-4)).ravel()


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_numpy(scale):
    r = np.array([1.0, 0.0, 0.5, 0.25, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 1.0, 1.0], np.float32)
    a = rl.grpo_advantages(r, 4, scale=scale)
    close(a, np_grpo_advantages(r, 4, scale), what=scale)
    assert (a.numpy()[4:8] == 0).all()  # the equal-reward group
    assert np.isfinite(rl.grpo_advantages(np.ones(6, np.float32), 3, scale=scale).numpy()).all()


def test_rloo_and_advantage_errors():
    r = np.array([1.0, 0.0, 0.5, 2.0, 2.0, 2.0], np.float32)
    g = r.reshape(2, 3).astype(np.float64)
    want = (g - (g.sum(1, keepdims=True) - g) / 2).ravel()
    close(rl.rloo_advantages(r, 3), want, what="rloo")
    assert (rl.grpo_advantages(r, 1).numpy() == 0).all()  # group size 1: nothing to compare with
    with pytest.raises(nf.InvalidArgumentError, match="group_size 4 does not divide the batch of 6 rewards"):
        rl.grpo_advantages(r, 4)
    with pytest.raises(nf.InvalidArgumentError, match="group_size must be a positive int, got -3"):
        rl.grpo_advantages(r, -3)
    with pytest.raises(nf.InvalidArgumentError, match="group_size must be >= 2"):
        rl.rloo_advantages(r, 1)
    with pytest.raises(nf.InvalidArgumentError, match="rewards\\[2\\] is NaN"):
        rl.grpo_advantages([1.0, 0.0, np.nan, 1.0], 2)
    with pytest.raises(nf.InvalidArgumentError, match="unknown scale"):
        rl.grpo_advantages(r, 3, scale="std")


def np_grpo_loss(
    lp,
    old,
    adv,
    mask,
    ref=None,
    beta=0.0,
    eps_low=0.2,
    eps_high=None,
    loss_type="dapo",
    max_completion_length=None,
    num_items_in_batch=None,
):
    lp, old, mask = np.float64(lp), np.float64(old), np.float64(mask)
    adv = np.float64(adv)
    if adv.ndim == 1:
        adv = adv[:, None]
    eh = eps_low if eps_high is None else eps_high
    ratio = np.exp(lp - old)
    per_tok = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps_low, 1 + eh) * adv)
    if ref is not None:
        x = np.float64(ref) - lp
        per_tok = per_tok + beta * (np.exp(x) - x - 1)
    s = per_tok * mask
    if loss_type == "grpo":
        return (s.sum(1) / np.maximum(mask.sum(1), 1)).mean()
    if loss_type == "bnpo":
        return s.sum() / max(mask.sum(), 1)
    if loss_type == "dr_grpo":
        return s.sum() / (lp.shape[0] * max_completion_length)
    return s.sum() / max(num_items_in_batch or mask.sum(), 1)


GRPO_CASES = [
    {"loss_type": "grpo"},
    {"loss_type": "bnpo", "beta": 0.04},
    {"loss_type": "dr_grpo", "max_completion_length": 8, "eps_high": 0.28},
    {"loss_type": "dapo", "beta": 0.1, "eps_high": 0.28},
    {"loss_type": "dapo", "num_items_in_batch": 40},
]


@pytest.mark.parametrize("kw", GRPO_CASES, ids=[str(k) for k in GRPO_CASES])
def test_grpo_loss_matches_numpy_and_gradcheck(kw):
    lp, old = logps_away_from_kinks((4, 5), edges=(0.8, 1.2, 1.28))
    adv = RNG.normal(0, 1, 4).astype(np.float32)
    ref = RNG.normal(-2, 0.5, (4, 5)).astype(np.float32) if kw.get("beta") else None
    loss, met = rl.grpo_loss(lp, old, adv, MASK, ref_logps=ref, **kw)
    close(loss, np_grpo_loss(lp, old, adv, MASK, ref, **kw), what=str(kw))
    if ref is not None:
        x = np.float64(ref) - lp
        assert met["kl"] == pytest.approx(((np.exp(x) - x - 1) * MASK).sum() / MASK.sum(), rel=1e-5)
    else:
        assert met["kl"] is None
    gradcheck(lambda x: rl.grpo_loss(x, old, adv, MASK, ref_logps=ref, **kw)[0], [lp])


def test_grpo_every_argument_takes_effect():
    lp, old = logps_away_from_kinks((4, 5), edges=(0.8, 1.2, 1.28))
    adv = RNG.normal(0, 1, 4).astype(np.float32)
    ref = RNG.normal(-2, 0.5, (4, 5)).astype(np.float32)

    def loss(**kw):
        return rl.grpo_loss(lp, old, adv, MASK, **kw)[0].item()

    base = loss()
    for kw in [
        {"ref_logps": ref, "beta": 0.5},
        {"eps_low": 0.05},
        {"eps_high": 0.05},
        {"loss_type": "grpo"},
        {"loss_type": "dr_grpo", "max_completion_length": 5},
        {"num_items_in_batch": 18},
    ]:
        assert abs(loss(**kw) - base) > 1e-6, kw
    assert loss(loss_type="bnpo") == base  # dapo over one batch is bnpo
    assert loss(loss_type="dr_grpo", max_completion_length=5) == pytest.approx(
        2 * loss(loss_type="dr_grpo", max_completion_length=10), rel=1e-6
    )
    # per-token advantages equal to the per-sequence ones give the same loss
    per_token = rl.grpo_loss(lp, old, np.repeat(adv[:, None], 5, 1), MASK)[0].item()
    assert loss() == pytest.approx(per_token, rel=1e-6)
    # ref_logps with beta = 0 only reports the KL
    out, met = rl.grpo_loss(lp, old, adv, MASK, ref_logps=ref)
    assert out.item() == base and met["kl"] > 0


def test_grpo_loss_edge_cases():
    # all-masked rows and an all-masked batch: 0, zero gradient, never nan
    lp = nf.tensor(np.full((2, 3), -1.0, np.float32), requires_grad=True)
    for loss_type in ["grpo", "bnpo", "dr_grpo", "dapo"]:
        extra = {"max_completion_length": 3} if loss_type == "dr_grpo" else {}
        loss, met = rl.grpo_loss(
            lp,
            lp.detach(),
            [1.0, -1.0],
            np.zeros((2, 3)),
            ref_logps=lp.detach(),
            beta=0.1,
            loss_type=loss_type,
            **extra,
        )
        assert loss.item() == 0.0 and met["clip_fraction"] == 0.0 and met["kl"] == 0.0
        loss.backward()
        assert (lp.grad.numpy() == 0).all()
    # log-ratios ±100 to old and reference
    lp = nf.tensor([[100.0, -100.0], [100.0, -100.0]], requires_grad=True)
    z = np.zeros((2, 2), np.float32)
    loss, met = rl.grpo_loss(lp, z, [1.0, -1.0], np.ones((2, 2)), ref_logps=z, beta=0.1)
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(met["kl"]) and np.isfinite(lp.grad.numpy()).all()
    assert met["clip_low_fraction"] == 0.25 and met["clip_high_fraction"] == 0.25
    # length-1 completions, and a group with equal rewards (zero advantages → zero loss)
    one = np.array([[-0.5], [-0.7]], np.float32)
    assert rl.grpo_loss(one, one, [2.0, -1.0], np.ones((2, 1)), loss_type="grpo")[0].item() == -0.5
    adv = rl.grpo_advantages([1.0, 1.0], 2)
    assert rl.grpo_loss(one, one, adv, np.ones((2, 1)))[0].item() == 0.0


def test_grpo_loss_bad_input():
    x, m = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    with pytest.raises(nf.ShapeError, match="mask has shape \\(3, 2\\) but logps has shape \\(2, 3\\)"):
        rl.grpo_loss(x, x, [0.0, 0.0], np.ones((3, 2)))
    with pytest.raises(nf.ShapeError, match="old_logps has shape"):
        rl.grpo_loss(x, x[:, :2], [0.0, 0.0], m)
    with pytest.raises(nf.ShapeError, match="advantages must have the shape of logps"):
        rl.grpo_loss(x, x, [0.0, 0.0, 0.0], m)
    with pytest.raises(nf.InvalidArgumentError, match="beta must be >= 0"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, ref_logps=x, beta=-0.1)
    with pytest.raises(nf.InvalidArgumentError, match="needs ref_logps"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, beta=0.1)
    with pytest.raises(nf.InvalidArgumentError, match="unknown loss_type"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, loss_type="ppo")
    with pytest.raises(nf.InvalidArgumentError, match="needs max_completion_length"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, loss_type="dr_grpo")
    with pytest.raises(nf.InvalidArgumentError, match="applies to loss_type='dr_grpo' only"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, max_completion_length=4)
    with pytest.raises(nf.InvalidArgumentError, match="applies to loss_type='dapo' only"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, loss_type="grpo", num_items_in_batch=10)
    with pytest.raises(nf.InvalidArgumentError, match="mask must hold only 0 and 1"):
        rl.grpo_loss(x, x, [0.0, 0.0], m * 0.5)
    with pytest.raises(nf.InvalidArgumentError, match="eps_low must be in \\[0, 1\\)"):
        rl.grpo_loss(x, x, [0.0, 0.0], m, eps_low=1.0)


def test_ppo_bad_input():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(nf.ShapeError, match="mask has shape \\(2,\\) but logps has shape \\(2, 3\\)"):
        rl.ppo_policy_loss(x, x, x, mask=[1.0, 1.0])
    with pytest.raises(nf.ShapeError, match="logps must be 2-D \\(B, T\\)"):
        rl.ppo_policy_loss([0.0], [0.0], [0.0])
    with pytest.raises(nf.InvalidArgumentError, match="clip_eps must be in \\[0, 1\\)"):
        rl.ppo_policy_loss(x, x, x, clip_eps=1.5)
    with pytest.raises(nf.InvalidArgumentError, match="old_logps\\[0, 2\\] is inf"):
        rl.ppo_policy_loss(x, [[0, 0, np.inf], [0, 0, 0]], x)


# ---------------------------------------------------------------- through a model


def tiny_gpt():
    from nanofrontier.models import GPT, GPTConfig

    nf.manual_seed(0)
    return GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16))


def seq_logps(model, x, y):
    """Sum over the completion of each row's per-token log-probs: (B, T) ids → (B,)."""
    return model.token_logprobs(x, y).reshape(x.shape).sum(-1)


def test_dpo_through_a_model_raises_the_margin():
    model = tiny_gpt()
    ref = model.copy().freeze()
    rng = np.random.default_rng(1)
    xc, xr = rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))
    yc, yr = np.roll(xc, -1, 1), np.roll(xr, -1, 1)
    with nf.no_grad():
        ref_c, ref_r = seq_logps(ref, xc, yc), seq_logps(ref, xr, yr)
    opt = nf.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    margins = []
    for _ in range(15):
        opt.zero_grad()
        loss, met = rl.dpo_loss(seq_logps(model, xc, yc), seq_logps(model, xr, yr), ref_c, ref_r, beta=0.1)
        loss.backward()
        assert all(p.grad is not None and np.isfinite(p.grad.numpy()).all() for p in model.parameters())
        opt.step()
        margins.append(met["margin"])
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference: loss ln 2
    assert margins[-1] > 0.5 and met["accuracy"] == 1.0, margins


def test_grpo_and_ppo_losses_backpropagate_into_a_model():
    model = tiny_gpt()
    rng = np.random.default_rng(2)
    x = rng.integers(0, 17, (4, 6))
    y = np.roll(x, -1, 1)
    mask = np.ones((4, 6), np.float32)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    with nf.no_grad():
        old = model.token_logprobs(x, y).reshape(x.shape)
    adv = rl.grpo_advantages([1.0, 0.0, 1.0, 0.0], 2)
    for loss_fn in [
        lambda lp: rl.grpo_loss(lp, old, adv, mask, ref_logps=old, beta=0.04)[0],
        lambda lp: rl.ppo_policy_loss(lp, old, np.repeat(adv.numpy()[:, None], 6, 1), mask=mask)[0],
        lambda lp: (rl.kl_penalty(lp, old, mask=mask, estimator="k3") + lp * 0.0).sum(),
    ]:
        for p in model.parameters():
            p.grad = None
        loss_fn(model.token_logprobs(x, y).reshape(x.shape)).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
