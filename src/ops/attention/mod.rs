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
//! Also here: `attention_weights` (the probabilities, for plots) and the `*_reference` composite; the
//! small generic kernels (`mm`, transposes, row max / exp-sum, P and dS) are in kernels.rs, the tests in tests.rs.
//! References: Dao et al., FlashAttention (2022) and FlashAttention-2 (2023), Algorithms 1–2; torch's
//! `scaled_dot_product_attention` (same argument order and bottom-right causal rule as its KV-cache use).

use rayon::prelude::*;

use crate::autograd::{Backward, record, will_record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::simd::{Isa, dispatch_simd, dot};
use crate::ops::unary::exp_f32;
use crate::parallel::{check_interrupt, install};
use crate::tensor::{Tensor, alloc_zeros, checked_numel};

mod kernels;
use kernels::{exp_sub_sum, masked_dot, mm, p_ds, row_max, transpose_heads, transpose_one};

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
mod tests;
