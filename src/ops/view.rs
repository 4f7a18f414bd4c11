//! Shape ops: reshape (a zero-copy view) and the reshapes unsqueeze/squeeze/flatten, permute/transpose,
//! narrow/slice/select, cat/stack, expand; and copy_, the in-place load into a leaf. Storage is always
//! contiguous, so every op but the reshapes materialises a copy. permute and expand share one
//! strided-gather kernel (`gather_strided`) that merges dims, copies whole contiguous runs where it can and
//! tiles the rest like a matrix transpose, in parallel for large outputs. A copy is exact, so results do not
//! depend on the thread count. Each backward is the same move in reverse: reshape back, the inverse
//! permutation, a scatter into zeros, a split.

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::unbroadcast;
use crate::parallel::{GRAIN, for_each_chunk};
use crate::tensor::shape::broadcast_strides;
use crate::tensor::{Tensor, alloc_zeros, broadcast_shapes, checked_numel, normalize_dim, numel, strides};

// ---- shared kernels (also used by `index.rs`) ----

/// Run `f(first_row, rows)` over `out` cut into groups of `rows_per_chunk` whole rows of `row_len`
/// elements; groups run in parallel when `out` is large. The split is fixed, never by thread count.
pub(crate) fn for_row_chunks<F>(out: &mut [f32], row_len: usize, rows_per_chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    if row_len == 0 || out.is_empty() {
        return;
    }
    for_each_chunk(out, rows_per_chunk.max(1) * row_len, |s, c| f(s / row_len, c));
}

/// How many rows of `row_len` make about one `GRAIN` of work (at least 1).
pub(crate) fn rows_per_grain(row_len: usize) -> usize {
    (GRAIN / row_len.max(1)).max(1)
}

/// A row-major multi-index over `dims` that keeps `off = Σ idx[k]·strides[k]` up to date as it steps.
pub(crate) struct Odometer<'a> {
    dims: &'a [usize],
    strides: &'a [usize],
    idx: Vec<usize>,
    pub off: usize,
}

impl<'a> Odometer<'a> {
    /// Start at the `linear`-th multi-index (row-major).
    pub fn at(dims: &'a [usize], strides: &'a [usize], mut linear: usize) -> Self {
        let mut idx = vec![0; dims.len()];
        let mut off = 0;
        for k in (0..dims.len()).rev() {
            idx[k] = linear % dims[k].max(1);
            linear /= dims[k].max(1);
            off += idx[k] * strides[k];
        }
        Odometer { dims, strides, idx, off }
    }

    /// Move to the next multi-index (wrapping to 0 after the last).
    pub fn step(&mut self) {
        for k in (0..self.dims.len()).rev() {
            self.idx[k] += 1;
            self.off += self.strides[k];
            if self.idx[k] < self.dims[k] {
                return;
            }
            self.off -= self.strides[k] * self.dims[k];
            self.idx[k] = 0;
        }
    }
}

/// A strided walk (shape, strides) rewritten over fewer dims: size-1 dims do nothing, and two neighbouring dims that are also
/// neighbours in the source act as one, e.g. (B,T,H,D)->(B,H,T,D) keeps D as a run, and (B,T,C) read with
/// stride 0 on B and T is one run of C repeated B·T times.
pub(crate) fn merge_dims(shape: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut dims, mut st): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    for (&d, &s) in shape.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        if let (Some(ld), Some(ls)) = (dims.last_mut(), st.last_mut()) {
            if *ls == s * d {
                *ld *= d;
                *ls = s;
                continue;
            }
        }
        dims.push(d);
        st.push(s);
    }
    (dims, st)
}

/// `out[i] = src[Σ idx_k(i)·in_strides[k]]` where `idx(i)` is the row-major multi-index of `i` in `shape`:
/// permute passes permuted strides, expand passes 0 on broadcast dims. `out.len()` must be `numel(shape)`.
pub(crate) fn gather_strided(src: &[f32], shape: &[usize], in_strides: &[usize], out: &mut [f32]) {
    debug_assert_eq!(out.len(), numel(shape));
    if out.is_empty() {
        return;
    }
    let (dims, st) = merge_dims(shape, in_strides);
    let m = dims.len();
    if m == 0 {
        out[0] = src[0];
        return;
    }
    let (run, last) = (dims[m - 1], st[m - 1]);
    if last <= 1 {
        // Whole output rows are one input run (stride 1: copy) or one input value (stride 0: fill).
        let (od, os) = (&dims[..m - 1], &st[..m - 1]);
        for_row_chunks(out, run, rows_per_grain(run), |r0, chunk| {
            let mut odo = Odometer::at(od, os, r0);
            for row in chunk.chunks_mut(run) {
                if last == 1 {
                    row.copy_from_slice(&src[odo.off..odo.off + run]);
                } else {
                    row.fill(src[odo.off]);
                }
                odo.step();
            }
        });
        return;
    }
    match st.iter().position(|&s| s == 1) {
        Some(q) => gather_tiled(src, &dims, &st, q, out),
        None => {
            // No contiguous input dim at all (not produced by permute or expand): element by element.
            for_row_chunks(out, 1, GRAIN, |r0, chunk| {
                let mut odo = Odometer::at(&dims, &st, r0);
                for o in chunk.iter_mut() {
                    *o = src[odo.off];
                    odo.step();
                }
            });
        }
    }
}

/// The transpose-like case of `gather_strided`: the output's last dim (R, input stride `sr` > 1) and the
/// input's contiguous dim `q` (stride 1) differ. Work in 16×16 tiles of (q, last): read the tile's input
/// rows (16 contiguous floats each) into a small buffer, then write the output rows (16 contiguous floats
/// each) from it. Every cache line is touched once, even when power-of-two strides map the tile's lines
/// to the same cache set (a 2048² transpose read in place was 2.5× slower).
fn gather_tiled(src: &[f32], dims: &[usize], st: &[usize], q: usize, out: &mut [f32]) {
    const T: usize = 16;
    let m = dims.len();
    let (r, sr) = (dims[m - 1], st[m - 1]);
    let (outer_d, outer_s) = (&dims[..q], &st[..q]);
    let (mid_d, mid_s) = (&dims[q + 1..m - 1], &st[q + 1..m - 1]);
    let nq = dims[q];
    let mid_n = numel(mid_d);
    // one "row" = one index along dim q: everything after it, mid_n runs of r
    let row_len = mid_n * r;
    let rows = rows_per_grain(row_len).next_multiple_of(T);
    for_row_chunks(out, row_len, rows, |row0, chunk| {
        let mut buf = [0f32; T * T];
        let nrows = chunk.len() / row_len;
        let mut done = 0;
        while done < nrows {
            // rows are (outer index o, a along q); handle the chunk one outer index at a time
            let row = row0 + done;
            let (o, a0) = (row / nq, row % nq);
            let a1 = nq.min(a0 + (nrows - done));
            let base = Odometer::at(outer_d, outer_s, o).off;
            let seg = &mut chunk[done * row_len..(done + a1 - a0) * row_len];
            let mut mid = Odometer::at(mid_d, mid_s, 0);
            for mi in 0..mid_n {
                let ib = base + mid.off;
                for at in (a0..a1).step_by(T) {
                    let wa = a1.min(at + T) - at;
                    for bt in (0..r).step_by(T) {
                        let wb = r.min(bt + T) - bt;
                        for bi in 0..wb {
                            let s = ib + at + (bt + bi) * sr;
                            buf[bi * T..bi * T + wa].copy_from_slice(&src[s..s + wa]);
                        }
                        for ai in 0..wa {
                            let o0 = (at + ai - a0) * row_len + mi * r + bt;
                            for (bi, d) in seg[o0..o0 + wb].iter_mut().enumerate() {
                                *d = buf[bi * T + ai];
                            }
                        }
                    }
                }
                mid.step();
            }
            done += a1 - a0;
        }
    });
}

