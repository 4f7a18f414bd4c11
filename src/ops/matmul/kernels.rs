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
        store_tile_512(&lo, &hi, (c, ldc, rows, cols), add);
    }
}

/// Write a 12 × 32 block of accumulators (`lo`: columns 0..16, `hi`: 16..32 of each row) to the C
/// micro-tile: `acc` or, when `add`, `C + acc`; masked stores for a ragged edge (rows < 12 or cols < 32).
/// Shared by the f32 and bf16 AVX-512 kernels.
///
/// # Safety
/// `c` points to rows × cols writable floats at row stride ldc that nothing else accesses meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile_512(
    lo: &[std::arch::x86_64::__m512; 12],
    hi: &[std::arch::x86_64::__m512; 12],
    (c, ldc, rows, cols): CTile,
    add: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    // SAFETY: the caller's contract; every store stays inside the rows × cols tile.
    unsafe {
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

// ---- the bf16 GEMM (AVX512-BF16): operands rounded to bf16 while packing, f32 accumulation ----
//
// Both operands are packed as bf16 PAIRS: a 32-bit word holds the values of two consecutive terms
// (k = 2p in its low half, 2p + 1 in its high half; a zero pairs an odd K's last term). `_mm512_dpbf16_ps`
// multiplies 16 such pairs of A and B lane by lane and adds both products to an f32 accumulator, so a
// micro-kernel works like the f32 one over K/2 pair-terms. The packed words live in the same f32
// buffers as the f32 panels (as raw bits), so `PackedB` and the thread-local buffers serve both; a
// packed bf16 B's `k` counts pairs. Bits: as the f32 GEMM (one accumulator per output element over a
// block of `KC_BF16` terms, then C = acc or C + acc), so they depend on the shapes alone, never on the
// tiling or thread count. The rounding (f32 -> bf16, to nearest even, NaN kept quiet) is the same integer
// arithmetic in the scalar and the vector packers.

/// K terms per block of the bf16 GEMM (an A panel of KC_BF16/2 pairs × 12 rows = 12 KB stays in L1).
pub(super) const KC_BF16: usize = 512;

/// Whether matmul can run in bf16 here: the AVX-512 level (`level()`, so `NANOFRONTIER_MATMUL_ISA=avx2`
/// or `portable` answers no) on a CPU with AVX512-BF16 (detected at run time).
pub(crate) fn bf16_supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            level() >= 2 && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// f32 -> bf16 bits, rounded to nearest even; a NaN stays a (quiet) NaN.
pub(super) fn to_bf16(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        return (b >> 16) | 0x40;
    }
    b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16
}

/// The value of a bf16 (bits in the low half).
#[cfg_attr(not(test), allow(dead_code))]
pub(super) fn from_bf16(h: u32) -> f32 {
    f32::from_bits(h << 16)
}

/// dst[i] = `to_bf16(src[i])` for every i (16 at a time on AVX-512): the bf16 copy of a weight that a
/// decode step reads (`dots`). Lengths must match.
pub(super) fn round_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "round_bf16: lengths");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::ops::simd::isa() >= 2 {
        // SAFETY: the CPU has AVX-512F.
        done = unsafe { round_bf16_avx512(src, dst) };
    }
    for (d, &s) in dst[done..].iter_mut().zip(&src[done..]) {
        *d = to_bf16(s) as u16;
    }
}

/// `round_bf16` on the whole groups of 16; returns how many values it rounded.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_bf16_avx512(src: &[f32], dst: &mut [u16]) -> usize {
    use std::arch::x86_64::*;
    let full = src.len().min(dst.len()) / 16 * 16;
    // SAFETY: i + 16 <= full, inside both slices.
    unsafe {
        for i in (0..full).step_by(16) {
            let h = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_loadu_ps(src.as_ptr().add(i))));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
        }
    }
    full
}

/// `to_bf16` on 16 lanes: each u32 lane gets the bf16 bits in its low half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn bf16_lanes(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))));
    let abs = _mm512_and_si512(b, _mm512_set1_epi32(0x7FFF_FFFF));
    let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    _mm512_mask_blend_epi32(nan, rounded, quiet)
}

