//! Attention's head split and merge as single data moves. GPT-2's `c_attn` makes q, k and v side by side
//! in one (B, T, 3·C) tensor; attention wants each as (B, H, T, D). The composite (narrow, reshape,
//! permute per part) copies twice per part forward, and backward gives each part its own zero-filled
//! (B, T, 3·C) gradient that autograd then sums. Here:
//! - `split_heads` writes all P parts in one parallel pass over x, and is one multi-output autograd node
//!   (`record_multi`) whose backward writes every part's gradient into one (B, T, P·H·D) buffer (zeros
//!   only where a part got no gradient).
//! - `merge_heads` is its inverse for one part, (B, H, T, D) → (B, T, H·D): the same two kernels swapped.
//!
//! Outputs are written without being zero-filled first (every element is written exactly once). Pure
//! copies, so results are bit-identical to the composites `split_heads_reference` / `merge_heads_reference`
//! and do not depend on the thread count.

use std::mem::MaybeUninit;

use crate::autograd::{Backward, MultiBackward, record, record_multi};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::view::{narrow, permute, reshape, rows_per_grain};
use crate::parallel::install;
use crate::tensor::{Tensor, alloc_with_capacity, checked_numel};

/// (B, T, P, H, D): x is (B, T, P·H·D), part p is (B, H, T, D).
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    p: usize,
    h: usize,
    d: usize,
}

// ---- kernels ----

