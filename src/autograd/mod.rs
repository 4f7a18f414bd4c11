//! Reverse-mode autograd. Every op that wants a gradient builds its output, then calls `record(out, node)`
//! with a small struct implementing `Backward`, which holds what the backward needs (inputs or output).
//! An op with several outputs (split_heads → q, k, v) calls `record_multi` with a `MultiBackward`, which the
//! tape calls once with the gradients of all its outputs.
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
    /// Set only by `record_multi`'s per-output nodes, so the tape can run the shared node once.
    fn as_output_of(&self) -> Option<&OutputOf> {
        None
    }
}

/// One recorded op with several outputs. The tape calls `backward` once, after the gradients of all its
/// outputs reachable from the root have arrived, so the op can write every input gradient in one pass
/// instead of one full-size gradient per output summed by the tape.
pub trait MultiBackward: Send + Sync {
    /// The op's name, shown as `grad_fn=<name>` on every output.
    fn name(&self) -> &'static str;
    /// The tensors the op read, in the order `backward` returns their gradients.
    fn inputs(&self) -> Vec<Tensor>;
    /// `douts[i]` is d(loss)/d(output i), or None where output i got no gradient (it counts as zeros; at
    /// least one is Some). Returns one entry per input, like `Backward::backward`. Runs under no_grad.
    fn backward(&self, douts: &[Option<Tensor>], needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

/// The `grad_fn` of output `index` of a multi-output op: a handle to the shared node.
pub struct OutputOf {
    pub(crate) node: Arc<dyn MultiBackward>,
    pub(crate) index: usize,
    pub(crate) n_outputs: usize,
}

impl OutputOf {
    /// Identifies the shared node (all outputs of one call have the same key).
    pub(crate) fn key(&self) -> usize {
        Arc::as_ptr(&self.node) as *const () as usize
    }
}

impl Backward for OutputOf {
    fn name(&self) -> &'static str {
        self.node.name()
    }
    fn inputs(&self) -> Vec<Tensor> {
        self.node.inputs()
    }
    // The tape never calls this (it groups the outputs through `as_output_of`); it stays correct on its
    // own: this output's gradient with the others taken as zeros.
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>> {
        let mut douts = vec![None; self.n_outputs];
        douts[self.index] = Some(dout.clone());
        self.node.backward(&douts, needs)
    }
    fn as_output_of(&self) -> Option<&OutputOf> {
        Some(self)
    }
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
