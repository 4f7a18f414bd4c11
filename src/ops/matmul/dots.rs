//! Products of rows with a matrix whose rows run along k, as dot products (the row-wise path):
//! `y[r, o] (=|+=) Σ_k x[r, k]·w[o, k]`, both operands read in place. This is `linear` in a decode step
//! (`engine::row_wise`; x: one new position per sequence, w: the weight (OUT, IN) as stored): the weight
//! is streamed once per `SMALL_M` rows and never packed, where the GEMM would pack all of it to multiply
//! a handful of rows.
//!
//! Bits: every y[r, o] is `simd::dot(x_r, w_o)` exactly — 16 lanes that each add their separately
//! rounded products in k order (lane l takes k = l, l + 16, …; the tail goes to lanes 0..), then
//! `lanes_sum` — the number the matrix-vector path (`engine::gemv`, dot form) gives a single row. So a
//! row's result does not depend on how many rows come with it, nor on the thread count or the vector
//! width (AVX-512, AVX2 and the portable loop agree; tested). Then y = d, or y + d.
//!
//! The weight may also be a bf16 copy (`Bf16`: the upper halves of the f32 bits, rounded to nearest even
//! by `kernels::round_bf16`), half the bytes to stream in a memory-bound decode step. Each weight is
//! widened back to f32 in registers (exact) and the sums run as above, so a bf16-weight y[r, o] is exactly
//! `simd::dot(x_r, widened w_o)`, with the same row, thread and width independence.

use crate::ops::simd::{Isa, dot};

/// A row tile of a row-wise product holds at most this many rows (see `engine`).
pub(super) const SMALL_M: usize = 32;

/// A weight element `dots` reads: f32 as stored, or a bf16 copy's bits (`Bf16`).
pub(super) trait Weight: Copy + Send + Sync + 'static {
    /// The weight's bits are bf16 (u16, widened by `<< 16`), else f32.
    const BF16: bool;
    fn to_f32(self) -> f32;
}
impl Weight for f32 {
    const BF16: bool = false;
    fn to_f32(self) -> f32 {
        self
    }
}
/// The bits of a bf16 number (the upper half of an f32's).
pub(super) type Bf16 = u16;
impl Weight for Bf16 {
    const BF16: bool = true;
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

/// y (rows × n at row stride ldy) (=|+=) x (rows × k at row stride ldx) · wᵀ, where w is n × k at row
/// stride ldw. `overwrite`: y = d (y may be uninitialized), else y = y + d.
///
/// # Safety
/// x holds rows × k floats at stride ldx, w n × k at stride ldw, y rows × n writable floats at stride ldy
/// that nothing else accesses meanwhile; `level` ≤ the CPU's `simd::isa()`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn dots<W: Weight>(
    level: Isa,
    (rows, k, n): (usize, usize, usize),
    x: *const f32,
    ldx: usize,
    w: *const W,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    overwrite: bool,
) {
    let args = Args { k, x, ldx, w, ldw, y, ldy, overwrite };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; `level` says which features the CPU has.
    unsafe {
        if level >= 2 {
            return dots_avx512(rows, n, args);
        }
        if level == 1 {
            return dots_avx2(rows, n, args);
        }
    }
    let _ = level;
    // SAFETY: the caller's contract.
    unsafe {
        let mut wide = Vec::new();
        for r in 0..rows {
            let xr = std::slice::from_raw_parts(x.add(r * ldx), k);
            for o in 0..n {
                let wo = std::slice::from_raw_parts(w.add(o * ldw), k);
                wide.clear();
                wide.extend(wo.iter().map(|v| v.to_f32()));
                let d = dot(xr, &wide);
                let yo = y.add(r * ldy + o);
                *yo = if overwrite { d } else { *yo + d };
            }
        }
    }
}

/// The operands of one call (see `dots`).
#[derive(Clone, Copy)]
struct Args<W> {
    k: usize,
    x: *const f32,
    ldx: usize,
    w: *const W,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    overwrite: bool,
}

