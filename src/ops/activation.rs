//! Fused activations: gelu (the tanh approximation GPT-2 uses), silu, and swiglu (Llama's gated MLP
//! unit). One pass forward, one pass backward (recomputing from the saved inputs, which is cheaper than
//! keeping intermediates). Each keeps a `*_reference` built from primitive ops, and the tests check
//! fused == reference, forward and backward.

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::{add, add_scalar, mul, mul_scalar};
use crate::ops::unary::{map, sigmoid, sigmoid_f32, tanh, tanh_f32, zip_map};
use crate::parallel::{GRAIN, for_each_chunk};
use crate::tensor::{Tensor, alloc_zeros};

/// √(2/π)
const GELU_K: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    let t = tanh_f32(GELU_K * (x + GELU_A * x * x * x));
    0.5 * x * (1.0 + t)
}

/// d/dx of 0.5·x·(1 + tanh u), u = k(x + a x³):  0.5(1 + t) + 0.5·x·(1 − t²)·k(1 + 3a x²)
#[inline(always)]
fn gelu_grad_f32(x: f32) -> f32 {
    let x2 = x * x;
    let t = tanh_f32(GELU_K * (x + GELU_A * x2 * x));
    let sech2 = 1.0 - t * t;
    // once tanh saturates the second term is exactly 0; skipping it avoids 0·inf = nan for huge |x|
    let second = if sech2 == 0.0 { 0.0 } else { 0.5 * x * sech2 * GELU_K * (1.0 + 3.0 * GELU_A * x2) };
    0.5 * (1.0 + t) + second
}

// ---- gelu ----
/// GELU, tanh approximation (GPT-2's): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    let out = map("gelu", x, gelu_f32)?;
    Ok(record(out, GeluBackward { x: x.clone() }))
}
struct GeluBackward {
    x: Tensor,
}
impl Backward for GeluBackward {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = 0.5·x·(1 + tanh u), u = k(x + a x³)  so  dx = dout · (0.5(1 + t) + 0.5·x·(1 − t²)·k(1 + 3a x²))
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![if needs[0] { Some(zip_map("gelu", dout, &self.x, |g, x| g * gelu_grad_f32(x))?) } else { None }])
    }
}

/// gelu from primitives: 0.5·x·(1 + tanh(k·(x + a·x·x·x))).
pub fn gelu_reference(x: &Tensor) -> Result<Tensor> {
    let x3 = mul(&mul(x, x)?, x)?;
    let u = mul_scalar(&add(x, &mul_scalar(&x3, GELU_A)?)?, GELU_K)?;
    mul(&mul_scalar(x, 0.5)?, &add_scalar(&tanh(&u)?, 1.0)?)
}

// ---- silu ----
/// SiLU (swish): x·σ(x).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    let out = map("silu", x, |v| v * sigmoid_f32(v))?;
    Ok(record(out, SiluBackward { x: x.clone() }))
}
struct SiluBackward {
    x: Tensor,
}
impl Backward for SiluBackward {
    fn name(&self) -> &'static str {
        "silu"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = x·σ(x)  so  dx = dout · σ(x)·(1 + x·(1 − σ(x)))
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let d = |x: f32| {
            let s = sigmoid_f32(x);
            s * (1.0 + x * (1.0 - s))
        };
        Ok(vec![if needs[0] { Some(zip_map("silu", dout, &self.x, move |g, x| g * d(x))?) } else { None }])
    }
}

/// silu from primitives: x · sigmoid(x).
pub fn silu_reference(x: &Tensor) -> Result<Tensor> {
    mul(x, &sigmoid(x)?)
}

// ---- swiglu ----
/// SwiGLU gating: silu(gate) · up, elementwise; `gate` and `up` must have the same shape (no
/// broadcasting). Llama's MLP is down_proj(swiglu(gate_proj(x), up_proj(x))).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let out = zip_map("swiglu", gate, up, |g, u| g * sigmoid_f32(g) * u)?;
    Ok(record(out, SwigluBackward { gate: gate.clone(), up: up.clone() }))
}
struct SwigluBackward {
    gate: Tensor,
    up: Tensor,
}
impl Backward for SwigluBackward {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.gate.clone(), self.up.clone()]
    }
    // out = g·σ(g)·u  so  dgate = dout · u · σ(g)·(1 + g·(1 − σ(g))),  dup = dout · g·σ(g)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dgate = if needs[0] {
            Some(zip3_map("swiglu", dout, &self.gate, &self.up, |d, g, u| {
                let s = sigmoid_f32(g);
                d * u * (s * (1.0 + g * (1.0 - s)))
            })?)
        } else {
            None
        };
        let dup =
            if needs[1] { Some(zip_map("swiglu", dout, &self.gate, |d, g| d * (g * sigmoid_f32(g)))?) } else { None };
        Ok(vec![dgate, dup])
    }
}

