//! Sampling with a KV cache, shared by every `CausalLm`: the prompts are run once, then each new token
//! costs one position per layer. Greedy (temperature 0), temperature, top-k and top-p (nucleus)
//! sampling; each row draws from its own seeded generator and stops at its own stop tokens.
//! A batch of prompts of unequal length runs as one batch: the prompts are padded (left-padded by
//! default, or given padded either side with a mask), padding is never attended to, and each row
//! counts its positions from its own first real token, so every row's tokens equal those of the same
//! prompt run alone. Each sampled token comes back with its log-probability under the model's own
//! distribution (temperature 1, no filtering) — the number PPO and GRPO need.
//! Sampling sorts nothing for plain temperature sampling, selects the k best (`select_nth_unstable`)
//! for top-k, and sorts only the candidates a top-p cut needs.

use std::sync::Arc;

use super::{CausalLm, KvCache, check_batch};
use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::ops::matmul::{WeightCopies, row_wise, with_weight_copies};
use crate::tensor::Tensor;
use crate::tensor::random::{self, Rng};

#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// Row r samples from its own generator `Rng::new(s_r)`, s_r = the r-th u64 drawn from
    /// `Rng::new(seed)` (so a row's tokens do not depend on the rows after it). None = draw the seed from
    /// the global generator (so `manual_seed` still makes runs reproducible).
    pub seed: Option<u64>,
    /// Or the seeds s_r themselves, one per row (then `seed` must be None).
    pub row_seeds: Vec<u64>,
    /// A row stops after emitting any of these (the stop token is included in its output).
    pub stop_tokens: Vec<i64>,
    /// Stop tokens of each row (one list per row, added to `stop_tokens`), or empty.
    pub row_stop_tokens: Vec<Vec<i64>>,
}

/// New tokens per prompt, and log p(token) for each. A row that stopped holds its tokens up to and
/// including the stop token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generated {
    pub tokens: Vec<Vec<i64>>,
    pub logprobs: Vec<Vec<f32>>,
}

impl SampleOptions {
    fn validate(&self, rows: usize) -> Result<()> {
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
        if !self.row_seeds.is_empty() && (self.row_seeds.len() != rows || self.seed.is_some()) {
            return Err(Error::value(
                "generate",
                format!(
                    "give one seed, or one seed per row ({rows} rows), not {} row seeds{}",
                    self.row_seeds.len(),
                    if self.seed.is_some() { " and a seed" } else { "" }
                ),
            ));
        }
        if !self.row_stop_tokens.is_empty() && self.row_stop_tokens.len() != rows {
            return Err(Error::value(
                "generate",
                format!("per-row stop tokens: got {} lists for {rows} rows", self.row_stop_tokens.len()),
            ));
        }
        Ok(())
    }

    /// Each row's own generator.
    fn row_rngs(&self, rows: usize) -> Vec<Rng> {
        if !self.row_seeds.is_empty() {
            return self.row_seeds.iter().map(|&s| Rng::new(s)).collect();
        }
        let seed = self.seed.unwrap_or_else(|| random::with_global(|r| r.next_u64()));
        random::row_seeds(seed, rows).into_iter().map(Rng::new).collect()
    }

    fn stops(&self, row: usize, tok: i64) -> bool {
        self.stop_tokens.contains(&tok) || self.row_stop_tokens.get(row).is_some_and(|s| s.contains(&tok))
    }
}

/// Prompts as one padded (B, T) block: `ids` row-major, `real` false at padding. The padding may sit
/// anywhere (left, right, or both); each row needs at least one real token. Padding positions must
/// hold valid token ids (any: they are never attended to).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptBatch {
    pub ids: Vec<i64>,
    pub real: Vec<bool>,
    pub b: usize,
    pub t: usize,
}

