//! Reductions: sum, mean, max / argmax over dims (with keepdim), and the whole-tensor sum_all / mean_all.
//! Sums accumulate in f64 so long reductions stay accurate, and every split of the work depends only on
//! the shape (never on the thread count), so results are bit-identical on 1 or N threads.
//!
//! A reduction sees its input as blocks of adjacent dims that are all kept or all reduced (size-1 dims
//! dropped). The hot cases have one reduced block: (outer, reduced, inner) — the last dim (layer means,
//! inner = 1) or the leading dims (bias gradients, outer = 1). Anything else takes a general loop.

use rayon::prelude::*;

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::simd::sum8;
use crate::parallel::{GRAIN, for_each_chunk, install};
use crate::tensor::{Tensor, alloc_zeros, normalize_dim};

// ---- sum_all ----
/// Sum of every element, as a 0-d tensor (the same as `sum(x, None, false)`).
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    sum(x, None, false)
}

// ---- dims and layouts (shared with softmax) ----

/// Normalise one dim. A 0-d tensor accepts dim 0 or −1 (as torch does), meaning its single element.
pub(crate) fn check_dim(op: &'static str, dim: isize, ndim: usize) -> Result<usize> {
    if ndim == 0 {
        return if dim == 0 || dim == -1 {
            Ok(0)
        } else {
            Err(Error::index(op, format!("dim {dim} is out of range for a 0-d tensor (expected -1..=0)")))
        };
    }
    normalize_dim(op, dim, ndim)
}

/// The tensor seen as (outer, size of `dim`, inner): element (o, k, i) sits at (o·d + k)·inner + i.
/// A 0-d tensor is (1, 1, 1).
pub(crate) fn split_at_dim(op: &'static str, shape: &[usize], dim: isize) -> Result<(usize, usize, usize)> {
    let d = check_dim(op, dim, shape.len())?;
    if shape.is_empty() {
        return Ok((1, 1, 1));
    }
    Ok((shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product()))
}

/// Which dims `dims` reduces (None = all). Out-of-range dims are `Error::Index`, repeated ones `Error::Value`.
fn reduced_mask(op: &'static str, shape: &[usize], dims: Option<&[isize]>) -> Result<Vec<bool>> {
    let Some(dims) = dims else {
        return Ok(vec![true; shape.len()]);
    };
    let mut mask = vec![false; shape.len()];
    let mut seen = vec![false; shape.len().max(1)];
    for &d in dims {
        let k = check_dim(op, d, shape.len())?;
        if seen[k] {
            return Err(Error::value(
                op,
                format!("dim {d} appears more than once in dims {dims:?} (tensor of shape {})", fmt_shape(shape)),
            ));
        }
        seen[k] = true;
        if !shape.is_empty() {
            mask[k] = true;
        }
    }
    Ok(mask)
}

fn reduced_shape(shape: &[usize], mask: &[bool], keepdim: bool) -> Vec<usize> {
    shape
        .iter()
        .zip(mask)
        .filter_map(|(&s, &r)| match (r, keepdim) {
            (false, _) => Some(s),
            (true, true) => Some(1),
            (true, false) => None,
        })
        .collect()
}

/// The input as blocks (size, reduced?) of merged adjacent dims; size-1 dims are dropped.
/// Never empty: a tensor with no dims of size > 1 is one kept block of size 1.
fn blocks(shape: &[usize], mask: &[bool]) -> Vec<(usize, bool)> {
    let mut b: Vec<(usize, bool)> = Vec::new();
    for (&s, &r) in shape.iter().zip(mask) {
        if s == 1 {
            continue;
        }
        match b.last_mut() {
            Some(last) if last.1 == r => last.0 *= s,
            _ => b.push((s, r)),
        }
    }
    if b.is_empty() {
        b.push((1, false));
    }
    b
}

