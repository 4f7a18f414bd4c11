//! Direct preference optimisation: the policy is trained on preference pairs directly, its implicit reward
//! being β·(log π − log π_ref). With u = (log π_c − log π_ref,c) − (log π_r − log π_ref,r), per pair:
//! - `sigmoid`: −(1−ε)·log σ(βu) − ε·log σ(−βu), Rafailov et al. 2023 "Direct Preference Optimization:
//!   Your Language Model is Secretly a Reward Model"; ε > 0 is cDPO (Mitchell 2023, "A note on DPO with
//!   noisy preferences & relationship to IPO")
//! - `ipo`: (u − 1/(2β))², Azar et al. 2023 "A General Theoretical Paradigm to Understand Learning from
//!   Human Preferences"
//! - `hinge`: max(0, 1 − βu), Zhao et al. 2023 "SLiC-HF: Sequence Likelihood Calibration with Human
//!   Feedback"
//!
//! The loss is the mean over pairs; only the policy log-probs get gradients (the reference is frozen).

use crate::autograd::{record, will_record};
use crate::error::{Error, Result};
use crate::rl::{PairwiseBackward, check_finite, check_range, f64s, log_sigmoid, per_pair, same_shape, sigmoid};
use crate::tensor::Tensor;

/// Which DPO-family loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DpoLossType {
    Sigmoid,
    Ipo,
    Hinge,
}

impl DpoLossType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sigmoid" => Ok(Self::Sigmoid),
            "ipo" => Ok(Self::Ipo),
            "hinge" => Ok(Self::Hinge),
            _ => {
                Err(Error::value("dpo_loss", format!("unknown loss_type {s:?}; expected 'sigmoid', 'ipo' or 'hinge'")))
            }
        }
    }
}

/// The loss (0-d) and the implicit-reward metrics, all detached.
pub struct DpoLoss {
    pub loss: Tensor,
    /// β·(log π_c − log π_ref,c), (B,)
    pub chosen_rewards: Tensor,
    /// β·(log π_r − log π_ref,r), (B,)
    pub rejected_rewards: Tensor,
    /// Mean of chosen_rewards − rejected_rewards.
    pub margin: f64,
    /// Fraction of pairs with chosen_rewards > rejected_rewards (a tie counts as wrong).
    pub accuracy: f64,
}