/// Pack one bf16 panel: `dst[p·w + j]` = the pair (src(j, 2p), src(j, 2p + 1)) for p < k.div_ceil(2),
/// j < w, where src(j, kk) is at `ptr + j·js + kk·ks` for j < cols, kk < k, and 0 elsewhere (padding
/// columns, an odd K's missing last term). The layout of `pack_panel` with term pairs for terms.
///
/// # Safety
/// Every src(j, kk) for j < cols, kk < k is readable; dst holds k.div_ceil(2)·w words; w ≤ 32; the CPU
/// has AVX-512F.
unsafe fn pack_panel_bf16(p: *const f32, js: usize, ks: usize, cols: usize, k: usize, w: usize, dst: &mut [f32]) {
    let k2 = k.div_ceil(2);
    debug_assert!(cols <= w && w <= 32 && dst.len() >= k2 * w);
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: as this function's contract.
        if js == 1 {
            return unsafe { pack_bf16_rows(p, ks, cols, k, w, dst) };
        }
        if ks == 1 {
            return unsafe { pack_bf16_cols(p, js, cols, k, w, dst) };
        }
    }
    for kp in 0..k2 {
        for j in 0..w {
            let at = |kk: usize| {
                // SAFETY: j < cols and kk < k (the caller's contract).
                if j < cols && kk < k { to_bf16(unsafe { *p.add(j * js + kk * ks) }) } else { 0 }
            };
            dst[kp * w + j] = f32::from_bits(at(2 * kp) | at(2 * kp + 1) << 16);
        }
    }
}

/// `pack_panel_bf16` for js = 1: the cols values of each term are contiguous; two terms' rows are loaded
/// (masked past cols), rounded, and interleaved into one row of words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bf16_rows(p: *const f32, ks: usize, cols: usize, k: usize, w: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = dst.as_mut_ptr();
    let lanes = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
    let (l0, l1) = (lanes(cols), lanes(cols.saturating_sub(16)));
    let (w0, w1) = (lanes(w), lanes(w.saturating_sub(16)));
    // SAFETY: reads the cols values of terms < k (the caller's contract); writes k2·w words of dst.
    unsafe {
        for kp in 0..k.div_ceil(2) {
            let lo = p.add(2 * kp * ks);
            let (a0, a1) = (_mm512_maskz_loadu_ps(l0, lo), _mm512_maskz_loadu_ps(l1, lo.add(16)));
            let (b0, b1) = if 2 * kp + 1 < k {
                let hi = lo.add(ks);
                (_mm512_maskz_loadu_ps(l0, hi), _mm512_maskz_loadu_ps(l1, hi.add(16)))
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            let x0 = _mm512_or_si512(bf16_lanes(a0), _mm512_slli_epi32::<16>(bf16_lanes(b0)));
            let x1 = _mm512_or_si512(bf16_lanes(a1), _mm512_slli_epi32::<16>(bf16_lanes(b1)));
            let o = d.add(kp * w);
            _mm512_mask_storeu_epi32(o as *mut i32, w0, x0);
            if w > 16 {
                _mm512_mask_storeu_epi32(o.add(16) as *mut i32, w1, x1);
            }
        }
    }
}

/// `pack_panel_bf16` for ks = 1: each of the cols vectors is contiguous along k; 32 terms at a time are
/// rounded and narrowed to 16 pair words (their order in memory), then stored down the panel's column.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bf16_cols(p: *const f32, js: usize, cols: usize, k: usize, w: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let k2 = k.div_ceil(2);
    let d = dst.as_mut_ptr() as *mut u32;
    let mut words = [0u32; 16];
    // SAFETY: reads terms < k of the vectors j < cols (the caller's contract); writes k2·w words of dst.
    unsafe {
        for j in 0..cols {
            let src = p.add(j * js);
            for kk in (0..k).step_by(32) {
                let rest = k - kk;
                let m0 = ((1u32 << rest.min(16)) - 1) as __mmask16;
                let m1 = ((1u32 << rest.saturating_sub(16).min(16)) - 1) as __mmask16;
                let v0 = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m0, src.add(kk))));
                let v1 = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m1, src.add(kk + 16))));
                _mm256_storeu_si256(words.as_mut_ptr() as *mut __m256i, v0);
                _mm256_storeu_si256(words.as_mut_ptr().add(8) as *mut __m256i, v1);
                let kp0 = kk / 2;
                for (t, &wd) in words.iter().enumerate().take((k2 - kp0).min(16)) {
                    *d.add((kp0 + t) * w + j) = wd;
                }
            }
        }
        for kp in 0..k2 {
            for j in cols..w {
                *d.add(kp * w + j) = 0;
            }
        }
    }
}

