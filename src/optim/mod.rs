//! 4. Training: optimizers that update every parameter in place, in ONE call, plus gradient clipping.
//!
//! - `sgd`    SGD with momentum / dampening / Nesterov and L2 weight decay (torch.optim.SGD)
//! - `adamw`  AdamW: decoupled weight decay, bias-corrected moments (torch.optim.AdamW)
//! - `clip`   clip_grad_norm: one global L2 norm over all gradients (torch.nn.utils.clip_grad_norm_)
//!
//! How a step runs: `gather` checks the groups (hyperparameters, duplicates, shapes, shared storage)
//! before anything is written, so an error leaves parameters and state untouched. Then every
//! parameter is locked once, each tensor is cut into fixed `CHUNK`-element pieces, and the pieces of
//! ALL tensors go to the pool together: fifty small tensors and one huge one load the threads alike.
//! The update is elementwise, so the result is bit-identical on any number of threads.

pub mod adamw;
pub mod clip;
pub mod sgd;

pub use adamw::{AdamState, AdamW};
pub use clip::clip_grad_norm;
pub use sgd::Sgd;

use std::collections::HashSet;

use crate::error::{Error, Result, fmt_shape};
use crate::parallel;
use crate::tensor::Tensor;

/// Parameters that share their hyperparameters (torch's `param_groups` entry). `lr` and `weight_decay`
/// belong to every group. The optimizer-specific settings (`betas`, `eps` for AdamW; `momentum`,
/// `dampening`, `nesterov` for SGD) are the group's own when set and the optimizer's when None. An
/// optimizer refuses a group that sets another optimizer's setting (Value): nothing set is ignored.
#[derive(Clone, Debug)]
pub struct ParamGroup {
    pub params: Vec<Tensor>,
    pub lr: f32,
    pub weight_decay: f32,
    /// AdamW's (β1, β2).
    pub betas: Option<(f32, f32)>,
    /// AdamW's eps.
    pub eps: Option<f32>,
    /// SGD's momentum.
    pub momentum: Option<f32>,
    /// SGD's dampening.
    pub dampening: Option<f32>,
    /// SGD's Nesterov switch.
    pub nesterov: Option<bool>,
}

impl ParamGroup {
    /// A group with its own lr and weight decay and the optimizer's other settings.
    pub fn new(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> ParamGroup {
        ParamGroup { params, lr, weight_decay, betas: None, eps: None, momentum: None, dampening: None, nesterov: None }
    }
    /// This group's AdamW (β1, β2).
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> ParamGroup {
        self.betas = Some((beta1, beta2));
        self
    }
    /// This group's AdamW eps.
    pub fn with_eps(mut self, eps: f32) -> ParamGroup {
        self.eps = Some(eps);
        self
    }
    /// This group's SGD momentum.
    pub fn with_momentum(mut self, momentum: f32) -> ParamGroup {
        self.momentum = Some(momentum);
        self
    }
    /// This group's SGD dampening.
    pub fn with_dampening(mut self, dampening: f32) -> ParamGroup {
        self.dampening = Some(dampening);
        self
    }
    /// This group's SGD Nesterov switch.
    pub fn with_nesterov(mut self, nesterov: bool) -> ParamGroup {
        self.nesterov = Some(nesterov);
        self
    }

    /// The names of the settings this group sets (for refusing the ones an optimizer does not have).
    fn set_settings(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, set) in [
            ("betas", self.betas.is_some()),
            ("eps", self.eps.is_some()),
            ("momentum", self.momentum.is_some()),
            ("dampening", self.dampening.is_some()),
            ("nesterov", self.nesterov.is_some()),
        ] {
            if set {
                out.push(name);
            }
        }
        out
    }
}

