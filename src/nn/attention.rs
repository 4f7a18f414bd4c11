//! Causal self-attention for both model families, with an optional KV cache for generation.
//! GPT-2: one fused `c_attn` projection to q, k, v, then `c_proj`. Llama: separate q/k/v/o projections,
//! fewer k/v heads than q heads (GQA), and rotary position embeddings on q and k.
//! The attention itself is the fused op `ops::attention::scaled_dot_product_attention`.

use super::{Linear, Module};
use crate::error::{Error, Result};
use crate::ops::attention::{KeyMask, KvView, attend_kv_cache, attend_kv_cache_masked, scaled_dot_product_attention};
use crate::ops::heads::{merge_heads, split_heads};
use crate::ops::rope::{RopeLayout, rope, rope_at};
use crate::ops::{dropout, view};
use crate::runtime::is_grad_enabled;
use crate::tensor::{Tensor, alloc_zeros, checked_numel};

/// Keys and values seen so far by one layer, for generation: buffers laid out (B, Hkv, cap, D) whose first
/// `len` positions are filled. A new position is written in place (no copy of the past), and attention
/// reads the buffers directly; when full they grow by doubling. Values only: a cache holds no gradients,
/// so it refuses inputs that autograd would record (generation runs under `no_grad`).
#[derive(Clone, Default)]
pub struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    /// (B, Hkv, D, Dv) of what is stored, fixed by the first append.
    dims: (usize, usize, usize, usize),
    cap: usize,
    len: usize,
}

impl LayerCache {
    /// An empty cache that will hold `cap` positions without growing.
    pub fn with_capacity(cap: usize) -> LayerCache {
        LayerCache { cap, ..Default::default() }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append new keys (B, Hkv, T_new, D) and values (B, Hkv, T_new, Dv).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let op = "kv_cache";
        if is_grad_enabled() && (k.requires_grad() || v.requires_grad()) {
            return Err(Error::value(op, "a KV cache stores values without gradients: run generation under no_grad"));
        }
        let (&[b, hkv, tn, d], &[bv, hv, tv, dv]) = (k.shape(), v.shape()) else {
            return Err(Error::shape(
                op,
                format!("expected 4-D keys and values, got {:?} and {:?}", k.shape(), v.shape()),
            ));
        };
        if self.len == 0 && self.k.is_empty() {
            self.dims = (b, hkv, d, dv);
        }
        if (bv, hv, tv) != (b, hkv, tn) || self.dims != (b, hkv, d, dv) {
            return Err(Error::shape(
                op,
                format!("new keys {:?} and values {:?} do not match the cache's {:?}", k.shape(), v.shape(), self.dims),
            ));
        }
        let need = self.len + tn;
        if self.k.is_empty() {
            self.grow(need.max(self.cap))?; // first use: the capacity asked for, or what this needs
        } else if need > self.cap {
            self.grow(need.max(2 * self.cap))?;
        }
        let (heads, cap, len) = (b * hkv, self.cap, self.len);
        let put = |buf: &mut [f32], x: &[f32], w: usize| {
            for (hi, rows) in x.chunks_exact(tn * w).enumerate().take(heads) {
                buf[(hi * cap + len) * w..][..tn * w].copy_from_slice(rows);
            }
        };
        put(&mut self.k, &k.data(), d);
        put(&mut self.v, &v.data(), dv);
        self.len = need;
        Ok(())
    }

    /// Re-lay the buffers out for `cap` positions per head, keeping what they hold.
    fn grow(&mut self, cap: usize) -> Result<()> {
        let (b, hkv, d, dv) = self.dims;
        let (old_cap, len) = (self.cap, self.len);
        let regrow = |old: &[f32], w: usize| -> Result<Vec<f32>> {
            let mut buf = alloc_zeros("kv_cache", checked_numel("kv_cache", &[b, hkv, cap, w])?)?;
            if len > 0 {
                for (hi, dst) in buf.chunks_exact_mut(cap * w).enumerate() {
                    dst[..len * w].copy_from_slice(&old[hi * old_cap * w..][..len * w]);
                }
            }
            Ok(buf)
        };
        self.k = regrow(&self.k, d)?;
        self.v = regrow(&self.v, dv)?;
        self.cap = cap;
        Ok(())
    }

    /// Causal attention of q (B, Hq, T_new, D), the newest positions, over everything cached; when the
    /// batch holds padding, only over each row's real positions.
    fn attend(&self, q: &Tensor, rows: &CacheRows) -> Result<Tensor> {
        let (b, hkv, d, dv) = self.dims;
        let kv = KvView { k: &self.k, v: &self.v, b, hkv, cap: self.cap, len: self.len, d, dv };
        if !rows.padded {
            return attend_kv_cache(q, kv);
        }
        if rows.len != self.len || rows.b != b {
            return Err(Error::value(
                "kv_cache",
                format!("the row mask covers {} positions of {} rows, the cache {} of {b}", rows.len, rows.b, self.len),
            ));
        }
        attend_kv_cache_masked(q, kv, KeyMask { real: &rows.real, stride: rows.cap })
    }
}

