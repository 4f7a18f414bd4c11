//! Gathers and masks: embedding (rows of a table by id), index_select, masked_fill, where_.
//! A gather copies whole rows; its backward is a scatter-add done without atomics or races: positions are
//! bucketed by the row they came from (a counting sort), and each gradient row is summed by exactly one
//! task, in ascending position order and in f64, so the result is the same on 1 or N threads.

use crate::autograd::{Backward, record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::binary::unbroadcast;
use crate::ops::view::{Odometer, broadcast_copy, for_row_chunks, merge_dims, rows_per_grain};
use crate::parallel::{GRAIN, for_each_chunk};
use crate::tensor::shape::broadcast_strides;
use crate::tensor::{Tensor, alloc_zeros, broadcast_shapes, checked_numel, normalize_dim, numel, strides};

// ---- shared gather / scatter-add ----

/// out[o, j, i] = src[o, idx[j], i] with src viewed as (outer, size, inner); out is (outer, idx.len(), inner).
fn gather_rows(op: &'static str, src: &[f32], size: usize, inner: usize, idx: &[usize], n: usize) -> Result<Vec<f32>> {
    let mut out = alloc_zeros(op, n)?;
    let k = idx.len();
    // rows of `inner`: row r is (outer o, position j)
    for_row_chunks(&mut out, inner, rows_per_grain(inner), |r0, c| {
        for (t, row) in c.chunks_mut(inner).enumerate() {
            let (o, j) = ((r0 + t) / k, (r0 + t) % k);
            let s = (o * size + idx[j]) * inner;
            row.copy_from_slice(&src[s..s + inner]);
        }
    });
    Ok(out)
}

/// The backward of `gather_rows`: dx[o, s, i] = Σ_{j: idx[j] = s} g[o, j, i], dx of shape (outer, size, inner).
fn scatter_add_rows(
    op: &'static str,
    g: &[f32],
    outer: usize,
    size: usize,
    inner: usize,
    idx: &[usize],
) -> Result<Vec<f32>> {
    let n = outer * size * inner; // the input's numel, so it fits
    let mut dx = alloc_zeros(op, n)?;
    if n == 0 {
        return Ok(dx);
    }
    // Bucket positions by destination (counting sort; stable, so each bucket lists j ascending).
    let mut start = vec![0usize; size + 1];
    for &s in idx {
        start[s + 1] += 1;
    }
    for s in 0..size {
        start[s + 1] += start[s];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; idx.len()];
    for (j, &s) in idx.iter().enumerate() {
        order[next[s]] = j;
        next[s] += 1;
    }
    let k = idx.len();
    // Each dx row (o, s) is owned by one task: no races, and a fixed summation order. A row costs about
    // inner × (positions per row) adds, so size the chunks by that (V=65 rows of 2048 ids still split).
    let work_per_row = inner * k.div_ceil(size).max(1);
    for_row_chunks(&mut dx, inner, rows_per_grain(work_per_row), |r0, c| {
        let mut acc: Vec<f64> = Vec::new();
        for (t, row) in c.chunks_mut(inner).enumerate() {
            let (o, s) = ((r0 + t) / size, (r0 + t) % size);
            let js = &order[start[s]..start[s + 1]];
            match js {
                [] => {}
                [j] => row.copy_from_slice(&g[(o * k + j) * inner..][..inner]),
                _ => {
                    acc.clear();
                    acc.resize(inner, 0.0);
                    for &j in js {
                        for (a, &v) in acc.iter_mut().zip(&g[(o * k + j) * inner..][..inner]) {
                            *a += v as f64;
                        }
                    }
                    for (d, &a) in row.iter_mut().zip(&acc) {
                        *d = a as f32;
                    }
                }
            }
        }
    });
    Ok(dx)
}

/// Backward of every gather here: out = x[o, idx[j], i] (x as (outer, size, inner)).
struct GatherBackward {
    name: &'static str,
    x: Tensor,
    outer: usize,
    size: usize,
    inner: usize,
    idx: Vec<usize>,
}
impl Backward for GatherBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out[o, j, i] = x[o, idx[j], i]  so  dx[o, s, i] = Σ over j with idx[j] = s of dout[o, j, i]
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dx = scatter_add_rows(self.name, &dout.data(), self.outer, self.size, self.inner, &self.idx)?;
        Ok(vec![Some(Tensor::from_vec_unchecked(dx, self.x.shape().to_vec()))])
    }
}

