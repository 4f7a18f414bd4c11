//! Seeded random numbers that are the same on every machine: xoshiro256** seeded through splitmix64,
//! uniform floats from the top 24 bits, normals by Box–Muller in f64. One global generator
//! (`manual_seed`) like torch, plus `Rng` values for code that wants its own stream.
//! Not cryptographic.

use std::sync::Mutex;

use super::{Tensor, alloc_with_capacity, checked_numel, try_with_capacity};
use crate::error::{Error, Result, fmt_shape};

#[derive(Clone, Debug, PartialEq)]
pub struct Rng {
    s: [u64; 4],
    /// Box–Muller makes normals in pairs; the second is kept for the next call.
    spare: Option<f64>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        Rng { s: [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)], spare: None }
    }

    /// The raw state (for checkpoints): 4 words plus the cached normal, if any.
    pub fn state(&self) -> ([u64; 4], Option<f64>) {
        (self.s, self.spare)
    }
    pub fn from_state(s: [u64; 4], spare: Option<f64>) -> Rng {
        Rng { s, spare }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 24 random bits (every value exactly representable in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // u1 in (0, 1] so ln(u1) is finite
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * th.sin());
        r * th.cos()
    }

    /// Uniform integer in [low, high) without modulo bias (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        let mut m = (self.next_u64() as u128) * (n as u128);
        if (m as u64) < n {
            let t = n.wrapping_neg() % n;
            while (m as u64) < t {
                m = (self.next_u64() as u128) * (n as u128);
            }
        }
        (m >> 64) as u64
    }
}

static GLOBAL: Mutex<Option<Rng>> = Mutex::new(None);
const DEFAULT_SEED: u64 = 1337;

/// Run `f` with the global generator (seeded with 1337 until `manual_seed` is called).
pub fn with_global<R>(f: impl FnOnce(&mut Rng) -> R) -> R {
    let mut g = GLOBAL.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(|| Rng::new(DEFAULT_SEED)))
}

/// Reseed the global generator: the same seed gives the same numbers on every machine.
pub fn manual_seed(seed: u64) {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rng::new(seed));
}

/// The seeds of `n` per-row generators derived from one `seed`: the first `n` numbers of `Rng::new(seed)`.
/// `generate` gives row r of a batch `Rng::new(row_seeds(seed, n)[r])`, so any subset of the rows can be
/// sampled elsewhere (another process: `nf.rl.RayRollouts`) with exactly the generators it has in the batch.
pub fn row_seeds(seed: u64, n: usize) -> Vec<u64> {
    let mut seeds = Rng::new(seed);
    (0..n).map(|_| seeds.next_u64()).collect()
}

pub fn get_state() -> Rng {
    with_global(|r| r.clone())
}
pub fn set_state(r: Rng) {
    *GLOBAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
}

fn fill(op: &'static str, shape: &[usize], mut f: impl FnMut(&mut Rng) -> f32) -> Result<Tensor> {
    let n = checked_numel(op, shape)?;
    let mut d = alloc_with_capacity(op, n)?;
    with_global(|r| d.extend((0..n).map(|_| f(r))));
    Ok(Tensor::from_vec_unchecked(d, shape.to_vec()))
}

/// Normal(mean, std) samples.
pub fn randn(shape: &[usize], mean: f32, std: f32) -> Result<Tensor> {
    if !(std >= 0.0) || !std.is_finite() {
        return Err(Error::value("randn", format!("std must be finite and >= 0, got {std}")));
    }
    fill("randn", shape, |r| (mean as f64 + std as f64 * r.normal()) as f32)
}

/// Uniform samples in [low, high).
pub fn rand(shape: &[usize], low: f32, high: f32) -> Result<Tensor> {
    if !(low <= high) || !low.is_finite() || !high.is_finite() {
        return Err(Error::value("rand", format!("need finite low <= high, got low={low}, high={high}")));
    }
    fill("rand", shape, |r| low + (high - low) * r.uniform())
}

