//! Post-training objectives, one family per file, each a fused op: the forward computes the loss (in f64,
//! stably) together with its local gradient, the `Backward` struct scales that gradient by `dout`, and the
//! tests (finite-difference gradcheck, an independent f64 formula, edge cases) sit beside them. The losses
//! keep a `*_reference` composite of primitive ops, and the tests check fused == composite, forward and
//! backward.
//! Not here: reward/value heads, rollouts and trainers (they live above, in Python, over these ops).
//!
//! - `reward`   Bradley–Terry reward-model loss (margin, reward centring), ranking accuracy
//! - `dpo`      DPO sigmoid (+ cDPO label smoothing), IPO, hinge; implicit rewards, margin, accuracy
//! - `ppo`      clipped policy surrogate, clipped value loss, GAE, per-token KL estimators k1 / k3
//! - `grpo`     group-relative and RLOO advantages; GRPO loss with clip-higher, k3 KL and four normalisations
//! - `entropy`  per-token entropy of the policy from its logits
//!
//! Inputs are per-pair (B,) or per-token (B, T) float tensors. Only the policy's own outputs (log-probs,
//! rewards, values, logits) get gradients; reference and old log-probs, advantages, returns and masks are
//! read as constants, exactly as if the caller had detached them.

pub mod reward;
pub mod dpo;
pub mod ppo;
pub mod grpo;
pub mod entropy;

use crate::error::{Error, Result, fmt_shape};
use crate::tensor::Tensor;

/// Log-ratios log π − log π_old (and ref − log π in the KL estimators) are clamped to ±20 before `exp`, as
/// veRL does: exp(20) ≈ 4.9e8 stays finite in f32, where a log-ratio of 100 would overflow to inf and poison
/// the loss. Inside the clamp the math is exact; outside it the clamped term has zero gradient.
pub const LOG_RATIO_CLAMP: f64 = 20.0;

/// log σ(x) = −softplus(−x), stable for every x: exact 0 at +inf, x at −inf, no exp of a large positive.
#[inline]
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

/// σ(x) = 1 / (1 + e^−x), stable for every x (only exp of non-positive numbers).
#[inline]
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `x` clamped to ±LOG_RATIO_CLAMP, and whether it was inside (the derivative of the clamp: 1 or 0).
#[inline]
pub(crate) fn clamp_log_ratio(x: f64) -> (f64, bool) {
    if x > LOG_RATIO_CLAMP {
        (LOG_RATIO_CLAMP, false)
    } else if x < -LOG_RATIO_CLAMP {
        (-LOG_RATIO_CLAMP, false)
    } else {
        (x, true)
    }
}

/// Refuse `b` unless its shape equals `a`'s, naming both arguments.
pub(crate) fn same_shape(op: &'static str, a_name: &str, a: &Tensor, b_name: &str, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!(
                "{b_name} has shape {} but {a_name} has shape {}; they must match",
                fmt_shape(b.shape()),
                fmt_shape(a.shape())
            ),
        ));
    }
    Ok(())
}

/// Refuse a tensor that is not (B,) with B ≥ 1.
pub(crate) fn per_pair(op: &'static str, name: &str, x: &Tensor) -> Result<usize> {
    match x.shape() {
        [b] if *b > 0 => Ok(*b),
        [_] => Err(Error::value(op, format!("{name} is empty; the batch needs at least one pair"))),
        s => Err(Error::shape(op, format!("{name} must be 1-D (B,), one value per pair, got shape {}", fmt_shape(s)))),
    }
}

/// Refuse a tensor that is not (B, T), and return (B, T).
pub(crate) fn per_token(op: &'static str, name: &str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape() {
        [b, t] => Ok((*b, *t)),
        s => Err(Error::shape(
            op,
            format!("{name} must be 2-D (B, T), one value per completion token, got shape {}", fmt_shape(s)),
        )),
    }
}

/// The mask as f64 0/1 values with `like`'s shape (all ones when absent). Any other value is refused: a
/// mask says which tokens count, it is not a weight.
pub(crate) fn mask_values(op: &'static str, mask: Option<&Tensor>, like_name: &str, like: &Tensor) -> Result<Vec<f64>> {
    let Some(m) = mask else {
        return Ok(vec![1.0; like.numel()]);
    };
    same_shape(op, like_name, like, "mask", m)?;
    let d = m.data();
    if let Some((i, v)) = d.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
        return Err(Error::value(op, format!("mask must hold only 0 and 1, got {v} at flat index {i}")));
    }
    Ok(d.iter().map(|&v| v as f64).collect())
}

/// Refuse a hyper-parameter outside [lo, hi] (or NaN), naming it and the allowed range.
pub(crate) fn check_range(op: &'static str, name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if !(v >= lo && v <= hi) {
        let range = if hi.is_infinite() { format!(">= {lo} and finite") } else { format!("in [{lo}, {hi}]") };
        return Err(Error::value(op, format!("{name} must be {range}, got {v}")));
    }
    if !v.is_finite() {
        return Err(Error::value(op, format!("{name} must be finite, got {v}")));
    }
    Ok(())
}

