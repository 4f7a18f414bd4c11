//! What a tensor stores of the op that made it: a `Backward` node (or, for an op with several outputs, a
//! handle `OutputOf` to one shared `MultiBackward`). Defined here, beside the slot that holds them, so the
//! tensor needs nothing from `autograd`; recording nodes and walking them backward is `autograd`'s job.

use std::sync::Arc;

use super::Tensor;
use crate::error::Result;

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
