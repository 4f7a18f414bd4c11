//! Fused normalisations over the LAST dim: layer_norm (GPT-2) and rms_norm (Llama). The forward caches
//! each row's mean and 1/std (llm.c `layernorm_forward`), so the backward is one pass per row with no
//! intermediate tensors. Each keeps a `*_reference` built from primitive ops; the tests compare the two.
//!
//! Rows are cut into fixed blocks of about `GRAIN` elements, run in parallel. Inner loops are f32 with eight
//! accumulators (they vectorize); f64 only where it buys accuracy: layer_norm's mean uses a corrected
//! two-pass formula (exact to f32 rounding even for rows far from 0), rms_norm's mean of squares is summed
//! in f64 (as the reference does), and the weight / bias gradients go f32 over runs of 32 rows, then f64
//! per block, with the block partials added in block order. So results are bit-identical on 1 or N
//! threads, and a row normalised alone (decode) equals the same row in a batch.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::{add, add_scalar, div, mul, rdiv_scalar, sub};
use crate::ops::reduce::mean;
use crate::ops::simd::{dot8, fold8, sum8};
use crate::ops::unary::sqrt;
use crate::parallel::{GRAIN, install};
use crate::tensor::{Tensor, alloc_zeros};

// ---- shared: checks, row blocks, row sums ----

/// Check x (..., C), the optional (C,) parameters and eps; returns (rows, C).
fn check(op: &'static str, x: &Tensor, params: &[(&str, Option<&Tensor>)], eps: f32) -> Result<(usize, usize)> {
    let Some(&c) = x.shape().last() else {
        return Err(Error::shape(op, "expected an input of shape (..., C) with at least 1 dim, got a 0-d tensor"));
    };
    for (name, p) in params {
        if let Some(p) = p {
            if p.shape() != [c] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} must have shape ({c},) to match the last dim of the input {}, got {}",
                        fmt_shape(x.shape()),
                        fmt_shape(p.shape())
                    ),
                ));
            }
        }
    }
    if !(eps >= 0.0) || !eps.is_finite() {
        return Err(Error::value(op, format!("eps must be finite and >= 0, got {eps}")));
    }
    Ok((x.numel().checked_div(c).unwrap_or(0), c))
}

/// The gradient handed to a backward must have the output's shape.
fn check_dout(op: &'static str, dout: &Tensor, x: &Tensor) -> Result<()> {
    if dout.shape() != x.shape() {
        return Err(Error::shape(
            op,
            format!(
                "gradient of shape {} does not match the output shape {}",
                fmt_shape(dout.shape()),
                fmt_shape(x.shape())
            ),
        ));
    }
    Ok(())
}

/// Rows per block: about one GRAIN of elements, at least 1. Depends only on C, never on the thread count.
fn rows_per_block(c: usize) -> usize {
    (GRAIN / c.max(1)).max(1)
}

/// Run `f(first_row, n_rows, out_rows)` on each fixed block of `rows` rows of width `c` (C > 0), in parallel
/// when there is more than one block. `out`, when given, is cut into the matching blocks of rows. Returns
/// the blocks' results in block order, so folding them in order is deterministic.
fn run_blocks<R, F>(rows: usize, c: usize, out: Option<&mut [f32]>, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, usize, Option<&mut [f32]>) -> R + Send + Sync,
{
    let bs = rows_per_block(c);
    let n_blocks = rows.div_ceil(bs);
    let tasks: Vec<(usize, Option<&mut [f32]>)> = match out {
        Some(o) => o.chunks_mut(bs * c).enumerate().map(|(i, ch)| (i * bs, Some(ch))).collect(),
        None => (0..n_blocks).map(|i| (i * bs, None)).collect(),
    };
    let run = |(r0, ch): (usize, Option<&mut [f32]>)| f(r0, bs.min(rows - r0), ch);
    if n_blocks <= 1 {
        tasks.into_iter().map(run).collect()
    } else {
        install(|| tasks.into_par_iter().map(run).collect())
    }
}

/// Mean and biased variance of a row, in f32 with eight accumulators (vectorizes, no conversions): a first
/// mean m0, then the corrected two-pass formula on d = x − m0: mean = m0 + Σd/C, var = (Σd² − (Σd)²/C)/C.
/// The correction makes the mean accurate even for rows far from 0, where Σx alone in f32 would lose
/// digits (Chan, Golub & LeVeque 1983); both results are within a few ulp of an f64 computation.
#[inline]
fn mean_var(xs: &[f32]) -> (f32, f32) {
    let inv_c = 1.0 / xs.len() as f32;
    let m0 = sum_f32(xs) * inv_c;
    let (mut s1, mut s2) = ([0f32; 8], [0f32; 8]);
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for ch in chunks {
        for k in 0..8 {
            let d = ch[k] - m0;
            s1[k] += d;
            s2[k] += d * d;
        }
    }
    let (mut d1, mut d2) = (fold8(s1), fold8(s2));
    for &v in tail {
        let d = v - m0;
        d1 += d;
        d2 += d * d;
    }
    (m0 + d1 * inv_c, ((d2 - d1 * d1 * inv_c) * inv_c).max(0.0))
}