// ---- embedding ----
/// Rows of `weight` (V, C) picked by token ids: out has shape `ids_shape + [C]`. Every id must be in [0, V).
pub fn embedding(weight: &Tensor, ids: &[i64], ids_shape: &[usize]) -> Result<Tensor> {
    let op = "embedding";
    let &[v, c] = weight.shape() else {
        return Err(Error::shape(op, format!("weight must be 2-D (V, C), got shape {}", fmt_shape(weight.shape()))));
    };
    if checked_numel(op, ids_shape)? != ids.len() {
        return Err(Error::shape(
            op,
            format!("{} ids cannot be viewed as ids shape {}", ids.len(), fmt_shape(ids_shape)),
        ));
    }
    let mut rows = Vec::with_capacity(ids.len());
    for (pos, &id) in ids.iter().enumerate() {
        if id < 0 || id as u64 >= v as u64 {
            return Err(Error::index(
                op,
                format!(
                    "id {id} at position {} is out of range for a weight with {v} rows (ids must be in [0, {v}))",
                    fmt_position(pos, ids_shape)
                ),
            ));
        }
        rows.push(id as usize);
    }
    let mut shape = ids_shape.to_vec();
    shape.push(c);
    let n = checked_numel(op, &shape)?;
    let out = gather_rows(op, &weight.data(), v, c, &rows, n)?;
    let out = Tensor::from_vec_unchecked(out, shape);
    Ok(record(out, GatherBackward { name: op, x: weight.clone(), outer: 1, size: v, inner: c, idx: rows }))
}

/// A flat position in `shape` written as a numpy index, e.g. `[1, 3]`.
fn fmt_position(mut pos: usize, shape: &[usize]) -> String {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = pos % shape[k].max(1);
        pos /= shape[k].max(1);
    }
    format!("[{}]", idx.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "))
}

// ---- index_select ----
/// `x` at `indices` along `dim` (like torch.index_select); negative indices count from the end.
pub fn index_select(x: &Tensor, dim: isize, indices: &[i64]) -> Result<Tensor> {
    let op = "index_select";
    let d = normalize_dim(op, dim, x.ndim())?;
    let (outer, size, inner) = (numel(&x.shape()[..d]), x.shape()[d], numel(&x.shape()[d + 1..]));
    let mut idx = Vec::with_capacity(indices.len());
    for &i in indices {
        let j = if i < 0 { i as i128 + size as i128 } else { i as i128 };
        if j < 0 || j >= size as i128 {
            return Err(Error::index(op, format!("index {i} is out of bounds for dim {d} with size {size}")));
        }
        idx.push(j as usize);
    }
    let mut shape = x.shape().to_vec();
    shape[d] = idx.len();
    let n = checked_numel(op, &shape)?;
    let out = gather_rows(op, &x.data(), size, inner, &idx, n)?;
    let out = Tensor::from_vec_unchecked(out, shape);
    Ok(record(out, GatherBackward { name: op, x: x.clone(), outer, size, inner, idx }))
}

// ---- masked_fill ----
/// `value` where `mask` is nonzero, else `x`. `mask` (usually 0/1) must broadcast to x's shape.
pub fn masked_fill(x: &Tensor, mask: &Tensor, value: f32) -> Result<Tensor> {
    let op = "masked_fill";
    if broadcast_shapes(op, mask.shape(), x.shape()).ok().as_deref() != Some(x.shape()) {
        return Err(Error::shape(
            op,
            format!(
                "mask of shape {} cannot be broadcast to the input shape {}",
                fmt_shape(mask.shape()),
                fmt_shape(x.shape())
            ),
        ));
    }
    let out =
        select3(op, x, mask, &Tensor::scalar(value), x.shape().to_vec(), |v, m, fill| if m != 0.0 { fill } else { v })?;
    Ok(record(out, MaskedFillBackward { x: x.clone(), mask: mask.detach() }))
}

