//! Fused activations: gelu (the tanh approximation GPT-2 uses), silu, swiglu (Llama's gated MLP
//! unit), and the stable softplus / log_sigmoid the RL losses need (DPO's −ln σ(β·Δ)). One pass
//! forward, one pass backward (recomputing from the saved inputs, which is cheaper than keeping
//! intermediates). Each keeps a `*_reference` built from primitive ops, and the tests check
//! fused == reference, forward and backward.

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::{Cmp, add, add_scalar, compare, mul, mul_scalar};
use crate::ops::index::where_;
use crate::ops::unary::{abs, exp, exp_f32, log, map, neg, relu, sigmoid, sigmoid_f32, tanh, tanh_f32, zip_map};
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

// ---- softplus ----
/// ln(1 + eˣ) for any x without overflow or underflow: max(x, 0) + ln(1 + e^−|x|).
#[inline(always)]
fn softplus_f32(z: f32) -> f32 {
    // a select, not f32::max, so a nan input stays nan
    let pos = if z > 0.0 { z } else { 0.0 };
    pos + exp_f32(-z.abs()).ln_1p()
}

/// σ(x) = 1/(1 + e⁻ˣ), accurate in both tails: for x < 0 as eˣ/(1 + eˣ), so σ(−100) is 3.7e−44, not 0.
#[inline(always)]
fn sigmoid_tails_f32(x: f32) -> f32 {
    let e = exp_f32(-x.abs());
    if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) }
}

/// Softplus with torch's arguments: ln(1 + e^(β·x))/β, and x itself where β·x > `threshold` (the
/// linear regime; torch's default 20 switches where the two agree to f32 precision). Computed stably as
/// max(x, 0) + ln(1 + e^−|β·x|)/β, so unlike torch's ln(1 + e^(β·x))/β it does not overflow to inf for
/// β·x > 88 when a large threshold keeps it off the linear branch. softplus(±inf) = (inf, 0), nan
/// → nan. Errors (Value): β not finite and > 0, a nan threshold (an infinite one means "never linear").
pub fn softplus(x: &Tensor, beta: f32, threshold: f32) -> Result<Tensor> {
    const OP: &str = "softplus";
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(Error::value(OP, format!("beta must be finite and > 0, got {beta}")));
    }
    if threshold.is_nan() {
        return Err(Error::value(OP, "threshold must not be nan"));
    }
    let out = map(OP, x, move |v| {
        // a select, not f32::max, so a nan input stays nan
        let pos = if v > 0.0 { v } else { 0.0 };
        if beta * v > threshold { v } else { pos + exp_f32(-(beta * v).abs()).ln_1p() / beta }
    })?;
    Ok(record(out, SoftplusBackward { x: x.clone(), beta, threshold }))
}
struct SoftplusBackward {
    x: Tensor,
    beta: f32,
    threshold: f32,
}
impl Backward for SoftplusBackward {
    fn name(&self) -> &'static str {
        "softplus"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = ln(1 + e^(βx))/β  so  dx = dout·σ(βx);  out = x (βx > threshold)  so  dx = dout
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (beta, threshold) = (self.beta, self.threshold);
        let d = move |x: f32| {
            let z = beta * x;
            if z > threshold { 1.0 } else { sigmoid_tails_f32(z) }
        };
        Ok(vec![if needs[0] { Some(zip_map("softplus", dout, &self.x, move |g, x| g * d(x))?) } else { None }])
    }
}

/// softplus from primitives: where(β·x > threshold, x, (relu(β·x) + ln(1 + e^−|β·x|))/β).
pub fn softplus_reference(x: &Tensor, beta: f32, threshold: f32) -> Result<Tensor> {
    let z = mul_scalar(x, beta)?;
    let smooth = add(&relu(&z)?, &log(&add_scalar(&exp(&neg(&abs(&z)?)?)?, 1.0)?)?)?;
    let linear = compare(&z, &Tensor::scalar(threshold), Cmp::Gt)?;
    where_(&linear, x, &mul_scalar(&smooth, 1.0 / beta)?)
}