/// (outer, reduced, inner) when the reduced dims form at most one block.
fn one_block(b: &[(usize, bool)]) -> Option<(usize, usize, usize)> {
    let reduced: Vec<usize> = (0..b.len()).filter(|&k| b[k].1).collect();
    match reduced[..] {
        [] => Some((b.iter().map(|x| x.0).product(), 1, 1)),
        [k] => Some((b[..k].iter().map(|x| x.0).product(), b[k].0, b[k + 1..].iter().map(|x| x.0).product())),
        _ => None,
    }
}

/// Strides of each block in the (kept-dims-only) output; 0 for reduced blocks.
fn out_strides(b: &[(usize, bool)]) -> Vec<usize> {
    let mut st = vec![0; b.len()];
    let mut acc = 1;
    for k in (0..b.len()).rev() {
        if !b[k].1 {
            st[k] = acc;
            acc *= b[k].0;
        }
    }
    st
}

/// Output offset of row `row` of the input seen as (all blocks but the last) × (last block).
fn row_offset(mut row: usize, b: &[(usize, bool)], st: &[usize]) -> usize {
    let mut off = 0;
    for k in (0..b.len() - 1).rev() {
        off += (row % b[k].0) * st[k];
        row /= b[k].0;
    }
    off
}

// ---- sum kernels ----

/// Sequential f64 sum with 8 independent accumulators (a fixed order, so deterministic, and fast).
pub(crate) fn sum_f64(xs: &[f32]) -> f64 {
    sum8(xs, |v| v as f64)
}

/// f64 sum of a long slice: fixed blocks in parallel, partial sums added in block order.
fn sum_f64_par(xs: &[f32]) -> f64 {
    const BLOCK: usize = 4 * GRAIN;
    if xs.len() <= BLOCK {
        return sum_f64(xs);
    }
    let parts: Vec<f64> = install(|| xs.par_chunks(BLOCK).map(sum_f64).collect());
    parts.iter().sum()
}

/// `acc[i] += Σ_r slab[r·inner + i]` for rows `rows` of a (r, inner) slab.
fn add_rows(slab: &[f32], inner: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, acc: &mut [f64]) {
    for r in rows {
        let row = &slab[r * inner + cols.start..r * inner + cols.end];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v as f64;
        }
    }
}

/// Column sums of one (r, inner) slab into `out` (len inner), times `scale`, parallel when large.
fn column_sums(slab: &[f32], r: usize, inner: usize, scale: f64, out: &mut [f32]) {
    if slab.len() <= 2 * GRAIN {
        let mut acc = vec![0f64; inner];
        add_rows(slab, inner, 0..r, 0..inner, &mut acc);
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * scale) as f32);
    } else if inner >= GRAIN {
        // wide rows: each task owns a band of columns and walks every row
        for_each_chunk(out, GRAIN, |s, c| {
            let mut acc = vec![0f64; c.len()];
            add_rows(slab, inner, 0..r, s..s + c.len(), &mut acc);
            c.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * scale) as f32);
        });
    } else {
        // narrow rows (bias gradients): fixed row blocks summed in parallel, partials added in order.
        // At most 64 blocks, so the partials stay small.
        let rb = (4 * GRAIN).div_ceil(inner).max(r.div_ceil(64)).max(1);
        let parts: Vec<Vec<f64>> = install(|| {
            (0..r.div_ceil(rb))
                .into_par_iter()
                .map(|b| {
                    let mut acc = vec![0f64; inner];
                    add_rows(slab, inner, b * rb..((b + 1) * rb).min(r), 0..inner, &mut acc);
                    acc
                })
                .collect()
        });
        let mut acc = vec![0f64; inner];
        for p in &parts {
            acc.iter_mut().zip(p).for_each(|(a, &v)| *a += v);
        }
        out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * scale) as f32);
    }
}

