//! Models: GPT (GPT-2 architecture) and Llama, behind one `CausalLm` trait so that the loss, the
//! per-token log-probabilities, FLOP counts and generation (`generate.rs`) are written once.
//! - `gpt.rs`   GptConfig + Gpt: learned positions, LayerNorm, GELU MLP, tied head
//! - `llama.rs` LlamaConfig + Llama: RoPE, RMSNorm, SwiGLU, grouped-query attention
//! - `generate.rs` KV-cache sampling shared by both
//! - `inspect.rs` attention weights of every layer, for plots

pub mod generate;
pub mod gpt;
pub mod inspect;
pub mod llama;

use crate::error::{Error, Result, fmt_shape};
use crate::nn::Module;
use crate::nn::attention::{CacheRows, LayerCache};
use crate::ops::{softmax, view};
use crate::tensor::Tensor;

/// One `LayerCache` per block, and the rows' padding and positions that they share.
#[derive(Clone, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub rows: CacheRows,
}

impl KvCache {
    pub fn new(n_layer: usize) -> KvCache {
        KvCache { layers: vec![LayerCache::default(); n_layer], rows: CacheRows::default() }
    }
    /// A cache that holds `positions` without growing (generation knows its length up front).
    pub fn with_capacity(n_layer: usize, positions: usize) -> KvCache {
        KvCache { layers: vec![LayerCache::with_capacity(positions); n_layer], rows: CacheRows::default() }
    }
    /// Positions already processed.
    pub fn len(&self) -> usize {
        self.layers.first().map(|l| l.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which architecture a `CausalLm` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Gpt,
    Llama,
}

impl ModelKind {
    /// "gpt" or "llama".
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Gpt => "gpt",
            ModelKind::Llama => "llama",
        }
    }
}

/// What every causal language model here offers; the rest is built on it.
pub trait CausalLm: Module + inspect::AttentionWeights + Send + Sync {
    fn kind(&self) -> ModelKind;
    /// A new model with the same architecture and its own copy of every weight (no shared storage) and
    /// the same requires_grad flags: e.g. the frozen reference policy of PPO, GRPO and DPO. The global
    /// generator is left as it was.
    fn clone_model(&self) -> Result<Box<dyn CausalLm>>;
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts (learned positions or the trained RoPE context).
    fn max_seq_len(&self) -> usize;
    fn n_layer(&self) -> usize;
    /// Width of the hidden state.
    fn n_embd(&self) -> usize;
    /// Token ids (B·T, row-major) → the final hidden states (B, T, C), after the last norm.
    /// With a cache, the ids are the new positions only, placed after `cache.len()`.
    fn hidden(&self, idx: &[i64], b: usize, t: usize, cache: Option<&mut KvCache>, training: bool) -> Result<Tensor>;
    /// Hidden states (…, C) → logits (…, V).
    fn head(&self, h: &Tensor) -> Result<Tensor>;
    /// (in, out) of every Linear-like matmul done per token (for exact FLOP counts), the head included.
    fn matmul_shapes(&self) -> Vec<(usize, usize)>;
    /// Number of attention heads × head dim (= the width for these models).
    fn attn_width(&self) -> usize {
        self.n_embd()
    }
}

/// `build` a fresh model (its random init does not disturb the global generator), then give it a copy
/// of every weight of `src` and its requires_grad flags. For `CausalLm::clone_model`.
pub(crate) fn copy_of<M: CausalLm>(src: &M, build: impl FnOnce() -> Result<M>) -> Result<M> {
    let state = crate::tensor::random::get_state();
    let built = build();
    crate::tensor::random::set_state(state);
    let m = built?;
    for ((dst_name, dst), (src_name, s)) in m.named_parameters().iter().zip(src.named_parameters()) {
        debug_assert_eq!(dst_name, &src_name);
        dst.data_mut().copy_from_slice(&s.data());
        dst.set_requires_grad(s.requires_grad())?;
    }
    Ok(m)
}

/// Check ids/targets against (B, T) and the model's context length.
pub fn check_batch(model: &dyn CausalLm, idx: &[i64], b: usize, t: usize, past: usize) -> Result<()> {
    if idx.len() != b * t {
        return Err(Error::shape(
            "model",
            format!("got {} token ids for a batch of shape {}", idx.len(), fmt_shape(&[b, t])),
        ));
    }
    if past + t > model.max_seq_len() {
        return Err(Error::value(
            "model",
            format!("sequence length {} exceeds the model's maximum of {} positions", past + t, model.max_seq_len()),
        ));
    }
    Ok(())
}

/// Targets must have the shape of the ids, (B, T) (or (T,) for one row, like 1-D ids), and one id per
/// position. Errors: anything else is `Error::Shape` naming both shapes — a transposed (T, B) batch has
/// the right count, so the count alone would let it through with a wrong loss.
pub fn check_targets(op: &'static str, targets: &[i64], shape: &[usize], b: usize, t: usize) -> Result<()> {
    if shape != [b, t] && !(b == 1 && shape == [t]) {
        return Err(Error::shape(
            op,
            format!("targets have shape {} but the token ids have shape {}", fmt_shape(shape), fmt_shape(&[b, t])),
        ));
    }
    if targets.len() != b * t {
        return Err(Error::shape(
            op,
            format!("got {} targets for targets of shape {}", targets.len(), fmt_shape(shape)),
        ));
    }
    Ok(())
}

