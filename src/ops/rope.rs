//! Rotary position embedding (RoFormer, Su et al. 2021; Llama): each pair of features of a head vector
//! is rotated by an angle proportional to the token's position, so q·k depends on positions only through
//! their difference. A rotation's backward is the inverse rotation. Keeps `rope_reference` built from
//! primitive ops; the tests compare the two and check both layouts against an f64 loop.
//!
//! Two layouts pair the features differently (the math is otherwise identical):
//! - `Interleaved`: pairs (x[2i], x[2i+1]) — Meta's original Llama, llama2.c, GGUF.
//! - `HalfSplit`:   pairs (x[i], x[i + D/2]) — Hugging Face's `rotate_half`.
//!
//! The cos/sin table is computed in f64 (angles up to pos·1 for pos ~ 10⁴ need it) and rounded to f32, then
//! kept in a small process-wide cache keyed by (theta, D), grown to the largest position seen (up to
//! `MAX_CACHED_POS`; beyond that the rows needed are computed per call). A table entry depends only on
//! (theta, D, pos, i), never on the cache state, so results are the same however the cache was filled.

use std::sync::{Arc, Mutex};

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::{add, mul, sub};
use crate::ops::view::{cat, for_row_chunks, narrow, reshape, rows_per_grain, select, stack};
use crate::tensor::{Tensor, alloc_zeros, normalize_dim};

/// Which features form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// pairs (x[2i], x[2i+1]): Meta's Llama, llama2.c, GGUF
    Interleaved,
    /// pairs (x[i], x[i + D/2]): Hugging Face's rotate_half
    HalfSplit,
}

// ---- the cos/sin table ----

/// Positions 0..MAX_CACHED_POS are cached (at D = 128 that is 8 MiB); later ones are computed per call.
const MAX_CACHED_POS: usize = 1 << 14;
/// At most this many (theta, D) tables are kept; the oldest goes first.
const MAX_CACHED_TABLES: usize = 8;

/// cos and sin of pos·freq_i for positions `start..start + len` and pairs i < D/2: row p − start holds
/// D/2 cosines then D/2 sines.
struct RopeTable {
    start: usize,
    half: usize,
    cs: Vec<f32>,
}

impl RopeTable {
    fn build(theta: f32, d: usize, start: usize, len: usize) -> Result<RopeTable> {
        let half = d / 2;
        let n = len.checked_mul(d).ok_or(Error::alloc("rope", u128::MAX))?;
        let mut cs = alloc_zeros("rope", n)?;
        // freq_i = theta^(−2i/D), in f64
        let freqs: Vec<f64> = (0..half).map(|i| (theta as f64).powf(-2.0 * i as f64 / d as f64)).collect();
        for_row_chunks(&mut cs, d, rows_per_grain(d * 8), |r0, rows| {
            for (k, row) in rows.chunks_exact_mut(d).enumerate() {
                let pos = (start + r0 + k) as f64;
                let (c, s) = row.split_at_mut(half);
                for ((c, s), &f) in c.iter_mut().zip(s).zip(&freqs) {
                    let (sin, cos) = (pos * f).sin_cos();
                    (*c, *s) = (cos as f32, sin as f32);
                }
            }
        });
        Ok(RopeTable { start, half, cs })
    }

    /// (cos, sin) rows for position `pos` (which the table covers).
    #[inline]
    fn row(&self, pos: usize) -> (&[f32], &[f32]) {
        let off = (pos - self.start) * 2 * self.half;
        self.cs[off..off + 2 * self.half].split_at(self.half)
    }
}

type CacheEntry = (u32, usize, Arc<RopeTable>);
static CACHE: Mutex<Vec<CacheEntry>> = Mutex::new(Vec::new());

