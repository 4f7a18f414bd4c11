//! Fused softmax, log_softmax and cross_entropy (log_softmax + NLL in one pass, with ignore_index).
//! Each is numerically stable (the row max is subtracted before exp) and keeps a `*_reference` built
//! from primitive ops; the tests check fused == reference, forward and backward.
//!
//! Work is split by lanes (the slices along `dim`), each computed whole by one task in a fixed order,
//! so results are bit-identical on 1 or N threads.

use rayon::prelude::*;

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::{div, mul, sub};
use crate::ops::reduce::{max, split_at_dim, sum, sum_all, sum_f64};
use crate::ops::simd::{dot8, sum8};
use crate::ops::unary::{exp, exp_f32, log, neg};
use crate::parallel::{GRAIN, install};
use crate::tensor::{Tensor, alloc_zeros};

/// Run `f(src_lanes, dst_lane)` on every lane along a dim of tensors laid out as (outer, d, inner).
/// With inner == 1 the lanes are contiguous rows used in place; otherwise each lane is gathered into a
/// scratch buffer and scattered back (tasks then own whole (d, inner) slabs, so a huge single slab runs
/// on one thread). Lanes are independent, so the split never changes a bit of the result.
pub(crate) fn for_each_lane<const N: usize, F>(srcs: [&[f32]; N], dst: &mut [f32], layout: (usize, usize, usize), f: F)
where
    F: Fn([&[f32]; N], &mut [f32]) + Send + Sync,
{
    let (_, d, inner) = layout;
    if d == 0 || dst.is_empty() {
        return;
    }
    if inner == 1 {
        let run = |row0: usize, chunk: &mut [f32]| {
            for (k, row) in chunk.chunks_mut(d).enumerate() {
                let s = (row0 + k) * d;
                f(srcs.map(|x| &x[s..s + d]), row);
            }
        };
        let per_task = (GRAIN / d).max(1);
        if dst.len() <= GRAIN {
            run(0, dst);
        } else {
            install(|| dst.par_chunks_mut(per_task * d).enumerate().for_each(|(c, ch)| run(c * per_task, ch)));
        }
        return;
    }
    let slab = d * inner;
    let run = |slab0: usize, chunk: &mut [f32]| {
        let mut scratch: [Vec<f32>; N] = std::array::from_fn(|_| vec![0.0; d]);
        let mut lane = vec![0.0; d];
        for (k, blk) in chunk.chunks_mut(slab).enumerate() {
            let base = (slab0 + k) * slab;
            for i in 0..inner {
                for (sc, src) in scratch.iter_mut().zip(&srcs) {
                    for (j, v) in sc.iter_mut().enumerate() {
                        *v = src[base + j * inner + i];
                    }
                }
                f(std::array::from_fn(|n| &scratch[n][..]), &mut lane);
                for (j, &v) in lane.iter().enumerate() {
                    blk[j * inner + i] = v;
                }
            }
        }
    };
    let per_task = (GRAIN / slab).max(1);
    if dst.len() <= GRAIN {
        run(0, dst);
    } else {
        install(|| dst.par_chunks_mut(per_task * slab).enumerate().for_each(|(c, ch)| run(c * per_task, ch)));
    }
}

/// Largest value of a lane, ignoring nan (a nan still poisons the lane through exp). Eight running
/// maxima so the loop vectorizes; max is exact, so the grouping changes nothing.
#[inline]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].max(c[k]);
        }
    }
    tail.iter().chain(&acc).fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// Σ exp(x − m) in f64, with eight accumulators in a fixed order (vectorizes, deterministic).
#[inline]
fn sum_exp(xs: &[f32], m: f32) -> f64 {
    sum8(xs, |v| exp_f32(v - m) as f64)
}

/// Σ a·b in f64, eight accumulators.
#[inline]
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    dot8(a, b, |x, y| x as f64 * y as f64)
}

/// m = max and ln Σ exp(x − m) of a lane (sum in f64). An all −inf lane gives nan, as in torch.
#[inline]
fn lane_logsumexp_parts(xs: &[f32]) -> (f32, f64) {
    let m = lane_max(xs);
    (m, sum_exp(xs, m).ln())
}

