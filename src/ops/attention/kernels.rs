//! The small kernels of `attention` (mod.rs): `mm`, the register-tiled product its tiles go
//! through; the transposes that make Kᵀ and Vᵀ; the row max, exp-and-sum and P/dS passes of the online
//! softmax and its backward; and `masked_dot` for the key-masked cache path. Each sums in a fixed order,
//! so results do not depend on the vector width or the thread count.

use crate::ops::simd::{Isa, dispatch_simd, lanes_sum, madd};
use crate::ops::unary::exp_f32;

// (`dispatch_simd!`, `Isa` and `madd` come from `ops::simd`: the run-time pick of an AVX-512, AVX2 + FMA
// or baseline build of each `*_body::<ISA>` below.)

/// The one product shape attention needs, without packing: C (m, n) = alpha·A (m, k)·B (k, n), or
/// C += alpha·A·B when `add`. A is read element by element through its strides `(data, rs, cs)`, so
/// Pᵀ and dSᵀ cost nothing; B needs contiguous rows `(data, row stride)`, which is why Kᵀ and Vᵀ are
/// transposed once per kv head where they are the B operand; C is `(data, row stride)`. Tiles of R rows ×
/// W columns keep R·W/16 vector accumulators in registers while B's rows stream through L1. Each C
/// element sums its k terms in order, so the tiling never changes a bit. (sgemm's packing costs as much
/// as the arithmetic at these sizes: head dims of 32–64 and 64-row blocks.)
#[inline(always)]
pub(super) fn mm<const ISA: Isa>(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: (&[f32], usize, usize),
    b: (&[f32], usize),
    c: (&mut [f32], usize),
    add: bool,
) {
    let ((ad, ars, acs), (bd, ldb), (cd, ldc)) = (a, b, c);
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * ldc + n <= cd.len() && n <= ldc, "attention: C out of bounds");
    if k > 0 {
        assert!((m - 1) * ars + (k - 1) * acs < ad.len(), "attention: A out of bounds");
        assert!((k - 1) * ldb + n <= bd.len(), "attention: B out of bounds");
    }
    let mk = MmArgs { m, k, alpha, a: ad.as_ptr(), ars, acs, b: bd.as_ptr(), ldb, c: cd.as_mut_ptr(), ldc, add };
    // SAFETY (all calls below): every tile stays inside rows < m, columns < n, k terms, which the
    // asserts above showed to be inside the three slices.
    let mut c0 = 0;
    unsafe {
        match ISA {
            2 => {
                c0 = mk.columns::<ISA, 4, 64>(c0, n);
                c0 = mk.columns::<ISA, 8, 32>(c0, n);
                c0 = mk.columns::<ISA, 8, 16>(c0, n);
            }
            1 => {
                c0 = mk.columns::<ISA, 3, 32>(c0, n);
                c0 = mk.columns::<ISA, 6, 16>(c0, n);
            }
            _ => c0 = mk.columns::<ISA, 3, 16>(c0, n),
        }
        mk.tail_columns::<ISA>(c0, n);
    }
}

/// `mm`'s operands as raw pointers (bounds checked once in `mm`).
struct MmArgs {
    m: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    ars: usize,
    acs: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    add: bool,
}

impl MmArgs {
    /// All rows × as many W-wide column blocks as fit in c0..n; returns where it stopped.
    /// SAFETY: the caller guarantees the operand bounds (see `mm`).
    #[inline(always)]
    unsafe fn columns<const ISA: Isa, const R: usize, const W: usize>(&self, mut c0: usize, n: usize) -> usize {
        while c0 + W <= n {
            let mut r0 = 0;
            while r0 + R <= self.m {
                unsafe { self.tile::<ISA, R, W>(r0, c0) };
                r0 += R;
            }
            while r0 < self.m {
                unsafe { self.tile::<ISA, 1, W>(r0, c0) };
                r0 += 1;
            }
            c0 += W;
        }
        c0
    }

