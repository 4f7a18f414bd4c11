//! The one home of the vector-kernel plumbing that `unary`, `matmul` and `attention` share: the run-time
//! dispatch (`dispatch_simd!`, picking a body compiled for AVX-512, AVX2 or the baseline), `madd`, the
//! 16-lane `dot` (and `dot4`, four of them sharing one x, portable and AVX2 intrinsics) and `lanes_sum`,
//! the fixed-order sum of those lanes; and `sum8` / `dot8` / `fold8`, the 8-lane sums of the row reductions.
//! Bits: a body compiled for a wider unit only runs more lanes at once. Rust never fuses a·b + c into
//! an FMA on its own, so code that does not call `madd` (or `mul_add`) rounds identically on every level;
//! `madd` fuses on levels 1 and 2, which is why attention may differ in the last bit between CPUs with and
//! without FMA, never between thread counts. The tests below hold every level to the baseline's bits.

/// Which vector unit a kernel body is compiled for: 2 = AVX-512F (+ FMA), 1 = AVX2 + FMA, 0 = baseline.
/// Bodies are generic over it (`fn body<const ISA: Isa>`); `dispatch_simd!` picks the level at run time.
pub(crate) type Isa = u8;

/// The widest level this CPU runs (std detects the features once and caches them).
#[inline]
pub(crate) fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = std::is_x86_feature_detected!("fma");
        if fma && std::is_x86_feature_detected!("avx512f") {
            return 2;
        }
        if fma && std::is_x86_feature_detected!("avx2") {
            return 1;
        }
    }
    0
}

/// Run `body::<ISA>(args)` at the widest level `isa()` reports, as the tail of the calling function
/// (which returns `()`): defines `$avx512` and `$avx2`, the body compiled with those features enabled,
/// and calls one of them or the baseline `body::<0>`.
///
/// ```ignore
/// fn transpose_one(x: &[f32], t: usize, c: usize, out: &mut [f32]) {
///     dispatch_simd!(transpose_one_body, transpose_one_avx512, transpose_one_avx2,
///                    (x: &[f32], t: usize, c: usize, out: &mut [f32]));
/// }
/// ```
/// Arguments may be `&impl Fn(..)` (a closure): `body::<ISA>` still names only the level.
macro_rules! dispatch_simd {
    ($body:ident, $avx512:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        fn $avx512($($arg: $ty),*) {
            $body::<2>($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) {
            $body::<1>($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        {
            match $crate::ops::simd::isa() {
                // SAFETY: `isa()` found AVX-512F and FMA on this CPU.
                2 => return unsafe { $avx512($($arg),*) },
                // SAFETY: `isa()` found AVX2 and FMA on this CPU.
                1 => return unsafe { $avx2($($arg),*) },
                _ => {}
            }
        }
        $body::<0>($($arg),*)
    };
}
pub(crate) use dispatch_simd;

/// `a·b + c`, fused (one rounding) on levels with FMA, two roundings on the baseline.
#[inline(always)]
pub(crate) fn madd<const ISA: Isa>(a: f32, b: f32, c: f32) -> f32 {
    if ISA >= 1 { a.mul_add(b, c) } else { a * b + c }
}

/// How many independent partial sums the reductions keep (so their loops vectorize at any width).
pub(crate) const LANES: usize = 16;

/// The `LANES` partial sums of a vectorized loop added pairwise in a fixed order (lane l + lane l + w,
/// halving w), so a reduction gives the same bits whatever vector width its loop was compiled for.
#[inline(always)]
pub(crate) fn lanes_sum(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0]
}

/// The 8 partial sums of the f64 (and f32) row reductions in `reduce`, `softmax` and `norm`, added as
/// ((0 + 4) + (1 + 5)) + ((2 + 6) + (3 + 7)): their one fixed order (not `lanes_sum`'s, which pairs 0 + 2).
#[inline(always)]
pub(crate) fn fold8<T: Copy + std::ops::Add<Output = T>>(a: [T; 8]) -> T {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// Σ f(x) over `xs` in 8 lanes: lane k adds the terms k, k + 8, ... in order, the lanes are `fold8`ed,
/// then the tail (the last len % 8 terms) is added one by one.
#[inline(always)]
pub(crate) fn sum8<T>(xs: &[f32], f: impl Fn(f32) -> T) -> T
where
    T: Copy + Default + std::ops::Add<Output = T>,
{
    let mut acc = [T::default(); 8];
    let chunks = xs.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k] + f(c[k]);
        }
    }
    tail.iter().fold(fold8(acc), |s, &v| s + f(v))
}

