//! The post-training objectives of `crate::rl` for `nanofrontier.rl`: array-likes in, the loss as a
//! differentiable `Tensor` out, metrics as a dict of floats (or detached tensors). No math here.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::errors::{InvalidArgumentError, run};
use super::tensor::{PyTensor, to_tensor};
use crate::rl::{dpo, entropy, grpo, ppo, reward};
use crate::tensor::Tensor;

fn opt_tensor(py: Python<'_>, x: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Tensor>> {
    match x {
        Some(x) if !x.is_none() => Ok(Some(to_tensor(py, x)?)),
        _ => Ok(None),
    }
}

/// A count argument (group_size, ...) that must be a positive int; named in the error.
fn positive(op: &str, name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| InvalidArgumentError::new_err(format!("{op}: {name} must be a positive int, got {v}")))
}

/// Bradley–Terry reward-model loss mean(−log σ(r_chosen − r_rejected − margin)) + coef·mean((r_c + r_r)²)
/// for rewards of shape (B,). Returns (loss, metrics) with metrics accuracy (fraction r_c > r_r),
/// mean_gap, chosen_mean, rejected_mean. Stable for any gap. Bradley & Terry 1952; InstructGPT (Ouyang
/// et al. 2022); the margin from Llama 2 (Touvron et al. 2023); reward centring from Eisenstein et al.
/// 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking".
#[pyfunction]
#[pyo3(signature = (chosen_rewards, rejected_rewards, margin = None, center_rewards_coefficient = 0.0))]
fn reward_loss<'py>(
    py: Python<'py>,
    chosen_rewards: &Bound<'py, PyAny>,
    rejected_rewards: &Bound<'py, PyAny>,
    margin: Option<&Bound<'py, PyAny>>,
    center_rewards_coefficient: f64,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let (c, r, m) = (to_tensor(py, chosen_rewards)?, to_tensor(py, rejected_rewards)?, opt_tensor(py, margin)?);
    let out = run(py, || reward::reward_loss(&c, &r, m.as_ref(), center_rewards_coefficient))?;
    let d = PyDict::new(py);
    d.set_item("accuracy", out.accuracy)?;
    d.set_item("mean_gap", out.mean_gap)?;
    d.set_item("chosen_mean", out.chosen_mean)?;
    d.set_item("rejected_mean", out.rejected_mean)?;
    Ok((PyTensor::wrap(out.loss), d))
}

/// DPO-family loss of per-pair sequence log-probs (B,). With u = (log π_c − log π_ref,c) − (log π_r −
/// log π_ref,r): "sigmoid" −(1−ε)log σ(βu) − ε log σ(−βu) (Rafailov et al. 2023, "Direct Preference
/// Optimization"; ε = label_smoothing is cDPO, Mitchell 2023), "ipo" (u − 1/(2β))² (Azar et al. 2023, "A
/// General Theoretical Paradigm to Understand Learning from Human Preferences"), "hinge" max(0, 1 − βu)
/// (Zhao et al. 2023, "SLiC-HF"). Mean over pairs; gradients reach the policy log-probs only. Returns
/// (loss, metrics): chosen_rewards and rejected_rewards β·(log π − log π_ref) as detached (B,) tensors,
/// margin (their mean difference) and accuracy (fraction chosen > rejected).
#[pyfunction]
#[pyo3(signature = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta = 0.1,
    loss_type = "sigmoid", label_smoothing = 0.0))]
