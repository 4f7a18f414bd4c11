//! `matmul` with numpy semantics: 1-D promotion, batch dims that broadcast, `(…, M, K) @ (…, K, N)`.
//! All arithmetic is one strided GEMM on the contiguous buffers (our own AVX-512 / AVX2 kernels in
//! `kernels`, matrixmultiply's `sgemm` on other CPUs), so the backward's transposed products (dA = dC·Bᵀ, dB = Aᵀ·dC) read the same buffers with swapped
//! strides instead of making transposed copies. Parallelism splits the OUTPUT into disjoint tiles of a
//! size fixed by the shapes alone (never by the thread count), so results are bit-identical on 1 or N
//! threads. Not here: integer/other dtypes, `out=` arguments, splitting the K (reduction) dim.
//! `linear` (torch's nn.Linear: x @ Wᵀ + b) is the same engine reading W through swapped strides, with
//! the bias written into each output tile just before its product adds on top.
//! References: numpy.matmul's broadcasting rules; llm.c `matmul_forward` / `matmul_backward`.

use rayon::prelude::*;

use crate::autograd::{Backward, record, will_record};
use crate::error::{Error, Result, fmt_shape};
use crate::ops::simd::{Isa, dispatch_simd};
use crate::parallel::install;
use crate::tensor::shape::broadcast_strides;
use crate::tensor::{Tensor, alloc_zeros, checked_numel, numel, strides};

const OP: &str = "matmul";

mod dots;
mod engine;
mod kernels;

use engine::{Gemm, plain, transposed};
pub(crate) use engine::{WeightCopies, bf16_enabled, row_wise, set_bf16, with_bf16, with_weight_copies};
pub(crate) use kernels::bf16_supported;
pub(crate) use kernels::fma_peak;

/// The GEMM path this process uses, e.g. `"avx512 (own 12x32 FMA kernel)"`.
pub fn gemm_path() -> &'static str {
    kernels::level_name(kernels::level())
}

// ---- shapes ----

/// One matmul's shapes after numpy's 1-D promotion: a (…a, M, K) @ b (…b, K, N) -> (…batch, M, N).
struct Dims {
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    /// The result's shape with the promoted dims removed again.
    out_shape: Vec<usize>,
}

impl Dims {
    fn new(a: &[usize], b: &[usize]) -> Result<Dims> {
        let zero_dim = || {
            Error::shape(
                OP,
                format!("both arguments must have at least 1 dim, got {} @ {}", fmt_shape(a), fmt_shape(b)),
            )
        };
        // 1-D a is a row (1, K); 1-D b is a column (K, 1)
        let (a_batch, m, ka) = match a {
            [] => return Err(zero_dim()),
            [k] => (vec![], 1, *k),
            [batch @ .., m, k] => (batch.to_vec(), *m, *k),
        };
        let (b_batch, kb, n) = match b {
            [] => return Err(zero_dim()),
            [k] => (vec![], *k, 1),
            [batch @ .., k, n] => (batch.to_vec(), *k, *n),
        };
        if ka != kb {
            return Err(Error::shape(
                OP,
                format!("inner dimensions do not match: {} @ {}", fmt_shape(a), fmt_shape(b)),
            ));
        }
        let batch = crate::tensor::broadcast_shapes(OP, &a_batch, &b_batch).map_err(|_| {
            Error::shape(
                OP,
                format!(
                    "cannot broadcast batch dims {} with {}: {} @ {}",
                    fmt_shape(&a_batch),
                    fmt_shape(&b_batch),
                    fmt_shape(a),
                    fmt_shape(b)
                ),
            )
        })?;
        let mut out_shape = batch.clone();
        if a.len() > 1 {
            out_shape.push(m);
        }
        if b.len() > 1 {
            out_shape.push(n);
        }
        Ok(Dims { a_batch, b_batch, batch, m, k: ka, n, out_shape })
    }

    /// For each output batch index (row-major over `batch`): which matrix of a and of b it reads.
    fn batch_map(&self) -> Vec<(usize, usize)> {
        let (sa, sb) = (broadcast_strides(&self.a_batch, &self.batch), broadcast_strides(&self.b_batch, &self.batch));
        let so = strides(&self.batch);
        (0..numel(&self.batch))
            .map(|i| {
                let (mut ia, mut ib, mut rem) = (0, 0, i);
                for d in 0..so.len() {
                    let q = rem / so[d];
                    rem -= q * so[d];
                    ia += q * sa[d];
                    ib += q * sb[d];
                }
                (ia, ib)
            })
            .collect()
    }

    /// True when b is one matrix shared by all batches and a is not broadcast: then a's batch folds into
    /// its rows, (…, M, K) @ (K, N) is one (…·M, K) @ (K, N) product (the Linear-layer case).
    fn folds(&self) -> bool {
        numel(&self.b_batch) == 1 && numel(&self.a_batch) == numel(&self.batch)
    }
}

// ---- matmul ----

/// out = a @ b with numpy.matmul semantics. Shapes: a (…, M, K), b (…, K, N) -> (broadcast(…), M, N).
/// A 1-D `a` is a row vector (its dim is removed from the result), a 1-D `b` a column vector; so
/// (K,) @ (K,) is a 0-d dot product. Errors: 0-d arguments, inner dims that differ, batch dims that
/// do not broadcast (all `Error::Shape`); an output too large to allocate (`Error::Alloc`).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dims = Dims::new(a.shape(), b.shape())?;
    let (m, k, n) = (dims.m, dims.k, dims.n);
    let count = checked_numel(OP, &dims.batch)?;
    checked_numel(OP, &[count, m, n])?;
    let out = {
        let reads = crate::tensor::read_all([a, b]);
        let [ad, bd] = reads.slices();
        let gemm = if dims.folds() {
            // (…, M, K) @ (K, N) as one (…·M, K) @ (K, N)
            Gemm::one_term_each((count * m, k, n), plain(&ad, k), plain(&bd, n), vec![(0, 0)])
        } else {
            let terms = dims.batch_map().into_iter().map(|(ia, ib)| (ia * m * k, ib * k * n)).collect();
            Gemm::one_term_each((m, k, n), plain(&ad, k), plain(&bd, n), terms)
        };
        gemm.run_new(OP)?
    };
    let out = Tensor::from_vec_unchecked(out, dims.out_shape.clone());
    if !will_record(&[a, b]) {
        return Ok(out);
    }
    Ok(record(out, MatmulBackward { a: a.clone(), b: b.clone(), bf16: bf16_enabled() }))
}

struct MatmulBackward {
    a: Tensor,
    b: Tensor,
    /// The forward ran in a bf16 scope: so do both backward products (wherever backward is called).
    bf16: bool,
}

/// CSR grouping: for each of `count` targets, the positions i (ascending) with `target_of[i]` == it.
fn group_by_target(target_of: impl Iterator<Item = usize> + Clone, count: usize) -> (Vec<usize>, Vec<usize>) {
    let mut starts = vec![0usize; count + 1];
    for t in target_of.clone() {
        starts[t + 1] += 1;
    }
    for j in 0..count {
        starts[j + 1] += starts[j];
    }
    let mut fill = starts.clone();
    let mut order = vec![0usize; starts[count]];
    for (i, t) in target_of.enumerate() {
        order[fill[t]] = i;
        fill[t] += 1;
    }
    (order, starts)
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn inputs(&self) -> Vec<Tensor> {
        vec![self.a.clone(), self.b.clone()]
    }
    // forward was: out[i] = A[ia(i)] @ B[ib(i)] for every batch index i, so
    //   dA[j] = Σ_{i: ia(i) = j} dC[i] @ B[ib(i)]ᵀ     dB[j] = Σ_{i: ib(i) = j} A[ia(i)]ᵀ @ dC[i]
    // (1-D inputs were promoted to (1, K) / (K, 1): same data, so their gradients are just reshaped.)
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        with_bf16(self.bf16, || self.grads(dout, needs))
    }
}