/// A table covering positions `start..end` for (theta, D): from the cache when it fits there.
/// The lock is never held while a table is built (the build runs on the pool, whose workers may be
/// waiting for this same lock).
fn table_for(theta: f32, d: usize, start: usize, end: usize) -> Result<Arc<RopeTable>> {
    if end > MAX_CACHED_POS {
        return Ok(Arc::new(RopeTable::build(theta, d, start, end - start)?));
    }
    let key = theta.to_bits();
    let lookup = |cache: &[CacheEntry]| cache.iter().position(|e| e.0 == key && e.1 == d);
    let covers = |t: &RopeTable| t.cs.len() / d >= end;
    {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = lookup(&cache) {
            if covers(&cache[i].2) {
                return Ok(cache[i].2.clone());
            }
        }
    }
    // grow to a power of two, so a decode loop stepping one position at a time rebuilds O(log T) times
    let len = end.next_power_of_two().clamp(64, MAX_CACHED_POS);
    let built = Arc::new(RopeTable::build(theta, d, 0, len)?);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match lookup(&cache) {
        // another thread stored a table at least as long meanwhile: keep it
        Some(i) if cache[i].2.cs.len() >= built.cs.len() => {}
        Some(i) => cache[i].2 = built.clone(),
        None => {
            if cache.len() >= MAX_CACHED_TABLES {
                cache.remove(0);
            }
            cache.push((key, d, built.clone()));
        }
    }
    Ok(built)
}

// ---- checks and the kernel ----

/// Where the positions and pairs sit in x.
#[derive(Clone, Copy)]
struct RopeDims {
    /// size D of the last dim
    d: usize,
    /// size T of seq_dim
    t: usize,
    /// product of the dims between seq_dim and the last one (rows sharing a position)
    inner: usize,
    /// seq_dim, normalised
    seq: usize,
}

fn check(op: &'static str, x: &Tensor, seq_dim: isize, pos_offset: usize, theta: f32) -> Result<RopeDims> {
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(Error::shape(
            op,
            format!("expected x of shape (..., T, ..., D) with at least 2 dims, got {}", fmt_shape(shape)),
        ));
    }
    let nd = shape.len();
    let d = shape[nd - 1];
    if d % 2 != 0 {
        return Err(Error::shape(
            op,
            format!("the last dim D must be even to form pairs, got shape {}", fmt_shape(shape)),
        ));
    }
    let seq = normalize_dim(op, seq_dim, nd)?;
    if seq == nd - 1 {
        return Err(Error::index(
            op,
            format!(
                "seq_dim {seq_dim} is the last dim, whose pairs are rotated; positions must run along another dim of {}",
                fmt_shape(shape)
            ),
        ));
    }
    if !(theta > 0.0) || !theta.is_finite() {
        return Err(Error::value(op, format!("theta must be finite and > 0, got {theta}")));
    }
    let t = shape[seq];
    // positions must stay exact in f64 (and fit a usize)
    if pos_offset.checked_add(t).is_none_or(|end| end as u64 > 1 << 53) {
        return Err(Error::value(op, format!("pos_offset {pos_offset} + sequence length {t} is too large")));
    }
    Ok(RopeDims { d, t, inner: shape[seq + 1..nd - 1].iter().product(), seq })
}

/// The position of each D-row: `pos_offset` + its index along the sequence, or one listed per
/// (outer index, step) for batches whose rows start at different positions (padded batches).
#[derive(Clone, Copy)]
enum Positions<'a> {
    Offset(usize),
    Listed(&'a [usize]),
}

impl Positions<'_> {
    /// Position of row group `g` (= index over the dims up to seq_dim) of a sequence of length `t`.
    #[inline]
    fn of(&self, g: usize, t: usize) -> usize {
        match self {
            Positions::Offset(o) => o + g % t,
            Positions::Listed(p) => p[g],
        }
    }
}

