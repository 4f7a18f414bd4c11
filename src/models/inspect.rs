//! Looking inside a model: the attention probabilities of every layer for a batch of token ids, so a
//! notebook can plot where each head looks without rebuilding queries and keys from the state dict.
//! Built only from the layers' public pieces and the `attention_weights` op; the model's own forward is
//! untouched. The test rebuilds every layer from primitive reference ops and compares.

use super::gpt::Gpt;
use super::llama::Llama;
use crate::autograd::no_grad;
use crate::error::Result;
use crate::ops::attention::attention_weights as weights_op;
use crate::ops::heads::split_heads;
use crate::ops::rope::rope;
use crate::ops::{binary, view};
use crate::parallel::check_interrupt;
use crate::tensor::Tensor;

/// Every causal language model here can show its attention (a supertrait of `CausalLm`).
pub trait AttentionWeights {
    /// Token ids (B·T, row-major) → one (B, H, T, T) tensor per layer: row i of head h holds the
    /// probabilities query position i puts on key positions 0..=i (causal entries are 0). No gradient.
    fn attention_weights(&self, idx: &[i64], b: usize, t: usize) -> Result<Vec<Tensor>>;
}

impl AttentionWeights for Gpt {
    fn attention_weights(&self, idx: &[i64], b: usize, t: usize) -> Result<Vec<Tensor>> {
        let _no_grad = no_grad();
        super::check_batch(self, idx, b, t, 0)?;
        let positions: Vec<i64> = (0..t as i64).collect();
        let mut x = binary::add(&self.wte.forward(idx, &[b, t])?, &self.wpe.forward(&positions, &[t])?)?;
        let mut maps = Vec::with_capacity(self.h.len());
        for (i, block) in self.h.iter().enumerate() {
            check_interrupt()?;
            let a = block.ln_1.forward(&x)?; // (B, T, C): what the attention reads
            let qkv = split_heads(&block.attn.c_attn.forward(&a)?, 3, block.attn.n_head)?; // q, k, v (B, H, T, D)
            maps.push(weights_op(&qkv[0], &qkv[1], true, None)?);
            if i + 1 < self.h.len() {
                // the block, as GptBlock::forward runs it (eval mode: no dropout)
                x = binary::add(&x, &block.attn.forward(&a, None, false)?)?;
                x = binary::add(&x, &block.mlp.forward(&block.ln_2.forward(&x)?, false)?)?;
            }
        }
        Ok(maps)
    }
}