// ---- log_sigmoid ----
/// ln σ(x) = −softplus(−x) = min(x, 0) − ln(1 + e^−|x|): finite wherever the true value is, where
/// ln(sigmoid(x)) underflows to −inf already at x ≈ −88 (DPO's −ln σ(β·Δ) for a badly ranked pair).
/// log_sigmoid(−inf) = −inf, log_sigmoid(+inf) = 0, nan → nan.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let out = map("log_sigmoid", x, |v| -softplus_f32(-v))?;
    Ok(record(out, LogSigmoidBackward { x: x.clone() }))
}
struct LogSigmoidBackward {
    x: Tensor,
}
impl Backward for LogSigmoidBackward {
    fn name(&self) -> &'static str {
        "log_sigmoid"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = ln σ(x)  so  dx = dout·σ'(x)/σ(x) = dout·(1 − σ(x)) = dout·σ(−x)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![if needs[0] {
            Some(zip_map("log_sigmoid", dout, &self.x, |g, x| g * sigmoid_tails_f32(-x))?)
        } else {
            None
        }])
    }
}

/// log_sigmoid from primitives: −softplus_reference(−x) with β = 1 and no linear branch.
pub fn log_sigmoid_reference(x: &Tensor) -> Result<Tensor> {
    neg(&softplus_reference(&neg(x)?, 1.0, f32::INFINITY)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::error::Error;
    use crate::ops::reduce::sum_all;
    use crate::tensor::random::{manual_seed, randn};
    use crate::testutil::assert_close;

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
                assert_close(&format!("{name} {shape:?} forward"), &y.data(), &yr.data(), 1e-5, 0.0);
                let want: Vec<f32> = x.data().iter().map(|&v| f(v as f64) as f32).collect();
                assert_close(&format!("{name} {shape:?} vs f64 formula"), &y.data(), &want, 1e-5, 0.0);
                let g = randn(shape, 0.0, 1.0).unwrap();
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                let (dx, dxr) = (x.grad().unwrap(), xr.grad().unwrap());
                assert_close(&format!("{name} {shape:?} backward"), &dx.data(), &dxr.data(), 1e-5, 0.0);
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
            assert_close(&format!("swiglu {shape:?} forward"), &y.data(), &yr.data(), 0.0, 0.0);
            let want: Vec<f32> = gate
                .data()
                .iter()
                .zip(up.data().iter())
                .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp()) * u as f64) as f32)
                .collect();
            assert_close(&format!("swiglu {shape:?} vs f64 formula"), &y.data(), &want, 1e-5, 0.0);
            let g = randn(shape, 0.0, 1.0).unwrap();
            y.backward(Some(&g), false).unwrap();
            yr.backward(Some(&g), false).unwrap();
            let (dg, dgr) = (gate.grad().unwrap(), gr.grad().unwrap());
            assert_close(&format!("swiglu {shape:?} dgate"), &dg.data(), &dgr.data(), 1e-5, 0.0);
            let (du, dur) = (up.grad().unwrap(), ur.grad().unwrap());
            assert_close(&format!("swiglu {shape:?} dup"), &du.data(), &dur.data(), 1e-5, 0.0);
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
        assert_close("dup", &up.grad().unwrap().data(), &silu(&gate).unwrap().data(), 0.0, 0.0);
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

    // ---- softplus / log_sigmoid ----

    /// ln(1 + e^(βx))/β, or x past the threshold, in f64 (ln_1p keeps the far negative tail exact).
    fn softplus_f64(x: f64, beta: f64, threshold: f64) -> f64 {
        if beta * x > threshold { x } else { (beta * x).exp().ln_1p() / beta }
    }
    /// ln σ(x) = −ln(1 + e⁻ˣ) in f64.
    fn log_sigmoid_f64(x: f64) -> f64 {
        -(-x).exp().ln_1p()
    }
    /// (beta, threshold): torch's default, a sharper one with an early linear branch, and one never linear.
    const SOFTPLUS_ARGS: [(f32, f32); 3] = [(1.0, 20.0), (2.0, 5.0), (0.5, f32::INFINITY)];

    #[test]
    fn softplus_and_log_sigmoid_match_f64_and_reference() {
        manual_seed(44);
        for shape in [&[3, 7][..], &[50_000][..], &[][..]] {
            // std 10: both tails and the linear branch are reached
            let x = randn(shape, 0.0, 10.0).unwrap().requires_grad_(true);
            let g = randn(shape, 0.0, 1.0).unwrap();
            for (beta, threshold) in SOFTPLUS_ARGS {
                let what = format!("softplus {shape:?} beta {beta} threshold {threshold}");
                x.zero_grad();
                let xr = x.detach().deep_clone().requires_grad_(true);
                let (y, yr) =
                    (softplus(&x, beta, threshold).unwrap(), softplus_reference(&xr, beta, threshold).unwrap());
                assert_eq!(y.shape(), shape);
                let want: Vec<f64> =
                    x.data().iter().map(|&v| softplus_f64(v as f64, beta as f64, threshold as f64)).collect();
                assert_close(&what, &y.data(), &want, 1e-6, 1e-6);
                assert_close(&what, &y.data(), &yr.data(), 1e-5, 1e-5);
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                assert_close(
                    &format!("{what} backward"),
                    &x.grad().unwrap().data(),
                    &xr.grad().unwrap().data(),
                    1e-5,
                    0.0,
                );
            }
            x.zero_grad();
            let xr = x.detach().deep_clone().requires_grad_(true);
            let (y, yr) = (log_sigmoid(&x).unwrap(), log_sigmoid_reference(&xr).unwrap());
            let want: Vec<f64> = x.data().iter().map(|&v| log_sigmoid_f64(v as f64)).collect();
            assert_close(&format!("log_sigmoid {shape:?}"), &y.data(), &want, 1e-6, 1e-6);
            assert_close(&format!("log_sigmoid {shape:?}"), &y.data(), &yr.data(), 1e-5, 1e-5);
            y.backward(Some(&g), false).unwrap();
            yr.backward(Some(&g), false).unwrap();
            // against the f64 derivative σ(−x) too
            let dwant: Vec<f64> =
                x.data().iter().zip(g.data().iter()).map(|(&v, &gv)| gv as f64 / (1.0 + (v as f64).exp())).collect();
            assert_close("log_sigmoid backward", &x.grad().unwrap().data(), &dwant, 1e-6, 1e-6);
            assert_close(
                "log_sigmoid backward vs reference",
                &x.grad().unwrap().data(),
                &xr.grad().unwrap().data(),
                1e-5,
                0.0,
            );
        }
    }

    #[test]
    fn softplus_and_log_sigmoid_gradcheck() {
        manual_seed(45);
        // inputs kept 0.1 away from each threshold / β, where softplus switches to x (a tiny kink)
        for (beta, threshold) in SOFTPLUS_ARGS {
            let kink = threshold / beta;
            let x = map("t", &randn(&[3, 5], 0.0, 4.0).unwrap(), |v| if (v - kink).abs() < 0.1 { v + 0.2 } else { v })
                .unwrap()
                .requires_grad_(true);
            assert_gradcheck(|xs| softplus(&xs[0], beta, threshold), &[x]);
        }
        assert_gradcheck(log_sigmoid_op, &[randn(&[3, 5], 0.0, 4.0).unwrap().requires_grad_(true)]);
        // a chain, as in DPO: −log_sigmoid(β·(a − b))
        let (a, b) = (randn(&[4], 0.0, 2.0).unwrap(), randn(&[4], 0.0, 2.0).unwrap());
        assert_gradcheck(
            |xs| neg(&log_sigmoid(&mul_scalar(&crate::ops::binary::sub(&xs[0], &xs[1])?, 0.1)?)?),
            &[a.requires_grad_(true), b.requires_grad_(true)],
        );
    }

    fn log_sigmoid_op(xs: &[Tensor]) -> Result<Tensor> {
        log_sigmoid(&xs[0])
    }

    #[test]
    fn log_sigmoid_extreme_inputs() {
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let x = Tensor::new(vec![-100.0, 100.0, -inf, inf, nan, -1e30], &[6]).unwrap().requires_grad_(true);
        let y = log_sigmoid(&x).unwrap();
        let v = y.to_vec();
        // the trap this op exists for: ln(sigmoid(−100)) is ln 0 = −inf in f32, the true value −100
        let naive = crate::ops::unary::log(&sigmoid(&x).unwrap()).unwrap().to_vec();
        assert_eq!(naive[0], f32::NEG_INFINITY);
        assert_eq!(v[0], -100.0);
        // ln σ(100) = −e^−100 = −3.72e−44: a subnormal f32, not 0 and not nan
        assert!((v[1] as f64 - log_sigmoid_f64(100.0)).abs() < 2e-45 && v[1] < 0.0, "{}", v[1]);
        assert_eq!((v[2], v[3], v[5]), (-inf, 0.0, -1e30));
        assert!(v[4].is_nan());
        sum_all(&y).unwrap().backward(None, false).unwrap();
        let g = x.grad().unwrap().to_vec();
        // d/dx ln σ(x) = σ(−x): 1 far left, e^−100 far right, and nan for nan
        assert_eq!((g[0], g[2], g[3], g[5]), (1.0, 1.0, 0.0, 1.0));
        assert!((g[1] as f64 - (-100f64).exp()).abs() < 2e-45 && g[1] > 0.0, "{}", g[1]);
        assert!(g[4].is_nan());
    }

    #[test]
    fn softplus_extreme_inputs() {
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        for threshold in [20.0, inf] {
            let x = Tensor::new(vec![-100.0, 100.0, -inf, inf, nan], &[5]).unwrap().requires_grad_(true);
            let y = softplus(&x, 1.0, threshold).unwrap();
            let v = y.to_vec();
            assert!((v[0] as f64 - (-100f64).exp()).abs() < 2e-45 && v[0] > 0.0, "threshold {threshold}: {}", v[0]);
            assert_eq!((v[1], v[2], v[3]), (100.0, 0.0, inf), "threshold {threshold}");
            assert!(v[4].is_nan());
            sum_all(&y).unwrap().backward(None, false).unwrap();
            let g = x.grad().unwrap().to_vec();
            assert_eq!((g[1], g[2], g[3]), (1.0, 0.0, 1.0), "threshold {threshold}");
            assert!(g[0] > 0.0 && g[0] < 1e-43 && g[4].is_nan(), "{g:?}");
        }
        // huge β·x off the linear branch: torch's ln(1 + e^z)/β would be inf, the value is x
        let x = Tensor::new(vec![1e30, 50.0], &[2]).unwrap();
        assert_eq!(softplus(&x, 10.0, inf).unwrap().to_vec(), vec![1e30, 50.0]);
    }

    #[test]
    fn softplus_arguments_take_effect_and_bad_ones_are_refused() {
        let x = Tensor::new(vec![0.5, -0.5, 3.0], &[3]).unwrap();
        let base = softplus(&x, 1.0, 20.0).unwrap().to_vec();
        // β sharpens: ln(1 + e^(2x))/2 differs from ln(1 + e^x)
        let sharp = softplus(&x, 2.0, 20.0).unwrap().to_vec();
        for (i, &v) in [0.5f64, -0.5, 3.0].iter().enumerate() {
            assert!((sharp[i] as f64 - softplus_f64(v, 2.0, 20.0)).abs() < 1e-6);
            assert!((sharp[i] - base[i]).abs() > 1e-3, "beta had no effect at {v}");
        }
        // threshold 0: every positive x is returned as is (linear branch), the negative one is not
        let lin = softplus(&x, 1.0, 0.0).unwrap().to_vec();
        assert_eq!((lin[0], lin[2]), (0.5, 3.0));
        assert_eq!(lin[1], base[1]);
        for (beta, threshold, msg) in [
            (0.0, 20.0, "softplus: beta must be finite and > 0, got 0"),
            (-1.0, 20.0, "softplus: beta must be finite and > 0, got -1"),
            (f32::INFINITY, 20.0, "softplus: beta must be finite and > 0, got inf"),
            (f32::NAN, 20.0, "softplus: beta must be finite and > 0, got NaN"),
            (1.0, f32::NAN, "softplus: threshold must not be nan"),
        ] {
            let e = softplus(&x, beta, threshold).unwrap_err();
            assert!(matches!(e, Error::Value { .. }));
            assert_eq!(e.to_string(), msg);
        }
        assert_eq!(softplus(&Tensor::zeros(&[0, 2]).unwrap(), 1.0, 20.0).unwrap().shape(), &[0, 2]);
        assert_eq!(log_sigmoid(&Tensor::zeros(&[0, 2]).unwrap()).unwrap().shape(), &[0, 2]);
    }
}
