//! Stochastic gradient descent with torch.optim.SGD's semantics. For each parameter p with a gradient g:
//!
//! ```text
//! d ← g + wd·p                                  weight decay is L2: it goes into the gradient
//! if momentum ≠ 0:
//!     buf ← d                 on the first step (no buffer yet)
//!     buf ← μ·buf + (1 − dampening)·d           afterwards
//!     d ← d + μ·buf  if nesterov,  else  d ← buf
//! p ← p − lr·d
//! ```
//!
//! lr, weight decay, momentum, dampening and nesterov are per group (`ParamGroup`; the last three default
//! to the optimizer's). Parameters whose grad is None are skipped. With momentum 0 there is no state at all. The momentum
//! buffers are keyed by `Tensor::id()`, so keep using the same parameter handles across steps.

use std::collections::HashMap;

use super::{CHUNK, ParamGroup, check_lr_and_decay, gather, refuse_foreign, run_chunks};
use crate::error::{Error, Result};
use crate::tensor::alloc_zeros;

const OP: &str = "sgd";

/// The optimizer's momentum, dampening and nesterov are the defaults of groups that do not set their own.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
    state: HashMap<u64, Vec<f32>>,
}

#[derive(Clone, Copy)]
struct Coef {
    lr: f32,
    weight_decay: f32,
    momentum: f32,
    one_minus_dampening: f32,
    nesterov: bool,
    /// The buffer does not exist yet: set it to d instead of updating it.
    first: bool,
}

struct Piece<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    /// None when momentum is 0.
    buf: Option<&'a mut [f32]>,
    k: Coef,
}

fn update(piece: Piece<'_>) {
    let Piece { p, g, buf, k } = piece;
    match buf {
        None => {
            for (p, &g) in p.iter_mut().zip(g) {
                let d = g + k.weight_decay * *p;
                *p -= k.lr * d;
            }
        }
        Some(buf) => {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                let d = g + k.weight_decay * *p;
                *b = if k.first { d } else { k.momentum * *b + k.one_minus_dampening * d };
                let d = if k.nesterov { d + k.momentum * *b } else { *b };
                *p -= k.lr * d;
            }
        }
    }
}

/// One group's (momentum, dampening, nesterov).
#[derive(Clone, Copy)]
struct Settings {
    momentum: f32,
    dampening: f32,
    nesterov: bool,
}

/// momentum >= 0, dampening not nan, nesterov only with momentum > 0 and no dampening (Value, as torch).
/// `at` says where ("" or " in group 2").
fn check_settings(s: Settings, at: &str) -> Result<()> {
    if s.momentum.is_nan() || s.momentum < 0.0 {
        return Err(Error::value(OP, format!("invalid momentum {}{at} (must be >= 0)", s.momentum)));
    }
    if s.dampening.is_nan() {
        return Err(Error::value(OP, format!("invalid dampening nan{at}")));
    }
    if s.nesterov && (s.momentum <= 0.0 || s.dampening != 0.0) {
        return Err(Error::value(
            OP,
            format!(
                "nesterov momentum requires a momentum > 0 and zero dampening{at} (got momentum {}, dampening {})",
                s.momentum, s.dampening
            ),
        ));
    }
    Ok(())
}

impl Sgd {
    /// The settings a group may set besides lr and weight_decay (the keys of a Python `param_groups`
    /// entry, with "params", "lr" and "weight_decay").
    pub const SETTINGS: [&'static str; 3] = ["momentum", "dampening", "nesterov"];

    /// Plain SGD is `Sgd::new(0.0, 0.0, false)`. Errors (Value): momentum < 0 or nan, dampening nan,
    /// nesterov without momentum > 0 and dampening == 0 (as torch).
    pub fn new(momentum: f32, dampening: f32, nesterov: bool) -> Result<Sgd> {
        let opt = Sgd { momentum, dampening, nesterov, state: HashMap::new() };
        opt.check()?;
        Ok(opt)
    }

    fn check(&self) -> Result<()> {
        check_settings(Settings { momentum: self.momentum, dampening: self.dampening, nesterov: self.nesterov }, "")
    }

    /// Each group's (momentum, dampening, nesterov): its own or the optimizer's, checked. Errors (Value):
    /// a bad lr, weight_decay, momentum, dampening or nesterov combination, or an AdamW-only setting,
    /// naming the group.
    fn settings(&self, groups: &[ParamGroup]) -> Result<Vec<Settings>> {
        self.check()?;
        refuse_foreign(OP, &Self::SETTINGS, groups)?;
        check_lr_and_decay(OP, groups)?;
        let mut out = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            let s = Settings {
                momentum: g.momentum.unwrap_or(self.momentum),
                dampening: g.dampening.unwrap_or(self.dampening),
                nesterov: g.nesterov.unwrap_or(self.nesterov),
            };
            check_settings(s, &format!(" in group {gi}"))?;
            out.push(s);
        }
        Ok(out)
    }

