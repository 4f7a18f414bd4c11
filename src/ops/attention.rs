//! Fused scaled dot-product attention, out = softmax(Q·Kᵀ·scale + causal mask)·V, memory-efficient in the
//! flash-attention way: the forward walks key blocks with an online softmax (running row max and sum), so
//! the Tq×Tk score matrix never exists; it saves only q, k, v, out and the per-row logsumexp, and the
//! backward recomputes P = exp(S − lse) tile by tile. MHA and GQA (query head h reads kv head h / (Hq/Hkv));
//! causal masks are bottom-right aligned, so a KV cache (Tq < Tk) needs no offset argument.
//! Tiles go through `mm`, a small register-tiled product without packing (at head dims of 32–64,
//! sgemm's packing costs as much as the arithmetic): Kᵀ and Vᵀ are transposed once per kv head, Pᵀ and
//! dSᵀ are read through strides, and tiles on the causal diagonal are cut into 16-row strips so most of
//! the masked triangle is skipped. Decode-sized query blocks (< 4 rows) use dot-product loops on K's rows.
//! Work is split by (batch, kv head), or by (batch, head, block) when there are few heads, with sizes
//! fixed by the shapes alone, and every sum runs in a fixed order, so results are bit-identical on 1 or
//! N threads (they may differ in the last bits between CPUs with and without FMA).
//! Also here: `attention_weights` (the probabilities, for plots) and the `*_reference` composite.
//! References: Dao et al., FlashAttention (2022) and FlashAttention-2 (2023), Algorithms 1–2; torch's
//! `scaled_dot_product_attention` (same argument order and bottom-right causal rule as its KV-cache use).

use rayon::prelude::*;

use crate::autograd::{Backward, record, will_record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::simd::{Isa, dispatch_simd, dot, lanes_sum, madd};
use crate::ops::unary::exp_f32;
use crate::parallel::{check_interrupt, install};
use crate::tensor::{Tensor, alloc_zeros, checked_numel};

const OP: &str = "scaled_dot_product_attention";

// ---- how the work is cut (fixed by the shapes, never by the thread count) ----

/// Query rows per block (forward and backward).
const BQ: usize = 64;
/// Keys per block in the forward: long blocks mean fewer online-softmax rescales; the score tile
/// BQ×BK (64 KiB) stays in L2. (64/256/64 measured best of BQ 32–128, BK 64–512, BKB 64–128.)
const BK: usize = 256;
/// Keys per block in the backward (its tiles S, dP, dK_blk, dV_blk are all live at once).
const BKB: usize = 64;
/// Rows (or keys) per strip where a tile straddles the causal diagonal.
const STRIP: usize = 16;
/// Query blocks with fewer rows than this (decode) use dot-product loops instead of sgemm.
const SMALL_ROWS: usize = 4;
/// With at least this many (batch, kv head) pairs, each is one task: it transposes its K (and V) in cache
/// and, in the backward, computes dK, dV and dQ in one sweep. With fewer, the forward runs a task per
/// query block and the backward dK/dV tasks per key block plus dQ tasks per query block (recomputing
/// P and dS once more), on Kᵀ/Vᵀ made up front.
const KV_TASKS: usize = 8;
/// ...and only while a kv head's Kᵀ + Vᵀ is at most this many floats (2 MiB, about L2), so it stays in cache.
const LOCAL_KV_MAX: usize = 1 << 19;
/// Work (flops) below which a group runs on the calling thread.
const SERIAL_FLOPS: usize = 1 << 21;
/// Tasks run in groups of about this much work (~50 ms on two cores); Ctrl-C is checked between groups.
const GROUP_FLOPS: usize = 1 << 33;

// ---- shapes ----

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    scale: f32,
    causal: bool,
    /// Positions each kv head's buffer has room for (K is (B, Hkv, kv_cap, D) of which the first Tk
    /// rows are used): Tk for plain tensors, more for a KV cache read in place (decode rows only).
    kv_cap: usize,
}

impl Dims {
    /// Query heads per kv head.
    fn group(&self) -> usize {
        self.hq / self.hkv
    }
    /// How many keys (a prefix) query row i sees: all, or with the bottom-right causal mask those
    /// j <= i + (Tk − Tq).
    fn visible(&self, i: usize) -> usize {
        if self.causal { (i + 1 + self.tk - self.tq).min(self.tk) } else { self.tk }
    }
    /// The first query row that sees key j.
    fn first_row_seeing(&self, j: usize) -> usize {
        if self.causal { j.saturating_sub(self.tk - self.tq) } else { 0 }
    }
    /// Query rows i0..i0+rows against keys j0..j0+bk as (first row, rows, keys seen by its last row):
    /// one strip when every row sees the whole key block, else (on the causal diagonal) strips of
    /// STRIP rows whose products stop at the last key they see, so the masked triangle is mostly skipped.
    fn query_strips(
        &self,
        (i0, rows): (usize, usize),
        (j0, bk): (usize, usize),
    ) -> impl Iterator<Item = (usize, usize, usize)> {
        let whole = self.visible(i0) >= j0 + bk;
        let step = if whole { rows.max(1) } else { STRIP };
        (0..rows).step_by(step).map(move |r0| {
            let sr = step.min(rows - r0);
            (r0, sr, self.visible(i0 + r0 + sr - 1).saturating_sub(j0).min(bk))
        })
    }
    /// The same cut along the keys, for the products summed over query rows (dV, dK): key rows
    /// jj0..jj0+sk (relative to j0) as (jj0, sk, first query row, relative to i0, that sees any of them).
    fn key_strips(
        &self,
        (i0, rows): (usize, usize),
        (j0, bk): (usize, usize),
    ) -> impl Iterator<Item = (usize, usize, usize)> {
        let whole = self.visible(i0) >= j0 + bk;
        let step = if whole { bk.max(1) } else { STRIP };
        (0..bk)
            .step_by(step)
            .map(move |jj0| (jj0, step.min(bk - jj0), self.first_row_seeing(j0 + jj0).saturating_sub(i0).min(rows)))
    }
    /// True when some dim is zero, so there is nothing to compute (outputs and gradients are zeros).
    fn empty(&self) -> bool {
        self.b == 0 || self.hq == 0 || self.tq == 0 || self.tk == 0 || self.dv == 0
    }
}

/// Check q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) [v optional] and the scale.
fn check(
    op: &'static str,
    q: &Tensor,
    k: &Tensor,
    v: Option<&Tensor>,
    causal: bool,
    scale: Option<f32>,
) -> Result<Dims> {
    check_shapes(op, q.shape(), k.shape(), v.map(|v| v.shape()), causal, scale)
}

fn check_shapes(
    op: &'static str,
    qs: &[usize],
    ks: &[usize],
    vs: Option<&[usize]>,
    causal: bool,
    scale: Option<f32>,
) -> Result<Dims> {
    let shapes = || match vs {
        Some(vs) => format!("q {}, k {}, v {}", fmt_shape(qs), fmt_shape(ks), fmt_shape(vs)),
        None => format!("q {}, k {}", fmt_shape(qs), fmt_shape(ks)),
    };
    let err = |what: &str| Error::shape(op, format!("{what}: {}", shapes()));
    let vs = vs.unwrap_or(ks);
    let (&[b, hq, tq, d], &[bk, hkv, tk, dk], &[bv, hv, tv, dv]) = (qs, ks, vs) else {
        return Err(err("expected 4-D tensors (batch, heads, seq, head_dim)"));
    };
    if b != bk || b != bv {
        return Err(err("batch sizes differ"));
    }
    if hkv != hv {
        return Err(err("k and v must have the same number of heads"));
    }
    if tk != tv {
        return Err(err("k and v must have the same sequence length"));
    }
    if d != dk {
        return Err(err("q and k must have the same head dim"));
    }
    if d == 0 {
        return Err(err("the head dim must be at least 1"));
    }
    if hkv == 0 && hq > 0 || hkv > 0 && hq % hkv != 0 {
        return Err(err(&format!(
            "query heads ({hq}) must be a multiple of key/value heads ({hkv}) for grouped-query attention"
        )));
    }
    if causal && tq > tk {
        return Err(err(&format!(
            "causal attention needs no more queries than keys (Tq = {tq} > Tk = {tk}; \
             queries are aligned to the last keys)"
        )));
    }
    let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
    if !scale.is_finite() {
        return Err(Error::value(op, format!("scale must be finite, got {scale}")));
    }
    Ok(Dims { b, hq, hkv: hkv.max(1), tq, tk, d, dv, scale, causal, kv_cap: tk })
}

