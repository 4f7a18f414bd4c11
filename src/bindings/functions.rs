//! Module-level functions of `nanofrontier._core`: tensor creation, randomness, threads, grad mode, and
//! the ops that take more than one tensor or non-tensor arguments (cross_entropy, embedding, cat, ...).
//! `nanofrontier/functional.py` and `__init__.py` re-export them with their Python-side docs.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{IntoPyArray, PyArrayDyn};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::errors::run;
use super::tensor::{PyTensor, to_indices_for, to_tensor};
use crate::error::Error;
use crate::ops::{activation, binary, dropout, index, matmul, softmax, view};
use crate::tensor::{Tensor, random};

fn shape_of(args: &Bound<'_, PyTuple>) -> PyResult<Vec<usize>> {
    if args.len() == 1 {
        if let Ok(v) = args.get_item(0)?.extract::<Vec<usize>>() {
            return Ok(v);
        }
    }
    args.extract::<Vec<usize>>().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err("shape must be non-negative ints, or one tuple/list of them")
    })
}

fn int_array<'py>(py: Python<'py>, v: Vec<i64>, shape: &[usize]) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let arr = ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(arr.into_pyarray(py))
}

/// The same error reported under `op`: `zeros` and `ones` are `full` inside the core.
fn as_op(e: Error, op: &'static str) -> Error {
    match e {
        Error::Shape { msg, .. } => Error::Shape { op, msg },
        Error::Index { msg, .. } => Error::Index { op, msg },
        Error::Value { msg, .. } => Error::Value { op, msg },
        Error::Alloc { bytes, available, .. } => Error::Alloc { op, bytes, available },
        e => e,
    }
}

fn tensors(py: Python<'_>, xs: &Bound<'_, PyAny>) -> PyResult<Vec<Tensor>> {
    xs.try_iter()?.map(|x| to_tensor(py, &x?)).collect()
}

// ---- creation ----
/// Tensor of zeros: `zeros(2, 3)` or `zeros((2, 3))`.
#[pyfunction]
#[pyo3(signature = (*shape, requires_grad = false))]
pub fn zeros(shape: &Bound<'_, PyTuple>, requires_grad: bool) -> PyResult<PyTensor> {
    let t = Tensor::zeros(&shape_of(shape)?).map_err(|e| as_op(e, "zeros"))?;
    Ok(PyTensor::wrap(t.requires_grad_(requires_grad)))
}
/// Tensor of ones.
#[pyfunction]
#[pyo3(signature = (*shape, requires_grad = false))]
pub fn ones(shape: &Bound<'_, PyTuple>, requires_grad: bool) -> PyResult<PyTensor> {
    let t = Tensor::ones(&shape_of(shape)?).map_err(|e| as_op(e, "ones"))?;
    Ok(PyTensor::wrap(t.requires_grad_(requires_grad)))
}
/// Tensor filled with `value`.
#[pyfunction]
#[pyo3(signature = (shape, value, requires_grad = false))]
pub fn full(shape: Vec<usize>, value: f32, requires_grad: bool) -> PyResult<PyTensor> {
    Ok(PyTensor::wrap(Tensor::full(&shape, value)?.requires_grad_(requires_grad)))
}

