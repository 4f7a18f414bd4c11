//! The GRPO family: G completions per prompt, each scored, the advantage relative to its group.
//! - `grpo_advantages` A = r − mean_group(r), divided by the group's std (`group`, Shao et al. 2024
//!   "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models"),
//!   by the batch's std (`batch`, Liu et al. 2025 "Part I: Tricks or Traps? A Deep Dive
//!   into RL for LLM Reasoning") or not at all (`none`, Liu et al. 2025 "Understanding
//!   R1-Zero-Like Training: A Critical Perspective", Dr. GRPO)
//! - `rloo_advantages` A_i = r_i − mean of the other G−1 rewards, Ahmadian et al. 2024 "Back to Basics:
//!   Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs"
//! - `grpo_loss` per-token clipped surrogate with ε_low / ε_high (clip-higher, Yu et al. 2025 "DAPO:
//!   An Open-Source LLM Reinforcement Learning System at Scale") + β·k3 KL to a frozen
//!   reference (DeepSeekMath), normalised as `grpo` (per-sequence mean, then batch mean;
//!   DeepSeekMath), `bnpo` (token mean over this batch), `dr_grpo` (Σ / (B · max
//!   completion length), Dr. GRPO) or `dapo` (token mean over the whole accumulated batch,
//!   DAPO)

use crate::autograd::{record, will_record};
use crate::error::{Error, Result};
use crate::rl::ppo::{KlEstimator, MaskedMeanBackward, clipped_surrogate, kl_token, token_advantages};
use crate::rl::{check_finite, check_range, f64s, mask_values, per_pair, per_token, same_shape};
use crate::tensor::Tensor;

/// Added to the std before dividing (as TRL does), so a group with nearly equal rewards gives large but
/// finite advantages. A group whose rewards are exactly equal gives 0, whatever the scale.
pub const ADVANTAGE_STD_EPS: f64 = 1e-4;

/// How `grpo_advantages` scales r − mean_group(r).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AdvantageScale {
    Group,
    Batch,
    None,
}
impl AdvantageScale {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "group" => Ok(Self::Group),
            "batch" => Ok(Self::Batch),
            "none" => Ok(Self::None),
            _ => Err(Error::value(
                "grpo_advantages",
                format!("unknown scale {s:?}; expected 'group', 'batch' or 'none'"),
            )),
        }
    }
}

/// Rewards (B,) as f64 groups of `group_size` consecutive completions (one prompt each).
fn groups(op: &'static str, rewards: &Tensor, group_size: usize) -> Result<Vec<f64>> {
    let b = per_pair(op, "rewards", rewards)?;
    if group_size == 0 || b % group_size != 0 {
        return Err(Error::value(
            op,
            format!("group_size {group_size} does not divide the batch of {b} rewards (B = prompts × group_size)"),
        ));
    }
    let r = f64s(rewards);
    if let Some(i) = r.iter().position(|v| !v.is_finite()) {
        return Err(Error::value(op, format!("rewards[{i}] is {}; a reward must be a finite number", r[i])));
    }
    Ok(r)
}

/// Sample std with the n − 1 divisor (as torch.std), 0 for a single value.
fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Group-relative advantages for rewards (B,) laid out as B / group_size groups of consecutive completions:
/// (r − mean_group) / (std + 1e-4) with the std of the group (`Group`), of the whole batch (`Batch`), or
/// no division (`None`); std uses n − 1. Exactly 0 for every member of a group with equal rewards (such a
/// group carries no learning signal), never nan. Plain data, no gradient.
pub fn grpo_advantages(rewards: &Tensor, group_size: usize, scale: AdvantageScale) -> Result<Tensor> {
    let r = groups("grpo_advantages", rewards, group_size)?;
    let batch_std = std_unbiased(&r);
    let mut out = vec![0f32; r.len()];
    for (g, o) in r.chunks(group_size).zip(out.chunks_mut(group_size)) {
        if g.iter().all(|&v| v == g[0]) {
            continue; // exactly zero
        }
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let div = match scale {
            AdvantageScale::Group => std_unbiased(g) + ADVANTAGE_STD_EPS,
            AdvantageScale::Batch => batch_std + ADVANTAGE_STD_EPS,
            AdvantageScale::None => 1.0,
        };
        for (o, &v) in o.iter_mut().zip(g) {
            *o = ((v - mean) / div) as f32;
        }
    }
    Ok(Tensor::from_vec_unchecked(out, vec![r.len()]))
}