#[allow(clippy::too_many_arguments)]
fn dpo_loss<'py>(
    py: Python<'py>,
    policy_chosen_logps: &Bound<'py, PyAny>,
    policy_rejected_logps: &Bound<'py, PyAny>,
    ref_chosen_logps: &Bound<'py, PyAny>,
    ref_rejected_logps: &Bound<'py, PyAny>,
    beta: f64,
    loss_type: &str,
    label_smoothing: f64,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let pc = to_tensor(py, policy_chosen_logps)?;
    let pr = to_tensor(py, policy_rejected_logps)?;
    let rc = to_tensor(py, ref_chosen_logps)?;
    let rr = to_tensor(py, ref_rejected_logps)?;
    let kind = dpo::DpoLossType::parse(loss_type)?;
    let out = run(py, || dpo::dpo_loss(&pc, &pr, &rc, &rr, beta, kind, label_smoothing))?;
    let d = PyDict::new(py);
    d.set_item("chosen_rewards", PyTensor::wrap(out.chosen_rewards))?;
    d.set_item("rejected_rewards", PyTensor::wrap(out.rejected_rewards))?;
    d.set_item("margin", out.margin)?;
    d.set_item("accuracy", out.accuracy)?;
    Ok((PyTensor::wrap(out.loss), d))
}

/// PPO clipped surrogate −min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = exp(logps − old_logps) (log-ratio clamped to
/// ±20), averaged over the tokens where mask is 1 (Schulman et al. 2017, "Proximal Policy Optimization
/// Algorithms"). logps, old_logps, mask (B, T); advantages (B, T) or (B,). Returns (loss, metrics):
/// approx_kl (mean ½(logps − old_logps)²) and clip_fraction. An all-masked batch gives 0, not nan.
#[pyfunction]
#[pyo3(signature = (logps, old_logps, advantages, mask = None, clip_eps = 0.2))]
fn ppo_policy_loss<'py>(
    py: Python<'py>,
    logps: &Bound<'py, PyAny>,
    old_logps: &Bound<'py, PyAny>,
    advantages: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    clip_eps: f64,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let (lp, old, adv) = (to_tensor(py, logps)?, to_tensor(py, old_logps)?, to_tensor(py, advantages)?);
    let m = opt_tensor(py, mask)?;
    let out = run(py, || ppo::ppo_policy_loss(&lp, &old, &adv, m.as_ref(), clip_eps))?;
    let d = PyDict::new(py);
    d.set_item("approx_kl", out.approx_kl)?;
    d.set_item("clip_fraction", out.clip_fraction)?;
    Ok((PyTensor::wrap(out.loss), d))
}

/// PPO clipped value loss ½·max((V − R)², (V_old + clip(V − V_old, ±clip_eps) − R)²), masked mean over
/// (B, T); clip_eps=None gives the plain ½(V − R)² (PPO2 value clipping, see Engstrom et al. 2020,
/// "Implementation Matters in Deep Policy Gradients"). Returns (loss, {"clip_fraction": ...}).
#[pyfunction]
#[pyo3(signature = (values, old_values, returns, mask = None, clip_eps = Some(0.2)))]
fn ppo_value_loss<'py>(
    py: Python<'py>,
    values: &Bound<'py, PyAny>,
    old_values: &Bound<'py, PyAny>,
    returns: &Bound<'py, PyAny>,
    mask: Option<&Bound<'py, PyAny>>,
    clip_eps: Option<f64>,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let (v, vo, r) = (to_tensor(py, values)?, to_tensor(py, old_values)?, to_tensor(py, returns)?);
    let m = opt_tensor(py, mask)?;
    let out = run(py, || ppo::ppo_value_loss(&v, &vo, &r, m.as_ref(), clip_eps))?;
    let d = PyDict::new(py);
    d.set_item("clip_fraction", out.clip_fraction)?;
    Ok((PyTensor::wrap(out.loss), d))
}

/// Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
/// Generalized Advantage Estimation") over right-padded (B, T) rewards and values: δ_t = r_t + γV_{t+1} −
/// V_t, A_t = δ_t + γλA_{t+1}, the step after a row's last unmasked token terminal. Returns (advantages,
/// returns = advantages + values), 0 on padding, no gradient. A mask with a hole is refused.
#[pyfunction]
#[pyo3(signature = (rewards, values, mask = None, gamma = 1.0, lam = 0.95))]
fn gae(
    py: Python<'_>,
    rewards: &Bound<'_, PyAny>,
    values: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    gamma: f64,
    lam: f64,
) -> PyResult<(PyTensor, PyTensor)> {
    let (r, v, m) = (to_tensor(py, rewards)?, to_tensor(py, values)?, opt_tensor(py, mask)?);
    let (a, ret) = run(py, || ppo::gae(&r, &v, m.as_ref(), gamma, lam))?;
    Ok((PyTensor::wrap(a), PyTensor::wrap(ret)))
}

/// Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (Schulman 2020, "Approximating KL
/// Divergence"): "k1" logps − ref_logps (unbiased, can be negative), "k3" e^x − x − 1 with x = ref_logps −
/// logps (unbiased, ≥ 0; x clamped to ±20). (B, T) → (B, T), 0 where mask is 0; differentiable w.r.t.
/// logps. The PPO reward penalty r_t − β·kl_t is Ziegler et al. 2019, "Fine-Tuning Language Models from
/// Human Preferences".
#[pyfunction]
#[pyo3(signature = (logps, ref_logps, mask = None, estimator = "k1"))]
fn kl_penalty(
    py: Python<'_>,
    logps: &Bound<'_, PyAny>,
    ref_logps: &Bound<'_, PyAny>,
    mask: Option<&Bound<'_, PyAny>>,
    estimator: &str,
) -> PyResult<PyTensor> {
    let (lp, rf, m) = (to_tensor(py, logps)?, to_tensor(py, ref_logps)?, opt_tensor(py, mask)?);
    let est = ppo::KlEstimator::parse("kl_penalty", estimator)?;
    Ok(PyTensor::wrap(run(py, || ppo::kl_penalty(&lp, &rf, m.as_ref(), est))?))
}

/// Group-relative advantages for rewards (B,) in B / group_size groups of consecutive completions:
/// (r − group mean) / (std + 1e-4), std (n − 1 divisor) of the group ("group", Shao et al. 2024,
/// "DeepSeekMath"), of the batch ("batch", Liu et al. 2025, "Tricks or Traps? A Deep Dive into RL for LLM
/// Reasoning"), or no division ("none", Liu et al. 2025, "Understanding R1-Zero-Like Training", Dr.
/// GRPO). Exactly 0 in a group whose rewards are all equal; never nan; non-finite rewards are refused.
#[pyfunction]
#[pyo3(signature = (rewards, group_size, scale = "group"))]
fn grpo_advantages(py: Python<'_>, rewards: &Bound<'_, PyAny>, group_size: i64, scale: &str) -> PyResult<PyTensor> {
    let r = to_tensor(py, rewards)?;
    let g = positive("grpo_advantages", "group_size", group_size)?;
    let s = grpo::AdvantageScale::parse(scale)?;
    Ok(PyTensor::wrap(run(py, || grpo::grpo_advantages(&r, g, s))?))
}

/// RLOO advantages (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for
/// Learning from Human Feedback in LLMs"): each reward minus the mean of the other group_size − 1 rewards
/// of its group. rewards (B,); group_size ≥ 2.
#[pyfunction]
#[pyo3(signature = (rewards, group_size))]
fn rloo_advantages(py: Python<'_>, rewards: &Bound<'_, PyAny>, group_size: i64) -> PyResult<PyTensor> {
    let r = to_tensor(py, rewards)?;
    let g = positive("rloo_advantages", "group_size", group_size)?;
    Ok(PyTensor::wrap(run(py, || grpo::rloo_advantages(&r, g))?))
}

