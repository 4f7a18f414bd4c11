//! Binary elementwise ops with numpy broadcasting: add, sub, mul, div, pow, minimum, maximum; scalar
//! forms are the same ops with a 0-d tensor. Backward "unbroadcasts": a gradient for a broadcast input
//! is summed over the dims it was stretched along.

use crate::autograd::{Backward, record};
use crate::error::Result;
use crate::parallel::{GRAIN, for_each_chunk};
use crate::tensor::shape::broadcast_strides;
use crate::tensor::{Tensor, alloc_zeros, broadcast_shapes, checked_numel, numel, strides};

/// `f(a, b)` elementwise over the broadcast shape of `a` and `b`.
pub fn zip_broadcast<F>(op: &'static str, a: &Tensor, b: &Tensor, f: F) -> Result<Tensor>
where
    F: Fn(f32, f32) -> f32 + Send + Sync,
{
    let shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let n = checked_numel(op, &shape)?;
    let mut out = alloc_zeros(op, n)?;
    let reads = crate::tensor::read_all([a, b]);
    let [ad, bd] = reads.slices();
    let (na, nb) = (ad.len(), bd.len());
    if n == 0 {
    } else if na == n && nb == n {
        for_each_chunk(&mut out, GRAIN, |s, c| {
            c.iter_mut().enumerate().for_each(|(j, o)| *o = f(ad[s + j], bd[s + j]))
        });
    } else if na == n && is_suffix(b.shape(), &shape) {
        // b repeats along the leading dims (bias add, scalar)
        for_each_chunk(&mut out, GRAIN, |s, c| {
            c.iter_mut().enumerate().for_each(|(j, o)| *o = f(ad[s + j], bd[(s + j) % nb]))
        });
    } else if nb == n && is_suffix(a.shape(), &shape) {
        for_each_chunk(&mut out, GRAIN, |s, c| {
            c.iter_mut().enumerate().for_each(|(j, o)| *o = f(ad[(s + j) % na], bd[s + j]))
        });
    } else {
        let (sa, sb, so) =
            (broadcast_strides(a.shape(), &shape), broadcast_strides(b.shape(), &shape), strides(&shape));
        for_each_chunk(&mut out, GRAIN, |s, c| {
            for (j, o) in c.iter_mut().enumerate() {
                let (mut ia, mut ib, mut rem) = (0, 0, s + j);
                for d in 0..so.len() {
                    let q = rem / so[d];
                    rem -= q * so[d];
                    ia += q * sa[d];
                    ib += q * sb[d];
                }
                *o = f(ad[ia], bd[ib]);
            }
        });
    }
    Ok(Tensor::from_vec_unchecked(out, shape))
}

/// True if `small` equals the trailing dims of `big` once leading 1s are dropped (so it repeats with period numel).
fn is_suffix(small: &[usize], big: &[usize]) -> bool {
    let s: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    s.len() <= big.len() && big[big.len() - s.len()..] == s[..]
}

/// Sum `g` (broadcast shape) down to `shape`: the gradient of a broadcast.
pub fn unbroadcast(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let n = numel(shape);
    let mut acc = vec![0f64; n];
    let gd = g.data();
    if is_suffix(shape, g.shape()) {
        for (i, &v) in gd.iter().enumerate() {
            acc[i % n.max(1)] += v as f64;
        }
    } else {
        let (st, so) = (broadcast_strides(shape, g.shape()), strides(g.shape()));
        for (i, &v) in gd.iter().enumerate() {
            let (mut it, mut rem) = (0, i);
            for d in 0..so.len() {
                let q = rem / so[d];
                rem -= q * so[d];
                it += q * st[d];
            }
            acc[it] += v as f64;
        }
    }
    Tensor::new(acc.into_iter().map(|v| v as f32).collect(), shape)
}

// ---- add ----
/// out = a + b (broadcasting).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("add", a, b, |x, y| x + y)?;
    Ok(record(out, AddBackward { a: a.clone(), b: b.clone() }))
}
struct AddBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for AddBackward {
    fn name(&self) -> &'static str {
        "add"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a + b  so  da = dout, db = dout (summed over broadcast dims)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![
            if needs[0] { Some(unbroadcast(dout, self.a.shape())?) } else { None },
            if needs[1] { Some(unbroadcast(dout, self.b.shape())?) } else { None },
        ])
    }
}

