//! AdamW (Loshchilov & Hutter), with torch.optim.AdamW's semantics. For each parameter p with a gradient g,
//! in this order:
//!
//! ```text
//! t += 1
//! p ← p · (1 − lr·wd)                          decoupled weight decay, applied first
//! m ← β1·m + (1 − β1)·g
//! v ← β2·v + (1 − β2)·g²
//! p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + eps)     = p − lr·m̂ / (√v̂ + eps)
//! ```
//!
//! lr, weight decay, betas and eps are per group (`ParamGroup`; betas and eps default to the optimizer's).
//! The bias corrections and the step size are computed in f64 once per tensor; the elementwise update
//! runs in f32, like torch's. Parameters whose grad is None are skipped (no state is created, `t` does
//! not move). State is keyed by `Tensor::id()`, so keep using the same parameter handles across steps.

use std::collections::HashMap;

use super::{CHUNK, ParamGroup, check_lr_and_decay, gather, refuse_foreign, run_chunks};
use crate::error::{Error, Result};
use crate::tensor::alloc_zeros;

const OP: &str = "adamw";

/// Per-parameter state: first and second moments (same length as the parameter) and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamState {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

/// The optimizer's betas and eps are the defaults of groups that do not set their own.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    state: HashMap<u64, AdamState>,
}

/// One group's (β1, β2, eps).
#[derive(Clone, Copy)]
struct Settings {
    beta1: f32,
    beta2: f32,
    eps: f32,
}

/// Betas in [0, 1), eps >= 0 (Value). `at` says where ("" or " in group 2").
fn check_settings(s: Settings, at: &str) -> Result<()> {
    for (name, b) in [("beta1", s.beta1), ("beta2", s.beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::value(OP, format!("invalid {name} {b}{at} (must be in [0, 1))")));
        }
    }
    if s.eps.is_nan() || s.eps < 0.0 {
        return Err(Error::value(OP, format!("invalid eps {}{at} (must be >= 0)", s.eps)));
    }
    Ok(())
}

/// Everything one tensor's update needs, computed once per step.
#[derive(Clone, Copy)]
struct Coef {
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

/// One piece of one tensor: `CHUNK` elements (fewer at a tensor's end).
struct Piece<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    k: Coef,
}

fn update(piece: Piece<'_>) {
    let Piece { p, g, m, v, k } = piece;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let decayed = *p * k.decay;
        *m = k.beta1 * *m + k.one_minus_beta1 * g;
        *v = k.beta2 * *v + k.one_minus_beta2 * g * g;
        let denom = v.sqrt() / k.bias2_sqrt + k.eps;
        *p = decayed - k.step_size * (*m / denom);
    }
}