/// `parts` vectors of `n` floats each, written by `fill(part, start, chunk)` in chunks of `chunk` elements
/// (in parallel when there is more than one chunk; the split is fixed, never by thread count). `fill` must
/// write every element of its chunk: nothing is zero-filled first.
fn write_parts<F>(op: &'static str, parts: usize, n: usize, chunk: usize, fill: F) -> Result<Vec<Vec<f32>>>
where
    F: Fn(usize, usize, &mut [MaybeUninit<f32>]) + Send + Sync,
{
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    let mut bufs = (0..parts).map(|_| alloc_with_capacity(op, n)).collect::<Result<Vec<_>>>()?;
    if n == 0 {
    } else if parts.saturating_mul(n) <= chunk {
        for (p, v) in bufs.iter_mut().enumerate() {
            fill(p, 0, &mut v.spare_capacity_mut()[..n]);
        }
    } else {
        install(|| {
            bufs.par_iter_mut().enumerate().for_each(|(p, v)| {
                v.spare_capacity_mut()[..n].par_chunks_mut(chunk).enumerate().for_each(|(i, c)| fill(p, i * chunk, c))
            })
        });
    }
    for v in &mut bufs {
        // SAFETY: capacity is at least n, and `fill` wrote all of [0, n) (every chunk, every element).
        unsafe { v.set_len(n) };
    }
    Ok(bufs)
}

/// `dst = src` (equal lengths) into not-yet-initialised memory, as one memcpy.
fn put(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    assert_eq!(dst.len(), src.len());
    // SAFETY: both slices are valid for len elements, they cannot overlap (one is &mut), and
    // MaybeUninit<f32> has f32's layout.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut f32, src.len()) };
}

/// part_p[b, h, t, :] = x[b, t, (p·H + h)·D ..][..D] for every part, in one parallel pass.
fn gather_heads(op: &'static str, x: &[f32], s: Dims) -> Result<Vec<Vec<f32>>> {
    let Dims { b: _, t, p: np, h: nh, d } = s;
    let n = checked_numel(op, &[s.b, nh, t, d])?;
    let row = np * nh * d; // one (b, t) row of x
    write_parts(op, np, n, rows_per_grain(d) * d, |p, start, chunk| {
        // rows of D; chunks start on a row boundary; row r of part p is (b, h, t) in row-major order
        let r0 = start / d.max(1);
        let (mut ti, mut hi, mut bi) = (r0 % t, (r0 / t) % nh, r0 / (t * nh));
        for o in chunk.chunks_mut(d) {
            let src = (bi * t + ti) * row + (p * nh + hi) * d;
            put(o, &x[src..src + d]);
            ti += 1;
            if ti == t {
                ti = 0;
                hi += 1;
                if hi == nh {
                    hi = 0;
                    bi += 1;
                }
            }
        }
    })
}

/// dx[b, t, (p·H + h)·D ..][..D] = part_p[b, h, t, :], zeros for a part that is None, in one parallel pass.
fn scatter_heads(op: &'static str, parts: &[Option<&[f32]>], s: Dims) -> Result<Vec<f32>> {
    let Dims { b: _, t, p: _, h: nh, d } = s;
    let row = parts.len() * nh * d;
    let n = checked_numel(op, &[s.b, t, row])?;
    let mut out = write_parts(op, 1, n, rows_per_grain(row) * row, |_, start, chunk| {
        let r0 = start / row.max(1);
        for (k, o) in chunk.chunks_mut(row.max(1)).enumerate() {
            let (bi, ti) = ((r0 + k) / t, (r0 + k) % t);
            for (part, piece) in parts.iter().zip(o.chunks_mut((nh * d).max(1))) {
                match part {
                    Some(g) => {
                        for (hi, dst) in piece.chunks_mut(d.max(1)).enumerate() {
                            let src = ((bi * nh + hi) * t + ti) * d;
                            put(dst, &g[src..src + d]);
                        }
                    }
                    None => piece.iter_mut().for_each(|o| {
                        o.write(0.0);
                    }),
                }
            }
        }
    })?;
    Ok(out.pop().unwrap_or_default())
}

// ---- split_heads ----
/// Split x (B, T, P·H·D) into P tensors of shape (B, H, T, D): part p holds features p·H·D .. (p+1)·H·D,
/// head h of it the D features from h·D. For GPT-2's fused projection, `split_heads(qkv, 3, n_head)` gives
/// q, k, v. One pass over x forward; backward writes all P gradients into one buffer.
pub fn split_heads(x: &Tensor, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
    let op = "split_heads";
    let &[b, t, c] = x.shape() else {
        return Err(Error::shape(
            op,
            format!("expected a 3-D tensor (B, T, P*H*D), got shape {}", fmt_shape(x.shape())),
        ));
    };
    if parts == 0 || heads == 0 {
        return Err(Error::value(op, format!("parts ({parts}) and heads ({heads}) must be positive")));
    }
    let ph = parts.checked_mul(heads).filter(|&ph| c % ph == 0).ok_or_else(|| {
        Error::shape(
            op,
            format!(
                "the last dim ({c}) of shape {} must be divisible by parts ({parts}) * heads ({heads})",
                fmt_shape(x.shape())
            ),
        )
    })?;
    let s = Dims { b, t, p: parts, h: heads, d: c / ph };
    let outs = gather_heads(op, &x.data(), s)?;
    let outs: Vec<Tensor> = outs.into_iter().map(|v| Tensor::from_vec_unchecked(v, vec![b, heads, t, s.d])).collect();
    Ok(record_multi(outs, SplitHeadsBackward { x: x.clone(), s }))
}

struct SplitHeadsBackward {
    x: Tensor,
    s: Dims,
}
impl MultiBackward for SplitHeadsBackward {
    fn name(&self) -> &'static str {
        "split_heads"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // part_p[b, h, t, :] = x[b, t, (p·H + h)·D ..]  so  dx[b, t, (p·H + h)·D ..] = dpart_p[b, h, t, :] (0 if absent)
    fn backward(&self, douts: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        let guards: Vec<_> = douts.iter().map(|g| g.as_ref().map(|g| g.data())).collect();
        let gs: Vec<Option<&[f32]>> = guards.iter().map(|g| g.as_ref().map(|g| &g[..])).collect();
        let dx = scatter_heads("split_heads", &gs, self.s)?;
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

/// The composite `split_heads` replaces: per part, narrow + reshape (B, T, H, D) + permute to (B, H, T, D).
pub fn split_heads_reference(x: &Tensor, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
    let (b, t, c) = (x.shape()[0] as isize, x.shape()[1] as isize, x.shape()[2] / parts);
    let (h, d) = (heads as isize, (c / heads) as isize);
    (0..parts).map(|p| permute(&reshape(&narrow(x, 2, p * c, c)?, &[b, t, h, d])?, &[0, 2, 1, 3])).collect()
}

// ---- merge_heads ----
/// (B, H, T, D) → (B, T, H·D): the heads of each position side by side (attention's output before `c_proj`).
pub fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let op = "merge_heads";
    let &[b, h, t, d] = y.shape() else {
        return Err(Error::shape(
            op,
            format!("expected a 4-D tensor (B, H, T, D), got shape {}", fmt_shape(y.shape())),
        ));
    };
    let s = Dims { b, t, p: 1, h, d };
    let out = scatter_heads(op, &[Some(&y.data()[..])], s)?;
    let out = Tensor::from_vec_unchecked(out, vec![b, t, h * d]);
    Ok(record(out, MergeHeadsBackward { y: y.clone(), s }))
}

struct MergeHeadsBackward {
    y: Tensor,
    s: Dims,
}
impl Backward for MergeHeadsBackward {
    fn name(&self) -> &'static str {
        "merge_heads"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.y.clone()]
    }
    // out[b, t, h·D ..] = y[b, h, t, :]  so  dy[b, h, t, :] = dout[b, t, h·D ..]
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut dy = gather_heads("merge_heads", &dout.data(), self.s)?;
        Ok(vec![Some(Tensor::from_vec_unchecked(dy.pop().unwrap_or_default(), self.y.shape().to_vec()))])
    }
}

