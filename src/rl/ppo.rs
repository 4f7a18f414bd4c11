//! PPO on per-token (B, T) tensors of right-padded completions.
//! - `ppo_policy_loss` clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = exp(log π − log π_old), masked
//!   mean over tokens; Schulman et al. 2017 "Proximal Policy Optimization Algorithms"
//! - `ppo_value_loss` ½·max((V − R)², (V_clip − R)²) with V_clip = V_old + clip(V − V_old, ±ε); the PPO2
//!   value clipping described in Engstrom et al. 2020 "Implementation Matters in Deep
//!   Policy Gradients"
//! - `gae` generalised advantage estimation, Schulman et al. 2016 "High-Dimensional Continuous
//!   Control Using Generalized Advantage Estimation"
//! - `kl_penalty` per-token estimators of KL(π ‖ π_ref) from samples of π: k1 = log π − log π_ref and
//!   k3 = e^x − x − 1 with x = log π_ref − log π (Schulman 2020, "Approximating KL
//!   Divergence"), the penalty of Ziegler et al. 2019 "Fine-Tuning Language Models from
//!   Human Preferences"
//!
//! A batch whose mask is all zero gives loss 0 with zero gradient, never nan.

use crate::autograd::{Backward, record, will_record};
use crate::error::{Error, Result, fmt_shape};
use crate::rl::{
    check_finite, check_range, clamp_log_ratio, f64s, mask_values, per_token, same_shape, scaled, scaled_each,
};
use crate::tensor::Tensor;

/// One token of the clipped surrogate: (loss, dloss/dlogp, clipped below, clipped above).
/// ρ = exp(clamp(logp − old_logp, ±20)); loss = max(−ρA, −clip(ρ, 1−ε_low, 1+ε_high)·A). Where the clipped
/// branch is strictly larger the token is "clipped" and its gradient is 0; otherwise dloss/dlogp = −ρA
/// (0 outside the log-ratio clamp). Clipped below means ρ < 1−ε_low with A < 0, above ρ > 1+ε_high with A > 0.
#[inline]
pub(crate) fn clipped_surrogate(log_ratio: f64, adv: f64, eps_low: f64, eps_high: f64) -> (f64, f64, bool, bool) {
    let (lr, inside) = clamp_log_ratio(log_ratio);
    let ratio = lr.exp();
    let unclipped = -ratio * adv;
    let clipped = -ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv;
    if clipped > unclipped {
        (clipped, 0.0, ratio < 1.0 - eps_low, ratio > 1.0 + eps_high)
    } else {
        (unclipped, if inside { -ratio * adv } else { 0.0 }, false, false)
    }
}

/// Advantages given per token (B, T) or per sequence (B,), as B·T values (a sequence's value repeated).
pub(crate) fn token_advantages(op: &'static str, adv: &Tensor, logps: &Tensor) -> Result<Vec<f64>> {
    let (b, t) = (logps.shape()[0], logps.shape()[1]);
    let a = adv.data();
    match adv.shape() {
        s if s == logps.shape() => Ok(a.iter().map(|&v| v as f64).collect()),
        [n] if *n == b => Ok((0..b * t).map(|i| a[i / t.max(1)] as f64).collect()),
        s => Err(Error::shape(
            op,
            format!(
                "advantages must have the shape of logps {} or one value per sequence ({b},), got {}",
                fmt_shape(logps.shape()),
                fmt_shape(s)
            ),
        )),
    }
}

/// The result of `ppo_policy_loss`.
pub struct PpoPolicyLoss {
    /// 0-d, differentiable w.r.t. logps.
    pub loss: Tensor,
    /// Masked mean of ½(log π − log π_old)², the k2 estimate of KL(π_old ‖ π) that PPO logs.
    pub approx_kl: f64,
    /// Fraction of unmasked tokens whose clipped branch was taken (they get no gradient).
    pub clip_fraction: f64,
}