/// Σ a·b in f64 (the product in f32), eight accumulators in a fixed order.
#[inline]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    dot8(a, b, |x, y| (x * y) as f64)
}

/// Σ a·b in f32 with eight accumulators (vectorizes), for the per-row sums of the backward: a row is at
/// most a few thousand terms, so each accumulator adds a few hundred and f32 keeps ~1e-6 relative.
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot8(a, b, |x, y| x * y)
}

/// Σ a in f32 with eight accumulators (see `dot_f32`).
#[inline]
fn sum_f32(a: &[f32]) -> f32 {
    sum8(a, |x| x)
}

/// Column sums over the rows of a block (weight / bias gradients): added in f32 for runs of at most
/// `RUN` rows (4-wide, no conversions), each run then added into f64. As accurate as f64 throughout for
/// practical purposes, at a fraction of the cost. Empty (and free) when the gradient is not needed.
struct ColSum {
    run: Vec<f32>,
    total: Vec<f64>,
    rows: usize,
}
impl ColSum {
    const RUN: usize = 32;
    fn new(c: usize, on: bool) -> ColSum {
        let c = if on { c } else { 0 };
        ColSum { run: vec![0.0; c], total: vec![0.0; c], rows: 0 }
    }
    fn on(&self) -> bool {
        !self.run.is_empty()
    }
    /// run += a·b
    #[inline]
    fn add_prod(&mut self, a: &[f32], b: &[f32]) {
        self.run.iter_mut().zip(a).zip(b).for_each(|((s, &a), &b)| *s += a * b);
        self.end_row();
    }
    /// run += a
    #[inline]
    fn add(&mut self, a: &[f32]) {
        self.run.iter_mut().zip(a).for_each(|(s, &a)| *s += a);
        self.end_row();
    }
    fn end_row(&mut self) {
        self.rows += 1;
        if self.rows == Self::RUN {
            self.flush();
        }
    }
    fn flush(&mut self) {
        self.total.iter_mut().zip(&mut self.run).for_each(|(t, s)| {
            *t += *s as f64;
            *s = 0.0;
        });
        self.rows = 0;
    }
    fn finish(mut self) -> Vec<f64> {
        self.flush();
        self.total
    }
}

/// The parameter's data, or a constant row of `fill` when it is absent (keeps the inner loops branch-free).
fn param_or<'a>(p: Option<&'a [f32]>, c: usize, fill: f32) -> Cow<'a, [f32]> {
    match p {
        Some(p) => Cow::Borrowed(p),
        None => Cow::Owned(vec![fill; c]),
    }
}

/// Add the per-block partial sums in block order and round to f32: the weight / bias gradient.
fn fold_partials(c: usize, parts: &[Vec<f64>]) -> Result<Tensor> {
    let mut acc = vec![0f64; c];
    for p in parts {
        acc.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
    }
    let mut out = alloc_zeros("norm", c)?;
    out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f32);
    Ok(Tensor::from_vec_unchecked(out, vec![c]))
}