/// Σ f(a, b) over pairs of `xs` and `ys` in the same 8 lanes and order as `sum8`.
#[inline(always)]
pub(crate) fn dot8<T>(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> T) -> T
where
    T: Copy + Default + std::ops::Add<Output = T>,
{
    let mut acc = [T::default(); 8];
    let (cx, cy) = (xs.chunks_exact(8), ys.chunks_exact(8));
    let (tx, ty) = (cx.remainder(), cy.remainder());
    for (x, y) in cx.zip(cy) {
        for k in 0..8 {
            acc[k] = acc[k] + f(x[k], y[k]);
        }
    }
    tx.iter().zip(ty).fold(fold8(acc), |s, (&x, &y)| s + f(x, y))
}

/// Σ x·y in `LANES` independent f32 lanes (lane l takes the terms l, l + 16, ... in order, the tail
/// goes to lanes 0..), then `lanes_sum`. No FMA: the same bits at every level. Lengths must match.
#[inline(always)]
pub(crate) fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (xc, yc) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xa, ya) in xc.zip(yc) {
        for l in 0..LANES {
            acc[l] += xa[l] * ya[l];
        }
    }
    for (l, (&xv, &yv)) in xr.iter().zip(yr).enumerate() {
        acc[l] += xv * yv;
    }
    lanes_sum(acc)
}

/// Four dot products with one x: `[dot(x, ys[0]), .., dot(x, ys[3])]`, bit for bit (same lanes, same order).
#[inline(always)]
pub(crate) fn dot4(x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
    let mut acc = [[0f32; LANES]; 4];
    let [c0, c1, c2, c3] = ys.map(|y| y.chunks_exact(LANES));
    let (r0, r1, r2, r3) = (c0.remainder(), c1.remainder(), c2.remainder(), c3.remainder());
    let xc = x.chunks_exact(LANES);
    let xr = xc.remainder();
    for ((((xa, a0), a1), a2), a3) in xc.zip(c0).zip(c1).zip(c2).zip(c3) {
        for l in 0..LANES {
            acc[0][l] += xa[l] * a0[l];
            acc[1][l] += xa[l] * a1[l];
            acc[2][l] += xa[l] * a2[l];
            acc[3][l] += xa[l] * a3[l];
        }
    }
    for (a, r) in acc.iter_mut().zip([r0, r1, r2, r3]) {
        for (l, (&xv, &yv)) in xr.iter().zip(r).enumerate() {
            a[l] += xv * yv;
        }
    }
    acc.map(lanes_sum)
}

