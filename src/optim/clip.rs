//! Gradient clipping by the global L2 norm, with torch.nn.utils.clip_grad_norm_'s semantics:
//!
//! ```text
//! norm = √(Σ over all grads of g²)              one norm over every gradient together
//! coef = max_norm / (norm + 1e-6)
//! if coef < 1:  g ← g · coef  for every grad    (torch clamps coef to 1 and always multiplies)
//! return norm                                    the norm BEFORE clipping
//! ```
//!
//! Because of the 1e-6, a norm just below max_norm (within about 1e-6) is scaled by a factor just
//! below 1, exactly as in torch. A non-finite norm is not an error (torch's default
//! `error_if_nonfinite=False`): it is returned as it is, and the grads are still multiplied by the coef,
//! as torch does: a nan norm makes every grad nan; an inf norm gives coef 0, so finite entries become 0
//! and infinite ones nan.
//!
//! The squares are summed in f64, chunk by fixed chunk, and the chunk sums are added in a fixed order,
//! so the norm is the same on any number of threads.

use std::collections::HashSet;

use super::{CHUNK, run_chunks};
use crate::error::{Error, Result};
use crate::parallel;
use crate::tensor::Tensor;

const OP: &str = "clip_grad_norm";

/// Σ x² in f64, with 8 independent accumulators (fast, and a fixed order).
// Not `ops::simd::sum8`: the lanes are added in sequence and the tail separately, another order.
fn sum_squares(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64 * v as f64;
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| v as f64 * v as f64).sum();
    acc.iter().sum::<f64>() + tail
}

