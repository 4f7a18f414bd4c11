//! Bradley–Terry reward-model loss: the probability that `chosen` beats `rejected` is σ(r_c − r_r), and the
//! loss is its mean negative log. References: Bradley & Terry 1952 (the model), Ouyang et al. 2022
//! "Training language models to follow instructions with human feedback" (InstructGPT's reward model),
//! Touvron et al. 2023 "Llama 2" (the per-pair margin), Eisenstein et al. 2023 "Helping or Herding? Reward
//! Model Ensembles Mitigate but do not Eliminate Reward Hacking" (the reward-centring term).

use crate::autograd::{record, will_record};
use crate::error::{Error, Result};
use crate::rl::{PairwiseBackward, check_range, f64s, log_sigmoid, per_pair, same_shape, sigmoid};
use crate::tensor::Tensor;

/// The loss (0-d, differentiable w.r.t. both rewards) and what to log about the batch.
pub struct RewardLoss {
    pub loss: Tensor,
    /// Fraction of pairs ranked right, r_c > r_r strictly (a tie counts as wrong).
    pub accuracy: f64,
    /// Mean of r_c − r_r.
    pub mean_gap: f64,
    pub chosen_mean: f64,
    pub rejected_mean: f64,
}

/// loss = mean(−log σ(r_c − r_r − margin)) + center_coef · mean((r_c + r_r)²), for rewards of shape (B,).
/// `margin` (B,) is a constant per pair (how much better chosen is, Llama 2); the centring term pulls the
/// rewards towards mean zero (Eisenstein et al. 2023). −log σ is computed as softplus, so any gap is fine:
/// a gap of +inf gives 0, of −inf gives inf (with a finite gradient), ±100 no overflow.
pub fn reward_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    center_coef: f64,
) -> Result<RewardLoss> {
    const OP: &str = "reward_loss";
    let b = per_pair(OP, "chosen_rewards", chosen)?;
    same_shape(OP, "chosen_rewards", chosen, "rejected_rewards", rejected)?;
    if let Some(m) = margin {
        same_shape(OP, "chosen_rewards", chosen, "margin", m)?;
    }
    check_range(OP, "center_rewards_coefficient", center_coef, 0.0, f64::INFINITY)?;
    for (name, x) in [("chosen_rewards", Some(chosen)), ("rejected_rewards", Some(rejected)), ("margin", margin)] {
        let Some(x) = x else { continue };
        if let Some(i) = x.data().iter().position(|v| v.is_nan() || (name == "margin" && v.is_infinite())) {
            let what = if name == "margin" { "a margin must be finite" } else { "rewards may be ±inf, never nan" };
            return Err(Error::value(OP, format!("{name}[{i}] is {}; {what}", x.data()[i])));
        }
    }
    let (c, r) = (f64s(chosen), f64s(rejected));
    let m = margin.map(f64s).unwrap_or_else(|| vec![0.0; b]);
    let n = b as f64;
    let (mut total, mut correct, mut gap) = (0.0f64, 0usize, 0.0f64);
    let (mut dc, mut dr) = (vec![0f32; b], vec![0f32; b]);
    for i in 0..b {
        let d = c[i] - r[i] - m[i];
        total -= log_sigmoid(d);
        // d(−log σ(d))/dd = −σ(−d)
        let g = -sigmoid(-d);
        let (mut gc, mut gr) = (g, -g);
        if center_coef > 0.0 {
            let s = c[i] + r[i];
            total += center_coef * s * s;
            gc += 2.0 * center_coef * s;
            gr += 2.0 * center_coef * s;
        }
        dc[i] = (gc / n) as f32;
        dr[i] = (gr / n) as f32;
        correct += (c[i] > r[i]) as usize;
        gap += c[i] - r[i];
    }
    let out = Tensor::scalar((total / n) as f32);
    let loss = if will_record(&[chosen, rejected]) {
        record(
            out,
            // loss = (1/B) Σ [−log σ(d_i) + k (c_i + r_i)²], d_i = c_i − r_i − m_i, so
            // dc_i = (−σ(−d_i) + 2k(c_i + r_i)) / B and dr_i = (σ(−d_i) + 2k(c_i + r_i)) / B (saved by the forward)
            PairwiseBackward {
                op: "reward_loss",
                chosen: chosen.clone(),
                rejected: rejected.clone(),
                dchosen: dc,
                drejected: dr,
            },
        )
    } else {
        out
    };
    Ok(RewardLoss {
        loss,
        accuracy: correct as f64 / n,
        mean_gap: gap / n,
        chosen_mean: c.iter().sum::<f64>() / n,
        rejected_mean: r.iter().sum::<f64>() / n,
    })
}

