//! The f32 GEMM of our own: register-blocked FMA micro-kernels (AVX-512: 12×32, AVX2: 6×16), chosen at
//! run time, in cache-sized blocks (KC terms × MC rows of A × NC columns of B). `mod.rs` cuts a product
//! into output tiles and hands each tile here; a single large product packs B once for all of its tiles
//! (`pack_b`), so no tile re-packs B. A is read in place when one of its strides is 1 (packing it would
//! cost about as much as the products when N is small, e.g. attention's P·V with N = 64); it is packed
//! only for a ragged last panel, other strides, or row strides of a multiple of 4 KB at large N.
//!
//! Bits: every output element is one f32 accumulator that adds its products with FMA in k order over a
//! block of `KC` terms, starting from zero; then C = acc (first block, no β) or C = C + acc. Nothing else
//! touches it, so the result depends only on the shapes (K's blocking by `KC`), never on the tiling, the
//! thread count, or which of the two micro-kernels ran: the AVX-512 and AVX2 paths give identical bits
//! (tested). The portable fallback (matrixmultiply, CPUs without AVX2+FMA) rounds differently.
//!
//! Path: the widest the CPU has, or lower when `NANOFRONTIER_MATMUL_ISA` is `avx2` or `portable` (read
//! once; `avx512` asks for the default). Tests pass the level explicitly instead.

use std::cell::RefCell;
use std::sync::OnceLock;

use crate::error::Result;
use crate::ops::simd::Isa;

/// K is cut into blocks of this many terms (an A panel, KC×12 floats = 12 KB, stays in L1 while the B
/// panels of a block pass it). Changing it changes the bits (never the thread dependence). 256, 384
/// and 512 measured the same here.
pub(super) const KC: usize = 256;
/// A large B is packed in runs of this many floats (64 MB), with a Ctrl-C check between runs.
const PACK_RUN: usize = 1 << 24;
/// Rows of A per block (KC·MC floats = 192 KB, in L2); a multiple of both kernels' MR.
const MC: usize = 192;
/// Columns of B per block (KC·NC floats = 512 KB, in L2); a multiple of both kernels' NR.
const NC: usize = 512;

/// Which GEMM runs: 2 = AVX-512 kernel, 1 = AVX2 kernel, 0 = matrixmultiply (portable).
pub(crate) fn level() -> Isa {
    static LEVEL: OnceLock<Isa> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let hw = crate::ops::simd::isa();
        let cap = match std::env::var("NANOFRONTIER_MATMUL_ISA").ok().as_deref().map(str::trim) {
            Some("avx2") => 1,
            Some("portable") => 0,
            _ => 2,
        };
        hw.min(cap)
    })
}

/// The name of a level, as the benchmarks print it.
pub(crate) fn level_name(level: Isa) -> &'static str {
    match level {
        2 => "avx512 (own 12x32 FMA kernel)",
        1 => "avx2 (own 6x16 FMA kernel)",
        _ => "portable (matrixmultiply)",
    }
}

/// Micro-tile height and width of a level's kernel.
pub(super) fn tile_dims(level: Isa) -> (usize, usize) {
    if level >= 2 { (12, 32) } else { (6, 16) }
}

/// A strided read-only matrix: element (r, c) at `ptr + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}
// SAFETY: a View only reads, and the matrix it points into outlives every call that gets it (`gemm`'s
// and `pack_b`'s callers hold the buffers borrowed while the pool runs).
unsafe impl Send for View {}
unsafe impl Sync for View {}

/// B packed for a level: `n.div_ceil(NR)` panels, each the k rows of NR consecutive columns (row-major
/// within the panel, zero-padded past column n), panel after panel.
pub(super) struct PackedB {
    buf: Vec<f32>,
    off: usize,
    pub k: usize,
    pub nr: usize,
}

impl PackedB {
    pub(super) fn panels(&self) -> &[f32] {
        &self.buf[self.off..]
    }
    /// The buffer back (for reuse).
    pub(super) fn into_buf(self) -> Vec<f32> {
        self.buf
    }
}

