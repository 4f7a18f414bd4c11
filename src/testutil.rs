//! The crate's one test helper for comparing numbers: `assert_close` (with `max_abs_diff` under it).
//! A failure names the worst element, its two values, how far apart they are and the tolerance, so a
//! broken kernel says how far off it is. Compiled for tests only.

/// Where `got` and `want` differ most: `(|got − want|, index)`, with the reference `want` in f32 or f64.
/// Two NaNs, or two equal infinities, count as equal; a NaN against a number (or inf against a
/// different value) is an infinite difference, so it is always the worst. `(0.0, 0)` for empty slices.
/// Panics when the lengths differ.
pub fn max_abs_diff<W: Copy + Into<f64>>(got: &[f32], want: &[W]) -> (f64, usize) {
    assert_eq!(got.len(), want.len(), "max_abs_diff: got {} values, want {}", got.len(), want.len());
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = diff(g as f64, w.into());
        if d > worst.0 {
            worst = (d, i);
        }
    }
    worst
}

/// |g − w|, with NaN = NaN and inf = inf taken as equal and any other NaN or inf mismatch as inf.
fn diff(g: f64, w: f64) -> f64 {
    if (g.is_nan() && w.is_nan()) || g == w {
        0.0
    } else if g.is_nan() || w.is_nan() {
        f64::INFINITY
    } else {
        (g - w).abs()
    }
}

/// Assert `|got[i] − want[i]| <= atol + rtol·|want[i]|` for every i (numpy's `allclose` rule; NaNs and
/// infinities as in `max_abs_diff`). `atol = rtol = tol` is the "relative to 1 + |want|" test. On failure
/// the message names `what`, the element furthest outside its tolerance, both values, the difference and
/// the tolerance. Returns the largest absolute difference.
pub fn assert_close<W: Copy + Into<f64>>(what: &str, got: &[f32], want: &[W], atol: f64, rtol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: got {} values, want {}", got.len(), want.len());
    // the worst element is the one with the largest difference relative to its own tolerance
    let mut worst: Option<(f64, usize)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w: f64 = w.into();
        let (d, tol) = (diff(g as f64, w), atol + rtol * w.abs());
        if d > tol {
            let excess = if tol > 0.0 { d / tol } else { f64::INFINITY };
            if worst.is_none_or(|(e, _)| excess > e) {
                worst = Some((excess, i));
            }
        }
    }
    if let Some((_, i)) = worst {
        let (g, w): (f64, f64) = (got[i] as f64, want[i].into());
        let bad = got.iter().zip(want).filter(|&(&g, &w)| diff(g as f64, w.into()) > atol + rtol * w.into().abs());
        panic!(
            "{what}: element {i} is off by {:.3e} (got {g}, want {w}; tolerance {:.3e} = atol {atol:.1e} + rtol \
             {rtol:.1e}·|want|); {} of {} elements are outside",
            diff(g, w),
            atol + rtol * w.abs(),
            bad.count(),
            got.len()
        );
    }
    max_abs_diff(got, want).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_diff_finds_the_worst_element_and_treats_nan_as_worst() {
        assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &[1.0f32, 2.5, 3.1]), (0.5, 1));
        assert_eq!(max_abs_diff(&[1.0, f32::NAN], &[1.0f64, f64::NAN]), (0.0, 0));
        assert_eq!(max_abs_diff(&[1.0, f32::NAN, 9.0], &[1.0f64, 0.0, 0.0]), (f64::INFINITY, 1));
        assert_eq!(max_abs_diff(&[f32::INFINITY], &[f64::INFINITY]), (0.0, 0));
        assert_eq!(max_abs_diff(&[f32::INFINITY], &[f64::NEG_INFINITY]), (f64::INFINITY, 0));
        assert_eq!(max_abs_diff::<f64>(&[], &[]), (0.0, 0));
    }

    #[test]
    fn assert_close_passes_within_tolerance() {
        let worst = assert_close("abs", &[1.0, 2.0], &[1.0f64, 2.0 + 1e-7], 1e-6, 0.0);
        assert!((worst - 1e-7).abs() < 1e-12, "{worst}");
        // 100.0 vs 100.01 is inside rtol 1e-3 but not atol 1e-3
        assert_close("rel", &[100.0], &[100.01f64], 1e-3, 1e-3);
        assert_close("nan", &[f32::NAN, f32::NEG_INFINITY], &[f32::NAN, f32::NEG_INFINITY], 0.0, 0.0);
    }

    #[test]
    #[should_panic(expected = "w: element 2 is off by 5.000e-1 (got 3.5, want 3; tolerance 1.000e-3")]
    fn assert_close_names_the_worst_element() {
        assert_close("w", &[1.0, 2.0, 3.5], &[1.0f32, 2.01, 3.0], 1e-3, 0.0);
    }

    #[test]
    #[should_panic(expected = "element 0 is off by inf (got NaN, want 1")]
    fn assert_close_fails_on_a_nan() {
        assert_close("nan", &[f32::NAN], &[1.0f64], 1.0, 1.0);
    }
}