// ---- softmax ----
/// softmax along `dim`: exp(x − max) / Σ exp(x − max). A lane that is all −inf (or holds +inf or nan)
/// gives nan, as in torch. Saves the output for backward.
pub fn softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    let layout = split_at_dim("softmax", x.shape(), dim)?;
    let mut out = alloc_zeros("softmax", x.numel())?;
    for_each_lane([&x.data()[..]], &mut out, layout, |[xs], ys| {
        let m = lane_max(xs);
        for (y, &v) in ys.iter_mut().zip(xs) {
            *y = exp_f32(v - m);
        }
        let inv = (1.0 / sum_f64(ys)) as f32;
        ys.iter_mut().for_each(|y| *y *= inv);
    });
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    Ok(record(out.clone(), SoftmaxBackward { x: x.clone(), out: out.detach(), layout }))
}
struct SoftmaxBackward {
    x: Tensor,
    out: Tensor,
    layout: (usize, usize, usize),
}
impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // y = softmax(x)  so  dx = y · (dout − Σ_lane dout·y)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let mut dx = alloc_zeros("softmax", self.x.numel())?;
        for_each_lane([&dout.data()[..], &self.out.data()[..]], &mut dx, self.layout, |[g, y], dx| {
            let s = dot_f64(g, y) as f32;
            for ((d, &g), &y) in dx.iter_mut().zip(g).zip(y) {
                *d = y * (g - s);
            }
        });
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