/// Refuse a group that sets a setting outside `takes` (the optimizer-specific settings `op` has).
pub(crate) fn refuse_foreign(op: &'static str, takes: &[&str], groups: &[ParamGroup]) -> Result<()> {
    for (gi, g) in groups.iter().enumerate() {
        if let Some(name) = g.set_settings().into_iter().find(|n| !takes.contains(n)) {
            return Err(Error::value(
                op,
                format!(
                    "group {gi} sets {name}, which {op} does not have (it takes lr, weight_decay, {})",
                    takes.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// lr and weight_decay of every group: each must be >= 0 (Value, naming the group).
pub(crate) fn check_lr_and_decay(op: &'static str, groups: &[ParamGroup]) -> Result<()> {
    for (gi, group) in groups.iter().enumerate() {
        if group.lr.is_nan() || group.lr < 0.0 {
            return Err(Error::value(op, format!("invalid learning rate {} in group {gi} (must be >= 0)", group.lr)));
        }
        if group.weight_decay.is_nan() || group.weight_decay < 0.0 {
            return Err(Error::value(
                op,
                format!("invalid weight_decay {} in group {gi} (must be >= 0)", group.weight_decay),
            ));
        }
    }
    Ok(())
}

/// Elements per piece of work. Fixed (never derived from the thread count), a multiple of 8.
pub(crate) const CHUNK: usize = parallel::GRAIN;

/// A parameter that gets updated this step, with its gradient and its group's hyperparameters.
pub(crate) struct Slot {
    pub param: Tensor,
    pub grad: Tensor,
    /// Index of its group (for the group's optimizer-specific settings).
    pub group: usize,
    pub lr: f32,
    pub weight_decay: f32,
    /// "parameter 2 of group 0", for messages.
    pub name: String,
}

/// Check every group and return the parameters that have a gradient, in group order.
/// Errors (nothing is written yet): lr or weight_decay negative or nan (Value); a parameter listed
/// twice (Value); a gradient whose shape differs from its parameter (Shape); storage shared between
/// two updated parameters or between a parameter and a gradient (Value: locking it twice would hang).
pub(crate) fn gather(op: &'static str, groups: &[ParamGroup]) -> Result<Vec<Slot>> {
    check_lr_and_decay(op, groups)?;
    let mut seen = HashSet::new();
    let mut slots = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        for (pi, p) in group.params.iter().enumerate() {
            let name = format!("parameter {pi} of group {gi}");
            if !seen.insert(p.id()) {
                return Err(Error::value(op, format!("{name} appears more than once in the parameter groups")));
            }
            let Some(grad) = p.grad() else { continue };
            if grad.shape() != p.shape() {
                return Err(Error::shape(
                    op,
                    format!(
                        "gradient shape {} does not match shape {} of {name}",
                        fmt_shape(grad.shape()),
                        fmt_shape(p.shape())
                    ),
                ));
            }
            slots.push(Slot {
                param: p.clone(),
                grad,
                group: gi,
                lr: group.lr,
                weight_decay: group.weight_decay,
                name,
            });
        }
    }
    // Pairwise storage check: a handful of pointer compares per pair, cheap for hundreds of tensors.
    for (i, a) in slots.iter().enumerate() {
        if a.grad.same_storage(&a.param) {
            return Err(Error::value(
                op,
                format!("the gradient of {} shares storage with the parameter itself", a.name),
            ));
        }
        for b in &slots[i + 1..] {
            let clash = if a.param.same_storage(&b.param) {
                Some("share storage (one is a view or detached copy of the other)")
            } else if a.param.same_storage(&b.grad) || a.grad.same_storage(&b.param) {
                Some("share storage between a parameter and a gradient")
            } else if a.grad.same_storage(&b.grad) {
                Some("have gradients that share storage")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(Error::value(op, format!("{} and {} {what}", a.name, b.name)));
            }
        }
    }
    Ok(slots)
}

/// Run `f` on every item: on the pool when there is more than one chunk's worth of elements,
/// inline otherwise (a tiny step should not pay for waking threads). Items are independent, so the
/// order they run in does not matter.
pub(crate) fn run_chunks<T: Send>(items: Vec<T>, total_elems: usize, f: impl Fn(T) + Send + Sync) {
    use rayon::prelude::*;
    if total_elems <= CHUNK || items.len() <= 1 {
        items.into_iter().for_each(f);
    } else {
        parallel::install(|| items.into_par_iter().for_each(f));
    }
}

/// Helpers the optimizer tests share.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::tensor::Tensor;
    use crate::tensor::random::randn;

    pub fn param(shape: &[usize]) -> Tensor {
        randn(shape, 0.0, 1.0).unwrap().requires_grad_(true)
    }
    pub fn set_grad(p: &Tensor, g: Vec<f32>) {
        p.set_grad(Some(Tensor::new(g, p.shape()).unwrap())).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::random::Rng;

    /// Tensors of mixed sizes (some above CHUNK, some tiny), with seeded grads. A local generator, not
    /// the global one: other tests reseed the global generator concurrently.
    fn model(seed: u64) -> Vec<Tensor> {
        let mut rng = Rng::new(seed);
        let mut randn = |s: &[usize], _m: f32, _sd: f32| -> Result<Tensor> {
            Tensor::new((0..crate::tensor::numel(s)).map(|_| rng.normal() as f32).collect(), s)
        };
        [vec![2, CHUNK + 5], vec![100], vec![CHUNK + 1], vec![7], vec![3, CHUNK]]
            .iter()
            .map(|s| {
                let p = randn(s, 0.0, 1.0).unwrap().requires_grad_(true);
                p.set_grad(Some(randn(s, 0.0, 1.0).unwrap())).unwrap();
                p
            })
            .collect()
    }

    /// Three AdamW steps, three Nesterov-SGD steps and a clip; every number that comes out.
    fn run() -> Vec<Vec<f32>> {
        let (a, b) = (model(1), model(2));
        let groups = |ps: &[Tensor]| {
            [ParamGroup::new(ps[..3].to_vec(), 1e-2, 0.1), ParamGroup::new(ps[3..].to_vec(), 3e-3, 0.0)]
        };
        let mut adam = AdamW::new(0.9, 0.95, 1e-8).unwrap();
        let mut sgd = Sgd::new(0.9, 0.0, true).unwrap();
        let mut out = Vec::new();
        for _ in 0..3 {
            adam.step(&groups(&a)).unwrap();
            sgd.step(&groups(&b)).unwrap();
        }
        out.push(vec![clip_grad_norm(&a, 1.0).unwrap()]);
        for p in a.iter().chain(&b) {
            out.push(p.to_vec());
            out.push(p.grad().unwrap().to_vec());
        }
        out
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (one, two, all) =
            (parallel::with_threads(1, run), parallel::with_threads(2, run), parallel::with_threads(0, run));
        for (i, ((x, y), z)) in one.iter().zip(&two).zip(&all).enumerate() {
            assert!(x == y && x == z, "output {i} differs between 1, 2 and all threads");
        }
    }

    /// `cargo test --release optim::tests::speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn speed() {
        let n = 10_000_000 / 50;
        let ps: Vec<Tensor> = (0..50)
            .map(|_| {
                let p = Tensor::full(&[n], 0.5).unwrap();
                p.set_grad(Some(Tensor::full(&[n], 0.1).unwrap())).unwrap();
                p
            })
            .collect();
        let groups = [ParamGroup::new(ps.clone(), 1e-3, 0.1)];
        let mut adam = AdamW::new(0.9, 0.95, 1e-8).unwrap();
        let mut sgd = Sgd::new(0.9, 0.0, false).unwrap();
        adam.step(&groups).unwrap();
        sgd.step(&groups).unwrap();
        for threads in [1, 2] {
            parallel::with_threads(threads, || {
                let reps = 10;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    adam.step(&groups).unwrap();
                }
                let ta = t.elapsed().as_secs_f64() / reps as f64;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    sgd.step(&groups).unwrap();
                }
                let ts = t.elapsed().as_secs_f64() / reps as f64;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    clip_grad_norm(&ps, 1e9).unwrap();
                }
                let tc = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "1e7 params / 50 tensors, {threads} thread(s): adamw {:.1} ms, sgd {:.1} ms, clip {:.1} ms",
                    ta * 1e3,
                    ts * 1e3,
                    tc * 1e3
                );
            });
        }
    }
}