/// One row of A, contiguous along k, as k.div_ceil(2) pair words at `dst` (32 terms per step: rounded and
/// narrowed to 16 words in memory order; masked at K's tail, an odd K's last pair zero-padded).
///
/// # Safety
/// `p[0..k]` is readable, dst holds k.div_ceil(2) words, the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bf16_row_pairs(p: *const f32, k: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let k2 = k.div_ceil(2);
    debug_assert!(dst.len() >= k2);
    let d = dst.as_mut_ptr() as *mut i32;
    // SAFETY: reads p[kk..kk + 32] masked to k; writes words < k2 of dst.
    unsafe {
        for kk in (0..k).step_by(32) {
            let rest = k - kk;
            let m0 = ((1u32 << rest.min(16)) - 1) as __mmask16;
            let m1 = ((1u32 << rest.saturating_sub(16).min(16)) - 1) as __mmask16;
            let v0 = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m0, p.add(kk))));
            let v1 = _mm512_cvtepi32_epi16(bf16_lanes(_mm512_maskz_loadu_ps(m1, p.add(kk + 16))));
            let words = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1);
            let n = (k2 - kk / 2).min(16);
            _mm512_mask_storeu_epi32(d.add(kk / 2), ((1u32 << n) - 1) as __mmask16, words);
        }
    }
}

/// A block of A whose rows are contiguous (A = dYᵀ in a linear layer's dW: element (r, kk) at
/// `p + r + kk·ks`) packed in bf16 pairs into `rows.div_ceil(12)` panels of 12 rows (`pack_panel_bf16`'s
/// layout: panel q, pair t, row i at `dst[q·pairs·12 + t·12 + i]`, zero past `rows` and past `terms`).
/// Term pair by term pair across the whole block, so the block's values of a term are read as one
/// contiguous run (12 rows, 48 bytes, at a time), where packing panel by panel jumped `ks` floats (6 KB
/// for dW) every 12 values; each 12-row load is rounded once (no half-empty second vector).
///
/// # Safety
/// `p + r + kk·ks` is readable for r < rows, kk < terms; dst holds rows.div_ceil(12)·pairs·12 words with
/// pairs = terms.div_ceil(2); the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_bf16_block_cols(p: *const f32, ks: usize, rows: usize, terms: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    let pairs = terms.div_ceil(2);
    let panels = rows.div_ceil(MR);
    debug_assert!(dst.len() >= panels * pairs * MR);
    let d = dst.as_mut_ptr() as *mut i32;
    let full = ((1u32 << MR) - 1) as __mmask16;
    // SAFETY: reads rows < `rows` of terms < `terms` (the caller's contract); writes inside dst.
    unsafe {
        for t in 0..pairs {
            let (lo, has_hi) = (p.add(2 * t * ks), 2 * t + 1 < terms);
            for q in 0..panels {
                let m = ((1u32 << (rows - q * MR).min(MR)) - 1) as __mmask16;
                let a = _mm512_maskz_loadu_ps(m, lo.add(q * MR));
                let b = if has_hi { _mm512_maskz_loadu_ps(m, lo.add(ks + q * MR)) } else { _mm512_setzero_ps() };
                let x = _mm512_or_si512(bf16_lanes(a), _mm512_slli_epi32::<16>(bf16_lanes(b)));
                _mm512_mask_storeu_epi32(d.add(q * pairs * MR + t * MR), full, x);
            }
        }
    }
}