// ---- log_softmax ----
/// log_softmax along `dim`: (x − max) − ln Σ exp(x − max). An all −inf lane gives nan, as in torch.
/// Saves the output for backward.
pub fn log_softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    let layout = split_at_dim("log_softmax", x.shape(), dim)?;
    let mut out = alloc_zeros("log_softmax", x.numel())?;
    for_each_lane([&x.data()[..]], &mut out, layout, |[xs], ys| {
        let (m, lns) = lane_logsumexp_parts(xs);
        let lns = lns as f32;
        for (y, &v) in ys.iter_mut().zip(xs) {
            *y = (v - m) - lns;
        }
    });
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    Ok(record(out.clone(), LogSoftmaxBackward { x: x.clone(), out: out.detach(), layout }))
}
struct LogSoftmaxBackward {
    x: Tensor,
    out: Tensor,
    layout: (usize, usize, usize),
}
impl Backward for LogSoftmaxBackward {
    fn name(&self) -> &'static str {
        "log_softmax"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // y = log_softmax(x)  so  dx = dout − exp(y) · Σ_lane dout
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let mut dx = alloc_zeros("log_softmax", self.x.numel())?;
        for_each_lane([&dout.data()[..], &self.out.data()[..]], &mut dx, self.layout, |[g, y], dx| {
            let s = sum_f64(g) as f32;
            for ((d, &g), &y) in dx.iter_mut().zip(g).zip(y) {
                *d = g - exp_f32(y) * s;
            }
        });
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

// ---- cross_entropy ----

/// Check logits (..., C) against the targets; returns (rows, C, number of rows not ignored).
fn check_targets(
    op: &'static str,
    logits: &Tensor,
    targets: &[i64],
    ignore_index: Option<i64>,
) -> Result<(usize, usize, usize)> {
    let shape = logits.shape();
    let Some((&c, lead)) = shape.split_last() else {
        return Err(Error::shape(op, "logits must have shape (..., C) with at least 1 dim, got a 0-d tensor"));
    };
    let rows: usize = lead.iter().product();
    if targets.len() != rows {
        return Err(Error::shape(
            op,
            format!(
                "expected {rows} targets (one per row of logits with shape {}), got {}",
                fmt_shape(shape),
                targets.len()
            ),
        ));
    }
    let mut n_valid = 0;
    for (r, &t) in targets.iter().enumerate() {
        if Some(t) == ignore_index {
            continue;
        }
        if t < 0 || t as u64 >= c as u64 {
            let expected =
                if c == 0 { "logits have no classes".to_string() } else { format!("expected 0..={}", c - 1) };
            let ignore = ignore_index.map(|i| format!(" or ignore_index {i}")).unwrap_or_default();
            return Err(Error::index(
                op,
                format!("target {t} at row {r} is out of range for {c} classes ({expected}{ignore})"),
            ));
        }
        n_valid += 1;
    }
    Ok((rows, c, n_valid))
}

/// Per row: (max, ln Σ exp(x − max), log_softmax(x)[target] in f64); zeros for ignored rows.
/// Parallel over rows by a fixed grain, so the values never depend on the thread count.
fn picked_logprobs(
    logits: &Tensor,
    targets: &[i64],
    ignore_index: Option<i64>,
    rows: usize,
    c: usize,
) -> Vec<(f32, f32, f64)> {
    let xd = logits.data();
    let xs: &[f32] = &xd;
    let row_stat = |r: usize| -> (f32, f32, f64) {
        let t = targets[r];
        if Some(t) == ignore_index {
            return (0.0, 0.0, 0.0);
        }
        let row = &xs[r * c..(r + 1) * c];
        let (m, lns) = lane_logsumexp_parts(row);
        (m, lns as f32, row[t as usize] as f64 - m as f64 - lns)
    };
    if rows * c <= GRAIN {
        (0..rows).map(row_stat).collect()
    } else {
        let per_task = (GRAIN / c.max(1)).max(1);
        install(|| (0..rows).into_par_iter().with_min_len(per_task).map(row_stat).collect())
    }
}

/// What the backward of a picked log-probability needs: the logits, the picks, and each row's max and
/// ln Σ exp(x − max), so softmax is recomputed instead of a (rows, C) matrix being kept.
struct Picked {
    logits: Tensor,
    targets: Vec<i64>,
    ignore_index: Option<i64>,
    stats: Vec<(f32, f32)>,
}

impl Picked {
    /// dx_r = scale(r) · (softmax(x_r) − onehot(t_r)) on kept rows, 0 on ignored rows.
    fn softmax_minus_onehot(&self, op: &'static str, scale: impl Fn(usize) -> f32 + Sync) -> Result<Tensor> {
        let shape = self.logits.shape();
        let c = shape.last().copied().unwrap_or(0);
        let mut dx = alloc_zeros(op, self.logits.numel())?;
        if c == 0 || dx.is_empty() {
            return Ok(Tensor::from_vec_unchecked(dx, shape.to_vec()));
        }
        let xd = self.logits.data();
        let xs: &[f32] = &xd;
        let run = |row0: usize, chunk: &mut [f32]| {
            for (k, drow) in chunk.chunks_mut(c).enumerate() {
                let r = row0 + k;
                let t = self.targets[r];
                if Some(t) == self.ignore_index {
                    continue; // already 0
                }
                let ((m, lns), g) = (self.stats[r], scale(r));
                for (d, &v) in drow.iter_mut().zip(&xs[r * c..(r + 1) * c]) {
                    *d = exp_f32((v - m) - lns) * g;
                }
                drow[t as usize] -= g;
            }
        };
        let per_task = (GRAIN / c).max(1);
        if dx.len() <= GRAIN {
            run(0, &mut dx);
        } else {
            install(|| dx.par_chunks_mut(per_task * c).enumerate().for_each(|(i, ch)| run(i * per_task, ch)));
        }
        drop(xd);
        Ok(Tensor::from_vec_unchecked(dx, shape.to_vec()))
    }
}

/// Mean over rows of −log_softmax(logits)[row, target] for logits of shape (..., C), classes on the
/// LAST dim, and one target per row (row-major order of the leading dims). Rows whose target equals
/// `ignore_index` are skipped; if every row is skipped the result is nan (as in torch). Returns a 0-d
/// tensor. A target outside [0, C) is `Error::Index`; a wrong number of targets is `Error::Shape`.
/// Fused: the backward is (softmax − onehot) / n_valid on kept rows and 0 on ignored ones, recomputed
/// from the saved row max and log-sum so no (rows, C) probability matrix is kept.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], ignore_index: Option<i64>) -> Result<Tensor> {
    let (rows, c, n_valid) = check_targets("cross_entropy", logits, targets, ignore_index)?;
    let stats = picked_logprobs(logits, targets, ignore_index, rows, c);
    // summed in row order, so the result does not depend on the split
    let total: f64 = stats.iter().map(|s| -s.2).sum();
    let out = Tensor::scalar((total / n_valid as f64) as f32);
    if !crate::autograd::will_record(&[logits]) {
        return Ok(out);
    }
    let stats = stats.into_iter().map(|(m, lns, _)| (m, lns)).collect();
    let picked = Picked { logits: logits.clone(), targets: targets.to_vec(), ignore_index, stats };
    Ok(record(out, CrossEntropyBackward { picked, n_valid }))
}
struct CrossEntropyBackward {
    picked: Picked,
    n_valid: usize,
}
impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.picked.logits.clone()]
    }
    // loss = (1/n) Σ_valid rows (lse(x_r) − x_r[t_r])  so  dx_r = dout · (softmax(x_r) − onehot(t_r)) / n
    // on valid rows, 0 on ignored rows
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let scale = (dout.item()? as f64 / self.n_valid as f64) as f32;
        Ok(vec![Some(self.picked.softmax_minus_onehot("cross_entropy", |_| scale)?)])
    }
}

