//! The engine under `matmul` and `linear`: one or many strided products summed into disjoint output
//! tiles (`Gemm`), cut by shape alone so results never depend on the thread count, plus the
//! matrix-vector form (`gemv`) a single output row or column takes. `kernels` holds the FMA GEMM itself.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::dots::{self, SMALL_M};
use super::kernels;
use crate::error::Result;
use crate::ops::simd::{Isa, dispatch_simd, dot, dot4};
use crate::parallel::{check_interrupt, install};
use crate::tensor::Tensor;

// ---- how the work is cut (work in flops = 2·rows·cols·k per product; nothing depends on the thread count) ----

/// matrixmultiply packs B in blocks of this many columns (its f32 `NC`), so cutting the output's
/// columns at multiples of it adds no packing work, while every cut of the rows re-packs B.
const NC: usize = 1024;
/// Products are cut into about this many tiles (when big enough): enough for 2+ threads to balance
/// even with steal time on a VM, few enough that each tile stays tall (little re-packing).
const TARGET_TILES: usize = 8;
/// Tiles are at least this many rows / columns (when the matrix has them). Each row cut re-packs the
/// tile's part of B: 64-row tiles cost ~10% on one core, 128-row tiles ~5%.
const MIN_TILE_ROWS: usize = 128;
const MIN_TILE_COLS: usize = 256;
/// At most this much work per tile (~10 ms on one core), so a group holds several tiles to balance.
const MAX_TILE_FLOPS: usize = 1 << 30;
/// Tiles per product (when big enough) when B is packed once and shared.
const SHARED_TILES: usize = 8;
/// Tile edges are multiples of this (matrixmultiply's AVX-512 micro-kernel is 16×16).
const ALIGN: usize = 16;
/// Below this much total work everything runs on the calling thread (a rayon fork costs microseconds).
pub(super) const SERIAL_FLOPS: usize = 1 << 21;
/// A single matrix-vector product (decode) streams its matrix through the caches: it is split over the
/// threads once the matrix is ≥ 512 KB (2·K·N flops ≥ this), since two cores stream about twice as fast as
/// one (measured here: 10 → 21 GB/s from memory); smaller ones, which live in cache and take a few µs,
/// stay on one thread (a hand-off costs more than they do: `examples/decode_gemv.rs`).
pub(super) const GEMV_SPLIT_FLOPS: usize = 1 << 18;
/// A `dots` product (a few rows times a weight read in place) is split over the threads from this much
/// work on (about 3 µs on one core).
const DOTS_SPLIT_FLOPS: usize = 1 << 19;
/// Tiles run in groups of about this much work (~45 ms on two cores); Ctrl-C is checked between groups.
const GROUP_FLOPS: usize = 1 << 33;

// ---- the engine: many strided sgemms into disjoint output tiles ----

/// A strided matrix operand: a matrix starting at `data[off]` has element (r, c) at `off + r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `out[j] = Σ_{(ao, bo) in terms of j} A(ao) · B(bo)` for every output matrix j, where A(ao) is the
/// (m, k) matrix of `a` starting at offset ao and B(bo) the (k, n) matrix of `b` at bo. `out` is
/// contiguous (count, m, n). Terms of one output are summed in their listed order (sgemm's β = 1), so
/// the gradient of a broadcast operand is summed without materialising the broadcast.
pub(super) struct Gemm<'a> {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) a: Strided<'a>,
    pub(super) b: Strided<'a>,
    /// Terms of output j are `terms[starts[j]..starts[j + 1]]` (CSR layout).
    pub(super) terms: Vec<(usize, usize)>,
    pub(super) starts: Vec<usize>,
    /// A row of n values added to every output row (Linear's bias), written into each tile just
    /// before its first product so the sum happens in the same pass (sgemm β = 1).
    pub(super) bias: Option<&'a [f32]>,
    /// Made inside `row_wise`: an x·Wᵀ product runs as per-row dot products (`dots`).
    row_wise: bool,
    /// Made inside a bf16 scope (`set_bf16`): the GEMM tiles run `kernels::gemm_bf16` (at the AVX-512
    /// level on a CPU with AVX512-BF16; matrix-vector products stay f32).
    bf16: bool,
    /// A row-wise product in a bf16 scope (`with_bf16_b`): B's elements as bf16 bits, at the offsets of
    /// `b.data`, which the dot products read instead (any number of rows, one too).
    b16: Option<&'a [u16]>,
}

/// One block of output rows r0..r0+rows and columns c0..c0+cols of output matrix `mat`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Tile {
    mat: usize,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
}