// ---- sub ----
/// out = a − b (broadcasting).
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("sub", a, b, |x, y| x - y)?;
    Ok(record(out, SubBackward { a: a.clone(), b: b.clone() }))
}
struct SubBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for SubBackward {
    fn name(&self) -> &'static str {
        "sub"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a − b  so  da = dout, db = −dout
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let db = if needs[1] {
            Some(unbroadcast(&zip_broadcast("sub", dout, &Tensor::scalar(-1.0), |g, m| g * m)?, self.b.shape())?)
        } else {
            None
        };
        Ok(vec![if needs[0] { Some(unbroadcast(dout, self.a.shape())?) } else { None }, db])
    }
}

// ---- mul ----
/// out = a * b (broadcasting).
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("mul", a, b, |x, y| x * y)?;
    Ok(record(out, MulBackward { a: a.clone(), b: b.clone() }))
}
struct MulBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for MulBackward {
    fn name(&self) -> &'static str {
        "mul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a * b  so  da = dout * b, db = dout * a
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let da = if needs[0] {
            Some(unbroadcast(&zip_broadcast("mul", dout, &self.b, |g, y| g * y)?, self.a.shape())?)
        } else {
            None
        };
        let db = if needs[1] {
            Some(unbroadcast(&zip_broadcast("mul", dout, &self.a, |g, x| g * x)?, self.b.shape())?)
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

// ---- div ----
/// out = a / b (broadcasting). Division by zero follows IEEE (inf or nan), as in numpy.
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("div", a, b, |x, y| x / y)?;
    Ok(record(out, DivBackward { a: a.clone(), b: b.clone() }))
}
struct DivBackward {
    a: Tensor,
    b: Tensor,
}
impl Backward for DivBackward {
    fn name(&self) -> &'static str {
        "div"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a / b  so  da = dout / b, db = −dout * a / b²
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let da = if needs[0] {
            Some(unbroadcast(&zip_broadcast("div", dout, &self.b, |g, y| g / y)?, self.a.shape())?)
        } else {
            None
        };
        let db = if needs[1] {
            let ab = zip_broadcast("div", &self.a, &self.b, |x, y| -x / (y * y))?;
            Some(unbroadcast(&zip_broadcast("div", dout, &ab, |g, q| g * q)?, self.b.shape())?)
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

// ---- pow ----
/// out = a ^ b (broadcasting). Negative bases with non-integer exponents give nan, as in numpy.
pub fn pow(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("pow", a, b, f32::powf)?;
    Ok(record(out.clone(), PowBackward { a: a.clone(), b: b.clone(), out: out.detach() }))
}
struct PowBackward {
    a: Tensor,
    b: Tensor,
    out: Tensor,
}
impl Backward for PowBackward {
    fn name(&self) -> &'static str {
        "pow"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a^b  so  da = dout * b * a^(b−1),  db = dout * out * ln(a)  (taken as 0 where a == 0, like torch)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let da = if needs[0] {
            let d = zip_broadcast("pow", &self.a, &self.b, |x, y| if y == 0.0 { 0.0 } else { y * x.powf(y - 1.0) })?;
            Some(unbroadcast(&zip_broadcast("pow", dout, &d, |g, q| g * q)?, self.a.shape())?)
        } else {
            None
        };
        let db = if needs[1] {
            let lna = zip_broadcast("pow", &self.out, &self.a, |o, x| if x == 0.0 { 0.0 } else { o * x.ln() })?;
            Some(unbroadcast(&zip_broadcast("pow", dout, &lna, |g, q| g * q)?, self.b.shape())?)
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

// ---- minimum / maximum ----
/// The larger of two values, nan if either is nan (numpy's `maximum`, torch's `maximum`).
#[inline(always)]
fn max_nan(x: f32, y: f32) -> f32 {
    // x + y is nan exactly when neither comparison held, i.e. when one of them is nan
    if x > y {
        x
    } else if y >= x {
        y
    } else {
        x + y
    }
}
/// The smaller of two values, nan if either is nan.
#[inline(always)]
fn min_nan(x: f32, y: f32) -> f32 {
    if x < y {
        x
    } else if y <= x {
        y
    } else {
        x + y
    }
}

/// out = elementwise max(a, b) (broadcasting); nan if either is nan, as in numpy and torch.
/// NOTE: at a tie (a == b) the gradient is split, dout/2 to each input (torch's rule: the average of
/// the two one-sided derivatives); where one input is nan both get the whole dout.
pub fn maximum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("maximum", a, b, max_nan)?;
    Ok(record(out, MinMaxBackward { a: a.clone(), b: b.clone(), max: true }))
}
/// out = elementwise min(a, b) (broadcasting); nan if either is nan.
/// NOTE: at a tie the gradient is split dout/2 to each input, as in `maximum`.
pub fn minimum(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let out = zip_broadcast("minimum", a, b, min_nan)?;
    Ok(record(out, MinMaxBackward { a: a.clone(), b: b.clone(), max: false }))
}
struct MinMaxBackward {
    a: Tensor,
    b: Tensor,
    /// maximum (true) or minimum (false)
    max: bool,
}
impl Backward for MinMaxBackward {
    fn name(&self) -> &'static str {
        if self.max { "maximum" } else { "minimum" }
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = a where a wins, b where b wins  so  da = dout·[a wins], db = dout·[b wins], with a tie
    // giving 1/2 to each; "a loses" is a < b for maximum (a > b for minimum), so a nan never loses
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let op = self.name();
        let sign = if self.max { 1.0f32 } else { -1.0 };
        // weight of the first argument x against y: 0 if x loses, 1/2 at a tie, else 1
        let weight = move |x: f32, y: f32| {
            if x == y {
                0.5
            } else if sign * x < sign * y {
                0.0
            } else {
                1.0
            }
        };
        let grad = |x: &Tensor, y: &Tensor, shape: &[usize]| -> Result<Tensor> {
            let w = zip_broadcast(op, x, y, weight)?;
            unbroadcast(&zip_broadcast(op, dout, &w, |g, w| g * w)?, shape)
        };
        Ok(vec![
            if needs[0] { Some(grad(&self.a, &self.b, self.a.shape())?) } else { None },
            if needs[1] { Some(grad(&self.b, &self.a, self.b.shape())?) } else { None },
        ])
    }
}

// ---- comparisons (no gradient: the result is a 0/1 mask) ----
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}
/// 1.0 where `a <cmp> b` holds, else 0.0 (broadcasting). Never recorded: comparisons have no gradient.
pub fn compare(a: &Tensor, b: &Tensor, cmp: Cmp) -> Result<Tensor> {
    let f = move |x: f32, y: f32| {
        let r = match cmp {
            Cmp::Eq => x == y,
            Cmp::Ne => x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
        };
        r as u8 as f32
    };
    zip_broadcast("compare", a, b, f)
}

// ---- scalar forms: the same ops with a 0-d constant ----
pub fn add_scalar(a: &Tensor, s: f32) -> Result<Tensor> {
    add(a, &Tensor::scalar(s))
}
pub fn mul_scalar(a: &Tensor, s: f32) -> Result<Tensor> {
    mul(a, &Tensor::scalar(s))
}
/// s − a
pub fn rsub_scalar(s: f32, a: &Tensor) -> Result<Tensor> {
    sub(&Tensor::scalar(s), a)
}
/// s / a
pub fn rdiv_scalar(s: f32, a: &Tensor) -> Result<Tensor> {
    div(&Tensor::scalar(s), a)
}
/// a ^ p
pub fn pow_scalar(a: &Tensor, p: f32) -> Result<Tensor> {
    pow(a, &Tensor::scalar(p))
}
/// s ^ a
pub fn rpow_scalar(s: f32, a: &Tensor) -> Result<Tensor> {
    pow(&Tensor::scalar(s), a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::tensor::random::{manual_seed, rand, randn};

    fn p(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }
    fn positive(shape: &[usize]) -> Tensor {
        rand(shape, 0.5, 2.0).unwrap().requires_grad_(true)
    }

    /// numpy-style reference: index every element through explicit broadcast strides, in f64.
    fn reference(a: &Tensor, b: &Tensor, f: fn(f64, f64) -> f64) -> Vec<f32> {
        let shape = broadcast_shapes("ref", a.shape(), b.shape()).unwrap();
        let (sa, sb, so) =
            (broadcast_strides(a.shape(), &shape), broadcast_strides(b.shape(), &shape), strides(&shape));
        (0..numel(&shape))
            .map(|i| {
                let (ia, ib): (usize, usize) = (0..shape.len())
                    .map(|d| ((i / so[d]) % shape[d] * sa[d], (i / so[d]) % shape[d] * sb[d]))
                    .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
                f(a.data()[ia] as f64, b.data()[ib] as f64) as f32
            })
            .collect()
    }

    type Op = fn(&Tensor, &Tensor) -> Result<Tensor>;
    type Ref = fn(f64, f64) -> f64;
    const OPS: [(&str, Op, Ref); 5] = [
        ("add", add, |x, y| x + y),
        ("sub", sub, |x, y| x - y),
        ("mul", mul, |x, y| x * y),
        ("div", div, |x, y| x / y),
        ("pow", pow, f64::powf),
    ];
    const SHAPES: [(&[usize], &[usize]); 5] =
        [(&[2, 3], &[2, 3]), (&[2, 3], &[3]), (&[4, 1], &[1, 5]), (&[2, 1, 3], &[4, 1]), (&[], &[3])];

    #[test]
    fn forward_matches_reference_and_gradcheck_passes() {
        manual_seed(0);
        for (name, op, f) in OPS {
            for (sa, sb) in SHAPES {
                // positive inputs keep div and pow smooth
                let (a, b) = (positive(sa), positive(sb));
                let out = op(&a, &b).unwrap();
                let want = reference(&a, &b, f);
                for (i, (&o, &w)) in out.data().iter().zip(&want).enumerate() {
                    assert!((o - w).abs() <= 1e-5 * (1.0 + w.abs()), "{name} {sa:?} {sb:?} element {i}: {o} vs {w}");
                }
                assert_gradcheck(|xs| op(&xs[0], &xs[1]), &[a, b]);
            }
        }
        // signed inputs for the ops that allow them
        assert_gradcheck(|xs| mul(&xs[0], &xs[1]), &[p(&[3, 4]), p(&[4])]);
        assert_gradcheck(|xs| sub(&xs[0], &xs[1]), &[p(&[3, 1]), p(&[2, 1, 4])]);
    }

    #[test]
    fn shape_mismatch_is_an_error_in_every_op() {
        let (a, b) = (p(&[2, 3]), p(&[4]));
        for (name, op, _) in OPS {
            let e = op(&a, &b).unwrap_err();
            assert_eq!(e.to_string(), format!("{name}: cannot broadcast (2, 3) with (4,)"));
        }
    }

    #[test]
    fn scalars_and_ieee_edge_cases() {
        let a = Tensor::new(vec![1.0, 0.0, -1.0], &[3]).unwrap();
        assert_eq!(rdiv_scalar(1.0, &a).unwrap().to_vec(), vec![1.0, f32::INFINITY, -1.0]);
        assert!(div(&Tensor::scalar(0.0), &Tensor::scalar(0.0)).unwrap().item().unwrap().is_nan());
        assert_eq!(rsub_scalar(1.0, &a).unwrap().to_vec(), vec![0.0, 1.0, 2.0]);
        assert_eq!(pow_scalar(&a, 2.0).unwrap().to_vec(), vec![1.0, 0.0, 1.0]);
        assert_eq!(rpow_scalar(2.0, &a).unwrap().to_vec(), vec![2.0, 1.0, 0.5]);
        // empty tensors broadcast to empty outputs
        let e = add(&Tensor::zeros(&[0, 3]).unwrap(), &Tensor::ones(&[3]).unwrap()).unwrap();
        assert_eq!(e.shape(), &[0, 3]);
    }

    #[test]
    fn comparisons_make_masks_without_grad() {
        let a = Tensor::new(vec![1.0, 2.0, f32::NAN], &[3]).unwrap().requires_grad_(true);
        let m = compare(&a, &Tensor::scalar(2.0), Cmp::Ge).unwrap();
        assert_eq!(m.to_vec(), vec![0.0, 1.0, 0.0]);
        assert!(!m.requires_grad());
        assert_eq!(compare(&a, &a, Cmp::Ne).unwrap().to_vec(), vec![0.0, 0.0, 1.0]); // nan != nan
    }

    #[test]
    fn unbroadcast_sums_stretched_dims() {
        let g = Tensor::ones(&[2, 4, 3]).unwrap();
        assert_eq!(unbroadcast(&g, &[3]).unwrap().to_vec(), vec![8.0; 3]);
        assert_eq!(unbroadcast(&g, &[4, 1]).unwrap().to_vec(), vec![6.0; 4]);
        assert_eq!(unbroadcast(&g, &[]).unwrap().to_vec(), vec![24.0]);
    }

    // ---- minimum / maximum ----

    /// Whole numbers for a, half-way numbers for b: every pair is at least 0.5 apart, so no finite
    /// difference of the gradcheck crosses a tie.
    fn apart(shape: &[usize], half: bool) -> Tensor {
        let x = randn(shape, 0.0, 3.0).unwrap();
        let v = x.data().iter().map(|&v| v.round() + if half { 0.5 } else { 0.0 }).collect();
        Tensor::new(v, shape).unwrap().requires_grad_(true)
    }

    #[test]
    fn minimum_maximum_match_reference_and_gradcheck_passes() {
        manual_seed(1);
        let ops: [(&str, Op, Ref); 2] = [("maximum", maximum, f64::max), ("minimum", minimum, f64::min)];
        for (name, op, f) in ops {
            for (sa, sb) in SHAPES {
                let (a, b) = (apart(sa, false), apart(sb, true));
                let out = op(&a, &b).unwrap();
                assert_eq!(out.shape(), &broadcast_shapes("t", sa, sb).unwrap()[..], "{name} {sa:?} {sb:?}");
                crate::testutil::assert_close(
                    &format!("{name} {sa:?} {sb:?}"),
                    &out.data(),
                    &reference(&a, &b, f),
                    0.0,
                    0.0,
                );
                assert_gradcheck(|xs| op(&xs[0], &xs[1]), &[a.clone(), b.clone()]);
                // arguments swapped: same values
                assert_eq!(op(&b, &a).unwrap().to_vec(), out.to_vec(), "{name} is symmetric");
            }
        }
    }

    #[test]
    fn minimum_maximum_split_the_gradient_at_ties() {
        // a = (1, 2, 3) against b = 2 (broadcast): a tie in the middle gives 1/2 to each side, and b's
        // gradient sums its three uses
        let a = Tensor::new(vec![1.0, 2.0, 3.0], &[3]).unwrap().requires_grad_(true);
        let b = Tensor::scalar(2.0).requires_grad_(true);
        for (op, da, db) in [(maximum as Op, [0.0, 0.5, 1.0], 1.5), (minimum, [1.0, 0.5, 0.0], 1.5)] {
            a.zero_grad();
            b.zero_grad();
            crate::ops::reduce::sum_all(&op(&a, &b).unwrap()).unwrap().backward(None, false).unwrap();
            assert_eq!(a.grad().unwrap().to_vec(), da.to_vec());
            assert_eq!(b.grad().unwrap().to_vec(), vec![db]);
        }
        // maximum(x, x): the tie everywhere still adds up to the gradient of x itself
        let x = Tensor::new(vec![-1.0, 4.0], &[2]).unwrap().requires_grad_(true);
        crate::ops::reduce::sum_all(&maximum(&x, &x).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![1.0, 1.0]);
    }

    #[test]
    fn minimum_maximum_extreme_inputs_follow_ieee() {
        let (inf, nan) = (f32::INFINITY, f32::NAN);
        let a = Tensor::new(vec![-100.0, 100.0, -inf, inf, nan, 1.0, inf], &[7]).unwrap().requires_grad_(true);
        let b = Tensor::new(vec![100.0, -100.0, 0.0, 0.0, 1.0, nan, inf], &[7]).unwrap().requires_grad_(true);
        let mx = maximum(&a, &b).unwrap().to_vec();
        let mn = minimum(&a, &b).unwrap().to_vec();
        assert_eq!(&mx[..4], &[100.0, 100.0, 0.0, inf]);
        assert_eq!(&mn[..4], &[-100.0, -100.0, -inf, 0.0]);
        assert_eq!((mx[6], mn[6]), (inf, inf));
        // a nan on either side propagates (np.maximum / torch.maximum), unlike f32::max
        assert!(mx[4].is_nan() && mx[5].is_nan() && mn[4].is_nan() && mn[5].is_nan(), "{mx:?} {mn:?}");
        crate::ops::reduce::sum_all(&maximum(&a, &b).unwrap()).unwrap().backward(None, false).unwrap();
        // a nan pair passes the whole gradient to both sides; inf == inf is a tie
        assert_eq!(a.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.5]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.5]);
        // shape errors name the op
        let e = maximum(&Tensor::zeros(&[2, 3]).unwrap(), &Tensor::zeros(&[4]).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "maximum: cannot broadcast (2, 3) with (4,)");
        let e = minimum(&Tensor::zeros(&[2]).unwrap(), &Tensor::zeros(&[3]).unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "minimum: cannot broadcast (2,) with (3,)");
    }
}