impl MatmulBackward {
    fn grads(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let dims = Dims::new(self.a.shape(), self.b.shape())?;
        let (m, k, n) = (dims.m, dims.k, dims.n);
        let reads = crate::tensor::read_all([&self.a, &self.b, dout]);
        let [ad, bd, dc] = reads.slices();
        let count = numel(&dims.batch);
        let map = if dims.folds() { vec![] } else { dims.batch_map() };
        let dc_offs = |i: usize| i * m * n;

        let da = if needs[0] {
            let gemm = if dims.folds() {
                // dA (…·M, K) = dC (…·M, N) @ Bᵀ (N, K)
                Gemm::one_term_each((count * m, n, k), plain(&dc, n), transposed(&bd, n), vec![(0, 0)])
            } else {
                let (order, starts) = group_by_target(map.iter().map(|&(ia, _)| ia), numel(&dims.a_batch));
                let terms = order.iter().map(|&i| (dc_offs(i), map[i].1 * k * n)).collect();
                Gemm::new((m, n, k), plain(&dc, n), transposed(&bd, n), terms, starts)
            };
            let g = gemm.run_new(OP)?;
            Some(Tensor::from_vec_unchecked(g, self.a.shape().to_vec()))
        } else {
            None
        };

        let db = if needs[1] {
            let gemm = if dims.folds() {
                // dB (K, N) = Aᵀ (K, …·M) @ dC (…·M, N): the batch sum happens inside the product
                Gemm::one_term_each((k, count * m, n), transposed(&ad, k), plain(&dc, n), vec![(0, 0)])
            } else {
                let (order, starts) = group_by_target(map.iter().map(|&(_, ib)| ib), numel(&dims.b_batch));
                let terms = order.iter().map(|&i| (map[i].0 * m * k, dc_offs(i))).collect();
                Gemm::new((k, m, n), transposed(&ad, k), plain(&dc, n), terms, starts)
            };
            let g = gemm.run_new(OP)?;
            Some(Tensor::from_vec_unchecked(g, self.b.shape().to_vec()))
        } else {
            None
        };
        Ok(vec![da, db])
    }
}

// ---- linear ----

/// Columns per task when summing the bias gradient (fixed, so the split never depends on threads).
const BIAS_COLS: usize = 64;

/// out = x @ weightᵀ + bias, torch's `nn.Linear` layout. Shapes: x (…, IN), weight (OUT, IN),
/// bias (OUT,) -> (…, OUT); a 1-D x (IN,) gives (OUT,). The leading dims fold into the rows of one
/// product, W is read transposed in place (no copy), and the bias is written into each output tile
/// just before the product adds to it. A single row (decode) runs as a matrix-vector product. Inside
/// `row_wise` in a bf16 scope (a decode step under autocast) W is read as its bf16 copy
/// (`engine::bf16_weight`), x and the sums stay f32. No gradient flows through such a product's bf16
/// copy (decode runs under no_grad); its backward, if recorded, is the f32 one.
/// Errors (`Error::Shape`): 0-d x, weight not 2-D, IN mismatch, bias not (OUT,); `Alloc`.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let op = "linear";
    let ws = weight.shape();
    let [out_f, in_f] = ws[..] else {
        return Err(Error::shape(
            op,
            format!("weight must be 2-D (out_features, in_features), got shape {}", fmt_shape(ws)),
        ));
    };
    let Some(&x_in) = x.shape().last() else {
        return Err(Error::shape(op, format!("input must have at least 1 dim, got shape {}", fmt_shape(x.shape()))));
    };
    if x_in != in_f {
        return Err(Error::shape(
            op,
            format!(
                "input has {x_in} features but weight expects {in_f}: {} @ {}ᵀ",
                fmt_shape(x.shape()),
                fmt_shape(ws)
            ),
        ));
    }
    if let Some(b) = bias {
        if b.shape() != [out_f] {
            return Err(Error::shape(
                op,
                format!(
                    "bias must have shape ({out_f},) to match weight {}, got {}",
                    fmt_shape(ws),
                    fmt_shape(b.shape())
                ),
            ));
        }
    }
    let rows = numel(&x.shape()[..x.ndim() - 1]);
    let mut out_shape = x.shape()[..x.ndim() - 1].to_vec();
    out_shape.push(out_f);
    checked_numel(op, &out_shape)?;
    let w16 = if rows > 0 && in_f > 0 && out_f > 0 && engine::row_wise_bf16() {
        Some(engine::bf16_weight(weight)?)
    } else {
        None
    };
    let out = {
        let (xd, wd) = (x.data(), weight.data());
        let bd = bias.map(|b| b.data());
        // (rows, IN) @ Wᵀ (IN, OUT): W's element (k, o) sits at o·IN + k (IN = 0: every row is the bias)
        Gemm::one_term_each((rows, in_f, out_f), plain(&xd, in_f), transposed(&wd, in_f), vec![(0, 0)])
            .with_bias(bd.as_deref().map(|v| &v[..]))
            .with_bf16_b(w16.as_deref())
            .run_new(op)?
    };
    let out = Tensor::from_vec_unchecked(out, out_shape);
    let inputs: Vec<&Tensor> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
    if !will_record(&inputs) {
        return Ok(out);
    }
    Ok(record(out, LinearBackward { x: x.clone(), weight: weight.clone(), bias: bias.cloned(), bf16: bf16_enabled() }))
}

struct LinearBackward {
    x: Tensor,
    weight: Tensor,
    bias: Option<Tensor>,
    /// The forward ran in a bf16 scope: so do dX and dW.
    bf16: bool,
}

impl Backward for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn inputs(&self) -> Vec<Tensor> {
        let mut v = vec![self.x.clone(), self.weight.clone()];
        v.extend(self.bias.clone());
        v
    }
    // forward was: Y (rows, OUT) = X (rows, IN) @ Wᵀ + b, so
    //   dX = dY @ W (rows, IN)      dW = dYᵀ @ X (OUT, IN)      db = Σ_rows dY
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        with_bf16(self.bf16, || self.grads(dout, needs))
    }
}

impl LinearBackward {
    fn grads(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let [out_f, in_f] = self.weight.shape()[..] else { unreachable!("checked in the forward") };
        let rows = self.x.numel().checked_div(in_f).unwrap_or(dout.numel() / out_f.max(1));
        let (xd, wd, dy) = (self.x.data(), self.weight.data(), dout.data());
        let dx = if needs[0] {
            let g = Gemm::one_term_each((rows, out_f, in_f), plain(&dy, out_f), plain(&wd, in_f), vec![(0, 0)])
                .run_new(OP)?;
            Some(Tensor::from_vec_unchecked(g, self.x.shape().to_vec()))
        } else {
            None
        };
        let dw = if needs[1] {
            // dYᵀ read in place: element (o, r) of dYᵀ sits at r·OUT + o
            let g = Gemm::one_term_each((out_f, rows, in_f), transposed(&dy, out_f), plain(&xd, in_f), vec![(0, 0)])
                .run_new(OP)?;
            Some(Tensor::from_vec_unchecked(g, self.weight.shape().to_vec()))
        } else {
            None
        };
        let mut grads = vec![dx, dw];
        if self.bias.is_some() {
            grads.push(if needs.get(2) == Some(&true) { Some(column_sums(&dy, rows, out_f)?) } else { None });
        }
        Ok(grads)
    }
}