/// PPO clipped surrogate for logps, old_logps (B, T) and advantages (B, T) or (B,), averaged over the
/// tokens where `mask` (B, T) is 1 (every token when None). `clip_eps` in [0, 1).
pub fn ppo_policy_loss(
    logps: &Tensor,
    old_logps: &Tensor,
    advantages: &Tensor,
    mask: Option<&Tensor>,
    clip_eps: f64,
) -> Result<PpoPolicyLoss> {
    const OP: &str = "ppo_policy_loss";
    per_token(OP, "logps", logps)?;
    same_shape(OP, "logps", logps, "old_logps", old_logps)?;
    let adv = token_advantages(OP, advantages, logps)?;
    let m = mask_values(OP, mask, "logps", logps)?;
    if !(0.0..1.0).contains(&clip_eps) {
        return Err(Error::value(OP, format!("clip_eps must be in [0, 1), got {clip_eps}")));
    }
    check_finite(OP, "logps", logps, Some(&m))?;
    check_finite(OP, "old_logps", old_logps, Some(&m))?;
    if let Some(i) = adv.iter().zip(&m).position(|(a, &m)| m != 0.0 && !a.is_finite()) {
        return Err(Error::value(OP, format!("advantages are not finite at flat token {i}")));
    }
    let (lp, old) = (f64s(logps), f64s(old_logps));
    let n_tok: f64 = m.iter().sum();
    let inv = if n_tok > 0.0 { 1.0 / n_tok } else { 0.0 };
    let (mut total, mut kl, mut n_clip) = (0.0f64, 0.0f64, 0usize);
    let mut dlogp = vec![0f32; lp.len()];
    for i in 0..lp.len() {
        if m[i] == 0.0 {
            continue;
        }
        let r = lp[i] - old[i];
        let (l, g, lo, hi) = clipped_surrogate(r, adv[i], clip_eps, clip_eps);
        total += l;
        dlogp[i] = (g * inv) as f32;
        kl += 0.5 * r * r;
        n_clip += (lo || hi) as usize;
    }
    let out = Tensor::scalar((total * inv) as f32);
    let loss = if will_record(&[logps]) {
        record(out, MaskedMeanBackward { x: logps.clone(), dx: dlogp, op: OP })
    } else {
        out
    };
    Ok(PpoPolicyLoss { loss, approx_kl: kl * inv, clip_fraction: n_clip as f64 * inv })
}

/// Backward of a loss that is a masked mean of per-token terms of one input: the forward saved
/// d(loss)/dx (already divided by the normaliser, 0 on masked tokens); shared by PPO's two losses and GRPO.
pub(crate) struct MaskedMeanBackward {
    pub(crate) x: Tensor,
    pub(crate) dx: Vec<f32>,
    pub(crate) op: &'static str,
}
impl Backward for MaskedMeanBackward {
    fn name(&self) -> &'static str {
        self.op
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // loss = Σ_t m_t ℓ(x_t) / N  so  dx_t = dout · m_t ℓ'(x_t) / N, with ℓ' saved by the forward
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![if needs[0] { Some(scaled(dout, &self.dx, &self.x)?) } else { None }])
    }
}

/// The result of `ppo_value_loss`.
pub struct PpoValueLoss {
    /// 0-d, differentiable w.r.t. values.
    pub loss: Tensor,
    /// Fraction of unmasked tokens where the clipped error was the larger one.
    pub clip_fraction: f64,
}