// ---- small kernels ----

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
fn mm<const ISA: Isa>(
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
fn transpose_heads(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
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
fn transpose_one(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
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
fn row_max(xs: &[f32]) -> f32 {
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
fn exp_sub_sum(xs: &mut [f32], m: f32) -> f32 {
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
fn p_ds(prow: &mut [f32], dsrow: &mut [f32], lse: f32, delta: f32) {
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

// ---- forward ----

/// The inputs of one (batch, query head): its Q (Tq, D) and the K (Tk, D), V (Tk, Dv) of its kv head,
/// plus that head's Kᵀ (D, Tk) and Vᵀ (Dv, Tk) where they were made (else empty).
#[derive(Clone, Copy)]
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    kt: &'a [f32],
    vt: &'a [f32],
}

/// The whole q, k, v buffers and the transposed kv heads (empty when not needed).
#[derive(Clone, Copy)]
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    kt: &'a [f32],
    vt: &'a [f32],
}

impl<'a> Inputs<'a> {
    fn head(&self, dm: &Dims, bh: usize) -> Head<'a> {
        let (b, h) = (bh / dm.hq, bh % dm.hq);
        let bkv = b * dm.hkv + h / dm.group();
        // K and V rows of a head sit kv_cap rows apart; Kᵀ and Vᵀ are only made for packed heads
        let rows = |x: &'a [f32], w: usize| if x.is_empty() { x } else { &x[bkv * dm.kv_cap * w..][..dm.tk * w] };
        let part = |x: &'a [f32], len: usize| if x.is_empty() { x } else { &x[bkv * len..][..len] };
        Head {
            q: &self.q[bh * dm.tq * dm.d..][..dm.tq * dm.d],
            k: rows(self.k, dm.d),
            v: rows(self.v, dm.dv),
            kt: part(self.kt, dm.tk * dm.d),
            vt: part(self.vt, dm.tk * dm.dv),
        }
    }
}

/// One forward task: query rows i0.. of head `bh`, writing their output rows and logsumexps.
struct FwdItem<'a> {
    bh: usize,
    i0: usize,
    out: &'a mut [f32],
    lse: &'a mut [f32],
}

/// Per-task scratch: a score tile (or a decode row's scores) and the running row max / sum.
struct FwdScratch<'a> {
    s: &'a mut [f32],
    m: &'a mut [f32],
    l: &'a mut [f32],
}

impl FwdScratch<'_> {
    fn len(dm: &Dims) -> usize {
        (BQ * BK).max(dm.tk) + 2 * BQ
    }
    fn carve(buf: &mut [f32]) -> FwdScratch<'_> {
        let (s, ml) = buf.split_at_mut(buf.len() - 2 * BQ);
        let (m, l) = ml.split_at_mut(BQ);
        FwdScratch { s, m, l }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static WORKSPACE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Workspaces up to this many floats (64 MiB) are kept on the calling thread for the next call.
const WORKSPACE_KEEP: usize = 1 << 24;

/// Run `f` with a workspace of `n` floats (contents arbitrary) for per-call buffers (Kᵀ, Vᵀ, D). It is
/// kept on this thread for the next call (up to WORKSPACE_KEEP): a transformer calls attention with the
/// same shapes every layer and step, and mapping, faulting in and unmapping the same memory each time
/// costs a large share of a small call. A size that cannot be allocated is `Error::Alloc`.
fn with_workspace<R>(n: usize, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<R> {
    let mut buf = WORKSPACE.with(|cell| cell.take());
    if buf.len() < n {
        buf = crate::tensor::alloc_with_capacity(OP, n)?;
        buf.resize(n, 0.0);
    }
    let r = f(&mut buf[..n]);
    if buf.len() <= WORKSPACE_KEEP {
        WORKSPACE.with(|cell| cell.replace(buf));
    }
    r
}

/// Run `f` with this thread's scratch buffer, at least `n` floats (contents arbitrary). The buffer is
/// kept between calls (up to WORKSPACE_KEEP floats): allocating and zeroing tiles per task cost more
/// than small attention calls. `n` is at most a kv head's K + V (LOCAL_KV_MAX) plus two tiles, or Tk.
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.take(); // taken, so a nested use would just get its own
        if buf.len() < n {
            buf = vec![0.0; n];
        }
        let r = f(&mut buf[..n]);
        if buf.len() <= WORKSPACE_KEEP {
            cell.replace(buf);
        }
        r
    })
}

/// out[i] = Σ_j softmax_j(S[i, j]) V[j] and lse[i] = ln Σ_j exp S[i, j], S = scale·Q Kᵀ (masked), for the
/// item's rows. Key blocks are visited in order with an online softmax: after each block the row max m
/// and sum l are updated and the output rescaled by exp(m_old − m_new), so the result equals the softmax
/// over all keys without ever holding a full row of scores.
fn forward_rows(dm: &Dims, hd: Head<'_>, it: &mut FwdItem<'_>, sc: &mut FwdScratch) {
    let rows = it.lse.len();
    if rows < SMALL_ROWS {
        for r in 0..rows {
            decode_row(dm, hd, it.i0 + r, &mut it.out[r * dm.dv..(r + 1) * dm.dv], &mut it.lse[r], sc.s);
        }
        return;
    }
    forward_block(dm, hd, it.i0, it.out, it.lse, sc)
}

/// One query row against all its visible keys with dot products on K's rows (decode: no Kᵀ needed).
fn decode_row(dm: &Dims, hd: Head<'_>, i: usize, out: &mut [f32], lse: &mut f32, s: &mut [f32]) {
    dispatch_simd!(
        decode_row_body, decode_row_avx512, decode_row_avx2,
        (dm: &Dims, hd: Head<'_>, i: usize, out: &mut [f32], lse: &mut f32, s: &mut [f32])
    );
}

#[inline(always)]
fn decode_row_body<const ISA: Isa>(dm: &Dims, hd: Head<'_>, i: usize, out: &mut [f32], lse: &mut f32, s: &mut [f32]) {
    let (d, dv) = (dm.d, dm.dv);
    let n = dm.visible(i);
    let qi = &hd.q[i * d..(i + 1) * d];
    let s = &mut s[..n];
    for (j, sj) in s.iter_mut().enumerate() {
        *sj = dot(qi, &hd.k[j * d..(j + 1) * d]) * dm.scale;
    }
    let m = row_max(s);
    let l = exp_sub_sum(s, m);
    // out = Σ_j p_j v_j / l, keys in order
    out.fill(0.0);
    for (j, &p) in s.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&hd.v[j * dv..(j + 1) * dv]) {
            *o += p * x;
        }
    }
    let inv = 1.0 / l;
    out.iter_mut().for_each(|o| *o *= inv);
    *lse = m + l.ln();
}