/// Refuse a NaN or ±inf value of `x` where `mask` (if any) is 1, naming the argument and the position: a
/// non-finite log-prob would turn the whole loss into nan without a word.
pub(crate) fn check_finite(op: &'static str, name: &str, x: &Tensor, mask: Option<&[f64]>) -> Result<()> {
    let d = x.data();
    let bad = d.iter().enumerate().find(|(i, v)| !v.is_finite() && mask.is_none_or(|m| m[*i] != 0.0));
    if let Some((i, v)) = bad {
        let at = match x.shape() {
            [_, t] if *t > 0 => format!("[{}, {}]", i / t, i % t),
            _ => format!("[{i}]"),
        };
        return Err(Error::value(op, format!("{name}{at} is {v}; every unmasked value must be finite")));
    }
    Ok(())
}

/// The values of `x` as f64.
pub(crate) fn f64s(x: &Tensor) -> Vec<f64> {
    x.data().iter().map(|&v| v as f64).collect()
}

/// `dout` (0-d) times a gradient saved by the forward, as a tensor shaped like `like`.
/// The backward of a pairwise loss (reward model, DPO): the forward saved d loss / d chosen and
/// d loss / d rejected per pair, and the backward scales them by the scalar `dout`.
pub(crate) struct PairwiseBackward {
    pub(crate) op: &'static str,
    pub(crate) chosen: Tensor,
    pub(crate) rejected: Tensor,
    pub(crate) dchosen: Vec<f32>,
    pub(crate) drejected: Vec<f32>,
}
impl crate::autograd::Backward for PairwiseBackward {
    fn name(&self) -> &'static str {
        self.op
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.chosen.clone(), self.rejected.clone()]
    }
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dc = if needs[0] { Some(scaled(dout, &self.dchosen, &self.chosen)?) } else { None };
        let dr = if needs[1] { Some(scaled(dout, &self.drejected, &self.rejected)?) } else { None };
        Ok(vec![dc, dr])
    }
}

pub(crate) fn scaled(dout: &Tensor, saved: &[f32], like: &Tensor) -> Result<Tensor> {
    let g = dout.item()?;
    Ok(Tensor::from_vec_unchecked(saved.iter().map(|&s| s * g).collect(), like.shape().to_vec()))
}

/// `dout` (elementwise) times a gradient saved by the forward.
pub(crate) fn scaled_each(dout: &Tensor, saved: &[f32], like: &Tensor) -> Tensor {
    let g = dout.data();
    Tensor::from_vec_unchecked(saved.iter().zip(g.iter()).map(|(&s, &g)| s * g).collect(), like.shape().to_vec())
}

#[cfg(test)]
pub(crate) mod testutil {
    /// The crate's one `assert_close` with an absolute tolerance (the objectives' tests compare losses of
    /// order 1 against f64 formulas).
    pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        crate::testutil::assert_close(what, got, want, tol, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sigmoid_and_sigmoid_are_stable() {
        for x in [-1000.0f64, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0, 1000.0] {
            // the textbook formula in a range where it is still accurate
            if x.abs() <= 20.0 {
                let want = -(1.0 + (-x).exp()).ln();
                assert!((log_sigmoid(x) - want).abs() < 1e-12, "log_sigmoid({x})");
                assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-15, "sigmoid({x})");
            }
            assert!(log_sigmoid(x).is_finite() && sigmoid(x).is_finite(), "{x}");
        }
        assert_eq!(log_sigmoid(-100.0), -100.0); // −100 − log1p(e^−100) rounds to −100
        assert_eq!(log_sigmoid(f64::INFINITY), 0.0);
        assert_eq!(log_sigmoid(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert_eq!((sigmoid(f64::INFINITY), sigmoid(f64::NEG_INFINITY)), (1.0, 0.0));
        assert_eq!(clamp_log_ratio(100.0), (20.0, false));
        assert_eq!(clamp_log_ratio(-3.0), (-3.0, true));
    }

    #[test]
    fn masks_must_be_zero_or_one_and_shaped_like_their_tensor() {
        let x = Tensor::zeros(&[2, 3]).unwrap();
        let e = mask_values("op", Some(&Tensor::zeros(&[3, 2]).unwrap()), "logps", &x).unwrap_err();
        assert_eq!(e.to_string(), "op: mask has shape (3, 2) but logps has shape (2, 3); they must match");
        let m = Tensor::new(vec![1.0, 0.0, 0.5, 1.0, 1.0, 1.0], &[2, 3]).unwrap();
        let e = mask_values("op", Some(&m), "logps", &x).unwrap_err();
        assert_eq!(e.to_string(), "op: mask must hold only 0 and 1, got 0.5 at flat index 2");
        assert_eq!(mask_values("op", None, "logps", &x).unwrap(), vec![1.0; 6]);
    }
}
