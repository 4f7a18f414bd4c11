//! Inverted dropout: keep each element with probability 1 − p and scale the kept ones by 1/(1 − p), so
//! the expected value is unchanged and evaluation needs no rescaling. The mask comes from the global
//! seeded generator (one uniform draw per element, in row-major order), so the same seed gives the same
//! mask on every machine and thread count. The mask is kept as bits (1 per element) for the backward.

use crate::autograd::{Backward, record};
use crate::error::{Error, Result};
use crate::parallel::{GRAIN, for_each_chunk};
use crate::tensor::random::{Rng, with_global};
use crate::tensor::{Tensor, alloc_zeros};

/// One bit per element: set = keep. Each 64-bit draw gives two 24-bit uniforms k (bits 40..64 for the
/// even element, 16..40 for the odd one); keep when k·2⁻²⁴ ≥ p, i.e. k ≥ ⌈p·2²⁴⌉, so P(keep) = 1 − p
/// up to 2⁻²⁴.
fn draw_mask(n: usize, p: f32, rng: &mut Rng) -> Vec<u64> {
    let threshold = (p as f64 * (1u64 << 24) as f64).ceil() as u64;
    let mut bits = vec![0u64; n.div_ceil(64)];
    for (w, word) in bits.iter_mut().enumerate() {
        let len = (n - w * 64).min(64);
        for b in (0..len).step_by(2) {
            let u = rng.next_u64();
            if u >> 40 >= threshold {
                *word |= 1 << b;
            }
            if b + 1 < len && (u >> 16) & 0xFF_FFFF >= threshold {
                *word |= 1 << (b + 1);
            }
        }
    }
    bits
}

/// `out[i] = src[i]·scale` where the mask bit is set, else exactly 0.
fn apply_mask(op: &'static str, src: &Tensor, bits: &[u64], scale: f32) -> Result<Tensor> {
    let sd = src.data();
    let xs: &[f32] = &sd;
    let mut out = alloc_zeros(op, xs.len())?;
    for_each_chunk(&mut out, GRAIN, |s, c| {
        for (k, o) in c.iter_mut().enumerate() {
            let i = s + k;
            if bits[i / 64] >> (i % 64) & 1 == 1 {
                *o = xs[i] * scale;
            }
        }
    });
    Ok(Tensor::from_vec_unchecked(out, src.shape().to_vec()))
}

fn check_p(p: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::value("dropout", format!("dropout probability has to be between 0 and 1, got {p}")));
    }
    Ok(())
}

/// Inverted dropout with the mask drawn from the global generator (`manual_seed` makes it repeatable).
/// Each element is kept with probability 1 − p and scaled by 1/(1 − p); dropped ones are exactly 0 (even
/// if they held inf or nan). Not training, or p == 0: returns `x` itself (the same handle, no copy).
/// p == 1: all zeros (and no random numbers drawn). p outside [0, 1] or nan: `Error::Value`.
pub fn dropout(x: &Tensor, p: f32, training: bool) -> Result<Tensor> {
    check_p(p)?;
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let bits = if p == 1.0 { vec![0; x.numel().div_ceil(64)] } else { with_global(|r| draw_mask(x.numel(), p, r)) };
    finish(x, p, bits)
}

/// `dropout` with the mask drawn from `rng` instead of the global generator.
pub fn dropout_with_rng(x: &Tensor, p: f32, training: bool, rng: &mut Rng) -> Result<Tensor> {
    check_p(p)?;
    if !training || p == 0.0 {
        return Ok(x.clone());
    }
    let bits = if p == 1.0 { vec![0; x.numel().div_ceil(64)] } else { draw_mask(x.numel(), p, rng) };
    finish(x, p, bits)
}

fn finish(x: &Tensor, p: f32, bits: Vec<u64>) -> Result<Tensor> {
    let scale = if p < 1.0 { (1.0 / (1.0 - p as f64)) as f32 } else { 0.0 };
    let out = apply_mask("dropout", x, &bits, scale)?;
    Ok(record(out, DropoutBackward { x: x.clone(), bits, scale }))
}