/// Clipped value loss ½·max((V − R)², (V_old + clip(V − V_old, ±clip_eps) − R)²), masked mean; with
/// `clip_eps` None the plain ½(V − R)². values, old_values, returns all (B, T).
pub fn ppo_value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: Option<&Tensor>,
    clip_eps: Option<f64>,
) -> Result<PpoValueLoss> {
    const OP: &str = "ppo_value_loss";
    per_token(OP, "values", values)?;
    same_shape(OP, "values", values, "old_values", old_values)?;
    same_shape(OP, "values", values, "returns", returns)?;
    let m = mask_values(OP, mask, "values", values)?;
    if let Some(e) = clip_eps {
        check_range(OP, "clip_eps", e, 0.0, f64::INFINITY)?;
    }
    for (name, x) in [("values", values), ("old_values", old_values), ("returns", returns)] {
        check_finite(OP, name, x, Some(&m))?;
    }
    let (v, vo, ret) = (f64s(values), f64s(old_values), f64s(returns));
    let n_tok: f64 = m.iter().sum();
    let inv = if n_tok > 0.0 { 1.0 / n_tok } else { 0.0 };
    let (mut total, mut n_clip) = (0.0f64, 0usize);
    let mut dv = vec![0f32; v.len()];
    for i in 0..v.len() {
        if m[i] == 0.0 {
            continue;
        }
        let e1 = v[i] - ret[i];
        let (l, g) = match clip_eps {
            None => (0.5 * e1 * e1, e1),
            Some(eps) => {
                let d = v[i] - vo[i];
                let e2 = vo[i] + d.clamp(-eps, eps) - ret[i];
                if e2 * e2 > e1 * e1 {
                    n_clip += 1;
                    // the clipped prediction moves with V only inside the clip range
                    (0.5 * e2 * e2, if d.abs() < eps { e2 } else { 0.0 })
                } else {
                    (0.5 * e1 * e1, e1)
                }
            }
        };
        total += l;
        dv[i] = (g * inv) as f32;
    }
    let out = Tensor::scalar((total * inv) as f32);
    let loss = if will_record(&[values]) {
        record(out, MaskedMeanBackward { x: values.clone(), dx: dv, op: OP })
    } else {
        out
    };
    Ok(PpoValueLoss { loss, clip_fraction: n_clip as f64 * inv })
}

/// Check that each row of a (B, T) mask is ones then zeros (right padding); returns each row's length.
pub(crate) fn right_padded_lengths(op: &'static str, m: &[f64], b: usize, t: usize) -> Result<Vec<usize>> {
    (0..b)
        .map(|row| {
            let r = &m[row * t..(row + 1) * t];
            let len = r.iter().take_while(|&&v| v != 0.0).count();
            if let Some(j) = r[len..].iter().position(|&v| v != 0.0) {
                return Err(Error::value(
                    op,
                    format!(
                        "mask row {row} is not right-padded: a 1 at position {} after a 0 at position {len}",
                        len + j
                    ),
                ));
            }
            Ok(len)
        })
        .collect()
}

/// GAE(γ, λ) over right-padded (B, T) rewards and values: δ_t = r_t + γ·V_{t+1} − V_t and
/// A_t = δ_t + γλ·A_{t+1}, where the step after a row's last unmasked token is terminal (V = 0, A = 0).
/// Returns (advantages, returns = A + V), 0 on padding; plain data, no gradient. gamma, lam in [0, 1].
pub fn gae(rewards: &Tensor, values: &Tensor, mask: Option<&Tensor>, gamma: f64, lam: f64) -> Result<(Tensor, Tensor)> {
    const OP: &str = "gae";
    let (b, t) = per_token(OP, "rewards", rewards)?;
    same_shape(OP, "rewards", rewards, "values", values)?;
    let m = mask_values(OP, mask, "rewards", rewards)?;
    check_range(OP, "gamma", gamma, 0.0, 1.0)?;
    check_range(OP, "lam", lam, 0.0, 1.0)?;
    let lens = right_padded_lengths(OP, &m, b, t)?;
    check_finite(OP, "rewards", rewards, Some(&m))?;
    check_finite(OP, "values", values, Some(&m))?;
    let (r, v) = (f64s(rewards), f64s(values));
    let (mut adv, mut ret) = (vec![0f32; b * t], vec![0f32; b * t]);
    for (row, &len) in lens.iter().enumerate() {
        let base = row * t;
        let (mut next_v, mut next_a) = (0.0f64, 0.0f64);
        for s in (0..len).rev() {
            let i = base + s;
            let delta = r[i] + gamma * next_v - v[i];
            let a = delta + gamma * lam * next_a;
            adv[i] = a as f32;
            ret[i] = (a + v[i]) as f32;
            (next_v, next_a) = (v[i], a);
        }
    }
    Ok((Tensor::from_vec_unchecked(adv, vec![b, t]), Tensor::from_vec_unchecked(ret, vec![b, t])))
}

/// Which per-token KL estimator.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KlEstimator {
    K1,
    K3,
}
impl KlEstimator {
    pub fn parse(op: &'static str, s: &str) -> Result<Self> {
        match s {
            "k1" => Ok(Self::K1),
            "k3" => Ok(Self::K3),
            _ => Err(Error::value(op, format!("unknown estimator {s:?}; expected 'k1' or 'k3'"))),
        }
    }
}

