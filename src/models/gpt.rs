//! GPT (the GPT-2 architecture, as in nanoGPT): token + learned position embeddings, pre-LayerNorm
//! blocks of causal self-attention and a GELU MLP, a final LayerNorm, and a head tied to the token
//! embedding. Parameter names are GPT-2's (`wte`, `h.0.attn.c_attn`, ...); weights are stored in
//! torch Linear layout (out, in) — HF's Conv1D files are transposed at load/save time (formats/hf.py).

use super::{CausalLm, KvCache, ModelKind};
use crate::error::{Error, Result};
use crate::nn::attention::{CacheRows, GptAttention, LayerCache, check_heads};
use crate::nn::mlp::GptMlp;
use crate::nn::{Embedding, LayerNorm, Linear, Module, check_positive};
use crate::ops::{binary, dropout, matmul};
use crate::tensor::Tensor;

/// GPT hyper-parameters (nanoGPT's GPTConfig).
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest sequence (number of learned positions).
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Width of the residual stream.
    pub n_embd: usize,
    /// Dropout probability on embeddings, attention output and MLP output (training only).
    pub dropout: f32,
    /// Biases in Linear and LayerNorm layers (GPT-2: true).
    pub bias: bool,
    pub layer_norm_eps: f32,
}

impl GptConfig {
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
        ] {
            check_positive("GPTConfig", n, v)?;
        }
        check_heads("GPTConfig", self.n_embd, self.n_head, self.n_head)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::value("GPTConfig", format!("dropout must be in [0, 1), got {}", self.dropout)));
        }
        Ok(())
    }
}

pub struct GptBlock {
    pub ln_1: LayerNorm,
    pub attn: GptAttention,
    pub ln_2: LayerNorm,
    pub mlp: GptMlp,
}

impl GptBlock {
    fn forward(&self, x: &Tensor, cache: Option<(&mut LayerCache, &CacheRows)>, training: bool) -> Result<Tensor> {
        let x = binary::add(x, &self.attn.forward(&self.ln_1.forward(x)?, cache, training)?)?;
        binary::add(&x, &self.mlp.forward(&self.ln_2.forward(&x)?, training)?)
    }
}

pub struct Gpt {
    pub config: GptConfig,
    pub wte: Embedding,
    pub wpe: Embedding,
    pub h: Vec<GptBlock>,
    pub ln_f: LayerNorm,
}

impl Gpt {
    /// A freshly initialised model (nanoGPT init: Normal(0, 0.02), residual projections
    /// 0.02/sqrt(2·n_layer), zero biases, unit LayerNorm weights), from the global seeded generator.
    pub fn new(config: GptConfig) -> Result<Gpt> {
        config.validate()?;
        let c = config.n_embd;
        let std = 0.02;
        let proj_std = 0.02 / (2.0 * config.n_layer as f32).sqrt();
        let wte = Embedding::new(config.vocab_size, c, std)?;
        let wpe = Embedding::new(config.block_size, c, std)?;
        let mut h = Vec::with_capacity(config.n_layer);
        for _ in 0..config.n_layer {
            h.push(GptBlock {
                ln_1: LayerNorm::new(c, config.bias, config.layer_norm_eps)?,
                attn: GptAttention {
                    c_attn: Linear::new(c, 3 * c, config.bias, std)?,
                    c_proj: Linear::new(c, c, config.bias, proj_std)?,
                    n_head: config.n_head,
                    dropout: config.dropout,
                },
                ln_2: LayerNorm::new(c, config.bias, config.layer_norm_eps)?,
                mlp: GptMlp {
                    c_fc: Linear::new(c, 4 * c, config.bias, std)?,
                    c_proj: Linear::new(4 * c, c, config.bias, proj_std)?,
                    dropout: config.dropout,
                },
            });
        }
        let ln_f = LayerNorm::new(c, config.bias, config.layer_norm_eps)?;
        Ok(Gpt { config, wte, wpe, h, ln_f })
    }
}

impl Module for Gpt {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.wte.collect(&format!("{prefix}wte."), out);
        self.wpe.collect(&format!("{prefix}wpe."), out);
        for (i, b) in self.h.iter().enumerate() {
            let p = format!("{prefix}h.{i}.");
            b.ln_1.collect(&format!("{p}ln_1."), out);
            b.attn.collect(&format!("{p}attn."), out);
            b.ln_2.collect(&format!("{p}ln_2."), out);
            b.mlp.collect(&format!("{p}mlp."), out);
        }
        self.ln_f.collect(&format!("{prefix}ln_f."), out);
        // lm_head is tied to wte: not a separate parameter
    }
}

impl CausalLm for Gpt {
    fn kind(&self) -> ModelKind {
        ModelKind::Gpt
    }
    fn clone_model(&self) -> Result<Box<dyn CausalLm>> {
        Ok(Box::new(super::copy_of(self, || Gpt::new(self.config.clone()))?))
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.config.block_size
    }
    fn n_layer(&self) -> usize {
        self.config.n_layer
    }
    fn n_embd(&self) -> usize {
        self.config.n_embd
    }
    fn hidden(
        &self,
        idx: &[i64],
        b: usize,
        t: usize,
        mut cache: Option<&mut KvCache>,
        training: bool,
    ) -> Result<Tensor> {
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        super::check_batch(self, idx, b, t, past)?;
        let tok = self.wte.forward(idx, &[b, t])?; // (B, T, C)
        // a padded batch in a cache: each row counts its positions from its own first real token
        let per_row: Option<Vec<i64>> = match cache.as_deref_mut() {
            Some(c) => {
                let p: Vec<i64> = c.rows.begin(b, t)?.iter().map(|&p| p as i64).collect();
                c.rows.padded().then_some(p)
            }
            None => None,
        };
        let pos = match per_row {
            Some(per_row) => self.wpe.forward(&per_row, &[b, t])?, // (B, T, C)
            None => {
                let positions: Vec<i64> = (past as i64..(past + t) as i64).collect();
                self.wpe.forward(&positions, &[t])? // (T, C), broadcast over B
            }
        };
        let mut x = dropout::dropout(&binary::add(&tok, &pos)?, self.config.dropout, training)?;
        for (i, block) in self.h.iter().enumerate() {
            crate::parallel::check_interrupt()?;
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], &c.rows));
            x = block.forward(&x, layer_cache, training)?;
        }
        self.ln_f.forward(&x)
    }
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        matmul::linear(h, &self.wte.weight, None) // tied: logits = h · wteᵀ
    }
    fn matmul_shapes(&self) -> Vec<(usize, usize)> {
        let c = self.config.n_embd;
        let mut v = Vec::new();
        for _ in 0..self.config.n_layer {
            v.extend([(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]);
        }
        v.push((c, self.config.vocab_size));
        v
    }
}