impl<W: Weight> Args<W> {
    /// The same operands from row r0 and output o0 on.
    ///
    /// # Safety
    /// r0, o0 inside the operands.
    unsafe fn at(self, r0: usize, o0: usize) -> Args<W> {
        // SAFETY: the caller's contract.
        unsafe {
            Args {
                x: self.x.add(r0 * self.ldx),
                w: self.w.add(o0 * self.ldw),
                y: self.y.add(r0 * self.ldy + o0),
                ..self
            }
        }
    }
}

// ---- weight loads: 16 (or 8) weights from k on as f32 lanes; bf16 is widened exactly (bits << 16) ----

/// w[0..16] as 16 f32 lanes.
///
/// # Safety
/// 16 weights readable at p; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load16_512<W: Weight>(p: *const W) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        if W::BF16 {
            let h = _mm256_loadu_si256(p as *const __m256i);
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
}

/// w[0..len] in lanes 0..len (len < 16, `m` its mask), +0 in the others.
///
/// # Safety
/// len weights readable at p; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tail16_512<W: Weight>(m: std::arch::x86_64::__mmask16, len: usize, p: *const W) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; the bf16 tail is copied into a zeroed 16-weight buffer first.
    unsafe {
        if W::BF16 {
            let mut buf = [0u16; 16];
            std::ptr::copy_nonoverlapping(p as *const u16, buf.as_mut_ptr(), len);
            load16_512(buf.as_ptr())
        } else {
            _mm512_maskz_loadu_ps(m, p as *const f32)
        }
    }
}

/// w[0..8] as 8 f32 lanes.
///
/// # Safety
/// 8 weights readable at p; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8_256<W: Weight>(p: *const W) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        if W::BF16 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_loadu_ps(p as *const f32)
        }
    }
}

/// w[0..len] (len < 16) in the lanes 0..len of two halves (`ml`, `mh` their f32 masks), +0 elsewhere.
///
/// # Safety
/// len weights readable at p; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tail16_256<W: Weight>(
    ml: std::arch::x86_64::__m256i,
    mh: std::arch::x86_64::__m256i,
    len: usize,
    p: *const W,
) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract; as in `tail16_512`.
    unsafe {
        if W::BF16 {
            let mut buf = [0u16; 16];
            std::ptr::copy_nonoverlapping(p as *const u16, buf.as_mut_ptr(), len);
            [load8_256(buf.as_ptr()), load8_256(buf.as_ptr().add(8))]
        } else {
            let p = p as *const f32;
            [_mm256_maskload_ps(p, ml), _mm256_maskload_ps(p.add(8), mh)]
        }
    }
}

// ---- AVX-512: 4 rows × 4 outputs at a time, one zmm (the 16 lanes) per dot ----

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn dots_avx512<W: Weight>(rows: usize, n: usize, a: Args<W>) {
    // SAFETY (all blocks): row and output offsets stay below rows and n.
    unsafe {
        let mut r = 0;
        while r < rows {
            let left = rows - r;
            let mut o = 0;
            while o + 4 <= n {
                let b = a.at(r, o);
                match left {
                    1 => block512::<W, 1, 4>(b),
                    2 => block512::<W, 2, 4>(b),
                    3 => block512::<W, 3, 4>(b),
                    _ => block512::<W, 4, 4>(b),
                }
                o += 4;
            }
            while o < n {
                let b = a.at(r, o);
                match left {
                    1 => block512::<W, 1, 1>(b),
                    2 => block512::<W, 2, 1>(b),
                    3 => block512::<W, 3, 1>(b),
                    _ => block512::<W, 4, 1>(b),
                }
                o += 1;
            }
            r += 4;
        }
    }
}