/// DPO-family loss of per-pair sequence log-probs (B,) of the policy and the frozen reference; see the
/// module docs for the three formulas. `beta` > 0; `label_smoothing` ε in [0, 0.5] is the assumed rate of
/// flipped labels (cDPO) and applies to `sigmoid` only (any other loss refuses ε ≠ 0). Stable for any
/// log-ratio: log σ is a softplus, and u = ±200 gives a finite loss and gradient.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
    loss_type: DpoLossType,
    label_smoothing: f64,
) -> Result<DpoLoss> {
    const OP: &str = "dpo_loss";
    let b = per_pair(OP, "policy_chosen_logps", policy_chosen)?;
    for (name, x) in [
        ("policy_rejected_logps", policy_rejected),
        ("ref_chosen_logps", ref_chosen),
        ("ref_rejected_logps", ref_rejected),
    ] {
        same_shape(OP, "policy_chosen_logps", policy_chosen, name, x)?;
    }
    for (name, x) in [
        ("policy_chosen_logps", policy_chosen),
        ("policy_rejected_logps", policy_rejected),
        ("ref_chosen_logps", ref_chosen),
        ("ref_rejected_logps", ref_rejected),
    ] {
        check_finite(OP, name, x, None)?;
    }
    if !(beta > 0.0 && beta.is_finite()) {
        return Err(Error::value(OP, format!("beta must be > 0 and finite, got {beta}")));
    }
    check_range(OP, "label_smoothing", label_smoothing, 0.0, 0.5)?;
    if label_smoothing != 0.0 && loss_type != DpoLossType::Sigmoid {
        return Err(Error::value(
            OP,
            format!(
                "label_smoothing applies to loss_type='sigmoid' only (cDPO), got {label_smoothing} with {loss_type:?}"
            ),
        ));
    }
    let (pc, pr, rc, rr) = (f64s(policy_chosen), f64s(policy_rejected), f64s(ref_chosen), f64s(ref_rejected));
    let (n, eps) = (b as f64, label_smoothing);
    let (mut total, mut margin, mut correct) = (0.0f64, 0.0f64, 0usize);
    let (mut dpc, mut dpr) = (vec![0f32; b], vec![0f32; b]);
    let (mut cr, mut rjr) = (vec![0f32; b], vec![0f32; b]);
    for i in 0..b {
        let (lc, lr) = (pc[i] - rc[i], pr[i] - rr[i]);
        let u = lc - lr;
        let h = beta * u;
        // (loss_i, dloss_i/du)
        let (l, du) = match loss_type {
            DpoLossType::Sigmoid => (
                -(1.0 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h),
                beta * (-(1.0 - eps) * sigmoid(-h) + eps * sigmoid(h)),
            ),
            DpoLossType::Ipo => {
                let z = u - 1.0 / (2.0 * beta);
                (z * z, 2.0 * z)
            }
            // the kink at 1 − βu = 0 takes the zero side, as relu does
            DpoLossType::Hinge => {
                if 1.0 - h > 0.0 {
                    (1.0 - h, -beta)
                } else {
                    (0.0, 0.0)
                }
            }
        };
        total += l;
        dpc[i] = (du / n) as f32;
        dpr[i] = (-du / n) as f32;
        let (c_rew, r_rew) = (beta * lc, beta * lr);
        cr[i] = c_rew as f32;
        rjr[i] = r_rew as f32;
        margin += c_rew - r_rew;
        correct += (c_rew > r_rew) as usize;
    }
    let out = Tensor::scalar((total / n) as f32);
    let loss = if will_record(&[policy_chosen, policy_rejected]) {
        record(
            out,
            // loss = (1/B) Σ ℓ(u_i), u_i = (π_c − ref_c) − (π_r − ref_r), so dπ_c = ℓ'(u_i)/B and dπ_r = −ℓ'(u_i)/B,
            // with ℓ' = β(−(1−ε)σ(−βu) + εσ(βu)) (sigmoid), 2(u − 1/2β) (ipo), −β·[1 − βu > 0] (hinge)
            PairwiseBackward {
                op: "dpo_loss",
                chosen: policy_chosen.clone(),
                rejected: policy_rejected.clone(),
                dchosen: dpc,
                drejected: dpr,
            },
        )
    } else {
        out
    };
    Ok(DpoLoss {
        loss,
        chosen_rewards: Tensor::from_vec_unchecked(cr, vec![b]),
        rejected_rewards: Tensor::from_vec_unchecked(rjr, vec![b]),
        margin: margin / n,
        accuracy: correct as f64 / n,
    })
}