/// The output pointer, shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks only write through it to disjoint tiles of a buffer that outlives them (see `Gemm::run`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// The calling thread's buffer for a product's shared packed B (taken out while in use).
    static SHARED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Set while the calling thread is inside `row_wise`.
    static ROW_WISE: Cell<bool> = const { Cell::new(false) };
    /// The bf16 weight copies of the generate call this thread works for (`with_weight_copies`).
    static WEIGHT_COPIES: RefCell<Option<Arc<WeightCopies>>> = const { RefCell::new(None) };
}

/// Turn bf16 products on or off for the products this thread makes from now on (`nf.autocast`); returns
/// the previous setting. Errors: `Unsupported` when turning it on where `kernels::bf16_supported()` is
/// false (no AVX512-BF16, or a lower ISA forced by `NANOFRONTIER_MATMUL_ISA`).
pub(crate) fn set_bf16(on: bool) -> Result<bool> {
    if on && !kernels::bf16_supported() {
        return Err(crate::error::Error::value(
            "autocast",
            format!(
                "bf16 matmul needs a CPU with AVX512-BF16 and the AVX-512 GEMM path; this process runs {}{} \
                 (NANOFRONTIER_MATMUL_ISA={:?})",
                kernels::level_name(kernels::level()),
                if kernels::level() >= 2 { " and the CPU lacks AVX512-BF16" } else { "" },
                std::env::var("NANOFRONTIER_MATMUL_ISA").unwrap_or_default()
            ),
        ));
    }
    Ok(crate::runtime::replace_bf16_matmul(on))
}

/// Whether this thread's products run in bf16.
pub(crate) fn bf16_enabled() -> bool {
    crate::runtime::is_bf16_matmul()
}

/// Run `f` with this thread's bf16 setting `on` (restored after, also on panic): how a backward replays
/// its forward's setting and a pool task its caller's. `on` is only ever a setting `set_bf16` accepted.
pub(crate) fn with_bf16<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            crate::runtime::replace_bf16_matmul(self.0);
        }
    }
    let _restore = Restore(crate::runtime::replace_bf16_matmul(on));
    f()
}

/// Run `f` with every x·Wᵀ product it makes on this thread (`linear`, W as stored) computed row by row:
/// each output element is `simd::dot(x_r, w_o)` (`dots`; one row: `gemv`'s dot form, the same bits), W
/// read in place and never packed. A row's numbers then do not depend on how many rows come with it —
/// not only within one path, as with the GEMM, but across every row count — which is what a decode step
/// needs: a batch of rows, any share of it (`nf.rl.RayRollouts`) and each row alone give the same bits,
/// and a few rows skip packing W for every new token. Outside, products never take this path (so a
/// training step's bits do not depend on its batch having more or fewer than a few rows).
pub(crate) fn row_wise<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ROW_WISE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ROW_WISE.with(|c| c.replace(true)));
    f()
}

/// Whether an x·Wᵀ product made now reads W as bf16: inside `row_wise` in a bf16 scope (a decode step
/// under `nf.autocast("bf16")`; its prompt pass, outside `row_wise`, takes the bf16 GEMM instead).
pub(crate) fn row_wise_bf16() -> bool {
    ROW_WISE.with(Cell::get) && bf16_enabled()
}

/// The bf16 copies (`kernels::round_bf16`) of the weights one generate call's decode steps read, each
/// made on first use and then reused for every step and every group of rows of that call; dropped with
/// the call, so a later call (after an optimizer step changed the weights in place) makes fresh ones.
/// A copy is found by the weight's storage, which the entry keeps alive (so no other tensor can take
/// its address while the call runs).
#[derive(Default)]
pub(crate) struct WeightCopies {
    copies: Mutex<Vec<(Tensor, Arc<[u16]>)>>,
}