/// R rows × O outputs (O = 4 or 1).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn block512<W: Weight, const R: usize, const O: usize>(a: Args<W>) {
    use std::arch::x86_64::*;
    let k = a.k;
    let full = k / 16 * 16;
    let mut acc = [[_mm512_setzero_ps(); O]; R];
    // SAFETY: loads read x's rows and w's rows inside their k floats (the tail masked), stores write the
    // R × O block of y.
    unsafe {
        let mut i = 0;
        while i < full {
            if W::BF16 && i % 32 == 0 {
                // bf16 rows are short in bytes (a 384-term row is 12 lines): ask for the same line of
                // the next block's rows now, a block ahead of the loads (a hint: never faults)
                for j in 0..O {
                    _mm_prefetch::<_MM_HINT_T0>(a.w.wrapping_add((j + O) * a.ldw + i) as *const i8);
                }
            }
            let wv: [__m512; O] = std::array::from_fn(|j| load16_512(a.w.add(j * a.ldw + i)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(a.x.add(r * a.ldx + i));
                for j in 0..O {
                    acc_r[j] = _mm512_add_ps(acc_r[j], _mm512_mul_ps(xv, wv[j]));
                }
            }
            i += 16;
        }
        if full < k {
            // the tail goes to lanes 0..k-full; the other lanes add 0·0 = +0, which leaves them as they are
            // (a lane never holds −0: it starts at +0, and a sum is −0 only if both terms are)
            let m: __mmask16 = ((1u32 << (k - full)) - 1) as __mmask16;
            let wv: [__m512; O] = std::array::from_fn(|j| tail16_512(m, k - full, a.w.add(j * a.ldw + full)));
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(m, a.x.add(r * a.ldx + full));
                for j in 0..O {
                    acc_r[j] = _mm512_add_ps(acc_r[j], _mm512_mul_ps(xv, wv[j]));
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let yr = a.y.add(r * a.ldy);
            if O == 4 {
                let d = lanes_sum4_512([acc_r[0], acc_r[1], acc_r[2], acc_r[3]]);
                let v = if a.overwrite { d } else { _mm_add_ps(_mm_loadu_ps(yr), d) };
                _mm_storeu_ps(yr, v);
            } else {
                for (j, &v) in acc_r.iter().enumerate() {
                    let d = _mm_cvtss_f32(lanes_sum_512(v));
                    *yr.add(j) = if a.overwrite { d } else { *yr.add(j) + d };
                }
            }
        }
    }
}

/// `lanes_sum` of one zmm, in lane 0: lane l + lane l + 8, then + 4, + 2, + 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn lanes_sum_512(v: std::arch::x86_64::__m512) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let h = _mm256_add_ps(lo, hi);
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_add_ss(q, _mm_shuffle_ps::<1>(q, q))
}

/// `lanes_sum` of four zmm at once: [sum(v0), sum(v1), sum(v2), sum(v3)], each added in exactly the
/// order of `lanes_sum_512` (only the data movement is shared).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn lanes_sum4_512(v: [std::arch::x86_64::__m512; 4]) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // + 8: [v0 lanes 0..8 | v1 lanes 0..8] + [v0 lanes 8..16 | v1 lanes 8..16]
    let s01 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]),
    );
    let s23 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]),
    );
    // + 4: quarter j holds dot j's lanes 0..4
    let u =
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(s01, s23), _mm512_shuffle_f32x4::<0b11_01_11_01>(s01, s23));
    // + 2, + 1 within each quarter
    let u = _mm512_add_ps(u, _mm512_permute_ps::<0b11_10_11_10>(u));
    let u = _mm512_add_ps(u, _mm512_permute_ps::<0b01_01_01_01>(u));
    _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), u))
}