// ---- token_logprobs ----
/// log_softmax(logits)[row, target] for every row: logits (..., C), one target per row → (rows,).
/// Rows whose target equals `ignore_index` give 0 and no gradient. This is the per-token log-probability
/// that SFT masks, DPO, PPO and GRPO are built from. Fused like `cross_entropy` (which is its negated mean).
pub fn token_logprobs(logits: &Tensor, targets: &[i64], ignore_index: Option<i64>) -> Result<Tensor> {
    let (rows, c, _) = check_targets("token_logprobs", logits, targets, ignore_index)?;
    let stats = picked_logprobs(logits, targets, ignore_index, rows, c);
    let out = Tensor::from_vec_unchecked(stats.iter().map(|s| s.2 as f32).collect(), vec![rows]);
    if !crate::autograd::will_record(&[logits]) {
        return Ok(out);
    }
    let stats = stats.into_iter().map(|(m, lns, _)| (m, lns)).collect();
    Ok(record(
        out,
        TokenLogprobsBackward(Picked { logits: logits.clone(), targets: targets.to_vec(), ignore_index, stats }),
    ))
}
struct TokenLogprobsBackward(Picked);
impl Backward for TokenLogprobsBackward {
    fn name(&self) -> &'static str {
        "token_logprobs"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.0.logits.clone()]
    }
    // out_r = x_r[t_r] − lse(x_r)  so  dx_r = dout_r · (onehot(t_r) − softmax(x_r)); 0 on ignored rows
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let g = dout.data();
        Ok(vec![Some(self.0.softmax_minus_onehot("token_logprobs", |r| -g[r])?)])
    }
}

/// token_logprobs from primitives: Σ_c log_softmax(x) · onehot, with ignored rows' one-hot all zero.
pub fn token_logprobs_reference(logits: &Tensor, targets: &[i64], ignore_index: Option<i64>) -> Result<Tensor> {
    let (rows, c, _) = check_targets("token_logprobs", logits, targets, ignore_index)?;
    let mut onehot = vec![0.0f32; rows * c];
    for (r, &t) in targets.iter().enumerate() {
        if Some(t) != ignore_index {
            onehot[r * c + t as usize] = 1.0;
        }
    }
    let x2 = crate::ops::view::reshape(logits, &[rows as isize, c as isize])?;
    let lp = log_softmax_reference(&x2, -1)?;
    sum(&mul(&lp, &Tensor::new(onehot, &[rows, c])?)?, Some(&[-1]), false)
}

// ---- references: the same math from primitive ops ----

/// softmax from primitives: e = exp(x − max), e / Σ e. The max is a detached constant shift.
pub fn softmax_reference(x: &Tensor, dim: isize) -> Result<Tensor> {
    let m = max(&x.detach(), Some(dim), true)?;
    let e = exp(&sub(x, &m)?)?;
    div(&e, &sum(&e, Some(&[dim]), true)?)
}

/// log_softmax from primitives: z = x − max, z − ln Σ exp z.
pub fn log_softmax_reference(x: &Tensor, dim: isize) -> Result<Tensor> {
    let z = sub(x, &max(&x.detach(), Some(dim), true)?)?;
    sub(&z, &log(&sum(&exp(&z)?, Some(&[dim]), true)?)?)
}