/// Σ over rows of a (rows, cols) matrix, as a (cols,) tensor. Each task owns BIAS_COLS columns and adds
/// the rows in order in f64, so the result does not depend on the thread count (nor on the vector width:
/// each column is its own sum).
fn column_sums(d: &[f32], rows: usize, cols: usize) -> Result<Tensor> {
    let mut out = alloc_zeros("linear", cols)?;
    if rows * cols <= crate::parallel::GRAIN * 4 {
        for (i, o) in out.chunks_mut(BIAS_COLS).enumerate() {
            sum_columns(d, rows, cols, i * BIAS_COLS, o);
        }
    } else {
        install(|| {
            out.par_chunks_mut(BIAS_COLS).enumerate().for_each(|(i, o)| sum_columns(d, rows, cols, i * BIAS_COLS, o))
        });
    }
    Ok(Tensor::from_vec_unchecked(out, vec![cols]))
}

/// `o[j] = Σ_r d[r, c0 + j]` in f64 for the (≤ BIAS_COLS) columns of `o`.
fn sum_columns(d: &[f32], rows: usize, cols: usize, c0: usize, o: &mut [f32]) {
    dispatch_simd!(sum_columns_body, sum_columns_avx512, sum_columns_avx2, (d: &[f32], rows: usize, cols: usize, c0: usize, o: &mut [f32]));
}