impl AttentionWeights for Llama {
    fn attention_weights(&self, idx: &[i64], b: usize, t: usize) -> Result<Vec<Tensor>> {
        let _no_grad = no_grad();
        super::check_batch(self, idx, b, t, 0)?;
        let mut x = self.embed_tokens.forward(idx, &[b, t])?;
        let mut maps = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            check_interrupt()?;
            let at = &layer.self_attn;
            let a = layer.input_layernorm.forward(&x)?;
            // q and k as LlamaAttention::forward makes them: project, rotate in (B, T, H, D), then (B, H, T, D)
            let heads = |proj: &crate::nn::Linear, h: usize| -> Result<Tensor> {
                let y = view::reshape(&proj.forward(&a)?, &[b as isize, t as isize, h as isize, at.head_dim as isize])?;
                view::permute(&rope(&y, 1, 0, at.rope_theta, at.rope_layout)?, &[0, 2, 1, 3])
            };
            let (q, k) = (heads(&at.q_proj, at.n_head)?, heads(&at.k_proj, at.n_kv_head)?);
            maps.push(weights_op(&q, &k, true, None)?); // GQA: query head h reads kv head h / (H / Hkv)
            if i + 1 < self.layers.len() {
                x = binary::add(&x, &at.forward(&a, None)?)?;
                x = binary::add(&x, &layer.mlp.forward(&layer.post_attention_layernorm.forward(&x)?)?)?;
            }
        }
        Ok(maps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::CausalLm;
    use crate::models::gpt::GptConfig;
    use crate::models::llama::LlamaConfig;
    use crate::ops::heads::{merge_heads_reference, split_heads_reference};
    use crate::ops::matmul::{linear, matmul};
    use crate::ops::norm::{layer_norm_reference, rms_norm_reference};
    use crate::ops::rope::{RopeLayout, rope_reference};
    use crate::tensor::random::manual_seed;

    const IDX: [i64; 10] = [1, 4, 2, 7, 3, 0, 5, 5, 6, 1];
    const B: usize = 2;
    const T: usize = 5;

    /// Attention probabilities in f64 loops: q (B, Hq, T, D), k (B, Hkv, T, D) → (B, Hq, T, T), causal.
    fn weights_f64(q: &Tensor, k: &Tensor) -> Tensor {
        let (&[b, hq, t, d], hkv) = (q.shape(), k.shape()[1]) else { panic!("4-D q expected") };
        let (qd, kd) = (q.data(), k.data());
        let mut out = vec![0f32; b * hq * t * t];
        for bi in 0..b {
            for h in 0..hq {
                let kh = h / (hq / hkv);
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            let qi = &qd[((bi * hq + h) * t + i) * d..][..d];
                            let kj = &kd[((bi * hkv + kh) * t + j) * d..][..d];
                            qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for (j, v) in s.iter().enumerate() {
                        out[((bi * hq + h) * t + i) * t + j] = ((v - m).exp() / z) as f32;
                    }
                }
            }
        }
        Tensor::new(out, &[b, hq, t, t]).unwrap()
    }