// ---- layer_norm ----
/// LayerNorm over the last dim (size C) of x (..., C): y = (x − mean)/√(var + eps) · weight + bias, with the
/// biased variance (as torch). `weight` and `bias` have shape (C,); `None` means 1 and 0. `eps` must be finite
/// and >= 0 (with eps = 0 a constant row gives nan, as in torch). Caches each row's mean and rstd.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let op = "layer_norm";
    let (rows, c) = check(op, x, &[("weight", weight), ("bias", bias)], eps)?;
    let mut out = alloc_zeros(op, x.numel())?;
    let mut stats: Vec<(f32, f32)> = Vec::new();
    if !out.is_empty() {
        let (xd, wd, bd) = (x.data(), weight.map(|w| w.data()), bias.map(|b| b.data()));
        let xs: &[f32] = &xd;
        let w = param_or(wd.as_deref().map(|v| &v[..]), c, 1.0);
        let b = param_or(bd.as_deref().map(|v| &v[..]), c, 0.0);
        let (w, b): (&[f32], &[f32]) = (&w, &b);
        let blocks = run_blocks(rows, c, Some(&mut out), |r0, _, ys| {
            let ys = ys.unwrap_or_default();
            let mut st = Vec::with_capacity(ys.len() / c);
            for (k, y) in ys.chunks_exact_mut(c).enumerate() {
                let xr = &xs[(r0 + k) * c..(r0 + k + 1) * c];
                let (m, var) = mean_var(xr);
                let rstd = (1.0 / (var as f64 + eps as f64).sqrt()) as f32;
                for (((y, &v), &w), &b) in y.iter_mut().zip(xr).zip(w).zip(b) {
                    *y = (v - m) * rstd * w + b;
                }
                st.push((m, rstd));
            }
            st
        });
        stats = blocks.concat();
    }
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    let node = LayerNormBackward { x: x.clone(), weight: weight.cloned(), bias: bias.cloned(), stats, c };
    Ok(record(out, node))
}
struct LayerNormBackward {
    x: Tensor,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    /// per row: mean and rstd = 1/√(var + eps)
    stats: Vec<(f32, f32)>,
    c: usize,
}
impl Backward for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn inputs(&self) -> Vec<Tensor> {
        [Some(&self.x), self.weight.as_ref(), self.bias.as_ref()].into_iter().flatten().cloned().collect()
    }
    // y = n·w + b with n = (x − mean)·rstd, rstd = 1/√(var + eps), per row of C, so with g = dout·w:
    //   dx = rstd · (g − mean(g) − n·mean(g·n)),   dweight = Σ_rows dout·n,   dbias = Σ_rows dout
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let op = "layer_norm";
        check_dout(op, dout, &self.x)?;
        let c = self.c;
        let need_x = needs[0];
        let need_w = self.weight.is_some() && needs[1];
        let need_b = self.bias.is_some() && needs[needs.len() - 1];
        let mut dx = if need_x { Some(alloc_zeros(op, self.x.numel())?) } else { None };
        let mut parts: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
        if self.x.numel() > 0 {
            let rows = self.x.numel() / c;
            let (xd, gd, wd) = (self.x.data(), dout.data(), self.weight.as_ref().map(|w| w.data()));
            let (xs, gs): (&[f32], &[f32]) = (&xd, &gd);
            let w = param_or(wd.as_deref().map(|v| &v[..]), c, 1.0);
            let w: &[f32] = &w;
            let stats = &self.stats;
            let inv_c = 1.0 / c as f32;
            parts = run_blocks(rows, c, dx.as_deref_mut(), |r0, n_rows, dxs| {
                let (mut dw, mut db) = (ColSum::new(c, need_w), ColSum::new(c, need_b));
                let mut norm = vec![0f32; c];
                let mut wg = vec![0f32; c];
                let mut dxs = dxs;
                for k in 0..n_rows {
                    let r = r0 + k;
                    let (xr, gr) = (&xs[r * c..(r + 1) * c], &gs[r * c..(r + 1) * c]);
                    let (m, rstd) = stats[r];
                    norm.iter_mut().zip(xr).for_each(|(n, &v)| *n = (v - m) * rstd);
                    if dw.on() {
                        dw.add_prod(gr, &norm);
                    }
                    if db.on() {
                        db.add(gr);
                    }
                    if let Some(dxs) = dxs.as_deref_mut() {
                        wg.iter_mut().zip(gr).zip(w).for_each(|((o, &g), &w)| *o = g * w);
                        let g_mean = sum_f32(&wg) * inv_c;
                        let gn_mean = dot_f32(&wg, &norm) * inv_c;
                        let dxr = &mut dxs[k * c..(k + 1) * c];
                        for ((d, &g), &n) in dxr.iter_mut().zip(&wg).zip(&norm) {
                            *d = (g - g_mean - n * gn_mean) * rstd;
                        }
                    }
                }
                (dw.finish(), db.finish())
            });
        }
        let (dws, dbs): (Vec<Vec<f64>>, Vec<Vec<f64>>) = parts.into_iter().unzip();
        let mut grads = vec![dx.map(|d| Tensor::from_vec_unchecked(d, self.x.shape().to_vec()))];
        if self.weight.is_some() {
            grads.push(if need_w { Some(fold_partials(c, &dws)?) } else { None });
        }
        if self.bias.is_some() {
            grads.push(if need_b { Some(fold_partials(c, &dbs)?) } else { None });
        }
        Ok(grads)
    }
}