#[inline(always)]
fn sum_columns_body<const ISA: Isa>(d: &[f32], rows: usize, cols: usize, c0: usize, o: &mut [f32]) {
    let w = o.len();
    let mut acc = [0f64; BIAS_COLS];
    if w == BIAS_COLS {
        // a full block: fixed length, so the loop vectorizes
        for r in 0..rows {
            let row: &[f32; BIAS_COLS] = d[r * cols + c0..r * cols + c0 + BIAS_COLS].try_into().expect("a full block");
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v as f64;
            }
        }
    } else {
        for r in 0..rows {
            for (a, &v) in acc.iter_mut().zip(&d[r * cols + c0..r * cols + c0 + w]) {
                *a += v as f64;
            }
        }
    }
    for (o, a) in o.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::engine::{Strided, gemv, gemv_body, shared_b_cuts, tile_shape};
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::parallel::with_threads;
    use crate::tensor::random::{manual_seed, randn};
    use crate::testutil::assert_close;

    fn p(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }

    /// numpy.matmul in f64 with plain loops: promote 1-D, broadcast the batch by explicit strides,
    /// triple loop, drop the promoted dims. Returns (shape, values).
    fn reference(a: &Tensor, b: &Tensor) -> (Vec<usize>, Vec<f64>) {
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        let a2 = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
        let b2 = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
        let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
        let (ba, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
        let batch = crate::tensor::broadcast_shapes("ref", ba, bb).unwrap();
        let (sta, stb) = (broadcast_strides(ba, &batch), broadcast_strides(bb, &batch));
        let (ad, bd) = (a.to_vec(), b.to_vec());
        let mut out = Vec::new();
        for i in 0..numel(&batch) {
            // multi-index of i over `batch`, then each operand's matrix number
            let (mut ia, mut ib, mut rem) = (0, 0, i);
            for d in (0..batch.len()).rev() {
                let q = rem % batch[d];
                rem /= batch[d];
                ia += q * sta[d];
                ib += q * stb[d];
            }
            for r in 0..m {
                for c in 0..n {
                    let mut s = 0f64;
                    for kk in 0..k {
                        s += ad[ia * m * k + r * k + kk] as f64 * bd[ib * k * n + kk * n + c] as f64;
                    }
                    out.push(s);
                }
            }
        }
        let mut shape = batch.clone();
        if sa.len() > 1 {
            shape.push(m);
        }
        if sb.len() > 1 {
            shape.push(n);
        }
        (shape, out)
    }

    /// Max |got − want| relative to the scale of the terms (k·max|a|·max|b| would be loose; use √k).
    /// The tolerance (atol and rtol, i.e. relative to 1 + |want|) for k-term f32 sums against f64: their
    /// rounding grows like √k.
    fn tol_k(k: usize) -> f64 {
        1e-5 * (k.max(1) as f64).sqrt() * 4.0
    }

    fn check_forward(sa: &[usize], sb: &[usize]) {
        let (a, b) = (p(sa), p(sb));
        let out = matmul(&a, &b).unwrap();
        let (shape, want) = reference(&a, &b);
        assert_eq!(out.shape(), &shape[..], "{sa:?} @ {sb:?}: shape");
        let k = *sa.last().unwrap();
        assert_close(&format!("{sa:?} @ {sb:?}"), &out.to_vec(), &want, tol_k(k), tol_k(k));
    }

    // (a shape, b shape): every promotion and broadcast path, small enough to gradcheck
    const SMALL: [(&[usize], &[usize]); 12] = [
        (&[3, 4], &[4, 5]),             // 2-D
        (&[4], &[4, 5]),                // 1-D @ 2-D (gemv, axpy form)
        (&[3, 4], &[4]),                // 2-D @ 1-D (gemv, dot form)
        (&[4], &[4]),                   // 1-D @ 1-D -> 0-d
        (&[2, 3, 4], &[2, 4, 5]),       // batched
        (&[2, 1, 3, 4], &[3, 4, 5]),    // broadcast batch -> (2, 3, 3, 5)
        (&[2, 3, 4], &[4, 5]),          // shared b: folds into one (6, 4) @ (4, 5)
        (&[3, 4], &[2, 4, 5]),          // shared a: dA sums over the batch
        (&[1, 3, 4], &[2, 4, 5]),       // size-1 batch dim broadcast
        (&[4], &[2, 4, 5]),             // 1-D @ batched
        (&[2, 3, 4], &[4]),             // batched @ 1-D
        (&[2, 1, 1, 4], &[1, 3, 4, 2]), // broadcast on both sides, M = 1
    ];

    #[test]
    fn forward_matches_f64_reference() {
        manual_seed(0);
        for (sa, sb) in SMALL {
            check_forward(sa, sb);
        }
        // shapes big enough to be cut into tiles, ragged edges, and the matrix-vector paths
        let (r, _) = tile_shape(1, 300, 200, 1100);
        assert!(r < 300, "300×1100 output should be cut into row tiles");
        check_forward(&[300, 200], &[200, 1100]);
        check_forward(&[3, 129, 70], &[70, 1030]);
        check_forward(&[4, 2, 33, 17], &[2, 17, 65]);
        check_forward(&[1, 700], &[700, 3000]);
        check_forward(&[3000, 700], &[700]);
        check_forward(&[2000], &[2000]);
    }

    #[test]
    fn gradcheck_every_case() {
        manual_seed(1);
        for (sa, sb) in SMALL {
            assert_gradcheck(|xs| matmul(&xs[0], &xs[1]), &[p(sa), p(sb)]);
        }
        // only one side needing a gradient
        let (a, b) = (p(&[2, 3, 4]), randn(&[4, 5], 0.0, 1.0).unwrap());
        assert_gradcheck(|xs| matmul(&xs[0], &xs[1]), &[a, b]);
        let (a, b) = (randn(&[3, 4], 0.0, 1.0).unwrap(), p(&[2, 4, 5]));
        assert_gradcheck(|xs| matmul(&xs[0], &xs[1]), &[a, b]);
    }

    /// dA and dB on tiled shapes, against f64 sums: with L = Σ w·out,
    /// dA[ia, r, k] = Σ_{i→ia} Σ_n w[i, r, n]·B[ib, k, n],  dB[ib, k, n] = Σ_{i→ib} Σ_r A[ia, r, k]·w[i, r, n].
    #[test]
    fn backward_matches_f64_reference_on_big_shapes() {
        manual_seed(2);
        let cases: [(&[usize], &[usize]); 5] = [
            (&[4, 160, 96], &[96, 1100]),  // fold: dB is one (96, 640) @ (640, 1100)
            (&[300, 200], &[2, 200, 170]), // shared a: dA sums two products per tile
            (&[2, 1, 150, 64], &[3, 64, 300]),
            (&[1, 900], &[900, 1500]), // M = 1
            (&[1500, 900], &[900]),    // N = 1
        ];
        for (sa, sb) in cases {
            let (a, b) = (p(sa), p(sb));
            let out = matmul(&a, &b).unwrap();
            let w = randn(out.shape(), 0.0, 1.0).unwrap();
            out.backward(Some(&w), false).unwrap();
            // reference over the promoted (batch, M, K) @ (batch, K, N) layout
            let dims = Dims::new(sa, sb).unwrap();
            let (m, k, n) = (dims.m, dims.k, dims.n);
            let (ad, bd, wd) = (a.to_vec(), b.to_vec(), w.to_vec());
            let mut da = vec![0f64; a.numel()];
            let mut db = vec![0f64; b.numel()];
            for (i, (ia, ib)) in dims.batch_map().into_iter().enumerate() {
                for r in 0..m {
                    for c in 0..n {
                        let wv = wd[i * m * n + r * n + c] as f64;
                        for kk in 0..k {
                            da[ia * m * k + r * k + kk] += wv * bd[ib * k * n + kk * n + c] as f64;
                            db[ib * k * n + kk * n + c] += ad[ia * m * k + r * k + kk] as f64 * wv;
                        }
                    }
                }
            }
            let batch_sum = numel(&dims.batch) / numel(&dims.a_batch).max(1);
            assert_close(
                &format!("dA of {sa:?} @ {sb:?}"),
                &a.grad().unwrap().to_vec(),
                &da,
                tol_k(n * batch_sum),
                tol_k(n * batch_sum),
            );
            let batch_sum = numel(&dims.batch) / numel(&dims.b_batch).max(1);
            assert_close(
                &format!("dB of {sa:?} @ {sb:?}"),
                &b.grad().unwrap().to_vec(),
                &db,
                tol_k(m * batch_sum),
                tol_k(m * batch_sum),
            );
        }
    }

    #[test]
    fn zero_size_dims() {
        let z = |s: &[usize]| Tensor::zeros(s).unwrap().requires_grad_(true);
        // M = 0 and N = 0: empty results
        assert_eq!(matmul(&z(&[0, 3]), &p(&[3, 4])).unwrap().shape(), &[0, 4]);
        assert_eq!(matmul(&p(&[2, 3]), &z(&[3, 0])).unwrap().shape(), &[2, 0]);
        // K = 0: a sum of nothing is zero
        let (a, b) = (z(&[2, 3, 0]), z(&[0, 4]));
        let out = matmul(&a, &b).unwrap();
        assert_eq!(out.shape(), &[2, 3, 4]);
        assert!(out.to_vec().iter().all(|&v| v == 0.0));
        let d = matmul(&z(&[0]), &z(&[0])).unwrap();
        assert_eq!((d.shape(), d.item().unwrap()), (&[][..], 0.0));
        // empty batch
        assert_eq!(matmul(&z(&[0, 2, 3]), &p(&[3, 4])).unwrap().shape(), &[0, 2, 4]);
        // gradients flow with the right (empty or zero) shapes
        let (a, b) = (z(&[2, 0]), p(&[0, 3]));
        let out = matmul(&a, &b).unwrap();
        out.backward(Some(&Tensor::ones(&[2, 3]).unwrap()), false).unwrap();
        assert_eq!(a.grad().unwrap().shape(), &[2, 0]);
        assert_eq!(b.grad().unwrap().shape(), &[0, 3]);
        // a broadcast operand whose batch partner is empty gets a zero gradient
        let (a, b) = (p(&[1, 2, 3]), p(&[0, 3, 4]));
        let out = matmul(&a, &b).unwrap();
        out.backward(Some(&Tensor::zeros(&[0, 2, 4]).unwrap()), false).unwrap();
        assert_eq!(a.grad().unwrap().to_vec(), vec![0.0; 6]);
    }

    #[test]
    fn shape_errors_are_readable() {
        let err =
            |sa: &[usize], sb: &[usize]| matmul(&Tensor::zeros(sa).unwrap(), &Tensor::zeros(sb).unwrap()).unwrap_err();
        let e = err(&[2, 3], &[4, 5]);
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "matmul: inner dimensions do not match: (2, 3) @ (4, 5)");
        assert_eq!(err(&[3], &[4]).to_string(), "matmul: inner dimensions do not match: (3,) @ (4,)");
        assert_eq!(err(&[2, 3], &[2]).to_string(), "matmul: inner dimensions do not match: (2, 3) @ (2,)");
        let e = err(&[], &[3]);
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "matmul: both arguments must have at least 1 dim, got () @ (3,)");
        assert!(err(&[3], &[]).to_string().starts_with("matmul: both arguments must have at least 1 dim"));
        let e = err(&[2, 3, 4], &[3, 4, 5]);
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "matmul: cannot broadcast batch dims (2,) with (3,): (2, 3, 4) @ (3, 4, 5)");
    }

    #[test]
    fn huge_outputs_are_alloc_errors() {
        // (2^20, 1) @ (1, 2^20) would need 4 TiB: an error, not an abort
        let (a, b) = (Tensor::zeros(&[1 << 20, 1]).unwrap(), Tensor::zeros(&[1, 1 << 20]).unwrap());
        assert!(matches!(matmul(&a, &b), Err(Error::Alloc { .. })));
        // element count overflow with empty inputs
        let (a, b) = (Tensor::zeros(&[1 << 40, 0]).unwrap(), Tensor::zeros(&[0, 1 << 40]).unwrap());
        assert!(matches!(matmul(&a, &b), Err(Error::Alloc { .. })));
    }

    // ---- linear ----

    /// linear from primitives: matmul(x, transpose(w)) + b.
    fn linear_reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = matmul(x, &crate::ops::view::transpose(w, 0, 1)?)?;
        match b {
            Some(b) => crate::ops::binary::add(&y, b),
            None => Ok(y),
        }
    }

    /// fused linear vs the reference composite: forward and the gradients of x, W, b.
    fn check_linear(xs: &[usize], out_f: usize, with_bias: bool) {
        let in_f = *xs.last().unwrap();
        let (x, w, b) = (p(xs), p(&[out_f, in_f]), p(&[out_f]));
        let b = with_bias.then_some(b);
        let run = |f: fn(&Tensor, &Tensor, Option<&Tensor>) -> Result<Tensor>| {
            for t in [&x, &w] {
                t.zero_grad();
            }
            if let Some(b) = &b {
                b.zero_grad();
            }
            let y = f(&x, &w, b.as_ref()).unwrap();
            let dy =
                Tensor::new((0..y.numel()).map(|i| ((i * 7) % 11) as f32 * 0.2 - 1.0).collect(), y.shape()).unwrap();
            y.backward(Some(&dy), false).unwrap();
            let mut v = vec![y.to_vec(), x.grad().unwrap().to_vec(), w.grad().unwrap().to_vec()];
            if let Some(b) = &b {
                v.push(b.grad().unwrap().to_vec());
            }
            (y.shape().to_vec(), v)
        };
        let (fs, fused) = run(linear);
        let (rs, refd) = run(linear_reference);
        assert_eq!(fs, rs, "linear {xs:?} -> {out_f}: shape");
        for (what, (g, r)) in ["out", "dx", "dW", "db"].iter().zip(fused.iter().zip(&refd)) {
            // sums of up to ~max(IN, OUT, rows) products of N(0, 1) terms: f32 error grows like √n
            let n = in_f.max(out_f).max(numel(&xs[..xs.len() - 1])) as f64;
            assert_close(&format!("linear {xs:?} -> {out_f} {what}"), g, r, 2e-6 * n.sqrt() * 10.0, 0.0);
        }
    }

    #[test]
    fn linear_matches_reference_forward_and_backward() {
        manual_seed(10);
        check_linear(&[4, 10], 6, true);
        check_linear(&[4, 10], 6, false);
        check_linear(&[10], 6, true); // 1-D input -> (OUT,)
        check_linear(&[2, 3, 5], 7, true); // batched leading dims fold into rows
        check_linear(&[1, 300], 500, true); // one row: decode, matrix-vector path
        check_linear(&[1, 1, 300], 1, true); // OUT = 1: dot path
        check_linear(&[300, 200], 1100, true); // cut into tiles, ragged edges
        check_linear(&[2, 160, 96], 700, true);
        check_linear(&[3, 70], 1030, false);
    }

    #[test]
    fn linear_decode_row_split_over_threads_matches_f64() {
        // (1, 512) @ (600, 512)ᵀ: big enough that the matrix-vector product is cut into column tiles
        assert!(tile_shape(1, 1, 512, 600).1 < 600, "the decode product should be split");
        manual_seed(7);
        let (x, w, b) = (p(&[1, 512]), p(&[600, 512]), p(&[600]));
        let got = linear(&x, &w, Some(&b)).unwrap().to_vec();
        let (xv, wv, bv) = (x.to_vec(), w.to_vec(), b.to_vec());
        let want: Vec<f64> = (0..600)
            .map(|o| bv[o] as f64 + (0..512).map(|k| xv[k] as f64 * wv[o * 512 + k] as f64).sum::<f64>())
            .collect();
        assert_close("decode linear", &got, &want, tol_k(512), tol_k(512));
    }

    #[test]
    fn linear_gradcheck() {
        manual_seed(11);
        assert_gradcheck(|t| linear(&t[0], &t[1], Some(&t[2])), &[p(&[2, 3, 4]), p(&[5, 4]), p(&[5])]);
        assert_gradcheck(|t| linear(&t[0], &t[1], None), &[p(&[3, 4]), p(&[2, 4])]);
        assert_gradcheck(|t| linear(&t[0], &t[1], Some(&t[2])), &[p(&[4]), p(&[3, 4]), p(&[3])]);
        // only some inputs needing a gradient
        let x = randn(&[2, 4], 0.0, 1.0).unwrap();
        assert_gradcheck(|t| linear(&t[0], &t[1], Some(&t[2])), &[x, p(&[3, 4]), p(&[3])]);
    }

    #[test]
    fn linear_edge_sizes() {
        // IN = 0: every row is the bias; OUT = 0 and no rows: empty
        let (x, w, b) = (Tensor::zeros(&[3, 0]).unwrap(), Tensor::zeros(&[2, 0]).unwrap(), p(&[2]));
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[3, 2]);
        assert_eq!(y.to_vec(), [b.to_vec(), b.to_vec(), b.to_vec()].concat());
        y.backward(Some(&Tensor::ones(&[3, 2]).unwrap()), false).unwrap();
        assert_eq!(b.grad().unwrap().to_vec(), vec![3.0, 3.0]);
        assert_eq!(linear(&p(&[4, 5]), &p(&[0, 5]), None).unwrap().shape(), &[4, 0]);
        let (x, w) = (p(&[0, 5]), p(&[3, 5]));
        let y = linear(&x, &w, None).unwrap();
        assert_eq!(y.shape(), &[0, 3]);
        y.backward(Some(&Tensor::zeros(&[0, 3]).unwrap()), false).unwrap();
        assert_eq!(w.grad().unwrap().to_vec(), vec![0.0; 15]);
    }

    #[test]
    fn linear_shape_errors() {
        let z = |s: &[usize]| Tensor::zeros(s).unwrap();
        let e = linear(&z(&[4, 100]), &z(&[256, 128]), None).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "linear: input has 100 features but weight expects 128: (4, 100) @ (256, 128)ᵀ");
        let e = linear(&z(&[4, 128]), &z(&[256, 128]), Some(&z(&[128]))).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "linear: bias must have shape (256,) to match weight (256, 128), got (128,)");
        let e = linear(&z(&[4, 128]), &z(&[128]), None).unwrap_err();
        assert_eq!(e.to_string(), "linear: weight must be 2-D (out_features, in_features), got shape (128,)");
        let e = linear(&z(&[]), &z(&[3, 1]), None).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        assert_eq!(e.to_string(), "linear: input must have at least 1 dim, got shape ()");
    }

    #[test]
    fn a_row_does_not_depend_on_the_tile_it_falls_in() {
        // row 96 of a 97-row product (in the last, ragged 12-row micro-panel of its tile) must equal itself
        // computed as row 1 of a 2-row product (what lets a batch's rows be split over processes bit for
        // bit: nf.rl.RayRollouts)
        let mut rng = crate::tensor::random::Rng::new(6);
        let mut local = |s: &[usize]| Tensor::new((0..numel(s)).map(|_| rng.normal() as f32).collect(), s).unwrap();
        let (a, b, w, bias) = (local(&[97, 128]), local(&[128, 384]), local(&[384, 128]), local(&[384]));
        let two = crate::ops::view::narrow(&a, 0, 95, 2).unwrap();
        for (whole, part) in [
            (matmul(&a, &b).unwrap(), matmul(&two, &b).unwrap()),
            (linear(&a, &w, Some(&bias)).unwrap(), linear(&two, &w, Some(&bias)).unwrap()),
        ] {
            let (whole, part) = (whole.to_vec(), part.to_vec());
            assert!(whole[95 * 384..].iter().zip(&part).all(|(x, y)| x.to_bits() == y.to_bits()), "rows 95, 96 differ");
        }
    }

    #[test]
    fn inside_row_wise_a_row_gives_the_same_bits_in_any_number_of_rows() {
        // a decode step (models::generate) runs x·Wᵀ row by row: a row's bits are bias + simd::dot(x_r, w_o)
        // alone (gemv), among a few rows, and among more rows than one row tile holds (dots)
        let mut rng = crate::tensor::random::Rng::new(8);
        let mut local = |s: &[usize]| Tensor::new((0..numel(s)).map(|_| rng.normal() as f32).collect(), s).unwrap();
        let (x, w, bias) = (local(&[70, 97]), local(&[300, 97]), local(&[300]));
        let (xv, wv, bv) = (x.to_vec(), w.to_vec(), bias.to_vec());
        let want = |r: usize| -> Vec<u32> {
            (0..300)
                .map(|o| (bv[o] + crate::ops::simd::dot(&xv[r * 97..][..97], &wv[o * 97..][..97])).to_bits())
                .collect()
        };
        for rows in [1, 2, 5, 33, 70] {
            let got = row_wise(|| linear(&crate::ops::view::narrow(&x, 0, 0, rows).unwrap(), &w, Some(&bias))).unwrap();
            let got: Vec<u32> = got.to_vec().iter().map(|v| v.to_bits()).collect();
            for r in [0, rows / 2, rows - 1] {
                let diff = got[r * 300..(r + 1) * 300].iter().zip(want(r)).position(|(g, w)| *g != w);
                assert!(diff.is_none(), "{rows} rows: row {r} differs from its dot products at output {diff:?}");
            }
        }
        // outside, the same product is a GEMM (another summation order) and the flag is restored
        let out = linear(&crate::ops::view::narrow(&x, 0, 0, 5).unwrap(), &w, Some(&bias)).unwrap().to_vec();
        assert!((0..300).any(|o| out[o].to_bits() != want(0)[o]), "outside row_wise a 5-row product was row-wise");
    }

    /// A decode step under autocast (`row_wise` in a bf16 scope) reads W as bf16: a row's bits are
    /// bias + simd::dot(x_r, bf16(w_o)) alone (one row takes the dots path too), among a few rows and
    /// among more than a row tile, on 1 and 2 threads (the big product is cut into column tiles), with
    /// or without a call's weight copies (made once, then reused); close to f64 of the rounded weights;
    /// and not the f32 bits. Without the bf16 scope, row_wise keeps its f32 bits.
    #[test]
    fn row_wise_bf16_linear_reads_bf16_weights_row_and_thread_independently() {
        let mut rng = crate::tensor::random::Rng::new(10);
        let mut local = |s: &[usize]| Tensor::new((0..numel(s)).map(|_| rng.normal() as f32).collect(), s).unwrap();
        let (k, n) = (517, 601); // k: 32 blocks of 16 and a tail of 5; 2·k·n > DOTS_SPLIT_FLOPS
        assert!(engine::dots_tile_cols(1, k, n) < n, "the one-row product should be cut over the threads");
        let (x, w, bias) = (local(&[40, k]), local(&[n, k]), local(&[n]));
        let (xv, bv) = (x.to_vec(), bias.to_vec());
        let wr: Vec<f32> = w.to_vec().iter().map(|&v| kernels::from_bf16(kernels::to_bf16(v))).collect();
        let want = |r: usize| -> Vec<u32> {
            (0..n).map(|o| (bv[o] + crate::ops::simd::dot(&xv[r * k..][..k], &wr[o * k..][..k])).to_bits()).collect()
        };
        let rows_of = |rows: usize| crate::ops::view::narrow(&x, 0, 0, rows).unwrap();
        let bf16_rows = |rows: usize, copies: Option<&std::sync::Arc<WeightCopies>>| {
            with_bf16(true, || row_wise(|| with_weight_copies(copies, || linear(&rows_of(rows), &w, Some(&bias)))))
                .unwrap()
                .to_vec()
        };
        let copies = std::sync::Arc::new(WeightCopies::default());
        for threads in [1, 2] {
            for rows in [1, 2, 5, 33, 40] {
                for cached in [None, Some(&copies)] {
                    let got = crate::parallel::with_threads(threads, || bf16_rows(rows, cached));
                    for r in [0, rows / 2, rows - 1] {
                        let diff = got[r * n..(r + 1) * n].iter().zip(want(r)).position(|(g, w)| g.to_bits() != w);
                        assert!(
                            diff.is_none(),
                            "{threads} threads, {rows} rows, copies {}: row {r} differs at output {diff:?}",
                            cached.is_some()
                        );
                    }
                }
            }
        }
        assert_eq!(copies.len(), 1, "the weight copy should be made once and reused");
        // against f64 with the rounded weights, and not the f32 product
        let one = bf16_rows(1, None);
        let want64: Vec<f64> =
            (0..n).map(|o| bv[o] as f64 + (0..k).map(|i| xv[i] as f64 * wr[o * k + i] as f64).sum::<f64>()).collect();
        assert_close("bf16 decode linear", &one, &want64, tol_k(k), tol_k(k));
        let f32_row = row_wise(|| linear(&rows_of(1), &w, Some(&bias))).unwrap().to_vec();
        assert!(one.iter().zip(&f32_row).any(|(a, b)| a != b), "the bf16 scope gave the f32 bits");
        let wv = w.to_vec();
        for o in 0..n {
            let d = bv[o] + crate::ops::simd::dot(&xv[..k], &wv[o * k..][..k]);
            assert_eq!(f32_row[o].to_bits(), d.to_bits(), "f32 row-wise output {o} changed");
        }
        // outside row_wise the bf16 scope's product is the bf16 GEMM (prefill), not these dot products
        let gemm = with_bf16(true, || linear(&rows_of(40), &w, Some(&bias))).unwrap().to_vec();
        assert!((0..n).any(|o| gemm[o].to_bits() != want(0)[o]), "outside row_wise a product read bf16 copies");
    }

    #[test]
    fn gemv_gives_the_baseline_bits_at_every_level() {
        // the dispatched gemv (AVX-512 or AVX2 build where the CPU has one) against the baseline body,
        // in both forms (axpy: w's rows contiguous; dot: its columns contiguous), overwrite and add
        let mut rng = crate::tensor::random::Rng::new(12);
        for (kk, len) in [(0, 3), (1, 1), (5, 9), (16, 16), (37, 33), (768, 70)] {
            let mut v = |n: usize| (0..n).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
            let (x, w, y0) = (v(kk), v(kk * len), v(len));
            for overwrite in [true, false] {
                // axpy form: w (kk, len) row-major; dot form: w read as (len, kk) columns
                for (ws, xs) in [((len, 1), 1), ((1, kk), 1)] {
                    let (mut got, mut want) = (y0.clone(), y0.clone());
                    gemv(&mut got, overwrite, (&x, 0, xs), (&w, 0, ws.0, ws.1), kk);
                    gemv_body::<0>(&mut want, overwrite, (&x, 0, xs), (&w, 0, ws.0, ws.1), kk);
                    let (g, wb): (Vec<u32>, Vec<u32>) =
                        (got.iter().map(|v| v.to_bits()).collect(), want.iter().map(|v| v.to_bits()).collect());
                    assert_eq!(g, wb, "k {kk}, len {len}, strides {ws:?}, overwrite {overwrite}: {got:?} vs {want:?}");
                    // and it is the product: within rounding of the f64 sum
                    for (j, &gj) in got.iter().enumerate() {
                        let exact: f64 = (0..kk).map(|k| x[k] as f64 * w[k * ws.0 + j * ws.1] as f64).sum::<f64>()
                            + if overwrite { 0.0 } else { y0[j] as f64 };
                        assert!((gj as f64 - exact).abs() < 1e-4 * (1.0 + kk as f64).sqrt(), "{gj} vs {exact}");
                    }
                }
            }
        }
    }

    /// Changes the process-wide thread count, so only through `with_threads` (one test at a time).
    #[test]
    fn one_and_two_threads_give_identical_bits() {
        manual_seed(3);
        let cases: [(&[usize], &[usize]); 5] = [
            (&[300, 200], &[200, 1100]),
            (&[4, 150, 96], &[96, 700]),
            (&[2, 1, 150, 64], &[3, 64, 300]),
            (&[1, 700], &[700, 3000]),
            (&[3000, 700], &[700]),
        ];
        let run = || {
            let mut bits = Vec::new();
            for (sa, sb) in cases {
                // a local generator: other tests reseed the global one concurrently
                let mut rng = crate::tensor::random::Rng::new(4);
                let mut local = |s: &[usize]| {
                    let v = (0..crate::tensor::numel(s)).map(|_| rng.normal() as f32).collect();
                    Tensor::new(v, s).unwrap().requires_grad_(true)
                };
                let (a, b) = (local(sa), local(sb));
                let out = matmul(&a, &b).unwrap();
                out.backward(Some(&Tensor::ones(out.shape()).unwrap()), false).unwrap();
                for t in [out, a.grad().unwrap(), b.grad().unwrap()] {
                    bits.push(t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
                }
            }
            // linear: x (4, 150, 96) @ W (700, 96)ᵀ + b, its three gradients, and a decode row
            let mut rng = crate::tensor::random::Rng::new(5);
            let mut local = |s: &[usize]| {
                let v = (0..crate::tensor::numel(s)).map(|_| rng.normal() as f32).collect();
                Tensor::new(v, s).unwrap().requires_grad_(true)
            };
            let (x, w, b, x1) = (local(&[4, 150, 96]), local(&[700, 96]), local(&[700]), local(&[1, 96]));
            let out = linear(&x, &w, Some(&b)).unwrap();
            let dy = Tensor::new((0..out.numel()).map(|i| (i % 7) as f32 - 3.0).collect(), out.shape()).unwrap();
            out.backward(Some(&dy), false).unwrap();
            let dec = linear(&x1, &w, Some(&b)).unwrap();
            // a decode row against a matrix big enough to be split over the threads (GEMV_SPLIT_FLOPS)
            let big = linear(&local(&[1, 512]), &local(&[600, 512]), None).unwrap();
            for t in [out, x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap(), dec, big] {
                bits.push(t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>());
            }
            bits
        };
        let (one, two) = (with_threads(1, run), with_threads(2, run));
        for (i, (x, y)) in one.iter().zip(&two).enumerate() {
            let diff = x.iter().zip(y).position(|(p, q)| p != q);
            assert!(diff.is_none(), "tensor {i} (case {} output {}) differs at element {diff:?}", i / 3, i % 3);
        }
        // the cases really are cut into several tiles
        for (m, k, n) in [(300, 200, 1100), (600, 96, 700), (1, 700, 3000), (3000, 700, 1)] {
            let (r, c) = tile_shape(1, m, k, n);
            assert!(m.div_ceil(r) * n.div_ceil(c) > 1, "({m}, {k}) @ ({k}, {n}) is one tile");
        }
    }

    /// The bf16 path through the engine and the ops: matmul / linear forward and both backward products
    /// in a bf16 scope are 1 vs 2 threads bit-identical, close to f64 of the bf16-rounded operands, within
    /// bf16's rounding of the f32 results, and differ from them (the scope really switched); outside
    /// the scope (also after a nested scope ends) the f32 bits come back.
    #[test]
    fn bf16_scope_products_are_thread_independent_and_close() {
        if !bf16_supported() {
            eprintln!("skipped: no AVX512-BF16 here");
            assert!(set_bf16(true).is_err(), "bf16 must be refused where it is not supported");
            return;
        }
        let round = |v: f32| kernels::from_bf16(kernels::to_bf16(v)) as f64;
        let mut rng = crate::tensor::random::Rng::new(41);
        // (m, k, n, count, a transposed, b transposed): shared packed B in row and column tiles, dW-like,
        // linear-like, batched, K = 1, odd K
        let cases = [
            (1000, 64, 700, 1, false, false),
            (50, 513, 1000, 1, false, false),
            (333, 301, 97, 1, true, false),
            (517, 129, 258, 1, false, true),
            (65, 41, 130, 12, false, false),
            (300, 1, 200, 1, false, false),
        ];
        for (m, k, n, count, ta, tb) in cases {
            let a: Vec<f32> = (0..count * m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..count * k * n).map(|_| rng.normal() as f32).collect();
            let sa = if ta { Strided { data: &a, rs: 1, cs: m } } else { plain(&a, k) };
            let sb = if tb { Strided { data: &b, rs: 1, cs: k } } else { plain(&b, n) };
            let terms = (0..count).map(|i| (i * m * k, i * k * n)).collect::<Vec<_>>();
            let gemm = with_bf16(true, || Gemm::one_term_each((m, k, n), sa, sb, terms.clone()));
            let f32_gemm = Gemm::one_term_each((m, k, n), sa, sb, terms);
            let run = |g: &Gemm| {
                let mut out = vec![0f32; count * m * n];
                g.run_at(&mut out, kernels::level()).unwrap();
                out
            };
            let (one, two) = (with_threads(1, || run(&gemm)), with_threads(2, || run(&gemm)));
            let pos = one.iter().zip(&two).position(|(x, y)| x.to_bits() != y.to_bits());
            assert!(pos.is_none(), "bf16 ({m}, {k}, {n}) ×{count}: 1 vs 2 threads differ at {pos:?}");
            let f = run(&f32_gemm);
            let at = |s: Strided, off: usize, r: usize, c: usize| s.data[off + r * s.rs + c * s.cs];
            let (mut worst, mut worst32) = (0f64, 0f64);
            for (i, &(ao, bo)) in gemm.terms.iter().enumerate() {
                for r in 0..m {
                    for c in 0..n {
                        let want: f64 = (0..k).map(|q| round(at(sa, ao, r, q)) * round(at(sb, bo, q, c))).sum();
                        let abs: f64 = (0..k).map(|q| (at(sa, ao, r, q) as f64 * at(sb, bo, q, c) as f64).abs()).sum();
                        let (got, f32v) = (one[i * m * n + r * n + c] as f64, f[i * m * n + r * n + c] as f64);
                        worst = worst.max((got - want).abs() / (1.0 + want.abs()));
                        // a product is off by ≤ 2^-7 of its size (two roundings by ≤ 2^-8, bf16's unit roundoff)
                        let bound = 2f64.powi(-7) * 1.01 * abs + 2.0 * tol_k(k) * (1.0 + f32v.abs());
                        worst32 = worst32.max((got - f32v).abs() / bound);
                    }
                }
            }
            assert!(worst <= tol_k(k), "bf16 ({m}, {k}, {n}) ×{count}: off from rounded f64 by {worst:.2e}");
            assert!(worst32 <= 1.0, "bf16 ({m}, {k}, {n}): off from f32 by {worst32:.2} of the rounding bound");
            if k > 1 {
                assert!(one != f, "bf16 ({m}, {k}, {n}): the bf16 scope gave the f32 bits");
            }
        }
        // the ops: linear and matmul forward + backward, recorded in the scope, backward run outside it
        let mut rng = crate::tensor::random::Rng::new(42);
        let mut local = |s: &[usize]| {
            let v = (0..crate::tensor::numel(s)).map(|_| rng.normal() as f32).collect();
            Tensor::new(v, s).unwrap().requires_grad_(true)
        };
        let (x, w, bias, b2) = (local(&[4, 150, 96]), local(&[700, 96]), local(&[700]), local(&[700, 130]));
        let step = |bf: bool| {
            let run = || {
                let y = with_bf16(bf, || linear(&x, &w, Some(&bias)).and_then(|y| matmul(&y, &b2))).unwrap();
                let dy = Tensor::new((0..y.numel()).map(|i| (i % 7) as f32 - 3.0).collect(), y.shape()).unwrap();
                y.backward(Some(&dy), false).unwrap();
                let out: Vec<Vec<f32>> =
                    [y, x.grad().unwrap(), w.grad().unwrap(), b2.grad().unwrap()].iter().map(|t| t.to_vec()).collect();
                for t in [&x, &w, &bias, &b2] {
                    t.zero_grad();
                }
                out
            };
            let (one, two) = (with_threads(1, run), with_threads(2, run));
            for (i, (p, q)) in one.iter().zip(&two).enumerate() {
                let d = p.iter().zip(q).position(|(u, v)| u.to_bits() != v.to_bits());
                assert!(d.is_none(), "bf16 {bf}: tensor {i} differs between 1 and 2 threads at {d:?}");
            }
            one
        };
        let (f, h, f_again) = (step(false), step(true), step(false));
        assert!(f == f_again, "after the bf16 scope the f32 bits must come back");
        for (i, (p, q)) in f.iter().zip(&h).enumerate() {
            let scale = p.iter().map(|v| (*v as f64).abs()).fold(0f64, f64::max);
            let worst = p.iter().zip(q).map(|(u, v)| (*u as f64 - *v as f64).abs()).fold(0f64, f64::max) / scale;
            assert!(worst < 2e-2 && worst > 0.0, "tensor {i}: bf16 vs f32 relative difference {worst:.2e}");
        }
        assert!(!bf16_enabled(), "the scope leaked");
    }

    /// The cuts of a product with a shared packed B cover it with aligned tiles (rows at multiples of 12,
    /// columns of 64), and on the benchmark's products (squares, a linear layer's three products) they
    /// split evenly over two threads: ⌈T/2⌉ of the biggest tile's micro-tiles are within 3% of half of all.
    #[test]
    fn shared_b_cuts_are_aligned_and_even() {
        let shapes = [
            (512, 512, 512),
            (1024, 1024, 1024),
            (2048, 2048, 2048),
            (4096, 128, 512),
            (4096, 384, 1536),
            (4096, 1536, 384),
            (1536, 4096, 384),
            (384, 4096, 1536),
            (1000, 64, 700),
            (97, 128, 384),
        ];
        for (m, k, n) in shapes {
            let (rows, cols) = shared_b_cuts(m, k, n);
            for (cuts, len, unit) in [(&rows, m, 12), (&cols, n, 64)] {
                assert!(cuts[0] == 0 && cuts[cuts.len() - 1] == len, "({m}, {k}, {n}): {cuts:?}");
                assert!(cuts.windows(2).all(|w| w[0] < w[1] && w[0] % unit == 0), "({m}, {k}, {n}): {cuts:?}");
            }
            if m < 500 || k < 128 {
                continue; // (small products: only aligned; 1000×64×700 takes 8 tiles of 10 or 11 panels)
            }
            let work: Vec<usize> = rows
                .windows(2)
                .flat_map(|r| cols.windows(2).map(move |c| (r[1] - r[0]).div_ceil(12) * (c[1] - c[0]).div_ceil(32)))
                .collect();
            let (total, big) = (work.iter().sum::<usize>(), *work.iter().max().unwrap());
            let finish = work.len().div_ceil(2) * big;
            assert!(work.len() >= 8, "({m}, {k}, {n}): only {} tiles", work.len());
            assert!(
                finish as f64 <= 1.03 * total as f64 / 2.0,
                "({m}, {k}, {n}): rows {rows:?} × cols {cols:?}: two threads finish after {finish} of {total} micro-tiles"
            );
        }
    }

    /// Every GEMM path (the portable one and each own kernel the CPU runs) through the tiling engine:
    /// against f64, 1 vs 2 threads bit-identical per path, and the own kernels identical to each other.
    /// Shapes: a single product big enough for a shared packed B cut into row and column tiles, a
    /// transposed-A product (dW), a transposed-B one (linear), a batched one, K = 1, odd sizes.
    #[test]
    fn every_path_matches_f64_and_is_thread_independent() {
        let mut rng = crate::tensor::random::Rng::new(31);
        assert!(shared_b_cuts(1000, 64, 700).0.len() > 2, "1000-row product should be cut into row tiles");
        let (r, c) = shared_b_cuts(50, 512, 1000);
        assert!(r == [0, 50] && c.len() > 2, "a short product is cut into columns: {c:?}");
        assert!(c[1..c.len() - 1].iter().all(|&x| x % 64 == 0), "column cuts are 64-aligned: {c:?}");
        // (m, k, n, count, a transposed, b transposed)
        let cases = [
            (1000, 64, 700, 1, false, false),
            (50, 512, 1000, 1, false, false),
            (333, 301, 97, 1, true, false),
            (517, 129, 258, 1, false, true),
            (65, 40, 130, 12, false, false),
            (300, 1, 200, 1, false, false),
        ];
        for (m, k, n, count, ta, tb) in cases {
            let a: Vec<f32> = (0..count * m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..count * k * n).map(|_| rng.normal() as f32).collect();
            let sa = if ta { Strided { data: &a, rs: 1, cs: m } } else { plain(&a, k) };
            let sb = if tb { Strided { data: &b, rs: 1, cs: k } } else { plain(&b, n) };
            let terms = (0..count).map(|i| (i * m * k, i * k * n)).collect::<Vec<_>>();
            let gemm = Gemm::one_term_each((m, k, n), sa, sb, terms);
            let mut own: Vec<Vec<u32>> = Vec::new();
            for level in 0..=kernels::level() {
                let run = || {
                    let mut out = vec![0f32; count * m * n];
                    gemm.run_at(&mut out, level).unwrap();
                    out
                };
                let (one, two) = (with_threads(1, run), with_threads(2, run));
                let pos = one.iter().zip(&two).position(|(x, y)| x.to_bits() != y.to_bits());
                assert!(pos.is_none(), "level {level}, ({m}, {k}, {n}) ×{count}: 1 vs 2 threads differ at {pos:?}");
                let at = |s: Strided, off: usize, r: usize, c: usize| s.data[off + r * s.rs + c * s.cs] as f64;
                let mut worst = 0f64;
                for (i, &(ao, bo)) in gemm.terms.iter().enumerate() {
                    for r in 0..m {
                        for c in 0..n {
                            let want: f64 = (0..k).map(|q| at(sa, ao, r, q) * at(sb, bo, q, c)).sum();
                            worst = worst.max((one[i * m * n + r * n + c] as f64 - want).abs() / (1.0 + want.abs()));
                        }
                    }
                }
                assert!(worst <= tol_k(k), "level {level}, ({m}, {k}, {n}) ×{count}: off by {worst:.2e}");
                if level >= 1 {
                    own.push(one.iter().map(|v| v.to_bits()).collect());
                }
            }
            if own.len() == 2 {
                let pos = own[0].iter().zip(&own[1]).position(|(x, y)| x != y);
                assert!(pos.is_none(), "({m}, {k}, {n}) ×{count}: AVX2 and AVX-512 kernels differ at {pos:?}");
            }
        }
    }
}