// ---- AVX2: 2 rows × 2 outputs at a time, two ymm (lanes 0..8, 8..16) per dot ----

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2<W: Weight>(rows: usize, n: usize, a: Args<W>) {
    // SAFETY (all blocks): row and output offsets stay below rows and n.
    unsafe {
        let mut r = 0;
        while r < rows {
            let two = rows - r >= 2;
            let mut o = 0;
            while o + 2 <= n {
                let b = a.at(r, o);
                if two {
                    block256::<W, 2, 2>(b)
                } else {
                    block256::<W, 1, 2>(b)
                }
                o += 2;
            }
            if o < n {
                let b = a.at(r, o);
                if two { block256::<W, 2, 1>(b) } else { block256::<W, 1, 1>(b) }
            }
            r += 2;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block256<W: Weight, const R: usize, const O: usize>(a: Args<W>) {
    use std::arch::x86_64::*;
    let k = a.k;
    let full = k / 16 * 16;
    let z = _mm256_setzero_ps();
    let (mut lo, mut hi) = ([[z; O]; R], [[z; O]; R]);
    // SAFETY: as in `block512`.
    unsafe {
        let mut i = 0;
        while i < full {
            let wl: [__m256; O] = std::array::from_fn(|j| load8_256(a.w.add(j * a.ldw + i)));
            let wh: [__m256; O] = std::array::from_fn(|j| load8_256(a.w.add(j * a.ldw + i + 8)));
            for r in 0..R {
                let xl = _mm256_loadu_ps(a.x.add(r * a.ldx + i));
                let xh = _mm256_loadu_ps(a.x.add(r * a.ldx + i + 8));
                for j in 0..O {
                    lo[r][j] = _mm256_add_ps(lo[r][j], _mm256_mul_ps(xl, wl[j]));
                    hi[r][j] = _mm256_add_ps(hi[r][j], _mm256_mul_ps(xh, wh[j]));
                }
            }
            i += 16;
        }
        if full < k {
            // the tail: lanes 0..k-full, split over the two halves (see `block512` on the other lanes)
            let t = (k - full) as i32;
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let (ml, mh) =
                (_mm256_cmpgt_epi32(_mm256_set1_epi32(t), lanes), _mm256_cmpgt_epi32(_mm256_set1_epi32(t - 8), lanes));
            let wt: [[__m256; 2]; O] =
                std::array::from_fn(|j| tail16_256(ml, mh, t as usize, a.w.add(j * a.ldw + full)));
            let wl: [__m256; O] = std::array::from_fn(|j| wt[j][0]);
            let wh: [__m256; O] = std::array::from_fn(|j| wt[j][1]);
            for r in 0..R {
                let xl = _mm256_maskload_ps(a.x.add(r * a.ldx + full), ml);
                let xh = _mm256_maskload_ps(a.x.add(r * a.ldx + full + 8), mh);
                for j in 0..O {
                    lo[r][j] = _mm256_add_ps(lo[r][j], _mm256_mul_ps(xl, wl[j]));
                    hi[r][j] = _mm256_add_ps(hi[r][j], _mm256_mul_ps(xh, wh[j]));
                }
            }
        }
        for r in 0..R {
            let yr = a.y.add(r * a.ldy);
            for j in 0..O {
                // lanes_sum: + 8 (the halves), + 4, + 2, + 1
                let h = _mm256_add_ps(lo[r][j], hi[r][j]);
                let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let d = _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<1>(q, q)));
                *yr.add(j) = if a.overwrite { d } else { *yr.add(j) + d };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::Rng;

    /// Every level against `simd::dot` bit for bit, over odd sizes (k tails of every length, rows and
    /// outputs not multiples of the blocks), with and without overwrite, strided operands.
    #[test]
    fn every_level_gives_the_bits_of_dot() {
        let mut rng = Rng::new(5);
        for (rows, k, n) in
            [(1, 1, 1), (2, 15, 3), (3, 16, 4), (4, 17, 5), (5, 33, 9), (7, 128, 13), (16, 130, 31), (32, 384, 8)]
        {
            let (ldx, ldw, ldy) = (k + 3, k + 1, n + 2);
            let x: Vec<f32> = (0..rows * ldx).map(|_| rng.normal() as f32).collect();
            let w: Vec<f32> = (0..n * ldw).map(|_| rng.normal() as f32).collect();
            let y0: Vec<f32> = (0..rows * ldy).map(|_| rng.normal() as f32).collect();
            for overwrite in [true, false] {
                let want: Vec<u32> = (0..rows * ldy)
                    .map(|i| {
                        let (r, o) = (i / ldy, i % ldy);
                        if o >= n {
                            return y0[i].to_bits();
                        }
                        let d = dot(&x[r * ldx..r * ldx + k], &w[o * ldw..o * ldw + k]);
                        (if overwrite { d } else { y0[i] + d }).to_bits()
                    })
                    .collect();
                for level in 0..=crate::ops::simd::isa() {
                    let mut y = y0.clone();
                    // SAFETY: the buffers hold the strided operands; level <= isa().
                    unsafe {
                        dots(level, (rows, k, n), x.as_ptr(), ldx, w.as_ptr(), ldw, y.as_mut_ptr(), ldy, overwrite)
                    };
                    let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    let diff = got.iter().zip(&want).position(|(g, w)| g != w);
                    assert!(
                        diff.is_none(),
                        "level {level}, ({rows}, {k}, {n}), overwrite {overwrite}: differs at {diff:?}"
                    );
                }
            }
        }
    }

    /// bf16 weights (`Bf16`): every level gives the bits of `simd::dot` with the widened weights (so a
    /// row alone, among others and on any level agree), and those are within f32 summation error of the
    /// f64 product of x and the bf16-rounded weights. Odd sizes: k not a multiple of 16 (tails of every
    /// kind), n odd, rows past a block; strided operands.
    #[test]
    fn bf16_weights_give_the_bits_of_dot_with_the_widened_weights() {
        let mut rng = Rng::new(9);
        for (rows, k, n) in
            [(1, 1, 1), (1, 15, 3), (2, 17, 5), (3, 31, 7), (4, 33, 9), (5, 100, 13), (1, 385, 33), (32, 383, 7)]
        {
            let (ldx, ldw, ldy) = (k + 3, k + 5, n + 2);
            let x: Vec<f32> = (0..rows * ldx).map(|_| rng.normal() as f32).collect();
            let wf: Vec<f32> = (0..n * ldw).map(|_| rng.normal() as f32).collect();
            let mut w = vec![0u16; wf.len()];
            super::super::kernels::round_bf16(&wf, &mut w);
            let wide: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
            assert!(wide.iter().zip(&wf).any(|(a, b)| a != b), "nothing was rounded");
            let y0: Vec<f32> = (0..rows * ldy).map(|_| rng.normal() as f32).collect();
            for overwrite in [true, false] {
                let mut want = Vec::with_capacity(rows * ldy);
                let mut worst = 0f64;
                for (i, &y0i) in y0.iter().enumerate() {
                    let (r, o) = (i / ldy, i % ldy);
                    if o >= n {
                        want.push(y0i.to_bits());
                        continue;
                    }
                    let (xr, wo) = (&x[r * ldx..r * ldx + k], &wide[o * ldw..o * ldw + k]);
                    let d = dot(xr, wo);
                    want.push((if overwrite { d } else { y0i + d }).to_bits());
                    // 16 lanes of k/16 terms, then 4 adds: within (k/16 + 5)·2⁻²⁴ of Σ|x·w| of the exact sum
                    let exact: f64 = xr.iter().zip(wo).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let scale: f64 = xr.iter().zip(wo).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let bound = (k / 16 + 5) as f64 * f32::EPSILON as f64 / 2.0 * scale;
                    worst = worst.max((d as f64 - exact).abs() / bound.max(f64::MIN_POSITIVE));
                }
                assert!(worst <= 1.0, "({rows}, {k}, {n}): off from f64 by {worst:.2} of the bound");
                for level in 0..=crate::ops::simd::isa() {
                    let mut y = y0.clone();
                    // SAFETY: the buffers hold the strided operands; level <= isa().
                    unsafe {
                        dots(level, (rows, k, n), x.as_ptr(), ldx, w.as_ptr(), ldw, y.as_mut_ptr(), ldy, overwrite)
                    };
                    let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                    let diff = got.iter().zip(&want).position(|(g, w)| g != w);
                    assert!(
                        diff.is_none(),
                        "bf16 level {level}, ({rows}, {k}, {n}), overwrite {overwrite}: differs at {diff:?}"
                    );
                }
            }
        }
    }
}