// ---- rms_norm ----
/// RMSNorm over the last dim (size C) of x (..., C): y = x · rsqrt(mean(x²) + eps) · weight (Llama,
/// llama2.c; the weight multiplies the normalised value). `weight` has shape (C,); `None` means 1. The mean
/// of squares is summed in f64. `eps` must be finite and >= 0. Caches each row's rstd.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    let op = "rms_norm";
    let (rows, c) = check(op, x, &[("weight", weight)], eps)?;
    let mut out = alloc_zeros(op, x.numel())?;
    let mut rstds: Vec<f32> = Vec::new();
    if !out.is_empty() {
        let (xd, wd) = (x.data(), weight.map(|w| w.data()));
        let xs: &[f32] = &xd;
        let w = param_or(wd.as_deref().map(|v| &v[..]), c, 1.0);
        let w: &[f32] = &w;
        let inv_c = 1.0 / c as f64;
        let blocks = run_blocks(rows, c, Some(&mut out), |r0, _, ys| {
            let ys = ys.unwrap_or_default();
            let mut st = Vec::with_capacity(ys.len() / c);
            for (k, y) in ys.chunks_exact_mut(c).enumerate() {
                let xr = &xs[(r0 + k) * c..(r0 + k + 1) * c];
                let ms = dot_f64(xr, xr) * inv_c;
                let rstd = (1.0 / (ms + eps as f64).sqrt()) as f32;
                for ((y, &v), &w) in y.iter_mut().zip(xr).zip(w) {
                    *y = v * rstd * w;
                }
                st.push(rstd);
            }
            st
        });
        rstds = blocks.concat();
    }
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    Ok(record(out, RmsNormBackward { x: x.clone(), weight: weight.cloned(), rstds, c }))
}
struct RmsNormBackward {
    x: Tensor,
    weight: Option<Tensor>,
    /// per row: rstd = 1/√(mean(x²) + eps)
    rstds: Vec<f32>,
    c: usize,
}
impl Backward for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn inputs(&self) -> Vec<Tensor> {
        [Some(&self.x), self.weight.as_ref()].into_iter().flatten().cloned().collect()
    }
    // y = n·w with n = x·rstd, rstd = (mean(x²) + eps)^(−1/2), per row of C, so with g = dout·w:
    //   dx = rstd · (g − n·mean(g·n)),   dweight = Σ_rows dout·n
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let op = "rms_norm";
        check_dout(op, dout, &self.x)?;
        let c = self.c;
        let need_x = needs[0];
        let need_w = self.weight.is_some() && needs[1];
        let mut dx = if need_x { Some(alloc_zeros(op, self.x.numel())?) } else { None };
        let mut parts: Vec<Vec<f64>> = Vec::new();
        if self.x.numel() > 0 {
            let rows = self.x.numel() / c;
            let (xd, gd, wd) = (self.x.data(), dout.data(), self.weight.as_ref().map(|w| w.data()));
            let (xs, gs): (&[f32], &[f32]) = (&xd, &gd);
            let w = param_or(wd.as_deref().map(|v| &v[..]), c, 1.0);
            let w: &[f32] = &w;
            let rstds = &self.rstds;
            let inv_c = 1.0 / c as f32;
            parts = run_blocks(rows, c, dx.as_deref_mut(), |r0, n_rows, dxs| {
                let mut dw = ColSum::new(c, need_w);
                let mut norm = vec![0f32; c];
                let mut wg = vec![0f32; c];
                let mut dxs = dxs;
                for k in 0..n_rows {
                    let r = r0 + k;
                    let (xr, gr) = (&xs[r * c..(r + 1) * c], &gs[r * c..(r + 1) * c]);
                    let rstd = rstds[r];
                    norm.iter_mut().zip(xr).for_each(|(n, &v)| *n = v * rstd);
                    if dw.on() {
                        dw.add_prod(gr, &norm);
                    }
                    if let Some(dxs) = dxs.as_deref_mut() {
                        wg.iter_mut().zip(gr).zip(w).for_each(|((o, &g), &w)| *o = g * w);
                        let gn_mean = dot_f32(&wg, &norm) * inv_c;
                        let dxr = &mut dxs[k * c..(k + 1) * c];
                        for ((d, &g), &n) in dxr.iter_mut().zip(&wg).zip(&norm) {
                            *d = (g - n * gn_mean) * rstd;
                        }
                    }
                }
                dw.finish()
            });
        }
        let mut grads = vec![dx.map(|d| Tensor::from_vec_unchecked(d, self.x.shape().to_vec()))];
        if self.weight.is_some() {
            grads.push(if need_w { Some(fold_partials(c, &parts)?) } else { None });
        }
        Ok(grads)
    }
}

// ---- references: the same math from primitive ops ----