impl PromptBatch {
    /// Lists of unequal length, left-padded with `pad_id` to the longest: the layout decoder-only
    /// generation expects, since every row's last prompt token then sits in the last column.
    pub fn left_padded(prompts: &[Vec<i64>], pad_id: i64) -> PromptBatch {
        let t = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let (mut ids, mut real) = (Vec::with_capacity(prompts.len() * t), Vec::with_capacity(prompts.len() * t));
        for p in prompts {
            ids.extend(std::iter::repeat_n(pad_id, t - p.len()).chain(p.iter().copied()));
            real.extend((0..t).map(|i| i >= t - p.len()));
        }
        PromptBatch { ids, real, b: prompts.len(), t }
    }

    fn validate(&self) -> Result<()> {
        if self.ids.len() != self.b * self.t || self.real.len() != self.b * self.t {
            return Err(Error::shape(
                "generate",
                format!(
                    "a ({}, {}) prompt batch needs {} ids and mask entries, got {} and {}",
                    self.b,
                    self.t,
                    self.b * self.t,
                    self.ids.len(),
                    self.real.len()
                ),
            ));
        }
        if let Some(r) = (0..self.b).find(|&r| !self.real[r * self.t..(r + 1) * self.t].contains(&true)) {
            return Err(Error::value(
                "generate",
                format!("prompt {r} has no real token: every prompt needs at least one (e.g. BOS)"),
            ));
        }
        Ok(())
    }
}

/// Reusable buffers for sampling rows of logits: weights over the vocabulary and candidate ids.
#[derive(Default)]
pub struct Sampler {
    w: Vec<f64>,
    /// (logit, id) pairs, sorted or selected in place (pairs, not ids, so comparisons read no other array)
    cand: Vec<(f32, u32)>,
}

