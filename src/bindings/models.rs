//! `_core.Model`: one class for every `CausalLm` (GPT or Llama). The Python classes in
//! `nanofrontier/models.py` hold one and add configs, presets, checkpoints and torch-like names.
//! Each method is one call into Rust with the GIL released: the whole forward, generation, etc.

use std::sync::Arc;

use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::{large_model_call, run, run_on_pool};
use super::tensor::{PyTensor, to_indices, to_tensor};
use crate::models::generate::{PromptBatch, SampleOptions, generate_padded};
use crate::models::gpt::{Gpt, GptConfig};
use crate::models::llama::{Llama, LlamaConfig};
use crate::models::{self, CausalLm};
use crate::ops::rope::RopeLayout;

/// New tokens per prompt, and the log-probability of each.
type Generations = (Vec<Vec<i64>>, Vec<Vec<f32>>);

/// A causal language model living in Rust (GPT or Llama).
#[pyclass(frozen, name = "Model", module = "nanofrontier._core")]
pub struct PyModel {
    inner: Arc<dyn CausalLm>,
}

/// (B, T) int64 ids from an array-like; 1-D input is one row.
fn batch_ids(py: Python<'_>, idx: &Bound<'_, PyAny>) -> PyResult<(Vec<i64>, usize, usize)> {
    let (v, shape) = match idx.extract::<PyReadonlyArrayDyn<'_, i64>>() {
        Ok(a) => (a.as_array().iter().copied().collect(), a.shape().to_vec()),
        Err(_) => to_indices(py, idx)?,
    };
    match shape.as_slice() {
        [t] => Ok((v, 1, *t)),
        [b, t] => Ok((v, *b, *t)),
        _ => Err(super::errors::ShapeError::new_err(format!(
            "token ids must be 1-D or 2-D (B, T), got {} dims",
            shape.len()
        ))),
    }
}

fn rope_layout(s: &str) -> PyResult<RopeLayout> {
    match s {
        "interleaved" => Ok(RopeLayout::Interleaved),
        "half" | "half_split" => Ok(RopeLayout::HalfSplit),
        _ => Err(PyValueError::new_err(format!("rope_layout must be 'interleaved' or 'half', got {s:?}"))),
    }
}