/// layer_norm from primitives: xc = x − mean(x), y = xc / √(mean(xc·xc) + eps) · weight + bias.
pub fn layer_norm_reference(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    check("layer_norm", x, &[("weight", weight), ("bias", bias)], eps)?;
    let xc = sub(x, &mean(x, Some(&[-1]), true)?)?;
    let var = mean(&mul(&xc, &xc)?, Some(&[-1]), true)?;
    let mut y = div(&xc, &sqrt(&add_scalar(&var, eps)?)?)?;
    if let Some(w) = weight {
        y = mul(&y, w)?;
    }
    if let Some(b) = bias {
        y = add(&y, b)?;
    }
    Ok(y)
}

/// rms_norm from primitives: y = x · (1 / √(mean(x·x) + eps)) · weight.
pub fn rms_norm_reference(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    check("rms_norm", x, &[("weight", weight)], eps)?;
    let ms = mean(&mul(x, x)?, Some(&[-1]), true)?;
    let y = mul(x, &rdiv_scalar(1.0, &sqrt(&add_scalar(&ms, eps)?)?)?)?;
    match weight {
        Some(w) => mul(&y, w),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::reduce::sum_all;
    use crate::ops::view::narrow;
    use crate::tensor::random::{manual_seed, randn};
    use crate::testutil::assert_close;

    fn leaf(t: &Tensor) -> Tensor {
        t.detach().deep_clone().requires_grad_(true)
    }

    /// y = layer_norm (rms = false) or rms_norm of x with optional w, b, all in f64.
    fn norm_f64(x: &[f32], c: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f64, rms: bool) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(c) {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let m = if rms { 0.0 } else { row.iter().sum::<f64>() / c as f64 };
            let var = row.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / c as f64;
            for (j, v) in row.iter().enumerate() {
                let n = (v - m) / (var + eps).sqrt();
                out.push((n * w.map_or(1.0, |w| w[j] as f64) + b.map_or(0.0, |b| b[j] as f64)) as f32);
            }
        }
        out
    }

    #[test]
    fn layer_norm_matches_reference_forward_and_backward() {
        manual_seed(50);
        // (70, 300): several row blocks, so the parallel split and the partial-sum fold run
        for shape in [&[3, 7][..], &[2, 3, 16], &[70, 300], &[5], &[1, 768]] {
            let c = *shape.last().unwrap();
            for (with_w, with_b) in [(true, true), (true, false), (false, true), (false, false)] {
                let x = randn(shape, 0.5, 2.0).unwrap().requires_grad_(true);
                let w = randn(&[c], 1.0, 0.5).unwrap().requires_grad_(true);
                let b = randn(&[c], 0.0, 0.5).unwrap().requires_grad_(true);
                let (xr, wr, br) = (leaf(&x), leaf(&w), leaf(&b));
                let (wo, bo) = (with_w.then_some(&w), with_b.then_some(&b));
                let (wro, bro) = (with_w.then_some(&wr), with_b.then_some(&br));
                let y = layer_norm(&x, wo, bo, 1e-5).unwrap();
                let yr = layer_norm_reference(&xr, wro, bro, 1e-5).unwrap();
                let tag = format!("layer_norm {shape:?} w={with_w} b={with_b}");
                let d = assert_close(&format!("{tag} forward"), &y.data(), &yr.data(), 1e-5, 0.0);
                let (wv, bv) = (with_w.then(|| w.to_vec()), with_b.then(|| b.to_vec()));
                let want = norm_f64(&x.data(), c, wv.as_deref(), bv.as_deref(), 1e-5, false);
                assert_close(&format!("{tag} vs f64 loop"), &y.data(), &want, 1e-5, 0.0);
                let g = randn(shape, 0.0, 1.0).unwrap();
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                let dx = assert_close(
                    &format!("{tag} dx"),
                    &x.grad().unwrap().data(),
                    &xr.grad().unwrap().data(),
                    2e-5,
                    0.0,
                );
                let mut msg = format!("{tag}: max abs diff fused vs reference: y {d:.1e}, dx {dx:.1e}");
                if with_w {
                    let dw = assert_close(
                        &format!("{tag} dw"),
                        &w.grad().unwrap().data(),
                        &wr.grad().unwrap().data(),
                        1e-4,
                        0.0,
                    );
                    msg += &format!(", dweight {dw:.1e}");
                } else {
                    assert!(w.grad().is_none());
                }
                if with_b {
                    let db = assert_close(
                        &format!("{tag} db"),
                        &b.grad().unwrap().data(),
                        &br.grad().unwrap().data(),
                        1e-4,
                        0.0,
                    );
                    msg += &format!(", dbias {db:.1e}");
                }
                println!("{msg}");
            }
        }
    }

    #[test]
    fn rms_norm_matches_reference_forward_and_backward() {
        manual_seed(51);
        for shape in [&[3, 7][..], &[2, 3, 16], &[70, 300], &[5], &[1, 768]] {
            let c = *shape.last().unwrap();
            for with_w in [true, false] {
                let x = randn(shape, 0.5, 2.0).unwrap().requires_grad_(true);
                let w = randn(&[c], 1.0, 0.5).unwrap().requires_grad_(true);
                let (xr, wr) = (leaf(&x), leaf(&w));
                let y = rms_norm(&x, with_w.then_some(&w), 1e-5).unwrap();
                let yr = rms_norm_reference(&xr, with_w.then_some(&wr), 1e-5).unwrap();
                let tag = format!("rms_norm {shape:?} w={with_w}");
                let d = assert_close(&format!("{tag} forward"), &y.data(), &yr.data(), 1e-5, 0.0);
                let want = norm_f64(&x.data(), c, with_w.then(|| w.to_vec()).as_deref(), None, 1e-5, true);
                assert_close(&format!("{tag} vs f64 loop"), &y.data(), &want, 1e-5, 0.0);
                let g = randn(shape, 0.0, 1.0).unwrap();
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                let dx = assert_close(
                    &format!("{tag} dx"),
                    &x.grad().unwrap().data(),
                    &xr.grad().unwrap().data(),
                    2e-5,
                    0.0,
                );
                let mut msg = format!("{tag}: max abs diff fused vs reference: y {d:.1e}, dx {dx:.1e}");
                if with_w {
                    let dw = assert_close(
                        &format!("{tag} dw"),
                        &w.grad().unwrap().data(),
                        &wr.grad().unwrap().data(),
                        1e-4,
                        0.0,
                    );
                    msg += &format!(", dweight {dw:.1e}");
                }
                println!("{msg}");
            }
        }
    }

    #[test]
    fn gradcheck_norms() {
        manual_seed(52);
        let x = randn(&[2, 3, 5], 0.3, 1.5).unwrap().requires_grad_(true);
        let w = randn(&[5], 1.0, 0.5).unwrap().requires_grad_(true);
        let b = randn(&[5], 0.0, 0.5).unwrap().requires_grad_(true);
        assert_gradcheck(|t| layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5), &[x.clone(), w.clone(), b.clone()]);
        assert_gradcheck(|t| layer_norm(&t[0], None, None, 1e-5), std::slice::from_ref(&x));
        assert_gradcheck(|t| rms_norm(&t[0], Some(&t[1]), 1e-5), &[x.clone(), w.clone()]);
        assert_gradcheck(|t| rms_norm(&t[0], None, 1e-5), std::slice::from_ref(&x));
        // chained, so a non-trivial dout reaches the inner one
        assert_gradcheck(|t| rms_norm(&layer_norm(&t[0], Some(&t[1]), None, 1e-5)?, Some(&t[1]), 1e-5), &[x, w]);
    }

    #[test]
    fn hand_values() {
        // [1, 2, 3, 4]: mean 2.5, var 1.25, so y = (x − 2.5)/√1.25
        let x = Tensor::new(vec![1.0, 2.0, 3.0, 4.0], &[1, 4]).unwrap();
        let y = layer_norm(&x, None, None, 0.0).unwrap().to_vec();
        let want: Vec<f32> = [-1.5f64, -0.5, 0.5, 1.5].iter().map(|v| (v / 1.25f64.sqrt()) as f32).collect();
        assert_close("layer_norm [1,2,3,4]", &y, &want, 2.5e-7, 0.0);
        // [3, 4]: mean of squares 12.5
        let y = rms_norm(&Tensor::new(vec![3.0, 4.0], &[2]).unwrap(), None, 0.0).unwrap().to_vec();
        assert_close(
            "rms_norm [3,4]",
            &y,
            &[(3.0 / 12.5f64.sqrt()) as f32, (4.0 / 12.5f64.sqrt()) as f32],
            2.5e-7,
            0.0,
        );
        // a constant row normalises to 0 (plus bias) when eps > 0, and to nan when eps = 0 (as torch)
        let x = Tensor::full(&[2, 3], 7.0).unwrap();
        let b = Tensor::new(vec![0.1, 0.2, 0.3], &[3]).unwrap();
        assert_eq!(layer_norm(&x, None, Some(&b), 1e-5).unwrap().to_vec(), [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]);
        assert!(layer_norm(&x, None, None, 0.0).unwrap().to_vec().iter().all(|v| v.is_nan()));
        // its gradient is finite with eps > 0: dx = rstd·(g − mean g) since n = 0
        let x = x.requires_grad_(true);
        let y = layer_norm(&x, None, None, 1e-5).unwrap();
        sum_all(&mul(&y, &Tensor::new(vec![1.0, 2.0, 3.0, 1.0, 1.0, 1.0], &[2, 3]).unwrap()).unwrap())
            .unwrap()
            .backward(None, false)
            .unwrap();
        let r = 1.0 / 1e-5f32.sqrt();
        assert_close("constant-row dx", &x.grad().unwrap().to_vec(), &[-r, 0.0, r, 0.0, 0.0, 0.0], 1e-2, 0.0);
    }

    #[test]
    fn rows_far_from_zero_stay_accurate() {
        // x = 1000 + N(0, 1): the mean must be right to f32 rounding, or x − mean loses digits. The best any
        // f32 output can do is about ulp(1000)/2 · rstd ≈ 3e-5 here.
        manual_seed(56);
        let x = randn(&[8, 768], 1000.0, 1.0).unwrap();
        let want = norm_f64(&x.data(), 768, None, None, 1e-5, false);
        let d = assert_close(
            "layer_norm at offset 1000",
            &layer_norm(&x, None, None, 1e-5).unwrap().data(),
            &want,
            1e-4,
            0.0,
        );
        println!("layer_norm at offset 1000: max abs diff vs f64 loop {d:.1e}");
        let want = norm_f64(&x.data(), 768, None, None, 1e-5, true);
        assert_close("rms_norm at offset 1000", &rms_norm(&x, None, 1e-5).unwrap().data(), &want, 1e-6, 0.0);
    }

    #[test]
    fn one_row_equals_the_same_row_in_a_batch() {
        // decode normalises (1, C) rows; they must match the batch bit for bit
        manual_seed(53);
        let x = randn(&[40, 500], 0.0, 1.0).unwrap();
        let w = randn(&[500], 1.0, 0.1).unwrap();
        let ln = layer_norm(&x, Some(&w), Some(&w), 1e-5).unwrap();
        let rms = rms_norm(&x, Some(&w), 1e-5).unwrap();
        for r in [0, 17, 39] {
            let row = narrow(&x, 0, r, 1).unwrap();
            assert_eq!(
                layer_norm(&row, Some(&w), Some(&w), 1e-5).unwrap().to_vec(),
                narrow(&ln, 0, r, 1).unwrap().to_vec()
            );
            assert_eq!(rms_norm(&row, Some(&w), 1e-5).unwrap().to_vec(), narrow(&rms, 0, r, 1).unwrap().to_vec());
        }
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[2, 4]).unwrap();
        let w3 = Tensor::zeros(&[3]).unwrap();
        let w4 = Tensor::ones(&[4]).unwrap();
        let e = layer_norm(&x, Some(&w3), None, 1e-5).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "layer_norm: weight must have shape (4,) to match the last dim of the input (2, 4), got (3,)"
        );
        let e = layer_norm(&x, Some(&w4), Some(&Tensor::zeros(&[1, 4]).unwrap()), 1e-5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "layer_norm: bias must have shape (4,) to match the last dim of the input (2, 4), got (1, 4)"
        );
        let e = rms_norm(&x, Some(&w3), 1e-5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "rms_norm: weight must have shape (4,) to match the last dim of the input (2, 4), got (3,)"
        );
        let e = rms_norm(&Tensor::scalar(1.0), None, 1e-5).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "rms_norm: expected an input of shape (..., C) with at least 1 dim, got a 0-d tensor"
        );
        for eps in [-1e-5, f32::NAN, f32::INFINITY] {
            let e = layer_norm(&x, None, None, eps).unwrap_err();
            assert!(matches!(e, Error::Value { .. }), "{e}");
            assert!(rms_norm(&x, None, eps).is_err());
            assert!(layer_norm_reference(&x, None, None, eps).is_err());
        }
        assert_eq!(
            layer_norm(&x, None, None, -1.0).unwrap_err().to_string(),
            "layer_norm: eps must be finite and >= 0, got -1"
        );
        // a backward handed a gradient of the wrong shape says so
        let node = RmsNormBackward { x: x.clone(), weight: None, rstds: vec![1.0; 2], c: 4 };
        let e = node.backward(&Tensor::zeros(&[4, 2]).unwrap(), &[true]).err().unwrap();
        assert_eq!(e.to_string(), "rms_norm: gradient of shape (4, 2) does not match the output shape (2, 4)");
    }

    #[test]
    fn empty_inputs() {
        // no rows: empty output, zero weight/bias gradients; C = 0: empty everything
        for shape in [&[0, 4][..], &[3, 0]] {
            let c = shape[1];
            let x = Tensor::zeros(shape).unwrap().requires_grad_(true);
            let w = Tensor::ones(&[c]).unwrap().requires_grad_(true);
            let b = Tensor::zeros(&[c]).unwrap().requires_grad_(true);
            let y = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
            assert_eq!(y.shape(), shape);
            sum_all(&y).unwrap().backward(None, false).unwrap();
            assert_eq!(x.grad().unwrap().shape(), shape);
            assert_eq!(w.grad().unwrap().to_vec(), vec![0.0; c]);
            assert_eq!(b.grad().unwrap().to_vec(), vec![0.0; c]);
            w.zero_grad();
            let y = rms_norm(&x, Some(&w), 1e-5).unwrap();
            assert_eq!(y.shape(), shape);
            sum_all(&y).unwrap().backward(None, false).unwrap();
            assert_eq!(w.grad().unwrap().to_vec(), vec![0.0; c]);
        }
    }

    #[test]
    fn grads_only_where_needed() {
        manual_seed(54);
        let x = randn(&[4, 6], 0.0, 1.0).unwrap();
        let w = randn(&[6], 1.0, 0.1).unwrap().requires_grad_(true);
        let b = randn(&[6], 0.0, 0.1).unwrap();
        let y = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
        sum_all(&y).unwrap().backward(None, false).unwrap();
        assert!(x.grad().is_none() && b.grad().is_none());
        // Σ_rows Σ_j n·1 = Σ_rows Σ_j n ≈ 0 per row, so dweight_j = Σ_rows n_rj
        let n = layer_norm(&x, None, None, 1e-5).unwrap().to_vec();
        let want: Vec<f32> = (0..6).map(|j| (0..4).map(|r| n[r * 6 + j]).sum()).collect();
        assert_close("dweight", &w.grad().unwrap().to_vec(), &want, 1e-5, 0.0);
    }

    /// `cargo test --release -- --ignored --nocapture norm_timing`
    #[test]
    #[ignore]
    fn norm_timing() {
        manual_seed(55);
        let (rows, c) = (2048, 768);
        let x = randn(&[rows, c], 0.0, 1.0).unwrap().requires_grad_(true);
        let w = randn(&[c], 1.0, 0.1).unwrap().requires_grad_(true);
        let b = randn(&[c], 0.0, 0.1).unwrap().requires_grad_(true);
        let g = randn(&[rows, c], 0.0, 1.0).unwrap();
        // backward = the node's own backward (what the tape calls), without the tape's copy of the seed
        let time = |name: &str, f: &dyn Fn() -> Tensor| {
            let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
            for _ in 0..30 {
                let t0 = std::time::Instant::now();
                let y = f();
                let t1 = std::time::Instant::now();
                let node = y.grad_fn().unwrap();
                let needs = vec![true; node.inputs().len()];
                let t2 = std::time::Instant::now();
                let grads = node.backward(&g, &needs).unwrap();
                let t3 = std::time::Instant::now();
                drop(grads);
                fwd = fwd.min((t1 - t0).as_secs_f64());
                bwd = bwd.min((t3 - t2).as_secs_f64());
            }
            println!(
                "{name} ({rows}, {c}) on {} threads: forward {:.3} ms, backward {:.3} ms (best of 30)",
                crate::parallel::num_threads(),
                fwd * 1e3,
                bwd * 1e3
            );
        };
        // a first untimed round, so glibc has settled how it hands out these 6 MB buffers
        for _ in 0..2 {
            drop(rms_norm(&layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap(), Some(&w), 1e-5).unwrap());
        }
        time("layer_norm", &|| layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap());
        time("rms_norm", &|| rms_norm(&x, Some(&w), 1e-5).unwrap());
        // the floor for any op writing a fresh (2048, 768) output: an elementwise copy into a new buffer
        let copy = (0..30)
            .map(|_| {
                let t0 = std::time::Instant::now();
                drop(crate::ops::unary::map("copy", &x, |v| v).unwrap());
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        println!("baseline: elementwise copy of ({rows}, {c}) into a new tensor {:.3} ms", copy * 1e3);
        time("layer_norm_reference", &|| layer_norm_reference(&x, Some(&w), Some(&b), 1e-5).unwrap());
        time("rms_norm_reference", &|| rms_norm_reference(&x, Some(&w), 1e-5).unwrap());
    }
}
