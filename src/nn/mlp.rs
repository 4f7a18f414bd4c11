//! The per-position feed-forward networks: GPT-2's (Linear → GELU → Linear, 4× wide) and Llama's
//! SwiGLU (down(silu(gate(x)) * up(x))).

use super::{Linear, Module};
use crate::error::Result;
use crate::ops::{activation, dropout};
use crate::tensor::Tensor;

/// GPT-2 MLP: `c_fc` (4C, C) → GELU (tanh form) → `c_proj` (C, 4C).
pub struct GptMlp {
    pub c_fc: Linear,
    pub c_proj: Linear,
    pub dropout: f32,
}

impl GptMlp {
    pub fn forward(&self, x: &Tensor, training: bool) -> Result<Tensor> {
        let h = activation::gelu(&self.c_fc.forward(x)?)?;
        dropout::dropout(&self.c_proj.forward(&h)?, self.dropout, training)
    }
}

impl Module for GptMlp {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.c_fc.collect(&format!("{prefix}c_fc."), out);
        self.c_proj.collect(&format!("{prefix}c_proj."), out);
    }
}

/// Llama MLP: `down_proj(swiglu(gate_proj(x), up_proj(x)))`.
pub struct SwiGluMlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl SwiGluMlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = activation::swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&h)
    }
}

impl Module for SwiGluMlp {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.gate_proj.collect(&format!("{prefix}gate_proj."), out);
        self.up_proj.collect(&format!("{prefix}up_proj."), out);
        self.down_proj.collect(&format!("{prefix}down_proj."), out);
    }
}
