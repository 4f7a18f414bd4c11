//! Reverse-mode autograd. Every op that wants a gradient builds its output, then calls `record(out, node)`
//! with a small struct implementing `Backward`, which holds what the backward needs (inputs or output).
//! `tape.rs` walks those nodes in reverse topological order; `grad_mode.rs` is `no_grad`;
//! `gradcheck.rs` is the finite-difference check every op's tests use.

pub mod grad_mode;
pub mod gradcheck;
pub mod tape;

use std::sync::Arc;

use crate::error::Result;
use crate::tensor::Tensor;
pub use grad_mode::{NoGradGuard, is_grad_enabled, no_grad};
pub use gradcheck::{GradcheckOptions, assert_gradcheck, gradcheck};

/// One recorded op: knows its inputs and how to turn d(loss)/d(out) into d(loss)/d(inputs).
pub trait Backward: Send + Sync {
    /// The op's name, shown as `grad_fn=<name>` and in errors.
    fn name(&self) -> &'static str;
    /// The tensors the op read, in the order `backward` returns their gradients.
    fn inputs(&self) -> Vec<Tensor>;
    /// Given `dout` (same shape as the output) and which inputs need a gradient, return one entry per
    /// input: `Some(grad)` with the input's shape, or `None` where not needed. Runs under no_grad.
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

/// Attach `node` to `out` if grad mode is on and any input requires grad; otherwise drop it
/// (freeing whatever it saved) and return `out` unchanged.
pub fn record(out: Tensor, node: impl Backward + 'static) -> Tensor {
    if is_grad_enabled() && node.inputs().iter().any(|t| t.requires_grad()) {
        out.set_grad_fn(Some(Arc::new(node)));
        out.mark_requires_grad();
    }
    out
}

/// True if an op on these inputs would be recorded (lets ops skip saving state).
pub fn will_record(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}