/// RLOO advantages: each completion's reward minus the mean reward of the other G − 1 in its group
/// (a baseline that does not see the sample itself). group_size ≥ 2. Plain data, no gradient.
pub fn rloo_advantages(rewards: &Tensor, group_size: usize) -> Result<Tensor> {
    let r = groups("rloo_advantages", rewards, group_size)?;
    if group_size < 2 {
        return Err(Error::value(
            "rloo_advantages",
            "group_size must be >= 2: the leave-one-out baseline needs another completion of the same prompt",
        ));
    }
    let mut out = vec![0f32; r.len()];
    for (g, o) in r.chunks(group_size).zip(out.chunks_mut(group_size)) {
        if g.iter().all(|&v| v == g[0]) {
            continue;
        }
        let s: f64 = g.iter().sum();
        for (o, &v) in o.iter_mut().zip(g) {
            *o = (v - (s - v) / (group_size - 1) as f64) as f32;
        }
    }
    Ok(Tensor::from_vec_unchecked(out, vec![r.len()]))
}

/// How `grpo_loss` normalises the sum of per-token losses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GrpoLossType {
    Grpo,
    Bnpo,
    DrGrpo,
    Dapo,
}
impl GrpoLossType {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "grpo" => Ok(Self::Grpo),
            "bnpo" => Ok(Self::Bnpo),
            "dr_grpo" => Ok(Self::DrGrpo),
            "dapo" => Ok(Self::Dapo),
            _ => Err(Error::value(
                "grpo_loss",
                format!("unknown loss_type {s:?}; expected 'grpo', 'bnpo', 'dr_grpo' or 'dapo'"),
            )),
        }
    }
}

/// The hyper-parameters of `grpo_loss` (the Python keyword arguments).
#[derive(Clone, Copy, Debug)]
pub struct GrpoConfig {
    pub beta: f64,
    pub eps_low: f64,
    /// None = eps_low (no clip-higher).
    pub eps_high: Option<f64>,
    pub loss_type: GrpoLossType,
    /// dr_grpo's constant normaliser (required there, refused elsewhere).
    pub max_completion_length: Option<usize>,
    /// dapo: unmasked tokens over every micro-batch of the optimizer step (default: this batch's count).
    pub num_items_in_batch: Option<usize>,
}
impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            beta: 0.0,
            eps_low: 0.2,
            eps_high: None,
            loss_type: GrpoLossType::Dapo,
            max_completion_length: None,
            num_items_in_batch: None,
        }
    }
}

/// The result of `grpo_loss`; fractions and the KL are means over unmasked tokens.
pub struct GrpoLoss {
    /// 0-d, differentiable w.r.t. logps.
    pub loss: Tensor,
    /// Mean k3 KL to the reference (None without ref_logps).
    pub kl: Option<f64>,
    /// ρ < 1 − ε_low with A < 0.
    pub clip_low_fraction: f64,
    /// ρ > 1 + ε_high with A > 0.
    pub clip_high_fraction: f64,
    /// Either of the two (these tokens get no gradient from the surrogate).
    pub clip_fraction: f64,
}