/// out[o, i] = scale · Σ_k x[o, k, i] for x seen as (outer, r, inner).
fn sum_one_block(x: &[f32], (outer, r, inner): (usize, usize, usize), scale: f64, out: &mut [f32]) {
    if inner == 1 {
        if outer == 1 {
            out[0] = (sum_f64_par(x) * scale) as f32;
            return;
        }
        // one row per output (reductions over the last dim)
        for_each_chunk(out, (GRAIN / r.max(1)).max(1), |s, c| {
            for (k, o) in c.iter_mut().enumerate() {
                let row = (s + k) * r;
                *o = (sum_f64(&x[row..row + r]) * scale) as f32;
            }
        });
        return;
    }
    let slab = r * inner;
    if outer == 1 || slab > 2 * GRAIN {
        // big slabs: parallel inside each
        for (o, oc) in out.chunks_mut(inner).enumerate() {
            column_sums(&x[o * slab..(o + 1) * slab], r, inner, scale, oc);
        }
    } else {
        // many small slabs: each task takes whole slabs
        let grain = inner * (GRAIN / slab.max(1)).max(1);
        for_each_chunk(out, grain, |s, c| {
            let mut acc = vec![0f64; inner];
            for (k, oc) in c.chunks_mut(inner).enumerate() {
                let o = s / inner + k;
                acc.fill(0.0);
                add_rows(&x[o * slab..(o + 1) * slab], inner, 0..r, 0..inner, &mut acc);
                oc.iter_mut().zip(&acc).for_each(|(v, &a)| *v = (a * scale) as f32);
            }
        });
    }
}

/// Any pattern of reduced blocks: walk the input row by row (rows = the last block), sequentially.
fn sum_general(x: &[f32], b: &[(usize, bool)], scale: f64, out: &mut [f32]) {
    let st = out_strides(b);
    let (last, last_reduced) = b[b.len() - 1];
    let mut acc = vec![0f64; out.len()];
    if last > 0 {
        for (row, xs) in x.chunks_exact(last).enumerate() {
            let off = row_offset(row, b, &st);
            if last_reduced {
                acc[off] += sum_f64(xs);
            } else {
                acc[off..off + last].iter_mut().zip(xs).for_each(|(a, &v)| *a += v as f64);
            }
        }
    }
    out.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a * scale) as f32);
}

/// Scaled sum over the dims in `mask`; the output is in kept-dims order (same data with or without keepdim).
fn reduce_sum(op: &'static str, x: &Tensor, mask: &[bool], scale: f64) -> Result<Vec<f32>> {
    let b = blocks(x.shape(), mask);
    let n_out = x.shape().iter().zip(mask).filter(|(_, r)| !**r).map(|(s, _)| s).product();
    let mut out = alloc_zeros(op, n_out)?;
    if n_out == 0 {
        return Ok(out);
    }
    let xd = x.data();
    match one_block(&b) {
        Some(ori) => sum_one_block(&xd, ori, scale, &mut out),
        None => sum_general(&xd, &b, scale, &mut out),
    }
    Ok(out)
}

/// Backward of a sum: every input element gets `scale ·` the gradient of the output it fed.
fn expand(op: &'static str, g: &Tensor, shape: &[usize], mask: &[bool], scale: f32) -> Result<Tensor> {
    let b = blocks(shape, mask);
    let st = out_strides(&b);
    let (last, last_reduced) = b[b.len() - 1];
    let gd = g.data();
    let gs: &[f32] = &gd;
    let mut out = alloc_zeros(op, shape.iter().product())?;
    // each chunk is filled run by run, a run being (part of) one row of the last block
    for_each_chunk(&mut out, GRAIN, |s, c| {
        let mut pos = 0;
        while pos < c.len() {
            let p = s + pos;
            let (row, col) = (p / last, p % last);
            let off = row_offset(row, &b, &st);
            let len = (last - col).min(c.len() - pos);
            let run = &mut c[pos..pos + len];
            if last_reduced {
                run.fill(gs[off] * scale);
            } else {
                run.iter_mut().zip(&gs[off + col..off + col + len]).for_each(|(o, &v)| *o = v * scale);
            }
            pos += len;
        }
    });
    Ok(Tensor::from_vec_unchecked(out, shape.to_vec()))
}