fn forward_block(dm: &Dims, hd: Head<'_>, i0: usize, out: &mut [f32], lse: &mut [f32], sc: &mut FwdScratch) {
    dispatch_simd!(
        forward_block_body, forward_block_avx512, forward_block_avx2,
        (dm: &Dims, hd: Head<'_>, i0: usize, out: &mut [f32], lse: &mut [f32], sc: &mut FwdScratch)
    );
}

#[inline(always)]
fn forward_block_body<const ISA: Isa>(
    dm: &Dims,
    hd: Head<'_>,
    i0: usize,
    out: &mut [f32],
    lse: &mut [f32],
    sc: &mut FwdScratch,
) {
    let (d, dv, rows) = (dm.d, dm.dv, lse.len());
    // keys seen by the block's last row; later key blocks are fully masked and skipped
    let kend = dm.visible(i0 + rows - 1);
    let (m, l) = (&mut sc.m[..rows], &mut sc.l[..rows]);
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    out.fill(0.0);
    let qb = &hd.q[i0 * d..(i0 + rows) * d];
    for j0 in (0..kend).step_by(BK) {
        let bk = BK.min(kend - j0);
        let s = &mut sc.s[..rows * bk];
        // S (rows, bk) = scale · Q_blk · Kᵀ[:, j0..j0+bk], strip by strip on the diagonal
        for (r0, sr, n) in dm.query_strips((i0, rows), (j0, bk)) {
            let (qs, ss) = (&qb[r0 * d..], &mut s[r0 * bk..]);
            mm::<ISA>((sr, d, n), dm.scale, (qs, d, 1), (&hd.kt[j0..], dm.tk), (ss, bk), false);
        }
        for r in 0..rows {
            let vis = dm.visible(i0 + r).saturating_sub(j0).min(bk);
            let srow = &mut s[r * bk..(r + 1) * bk];
            srow[vis..].fill(0.0);
            if vis == 0 {
                continue; // this row sees none of these keys: P row = 0, nothing to rescale
            }
            let m_new = m[r].max(row_max(&srow[..vis]));
            let sum = exp_sub_sum(&mut srow[..vis], m_new);
            if m_new != m[r] && j0 > 0 {
                // the max grew: rescale what was summed so far
                let alpha = exp_f32(m[r] - m_new);
                l[r] *= alpha;
                out[r * dv..(r + 1) * dv].iter_mut().for_each(|o| *o *= alpha);
            }
            l[r] += sum;
            m[r] = m_new;
        }
        // out (rows, Dv) += P (rows, bk) · V_blk (bk, Dv)
        for (r0, sr, n) in dm.query_strips((i0, rows), (j0, bk)) {
            let os = &mut out[r0 * dv..];
            mm::<ISA>((sr, n, dv), 1.0, (&s[r0 * bk..], bk, 1), (&hd.v[j0 * dv..], dv), (os, dv), true);
        }
    }
    for r in 0..rows {
        let inv = 1.0 / l[r];
        out[r * dv..(r + 1) * dv].iter_mut().for_each(|o| *o *= inv);
        lse[r] = m[r] + l[r].ln();
    }
}

/// Run `f` on every item in parallel, in groups of about GROUP_FLOPS of work (by `cost`), checking for
/// Ctrl-C between groups on the calling thread. Each item is computed whole by one task, so the split
/// does not change any result.
fn run_grouped<T>(
    items: &mut [T],
    cost: impl Fn(&T) -> usize,
    scratch: usize,
    f: impl Fn(&mut [f32], &mut T) + Send + Sync,
) -> Result<()>
where
    T: Send,
{
    let mut start = 0;
    while start < items.len() {
        let (mut end, mut work) = (start, 0usize);
        while end < items.len() && (end == start || work + cost(&items[end]) <= GROUP_FLOPS) {
            work += cost(&items[end]);
            end += 1;
        }
        let group = &mut items[start..end];
        let run = |it: &mut T| with_scratch(scratch, |s| f(s, it));
        if group.len() == 1 || work <= SERIAL_FLOPS {
            group.iter_mut().for_each(run);
        } else {
            install(|| group.par_iter_mut().for_each(run));
        }
        start = end;
        if start < items.len() {
            check_interrupt()?;
        }
    }
    Ok(())
}

/// The fused forward: output (B·Hq·Tq·Dv) and per-row logsumexp (B·Hq·Tq).
fn forward(dm: &Dims, q: &[f32], k: &[f32], v: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let rows = checked_numel(OP, &[dm.b, dm.hq, dm.tq])?;
    let mut out = alloc_zeros(OP, checked_numel(OP, &[rows, dm.dv])?)?;
    let mut lse = alloc_zeros(OP, rows)?;
    if dm.empty() {
        return Ok((out, lse)); // no keys (or nothing to produce): the output is zeros
    }
    // only decode rows read K and V through `Inputs::head`; the block paths below assume packed heads
    debug_assert!(dm.kv_cap == dm.tk || dm.tq < SMALL_ROWS, "attention: strided kv heads outside decode");
    let (g, head_k) = (dm.group(), dm.tk * dm.d);
    // rough flops of one query block (only used to cut the work into groups between Ctrl-C checks)
    let block_cost = |i0: usize, rows: usize| 2 * rows * dm.visible(i0 + rows - 1) * (dm.d + dm.dv);
    if dm.tq >= SMALL_ROWS && dm.b * dm.hkv >= KV_TASKS && head_k <= LOCAL_KV_MAX {
        // One task per (batch, kv head): it transposes its kv head's K once, in cache, and runs every query
        // block of the query heads that share it.
        let mut items: Vec<_> = out.chunks_mut(g * dm.tq * dm.dv).zip(lse.chunks_mut(g * dm.tq)).enumerate().collect();
        let per_task: usize = g * (0..dm.tq).step_by(BQ).map(|i0| block_cost(i0, BQ.min(dm.tq - i0))).sum::<usize>();
        let inp = Inputs { q, k, v, kt: &[], vt: &[] };
        run_grouped(
            &mut items,
            |_| per_task,
            head_k + FwdScratch::len(dm),
            |buf, (bkv, (oh, lh))| {
                let (kt, tiles) = buf.split_at_mut(head_k);
                transpose_one(&k[*bkv * head_k..][..head_k], dm.tk, dm.d, kt);
                let sc = &mut FwdScratch::carve(tiles);
                let (b, kvh) = (*bkv / dm.hkv, *bkv % dm.hkv);
                for hl in 0..g {
                    let bh = b * dm.hq + kvh * g + hl;
                    let hd = Head { kt, ..inp.head(dm, bh) };
                    for i0 in (0..dm.tq).step_by(BQ) {
                        let rows = BQ.min(dm.tq - i0);
                        let r = hl * dm.tq + i0;
                        let it = &mut FwdItem {
                            bh,
                            i0,
                            out: &mut oh[r * dm.dv..(r + rows) * dm.dv],
                            lse: &mut lh[r..r + rows],
                        };
                        forward_rows(dm, hd, it, sc);
                    }
                }
            },
        )?;
        return Ok((out, lse));
    }
    // Otherwise one task per query block, with Kᵀ of every kv head made up front (decode-sized queries
    // read K's rows directly instead).
    let mut items = Vec::new();
    for (bh, (oh, lh)) in out.chunks_mut(dm.tq * dm.dv).zip(lse.chunks_mut(dm.tq)).enumerate() {
        for (qb, (ob, lb)) in oh.chunks_mut(BQ * dm.dv).zip(lh.chunks_mut(BQ)).enumerate() {
            items.push(FwdItem { bh, i0: qb * BQ, out: ob, lse: lb });
        }
    }
    let kt_len = if dm.tq >= SMALL_ROWS { k.len() } else { 0 };
    with_workspace(kt_len, |kt| {
        transpose_heads(&k[..kt.len()], dm.tk, dm.d, kt);
        let inp = Inputs { q, k, v, kt, vt: &[] };
        let cost = |it: &FwdItem| block_cost(it.i0, it.lse.len());
        run_grouped(&mut items, cost, FwdScratch::len(dm), |buf, it| {
            forward_rows(dm, inp.head(dm, it.bh), it, &mut FwdScratch::carve(buf))
        })
    })?;
    Ok((out, lse))
}

/// Scaled dot-product attention, fused and memory-efficient (the flash-attention algorithm).
/// Shapes: q (B, Hq, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, Hq, Tq, Dv).
/// out = softmax(q·kᵀ·scale + mask)·v with `scale` defaulting to 1/√D. Grouped-query attention: Hq must
/// be a multiple of Hkv, and query head h uses kv head h / (Hq/Hkv) (Hkv = 1 is multi-query).
/// `causal`: query i sees keys j <= i + (Tk − Tq), i.e. the queries are the LAST Tq positions (a KV
/// cache needs no offset); causal with Tq > Tk is an error. Non-causal with Tk = 0 gives zeros.
/// Errors: `Error::Shape` naming all three shapes; a non-finite scale is `Error::Value`.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    scale: Option<f32>,
) -> Result<Tensor> {
    let dm = check(OP, q, k, Some(v), causal, scale)?;
    let reads = crate::tensor::read_all([q, k, v]);
    let [qd, kd, vd] = reads.slices();
    let (out, lse) = forward(&dm, &qd, &kd, &vd)?;
    let out = Tensor::from_vec_unchecked(out, vec![dm.b, dm.hq, dm.tq, dm.dv]);
    if !will_record(&[q, k, v]) {
        return Ok(out);
    }
    let node = SdpaBackward { q: q.clone(), k: k.clone(), v: v.clone(), out: out.detach(), lse, dm };
    Ok(record(out, node))
}

/// The keys and values a KV cache holds: `len` positions of each (batch, kv head) in buffers laid out
/// (B, Hkv, cap, D) and (B, Hkv, cap, Dv), so appending a position writes in place.
#[derive(Clone, Copy)]
pub struct KvView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub b: usize,
    pub hkv: usize,
    pub cap: usize,
    pub len: usize,
    pub d: usize,
    pub dv: usize,
}

/// Causal attention of the last Tq positions, q (B, Hq, Tq, D), against the `len` cached keys and values
/// (which include those Tq positions), for generation: the same result as `scaled_dot_product_attention`
/// on the packed keys and values, without gradients. Decode steps (Tq < 4) read the cache in place;
/// longer query blocks (a prompt) first pack the used rows. Errors as for `scaled_dot_product_attention`.
pub fn attend_kv_cache(q: &Tensor, kv: KvView<'_>) -> Result<Tensor> {
    let op = "attend_kv_cache";
    let ks = [kv.b, kv.hkv, kv.len, kv.d];
    let mut dm = check_shapes(op, q.shape(), &ks, Some(&[kv.b, kv.hkv, kv.len, kv.dv]), true, None)?;
    let (kn, vn) = (kv.b * kv.hkv * kv.cap * kv.d, kv.b * kv.hkv * kv.cap * kv.dv);
    if kv.len > kv.cap || kv.k.len() < kn || kv.v.len() < vn {
        return Err(Error::value(op, format!("cache buffers do not hold {} positions of {ks:?}", kv.cap)));
    }
    let q = q.data();
    let (out, _lse) = if dm.tq < SMALL_ROWS || kv.cap == kv.len {
        dm.kv_cap = kv.cap;
        forward(&dm, &q, kv.k, kv.v)?
    } else {
        let pack = |x: &[f32], w: usize| -> Vec<f32> {
            x.chunks(kv.cap * w).take(kv.b * kv.hkv).flat_map(|head| &head[..kv.len * w]).copied().collect()
        };
        forward(&dm, &q, &pack(kv.k, kv.d), &pack(kv.v, kv.dv))?
    };
    Ok(Tensor::from_vec_unchecked(out, vec![dm.b, dm.hq, dm.tq, dm.dv]))
}

// ---- key-padding mask (padded batches in a KV cache) ----

/// Which cached keys of each batch row are real tokens: row b's first `len` keys are
/// `real[b * stride..][..len]` (false = padding, never attended to).
#[derive(Clone, Copy)]
pub struct KeyMask<'a> {
    pub real: &'a [bool],
    pub stride: usize,
}

/// `attend_kv_cache` for a batch whose rows are padded (prompts of unequal length): query i of the last
/// Tq positions of row b sees key j iff j <= len − Tq + i (causal, bottom-right) and key j of row b is
/// real. A query that sees no key at all (a padding position before its row's first real token) gets
/// zeros. Padding keys are skipped, not weighted by exp(−inf), so what they hold cannot reach any output.
/// Forward only: a cache holds no gradients, and inputs that autograd would record are refused.
/// Work is split by (batch, query head), each computed whole in a fixed order, so 1 or N threads agree.
pub fn attend_kv_cache_masked(q: &Tensor, kv: KvView<'_>, mask: KeyMask<'_>) -> Result<Tensor> {
    let op = "attend_kv_cache_masked";
    let ks = [kv.b, kv.hkv, kv.len, kv.d];
    let dm = check_shapes(op, q.shape(), &ks, Some(&[kv.b, kv.hkv, kv.len, kv.dv]), true, None)?;
    let (kn, vn) = (kv.b * kv.hkv * kv.cap * kv.d, kv.b * kv.hkv * kv.cap * kv.dv);
    if kv.len > kv.cap || kv.k.len() < kn || kv.v.len() < vn {
        return Err(Error::value(op, format!("cache buffers do not hold {} positions of {ks:?}", kv.cap)));
    }
    if kv.b > 0 && (mask.stride < kv.len || mask.real.len() < (kv.b - 1) * mask.stride + kv.len) {
        return Err(Error::shape(
            op,
            format!(
                "the key mask ({} entries, stride {}) does not cover {} keys of {} rows",
                mask.real.len(),
                mask.stride,
                kv.len,
                kv.b
            ),
        ));
    }
    if will_record(&[q]) {
        return Err(Error::value(op, "masked attention over a KV cache has no backward: run it under no_grad"));
    }
    let mut out = alloc_zeros(op, checked_numel(op, &[dm.b, dm.hq, dm.tq, dm.dv])?)?;
    if dm.empty() {
        return Ok(Tensor::from_vec_unchecked(out, vec![dm.b, dm.hq, dm.tq, dm.dv]));
    }
    let q = q.data();
    let (d, dv, tq, len, g) = (dm.d, dm.dv, dm.tq, kv.len, dm.group());
    let head = |bh: usize, oh: &mut [f32]| {
        let (b, h) = (bh / dm.hq, bh % dm.hq);
        let bkv = b * dm.hkv + h / g;
        let k = &kv.k[bkv * kv.cap * d..][..len * d];
        let v = &kv.v[bkv * kv.cap * dv..][..len * dv];
        let real = &mask.real[b * mask.stride..][..len];
        let qh = &q[bh * tq * d..][..tq * d];
        let (mut s, mut js) = (Vec::with_capacity(len), Vec::with_capacity(len));
        for (i, (qi, o)) in qh.chunks_exact(d).zip(oh.chunks_exact_mut(dv)).enumerate() {
            s.clear();
            js.clear();
            for j in (0..=len - tq + i).filter(|&j| real[j]) {
                js.push(j);
                s.push(masked_dot(qi, &k[j * d..(j + 1) * d]) * dm.scale);
            }
            if js.is_empty() {
                continue; // sees nothing: zeros
            }
            // softmax over the real keys, then out = Σ p_j v_j / l in key order
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut l = 0.0f32;
            for x in s.iter_mut() {
                *x = (*x - m).exp();
                l += *x;
            }
            for (&p, &j) in s.iter().zip(&js) {
                for (o, &x) in o.iter_mut().zip(&v[j * dv..(j + 1) * dv]) {
                    *o += p * x;
                }
            }
            let inv = 1.0 / l;
            o.iter_mut().for_each(|o| *o *= inv);
        }
    };
    let work = 2 * dm.b * dm.hq * tq * len * (d + dv);
    if work <= SERIAL_FLOPS {
        out.chunks_mut(tq * dv).enumerate().for_each(|(bh, oh)| head(bh, oh));
    } else {
        install(|| out.par_chunks_mut(tq * dv).enumerate().for_each(|(bh, oh)| head(bh, oh)));
    }
    Ok(Tensor::from_vec_unchecked(out, vec![dm.b, dm.hq, dm.tq, dm.dv]))
}