/// One token of an estimator: (value, d value / d logp). x = ref − logp (clamped to ±20 for k3's exp).
#[inline]
pub(crate) fn kl_token(logp: f64, ref_logp: f64, est: KlEstimator) -> (f64, f64) {
    match est {
        KlEstimator::K1 => (logp - ref_logp, 1.0),
        KlEstimator::K3 => {
            let (x, inside) = clamp_log_ratio(ref_logp - logp);
            let ex = x.exp();
            // d/dlogp (e^x − x − 1) = (e^x − 1)·dx/dlogp = 1 − e^x
            (ex - x - 1.0, if inside { 1.0 - ex } else { 0.0 })
        }
    }
}

/// Per-token KL(π ‖ π_ref) estimate (B, T), 0 where `mask` is 0; differentiable w.r.t. logps. k1 is
/// unbiased but can be negative; k3 is unbiased and ≥ 0. Fold it into PPO rewards as r_t − β·kl_t.
pub fn kl_penalty(logps: &Tensor, ref_logps: &Tensor, mask: Option<&Tensor>, est: KlEstimator) -> Result<Tensor> {
    const OP: &str = "kl_penalty";
    per_token(OP, "logps", logps)?;
    same_shape(OP, "logps", logps, "ref_logps", ref_logps)?;
    let m = mask_values(OP, mask, "logps", logps)?;
    check_finite(OP, "logps", logps, Some(&m))?;
    check_finite(OP, "ref_logps", ref_logps, Some(&m))?;
    let (lp, rf) = (f64s(logps), f64s(ref_logps));
    let (mut out, mut d) = (vec![0f32; lp.len()], vec![0f32; lp.len()]);
    for i in 0..lp.len() {
        if m[i] != 0.0 {
            let (k, g) = kl_token(lp[i], rf[i], est);
            out[i] = k as f32;
            d[i] = g as f32;
        }
    }
    let out = Tensor::from_vec_unchecked(out, logps.shape().to_vec());
    if !will_record(&[logps]) {
        return Ok(out);
    }
    Ok(record(out, KlPenaltyBackward { logps: logps.clone(), d }))
}
struct KlPenaltyBackward {
    logps: Tensor,
    d: Vec<f32>,
}
impl Backward for KlPenaltyBackward {
    fn name(&self) -> &'static str {
        "kl_penalty"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.logps.clone()]
    }
    // k1 = logp − ref: d = 1;  k3 = e^x − x − 1, x = ref − logp: d = 1 − e^x;  0 on masked tokens
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![if needs[0] { Some(scaled_each(dout, &self.d, &self.logps)) } else { None }])
    }
}

/// The per-token clipped surrogate from primitive ops, with min(a, b) = a − relu(a − b) and
/// clip(ρ, lo, hi) = lo + relu(ρ − lo) − relu(ρ − hi) (no clamp of the log-ratio: moderate ratios only).
/// old_logps and advantages are detached. Shared by the PPO and GRPO references.
pub fn clipped_surrogate_reference(
    logps: &Tensor,
    old_logps: &Tensor,
    advantages: &Tensor,
    eps_low: f32,
    eps_high: f32,
) -> Result<Tensor> {
    use crate::ops::{binary::*, unary::*};
    let ratio = exp(&sub(logps, &old_logps.detach())?)?;
    let (lo, hi) = (1.0 - eps_low, 1.0 + eps_high);
    let clipped = sub(&add_scalar(&relu(&add_scalar(&ratio, -lo)?)?, lo)?, &relu(&add_scalar(&ratio, -hi)?)?)?;
    let a = advantages.detach();
    let (u, c) = (mul(&ratio, &a)?, mul(&clipped, &a)?);
    neg(&sub(&u, &relu(&sub(&u, &c)?)?)?)
}