/// GRPO loss for logps, old_logps, mask (B, T), advantages (B,) or (B, T) and optional ref_logps (B, T):
/// per token ℓ = −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) + β·k3(π, π_ref), normalised by `loss_type`
/// (module docs). Rows with no unmasked token contribute 0 (and `grpo` still counts them in its batch
/// mean); an all-masked batch gives 0, never nan. With ref_logps and β = 0 the KL is only reported.
pub fn grpo_loss(
    logps: &Tensor,
    old_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    ref_logps: Option<&Tensor>,
    cfg: GrpoConfig,
) -> Result<GrpoLoss> {
    const OP: &str = "grpo_loss";
    let (b, t) = per_token(OP, "logps", logps)?;
    same_shape(OP, "logps", logps, "old_logps", old_logps)?;
    if let Some(r) = ref_logps {
        same_shape(OP, "logps", logps, "ref_logps", r)?;
    }
    let adv = token_advantages(OP, advantages, logps)?;
    let m = mask_values(OP, Some(mask), "logps", logps)?;
    check_range(OP, "beta", cfg.beta, 0.0, f64::INFINITY)?;
    if !(0.0..1.0).contains(&cfg.eps_low) {
        return Err(Error::value(OP, format!("eps_low must be in [0, 1), got {}", cfg.eps_low)));
    }
    let eps_high = cfg.eps_high.unwrap_or(cfg.eps_low);
    check_range(OP, "eps_high", eps_high, 0.0, f64::INFINITY)?;
    if cfg.beta > 0.0 && ref_logps.is_none() {
        return Err(Error::value(
            OP,
            format!("beta = {} needs ref_logps (the frozen reference's log-probs)", cfg.beta),
        ));
    }
    let lens: Vec<f64> = (0..b).map(|row| m[row * t..(row + 1) * t].iter().sum()).collect();
    let n_tok: f64 = lens.iter().sum();
    match (cfg.loss_type, cfg.max_completion_length) {
        (GrpoLossType::DrGrpo, None) => {
            return Err(Error::value(OP, "loss_type='dr_grpo' needs max_completion_length (its constant normaliser)"));
        }
        (GrpoLossType::DrGrpo, Some(l)) => {
            let longest = lens.iter().fold(0.0f64, |a, &v| a.max(v));
            if (l as f64) < longest || l == 0 {
                return Err(Error::value(
                    OP,
                    format!("max_completion_length {l} is shorter than the longest completion ({longest} tokens)"),
                ));
            }
        }
        (_, Some(_)) => {
            return Err(Error::value(OP, "max_completion_length applies to loss_type='dr_grpo' only"));
        }
        _ => {}
    }
    match (cfg.loss_type, cfg.num_items_in_batch) {
        (GrpoLossType::Dapo, Some(n)) if (n as f64) < n_tok || n == 0 => {
            return Err(Error::value(
                OP,
                format!(
                    "num_items_in_batch {n} is smaller than the {n_tok} unmasked tokens of this batch (it counts \
                     the tokens of every micro-batch of the step)"
                ),
            ));
        }
        (GrpoLossType::Dapo, _) | (_, None) => {}
        (_, Some(_)) => return Err(Error::value(OP, "num_items_in_batch applies to loss_type='dapo' only")),
    }
    check_finite(OP, "logps", logps, Some(&m))?;
    check_finite(OP, "old_logps", old_logps, Some(&m))?;
    if let Some(r) = ref_logps {
        check_finite(OP, "ref_logps", r, Some(&m))?;
    }
    if let Some(i) = adv.iter().zip(&m).position(|(a, &m)| m != 0.0 && !a.is_finite()) {
        return Err(Error::value(OP, format!("advantages are not finite at flat token {i}")));
    }
    // the weight of each row's tokens in the loss
    let row_weight = |row: usize| -> f64 {
        match cfg.loss_type {
            GrpoLossType::Grpo => 1.0 / (b as f64 * lens[row].max(1.0)),
            GrpoLossType::Bnpo => 1.0 / n_tok.max(1.0),
            GrpoLossType::DrGrpo => 1.0 / (b as f64 * cfg.max_completion_length.unwrap_or(1) as f64),
            GrpoLossType::Dapo => 1.0 / cfg.num_items_in_batch.map(|n| n as f64).unwrap_or(n_tok).max(1.0),
        }
    };
    let (lp, old) = (f64s(logps), f64s(old_logps));
    let rf = ref_logps.map(f64s);
    let (mut total, mut kl, mut n_low, mut n_high) = (0.0f64, 0.0f64, 0usize, 0usize);
    let mut dlogp = vec![0f32; lp.len()];
    for i in 0..lp.len() {
        if m[i] == 0.0 {
            continue;
        }
        let w = row_weight(i / t.max(1));
        let (mut l, mut g, lo, hi) = clipped_surrogate(lp[i] - old[i], adv[i], cfg.eps_low, eps_high);
        if let Some(rf) = &rf {
            let (k, dk) = kl_token(lp[i], rf[i], KlEstimator::K3);
            kl += k;
            if cfg.beta > 0.0 {
                l += cfg.beta * k;
                g += cfg.beta * dk;
            }
        }
        total += w * l;
        dlogp[i] = (w * g) as f32;
        n_low += lo as usize;
        n_high += hi as usize;
    }
    let inv = if n_tok > 0.0 { 1.0 / n_tok } else { 0.0 };
    let out = Tensor::scalar(total as f32);
    let loss = if will_record(&[logps]) {
        record(out, MaskedMeanBackward { x: logps.clone(), dx: dlogp, op: OP })
    } else {
        out
    };
    Ok(GrpoLoss {
        loss,
        kl: rf.map(|_| kl * inv),
        clip_low_fraction: n_low as f64 * inv,
        clip_high_fraction: n_high as f64 * inv,
        clip_fraction: (n_low + n_high) as f64 * inv,
    })
}

