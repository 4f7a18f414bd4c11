//! Reverse-mode autograd. Every op that wants a gradient builds its output, then calls `record(out, node)`
//! with a small struct implementing `Backward`, which holds what the backward needs (inputs or output).
//! An op with several outputs (split_heads → q, k, v) calls `record_multi` with a `MultiBackward`, which the
//! tape calls once with the gradients of all its outputs.
//! `tape.rs` walks those nodes in reverse topological order; `gradcheck.rs` is the finite-difference check
//! every op's tests use. The node traits are defined with the tensor (`tensor/node.rs`), which stores
//! them, and grad mode (`no_grad`) in `runtime`; both are re-exported here.

pub mod gradcheck;
pub mod tape;

use std::sync::Arc;

pub use crate::runtime::{NoGradGuard, is_grad_enabled, no_grad, set_grad_enabled};
use crate::tensor::Tensor;
/// The node types live beside the tensor that holds them (`tensor/node.rs`); ops name them from here.
pub use crate::tensor::node::{Backward, MultiBackward, OutputOf};
pub use gradcheck::{GradcheckOptions, assert_gradcheck, gradcheck};

/// Attach `node` to `out` if grad mode is on and any input requires grad; otherwise drop it
/// (freeing whatever it saved) and return `out` unchanged.
pub fn record(out: Tensor, node: impl Backward + 'static) -> Tensor {
    if is_grad_enabled() && node.inputs().iter().any(|t| t.requires_grad()) {
        out.set_grad_fn(Some(Arc::new(node)));
        out.mark_requires_grad();
    }
    out
}

/// `record` for an op with several outputs: every output gets a handle to the one shared `node`.
pub fn record_multi(outs: Vec<Tensor>, node: impl MultiBackward + 'static) -> Vec<Tensor> {
    if is_grad_enabled() && node.inputs().iter().any(|t| t.requires_grad()) {
        let node: Arc<dyn MultiBackward> = Arc::new(node);
        let n_outputs = outs.len();
        for (index, out) in outs.iter().enumerate() {
            out.set_grad_fn(Some(Arc::new(OutputOf { node: node.clone(), index, n_outputs })));
            out.mark_requires_grad();
        }
    }
    outs
}

/// True if an op on these inputs would be recorded (lets ops skip saving state).
pub fn will_record(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}