/// (outer, size, inner): x viewed as three dims around dim `d`.
fn split3(shape: &[usize], d: usize) -> (usize, usize, usize) {
    (numel(&shape[..d]), shape[d], numel(&shape[d + 1..]))
}

/// numpy-style formatting for a requested shape that may hold -1.
fn fmt_ishape(shape: &[isize]) -> String {
    match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

// ---- reshape ----
/// A view of `x` with another shape of the same size; one entry may be -1 (inferred). Shares storage.
pub fn reshape(x: &Tensor, shape: &[isize]) -> Result<Tensor> {
    let new_shape = infer_shape("reshape", x.shape(), shape)?;
    Ok(record(x.view_as_shape(new_shape), ReshapeBackward { x: x.clone() }))
}

/// Resolve a requested shape (with at most one -1) against `numel(old)`.
fn infer_shape(op: &'static str, old: &[usize], req: &[isize]) -> Result<Vec<usize>> {
    let n = numel(old);
    let mismatch = || {
        Error::shape(
            op,
            format!(
                "cannot reshape a tensor of shape {} ({n} elements) into shape {}",
                fmt_shape(old),
                fmt_ishape(req)
            ),
        )
    };
    let (mut inferred, mut known) = (None, 1usize);
    for (i, &d) in req.iter().enumerate() {
        if d == -1 {
            if inferred.is_some() {
                return Err(Error::shape(op, format!("only one dim can be -1, got shape {}", fmt_ishape(req))));
            }
            inferred = Some(i);
        } else if d < 0 {
            return Err(Error::shape(op, format!("invalid size {d} in shape {}", fmt_ishape(req))));
        } else {
            known = known.checked_mul(d as usize).ok_or_else(mismatch)?;
        }
    }
    let mut out: Vec<usize> = req.iter().map(|&d| d.max(0) as usize).collect();
    match inferred {
        None if known != n => return Err(mismatch()),
        None => {}
        Some(_) if known == 0 => {
            return Err(Error::shape(
                op,
                format!(
                    "cannot reshape a tensor of shape {} into shape {}: the -1 could be any size",
                    fmt_shape(old),
                    fmt_ishape(req)
                ),
            ));
        }
        Some(_) if n % known != 0 => return Err(mismatch()),
        Some(i) => out[i] = n / known,
    }
    Ok(out)
}

struct ReshapeBackward {
    x: Tensor,
}
impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = x viewed as another shape  so  dx = dout viewed as x's shape (no copy)
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(dout.view_as_shape(self.x.shape().to_vec()))])
    }
}

// ---- unsqueeze / squeeze / flatten: reshapes whose new shape is worked out here ----

/// `x` viewed as `shape` (same element count, checked by the caller), recorded like a reshape.
fn view_shape(x: &Tensor, shape: Vec<usize>) -> Tensor {
    debug_assert_eq!(numel(&shape), x.numel());
    record(x.view_as_shape(shape), ReshapeBackward { x: x.clone() })
}

/// `x` with a size-1 dim inserted at `dim`, a view. `dim` counts positions in the result:
/// −ndim−1..=ndim, so −1 appends (numpy's `expand_dims`, torch's `unsqueeze`). Errors: Index.
pub fn unsqueeze(x: &Tensor, dim: isize) -> Result<Tensor> {
    let nd = x.ndim() as isize;
    let d = if dim < 0 { dim + nd + 1 } else { dim };
    if d < 0 || d > nd {
        return Err(Error::index(
            "unsqueeze",
            format!("dim {dim} is out of range for a tensor with {nd} dims (expected {}..={nd})", -nd - 1),
        ));
    }
    let mut shape = x.shape().to_vec();
    shape.insert(d as usize, 1);
    Ok(view_shape(x, shape))
}

/// `x` without its size-1 dims (`dim = None`), or without `dim` if that has size 1 (a no-op for a
/// longer dim, as in torch), a view. Errors: Index for a dim out of range.
pub fn squeeze(x: &Tensor, dim: Option<isize>) -> Result<Tensor> {
    let shape = x.shape();
    let new_shape: Vec<usize> = match dim {
        None => shape.iter().copied().filter(|&n| n != 1).collect(),
        Some(dim) => {
            let d = normalize_dim("squeeze", dim, shape.len())?;
            shape.iter().enumerate().filter(|&(i, &n)| !(i == d && n == 1)).map(|(_, &n)| n).collect()
        }
    };
    Ok(view_shape(x, new_shape))
}

/// `x` with the dims from `start_dim` on merged into one, a view; a 0-d tensor becomes shape (1,) (its
/// one dim is 0 or −1, as in torch). Errors: Index for a dim out of range.
pub fn flatten(x: &Tensor, start_dim: isize) -> Result<Tensor> {
    let shape = x.shape();
    let d = normalize_dim("flatten", start_dim, shape.len().max(1))?;
    if shape.is_empty() {
        return Ok(view_shape(x, vec![1]));
    }
    let mut new_shape = shape[..d].to_vec();
    new_shape.push(numel(&shape[d..]));
    Ok(view_shape(x, new_shape))
}

/// `.T`: the transpose of a matrix, a no-op on 0-d and 1-d tensors. Refused for more dims, where
/// reversing them all (numpy's rule) is rarely what a batch of matrices wants and torch deprecated it:
/// `mt` swaps the last two dims, `permute` reverses them all. Errors: Shape for > 2 dims.
pub fn t(x: &Tensor) -> Result<Tensor> {
    let nd = x.ndim();
    if nd > 2 {
        return Err(Error::shape(
            "T",
            format!(
                ".T is for tensors of at most 2 dims, this one has shape {}; use .mT to transpose the last \
                 two dims (batched matrices) or permute(...) to reorder all of them",
                fmt_shape(x.shape())
            ),
        ));
    }
    let dims: Vec<isize> = (0..nd as isize).rev().collect();
    permute(x, &dims)
}

/// `.mT`: the last two dims swapped (a batch of matrices transposed), as torch's `.mT`.
/// Errors: Shape for fewer than 2 dims.
pub fn mt(x: &Tensor) -> Result<Tensor> {
    if x.ndim() < 2 {
        return Err(Error::shape(
            "mT",
            format!("needs a tensor of at least 2 dims, this one has shape {}", fmt_shape(x.shape())),
        ));
    }
    transpose(x, -2, -1)
}