/// Σ x·y in 8 interleaved partial sums (a fixed order; the compiler vectorises it).
fn masked_dot(x: &[f32], y: &[f32]) -> f32 {
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

#[cfg(test)]
mod key_mask_tests {
    use super::*;
    use crate::tensor::random::Rng;

    fn randn_local(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The definition in f64: softmax over the real, causally visible keys; zeros when there are none.
    #[allow(clippy::too_many_arguments)]
    fn masked_f64(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        real: &[bool],
        dims: (usize, usize, usize, usize, usize, usize),
        cap: usize,
        dv: usize,
    ) -> Vec<f64> {
        let (b, hq, hkv, tq, len, d) = dims;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; b * hq * tq * dv];
        for bi in 0..b {
            for h in 0..hq {
                let kvh = bi * hkv + h / (hq / hkv);
                for i in 0..tq {
                    let qi = &q[((bi * hq + h) * tq + i) * d..][..d];
                    let vis: Vec<usize> = (0..=len - tq + i).filter(|&j| real[bi * len + j]).collect();
                    let s: Vec<f64> = vis
                        .iter()
                        .map(|&j| (0..d).map(|c| qi[c] as f64 * k[(kvh * cap + j) * d + c] as f64).sum::<f64>() * scale)
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    let o = &mut out[((bi * hq + h) * tq + i) * dv..][..dv];
                    for (&x, &j) in s.iter().zip(&vis) {
                        for c in 0..dv {
                            o[c] += (x - m).exp() / l * v[(kvh * cap + j) * dv + c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn masked_cache_attention_matches_f64_and_ignores_padding() {
        let mut rng = Rng::new(81);
        let _g = crate::autograd::no_grad();
        // (B, Hq, Hkv, D, Dv); per row: left padding, right padding, none, padding in the middle, all but one
        for (b, hq, hkv, d, dv, len, cap) in [(5, 4, 2, 8, 8, 9, 12), (5, 2, 2, 20, 12, 40, 40), (5, 3, 1, 5, 3, 7, 7)]
        {
            let real: Vec<bool> = (0..b)
                .flat_map(|r| {
                    (0..len).map(move |j| match r {
                        0 => j >= 3,
                        1 => j < len - 2 || j == len - 1,
                        2 => true,
                        3 => !(2..5).contains(&j),
                        _ => j == len - 1,
                    })
                })
                .collect();
            let k = randn_local(&mut rng, b * hkv * cap * d);
            let v = randn_local(&mut rng, b * hkv * cap * dv);
            for tq in [len, 3, 1] {
                let qd = randn_local(&mut rng, b * hq * tq * d);
                let q = Tensor::new(qd.clone(), &[b, hq, tq, d]).unwrap();
                let kvv = |k: &'_ [f32], v: &'_ [f32]| -> Vec<f32> {
                    let kv = KvView { k, v, b, hkv, cap, len, d, dv };
                    attend_kv_cache_masked(&q, kv, KeyMask { real: &real, stride: len }).unwrap().to_vec()
                };
                let got = kvv(&k, &v);
                let want = masked_f64(&qd, &k, &v, &real, (b, hq, hkv, tq, len, d), cap, dv);
                let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
                assert!(worst < 2e-6, "b {b} hq {hq} hkv {hkv} tq {tq}: max abs diff vs f64 {worst:.2e}");
                // with every key real it is the unmasked cache attention
                let all = vec![true; b * len];
                let kv = KvView { k: &k, v: &v, b, hkv, cap, len, d, dv };
                let masked = attend_kv_cache_masked(&q, kv, KeyMask { real: &all, stride: len }).unwrap().to_vec();
                let plain = attend_kv_cache(&q, kv).unwrap().to_vec();
                let vs_plain = masked.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(vs_plain < 1e-5, "all-real mask vs attend_kv_cache: max abs diff {vs_plain:.2e}");
                // what padding keys hold never reaches an output: overwrite them, same bits
                let (mut k2, mut v2) = (k.clone(), v.clone());
                for bi in 0..b {
                    for kvh in 0..hkv {
                        for j in (0..len).filter(|&j| !real[bi * len + j]) {
                            let at = (bi * hkv + kvh) * cap + j;
                            k2[at * d..(at + 1) * d].iter_mut().for_each(|x| *x = 1e4);
                            v2[at * dv..(at + 1) * dv].iter_mut().for_each(|x| *x = f32::NAN);
                        }
                    }
                }
                assert_eq!(got, kvv(&k2, &v2), "padding keys changed the output (tq {tq})");
                println!("masked cache attention b {b} hq {hq} tq {tq} len {len}: max abs diff vs f64 {worst:.1e}");
            }
        }
    }

    #[test]
    fn masked_cache_attention_refuses_bad_masks_and_gradients() {
        let q = Tensor::new(vec![0.5; 8], &[1, 1, 2, 4]).unwrap();
        let (k, v) = (vec![1.0; 12], vec![1.0; 12]);
        let kv = KvView { k: &k, v: &v, b: 1, hkv: 1, cap: 3, len: 3, d: 4, dv: 4 };
        let short = [true, true];
        let err = attend_kv_cache_masked(&q, kv, KeyMask { real: &short, stride: 2 });
        assert!(matches!(err, Err(Error::Shape { .. })));
        let qg = q.detach().deep_clone().requires_grad_(true);
        let err = attend_kv_cache_masked(&qg, kv, KeyMask { real: &[true; 3], stride: 3 }).unwrap_err().to_string();
        assert!(err.contains("no_grad"), "{err}");
    }
}

// ---- backward ----

struct SdpaBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// The forward's output (detached: the node must not own the tensor it is attached to).
    out: Tensor,
    /// ln Σ_j exp S[i, j] per query row (B·Hq·Tq): P = exp(S − lse) without a second softmax pass.
    lse: Vec<f32>,
    dm: Dims,
}

/// What one backward tile pair reads, for one (batch, query head).
#[derive(Clone, Copy)]
struct BwdHead<'a> {
    hd: Head<'a>,
    dout: &'a [f32],
    lse: &'a [f32],
    /// D[i] = Σ_c dO[i, c]·O[i, c] = Σ_j P[i, j]·dP[i, j]
    delta: &'a [f32],
}

/// Per-task scratch: the P and dP/dS tiles.
struct BwdScratch<'a> {
    s: &'a mut [f32],
    dp: &'a mut [f32],
}

impl BwdScratch<'_> {
    const LEN: usize = 2 * BQ * BKB;
    fn carve(buf: &mut [f32]) -> BwdScratch<'_> {
        let (s, dp) = buf.split_at_mut(BQ * BKB);
        BwdScratch { s, dp }
    }
}

/// The gradient blocks one tile pair adds to (each optional): dQ rows i0.., dK and dV rows j0...
struct PairOut<'a> {
    dq: Option<&'a mut [f32]>,
    dk: Option<&'a mut [f32]>,
    dv: Option<&'a mut [f32]>,
}

/// Query rows i0..i0+bq against keys j0..j0+bk:
///   S = scale·Q Kᵀ, P = exp(S − lse) (masked → 0), dP = dO Vᵀ, dS = P ∘ (dP − D),
///   dV += Pᵀ dO,   dK += scale·dSᵀ Q,   dQ += scale·dS K.
fn backward_pair(
    dm: &Dims,
    bw: BwdHead<'_>,
    qr: (usize, usize),
    kr: (usize, usize),
    o: PairOut<'_>,
    sc: &mut BwdScratch,
) {
    dispatch_simd!(
        backward_pair_body, backward_pair_avx512, backward_pair_avx2,
        (dm: &Dims, bw: BwdHead<'_>, qr: (usize, usize), kr: (usize, usize), o: PairOut<'_>, sc: &mut BwdScratch)
    );
}

#[inline(always)]
fn backward_pair_body<const ISA: Isa>(
    dm: &Dims,
    bw: BwdHead<'_>,
    (i0, bq): (usize, usize),
    (j0, bk): (usize, usize),
    mut o: PairOut<'_>,
    sc: &mut BwdScratch,
) {
    let (d, dv) = (dm.d, dm.dv);
    let (s, dp) = (&mut sc.s[..bq * bk], &mut sc.dp[..bq * bk]);
    let (qb, kb, dob) = (&bw.hd.q[i0 * d..], &bw.hd.k[j0 * d..], &bw.dout[i0 * dv..]);
    let (kt, vt) = (&bw.hd.kt[j0..], &bw.hd.vt[j0..]);
    // S (bq, bk) = scale · Q_blk · Kᵀ[:, j0..j0+bk] and dP (bq, bk) = dO_blk · Vᵀ[:, j0..j0+bk], each row
    // only as far as its strip sees (on the diagonal); the rest is masked and set below
    for (r0, sr, n) in dm.query_strips((i0, bq), (j0, bk)) {
        mm::<ISA>((sr, d, n), dm.scale, (&qb[r0 * d..], d, 1), (kt, dm.tk), (&mut s[r0 * bk..], bk), false);
        mm::<ISA>((sr, dv, n), 1.0, (&dob[r0 * dv..], dv, 1), (vt, dm.tk), (&mut dp[r0 * bk..], bk), false);
    }
    // P = exp(S − lse), dS = P ∘ (dP − D); both 0 where masked
    for r in 0..bq {
        let vis = dm.visible(i0 + r).saturating_sub(j0).min(bk);
        let (lse, delta) = (bw.lse[i0 + r], bw.delta[i0 + r]);
        let (prow, dsrow) = (&mut s[r * bk..(r + 1) * bk], &mut dp[r * bk..(r + 1) * bk]);
        p_ds(&mut prow[..vis], &mut dsrow[..vis], lse, delta);
        prow[vis..].fill(0.0);
        dsrow[vis..].fill(0.0);
    }
    // dV_blk (bk, Dv) += Pᵀ · dO_blk and dK_blk (bk, D) += scale · dSᵀ · Q_blk, the transposes read
    // through swapped strides; each key strip sums only the query rows that see it
    for (jj0, sk, r0) in dm.key_strips((i0, bq), (j0, bk)) {
        let (a_off, kk) = (r0 * bk + jj0, bq - r0);
        if kk == 0 {
            continue; // no query row of this block sees these keys
        }
        if let Some(dvb) = o.dv.as_deref_mut() {
            mm::<ISA>((sk, kk, dv), 1.0, (&s[a_off..], 1, bk), (&dob[r0 * dv..], dv), (&mut dvb[jj0 * dv..], dv), true);
        }
        if let Some(dkb) = o.dk.as_deref_mut() {
            mm::<ISA>((sk, kk, d), dm.scale, (&dp[a_off..], 1, bk), (&qb[r0 * d..], d), (&mut dkb[jj0 * d..], d), true);
        }
    }
    if let Some(dqb) = o.dq {
        // dQ_blk (bq, D) += scale · dS (bq, bk) · K_blk
        for (r0, sr, n) in dm.query_strips((i0, bq), (j0, bk)) {
            mm::<ISA>((sr, n, d), dm.scale, (&dp[r0 * bk..], bk, 1), (kb, d), (&mut dqb[r0 * d..], d), true);
        }
    }
}

/// Backward task kinds; each owns the gradient rows it writes.
enum BwdItem<'a> {
    /// One (batch, kv head): its dK (Tk, D), dV (Tk, Dv), and optionally dQ of its query heads (g·Tq, D).
    Kv { bkv: usize, dk: &'a mut [f32], dv: &'a mut [f32], dq: Option<&'a mut [f32]> },
    /// One key block j0.. of a (batch, kv head): its dK and dV rows.
    KvBlock { bkv: usize, j0: usize, dk: &'a mut [f32], dv: &'a mut [f32] },
    /// One query block i0.. of a (batch, query head): its dQ rows.
    QBlock { bh: usize, i0: usize, dq: &'a mut [f32] },
}

impl SdpaBackward {
    fn bwd_head<'a>(&'a self, bh: usize, t: &BwdTensors<'a>) -> BwdHead<'a> {
        let (dm, r) = (&self.dm, bh * self.dm.tq);
        BwdHead {
            hd: t.inp.head(dm, bh),
            dout: &t.dout[r * dm.dv..(r + dm.tq) * dm.dv],
            lse: &self.lse[r..r + dm.tq],
            delta: &t.delta[r..r + dm.tq],
        }
    }

    /// First query block that sees key j0 (causal), else 0.
    fn first_qblock(&self, j0: usize) -> usize {
        let dm = &self.dm;
        if dm.causal { j0.saturating_sub(dm.tk - dm.tq) / BQ * BQ } else { 0 }
    }

    /// dK/dV (and dQ when given) of key rows j0..j0+bk from every query head of kv group `bkv`.
    /// `local`: this kv head's (Kᵀ, Vᵀ) made by the task, instead of the shared transposed buffers.
    #[allow(clippy::too_many_arguments)]
    fn kv_block(
        &self,
        t: &BwdTensors<'_>,
        (bkv, local): (usize, Option<KvT<'_>>),
        j0: usize,
        dk: &mut [f32],
        dv: &mut [f32],
        mut dq: Option<&mut [f32]>,
        sc: &mut BwdScratch,
    ) {
        let dm = &self.dm;
        let (g, bk) = (dm.group(), BKB.min(dm.tk - j0));
        let (b, kvh) = (bkv / dm.hkv, bkv % dm.hkv);
        for hl in 0..g {
            let bh = b * dm.hq + kvh * g + hl;
            let mut bw = self.bwd_head(bh, t);
            if let Some((kt, vt)) = local {
                (bw.hd.kt, bw.hd.vt) = (kt, vt);
            }
            for i0 in (self.first_qblock(j0)..dm.tq).step_by(BQ) {
                let bq = BQ.min(dm.tq - i0);
                let dqb = dq.as_deref_mut().map(|x| &mut x[(hl * dm.tq + i0) * dm.d..][..bq * dm.d]);
                let o = PairOut { dq: dqb, dk: Some(&mut *dk), dv: Some(&mut *dv) };
                backward_pair(dm, bw, (i0, bq), (j0, bk), o, sc);
            }
        }
    }
}

/// A kv head's (Kᵀ, Vᵀ) made by its task.
type KvT<'a> = (&'a [f32], &'a [f32]);

/// The saved and incoming data of one backward call.
struct BwdTensors<'a> {
    inp: Inputs<'a>,
    dout: &'a [f32],
    delta: &'a [f32],
}

impl Backward for SdpaBackward {
    fn name(&self) -> &'static str {
        "scaled_dot_product_attention"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.q.clone(), self.k.clone(), self.v.clone()]
    }
    // forward was: S = scale·Q Kᵀ (+ mask), P = softmax(S), O = P V, so (flash-attention backward)
    //   dV = Pᵀ dO,  dP = dO Vᵀ,  dS = P ∘ (dP − rowsum(dO ∘ O)),  dQ = scale·dS K,  dK = scale·dSᵀ Q
    // with P recomputed tile by tile as exp(S − lse); for GQA, dK/dV sum over the query heads of a group.
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dm = &self.dm;
        let mut dq = if needs[0] { Some(alloc_zeros(OP, self.q.numel())?) } else { None };
        let need_kv = needs[1] || needs[2];
        let (mut dk, mut dv) = if need_kv {
            (alloc_zeros(OP, self.k.numel())?, alloc_zeros(OP, self.v.numel())?)
        } else {
            (Vec::new(), Vec::new())
        };
        if !dm.empty() {
            let reads = crate::tensor::read_all([&self.q, &self.k, &self.v, &self.out, dout]);
            let [qd, kd, vd, od, gd] = reads.slices();
            let (g, n_kv) = (dm.group(), dm.b * dm.hkv);
            // One task per (batch, kv head) when there are enough of them: each transposes its own K and V
            // in cache. Otherwise tasks per key block and per query block share transposed buffers.
            let one_sweep = need_kv && n_kv >= KV_TASKS && dm.tk * (dm.d + dm.dv) <= LOCAL_KV_MAX;
            let (nk, nv, nr) = if one_sweep { (0, 0, self.lse.len()) } else { (kd.len(), vd.len(), self.lse.len()) };
            let head_kv = dm.tk * (dm.d + dm.dv);
            let scratch = BwdScratch::LEN + if one_sweep { head_kv } else { 0 };
            with_workspace(nk + nv + nr, |ws| {
                let (kt, rest) = ws.split_at_mut(nk);
                let (vt, delta) = rest.split_at_mut(nv);
                // D[i] = Σ_c dO[i, c]·O[i, c], one row per task chunk
                let dvn = dm.dv;
                crate::parallel::for_each_chunk(delta, (crate::parallel::GRAIN / dvn).max(1), |r0, ch| {
                    for (r, x) in ch.iter_mut().enumerate() {
                        let i = (r0 + r) * dvn;
                        *x = dot(&gd[i..i + dvn], &od[i..i + dvn]);
                    }
                });
                // Kᵀ and Vᵀ per kv head: the B operands of S = Q Kᵀ and dP = dO Vᵀ (empty when per task)
                transpose_heads(&kd[..nk], dm.tk, dm.d, kt);
                transpose_heads(&vd[..nv], dm.tk, dm.dv, vt);
                let inp = Inputs { q: &qd, k: &kd, v: &vd, kt, vt };
                let t = BwdTensors { inp, dout: &gd, delta };
                let mut items = Vec::new();
                // dQ goes to the one-sweep kv tasks, or else to tasks of its own
                let mut dq_rest = dq.as_deref_mut();
                if need_kv {
                    let kv_chunks = dk.chunks_mut(dm.tk * dm.d).zip(dv.chunks_mut(dm.tk * dm.dv));
                    if one_sweep {
                        let mut dq_chunks = dq_rest.take().map(|x| x.chunks_mut(g * dm.tq * dm.d));
                        for (bkv, (dkc, dvc)) in kv_chunks.enumerate() {
                            let dqc = dq_chunks.as_mut().and_then(|c| c.next());
                            items.push(BwdItem::Kv { bkv, dk: dkc, dv: dvc, dq: dqc });
                        }
                    } else {
                        for (bkv, (dkc, dvc)) in kv_chunks.enumerate() {
                            for (jb, (dkb, dvb)) in
                                dkc.chunks_mut(BKB * dm.d).zip(dvc.chunks_mut(BKB * dm.dv)).enumerate()
                            {
                                items.push(BwdItem::KvBlock { bkv, j0: jb * BKB, dk: dkb, dv: dvb });
                            }
                        }
                    }
                }
                if let Some(dqv) = dq_rest {
                    for (bh, dqh) in dqv.chunks_mut(dm.tq * dm.d).enumerate() {
                        for (qb, dqb) in dqh.chunks_mut(BQ * dm.d).enumerate() {
                            items.push(BwdItem::QBlock { bh, i0: qb * BQ, dq: dqb });
                        }
                    }
                }
                // rough flops per item, only used to cut the work into groups between Ctrl-C checks
                let per_elem = 2 * (3 * dm.d + 2 * dm.dv);
                let q_rows_keys: usize =
                    (0..dm.tq).step_by(BQ).map(|i0| BQ.min(dm.tq - i0) * dm.visible((i0 + BQ).min(dm.tq) - 1)).sum();
                let cost = |it: &BwdItem| match it {
                    BwdItem::Kv { .. } => g * q_rows_keys * per_elem,
                    BwdItem::KvBlock { j0, .. } => g * (dm.tq - self.first_qblock(*j0)) * BKB * per_elem,
                    BwdItem::QBlock { i0, dq, .. } => dq.len() / dm.d * dm.visible(*i0) * per_elem,
                };
                // Each task first WRITES the gradient rows it owns: the buffers are fresh zero pages, and a
                // first read (the += below) would map the shared zero page, so the first write would then
                // need a copy-on-write fault plus a TLB flush on every core, costing more than the math here.
                run_grouped(&mut items, cost, scratch, |buf, it| {
                    // [this kv head's Kᵀ, Vᵀ (one-sweep tasks only) | the P and dS tiles]
                    let (kv_buf, tiles) = buf.split_at_mut(buf.len() - BwdScratch::LEN);
                    let sc = &mut BwdScratch::carve(tiles);
                    match it {
                        BwdItem::Kv { bkv, dk, dv, dq } => {
                            // this kv head's Kᵀ and Vᵀ, made here so they stay in cache
                            let (kt, vt) = kv_buf.split_at_mut(dm.tk * dm.d);
                            transpose_one(&kd[*bkv * dm.tk * dm.d..][..dm.tk * dm.d], dm.tk, dm.d, kt);
                            transpose_one(&vd[*bkv * dm.tk * dm.dv..][..dm.tk * dm.dv], dm.tk, dm.dv, vt);
                            let local = Some((&kt[..], &vt[..]));
                            dk.fill(0.0);
                            dv.fill(0.0);
                            if let Some(dq) = dq.as_deref_mut() {
                                dq.fill(0.0);
                            }
                            for j0 in (0..dm.tk).step_by(BKB) {
                                let bk = BKB.min(dm.tk - j0);
                                let dkb = &mut dk[j0 * dm.d..(j0 + bk) * dm.d];
                                let dvb = &mut dv[j0 * dm.dv..(j0 + bk) * dm.dv];
                                self.kv_block(&t, (*bkv, local), j0, dkb, dvb, dq.as_deref_mut(), sc);
                            }
                        }
                        BwdItem::KvBlock { bkv, j0, dk, dv } => {
                            dk.fill(0.0);
                            dv.fill(0.0);
                            self.kv_block(&t, (*bkv, None), *j0, dk, dv, None, sc)
                        }
                        BwdItem::QBlock { bh, i0, dq } => {
                            dq.fill(0.0);
                            let bw = self.bwd_head(*bh, &t);
                            let bq = dq.len() / dm.d;
                            for j0 in (0..dm.visible(*i0 + bq - 1)).step_by(BKB) {
                                let bk = BKB.min(dm.tk - j0);
                                let o = PairOut { dq: Some(&mut **dq), dk: None, dv: None };
                                backward_pair(dm, bw, (*i0, bq), (j0, bk), o, sc);
                            }
                        }
                    }
                })
            })?;
        }
        let wrap = |g: Vec<f32>, x: &Tensor| Tensor::from_vec_unchecked(g, x.shape().to_vec());
        Ok(vec![
            dq.map(|g| wrap(g, &self.q)),
            if needs[1] { Some(wrap(dk, &self.k)) } else { None },
            if needs[2] { Some(wrap(dv, &self.v)) } else { None },
        ])
    }
}