/// B (k×n) packed in bf16 pairs for every tile of a product (`PackedB::k` = k.div_ceil(2) pairs).
/// Errors: `Interrupted` (Ctrl-C) while packing a large B.
pub(super) fn pack_b_bf16(b: View, k: usize, n: usize, parallel: bool, mut reuse: Vec<f32>) -> Result<PackedB> {
    let (nr, k2) = (32, k.div_ceil(2));
    let len = k2 * n.div_ceil(nr) * nr;
    let off = aligned(&mut reuse, len);
    pack_b_bf16_into(b, k, n, &mut reuse[off..off + len], parallel)?;
    Ok(PackedB { buf: reuse, off, k: k2, nr })
}

fn pack_b_bf16_into(b: View, k: usize, n: usize, panels: &mut [f32], parallel: bool) -> Result<()> {
    let nr = 32;
    let pack_one = |b: View, p: usize, dst: &mut [f32]| {
        let c0 = p * nr;
        // SAFETY: callers guarantee b has k rows and n columns, and AVX-512; c0 < n.
        unsafe { pack_panel_bf16(b.ptr.add(c0 * b.cs), b.cs, b.rs, nr.min(n - c0), k, nr, dst) };
    };
    let panel_len = k.div_ceil(2) * nr;
    let count = n.div_ceil(nr);
    let panels = &mut panels[..count * panel_len];
    if parallel && count > 1 {
        use rayon::prelude::*;
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

/// C (m×n, row stride ldc) = [C +] bf16(A) (m×k) · bf16(B) (k×n), accumulated in f32: the bf16 twin of
/// `gemm` (12×32 micro-tiles on `_mm512_dpbf16_ps`). `packed`: B's bf16 panels from this tile's first
/// column on, with their pair count; else B is packed here. A is always packed (rounded) per block: row
/// by row when it is contiguous along k (vector stores only), the whole block at once when its rows are
/// contiguous (dW's dYᵀ: `pack_bf16_block_cols`), else in MR-row panels.
///
/// # Safety
/// As `gemm`, and the CPU has AVX512-BF16 (`bf16_supported()`).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_bf16(
    (m, k, n): (usize, usize, usize),
    a: View,
    b: View,
    packed: Option<(&[f32], usize)>,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(bf16_supported());
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let (mr, nr) = (12, 32);
    let k2 = k.div_ceil(2);
    with_bufs(|abuf, bbuf| {
        let (bp, bk2): (&[f32], usize) = match packed {
            Some(p) => p,
            None => {
                let len = k2 * n.div_ceil(nr) * nr;
                let off = aligned(bbuf, len);
                // (not parallel: no interrupt check, so this cannot fail)
                let _ = pack_b_bf16_into(b, k, n, &mut bbuf[off..off + len], false);
                (&bbuf[off..off + len], k2)
            }
        };
        let kcp = KC_BF16 / 2;
        // A row-major (contiguous along k): packed row by row (micro-kernel reads rows `pairs` apart);
        // else in the panel layout (each pair-term's MR words contiguous)
        let by_rows = a.cs == 1 && cfg!(target_arch = "x86_64");
        // A's rows contiguous (dW's dYᵀ): a whole block packed at once, term pair by term pair
        let by_block = !by_rows && a.rs == 1 && cfg!(target_arch = "x86_64");
        let a_len = MC.min(m.div_ceil(mr) * mr) * kcp.min(k2);
        let aoff = aligned(abuf, a_len);
        let ablk = &mut abuf[aoff..aoff + a_len];
        for pc in (0..k2).step_by(kcp) {
            let pairs = kcp.min(k2 - pc);
            let terms = (k - 2 * pc).min(2 * pairs);
            let add = accumulate || pc > 0;
            // pack A's panel ip of the block at rows ic.. (its source prefetched while the previous
            // panel's micro-tiles ran: a large A comes from memory, and packing it in a pass of its own
            // measured ~15% of a K = 1536, N = 384 product)
            let pack = |ablk: &mut [f32], ic: usize, ip: usize| {
                let r0 = ic + ip * mr;
                if by_rows {
                    // each row's pairs contiguous (row stride `pairs` words): vector stores only
                    let panel = &mut ablk[ip * pairs * mr..(ip + 1) * pairs * mr];
                    for (r, row) in panel.chunks_mut(pairs).enumerate() {
                        if r0 + r < m {
                            // SAFETY: row r0 + r, terms 2·pc..2·pc + terms lie inside a; AVX-512.
                            #[cfg(target_arch = "x86_64")]
                            unsafe {
                                pack_bf16_row_pairs(a.ptr.add((r0 + r) * a.rs + 2 * pc), terms, row)
                            };
                        } else {
                            row.fill(0.0);
                        }
                    }
                    return;
                }
                // SAFETY: rows r0.., terms 2·pc.. lie inside a; AVX-512 (the caller's contract).
                unsafe {
                    pack_panel_bf16(
                        a.ptr.add(r0 * a.rs + 2 * pc * a.cs),
                        a.rs,
                        a.cs,
                        mr.min(m - r0),
                        terms,
                        mr,
                        &mut ablk[ip * pairs * mr..],
                    )
                };
            };
            // fetch the source of the panel at rows r0.. into L2 (a hint: no effect on results)
            let prefetch = |r0: usize| {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
                    let rows = mr.min(m - r0);
                    // SAFETY: every address is an element of a (rows r0.., terms 2·pc.. inside it).
                    unsafe {
                        if a.cs == 1 {
                            for r in 0..rows {
                                let row = a.ptr.add((r0 + r) * a.rs + 2 * pc);
                                for t in (0..terms).step_by(16) {
                                    _mm_prefetch::<_MM_HINT_T1>(row.add(t) as *const i8);
                                }
                            }
                        } else if a.rs == 1 {
                            let p = a.ptr.add(r0 + 2 * pc * a.cs);
                            for t in 0..terms {
                                _mm_prefetch::<_MM_HINT_T1>(p.add(t * a.cs) as *const i8);
                                _mm_prefetch::<_MM_HINT_T1>(p.add(t * a.cs + rows - 1) as *const i8);
                            }
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = r0;
            };
            // share `part` of `parts` of the terms t0..t0 + terms of rows r0..r0 + rows of an A whose rows
            // are contiguous (by_block), fetched into L2 (a hint: no effect on results)
            let prefetch_rows = |r0: usize, rows: usize, t0: usize, terms: usize, part: usize, parts: usize| {
                #[cfg(target_arch = "x86_64")]
                {
                    use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
                    let per = terms.div_ceil(parts);
                    // SAFETY: every address is an element of a (rows r0.., terms t0.. inside it).
                    unsafe {
                        for t in (part * per).min(terms)..((part + 1) * per).min(terms) {
                            let run = a.ptr.add(r0 + (t0 + t) * a.cs);
                            for r in (0..rows).step_by(16) {
                                _mm_prefetch::<_MM_HINT_T1>(run.add(r) as *const i8);
                            }
                            _mm_prefetch::<_MM_HINT_T1>(run.add(rows - 1) as *const i8);
                        }
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (r0, rows, t0, terms, part, parts);
            };
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                for jc in (0..n).step_by(NC) {
                    let nc = NC.min(n - jc);
                    for ip in 0..mc.div_ceil(mr) {
                        let rows = mr.min(mc - ip * mr);
                        if jc == 0 && by_block {
                            if ip == 0 {
                                // SAFETY: rows ic..ic + mc, terms 2·pc..2·pc + terms lie inside a; AVX-512.
                                #[cfg(target_arch = "x86_64")]
                                unsafe {
                                    pack_bf16_block_cols(a.ptr.add(ic + 2 * pc * a.cs), a.cs, mc, terms, ablk)
                                };
                            }
                            // the next block's source into L2, a share per panel, while this block computes
                            // (dW's dYᵀ comes from memory: waiting for it was most of its packing time)
                            let (nic, npc) = if ic + MC < m { (ic + MC, pc) } else { (0, pc + kcp) };
                            if npc < k2 {
                                prefetch_rows(
                                    nic,
                                    MC.min(m - nic),
                                    2 * npc,
                                    (k - 2 * npc).min(KC_BF16),
                                    ip,
                                    mc.div_ceil(mr),
                                );
                            }
                        } else if jc == 0 {
                            pack(ablk, ic, ip);
                            if ip + 1 < mc.div_ceil(mr) {
                                prefetch(ic + (ip + 1) * mr);
                            }
                        }
                        let apanel = ablk[ip * pairs * mr..].as_ptr();
                        for jp in jc / nr..(jc + nc).div_ceil(nr) {
                            let cols = nr.min(n - jp * nr);
                            let bpanel = bp[jp * bk2 * nr + pc * nr..].as_ptr();
                            // SAFETY: the micro-tile lies inside C; panels hold pairs·mr / pairs·nr words.
                            #[cfg(target_arch = "x86_64")]
                            unsafe {
                                let cp = c.add((ic + ip * mr) * ldc + jp * nr);
                                if by_rows {
                                    micro_bf16::<false>(pairs, apanel, pairs, bpanel, (cp, ldc, rows, cols), add);
                                } else {
                                    micro_bf16::<true>(pairs, apanel, mr, bpanel, (cp, ldc, rows, cols), add);
                                }
                            }
                            #[cfg(not(target_arch = "x86_64"))]
                            let _ = (apanel, bpanel, rows, cols, add);
                        }
                    }
                }
            }
        }
    });
}

/// 12 rows × 32 columns of bf16 pairs: 24 zmm accumulators; per pair-term two loads of B and twelve
/// broadcasts of an A pair, each feeding two `vdpbf16ps`. A's pair p of row i is at `a + p·MR + i`
/// (`COLS`, a panel) or `a + i·s + p` (rows `s` words apart). Stores as `micro_avx512`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_bf16<const COLS: bool>(pairs: usize, a: *const f32, s: usize, b: *const f32, c: CTile, add: bool) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    let (c, ldc, rows, cols) = c;
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    // SAFETY: reads stay inside the panels (pairs words per row/column), writes inside the C micro-tile.
    unsafe {
        for i in 0..MR {
            if i < rows {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 16) as *const i8);
            }
        }
        let (mut a, mut b) = (a as *const i32, b);
        for _ in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_ps(b));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_ps(b.add(16)));
            for i in 0..MR {
                let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(if COLS { i } else { i * s })));
                lo[i] = _mm512_dpbf16_ps(lo[i], ai, b0);
                hi[i] = _mm512_dpbf16_ps(hi[i], ai, b1);
            }
            a = a.add(if COLS { MR } else { 1 });
            b = b.add(32);
        }
        store_tile_512(&lo, &hi, (c, ldc, rows, cols), add);
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

    /// The bf16 copy of a weight (`round_bf16`, 16 lanes at a time where the CPU has AVX-512, the tail
    /// scalar) is `to_bf16` of every value: ties to even, NaN quiet, infinities and subnormals kept.
    #[test]
    fn round_bf16_is_to_bf16_of_every_value() {
        let one = 1.0f32.to_bits();
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::from_bits(one + 0x8000),  // 1 + 2⁻⁸: a tie, to even (1)
            f32::from_bits(one + 0x18000), // 1 + 3·2⁻⁸: a tie, to even (1 + 2⁻⁶)
            f32::from_bits(0x7F7F_FFFF),   // rounds up to infinity
            f32::from_bits(0x7FA0_0000),   // a signalling NaN becomes quiet
        ];
        let mut rng = crate::tensor::random::Rng::new(2);
        for len in [0, 1, 15, 16, 17, 33, 100] {
            let mut src: Vec<f32> = (0..len).map(|_| rng.normal() as f32).collect();
            for (i, &v) in specials.iter().enumerate() {
                if i < len {
                    src[(i * 7) % len] = v;
                }
            }
            let mut dst = vec![0u16; len];
            round_bf16(&src, &mut dst);
            for (i, (&d, &s)) in dst.iter().zip(&src).enumerate() {
                assert_eq!(u32::from(d), to_bf16(s), "len {len}, element {i} ({s:e})");
            }
        }
        assert_eq!(from_bf16(to_bf16(f32::from_bits(one + 0x8000))), 1.0);
        assert_eq!(from_bf16(to_bf16(f32::from_bits(one + 0x18000))), 1.0 + 2f32.powi(-6));
        assert!(from_bf16(to_bf16(f32::from_bits(0x7FA0_0000))).is_nan());
    }
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

    /// The bf16 rounding: exact on bf16 values, nearest-even on ties, NaN kept, and the vector packers
    /// (both layouts, masked edges, odd K) give the scalar packer's words.
    #[test]
    fn bf16_rounding_and_packers_agree() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie -> even (down)
        assert_eq!(to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie -> even (up)
        assert_eq!(to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(to_bf16(f32::INFINITY), 0x7F80);
        assert_eq!(to_bf16(f32::MAX), 0x7F80); // rounds up to infinity, as it should
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert!(from_bf16(to_bf16(f32::from_bits(0x7F80_0001))).is_nan());
        if !bf16_supported() {
            eprintln!("skipped the vector packers: no AVX512-BF16 here");
            return;
        }
        let mut rng = Rng::new(7);
        let mut specials = vec![0.0f32, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, -3e-39];
        specials.extend([0x3F80_8000u32, 0x3F81_8000, 0x7F7F_FFFF, 0xFFC0_0001].map(f32::from_bits));
        for (cols, k, w) in [(32, 7, 32), (5, 9, 32), (12, 33, 12), (7, 64, 12), (32, 70, 32), (1, 1, 32)] {
            let data: Vec<f32> = (0..cols * k)
                .map(|i| if i % 5 == 0 { specials[i / 5 % specials.len()] } else { rng.normal() as f32 })
                .collect();
            let k2 = k.div_ceil(2);
            // the same matrix read as (j, kk) at j·k + kk (ks = 1) and at kk·cols + j (js = 1)
            let tr: Vec<f32> = (0..cols * k).map(|i| data[(i % cols) * k + i / cols]).collect();
            let mut want = vec![0f32; k2 * w];
            let mut by_cols = vec![1f32; k2 * w];
            let mut by_rows = vec![1f32; k2 * w];
            for kp in 0..k2 {
                for j in 0..w {
                    let at = |kk: usize| if j < cols && kk < k { to_bf16(data[j * k + kk]) } else { 0 };
                    want[kp * w + j] = f32::from_bits(at(2 * kp) | at(2 * kp + 1) << 16);
                }
            }
            // SAFETY: both sources hold cols × k values, the destinations k2 · w words; AVX-512 checked.
            unsafe {
                pack_panel_bf16(data.as_ptr(), k, 1, cols, k, w, &mut by_cols);
                pack_panel_bf16(tr.as_ptr(), 1, cols, cols, k, w, &mut by_rows);
            }
            for (name, got) in [("ks = 1", &by_cols), ("js = 1", &by_rows)] {
                let bad = got.iter().zip(&want).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(bad.is_none(), "{name} packer, cols {cols}, k {k}, w {w}: word {bad:?} differs");
            }
        }
    }

    /// The dW block packer (rows contiguous, term pairs across the block) gives the panel layout's words:
    /// ragged last panel, odd K, a row stride with a gap, NaN and ties among the values.
    #[test]
    fn bf16_block_packer_gives_the_panel_words() {
        if !bf16_supported() {
            eprintln!("skipped: no AVX512-BF16 here");
            return;
        }
        let mut rng = Rng::new(8);
        for (rows, terms) in [(37usize, 9usize), (12, 1), (5, 33), (24, 70), (192, 512)] {
            let ks = rows + 3;
            let data: Vec<f32> = (0..ks * terms)
                .map(|i| match i % 7 {
                    0 => f32::from_bits(0x3F80_8000),
                    3 if i % 5 == 0 => f32::NAN,
                    _ => rng.normal() as f32,
                })
                .collect();
            let (pairs, panels) = (terms.div_ceil(2), rows.div_ceil(12));
            let mut got = vec![1f32; panels * pairs * 12];
            // SAFETY: data holds (r, kk) at r + kk·ks for r < rows, kk < terms; got has room; AVX-512 checked.
            unsafe { pack_bf16_block_cols(data.as_ptr(), ks, rows, terms, &mut got) };
            for q in 0..panels {
                for t in 0..pairs {
                    for i in 0..12 {
                        let r = q * 12 + i;
                        let at = |kk: usize| if r < rows && kk < terms { to_bf16(data[r + kk * ks]) } else { 0 };
                        let want = at(2 * t) | at(2 * t + 1) << 16;
                        let word = got[q * pairs * 12 + t * 12 + i].to_bits();
                        assert_eq!(word, want, "rows {rows}, terms {terms}: panel {q}, pair {t}, row {i}");
                    }
                }
            }
        }
    }

    /// The bf16 GEMM against an f64 product of the bf16-ROUNDED operands (odd sizes, K tails: odd K,
    /// K across several KC_BF16 blocks; all four layouts; B shared or packed here; overwrite and
    /// accumulate), against the f32 product within bf16's rounding, and shared / local packing bit for bit.
    #[test]
    fn bf16_gemm_matches_f64_of_rounded_inputs() {
        if !bf16_supported() {
            eprintln!("skipped: no AVX512-BF16 here");
            return;
        }
        let round = |v: f64| from_bf16(to_bf16(v as f32)) as f64;
        let mut rng = Rng::new(22);
        let shapes = [(1, 1, 1), (5, 1, 7), (13, 3, 33), (12, 512, 32), (37, 515, 65), (70, 1025, 50), (2, 9, 131)];
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (ad, av, ars, acs) = mat(&mut rng, m, k, ta);
                let (bd, bv, brs, bcs) = mat(&mut rng, k, n, tb);
                let c0: Vec<f32> = (0..m * n).map(|_| rng.normal() as f32).collect();
                let mut bits: Vec<Vec<u32>> = Vec::new();
                for (accumulate, shared) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = View { ptr: ad.as_ptr(), rs: ars, cs: acs };
                    let b = View { ptr: bd.as_ptr(), rs: brs, cs: bcs };
                    let packed = shared.then(|| pack_b_bf16(b, k, n, true, Vec::new()).unwrap());
                    let mut c = c0.clone();
                    // SAFETY: the views match their buffers, c is m × n, AVX512-BF16 checked.
                    unsafe {
                        gemm_bf16(
                            (m, k, n),
                            a,
                            b,
                            packed.as_ref().map(|p| (p.panels(), p.k)),
                            c.as_mut_ptr(),
                            n,
                            accumulate,
                        )
                    };
                    let (mut worst, mut worst32) = (0f64, 0f64);
                    for i in 0..m {
                        for j in 0..n {
                            let base = if accumulate { c0[i * n + j] as f64 } else { 0.0 };
                            let dot: f64 = (0..k).map(|q| round(av[i * k + q]) * round(bv[q * n + j])).sum();
                            let dot32: f64 = (0..k).map(|q| av[i * k + q] * bv[q * n + j]).sum();
                            let abs: f64 = (0..k).map(|q| (av[i * k + q] * bv[q * n + j]).abs()).sum();
                            let got = c[i * n + j] as f64;
                            worst = worst.max((got - dot - base).abs() / (1.0 + (dot + base).abs()));
                            // a product is off by ≤ 2^-7 of its size (two roundings by ≤ 2^-8, bf16's unit roundoff)
                            let bound = 2f64.powi(-7) * 1.01 * abs + 1e-5 * (k as f64).sqrt() * (1.0 + dot32.abs());
                            worst32 = worst32.max((got - dot32 - base).abs() / bound);
                        }
                    }
                    // f32 accumulation of exact products: the f32 GEMM's tolerance
                    let tol = 2e-6 * (k as f64).sqrt() * 4.0;
                    assert!(
                        worst <= tol,
                        "bf16 ({m}, {k}) @ ({k}, {n}), transposed {ta}/{tb}, accumulate {accumulate}, shared B \
                         {shared}: off from the rounded product by {worst:.2e} (tolerance {tol:.1e})"
                    );
                    assert!(
                        worst32 <= 1.0,
                        "bf16 ({m}, {k}, {n}) {ta}/{tb}: off from the f32 product by {worst32:.2} of the bound"
                    );
                    if !accumulate {
                        bits.push(c.iter().map(|v| v.to_bits()).collect());
                    }
                }
                let diff = bits[1].iter().zip(&bits[0]).position(|(x, y)| x != y);
                assert!(diff.is_none(), "bf16 ({m}, {k}, {n}) {ta}/{tb}: shared vs local B differ at {diff:?}");
            }
        }
    }

    #[test]
    fn fma_probe_measures_something() {
        let (gf, width) = fma_peak(1, 0.01);
        assert!(gf > 0.1 && gf.is_finite(), "{gf} GFLOP/s ({width})");
    }
}