/// Rotate every D-row of `src` into `dst` by its position's angle; `sign` = −1 rotates backwards.
fn rotate(
    src: &[f32],
    dst: &mut [f32],
    dims: RopeDims,
    pos: Positions<'_>,
    table: &RopeTable,
    layout: RopeLayout,
    sign: f32,
) {
    let RopeDims { d, t, inner, .. } = dims;
    let half = d / 2;
    for_row_chunks(dst, d, rows_per_grain(d), |r0, rows| {
        for (k, y) in rows.chunks_exact_mut(d).enumerate() {
            let r = r0 + k;
            let x = &src[r * d..(r + 1) * d];
            let (cos, sin) = table.row(pos.of(r / inner, t));
            match layout {
                RopeLayout::HalfSplit => {
                    let (xa, xb) = x.split_at(half);
                    let (ya, yb) = y.split_at_mut(half);
                    for i in 0..half {
                        let (a, b, c, s) = (xa[i], xb[i], cos[i], sign * sin[i]);
                        ya[i] = a * c - b * s;
                        yb[i] = a * s + b * c;
                    }
                }
                RopeLayout::Interleaved => {
                    for (((yp, xp), &c), &s) in y.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(cos).zip(sin) {
                        let (a, b, s) = (xp[0], xp[1], sign * s);
                        yp[0] = a * c - b * s;
                        yp[1] = a * s + b * c;
                    }
                }
            }
        }
    });
}

// ---- rope ----
/// Rotary position embedding of x (..., D), D even. The position of an element is `pos_offset` + its
/// index along `seq_dim` (any dim but the last: (B, T, H, D) with seq_dim = 1, or (B, H, T, D) with
/// seq_dim = 2). Pair i (i < D/2) is rotated by angle pos·theta^(−2i/D): (a, b) → (a·cos − b·sin,
/// a·sin + b·cos); `layout` says which features pair up. Llama uses theta = 10000 (Llama 3: 500000).
pub fn rope(x: &Tensor, seq_dim: isize, pos_offset: usize, theta: f32, layout: RopeLayout) -> Result<Tensor> {
    let op = "rope";
    let dims = check(op, x, seq_dim, pos_offset, theta)?;
    let mut out = alloc_zeros(op, x.numel())?;
    if out.is_empty() {
        return Ok(Tensor::from_vec_unchecked(out, x.shape().to_vec()));
    }
    let table = table_for(theta, dims.d, pos_offset, pos_offset + dims.t)?;
    rotate(&x.data(), &mut out, dims, Positions::Offset(pos_offset), &table, layout, 1.0);
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    let positions = SavedPositions::Offset(pos_offset);
    Ok(record(out, RopeBackward { op: "rope", x: x.clone(), dims, positions, table, layout }))
}
/// What the backward needs to rotate `dout` back: `rope`'s offset, or `rope_at`'s listed positions.
enum SavedPositions {
    Offset(usize),
    Listed(Vec<usize>),
}
struct RopeBackward {
    op: &'static str,
    x: Tensor,
    dims: RopeDims,
    positions: SavedPositions,
    table: Arc<RopeTable>,
    layout: RopeLayout,
}
impl Backward for RopeBackward {
    fn name(&self) -> &'static str {
        self.op
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // y = R(pos·freq) x per pair, a rotation, so dx = R(pos·freq)ᵀ dout = R(−pos·freq) dout
    // (for rope_at each row by its own listed position's angle)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        if !needs[0] {
            return Ok(vec![None]);
        }
        if dout.shape() != self.x.shape() {
            return Err(Error::shape(
                self.op,
                format!(
                    "gradient of shape {} does not match the output shape {}",
                    fmt_shape(dout.shape()),
                    fmt_shape(self.x.shape())
                ),
            ));
        }
        let mut dx = alloc_zeros(self.op, self.x.numel())?;
        let pos = match &self.positions {
            SavedPositions::Offset(o) => Positions::Offset(*o),
            SavedPositions::Listed(p) => Positions::Listed(p),
        };
        rotate(&dout.data(), &mut dx, self.dims, pos, &self.table, self.layout, -1.0);
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