struct MaskedFillBackward {
    x: Tensor,
    mask: Tensor,
}
impl Backward for MaskedFillBackward {
    fn name(&self) -> &'static str {
        "masked_fill"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.x.clone()]
    }
    // out = mask ? value : x  so  dx = mask ? 0 : dout  (and nothing for the mask)
    fn backward(&self, dout: &Tensor, _needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let zero = Tensor::scalar(0.0);
        let shape = dout.shape().to_vec();
        Ok(vec![Some(select3("masked_fill", dout, &self.mask, &zero, shape, |g, m, z| if m != 0.0 { z } else { g })?)])
    }
}

// ---- where_ ----
/// `a` where `cond` is nonzero, else `b`; all three broadcast together (numpy.where).
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let op = "where";
    let shape = broadcast_shapes(op, cond.shape(), a.shape())
        .and_then(|s| broadcast_shapes(op, &s, b.shape()))
        .map_err(|_| {
            Error::shape(
                op,
                format!(
                    "cannot broadcast cond {} with a {} and b {}",
                    fmt_shape(cond.shape()),
                    fmt_shape(a.shape()),
                    fmt_shape(b.shape())
                ),
            )
        })?;
    let out = select3(op, cond, a, b, shape, pick_where)?;
    Ok(record(out, WhereBackward { cond: cond.detach(), a: a.clone(), b: b.clone() }))
}

fn pick_where(c: f32, a: f32, b: f32) -> f32 {
    if c != 0.0 { a } else { b }
}

/// One input of `select3` read at the output shape: its data and the merged (dims, strides) of the
/// broadcast walk, whose last dim is a run that is contiguous (stride 1) or one repeated value (stride 0).
/// A (T, T) causal mask over (B, H, T, T) scores is runs of T·T; a (B, 1, 1, T) padding mask runs of T.
struct Src<'a> {
    data: &'a [f32],
    dims: Vec<usize>,
    st: Vec<usize>,
}

/// Inputs whose runs are shorter than this are expanded to the full shape first.
const MIN_RUN: usize = 16;
/// Elements per inner loop: short enough for the constant-run buffers to sit in L1.
const SEG: usize = 256;

impl<'a> Src<'a> {
    /// `data` of a tensor of `shape_in` broadcast to `shape`, or `expanded` if a copy was made.
    fn new(data: &'a [f32], shape_in: &[usize], shape: &[usize], expanded: &'a Option<Vec<f32>>) -> Src<'a> {
        let (dims, st) = match expanded {
            Some(_) => merge_dims(shape, &strides(shape)),
            None => merge_dims(shape, &broadcast_strides(shape_in, shape)),
        };
        // a 0-d or all-ones output merges to nothing: one run of one element
        let (dims, st) = if dims.is_empty() { (vec![1], vec![0]) } else { (dims, st) };
        Src { data: expanded.as_deref().unwrap_or(data), dims, st }
    }
    fn run(&self) -> usize {
        self.dims[self.dims.len() - 1]
    }
}

/// Where one `Src` is, walking a chunk of the output.
struct Cursor<'s, 'a> {
    src: &'s Src<'a>,
    odo: Odometer<'s>,
    pos: usize,
    buf: [f32; SEG],
    /// The source offset whose value fills `buf` (for stride-0 runs).
    filled: Option<usize>,
}

impl<'s, 'a> Cursor<'s, 'a> {
    fn at(src: &'s Src<'a>, start: usize) -> Self {
        let m = src.dims.len();
        let run = src.run();
        let odo = Odometer::at(&src.dims[..m - 1], &src.st[..m - 1], start / run);
        Cursor { src, odo, pos: start % run, buf: [0.0; SEG], filled: None }
    }
    fn left_in_run(&self) -> usize {
        self.src.run() - self.pos
    }
    /// The next `len` elements (len ≤ left_in_run and ≤ SEG).
    fn get(&mut self, len: usize) -> &[f32] {
        if self.src.st[self.src.st.len() - 1] == 1 {
            &self.src.data[self.odo.off + self.pos..][..len]
        } else {
            if self.filled != Some(self.odo.off) {
                self.buf.fill(self.src.data[self.odo.off]);
                self.filled = Some(self.odo.off);
            }
            &self.buf[..len]
        }
    }
    fn advance(&mut self, len: usize) {
        self.pos += len;
        if self.pos == self.src.run() {
            self.pos = 0;
            self.odo.step();
        }
    }
}

