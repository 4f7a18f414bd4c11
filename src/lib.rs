//! nanofrontier: a tested, torch-free CPU engine for small transformers and their post-training
//! objectives, built to make the guide *From Neural Nets to Frontier Models* runnable.
//!
//! Read it in flow order — each module uses only the ones declared above it (its tests may use any;
//! `tests/layering.rs` checks this on every `crate::` path outside test modules):
//!
//! ```text
//! error → runtime → parallel → tensor → autograd → ops → nn → models → optim → rl → io → text → bindings (Python) → python/nanofrontier → notebooks
//! ```
//!
//! `runtime` holds the per-thread switches everyone consults (grad mode, Ctrl-C), so the pool and the
//! tape need not import each other; the tensor defines the backward-node traits it stores, and the tape
//! sums gradients through `Tensor` methods rather than through `ops`.

// `!(x >= 0.0)` is how we reject NaN together with negatives; clippy would rather we did not.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

/// The one error type (op name + shapes), mapped to Python exceptions only in `bindings`.
pub mod error;
/// Per-thread switches: grad mode (`no_grad`) and the Ctrl-C hook and flag.
pub mod runtime;
/// How work runs: the fork-safe thread pool, whole calls handed to it, disjoint output chunks.
pub mod parallel;
/// 1. The data: `Tensor` (Arc handle to f32 storage + shape + autograd slots), fallible allocation, shapes,
/// seeded RNG, printing, and the `Backward` node traits a tensor stores.
pub mod tensor;
/// 2. The tape: recording nodes, `backward()`, and the finite-difference `gradcheck`.
pub mod autograd;
/// 3. Ops: one file per family, forward + backward + tests side by side.
pub mod ops;
/// 4. Layers built from ops: Linear, Embedding, norms, attention, MLPs (checkpoint-style names).
pub mod nn;
/// 5. Models: GPT and Llama behind one `CausalLm` trait; loss, log-probs, FLOPs, KV-cache generation.
pub mod models;
/// 6. Training: optimizers (SGD, AdamW) stepping all parameters in one call, gradient clipping.
pub mod optim;
/// 7. Post-training objectives: reward model, DPO, PPO (+ GAE, KL), GRPO, entropy; fused, each with its backward.
pub mod rl;
/// 8. Files: safetensors read/write (F32 out; F32/F16/BF16/F64 in), atomic saves.
pub mod io;
/// 9. Text ⇄ token ids: a byte-level BPE tokenizer (trained and run in Rust), GPT-2's pre-tokenization split.
pub mod text;
/// 10. The Python module `nanofrontier._core` — the only code that knows Python exists.
pub mod bindings;

/// Tests only: the one `assert_close` / `max_abs_diff` the unit tests share.
#[cfg(test)]
mod testutil;

pub use error::{Error, Result};
pub use tensor::Tensor;