/// Integers uniform in [low, high).
pub fn randint(low: i64, high: i64, n: usize) -> Result<Vec<i64>> {
    if high <= low {
        return Err(Error::value("randint", format!("need low < high, got low={low}, high={high}")));
    }
    let mut out = try_with_capacity("randint", n)?;
    let span = (high as i128 - low as i128) as u64;
    with_global(|r| out.extend((0..n).map(|_| low + r.below(span) as i64)));
    Ok(out)
}

/// Draw `num_samples` indices per row of `probs` (last dim = categories; weights need not sum to 1).
/// Returns a flat row-major vec of shape (rows.., num_samples).
pub fn multinomial(probs: &Tensor, num_samples: usize, replacement: bool) -> Result<Vec<i64>> {
    let op = "multinomial";
    if probs.ndim() == 0 || probs.ndim() > 2 {
        return Err(Error::shape(op, format!("probs must be 1-D or 2-D, got shape {}", fmt_shape(probs.shape()))));
    }
    let k = *probs.shape().last().unwrap();
    let rows = probs.numel() / k.max(1);
    if k == 0 {
        return Err(Error::shape(op, "probs has zero categories"));
    }
    if !replacement && num_samples > k {
        return Err(Error::value(
            op,
            format!("cannot take {num_samples} samples from {k} categories without replacement"),
        ));
    }
    let data = probs.data();
    let mut out = try_with_capacity(op, rows.saturating_mul(num_samples))?;
    with_global(|r| -> Result<()> {
        for row in data.chunks(k) {
            if row.iter().any(|&p| !(p >= 0.0) || !p.is_finite()) {
                return Err(Error::value(op, "probabilities must be finite and >= 0"));
            }
            let mut w: Vec<f64> = row.iter().map(|&p| p as f64).collect(); // sized by probs, which exists
            for _ in 0..num_samples {
                let total: f64 = w.iter().sum();
                if !(total > 0.0) {
                    return Err(Error::value(op, "probabilities sum to zero"));
                }
                let mut u = r.uniform_f64() * total;
                let mut pick = k - 1;
                for (i, &p) in w.iter().enumerate() {
                    if u < p {
                        pick = i;
                        break;
                    }
                    u -= p;
                }
                // guard against rounding landing on a zero-weight tail entry
                while w[pick] == 0.0 && pick > 0 {
                    pick -= 1;
                }
                out.push(pick as i64);
                if !replacement {
                    w[pick] = 0.0;
                }
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        // pinned values: these must never change across machines or versions
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0x99EC5F36CB75F2B4);
    }

    #[test]
    fn normal_moments() {
        let mut r = Rng::new(7);
        let xs: Vec<f64> = (0..200_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_uniform() {
        let mut r = Rng::new(3);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[r.below(5) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 400.0, "{counts:?}");
        }
    }

    #[test]
    fn multinomial_follows_weights_and_rejects_bad_input() {
        manual_seed(1);
        let p = Tensor::new(vec![0.0, 1.0, 3.0], &[3]).unwrap();
        let s = multinomial(&p, 4000, true).unwrap();
        assert!(!s.contains(&0));
        let ones = s.iter().filter(|&&i| i == 1).count() as f64 / 4000.0;
        assert!((ones - 0.25).abs() < 0.03, "{ones}");
        let no_rep = multinomial(&Tensor::new(vec![1.0, 1.0, 1.0], &[3]).unwrap(), 3, false).unwrap();
        let mut sorted = no_rep.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert!(multinomial(&p, 4, false).is_err());
        assert!(multinomial(&Tensor::new(vec![-1.0, 1.0], &[2]).unwrap(), 1, true).is_err());
        assert!(multinomial(&Tensor::new(vec![0.0, 0.0], &[2]).unwrap(), 1, true).is_err());
    }
}