/// What every layer's cache shares in a batch of prompts of unequal length: which cached positions of
/// each row hold real tokens (padding is never attended to), and the position of each new token for
/// the position embedding or RoPE — the number of real tokens before it in its row. A batch without
/// padding keeps positions = cache index and the unmasked attention, exactly as a single prompt.
#[derive(Clone, Default)]
pub struct CacheRows {
    b: usize,
    /// (B, cap): true where a cached position holds a real token; the first `len` of each row are used.
    real: Vec<bool>,
    cap: usize,
    len: usize,
    /// Real tokens seen so far in each row.
    seen: Vec<usize>,
    /// Some cached position is padding (else attention needs no mask).
    padded: bool,
    /// Marks for the next chunk, from `set_next` (empty: all real).
    next: Vec<bool>,
    /// Positions of the chunk last begun, (B, T_new) row-major.
    positions: Vec<usize>,
}

impl CacheRows {
    /// Say which of the next chunk's B·T_new tokens (row-major) are real; without it all are.
    pub fn set_next(&mut self, real: Vec<bool>) {
        self.next = real;
    }
    /// Called by a model before it runs a chunk of (B, T_new) new positions through its layers: records
    /// which are real and returns each one's position ((B, T_new), row-major).
    pub fn begin(&mut self, b: usize, t: usize) -> Result<&[usize]> {
        let op = "kv_cache";
        let next = std::mem::take(&mut self.next);
        if self.len == 0 {
            (self.b, self.seen) = (b, vec![0; b]);
        }
        if b != self.b || !(next.is_empty() || next.len() == b * t) {
            return Err(Error::shape(
                op,
                format!("a chunk of {b}×{t} tokens ({} marks) for a cache of {} rows", next.len(), self.b),
            ));
        }
        if self.len + t > self.cap {
            // re-lay the rows out with room to spare (doubling, as the layer caches do)
            let cap = (self.len + t).max(2 * self.cap);
            let mut real = vec![false; b * cap];
            for r in 0..b {
                real[r * cap..][..self.len].copy_from_slice(&self.real[r * self.cap..][..self.len]);
            }
            (self.real, self.cap) = (real, cap);
        }
        self.positions.clear();
        for r in 0..b {
            for i in 0..t {
                let is_real = next.is_empty() || next[r * t + i];
                self.real[r * self.cap + self.len + i] = is_real;
                self.padded |= !is_real;
                // a padding position takes the next real position (any in-range value would do)
                self.positions.push(self.seen[r]);
                self.seen[r] += is_real as usize;
            }
        }
        self.len += t;
        Ok(&self.positions)
    }
    /// True once some cached position is padding.
    pub fn padded(&self) -> bool {
        self.padded
    }
    /// Positions of the chunk last begun, (B, T_new) row-major.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }
}

/// GPT-2 attention: `c_attn` (3C, C) makes q, k, v at once; `c_proj` (C, C) mixes the heads back.
pub struct GptAttention {
    pub c_attn: Linear,
    pub c_proj: Linear,
    pub n_head: usize,
    pub dropout: f32,
}

impl GptAttention {
    /// x (B, T, C) → (B, T, C). With a cache, x holds only the new positions.
    pub fn forward(&self, x: &Tensor, cache: Option<(&mut LayerCache, &CacheRows)>, training: bool) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let parts = split_heads(&qkv, 3, self.n_head)?; // q, k, v: (B, H, T, D) each, one pass
        let (q, k, v) = (&parts[0], &parts[1], &parts[2]);
        let y = match cache {
            Some((cache, rows)) => {
                cache.append(k, v)?;
                cache.attend(q, rows)?
            }
            None => scaled_dot_product_attention(q, k, v, true, None)?, // (B, H, T, D)
        };
        let y = self.c_proj.forward(&merge_heads(&y)?)?;
        dropout::dropout(&y, self.dropout, training)
    }
}

impl Module for GptAttention {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.c_attn.collect(&format!("{prefix}c_attn."), out);
        self.c_proj.collect(&format!("{prefix}c_proj."), out);
    }
}

/// Llama attention: q (H·D), k and v (Hkv·D) projections, RoPE on q and k, GQA, then `o_proj`.
pub struct LlamaAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_layout: RopeLayout,
}