// ---- randomness (one global seeded generator: same numbers on every machine) ----
/// Reseed the global generator.
#[pyfunction]
pub fn manual_seed(seed: u64) {
    random::manual_seed(seed)
}
/// Normal(mean, std) samples: `randn(2, 3)`.
#[pyfunction]
#[pyo3(signature = (*shape, mean = 0.0, std = 1.0, requires_grad = false))]
pub fn randn(
    py: Python<'_>,
    shape: &Bound<'_, PyTuple>,
    mean: f32,
    std: f32,
    requires_grad: bool,
) -> PyResult<PyTensor> {
    let s = shape_of(shape)?;
    Ok(PyTensor::wrap(run(py, || random::randn(&s, mean, std))?.requires_grad_(requires_grad)))
}
/// Uniform samples in [low, high): `rand(2, 3)`.
#[pyfunction]
#[pyo3(signature = (*shape, low = 0.0, high = 1.0, requires_grad = false))]
pub fn rand(
    py: Python<'_>,
    shape: &Bound<'_, PyTuple>,
    low: f32,
    high: f32,
    requires_grad: bool,
) -> PyResult<PyTensor> {
    let s = shape_of(shape)?;
    Ok(PyTensor::wrap(run(py, || random::rand(&s, low, high))?.requires_grad_(requires_grad)))
}
/// Integers uniform in [low, high) as a numpy int64 array of `shape`.
#[pyfunction]
#[pyo3(signature = (low, high, shape))]
pub fn randint<'py>(py: Python<'py>, low: i64, high: i64, shape: Vec<usize>) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let n = crate::tensor::checked_numel("randint", &shape)?;
    let v = run(py, || random::randint(low, high, n))?;
    int_array(py, v, &shape)
}
/// Sample category indices from each row of `probs` (1-D or 2-D; rows need not sum to 1).
/// Returns numpy int64 of shape (num_samples,) or (rows, num_samples).
#[pyfunction]
#[pyo3(signature = (probs, num_samples, replacement = false))]
pub fn multinomial<'py>(
    py: Python<'py>,
    probs: &Bound<'py, PyAny>,
    num_samples: usize,
    replacement: bool,
) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let p = to_tensor(py, probs)?;
    let v = run(py, || random::multinomial(&p, num_samples, replacement))?;
    let shape = if p.ndim() == 2 { vec![p.shape()[0], num_samples] } else { vec![num_samples] };
    int_array(py, v, &shape)
}
/// The seeds `generate(..., seed=seed)` gives its first `n` rows (row r samples from `Rng(seeds[r])`), so
/// a subset of the rows can be sampled elsewhere with their `row_seeds`.
#[pyfunction]
pub fn row_seeds(seed: u64, n: usize) -> PyResult<Vec<u64>> {
    if n > 1 << 24 {
        return Err(super::errors::InvalidArgumentError::new_err(format!(
            "row_seeds: n must be <= 16777216 (one seed per row of a batch), got {n}"
        )));
    }
    Ok(random::row_seeds(seed, n))
}
/// The global generator's state (for checkpoints): (s0, s1, s2, s3, spare_normal or None).
#[pyfunction]
pub fn get_rng_state() -> (u64, u64, u64, u64, Option<f64>) {
    let (s, spare) = random::get_state().state();
    (s[0], s[1], s[2], s[3], spare)
}
/// Restore a state from `get_rng_state()`.
#[pyfunction]
pub fn set_rng_state(state: (u64, u64, u64, u64, Option<f64>)) {
    let (a, b, c, d, spare) = state;
    random::set_state(random::Rng::from_state([a, b, c, d], spare))
}

// ---- threads and grad mode ----
/// Use `n` threads for parallel ops (0 = NANOFRONTIER_NUM_THREADS or all cores); negative n is refused.
#[pyfunction]
pub fn set_num_threads(n: i64) -> PyResult<()> {
    let n = usize::try_from(n).map_err(|_| {
        super::errors::InvalidArgumentError::new_err(format!(
            "set_num_threads: n must be >= 0 (0 = NANOFRONTIER_NUM_THREADS or all cores), got {n}"
        ))
    })?;
    crate::parallel::set_num_threads(n);
    Ok(())
}
/// Threads parallel ops use.
#[pyfunction]
pub fn get_num_threads() -> usize {
    crate::parallel::num_threads()
}
/// Benchmark helpers: the measured fp32 FMA peak (GFLOP/s over `threads` threads, ~`seconds` each, and
/// the vector width used) and the GEMM path matmul takes on this CPU.
#[pyfunction]
#[pyo3(signature = (threads=1, seconds=0.2))]
pub fn _fma_peak(py: Python<'_>, threads: usize, seconds: f64) -> PyResult<(f64, &'static str)> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 60.0) || threads == 0 || threads > 1024 {
        return Err(super::errors::InvalidArgumentError::new_err(format!(
            "_fma_peak: need 1 <= threads <= 1024 and 0 < seconds <= 60, got threads={threads}, seconds={seconds}"
        )));
    }
    Ok(py.detach(|| crate::ops::matmul::fma_peak(threads, seconds)))
}
#[pyfunction]
pub fn _matmul_path() -> &'static str {
    crate::ops::matmul::gemm_path()
}
/// Turn bf16 matmul/linear products on or off for this thread (`nf.autocast`); returns the previous
/// setting. Raises InvalidArgumentError when turning it on where the CPU cannot (no AVX512-BF16, or
/// `NANOFRONTIER_MATMUL_ISA` forcing a lower path).
#[pyfunction]
pub fn _set_bf16(on: bool) -> PyResult<bool> {
    crate::ops::matmul::set_bf16(on).map_err(PyErr::from)
}
/// Whether this thread's matmul/linear products run in bf16.
#[pyfunction]
pub fn _bf16_enabled() -> bool {
    crate::ops::matmul::bf16_enabled()
}
/// Whether bf16 products can run here (AVX512-BF16 and the AVX-512 GEMM path).
#[pyfunction]
pub fn _bf16_supported() -> bool {
    crate::ops::matmul::bf16_supported()
}
/// Turn op recording on/off for this thread; returns the previous setting.
#[pyfunction]
pub fn set_grad_enabled(on: bool) -> bool {
    crate::runtime::set_grad_enabled(on)
}
/// Whether ops are being recorded on this thread.
#[pyfunction]
pub fn is_grad_enabled() -> bool {
    crate::autograd::is_grad_enabled()
}