#[pymethods]
impl PyModel {
    /// A freshly initialised GPT (nanoGPT init, from the global seeded generator).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn gpt(
        py: Python<'_>,
        vocab_size: usize,
        block_size: usize,
        n_layer: usize,
        n_head: usize,
        n_embd: usize,
        dropout: f32,
        bias: bool,
        layer_norm_eps: f32,
    ) -> PyResult<PyModel> {
        let cfg = GptConfig { vocab_size, block_size, n_layer, n_head, n_embd, dropout, bias, layer_norm_eps };
        cfg.validate()?;
        let m = run(py, move || Gpt::new(cfg))?;
        Ok(PyModel { inner: Arc::new(m) })
    }

    /// A freshly initialised Llama (Normal(0, 0.02) init, from the global seeded generator).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn llama(
        py: Python<'_>,
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        max_position_embeddings: usize,
        rms_norm_eps: f32,
        rope_theta: f32,
        tie_word_embeddings: bool,
        rope_layout: &str,
    ) -> PyResult<PyModel> {
        let cfg = LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings,
            rope_layout: self::rope_layout(rope_layout)?,
        };
        cfg.validate()?;
        let m = run(py, move || Llama::new(cfg))?;
        Ok(PyModel { inner: Arc::new(m) })
    }

    /// "gpt" or "llama".
    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.kind().name()
    }

    /// [(name, Tensor)] in a fixed order, with checkpoint names.
    fn named_parameters(&self) -> Vec<(String, PyTensor)> {
        self.inner.named_parameters().into_iter().map(|(n, t)| (n, PyTensor::wrap(t))).collect()
    }

    /// (logits (B, T, V), loss or None). `targets` are ids like `idx`; `ignore_index` entries are skipped.
    #[pyo3(signature = (idx, targets = None, ignore_index = Some(-100), training = false))]
    fn forward(
        &self,
        py: Python<'_>,
        idx: &Bound<'_, PyAny>,
        targets: Option<&Bound<'_, PyAny>>,
        ignore_index: Option<i64>,
        training: bool,
    ) -> PyResult<(PyTensor, Option<PyTensor>)> {
        let (ids, b, t) = batch_ids(py, idx)?;
        let tg = match targets {
            Some(o) if !o.is_none() => Some(to_indices(py, o)?),
            _ => None,
        };
        let large = large_model_call(b * t, self.inner.n_embd());
        let m = self.inner.clone();
        let (logits, loss) = run_on_pool(py, large, move || {
            let tg = tg.as_ref().map(|(v, shape)| (v.as_slice(), shape.as_slice()));
            models::forward(&*m, &ids, b, t, tg, ignore_index, training)
        })?;
        Ok((PyTensor::wrap(logits), loss.map(PyTensor::wrap)))
    }

    /// Final hidden states (B, T, C) — the trunk, for reward and value heads.
    #[pyo3(signature = (idx, training = false))]
    fn hidden(&self, py: Python<'_>, idx: &Bound<'_, PyAny>, training: bool) -> PyResult<PyTensor> {
        let (ids, b, t) = batch_ids(py, idx)?;
        let large = large_model_call(b * t, self.inner.n_embd());
        let m = self.inner.clone();
        Ok(PyTensor::wrap(run_on_pool(py, large, move || {
            models::check_batch(&*m, &ids, b, t, 0)?;
            m.hidden(&ids, b, t, None, training)
        })?))
    }

    /// Hidden states (…, C) → logits (…, V).
    fn head(&self, py: Python<'_>, h: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
        let h = to_tensor(py, h)?;
        let m = self.inner.clone();
        Ok(PyTensor::wrap(run(py, move || m.head(&h))?))
    }

    /// log p(targets[b, t] | idx[b, :t+1]) as a differentiable (B, T) tensor; ignored positions give 0.
    #[pyo3(signature = (idx, targets, ignore_index = Some(-100)))]
    fn token_logprobs(
        &self,
        py: Python<'_>,
        idx: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
        ignore_index: Option<i64>,
    ) -> PyResult<PyTensor> {
        let (ids, b, t) = batch_ids(py, idx)?;
        let (tg, tg_shape) = to_indices(py, targets)?;
        let large = large_model_call(b * t, self.inner.n_embd());
        let m = self.inner.clone();
        Ok(PyTensor::wrap(run_on_pool(py, large, move || {
            models::token_logprobs(&*m, &ids, b, t, &tg, &tg_shape, ignore_index)
        })?))
    }

    /// Continue a batch of prompts at once. `prompts`: lists of any lengths (left-padded internally with
    /// id 0, never attended to), or, with `attention_mask` (same shape, True = real token), rows already
    /// padded on either side (padding must hold valid ids). Row r samples from its own generator (`seed`, or `row_seeds[r]`) and stops at
    /// `stop_tokens` or `row_stop_tokens[r]`. Returns (new tokens per prompt, their log-probs).
    #[pyo3(signature = (prompts, max_new_tokens, temperature = 1.0, top_k = None, top_p = None, seed = None,
        row_seeds = None, stop_tokens = None, row_stop_tokens = None, attention_mask = None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<i64>>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: Option<u64>,
        row_seeds: Option<Vec<u64>>,
        stop_tokens: Option<Vec<i64>>,
        row_stop_tokens: Option<Vec<Vec<i64>>>,
        attention_mask: Option<Vec<Vec<bool>>>,
    ) -> PyResult<Generations> {
        let opt = SampleOptions {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            row_seeds: row_seeds.unwrap_or_default(),
            stop_tokens: stop_tokens.unwrap_or_default(),
            row_stop_tokens: row_stop_tokens.unwrap_or_default(),
        };
        let batch = match attention_mask {
            None => PromptBatch::left_padded(&prompts, 0),
            Some(mask) => {
                let (b, t) = (prompts.len(), prompts.first().map_or(0, |p| p.len()));
                let rect = |rows: &[usize]| rows.iter().all(|&n| n == t);
                let (lens, mlens): (Vec<_>, Vec<_>) =
                    (prompts.iter().map(|p| p.len()).collect(), mask.iter().map(|m| m.len()).collect());
                if mask.len() != b || !rect(&lens) || !rect(&mlens) {
                    return Err(super::errors::ShapeError::new_err(format!(
                        "with an attention_mask, prompts must be one padded (B, T) block of the mask's shape: \
                         got prompt rows of lengths {lens:?} and mask rows of lengths {mlens:?}"
                    )));
                }
                PromptBatch { ids: prompts.concat(), real: mask.concat(), b, t }
            }
        };
        // the KV cache holds B × (T + max_new_tokens) positions
        let rows = batch.b.saturating_mul(batch.t.saturating_add(max_new_tokens));
        let large = large_model_call(rows, self.inner.n_embd());
        let m = self.inner.clone();
        let g = run_on_pool(py, large, move || generate_padded(&*m, &batch, &opt))?;
        Ok((g.tokens, g.logprobs))
    }

    /// Attention probabilities of every layer for token ids (B, T): a list of (B, H, T, T) tensors, no gradient.
    fn attention_weights(&self, py: Python<'_>, idx: &Bound<'_, PyAny>) -> PyResult<Vec<PyTensor>> {
        let (ids, b, t) = batch_ids(py, idx)?;
        let large = large_model_call(b * t, self.inner.n_embd());
        let m = self.inner.clone();
        let maps = run_on_pool(py, large, move || m.attention_weights(&ids, b, t))?;
        Ok(maps.into_iter().map(PyTensor::wrap).collect())
    }

    /// Exact matmul FLOPs per token of a forward pass at this sequence length (training ≈ 3×).
    fn forward_flops_per_token(&self, seq_len: usize) -> f64 {
        models::forward_flops_per_token(&*self.inner, seq_len)
    }

    /// A new model with the same architecture and its own copy of every weight (no shared storage).
    fn copy(&self, py: Python<'_>) -> PyResult<PyModel> {
        let src = self.inner.clone();
        let m = run(py, move || src.clone_model())?;
        Ok(PyModel { inner: Arc::from(m) })
    }

    fn __repr__(&self) -> String {
        let n: usize = self.inner.named_parameters().iter().map(|(_, t)| t.numel()).sum();
        format!("Model(kind={:?}, parameters={n})", self.inner.kind().name())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    Ok(())
}
