//! Finite-difference gradient check. For `out = f(inputs)` we test the analytic gradient of the scalar
//! L = Σ w·out (w fixed pseudo-random weights, so every output element matters with a different weight)
//! against central differences (L(x+ε) − L(x−ε)) / 2ε, with L summed in f64 to keep the difference
//! of two nearly equal sums accurate. Reports the worst element, so a failure says how far off it is.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::tensor::random::Rng;

#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    pub eps: f32,
    pub atol: f64,
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { eps: 1e-2, atol: 1e-3, rtol: 1e-2 }
    }
}

fn weights(n: usize) -> Vec<f32> {
    let mut r = Rng::new(0xC0FFEE);
    (0..n).map(|_| 0.5 + r.uniform()).collect()
}

fn weighted_sum(out: &Tensor, w: &[f32]) -> f64 {
    out.data().iter().zip(w).map(|(&o, &w)| o as f64 * w as f64).sum()
}

/// Check the gradient of `f` with respect to every input that requires grad. Inputs are used in place
/// (perturbed and restored). Returns the largest |analytic − numeric| on success.
pub fn gradcheck<F>(f: F, inputs: &[Tensor], opt: GradcheckOptions) -> Result<f64>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    for t in inputs {
        t.zero_grad();
    }
    let out = f(inputs)?;
    let w = weights(out.numel());
    let wt = Tensor::new(w.clone(), out.shape())?;
    out.backward(Some(&wt), false)?;
    let mut worst = 0.0f64;
    for (k, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            continue;
        }
        let analytic = x.grad().map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; x.numel()]);
        #[allow(clippy::needless_range_loop)] // i indexes the input, its analytic grad and the report
        for i in 0..x.numel() {
            let orig = x.data()[i];
            let numeric = {
                let _g = crate::autograd::no_grad();
                x.data_mut()[i] = orig + opt.eps;
                let lp = weighted_sum(&f(inputs)?, &w);
                x.data_mut()[i] = orig - opt.eps;
                let lm = weighted_sum(&f(inputs)?, &w);
                x.data_mut()[i] = orig;
                // the perturbation actually applied, as stored in f32
                let h = ((orig + opt.eps) as f64) - ((orig - opt.eps) as f64);
                (lp - lm) / h
            };
            let a = analytic[i] as f64;
            let err = (a - numeric).abs();
            worst = worst.max(err);
            if !(err <= opt.atol + opt.rtol * numeric.abs()) {
                return Err(Error::Grad(format!(
                    "gradcheck failed for input {k} element {i}: analytic {a:.6} vs numeric {numeric:.6} \
                     (|diff| {err:.2e} > atol {} + rtol {} * |numeric|)",
                    opt.atol, opt.rtol
                )));
            }
        }
    }
    Ok(worst)
}

/// Panic with the gradcheck report (for tests).
pub fn assert_gradcheck<F>(f: F, inputs: &[Tensor])
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    if let Err(e) = gradcheck(f, inputs, GradcheckOptions::default()) {
        panic!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::binary::mul;

    #[test]
    fn catches_a_wrong_gradient() {
        use crate::autograd::{Backward, record};
        // out = 2x, but the backward claims 3
        struct Wrong(Tensor);
        impl Backward for Wrong {
            fn name(&self) -> &'static str {
                "wrong"
            }
            fn inputs(&self) -> Vec<Tensor> {
                vec![self.0.clone()]
            }
            fn backward(&self, dout: &Tensor, _: &[bool]) -> Result<Vec<Option<Tensor>>> {
                Ok(vec![Some(crate::ops::binary::mul_scalar(dout, 3.0)?)])
            }
        }
        let f = |xs: &[Tensor]| {
            let out = crate::ops::binary::mul_scalar(&xs[0].detach(), 2.0)?;
            Ok(record(out, Wrong(xs[0].clone())))
        };
        let x = Tensor::new(vec![0.5, -1.0], &[2]).unwrap().requires_grad_(true);
        let e = gradcheck(f, std::slice::from_ref(&x), GradcheckOptions::default()).unwrap_err();
        // analytic is 3w, numeric 2w: the report names the element and both values
        assert!(e.to_string().starts_with("gradcheck failed for input 0 element 0"), "{e}");
        // and passes a right one
        assert!(gradcheck(|xs| mul(&xs[0], &xs[0]), &[x], GradcheckOptions::default()).is_ok());
    }
}