/// `model(idx, targets)`: logits (B, T, V) and, with targets (their ids, row-major, and their shape, which
/// must be (B, T); `ignore_index` skipped), the mean cross-entropy. The whole forward runs here, in one
/// call. Errors: targets of another shape (Shape, naming both), checked before the forward runs.
pub fn forward(
    model: &dyn CausalLm,
    idx: &[i64],
    b: usize,
    t: usize,
    targets: Option<(&[i64], &[usize])>,
    ignore_index: Option<i64>,
    training: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    check_batch(model, idx, b, t, 0)?;
    if let Some((tg, shape)) = targets {
        check_targets("model", tg, shape, b, t)?;
    }
    let h = model.hidden(idx, b, t, None, training)?;
    let logits = model.head(&h)?;
    let loss = match targets {
        Some((tg, _)) => Some(softmax::cross_entropy(&logits, tg, ignore_index)?),
        None => None,
    };
    Ok((logits, loss))
}

/// log p(targets[b, t] | idx[b, ..=t]) for every position: (B, T), differentiable (for SFT masks, DPO,
/// PPO and GRPO). Positions whose target equals `ignore_index` get 0 and no gradient. `target_shape`
/// must be (B, T) (Shape error naming both shapes otherwise).
pub fn token_logprobs(
    model: &dyn CausalLm,
    idx: &[i64],
    b: usize,
    t: usize,
    targets: &[i64],
    target_shape: &[usize],
    ignore_index: Option<i64>,
) -> Result<Tensor> {
    check_batch(model, idx, b, t, 0)?;
    check_targets("token_logprobs", targets, target_shape, b, t)?;
    let logits = model.head(&model.hidden(idx, b, t, None, false)?)?;
    let lp = softmax::token_logprobs(&logits, targets, ignore_index)?;
    view::reshape(&lp, &[b as isize, t as isize])
}

/// Exact matmul FLOPs per token for a sequence of `seq_len` (forward; training = 3× forward):
/// 2·in·out for every projection and the head, plus causal attention's QKᵀ and PV, which for the token
/// at position i cost 4·(heads·head_dim)·(i+1) per layer — averaged over the sequence: 2·width·(seq_len+1).
pub fn forward_flops_per_token(model: &dyn CausalLm, seq_len: usize) -> f64 {
    let proj: f64 = model.matmul_shapes().iter().map(|&(i, o)| 2.0 * i as f64 * o as f64).sum();
    let attn = model.n_layer() as f64 * 2.0 * model.attn_width() as f64 * (seq_len as f64 + 1.0);
    proj + attn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::gpt::{Gpt, GptConfig};
    use crate::tensor::random::manual_seed;

    fn tiny() -> Gpt {
        manual_seed(0);
        let cfg = GptConfig {
            vocab_size: 8,
            block_size: 8,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        };
        Gpt::new(cfg).unwrap()
    }

    #[test]
    fn targets_of_another_shape_are_refused_naming_both_shapes() {
        let m = tiny();
        let ids = [1i64; 12];
        let tg = [2i64; 12];
        // (6, 2) targets for (2, 6) ids: the same 12 values, so only the shape can catch it
        for (shape, want) in [
            (&[6usize, 2][..], "targets have shape (6, 2) but the token ids have shape (2, 6)"),
            (&[12][..], "targets have shape (12,) but the token ids have shape (2, 6)"),
            (&[2, 6, 1][..], "targets have shape (2, 6, 1) but the token ids have shape (2, 6)"),
        ] {
            let e = forward(&m, &ids, 2, 6, Some((&tg, shape)), None, false).unwrap_err();
            assert!(matches!(e, Error::Shape { op: "model", .. }), "{e}");
            assert_eq!(e.to_string(), format!("model: {want}"));
            let e = token_logprobs(&m, &ids, 2, 6, &tg, shape, None).unwrap_err();
            assert_eq!(e.to_string(), format!("token_logprobs: {want}"));
        }
        let e = forward(&m, &ids, 2, 6, Some((&tg[..11], &[2, 6])), None, false).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        // the right shape works, and one row may come as (T,)
        let (logits, loss) = forward(&m, &ids, 2, 6, Some((&tg, &[2, 6])), None, false).unwrap();
        assert_eq!(logits.shape(), &[2, 6, 8]);
        let row = forward(&m, &ids[..6], 1, 6, Some((&tg[..6], &[6])), None, false).unwrap().1.unwrap();
        assert!((row.item().unwrap() - loss.unwrap().item().unwrap()).abs() < 1e-6, "same rows, same loss");
        assert_eq!(token_logprobs(&m, &ids, 2, 6, &tg, &[2, 6], None).unwrap().shape(), &[2, 6]);
    }
}