// ---- rope at listed positions (padded batches) ----
/// `rope` with an explicit position for every step of every sequence: `positions` has one entry per
/// index over the dims up to and including `seq_dim` (for x (B, T, H, D) and seq_dim = 1: B·T entries,
/// row-major), so each row of a padded batch can count its positions from its own first real token.
/// `rope_at(x, 1, [o, o+1, ..] per row)` equals `rope(x, 1, o)` bit for bit.
pub fn rope_at(x: &Tensor, seq_dim: isize, positions: &[usize], theta: f32, layout: RopeLayout) -> Result<Tensor> {
    let op = "rope_at";
    let max = positions.iter().copied().max().unwrap_or(0);
    let dims = check(op, x, seq_dim, max, theta)?;
    let groups: usize = x.shape()[..=dims.seq].iter().product();
    if positions.len() != groups {
        return Err(Error::shape(
            op,
            format!(
                "expected {groups} positions (one per index over the dims up to seq_dim of {}), got {}",
                fmt_shape(x.shape()),
                positions.len()
            ),
        ));
    }
    let mut out = alloc_zeros(op, x.numel())?;
    if out.is_empty() {
        return Ok(Tensor::from_vec_unchecked(out, x.shape().to_vec()));
    }
    let table = table_for(theta, dims.d, 0, max + 1)?;
    rotate(&x.data(), &mut out, dims, Positions::Listed(positions), &table, layout, 1.0);
    let out = Tensor::from_vec_unchecked(out, x.shape().to_vec());
    let positions = SavedPositions::Listed(positions.to_vec());
    Ok(record(out, RopeBackward { op: "rope_at", x: x.clone(), dims, positions, table, layout }))
}

// ---- reference: the same math from primitive ops ----