    /// Check every group's settings without stepping (the errors `step` would give for them).
    pub fn check_groups(&self, groups: &[ParamGroup]) -> Result<()> {
        self.settings(groups).map(|_| ())
    }

    /// One SGD step over every parameter of every group, in place, each with its group's settings.
    /// Errors (checked before anything is written): bad momentum/dampening/lr/weight_decay, an
    /// AdamW-only setting in a group or a parameter listed twice (Value); a gradient or stored buffer
    /// whose size differs from its parameter (Shape); parameters sharing storage (Value).
    pub fn step(&mut self, groups: &[ParamGroup]) -> Result<()> {
        let settings = self.settings(groups)?;
        let slots = gather(OP, groups)?;
        // A parameter keeps a buffer only when its group uses momentum.
        let use_momentum: Vec<bool> = slots.iter().map(|s| settings[s.group].momentum != 0.0).collect();
        // Buffers: check the existing ones, allocate the missing ones (marked `first`).
        let mut first = vec![false; slots.len()];
        let mut fresh = Vec::new();
        for (i, s) in slots.iter().enumerate().filter(|&(i, _)| use_momentum[i]) {
            let n = s.param.numel();
            match self.state.get(&s.param.id()) {
                Some(b) if b.len() != n => {
                    return Err(Error::shape(
                        OP,
                        format!("stored momentum buffer has {} values but {} has {n} elements", b.len(), s.name),
                    ));
                }
                Some(_) => {}
                None => {
                    fresh.push((s.param.id(), alloc_zeros(OP, n)?));
                    first[i] = true;
                }
            }
        }
        self.state.extend(fresh);
        let mut bufs: Vec<Option<&mut Vec<f32>>> = (0..slots.len()).map(|_| None).collect();
        let index: HashMap<u64, usize> = slots.iter().enumerate().map(|(i, s)| (s.param.id(), i)).collect();
        for (id, b) in self.state.iter_mut() {
            if let Some(&i) = index.get(id).filter(|&&i| use_momentum[i]) {
                bufs[i] = Some(b);
            }
        }

        let mut params: Vec<_> = slots.iter().map(|s| s.param.data_mut()).collect();
        let grads: Vec<_> = slots.iter().map(|s| s.grad.data()).collect();
        let mut pieces = Vec::new();
        let mut total = 0;
        for (i, ((slot, buf), (p, g))) in slots.iter().zip(bufs).zip(params.iter_mut().zip(&grads)).enumerate() {
            let Settings { momentum, dampening, nesterov } = settings[slot.group];
            let k = Coef {
                lr: slot.lr,
                weight_decay: slot.weight_decay,
                momentum,
                one_minus_dampening: (1.0 - dampening as f64) as f32,
                nesterov,
                first: first[i],
            };
            total += p.len();
            match buf {
                Some(buf) => pieces.extend(
                    p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(buf.chunks_mut(CHUNK)).map(|((p, g), b)| Piece {
                        p,
                        g,
                        buf: Some(b),
                        k,
                    }),
                ),
                None => {
                    pieces.extend(p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).map(|(p, g)| Piece { p, g, buf: None, k }))
                }
            }
        }
        run_chunks(pieces, total, update);
        Ok(())
    }

    /// The momentum buffer of the parameter with this `Tensor::id()` (None before its first step with
    /// a momentum, and always while its group's momentum is 0).
    pub fn momentum_buffer(&self, id: u64) -> Option<&[f32]> {
        self.state.get(&id).map(|b| b.as_slice())
    }

    /// Set (e.g. from a checkpoint) a momentum buffer. Its length is checked against the parameter at
    /// the next `step` (Shape).
    pub fn set_momentum_buffer(&mut self, id: u64, buf: Vec<f32>) {
        self.state.insert(id, buf);
    }

    /// Ids of all parameters that have a buffer, sorted (for writing checkpoints).
    pub fn state_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.state.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Forget all momentum buffers.
    pub fn clear(&mut self) {
        self.state.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;
    use crate::tensor::random::{manual_seed, randn};

    use crate::optim::test_util::{param, set_grad};
    use crate::testutil::assert_close;

    /// Independent f64 SGD, following the torch docs pseudo-code.
    struct RefSgd {
        p: Vec<f64>,
        buf: Option<Vec<f64>>,
    }
    impl RefSgd {
        fn step(&mut self, g: &[f32], lr: f64, wd: f64, mu: f64, damp: f64, nesterov: bool) {
            let d: Vec<f64> = g.iter().zip(&self.p).map(|(&g, &p)| g as f64 + wd * p).collect();
            let d = if mu != 0.0 {
                let buf = match self.buf.take() {
                    None => d.clone(),
                    Some(b) => b.iter().zip(&d).map(|(b, d)| mu * b + (1.0 - damp) * d).collect(),
                };
                let out = if nesterov { d.iter().zip(&buf).map(|(d, b)| d + mu * b).collect() } else { buf.clone() };
                self.buf = Some(buf);
                out
            } else {
                d
            };
            for (p, d) in self.p.iter_mut().zip(d) {
                *p -= lr * d;
            }
        }
    }

    #[test]
    fn single_steps_by_hand() {
        // p = 1, g = 0.5, lr = 0.1, wd = 0.2, momentum 0.9, dampening 0.5:
        //   d = 0.5 + 0.2·1 = 0.7;  step 1: buf = d = 0.7 (no dampening on init);  p = 1 − 0.07 = 0.93
        //   step 2 (same g): d = 0.5 + 0.2·0.93 = 0.686;  buf = 0.9·0.7 + 0.5·0.686 = 0.973;  p = 0.93 − 0.0973 = 0.8327
        let p = Tensor::new(vec![1.0], &[1]).unwrap().requires_grad_(true);
        let mut opt = Sgd::new(0.9, 0.5, false).unwrap();
        let groups = [ParamGroup::new(vec![p.clone()], 0.1, 0.2)];
        set_grad(&p, vec![0.5]);
        opt.step(&groups).unwrap();
        assert!((p.to_vec()[0] - 0.93).abs() < 1e-6, "step 1: {}", p.to_vec()[0]);
        assert!((opt.momentum_buffer(p.id()).unwrap()[0] - 0.7).abs() < 1e-6);
        opt.step(&groups).unwrap();
        assert!((p.to_vec()[0] - 0.8327).abs() < 1e-6, "step 2: {}", p.to_vec()[0]);
        // nesterov, p = 1, g = 0.5, lr 0.1, momentum 0.9, no wd: buf = 0.5, d = 0.5 + 0.45 = 0.95, p = 0.905
        let q = Tensor::new(vec![1.0], &[1]).unwrap().requires_grad_(true);
        set_grad(&q, vec![0.5]);
        Sgd::new(0.9, 0.0, true).unwrap().step(&[ParamGroup::new(vec![q.clone()], 0.1, 0.0)]).unwrap();
        assert!((q.to_vec()[0] - 0.905).abs() < 1e-6, "nesterov: {}", q.to_vec()[0]);
    }

    #[test]
    fn several_steps_match_f64_reference() {
        manual_seed(11);
        for (mu, damp, nesterov) in [(0.0, 0.0, false), (0.9, 0.0, false), (0.8, 0.3, false), (0.9, 0.0, true)] {
            let (w, b, frozen, late) = (param(&[3, 4]), param(&[4]), param(&[5]), param(&[2]));
            let groups = [
                ParamGroup::new(vec![w.clone(), frozen.clone()], 0.05, 0.01),
                ParamGroup::new(vec![b.clone(), late.clone()], 0.2, 0.0),
            ];
            let frozen0 = frozen.to_vec();
            let tensors = [&w, &b, &late];
            let hyper = [(0.05f32, 0.01f32), (0.2, 0.0), (0.2, 0.0)];
            let mut refs: Vec<RefSgd> = tensors
                .iter()
                .map(|t| RefSgd { p: t.to_vec().iter().map(|&x| x as f64).collect(), buf: None })
                .collect();
            let mut opt = Sgd::new(mu, damp, nesterov).unwrap();
            for step in 1..=5 {
                for (i, t) in tensors.iter().enumerate() {
                    if i == 2 && step < 3 {
                        continue;
                    }
                    let g = randn(t.shape(), 0.0, 1.0).unwrap().to_vec();
                    refs[i].step(&g, hyper[i].0 as f64, hyper[i].1 as f64, mu as f64, damp as f64, nesterov);
                    set_grad(t, g);
                }
                opt.step(&groups).unwrap();
                for (i, t) in tensors.iter().enumerate() {
                    assert_close(
                        &format!("mu {mu} damp {damp} nesterov {nesterov} step {step} tensor {i}"),
                        &t.to_vec(),
                        &refs[i].p,
                        2e-6,
                        2e-6,
                    );
                    t.zero_grad();
                }
                assert_eq!(frozen.to_vec(), frozen0, "a parameter without grad moved");
                assert!(opt.momentum_buffer(frozen.id()).is_none());
                assert_eq!(opt.momentum_buffer(late.id()).is_some(), mu != 0.0 && step >= 3);
            }
            assert_eq!(opt.state_ids().len(), if mu != 0.0 { 3 } else { 0 });
        }
    }

    #[test]
    fn each_group_uses_its_own_momentum_dampening_and_nesterov() {
        manual_seed(12);
        // the optimizer's defaults (0.5, 0.2, no nesterov) apply to the group that sets nothing
        let cases = [(0.5f32, 0.2f32, false), (0.0, 0.0, false), (0.9, 0.0, true), (0.7, 0.6, false)];
        let ps: Vec<Tensor> = cases.iter().map(|_| param(&[3, 5])).collect();
        let groups = [
            ParamGroup::new(vec![ps[0].clone()], 0.1, 0.0),
            ParamGroup::new(vec![ps[1].clone()], 0.2, 0.1).with_momentum(0.0),
            ParamGroup::new(vec![ps[2].clone()], 0.05, 0.0).with_momentum(0.9).with_dampening(0.0).with_nesterov(true),
            ParamGroup::new(vec![ps[3].clone()], 0.3, 0.01).with_momentum(0.7).with_dampening(0.6),
        ];
        let hyper = [(0.1, 0.0), (0.2, 0.1), (0.05, 0.0), (0.3, 0.01)];
        let mut refs: Vec<RefSgd> =
            ps.iter().map(|t| RefSgd { p: t.to_vec().iter().map(|&x| x as f64).collect(), buf: None }).collect();
        let mut opt = Sgd::new(0.5, 0.2, false).unwrap();
        for step in 1..=4 {
            for (i, t) in ps.iter().enumerate() {
                let g = randn(t.shape(), 0.0, 1.0).unwrap().to_vec();
                let (mu, damp, nesterov) = cases[i];
                refs[i].step(&g, hyper[i].0, hyper[i].1, mu as f64, damp as f64, nesterov);
                set_grad(t, g);
            }
            opt.step(&groups).unwrap();
            for (i, t) in ps.iter().enumerate() {
                assert_close(&format!("group {i} {:?} step {step}", cases[i]), &t.to_vec(), &refs[i].p, 2e-6, 2e-6);
            }
        }
        assert!(opt.momentum_buffer(ps[1].id()).is_none(), "a group with momentum 0 kept a buffer");
        assert!(opt.momentum_buffer(ps[3].id()).is_some());
    }

    #[test]
    fn group_settings_are_checked_and_adamw_settings_refused() {
        let p = Tensor::new(vec![1.0, 2.0], &[2]).unwrap().requires_grad_(true);
        set_grad(&p, vec![1.0, 1.0]);
        let mut opt = Sgd::new(0.9, 0.0, false).unwrap();
        let g = || ParamGroup::new(vec![p.clone()], 0.1, 0.0);
        let cases = [
            (g().with_momentum(-1.0), "sgd: invalid momentum -1 in group 0 (must be >= 0)"),
            (g().with_dampening(f32::NAN), "sgd: invalid dampening nan in group 0"),
            (
                g().with_dampening(0.5).with_nesterov(true),
                "sgd: nesterov momentum requires a momentum > 0 and zero dampening in group 0 (got momentum 0.9, \
                 dampening 0.5)",
            ),
            (
                g().with_betas(0.9, 0.99),
                "sgd: group 0 sets betas, which sgd does not have (it takes lr, weight_decay, momentum, dampening, nesterov)",
            ),
            (
                g().with_eps(1e-6),
                "sgd: group 0 sets eps, which sgd does not have (it takes lr, weight_decay, momentum, dampening, nesterov)",
            ),
        ];
        for (group, want) in cases {
            assert_eq!(opt.check_groups(std::slice::from_ref(&group)).unwrap_err().to_string(), want);
            assert_eq!(opt.step(&[group]).unwrap_err().to_string(), want);
        }
        assert_eq!(p.to_vec(), vec![1.0, 2.0], "a refused step wrote to a parameter");
        assert!(opt.momentum_buffer(p.id()).is_none(), "a refused step created state");
        // the second group is the bad one: the first is not updated either
        let q = Tensor::new(vec![3.0], &[1]).unwrap().requires_grad_(true);
        set_grad(&q, vec![1.0]);
        let e = opt.step(&[ParamGroup::new(vec![q.clone()], 0.1, 0.0), g().with_momentum(f32::NAN)]).unwrap_err();
        assert_eq!(e.to_string(), "sgd: invalid momentum NaN in group 1 (must be >= 0)");
        assert_eq!(q.to_vec(), vec![3.0]);
    }

    #[test]
    fn errors() {
        for (mu, damp, nesterov) in
            [(-0.1, 0.0, false), (f32::NAN, 0.0, false), (0.9, f32::NAN, false), (0.0, 0.0, true), (0.9, 0.1, true)]
        {
            let e = Sgd::new(mu, damp, nesterov).unwrap_err();
            assert!(matches!(e, Error::Value { op: "sgd", .. }), "{e}");
        }
        assert_eq!(
            Sgd::new(0.9, 0.1, true).unwrap_err().to_string(),
            "sgd: nesterov momentum requires a momentum > 0 and zero dampening (got momentum 0.9, dampening 0.1)"
        );
        let p = Tensor::new(vec![1.0, 2.0], &[2]).unwrap().requires_grad_(true);
        set_grad(&p, vec![1.0, 1.0]);
        let mut opt = Sgd::new(0.9, 0.0, false).unwrap();
        let e = opt.step(&[ParamGroup::new(vec![p.clone()], 0.1, -0.5)]).unwrap_err();
        assert_eq!(e.to_string(), "sgd: invalid weight_decay -0.5 in group 0 (must be >= 0)");
        let e = opt.step(&[ParamGroup::new(vec![p.clone(), p.clone()], 0.1, 0.0)]).unwrap_err();
        assert!(matches!(e, Error::Value { .. }), "{e}");
        opt.set_momentum_buffer(p.id(), vec![0.0; 5]);
        let e = opt.step(&[ParamGroup::new(vec![p.clone()], 0.1, 0.0)]).unwrap_err();
        assert_eq!(e.to_string(), "sgd: stored momentum buffer has 5 values but parameter 0 of group 0 has 2 elements");
        assert_eq!(p.to_vec(), vec![1.0, 2.0], "a failed step wrote to a parameter");
        // the public fields can be changed after construction; step re-checks them
        opt.clear();
        opt.nesterov = true;
        opt.dampening = 0.5;
        assert!(matches!(opt.step(&[ParamGroup::new(vec![p.clone()], 0.1, 0.0)]), Err(Error::Value { .. })));
    }

    #[test]
    fn empty_params_and_groups() {
        let e = Tensor::zeros(&[0]).unwrap().requires_grad_(true);
        e.set_grad(Some(Tensor::zeros(&[0]).unwrap())).unwrap();
        let mut opt = Sgd::new(0.9, 0.0, true).unwrap();
        opt.step(&[ParamGroup::new(vec![e.clone()], 0.1, 0.1)]).unwrap();
        assert_eq!(opt.momentum_buffer(e.id()), Some(&[][..]));
        opt.step(&[]).unwrap();
    }
}