/// ppo_policy_loss from primitive ops: Σ surrogate · mask / Σ mask (advantages of the logps' shape).
pub fn ppo_policy_loss_reference(
    logps: &Tensor,
    old_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip_eps: f32,
) -> Result<Tensor> {
    use crate::ops::{binary::*, reduce::sum_all};
    let per = clipped_surrogate_reference(logps, old_logps, advantages, clip_eps, clip_eps)?;
    div(&sum_all(&mul(&per, mask)?)?, &sum_all(mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::rl::testutil::assert_close;
    use crate::tensor::random::{manual_seed, rand, randn};

    fn t2(v: &[f32], b: usize, t: usize) -> Tensor {
        Tensor::new(v.to_vec(), &[b, t]).unwrap()
    }

    /// The PPO surrogate in f64, the way the paper writes it (no clamp: moderate log-ratios only).
    fn policy_reference(lp: &[f32], old: &[f32], adv: &[f32], m: &[f32], eps: f64) -> (f64, f64, f64) {
        let (mut tot, mut n, mut kl, mut clip) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..lp.len() {
            if m[i] == 0.0 {
                continue;
            }
            let r = (lp[i] as f64 - old[i] as f64).exp();
            let a = adv[i] as f64;
            let (u, c) = (r * a, r.clamp(1.0 - eps, 1.0 + eps) * a);
            tot += -u.min(c);
            clip += (c < u) as i32 as f64;
            kl += 0.5 * (lp[i] as f64 - old[i] as f64).powi(2);
            n += 1.0;
        }
        if n == 0.0 { (0.0, 0.0, 0.0) } else { (tot / n, kl / n, clip / n) }
    }

    /// Log-ratios spread over ±0.5 but kept 0.03 away from the clip edges 1 ± 0.2, where the surrogate has
    /// a kink that finite differences would straddle.
    fn logps_pair(b: usize, t: usize) -> (Tensor, Tensor) {
        let old = randn(&[b, t], -2.0, 0.5).unwrap();
        let mut d = rand(&[b * t], -0.5, 0.5).unwrap().to_vec();
        for x in d.iter_mut() {
            for edge in [0.8f32.ln(), 1.2f32.ln()] {
                if (*x - edge).abs() < 0.03 {
                    *x = edge + 0.03f32.copysign(*x - edge);
                }
            }
        }
        let lp: Vec<f32> = old.to_vec().iter().zip(&d).map(|(o, d)| o + d).collect();
        (t2(&lp, b, t).requires_grad_(true), old)
    }

    #[test]
    fn policy_loss_matches_f64_formula_and_gradcheck() {
        manual_seed(300);
        let (lp, old) = logps_pair(3, 5);
        let adv = randn(&[3, 5], 0.0, 1.0).unwrap();
        // row 2 is all masked, row 1 half
        let m = t2(&[1., 1., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0.], 3, 5);
        for (mask, eps) in [(None, 0.2), (Some(&m), 0.2), (Some(&m), 0.1)] {
            let out = ppo_policy_loss(&lp, &old, &adv, mask, eps).unwrap();
            let mv = mask.map(|m| m.to_vec()).unwrap_or(vec![1.0; 15]);
            let (want, kl, clip) = policy_reference(&lp.to_vec(), &old.to_vec(), &adv.to_vec(), &mv, eps);
            assert_close(&format!("ppo loss eps {eps}"), &out.loss.to_vec(), &[want], 1e-6);
            assert!((out.approx_kl - kl).abs() < 1e-9 && (out.clip_fraction - clip).abs() < 1e-12);
            if eps == 0.2 {
                assert_gradcheck(
                    |x| Ok(ppo_policy_loss(&x[0], &old, &adv, mask, eps)?.loss),
                    std::slice::from_ref(&lp),
                );
            }
        }
        // per-sequence advantages are the per-token ones repeated
        let a_seq = Tensor::new(vec![0.5, -1.0, 2.0], &[3]).unwrap();
        let a_tok = t2(&[0.5f32; 5].iter().chain(&[-1.0; 5]).chain(&[2.0; 5]).copied().collect::<Vec<_>>(), 3, 5);
        let (l1, l2) = (
            ppo_policy_loss(&lp, &old, &a_seq, Some(&m), 0.2).unwrap().loss.item().unwrap(),
            ppo_policy_loss(&lp, &old, &a_tok, Some(&m), 0.2).unwrap().loss.item().unwrap(),
        );
        assert_eq!(l1, l2);
    }

    #[test]
    fn policy_loss_matches_the_composite_of_primitives() {
        manual_seed(304);
        let (lp, old) = logps_pair(4, 6);
        let adv = randn(&[4, 6], 0.0, 1.0).unwrap();
        let m = t2(&(0..24).map(|i| if i % 6 < 6 - i / 6 { 1.0 } else { 0.0 }).collect::<Vec<_>>(), 4, 6);
        let lp2 = lp.detach().requires_grad_(true);
        let out = ppo_policy_loss(&lp, &old, &adv, Some(&m), 0.2).unwrap().loss;
        let want = ppo_policy_loss_reference(&lp2, &old, &adv, &m, 0.2).unwrap();
        let f64v = |t: &Tensor| t.to_vec().iter().map(|&v| v as f64).collect::<Vec<_>>();
        assert_close("forward", &out.to_vec(), &f64v(&want), 1e-6);
        out.backward(None, false).unwrap();
        want.backward(None, false).unwrap();
        assert_close("backward", &lp.grad().unwrap().to_vec(), &f64v(&lp2.grad().unwrap()), 1e-6);
    }

    #[test]
    fn policy_loss_edge_cases() {
        // all masked: 0, zero gradient
        let lp = t2(&[-1.0, -2.0], 1, 2).requires_grad_(true);
        let z = t2(&[0.0, 0.0], 1, 2);
        let out = ppo_policy_loss(&lp, &lp.detach(), &t2(&[1.0, 1.0], 1, 2), Some(&z), 0.2).unwrap();
        assert_eq!((out.loss.item().unwrap(), out.approx_kl, out.clip_fraction), (0.0, 0.0, 0.0));
        out.loss.backward(None, false).unwrap();
        assert_eq!(lp.grad().unwrap().to_vec(), vec![0.0, 0.0]);
        // log-ratios ±100 with advantages of both signs: finite loss and gradient
        let lp = t2(&[100.0, -100.0, 100.0, -100.0, 0.0], 1, 5).requires_grad_(true);
        let adv = t2(&[1.0, 1.0, -1.0, -1.0, 1.0], 1, 5);
        let out = ppo_policy_loss(&lp, &Tensor::zeros(&[1, 5]).unwrap(), &adv, None, 0.2).unwrap();
        // tokens: −1.2 (clipped), −e^−20 ≈ 0 (ratio ≈ 0 < 0.8 with A > 0: unclipped), e^20 (the clamp),
        // 0.8 (clipped), −1
        let want = (-1.2 - (-20f64).exp() + 20f64.exp() + 0.8 - 1.0) / 5.0;
        assert_close("±100", &out.loss.to_vec(), &[want], 1e-6 * want);
        out.loss.backward(None, false).unwrap();
        assert_close("±100 grad", &lp.grad().unwrap().to_vec(), &[0.0, 0.0, 0.0, 0.0, -0.2], 1e-7);
        assert!((out.clip_fraction - 0.4).abs() < 1e-12 && out.approx_kl.is_finite());
        // length-1 completion: the surrogate at ratio 1 is −A
        let one = t2(&[-0.7], 1, 1);
        let out = ppo_policy_loss(&one, &one, &Tensor::new(vec![2.0], &[1]).unwrap(), None, 0.2).unwrap();
        assert_eq!(out.loss.item().unwrap(), -2.0);
    }

    #[test]
    fn value_loss_matches_formula_and_gradcheck() {
        manual_seed(301);
        let v = randn(&[2, 4], 0.0, 1.0).unwrap().requires_grad_(true);
        let vo = randn(&[2, 4], 0.0, 1.0).unwrap();
        let ret = randn(&[2, 4], 0.0, 1.0).unwrap();
        let m = t2(&[1., 1., 1., 0., 1., 0., 0., 0.], 2, 4);
        for clip in [None, Some(0.2), Some(10.0)] {
            let out = ppo_value_loss(&v, &vo, &ret, Some(&m), clip).unwrap();
            let (vv, vov, rv, mv) = (v.to_vec(), vo.to_vec(), ret.to_vec(), m.to_vec());
            let (mut tot, mut n) = (0.0f64, 0.0);
            for i in 0..8 {
                if mv[i] == 1.0 {
                    let (x, xo, r) = (vv[i] as f64, vov[i] as f64, rv[i] as f64);
                    let l1 = (x - r).powi(2);
                    let l2 = clip.map(|e| (xo + (x - xo).clamp(-e, e) - r).powi(2)).unwrap_or(0.0);
                    tot += 0.5 * l1.max(l2);
                    n += 1.0;
                }
            }
            assert_close(&format!("value loss clip {clip:?}"), &out.loss.to_vec(), &[tot / n], 1e-6);
        }
        // gradcheck where no |V − V_old| sits at the clip edge (use a clip far from every difference)
        let d: Vec<f32> = v.to_vec().iter().zip(vo.to_vec()).map(|(a, b)| (a - b).abs()).collect();
        let eps = (1..40).map(|k| k as f64 * 0.05).find(|e| d.iter().all(|&x| (x as f64 - e).abs() > 0.03)).unwrap();
        assert_gradcheck(|x| Ok(ppo_value_loss(&x[0], &vo, &ret, Some(&m), Some(eps))?.loss), std::slice::from_ref(&v));
        // clipping changes the loss when V moved far from V_old
        let (a, b) = (t2(&[3.0], 1, 1), t2(&[0.0], 1, 1));
        let clipped = ppo_value_loss(&a, &b, &t2(&[-1.0], 1, 1), None, Some(0.2)).unwrap();
        assert_eq!((clipped.loss.item().unwrap(), clipped.clip_fraction), (8.0, 0.0)); // max(16, 1.44)/2
        let clipped = ppo_value_loss(&a, &b, &t2(&[3.0], 1, 1), None, Some(0.2)).unwrap();
        assert!((clipped.loss.item().unwrap() - 0.5 * 2.8f32 * 2.8).abs() < 1e-5 && clipped.clip_fraction == 1.0);
    }

    /// GAE the slow way: A_t = Σ_l (γλ)^l δ_{t+l} over the row's valid tokens.
    fn gae_reference(r: &[f32], v: &[f32], len: usize, gamma: f64, lam: f64) -> Vec<f64> {
        let vf = |s: usize| if s < len { v[s] as f64 } else { 0.0 };
        let delta: Vec<f64> = (0..len).map(|s| r[s] as f64 + gamma * vf(s + 1) - vf(s)).collect();
        (0..r.len())
            .map(|s| if s < len { (s..len).map(|k| (gamma * lam).powi((k - s) as i32) * delta[k]).sum() } else { 0.0 })
            .collect()
    }

    #[test]
    fn gae_matches_the_sum_formula() {
        manual_seed(302);
        let r = randn(&[3, 6], 0.0, 1.0).unwrap();
        let v = randn(&[3, 6], 0.0, 1.0).unwrap();
        // lengths 6, 1, 0 (a length-1 completion and an all-masked row)
        let mut m = vec![0f32; 18];
        m[..7].iter_mut().for_each(|x| *x = 1.0);
        let m = t2(&m, 3, 6);
        for (gamma, lam) in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)] {
            let (adv, ret) = gae(&r, &v, Some(&m), gamma, lam).unwrap();
            let (rv, vv) = (r.to_vec(), v.to_vec());
            let mut want = vec![];
            for (row, len) in [6, 1, 0].into_iter().enumerate() {
                want.extend(gae_reference(&rv[row * 6..row * 6 + 6], &vv[row * 6..row * 6 + 6], len, gamma, lam));
            }
            assert_close(&format!("gae γ {gamma} λ {lam}"), &adv.to_vec(), &want, 1e-5);
            let want_ret: Vec<f64> =
                want.iter().zip(&vv).enumerate().map(|(i, (a, v))| if i < 7 { a + *v as f64 } else { 0.0 }).collect();
            assert_close("returns", &ret.to_vec(), &want_ret, 1e-5);
        }
        // no mask = every token counts
        let (a1, _) = gae(&r, &v, None, 0.9, 0.9).unwrap();
        let (a2, _) = gae(&r, &v, Some(&Tensor::ones(&[3, 6]).unwrap()), 0.9, 0.9).unwrap();
        assert_eq!(a1.to_vec(), a2.to_vec());
        // a hole in the mask is refused
        let e = gae(
            &r,
            &v,
            Some(&t2(&[1., 0., 1., 0., 0., 0., 1., 1., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0.], 3, 6)),
            1.0,
            1.0,
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "gae: mask row 0 is not right-padded: a 1 at position 2 after a 0 at position 1");
        assert_eq!(gae(&r, &v, None, 1.5, 0.9).err().unwrap().to_string(), "gae: gamma must be in [0, 1], got 1.5");
    }

    #[test]
    fn kl_estimators_match_formulas_and_gradcheck() {
        manual_seed(303);
        let lp = randn(&[2, 3], -2.0, 1.0).unwrap().requires_grad_(true);
        let rf = randn(&[2, 3], -2.0, 1.0).unwrap();
        let m = t2(&[1., 1., 0., 1., 0., 0.], 2, 3);
        for est in [KlEstimator::K1, KlEstimator::K3] {
            let k = kl_penalty(&lp, &rf, Some(&m), est).unwrap();
            let want: Vec<f64> = (0..6)
                .map(|i| {
                    let (a, b) = (lp.to_vec()[i] as f64, rf.to_vec()[i] as f64);
                    let x = b - a;
                    if m.to_vec()[i] == 0.0 {
                        0.0
                    } else if est == KlEstimator::K1 {
                        -x
                    } else {
                        x.exp() - x - 1.0
                    }
                })
                .collect();
            assert_close(&format!("{est:?}"), &k.to_vec(), &want, 1e-6);
            assert_gradcheck(|x| kl_penalty(&x[0], &rf, Some(&m), est), std::slice::from_ref(&lp));
        }
        // ±100: k3 stays finite (the clamp), k1 is exact
        let big = t2(&[100.0, -100.0], 1, 2);
        let k3 = kl_penalty(&big, &Tensor::zeros(&[1, 2]).unwrap(), None, KlEstimator::K3).unwrap().to_vec();
        assert!(k3.iter().all(|v| v.is_finite()), "{k3:?}");
        assert_close("k3 at +100", &k3[..1], &[(-20f64).exp() + 19.0], 1e-5);
        // e^20 − 21 ≈ 4.85e8, where neighbouring f32 values are 32 apart
        assert_close("k3 at −100", &k3[1..], &[20f64.exp() - 21.0], 32.0);
        assert!(KlEstimator::parse("kl_penalty", "k2").is_err());
    }

    #[test]
    fn bad_input_is_refused_with_names() {
        let x = Tensor::zeros(&[2, 3]).unwrap();
        let e = ppo_policy_loss(&x, &Tensor::zeros(&[2, 4]).unwrap(), &x, None, 0.2).err().unwrap();
        assert_eq!(
            e.to_string(),
            "ppo_policy_loss: old_logps has shape (2, 4) but logps has shape (2, 3); they must match"
        );
        let e = ppo_policy_loss(&x, &x, &Tensor::zeros(&[3]).unwrap(), None, 0.2).err().unwrap();
        assert!(
            e.to_string().contains("advantages must have the shape of logps (2, 3) or one value per sequence (2,)")
        );
        let e = ppo_policy_loss(&x, &x, &x, Some(&Tensor::ones(&[2]).unwrap()), 0.2).err().unwrap();
        assert!(e.to_string().contains("mask has shape (2,)"), "{e}");
        assert!(ppo_policy_loss(&x, &x, &x, None, 1.0).is_err() && ppo_policy_loss(&x, &x, &x, None, -0.1).is_err());
        let e = ppo_policy_loss(&Tensor::zeros(&[3]).unwrap(), &x, &x, None, 0.2).err().unwrap();
        assert!(e.to_string().contains("logps must be 2-D (B, T)"), "{e}");
        let nan = t2(&[0., 0., 0., 0., f32::NAN, 0.], 2, 3);
        let e = ppo_policy_loss(&nan, &x, &x, None, 0.2).err().unwrap();
        assert_eq!(e.to_string(), "ppo_policy_loss: logps[1, 1] is NaN; every unmasked value must be finite");
        // a nan under the mask is fine: masked tokens are never read
        let m = t2(&[1., 1., 1., 1., 0., 0.], 2, 3);
        assert!(ppo_policy_loss(&nan, &x, &x, Some(&m), 0.2).is_ok());
        assert!(ppo_value_loss(&x, &x, &x, None, Some(-1.0)).is_err());
    }
}