/// `dot4` with AVX2 intrinsics, bit for bit: lane l of the 16 (two 8-wide registers per dot) sums
/// x[l + 16i]·y[l + 16i] over i in order, with a separate multiply and add (no FMA), exactly as `dot4`'s
/// portable loop does; the tail and the pairwise lane sum are `dot4`'s own code.
/// SAFETY: the caller makes sure the CPU has AVX2. Panics if the lengths differ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn dot4_avx2(x: &[f32], ys: [&[f32]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = x.len();
    assert!(ys.iter().all(|y| y.len() == n), "dot4: lengths differ");
    let full = n / LANES * LANES;
    let mut acc = [[0f32; LANES]; 4];
    // SAFETY: every load reads 8 floats at i or i + 8 with i + 16 <= full <= n, inside x and each y.
    unsafe {
        let (xp, yp) = (x.as_ptr(), ys.map(|y| y.as_ptr()));
        let z = _mm256_setzero_ps();
        let (mut lo, mut hi) = ([z; 4], [z; 4]);
        let mut i = 0;
        while i < full {
            let (xl, xh) = (_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(xp.add(i + 8)));
            for r in 0..4 {
                lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(xl, _mm256_loadu_ps(yp[r].add(i))));
                hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(xh, _mm256_loadu_ps(yp[r].add(i + 8))));
            }
            i += LANES;
        }
        for r in 0..4 {
            _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
        }
    }
    for (a, y) in acc.iter_mut().zip(ys) {
        for (l, (&xv, &yv)) in x[full..].iter().zip(&y[full..]).enumerate() {
            a[l] += xv * yv;
        }
    }
    acc.map(lanes_sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::Rng;

    fn vector(r: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (r.uniform() - 0.5) * 8.0).collect()
    }

    /// `dot` through the dispatcher, so the loop is compiled at every level this CPU has.
    fn dot_at_level(x: &[f32], y: &[f32], out: &mut [f32]) {
        dispatch_simd!(dot_body, dot_avx512, dot_avx2, (x: &[f32], y: &[f32], out: &mut [f32]));
    }
    #[inline(always)]
    fn dot_body<const ISA: Isa>(x: &[f32], y: &[f32], out: &mut [f32]) {
        out[0] = dot(x, y);
    }

    /// A plain scalar statement of the same sum: lane l takes terms l, l + 16, ..., then the pairwise tree.
    fn dot_by_hand(x: &[f32], y: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
            let l = if i < x.len() / LANES * LANES { i % LANES } else { i - x.len() / LANES * LANES };
            acc[l] = std::hint::black_box(acc[l] + a * b);
        }
        let mut w = LANES;
        while w > 1 {
            w /= 2;
            for l in 0..w {
                acc[l] += acc[l + w];
            }
        }
        acc[0]
    }

    #[test]
    fn dot_gives_the_same_bits_at_every_level_and_by_hand() {
        let mut r = Rng::new(9);
        for n in [0, 1, 7, 15, 16, 17, 31, 64, 100, 1000, 4099] {
            let (x, y) = (vector(&mut r, n), vector(&mut r, n));
            let mut got = [0f32];
            dot_at_level(&x, &y, &mut got);
            let want = dot_by_hand(&x, &y);
            assert_eq!(got[0].to_bits(), want.to_bits(), "length {n}: dispatched {} vs by hand {want}", got[0]);
            assert_eq!(dot(&x, &y).to_bits(), want.to_bits(), "length {n}: baseline");
            // and it is a dot product: within f32 rounding of the f64 sum
            let exact: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert!((got[0] as f64 - exact).abs() <= 1e-5 * (1.0 + n as f64), "length {n}: {} vs {exact}", got[0]);
        }
    }

    #[test]
    fn dot4_portable_and_avx2_give_the_bits_of_four_dots() {
        let mut r = Rng::new(3);
        for n in [0, 1, 5, 16, 17, 33, 64, 100, 257] {
            let x = vector(&mut r, n);
            let ys: Vec<Vec<f32>> = (0..4).map(|_| vector(&mut r, n)).collect();
            let ys = [&ys[0][..], &ys[1][..], &ys[2][..], &ys[3][..]];
            let want = ys.map(|y| dot(&x, y).to_bits());
            assert_eq!(dot4(&x, ys).map(f32::to_bits), want, "portable, length {n}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                let simd = unsafe { dot4_avx2(&x, ys) };
                assert_eq!(simd.map(f32::to_bits), want, "AVX2, length {n}: {simd:?}");
            }
        }
    }

    #[test]
    fn lanes_sum_adds_in_the_documented_order() {
        // 1e8 + 1 − 1e8 loses the 1 in f32 unless the 1 meets the other small values first
        let mut acc = [0f32; LANES];
        acc[0] = 1e8;
        acc[8] = -1e8;
        acc[1] = 1.0;
        // pairs (0, 8) cancel first: 0; then 1 survives
        assert_eq!(lanes_sum(acc), 1.0);
        assert_eq!(lanes_sum([1.0; LANES]), 16.0);
    }

    #[test]
    fn sum8_and_dot8_add_in_the_documented_order() {
        // 1e8 + 1 − 1e8 in f32: the 1 survives only if it meets the cancelling pair after they cancel
        let mut a = [0f32; 8];
        (a[0], a[4], a[1]) = (1e8, -1e8, 1.0);
        assert_eq!(fold8(a), 1.0);
        (a[0], a[4], a[1], a[2]) = (1e8, 1.0, -1e8, 0.0);
        assert_eq!(fold8(a), 0.0, "(1e8 + 1) + (−1e8 + 0) loses the 1");
        // the same as a scalar statement of the order, bit for bit, in f64 and f32, with and without a tail
        let mut r = Rng::new(5);
        for n in [0, 1, 7, 8, 9, 16, 63, 100, 1001] {
            let (x, y) = (vector(&mut r, n), vector(&mut r, n));
            let full = n / 8 * 8;
            let mut lanes = [0f64; 8];
            for (i, &v) in x[..full].iter().enumerate() {
                lanes[i % 8] += v as f64 * y[i] as f64;
            }
            let mut want =
                ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for i in full..n {
                want += x[i] as f64 * y[i] as f64;
            }
            assert_eq!(dot8(&x, &y, |a, b| a as f64 * b as f64).to_bits(), want.to_bits(), "dot8, length {n}");
            let mut lanes = [0f32; 8];
            for (i, &v) in x[..full].iter().enumerate() {
                lanes[i % 8] += v;
            }
            let mut want =
                ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for &v in &x[full..] {
                want += v;
            }
            assert_eq!(sum8(&x, |v| v).to_bits(), want.to_bits(), "sum8, length {n}");
        }
    }

    #[test]
    fn madd_fuses_only_with_fma() {
        // (1 + 2⁻¹²)² − (1 + 2⁻¹¹) = 2⁻²⁴ exactly, but the rounded square has lost that 2⁻²⁴
        let (a, c) = (1.0 + 2f32.powi(-12), -(1.0 + 2f32.powi(-11)));
        assert_eq!(madd::<1>(a, a, c), 2f32.powi(-24));
        assert_eq!(madd::<2>(a, a, c), 2f32.powi(-24));
        assert_ne!(madd::<0>(std::hint::black_box(a), a, c), 2f32.powi(-24));
        assert!(isa() <= 2);
    }
}