// ---- ops with several tensors or index arguments ----
/// numpy.matmul rules with autograd.
#[pyfunction]
#[pyo3(name = "matmul")]
pub fn matmul_(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (a, b) = (to_tensor(py, a)?, to_tensor(py, b)?);
    Ok(PyTensor::wrap(run(py, || matmul::matmul(&a, &b))?))
}
/// Mean cross-entropy of `logits` (..., C) against integer `targets` (...), skipping `ignore_index`.
#[pyfunction]
#[pyo3(signature = (logits, targets, ignore_index = -100))]
pub fn cross_entropy(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    targets: &Bound<'_, PyAny>,
    ignore_index: Option<i64>,
) -> PyResult<PyTensor> {
    let x = to_tensor(py, logits)?;
    let (t, _) = to_indices_for(py, targets, Some("cross_entropy: targets"))?;
    Ok(PyTensor::wrap(run(py, || softmax::cross_entropy(&x, &t, ignore_index))?))
}
/// Rows of `weight` (V, C) picked by integer `ids`: output ids.shape + (C,).
#[pyfunction]
pub fn embedding(py: Python<'_>, weight: &Bound<'_, PyAny>, ids: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let w = to_tensor(py, weight)?;
    let (ids, shape) = to_indices_for(py, ids, Some("embedding: ids"))?;
    Ok(PyTensor::wrap(run(py, || index::embedding(&w, &ids, &shape))?))
}
/// Entries of `x` along `dim` at integer `indices`.
#[pyfunction]
pub fn index_select(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    dim: isize,
    indices: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    let (idx, _) = to_indices_for(py, indices, Some("index_select: indices"))?;
    Ok(PyTensor::wrap(run(py, || index::index_select(&x, dim, &idx))?))
}
/// `value` where `mask` is nonzero/True, else `x` (mask broadcasts to x).
#[pyfunction]
pub fn masked_fill(py: Python<'_>, x: &Bound<'_, PyAny>, mask: &Bound<'_, PyAny>, value: f32) -> PyResult<PyTensor> {
    let (x, m) = (to_tensor(py, x)?, to_tensor(py, mask)?);
    Ok(PyTensor::wrap(run(py, || index::masked_fill(&x, &m, value))?))
}
/// `a` where `cond` is nonzero/True, else `b` (all three broadcast).
#[pyfunction]
#[pyo3(name = "where")]
pub fn where_(
    py: Python<'_>,
    cond: &Bound<'_, PyAny>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    let (c, a, b) = (to_tensor(py, cond)?, to_tensor(py, a)?, to_tensor(py, b)?);
    Ok(PyTensor::wrap(run(py, || index::where_(&c, &a, &b))?))
}
/// Join tensors along an existing dim.
#[pyfunction]
#[pyo3(signature = (tensors, dim = 0))]
pub fn cat(py: Python<'_>, tensors: &Bound<'_, PyAny>, dim: isize) -> PyResult<PyTensor> {
    let xs = self::tensors(py, tensors)?;
    Ok(PyTensor::wrap(run(py, || view::cat(&xs, dim))?))
}
/// Join equal-shaped tensors along a new dim.
#[pyfunction]
#[pyo3(signature = (tensors, dim = 0))]
pub fn stack(py: Python<'_>, tensors: &Bound<'_, PyAny>, dim: isize) -> PyResult<PyTensor> {
    let xs = self::tensors(py, tensors)?;
    Ok(PyTensor::wrap(run(py, || view::stack(&xs, dim))?))
}
/// numpy broadcast_to, materialised; the gradient sums back.
#[pyfunction]
pub fn expand(py: Python<'_>, x: &Bound<'_, PyAny>, shape: Vec<usize>) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || view::expand(&x, &shape))?))
}
/// Inverted dropout: zero each entry with probability p, scale the rest by 1/(1-p) (identity if not training).
#[pyfunction]
#[pyo3(signature = (x, p = 0.5, training = true))]
#[pyo3(name = "dropout")]
pub fn dropout_(py: Python<'_>, x: &Bound<'_, PyAny>, p: f32, training: bool) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || dropout::dropout(&x, p, training))?))
}
/// GELU, tanh approximation (GPT-2).
#[pyfunction]
pub fn gelu(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || activation::gelu(&x))?))
}
/// Elementwise max(a, b), broadcasting; nan if either is nan. At a tie each input gets half the gradient.
#[pyfunction]
pub fn maximum(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (a, b) = (to_tensor(py, a)?, to_tensor(py, b)?);
    Ok(PyTensor::wrap(run(py, || binary::maximum(&a, &b))?))
}
/// Elementwise min(a, b), broadcasting; nan if either is nan. At a tie each input gets half the gradient.
#[pyfunction]
pub fn minimum(py: Python<'_>, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (a, b) = (to_tensor(py, a)?, to_tensor(py, b)?);
    Ok(PyTensor::wrap(run(py, || binary::minimum(&a, &b))?))
}
/// log(sigmoid(x)) computed stably as -softplus(-x): finite wherever the true value is.
#[pyfunction]
pub fn log_sigmoid(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || activation::log_sigmoid(&x))?))
}
/// log(1 + exp(beta*x))/beta, and x itself where beta*x > threshold (torch's softplus), computed stably.
#[pyfunction]
#[pyo3(signature = (x, beta = 1.0, threshold = 20.0))]
pub fn softplus(py: Python<'_>, x: &Bound<'_, PyAny>, beta: f32, threshold: f32) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || activation::softplus(&x, beta, threshold))?))
}
/// SiLU: x * sigmoid(x).
#[pyfunction]
pub fn silu(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || activation::silu(&x))?))
}