// ---- attention weights (for plots) ----

/// The attention probabilities softmax(q·kᵀ·scale + mask) as a (B, Hq, Tq, Tk) tensor, masked entries 0.
/// Same shape rules, GQA mapping, causal alignment and default scale as `scaled_dot_product_attention`.
/// No gradient: this is for looking at attention (it materialises the full matrix).
pub fn attention_weights(q: &Tensor, k: &Tensor, causal: bool, scale: Option<f32>) -> Result<Tensor> {
    let op = "attention_weights";
    let dm = check(op, q, k, None, causal, scale)?;
    let shape = vec![dm.b, dm.hq, dm.tq, dm.tk];
    let mut out = alloc_zeros(op, checked_numel(op, &shape)?)?;
    if !out.is_empty() {
        let reads = crate::tensor::read_all([q, k]);
        let [qd, kd] = reads.slices();
        let mut kt = alloc_zeros(op, kd.len())?;
        transpose_heads(&kd, dm.tk, dm.d, &mut kt);
        let inp = Inputs { q: &qd, k: &kd, v: &[], kt: &kt, vt: &[] };
        let mut items = Vec::new();
        for (bh, oh) in out.chunks_mut(dm.tq * dm.tk).enumerate() {
            for (qb, ob) in oh.chunks_mut(BQ * dm.tk).enumerate() {
                items.push((bh, qb * BQ, ob));
            }
        }
        let cost = |it: &(usize, usize, &mut [f32])| 2 * it.2.len() * dm.d;
        run_grouped(&mut items, cost, 0, |_, (bh, i0, ob)| weights_block(&dm, inp.head(&dm, *bh), *i0, ob))?;
    }
    Ok(Tensor::from_vec_unchecked(out, shape))
}