impl WeightCopies {
    /// How many weights have a copy.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.copies.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Values per task when a weight is rounded to bf16 on the threads.
const ROUND_CHUNK: usize = 1 << 16;

/// A new bf16 copy of `data`, rounded on the threads when large. Errors: `Alloc` if it does not fit.
fn bf16_copy(data: &[f32]) -> Result<Arc<[u16]>> {
    let mut out = crate::tensor::try_with_capacity::<u16>("linear", data.len())?;
    out.resize(data.len(), 0);
    if data.len() <= ROUND_CHUNK {
        kernels::round_bf16(data, &mut out);
    } else {
        install(|| {
            out.par_chunks_mut(ROUND_CHUNK)
                .zip(data.par_chunks(ROUND_CHUNK))
                .for_each(|(d, s)| kernels::round_bf16(s, d))
        });
    }
    Ok(out.into())
}

/// The bf16 copy of `w` a row-wise bf16 product reads: the generate call's (`with_weight_copies`),
/// made now if it has none yet; without a call's copies, a copy for this product alone.
pub(crate) fn bf16_weight(w: &Tensor) -> Result<Arc<[u16]>> {
    let Some(copies) = WEIGHT_COPIES.with_borrow(|c| c.clone()) else {
        return bf16_copy(&w.data());
    };
    let find = || {
        let list = copies.copies.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().find(|(t, _)| t.same_storage(w) && t.numel() == w.numel()).map(|(_, c)| c.clone())
    };
    if let Some(c) = find() {
        return Ok(c);
    }
    // rounded without the lock held (its pool tasks must never wait for it); should two groups of rows
    // both get here, the second copy is equal and dropped
    let made = bf16_copy(&w.data())?;
    if let Some(c) = find() {
        return Ok(c);
    }
    copies.copies.lock().unwrap_or_else(|e| e.into_inner()).push((w.clone(), made.clone()));
    Ok(made)
}

/// Run `f` with `copies` as this thread's bf16 weight copies (None: run `f` as is).
pub(crate) fn with_weight_copies<R>(copies: Option<&Arc<WeightCopies>>, f: impl FnOnce() -> R) -> R {
    let Some(copies) = copies else { return f() };
    struct Restore(Option<Arc<WeightCopies>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            WEIGHT_COPIES.with_borrow_mut(|c| *c = self.0.take());
        }
    }
    let _restore = Restore(WEIGHT_COPIES.with_borrow_mut(|c| c.replace(copies.clone())));
    f()
}

/// Row and column cuts of a product with a shared packed B: its tiles are rows `rows[i]..rows[i + 1]` ×
/// columns `cols[j]..cols[j + 1]`. Rows are cut in whole 12-row micro-panels and columns in whole 64-column
/// units (both kernels' MR and NR divide them), as evenly as the units allow: a micro-kernel costs the same
/// on a ragged panel as on a full one, so the work of a tile is its count of 12×32 micro-tiles. Among the
/// cuts into at least SHARED_TILES tiles of ≥ 8 panels (96 rows) and ≥ 2 units (128 columns) each (when the
/// matrix has them), each at most MAX_TILE_FLOPS: the one that two threads, taking tiles as they come free,
/// finish soonest (bound: ⌈T/2⌉ × the biggest tile's micro-tiles; an odd count or unequal tiles leave one
/// thread idle at the end: 48-row cuts of 512² did, 11% of the run), then the one that streams the least
/// of A and B through the caches (each tile reads its rows of A and its columns of B; A's count twice: it
/// is read in place, or rounded and packed again, by every column tile, where B is packed once), then
/// fewer tiles. Depends only on the shapes (the bits never depend on the cut: see `kernels`).
pub(super) fn shared_b_cuts(m: usize, k: usize, n: usize) -> (Vec<usize>, Vec<usize>) {
    let (pr, pc) = (m.div_ceil(12), n.div_ceil(64));
    let mut best = ((true, usize::MAX, usize::MAX, usize::MAX), (1, 1));
    if 2 * m * k * n > 2 * SERIAL_FLOPS {
        for r in 1..=pr.min(64) {
            if r > 1 && pr / r < 8 {
                break;
            }
            for c in 1..=pc.min(64) {
                if c > 1 && pc / c < 2 {
                    break;
                }
                let tiles = r * c;
                // the biggest tile: its rows (in panels) and columns (in 32-wide micro-tiles)
                let (big_r, big_c) = (pr.div_ceil(r), (pc.div_ceil(c) * 64).min(n).div_ceil(32));
                let ok = tiles >= SHARED_TILES && 2 * (big_r * 12).min(m) * (big_c * 32).min(n) * k <= MAX_TILE_FLOPS;
                let finish = tiles.div_ceil(2) * big_r * big_c;
                // acceptable cuts by finish time and traffic; if none is, the most tiles
                let key = if ok { (false, finish, 2 * c * m + r * n, tiles) } else { (true, usize::MAX - tiles, 0, 0) };
                if key < best.0 {
                    best = (key, (r, c));
                }
            }
        }
    }
    let (r, c) = best.1;
    let cuts = |units: usize, parts: usize, unit: usize, len: usize| -> Vec<usize> {
        (0..=parts).map(|i| (i * units / parts * unit).min(len)).collect()
    };
    (cuts(pr, r, 12, m), cuts(pc, c, 64, n))
}