    /// The kv heads repeated so that head h of the result is kv head h / g (for p @ v under GQA).
    fn repeat_kv(x: &Tensor, hq: usize) -> Tensor {
        let s = x.shape().to_vec();
        let g = hq / s[1];
        let x5 = view::reshape(x, &[s[0] as isize, s[1] as isize, 1, s[2] as isize, s[3] as isize]).unwrap();
        let x5 = view::expand(&x5, &[s[0], s[1], g, s[2], s[3]]).unwrap();
        view::reshape(&x5, &[s[0] as isize, hq as isize, s[2] as isize, s[3] as isize]).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.shape(), b.shape());
        a.data().iter().zip(b.data().iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Visible weights on every layer: larger than the 0.02 init so the maps are far from uniform.
    fn perturb(model: &dyn CausalLm) {
        for (_, p) in model.named_parameters() {
            let mut d = p.data_mut();
            for (i, v) in d.iter_mut().enumerate() {
                *v += 0.6 * (((i * 7919) % 13) as f32 / 13.0 - 0.5);
            }
        }
    }

    #[test]
    fn gpt_attention_weights_match_a_reference_forward() {
        manual_seed(0);
        let cfg = GptConfig {
            vocab_size: 8,
            block_size: 6,
            n_layer: 3,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        };
        let model = Gpt::new(cfg).unwrap();
        perturb(&model);
        let got = model.attention_weights(&IDX, B, T).unwrap();
        assert_eq!(got.len(), 3);
        // the reference forward: primitive reference ops, f64 softmax, p @ v for the attention output
        let pos: Vec<i64> = (0..T as i64).collect();
        let mut x =
            binary::add(&model.wte.forward(&IDX, &[B, T]).unwrap(), &model.wpe.forward(&pos, &[T]).unwrap()).unwrap();
        let mut spread = 0f32; // largest weight seen, to show the maps are not uniform
        for (l, block) in model.h.iter().enumerate() {
            let ln = |x: &Tensor, n: &crate::nn::LayerNorm| {
                layer_norm_reference(x, Some(&n.weight), n.bias.as_ref(), n.eps).unwrap()
            };
            let a = ln(&x, &block.ln_1);
            let lin = |x: &Tensor, p: &crate::nn::Linear| linear(x, &p.weight, p.bias.as_ref()).unwrap();
            let qkv = split_heads_reference(&lin(&a, &block.attn.c_attn), 3, 2).unwrap();
            let want = weights_f64(&qkv[0], &qkv[1]);
            let d = max_diff(&got[l], &want);
            assert!(d < 1e-5, "layer {l}: attention_weights off the reference by {d}");
            spread = spread.max(want.data().iter().cloned().fold(0.0, f32::max));
            let y = merge_heads_reference(&matmul(&want, &qkv[2]).unwrap()).unwrap();
            x = binary::add(&x, &lin(&y, &block.attn.c_proj)).unwrap();
            x = binary::add(&x, &block.mlp.forward(&ln(&x, &block.ln_2), false).unwrap()).unwrap();
        }
        assert!(spread > 0.6, "the test model's attention is too uniform to test anything ({spread})");
        // the reference stream is the model's: its final norm equals model.hidden
        let h = model.hidden(&IDX, B, T, None, false).unwrap();
        let d =
            max_diff(&h, &layer_norm_reference(&x, Some(&model.ln_f.weight), model.ln_f.bias.as_ref(), 1e-5).unwrap());
        assert!(d < 1e-4, "reference forward off model.hidden by {d}");
    }

    #[test]
    fn llama_attention_weights_match_a_reference_forward_with_gqa() {
        for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
            manual_seed(1);
            let cfg = LlamaConfig {
                vocab_size: 8,
                hidden_size: 16,
                intermediate_size: 12,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                max_position_embeddings: 8,
                rms_norm_eps: 1e-5,
                rope_theta: 10000.0,
                tie_word_embeddings: false,
                rope_layout: layout,
            };
            let model = Llama::new(cfg).unwrap();
            perturb(&model);
            let got = model.attention_weights(&IDX, B, T).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].shape(), &[B, 4, T, T]);
            let mut x = model.embed_tokens.forward(&IDX, &[B, T]).unwrap();
            for (l, layer) in model.layers.iter().enumerate() {
                let at = &layer.self_attn;
                let a = rms_norm_reference(&x, Some(&layer.input_layernorm.weight), 1e-5).unwrap();
                let heads = |p: &crate::nn::Linear, h: usize, rotate: bool| {
                    let y =
                        view::reshape(&linear(&a, &p.weight, None).unwrap(), &[B as isize, T as isize, h as isize, 4])
                            .unwrap();
                    let y = if rotate { rope_reference(&y, 1, 0, 10000.0, layout).unwrap() } else { y };
                    view::permute(&y, &[0, 2, 1, 3]).unwrap()
                };
                let (q, k, v) = (heads(&at.q_proj, 4, true), heads(&at.k_proj, 2, true), heads(&at.v_proj, 2, false));
                let want = weights_f64(&q, &k);
                let d = max_diff(&got[l], &want);
                assert!(d < 1e-5, "{layout:?} layer {l}: attention_weights off the reference by {d}");
                let y = merge_heads_reference(&matmul(&want, &repeat_kv(&v, 4)).unwrap()).unwrap();
                x = binary::add(&x, &linear(&y, &at.o_proj.weight, None).unwrap()).unwrap();
                let m = rms_norm_reference(&x, Some(&layer.post_attention_layernorm.weight), 1e-5).unwrap();
                x = binary::add(&x, &layer.mlp.forward(&m).unwrap()).unwrap();
            }
            let h = model.hidden(&IDX, B, T, None, false).unwrap();
            let d = max_diff(&h, &rms_norm_reference(&x, Some(&model.norm.weight), 1e-5).unwrap());
            assert!(d < 1e-4, "{layout:?}: reference forward off model.hidden by {d}");
        }
    }

    #[test]
    fn attention_weights_refuse_a_sequence_longer_than_the_context() {
        manual_seed(0);
        let cfg = GptConfig {
            vocab_size: 8,
            block_size: 4,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        };
        let e = Gpt::new(cfg).unwrap().attention_weights(&IDX, B, T).unwrap_err();
        assert!(e.to_string().contains("exceeds the model's maximum of 4 positions"), "{e}");
    }
}