// ---- sum ----
/// Sum over `dims` (None = every dim; negative dims count from the end; `Some(&[])` reduces nothing,
/// as in numpy). With `keepdim` the reduced dims stay as size 1; reducing every dim without keepdim
/// gives a 0-d tensor. Accumulates in f64. Repeated dims are `Error::Value`, out-of-range ones `Error::Index`.
pub fn sum(x: &Tensor, dims: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
    let mask = reduced_mask("sum", x.shape(), dims)?;
    let out = reduce_sum("sum", x, &mask, 1.0)?;
    let out = Tensor::from_vec_unchecked(out, reduced_shape(x.shape(), &mask, keepdim));
    Ok(record(out, SumBackward { name: "sum", x: x.clone(), mask, scale: 1.0 }))
}

// ---- mean ----
/// Mean over `dims` (same rules as `sum`). The mean of an empty reduction is nan, as in numpy.
pub fn mean(x: &Tensor, dims: Option<&[isize]>, keepdim: bool) -> Result<Tensor> {
    let mask = reduced_mask("mean", x.shape(), dims)?;
    let count: usize = x.shape().iter().zip(&mask).filter(|(_, r)| **r).map(|(s, _)| s).product();
    // count 0: scale is inf and 0·inf = nan, the numpy answer
    let scale = 1.0 / count as f64;
    let out = reduce_sum("mean", x, &mask, scale)?;
    let out = Tensor::from_vec_unchecked(out, reduced_shape(x.shape(), &mask, keepdim));
    Ok(record(out, SumBackward { name: "mean", x: x.clone(), mask, scale: scale as f32 }))
}

/// Mean of every element, as a 0-d tensor (nan for an empty tensor).
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    mean(x, None, false)
}

struct SumBackward {
    name: &'static str,
    x: Tensor,
    mask: Vec<bool>,
    scale: f32,
}
impl Backward for SumBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = scale · Σ_dims x  (scale 1 for sum, 1/count for mean)  so  dx = scale · dout, broadcast back
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        Ok(vec![Some(expand(self.name, dout, self.x.shape(), &self.mask, self.scale)?)])
    }
}

// ---- max / argmax ----

/// Largest value of a slice, ignoring nan, and whether it holds a nan. Eight running maxima so the
/// loop vectorizes; max is exact, so the grouping changes nothing. −inf for an empty slice.
fn max_and_has_nan(xs: &[f32]) -> (f32, bool) {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut nan = [false; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
            nan[k] |= c[k].is_nan();
        }
    }
    let m = tail.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (m, nan.iter().any(|&b| b) || tail.iter().any(|v| v.is_nan()))
}

/// (value, index) of the first maximal element of a non-empty contiguous row; the first nan if any.
/// A vectorized max pass, then a scan that stops at the first hit.
fn row_argmax(row: &[f32]) -> (f32, usize) {
    let (m, nan) = max_and_has_nan(row);
    let at = if nan { row.iter().position(|v| v.is_nan()) } else { row.iter().position(|&v| v == m) };
    let at = at.unwrap_or(0);
    (row[at], at)
}