/// out = f(x, y, z) elementwise over `shape`, which all three broadcast to (no autograd). Walks runs of up
/// to SEG elements where every input is a plain slice, so the inner loop vectorises.
fn select3<F>(op: &'static str, x: &Tensor, y: &Tensor, z: &Tensor, shape: Vec<usize>, f: F) -> Result<Tensor>
where
    F: Fn(f32, f32, f32) -> f32 + Send + Sync,
{
    let n = checked_numel(op, &shape)?;
    let mut out = alloc_zeros(op, n)?;
    if n > 0 {
        let expand = |t: &Tensor| -> Result<Option<Vec<f32>>> {
            let (dims, _) = merge_dims(&shape, &broadcast_strides(t.shape(), &shape));
            let short = dims.last().is_some_and(|&r| r < MIN_RUN);
            if short && t.numel() != n && t.numel() != 1 { broadcast_copy(op, t, &shape).map(Some) } else { Ok(None) }
        };
        let (ex, ey, ez) = (expand(x)?, expand(y)?, expand(z)?);
        let (gx, gy, gz) = (x.data(), y.data(), z.data());
        let srcs = [
            Src::new(&gx, x.shape(), &shape, &ex),
            Src::new(&gy, y.shape(), &shape, &ey),
            Src::new(&gz, z.shape(), &shape, &ez),
        ];
        let srcs = &srcs;
        for_each_chunk(&mut out, GRAIN, |start, chunk| {
            let [s0, s1, s2] = srcs;
            let (mut c0, mut c1, mut c2) = (Cursor::at(s0, start), Cursor::at(s1, start), Cursor::at(s2, start));
            let mut i = 0;
            while i < chunk.len() {
                let len = SEG.min(chunk.len() - i).min(c0.left_in_run()).min(c1.left_in_run()).min(c2.left_in_run());
                let (a, b, c) = (c0.get(len), c1.get(len), c2.get(len));
                for (((o, &a), &b), &c) in chunk[i..i + len].iter_mut().zip(a).zip(b).zip(c) {
                    *o = f(a, b, c);
                }
                c0.advance(len);
                c1.advance(len);
                c2.advance(len);
                i += len;
            }
        });
    }
    Ok(Tensor::from_vec_unchecked(out, shape))
}

struct WhereBackward {
    cond: Tensor,
    a: Tensor,
    b: Tensor,
}
impl Backward for WhereBackward {
    fn name(&self) -> &'static str {
        "where"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // out = cond ? a : b  so  da = cond ? dout : 0,  db = cond ? 0 : dout  (each summed over its broadcast dims)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let zero = Tensor::scalar(0.0);
        let shape = dout.shape().to_vec();
        let da = if needs[0] {
            Some(unbroadcast(&select3("where", &self.cond, dout, &zero, shape.clone(), pick_where)?, self.a.shape())?)
        } else {
            None
        };
        let db = if needs[1] {
            Some(unbroadcast(&select3("where", &self.cond, &zero, dout, shape, pick_where)?, self.b.shape())?)
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::ops::binary::zip_broadcast;
    use crate::ops::reduce::sum_all;
    use crate::tensor::random::{manual_seed, rand, randint, randn};
    use crate::testutil::assert_close;

    fn p(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }

    /// Element i of `t` read at the broadcast output position `i` of `shape`.
    fn bcast_at(t: &Tensor, shape: &[usize], i: usize) -> f64 {
        let (st, so) = (broadcast_strides(t.shape(), shape), strides(shape));
        let off: usize = (0..shape.len()).map(|d| (i / so[d]) % shape[d] * st[d]).sum();
        t.to_vec()[off] as f64
    }

    // ---- embedding ----
    #[test]
    fn embedding_gathers_rows_and_scatter_adds() {
        manual_seed(11);
        let w = p(&[7, 5]);
        let ids: Vec<i64> = vec![3, 0, 6, 3, 3, 1];
        let out = embedding(&w, &ids, &[2, 3]).unwrap();
        assert_eq!(out.shape(), &[2, 3, 5]);
        let wd = w.to_vec();
        let want: Vec<f64> = (0..30).map(|i| wd[ids[i / 5] as usize * 5 + i % 5] as f64).collect();
        assert_close("embedding forward", &out.to_vec(), &want, 0.0, 0.0);
        // backward with a random dout: dW[v] = Σ over positions with id v of dout[pos], in f64
        let g = randn(&[2, 3, 5], 0.0, 1.0).unwrap();
        out.backward(Some(&g), false).unwrap();
        let gd = g.to_vec();
        let mut dw = vec![0f64; 35];
        for (pos, &id) in ids.iter().enumerate() {
            for c in 0..5 {
                dw[id as usize * 5 + c] += gd[pos * 5 + c] as f64;
            }
        }
        assert_close("embedding backward", &w.grad().unwrap().to_vec(), &dw, 1e-6, 0.0);
        assert_gradcheck(|xs| embedding(&xs[0], &ids, &[6]), &[p(&[7, 5])]);
        assert_gradcheck(|xs| embedding(&xs[0], &[1, 1, 1, 0], &[2, 2]), &[p(&[2, 3])]);
    }

    #[test]
    fn embedding_backward_is_deterministic_across_thread_counts() {
        manual_seed(12);
        // GPT-like: many repeats of few ids, and a wide table with few hits
        for (v, c, n) in [(65, 128, 2048), (5000, 96, 3000)] {
            let w = p(&[v, c]);
            let ids = randint(0, v as i64, n).unwrap();
            let g = randn(&[n, c], 0.0, 1.0).unwrap();
            let grad_with = |threads: usize| {
                crate::parallel::with_threads(threads, || {
                    w.zero_grad();
                    embedding(&w, &ids, &[n]).unwrap().backward(Some(&g), false).unwrap();
                    w.grad().unwrap().to_vec()
                })
            };
            let (one, two) = (grad_with(1), grad_with(2));
            assert!(one == two, "V={v}: 1 and 2 threads differ");
            let gd = g.to_vec();
            let mut dw = vec![0f64; v * c];
            for (pos, &id) in ids.iter().enumerate() {
                for k in 0..c {
                    dw[id as usize * c + k] += gd[pos * c + k] as f64;
                }
            }
            assert_close(&format!("embedding backward V={v}"), &one, &dw, 1e-5, 0.0);
        }
    }

    #[test]
    fn embedding_errors_and_empty_ids() {
        let w = Tensor::zeros(&[65, 4]).unwrap();
        let e = embedding(&w, &[1, 2, 3, 70], &[2, 2]).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(
            e.to_string(),
            "embedding: id 70 at position [1, 1] is out of range for a weight with 65 rows (ids must be in [0, 65))"
        );
        assert!(embedding(&w, &[-1], &[1]).unwrap_err().to_string().contains("id -1 at position [0]"));
        assert!(matches!(embedding(&w, &[65], &[1]), Err(Error::Index { .. })));
        let e = embedding(&w, &[1, 2, 3], &[2, 2]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "embedding: 3 ids cannot be viewed as ids shape (2, 2)");
        let e = embedding(&Tensor::zeros(&[4]).unwrap(), &[0], &[1]).unwrap_err();
        assert_eq!(e.to_string(), "embedding: weight must be 2-D (V, C), got shape (4,)");
        // no ids: an empty output and a zero gradient
        let w = p(&[3, 2]);
        let out = embedding(&w, &[], &[2, 0]).unwrap();
        assert_eq!(out.shape(), &[2, 0, 2]);
        sum_all(&out).unwrap().backward(None, false).unwrap();
        assert_eq!(w.grad().unwrap().to_vec(), vec![0.0; 6]);
        // an empty table can be indexed by no ids
        assert_eq!(embedding(&Tensor::zeros(&[0, 3]).unwrap(), &[], &[0]).unwrap().shape(), &[0, 3]);
    }

    // ---- index_select ----
    #[test]
    fn index_select_matches_reference() {
        manual_seed(13);
        let x = p(&[3, 4, 5]);
        for (dim, d, indices) in
            [(0isize, 0usize, vec![2i64, 0, 2]), (1, 1, vec![-1, 0, 3, 3, 1]), (-1, 2, vec![4]), (1, 1, vec![])]
        {
            let out = index_select(&x, dim, &indices).unwrap();
            let size = x.shape()[d] as i64;
            let mut shape = x.shape().to_vec();
            shape[d] = indices.len();
            assert_eq!(out.shape(), &shape[..]);
            // out[idx] = x[idx with idx[d] replaced by the (wrapped) index]
            let so = strides(&shape);
            let sx = strides(x.shape());
            let xd = x.to_vec();
            let want: Vec<f64> = (0..numel(&shape))
                .map(|i| {
                    let off: usize = (0..3)
                        .map(|k| {
                            let q = (i / so[k]) % shape[k];
                            let q = if k == d { indices[q].rem_euclid(size) as usize } else { q };
                            q * sx[k]
                        })
                        .sum();
                    xd[off] as f64
                })
                .collect();
            assert_close(&format!("index_select dim {dim} {indices:?}"), &out.to_vec(), &want, 0.0, 0.0);
        }
        // repeated indices accumulate their gradients
        let y = p(&[4, 2]);
        sum_all(&index_select(&y, 0, &[1, 1, -1, 1]).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(y.grad().unwrap().to_vec(), vec![0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 1.0, 1.0]);
        assert_gradcheck(|xs| index_select(&xs[0], 1, &[2, 0, 2, -1]), &[p(&[2, 4, 3])]);
        assert_gradcheck(|xs| index_select(&xs[0], -1, &[1, 1]), &[p(&[3, 2])]);
    }

    #[test]
    fn index_select_errors() {
        let x = Tensor::zeros(&[3, 4]).unwrap();
        let e = index_select(&x, 1, &[0, 4]).unwrap_err();
        assert!(matches!(e, Error::Index { .. }));
        assert_eq!(e.to_string(), "index_select: index 4 is out of bounds for dim 1 with size 4");
        assert!(matches!(index_select(&x, 0, &[-4]), Err(Error::Index { .. })));
        assert!(matches!(index_select(&x, 2, &[0]), Err(Error::Index { .. })));
        assert!(matches!(index_select(&x, 0, &[i64::MIN]), Err(Error::Index { .. })));
    }

    // ---- masked_fill ----
    #[test]
    fn masked_fill_matches_reference() {
        manual_seed(14);
        // a causal (T, T) mask over (B, H, T, T) scores, and a (B, 1, 1, T) padding mask
        let causal: Vec<f32> = (0..16).map(|i| if i % 4 > i / 4 { 1.0 } else { 0.0 }).collect();
        let causal = Tensor::new(causal, &[4, 4]).unwrap();
        let pad = Tensor::new(vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], &[2, 1, 1, 4]).unwrap();
        // runs: causal 16, pad 4 (expanded first), (3, 4, 4) 48, (1, 3, 4, 8) 96
        let wide = rand(&[1, 3, 4, 8], 0.0, 1.0).unwrap();
        let mut cases =
            vec![(causal, 4), (pad, 4), (Tensor::scalar(1.0), 4), (rand(&[2, 3, 4, 4], 0.0, 1.0).unwrap(), 4)];
        cases.push((rand(&[3, 4, 4], 0.0, 1.0).unwrap(), 4));
        cases.push((wide, 8));
        for (mask, t) in cases {
            let shape = [2, 3, 4, t];
            let mask = zip_broadcast("t", &mask, &Tensor::scalar(0.5), |m, h| if m >= h { 1.0 } else { 0.0 }).unwrap();
            let x = p(&shape);
            let out = masked_fill(&x, &mask, f32::NEG_INFINITY).unwrap();
            let want: Vec<f64> = (0..x.numel())
                .map(|i| if bcast_at(&mask, &shape, i) != 0.0 { f64::NEG_INFINITY } else { x.to_vec()[i] as f64 })
                .collect();
            assert_close(&format!("masked_fill mask {:?}", mask.shape()), &out.to_vec(), &want, 0.0, 0.0);
            assert_gradcheck(|xs| masked_fill(&xs[0], &mask, 2.5), &[x]);
        }
        // a mask that requires grad gets none
        let m = Tensor::new(vec![1.0, 0.0], &[2]).unwrap().requires_grad_(true);
        let x = p(&[3, 2]);
        sum_all(&masked_fill(&x, &m, 0.0).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(x.grad().unwrap().to_vec(), vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        assert!(m.grad().is_none());
        assert_eq!(masked_fill(&Tensor::zeros(&[0, 2]).unwrap(), &m, 1.0).unwrap().shape(), &[0, 2]);
    }

    #[test]
    fn masked_fill_broadcasts_the_mask_only() {
        let x = Tensor::zeros(&[2, 4]).unwrap();
        let e = masked_fill(&x, &Tensor::zeros(&[3, 2, 4]).unwrap(), 0.0).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "masked_fill: mask of shape (3, 2, 4) cannot be broadcast to the input shape (2, 4)");
        assert!(matches!(masked_fill(&x, &Tensor::zeros(&[3]).unwrap(), 0.0), Err(Error::Shape { .. })));
        // x (2, 1) would need to grow to the mask's (2, 4): not allowed
        assert!(matches!(
            masked_fill(&Tensor::zeros(&[2, 1]).unwrap(), &Tensor::zeros(&[2, 4]).unwrap(), 0.0),
            Err(Error::Shape { .. })
        ));
    }

    // ---- where_ ----
    #[test]
    fn where_matches_reference() {
        manual_seed(15);
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[2, 3], &[2, 3], &[2, 3]),
            (&[3], &[2, 3], &[]),
            (&[2, 1], &[1, 3], &[2, 3]),
            (&[4, 1, 3], &[2, 1], &[3]),
            (&[1, 1], &[1], &[1]),
            (&[0, 3], &[3], &[]),
            (&[2, 3, 1], &[2, 3, 32], &[1, 32]), // runs of 32: one value per row of cond, b repeating
        ];
        for &(sc, sa, sb) in cases {
            let cond =
                zip_broadcast(
                    "t",
                    &rand(sc, 0.0, 1.0).unwrap(),
                    &Tensor::scalar(0.5),
                    |u, h| if u < h { 1.0 } else { 0.0 },
                )
                .unwrap();
            let (a, b) = (p(sa), p(sb));
            let out = where_(&cond, &a, &b).unwrap();
            let shape = broadcast_shapes("t", &broadcast_shapes("t", sc, sa).unwrap(), sb).unwrap();
            assert_eq!(out.shape(), &shape[..]);
            let want: Vec<f64> =
                (0..numel(&shape))
                    .map(|i| {
                        if bcast_at(&cond, &shape, i) != 0.0 {
                            bcast_at(&a, &shape, i)
                        } else {
                            bcast_at(&b, &shape, i)
                        }
                    })
                    .collect();
            assert_close(&format!("where {sc:?} {sa:?} {sb:?}"), &out.to_vec(), &want, 0.0, 0.0);
            assert_gradcheck(|xs| where_(&cond, &xs[0], &xs[1]), &[a, b]);
        }
        // big enough to run in parallel, cond broadcast from (T, T)
        let cond = Tensor::new((0..64 * 64).map(|i| ((i % 64) <= (i / 64)) as u8 as f32).collect(), &[64, 64]).unwrap();
        let (a, b) = (randn(&[8, 64, 64], 0.0, 1.0).unwrap(), Tensor::scalar(-1e9));
        let out = where_(&cond, &a, &b).unwrap().to_vec();
        let want: Vec<f64> = (0..a.numel())
            .map(|i| if (i % 64) <= (i / 64) % 64 { a.to_vec()[i] as f64 } else { -1e9f32 as f64 })
            .collect();
        assert_close("where big", &out, &want, 0.0, 0.0);
        // a (64, 1) cond is runs of 64 equal values
        let cond = Tensor::new((0..64).map(|i| (i % 3 == 0) as u8 as f32).collect(), &[64, 1]).unwrap();
        let out = where_(&cond, &a, &b).unwrap().to_vec();
        let want: Vec<f64> = (0..a.numel())
            .map(|i| if (i / 64) % 64 % 3 == 0 { a.to_vec()[i] as f64 } else { -1e9f32 as f64 })
            .collect();
        assert_close("where big, cond (64, 1)", &out, &want, 0.0, 0.0);
    }

    #[test]
    fn where_grads_skip_cond_and_errors() {
        let cond = Tensor::new(vec![1.0, 0.0, 1.0], &[3]).unwrap().requires_grad_(true);
        let (a, b) = (p(&[2, 3]), p(&[]));
        sum_all(&where_(&cond, &a, &b).unwrap()).unwrap().backward(None, false).unwrap();
        assert_eq!(a.grad().unwrap().to_vec(), vec![1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
        assert_eq!(b.grad().unwrap().to_vec(), vec![2.0]);
        assert!(cond.grad().is_none());
        let e = where_(&Tensor::zeros(&[2]).unwrap(), &a, &b).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "where: cannot broadcast cond (2,) with a (2, 3) and b ()");
    }
}