impl LlamaAttention {
    /// x (B, T, C) → (B, T, C). With a cache, x holds only the new positions, which start at cache.len()
    /// (or, in a padded batch, at each row's own count of real tokens: `rows.positions()`).
    pub fn forward(&self, x: &Tensor, cache: Option<(&mut LayerCache, &CacheRows)>) -> Result<Tensor> {
        let (b, t) = (x.shape()[0] as isize, x.shape()[1] as isize);
        let (h, hkv, d) = (self.n_head as isize, self.n_kv_head as isize, self.head_dim as isize);
        // rotate while the layout is (B, T, H, D): the sequence is dim 1
        let q = view::reshape(&self.q_proj.forward(x)?, &[b, t, h, d])?;
        let k = view::reshape(&self.k_proj.forward(x)?, &[b, t, hkv, d])?;
        let v = view::reshape(&self.v_proj.forward(x)?, &[b, t, hkv, d])?;
        let (theta, layout) = (self.rope_theta, self.rope_layout);
        let (q, k) = match &cache {
            Some((_, rows)) if rows.padded() => {
                (rope_at(&q, 1, rows.positions(), theta, layout)?, rope_at(&k, 1, rows.positions(), theta, layout)?)
            }
            _ => {
                let offset = cache.as_ref().map(|(c, _)| c.len()).unwrap_or(0);
                (rope(&q, 1, offset, theta, layout)?, rope(&k, 1, offset, theta, layout)?)
            }
        };
        let (q, k, v) =
            (view::permute(&q, &[0, 2, 1, 3])?, view::permute(&k, &[0, 2, 1, 3])?, view::permute(&v, &[0, 2, 1, 3])?);
        let y = match cache {
            Some((cache, rows)) => {
                cache.append(&k, &v)?;
                cache.attend(&q, rows)?
            }
            None => scaled_dot_product_attention(&q, &k, &v, true, None)?, // (B, H, T, D), GQA inside
        };
        self.o_proj.forward(&merge_heads(&y)?)
    }
}

impl Module for LlamaAttention {
    fn collect(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        self.q_proj.collect(&format!("{prefix}q_proj."), out);
        self.k_proj.collect(&format!("{prefix}k_proj."), out);
        self.v_proj.collect(&format!("{prefix}v_proj."), out);
        self.o_proj.collect(&format!("{prefix}o_proj."), out);
    }
}

/// Heads must divide the width, and kv heads must divide the heads.
pub fn check_heads(op: &'static str, dim: usize, n_head: usize, n_kv_head: usize) -> Result<()> {
    if n_head == 0 || dim % n_head != 0 {
        return Err(Error::value(op, format!("n_head ({n_head}) must divide the width ({dim})")));
    }
    if n_kv_head == 0 || n_head % n_kv_head != 0 {
        return Err(Error::value(op, format!("n_kv_head ({n_kv_head}) must divide n_head ({n_head})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::no_grad;
    use crate::tensor::random::Rng;
    use crate::testutil::assert_close;

    fn randn_local(rng: &mut Rng, shape: &[usize]) -> Tensor {
        let n = crate::tensor::numel(shape);
        Tensor::new((0..n).map(|_| rng.normal() as f32).collect(), shape).unwrap()
    }

    #[test]
    fn cache_fed_piece_by_piece_gives_full_attention_rows() {
        let _g = no_grad();
        let mut rng = Rng::new(5);
        let (b, hq, hkv, t, d) = (2, 4, 2, 23, 8);
        let q = randn_local(&mut rng, &[b, hq, t, d]);
        let k = randn_local(&mut rng, &[b, hkv, t, d]);
        let v = randn_local(&mut rng, &[b, hkv, t, d]);
        let full = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap();
        // a prompt of 6, then single positions, then a chunk of 5, starting from no capacity (grows twice)
        for start_cap in [0, t] {
            let mut cache = LayerCache::with_capacity(start_cap);
            let mut at = 0;
            for n in [6, 1, 1, 1, 1, 1, 1, 1, 5, 1, 1, 1, 1, 1] {
                let piece = |x: &Tensor| view::narrow(x, 2, at, n).unwrap();
                cache.append(&piece(&k), &piece(&v)).unwrap();
                let got = cache.attend(&piece(&q), &CacheRows::default()).unwrap().to_vec();
                let want = piece(&full).to_vec();
                assert_close(&format!("positions {at}..{}", at + n), &got, &want, 1e-5, 0.0);
                at += n;
                assert_eq!(cache.len(), at);
            }
            assert_eq!(at, t);
        }
    }

    #[test]
    fn cache_refuses_gradients_and_mismatched_shapes() {
        let mut rng = Rng::new(6);
        let k = randn_local(&mut rng, &[1, 2, 3, 4]).requires_grad_(true);
        let mut cache = LayerCache::default();
        let err = cache.append(&k, &k).unwrap_err().to_string();
        assert!(err.contains("no_grad"), "{err}");
        let _g = no_grad();
        cache.append(&k, &k).unwrap();
        let other = randn_local(&mut rng, &[1, 3, 1, 4]);
        assert!(matches!(cache.append(&other, &other), Err(Error::Shape { .. })));
        assert!(matches!(cache.append(&randn_local(&mut rng, &[2, 4]), &k), Err(Error::Shape { .. })));
        assert_eq!(cache.len(), 3);
    }
}