/// rope from primitives: split x into the pair halves a, b (select on a (..., D/2, 2) reshape for
/// Interleaved, narrow for HalfSplit), a·cos − b·sin and a·sin + b·cos with constant cos/sin tensors of
/// shape (1, .., T, .., 1, D/2), then stack / cat back.
pub fn rope_reference(x: &Tensor, seq_dim: isize, pos_offset: usize, theta: f32, layout: RopeLayout) -> Result<Tensor> {
    let dims = check("rope", x, seq_dim, pos_offset, theta)?;
    let (nd, half) = (x.ndim(), dims.d / 2);
    let table = RopeTable::build(theta, dims.d, pos_offset, dims.t)?;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in pos_offset..pos_offset + dims.t {
        let (c, s) = table.row(p);
        cos.extend_from_slice(c);
        sin.extend_from_slice(s);
    }
    let mut cshape = vec![1; nd];
    (cshape[dims.seq], cshape[nd - 1]) = (dims.t, half);
    let (cos, sin) = (Tensor::new(cos, &cshape)?, Tensor::new(sin, &cshape)?);
    let rot = |a: &Tensor, b: &Tensor| -> Result<(Tensor, Tensor)> {
        Ok((sub(&mul(a, &cos)?, &mul(b, &sin)?)?, add(&mul(a, &sin)?, &mul(b, &cos)?)?))
    };
    match layout {
        RopeLayout::HalfSplit => {
            let (ya, yb) = rot(&narrow(x, -1, 0, half)?, &narrow(x, -1, half, half)?)?;
            cat(&[ya, yb], -1)
        }
        RopeLayout::Interleaved => {
            let mut pairs: Vec<isize> = x.shape().iter().map(|&s| s as isize).collect();
            pairs[nd - 1] = half as isize;
            pairs.push(2);
            let xp = reshape(x, &pairs)?;
            let (ya, yb) = rot(&select(&xp, -1, 0)?, &select(&xp, -1, 1)?)?;
            let back: Vec<isize> = x.shape().iter().map(|&s| s as isize).collect();
            reshape(&stack(&[ya, yb], -1)?, &back)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::view::permute;
    use crate::tensor::random::{manual_seed, randn};
    use crate::testutil::assert_close;
    use RopeLayout::{HalfSplit, Interleaved};

    /// The pair partner of feature j, and whether j is the first of its pair, with the pair index.
    fn pair(layout: RopeLayout, d: usize, j: usize) -> (usize, bool, usize) {
        match layout {
            Interleaved => (j ^ 1, j % 2 == 0, j / 2),
            HalfSplit if j < d / 2 => (j + d / 2, true, j),
            HalfSplit => (j - d / 2, false, j - d / 2),
        }
    }

    /// rope as a plain f64 loop over every element, from the definition.
    fn rope_f64(x: &Tensor, seq: usize, pos_offset: usize, theta: f64, layout: RopeLayout) -> Vec<f32> {
        let shape = x.shape();
        let d = shape[shape.len() - 1];
        let inner: usize = shape[seq + 1..].iter().product();
        let xs = x.to_vec();
        let mut out = vec![0.0; xs.len()];
        for (e, o) in out.iter_mut().enumerate() {
            let (row0, j) = (e - e % d, e % d);
            let pos = (pos_offset + (e / inner) % shape[seq]) as f64;
            let (partner, first, i) = pair(layout, d, j);
            let angle = pos * theta.powf(-2.0 * i as f64 / d as f64);
            let (a, b) = if first { (xs[e], xs[row0 + partner]) } else { (xs[row0 + partner], xs[e]) };
            let (a, b) = (a as f64, b as f64);
            *o = if first { a * angle.cos() - b * angle.sin() } else { a * angle.sin() + b * angle.cos() } as f32;
        }
        out
    }

    #[test]
    fn both_layouts_match_an_f64_loop() {
        manual_seed(60);
        // (B, T, H, D) with seq_dim 1, (B, H, T, D) with seq_dim 2 (and -2), a 2-d (T, D), and one past the cache
        let cases: [(&[usize], isize, usize, f32); 6] = [
            (&[2, 5, 3, 8], 1, 0, 10_000.0),
            (&[2, 3, 5, 8], 2, 7, 10_000.0),
            (&[2, 3, 5, 8], -2, 3, 500_000.0),
            (&[6, 4], 0, 0, 10.0),
            (&[1, 3, 192, 64], 2, 8000, 10_000.0),
            (&[1, 2, 3, 16], 1, MAX_CACHED_POS + 5, 10_000.0),
        ];
        for (shape, seq_dim, off, theta) in cases {
            let seq = normalize_dim("t", seq_dim, shape.len()).unwrap();
            let x = randn(shape, 0.0, 1.0).unwrap();
            for layout in [Interleaved, HalfSplit] {
                let y = rope(&x, seq_dim, off, theta, layout).unwrap();
                let want = rope_f64(&x, seq, off, theta as f64, layout);
                let d = assert_close(&format!("rope {layout:?} {shape:?} offset {off}"), &y.data(), &want, 2e-6, 0.0);
                println!("rope {layout:?} {shape:?} seq_dim {seq_dim} offset {off}: max abs diff vs f64 loop {d:.1e}");
            }
        }
    }

    #[test]
    fn fused_matches_reference_forward_and_backward() {
        manual_seed(61);
        // (4, 64, 6, 32) = 49152 elements: several chunks, so the parallel split runs
        for (shape, seq_dim, off) in [(&[2, 5, 3, 8][..], 1, 0), (&[2, 3, 5, 8], 2, 11), (&[4, 64, 6, 32], 1, 100)] {
            for layout in [Interleaved, HalfSplit] {
                let x = randn(shape, 0.0, 1.0).unwrap().requires_grad_(true);
                let xr = x.detach().deep_clone().requires_grad_(true);
                let y = rope(&x, seq_dim, off, 10_000.0, layout).unwrap();
                let yr = rope_reference(&xr, seq_dim, off, 10_000.0, layout).unwrap();
                let tag = format!("rope {layout:?} {shape:?}");
                let d = assert_close(&format!("{tag} forward"), &y.data(), &yr.data(), 0.0, 0.0);
                let g = randn(shape, 0.0, 1.0).unwrap();
                y.backward(Some(&g), false).unwrap();
                yr.backward(Some(&g), false).unwrap();
                let dx = assert_close(
                    &format!("{tag} dx"),
                    &x.grad().unwrap().data(),
                    &xr.grad().unwrap().data(),
                    1e-6,
                    0.0,
                );
                println!("{tag}: max abs diff fused vs reference: y {d:.1e}, dx {dx:.1e}");
            }
        }
    }

    #[test]
    fn half_split_of_permuted_x_is_permuted_interleaved() {
        // the feature permutation 2i → i, 2i+1 → i + D/2 turns interleaved pairs into half-split pairs, so
        // HalfSplit(P x) == P Interleaved(x): a model trained in one layout runs in the other after permuting
        // the q/k projection rows. Exact, since both rotate the same numbers by the same cos/sin.
        manual_seed(62);
        let (b, t, h, d) = (2, 7, 3, 16);
        let x = randn(&[b, t, h, d], 0.0, 1.0).unwrap();
        // P as a view op: (.., D) → (.., D/2, 2) → swap the last two → (.., D)
        let p = |x: &Tensor| {
            let y = reshape(x, &[b as isize, t as isize, h as isize, d as isize / 2, 2]).unwrap();
            reshape(&permute(&y, &[0, 1, 2, 4, 3]).unwrap(), &[b as isize, t as isize, h as isize, d as isize]).unwrap()
        };
        let px = p(&x).to_vec();
        assert_eq!((px[1], px[d / 2]), (x.data()[2], x.data()[1]), "P moves 2i to i and 2i+1 to i + D/2");
        let lhs = rope(&p(&x), 1, 5, 10_000.0, HalfSplit).unwrap().to_vec();
        let rhs = p(&rope(&x, 1, 5, 10_000.0, Interleaved).unwrap()).to_vec();
        assert_close("HalfSplit(Px) vs P Interleaved(x)", &lhs, &rhs, 0.0, 0.0);
    }

    #[test]
    fn rotation_preserves_each_pair_norm_and_backward_inverts() {
        manual_seed(63);
        let shape = [2, 9, 2, 10];
        let x = randn(&shape, 0.0, 1.0).unwrap().requires_grad_(true);
        for layout in [Interleaved, HalfSplit] {
            x.zero_grad();
            let y = rope(&x, 1, 4000, 10_000.0, layout).unwrap();
            let (xs, ys) = (x.to_vec(), y.to_vec());
            let norms = |v: &[f32]| -> Vec<f32> {
                (0..v.len())
                    .filter(|&e| pair(layout, 10, e % 10).1)
                    .map(|e| {
                        let q = e - e % 10 + pair(layout, 10, e % 10).0;
                        (v[e] as f64).hypot(v[q] as f64) as f32
                    })
                    .collect()
            };
            assert_close(&format!("{layout:?} pair norms"), &norms(&ys), &norms(&xs), 1e-6, 0.0);
            // dx = Rᵀ dout, so with dout = y = R x the gradient is x again
            y.backward(Some(&y.detach()), false).unwrap();
            assert_close(&format!("{layout:?} Rᵀ R x"), &x.grad().unwrap().to_vec(), &xs, 1e-6, 0.0);
        }
        // position 0 is the identity
        let y = rope(&narrow(&x, 1, 0, 1).unwrap(), 1, 0, 10_000.0, HalfSplit).unwrap();
        assert_eq!(y.to_vec(), narrow(&x, 1, 0, 1).unwrap().to_vec());
    }

    #[test]
    fn pos_offset_shifts_positions() {
        // rope(x[:, t0:], offset t0) == rope(x)[:, t0:] bit for bit: decoding token by token with a KV cache
        // rotates exactly like the full forward
        manual_seed(64);
        let x = randn(&[2, 10, 3, 8], 0.0, 1.0).unwrap();
        for layout in [Interleaved, HalfSplit] {
            let full = rope(&x, 1, 0, 10_000.0, layout).unwrap();
            for (t0, len) in [(4, 6), (9, 1), (0, 3)] {
                let part = rope(&narrow(&x, 1, t0, len).unwrap(), 1, t0, 10_000.0, layout).unwrap();
                assert_close(
                    &format!("{layout:?} offset {t0}"),
                    &part.to_vec(),
                    &narrow(&full, 1, t0, len).unwrap().to_vec(),
                    0.0,
                    0.0,
                );
            }
        }
    }

    #[test]
    fn gradcheck_both_layouts() {
        manual_seed(65);
        for layout in [Interleaved, HalfSplit] {
            let x = randn(&[2, 3, 2, 6], 0.0, 1.0).unwrap().requires_grad_(true);
            assert_gradcheck(|t| rope(&t[0], 1, 2, 100.0, layout), std::slice::from_ref(&x));
            assert_gradcheck(|t| rope(&t[0], 2, 0, 10_000.0, layout), std::slice::from_ref(&x));
        }
    }

    #[test]
    fn concurrent_calls_agree_with_sequential_ones() {
        // the shared cache is filled from several threads at once with different lengths and thetas
        manual_seed(66);
        let x = randn(&[1, 300, 2, 12], 0.0, 1.0).unwrap();
        let want: Vec<Vec<f32>> = (0..8).map(|k| rope_f64(&x, 1, k * 37, 1000.0 + (k % 3) as f64, HalfSplit)).collect();
        std::thread::scope(|s| {
            for (k, want) in want.iter().enumerate() {
                let x = &x;
                s.spawn(move || {
                    let y = rope(x, 1, k * 37, 1000.0 + (k % 3) as f32, HalfSplit).unwrap();
                    assert_close(&format!("thread {k}"), &y.to_vec(), want, 2e-6, 0.0);
                });
            }
        });
    }

    #[test]
    fn errors() {
        let x = Tensor::zeros(&[2, 3, 4, 6]).unwrap();
        let e = rope(&Tensor::zeros(&[2, 3, 5]).unwrap(), 1, 0, 1e4, Interleaved).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "rope: the last dim D must be even to form pairs, got shape (2, 3, 5)");
        let e = rope(&Tensor::zeros(&[6]).unwrap(), 0, 0, 1e4, HalfSplit).unwrap_err();
        assert_eq!(e.to_string(), "rope: expected x of shape (..., T, ..., D) with at least 2 dims, got (6,)");
        let e = rope(&x, 3, 0, 1e4, HalfSplit).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert!(e.to_string().starts_with("rope: seq_dim 3 is the last dim"), "{e}");
        assert!(matches!(rope(&x, -1, 0, 1e4, HalfSplit), Err(Error::Index { .. })));
        let e = rope(&x, 4, 0, 1e4, HalfSplit).unwrap_err();
        assert_eq!(e.to_string(), "rope: dim 4 is out of range for a tensor with 4 dims (expected -4..=3)");
        for theta in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = rope(&x, 1, 0, theta, Interleaved).unwrap_err();
            assert!(matches!(e, Error::Value { .. }), "{e}");
        }
        assert_eq!(
            rope(&x, 1, 0, 0.0, Interleaved).unwrap_err().to_string(),
            "rope: theta must be finite and > 0, got 0"
        );
        let e = rope(&x, 1, usize::MAX, 1e4, Interleaved).unwrap_err();
        assert!(matches!(e, Error::Value { .. }));
        assert!(rope_reference(&x, 3, 0, 1e4, HalfSplit).is_err());
    }

    #[test]
    fn empty_inputs() {
        for shape in [&[2, 0, 3, 8][..], &[0, 4, 2], &[2, 3, 0]] {
            let x = Tensor::zeros(shape).unwrap().requires_grad_(true);
            for layout in [Interleaved, HalfSplit] {
                let y = rope(&x, 1, 3, 1e4, layout).unwrap();
                assert_eq!(y.shape(), shape);
                assert_eq!(rope_reference(&x, 1, 3, 1e4, layout).unwrap().shape(), shape);
            }
        }
    }

    /// `cargo test --release -- --ignored --nocapture rope_timing`
    #[test]
    #[ignore]
    fn rope_timing() {
        manual_seed(67);
        let shape = [8, 256, 12, 64];
        let x = randn(&shape, 0.0, 1.0).unwrap().requires_grad_(true);
        let g = randn(&shape, 0.0, 1.0).unwrap();
        for layout in [Interleaved, HalfSplit] {
            let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
            for _ in 0..30 {
                let t0 = std::time::Instant::now();
                let y = rope(&x, 1, 0, 10_000.0, layout).unwrap();
                let t1 = std::time::Instant::now();
                // the node's own backward (what the tape calls), without the tape's copy of the seed
                let dx = y.grad_fn().unwrap().backward(&g, &[true]).unwrap();
                let t2 = std::time::Instant::now();
                drop(dx);
                (fwd, bwd) = (fwd.min((t1 - t0).as_secs_f64()), bwd.min((t2 - t1).as_secs_f64()));
            }
            println!(
                "rope {layout:?} {shape:?} on {} threads: forward {:.3} ms, backward {:.3} ms (best of 30)",
                crate::parallel::num_threads(),
                fwd * 1e3,
                bwd * 1e3
            );
        }
        let copy = (0..30)
            .map(|_| {
                let t0 = std::time::Instant::now();
                drop(crate::ops::unary::map("copy", &x, |v| v).unwrap());
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        println!("baseline: elementwise copy of {shape:?} into a new tensor {:.3} ms", copy * 1e3);
        let t0 = std::time::Instant::now();
        let _ = rope_reference(&x, 1, 0, 10_000.0, HalfSplit).unwrap();
        println!("rope_reference HalfSplit forward {:.3} ms", t0.elapsed().as_secs_f64() * 1e3);
    }

    #[test]
    fn rope_at_listed_positions_equals_rope_per_row_and_has_a_gradient() {
        manual_seed(62);
        // (B, T, H, D) = (3, 4, 2, 8): row b starts at its own position (a padded batch)
        let (b, t) = (3, 4);
        let starts = [0usize, 5, 2];
        let positions: Vec<usize> = starts.iter().flat_map(|&s| s..s + t).collect();
        let x = randn(&[b, t, 2, 8], 0.0, 1.0).unwrap().requires_grad_(true);
        for layout in [Interleaved, HalfSplit] {
            let y = rope_at(&x, 1, &positions, 10_000.0, layout).unwrap();
            for (r, &s) in starts.iter().enumerate() {
                let want = rope(&narrow(&x, 0, r, 1).unwrap(), 1, s, 10_000.0, layout).unwrap();
                let got = narrow(&y, 0, r, 1).unwrap();
                assert_close(&format!("rope_at {layout:?} row {r}"), &got.to_vec(), &want.to_vec(), 0.0, 0.0);
            }
            // positions in any order (one per step, not a run): the f64 loop per element
            let shuffled: Vec<usize> = (0..b * t).map(|i| (i * 7) % 11).collect();
            let y = rope_at(&x, 1, &shuffled, 10_000.0, layout).unwrap();
            let xd = x.to_vec();
            for (g, &p) in shuffled.iter().enumerate() {
                let one = Tensor::new(xd[g * 16..(g + 1) * 16].to_vec(), &[1, 2, 8]).unwrap();
                let want = rope_f64(&one, 0, p, 10_000.0, layout);
                assert_close(
                    &format!("rope_at {layout:?} step {g}"),
                    &y.to_vec()[g * 16..(g + 1) * 16],
                    &want,
                    2e-6,
                    2e-6,
                );
            }
            let pos = shuffled.clone();
            assert_gradcheck(move |xs| rope_at(&xs[0], 1, &pos, 10_000.0, layout), std::slice::from_ref(&x));
        }
        let err = rope_at(&x, 1, &[0, 1], 10_000.0, Interleaved).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}