/// grpo_loss from primitive ops: the PPO surrogate composite plus β·(e^x − x − 1), x = ref − logp, summed
/// with a constant per-token weight that spells out each normalisation (moderate log-ratios only).
pub fn grpo_loss_reference(
    logps: &Tensor,
    old_logps: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    ref_logps: Option<&Tensor>,
    cfg: GrpoConfig,
) -> Result<Tensor> {
    use crate::ops::{binary::*, reduce::sum_all, unary::*, view::reshape};
    let (b, t) = (logps.shape()[0], logps.shape()[1]);
    let adv = if advantages.ndim() == 1 { reshape(advantages, &[b as isize, 1])? } else { advantages.clone() };
    let eps_high = cfg.eps_high.unwrap_or(cfg.eps_low) as f32;
    let mut per = crate::rl::ppo::clipped_surrogate_reference(logps, old_logps, &adv, cfg.eps_low as f32, eps_high)?;
    if let (Some(r), true) = (ref_logps, cfg.beta > 0.0) {
        let x = sub(&r.detach(), logps)?;
        let k3 = add_scalar(&sub(&exp(&x)?, &x)?, -1.0)?;
        per = add(&per, &mul_scalar(&k3, cfg.beta as f32)?)?;
    }
    let m = mask.to_vec();
    let total: f32 = m.iter().sum();
    let row = |i: usize| -> f32 { m[(i / t) * t..(i / t + 1) * t].iter().sum() };
    let w: Vec<f32> = (0..b * t)
        .map(|i| {
            m[i] * match cfg.loss_type {
                GrpoLossType::Grpo => 1.0 / (b as f32 * row(i).max(1.0)),
                GrpoLossType::Bnpo => 1.0 / total.max(1.0),
                GrpoLossType::DrGrpo => 1.0 / (b * cfg.max_completion_length.unwrap_or(1)) as f32,
                GrpoLossType::Dapo => 1.0 / cfg.num_items_in_batch.map(|n| n as f32).unwrap_or(total).max(1.0),
            }
        })
        .collect();
    sum_all(&mul(&per, &Tensor::new(w, &[b, t])?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::assert_gradcheck;
    use crate::rl::testutil::assert_close;
    use crate::tensor::random::{manual_seed, rand, randn};
    use GrpoLossType::*;

    fn t1(v: &[f32]) -> Tensor {
        Tensor::new(v.to_vec(), &[v.len()]).unwrap()
    }
    fn t2(v: &[f32], b: usize, t: usize) -> Tensor {
        Tensor::new(v.to_vec(), &[b, t]).unwrap()
    }

    #[test]
    fn advantages_match_formulas() {
        // two groups of 3: one varied, one with equal rewards
        let r = t1(&[1.0, 0.0, 0.5, 2.0, 2.0, 2.0]);
        let g = [1.0f64, 0.0, 0.5];
        let mean = 0.5;
        let sd = ((0.25 + 0.25 + 0.0) / 2.0f64).sqrt();
        let all = [1.0f64, 0.0, 0.5, 2.0, 2.0, 2.0];
        let am = all.iter().sum::<f64>() / 6.0;
        let bsd = (all.iter().map(|v| (v - am).powi(2)).sum::<f64>() / 5.0).sqrt();
        for (scale, div) in
            [(AdvantageScale::Group, sd + 1e-4), (AdvantageScale::Batch, bsd + 1e-4), (AdvantageScale::None, 1.0)]
        {
            let a = grpo_advantages(&r, 3, scale).unwrap().to_vec();
            let want: Vec<f64> = g.iter().map(|v| (v - mean) / div).chain([0.0; 3]).collect();
            assert_close(&format!("{scale:?}"), &a, &want, 1e-6);
        }
        // RLOO: r_i − mean of the others
        let a = rloo_advantages(&r, 3).unwrap().to_vec();
        assert_close("rloo", &a, &[1.0 - 0.25, 0.0 - 0.75, 0.5 - 0.5, 0.0, 0.0, 0.0], 1e-7);
        // group size 1: no relative signal, zeros (never nan)
        assert!(grpo_advantages(&r, 1, AdvantageScale::Group).unwrap().to_vec().iter().all(|&v| v == 0.0));
        // a tiny spread stays finite
        let a = grpo_advantages(&t1(&[1.0, 1.0 + 1e-6]), 2, AdvantageScale::Group).unwrap().to_vec();
        assert!(a.iter().all(|v| v.is_finite()) && a[1] > 0.0);
    }

    #[test]
    fn advantage_errors_name_the_problem() {
        let r = t1(&[1.0, 0.0, 0.5, 2.0, 2.0]);
        let e = grpo_advantages(&r, 2, AdvantageScale::Group).err().unwrap();
        assert_eq!(
            e.to_string(),
            "grpo_advantages: group_size 2 does not divide the batch of 5 rewards (B = prompts × group_size)"
        );
        assert!(grpo_advantages(&r, 0, AdvantageScale::Group).is_err());
        let e = rloo_advantages(&t1(&[1.0, 2.0]), 1).err().unwrap();
        assert!(e.to_string().contains("group_size must be >= 2"), "{e}");
        let e = grpo_advantages(&t1(&[1.0, f32::NAN]), 2, AdvantageScale::Group).err().unwrap();
        assert_eq!(e.to_string(), "grpo_advantages: rewards[1] is NaN; a reward must be a finite number");
        assert_eq!(
            AdvantageScale::parse("std").err().unwrap().to_string(),
            "grpo_advantages: unknown scale \"std\"; expected 'group', 'batch' or 'none'"
        );
    }

    /// The GRPO loss in f64, written per loss type the way the papers do (no clamp: moderate ratios).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        lp: &[f32],
        old: &[f32],
        adv: &[f32],
        m: &[f32],
        rf: Option<&[f32]>,
        b: usize,
        cfg: GrpoConfig,
    ) -> f64 {
        let t = lp.len() / b;
        let eh = cfg.eps_high.unwrap_or(cfg.eps_low);
        let tok = |i: usize| -> f64 {
            let r = (lp[i] as f64 - old[i] as f64).exp();
            let a = adv[i] as f64;
            let mut l = -(r * a).min(r.clamp(1.0 - cfg.eps_low, 1.0 + eh) * a);
            if let Some(rf) = rf {
                let x = rf[i] as f64 - lp[i] as f64;
                l += cfg.beta * (x.exp() - x - 1.0);
            }
            l * m[i] as f64
        };
        let rows: Vec<(f64, f64)> = (0..b)
            .map(|r| ((r * t..(r + 1) * t).map(tok).sum(), m[r * t..(r + 1) * t].iter().map(|&v| v as f64).sum()))
            .collect();
        let (sum, n): (f64, f64) = rows.iter().fold((0.0, 0.0), |(s, n), (a, c)| (s + a, n + c));
        match cfg.loss_type {
            Grpo => rows.iter().map(|(s, c)| s / c.max(1.0)).sum::<f64>() / b as f64,
            Bnpo => sum / n.max(1.0),
            DrGrpo => sum / (b * cfg.max_completion_length.unwrap()) as f64,
            Dapo => sum / cfg.num_items_in_batch.map(|v| v as f64).unwrap_or(n).max(1.0),
        }
    }

    fn case() -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        manual_seed(400);
        let (b, t) = (4, 5);
        let old = randn(&[b, t], -2.0, 0.5).unwrap();
        // log-ratios kept 0.03 away from the clip edges of ε_low = 0.2 and ε_high = 0.28
        let d: Vec<f32> = rand(&[b * t], -0.4, 0.4)
            .unwrap()
            .to_vec()
            .into_iter()
            .map(|mut x| {
                for edge in [0.8f32.ln(), 1.2f32.ln(), 1.28f32.ln()] {
                    if (x - edge).abs() < 0.03 {
                        x = edge + 0.03f32.copysign(x - edge);
                    }
                }
                x
            })
            .collect();
        let lp = t2(&old.to_vec().iter().zip(&d).map(|(o, d)| o + d).collect::<Vec<_>>(), b, t).requires_grad_(true);
        let adv = randn(&[b], 0.0, 1.0).unwrap();
        let rf = randn(&[b, t], -2.0, 0.5).unwrap();
        // lengths 5, 3, 1, 0
        let mut m = vec![0f32; b * t];
        for (row, len) in [5, 3, 1, 0].into_iter().enumerate() {
            m[row * t..row * t + len].iter_mut().for_each(|x| *x = 1.0);
        }
        (lp, old, adv, t2(&m, b, t), rf)
    }

    #[test]
    fn loss_matches_formulas_and_gradcheck() {
        let (lp, old, adv, m, rf) = case();
        let adv_tok: Vec<f32> = (0..20).map(|i| adv.to_vec()[i / 5]).collect();
        let cfgs = [
            GrpoConfig { loss_type: Grpo, ..Default::default() },
            GrpoConfig { loss_type: Bnpo, beta: 0.04, ..Default::default() },
            GrpoConfig {
                loss_type: DrGrpo,
                max_completion_length: Some(8),
                eps_high: Some(0.28),
                ..Default::default()
            },
            GrpoConfig { loss_type: Dapo, beta: 0.1, eps_high: Some(0.28), ..Default::default() },
            GrpoConfig { loss_type: Dapo, num_items_in_batch: Some(30), ..Default::default() },
        ];
        for cfg in cfgs {
            let r = if cfg.beta > 0.0 { Some(&rf) } else { None };
            let out = grpo_loss(&lp, &old, &adv, &m, r, cfg).unwrap();
            let rv = rf.to_vec();
            let want = reference(&lp.to_vec(), &old.to_vec(), &adv_tok, &m.to_vec(), r.map(|_| &rv[..]), 4, cfg);
            assert_close(&format!("{cfg:?}"), &out.loss.to_vec(), &[want], 1e-6);
            assert_gradcheck(|x| Ok(grpo_loss(&x[0], &old, &adv, &m, r, cfg)?.loss), std::slice::from_ref(&lp));
        }
    }

    #[test]
    fn fused_matches_the_composite_of_primitives() {
        let (lp, old, adv, m, rf) = case();
        let f64v = |t: &Tensor| t.to_vec().iter().map(|&v| v as f64).collect::<Vec<_>>();
        let cfgs = [
            GrpoConfig { loss_type: Grpo, ..Default::default() },
            GrpoConfig { loss_type: Bnpo, beta: 0.04, ..Default::default() },
            GrpoConfig {
                loss_type: DrGrpo,
                max_completion_length: Some(8),
                eps_high: Some(0.28),
                ..Default::default()
            },
            GrpoConfig {
                loss_type: Dapo,
                beta: 0.1,
                eps_high: Some(0.28),
                num_items_in_batch: Some(12),
                ..Default::default()
            },
        ];
        for cfg in cfgs {
            let (a, a2) = (lp.detach().requires_grad_(true), lp.detach().requires_grad_(true));
            let r = if cfg.beta > 0.0 { Some(&rf) } else { None };
            let out = grpo_loss(&a, &old, &adv, &m, r, cfg).unwrap().loss;
            let want = grpo_loss_reference(&a2, &old, &adv, &m, r, cfg).unwrap();
            assert_close(&format!("{cfg:?} forward"), &out.to_vec(), &f64v(&want), 1e-6);
            out.backward(None, false).unwrap();
            want.backward(None, false).unwrap();
            assert_close(&format!("{cfg:?} backward"), &a.grad().unwrap().to_vec(), &f64v(&a2.grad().unwrap()), 1e-6);
        }
    }

    #[test]
    fn every_argument_changes_the_result() {
        let (lp, old, adv, m, rf) = case();
        let l =
            |r: Option<&Tensor>, cfg: GrpoConfig| grpo_loss(&lp, &old, &adv, &m, r, cfg).unwrap().loss.item().unwrap();
        let base = l(None, GrpoConfig::default());
        let d = GrpoConfig::default();
        for (what, other) in [
            ("beta", l(Some(&rf), GrpoConfig { beta: 0.5, ..d })),
            ("eps_low", l(None, GrpoConfig { eps_low: 0.05, ..d })),
            ("eps_high", l(None, GrpoConfig { eps_high: Some(0.05), ..d })),
            ("grpo", l(None, GrpoConfig { loss_type: Grpo, ..d })),
            ("dr_grpo", l(None, GrpoConfig { loss_type: DrGrpo, max_completion_length: Some(5), ..d })),
            ("num_items_in_batch", l(None, GrpoConfig { num_items_in_batch: Some(18), ..d })),
        ] {
            assert!((other - base).abs() > 1e-6, "{what}: {other} vs {base}");
        }
        // bnpo is dapo over this batch alone; max_completion_length scales dr_grpo
        assert_eq!(l(None, GrpoConfig { loss_type: Bnpo, ..d }), base);
        let dr = |n| l(None, GrpoConfig { loss_type: DrGrpo, max_completion_length: Some(n), ..d });
        assert!((dr(5) - 2.0 * dr(10)).abs() < 1e-6);
        // ref_logps with β = 0: the loss is unchanged, the KL reported
        let out = grpo_loss(&lp, &old, &adv, &m, Some(&rf), d).unwrap();
        assert_eq!(out.loss.item().unwrap(), base);
        assert!(out.kl.unwrap() > 0.0);
        assert!(grpo_loss(&lp, &old, &adv, &m, None, d).unwrap().kl.is_none());
    }

    #[test]
    fn edge_cases_stay_finite() {
        // all masked: 0 for every loss type, zero gradient
        let lp = t2(&[-1.0, -2.0, -3.0, -4.0], 2, 2).requires_grad_(true);
        let z = Tensor::zeros(&[2, 2]).unwrap();
        for loss_type in [Grpo, Bnpo, DrGrpo, Dapo] {
            let mcl = if loss_type == DrGrpo { Some(2) } else { None };
            let cfg = GrpoConfig { loss_type, max_completion_length: mcl, beta: 0.1, ..Default::default() };
            let out = grpo_loss(&lp, &lp.detach(), &t1(&[1.0, -1.0]), &z, Some(&lp.detach()), cfg).unwrap();
            assert_eq!((out.loss.item().unwrap(), out.clip_fraction), (0.0, 0.0), "{loss_type:?}");
            out.loss.backward(None, false).unwrap();
            assert!(lp.grad().unwrap().to_vec().iter().all(|&g| g == 0.0));
        }
        // log-ratios ±100 to old and to the reference: finite loss and gradient
        let lp = t2(&[100.0, -100.0, 100.0, -100.0], 2, 2).requires_grad_(true);
        let out = grpo_loss(
            &lp,
            &z,
            &t1(&[1.0, -1.0]),
            &Tensor::ones(&[2, 2]).unwrap(),
            Some(&z),
            GrpoConfig { beta: 0.1, ..Default::default() },
        )
        .unwrap();
        out.loss.backward(None, false).unwrap();
        assert!(out.loss.item().unwrap().is_finite() && out.kl.unwrap().is_finite());
        assert!(lp.grad().unwrap().to_vec().iter().all(|g| g.is_finite()));
        assert!((out.clip_high_fraction - 0.25).abs() < 1e-12 && (out.clip_low_fraction - 0.25).abs() < 1e-12);
        // length-1 completions at ratio 1: loss = −mean(A) for grpo
        let one = t2(&[-0.5, -0.7], 2, 1);
        let cfg = GrpoConfig { loss_type: Grpo, ..Default::default() };
        let out = grpo_loss(&one, &one, &t1(&[2.0, -1.0]), &Tensor::ones(&[2, 1]).unwrap(), None, cfg).unwrap();
        assert_eq!(out.loss.item().unwrap(), -0.5);
        // a group with equal rewards gives zero advantages, so zero loss and gradient at ratio 1
        let a = grpo_advantages(&t1(&[1.0, 1.0]), 2, AdvantageScale::Group).unwrap();
        let out = grpo_loss(&one, &one, &a, &Tensor::ones(&[2, 1]).unwrap(), None, cfg).unwrap();
        assert_eq!(out.loss.item().unwrap(), 0.0);
    }

    #[test]
    fn bad_input_is_refused_with_names() {
        let x = Tensor::zeros(&[2, 3]).unwrap();
        let m = Tensor::ones(&[2, 3]).unwrap();
        let d = GrpoConfig::default();
        let e = grpo_loss(&x, &x, &x, &Tensor::ones(&[3, 2]).unwrap(), None, d).err().unwrap();
        assert_eq!(e.to_string(), "grpo_loss: mask has shape (3, 2) but logps has shape (2, 3); they must match");
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { beta: 0.1, ..d }).err().unwrap();
        assert_eq!(e.to_string(), "grpo_loss: beta = 0.1 needs ref_logps (the frozen reference's log-probs)");
        let e = grpo_loss(&x, &x, &x, &m, Some(&x), GrpoConfig { beta: -0.1, ..d }).err().unwrap();
        assert_eq!(e.to_string(), "grpo_loss: beta must be >= 0 and finite, got -0.1");
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { loss_type: DrGrpo, ..d }).err().unwrap();
        assert!(e.to_string().contains("needs max_completion_length"), "{e}");
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { loss_type: DrGrpo, max_completion_length: Some(2), ..d });
        assert!(e.err().unwrap().to_string().contains("shorter than the longest completion (3 tokens)"));
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { max_completion_length: Some(5), ..d }).err().unwrap();
        assert!(e.to_string().contains("applies to loss_type='dr_grpo' only"));
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { num_items_in_batch: Some(5), ..d }).err().unwrap();
        assert!(e.to_string().contains("smaller than the 6 unmasked tokens"), "{e}");
        let e = grpo_loss(&x, &x, &x, &m, None, GrpoConfig { loss_type: Bnpo, num_items_in_batch: Some(9), ..d });
        assert!(e.err().unwrap().to_string().contains("applies to loss_type='dapo' only"));
        assert!(grpo_loss(&x, &x, &x, &m, None, GrpoConfig { eps_low: 1.0, ..d }).is_err());
        assert!(grpo_loss(&x, &x, &x, &m, None, GrpoConfig { eps_high: Some(-0.1), ..d }).is_err());
        let e = GrpoLossType::parse("ppo").err().unwrap();
        assert_eq!(e.to_string(), "grpo_loss: unknown loss_type \"ppo\"; expected 'grpo', 'bnpo', 'dr_grpo' or 'dapo'");
        let e = grpo_loss(&x, &x, &Tensor::zeros(&[3]).unwrap(), &m, None, d).err().unwrap();
        assert!(e.to_string().contains("advantages must have the shape of logps"));
    }
}