/// Output columns per tile of a `dots` product: all of them when the work is small (a hand-off to the
/// other thread costs more), else about 8 tiles in multiples of 16 columns. Depends only on the shapes.
pub(super) fn dots_tile_cols(m: usize, k: usize, n: usize) -> usize {
    if 2 * m * k * n < DOTS_SPLIT_FLOPS {
        return n.max(1);
    }
    round_up(n.div_ceil(TARGET_TILES), 16).min(n).max(1)
}

pub(super) fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Tile edge lengths (rows, cols) for `count` products (m, k) @ (k, n). Small work: whole matrices.
/// Else columns in blocks of ≤ NC and rows cut so that all products together make about TARGET_TILES
/// tiles; short matrices (few rows, e.g. M = 1 decode) are cut along columns instead. Depends only
/// on the shapes.
pub(super) fn tile_shape(count: usize, m: usize, k: usize, n: usize) -> (usize, usize) {
    if count == 1 && m == 1 {
        if 2 * k * n < GEMV_SPLIT_FLOPS {
            return (1, n.max(1));
        }
        return (1, round_up(n.div_ceil(TARGET_TILES), ALIGN).min(n).max(1));
    }
    // a matrix-vector product (M = 1 or N = 1) runs at memory speed, ~4× slower per flop than sgemm
    let per_matrix = 2 * m * k * n * if m == 1 || n == 1 { 4 } else { 1 };
    if per_matrix.saturating_mul(count) <= 2 * SERIAL_FLOPS || count >= 2 * TARGET_TILES && per_matrix <= MAX_TILE_FLOPS
    {
        return (m.max(1), n.max(1));
    }
    let mut cols = n.min(NC);
    let col_blocks = n.div_ceil(cols);
    // row cuts per matrix: enough for the tile target and the per-tile work cap
    let want = TARGET_TILES.div_ceil(count * col_blocks).max(per_matrix.div_ceil(MAX_TILE_FLOPS * col_blocks));
    let rows = round_up(m.div_ceil(want), ALIGN).max(MIN_TILE_ROWS).min(m).max(1);
    let tiles = count * m.div_ceil(rows) * col_blocks;
    if tiles < TARGET_TILES {
        let col_cuts = TARGET_TILES.div_ceil(count * m.div_ceil(rows));
        cols = round_up(n.div_ceil(col_cuts), ALIGN).max(MIN_TILE_COLS).min(cols);
    }
    (rows, cols)
}