/// `len` floats of `buf` starting at a 64-byte boundary (the buffer grows as needed, contents stale).
fn aligned(buf: &mut Vec<f32>, len: usize) -> usize {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let addr = buf.as_ptr() as usize;
    (64 - addr % 64) % 64 / 4
}

/// Pack one panel: `dst[kk·w + j] = src(j, kk)` for kk < k, j < cols, and 0 for cols ≤ j < w, where
/// src(j, kk) is at `p + j·js + kk·ks`. B's panels (j = column, kk = term) and A's (j = row) both have
/// this form. Fast paths: js = 1 (each term's values contiguous: copied a row at a time) and ks = 1
/// (each vector contiguous along k: transposed in 8×8 blocks).
///
/// # Safety
/// Every src(j, kk) for j < cols, kk < k is readable; dst holds k·w floats; the CPU has AVX2.
unsafe fn pack_panel(p: *const f32, js: usize, ks: usize, cols: usize, k: usize, w: usize, dst: &mut [f32]) {
    debug_assert!(cols <= w && dst.len() >= k * w);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as this function's contract (the own kernels only run on CPUs with AVX2).
        if js == 1 && cols == w {
            return unsafe { copy_rows_avx2(p, ks, k, w, dst) };
        }
        if ks == 1 && cols >= 4 {
            return unsafe { transpose_in_avx2(p, js, cols, k, w, dst) };
        }
    }
    // SAFETY: as this function's contract.
    unsafe {
        if js == 1 {
            for kk in 0..k {
                let row = &mut dst[kk * w..kk * w + w];
                row[..cols].copy_from_slice(std::slice::from_raw_parts(p.add(kk * ks), cols));
                row[cols..].fill(0.0);
            }
        } else {
            if cols < w {
                dst[..k * w].fill(0.0);
            }
            for j in 0..cols {
                let src = p.add(j * js);
                for kk in 0..k {
                    *dst.get_unchecked_mut(kk * w + j) = *src.add(kk * ks);
                }
            }
        }
    }
}

/// `pack_panel` for js = 1 and cols = w ∈ {6, 12, 16, 32}: each term's w values are one contiguous run.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_rows_avx2(p: *const f32, ks: usize, k: usize, w: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = dst.as_mut_ptr();
    // SAFETY: reads w floats of each of k rows (the caller's contract); writes k·w floats of dst.
    unsafe {
        match w {
            32 => {
                for kk in 0..k {
                    let (s, o) = (p.add(kk * ks), d.add(kk * 32));
                    _mm256_storeu_ps(o, _mm256_loadu_ps(s));
                    _mm256_storeu_ps(o.add(8), _mm256_loadu_ps(s.add(8)));
                    _mm256_storeu_ps(o.add(16), _mm256_loadu_ps(s.add(16)));
                    _mm256_storeu_ps(o.add(24), _mm256_loadu_ps(s.add(24)));
                }
            }
            16 => {
                for kk in 0..k {
                    let (s, o) = (p.add(kk * ks), d.add(kk * 16));
                    _mm256_storeu_ps(o, _mm256_loadu_ps(s));
                    _mm256_storeu_ps(o.add(8), _mm256_loadu_ps(s.add(8)));
                }
            }
            12 => {
                for kk in 0..k {
                    let (s, o) = (p.add(kk * ks), d.add(kk * 12));
                    _mm256_storeu_ps(o, _mm256_loadu_ps(s));
                    _mm_storeu_ps(o.add(8), _mm_loadu_ps(s.add(8)));
                }
            }
            _ => {
                for kk in 0..k {
                    std::ptr::copy_nonoverlapping(p.add(kk * ks), d.add(kk * w), w);
                }
            }
        }
    }
}