/// Max along the middle axis of x seen as (outer, d, inner): values and the index k of the FIRST
/// maximal element; a nan wins (the first nan), so nan propagates like torch.
fn max_kernel(x: &[f32], (outer, d, inner): (usize, usize, usize)) -> (Vec<f32>, Vec<usize>) {
    let n = outer * inner;
    let mut vals = vec![0f32; n];
    let mut idx = vec![0usize; n];
    // one output at a time is cheap to reason about; for inner > 1 we sweep a run of outputs per row k
    let scan = |s: usize, vs: &mut [f32], is: &mut [usize]| {
        let mut pos = 0;
        while pos < vs.len() {
            let p = s + pos;
            let (o, i) = (p / inner, p % inner);
            let len = (inner - i).min(vs.len() - pos);
            let base = o * d * inner + i;
            let (bv, bi) = (&mut vs[pos..pos + len], &mut is[pos..pos + len]);
            if inner == 1 {
                (bv[0], bi[0]) = row_argmax(&x[base..base + d]);
            } else if len == 1 {
                let (mut best, mut at) = (x[base], 0);
                for k in 1..d {
                    let v = x[base + k * inner];
                    if !best.is_nan() && (v > best || v.is_nan()) {
                        best = v;
                        at = k;
                    }
                }
                bv[0] = best;
                bi[0] = at;
            } else {
                bv.copy_from_slice(&x[base..base + len]);
                bi.fill(0);
                for k in 1..d {
                    let row = &x[base + k * inner..base + k * inner + len];
                    for ((b, a), &v) in bv.iter_mut().zip(bi.iter_mut()).zip(row) {
                        if !b.is_nan() && (v > *b || v.is_nan()) {
                            *b = v;
                            *a = k;
                        }
                    }
                }
            }
            pos += len;
        }
    };
    let grain = (GRAIN / d.max(1)).max(1);
    if n * d <= GRAIN || n == 1 {
        scan(0, &mut vals, &mut idx);
    } else {
        install(|| {
            vals.par_chunks_mut(grain)
                .zip(idx.par_chunks_mut(grain))
                .enumerate()
                .for_each(|(c, (vs, is))| scan(c * grain, vs, is));
        });
    }
    (vals, idx)
}

/// Shared front half of max and argmax: layout, output shape, values and indices along the dim.
#[allow(clippy::type_complexity)]
fn max_impl(
    op: &'static str,
    x: &Tensor,
    dim: Option<isize>,
    keepdim: bool,
) -> Result<((usize, usize, usize), Vec<usize>, Vec<f32>, Vec<usize>)> {
    let shape = x.shape();
    let (layout, out_shape) = match dim {
        None => ((1, x.numel(), 1), if keepdim { vec![1; shape.len()] } else { vec![] }),
        Some(dim) => {
            let layout = split_at_dim(op, shape, dim)?;
            let mut s = shape.to_vec();
            if !s.is_empty() {
                let k = check_dim(op, dim, s.len())?;
                if keepdim {
                    s[k] = 1;
                } else {
                    s.remove(k);
                }
            }
            (layout, s)
        }
    };
    if layout.1 == 0 {
        let what = match dim {
            None => "of an empty tensor".to_string(),
            Some(d) => format!("over dim {d}, which has size 0"),
        };
        return Err(Error::value(op, format!("cannot take the max {what} (shape {})", fmt_shape(shape))));
    }
    let (vals, idx) = max_kernel(&x.data(), layout);
    Ok((layout, out_shape, vals, idx))
}