// ---- copy_ ----
/// Overwrite the data of the leaf `dst` in place with `src`'s (same shape). Not recorded: this is how
/// a state dict is loaded into parameters. Copying a tensor onto itself (or onto a view sharing its
/// storage with the same shape) leaves it as it is. Errors: Grad when `dst` is not a leaf (its graph
/// would silently go stale), Shape when the shapes differ. Nothing is written on error.
pub fn copy_(dst: &Tensor, src: &Tensor) -> Result<()> {
    if !dst.is_leaf() {
        return Err(Error::Grad("copy_: only leaf tensors can be overwritten in place".to_string()));
    }
    if src.shape() != dst.shape() {
        return Err(Error::shape(
            "copy_",
            format!("source shape {} does not match {}", fmt_shape(src.shape()), fmt_shape(dst.shape())),
        ));
    }
    // one storage would be locked twice (read and write); its data is already the same
    if !src.same_storage(dst) {
        let s = src.data();
        dst.data_mut().copy_from_slice(&s);
    }
    Ok(())
}

// ---- permute / transpose ----
/// Reorder the dims: `out.shape[k] = x.shape[dims[k]]`; `dims` must be a permutation of all dims.
pub fn permute(x: &Tensor, dims: &[isize]) -> Result<Tensor> {
    let perm = check_perm("permute", dims, x.shape())?;
    permute_recorded("permute", x, perm)
}

/// Swap two dims (a permute).
pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let (a, b) = (normalize_dim("transpose", d0, x.ndim())?, normalize_dim("transpose", d1, x.ndim())?);
    let mut perm: Vec<usize> = (0..x.ndim()).collect();
    perm.swap(a, b);
    permute_recorded("transpose", x, perm)
}

fn check_perm(op: &'static str, dims: &[isize], shape: &[usize]) -> Result<Vec<usize>> {
    let nd = shape.len();
    if dims.len() != nd {
        return Err(Error::shape(
            op,
            format!(
                "dims {} must list each of the {nd} dims of a tensor of shape {} once",
                fmt_ishape(dims),
                fmt_shape(shape)
            ),
        ));
    }
    let mut seen = vec![false; nd];
    let mut perm = Vec::with_capacity(nd);
    for &d in dims {
        let p = normalize_dim(op, d, nd)?;
        if seen[p] {
            return Err(Error::value(op, format!("dim {d} is repeated in dims {}", fmt_ishape(dims))));
        }
        seen[p] = true;
        perm.push(p);
    }
    Ok(perm)
}

fn permute_recorded(name: &'static str, x: &Tensor, perm: Vec<usize>) -> Result<Tensor> {
    let out = permute_copy(name, x, &perm)?;
    Ok(record(out, PermuteBackward { name, x: x.clone(), perm }))
}

/// The permuted contiguous copy (perm already checked).
fn permute_copy(op: &'static str, x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let in_strides = strides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut out = alloc_zeros(op, x.numel())?;
    gather_strided(&x.data(), &shape, &st, &mut out);
    Ok(Tensor::from_vec_unchecked(out, shape))
}

struct PermuteBackward {
    name: &'static str,
    x: Tensor,
    perm: Vec<usize>,
}
impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out.dim(k) = x.dim(perm[k])  so  dx = dout permuted by the inverse: dx.dim(perm[k]) = dout.dim(k)
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut inv = vec![0; self.perm.len()];
        for (k, &p) in self.perm.iter().enumerate() {
            inv[p] = k;
        }
        Ok(vec![Some(permute_copy(self.name, dout, &inv)?)])
    }
}

// ---- narrow / slice / select ----
/// `x[..., start:start+len, ...]` along `dim`, as a contiguous copy.
pub fn narrow(x: &Tensor, dim: isize, start: usize, len: usize) -> Result<Tensor> {
    let op = "narrow";
    let d = normalize_dim(op, dim, x.ndim())?;
    let size = x.shape()[d];
    if start.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::index(
            op,
            format!("start {start} + length {len} exceeds the size {size} of dim {d} (shape {})", fmt_shape(x.shape())),
        ));
    }
    let mut shape = x.shape().to_vec();
    shape[d] = len;
    take_along(op, x, d, start, 1, len, shape)
}

/// `x[..., start:stop:step, ...]` along `dim` with Python slice semantics: negative start/stop count from
/// the end, out-of-range ones are clamped, `step` must be > 0; the result may be empty.
pub fn slice(x: &Tensor, dim: isize, start: isize, stop: isize, step: isize) -> Result<Tensor> {
    let op = "slice";
    let d = normalize_dim(op, dim, x.ndim())?;
    if step <= 0 {
        return Err(Error::value(op, format!("step must be positive, got {step}")));
    }
    // like Python's slice.indices for step > 0, in i128 so no input can overflow
    let n = x.shape()[d] as i128;
    let clamp = |i: isize| {
        let i = i as i128;
        if i < 0 { (i + n).max(0) } else { i.min(n) }
    };
    let (s, e, step) = (clamp(start), clamp(stop), step as i128);
    let count = if e > s { (e - s + step - 1) / step } else { 0 };
    let mut shape = x.shape().to_vec();
    shape[d] = count as usize;
    take_along(op, x, d, s as usize, step as usize, count as usize, shape)
}

/// `x[..., index, ...]`: one position along `dim`, removing that dim; a negative index counts from the end.
pub fn select(x: &Tensor, dim: isize, index: isize) -> Result<Tensor> {
    let op = "select";
    let d = normalize_dim(op, dim, x.ndim())?;
    let size = x.shape()[d];
    let i = if index < 0 { index as i128 + size as i128 } else { index as i128 };
    if i < 0 || i >= size as i128 {
        return Err(Error::index(op, format!("index {index} is out of bounds for dim {d} with size {size}")));
    }
    let mut shape = x.shape().to_vec();
    shape.remove(d);
    take_along(op, x, d, i as usize, 1, 1, shape)
}

/// out[o, j, i] = x[o, start + j·step, i] with x viewed as (outer, size, inner) around dim `d`.
/// `out_shape` has `count` along d (or drops d, for select); bounds were checked by the caller.
fn take_along(
    op: &'static str,
    x: &Tensor,
    d: usize,
    start: usize,
    step: usize,
    count: usize,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let (_, size, inner) = split3(x.shape(), d);
    let mut out = alloc_zeros(op, checked_numel(op, &out_shape)?)?;
    {
        let src = x.data();
        let src = &src[..];
        if step == 1 {
            // each output row (one outer index) is one contiguous run of the input
            let run = count * inner;
            for_row_chunks(&mut out, run, rows_per_grain(run), |r0, c| {
                for (k, row) in c.chunks_mut(run).enumerate() {
                    let s = ((r0 + k) * size + start) * inner;
                    row.copy_from_slice(&src[s..s + run]);
                }
            });
        } else {
            // rows of `inner`: row r is (outer o, position j)
            for_row_chunks(&mut out, inner, rows_per_grain(inner), |r0, c| {
                for (k, row) in c.chunks_mut(inner).enumerate() {
                    let (o, j) = ((r0 + k) / count, (r0 + k) % count);
                    let s = (o * size + start + j * step) * inner;
                    row.copy_from_slice(&src[s..s + inner]);
                }
            });
        }
    }
    let out = Tensor::from_vec_unchecked(out, out_shape);
    Ok(record(out, TakeAlongBackward { name: op, x: x.clone(), d, start, step, count }))
}