/// Most likely first; ties by lower id, so the order (and so the top-k set) is fully determined.
fn by_logit(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Index of the pick for a draw u·total over `w` in order (the last positive weight if rounding runs
/// past the end).
fn pick(w: impl Iterator<Item = f64>, u: f64) -> usize {
    let (mut u, mut last) = (u, 0);
    for (j, x) in w.enumerate() {
        if u < x {
            return j;
        }
        if x > 0.0 {
            last = j;
        }
        u -= x;
    }
    last
}

impl Sampler {
    /// Pick one token from a row of logits; returns (token, log p under the unmodified softmax). Draws one
    /// uniform from `rng` unless greedy. Non-finite logits (NaN, +inf) are an error.
    pub fn sample(&mut self, logits: &[f32], opt: &SampleOptions, rng: &mut Rng) -> Result<(i64, f32)> {
        let v = logits.len();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let (mf, plain_t1) = (max as f64, opt.temperature == 1.0 && opt.top_k.is_none() && opt.top_p.is_none());
        // one pass: the softmax's normaliser (and, for plain temperature-1 sampling, the weights themselves)
        let sum: f64 = if plain_t1 {
            self.w.clear();
            self.w.extend(logits.iter().map(|&l| (l as f64 - mf).exp()));
            self.w.iter().sum()
        } else {
            logits.iter().map(|&l| (l as f64 - mf).exp()).sum()
        };
        let lse = mf + sum.ln();
        if !lse.is_finite() || v == 0 {
            return Err(Error::value("generate", format!("the model's logits are not finite (log-sum-exp {lse})")));
        }
        let logp = |i: usize| (logits[i] as f64 - lse) as f32;
        if opt.temperature == 0.0 {
            // greedy: first maximum, like argmax
            let best = logits.iter().enumerate().fold(0, |b, (i, &l)| if l > logits[b] { i } else { b });
            return Ok((best as i64, logp(best)));
        }
        let inv_t = 1.0 / opt.temperature as f64;
        let weight = |i: usize| ((logits[i] as f64 - mf) * inv_t).exp();
        let u = rng.uniform_f64();
        if opt.top_k.is_none() && opt.top_p.is_none() {
            // plain temperature sampling: no sort, the inverse CDF walked in id order
            if !plain_t1 {
                self.w.clear();
                self.w.extend((0..v).map(weight));
            }
            let total: f64 = if plain_t1 { sum } else { self.w.iter().sum() };
            let tok = pick(self.w.iter().copied(), u * total);
            return Ok((tok as i64, logp(tok)));
        }
        // top-k and/or top-p: candidates in `by_logit` order. Top-k selects its k (O(V)) and sorts those;
        // top-p alone selects a growing number of the best until its cut falls inside them.
        let k_max = opt.top_k.unwrap_or(v).min(v);
        let mut k = if opt.top_k.is_none() { 64.min(v) } else { k_max };
        // top-p alone normalises over the whole vocabulary (id order, as the reference does)
        let full_total: f64 = match (opt.top_k, opt.top_p) {
            (None, Some(_)) if opt.temperature == 1.0 => sum,
            (None, Some(_)) => (0..v).map(weight).sum(),
            _ => 0.0,
        };
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        loop {
            if k < v {
                self.cand.select_nth_unstable_by(k - 1, by_logit);
            }
            let cand = &mut self.cand[..k];
            cand.sort_unstable_by(by_logit);
            self.w.clear();
            self.w.extend(cand.iter().map(|&(_, i)| weight(i as usize)));
            let mut keep = k;
            if let Some(p) = opt.top_p {
                let total = if opt.top_k.is_some() { self.w.iter().sum() } else { full_total };
                let mut acc = 0.0;
                let cut = self.w.iter().position(|&x| {
                    acc += x / total;
                    acc >= p as f64
                });
                match cut {
                    Some(j) => keep = j + 1,
                    None if k < k_max => {
                        // the nucleus is larger than these k: look further. Every token left weighs at most
                        // the k-th weight, so at least (p − acc)·total / w_k more are needed.
                        let w_k = self.w[k - 1].max(f64::MIN_POSITIVE);
                        let more = ((p as f64 - acc) * total / w_k).ceil().min(v as f64) as usize;
                        k = (4 * k).max(k + more);
                        // a nucleus of a large part of the vocabulary: one sort of everything costs less
                        k = if k > k_max / 4 { k_max } else { k };
                        continue;
                    }
                    None => {}
                }
            }
            let kept = &self.w[..keep];
            let total: f64 = kept.iter().sum();
            let tok = self.cand[pick(kept.iter().copied(), u * total)].1 as usize;
            return Ok((tok as i64, logp(tok)));
        }
    }
}

/// `Sampler::sample` with fresh buffers (one row).
pub fn sample_row(logits: &[f32], opt: &SampleOptions, rng: &mut Rng) -> Result<(i64, f32)> {
    Sampler::default().sample(logits, opt, rng)
}

/// Continue each prompt (lists of any lengths, left-padded with id 0 into one batch).
pub fn generate(model: &dyn CausalLm, prompts: &[Vec<i64>], opt: &SampleOptions) -> Result<Generated> {
    generate_padded(model, &PromptBatch::left_padded(prompts, 0), opt)
}

/// Rows per group when a batch generates as independent groups of rows (`row_groups`).
const GROUP_ROWS: usize = 8;
/// Groups only for models of at most this many bytes of weights: each group streams all of them per new
/// token, which is cheap while they sit in the caches, but for a large model the rows are better kept
/// together (the weights read once per token, each product split over the threads by columns).
const GROUP_WEIGHT_BYTES: usize = 16 << 20;

/// How a batch of `b` rows is cut into groups that generate independently and at the same time (each
/// its own forward passes, cache and early stop), so that the threads share out whole decode steps
/// instead of meeting at every op of every step: an even number of groups of at least GROUP_ROWS rows
/// (as equal as can be), when there are that many rows and the model is small; else one group. Depends
/// only on b and the model, never on the thread count; a row's numbers do not depend on its group at all
/// (the prompt pass is a GEMM, whose rows do not depend on the rows beside them; the decode steps are
/// row-wise), so they are the same on any number of threads.
fn row_groups(model: &dyn CausalLm, b: usize) -> Vec<std::ops::Range<usize>> {
    let weights: usize = model.named_parameters().iter().map(|(_, p)| p.numel() * 4).sum();
    let n = b / GROUP_ROWS / 2 * 2;
    if n < 2 || weights > GROUP_WEIGHT_BYTES {
        return std::iter::once(0..b).collect();
    }
    let (per, extra) = (b / n, b % n);
    let mut start = 0;
    (0..n)
        .map(|g| {
            let len = per + usize::from(g < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// Continue a padded batch of prompts, all rows at once. Row r's tokens (and, to float rounding, its
/// log-probs) are those of its prompt run alone with seed s_r (see `SampleOptions::seed`). A batch of
/// small-model rows runs as groups of rows on the threads at once (`row_groups`).
pub fn generate_padded(model: &dyn CausalLm, batch: &PromptBatch, opt: &SampleOptions) -> Result<Generated> {
    let (b, t0) = (batch.b, batch.t);
    opt.validate(b)?;
    if b == 0 {
        return Ok(Generated::default());
    }
    batch.validate()?;
    check_batch(model, &batch.ids, b, t0, 0)?;
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
    let _g = no_grad();
    let mut rngs = opt.row_rngs(b);
    let groups = row_groups(model, b);
    // under autocast("bf16") the decode steps read bf16 copies of the weights, made once for this call
    let copies = crate::ops::matmul::bf16_enabled().then(|| Arc::new(WeightCopies::default()));
    let copies = copies.as_ref();
    if groups.len() == 1 {
        return generate_rows(model, batch, opt, 0, &mut rngs, copies);
    }
    let mut pieces = Vec::with_capacity(groups.len());
    let mut rest = &mut rngs[..];
    for g in &groups {
        let (mine, tail) = rest.split_at_mut(g.len());
        rest = tail;
        let rows = PromptBatch {
            ids: batch.ids[g.start * t0..g.end * t0].to_vec(),
            real: batch.real[g.start * t0..g.end * t0].to_vec(),
            b: g.len(),
            t: t0,
        };
        pieces.push((g.start, rows, mine));
    }
    let parts =
        crate::parallel::map_tasks(pieces, |(row0, rows, rngs)| generate_rows(model, &rows, opt, row0, rngs, copies))?;
    let mut out = Generated::default();
    for p in parts {
        out.tokens.extend(p.tokens);
        out.logprobs.extend(p.logprobs);
    }
    Ok(out)
}

/// `generate_padded` for one group of rows: the rows `row0..row0 + batch.b` of the whole batch (for their
/// stop tokens), sampling with `rngs` (one per row); the decode steps read the call's bf16 weight
/// `copies` (Some in a bf16 scope).
fn generate_rows(
    model: &dyn CausalLm,
    batch: &PromptBatch,
    opt: &SampleOptions,
    row0: usize,
    rngs: &mut [Rng],
    copies: Option<&Arc<WeightCopies>>,
) -> Result<Generated> {
    let (b, t0) = (batch.b, batch.t);
    let _g = no_grad();
    let mut cache = KvCache::with_capacity(model.n_layer(), t0 + opt.max_new_tokens);
    let padded = batch.real.contains(&false);
    if padded {
        cache.rows.set_next(batch.real.clone());
    }
    let mut out = Generated { tokens: vec![Vec::new(); b], logprobs: vec![Vec::new(); b] };
    let mut done = vec![opt.max_new_tokens == 0; b];
    let v = model.vocab_size();
    let mut sampler = Sampler::default();
    // the prompts: one pass, keep each row's last real position for the head
    let h = model.hidden(&batch.ids, b, t0, Some(&mut cache), false)?; // (B, T0, C)
    let mut last = if padded { last_real_positions(&h, batch)? } else { crate::ops::view::narrow(&h, 1, t0 - 1, 1)? };
    let mut next = vec![0i64; b];
    // the decode steps compute their products row by row (`ops::matmul::row_wise`): a row's numbers are
    // the same in any batch, any group and any share of the rows (`nf.rl.RayRollouts`); in a bf16 scope
    // from the bf16 weight copies
    let decode = |f: &mut dyn FnMut() -> Result<Tensor>| row_wise(|| with_weight_copies(copies, f));
    for step in 0..opt.max_new_tokens {
        crate::parallel::check_interrupt()?;
        let logits = decode(&mut || model.head(&last))?; // (B, 1, V)
        let data = logits.data();
        for row in 0..b {
            if done[row] {
                continue;
            }
            let (tok, lp) = sampler.sample(&data[row * v..(row + 1) * v], opt, &mut rngs[row])?;
            out.tokens[row].push(tok);
            out.logprobs[row].push(lp);
            done[row] = opt.stops(row0 + row, tok);
            // NOTE: a finished row stays in its group (feeding its last token, its results unread) until
            // every row of the group is done: simple, but a group with one long row pays for all its rows
            next[row] = tok;
        }
        drop(data);
        if done.iter().all(|&d| d) || step + 1 == opt.max_new_tokens {
            break;
        }
        last = decode(&mut || model.hidden(&next, b, 1, Some(&mut cache), false))?;
    }
    Ok(out)
}

/// (B, T, C) → (B, 1, C): each row's last real position.
fn last_real_positions(h: &Tensor, batch: &PromptBatch) -> Result<Tensor> {
    let c = h.shape()[2];
    let data = h.data();
    let mut out = Vec::with_capacity(batch.b * c);
    for r in 0..batch.b {
        let row = &batch.real[r * batch.t..(r + 1) * batch.t];
        let i = row.iter().rposition(|&x| x).unwrap_or(batch.t - 1);
        out.extend_from_slice(&data[(r * batch.t + i) * c..][..c]);
    }
    Tensor::new(out, &[batch.b, 1, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(t: f32, k: Option<usize>, p: Option<f32>) -> SampleOptions {
        SampleOptions { max_new_tokens: 1, temperature: t, top_k: k, top_p: p, seed: Some(0), ..Default::default() }
    }

    /// The straightforward sampler, for the draw u in [0, 1): every token's weight exp((l − max)·(1/T)); with
    /// top-k or top-p, the whole vocabulary sorted (most likely first, ties by lower id), cut to k, then
    /// to the shortest prefix whose probability (renormalised over the top-k if set, else over the
    /// vocabulary) reaches p; without either, the tokens in id order. The draw u·(sum of what is kept)
    /// walks the kept weights in that order.
    fn reference(logits: &[f32], opt: &SampleOptions, u: f64) -> usize {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let inv_t = 1.0 / opt.temperature as f64;
        let w_of = |i: usize| ((logits[i] as f64 - max) * inv_t).exp();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        let filtered = opt.top_k.is_some() || opt.top_p.is_some();
        if filtered {
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        }
        if let Some(k) = opt.top_k {
            order.truncate(k);
        }
        if let Some(p) = opt.top_p {
            let norm: f64 = if opt.top_k.is_some() {
                order.iter().map(|&i| w_of(i)).sum()
            } else {
                (0..logits.len()).map(w_of).sum()
            };
            let mut acc = 0.0;
            for j in 0..order.len() {
                acc += w_of(order[j]) / norm;
                if acc >= p as f64 {
                    order.truncate(j + 1);
                    break;
                }
            }
        }
        let w: Vec<f64> = order.iter().map(|&i| w_of(i)).collect();
        let total: f64 = w.iter().sum();
        let (mut u, mut last) = (u * total, 0);
        for (j, &x) in w.iter().enumerate() {
            if u < x {
                return order[j];
            }
            if x > 0.0 {
                last = j;
            }
            u -= x;
        }
        order[last]
    }

    #[test]
    fn row_groups_are_even_in_number_and_size_and_only_for_small_models() {
        let small = crate::models::gpt::Gpt::new(crate::models::gpt::GptConfig {
            vocab_size: 8,
            block_size: 8,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        })
        .unwrap();
        let lens = |b| row_groups(&small, b).iter().map(|g| g.len()).collect::<Vec<_>>();
        assert_eq!(lens(15), [15]);
        assert_eq!(lens(16), [8, 8]);
        assert_eq!(lens(20), [10, 10]);
        assert_eq!(lens(24), [12, 12]); // 3 groups of 8 would leave a thread idle for a third of the time
        assert_eq!(lens(33), [9, 8, 8, 8]);
        let groups = row_groups(&small, 70);
        assert_eq!((groups.first().unwrap().start, groups.last().unwrap().end), (0, 70));
        assert!(groups.windows(2).all(|w| w[0].end == w[1].start));
        // a model too large to stream per group keeps its rows together
        let big = crate::models::gpt::Gpt::new(crate::models::gpt::GptConfig {
            vocab_size: 64,
            block_size: 8,
            n_layer: 3,
            n_head: 4,
            n_embd: 384,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        })
        .unwrap();
        assert_eq!(row_groups(&big, 64).len(), 1);
    }

    #[test]
    fn fast_sampling_equals_the_reference_for_the_same_draws() {
        let mut rng = Rng::new(11);
        let mut sampler = Sampler::default();
        // a GPT-2-sized vocabulary, a small one, and one full of ties (ids decide)
        for (v, spread) in [(50_257usize, 3.0f64), (300, 2.0), (40, 0.0)] {
            let mut logits: Vec<f32> = (0..v).map(|_| (rng.normal() * spread) as f32).collect();
            if spread == 0.0 {
                logits.iter_mut().enumerate().for_each(|(i, l)| *l = (i % 4) as f32);
            }
            logits[v / 3] = f32::NEG_INFINITY; // a banned token is never picked
            let cases = [
                (1.0, None, None),
                (0.7, None, None),
                (1.0, Some(1), None),
                (1.3, Some(40), None),
                (1.0, None, Some(0.9)),
                (0.8, None, Some(0.3)),
                (1.0, None, Some(1.0)),
                (1.0, Some(50), Some(0.8)),
                (2.0, Some(v), Some(0.999)),
            ];
            for (t, k, p) in cases {
                let opt = opts(t, k, p);
                for _ in 0..40 {
                    let u = rng.clone().uniform_f64(); // the draw the sampler will make
                    let (tok, lp) = sampler.sample(&logits, &opt, &mut rng).unwrap();
                    assert_eq!(tok as usize, reference(&logits, &opt, u), "V {v} T {t} top_k {k:?} top_p {p:?} u {u}");
                    assert_ne!(tok as usize, v / 3);
                    let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
                    assert!((lp as f64 - (logits[tok as usize] as f64 - lse)).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = Rng::new(12);
        for v in [7usize, 1000, 50_257] {
            for _ in 0..20 {
                let mut logits: Vec<f32> = (0..v).map(|_| rng.normal() as f32).collect();
                logits[v - 1] = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max); // a tie: lower id wins
                let greedy = sample_row(&logits, &opts(0.0, None, None), &mut rng).unwrap();
                for t in [0.5, 1.0, 3.0] {
                    assert_eq!(sample_row(&logits, &opts(t, Some(1), None), &mut rng).unwrap(), greedy);
                }
            }
        }
    }

    #[test]
    fn non_finite_logits_are_an_error() {
        let mut rng = Rng::new(13);
        for bad in [f32::NAN, f32::INFINITY] {
            let err = sample_row(&[0.0, bad, 1.0], &opts(1.0, None, None), &mut rng).unwrap_err().to_string();
            assert!(err.contains("not finite"), "{err}");
        }
    }

    #[test]
    fn greedy_top_k_and_top_p_pick_from_the_right_sets() {
        let logits = [1.0f32, 3.0, 2.0, -1.0];
        let mut rng = Rng::new(1);
        let (tok, lp) = sample_row(&logits, &opts(0.0, None, None), &mut rng).unwrap();
        assert_eq!(tok, 1);
        let lse = logits.iter().map(|&l| (l as f64).exp()).sum::<f64>().ln();
        assert!((lp as f64 - (3.0 - lse)).abs() < 1e-6);
        for _ in 0..200 {
            let (t, _) = sample_row(&logits, &opts(1.0, Some(2), None), &mut rng).unwrap();
            assert!(t == 1 || t == 2);
            // p = 0.6: token 1 alone has probability ≈ 0.64, so it is the whole nucleus
            assert_eq!(sample_row(&logits, &opts(1.0, None, Some(0.6)), &mut rng).unwrap().0, 1);
        }
        // temperature sharpens: at T=0.05 the top token wins essentially always
        let wins = (0..200).filter(|_| sample_row(&logits, &opts(0.05, None, None), &mut rng).unwrap().0 == 1).count();
        assert_eq!(wins, 200);
    }

    #[test]
    fn sampling_frequencies_follow_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()]; // probabilities 1/6, 2/6, 3/6
        let mut rng = Rng::new(2);
        for (k, p) in [(None, None), (Some(3), None), (None, Some(1.0))] {
            let mut c = [0usize; 3];
            for _ in 0..30_000 {
                c[sample_row(&logits, &opts(1.0, k, p), &mut rng).unwrap().0 as usize] += 1;
            }
            for (i, want) in [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0].iter().enumerate() {
                let got = c[i] as f64 / 30_000.0;
                assert!((got - want).abs() < 0.01, "top_k {k:?} top_p {p:?} token {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn left_padding_and_batch_checks() {
        let b = PromptBatch::left_padded(&[vec![5, 6, 7], vec![8]], 0);
        assert_eq!((b.b, b.t), (2, 3));
        assert_eq!(b.ids, [5, 6, 7, 0, 0, 8]);
        assert_eq!(b.real, [true, true, true, false, false, true]);
        let none = PromptBatch { ids: vec![1, 2], real: vec![false, false], b: 1, t: 2 };
        assert!(none.validate().unwrap_err().to_string().contains("no real token"));
        let opt = SampleOptions { row_seeds: vec![1], ..opts(1.0, None, None) };
        assert!(opt.validate(1).is_err(), "a seed and row seeds at once");
        let opt = SampleOptions { seed: None, row_seeds: vec![1, 2], ..opts(1.0, None, None) };
        assert!(opt.validate(3).is_err() && opt.validate(2).is_ok());
    }

    fn tiny_models() -> Vec<Box<dyn CausalLm>> {
        use super::super::gpt::{Gpt, GptConfig};
        use super::super::llama::{Llama, LlamaConfig};
        use crate::ops::rope::RopeLayout;
        random::manual_seed(3);
        let gpt = GptConfig {
            vocab_size: 50,
            block_size: 32,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
            layer_norm_eps: 1e-5,
        };
        let llama = LlamaConfig {
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: false,
            rope_layout: RopeLayout::HalfSplit,
        };
        vec![Box::new(Gpt::new(gpt).unwrap()), Box::new(Llama::new(llama).unwrap())]
    }

    #[test]
    fn a_padded_batch_equals_each_prompt_alone_and_the_mask_is_what_makes_it_so() {
        let prompts = vec![vec![3, 4, 5, 6, 7], vec![8], vec![9, 10, 11]];
        let opt = SampleOptions {
            max_new_tokens: 8,
            temperature: 1.0,
            seed: None,
            row_seeds: vec![5, 6, 7],
            ..opts(1.0, None, None)
        };
        for m in tiny_models() {
            let batch = generate(&*m, &prompts, &opt).unwrap();
            for (r, p) in prompts.iter().enumerate() {
                let one = SampleOptions { row_seeds: vec![opt.row_seeds[r]], ..opt.clone() };
                let alone = generate(&*m, std::slice::from_ref(p), &one).unwrap();
                assert_eq!(batch.tokens[r], alone.tokens[0], "{:?} row {r}", m.kind());
                let worst =
                    batch.logprobs[r].iter().zip(&alone.logprobs[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst < 1e-5, "{:?} row {r}: log-probs differ by {worst:.2e}", m.kind());
            }
            // the same padded block with the padding marked real attends to it: row 1 (4 pads) changes
            let mut lied = PromptBatch::left_padded(&prompts, 0);
            lied.real.iter_mut().for_each(|x| *x = true);
            let wrong = generate_padded(&*m, &lied, &opt).unwrap();
            assert_ne!(wrong.logprobs[1], batch.logprobs[1], "{:?}: padding made no difference", m.kind());
            assert_eq!(wrong.tokens[0], batch.tokens[0], "{:?}: the unpadded row must not change", m.kind());
        }
    }

    /// Under bf16 the decode steps read the call's bf16 weight copies: a row's tokens and log-probs are
    /// the same bits alone and in a batch whose rows run as groups, on 1 and 2 threads; they are not
    /// f32's; and the copies belong to one call: after the weights change in place (an optimizer step),
    /// the next call reads the new weights, as a fresh model holding them does.
    #[test]
    fn bf16_decode_rows_are_independent_and_read_the_current_weights() {
        use crate::ops::matmul::with_bf16;
        use crate::parallel::with_threads;
        let prompts: Vec<Vec<i64>> = (0..17).map(|r| vec![1 + r % 7, 2 + r % 5, 3]).collect();
        let opt = SampleOptions {
            max_new_tokens: 8,
            temperature: 1.0,
            seed: None,
            row_seeds: (0..17).collect(),
            ..opts(1.0, None, None)
        };
        let bits = |g: &Generated| {
            (
                g.tokens.clone(),
                g.logprobs.iter().map(|r| r.iter().map(|v| v.to_bits()).collect()).collect::<Vec<Vec<_>>>(),
            )
        };
        let run = |m: &dyn CausalLm, p: &[Vec<i64>], o: &SampleOptions| with_bf16(true, || generate(m, p, o)).unwrap();
        for m in tiny_models() {
            assert!(row_groups(&*m, 17).len() > 1, "the batch should run as groups of rows");
            let batch = with_threads(2, || run(&*m, &prompts, &opt));
            assert_eq!(
                bits(&batch),
                bits(&with_threads(1, || run(&*m, &prompts, &opt))),
                "{:?}: 1 vs 2 threads",
                m.kind()
            );
            for r in [0, 9, 16] {
                let one = SampleOptions { row_seeds: vec![opt.row_seeds[r]], ..opt.clone() };
                let alone = run(&*m, &prompts[r..r + 1], &one);
                assert_eq!(bits(&alone).0[0], batch.tokens[r], "{:?} row {r}: tokens", m.kind());
                assert_eq!(bits(&alone).1[0], bits(&batch).1[r], "{:?} row {r}: log-prob bits", m.kind());
            }
            let f32 = generate(&*m, &prompts, &opt).unwrap();
            assert_ne!(bits(&f32).1, bits(&batch).1, "{:?}: the bf16 scope gave the f32 log-probs", m.kind());
            for (_, p) in m.named_parameters() {
                p.data_mut().iter_mut().for_each(|v| *v = -1.5 * *v + 0.01);
            }
            let after = run(&*m, &prompts, &opt);
            let fresh = run(&*m.clone_model().unwrap(), &prompts, &opt);
            assert_eq!(bits(&after), bits(&fresh), "{:?}: a stale weight copy after an in-place change", m.kind());
            assert_ne!(bits(&after).1, bits(&batch).1, "{:?}: the changed weights made no difference", m.kind());
        }
    }

    #[test]
    fn clone_model_copies_weights_and_kind() {
        // (that it leaves the global generator alone is checked in Python: tests here share that generator)
        for m in tiny_models() {
            let c = m.clone_model().unwrap();
            assert_eq!(c.kind(), m.kind());
            for ((na, a), (nb, b)) in m.named_parameters().iter().zip(c.named_parameters()) {
                assert_eq!((na, a.to_vec(), a.requires_grad()), (&nb, b.to_vec(), b.requires_grad()));
                assert!(!a.same_storage(&b), "{na} shares storage with its clone");
            }
        }
    }
}