/// reward_loss from primitive ops (−log(sigmoid(d)) is fine for moderate gaps): the composite the fused
/// op is tested against, forward and backward.
pub fn reward_loss_reference(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: Option<&Tensor>,
    center_coef: f32,
) -> Result<Tensor> {
    use crate::ops::{binary::*, reduce::mean_all, unary::*};
    let mut d = sub(chosen, rejected)?;
    if let Some(m) = margin {
        d = sub(&d, &m.detach())?;
    }
    let bt = mean_all(&neg(&log(&sigmoid(&d)?)?)?)?;
    let s = add(chosen, rejected)?;
    add(&bt, &mul_scalar(&mean_all(&mul(&s, &s)?)?, center_coef)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::rl::testutil::assert_close;
    use crate::tensor::random::{manual_seed, randn};

    /// The textbook formula in f64: −ln(1 / (1 + e^−d)), fine for moderate gaps.
    fn reference(c: &[f32], r: &[f32], m: &[f32], k: f64) -> f64 {
        let n = c.len() as f64;
        (0..c.len())
            .map(|i| {
                let (c, r, m) = (c[i] as f64, r[i] as f64, m[i] as f64);
                (1.0 + (-(c - r - m)).exp()).ln() + k * (c + r) * (c + r)
            })
            .sum::<f64>()
            / n
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v.to_vec(), &[v.len()]).unwrap()
    }

    #[test]
    fn matches_f64_formula_and_gradcheck() {
        manual_seed(100);
        let c = randn(&[7], 0.0, 2.0).unwrap().requires_grad_(true);
        let r = randn(&[7], 0.0, 2.0).unwrap().requires_grad_(true);
        let m = randn(&[7], 0.5, 0.3).unwrap();
        for (margin, k) in [(None, 0.0), (Some(&m), 0.0), (Some(&m), 0.01), (None, 0.3)] {
            let out = reward_loss(&c, &r, margin, k).unwrap();
            let mv = margin.map(|m| m.to_vec()).unwrap_or(vec![0.0; 7]);
            let want = reference(&c.to_vec(), &r.to_vec(), &mv, k);
            assert_close(&format!("reward_loss margin={} k={k}", margin.is_some()), &out.loss.to_vec(), &[want], 1e-6);
            assert_gradcheck(|xs| Ok(reward_loss(&xs[0], &xs[1], margin, k)?.loss), &[c.clone(), r.clone()]);
        }
        let (cv, rv) = (c.to_vec(), r.to_vec());
        let out = reward_loss(&c, &r, None, 0.0).unwrap();
        let acc = cv.iter().zip(&rv).filter(|(a, b)| a > b).count() as f64 / 7.0;
        assert_eq!(out.accuracy, acc);
        let gap: f64 = cv.iter().zip(&rv).map(|(a, b)| *a as f64 - *b as f64).sum::<f64>() / 7.0;
        assert!((out.mean_gap - gap).abs() < 1e-12);
    }

    #[test]
    fn fused_matches_the_composite_of_primitives() {
        manual_seed(101);
        let c = randn(&[9], 0.0, 2.0).unwrap().requires_grad_(true);
        let r = randn(&[9], 0.0, 2.0).unwrap().requires_grad_(true);
        let m = randn(&[9], 0.5, 0.3).unwrap();
        let (c2, r2) = (c.detach().requires_grad_(true), r.detach().requires_grad_(true));
        let out = reward_loss(&c, &r, Some(&m), 0.05).unwrap().loss;
        let want = reward_loss_reference(&c2, &r2, Some(&m), 0.05).unwrap();
        let f64v = |t: &Tensor| t.to_vec().iter().map(|&v| v as f64).collect::<Vec<_>>();
        assert_close("forward", &out.to_vec(), &f64v(&want), 1e-6);
        out.backward(None, false).unwrap();
        want.backward(None, false).unwrap();
        assert_close("d chosen", &c.grad().unwrap().to_vec(), &f64v(&c2.grad().unwrap()), 1e-6);
        assert_close("d rejected", &r.grad().unwrap().to_vec(), &f64v(&r2.grad().unwrap()), 1e-6);
    }

    #[test]
    fn every_argument_changes_the_result() {
        let (c, r) = (t(&[1.0, 0.5, -0.2]), t(&[0.0, 0.7, -1.0]));
        let base = reward_loss(&c, &r, None, 0.0).unwrap().loss.item().unwrap();
        let with_margin = reward_loss(&c, &r, Some(&t(&[1.0, 1.0, 1.0])), 0.0).unwrap().loss.item().unwrap();
        let centred = reward_loss(&c, &r, None, 0.1).unwrap().loss.item().unwrap();
        assert!(with_margin > base + 0.1 && centred > base + 0.01, "{base} {with_margin} {centred}");
    }

    #[test]
    fn stable_for_any_gap() {
        let c = t(&[100.0, -100.0, f32::INFINITY, 0.0, 3.0]).requires_grad_(true);
        let r = t(&[-0.0, 0.0, 0.0, f32::INFINITY, 3.0]).requires_grad_(true);
        let out = reward_loss(&c, &r, None, 0.0).unwrap();
        // terms: 0 (gap 100 → e^-100), 100, 0, inf, ln 2 → the mean is inf, never nan
        assert_eq!(out.loss.item().unwrap(), f32::INFINITY);
        out.loss.backward(None, false).unwrap();
        let g = c.grad().unwrap().to_vec();
        // dc = −σ(−d)/B: 0, −1/5, 0, −1/5, −1/10
        assert_close("dc", &g, &[-(-100f64).exp() / 5.0, -0.2, 0.0, -0.2, -0.1], 1e-7);
        assert_close("dr", &r.grad().unwrap().to_vec(), &[(-100f64).exp() / 5.0, 0.2, 0.0, 0.2, 0.1], 1e-7);
        // the finite cases: gap ±100 exactly
        let out = reward_loss(&t(&[100.0, -100.0]), &t(&[0.0, 0.0]), None, 0.0).unwrap();
        assert_close("gap ±100", &out.loss.to_vec(), &[50.0], 1e-5);
        assert_eq!(out.accuracy, 0.5);
    }

    #[test]
    fn chosen_equal_to_rejected_gives_ln2_and_zero_accuracy() {
        let c = t(&[0.3, -2.0, 5.0]);
        let out = reward_loss(&c, &c, None, 0.0).unwrap();
        assert_close("ln 2", &out.loss.to_vec(), &[std::f64::consts::LN_2], 1e-7);
        assert_eq!((out.accuracy, out.mean_gap), (0.0, 0.0));
    }

    #[test]
    fn bad_input_is_refused_with_names() {
        let (c, r) = (t(&[1.0, 2.0]), t(&[1.0, 2.0, 3.0]));
        let e = reward_loss(&c, &r, None, 0.0).err().unwrap();
        assert_eq!(
            e.to_string(),
            "reward_loss: rejected_rewards has shape (3,) but chosen_rewards has shape (2,); they must match"
        );
        let e = reward_loss(&c, &c, Some(&r), 0.0).err().unwrap();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("margin has shape (3,)"), "{e}");
        let e = reward_loss(&c, &c, None, -1.0).err().unwrap();
        assert_eq!(e.to_string(), "reward_loss: center_rewards_coefficient must be >= 0 and finite, got -1");
        let m = Tensor::zeros(&[2, 1]).unwrap();
        let e = reward_loss(&m, &m, None, 0.0).err().unwrap();
        assert!(e.to_string().contains("must be 1-D (B,)"), "{e}");
        let e = reward_loss(&t(&[1.0, f32::NAN]), &c, None, 0.0).err().unwrap();
        assert_eq!(e.to_string(), "reward_loss: chosen_rewards[1] is NaN; rewards may be ±inf, never nan");
        assert!(reward_loss(&c, &c, Some(&t(&[0.0, f32::INFINITY])), 0.0).is_err());
        let e = reward_loss(&t(&[]), &t(&[]), None, 0.0).err().unwrap();
        assert!(matches!(e, Error::Value { .. }) && e.to_string().contains("empty"), "{e}");
    }
}