/// `pack_panel` for ks = 1, cols ≥ 4: the cols vectors (each contiguous along k) transposed into the panel
/// in 8×8 blocks (then 4×4 for a remaining group of 4 vectors, scalar for the rest and for k's tail).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_in_avx2(p: *const f32, js: usize, cols: usize, k: usize, w: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = dst.as_mut_ptr();
    let k8 = k / 8 * 8;
    let k4 = k / 4 * 4;
    // SAFETY: reads src(j, kk) for j < cols, kk < k (the caller's contract); writes inside dst (k·w).
    unsafe {
        let mut j = 0;
        while j + 8 <= cols {
            let src = |q: usize| p.add((j + q) * js);
            let mut kk = 0;
            while kk < k8 {
                let r: [__m256; 8] = std::array::from_fn(|q| _mm256_loadu_ps(src(q).add(kk)));
                // 8×8 transpose: pairs, then quads, then 128-bit halves
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let o = |t: usize| d.add((kk + t) * w + j);
                _mm256_storeu_ps(o(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                _mm256_storeu_ps(o(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                _mm256_storeu_ps(o(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                _mm256_storeu_ps(o(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                _mm256_storeu_ps(o(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                _mm256_storeu_ps(o(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                _mm256_storeu_ps(o(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                _mm256_storeu_ps(o(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
                kk += 8;
            }
            for kk in k8..k {
                for q in 0..8 {
                    *d.add(kk * w + j + q) = *src(q).add(kk);
                }
            }
            j += 8;
        }
        if j + 4 <= cols {
            let src = |q: usize| p.add((j + q) * js);
            let mut kk = 0;
            while kk < k4 {
                let r: [__m128; 4] = std::array::from_fn(|q| _mm_loadu_ps(src(q).add(kk)));
                let t0 = _mm_unpacklo_ps(r[0], r[1]);
                let t1 = _mm_unpackhi_ps(r[0], r[1]);
                let t2 = _mm_unpacklo_ps(r[2], r[3]);
                let t3 = _mm_unpackhi_ps(r[2], r[3]);
                _mm_storeu_ps(d.add(kk * w + j), _mm_movelh_ps(t0, t2));
                _mm_storeu_ps(d.add((kk + 1) * w + j), _mm_movehl_ps(t2, t0));
                _mm_storeu_ps(d.add((kk + 2) * w + j), _mm_movelh_ps(t1, t3));
                _mm_storeu_ps(d.add((kk + 3) * w + j), _mm_movehl_ps(t3, t1));
                kk += 4;
            }
            for kk in k4..k {
                for q in 0..4 {
                    *d.add(kk * w + j + q) = *src(q).add(kk);
                }
            }
            j += 4;
        }
        for kk in 0..k {
            for q in j..w {
                *d.add(kk * w + q) = if q < cols { *p.add(q * js + kk) } else { 0.0 };
            }
        }
    }
}

/// Pack columns `0..n` of the k×n matrix `b` into `panels` (len ≥ k·round_up(n, nr)). When `parallel`,
/// panels are spread over the pool (each is packed by one task: the bits do not depend on it).
/// Errors: `Interrupted` (Ctrl-C) between runs of panels when `parallel`.
fn pack_b_into(b: View, k: usize, n: usize, nr: usize, panels: &mut [f32], parallel: bool) -> Result<()> {
    let pack_one = |b: View, p: usize, dst: &mut [f32]| {
        let c0 = p * nr;
        // SAFETY: callers guarantee b has k rows and n columns, and AVX2; c0 < n.
        unsafe { pack_panel(b.ptr.add(c0 * b.cs), b.cs, b.rs, nr.min(n - c0), k, nr, dst) };
    };
    let panel_len = k * nr;
    let count = n.div_ceil(nr);
    let panels = &mut panels[..count * panel_len];
    if parallel && count > 1 {
        use rayon::prelude::*;
        // in runs of ~PACK_RUN floats, with a check for Ctrl-C between them (a huge B takes a while)
        let per_run = (PACK_RUN / panel_len).max(1);
        for (r, run) in panels.chunks_mut(per_run * panel_len).enumerate() {
            crate::parallel::install(|| {
                run.par_chunks_mut(panel_len).enumerate().for_each(|(p, dst)| pack_one(b, r * per_run + p, dst));
            });
            crate::parallel::check_interrupt()?;
        }
    } else {
        for (p, dst) in panels.chunks_mut(panel_len).enumerate() {
            pack_one(b, p, dst);
        }
    }
    Ok(())
}

/// B (k×n) packed once for every tile of a product, in a buffer taken from `reuse`.
/// Errors: `Interrupted` (Ctrl-C) while packing a large B (the buffer is then dropped).
pub(super) fn pack_b(level: Isa, b: View, k: usize, n: usize, parallel: bool, mut reuse: Vec<f32>) -> Result<PackedB> {
    let nr = tile_dims(level).1;
    let len = k * n.div_ceil(nr) * nr;
    let off = aligned(&mut reuse, len);
    pack_b_into(b, k, n, nr, &mut reuse[off..off + len], parallel)?;
    Ok(PackedB { buf: reuse, off, k, nr })
}

/// Pack rows `0..m`, terms `0..kc` of `a` into MR-row panels: panel p holds, for each term, the MR
/// values of its rows (zero past row m).
fn pack_a(a: View, m: usize, kc: usize, mr: usize, dst: &mut [f32]) {
    for p in 0..m.div_ceil(mr) {
        let r0 = p * mr;
        // SAFETY: callers guarantee a has m rows and kc columns, and AVX2.
        unsafe { pack_panel(a.ptr.add(r0 * a.rs), a.rs, a.cs, mr.min(m - r0), kc, mr, &mut dst[p * kc * mr..]) };
    }
}

thread_local! {
    /// Each thread's buffer for packed A blocks (and, for tiles without a shared packed B, their B).
    static BUFS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The two buffers of this thread, taken out while `f` runs (a nested call on the same thread, e.g. a
/// stolen task, finds them empty and allocates its own), then put back.
fn with_bufs<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    let (mut a, mut b) = BUFS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let r = f(&mut a, &mut b);
    BUFS.with(|c| *c.borrow_mut() = (a, b));
    r
}

/// C (m×n, row stride ldc) = [C +] A (m×k) · B (k×n) at `level` ≥ 1, where B is either given packed
/// (`packed`: the panels starting at this tile's first column, which is a multiple of NR) or packed here.
/// `accumulate`: add to C (β = 1) instead of overwriting it.
///
/// # Safety
/// a has m rows and k columns, b (when `packed` is None) k rows and n columns, c has m rows of n
/// writable floats at stride ldc that nothing else accesses meanwhile; `level` ≤ the CPU's `isa()`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    level: Isa,
    (m, k, n): (usize, usize, usize),
    a: View,
    b: View,
    packed: Option<(&[f32], usize)>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(level >= 1 && level <= crate::ops::simd::isa());
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (mr, nr) = tile_dims(level);
    with_bufs(|abuf, bbuf| {
        // B's panels: shared (with their k) or packed into this thread's buffer
        let (bp, bk): (&[f32], usize) = match packed {
            Some(p) => p,
            None => {
                let len = k * n.div_ceil(nr) * nr;
                let off = aligned(bbuf, len);
                // (not parallel: no interrupt check, so this cannot fail)
                let _ = pack_b_into(b, k, n, nr, &mut bbuf[off..off + len], false);
                (&bbuf[off..off + len], k)
            }
        };
        let (kcb, mcb, ncb) = (KC, MC, NC);
        let a_len = mcb.min(m.div_ceil(mr) * mr) * kcb.min(k);
        let aoff = aligned(abuf, a_len);
        let ablk = &mut abuf[aoff..aoff + a_len];
        for pc in (0..k).step_by(kcb) {
            let kc = kcb.min(k - pc);
            let add = accumulate || pc > 0;
            for ic in (0..m).step_by(mcb) {
                let mc = mcb.min(m - ic);
                // SAFETY: rows ic.., terms pc.. lie inside a.
                let av = View { ptr: unsafe { a.ptr.add(ic * a.rs + pc * a.cs) }, ..a };
                // A is read in place when one of its strides is 1 (packing would cost as much as the
                // products when n is small); only a ragged last panel, or other strides, get packed
                // (but packed when the other stride is a multiple of 4 KB, so the panel's rows would all
                // fall into one L1 set, and n is large enough to repay the packing: measured at 2048²)
                let aliased = |stride: usize| stride % 1024 == 0 && n >= 1024;
                let direct = a.rs == 1 && !aliased(a.cs) || a.cs == 1 && !aliased(a.rs);
                let full = mc / mr;
                if !direct {
                    pack_a(av, mc, kc, mr, ablk);
                } else if mc % mr != 0 {
                    // SAFETY: row full·mr.. of this block lies inside a.
                    let edge = View { ptr: unsafe { av.ptr.add(full * mr * a.rs) }, ..a };
                    pack_a(edge, mc - full * mr, kc, mr, &mut ablk[full * kc * mr..]);
                }
                // an A panel (kc·MR floats) stays in L1 while the B panels of an NC block (in L2) pass it
                for jc in (0..n).step_by(ncb) {
                    let nc = ncb.min(n - jc);
                    for ip in 0..mc.div_ceil(mr) {
                        let rows = mr.min(mc - ip * mr);
                        let apanel = if direct && ip < full {
                            // SAFETY: rows ip·mr.. of the block lie inside a.
                            let ptr = unsafe { av.ptr.add(ip * mr * a.rs) };
                            if a.rs == 1 { APanel::Cols(ptr, a.cs) } else { APanel::Rows(ptr, a.rs) }
                        } else {
                            APanel::Cols(ablk[ip * kc * mr..].as_ptr(), mr)
                        };
                        for jp in jc / nr..(jc + nc).div_ceil(nr) {
                            let cols = nr.min(n - jp * nr);
                            let bpanel = bp[jp * bk * nr + pc * nr..].as_ptr();
                            // SAFETY: the micro-tile lies inside C; panels hold kc·mr / kc·nr floats.
                            unsafe {
                                let cp = c.add((ic + ip * mr) * ldc + jp * nr);
                                micro(level, kc, apanel, bpanel, (cp, ldc, rows, cols), add);
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Where a micro-kernel reads its MR rows of A: `Cols(p, s)`: the MR values of term q are contiguous at
/// p + q·s (a packed panel, s = MR, or Aᵀ read in place); `Rows(p, s)`: row i is contiguous at p + i·s.
#[derive(Clone, Copy)]
enum APanel {
    Cols(*const f32, usize),
    Rows(*const f32, usize),
}

/// The C side of a micro-tile: its first element, row stride, and how many of its MR rows and NR
/// columns lie inside C (fewer at the matrix's edges; the rest are computed and dropped).
type CTile = (*mut f32, usize, usize, usize);

/// One micro-tile at `level`.
///
/// # Safety
/// As `gemm`; a holds kc terms of MR rows, b kc·NR (its rows NR apart), c the tile's rows × cols at
/// stride ldc.
#[inline]
unsafe fn micro(level: Isa, kc: usize, a: APanel, b: *const f32, c: CTile, add: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `level` was checked against the CPU's features by the caller.
    unsafe {
        match (level >= 2, a) {
            (true, APanel::Cols(p, s)) => micro_avx512::<true>(kc, p, s, b, c, add),
            (true, APanel::Rows(p, s)) => micro_avx512::<false>(kc, p, s, b, c, add),
            (false, APanel::Cols(p, s)) => micro_avx2::<true>(kc, p, s, b, c, add),
            (false, APanel::Rows(p, s)) => micro_avx2::<false>(kc, p, s, b, c, add),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (level, kc, a, b, c, add);
        unreachable!("the own kernels are x86-64 only");
    }
}

/// 12 rows × 32 columns: 24 zmm accumulators; per term two loads of B and twelve broadcasts of A.
/// Each C element is `acc` or, when `add`, `C + acc` (a masked store at the edges).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn micro_avx512<const COLS: bool>(kc: usize, a: *const f32, s: usize, b: *const f32, c: CTile, add: bool) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    let (c, ldc, rows, cols) = c;
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    // SAFETY: reads stay inside the panels (kc terms), writes inside the C micro-tile.
    unsafe {
        // the C rows are needed only at the end: start fetching them now
        for i in 0..MR {
            if i < rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 16) as *const i8);
            }
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for i in 0..MR {
                let ai = _mm512_set1_ps(*a.add(if COLS { i } else { i * s }));
                lo[i] = _mm512_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm512_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(if COLS { s } else { 1 });
            b = b.add(32);
        }
        if rows == MR && cols == 32 {
            for i in 0..MR {
                let row = c.add(i * ldc);
                let (mut x, mut y) = (lo[i], hi[i]);
                if add {
                    x = _mm512_add_ps(_mm512_loadu_ps(row), x);
                    y = _mm512_add_ps(_mm512_loadu_ps(row.add(16)), y);
                }
                _mm512_storeu_ps(row, x);
                _mm512_storeu_ps(row.add(16), y);
            }
        } else {
            let m0 = ((1u32 << cols.min(16)) - 1) as __mmask16;
            let m1 = ((1u32 << cols.saturating_sub(16)) - 1) as __mmask16;
            for i in 0..MR {
                if i < rows {
                    let row = c.add(i * ldc);
                    let (mut x, mut y) = (lo[i], hi[i]);
                    if add {
                        x = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), x);
                        y = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), y);
                    }
                    _mm512_mask_storeu_ps(row, m0, x);
                    _mm512_mask_storeu_ps(row.add(16), m1, y);
                }
            }
        }
    }
}

/// 6 rows × 16 columns: 12 ymm accumulators; per term two loads of B and six broadcasts of A.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2<const COLS: bool>(kc: usize, a: *const f32, s: usize, b: *const f32, c: CTile, add: bool) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    let (c, ldc, rows, cols) = c;
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    // SAFETY: as in `micro_avx512`.
    unsafe {
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(if COLS { i } else { i * s }));
                lo[i] = _mm256_fmadd_ps(ai, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(ai, b1, hi[i]);
            }
            a = a.add(if COLS { s } else { 1 });
            b = b.add(16);
        }
        if rows == MR && cols == 16 {
            for i in 0..MR {
                let row = c.add(i * ldc);
                let (mut x, mut y) = (lo[i], hi[i]);
                if add {
                    x = _mm256_add_ps(_mm256_loadu_ps(row), x);
                    y = _mm256_add_ps(_mm256_loadu_ps(row.add(8)), y);
                }
                _mm256_storeu_ps(row, x);
                _mm256_storeu_ps(row.add(8), y);
            }
        } else {
            // lane l of the two halves is inside C when l < cols (resp. l + 8 < cols)
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32), lanes);
            let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols as i32 - 8), lanes);
            for i in 0..MR {
                if i < rows {
                    let row = c.add(i * ldc);
                    let (mut x, mut y) = (lo[i], hi[i]);
                    if add {
                        x = _mm256_add_ps(_mm256_maskload_ps(row, m0), x);
                        y = _mm256_add_ps(_mm256_maskload_ps(row.add(8), m1), y);
                    }
                    _mm256_maskstore_ps(row, m0, x);
                    _mm256_maskstore_ps(row.add(8), m1, y);
                }
            }
        }
    }
}

// ---- the FMA peak probe (for the benchmarks) ----

/// The fp32 FMA throughput of this CPU, in GFLOP/s summed over `threads` threads that each run
/// independent FMA chains (16 vectors, enough to cover the latency of two FMA pipes) for about
/// `seconds`, at the widest vector width the CPU has. Returns (GFLOP/s, the width used). The threads are
/// plain scoped threads (not the pool), started together; each times itself.
pub(crate) fn fma_peak(threads: usize, seconds: f64) -> (f64, &'static str) {
    let threads = threads.max(1);
    let level = crate::ops::simd::isa();
    let barrier = std::sync::Barrier::new(threads);
    let rates: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = std::time::Instant::now();
                    let mut flops = 0f64;
                    while start.elapsed().as_secs_f64() < seconds {
                        flops += fma_chains(level, 1 << 16);
                    }
                    flops / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
    });
    let name = match level {
        2 => "avx512 (16 lanes)",
        1 => "avx2 (8 lanes)",
        _ => "scalar",
    };
    (rates.iter().sum::<f64>() / 1e9, name)
}

/// `iters` rounds of 16 independent vector FMAs at `level`; returns the flops done.
fn fma_chains(level: Isa, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each is called only when `isa()` found its features.
        if level >= 2 {
            return unsafe { fma_chains_avx512(iters) };
        }
        if level == 1 {
            return unsafe { fma_chains_avx2(iters) };
        }
    }
    let _ = level;
    let mut acc = [1f32; 16];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (iters * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn fma_chains_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); 16];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    std::hint::black_box(acc);
    (iters * 16 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let (m, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); 16];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    std::hint::black_box(acc);
    (iters * 16 * 8 * 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::Rng;

    fn levels() -> Vec<Isa> {
        (1..=level()).collect()
    }

    /// A (rows × cols) matrix stored row-major or transposed (column-major), its values, and its View.
    fn mat(rng: &mut Rng, rows: usize, cols: usize, transposed: bool) -> (Vec<f32>, Vec<f64>, usize, usize) {
        let data: Vec<f32> = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let (rs, cs) = if transposed { (1, rows) } else { (cols, 1) };
        let vals = (0..rows * cols).map(|i| data[(i / cols) * rs + (i % cols) * cs] as f64).collect();
        (data, vals, rs, cs)
    }

    /// Every level's `gemm` against an f64 product (odd sizes, K across several KC blocks, k = 1, both
    /// operand layouts, B packed here or shared, overwrite and accumulate), and the levels against each
    /// other bit for bit.
    #[test]
    fn gemm_matches_f64_and_levels_agree_bitwise() {
        let mut rng = Rng::new(21);
        let shapes = [(1, 1, 1), (5, 1, 7), (13, 3, 33), (12, 256, 32), (37, 257, 65), (70, 600, 50), (2, 9, 131)];
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (ad, av, ars, acs) = mat(&mut rng, m, k, ta);
                let (bd, bv, brs, bcs) = mat(&mut rng, k, n, tb);
                let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
                let mut bits: Vec<Vec<u32>> = Vec::new();
                for lvl in levels() {
                    for (accumulate, shared) in [(false, false), (true, false), (false, true), (true, true)] {
                        let a = View { ptr: ad.as_ptr(), rs: ars, cs: acs };
                        let b = View { ptr: bd.as_ptr(), rs: brs, cs: bcs };
                        let packed = shared.then(|| pack_b(lvl, b, k, n, true, Vec::new()).unwrap());
                        let mut c = c0.clone();
                        // SAFETY: the views match their buffers, c is m × n, lvl <= level().
                        unsafe {
                            gemm(
                                lvl,
                                (m, k, n),
                                a,
                                b,
                                packed.as_ref().map(|p| (p.panels(), p.k)),
                                c.as_mut_ptr(),
                                n,
                                accumulate,
                            )
                        };
                        let mut worst = 0f64;
                        for i in 0..m {
                            for j in 0..n {
                                let dot: f64 = (0..k).map(|q| av[i * k + q] * bv[q * n + j]).sum();
                                let want = dot + if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                                worst = worst.max((c[i * n + j] as f64 - want).abs() / (1.0 + want.abs()));
                            }
                        }
                        let tol = 2e-6 * (k as f64).sqrt() * 4.0;
                        assert!(
                            worst <= tol,
                            "level {lvl}, ({m}, {k}) @ ({k}, {n}), transposed {ta}/{tb}, accumulate {accumulate}, \
                             shared B {shared}: off by {worst:.2e} (tolerance {tol:.1e})"
                        );
                        if !accumulate {
                            bits.push(c.iter().map(|v| v.to_bits()).collect());
                        }
                    }
                }
                // shared or local packing, AVX2 or AVX-512: the same bits
                for (q, b) in bits.iter().enumerate().skip(1) {
                    let diff = b.iter().zip(&bits[0]).position(|(x, y)| x != y);
                    assert!(diff.is_none(), "({m}, {k}, {n}) {ta}/{tb}: run {q} differs from run 0 at {diff:?}");
                }
            }
        }
    }

    #[test]
    fn fma_probe_measures_something() {
        let (gf, width) = fma_peak(1, 0.01);
        assert!(gf > 0.1 && gf.is_finite(), "{gf} GFLOP/s ({width})");
    }
}