// ---- transformer building blocks (fused ops) ----
fn opt_tensor(py: Python<'_>, x: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Tensor>> {
    match x {
        Some(o) if !o.is_none() => Ok(Some(to_tensor(py, o)?)),
        _ => Ok(None),
    }
}
/// y = x @ weightᵀ + bias with weight (out, in) as in torch.nn.Linear (no transposed copy).
#[pyfunction]
#[pyo3(signature = (x, weight, bias = None))]
pub fn linear(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let (x, w, b) = (to_tensor(py, x)?, to_tensor(py, weight)?, opt_tensor(py, bias)?);
    Ok(PyTensor::wrap(run(py, || matmul::linear(&x, &w, b.as_ref()))?))
}
/// LayerNorm over the last dim: (x − mean)/sqrt(var + eps) · weight + bias.
#[pyfunction]
#[pyo3(signature = (x, weight = None, bias = None, eps = 1e-5))]
pub fn layer_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    eps: f32,
) -> PyResult<PyTensor> {
    let (x, w, b) = (to_tensor(py, x)?, opt_tensor(py, weight)?, opt_tensor(py, bias)?);
    Ok(PyTensor::wrap(run(py, || crate::ops::norm::layer_norm(&x, w.as_ref(), b.as_ref(), eps))?))
}
/// RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · weight (Llama).
#[pyfunction]
#[pyo3(signature = (x, weight = None, eps = 1e-5))]
pub fn rms_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: Option<&Bound<'_, PyAny>>,
    eps: f32,
) -> PyResult<PyTensor> {
    let (x, w) = (to_tensor(py, x)?, opt_tensor(py, weight)?);
    Ok(PyTensor::wrap(run(py, || crate::ops::norm::rms_norm(&x, w.as_ref(), eps))?))
}
/// silu(gate) · up — the SwiGLU gate of Llama's MLP.
#[pyfunction]
pub fn swiglu(py: Python<'_>, gate: &Bound<'_, PyAny>, up: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (g, u) = (to_tensor(py, gate)?, to_tensor(py, up)?);
    Ok(PyTensor::wrap(run(py, || activation::swiglu(&g, &u))?))
}
/// Rotary position embedding of x (..., D): position = pos_offset + index along `seq_dim`;
/// layout "interleaved" (Meta, llama2.c, GGUF) or "half" (Hugging Face).
#[pyfunction]
#[pyo3(signature = (x, seq_dim = -2, pos_offset = 0, theta = 10000.0, layout = "interleaved"))]
pub fn rope(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    seq_dim: isize,
    pos_offset: usize,
    theta: f32,
    layout: &str,
) -> PyResult<PyTensor> {
    use crate::ops::rope::RopeLayout;
    let layout = match layout {
        "interleaved" => RopeLayout::Interleaved,
        "half" | "half_split" => RopeLayout::HalfSplit,
        _ => return Err(PyValueError::new_err(format!("layout must be 'interleaved' or 'half', got {layout:?}"))),
    };
    let x = to_tensor(py, x)?;
    Ok(PyTensor::wrap(run(py, || crate::ops::rope::rope(&x, seq_dim, pos_offset, theta, layout))?))
}
/// softmax(q kᵀ · scale) v for q (B, Hq, Tq, D), k/v (B, Hkv, Tk, D): fused, memory-efficient, GQA when
/// Hkv < Hq; causal masks are bottom-right aligned (a KV cache). scale defaults to 1/sqrt(D).
#[pyfunction]
#[pyo3(signature = (q, k, v, is_causal = true, scale = None))]
pub fn scaled_dot_product_attention(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
    is_causal: bool,
    scale: Option<f32>,
) -> PyResult<PyTensor> {
    let (q, k, v) = (to_tensor(py, q)?, to_tensor(py, k)?, to_tensor(py, v)?);
    Ok(PyTensor::wrap(run(py, || crate::ops::attention::scaled_dot_product_attention(&q, &k, &v, is_causal, scale))?))
}
/// The attention probabilities (B, Hq, Tq, Tk) — for looking at what attends to what (no gradient).
#[pyfunction]
#[pyo3(signature = (q, k, is_causal = true, scale = None))]
pub fn attention_weights(
    py: Python<'_>,
    q: &Bound<'_, PyAny>,
    k: &Bound<'_, PyAny>,
    is_causal: bool,
    scale: Option<f32>,
) -> PyResult<PyTensor> {
    let (q, k) = (to_tensor(py, q)?, to_tensor(py, k)?);
    Ok(PyTensor::wrap(run(py, || crate::ops::attention::attention_weights(&q, &k, is_causal, scale))?))
}
/// log softmax(logits)[target] per row: logits (..., V) and one integer target per row → (rows,).
#[pyfunction]
#[pyo3(signature = (logits, targets, ignore_index = -100))]
pub fn token_logprobs(
    py: Python<'_>,
    logits: &Bound<'_, PyAny>,
    targets: &Bound<'_, PyAny>,
    ignore_index: Option<i64>,
) -> PyResult<PyTensor> {
    let x = to_tensor(py, logits)?;
    let (t, _) = to_indices_for(py, targets, Some("token_logprobs: targets"))?;
    Ok(PyTensor::wrap(run(py, || softmax::token_logprobs(&x, &t, ignore_index))?))
}
