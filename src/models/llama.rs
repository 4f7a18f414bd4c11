//! Llama (the Llama 2/3 architecture): token embedding, pre-RMSNorm blocks of grouped-query attention
//! with rotary positions and a SwiGLU MLP, a final RMSNorm, and a head (tied or separate).
//! Parameter names are Hugging Face's (`model.layers.0.self_attn.q_proj.weight`, ...). The RoPE layout
//! is part of the config: `Interleaved` for Meta/llama2.c/GGUF weights, `HalfSplit` for HF weights.

use super::{CausalLm, KvCache, ModelKind};
use crate::error::{Error, Result};
use crate::nn::attention::{CacheRows, LayerCache, LlamaAttention, check_heads};
use crate::nn::mlp::SwiGluMlp;
use crate::nn::{Embedding, Linear, Module, RmsNorm, check_positive};
use crate::ops::binary;
use crate::ops::matmul;
use crate::ops::rope::RopeLayout;
use crate::tensor::Tensor;

/// Llama hyper-parameters (HF LlamaConfig names).
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Fewer than num_attention_heads = grouped-query attention.
    pub num_key_value_heads: usize,
    /// Longest sequence generation will run to.
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    pub rope_layout: RopeLayout,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    pub fn validate(&self) -> Result<()> {
        for (n, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            check_positive("LlamaConfig", n, v)?;
        }
        check_heads("LlamaConfig", self.hidden_size, self.num_attention_heads, self.num_key_value_heads)?;
        if self.head_dim() % 2 != 0 {
            return Err(Error::value("LlamaConfig", format!("head_dim ({}) must be even for RoPE", self.head_dim())));
        }
        if !(self.rope_theta > 0.0) || !(self.rms_norm_eps >= 0.0) {
            return Err(Error::value("LlamaConfig", "rope_theta must be > 0 and rms_norm_eps >= 0"));
        }
        Ok(())
    }
}

pub struct LlamaBlock {
    pub input_layernorm: RmsNorm,
    pub self_attn: LlamaAttention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: SwiGluMlp,
}

impl LlamaBlock {
    fn forward(&self, x: &Tensor, cache: Option<(&mut LayerCache, &CacheRows)>) -> Result<Tensor> {
        let h = binary::add(x, &self.self_attn.forward(&self.input_layernorm.forward(x)?, cache)?)?;
        binary::add(&h, &self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?)
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaBlock>,
    pub norm: RmsNorm,
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

impl Llama {
    /// A freshly initialised model: Normal(0, 0.02) weights, output projections 0.02/sqrt(2·layers),
    /// unit norm weights; from the global seeded generator.
    pub fn new(config: LlamaConfig) -> Result<Llama> {
        config.validate()?;
        let (c, d) = (config.hidden_size, config.head_dim());
        let (h, hkv) = (config.num_attention_heads, config.num_key_value_heads);
        let std = 0.02;
        let proj_std = 0.02 / (2.0 * config.num_hidden_layers as f32).sqrt();
        let embed_tokens = Embedding::new(config.vocab_size, c, std)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for _ in 0..config.num_hidden_layers {
            layers.push(LlamaBlock {
                input_layernorm: RmsNorm::new(c, config.rms_norm_eps)?,
                self_attn: LlamaAttention {
                    q_proj: Linear::new(c, h * d, false, std)?,
                    k_proj: Linear::new(c, hkv * d, false, std)?,
                    v_proj: Linear::new(c, hkv * d, false, std)?,
                    o_proj: Linear::new(h * d, c, false, proj_std)?,
                    n_head: h,
                    n_kv_head: hkv,
                    head_dim: d,
                    rope_theta: config.rope_theta,
                    rope_layout: config.rope_layout,
                },
                post_attention_layernorm: RmsNorm::new(c, config.rms_norm_eps)?,
                mlp: SwiGluMlp {
                    gate_proj: Linear::new(c, config.intermediate_size, false, std)?,
                    up_proj: Linear::new(c, config.intermediate_size, false, std)?,
                    down_proj: Linear::new(config.intermediate_size, c, false, proj_std)?,
                },
            });
        }
        let norm = RmsNorm::new(c, config.rms_norm_eps)?;
        let lm_head =
            if config.tie_word_embeddings { None } else { Some(Linear::new(c, config.vocab_size, false, std)?) };
        Ok(Llama { config, embed_tokens, layers, norm, lm_head })
    }
}

impl Module for Llama {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.embed_tokens.collect(&format!("{prefix}model.embed_tokens."), out);
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("{prefix}model.layers.{i}.");
            l.input_layernorm.collect(&format!("{p}input_layernorm."), out);
            l.self_attn.collect(&format!("{p}self_attn."), out);
            l.post_attention_layernorm.collect(&format!("{p}post_attention_layernorm."), out);
            l.mlp.collect(&format!("{p}mlp."), out);
        }
        self.norm.collect(&format!("{prefix}model.norm."), out);
        if let Some(head) = &self.lm_head {
            head.collect(&format!("{prefix}lm_head."), out);
        }
    }
}

impl CausalLm for Llama {
    fn kind(&self) -> ModelKind {
        ModelKind::Llama
    }
    fn clone_model(&self) -> Result<Box<dyn CausalLm>> {
        Ok(Box::new(super::copy_of(self, || Llama::new(self.config.clone()))?))
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn max_seq_len(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn n_layer(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn n_embd(&self) -> usize {
        self.config.hidden_size
    }
    fn attn_width(&self) -> usize {
        self.config.num_attention_heads * self.config.head_dim()
    }
    fn hidden(
        &self,
        idx: &[i64],
        b: usize,
        t: usize,
        mut cache: Option<&mut KvCache>,
        _training: bool,
    ) -> Result<Tensor> {
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        super::check_batch(self, idx, b, t, past)?;
        if let Some(c) = cache.as_deref_mut() {
            c.rows.begin(b, t)?; // which new tokens are real, and their positions (read by RoPE)
        }
        let mut x = self.embed_tokens.forward(idx, &[b, t])?;
        for (i, layer) in self.layers.iter().enumerate() {
            crate::parallel::check_interrupt()?;
            let layer_cache = cache.as_deref_mut().map(|c| (&mut c.layers[i], &c.rows));
            x = layer.forward(&x, layer_cache)?;
        }
        self.norm.forward(&x)
    }
    fn head(&self, h: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h),
            None => matmul::linear(h, &self.embed_tokens.weight, None),
        }
    }
    fn matmul_shapes(&self) -> Vec<(usize, usize)> {
        let cfg = &self.config;
        let (c, d, i) = (cfg.hidden_size, cfg.head_dim(), cfg.intermediate_size);
        let (h, hkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let mut v = Vec::new();
        for _ in 0..cfg.num_hidden_layers {
            v.extend([(c, h * d), (c, hkv * d), (c, hkv * d), (h * d, c), (c, i), (c, i), (i, c)]);
        }
        v.push((c, cfg.vocab_size));
        v
    }
}