impl AdamW {
    /// The settings a group may set besides lr and weight_decay (the keys of a Python `param_groups`
    /// entry, with "params", "lr" and "weight_decay").
    pub const SETTINGS: [&'static str; 2] = ["betas", "eps"];

    /// torch's defaults are `AdamW::new(0.9, 0.999, 1e-8)`. Errors: a beta outside [0, 1) or eps < 0 (Value).
    pub fn new(beta1: f32, beta2: f32, eps: f32) -> Result<AdamW> {
        let opt = AdamW { beta1, beta2, eps, state: HashMap::new() };
        opt.check()?;
        Ok(opt)
    }

    fn check(&self) -> Result<()> {
        check_settings(Settings { beta1: self.beta1, beta2: self.beta2, eps: self.eps }, "")
    }

    /// Each group's (β1, β2, eps): its own or the optimizer's, checked. Errors (Value): a bad lr,
    /// weight_decay, beta or eps, or an SGD-only setting, naming the group.
    fn settings(&self, groups: &[ParamGroup]) -> Result<Vec<Settings>> {
        self.check()?;
        refuse_foreign(OP, &Self::SETTINGS, groups)?;
        check_lr_and_decay(OP, groups)?;
        let mut out = Vec::with_capacity(groups.len());
        for (gi, g) in groups.iter().enumerate() {
            let (beta1, beta2) = g.betas.unwrap_or((self.beta1, self.beta2));
            let s = Settings { beta1, beta2, eps: g.eps.unwrap_or(self.eps) };
            check_settings(s, &format!(" in group {gi}"))?;
            out.push(s);
        }
        Ok(out)
    }

    /// Check every group's settings without stepping (the errors `step` would give for them).
    pub fn check_groups(&self, groups: &[ParamGroup]) -> Result<()> {
        self.settings(groups).map(|_| ())
    }

    /// One AdamW step over every parameter of every group, in place, each with its group's settings.
    /// Errors (checked before anything is written): bad betas/eps/lr/weight_decay, an SGD-only setting
    /// in a group or a parameter listed twice (Value); a gradient or a stored
    /// state whose size differs from its parameter (Shape); parameters sharing storage (Value).
    pub fn step(&mut self, groups: &[ParamGroup]) -> Result<()> {
        let settings = self.settings(groups)?;
        let slots = gather(OP, groups)?;
        // State: check what exists, allocate what is missing, insert only once every allocation worked.
        let mut fresh = Vec::new();
        for s in &slots {
            let n = s.param.numel();
            match self.state.get(&s.param.id()) {
                Some(st) if st.m.len() != n || st.v.len() != n => {
                    return Err(Error::shape(
                        OP,
                        format!(
                            "stored state has {} / {} moment values but {} has {n} elements",
                            st.m.len(),
                            st.v.len(),
                            s.name
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    fresh.push((s.param.id(), AdamState { m: alloc_zeros(OP, n)?, v: alloc_zeros(OP, n)?, step: 0 }))
                }
            }
        }
        self.state.extend(fresh);

        // Borrow each slot's state mutably (disjoint entries of the map), lined up with `slots`.
        let index: HashMap<u64, usize> = slots.iter().enumerate().map(|(i, s)| (s.param.id(), i)).collect();
        let mut states: Vec<(usize, &mut AdamState)> =
            self.state.iter_mut().filter_map(|(id, st)| index.get(id).map(|&i| (i, st))).collect();
        states.sort_unstable_by_key(|(i, _)| *i);
        debug_assert_eq!(states.len(), slots.len());

        let mut params: Vec<_> = slots.iter().map(|s| s.param.data_mut()).collect();
        let grads: Vec<_> = slots.iter().map(|s| s.grad.data()).collect();
        let mut pieces = Vec::new();
        let mut total = 0;
        for ((slot, (_, st)), (p, g)) in slots.iter().zip(states).zip(params.iter_mut().zip(&grads)) {
            let Settings { beta1, beta2, eps } = settings[slot.group];
            st.step += 1;
            let t = st.step as f64;
            let bias1 = 1.0 - (beta1 as f64).powf(t);
            let bias2 = 1.0 - (beta2 as f64).powf(t);
            let k = Coef {
                decay: (1.0 - slot.lr as f64 * slot.weight_decay as f64) as f32,
                beta1,
                one_minus_beta1: (1.0 - beta1 as f64) as f32,
                beta2,
                one_minus_beta2: (1.0 - beta2 as f64) as f32,
                step_size: (slot.lr as f64 / bias1) as f32,
                bias2_sqrt: bias2.sqrt() as f32,
                eps,
            };
            total += p.len();
            let chunks =
                p.chunks_mut(CHUNK).zip(g.chunks(CHUNK)).zip(st.m.chunks_mut(CHUNK)).zip(st.v.chunks_mut(CHUNK));
            pieces.extend(chunks.map(|(((p, g), m), v)| Piece { p, g, m, v, k }));
        }
        run_chunks(pieces, total, update);
        Ok(())
    }

    /// The state of the parameter with this `Tensor::id()`, if it has taken a step.
    pub fn state_for(&self, id: u64) -> Option<&AdamState> {
        self.state.get(&id)
    }

    /// Set (e.g. from a checkpoint) the state of the parameter with this id. Errors: m and v of different
    /// lengths (Shape). The length against the parameter is checked at the next `step` (Shape).
    pub fn set_state(&mut self, id: u64, st: AdamState) -> Result<()> {
        if st.m.len() != st.v.len() {
            return Err(Error::shape(
                OP,
                format!("state moments differ in length: m has {}, v has {}", st.m.len(), st.v.len()),
            ));
        }
        self.state.insert(id, st);
        Ok(())
    }

    /// Ids of all parameters that have state, sorted (for writing checkpoints).
    pub fn state_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.state.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Forget all state (every parameter starts again at step 0 with zero moments).
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

    /// Independent f64 AdamW written straight from the paper/torch docs formula.
    struct RefAdam {
        p: Vec<f64>,
        m: Vec<f64>,
        v: Vec<f64>,
        t: i32,
    }
    impl RefAdam {
        fn new(p: &[f32]) -> RefAdam {
            RefAdam { p: p.iter().map(|&x| x as f64).collect(), m: vec![0.0; p.len()], v: vec![0.0; p.len()], t: 0 }
        }
        fn step(&mut self, g: &[f32], lr: f64, wd: f64, (b1, b2, eps): (f64, f64, f64)) {
            self.t += 1;
            for i in 0..self.p.len() {
                let g = g[i] as f64;
                self.p[i] -= lr * wd * self.p[i];
                self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
                self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
                let mhat = self.m[i] / (1.0 - b1.powi(self.t));
                let vhat = self.v[i] / (1.0 - b2.powi(self.t));
                self.p[i] -= lr * mhat / (vhat.sqrt() + eps);
            }
        }
    }

    #[test]
    fn single_step_by_hand() {
        // p = 1, g = 0.5, lr = 0.1, wd = 0.01, betas (0.9, 0.999), eps = 1e-8:
        //   decay:  p = 1 · (1 − 0.1·0.01)            = 0.999
        //   m = 0.1·0.5 = 0.05,  v = 0.001·0.25        = 0.00025
        //   m̂ = 0.05 / (1 − 0.9) = 0.5,  v̂ = 0.00025 / (1 − 0.999) = 0.25,  √v̂ = 0.5
        //   p = 0.999 − 0.1 · 0.5 / (0.5 + 1e-8)        = 0.899 (+2e-9)
        // Without bias correction the move would be 0.1·0.05/(0.0158+1e-8) ≈ 0.316: step 1 shows it is on.
        // g = −2 on a second element with wd 0.01: p = 2·0.999 − 0.1·(−1) = 2.098 (sign-like first step).
        let p = Tensor::new(vec![1.0, 2.0], &[2]).unwrap().requires_grad_(true);
        set_grad(&p, vec![0.5, -2.0]);
        let mut opt = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        opt.step(&[ParamGroup::new(vec![p.clone()], 0.1, 0.01)]).unwrap();
        let got = p.to_vec();
        assert!((got[0] - 0.899).abs() < 1e-6, "p[0] = {} (want 0.899)", got[0]);
        assert!((got[1] - 2.098).abs() < 1e-6, "p[1] = {} (want 2.098)", got[1]);
        let st = opt.state_for(p.id()).unwrap();
        assert_eq!(st.step, 1);
        // (0.999 as f32 is 0.99900001, so v is 0.00025 · (1 − 1.3e-5))
        assert!((st.m[0] - 0.05).abs() < 1e-7 && (st.v[0] - 0.00025).abs() < 1e-8, "m {} v {}", st.m[0], st.v[0]);
    }

    #[test]
    fn several_steps_match_f64_reference_with_groups_and_skipped_params() {
        manual_seed(7);
        let betas = (0.9f32, 0.95f32, 1e-6f32);
        let rb = (betas.0 as f64, betas.1 as f64, betas.2 as f64);
        // group 0: decayed matrices (lr 3e-2, wd 0.1); group 1: biases, another lr, no decay;
        // `frozen` never gets a grad, `late` gets one only from step 3 on.
        let (w1, w2, b1) = (param(&[4, 5]), param(&[3, 7]), param(&[5]));
        let (frozen, late) = (param(&[6]), param(&[2, 2]));
        let groups = [
            ParamGroup::new(vec![w1.clone(), frozen.clone(), w2.clone()], 3e-2, 0.1),
            ParamGroup::new(vec![b1.clone(), late.clone()], 1e-2, 0.0),
        ];
        let frozen0 = frozen.to_vec();
        let mut refs: Vec<RefAdam> = [&w1, &w2, &b1, &late].iter().map(|t| RefAdam::new(&t.to_vec())).collect();
        let hyper = [(3e-2f32, 0.1f32), (3e-2, 0.1), (1e-2, 0.0), (1e-2, 0.0)];
        let mut opt = AdamW::new(betas.0, betas.1, betas.2).unwrap();
        for step in 1..=6 {
            for (i, t) in [&w1, &w2, &b1, &late].iter().enumerate() {
                if i == 3 && step < 3 {
                    continue;
                }
                let g = randn(t.shape(), 0.0, 1.0).unwrap().to_vec();
                refs[i].step(&g, hyper[i].0 as f64, hyper[i].1 as f64, rb);
                set_grad(t, g);
            }
            opt.step(&groups).unwrap();
            for (i, t) in [&w1, &w2, &b1, &late].iter().enumerate() {
                assert_close(&format!("step {step} tensor {i}"), &t.to_vec(), &refs[i].p, 2e-6, 2e-6);
            }
            assert_eq!(frozen.to_vec(), frozen0, "a parameter without grad moved");
            assert!(opt.state_for(frozen.id()).is_none(), "state created for a parameter without grad");
            assert_eq!(opt.state_for(late.id()).map(|s| s.step), if step < 3 { None } else { Some(step - 2) });
            // the step can keep the grads from before: zero them as a training loop would
            for t in [&w1, &w2, &b1, &late] {
                t.zero_grad();
            }
        }
        assert_eq!(opt.state_for(w1.id()).unwrap().step, 6);
        let m_ref: Vec<f64> = refs[0].m.clone();
        assert_close("first moment", &opt.state_for(w1.id()).unwrap().m, &m_ref, 1e-6, 1e-6);
    }

    #[test]
    fn each_group_uses_its_own_betas_and_eps() {
        manual_seed(8);
        // group 0 sets nothing (the optimizer's 0.9, 0.999, 1e-8); the others set betas, eps or both.
        // β1 = 0 and a large eps make the groups' updates far apart, so a mixed-up setting shows.
        let settings = [(0.9f32, 0.999f32, 1e-8f32), (0.0, 0.5, 1e-8), (0.9, 0.999, 0.1), (0.5, 0.9, 1e-3)];
        let ps: Vec<Tensor> = settings.iter().map(|_| param(&[4, 3])).collect();
        let groups = [
            ParamGroup::new(vec![ps[0].clone()], 1e-2, 0.1),
            ParamGroup::new(vec![ps[1].clone()], 3e-2, 0.0).with_betas(0.0, 0.5),
            ParamGroup::new(vec![ps[2].clone()], 1e-2, 0.0).with_eps(0.1),
            ParamGroup::new(vec![ps[3].clone()], 2e-2, 0.05).with_betas(0.5, 0.9).with_eps(1e-3),
        ];
        let hyper = [(1e-2f32, 0.1f32), (3e-2, 0.0), (1e-2, 0.0), (2e-2, 0.05)];
        let mut refs: Vec<RefAdam> = ps.iter().map(|t| RefAdam::new(&t.to_vec())).collect();
        let mut opt = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        for step in 1..=5 {
            for (i, t) in ps.iter().enumerate() {
                let g = randn(t.shape(), 0.0, 1.0).unwrap().to_vec();
                let (b1, b2, eps) = settings[i];
                refs[i].step(&g, hyper[i].0 as f64, hyper[i].1 as f64, (b1 as f64, b2 as f64, eps as f64));
                set_grad(t, g);
            }
            opt.step(&groups).unwrap();
            for (i, t) in ps.iter().enumerate() {
                assert_close(&format!("group {i} {:?} step {step}", settings[i]), &t.to_vec(), &refs[i].p, 2e-6, 2e-6);
            }
        }
    }

    #[test]
    fn group_settings_are_checked_and_sgd_settings_refused() {
        let p = Tensor::new(vec![1.0, 2.0], &[2]).unwrap().requires_grad_(true);
        set_grad(&p, vec![1.0, 1.0]);
        let mut opt = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        let g = || ParamGroup::new(vec![p.clone()], 0.1, 0.0);
        let takes = "(it takes lr, weight_decay, betas, eps)";
        let cases = [
            (g().with_betas(1.0, 0.9), "adamw: invalid beta1 1 in group 0 (must be in [0, 1))".to_string()),
            (g().with_betas(0.9, -0.5), "adamw: invalid beta2 -0.5 in group 0 (must be in [0, 1))".to_string()),
            (g().with_eps(f32::NAN), "adamw: invalid eps NaN in group 0 (must be >= 0)".to_string()),
            (g().with_momentum(0.9), format!("adamw: group 0 sets momentum, which adamw does not have {takes}")),
            (g().with_dampening(0.0), format!("adamw: group 0 sets dampening, which adamw does not have {takes}")),
            (g().with_nesterov(false), format!("adamw: group 0 sets nesterov, which adamw does not have {takes}")),
        ];
        for (group, want) in cases {
            assert_eq!(opt.check_groups(std::slice::from_ref(&group)).unwrap_err().to_string(), want);
            assert_eq!(opt.step(&[group]).unwrap_err().to_string(), want);
        }
        assert_eq!(p.to_vec(), vec![1.0, 2.0], "a refused step wrote to a parameter");
        assert!(opt.state_for(p.id()).is_none(), "a refused step created state");
        let q = Tensor::new(vec![3.0], &[1]).unwrap().requires_grad_(true);
        set_grad(&q, vec![1.0]);
        let e = opt.step(&[ParamGroup::new(vec![q.clone()], 0.1, 0.0), g().with_eps(-1.0)]).unwrap_err();
        assert_eq!(e.to_string(), "adamw: invalid eps -1 in group 1 (must be >= 0)");
        assert_eq!(q.to_vec(), vec![3.0], "the good group moved although another group was refused");
        opt.check_groups(&[g().with_betas(0.0, 0.0).with_eps(0.0)]).unwrap();
    }

    #[test]
    fn state_roundtrip_resumes_identically() {
        manual_seed(3);
        let p = param(&[10]);
        let q = p.deep_clone().requires_grad_(true);
        let mut a = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        let mut b = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        let g1 = randn(&[10], 0.0, 1.0).unwrap().to_vec();
        set_grad(&p, g1.clone());
        a.step(&[ParamGroup::new(vec![p.clone()], 1e-3, 0.0)]).unwrap();
        // copy p's state to q (as a checkpoint load would), then both take the same second step
        set_grad(&q, g1);
        b.step(&[ParamGroup::new(vec![q.clone()], 1e-3, 0.0)]).unwrap();
        b.clear();
        assert!(b.state_for(q.id()).is_none());
        b.set_state(q.id(), a.state_for(p.id()).unwrap().clone()).unwrap();
        assert_eq!(b.state_ids(), vec![q.id()]);
        let g2 = randn(&[10], 0.0, 1.0).unwrap().to_vec();
        set_grad(&p, g2.clone());
        set_grad(&q, g2);
        a.step(&[ParamGroup::new(vec![p.clone()], 1e-3, 0.0)]).unwrap();
        b.step(&[ParamGroup::new(vec![q.clone()], 1e-3, 0.0)]).unwrap();
        assert_eq!(p.to_vec(), q.to_vec());
        assert_eq!(a.state_for(p.id()), b.state_for(q.id()));
    }

    #[test]
    fn errors_are_values_or_shapes_and_leave_everything_untouched() {
        for (b1, b2, eps) in [(1.0, 0.999, 1e-8), (-0.1, 0.9, 1e-8), (0.9, f32::NAN, 1e-8), (0.9, 0.99, -1.0)] {
            let e = AdamW::new(b1, b2, eps).unwrap_err();
            assert!(matches!(e, Error::Value { op: "adamw", .. }), "{e}");
        }
        assert_eq!(AdamW::new(1.0, 0.9, 0.0).unwrap_err().to_string(), "adamw: invalid beta1 1 (must be in [0, 1))");

        let p = Tensor::new(vec![1.0, 2.0], &[2]).unwrap().requires_grad_(true);
        let q = Tensor::new(vec![3.0], &[1]).unwrap().requires_grad_(true);
        set_grad(&p, vec![1.0, 1.0]);
        set_grad(&q, vec![1.0]);
        let mut opt = AdamW::new(0.9, 0.999, 1e-8).unwrap();
        let e = opt.step(&[ParamGroup::new(vec![p.clone()], -1.0, 0.0)]).unwrap_err();
        assert_eq!(e.to_string(), "adamw: invalid learning rate -1 in group 0 (must be >= 0)");
        let e = opt.step(&[ParamGroup::new(vec![p.clone()], 0.1, f32::NAN)]).unwrap_err();
        assert!(matches!(e, Error::Value { .. }), "{e}");
        // duplicate, across groups: q would be updated once before the error if we did not check first
        let e = opt
            .step(&[ParamGroup::new(vec![q.clone(), p.clone()], 0.1, 0.0), ParamGroup::new(vec![p.clone()], 0.1, 0.0)])
            .unwrap_err();
        assert_eq!(e.to_string(), "adamw: parameter 0 of group 1 appears more than once in the parameter groups");
        // a view of a parameter listed as another parameter (would deadlock on the lock)
        let e = opt.step(&[ParamGroup::new(vec![p.clone(), p.detach().requires_grad_(true)], 0.1, 0.0)]);
        assert!(e.is_ok(), "the detached view has no grad, so it is not updated");
        let v = p.detach().requires_grad_(true);
        set_grad(&v, vec![1.0, 1.0]);
        let before = p.to_vec();
        let e = opt.step(&[ParamGroup::new(vec![p.clone(), v], 0.1, 0.0)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "adamw: parameter 0 of group 0 and parameter 1 of group 0 share storage (one is a view or detached copy of the other)"
        );
        // a gradient that is the parameter's own storage
        let r = Tensor::new(vec![1.0], &[1]).unwrap().requires_grad_(true);
        r.set_grad(Some(r.detach())).unwrap();
        assert!(matches!(opt.step(&[ParamGroup::new(vec![r], 0.1, 0.0)]), Err(Error::Value { .. })));
        assert_eq!(p.to_vec(), before, "a failed step wrote to a parameter");
        assert_eq!(opt.state_for(p.id()).unwrap().step, 1, "a failed step moved the step count");
        // state of the wrong size (from a bad checkpoint)
        opt.set_state(q.id(), AdamState { m: vec![0.0; 3], v: vec![0.0; 3], step: 4 }).unwrap();
        let e = opt.step(&[ParamGroup::new(vec![q.clone()], 0.1, 0.0)]).unwrap_err();
        assert!(matches!(e, Error::Shape { op: "adamw", .. }), "{e}");
        let e = opt.set_state(q.id(), AdamState { m: vec![0.0; 1], v: vec![], step: 1 }).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
    }

    #[test]
    fn empty_and_zero_lr_edge_cases() {
        let e = Tensor::zeros(&[0, 3]).unwrap().requires_grad_(true);
        e.set_grad(Some(Tensor::zeros(&[0, 3]).unwrap())).unwrap();
        let p = Tensor::new(vec![1.0], &[1]).unwrap().requires_grad_(true);
        set_grad(&p, vec![1.0]);
        let mut opt = AdamW::new(0.0, 0.0, 0.0).unwrap();
        opt.step(&[ParamGroup::new(vec![e.clone(), p.clone()], 0.0, 0.5)]).unwrap();
        assert_eq!(p.to_vec(), vec![1.0], "lr 0 must not move anything");
        assert_eq!(opt.state_for(e.id()).unwrap().step, 1);
        opt.step(&[]).unwrap();
    }
}
