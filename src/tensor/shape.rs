//! Shape arithmetic: element counts (checked, so huge sizes become errors, not aborts), contiguous
//! strides, negative-dim normalisation and numpy broadcasting.

use crate::error::{Error, Result, fmt_shape};

/// Number of elements; 1 for a scalar `()`.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Number of elements, or `Error::Alloc` if it overflows or is too large to ever allocate.
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    let mut n: u128 = 1;
    for &d in shape {
        n = n.saturating_mul(d as u128);
    }
    // 4 bytes per element must fit in an isize (Rust's hard allocation limit).
    if n.saturating_mul(4) > isize::MAX as u128 {
        return Err(Error::alloc(op, n));
    }
    Ok(n as usize)
}

/// Row-major (C-contiguous) strides in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Turn a possibly negative dim (-1 = last) into an index, checking the range.
pub fn normalize_dim(op: &'static str, dim: isize, ndim: usize) -> Result<usize> {
    let d = if dim < 0 { dim + ndim as isize } else { dim };
    if d < 0 || d >= ndim as isize {
        let lo = -(ndim as isize);
        let hi = ndim as isize - 1;
        return Err(Error::index(
            op,
            format!("dim {dim} is out of range for a tensor with {ndim} dims (expected {lo}..={hi})"),
        ));
    }
    Ok(d as usize)
}

/// numpy broadcasting: align trailing dims; each pair must be equal or one of them 1.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(Error::shape(op, format!("cannot broadcast {} with {}", fmt_shape(a), fmt_shape(b))));
        };
    }
    Ok(out)
}

/// Strides (in elements) to read `shape` as if broadcast to `out` (0 on broadcast dims).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(shape);
    let off = out.len() - shape.len();
    (0..out.len()).map(|i| if i < off || shape[i - off] == 1 { 0 } else { own[i - off] }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shapes("t", &[2, 1, 3], &[4, 1]).unwrap(), vec![2, 4, 3]);
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), vec![5]);
        let e = broadcast_shapes("add", &[2, 3], &[4]).unwrap_err();
        assert_eq!(e.to_string(), "add: cannot broadcast (2, 3) with (4,)");
    }

    #[test]
    fn dims_and_sizes() {
        assert_eq!(normalize_dim("t", -1, 3).unwrap(), 2);
        assert!(normalize_dim("t", 3, 3).is_err());
        assert!(normalize_dim("t", -4, 3).is_err());
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert!(checked_numel("t", &[1 << 40, 1 << 40]).is_err());
    }
}