/// Clip the gradients of `params` in place so their global L2 norm is at most `max_norm`; return the
/// norm before clipping (0 when no parameter has a gradient). Parameters without a grad are ignored.
/// Errors (Value, nothing is written): max_norm negative or nan; a parameter listed twice; two
/// gradients sharing storage.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f32) -> Result<f32> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::value(OP, format!("invalid max_norm {max_norm} (must be >= 0)")));
    }
    let mut seen = HashSet::new();
    let mut grads = Vec::new();
    for (i, p) in params.iter().enumerate() {
        if !seen.insert(p.id()) {
            return Err(Error::value(OP, format!("parameter {i} appears more than once")));
        }
        if let Some(g) = p.grad() {
            grads.push((i, g));
        }
    }
    for (k, (i, a)) in grads.iter().enumerate() {
        if let Some((j, _)) = grads[k + 1..].iter().find(|(_, b)| a.same_storage(b)) {
            return Err(Error::value(OP, format!("the gradients of parameters {i} and {j} share storage")));
        }
    }

    let mut data: Vec<_> = grads.iter().map(|(_, g)| g.data_mut()).collect();
    let total: usize = data.iter().map(|d| d.len()).sum();
    let pieces: Vec<&[f32]> = data.iter().flat_map(|d| d.chunks(CHUNK)).collect();
    let partial: Vec<f64> = if total <= CHUNK {
        pieces.iter().map(|c| sum_squares(c)).collect()
    } else {
        use rayon::prelude::*;
        parallel::install(|| pieces.par_iter().map(|c| sum_squares(c)).collect())
    };
    let norm = partial.iter().sum::<f64>().sqrt() as f32;

    let coef = max_norm / (norm + 1e-6);
    // A nan coef multiplies too (torch's clamp keeps nan).
    if coef.is_nan() || coef < 1.0 {
        let pieces: Vec<&mut [f32]> = data.iter_mut().flat_map(|d| d.chunks_mut(CHUNK)).collect();
        run_chunks(pieces, total, |c| c.iter_mut().for_each(|g| *g *= coef));
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::{manual_seed, randn};

    fn with_grad(shape: &[usize], scale: f32) -> Tensor {
        let p = Tensor::zeros(shape).unwrap().requires_grad_(true);
        p.set_grad(Some(randn(shape, 0.0, scale).unwrap())).unwrap();
        p
    }
    fn grad_vec(p: &Tensor) -> Vec<f32> {
        p.grad().unwrap().to_vec()
    }
    fn ref_norm(ps: &[&Tensor]) -> f64 {
        ps.iter().filter_map(|p| p.grad()).flat_map(|g| g.to_vec()).map(|x| (x as f64).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn norm_matches_reference_and_clips_only_above_max_norm() {
        manual_seed(5);
        // one tensor above CHUNK, so the norm is split into pieces
        let (a, b, c) = (with_grad(&[3, 7], 1.0), with_grad(&[CHUNK + 37], 0.1), with_grad(&[5], 2.0));
        let none = Tensor::zeros(&[4]).unwrap().requires_grad_(true);
        let all = [a.clone(), none.clone(), b.clone(), c.clone()];
        let want = ref_norm(&[&a, &b, &c]);
        let before: Vec<Vec<f32>> = [&a, &b, &c].iter().map(|p| grad_vec(p)).collect();

        // above the norm: nothing changes, the norm is still returned
        let n = clip_grad_norm(&all, (want * 2.0) as f32).unwrap();
        assert!((n as f64 - want).abs() <= 1e-6 * want, "norm {n} vs reference {want}");
        let after: Vec<Vec<f32>> = [&a, &b, &c].iter().map(|p| grad_vec(p)).collect();
        assert_eq!(before, after, "grads scaled although the norm was below max_norm");
        assert!(none.grad().is_none());

        // below: every grad scaled by max_norm / (norm + 1e-6); the new norm is max_norm
        let max_norm = (want / 4.0) as f32;
        let n2 = clip_grad_norm(&all, max_norm).unwrap();
        assert_eq!(n, n2, "returned norm is the one before clipping");
        let coef = max_norm as f64 / (n as f64 + 1e-6);
        for (p, old) in [&a, &b, &c].iter().zip(&before) {
            for (i, (&g, &o)) in grad_vec(p).iter().zip(old).enumerate() {
                assert!(
                    (g as f64 - o as f64 * coef).abs() <= 1e-6 * (o.abs() as f64 + 1e-3),
                    "element {i}: {g} vs {}",
                    o as f64 * coef
                );
            }
        }
        let new_norm = ref_norm(&[&a, &b, &c]);
        assert!((new_norm - max_norm as f64).abs() <= 1e-5 * max_norm as f64, "clipped norm {new_norm} vs {max_norm}");
    }

    #[test]
    fn hand_checked_and_edge_cases() {
        // grads (3, 4) → norm 5; max_norm 1 → coef 1/(5 + 1e-6) → (0.6, 0.8) (to 1e-7)
        let p = Tensor::zeros(&[2]).unwrap().requires_grad_(true);
        p.set_grad(Some(Tensor::new(vec![3.0, 4.0], &[2]).unwrap())).unwrap();
        assert_eq!(clip_grad_norm(std::slice::from_ref(&p), 1.0).unwrap(), 5.0);
        let g = grad_vec(&p);
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        // no grads at all → 0; max_norm 0 zeroes the grads
        assert_eq!(clip_grad_norm(&[Tensor::zeros(&[3]).unwrap()], 1.0).unwrap(), 0.0);
        assert_eq!(clip_grad_norm(&[], 1.0).unwrap(), 0.0);
        clip_grad_norm(std::slice::from_ref(&p), 0.0).unwrap();
        assert_eq!(grad_vec(&p), vec![0.0, 0.0]);
        // non-finite: returned as is; nan makes all grads nan, inf zeroes the finite ones (torch does the same)
        let q = Tensor::zeros(&[2]).unwrap().requires_grad_(true);
        q.set_grad(Some(Tensor::new(vec![f32::NAN, 1.0], &[2]).unwrap())).unwrap();
        assert!(clip_grad_norm(std::slice::from_ref(&q), 1.0).unwrap().is_nan());
        assert!(grad_vec(&q).iter().all(|x| x.is_nan()));
        q.set_grad(Some(Tensor::new(vec![f32::INFINITY, 1.0], &[2]).unwrap())).unwrap();
        assert_eq!(clip_grad_norm(std::slice::from_ref(&q), 1.0).unwrap(), f32::INFINITY);
        let g = grad_vec(&q);
        assert!(g[0].is_nan() && g[1] == 0.0, "{g:?}");
    }

    #[test]
    fn errors() {
        let p = Tensor::zeros(&[2]).unwrap().requires_grad_(true);
        p.set_grad(Some(Tensor::ones(&[2]).unwrap())).unwrap();
        for m in [-1.0, f32::NAN] {
            let e = clip_grad_norm(std::slice::from_ref(&p), m).unwrap_err();
            assert!(matches!(e, Error::Value { op: "clip_grad_norm", .. }), "{e}");
        }
        assert_eq!(
            clip_grad_norm(std::slice::from_ref(&p), -1.0).unwrap_err().to_string(),
            "clip_grad_norm: invalid max_norm -1 (must be >= 0)"
        );
        let e = clip_grad_norm(&[p.clone(), p.clone()], 1.0).unwrap_err();
        assert_eq!(e.to_string(), "clip_grad_norm: parameter 1 appears more than once");
        let q = Tensor::zeros(&[2]).unwrap().requires_grad_(true);
        q.set_grad(Some(p.grad().unwrap().detach())).unwrap();
        let e = clip_grad_norm(&[p.clone(), q], 1.0).unwrap_err();
        assert_eq!(e.to_string(), "clip_grad_norm: the gradients of parameters 0 and 1 share storage");
        assert_eq!(grad_vec(&p), vec![1.0, 1.0]);
    }
}
