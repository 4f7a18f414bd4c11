//! Whole-model checks in Rust: every parameter of a tiny GPT and a tiny Llama passes a finite-difference
//! gradient check through the full forward (embeddings → blocks → head → cross-entropy).

use nanofrontier::autograd::{GradcheckOptions, gradcheck};
use nanofrontier::models::gpt::{Gpt, GptConfig};
use nanofrontier::models::llama::{Llama, LlamaConfig};
use nanofrontier::models::{CausalLm, forward};
use nanofrontier::nn::Module;
use nanofrontier::ops::rope::RopeLayout;
use nanofrontier::tensor::random::manual_seed;

const IDX: [i64; 10] = [1, 4, 2, 7, 3, 0, 5, 5, 6, 1];
const TARGETS: [i64; 10] = [4, 2, 7, 3, 0, 5, 5, 6, 1, 2];

fn check(model: &dyn CausalLm) {
    let params: Vec<_> = model.named_parameters().into_iter().map(|(_, t)| t).collect();
    // the loss reads the parameters in place, so the inputs gradcheck perturbs are the model's own
    let f =
        |_: &[nanofrontier::Tensor]| Ok(forward(model, &IDX, 2, 5, Some((&TARGETS, &[2, 5])), None, false)?.1.unwrap());
    let opt = GradcheckOptions { eps: 1e-2, atol: 2e-3, rtol: 2e-2 };
    match gradcheck(f, &params, opt) {
        Ok(worst) => assert!(worst < 2e-3, "worst |analytic - numeric| = {worst}"),
        Err(e) => {
            let names: Vec<_> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
            panic!("{e}\n(inputs in order: {names:?})");
        }
    }
}

#[test]
fn tiny_gpt_whole_model_gradcheck() {
    manual_seed(0);
    let cfg = GptConfig {
        vocab_size: 8,
        block_size: 6,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        dropout: 0.0,
        bias: true,
        layer_norm_eps: 1e-5,
    };
    let mut model = Gpt::new(cfg).unwrap();
    // larger weights than the 0.02 init, so every path carries a visible gradient
    for (_, p) in model.named_parameters() {
        let mut d = p.data_mut();
        for (i, v) in d.iter_mut().enumerate() {
            *v += 0.3 * (((i * 7919) % 13) as f32 / 13.0 - 0.5);
        }
    }
    model.config.dropout = 0.0;
    check(&model);
}

#[test]
fn tiny_llama_whole_model_gradcheck_both_rope_layouts() {
    for layout in [RopeLayout::Interleaved, RopeLayout::HalfSplit] {
        manual_seed(1);
        let cfg = LlamaConfig {
            vocab_size: 8,
            hidden_size: 8,
            intermediate_size: 12,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            tie_word_embeddings: false,
            rope_layout: layout,
        };
        let model = Llama::new(cfg).unwrap();
        for (_, p) in model.named_parameters() {
            let mut d = p.data_mut();
            for (i, v) in d.iter_mut().enumerate() {
                *v += 0.3 * (((i * 7919) % 13) as f32 / 13.0 - 0.5);
            }
        }
        check(&model);
    }
}