fn weights_block(dm: &Dims, hd: Head<'_>, i0: usize, out: &mut [f32]) {
    dispatch_simd!(
        weights_block_body, weights_block_avx512, weights_block_avx2,
        (dm: &Dims, hd: Head<'_>, i0: usize, out: &mut [f32])
    );
}

#[inline(always)]
fn weights_block_body<const ISA: Isa>(dm: &Dims, hd: Head<'_>, i0: usize, out: &mut [f32]) {
    let (d, tk) = (dm.d, dm.tk);
    let rows = out.len() / tk;
    let kend = dm.visible(i0 + rows - 1);
    // scores straight into the output rows (row stride Tk), masked columns left at 0
    mm::<ISA>((rows, d, kend), dm.scale, (&hd.q[i0 * d..], d, 1), (hd.kt, tk), (out, tk), false);
    for r in 0..rows {
        let row = &mut out[r * tk..(r + 1) * tk];
        let vis = dm.visible(i0 + r);
        let m = row_max(&row[..vis]);
        let inv = 1.0 / exp_sub_sum(&mut row[..vis], m);
        row[..vis].iter_mut().for_each(|p| *p *= inv);
        row[vis..].fill(0.0);
    }
}

// ---- reference ----

/// Scaled dot-product attention from primitive ops (the test oracle for the fused version):
/// kv heads repeated for GQA (reshape → expand → reshape), S = (q @ kᵀ)·scale, the causal positions
/// filled with −inf by a constant mask, softmax over keys, then @ v. Materialises (B, Hq, Tq, Tk).
pub fn scaled_dot_product_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    scale: Option<f32>,
) -> Result<Tensor> {
    use crate::ops::{binary::mul_scalar, index::masked_fill, matmul::matmul, softmax::softmax, view};
    let dm = check(OP, q, k, Some(v), causal, scale)?;
    // (B, Hkv, T, X) -> (B, Hkv, g, T, X) -> (B, Hq, T, X): query head h reads kv head h / g
    let repeat_kv = |x: &Tensor| -> Result<Tensor> {
        let (g, s) = (dm.group(), x.shape());
        if g == 1 {
            return Ok(x.clone());
        }
        let (b, hkv, t, c) = (s[0], s[1], s[2], s[3]);
        let x5 = view::reshape(x, &[b as isize, hkv as isize, 1, t as isize, c as isize])?;
        let x5 = view::expand(&x5, &[b, hkv, g, t, c])?;
        view::reshape(&x5, &[b as isize, (hkv * g) as isize, t as isize, c as isize])
    };
    let (k, v) = (repeat_kv(k)?, repeat_kv(v)?);
    let s = mul_scalar(&matmul(q, &view::transpose(&k, -2, -1)?)?, dm.scale)?;
    let s = if causal {
        // query i (the last Tq of Tk positions) may not see key j > i + (Tk − Tq)
        let (tq, tk) = (dm.tq, dm.tk);
        let mask: Vec<f32> = (0..tq * tk).map(|x| if x % tk > x / tk + (tk - tq) { 1.0 } else { 0.0 }).collect();
        masked_fill(&s, &Tensor::new(mask, &[dm.tq, dm.tk])?, f32::NEG_INFINITY)?
    } else {
        s
    };
    matmul(&softmax(&s, -1)?, &v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::tensor::random::Rng;

    /// A (..) tensor of N(0, 1) values from a local generator (other tests reseed the global one).
    fn randn_local(rng: &mut Rng, shape: &[usize], grad: bool) -> Tensor {
        let n = crate::tensor::numel(shape);
        Tensor::new((0..n).map(|_| rng.normal() as f32).collect(), shape).unwrap().requires_grad_(grad)
    }

    /// Largest |got − want| and its element index.
    fn max_abs_diff(got: &[f32], want: &[f32]) -> (f32, usize) {
        assert_eq!(got.len(), want.len(), "length");
        got.iter().zip(want).enumerate().fold((0f32, 0), |(w, at), (i, (&g, &r))| {
            let d = (g - r).abs();
            if d > w || d.is_nan() { (d, i) } else { (w, at) }
        })
    }

    type Sdpa = fn(&Tensor, &Tensor, &Tensor, bool, Option<f32>) -> Result<Tensor>;

    /// out and the three gradients of Σ w·out for a fixed pseudo-random w.
    fn run(f: Sdpa, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: Option<f32>) -> Vec<Vec<f32>> {
        for t in [q, k, v] {
            t.zero_grad();
        }
        let out = f(q, k, v, causal, scale).unwrap();
        let w: Vec<f32> = (0..out.numel()).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
        out.backward(Some(&Tensor::new(w, out.shape()).unwrap()), false).unwrap();
        let g = |t: &Tensor| t.grad().map(|g| g.to_vec()).unwrap_or_default();
        vec![out.to_vec(), g(q), g(k), g(v)]
    }

    /// Fused vs reference on one configuration; returns the max abs diffs (out, dq, dk, dv).
    #[allow(clippy::too_many_arguments)]
    fn compare(
        seed: u64,
        (b, hq, hkv): (usize, usize, usize),
        (tq, tk): (usize, usize),
        (d, dv): (usize, usize),
        causal: bool,
        scale: Option<f32>,
    ) -> [f32; 4] {
        let mut rng = Rng::new(seed);
        let q = randn_local(&mut rng, &[b, hq, tq, d], true);
        let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
        let v = randn_local(&mut rng, &[b, hkv, tk, dv], true);
        let fused = run(scaled_dot_product_attention, &q, &k, &v, causal, scale);
        let want = run(scaled_dot_product_attention_reference, &q, &k, &v, causal, scale);
        let mut diffs = [0f32; 4];
        for (n, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
            let (dmax, at) = max_abs_diff(&fused[n], &want[n]);
            // the reference sums up to Tk products per element: allow f32 rounding growing like √Tk
            let tol = 2e-5 * (tk.max(tq) as f32).sqrt().max(1.0) * if n == 0 { 1.0 } else { 4.0 };
            assert!(
                dmax <= tol,
                "(B, Hq, Hkv) = {:?}, (Tq, Tk) = {:?}, (D, Dv) = {:?}, causal {causal}: {what} max abs diff \
                 {dmax:.2e} > {tol:.2e} at element {at}: fused {} vs reference {}",
                (b, hq, hkv),
                (tq, tk),
                (d, dv),
                fused[n][at],
                want[n][at]
            );
            diffs[n] = dmax;
        }
        diffs
    }

    #[test]
    fn fused_matches_reference_forward_and_backward() {
        // ((B, Hq, Hkv), (Tq, Tk), (D, Dv)): MHA, GQA 8:2 and 8:1, KV-cache Tq < Tk, ragged blocks,
        // several query/key blocks (BQ = 64, BK = 256, BKB = 64), Dv ≠ D, both backward schedules
        type Case = ((usize, usize, usize), (usize, usize), (usize, usize));
        let cases: [Case; 14] = [
            ((2, 3, 3), (17, 17), (8, 8)),
            ((1, 2, 2), (100, 100), (32, 32)),
            ((2, 2, 2), (130, 130), (64, 64)),
            ((1, 8, 2), (70, 70), (16, 16)),
            ((2, 8, 1), (33, 33), (8, 8)),
            ((1, 8, 2), (5, 70), (32, 32)),    // KV cache: 5 new queries, 70 keys
            ((1, 2, 1), (70, 130), (8, 8)),    // KV cache over several blocks
            ((1, 4, 4), (1, 77), (32, 32)),    // decode
            ((2, 4, 2), (3, 40), (8, 8)),      // a few rows: the dot-product path
            ((1, 2, 2), (300, 300), (8, 8)),   // several forward key blocks
            ((1, 3, 3), (40, 40), (16, 24)),   // Dv ≠ D
            ((4, 4, 2), (65, 65), (8, 8)),     // 8 kv tasks: one-sweep backward
            ((8, 2, 2), (129, 200), (32, 32)), // 16 kv tasks, Tq < Tk
            ((8, 1, 1), (4, 4200), (64, 64)),  // 8 kv tasks but Kᵀ + Vᵀ past LOCAL_KV_MAX: shared transposes
        ];
        let mut worst = [0f32; 4];
        for (n, (heads, ts, ds)) in cases.into_iter().enumerate() {
            for causal in [true, false] {
                let diffs = compare(100 + n as u64, heads, ts, ds, causal, None);
                eprintln!(
                    "  (B, Hq, Hkv) {heads:?} (Tq, Tk) {ts:?} (D, Dv) {ds:?} causal {causal}: out {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
                    diffs[0], diffs[1], diffs[2], diffs[3]
                );
                for (w, d) in worst.iter_mut().zip(diffs) {
                    *w = w.max(d);
                }
            }
        }
        // an explicit scale
        compare(7, (1, 2, 2), (20, 20), (8, 8), true, Some(0.3));
        eprintln!(
            "sdpa fused vs reference, max abs diff: out {:.1e}, dq {:.1e}, dk {:.1e}, dv {:.1e}",
            worst[0], worst[1], worst[2], worst[3]
        );
    }

    #[test]
    fn gradcheck_tiny() {
        let mut rng = Rng::new(11);
        // (B, Hq, Hkv, Tq, Tk, D, causal)
        for (b, hq, hkv, tq, tk, d, causal) in
            [(1, 2, 2, 3, 3, 4, true), (1, 2, 2, 3, 4, 4, false), (1, 4, 2, 3, 3, 4, true), (2, 2, 1, 2, 5, 3, true)]
        {
            let q = randn_local(&mut rng, &[b, hq, tq, d], true);
            let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
            let v = randn_local(&mut rng, &[b, hkv, tk, d], true);
            assert_gradcheck(|x| scaled_dot_product_attention(&x[0], &x[1], &x[2], causal, None), &[q, k, v]);
        }
        // only some inputs needing a gradient
        let q = randn_local(&mut rng, &[1, 2, 3, 4], true);
        let k = randn_local(&mut rng, &[1, 2, 3, 4], false);
        let v = randn_local(&mut rng, &[1, 2, 3, 4], true);
        assert_gradcheck(|x| scaled_dot_product_attention(&x[0], &x[1], &x[2], true, None), &[q, k, v]);
    }

    #[test]
    fn some_gradients_only() {
        // each subset of needed gradients gives the same values as computing all three
        let mut rng = Rng::new(12);
        for (b, hq, hkv) in [(1, 4, 2), (4, 2, 2)] {
            let q = randn_local(&mut rng, &[b, hq, 70, 8], true);
            let k = randn_local(&mut rng, &[b, hkv, 70, 8], true);
            let v = randn_local(&mut rng, &[b, hkv, 70, 8], true);
            let all = run(scaled_dot_product_attention, &q, &k, &v, true, None);
            for n in 0..3 {
                let ts = [&q, &k, &v].map(|t| t.detach().requires_grad_(false));
                ts[n].set_requires_grad(true).unwrap();
                let got = run(scaled_dot_product_attention, &ts[0], &ts[1], &ts[2], true, None);
                assert_eq!(got[n + 1], all[n + 1], "gradient {n} alone differs");
            }
        }
    }

    #[test]
    fn decode_matches_last_row_of_full_forward() {
        let mut rng = Rng::new(13);
        for (hq, hkv, t, d) in [(4, 4, 50, 32), (8, 2, 130, 64), (4, 1, 7, 8)] {
            let q = randn_local(&mut rng, &[2, hq, t, d], false);
            let k = randn_local(&mut rng, &[2, hkv, t, d], false);
            let v = randn_local(&mut rng, &[2, hkv, t, d], false);
            let full = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap();
            let q_last = crate::ops::view::narrow(&q, 2, t - 1, 1).unwrap();
            let step = scaled_dot_product_attention(&q_last, &k, &v, true, None).unwrap();
            let want = crate::ops::view::narrow(&full, 2, t - 1, 1).unwrap();
            let (dmax, at) = max_abs_diff(&step.to_vec(), &want.to_vec());
            assert!(dmax <= 1e-5, "decode (Hq {hq}, Hkv {hkv}, T {t}): max abs diff {dmax:.2e} at {at}");
            // and the last 3 rows as a KV-cache chunk
            let q3 = crate::ops::view::narrow(&q, 2, t - 3, 3).unwrap();
            let chunk = scaled_dot_product_attention(&q3, &k, &v, true, None).unwrap();
            let want = crate::ops::view::narrow(&full, 2, t - 3, 3).unwrap();
            let (dmax, at) = max_abs_diff(&chunk.to_vec(), &want.to_vec());
            assert!(dmax <= 1e-5, "3-row chunk (Hq {hq}, Hkv {hkv}, T {t}): max abs diff {dmax:.2e} at {at}");
        }
    }

    /// (B, H, T, W) packed into buffers with room for `cap` positions per head (the rest garbage).
    fn into_cache(x: &Tensor, cap: usize) -> Vec<f32> {
        let s = x.shape();
        let (heads, t, w) = (s[0] * s[1], s[2], s[3]);
        let mut buf = vec![f32::NAN; heads * cap * w]; // unused slots must never be read
        for (h, rows) in x.to_vec().chunks(t * w).enumerate() {
            buf[h * cap * w..][..t * w].copy_from_slice(rows);
        }
        buf
    }

    #[test]
    fn kv_cache_attention_equals_packed_attention_bit_for_bit() {
        let mut rng = Rng::new(21);
        // decode rows (read in place) and a prompt-sized block (packed first); MHA, GQA, MQA; dv != d
        for ((b, hq, hkv), tq, tk, (d, dv)) in [
            ((1, 4, 4), 1, 9, (8, 8)),
            ((2, 8, 2), 2, 40, (16, 12)),
            ((2, 4, 1), 5, 5, (8, 8)),
            ((1, 6, 3), 7, 30, (8, 4)),
        ] {
            let q = randn_local(&mut rng, &[b, hq, tq, d], false);
            let k = randn_local(&mut rng, &[b, hkv, tk, d], false);
            let v = randn_local(&mut rng, &[b, hkv, tk, dv], false);
            let want = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap().to_vec();
            for cap in [tk, tk + 3] {
                let (kb, vb) = (into_cache(&k, cap), into_cache(&v, cap));
                let kv = KvView { k: &kb, v: &vb, b, hkv, cap, len: tk, d, dv };
                let got = attend_kv_cache(&q, kv).unwrap();
                assert_eq!(got.shape(), [b, hq, tq, dv]);
                let diff = got.to_vec().iter().zip(&want).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(diff.is_none(), "Tq {tq}, Tk {tk}, cap {cap}: first differing element {diff:?}");
            }
        }
        // errors: more queries than cached keys, buffers smaller than the layout they claim
        let q = randn_local(&mut rng, &[1, 2, 3, 4], false);
        let buf = vec![0.0; 2 * 8 * 4];
        let kv = |len, cap| KvView { k: &buf, v: &buf, b: 1, hkv: 2, cap, len, d: 4, dv: 4 };
        assert!(matches!(attend_kv_cache(&q, kv(2, 8)), Err(Error::Shape { .. })));
        assert!(matches!(attend_kv_cache(&q, kv(4, 16)), Err(Error::Value { .. })));
        assert!(matches!(attend_kv_cache(&q, kv(9, 8)), Err(Error::Value { .. })));
    }

    #[test]
    fn attention_weights_match_softmax_of_scores() {
        let mut rng = Rng::new(14);
        for (hq, hkv, tq, tk, causal) in [(4, 2, 70, 70, true), (2, 2, 5, 9, true), (2, 1, 6, 9, false)] {
            let q = randn_local(&mut rng, &[2, hq, tq, 16], false);
            let k = randn_local(&mut rng, &[2, hkv, tk, 16], false);
            let w = attention_weights(&q, &k, causal, None).unwrap();
            assert_eq!(w.shape(), &[2, hq, tq, tk]);
            // f64 formula
            let (qd, kd, wd) = (q.to_vec(), k.to_vec(), w.to_vec());
            let g = hq / hkv;
            for bh in 0..2 * hq {
                let bkv = bh / hq * hkv + bh % hq / g;
                for i in 0..tq {
                    let vis = if causal { i + 1 + tk - tq } else { tk };
                    let s: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..16)
                                .map(|c| qd[(bh * tq + i) * 16 + c] as f64 * kd[(bkv * tk + j) * 16 + c] as f64)
                                .sum::<f64>()
                                / 4.0
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for j in 0..tk {
                        let want = if j < vis { (s[j] - m).exp() / z } else { 0.0 };
                        let got = wd[(bh * tq + i) * tk + j] as f64;
                        assert!((got - want).abs() < 1e-6, "weights[{bh}, {i}, {j}] = {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn shape_errors_name_all_shapes() {
        let z = |s: &[usize]| Tensor::zeros(s).unwrap();
        let err = |q: &[usize], k: &[usize], v: &[usize], causal: bool| {
            scaled_dot_product_attention(&z(q), &z(k), &z(v), causal, None).unwrap_err()
        };
        let e = err(&[2, 4, 8], &[2, 4, 8, 16], &[2, 4, 8, 16], false);
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "scaled_dot_product_attention: expected 4-D tensors (batch, heads, seq, head_dim): \
             q (2, 4, 8), k (2, 4, 8, 16), v (2, 4, 8, 16)"
        );
        let e = err(&[2, 4, 8, 16], &[3, 4, 8, 16], &[3, 4, 8, 16], false);
        assert!(e.to_string().contains("batch sizes differ: q (2, 4, 8, 16), k (3, 4, 8, 16)"), "{e}");
        let e = err(&[2, 4, 8, 16], &[2, 4, 8, 32], &[2, 4, 8, 16], false);
        assert!(e.to_string().contains("q and k must have the same head dim"), "{e}");
        let e = err(&[2, 4, 8, 16], &[2, 4, 8, 16], &[2, 2, 8, 16], false);
        assert!(e.to_string().contains("k and v must have the same number of heads"), "{e}");
        let e = err(&[2, 4, 8, 16], &[2, 4, 8, 16], &[2, 4, 9, 16], false);
        assert!(e.to_string().contains("k and v must have the same sequence length"), "{e}");
        let e = err(&[2, 6, 8, 16], &[2, 4, 8, 16], &[2, 4, 8, 16], false);
        assert!(matches!(e, Error::Shape { .. }));
        assert!(e.to_string().contains("query heads (6) must be a multiple of key/value heads (4)"), "{e}");
        let e = err(&[2, 4, 8, 16], &[2, 0, 8, 16], &[2, 0, 8, 16], false);
        assert!(e.to_string().contains("query heads (4) must be a multiple of key/value heads (0)"), "{e}");
        let e = err(&[1, 1, 5, 8], &[1, 1, 3, 8], &[1, 1, 3, 8], true);
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "scaled_dot_product_attention: causal attention needs no more queries than keys (Tq = 5 > Tk = 3; \
             queries are aligned to the last keys): q (1, 1, 5, 8), k (1, 1, 3, 8), v (1, 1, 3, 8)"
        );
        // the same shapes are fine without the causal mask
        assert!(
            scaled_dot_product_attention(&z(&[1, 1, 5, 8]), &z(&[1, 1, 3, 8]), &z(&[1, 1, 3, 8]), false, None).is_ok()
        );
        let e = err(&[1, 1, 2, 0], &[1, 1, 2, 0], &[1, 1, 2, 4], false);
        assert!(e.to_string().contains("the head dim must be at least 1"), "{e}");
        let e = scaled_dot_product_attention(
            &z(&[1, 1, 2, 4]),
            &z(&[1, 1, 2, 4]),
            &z(&[1, 1, 2, 4]),
            false,
            Some(f32::NAN),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Value { .. }), "{e}");
        // the reference and attention_weights check the same way
        let e =
            scaled_dot_product_attention_reference(&z(&[1, 1, 5, 8]), &z(&[1, 1, 3, 8]), &z(&[1, 1, 3, 8]), true, None)
                .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        let e = attention_weights(&z(&[1, 3, 5, 8]), &z(&[1, 2, 5, 8]), false, None).unwrap_err();
        assert!(e.to_string().starts_with("attention_weights: query heads (3) must be a multiple"), "{e}");
    }

    #[test]
    fn empty_sizes() {
        let mut rng = Rng::new(15);
        // no keys (non-causal): zeros, like softmax over nothing @ an empty v in the reference
        let (q, k, v) = (
            randn_local(&mut rng, &[1, 2, 3, 4], true),
            randn_local(&mut rng, &[1, 2, 0, 4], true),
            randn_local(&mut rng, &[1, 2, 0, 5], true),
        );
        let out = scaled_dot_product_attention(&q, &k, &v, false, None).unwrap();
        assert_eq!(out.shape(), &[1, 2, 3, 5]);
        assert!(out.to_vec().iter().all(|&x| x == 0.0));
        let want = scaled_dot_product_attention_reference(&q, &k, &v, false, None).unwrap();
        assert_eq!(out.to_vec(), want.to_vec());
        out.backward(Some(&Tensor::ones(&[1, 2, 3, 5]).unwrap()), false).unwrap();
        assert_eq!(q.grad().unwrap().to_vec(), vec![0.0; 24]);
        assert_eq!(k.grad().unwrap().shape(), &[1, 2, 0, 4]);
        // empty batch, no queries, Dv = 0
        for (qs, ks, vs) in [
            ([0, 2, 3, 4], [0, 2, 3, 4], [0, 2, 3, 4]),
            ([1, 2, 0, 4], [1, 2, 3, 4], [1, 2, 3, 4]),
            ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 0]),
        ] {
            let (q, k, v) =
                (randn_local(&mut rng, &qs, true), randn_local(&mut rng, &ks, true), randn_local(&mut rng, &vs, true));
            let out = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap();
            assert_eq!(out.shape(), &[qs[0], qs[1], qs[2], vs[3]]);
            out.backward(Some(&Tensor::zeros(out.shape()).unwrap()), false).unwrap();
            assert!(q.grad().unwrap().to_vec().iter().all(|&x| x == 0.0));
            assert_eq!(attention_weights(&q, &k, true, None).unwrap().shape(), &[qs[0], qs[1], qs[2], ks[2]]);
        }
    }

    /// Changes the process-wide thread count, so only through `with_threads` (one test at a time).
    #[test]
    fn one_and_two_threads_give_identical_bits() {
        // ((B, Hq, Hkv), (Tq, Tk), D): one-sweep and split backward, causal blocks, decode
        type Case = ((usize, usize, usize), (usize, usize), usize);
        let cases: [Case; 4] = [
            ((1, 4, 2), (300, 300), 32),
            ((4, 4, 2), (130, 130), 16),
            ((1, 8, 8), (1, 200), 64),
            ((2, 2, 1), (70, 150), 8),
        ];
        let go = || {
            let mut bits = Vec::new();
            for ((b, hq, hkv), (tq, tk), d) in cases {
                let mut rng = Rng::new(16);
                let q = randn_local(&mut rng, &[b, hq, tq, d], true);
                let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
                let v = randn_local(&mut rng, &[b, hkv, tk, d], true);
                for t in run(scaled_dot_product_attention, &q, &k, &v, true, None) {
                    bits.push(t.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
                }
                let w = attention_weights(&q, &k, true, None).unwrap();
                bits.push(w.to_vec().iter().map(|x| x.to_bits()).collect());
            }
            bits
        };
        let (one, two) = (crate::parallel::with_threads(1, go), crate::parallel::with_threads(2, go));
        for (i, (x, y)) in one.iter().zip(&two).enumerate() {
            let diff = x.iter().zip(y).position(|(p, q)| p != q);
            assert!(
                diff.is_none(),
                "case {} output {} (out, dq, dk, dv, weights) differs at element {diff:?}",
                i / 5,
                i % 5
            );
        }
    }
}
