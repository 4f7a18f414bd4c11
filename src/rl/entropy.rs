//! Entropy of the policy at each token, H = −Σ_v p_v log p_v with p = softmax(logits), fused: one pass per
//! row in f64, and a backward that recomputes p from the saved logits instead of keeping a (rows, V)
//! matrix. PPO logs it (and may add an entropy bonus; Schulman et al. 2017 "Proximal Policy Optimization
//! Algorithms", eq. 9); a collapse towards 0 is the classic sign of a policy that stopped exploring.

use rayon::prelude::*;

use crate::autograd::{Backward, record, will_record};
use crate::error::{Error, Result};
use crate::parallel::{GRAIN, install};
use crate::tensor::Tensor;

/// Per row of logits: (max, ln Σ exp(x − max), H), all in f64.
fn row_entropy(x: &[f32]) -> (f64, f64, f64) {
    let m = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for &v in x {
        let e = (v as f64 - m).exp();
        z += e;
        // a −inf logit has e = 0 and contributes nothing (skip its 0·inf)
        if e > 0.0 {
            s += e * (v as f64 - m);
        }
    }
    // H = lse − Σ p x = ln z − Σ e (x − m) / z
    (m, z.ln(), z.ln() - s / z)
}

/// Entropy of softmax(logits) over the last dim: logits (..., V) → (...). Differentiable w.r.t. logits.
/// A row with some −inf logits is fine (those classes have p = 0); V must be ≥ 1.
pub fn entropy_from_logits(logits: &Tensor) -> Result<Tensor> {
    const OP: &str = "entropy_from_logits";
    let Some((&c, lead)) = logits.shape().split_last() else {
        return Err(Error::shape(OP, "logits must have shape (..., V) with at least 1 dim, got a 0-d tensor"));
    };
    if c == 0 {
        return Err(Error::value(OP, "logits have no classes (V = 0)"));
    }
    let rows: usize = lead.iter().product();
    let stats: Vec<(f64, f64, f64)> = {
        let d = logits.data();
        let xs: &[f32] = &d;
        let f = |r: usize| row_entropy(&xs[r * c..(r + 1) * c]);
        if rows * c <= GRAIN {
            (0..rows).map(f).collect()
        } else {
            install(|| (0..rows).into_par_iter().with_min_len((GRAIN / c).max(1)).map(f).collect())
        }
    };
    let out = Tensor::from_vec_unchecked(stats.iter().map(|s| s.2 as f32).collect(), lead.to_vec());
    if !will_record(&[logits]) {
        return Ok(out);
    }
    Ok(record(out, EntropyBackward { logits: logits.clone(), stats }))
}
struct EntropyBackward {
    logits: Tensor,
    stats: Vec<(f64, f64, f64)>,
}
impl Backward for EntropyBackward {
    fn name(&self) -> &'static str {
        "entropy_from_logits"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.logits.clone()]
    }
    // H = −Σ p log p, log p_j = x_j − lse  so  dH/dx_j = −p_j (log p_j + H), times dout of the row
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let shape = self.logits.shape();
        let c = *shape.last().unwrap_or(&1);
        let mut dx = crate::tensor::alloc_zeros("entropy_from_logits", self.logits.numel())?;
        let (xd, g) = (self.logits.data(), dout.data());
        let (xs, g): (&[f32], &[f32]) = (&xd, &g);
        let run = |r: usize, drow: &mut [f32]| {
            let (m, lns, h) = self.stats[r];
            for (d, &v) in drow.iter_mut().zip(&xs[r * c..(r + 1) * c]) {
                let logp = v as f64 - m - lns;
                let p = logp.exp();
                *d = if p == 0.0 { 0.0 } else { (-p * (logp + h) * g[r] as f64) as f32 };
            }
        };
        if dx.len() <= GRAIN {
            dx.chunks_mut(c).enumerate().for_each(|(r, d)| run(r, d));
        } else {
            install(|| dx.par_chunks_mut(c).enumerate().with_min_len((GRAIN / c).max(1)).for_each(|(r, d)| run(r, d)));
        }
        drop(xd);
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, shape.to_vec()))])
    }
}

/// The same entropy from primitive ops: −Σ softmax(x) · log_softmax(x) (a composite to test against).
pub fn entropy_reference(logits: &Tensor) -> Result<Tensor> {
    use crate::ops::{binary::mul, reduce::sum, softmax, unary::neg};
    let p = softmax::softmax_reference(logits, -1)?;
    let lp = softmax::log_softmax_reference(logits, -1)?;
    neg(&sum(&mul(&p, &lp)?, Some(&[-1]), false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::rl::testutil::assert_close;
    use crate::tensor::random::{manual_seed, randn};

    #[test]
    fn matches_reference_formula_and_gradcheck() {
        manual_seed(500);
        for shape in [&[3, 5][..], &[2, 3, 7], &[400, 65]] {
            let x = randn(shape, 0.0, 2.0).unwrap().requires_grad_(true);
            let xr = x.detach().deep_clone().requires_grad_(true);
            let (h, hr) = (entropy_from_logits(&x).unwrap(), entropy_reference(&xr).unwrap());
            assert_eq!(h.shape(), &shape[..shape.len() - 1]);
            let hv: Vec<f64> = hr.to_vec().iter().map(|&v| v as f64).collect();
            assert_close(&format!("entropy {shape:?}"), &h.to_vec(), &hv, 1e-5);
            let w = randn(h.shape(), 0.0, 1.0).unwrap();
            h.backward(Some(&w), false).unwrap();
            hr.backward(Some(&w), false).unwrap();
            let gr: Vec<f64> = xr.grad().unwrap().to_vec().iter().map(|&v| v as f64).collect();
            assert_close(&format!("entropy {shape:?} backward"), &x.grad().unwrap().to_vec(), &gr, 1e-5);
        }
        let x = randn(&[3, 4], 0.0, 1.0).unwrap().requires_grad_(true);
        assert_gradcheck(|xs| entropy_from_logits(&xs[0]), std::slice::from_ref(&x));
    }

    #[test]
    fn special_rows() {
        // uniform: ln V; one-hot-like (huge gap): 0; a −inf logit is a class with p = 0
        let x = Tensor::new(vec![0.0, 0.0, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY, 0.0], &[3, 4])
            .unwrap()
            .requires_grad_(true);
        let h = entropy_from_logits(&x).unwrap();
        assert_close("special", &h.to_vec(), &[4f64.ln(), 0.0, 3f64.ln()], 1e-6);
        h.backward(Some(&Tensor::ones(&[3]).unwrap()), false).unwrap();
        assert!(x.grad().unwrap().to_vec().iter().all(|g| g.is_finite()));
        assert!(entropy_from_logits(&Tensor::scalar(1.0)).is_err());
        assert!(entropy_from_logits(&Tensor::zeros(&[2, 0]).unwrap()).is_err());
    }
}