    /// C[r0..r0+R, c0..c0+W] (=|+=) alpha · Σ_kk A[r, kk]·B[kk, c0..c0+W].
    #[inline(always)]
    unsafe fn tile<const ISA: Isa, const R: usize, const W: usize>(&self, r0: usize, c0: usize) {
        let mut acc = [[0f32; W]; R];
        for kk in 0..self.k {
            // SAFETY: row kk of B, columns c0..c0+W, inside B (checked in `mm`).
            let brow = unsafe { &*(self.b.add(kk * self.ldb + c0) as *const [f32; W]) };
            for (r, accr) in acc.iter_mut().enumerate() {
                // SAFETY: A[r0 + r, kk] is inside A.
                let av = unsafe { *self.a.add((r0 + r) * self.ars + kk * self.acs) };
                for (x, &bv) in accr.iter_mut().zip(brow) {
                    *x = madd::<ISA>(av, bv, *x);
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            // SAFETY: row r0 + r of C, columns c0..c0+W, inside C; no other reference to it is live.
            let crow = unsafe { &mut *(self.c.add((r0 + r) * self.ldc + c0) as *mut [f32; W]) };
            for (y, &x) in crow.iter_mut().zip(accr) {
                *y = if self.add { *y + self.alpha * x } else { self.alpha * x };
            }
        }
    }

    /// The last columns c0..n (fewer than the narrowest tile), one element at a time.
    #[inline(always)]
    unsafe fn tail_columns<const ISA: Isa>(&self, c0: usize, n: usize) {
        for r in 0..self.m {
            for col in c0..n {
                let mut x = 0f32;
                for kk in 0..self.k {
                    // SAFETY: A[r, kk] and B[kk, col] are inside their operands.
                    let (av, bv) =
                        unsafe { (*self.a.add(r * self.ars + kk * self.acs), *self.b.add(kk * self.ldb + col)) };
                    x = madd::<ISA>(av, bv, x);
                }
                // SAFETY: C[r, col] is inside C.
                let y = unsafe { &mut *self.c.add(r * self.ldc + col) };
                *y = if self.add { *y + self.alpha * x } else { self.alpha * x };
            }
        }
    }
}

/// (heads, t, c) -> (heads, c, t) into `out`: Kᵀ and Vᵀ per head, so they can be `mm`'s B operand.
pub(super) fn transpose_heads(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
    let per_head = t * c;
    if per_head == 0 {
        return;
    }
    assert_eq!(x.len(), out.len(), "attention: transpose size");
    let grain = per_head * (crate::parallel::GRAIN / per_head).max(1);
    crate::parallel::for_each_chunk(out, grain, |start, chunk| {
        for (hi, oh) in chunk.chunks_mut(per_head).enumerate() {
            transpose_one(&x[start + hi * per_head..][..per_head], t, c, oh);
        }
    });
}

/// One (t, c) -> (c, t) transpose.
pub(super) fn transpose_one(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
    dispatch_simd!(
        transpose_one_body, transpose_one_avx512, transpose_one_avx2,
        (x: &[f32], t: usize, c: usize, out: &mut [f32])
    );
}

/// T source rows at a time: each output row gets T contiguous values read down a column of those rows
/// (which stay in L1); the last t % T rows go one by one.
#[inline(always)]
fn transpose_one_body<const ISA: Isa>(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
    const T: usize = 16;
    let tf = t / T * T;
    for j0 in (0..tf).step_by(T) {
        let src = &x[j0 * c..(j0 + T) * c];
        for (cc, orow) in out.chunks_exact_mut(t).enumerate().take(c) {
            let orow: &mut [f32; T] = (&mut orow[j0..j0 + T]).try_into().expect("T values");
            for (jj, o) in orow.iter_mut().enumerate() {
                *o = src[jj * c + cc];
            }
        }
    }
    for j in tf..t {
        for (cc, &v) in x[j * c..(j + 1) * c].iter().enumerate() {
            out[cc * t + j] = v;
        }
    }
}

/// Lanes for the row reductions below: the sums run in this many independent lanes (so loops vectorize),
/// then the lanes are added in a fixed order, so the result does not depend on the CPU's vector width.
const L: usize = crate::ops::simd::LANES;

// The row loops below run whole L-wide chunks; a ragged tail (common on the causal diagonal) is padded
// into one more chunk, so it is vectorized too instead of falling back to a scalar loop.

#[inline(always)]
pub(super) fn row_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; L];
    let c = xs.chunks_exact(L);
    let mut tail = [f32::NEG_INFINITY; L];
    tail[..c.remainder().len()].copy_from_slice(c.remainder());
    for x in c.chain(std::iter::once(&tail[..])) {
        for l in 0..L {
            acc[l] = acc[l].max(x[l]);
        }
    }
    let mut w = L;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] = acc[l].max(acc[l + w]);
        }
    }
    acc[0]
}

/// x ← exp(x − m) on one chunk, adding the results into `acc`.
#[inline(always)]
fn exp_chunk(x: &mut [f32], m: f32, acc: &mut [f32; L]) {
    for l in 0..L {
        x[l] = exp_f32(x[l] - m);
        acc[l] += x[l];
    }
}

/// xs ← exp(xs − m); returns Σ xs.
#[inline(always)]
pub(super) fn exp_sub_sum(xs: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; L];
    let mut c = xs.chunks_exact_mut(L);
    for x in &mut c {
        exp_chunk(x, m, &mut acc);
    }
    let rest = c.into_remainder();
    if !rest.is_empty() {
        // padding with −inf adds exp(−inf) = 0 to the sum
        let mut tail = [f32::NEG_INFINITY; L];
        tail[..rest.len()].copy_from_slice(rest);
        exp_chunk(&mut tail, m, &mut acc);
        rest.copy_from_slice(&tail[..rest.len()]);
    }
    lanes_sum(acc)
}

/// p ← exp(s − lse) and g ← p·(g − delta) on one chunk (P and dS of the backward).
#[inline(always)]
fn p_ds_chunk(p: &mut [f32], g: &mut [f32], lse: f32, delta: f32) {
    for l in 0..L {
        p[l] = exp_f32(p[l] - lse);
        g[l] = p[l] * (g[l] - delta);
    }
}

/// A row of the backward: p = exp(s − lse) in place, and dS = p ∘ (dP − delta) in place of dP.
#[inline(always)]
pub(super) fn p_ds(prow: &mut [f32], dsrow: &mut [f32], lse: f32, delta: f32) {
    let (mut pc, mut gc) = (prow.chunks_exact_mut(L), dsrow.chunks_exact_mut(L));
    for (p, g) in (&mut pc).zip(&mut gc) {
        p_ds_chunk(p, g, lse, delta);
    }
    let (pr, gr) = (pc.into_remainder(), gc.into_remainder());
    if !pr.is_empty() {
        let (mut tp, mut tg) = ([0f32; L], [0f32; L]);
        tp[..pr.len()].copy_from_slice(pr);
        tg[..gr.len()].copy_from_slice(gr);
        p_ds_chunk(&mut tp, &mut tg, lse, delta);
        pr.copy_from_slice(&tp[..pr.len()]);
        gr.copy_from_slice(&tg[..gr.len()]);
    }
}

/// Σ x·y in 8 interleaved partial sums (a fixed order; the compiler vectorises it).
pub(super) fn masked_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += a[l] * b[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