/// Largest value along `dim` (None = over all elements). Without keepdim the dim is removed (None gives
/// a 0-d tensor; None with keepdim gives all dims of size 1). The gradient flows to the FIRST maximal
/// element only; nan propagates. The max over an empty dim is `Error::Value`.
pub fn max(x: &Tensor, dim: Option<isize>, keepdim: bool) -> Result<Tensor> {
    let ((_, d, inner), out_shape, vals, idx) = max_impl("max", x, dim, keepdim)?;
    let out = Tensor::from_vec_unchecked(vals, out_shape);
    if !crate::autograd::will_record(&[x]) {
        return Ok(out);
    }
    // flat input position of each output's winner
    let pos = idx.iter().enumerate().map(|(p, &k)| (p / inner * d + k) * inner + p % inner).collect();
    Ok(record(out, MaxBackward { x: x.clone(), pos }))
}
struct MaxBackward {
    x: Tensor,
    pos: Vec<usize>,
}
impl Backward for MaxBackward {
    fn name(&self) -> &'static str {
        "max"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = x[argmax]  so  dx = dout at the (first) argmax, 0 elsewhere
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let mut dx = alloc_zeros("max", self.x.numel())?;
        for (&p, &g) in self.pos.iter().zip(dout.data().iter()) {
            dx[p] = g;
        }
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

/// Index of the first maximal element along `dim` (None = flat index over all elements), with the
/// shape of those indices (same rules as `max`). A nan counts as the maximum. No gradient.
pub fn argmax(x: &Tensor, dim: Option<isize>, keepdim: bool) -> Result<(Vec<i64>, Vec<usize>)> {
    let (_, out_shape, _, idx) = max_impl("argmax", x, dim, keepdim)?;
    Ok((idx.into_iter().map(|k| k as i64).collect(), out_shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{assert_gradcheck, no_grad};
    use crate::tensor::random::{Rng, manual_seed, randn};
    use crate::tensor::strides;
    use crate::testutil::assert_close;

    /// Reference reduction: for every output index, loop over the reduced dims in f64.
    fn reference_sum(x: &Tensor, mask: &[bool], mean: bool) -> Vec<f64> {
        let shape = x.shape();
        let st = strides(shape);
        let kept: Vec<usize> = (0..shape.len()).filter(|&k| !mask[k]).collect();
        let red: Vec<usize> = (0..shape.len()).filter(|&k| mask[k]).collect();
        let n_out: usize = kept.iter().map(|&k| shape[k]).product();
        let n_red: usize = red.iter().map(|&k| shape[k]).product();
        let xd = x.data();
        (0..n_out)
            .map(|o| {
                let mut base = 0;
                let mut rem = o;
                for &k in kept.iter().rev() {
                    base += (rem % shape[k]) * st[k];
                    rem /= shape[k];
                }
                let mut s = 0f64;
                for r in 0..n_red {
                    let (mut off, mut rem) = (base, r);
                    for &k in red.iter().rev() {
                        off += (rem % shape[k]) * st[k];
                        rem /= shape[k];
                    }
                    s += xd[off] as f64;
                }
                if mean { s / n_red as f64 } else { s }
            })
            .collect()
    }

    const CASES: [(&[usize], Option<&[isize]>); 10] = [
        (&[2, 3, 4], None),
        (&[2, 3, 4], Some(&[-1])),
        (&[2, 3, 4], Some(&[0])),
        (&[2, 3, 4], Some(&[1])),
        (&[2, 3, 4], Some(&[0, 2])),
        (&[2, 3, 4], Some(&[0, 1])),
        (&[2, 1, 3, 4], Some(&[1, 3])),
        (&[5], Some(&[])),
        (&[], None),
        (&[3, 2, 2, 5], Some(&[2, 0])),
    ];

    #[test]
    fn sum_and_mean_match_reference_and_gradcheck() {
        manual_seed(20);
        for (shape, dims) in CASES {
            let x = randn(shape, 0.0, 1.0).unwrap().requires_grad_(true);
            let mask = reduced_mask("t", shape, dims).unwrap();
            for keepdim in [false, true] {
                let s = sum(&x, dims, keepdim).unwrap();
                assert_eq!(s.shape(), reduced_shape(shape, &mask, keepdim), "sum {shape:?} {dims:?}");
                assert_close(
                    &format!("sum {shape:?} {dims:?}"),
                    &s.data(),
                    &reference_sum(&x, &mask, false),
                    1e-5,
                    1e-5,
                );
                let m = mean(&x, dims, keepdim).unwrap();
                assert_close(
                    &format!("mean {shape:?} {dims:?}"),
                    &m.data(),
                    &reference_sum(&x, &mask, true),
                    1e-5,
                    1e-5,
                );
                assert_gradcheck(|xs| sum(&xs[0], dims, keepdim), std::slice::from_ref(&x));
                assert_gradcheck(|xs| mean(&xs[0], dims, keepdim), std::slice::from_ref(&x));
            }
        }
        // reducing everything without keepdim is 0-d; with keepdim all ones
        let x = randn(&[2, 3], 0.0, 1.0).unwrap();
        assert_eq!(sum(&x, None, false).unwrap().shape(), &[] as &[usize]);
        assert_eq!(mean(&x, Some(&[0, 1]), true).unwrap().shape(), &[1, 1]);
        assert_eq!(mean_all(&x).unwrap().shape(), &[] as &[usize]);
    }

    #[test]
    fn large_reductions_take_the_parallel_paths() {
        // shapes chosen to hit: row sums, leading-dim sums with narrow and wide rows, many small slabs,
        // and the all-elements block sum
        manual_seed(21);
        let cases: [(&[usize], Option<&[isize]>); 6] = [
            (&[300, 257], Some(&[-1])),
            (&[3000, 37], Some(&[0])),
            (&[5, 20_000], Some(&[0])),
            (&[400, 5, 30], Some(&[1])),
            (&[2, 900, 50], Some(&[1])),
            (&[200_001], None),
        ];
        for (shape, dims) in cases {
            let x = randn(shape, 0.0, 1.0).unwrap().requires_grad_(true);
            let mask = reduced_mask("t", shape, dims).unwrap();
            let m = mean(&x, dims, false).unwrap();
            assert_close(&format!("mean {shape:?} {dims:?}"), &m.data(), &reference_sum(&x, &mask, true), 1e-5, 1e-5);
            // backward of mean: every element gets dout / count
            let count: usize = shape.iter().zip(&mask).filter(|(_, r)| **r).map(|(s, _)| s).product();
            let dout = Tensor::full(m.shape(), 2.0).unwrap();
            m.backward(Some(&dout), false).unwrap();
            let want = 2.0 / count as f32;
            assert!(x.grad().unwrap().data().iter().all(|&g| (g - want).abs() < 1e-9), "mean backward {shape:?}");
        }
    }

    #[test]
    fn empty_reductions() {
        let x = Tensor::zeros(&[0, 3]).unwrap();
        assert_eq!(sum(&x, Some(&[0]), false).unwrap().to_vec(), vec![0.0; 3]);
        assert!(mean(&x, Some(&[0]), false).unwrap().to_vec().iter().all(|v| v.is_nan()));
        assert!(mean_all(&x).unwrap().item().unwrap().is_nan());
        assert_eq!(sum(&x, Some(&[1]), true).unwrap().shape(), &[0, 1]);
        let e = max(&x, Some(0), false).unwrap_err();
        assert!(matches!(e, Error::Value { .. }));
        assert_eq!(e.to_string(), "max: cannot take the max over dim 0, which has size 0 (shape (0, 3))");
        assert!(matches!(max(&x, None, false), Err(Error::Value { .. })));
        // max over a non-empty dim of an empty tensor is just empty
        assert_eq!(max(&x, Some(1), false).unwrap().shape(), &[0]);
    }

    #[test]
    fn bad_dims_are_errors_that_read_well() {
        let x = Tensor::zeros(&[2, 3]).unwrap();
        let e = sum(&x, Some(&[2]), false).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(e.to_string(), "sum: dim 2 is out of range for a tensor with 2 dims (expected -2..=1)");
        let e = mean(&x, Some(&[1, -1]), false).unwrap_err();
        assert!(matches!(e, Error::Value { .. }));
        assert_eq!(e.to_string(), "mean: dim -1 appears more than once in dims [1, -1] (tensor of shape (2, 3))");
        assert!(matches!(max(&x, Some(-3), false), Err(Error::Index { .. })));
        assert!(matches!(argmax(&x, Some(5), false), Err(Error::Index { .. })));
        let e = sum(&Tensor::scalar(1.0), Some(&[1]), false).unwrap_err();
        assert_eq!(e.to_string(), "sum: dim 1 is out of range for a 0-d tensor (expected -1..=0)");
        // a 0-d tensor accepts dim 0 / -1, as in torch
        assert_eq!(sum(&Tensor::scalar(2.0), Some(&[-1]), true).unwrap().to_vec(), vec![2.0]);
        assert_eq!(max(&Tensor::scalar(2.0), Some(0), false).unwrap().shape(), &[] as &[usize]);
    }

    /// Distinct values 0.1 apart in a random order, so finite differences never cross a tie.
    fn shuffled(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n).map(|k| k as f32 * 0.1 - 1.0).collect();
        let mut r = Rng::new(seed);
        for k in (1..n).rev() {
            v.swap(k, r.below(k as u64 + 1) as usize);
        }
        Tensor::new(v, shape).unwrap()
    }

    /// Reference max/argmax along one dim by explicit indexing.
    fn reference_max(x: &Tensor, dim: usize) -> (Vec<f32>, Vec<i64>) {
        let shape = x.shape();
        let (o, d, i) =
            (shape[..dim].iter().product::<usize>(), shape[dim], shape[dim + 1..].iter().product::<usize>());
        let xd = x.data();
        let mut vals = vec![];
        let mut idx = vec![];
        for oo in 0..o {
            for ii in 0..i {
                let lane: Vec<f32> = (0..d).map(|k| xd[(oo * d + k) * i + ii]).collect();
                let mut best = 0;
                for k in 1..d {
                    if lane[k] > lane[best] {
                        best = k;
                    }
                }
                vals.push(lane[best]);
                idx.push(best as i64);
            }
        }
        (vals, idx)
    }

    #[test]
    fn max_and_argmax_match_reference_and_gradcheck() {
        for (shape, seed) in [(&[3, 4, 5][..], 1), (&[7][..], 2), (&[300, 70][..], 3), (&[2, 9000, 3][..], 4)] {
            let x = shuffled(shape, seed).requires_grad_(true);
            for dim in 0..shape.len() {
                let (want_v, want_i) = reference_max(&x, dim);
                for keepdim in [false, true] {
                    let m = max(&x, Some(dim as isize), keepdim).unwrap();
                    assert_eq!(m.to_vec(), want_v, "max {shape:?} dim {dim}");
                    let (idx, s) = argmax(&x, Some(dim as isize - shape.len() as isize), keepdim).unwrap();
                    assert_eq!(idx, want_i, "argmax {shape:?} dim {dim}");
                    assert_eq!(s, m.shape());
                }
                if x.numel() < 100 {
                    assert_gradcheck(|xs| max(&xs[0], Some(dim as isize), false), std::slice::from_ref(&x));
                }
            }
        }
        let x = shuffled(&[3, 4], 9).requires_grad_(true);
        assert_gradcheck(|xs| max(&xs[0], None, false), std::slice::from_ref(&x));
        let (i, s) = argmax(&x, None, false).unwrap();
        assert_eq!((x.data()[i[0] as usize], s), (0.1 * 11.0 - 1.0, vec![]));
        assert_eq!(max(&x, None, true).unwrap().shape(), &[1, 1]);
    }

    #[test]
    fn max_ties_go_to_the_first_and_nan_propagates() {
        let x =
            Tensor::new(vec![1.0, 3.0, 3.0, 0.0, f32::NAN, 5.0, f32::NAN, 2.0], &[2, 4]).unwrap().requires_grad_(true);
        let m = max(&x, Some(1), false).unwrap();
        assert_eq!(m.data()[0], 3.0);
        assert!(m.data()[1].is_nan());
        assert_eq!(argmax(&x, Some(1), false).unwrap().0, vec![1, 0]); // row 0: first of the tied 3s; row 1: the first nan
        m.backward(Some(&Tensor::new(vec![1.0, 1.0], &[2]).unwrap()), false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // along dim 0 (inner > 1 path) the same rules hold
        let (i, _) = argmax(&x, Some(0), false).unwrap();
        assert_eq!(i, vec![1, 1, 1, 1]); // columns 0 and 2: the nan wins
        // long rows take the vectorized scan: ties and nans past the first 8-wide chunk
        let mut row = vec![0.0f32; 20];
        row[5] = 2.0;
        row[15] = 2.0;
        assert_eq!(argmax(&Tensor::new(row.clone(), &[20]).unwrap(), Some(0), false).unwrap().0, vec![5]);
        row[12] = f32::NAN;
        assert_eq!(argmax(&Tensor::new(row, &[1, 20]).unwrap(), Some(-1), false).unwrap().0, vec![12]);
        // no graph is kept under no_grad
        let _g = no_grad();
        assert!(!max(&x, None, false).unwrap().requires_grad());
    }
}
