//! Every op, one family per file: the forward function, its `Backward` struct and its tests together
//! (attention, the largest, is a folder: `mod.rs` the op, `kernels.rs` its inner loops, `tests.rs`).
//! Each op's tests run a finite-difference gradcheck and compare the forward with an independent
//! reference (an f64 formula, or for a fused op a composite of primitives).
//!
//! Shared by the vectorized kernels of `unary`, `matmul` and `attention`:
//! - `simd`       run-time dispatch to AVX-512 / AVX2 / baseline builds of a kernel, `madd`, the 16-lane
//!                `dot` / `dot4` and `lanes_sum` (every level gives the baseline's bits unless it uses `madd`);
//!                the 8-lane f64/f32 `sum8` / `dot8` that reductions, softmax and norms share
//!
//! Primitives:
//! - `binary`     add sub mul div pow minimum maximum (broadcasting; scalar forms), comparisons (no grad)
//! - `unary`      neg exp log sqrt tanh relu sigmoid abs clamp
//! - `reduce`     sum mean max argmax over dims (keepdim), sum_all, mean_all
//! - `view`       reshape (zero-copy) unsqueeze squeeze flatten permute transpose narrow slice select cat
//!                stack expand, copy_ (in-place load into a leaf)
//! - `matmul`     batched (…,M,K)@(…,K,N) on our AVX-512/AVX2 GEMM (or matrixmultiply), split over the pool; linear (x@Wᵀ+b)
//! - `index`      embedding gather and index_select (scatter-add backward), masked_fill, where
//! - `dropout`    inverted dropout with a seeded mask
//!
//! Fused (each keeps a `*_reference` built from primitives, and its tests compare the two):
//! - `activation` gelu (tanh form), silu, swiglu, softplus (torch's beta/threshold), log_sigmoid (stable)
//! - `softmax`    softmax, log_softmax, cross_entropy (softmax + NLL fused, ignore_index), token_logprobs
//! - `norm`       layer_norm, rms_norm (per-row mean/rstd cached for backward)
//! - `rope`       rotary position embedding, interleaved or half-split pairs (backward = inverse rotation)
//! - `heads`      split_heads (B,T,P·H·D) → P × (B,H,T,D) in one pass, one multi-output backward node;
//!                merge_heads (B,H,T,D) → (B,T,H·D)
//! - `attention`  scaled_dot_product_attention (flash-style; causal, GQA, KV cache), attention_weights

pub mod simd;
pub mod binary;
pub mod unary;
pub mod reduce;
pub mod view;
pub mod matmul;
pub mod index;
pub mod dropout;
pub mod activation;
pub mod softmax;
pub mod norm;
pub mod rope;
pub mod heads;
pub mod attention;
