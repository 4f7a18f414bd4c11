//! The Python module `nanofrontier._core`: the only code that imports pyo3 or numpy.
//! - `errors`    core `Error` → Python exceptions (once), and `run` = release the GIL + map errors
//! - `tensor`    the `Tensor` class: conversions, operators, methods
//! - `functions` creation, randomness, threads, grad mode, multi-tensor ops
//! - `optim`     SGD / AdamW / clip_grad_norm over lists of parameters
//! - `io`        save_safetensors / load_safetensors
//! - `models`    `Model`: GPT or Llama, whole forward / generation per call
//! - `tokenizer` `BPE`: the byte-level BPE tokenizer (train, encode, decode, save/load)
//! - `rl`        the post-training objectives (reward, DPO, PPO, GAE, KL, GRPO, entropy)

pub mod errors;
pub mod functions;
pub mod io;
pub mod models;
pub mod optim;
pub mod rl;
pub mod tensor;
pub mod tokenizer;

use pyo3::prelude::*;

/// glibc gives freed memory back to the OS eagerly, so every op's fresh output buffer page-faults
/// again (measured: 20–30% of attention fwd+bwd, ~15% of a tiny GPT training step). Keep up to 1 GiB of
/// freed heap and serve buffers below 32 MiB from it, as a caching allocator would. Process-wide, once.
/// One arena: model calls run on pool workers (`errors::run_on_pool`), and a worker's own arena unmaps
/// each 64 MiB heap extension as soon as it is empty, whatever the trim threshold (measured: 7800 page
/// faults and +10 ms sys per small-GPT step); the main arena keeps it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    const M_ARENA_MAX: i32 = -8;
    if std::env::var_os("NANOFRONTIER_DEFAULT_MALLOC").is_none() {
        // SAFETY: mallopt only adjusts glibc's allocator tunables; all values are in range.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_ARENA_MAX, 1);
        }
    }
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::parallel::set_interrupt_hook(errors::python_interrupted);
    keep_freed_memory();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<tensor::PyTensor>()?;
    use functions as f;
    for func in [
        wrap_pyfunction!(f::zeros, m)?,
        wrap_pyfunction!(f::ones, m)?,
        wrap_pyfunction!(f::full, m)?,
        wrap_pyfunction!(f::manual_seed, m)?,
        wrap_pyfunction!(f::randn, m)?,
        wrap_pyfunction!(f::rand, m)?,
        wrap_pyfunction!(f::randint, m)?,
        wrap_pyfunction!(f::multinomial, m)?,
        wrap_pyfunction!(f::row_seeds, m)?,
        wrap_pyfunction!(f::get_rng_state, m)?,
        wrap_pyfunction!(f::set_rng_state, m)?,
        wrap_pyfunction!(f::set_num_threads, m)?,
        wrap_pyfunction!(f::get_num_threads, m)?,
        wrap_pyfunction!(f::_fma_peak, m)?,
        wrap_pyfunction!(f::_matmul_path, m)?,
        wrap_pyfunction!(f::_set_bf16, m)?,
        wrap_pyfunction!(f::_bf16_enabled, m)?,
        wrap_pyfunction!(f::_bf16_supported, m)?,
        wrap_pyfunction!(f::set_grad_enabled, m)?,
        wrap_pyfunction!(f::is_grad_enabled, m)?,
        wrap_pyfunction!(f::matmul_, m)?,
        wrap_pyfunction!(f::cross_entropy, m)?,
        wrap_pyfunction!(f::embedding, m)?,
        wrap_pyfunction!(f::index_select, m)?,
        wrap_pyfunction!(f::masked_fill, m)?,
        wrap_pyfunction!(f::where_, m)?,
        wrap_pyfunction!(f::cat, m)?,
        wrap_pyfunction!(f::stack, m)?,
        wrap_pyfunction!(f::expand, m)?,
        wrap_pyfunction!(f::dropout_, m)?,
        wrap_pyfunction!(f::gelu, m)?,
        wrap_pyfunction!(f::silu, m)?,
        wrap_pyfunction!(f::maximum, m)?,
        wrap_pyfunction!(f::minimum, m)?,
        wrap_pyfunction!(f::log_sigmoid, m)?,
        wrap_pyfunction!(f::softplus, m)?,
        wrap_pyfunction!(f::linear, m)?,
        wrap_pyfunction!(f::layer_norm, m)?,
        wrap_pyfunction!(f::rms_norm, m)?,
        wrap_pyfunction!(f::swiglu, m)?,
        wrap_pyfunction!(f::rope, m)?,
        wrap_pyfunction!(f::scaled_dot_product_attention, m)?,
        wrap_pyfunction!(f::attention_weights, m)?,
        wrap_pyfunction!(f::token_logprobs, m)?,
    ] {
        m.add_function(func)?;
    }
    optim::register(m)?;
    io::register(m)?;
    models::register(m)?;
    tokenizer::register(m)?;
    rl::register(m)?;
    Ok(())
}
