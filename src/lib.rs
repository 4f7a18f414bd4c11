//! nanofrontier: a tested, torch-free CPU engine for small transformers and their post-training
//! objectives, built to make the guide *From Neural Nets to Frontier Models* runnable.
//!
//! Read it in flow order — each module uses only the ones above it:
//!
//! ```text
//! error → tensor → autograd → parallel → ops → nn → models → optim → rl → io → bindings (Python) → python/nanofrontier → notebooks
//! ```

// `!(x >= 0.0)` is how we reject NaN together with negatives; clippy would rather we did not.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

/// The one error type (op name + shapes), mapped to Python exceptions only in `bindings`.
pub mod error;
/// 1. The data: `Tensor` (Arc handle to f32 storage + shape + autograd slots), shapes, seeded RNG, printing.
pub mod tensor;
/// 2. The tape: `Backward` nodes, `backward()`, `no_grad`, and the finite-difference `gradcheck`.
pub mod autograd;
/// How work runs: the fork-safe thread pool and the Ctrl-C hook.
pub mod parallel;
/// 3. Ops: one file per family, forward + backward + tests side by side.
pub mod ops;
/// 4. Layers built from ops: Linear, Embedding, norms, attention, MLPs (checkpoint-style names).
pub mod nn;
/// 5. Models: GPT and Llama behind one `CausalLm` trait; loss, log-probs, FLOPs, KV-cache generation.
pub mod models;
/// 6. Training: optimizers (SGD, AdamW) stepping all parameters in one call, gradient clipping.
pub mod optim;
/// 6b. Post-training objectives: reward model, DPO, PPO (+ GAE, KL), GRPO, entropy; fused, each with its backward.
pub mod rl;
/// 7. Files: safetensors read/write (F32 out; F32/F16/BF16/F64 in), atomic saves.
pub mod io;
/// 8. The Python module `nanofrontier._core` — the only code that knows Python exists.
pub mod bindings;

pub use error::{Error, Result};
pub use tensor::Tensor;
