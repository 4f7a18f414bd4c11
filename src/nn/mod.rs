//! Layers: parameters plus a forward made only of ops (no new math here, so no new gradients to check).
//! Field names follow the checkpoints people already have: GPT-2's for GPT, Hugging Face Llama's for
//! Llama, so `named_parameters` needs no renaming table.
//! - this file: the `Module` trait, initialisation, Linear, Embedding, LayerNorm, RmsNorm
//! - `attention.rs`: causal self-attention for both families (fused c_attn, or q/k/v/o + GQA + RoPE)
//! - `mlp.rs`: GELU MLP (GPT-2) and SwiGLU MLP (Llama)

pub mod attention;
pub mod mlp;

use crate::error::{Error, Result};
use crate::ops::{index, matmul, norm};
use crate::tensor::{Tensor, random};

/// Anything with parameters. Names are dotted paths (`h.0.attn.c_attn.weight`).
pub trait Module {
    /// Append (prefix + name, tensor) for every parameter, in a fixed order.
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>);

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        self.collect("", &mut v);
        v
    }
}

// ---- initialisation (all from the global seeded generator) ----
/// A trainable parameter drawn from Normal(0, std).
pub fn normal(shape: &[usize], std: f32) -> Result<Tensor> {
    Ok(random::randn(shape, 0.0, std)?.requires_grad_(true))
}
/// A trainable parameter filled with `v`.
pub fn constant(shape: &[usize], v: f32) -> Result<Tensor> {
    Ok(Tensor::full(shape, v)?.requires_grad_(true))
}

/// y = x @ weightᵀ + bias, weight (out, in) as in torch.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// nanoGPT init: weight ~ Normal(0, std), bias = 0.
    pub fn new(n_in: usize, n_out: usize, bias: bool, std: f32) -> Result<Linear> {
        Ok(Linear {
            weight: normal(&[n_out, n_in], std)?,
            bias: if bias { Some(constant(&[n_out], 0.0)?) } else { None },
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        matmul::linear(x, &self.weight, self.bias.as_ref())
    }
}

impl Module for Linear {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}bias"), b.clone()));
        }
    }
}

/// Rows of a (num, dim) table picked by integer ids.
pub struct Embedding {
    pub weight: Tensor,
}

impl Embedding {
    pub fn new(num: usize, dim: usize, std: f32) -> Result<Embedding> {
        Ok(Embedding { weight: normal(&[num, dim], std)? })
    }
    /// ids with shape `ids_shape` → ids_shape + (dim,)
    pub fn forward(&self, ids: &[i64], ids_shape: &[usize]) -> Result<Tensor> {
        index::embedding(&self.weight, ids, ids_shape)
    }
}

impl Module for Embedding {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
    }
}

/// LayerNorm over the last dim, weight = 1 and (optional) bias = 0 at init.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(dim: usize, bias: bool, eps: f32) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: constant(&[dim], 1.0)?,
            bias: if bias { Some(constant(&[dim], 0.0)?) } else { None },
            eps,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        norm::layer_norm(x, Some(&self.weight), self.bias.as_ref(), self.eps)
    }
}

impl Module for LayerNorm {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{prefix}bias"), b.clone()));
        }
    }
}

/// RMSNorm over the last dim (Llama), weight = 1 at init.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: constant(&[dim], 1.0)?, eps })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        norm::rms_norm(x, Some(&self.weight), self.eps)
    }
}

impl Module for RmsNorm {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((format!("{prefix}weight"), self.weight.clone()));
    }
}

/// A config value that must be positive.
pub fn check_positive(op: &'static str, name: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::value(op, format!("{name} must be > 0")));
    }
    Ok(())
}