impl<'a> Gemm<'a> {
    pub(super) fn new(
        (m, k, n): (usize, usize, usize),
        a: Strided<'a>,
        b: Strided<'a>,
        terms: Vec<(usize, usize)>,
        starts: Vec<usize>,
    ) -> Gemm<'a> {
        // Internal invariant (not user input): every term's last element lies inside its buffer, which
        // is what makes the raw-pointer sgemm calls below sound.
        if m > 0 && k > 0 && n > 0 {
            let a_span = (m - 1) * a.rs + (k - 1) * a.cs;
            let b_span = (k - 1) * b.rs + (n - 1) * b.cs;
            for &(ao, bo) in &terms {
                assert!(ao + a_span < a.data.len() && bo + b_span < b.data.len(), "matmul: operand out of bounds");
            }
        }
        assert_eq!(*starts.last().unwrap_or(&0), terms.len());
        Gemm {
            m,
            k,
            n,
            a,
            b,
            terms,
            starts,
            bias: None,
            row_wise: ROW_WISE.with(Cell::get),
            bf16: bf16_enabled(),
            b16: None,
        }
    }

    /// In a row-wise product, read B from `b16`, its bf16 copy (same length and offsets as `b.data`).
    pub(super) fn with_bf16_b(mut self, b16: Option<&'a [u16]>) -> Gemm<'a> {
        if let Some(h) = b16 {
            assert_eq!(h.len(), self.b.data.len(), "matmul: bf16 copy length");
        }
        self.b16 = b16;
        self
    }

    /// Add `bias` (length n) to every output row.
    pub(super) fn with_bias(mut self, bias: Option<&'a [f32]>) -> Gemm<'a> {
        if let Some(bv) = bias {
            assert_eq!(bv.len(), self.n, "matmul: bias length");
        }
        self.bias = bias;
        self
    }

    /// Every output matrix with one term each: out[j] = A(a_offs[j]) · B(b_offs[j]).
    pub(super) fn one_term_each(
        dims: (usize, usize, usize),
        a: Strided<'a>,
        b: Strided<'a>,
        terms: Vec<(usize, usize)>,
    ) -> Gemm<'a> {
        let starts = (0..=terms.len()).collect();
        Gemm::new(dims, a, b, terms, starts)
    }

    /// Whether the GEMM tiles of a run at `level` take the bf16 kernel.
    fn uses_bf16(&self, level: Isa) -> bool {
        self.bf16 && level >= 2 && kernels::bf16_supported()
    }

    pub(super) fn count(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// One product whose B all tiles share: packed once (`shared_b_cuts` cuts its tiles).
    fn shares_b(&self, level: Isa) -> bool {
        level >= 1 && self.count() == 1 && self.terms.len() == 1 && self.m > 1 && self.n > 1 && !self.by_dots()
    }

    /// Inside `row_wise`, a single product of two or more rows (or of any rows with a bf16 B) whose A rows
    /// and B columns both run along k (x·Wᵀ with W as stored): dot products, nothing packed (`dots`), in
    /// tiles of ≤ SMALL_M rows with the output columns cut. (One f32 row takes `gemv`: the same bits.)
    fn by_dots(&self) -> bool {
        self.row_wise && self.count() == 1 && (self.m >= 2 || self.b16.is_some()) && self.a.cs == 1 && self.b.rs == 1
    }

    fn tiles(&self, level: Isa) -> Vec<Tile> {
        let even = |len: usize, step: usize| -> Vec<usize> {
            (0..len).step_by(step.max(1)).chain(std::iter::once(len)).collect()
        };
        let (row_cuts, col_cuts) = if self.by_dots() {
            let rows = self.m.min(SMALL_M);
            (even(self.m, rows), even(self.n, dots_tile_cols(rows, self.k, self.n)))
        } else if self.shares_b(level) {
            shared_b_cuts(self.m, self.k, self.n)
        } else {
            let (rows, cols) = tile_shape(self.count(), self.m, self.k, self.n);
            (even(self.m, rows), even(self.n, cols))
        };
        let mut tiles = Vec::new();
        if self.m == 0 || self.n == 0 || self.k == 0 {
            return tiles; // `run_raw` writes the zeros (or bias rows)
        }
        for mat in 0..self.count() {
            if self.starts[mat] == self.starts[mat + 1] {
                continue; // a sum of nothing: `run_raw` writes zeros
            }
            for r in row_cuts.windows(2) {
                for c in col_cuts.windows(2) {
                    tiles.push(Tile { mat, r0: r[0], rows: r[1] - r[0], c0: c[0], cols: c[1] - c[0] });
                }
            }
        }
        tiles
    }

    fn tile_flops(&self, t: &Tile) -> usize {
        2 * t.rows * t.cols * self.k * (self.starts[t.mat + 1] - self.starts[t.mat])
    }

    /// Compute one tile: its terms in order, the first overwriting (β = 0), the rest adding (β = 1).
    ///
    /// SAFETY: `out` points to a buffer of `count·m·n` floats, and no other task writes this tile.
    unsafe fn run_tile(&self, t: &Tile, out: OutPtr, level: Isa, packed: Option<&kernels::PackedB>) {
        let (a, b) = (self.a, self.b);
        // SAFETY: the tile lies inside its output matrix, which lies inside `out`.
        let cp = unsafe { out.0.add(t.mat * self.m * self.n + t.r0 * self.n + t.c0) };
        if let Some(bias) = self.bias {
            let bias = &bias[t.c0..t.c0 + t.cols];
            for r in 0..t.rows {
                // SAFETY: row r of the tile: t.cols floats owned by this tile (perhaps not yet initialized).
                unsafe { std::ptr::copy_nonoverlapping(bias.as_ptr(), cp.add(r * self.n), t.cols) };
            }
        }
        for (q, &(ao, bo)) in self.terms[self.starts[t.mat]..self.starts[t.mat + 1]].iter().enumerate() {
            // the first product overwrites the tile, unless a bias was put there to add to
            let overwrite = q == 0 && self.bias.is_none();
            let (ao, bo) = (ao + t.r0 * a.rs, bo + t.c0 * b.cs);
            // A single output row (M = 1, decode) or column (N = 1) is a matrix-vector product: sgemm
            // would pack all of B and run its 16-row kernel on 15 rows of padding.
            if self.by_dots() {
                if let Some(h) = self.b16 {
                    // SAFETY: as below; `h` has b.data's length (`with_bf16_b`).
                    unsafe {
                        dots::dots(
                            level,
                            (t.rows, self.k, t.cols),
                            a.data[ao..].as_ptr(),
                            a.rs,
                            h[bo..].as_ptr(),
                            b.cs,
                            cp,
                            self.n,
                            overwrite,
                        )
                    };
                    continue;
                }
                // SAFETY: operands in bounds (checked in `Gemm::new`); the tile is this task's alone.
                unsafe {
                    dots::dots(
                        level,
                        (t.rows, self.k, t.cols),
                        a.data[ao..].as_ptr(),
                        a.rs,
                        b.data[bo..].as_ptr(),
                        b.cs,
                        cp,
                        self.n,
                        overwrite,
                    )
                };
                continue;
            }
            if self.m == 1 && (b.cs == 1 || b.rs == 1 && a.cs == 1) {
                // out[0, c] = Σ_k A[0, k] · B[k, c]
                // SAFETY: output row of t.cols elements with stride 1, owned by this tile (zeroed first
                // when it may not be initialized yet: it is tiny).
                let y = unsafe {
                    if overwrite {
                        std::ptr::write_bytes(cp, 0, t.cols);
                    }
                    std::slice::from_raw_parts_mut(cp, t.cols)
                };
                gemv(y, overwrite, (a.data, ao, a.cs), (b.data, bo, b.rs, b.cs), self.k);
                continue;
            }
            if self.n == 1 && (a.rs == 1 || a.cs == 1 && b.rs == 1) {
                // out[r, 0] = Σ_k B[k, 0] · A[r, k]: the same with the roles swapped
                // SAFETY: with n = 1 the output column is contiguous: t.rows elements owned by this tile
                // (zeroed first, as above).
                let y = unsafe {
                    if overwrite {
                        std::ptr::write_bytes(cp, 0, t.rows);
                    }
                    std::slice::from_raw_parts_mut(cp, t.rows)
                };
                gemv(y, overwrite, (b.data, bo, b.rs), (a.data, ao, a.cs, a.rs), self.k);
                continue;
            }
            if level >= 1 {
                let view = |s: Strided, off: usize| kernels::View { ptr: s.data[off..].as_ptr(), rs: s.rs, cs: s.cs };
                // the shared panels from this tile's first column on (tile columns start at multiples of NR)
                let panels = packed.map(|p| {
                    debug_assert_eq!(t.c0 % p.nr, 0);
                    (&p.panels()[t.c0 / p.nr * p.k * p.nr..], p.k)
                });
                if self.uses_bf16(level) {
                    // SAFETY: as below, and `uses_bf16` checked the CPU's AVX512-BF16.
                    unsafe {
                        kernels::gemm_bf16(
                            (t.rows, self.k, t.cols),
                            view(a, ao),
                            view(b, bo),
                            panels,
                            cp,
                            self.n,
                            !overwrite,
                        )
                    };
                    continue;
                }
                // SAFETY: operands in bounds (checked in `Gemm::new`), the tile is this task's alone,
                // and `level` came from `kernels::level()`, which never exceeds the CPU's features.
                unsafe {
                    kernels::gemm(
                        level,
                        (t.rows, self.k, t.cols),
                        view(a, ao),
                        view(b, bo),
                        panels,
                        cp,
                        self.n,
                        !overwrite,
                    )
                };
                continue;
            }
            // SAFETY: offsets are in bounds (checked in `Gemm::new`: r0 < m, c0 < n).
            unsafe {
                matrixmultiply::sgemm(
                    t.rows,
                    self.k,
                    t.cols,
                    1.0,
                    a.data.as_ptr().add(ao),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr().add(bo),
                    b.rs as isize,
                    b.cs as isize,
                    if overwrite { 0.0 } else { 1.0 },
                    cp,
                    self.n as isize,
                    1,
                );
            }
        }
    }

    /// The result in a new buffer, which is never zero-filled first: every element is written (zeros,
    /// or the bias, for an output that is a sum of no products). Errors: `Alloc` if it does not fit,
    /// `Interrupted` (Ctrl-C).
    pub(super) fn run_new(&self, op: &'static str) -> Result<Vec<f32>> {
        let len = self.count() * self.m * self.n;
        let mut out = crate::tensor::try_with_capacity::<f32>(op, len)?;
        // SAFETY: `out` has room for len floats; `run_raw` writes every one of them before `set_len`.
        unsafe {
            self.run_raw(OutPtr(out.as_mut_ptr()), kernels::level())?;
            out.set_len(len);
        }
        Ok(out)
    }

    /// Fill `out` (count·m·n floats) with the GEMM of `level` (≤ `kernels::level()`; tests compare the
    /// levels). Tiles run in groups of about GROUP_FLOPS; between groups the calling thread checks for
    /// Ctrl-C.
    #[cfg_attr(not(test), allow(dead_code))] // the tests' entry (and the benchmarks' lab)
    pub(super) fn run_at(&self, out: &mut [f32], level: Isa) -> Result<()> {
        assert_eq!(out.len(), self.count() * self.m * self.n);
        // SAFETY: `out` holds count·m·n floats.
        unsafe { self.run_raw(OutPtr(out.as_mut_ptr()), level) }
    }

    /// Write all count·m·n floats at `ptr`: the products, and zeros (or bias rows) for outputs that are a
    /// sum of nothing (no terms, or k = 0).
    ///
    /// # Safety
    /// `ptr` points to count·m·n writable floats (initialized or not) that nothing else accesses meanwhile.
    unsafe fn run_raw(&self, ptr: OutPtr, level: Isa) -> Result<()> {
        assert!(level <= kernels::level(), "matmul: level {level} above this CPU's");
        let size = self.m * self.n;
        for mat in 0..self.count() {
            if self.k == 0 || self.starts[mat] == self.starts[mat + 1] {
                // SAFETY: output matrix `mat` lies inside the buffer.
                let dst = unsafe { ptr.0.add(mat * size) };
                match self.bias {
                    // SAFETY: m rows of n floats inside the matrix.
                    Some(b) => (0..self.m).for_each(|r| unsafe {
                        std::ptr::copy_nonoverlapping(b.as_ptr(), dst.add(r * self.n), self.n)
                    }),
                    // SAFETY: `size` floats inside the buffer.
                    None => unsafe { std::ptr::write_bytes(dst, 0, size) },
                }
            }
        }
        let tiles = self.tiles(level);
        if tiles.is_empty() {
            return Ok(());
        }
        let total: usize = tiles.iter().map(|t| self.tile_flops(t)).sum();
        if total > SERIAL_FLOPS && total <= GROUP_FLOPS && self.shares_b(level) {
            // one hand-off to the pool for the packing and all tiles (each `install` from outside the
            // pool wakes a worker, 10–50 µs on a VM; inside it they are plain calls). Only for products
            // of one group: bigger ones check for Ctrl-C between groups, which works on the calling
            // thread, not on a pool worker (`check_interrupt`).
            return install(|| self.run_shared(&tiles, ptr, level));
        }
        self.run_shared(&tiles, ptr, level)
    }

    fn run_shared(&self, tiles: &[Tile], ptr: OutPtr, level: Isa) -> Result<()> {
        // B packed once for all tiles of a single product, in this thread's reused buffer
        let packed = if self.shares_b(level) {
            let b = kernels::View { ptr: self.b.data[self.terms[0].1..].as_ptr(), rs: self.b.rs, cs: self.b.cs };
            let reuse = SHARED_B.with(|c| std::mem::take(&mut *c.borrow_mut()));
            let parallel = 2 * self.m * self.k * self.n > SERIAL_FLOPS;
            Some(if self.uses_bf16(level) {
                kernels::pack_b_bf16(b, self.k, self.n, parallel, reuse)?
            } else {
                kernels::pack_b(level, b, self.k, self.n, parallel, reuse)?
            })
        } else {
            None
        };
        let res = self.run_tiles(tiles, ptr, level, packed.as_ref());
        if let Some(p) = packed {
            SHARED_B.with(|c| *c.borrow_mut() = p.into_buf());
        }
        res
    }

    fn run_tiles(&self, tiles: &[Tile], ptr: OutPtr, level: Isa, packed: Option<&kernels::PackedB>) -> Result<()> {
        // as few groups as keep each near GROUP_FLOPS, of equal work, each a whole number of tiles per
        // thread (a group ends when all its tiles are done: 9 equal tiles on 2 threads took 5 tiles' time)
        let total: usize = tiles.iter().map(|t| self.tile_flops(t)).sum();
        let groups = total.div_ceil(GROUP_FLOPS).max(1);
        let per_thread = crate::parallel::num_threads().max(1);
        let (mut start, mut done, mut g) = (0, 0usize, 0);
        while start < tiles.len() {
            g += 1;
            let target = total / groups * g;
            let (mut end, mut work) = (start, 0usize);
            while end < tiles.len() && (end == start || done + work < target || (end - start) % per_thread != 0) {
                work += self.tile_flops(&tiles[end]);
                end += 1;
            }
            done += work;
            let group = &tiles[start..end];
            // (a split matrix-vector product is worth the threads whatever its flop count)
            let split_gemv = (self.m == 1 || self.by_dots()) && self.count() == 1;
            if group.len() == 1 || work <= SERIAL_FLOPS && !split_gemv {
                for t in group {
                    // SAFETY: tiles are disjoint and `out` lives through this call.
                    unsafe { self.run_tile(t, ptr, level, packed) };
                }
            } else {
                // many tiny tiles (small batched matmuls) are handed out in runs of ~SERIAL_FLOPS
                let per_tile = (work / group.len()).max(1);
                let min_len = if split_gemv { 1 } else { (SERIAL_FLOPS / per_tile).max(1) };
                install(|| {
                    group.par_iter().with_min_len(min_len).for_each(|t| {
                        // SAFETY: tiles are disjoint and `out` lives until `install` returns.
                        unsafe { self.run_tile(t, ptr, level, packed) }
                    })
                });
            }
            start = end;
            if start < tiles.len() {
                check_interrupt()?;
            }
        }
        Ok(())
    }
}

/// `y[j] (=|+=) Σ_k x[k] · w[k, j]` for j < y.len(), k < kk; x is `(data, offset, stride)`, w is
/// `(data, offset, k-stride, j-stride)`. Overwrites y when `overwrite`, else adds to it. Callers
/// guarantee w's j-stride is 1 (rows of w contiguous: axpy form) or its k-stride and x's stride are 1
/// (columns contiguous: dot form). Sums run in a fixed order, independent of threads and of the CPU:
/// the AVX-512 and AVX2 builds of the same code (`simd::dispatch_simd!`) use no FMA, so they round exactly
/// like the baseline one.
pub(super) fn gemv(
    y: &mut [f32],
    overwrite: bool,
    x: (&[f32], usize, usize),
    w: (&[f32], usize, usize, usize),
    kk: usize,
) {
    dispatch_simd!(
        gemv_body, gemv_avx512, gemv_avx2,
        (y: &mut [f32], overwrite: bool, x: (&[f32], usize, usize), w: (&[f32], usize, usize, usize), kk: usize)
    );
}

/// Levels `ISA` >= 1 run on CPUs with AVX2 (see `simd::isa`), so they may call its intrinsics (`dot4_avx2`).
#[inline(always)]
pub(super) fn gemv_body<const ISA: Isa>(
    y: &mut [f32],
    overwrite: bool,
    x: (&[f32], usize, usize),
    w: (&[f32], usize, usize, usize),
    kk: usize,
) {
    let (xd, xo, xs) = x;
    let (wd, wo, wk, wj) = w;
    let len = y.len();
    if wj == 1 {
        // y += x[k] · w[k, :], four rows per pass so y is loaded and stored once per four rows; each
        // y[j] still adds its terms one at a time in k order
        if overwrite {
            y.fill(0.0);
        }
        let row = |k: usize| &wd[wo + k * wk..wo + k * wk + len];
        let mut k = 0;
        while k + 4 <= kk {
            let (x0, x1, x2, x3) =
                (xd[xo + k * xs], xd[xo + (k + 1) * xs], xd[xo + (k + 2) * xs], xd[xo + (k + 3) * xs]);
            let (r0, r1, r2, r3) = (row(k), row(k + 1), row(k + 2), row(k + 3));
            for j in 0..len {
                let mut v = y[j];
                v += x0 * r0[j];
                v += x1 * r1[j];
                v += x2 * r2[j];
                v += x3 * r3[j];
                y[j] = v;
            }
            k += 4;
        }
        while k < kk {
            let xk = xd[xo + k * xs];
            for (yj, &wv) in y.iter_mut().zip(row(k)) {
                *yj += xk * wv;
            }
            k += 1;
        }
    } else {
        // y[j] = dot(x, w[:, j]) with both contiguous; four columns per pass share each load of x
        // (four independent accumulator sets also hide the add latency); each y[j] gets exactly the
        // bits `dot` would give it
        let xv = &xd[xo..xo + kk];
        let col = |j: usize| &wd[wo + j * wj..wo + j * wj + kk];
        let mut j = 0;
        while j + 4 <= len {
            let cols = [col(j), col(j + 1), col(j + 2), col(j + 3)];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: levels >= 1 are only dispatched on CPUs with AVX2 (and FMA).
            let d = if ISA >= 1 { unsafe { crate::ops::simd::dot4_avx2(xv, cols) } } else { dot4(xv, cols) };
            #[cfg(not(target_arch = "x86_64"))]
            let d = dot4(xv, cols);
            for (q, dq) in d.into_iter().enumerate() {
                y[j + q] = if overwrite { dq } else { y[j + q] + dq };
            }
            j += 4;
        }
        for (jj, yj) in y.iter_mut().enumerate().skip(j) {
            let d = dot(xv, col(jj));
            *yj = if overwrite { d } else { *yj + d };
        }
    }
}

/// Row-major (rows, cols) matrices, or their transposes read in place through swapped strides.
pub(super) fn plain(data: &[f32], cols: usize) -> Strided<'_> {
    Strided { data, rs: cols, cs: 1 }
}
pub(super) fn transposed(data: &[f32], cols: usize) -> Strided<'_> {
    Strided { data, rs: 1, cs: cols }
}