/// dpo_loss from primitive ops (log(sigmoid(·)) is fine for moderate log-ratios), the reference detached:
/// the composite the fused op is tested against, forward and backward.
pub fn dpo_loss_reference(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f32,
    loss_type: DpoLossType,
    label_smoothing: f32,
) -> Result<Tensor> {
    use crate::ops::{binary::*, reduce::mean_all, unary::*};
    let u = sub(&sub(policy_chosen, &ref_chosen.detach())?, &sub(policy_rejected, &ref_rejected.detach())?)?;
    let h = mul_scalar(&u, beta)?;
    let per = match loss_type {
        DpoLossType::Sigmoid => sub(
            &mul_scalar(&neg(&log(&sigmoid(&h)?)?)?, 1.0 - label_smoothing)?,
            &mul_scalar(&log(&sigmoid(&neg(&h)?)?)?, label_smoothing)?,
        )?,
        DpoLossType::Ipo => {
            let z = add_scalar(&u, -1.0 / (2.0 * beta))?;
            mul(&z, &z)?
        }
        DpoLossType::Hinge => relu(&rsub_scalar(1.0, &h)?)?,
    };
    mean_all(&per)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::rl::testutil::assert_close;
    use crate::tensor::random::{manual_seed, randn};
    use DpoLossType::*;

    /// The textbook formulas in f64, one pair at a time.
    fn reference(x: [&[f32]; 4], beta: f64, kind: DpoLossType, eps: f64) -> f64 {
        let b = x[0].len();
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        (0..b)
            .map(|i| {
                let u = (x[0][i] as f64 - x[2][i] as f64) - (x[1][i] as f64 - x[3][i] as f64);
                match kind {
                    Sigmoid => -(1.0 - eps) * sig(beta * u).ln() - eps * sig(-beta * u).ln(),
                    Ipo => (u - 1.0 / (2.0 * beta)).powi(2),
                    Hinge => (1.0 - beta * u).max(0.0),
                }
            })
            .sum::<f64>()
            / b as f64
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v.to_vec(), &[v.len()]).unwrap()
    }

    #[test]
    fn matches_f64_formulas_and_gradcheck() {
        manual_seed(200);
        // only the policy log-probs require grad (the reference is frozen)
        let xs: Vec<Tensor> = (0..4).map(|i| randn(&[6], -5.0, 1.5).unwrap().requires_grad_(i < 2)).collect();
        for (kind, beta, eps) in [(Sigmoid, 0.1, 0.0), (Sigmoid, 0.5, 0.2), (Ipo, 0.3, 0.0), (Hinge, 0.2, 0.0)] {
            let v: Vec<Vec<f32>> = xs.iter().map(|x| x.to_vec()).collect();
            let want = reference([&v[0], &v[1], &v[2], &v[3]], beta, kind, eps);
            let out = dpo_loss(&xs[0], &xs[1], &xs[2], &xs[3], beta, kind, eps).unwrap();
            assert_close(&format!("dpo {kind:?} beta {beta} eps {eps}"), &out.loss.to_vec(), &[want], 1e-5);
            assert_gradcheck(|x| Ok(dpo_loss(&x[0], &x[1], &x[2], &x[3], beta, kind, eps)?.loss), &xs);
        }
        // the metrics
        let out = dpo_loss(&xs[0], &xs[1], &xs[2], &xs[3], 0.1, Sigmoid, 0.0).unwrap();
        let v: Vec<Vec<f32>> = xs.iter().map(|x| x.to_vec()).collect();
        let cr: Vec<f64> = (0..6).map(|i| 0.1 * (v[0][i] as f64 - v[2][i] as f64)).collect();
        let rr: Vec<f64> = (0..6).map(|i| 0.1 * (v[1][i] as f64 - v[3][i] as f64)).collect();
        assert_close("chosen_rewards", &out.chosen_rewards.to_vec(), &cr, 1e-6);
        assert_close("rejected_rewards", &out.rejected_rewards.to_vec(), &rr, 1e-6);
        let margin = (0..6).map(|i| cr[i] - rr[i]).sum::<f64>() / 6.0;
        assert!((out.margin - margin).abs() < 1e-6, "{} vs {margin}", out.margin);
        assert_eq!(out.accuracy, (0..6).filter(|&i| cr[i] > rr[i]).count() as f64 / 6.0);
        assert!(!out.chosen_rewards.requires_grad());
        // a reference that requires grad still gets none: it is read as a constant
        let r = xs[2].detach().requires_grad_(true);
        let out = dpo_loss(&xs[0], &xs[1], &r, &xs[3], 0.1, Sigmoid, 0.0).unwrap();
        out.loss.backward(None, false).unwrap();
        assert!(r.grad().is_none() && xs[0].grad().is_some());
    }

    #[test]
    fn fused_matches_the_composite_of_primitives() {
        manual_seed(201);
        let xs: Vec<Tensor> = (0..4).map(|i| randn(&[7], -5.0, 1.5).unwrap().requires_grad_(i < 2)).collect();
        let f64v = |t: &Tensor| t.to_vec().iter().map(|&v| v as f64).collect::<Vec<_>>();
        for (kind, beta, eps) in [(Sigmoid, 0.1, 0.0), (Sigmoid, 0.5, 0.2), (Ipo, 0.3, 0.0), (Hinge, 0.2, 0.0)] {
            let (a, b) = (xs[0].detach().requires_grad_(true), xs[1].detach().requires_grad_(true));
            let (a2, b2) = (xs[0].detach().requires_grad_(true), xs[1].detach().requires_grad_(true));
            let out = dpo_loss(&a, &b, &xs[2], &xs[3], beta, kind, eps).unwrap().loss;
            let want = dpo_loss_reference(&a2, &b2, &xs[2], &xs[3], beta as f32, kind, eps as f32).unwrap();
            let what = format!("{kind:?} beta {beta} eps {eps}");
            assert_close(&format!("{what} forward"), &out.to_vec(), &f64v(&want), 1e-5);
            out.backward(None, false).unwrap();
            want.backward(None, false).unwrap();
            assert_close(&format!("{what} d chosen"), &a.grad().unwrap().to_vec(), &f64v(&a2.grad().unwrap()), 1e-6);
            assert_close(&format!("{what} d rejected"), &b.grad().unwrap().to_vec(), &f64v(&b2.grad().unwrap()), 1e-6);
        }
    }

    #[test]
    fn hinge_gradcheck_away_from_the_kink() {
        // βu = 0.1·(2 − (−3)) = 0.5 < 1 (active) and 0.1·(20) = 2 > 1 (flat)
        let pc = t(&[1.0, 10.0]).requires_grad_(true);
        let pr = t(&[-1.0, -10.0]).requires_grad_(true);
        let z = t(&[0.0, 0.0]);
        let f = |x: &[Tensor]| Ok(dpo_loss(&x[0], &x[1], &z, &z, 0.1, Hinge, 0.0)?.loss);
        assert_gradcheck(f, &[pc.clone(), pr.clone()]);
        pc.zero_grad();
        let out = dpo_loss(&pc, &pr, &z, &z, 0.1, Hinge, 0.0).unwrap();
        out.loss.backward(None, false).unwrap();
        assert_eq!(pc.grad().unwrap().to_vec(), vec![-0.05, 0.0]);
    }

    #[test]
    fn equal_pairs_and_tiny_beta_give_ln2() {
        let x = t(&[-3.0, -7.0, -1.5]).requires_grad_(true);
        let r = t(&[-2.0, -6.0, -2.5]);
        // chosen == rejected: u = 0, loss ln 2, every margin 0, accuracy 0
        let out = dpo_loss(&x, &x, &r, &r, 0.1, Sigmoid, 0.0).unwrap();
        assert_close("u = 0", &out.loss.to_vec(), &[std::f64::consts::LN_2], 1e-7);
        assert_eq!((out.margin, out.accuracy), (0.0, 0.0));
        // β → 0: loss → ln 2 and the gradient → −β/2 per pair (over B)
        let (pc, pr) = (t(&[0.0, 5.0]).requires_grad_(true), t(&[-4.0, 1.0]));
        let z = t(&[0.0, 0.0]);
        let out = dpo_loss(&pc, &pr, &z, &z, 1e-8, Sigmoid, 0.0).unwrap();
        assert_close("beta 1e-8", &out.loss.to_vec(), &[std::f64::consts::LN_2], 1e-7);
        out.loss.backward(None, false).unwrap();
        assert_close("beta 1e-8 grad", &pc.grad().unwrap().to_vec(), &[-0.25e-8, -0.25e-8], 1e-12);
    }

    #[test]
    fn log_ratios_of_100_stay_finite() {
        let pc = t(&[100.0, -100.0, 0.0]).requires_grad_(true);
        let pr = t(&[-100.0, 100.0, 0.0]).requires_grad_(true);
        let z = t(&[0.0, 0.0, 0.0]);
        for (kind, eps) in [(Sigmoid, 0.0), (Sigmoid, 0.1), (Ipo, 0.0), (Hinge, 0.0)] {
            pc.zero_grad();
            let out = dpo_loss(&pc, &pr, &z, &z, 1.0, kind, eps).unwrap();
            let want = reference([&pc.to_vec(), &pr.to_vec(), &z.to_vec(), &z.to_vec()], 1.0, kind, eps);
            // u = ±200: the textbook sigmoid formula still works in f64 at this size
            assert_close(&format!("{kind:?} ±100"), &out.loss.to_vec(), &[want], 1e-3);
            out.loss.backward(None, false).unwrap();
            assert!(pc.grad().unwrap().to_vec().iter().all(|g| g.is_finite()), "{kind:?}");
        }
    }

    #[test]
    fn every_argument_changes_the_result() {
        let (pc, pr) = (t(&[-1.0, -2.0]), t(&[-3.0, -1.0]));
        let (rc, rr) = (t(&[-1.5, -2.5]), t(&[-2.0, -2.0]));
        let l = |beta, kind, eps| dpo_loss(&pc, &pr, &rc, &rr, beta, kind, eps).unwrap().loss.item().unwrap();
        let base = l(0.1, Sigmoid, 0.0);
        for (what, other) in [
            ("beta", l(0.5, Sigmoid, 0.0)),
            ("eps", l(0.1, Sigmoid, 0.2)),
            ("ipo", l(0.1, Ipo, 0.0)),
            ("hinge", l(0.1, Hinge, 0.0)),
        ] {
            assert!((other - base).abs() > 1e-3, "{what}: {other} vs {base}");
        }
        // the reference log-probs move the loss too (and are constants for the gradient)
        let out = dpo_loss(&pc, &pr, &rr, &rc, 0.1, Sigmoid, 0.0).unwrap().loss.item().unwrap();
        assert!((out - base).abs() > 1e-3);
    }

    #[test]
    fn bad_input_is_refused_with_names() {
        let (a, b2) = (t(&[-1.0, -2.0]), t(&[-1.0, -2.0, -3.0]));
        let e = dpo_loss(&a, &a, &b2, &a, 0.1, Sigmoid, 0.0).err().unwrap();
        assert_eq!(
            e.to_string(),
            "dpo_loss: ref_chosen_logps has shape (3,) but policy_chosen_logps has shape (2,); they must match"
        );
        let e = dpo_loss(&a, &a, &a, &a, -0.1, Sigmoid, 0.0).err().unwrap();
        assert_eq!(e.to_string(), "dpo_loss: beta must be > 0 and finite, got -0.1");
        assert!(dpo_loss(&a, &a, &a, &a, 0.0, Sigmoid, 0.0).is_err());
        let e = dpo_loss(&a, &a, &a, &a, 0.1, Ipo, 0.1).err().unwrap();
        assert!(e.to_string().contains("label_smoothing applies to loss_type='sigmoid' only"), "{e}");
        let e = dpo_loss(&a, &a, &a, &a, 0.1, Sigmoid, 0.7).err().unwrap();
        assert_eq!(e.to_string(), "dpo_loss: label_smoothing must be in [0, 0.5], got 0.7");
        let e = DpoLossType::parse("kto").err().unwrap();
        assert_eq!(e.to_string(), "dpo_loss: unknown loss_type \"kto\"; expected 'sigmoid', 'ipo' or 'hinge'");
        let nan = t(&[-1.0, f32::NAN]);
        let e = dpo_loss(&a, &nan, &a, &a, 0.1, Sigmoid, 0.0).err().unwrap();
        assert_eq!(e.to_string(), "dpo_loss: policy_rejected_logps[1] is NaN; every unmasked value must be finite");
    }
}