/// `f(a, b, c)` elementwise over three tensors of the same shape, as a new tensor (no autograd).
fn zip3_map<F>(op: &'static str, a: &Tensor, b: &Tensor, c: &Tensor, f: F) -> Result<Tensor>
where
    F: Fn(f32, f32, f32) -> f32 + Send + Sync,
{
    if a.shape() != b.shape() || a.shape() != c.shape() {
        return Err(Error::shape(
            op,
            format!(
                "expected three tensors of the same shape, got {}, {} and {}",
                fmt_shape(a.shape()),
                fmt_shape(b.shape()),
                fmt_shape(c.shape())
            ),
        ));
    }
    let (ad, bd, cd) = (a.data(), b.data(), c.data());
    let (xs, ys, zs): (&[f32], &[f32], &[f32]) = (&ad, &bd, &cd);
    let mut out = alloc_zeros(op, xs.len())?;
    for_each_chunk(&mut out, GRAIN, |s, o| {
        let n = o.len();
        for (((o, &x), &y), &z) in o.iter_mut().zip(&xs[s..s + n]).zip(&ys[s..s + n]).zip(&zs[s..s + n]) {
            *o = f(x, y, z);
        }
    });
    Ok(Tensor::from_vec_unchecked(out, a.shape().to_vec()))
}

/// swiglu from primitives: silu_reference(gate) · up.
pub fn swiglu_reference(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() {
        return Err(Error::shape(
            "swiglu",
            format!(
                "expected two tensors of the same shape, got {} and {}",
                fmt_shape(gate.shape()),
                fmt_shape(up.shape())
            ),
        ));
    }
    mul(&silu_reference(gate)?, up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::error::Error;
    use crate::ops::reduce::sum_all;
    use crate::tensor::random::{manual_seed, randn};

    fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mut worst = (0.0f32, 0usize);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let d = (g - w).abs();
            if d > worst.0 || (d.is_nan() && !worst.0.is_nan()) {
                worst = (d, i);
            }
        }
        let i = worst.1;
        assert!(worst.0 <= tol, "{what}: max abs diff {:.2e} at element {i}: got {} want {}", worst.0, got[i], want[i]);
    }

    type Op = fn(&Tensor) -> Result<Tensor>;
    /// name, fused op, its reference, and the f64 formula
    type Row = (&'static str, Op, Op, fn(f64) -> f64);
    const OPS: [Row; 2] = [
        ("gelu", gelu, gelu_reference, |x| {
            0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
        }),
        ("silu", silu, silu_reference, |x| x / (1.0 + (-x).exp())),
    ];

    #[test]
    fn fused_matches_reference_forward_and_backward() {
        manual_seed(40);
        // 50_000 elements: more than one GRAIN, so the parallel split runs too
        for (name, fused, reference, f) in OPS {
            for shape in [&[3, 7][..], &[50_000][..], &[][..]] {
                let x = randn(shape, 0.0, 3.0).unwrap().requires_grad_(true);
                let xr = x.detach().deep_clone().requires_grad_(true);
                let (y, yr) = (fused(&x).unwrap(), reference(&xr).unwrap());
                assert_close(&format!("{name} {shape:?} forward"), &y.data(), &yr.data(), 1e-5);
                let want: Vec<f32> = x.data().iter().map(|&v| f(v as f64) as f32).collect();
                assert_close(&format!("{name} {shape:?} vs f64 formula"), &y.data(), &want, 1e-5);
                let g = randn(shape, 0.0, 1.0).unwrap();
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                let (dx, dxr) = (x.grad().unwrap(), xr.grad().unwrap());
                assert_close(&format!("{name} {shape:?} backward"), &dx.data(), &dxr.data(), 1e-5);
            }
        }
    }

    #[test]
    fn gradcheck_fused_ops() {
        manual_seed(41);
        for (name, fused, _, _) in OPS {
            let x = randn(&[2, 5], 0.0, 2.0).unwrap().requires_grad_(true);
            if let Err(e) = crate::autograd::gradcheck(|xs| fused(&xs[0]), &[x], Default::default()) {
                panic!("{name}: {e}");
            }
        }
        assert_gradcheck(|xs| gelu(&silu(&xs[0])?), &[randn(&[4], 0.0, 1.0).unwrap().requires_grad_(true)]);
    }

    #[test]
    fn saturation_and_hand_values() {
        // gelu(0) = 0, gelu'(0) = 0.5; silu(0) = 0, silu'(0) = 0.5; far tails: identity / zero
        let x = Tensor::new(vec![0.0, 1e20, -1e20, 30.0, -30.0], &[5]).unwrap().requires_grad_(true);
        for op in [gelu as Op, silu] {
            x.zero_grad();
            let y = op(&x).unwrap();
            let v = y.to_vec();
            assert_eq!(v[0], 0.0);
            assert_eq!((v[1], v[3]), (1e20, 30.0));
            assert!(v[2].abs() < 1e-6 && v[4].abs() < 1e-6, "{v:?}");
            sum_all(&y).unwrap().backward(None, false).unwrap();
            let g = x.grad().unwrap().to_vec();
            assert!((g[0] - 0.5).abs() < 1e-7 && g.iter().all(|v| v.is_finite()), "{g:?}");
            assert!((g[1] - 1.0).abs() < 1e-6 && g[2].abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn empty_input_and_shape_error() {
        let x = Tensor::zeros(&[0, 4]).unwrap();
        assert_eq!(gelu(&x).unwrap().shape(), &[0, 4]);
        assert_eq!(silu(&x).unwrap().shape(), &[0, 4]);
        // a backward handed a gradient of the wrong shape says so
        let e = zip_map("gelu", &Tensor::zeros(&[2]).unwrap(), &x, |g, _| g).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "gelu: expected two tensors of the same shape, got (2,) and (0, 4)");
    }

    #[test]
    fn swiglu_matches_reference_forward_and_backward() {
        manual_seed(42);
        for shape in [&[3, 7][..], &[50_000][..], &[0, 4][..], &[][..]] {
            let gate = randn(shape, 0.0, 3.0).unwrap().requires_grad_(true);
            let up = randn(shape, 0.0, 1.0).unwrap().requires_grad_(true);
            let (gr, ur) =
                (gate.detach().deep_clone().requires_grad_(true), up.detach().deep_clone().requires_grad_(true));
            let (y, yr) = (swiglu(&gate, &up).unwrap(), swiglu_reference(&gr, &ur).unwrap());
            assert_eq!(y.shape(), shape);
            assert_close(&format!("swiglu {shape:?} forward"), &y.data(), &yr.data(), 0.0);
            let want: Vec<f32> = gate
                .data()
                .iter()
                .zip(up.data().iter())
                .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
                .collect();
            assert_close(&format!("swiglu {shape:?} vs f64 formula"), &y.data(), &want, 1e-5);
            let g = randn(shape, 0.0, 1.0).unwrap();
            y.backward(Some(&g), false).unwrap();
            yr.backward(Some(&g), false).unwrap();
            let (dg, dgr) = (gate.grad().unwrap(), gr.grad().unwrap());
            assert_close(&format!("swiglu {shape:?} dgate"), &dg.data(), &dgr.data(), 1e-5);
            let (du, dur) = (up.grad().unwrap(), ur.grad().unwrap());
            assert_close(&format!("swiglu {shape:?} dup"), &du.data(), &dur.data(), 1e-5);
        }
    }

    #[test]
    fn swiglu_gradcheck_and_needs() {
        manual_seed(43);
        let gate = randn(&[2, 5], 0.0, 2.0).unwrap().requires_grad_(true);
        let up = randn(&[2, 5], 0.0, 1.0).unwrap().requires_grad_(true);
        assert_gradcheck(|t| swiglu(&t[0], &t[1]), &[gate.clone(), up.clone()]);
        // only up needs a gradient: gate gets none, and dup = dout · silu(gate)
        let gate = gate.detach();
        up.zero_grad();
        sum_all(&swiglu(&gate, &up).unwrap()).unwrap().backward(None, false).unwrap();
        assert!(gate.grad().is_none());
        assert_close("dup", &up.grad().unwrap().data(), &silu(&gate).unwrap().data(), 0.0);
    }

    #[test]
    fn swiglu_shape_errors() {
        let (a, b) = (Tensor::zeros(&[2, 3]).unwrap(), Tensor::zeros(&[3]).unwrap());
        for op in [swiglu, swiglu_reference] {
            let e = op(&a, &b).unwrap_err();
            assert!(matches!(e, Error::Shape { .. }));
            assert_eq!(e.to_string(), "swiglu: expected two tensors of the same shape, got (2, 3) and (3,)");
        }
        let e = zip3_map("swiglu", &a, &a, &b, |x, _, _| x).unwrap_err();
        assert_eq!(e.to_string(), "swiglu: expected three tensors of the same shape, got (2, 3), (2, 3) and (3,)");
    }
}