/// GRPO loss: per token −min(ρA, clip(ρ, 1−eps_low, 1+eps_high)A) + β·k3(π, π_ref), ρ = exp(logps −
/// old_logps), over logps, old_logps, mask (B, T), advantages (B,) or (B, T). Clip-higher eps_high (None =
/// eps_low) is from DAPO (Yu et al. 2025); the k3 KL with β from DeepSeekMath (Shao et al. 2024).
/// loss_type: "grpo" per-sequence mean then batch mean (DeepSeekMath); "bnpo" token mean over this batch;
/// "dr_grpo" sum / (B · max_completion_length) (Dr. GRPO, Liu et al. 2025; max_completion_length
/// required); "dapo" token mean over num_items_in_batch tokens, the unmasked tokens of every micro-batch
/// of the optimizer step (default: this batch's, which equals bnpo). Returns (loss, metrics): kl (mean
/// k3, None without ref_logps; with ref_logps and beta=0 it is only reported), clip_low_fraction,
/// clip_high_fraction, clip_fraction.
#[pyfunction]
#[pyo3(signature = (logps, old_logps, advantages, mask, ref_logps = None, beta = 0.0, eps_low = 0.2,
    eps_high = None, loss_type = "dapo", max_completion_length = None, num_items_in_batch = None))]
#[allow(clippy::too_many_arguments)]
fn grpo_loss<'py>(
    py: Python<'py>,
    logps: &Bound<'py, PyAny>,
    old_logps: &Bound<'py, PyAny>,
    advantages: &Bound<'py, PyAny>,
    mask: &Bound<'py, PyAny>,
    ref_logps: Option<&Bound<'py, PyAny>>,
    beta: f64,
    eps_low: f64,
    eps_high: Option<f64>,
    loss_type: &str,
    max_completion_length: Option<i64>,
    num_items_in_batch: Option<i64>,
) -> PyResult<(PyTensor, Bound<'py, PyDict>)> {
    let (lp, old, adv, m) =
        (to_tensor(py, logps)?, to_tensor(py, old_logps)?, to_tensor(py, advantages)?, to_tensor(py, mask)?);
    let rf = opt_tensor(py, ref_logps)?;
    let cfg = grpo::GrpoConfig {
        beta,
        eps_low,
        eps_high,
        loss_type: grpo::GrpoLossType::parse(loss_type)?,
        max_completion_length: max_completion_length
            .map(|v| positive("grpo_loss", "max_completion_length", v))
            .transpose()?,
        num_items_in_batch: num_items_in_batch.map(|v| positive("grpo_loss", "num_items_in_batch", v)).transpose()?,
    };
    let out = run(py, || grpo::grpo_loss(&lp, &old, &adv, &m, rf.as_ref(), cfg))?;
    let d = PyDict::new(py);
    d.set_item("kl", out.kl)?;
    d.set_item("clip_low_fraction", out.clip_low_fraction)?;
    d.set_item("clip_high_fraction", out.clip_high_fraction)?;
    d.set_item("clip_fraction", out.clip_fraction)?;
    Ok((PyTensor::wrap(out.loss), d))
}

/// Entropy −Σ p log p of softmax(logits) over the last dim, per token: (..., V) → (...). Fused, with its
/// backward (PPO's entropy, Schulman et al. 2017); a fall towards 0 means the policy stopped exploring.
#[pyfunction]
fn entropy_from_logits(py: Python<'_>, logits: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = to_tensor(py, logits)?;
    Ok(PyTensor::wrap(run(py, || entropy::entropy_from_logits(&x))?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    for f in [
        wrap_pyfunction!(reward_loss, m)?,
        wrap_pyfunction!(dpo_loss, m)?,
        wrap_pyfunction!(ppo_policy_loss, m)?,
        wrap_pyfunction!(ppo_value_loss, m)?,
        wrap_pyfunction!(gae, m)?,
        wrap_pyfunction!(kl_penalty, m)?,
        wrap_pyfunction!(grpo_advantages, m)?,
        wrap_pyfunction!(rloo_advantages, m)?,
        wrap_pyfunction!(grpo_loss, m)?,
        wrap_pyfunction!(entropy_from_logits, m)?,
    ] {
        m.add_function(f)?;
    }
    Ok(())
}