struct TakeAlongBackward {
    name: &'static str,
    x: Tensor,
    d: usize,
    start: usize,
    step: usize,
    count: usize,
}
impl Backward for TakeAlongBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out[o, j, i] = x[o, start + j·step, i]  so  dx[o, start + j·step, i] = dout[o, j, i], 0 elsewhere
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let (_, size, inner) = split3(self.x.shape(), self.d);
        let (start, step, count) = (self.start, self.step, self.count);
        let mut dx = alloc_zeros(self.name, self.x.numel())?;
        let g = dout.data();
        let g = &g[..];
        // each outer row of dx receives only its own rows of dout, so rows can run in parallel
        let row = size * inner;
        for_row_chunks(&mut dx, row, rows_per_grain(row), |o0, c| {
            for (k, drow) in c.chunks_mut(row).enumerate() {
                let o = o0 + k;
                for j in 0..count {
                    let (s, t) = ((o * count + j) * inner, (start + j * step) * inner);
                    drow[t..t + inner].copy_from_slice(&g[s..s + inner]);
                }
            }
        });
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

// ---- cat / stack ----
/// Join tensors along an existing dim; all other dims must be equal.
pub fn cat(xs: &[Tensor], dim: isize) -> Result<Tensor> {
    let op = "cat";
    let first = xs.first().ok_or_else(|| Error::value(op, "expected a non-empty list of tensors"))?;
    let nd = first.ndim();
    if nd == 0 {
        return Err(Error::shape(op, "zero-dimensional tensors cannot be concatenated (use stack)"));
    }
    let d = normalize_dim(op, dim, nd)?;
    for (i, t) in xs.iter().enumerate().skip(1) {
        if t.ndim() != nd || (0..nd).any(|k| k != d && t.shape()[k] != first.shape()[k]) {
            return Err(Error::shape(
                op,
                format!(
                    "tensor {i} has shape {} but tensor 0 has shape {}; all dims except dim {d} must match",
                    fmt_shape(t.shape()),
                    fmt_shape(first.shape())
                ),
            ));
        }
    }
    let sizes: Vec<usize> = xs.iter().map(|t| t.shape()[d]).collect();
    let total = sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s));
    let mut shape = first.shape().to_vec();
    shape[d] = total.ok_or(Error::alloc(op, u128::MAX))?;
    let inner = numel(&first.shape()[d + 1..]);
    join(op, xs, sizes.iter().map(|s| s * inner).collect(), shape)
}

/// Join equal-shaped tensors along a new dim `dim` (in -(ndim+1)..=ndim).
pub fn stack(xs: &[Tensor], dim: isize) -> Result<Tensor> {
    let op = "stack";
    let first = xs.first().ok_or_else(|| Error::value(op, "expected a non-empty list of tensors"))?;
    let d = normalize_dim(op, dim, first.ndim() + 1)?;
    for (i, t) in xs.iter().enumerate().skip(1) {
        if t.shape() != first.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "tensor {i} has shape {} but tensor 0 has shape {}; stack needs equal shapes",
                    fmt_shape(t.shape()),
                    fmt_shape(first.shape())
                ),
            ));
        }
    }
    let mut shape = first.shape().to_vec();
    shape.insert(d, xs.len());
    let inner = numel(&first.shape()[d..]);
    join(op, xs, vec![inner; xs.len()], shape)
}

/// out row o (of Σ lens) = xs[0] row o (lens[0]) ++ xs[1] row o (lens[1]) ++ ...
fn join(op: &'static str, xs: &[Tensor], lens: Vec<usize>, shape: Vec<usize>) -> Result<Tensor> {
    let mut out = alloc_zeros(op, checked_numel(op, &shape)?)?;
    {
        let guards: Vec<_> = xs.iter().map(|t| t.data()).collect();
        let srcs: Vec<&[f32]> = guards.iter().map(|g| &g[..]).collect();
        let row: usize = lens.iter().sum();
        let lens = &lens;
        for_row_chunks(&mut out, row, rows_per_grain(row), |o0, c| {
            for (k, orow) in c.chunks_mut(row).enumerate() {
                let o = o0 + k;
                let mut at = 0;
                for (src, &len) in srcs.iter().zip(lens) {
                    orow[at..at + len].copy_from_slice(&src[o * len..(o + 1) * len]);
                    at += len;
                }
            }
        });
    }
    let out = Tensor::from_vec_unchecked(out, shape);
    Ok(record(out, JoinBackward { name: op, xs: xs.to_vec(), lens }))
}

struct JoinBackward {
    name: &'static str,
    xs: Vec<Tensor>,
    lens: Vec<usize>,
}
impl Backward for JoinBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        self.xs.clone()
    }
    // out row o = x0 row o ++ x1 row o ++ ...  so  dx_i row o = the matching piece of dout row o
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let g = dout.data();
        let g = &g[..];
        let row: usize = self.lens.iter().sum();
        let mut at = 0;
        let mut grads = Vec::with_capacity(self.xs.len());
        for ((x, &len), &need) in self.xs.iter().zip(&self.lens).zip(needs) {
            if need {
                let mut dx = alloc_zeros(self.name, x.numel())?;
                for_row_chunks(&mut dx, len, rows_per_grain(len), |o0, c| {
                    for (k, drow) in c.chunks_mut(len).enumerate() {
                        let s = (o0 + k) * row + at;
                        drow.copy_from_slice(&g[s..s + len]);
                    }
                });
                grads.push(Some(Tensor::from_vec_unchecked(dx, x.shape().to_vec())));
            } else {
                grads.push(None);
            }
            at += len;
        }
        Ok(grads)
    }
}

// ---- expand ----
/// numpy `broadcast_to`: repeat `x` along its size-1 (or missing leading) dims to `shape`, as a copy.
pub fn expand(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let out = broadcast_copy("expand", x, shape)?;
    Ok(record(Tensor::from_vec_unchecked(out, shape.to_vec()), ExpandBackward { x: x.clone() }))
}

/// The data of `x` broadcast to `shape` (no autograd); `Error::Shape` unless `x` broadcasts to exactly `shape`.
pub(crate) fn broadcast_copy(op: &'static str, x: &Tensor, shape: &[usize]) -> Result<Vec<f32>> {
    let fits = shape.len() >= x.ndim() && broadcast_shapes(op, x.shape(), shape).is_ok_and(|s| s == shape);
    if !fits {
        return Err(Error::shape(
            op,
            format!("cannot broadcast a tensor of shape {} to shape {}", fmt_shape(x.shape()), fmt_shape(shape)),
        ));
    }
    let mut out = alloc_zeros(op, checked_numel(op, shape)?)?;
    gather_strided(&x.data(), shape, &broadcast_strides(x.shape(), shape), &mut out);
    Ok(out)
}