struct DropoutBackward {
    x: Tensor,
    bits: Vec<u64>,
    scale: f32,
}
impl Backward for DropoutBackward {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = x · mask · scale  so  dx = dout · mask · scale
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![if needs[0] { Some(apply_mask("dropout", dout, &self.bits, self.scale)?) } else { None }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::reduce::sum_all;
    use crate::tensor::random::{manual_seed, randn};

    #[test]
    fn same_seed_same_mask_on_the_global_generator() {
        let x = randn(&[1000], 0.0, 1.0).unwrap();
        // Other tests draw from the same global generator on other threads, and one of them can slip in
        // between manual_seed and our draw. A real nondeterminism fails every attempt; a race cannot.
        let same = (0..5).any(|_| {
            manual_seed(7);
            let a = dropout(&x, 0.5, true).unwrap().to_vec();
            manual_seed(7);
            let b = dropout(&x, 0.5, true).unwrap().to_vec();
            a == b
        });
        assert!(same, "two runs from seed 7 gave different masks");
        // and the mask is the one a fresh Rng with that seed draws
        let mut r = Rng::new(7);
        let c = dropout_with_rng(&x, 0.5, true, &mut r).unwrap().to_vec();
        let d = dropout_with_rng(&x, 0.5, true, &mut Rng::new(7)).unwrap().to_vec();
        assert_eq!(c, d);
        assert_ne!(c, dropout_with_rng(&x, 0.5, true, &mut r).unwrap().to_vec(), "the stream moves on");
    }

    #[test]
    fn keep_rate_and_scale() {
        let n = 200_000;
        let x = Tensor::ones(&[n]).unwrap();
        for p in [0.1f32, 0.3, 0.9] {
            let y = dropout_with_rng(&x, p, true, &mut Rng::new(3)).unwrap().to_vec();
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // binomial std is at most sqrt(0.25 / n) ≈ 0.0011
            assert!((kept - (1.0 - p as f64)).abs() < 0.006, "p {p}: kept fraction {kept}");
            let scale = 1.0 / (1.0 - p);
            assert!(y.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6 * scale), "p {p}: kept values are 1/(1-p)");
        }
    }

    #[test]
    fn not_training_and_limits() {
        let x = randn(&[3, 4], 0.0, 1.0).unwrap().requires_grad_(true);
        // identity returns the very same handle
        assert_eq!(dropout(&x, 0.5, false).unwrap().id(), x.id());
        assert_eq!(dropout(&x, 0.0, true).unwrap().id(), x.id());
        // p == 1 drops everything, gradient included
        let y = dropout(&x, 1.0, true).unwrap();
        assert!(y.to_vec().iter().all(|&v| v == 0.0));
        sum_all(&y).unwrap().backward(None, false).unwrap();
        assert!(x.grad().unwrap().to_vec().iter().all(|&v| v == 0.0));
        // empty tensors pass through
        assert_eq!(dropout(&Tensor::zeros(&[0, 3]).unwrap(), 0.5, true).unwrap().shape(), &[0, 3]);
    }

    #[test]
    fn bad_p_is_an_error_that_reads_well() {
        let x = Tensor::zeros(&[2]).unwrap();
        for p in [-0.1f32, 1.5, f32::NAN] {
            let e = dropout(&x, p, true).unwrap_err();
            assert!(matches!(e, Error::Value { .. }), "p {p}");
            // checked even when not training, so a bad config fails early
            assert!(dropout(&x, p, false).is_err());
        }
        assert_eq!(
            dropout(&x, 1.5, true).unwrap_err().to_string(),
            "dropout: dropout probability has to be between 0 and 1, got 1.5"
        );
    }

    #[test]
    fn backward_uses_the_same_mask() {
        manual_seed(50);
        let x = randn(&[40_000], 0.0, 1.0).unwrap().requires_grad_(true);
        let y = dropout_with_rng(&x, 0.25, true, &mut Rng::new(11)).unwrap();
        sum_all(&y).unwrap().backward(None, false).unwrap();
        // d(Σ y)/dx = scale where kept, 0 where dropped: exactly y / x
        let (g, yv, xv) = (x.grad().unwrap().to_vec(), y.to_vec(), x.to_vec());
        for i in 0..g.len() {
            let want = if yv[i] == 0.0 { 0.0 } else { 1.0 / 0.75 };
            assert!((g[i] - want).abs() < 1e-6, "element {i}: grad {} want {want} (x {}, y {})", g[i], xv[i], yv[i]);
        }
        // gradcheck: every evaluation reseeds, so all use the same mask. A fresh Rng per call is the
        // reseed, without racing other tests for the global generator.
        let x = randn(&[4, 5], 0.0, 1.0).unwrap().requires_grad_(true);
        assert_gradcheck(|xs| dropout_with_rng(&xs[0], 0.4, true, &mut Rng::new(99)), std::slice::from_ref(&x));
        // the same through the global generator, reseeded inside the closure (retried, as above, in case
        // another test draws between a reseed and its dropout)
        let f = |xs: &[Tensor]| {
            manual_seed(99);
            dropout(&xs[0], 0.4, true)
        };
        let ok = (0..5).any(|_| crate::autograd::gradcheck(f, std::slice::from_ref(&x), Default::default()).is_ok());
        assert!(ok, "gradcheck of dropout with a reseeded global generator failed 5 times");
    }
}
