//! Causal self-attention for both model families, with an optional KV cache for generation.
//! GPT-2: one fused `c_attn` projection to q, k, v, then `c_proj`. Llama: separate q/k/v/o projections,
//! fewer k/v heads than q heads (GQA), and rotary position embeddings on q and k.
//! The attention itself is the fused op `ops::attention::scaled_dot_product_attention`.

use super::{Linear, Module};
use crate::error::{Error, Result};
use crate::ops::attention::scaled_dot_product_attention;
use crate::ops::heads::{merge_heads, split_heads};
use crate::ops::rope::{RopeLayout, rope};
use crate::ops::{dropout, view};
use crate::tensor::Tensor;

/// Keys and values seen so far by one layer: (B, Hkv, T_cached, D) each.
#[derive(Clone, Default)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.k.as_ref().map(|k| k.shape()[2]).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Append new (B, Hkv, T_new, D) keys/values and return the full ones.
    fn extend(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(k0), Some(v0)) => (view::cat(&[k0.clone(), k], 2)?, view::cat(&[v0.clone(), v], 2)?),
            _ => (k, v),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// GPT-2 attention: `c_attn` (3C, C) makes q, k, v at once; `c_proj` (C, C) mixes the heads back.
pub struct GptAttention {
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub n_head: usize,
    pub dropout: f32,
}

impl GptAttention {
    /// x (B, T, C) → (B, T, C). With a cache, x holds only the new positions.
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>, training: bool) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let parts = split_heads(&qkv, 3, self.n_head)?; // q, k, v: (B, H, T, D) each, one pass
        let (q, k, v) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
        let (k, v) = match cache {
            Some(cache) => cache.extend(k, v)?,
            None => (k, v),
        };
        let y = scaled_dot_product_attention(&q, &k, &v, true, None)?; // (B, H, T, D)
        let y = self.c_proj.forward(&merge_heads(&y)?)?;
        dropout::dropout(&y, self.dropout, training)
    }
}

impl Module for GptAttention {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.c_attn.collect(&format!("{prefix}c_attn."), out);
        self.c_proj.collect(&format!("{prefix}c_proj."), out);
    }
}

/// Llama attention: q (H·D), k and v (Hkv·D) projections, RoPE on q and k, GQA, then `o_proj`.
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_layout: RopeLayout,
}

impl LlamaAttention {
    /// x (B, T, C) → (B, T, C). With a cache, x holds only the new positions, which start at cache.len().
    pub fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t) = (x.shape()[0] as isize, x.shape()[1] as isize);
        let (h, hkv, d) = (self.n_head as isize, self.n_kv_head as isize, self.head_dim as isize);
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        // rotate while the layout is (B, T, H, D): the sequence is dim 1
        let q = view::reshape(&self.q_proj.forward(x)?, &[b, t, h, d])?;
        let k = view::reshape(&self.k_proj.forward(x)?, &[b, t, hkv, d])?;
        let v = view::reshape(&self.v_proj.forward(x)?, &[b, t, hkv, d])?;
        let q = rope(&q, 1, offset, self.rope_theta, self.rope_layout)?;
        let k = rope(&k, 1, offset, self.rope_theta, self.rope_layout)?;
        let (q, k, v) =
            (view::permute(&q, &[0, 2, 1, 3])?, view::permute(&k, &[0, 2, 1, 3])?, view::permute(&v, &[0, 2, 1, 3])?);
        let (k, v) = match cache {
            Some(cache) => cache.extend(k, v)?,
            None => (k, v),
        };
        let y = scaled_dot_product_attention(&q, &k, &v, true, None)?; // (B, H, T, D), GQA inside
        self.o_proj.forward(&merge_heads(&y)?)
    }
}

impl Module for LlamaAttention {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.q_proj.collect(&format!("{prefix}q_proj."), out);
        self.k_proj.collect(&format!("{prefix}k_proj."), out);
        self.v_proj.collect(&format!("{prefix}v_proj."), out);
        self.o_proj.collect(&format!("{prefix}o_proj."), out);
    }
}

/// Heads must divide the width, and kv heads must divide the heads.
pub fn check_heads(op: &'static str, dim: usize, n_head: usize, n_kv_head: usize) -> Result<()> {
    if n_head == 0 || dim % n_head != 0 {
        return Err(Error::value(op, format!("n_head ({n_head}) must divide the width ({dim})")));
    }
    if n_kv_head == 0 || n_head % n_kv_head != 0 {
        return Err(Error::value(op, format!("n_kv_head ({n_kv_head}) must divide n_head ({n_head})")));
    }
    Ok(())
}