/// The composite `merge_heads` replaces: permute to (B, T, H, D), then reshape (a view) to (B, T, H·D).
pub fn merge_heads_reference(y: &Tensor) -> Result<Tensor> {
    let s = y.shape().to_vec();
    reshape(&permute(y, &[0, 2, 1, 3])?, &[s[0] as isize, s[2] as isize, (s[1] * s[3]) as isize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::binary::{add, mul};
    use crate::ops::reduce::sum_all;
    use crate::ops::view::cat;
    use crate::tensor::random::{manual_seed, randn};

    fn p(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }

    /// Assert bit-exact equality, reporting the first differing element and the max abs diff.
    fn assert_same(got: &Tensor, want: &Tensor, what: &str) {
        assert_eq!(got.shape(), want.shape(), "{what}: shape");
        let (g, w) = (got.to_vec(), want.to_vec());
        let max = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if let Some(i) = g.iter().zip(&w).position(|(a, b)| a.to_bits() != b.to_bits()) {
            panic!("{what}: element {i} is {} but want {} (max abs diff {max})", g[i], w[i]);
        }
    }

    /// Σ_p Σ (part_p · w_p) over the parts listed in `used`; its gradient w.r.t. part p is w_p.
    fn weighted_loss(parts: &[Tensor], ws: &[Tensor], used: &[usize]) -> Tensor {
        let terms: Vec<Tensor> = used.iter().map(|&i| sum_all(&mul(&parts[i], &ws[i]).unwrap()).unwrap()).collect();
        terms[1..].iter().fold(terms[0].clone(), |a, b| add(&a, b).unwrap())
    }

    /// (B, T, P, H, D) cases: tiny, odd sizes, one part, and big enough to run in parallel chunks.
    const CASES: [(usize, usize, usize, usize, usize); 6] =
        [(1, 1, 1, 1, 1), (2, 3, 3, 2, 4), (2, 5, 2, 3, 7), (3, 4, 1, 5, 3), (2, 70, 3, 4, 32), (16, 128, 3, 4, 32)];

    #[test]
    fn split_matches_composite_forward_and_backward_bit_exact() {
        manual_seed(0);
        for (b, t, np, h, d) in CASES {
            let what = format!("split_heads (B, T, P, H, D) = ({b}, {t}, {np}, {h}, {d})");
            let x = p(&[b, t, np * h * d]);
            let ws: Vec<Tensor> = (0..np).map(|_| randn(&[b, h, t, d], 0.0, 1.0).unwrap()).collect();
            // every subset of parts that gets a gradient, including all of them
            let subsets: Vec<Vec<usize>> =
                (1..1usize << np).map(|m| (0..np).filter(|i| m >> i & 1 == 1).collect()).collect();
            for used in &subsets {
                x.zero_grad();
                let got = split_heads(&x, np, h).unwrap();
                weighted_loss(&got, &ws, used).backward(None, false).unwrap();
                let dx = x.grad().unwrap();
                x.zero_grad();
                let want = split_heads_reference(&x, np, h).unwrap();
                weighted_loss(&want, &ws, used).backward(None, false).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_same(g, w, &format!("{what}: part {i}"));
                }
                assert_same(&dx, &x.grad().unwrap(), &format!("{what}: dx with parts {used:?} used"));
            }
        }
    }

    #[test]
    fn split_gradcheck() {
        manual_seed(1);
        // all parts used (cat along B makes one output), and only the middle one
        assert_gradcheck(|xs| cat(&split_heads(&xs[0], 3, 2)?, 0), &[p(&[2, 3, 12])]);
        assert_gradcheck(|xs| Ok(split_heads(&xs[0], 3, 2)?[1].clone()), &[p(&[2, 3, 12])]);
        assert_gradcheck(|xs| cat(&split_heads(&xs[0], 2, 3)?, 1), &[p(&[1, 4, 6])]);
        // a non-leaf input that is also used elsewhere: split's gradient meets another one at x
        let f = |xs: &[Tensor]| {
            let y = mul(&xs[0], &xs[0])?;
            let parts = split_heads(&y, 2, 1)?;
            add(&cat(&parts, 0)?, &reshape(&y, &[2, 1, 3, 2])?)
        };
        assert_gradcheck(f, &[p(&[1, 3, 4])]);
    }

    #[test]
    fn split_backward_from_one_output_and_retained_graph() {
        manual_seed(2);
        let x = p(&[2, 3, 8]);
        let parts = split_heads(&x, 2, 2).unwrap();
        assert_eq!(parts[0].grad_fn_name(), Some("split_heads"));
        // backward straight from one output: the others count as zeros
        let g = randn(&[2, 2, 3, 2], 0.0, 1.0).unwrap();
        parts[1].backward(Some(&g), true).unwrap();
        let want = merge_heads_reference(&g).unwrap().to_vec();
        let dx = x.grad().unwrap().to_vec();
        for (i, v) in dx.iter().enumerate() {
            let (col, row) = (i % 8, i / 8);
            let w = if col < 4 { 0.0 } else { want[row * 4 + col - 4] };
            assert_eq!(v.to_bits(), w.to_bits(), "dx element {i}: {v} vs {w}");
        }
        // the graph was retained: a second backward through the other output adds its part
        parts[0].backward(Some(&g), false).unwrap();
        let dx2 = x.grad().unwrap().to_vec();
        for (i, v) in dx2.iter().enumerate() {
            let (col, row) = (i % 8, i / 8);
            assert_eq!(v.to_bits(), want[row * 4 + col % 4].to_bits(), "dx after both, element {i}");
        }
        // without retain_graph that output is freed now
        let e = parts[0].backward(Some(&g), false).unwrap_err();
        assert!(e.to_string().contains("second time"), "{e}");
        // the per-output node also works on its own (others as zeros)
        let x = p(&[1, 2, 4]);
        let parts = split_heads(&x, 2, 1).unwrap();
        let dout = Tensor::ones(&[1, 1, 2, 2]).unwrap();
        let dx = parts[0].grad_fn().unwrap().backward(&dout, &[true]).unwrap();
        assert_eq!(dx[0].as_ref().unwrap().to_vec(), vec![1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn split_without_grad_records_nothing() {
        let x = p(&[1, 2, 4]);
        let parts = {
            let _g = crate::autograd::no_grad();
            split_heads(&x, 2, 2).unwrap()
        };
        assert!(parts.iter().all(|t| !t.requires_grad() && t.grad_fn_name().is_none()));
        let parts = split_heads(&x.detach(), 2, 2).unwrap();
        assert!(parts.iter().all(|t| !t.requires_grad()));
    }

    #[test]
    fn split_errors() {
        let x = Tensor::zeros(&[2, 3, 10]).unwrap();
        let e = split_heads(&x, 3, 2).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "split_heads: the last dim (10) of shape (2, 3, 10) must be divisible by parts (3) * heads (2)"
        );
        let e = split_heads(&Tensor::zeros(&[6, 12]).unwrap(), 3, 2).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert_eq!(e.to_string(), "split_heads: expected a 3-D tensor (B, T, P*H*D), got shape (6, 12)");
        assert!(matches!(split_heads(&Tensor::zeros(&[1, 2, 3, 12]).unwrap(), 3, 2), Err(Error::Shape { .. })));
        assert!(matches!(split_heads(&Tensor::scalar(1.0), 1, 1), Err(Error::Shape { .. })));
        let e = split_heads(&x, 2, 0).unwrap_err();
        assert!(matches!(e, Error::Value { .. }), "{e}");
        assert_eq!(e.to_string(), "split_heads: parts (2) and heads (0) must be positive");
        assert!(matches!(split_heads(&x, 0, 2), Err(Error::Value { .. })));
        // parts * heads overflowing is a shape error, not a panic
        assert!(matches!(split_heads(&x, usize::MAX, 2), Err(Error::Shape { .. })));
    }

    #[test]
    fn split_and_merge_empty_tensors() {
        for (shape, np, h) in [([0, 3, 12], 3, 2), ([2, 0, 12], 3, 2), ([2, 3, 0], 3, 2), ([0, 0, 0], 1, 1)] {
            let x = p(&shape);
            let parts = split_heads(&x, np, h).unwrap();
            let want = split_heads_reference(&x, np, h).unwrap();
            assert_eq!(parts.len(), np);
            for (g, w) in parts.iter().zip(&want) {
                assert_same(g, w, &format!("empty split {shape:?}"));
            }
            sum_all(&cat(&parts, 0).unwrap()).unwrap().backward(None, false).unwrap();
            assert_eq!(x.grad().unwrap().shape(), &shape);
            let y = p(parts[0].shape());
            let m = merge_heads(&y).unwrap();
            assert_same(&m, &merge_heads_reference(&y).unwrap(), &format!("empty merge {:?}", y.shape()));
            sum_all(&m).unwrap().backward(None, false).unwrap();
            assert_eq!(y.grad().unwrap().shape(), y.shape());
        }
    }

    #[test]
    fn merge_matches_composite_forward_and_backward_bit_exact() {
        manual_seed(3);
        for (b, t, _, h, d) in CASES {
            let what = format!("merge_heads (B, H, T, D) = ({b}, {h}, {t}, {d})");
            let y = p(&[b, h, t, d]);
            let w = randn(&[b, t, h * d], 0.0, 1.0).unwrap();
            let got = merge_heads(&y).unwrap();
            sum_all(&mul(&got, &w).unwrap()).unwrap().backward(None, false).unwrap();
            let dy = y.grad().unwrap();
            y.zero_grad();
            let want = merge_heads_reference(&y).unwrap();
            sum_all(&mul(&want, &w).unwrap()).unwrap().backward(None, false).unwrap();
            assert_same(&got, &want, &what);
            assert_same(&dy, &y.grad().unwrap(), &format!("{what}: dy"));
            // and it undoes split_heads with one part
            assert_same(
                &merge_heads(&split_heads(&got, 1, h).unwrap()[0]).unwrap(),
                &got,
                &format!("{what}: round trip"),
            );
        }
    }

    #[test]
    fn merge_gradcheck_and_errors() {
        manual_seed(4);
        assert_gradcheck(|xs| merge_heads(&xs[0]), &[p(&[2, 3, 4, 2])]);
        let e = merge_heads(&Tensor::zeros(&[2, 3, 4]).unwrap()).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert_eq!(e.to_string(), "merge_heads: expected a 4-D tensor (B, H, T, D), got shape (2, 3, 4)");
    }
}
