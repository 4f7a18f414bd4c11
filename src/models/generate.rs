//! Sampling with a KV cache, shared by every `CausalLm`: the prompt is run once, then each new token
//! costs one position per layer. Greedy (temperature 0), temperature, top-k and top-p (nucleus)
//! sampling from a seeded generator; per-row stop tokens; batched prompts. Each sampled token comes back
//! with its log-probability under the model's own distribution (temperature 1, no filtering) — the
//! number PPO and GRPO need.

use super::{CausalLm, KvCache, check_batch};
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use crate::tensor::random::{self, Rng};

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// None = draw a seed from the global generator (so `manual_seed` still makes runs reproducible).
    pub seed: Option<u64>,
    /// A row stops after emitting any of these (the stop token is included in its output).
    pub stop_tokens: Vec<i64>,
}

/// New tokens per prompt, and log p(token) for each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    pub tokens: Vec<Vec<i64>>,
    pub logprobs: Vec<Vec<f32>>,
}

impl SampleOptions {
    fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(Error::value(
                "generate",
                format!("temperature must be finite and >= 0, got {}", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::value("generate", "top_k must be >= 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::value("generate", format!("top_p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Pick one token from a row of logits; returns (token, log p under the unmodified softmax).
pub fn sample_row(logits: &[f32], opt: &SampleOptions, rng: &mut Rng) -> (i64, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64 + logits.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
    let logp = |i: usize| (logits[i] as f64 - lse) as f32;
    if opt.temperature == 0.0 {
        // greedy: first maximum, like argmax
        let best = logits.iter().enumerate().fold(0, |b, (i, &l)| if l > logits[b] { i } else { b });
        return (best as i64, logp(best));
    }
    let inv_t = 1.0 / opt.temperature as f64;
    let mut cand: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i, (l as f64 - max as f64) * inv_t)).collect();
    // most likely first; ties by lower id, so the order is fully determined
    cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(&b.0)));
    if let Some(k) = opt.top_k {
        cand.truncate(k.min(cand.len()));
    }
    let mut w: Vec<f64> = cand.iter().map(|&(_, s)| s.exp()).collect();
    let total: f64 = w.iter().sum();
    if let Some(p) = opt.top_p {
        let (mut acc, mut keep) = (0.0, w.len());
        for (j, &x) in w.iter().enumerate() {
            acc += x / total;
            if acc >= p as f64 {
                keep = j + 1;
                break;
            }
        }
        w.truncate(keep);
        cand.truncate(keep);
    }
    let total: f64 = w.iter().sum();
    let mut u = rng.uniform_f64() * total;
    let mut pick = cand.len() - 1;
    for (j, &x) in w.iter().enumerate() {
        if u < x {
            pick = j;
            break;
        }
        u -= x;
    }
    let tok = cand[pick].0;
    (tok as i64, logp(tok))
}

/// Continue each prompt. Prompts of equal length run as one batch; otherwise each runs on its own
/// (there is no padding mask, so rows of different lengths cannot share a batch).
pub fn generate(model: &dyn CausalLm, prompts: &[Vec<i64>], opt: &SampleOptions) -> Result<Generated> {
    opt.validate()?;
    if prompts.is_empty() {
        return Ok(Generated::default());
    }
    if prompts.iter().any(|p| p.is_empty()) {
        return Err(Error::value("generate", "every prompt needs at least one token (e.g. BOS)"));
    }
    let seed = opt.seed.unwrap_or_else(|| random::with_global(|r| r.next_u64()));
    let mut rng = Rng::new(seed);
    let same_len = prompts.iter().all(|p| p.len() == prompts[0].len());
    if same_len {
        return generate_batch(model, prompts, opt, &mut rng);
    }
    let mut out = Generated::default();
    for p in prompts {
        let g = generate_batch(model, std::slice::from_ref(p), opt, &mut rng)?;
        out.tokens.extend(g.tokens);
        out.logprobs.extend(g.logprobs);
    }
    Ok(out)
}

fn generate_batch(model: &dyn CausalLm, prompts: &[Vec<i64>], opt: &SampleOptions, rng: &mut Rng) -> Result<Generated> {
    let _g = no_grad();
    let (b, t0) = (prompts.len(), prompts[0].len());
    let idx: Vec<i64> = prompts.iter().flatten().copied().collect();
    check_batch(model, &idx, b, t0, 0)?;
    if t0 + opt.max_new_tokens > model.max_seq_len() {
        return Err(Error::value(
            "generate",
            format!(
                "prompt length {t0} + max_new_tokens {} exceeds the model's maximum of {} positions",
                opt.max_new_tokens,
                model.max_seq_len()
            ),
        ));
    }
    let mut cache = KvCache::with_capacity(model.n_layer(), t0 + opt.max_new_tokens);
    let mut out = Generated { tokens: vec![Vec::new(); b], logprobs: vec![Vec::new(); b] };
    let mut done = vec![false; b];
    let v = model.vocab_size();
    // the prompt: one pass, keep only each row's last position for the head
    let h = model.hidden(&idx, b, t0, Some(&mut cache), false)?; // (B, T0, C)
    let mut last = last_positions(&h)?;
    for _ in 0..opt.max_new_tokens {
        crate::parallel::check_interrupt()?;
        let logits = model.head(&last)?; // (B, 1, V)
        let data = logits.data();
        let mut next = Vec::with_capacity(b);
        for row in 0..b {
            let (tok, lp) = sample_row(&data[row * v..(row + 1) * v], opt, rng);
            if !done[row] {
                out.tokens[row].push(tok);
                out.logprobs[row].push(lp);
                done[row] = opt.stop_tokens.contains(&tok);
            }
            next.push(tok);
        }
        drop(data);
        if done.iter().all(|&d| d) {
            break;
        }
        let h = model.hidden(&next, b, 1, Some(&mut cache), false)?;
        last = h;
    }
    Ok(out)
}

/// (B, T, C) → (B, 1, C): the last position of each row.
fn last_positions(h: &Tensor) -> Result<Tensor> {
    let t = h.shape()[1];
    crate::ops::view::narrow(h, 1, t - 1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(t: f32, k: Option<usize>, p: Option<f32>) -> SampleOptions {
        SampleOptions { max_new_tokens: 1, temperature: t, top_k: k, top_p: p, seed: Some(0), stop_tokens: vec![] }
    }

    #[test]
    fn greedy_top_k_and_top_p_pick_from_the_right_sets() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(1);
        let (tok, lp) = sample_row(&logits, &opts(0.0, None, None), &mut rng);
        assert_eq!(tok, 1);
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((lp as f64 - (3.0 - lse)).abs() < 1e-6);
        for _ in 0..200 {
            let (t, _) = sample_row(&logits, &opts(1.0, Some(2), None), &mut rng);
            assert!(t == 1 || t == 2);
            // p = 0.6: token 1 alone has probability ≈ 0.64, so it is the whole nucleus
            assert_eq!(sample_row(&logits, &opts(1.0, None, Some(0.6)), &mut rng).0, 1);
        }
        // temperature sharpens: at T=0.05 the top token wins essentially always
        let wins = (0..200).filter(|_| sample_row(&logits, &opts(0.05, None, None), &mut rng).0 == 1).count();
        assert_eq!(wins, 200);
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probabilities 1/6, 2/6, 3/6
        let mut rng = Rng::new(2);
        let mut c = [0usize; 3];
        for _ in 0..30_000 {
            c[sample_row(&logits, &opts(1.0, None, None), &mut rng).0 as usize] += 1;
        }
        for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
            let got = c[i] as f64 / 30_000.0;
            assert!((got - want).abs() < 0.01, "token {i}: {got} vs {want}");
        }
    }
}