struct ExpandBackward {
    x: Tensor,
}
impl Backward for ExpandBackward {
    fn name(&self) -> &'static str {
        "expand"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = x repeated along broadcast dims  so  dx = dout summed over those dims
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(unbroadcast(dout, self.x.shape())?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::binary::{add, mul, mul_scalar};
    use crate::ops::reduce::sum_all;
    use crate::tensor::random::{manual_seed, randn};

    fn p(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }

    /// Tensor whose value at flat index i is i (so a wrong gather shows which element it took).
    fn iota(shape: &[usize]) -> Tensor {
        Tensor::new((0..numel(shape)).map(|i| i as f32).collect(), shape).unwrap()
    }

    /// Row-major multi-index of `i` in `shape`.
    fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            idx[k] = i % shape[k];
            i /= shape[k];
        }
        idx
    }

    fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    /// Assert exact equality, reporting the first differing element and the max abs diff.
    fn assert_same(got: &Tensor, want_shape: &[usize], want: &[f32], what: &str) {
        assert_eq!(got.shape(), want_shape, "{what}: shape");
        let g = got.to_vec();
        assert_eq!(g.len(), want.len(), "{what}: length");
        let max = g.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if let Some(i) = g.iter().zip(want).position(|(a, b)| a != b) {
            panic!("{what}: element {i} is {} but want {} (max abs diff {max})", g[i], want[i]);
        }
    }

    // ---- reshape ----
    #[test]
    fn reshape_is_a_view_with_inferred_dims() {
        let x = iota(&[2, 3, 4]);
        let y = reshape(&x, &[4, -1]).unwrap();
        assert_same(&y, &[4, 6], &x.to_vec(), "reshape");
        assert!(y.same_storage(&x));
        assert_eq!(reshape(&x, &[-1]).unwrap().shape(), &[24]);
        assert_eq!(reshape(&Tensor::scalar(3.0), &[1, 1]).unwrap().shape(), &[1, 1]);
        assert_eq!(reshape(&iota(&[1]), &[]).unwrap().shape(), &[] as &[usize]);
        // empty tensors reshape like any other
        assert_eq!(reshape(&iota(&[0, 3]), &[3, 0, 2]).unwrap().shape(), &[3, 0, 2]);
        assert_eq!(reshape(&iota(&[0, 3]), &[-1]).unwrap().shape(), &[0]);
        assert_gradcheck(|xs| reshape(&xs[0], &[3, -1, 2]), &[p(&[2, 3, 2])]);
    }

    #[test]
    fn reshape_errors_name_both_shapes() {
        let x = iota(&[2, 3]);
        let e = reshape(&x, &[4, 2]).unwrap_err();
        assert_eq!(e.to_string(), "reshape: cannot reshape a tensor of shape (2, 3) (6 elements) into shape (4, 2)");
        assert!(matches!(reshape(&x, &[4, -1]), Err(Error::Shape { .. })));
        let e = reshape(&x, &[-1, -1]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("only one dim can be -1"), "{e}");
        assert!(reshape(&x, &[-2, -3]).unwrap_err().to_string().contains("invalid size -2"));
        assert!(reshape(&iota(&[0, 3]), &[0, -1]).unwrap_err().to_string().contains("could be any size"));
        // products that overflow are a mismatch, not a panic
        assert!(matches!(reshape(&x, &[isize::MAX, isize::MAX, 0]), Err(Error::Shape { .. })));
    }

    // ---- permute / transpose ----
    /// out[idx] = x[idx permuted back], through explicit multi-indices.
    fn permute_reference(x: &Tensor, perm: &[usize]) -> (Vec<usize>, Vec<f32>) {
        let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        let xd = x.to_vec();
        let vals = (0..numel(&shape))
            .map(|i| {
                let oi = unravel(i, &shape);
                let mut ii = vec![0; perm.len()];
                for (k, &p) in perm.iter().enumerate() {
                    ii[p] = oi[k];
                }
                xd[ravel(&ii, x.shape())]
            })
            .collect();
        (shape, vals)
    }

    #[test]
    fn permute_matches_explicit_indexing() {
        manual_seed(1);
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 5], &[0, 2, 1, 3]), // (B,T,H,D) -> (B,H,T,D)
            (&[3, 37, 45], &[0, 2, 1]),     // swap the last two, not a multiple of the tile
            (&[70, 33], &[1, 0]),
            (&[2, 3, 4, 5, 6], &[4, 2, 0, 3, 1]),
            (&[2, 3, 4, 5, 6], &[1, 4, 3, 0, 2]),
            (&[1, 5, 1, 3], &[3, 2, 1, 0]), // size-1 dims
            (&[4, 5], &[0, 1]),             // identity
            (&[], &[]),
            (&[4, 130, 70], &[0, 2, 1]), // big enough to run in parallel
            (&[2, 64, 4, 40], &[0, 2, 1, 3]),
            (&[300, 200], &[1, 0]),
            (&[3, 0, 4], &[2, 0, 1]), // empty
        ];
        for &(shape, perm) in cases {
            let x = randn(shape, 0.0, 1.0).unwrap();
            let dims: Vec<isize> = perm.iter().map(|&p| p as isize).collect();
            let (ws, wv) = permute_reference(&x, perm);
            assert_same(&permute(&x, &dims).unwrap(), &ws, &wv, &format!("permute {shape:?} by {perm:?}"));
        }
        // negative dims
        let x = iota(&[2, 3, 4]);
        let (ws, wv) = permute_reference(&x, &[2, 0, 1]);
        assert_same(&permute(&x, &[-1, 0, -2]).unwrap(), &ws, &wv, "negative dims");
    }

    #[test]
    fn permute_and_transpose_gradcheck_and_errors() {
        manual_seed(2);
        assert_gradcheck(|xs| permute(&xs[0], &[2, 0, 1]), &[p(&[2, 3, 4])]);
        assert_gradcheck(|xs| permute(&xs[0], &[0, 2, 1, 3]), &[p(&[2, 3, 2, 2])]);
        assert_gradcheck(|xs| transpose(&xs[0], -1, -2), &[p(&[2, 3, 4])]);
        let x = iota(&[2, 3, 4]);
        let (ws, wv) = permute_reference(&x, &[2, 1, 0]);
        assert_same(&transpose(&x, 0, -1).unwrap(), &ws, &wv, "transpose");
        assert_eq!(transpose(&x, 1, 1).unwrap().to_vec(), x.to_vec());
        assert_eq!(permute(&x, &[2, 1, 0]).unwrap().grad_fn_name(), None);

        let e = permute(&x, &[0, 1]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "permute: dims (0, 1) must list each of the 3 dims of a tensor of shape (2, 3, 4) once"
        );
        let e = permute(&x, &[0, 1, -3]).unwrap_err();
        assert_eq!(e.to_string(), "permute: dim -3 is repeated in dims (0, 1, -3)");
        assert!(matches!(permute(&x, &[0, 1, 3]), Err(Error::Index { .. })));
        assert!(matches!(transpose(&x, 0, 3), Err(Error::Index { .. })));
    }

    // ---- narrow / slice / select ----
    /// x[..., indices, ...] along dim d through explicit multi-indices.
    fn take_reference(x: &Tensor, d: usize, indices: &[usize]) -> (Vec<usize>, Vec<f32>) {
        let mut shape = x.shape().to_vec();
        shape[d] = indices.len();
        let xd = x.to_vec();
        let vals = (0..numel(&shape))
            .map(|i| {
                let mut idx = unravel(i, &shape);
                idx[d] = indices[idx[d]];
                xd[ravel(&idx, x.shape())]
            })
            .collect();
        (shape, vals)
    }

    #[test]
    fn narrow_matches_reference() {
        manual_seed(3);
        let x = randn(&[3, 5, 4], 0.0, 1.0).unwrap();
        for d in 0..3 {
            let size = x.shape()[d];
            for (start, len) in [(0, size), (1, size - 1), (size - 1, 1), (2, 0)] {
                let (ws, wv) = take_reference(&x, d, &(start..start + len).collect::<Vec<_>>());
                assert_same(
                    &narrow(&x, d as isize, start, len).unwrap(),
                    &ws,
                    &wv,
                    &format!("narrow d={d} {start}+{len}"),
                );
            }
        }
        let big = randn(&[300, 200], 0.0, 1.0).unwrap();
        let (ws, wv) = take_reference(&big, 1, &(50..170).collect::<Vec<_>>());
        assert_same(&narrow(&big, -1, 50, 120).unwrap(), &ws, &wv, "narrow big");
        assert_gradcheck(|xs| narrow(&xs[0], 1, 1, 3), &[p(&[2, 5, 3])]);
        assert_gradcheck(|xs| narrow(&xs[0], -1, 2, 2), &[p(&[2, 5])]);

        let e = narrow(&x, 1, 3, 3).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(e.to_string(), "narrow: start 3 + length 3 exceeds the size 5 of dim 1 (shape (3, 5, 4))");
        assert!(matches!(narrow(&x, 1, usize::MAX, 2), Err(Error::Index { .. })));
        assert!(matches!(narrow(&x, 3, 0, 1), Err(Error::Index { .. })));
    }

    #[test]
    fn slice_follows_python_semantics() {
        manual_seed(4);
        let x = randn(&[2, 5, 3], 0.0, 1.0).unwrap();
        // expected index lists printed by Python: list(range(5))[slice(start, stop, step)]
        let big = isize::MAX;
        type Case = ((isize, isize, isize), &'static [usize]); // (start, stop, step), kept indices
        let cases: &[Case] = &[
            ((-3, big, 1), &[2, 3, 4]),
            ((1, -1, 2), &[1, 3]),
            ((-10, 10, 3), &[0, 3]),
            ((4, 2, 1), &[]),
            ((10, 20, 1), &[]),
            ((0, 5, 2), &[0, 2, 4]),
            ((-1, -100, 1), &[]),
            ((-2, 5, 5), &[3]),
            ((-100, -4, 1), &[0]),
            ((isize::MIN, big, big), &[0]),
        ];
        for &((a, b, s), want) in cases {
            let (ws, wv) = take_reference(&x, 1, want);
            assert_same(&slice(&x, 1, a, b, s).unwrap(), &ws, &wv, &format!("slice {a}:{b}:{s}"));
        }
        let big_x = randn(&[40, 900], 0.0, 1.0).unwrap();
        let (ws, wv) = take_reference(&big_x, 1, &(3..900).step_by(4).collect::<Vec<_>>());
        assert_same(&slice(&big_x, -1, 3, big, 4).unwrap(), &ws, &wv, "slice big");
        assert_gradcheck(|xs| slice(&xs[0], 1, 0, 5, 2), &[p(&[2, 5, 3])]);
        assert_gradcheck(|xs| slice(&xs[0], 0, -3, -1, 1), &[p(&[4, 2])]);
        // an empty slice has an all-zero gradient
        let y = p(&[3, 2]);
        sum_all(&slice(&y, 0, 2, 1, 1).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(y.grad().unwrap().to_vec(), vec![0.0; 6]);

        let e = slice(&x, 1, 0, 5, 0).unwrap_err();
        assert!(matches!(e, Error::Value { .. }));
        assert_eq!(e.to_string(), "slice: step must be positive, got 0");
        assert!(matches!(slice(&x, 1, 0, 5, -1), Err(Error::Value { .. })));
        assert!(matches!(slice(&x, -4, 0, 5, 1), Err(Error::Index { .. })));
    }

    #[test]
    fn select_removes_the_dim() {
        manual_seed(5);
        let x = randn(&[2, 3, 4], 0.0, 1.0).unwrap();
        for (index, i) in [(0isize, 0usize), (2, 2), (-1, 2), (-3, 0)] {
            let (mut ws, wv) = take_reference(&x, 1, &[i]);
            ws.remove(1);
            assert_same(&select(&x, 1, index).unwrap(), &ws, &wv, &format!("select {index}"));
        }
        assert_eq!(select(&iota(&[4]), 0, -1).unwrap().shape(), &[] as &[usize]);
        assert_eq!(select(&iota(&[4]), 0, -1).unwrap().item().unwrap(), 3.0);
        assert_gradcheck(|xs| select(&xs[0], 1, -2), &[p(&[2, 3, 4])]);
        assert_gradcheck(|xs| select(&xs[0], 0, 1), &[p(&[3, 2])]);

        let e = select(&x, 1, 5).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(e.to_string(), "select: index 5 is out of bounds for dim 1 with size 3");
        assert!(matches!(select(&x, 1, -4), Err(Error::Index { .. })));
        assert!(matches!(select(&iota(&[0, 2]), 0, 0), Err(Error::Index { .. })));
    }

    // ---- cat / stack ----
    /// cat through explicit indices: find which input holds position j along d.
    fn cat_reference(xs: &[Tensor], d: usize) -> (Vec<usize>, Vec<f32>) {
        let mut shape = xs[0].shape().to_vec();
        shape[d] = xs.iter().map(|t| t.shape()[d]).sum();
        let vals = (0..numel(&shape))
            .map(|i| {
                let mut idx = unravel(i, &shape);
                let mut k = 0;
                while idx[d] >= xs[k].shape()[d] {
                    idx[d] -= xs[k].shape()[d];
                    k += 1;
                }
                xs[k].to_vec()[ravel(&idx, xs[k].shape())]
            })
            .collect();
        (shape, vals)
    }

    #[test]
    fn cat_matches_reference() {
        manual_seed(6);
        let parts = [
            randn(&[2, 3, 4], 0.0, 1.0).unwrap(),
            randn(&[2, 1, 4], 0.0, 1.0).unwrap(),
            randn(&[2, 0, 4], 0.0, 1.0).unwrap(),
        ];
        let (ws, wv) = cat_reference(&parts, 1);
        assert_same(&cat(&parts, 1).unwrap(), &ws, &wv, "cat dim 1 with an empty piece");
        let rows = [randn(&[3, 2], 0.0, 1.0).unwrap(), randn(&[1, 2], 0.0, 1.0).unwrap()];
        let (ws, wv) = cat_reference(&rows, 0);
        assert_same(&cat(&rows, 0).unwrap(), &ws, &wv, "cat dim 0");
        let cols = [randn(&[300, 40], 0.0, 1.0).unwrap(), randn(&[300, 70], 0.0, 1.0).unwrap()];
        let (ws, wv) = cat_reference(&cols, 1);
        assert_same(&cat(&cols, -1).unwrap(), &ws, &wv, "cat big");
        let one = [iota(&[2, 2])];
        assert_same(&cat(&one, 0).unwrap(), &[2, 2], &one[0].to_vec(), "cat of one");
        assert_eq!(cat(&[iota(&[0, 2]), iota(&[0, 2])], 0).unwrap().shape(), &[0, 2]);

        assert_gradcheck(|xs| cat(xs, 1), &[p(&[2, 3, 2]), p(&[2, 1, 2]), p(&[2, 2, 2])]);
        assert_gradcheck(|xs| cat(xs, -1), &[p(&[2, 3]), p(&[2, 0]), p(&[2, 2])]);
        // only inputs that need a grad get one
        let (a, b) = (p(&[2, 2]), randn(&[1, 2], 0.0, 1.0).unwrap());
        sum_all(&cat(&[a.clone(), b.clone()], 0).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(a.grad().unwrap().to_vec(), vec![1.0; 4]);
        assert!(b.grad().is_none());
    }

    #[test]
    fn cat_and_stack_errors() {
        let e = cat(&[], 0).unwrap_err();
        assert!(matches!(e, Error::Value { .. }));
        assert_eq!(e.to_string(), "cat: expected a non-empty list of tensors");
        let e = cat(&[iota(&[2, 3]), iota(&[2, 3]), iota(&[3, 3])], 1).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(
            e.to_string(),
            "cat: tensor 2 has shape (3, 3) but tensor 0 has shape (2, 3); all dims except dim 1 must match"
        );
        assert!(matches!(cat(&[iota(&[2, 3]), iota(&[6])], 0), Err(Error::Shape { .. })));
        assert!(matches!(cat(&[Tensor::scalar(1.0)], 0), Err(Error::Shape { .. })));
        assert!(matches!(cat(&[iota(&[2])], 1), Err(Error::Index { .. })));

        assert!(matches!(stack(&[], 0), Err(Error::Value { .. })));
        let e = stack(&[iota(&[2, 3]), iota(&[3, 2])], 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stack: tensor 1 has shape (3, 2) but tensor 0 has shape (2, 3); stack needs equal shapes"
        );
        assert!(matches!(stack(&[iota(&[2, 3])], 3), Err(Error::Index { .. })));
        assert!(matches!(stack(&[iota(&[2, 3])], -4), Err(Error::Index { .. })));
    }

    #[test]
    fn stack_matches_reference() {
        manual_seed(7);
        let xs =
            [randn(&[2, 3], 0.0, 1.0).unwrap(), randn(&[2, 3], 0.0, 1.0).unwrap(), randn(&[2, 3], 0.0, 1.0).unwrap()];
        for (dim, d) in [(0isize, 0usize), (1, 1), (2, 2), (-1, 2), (-3, 0)] {
            let mut shape = xs[0].shape().to_vec();
            shape.insert(d, 3);
            // out[idx] = xs[idx[d]][idx without d]
            let want: Vec<f32> = (0..18)
                .map(|i| {
                    let mut idx = unravel(i, &shape);
                    let k = idx.remove(d);
                    xs[k].to_vec()[ravel(&idx, xs[k].shape())]
                })
                .collect();
            assert_same(&stack(&xs, dim).unwrap(), &shape, &want, &format!("stack dim {dim}"));
        }
        assert_eq!(stack(&[Tensor::scalar(1.0), Tensor::scalar(2.0)], 0).unwrap().to_vec(), vec![1.0, 2.0]);
        assert_eq!(stack(&[iota(&[0, 2]), iota(&[0, 2])], 1).unwrap().shape(), &[0, 2, 2]);
        assert_gradcheck(|xs| stack(xs, 1), &[p(&[2, 3]), p(&[2, 3])]);
        assert_gradcheck(|xs| stack(xs, -1), &[p(&[3]), p(&[3]), p(&[3])]);
    }

    // ---- expand ----
    #[test]
    fn expand_matches_broadcast_reference() {
        manual_seed(8);
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 1], &[2, 3, 4]),
            (&[1, 4], &[3, 4]),
            (&[], &[2, 2]),
            (&[4], &[4]),
            (&[2, 1, 3], &[2, 5, 3]),
            (&[1], &[0]),
            (&[1, 1, 64], &[8, 100, 64]), // parallel
            (&[8, 1, 1], &[8, 50, 70]),
        ];
        for &(from, to) in cases {
            let x = randn(from, 0.0, 1.0).unwrap();
            let off = to.len() - from.len();
            let want: Vec<f32> = (0..numel(to))
                .map(|i| {
                    let oi = unravel(i, to);
                    let ii: Vec<usize> = (0..from.len()).map(|k| if from[k] == 1 { 0 } else { oi[k + off] }).collect();
                    x.to_vec()[ravel(&ii, from)]
                })
                .collect();
            assert_same(&expand(&x, to).unwrap(), to, &want, &format!("expand {from:?} to {to:?}"));
        }
        assert_gradcheck(|xs| expand(&xs[0], &[2, 3, 4]), &[p(&[3, 1])]);
        assert_gradcheck(|xs| expand(&xs[0], &[3, 2]), &[p(&[])]);

        let e = expand(&iota(&[2, 3]), &[4, 3]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "expand: cannot broadcast a tensor of shape (2, 3) to shape (4, 3)");
        assert!(matches!(expand(&iota(&[1, 3]), &[3]), Err(Error::Shape { .. })));
        assert!(matches!(expand(&iota(&[3]), &[3, 1]), Err(Error::Shape { .. })));
        assert!(matches!(expand(&iota(&[1]), &[1 << 40, 1 << 40]), Err(Error::Alloc { .. })));
    }

    #[test]
    fn gather_strided_handles_any_strides() {
        // no stride-1 dim at all (the element-by-element fallback): every other element, two rows
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let mut out = vec![0.0; 6];
        gather_strided(&src, &[2, 3], &[6, 2], &mut out);
        assert_eq!(out, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        // a 0-d gather and an all-broadcast fill
        let mut one = vec![0.0];
        gather_strided(&src[5..], &[], &[], &mut one);
        assert_eq!(one, vec![5.0]);
        let mut fill = vec![0.0; 6];
        gather_strided(&src[7..], &[3, 2], &[0, 0], &mut fill);
        assert_eq!(fill, vec![7.0; 6]);
    }

    // ---- compositions ----
    #[test]
    fn backward_composes_through_reshape_permute_narrow() {
        manual_seed(9);
        // (B*T, H*D) -> (B, T, H, D) -> (B, H, T, D) -> keep heads 1..3
        let f = |xs: &[Tensor]| {
            let y = reshape(&xs[0], &[2, 3, 4, 2])?;
            let y = permute(&y, &[0, 2, 1, 3])?;
            narrow(&y, 1, 1, 2)
        };
        let x = p(&[6, 8]);
        assert_gradcheck(f, std::slice::from_ref(&x));
        // d(sum)/dx is 1 exactly where the composite keeps the element (heads 1 and 2)
        x.zero_grad();
        sum_all(&f(std::slice::from_ref(&x)).unwrap()).unwrap().backward(None, false).unwrap();
        let want: Vec<f32> = (0..48).map(|i| if (2..6).contains(&(i % 8)) { 1.0 } else { 0.0 }).collect();
        assert_same(&x.grad().unwrap(), &[6, 8], &want, "composed gradient");
    }

    #[test]
    fn aliased_gradients_accumulate_without_corruption() {
        // reshape's backward returns a view of dout and add passes dout through twice; the tape must not
        // write into a gradient that another branch still reads
        let x = Tensor::new(vec![1.0, 2.0, 3.0, 4.0], &[4]).unwrap().requires_grad_(true);
        let y = mul_scalar(&x, 2.0).unwrap();
        let a = reshape(&y, &[2, 2]).unwrap();
        let b = reshape(&y, &[2, 2]).unwrap();
        let z = add(&add(&a, &b).unwrap(), &a).unwrap(); // 3·y
        let w = mul(&z, &reshape(&y, &[2, -1]).unwrap()).unwrap(); // 3·y², dw/dx = 6y·2 = 24x
        sum_all(&w).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![24.0, 48.0, 72.0, 96.0]);
        assert_eq!(y.to_vec(), vec![2.0, 4.0, 6.0, 8.0], "forward data untouched");
        // the same non-leaf used twice by one op (this deadlocked when the tape summed in place)
        x.zero_grad();
        let y = mul_scalar(&x, 2.0).unwrap();
        sum_all(&add(&y, &y).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![4.0; 4]);
    }

    // ---- unsqueeze / squeeze / flatten / t / mt / copy_ ----
    #[test]
    fn unsqueeze_inserts_a_dim_anywhere() {
        let x = iota(&[2, 3]);
        for (dim, want) in
            [(0, vec![1, 2, 3]), (1, vec![2, 1, 3]), (2, vec![2, 3, 1]), (-1, vec![2, 3, 1]), (-3, vec![1, 2, 3])]
        {
            let y = unsqueeze(&x, dim).unwrap();
            assert_same(&y, &want, &x.to_vec(), &format!("unsqueeze({dim})"));
            assert!(y.same_storage(&x));
        }
        assert_eq!(unsqueeze(&Tensor::scalar(1.0), 0).unwrap().shape(), &[1]);
        assert_eq!(unsqueeze(&Tensor::scalar(1.0), -1).unwrap().shape(), &[1]);
        for dim in [3, -4] {
            let e = unsqueeze(&x, dim).unwrap_err();
            assert!(matches!(e, Error::Index { .. }));
            assert_eq!(
                e.to_string(),
                format!("unsqueeze: dim {dim} is out of range for a tensor with 2 dims (expected -3..=2)")
            );
        }
        assert_gradcheck(|xs| unsqueeze(&xs[0], 1), &[p(&[2, 3])]);
    }

    #[test]
    fn squeeze_removes_size_one_dims() {
        let x = iota(&[1, 2, 1, 3]);
        assert_same(&squeeze(&x, None).unwrap(), &[2, 3], &x.to_vec(), "squeeze()");
        assert_same(&squeeze(&x, Some(2)).unwrap(), &[1, 2, 3], &x.to_vec(), "squeeze(2)");
        assert_same(&squeeze(&x, Some(-4)).unwrap(), &[2, 1, 3], &x.to_vec(), "squeeze(-4)");
        // a dim longer than 1 stays (torch)
        assert_same(&squeeze(&x, Some(1)).unwrap(), &[1, 2, 1, 3], &x.to_vec(), "squeeze(1)");
        assert_eq!(squeeze(&iota(&[1, 1]), None).unwrap().shape(), &[] as &[usize]);
        assert_eq!(squeeze(&iota(&[0, 1]), None).unwrap().shape(), &[0]);
        let e = squeeze(&x, Some(4)).unwrap_err();
        assert!(matches!(e, Error::Index { .. }) && e.to_string().starts_with("squeeze: dim 4 is out of range"), "{e}");
        assert_gradcheck(|xs| squeeze(&xs[0], None), &[p(&[2, 1, 3])]);
    }

    #[test]
    fn flatten_merges_the_trailing_dims() {
        let x = iota(&[2, 3, 4]);
        assert_same(&flatten(&x, 0).unwrap(), &[24], &x.to_vec(), "flatten(0)");
        assert_same(&flatten(&x, 1).unwrap(), &[2, 12], &x.to_vec(), "flatten(1)");
        assert_same(&flatten(&x, -1).unwrap(), &[2, 3, 4], &x.to_vec(), "flatten(-1)");
        assert_eq!(flatten(&Tensor::scalar(2.0), 0).unwrap().shape(), &[1]);
        assert_eq!(flatten(&Tensor::scalar(2.0), -1).unwrap().shape(), &[1]);
        // empty tensors: the merged size is 0 (a reshape to (0, -1) could not say so)
        assert_eq!(flatten(&iota(&[0, 3, 2]), 1).unwrap().shape(), &[0, 6]);
        assert_eq!(flatten(&iota(&[2, 0, 3]), 1).unwrap().shape(), &[2, 0]);
        for (t, dim) in [(iota(&[2, 3]), 2), (Tensor::scalar(1.0), 1)] {
            let e = flatten(&t, dim).unwrap_err();
            assert!(matches!(e, Error::Index { .. }) && e.to_string().starts_with("flatten: dim"), "{e}");
        }
        assert_gradcheck(|xs| flatten(&xs[0], 1), &[p(&[2, 3, 2])]);
    }

    #[test]
    fn t_transposes_matrices_and_mt_batches_of_them() {
        let x = iota(&[3, 4]);
        let (shape, want) = permute_reference(&x, &[1, 0]);
        assert_same(&t(&x).unwrap(), &shape, &want, "T");
        assert_same(&t(&iota(&[3])).unwrap(), &[3], &iota(&[3]).to_vec(), "1-d");
        assert_eq!(t(&Tensor::scalar(1.0)).unwrap().shape(), &[] as &[usize]);
        let e = t(&iota(&[2, 3, 4])).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains(".mT"), "{e}");
        let b = iota(&[2, 3, 4]);
        let (shape, want) = permute_reference(&b, &[0, 2, 1]);
        assert_same(&mt(&b).unwrap(), &shape, &want, "mT");
        assert!(matches!(mt(&iota(&[3])).unwrap_err(), Error::Shape { .. }));
    }

    #[test]
    fn copy_overwrites_a_leaf_and_refuses_the_rest() {
        let dst = Tensor::zeros(&[2, 2]).unwrap().requires_grad_(true);
        copy_(&dst, &iota(&[2, 2])).unwrap();
        assert_eq!(dst.to_vec(), iota(&[2, 2]).to_vec());
        assert!(dst.requires_grad() && dst.is_leaf());
        // onto itself: no deadlock on the one storage, nothing changes
        copy_(&dst, &dst.clone()).unwrap();
        assert_eq!(dst.to_vec(), iota(&[2, 2]).to_vec());
        let e = copy_(&dst, &Tensor::zeros(&[3]).unwrap()).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "copy_: source shape (3,) does not match (2, 2)");
        let non_leaf = crate::ops::binary::mul_scalar(&dst, 2.0).unwrap();
        let e = copy_(&non_leaf, &Tensor::zeros(&[2, 2]).unwrap()).unwrap_err();
        assert!(matches!(e, Error::Grad(_)));
        assert_eq!(e.to_string(), "copy_: only leaf tensors can be overwritten in place");
        assert_eq!(dst.to_vec(), iota(&[2, 2]).to_vec(), "nothing written on error");
    }
}