/// cross_entropy from primitives: −Σ (log_softmax_reference(logits) · onehot) / n_valid, where the
/// constant onehot tensor has a 1 at (row, target) for every row not ignored.
pub fn cross_entropy_reference(logits: &Tensor, targets: &[i64], ignore_index: Option<i64>) -> Result<Tensor> {
    let (_, c, n_valid) = check_targets("cross_entropy", logits, targets, ignore_index)?;
    let mut onehot = alloc_zeros("cross_entropy", logits.numel())?;
    for (r, &t) in targets.iter().enumerate() {
        if Some(t) != ignore_index {
            onehot[r * c + t as usize] = 1.0;
        }
    }
    let onehot = Tensor::new(onehot, logits.shape())?;
    let picked = sum_all(&mul(&log_softmax_reference(logits, -1)?, &onehot)?)?;
    div(&neg(&picked)?, &Tensor::scalar(n_valid as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::tensor::random::{manual_seed, rand, randint, randn};
    use crate::testutil::assert_close;

    type Fwd = fn(&Tensor, isize) -> Result<Tensor>;

    /// Fused vs reference, forward and backward, with a random upstream gradient.
    fn compare_with_reference(name: &str, fused: Fwd, reference: Fwd, shape: &[usize], dim: isize) {
        let x = randn(shape, 0.0, 3.0).unwrap().requires_grad_(true);
        let xr = x.detach().deep_clone().requires_grad_(true);
        let (y, yr) = (fused(&x, dim).unwrap(), reference(&xr, dim).unwrap());
        let what = format!("{name} {shape:?} dim {dim}");
        assert_close(&format!("{what} forward"), &y.data(), &yr.data(), 1e-5, 0.0);
        let g = randn(shape, 0.0, 1.0).unwrap();
        y.backward(Some(&g), false).unwrap();
        yr.backward(Some(&g), false).unwrap();
        assert_close(&format!("{what} backward"), &x.grad().unwrap().data(), &xr.grad().unwrap().data(), 1e-5, 0.0);
    }

    #[test]
    fn softmax_and_log_softmax_match_references() {
        manual_seed(30);
        // the big shapes take the parallel paths: contiguous rows, and gathered lanes (dim 1 of 3)
        let cases: [(&[usize], isize); 7] =
            [(&[4, 7], -1), (&[4, 7], 0), (&[2, 3, 5], 1), (&[6], 0), (&[300, 65], -1), (&[3, 50, 200], 1), (&[], 0)];
        for (shape, dim) in cases {
            compare_with_reference("softmax", softmax, softmax_reference, shape, dim);
            compare_with_reference("log_softmax", log_softmax, log_softmax_reference, shape, dim);
        }
    }

    #[test]
    fn softmax_matches_f64_formula() {
        manual_seed(31);
        let x = randn(&[3, 5], 0.0, 4.0).unwrap();
        let (p, lp) = (softmax(&x, -1).unwrap().to_vec(), log_softmax(&x, -1).unwrap().to_vec());
        for (r, row) in x.to_vec().chunks(5).enumerate() {
            let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
            for (j, &v) in row.iter().enumerate() {
                let want = (v as f64).exp() / z;
                let i = r * 5 + j;
                assert!((p[i] as f64 - want).abs() < 1e-6, "softmax element {i}: {} vs {want}", p[i]);
                assert!((lp[i] as f64 - want.ln()).abs() < 1e-5, "log_softmax element {i}: {} vs {}", lp[i], want.ln());
            }
        }
    }

    #[test]
    fn gradcheck_softmax_family() {
        manual_seed(32);
        for dim in [-1, 0] {
            let x = randn(&[3, 4], 0.0, 1.0).unwrap().requires_grad_(true);
            assert_gradcheck(|xs| softmax(&xs[0], dim), std::slice::from_ref(&x));
            assert_gradcheck(|xs| log_softmax(&xs[0], dim), std::slice::from_ref(&x));
        }
        let x = randn(&[2, 3, 4], 0.0, 1.0).unwrap().requires_grad_(true);
        let t = [0, 3, -100, 2, 1, 3];
        assert_gradcheck(|xs| cross_entropy(&xs[0], &t, Some(-100)), std::slice::from_ref(&x));
    }

    #[test]
    fn stable_for_large_values_and_nan_for_all_minus_inf() {
        let x = Tensor::new(
            vec![1000.0, 1001.0, -1000.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY],
            &[2, 3],
        )
        .unwrap();
        let p = softmax(&x, -1).unwrap().to_vec();
        assert!((p[0] - 0.268_941_43).abs() < 1e-6 && (p[1] - 0.731_058_6).abs() < 1e-6 && p[2] == 0.0, "{p:?}");
        assert!(p[3..].iter().all(|v| v.is_nan()), "{p:?}");
        let lp = log_softmax(&x, -1).unwrap().to_vec();
        assert!((lp[1] + 0.313_261_7).abs() < 1e-5 && lp[3..].iter().all(|v| v.is_nan()), "{lp:?}");
        // a -inf entry in a normal row is fine: probability 0, log-probability -inf
        let y = Tensor::new(vec![0.0, f32::NEG_INFINITY], &[2]).unwrap();
        assert_eq!(softmax(&y, 0).unwrap().to_vec(), vec![1.0, 0.0]);
        assert_eq!(log_softmax(&y, 0).unwrap().to_vec(), vec![0.0, f32::NEG_INFINITY]);
        // nan poisons its lane only
        let z = Tensor::new(vec![f32::NAN, 1.0, 2.0, 3.0], &[2, 2]).unwrap();
        let p = softmax(&z, -1).unwrap().to_vec();
        assert!(p[0].is_nan() && p[1].is_nan() && !p[2].is_nan());
    }

    #[test]
    fn empty_inputs() {
        for shape in [&[0, 5][..], &[3, 0][..]] {
            let x = Tensor::zeros(shape).unwrap().requires_grad_(true);
            let y = softmax(&x, -1).unwrap();
            assert_eq!(y.shape(), shape);
            y.backward(Some(&Tensor::zeros(shape).unwrap()), false).unwrap();
            assert_eq!(log_softmax(&x, 0).unwrap().shape(), shape);
        }
        // no rows: mean over nothing is nan
        let x = Tensor::zeros(&[0, 5]).unwrap().requires_grad_(true);
        let l = cross_entropy(&x, &[], None).unwrap();
        assert!(l.item().unwrap().is_nan());
        l.backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().shape(), &[0, 5]);
    }

    /// Random targets in [0, c) with every third row ignored.
    fn targets_with_ignored(rows: usize, c: usize) -> Vec<i64> {
        let mut t = randint(0, c as i64, rows).unwrap();
        for r in (1..rows).step_by(3) {
            t[r] = -100;
        }
        t
    }

    #[test]
    fn cross_entropy_matches_reference() {
        manual_seed(33);
        // (8, 50257): the GPT-2 vocabulary, parallel over rows
        for shape in [&[6, 5][..], &[2, 3, 11], &[512, 65], &[8, 50257], &[1, 3]] {
            let rows = shape[..shape.len() - 1].iter().product();
            let c = shape[shape.len() - 1];
            let t = targets_with_ignored(rows, c);
            let x = randn(shape, 0.0, 2.0).unwrap().requires_grad_(true);
            let xr = x.detach().deep_clone().requires_grad_(true);
            let (l, lr) =
                (cross_entropy(&x, &t, Some(-100)).unwrap(), cross_entropy_reference(&xr, &t, Some(-100)).unwrap());
            assert_eq!(l.shape(), &[] as &[usize]);
            assert_close(&format!("cross_entropy {shape:?} forward"), &l.data(), &lr.data(), 1e-5, 0.0);
            // dout = 2 checks the upstream scale is applied
            let two = Tensor::scalar(2.0);
            l.backward(Some(&two), false).unwrap();
            lr.backward(Some(&two), false).unwrap();
            let (g, gr) = (x.grad().unwrap(), xr.grad().unwrap());
            assert_close(&format!("cross_entropy {shape:?} backward"), &g.data(), &gr.data(), 1e-6, 0.0);
            // ignored rows get exactly zero gradient
            if rows > 1 {
                assert!(g.data()[c..2 * c].iter().all(|&v| v == 0.0), "row 1 is ignored");
            }
        }
        // without ignore_index -100 is just out of range
        let x = randn(&[2, 3], 0.0, 1.0).unwrap();
        assert!(matches!(cross_entropy(&x, &[0, -100], None), Err(Error::Index { .. })));
    }

    #[test]
    fn token_logprobs_matches_reference_and_gradcheck() {
        manual_seed(34);
        for shape in [&[6, 5][..], &[2, 3, 11], &[512, 65], &[4, 50257]] {
            let rows: usize = shape[..shape.len() - 1].iter().product();
            let c = shape[shape.len() - 1];
            let t = targets_with_ignored(rows, c);
            let x = randn(shape, 0.0, 2.0).unwrap().requires_grad_(true);
            let xr = x.detach().deep_clone().requires_grad_(true);
            let (l, lr) =
                (token_logprobs(&x, &t, Some(-100)).unwrap(), token_logprobs_reference(&xr, &t, Some(-100)).unwrap());
            assert_eq!(l.shape(), &[rows]);
            assert_close(&format!("token_logprobs {shape:?} forward"), &l.data(), &lr.data(), 1e-5, 0.0);
            let w = randn(&[rows], 0.0, 1.0).unwrap();
            l.backward(Some(&w), false).unwrap();
            lr.backward(Some(&w), false).unwrap();
            assert_close(
                &format!("token_logprobs {shape:?} backward"),
                &x.grad().unwrap().data(),
                &xr.grad().unwrap().data(),
                1e-6,
                0.0,
            );
        }
        let t = vec![2, -100, 0];
        assert_gradcheck(
            |xs| token_logprobs(&xs[0], &t, Some(-100)),
            &[randn(&[3, 4], 0.0, 1.0).unwrap().requires_grad_(true)],
        );
        assert!(matches!(token_logprobs(&randn(&[2, 3], 0.0, 1.0).unwrap(), &[0, 3], None), Err(Error::Index { .. })));
    }

    #[test]
    fn cross_entropy_special_values() {
        // uniform logits: loss = ln C
        let x = Tensor::zeros(&[4, 65]).unwrap();
        let l = cross_entropy(&x, &[0, 1, 2, 64], None).unwrap().item().unwrap();
        assert!((l - 65f32.ln()).abs() < 1e-6, "{l}");
        // every row ignored: nan loss (as in torch), zero gradient
        let x = rand(&[3, 4], -1.0, 1.0).unwrap().requires_grad_(true);
        let l = cross_entropy(&x, &[7, 7, 7], Some(7)).unwrap();
        assert!(l.item().unwrap().is_nan());
        l.backward(None, false).unwrap();
        assert!(x.grad().unwrap().data().iter().all(|&g| g == 0.0));
        // large logits stay finite
        let x = Tensor::new(vec![1000.0, 0.0, -1000.0], &[1, 3]).unwrap();
        assert!((cross_entropy(&x, &[1], None).unwrap().item().unwrap() - 1000.0).abs() < 1e-3);
    }

    #[test]
    fn errors_read_well() {
        let x = Tensor::zeros(&[2, 3]).unwrap();
        let e = softmax(&x, 2).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(e.to_string(), "softmax: dim 2 is out of range for a tensor with 2 dims (expected -2..=1)");
        assert!(matches!(log_softmax(&x, -3), Err(Error::Index { .. })));
        let e = cross_entropy(&x, &[0, 3], Some(-100)).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(
            e.to_string(),
            "cross_entropy: target 3 at row 1 is out of range for 3 classes (expected 0..=2 or ignore_index -100)"
        );
        let e = cross_entropy(&x, &[0, -1], None).unwrap_err();
        assert_eq!(e.to_string(), "cross_entropy: target -1 at row 1 is out of range for 3 classes (expected 0..=2)");
        let e = cross_entropy(&Tensor::zeros(&[2, 4, 3]).unwrap(), &[0, 1, 2], None).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "cross_entropy: expected 8 targets (one per row of logits with shape (2, 4, 3)), got 3"
        );
        assert!(matches!(cross_entropy(&Tensor::scalar(1.0), &[], None), Err(Error::Shape { .. })));
        assert!(matches!(cross_entropy_reference(&x, &[0, 5], None), Err(Error::Index { .. })));
    }
}
