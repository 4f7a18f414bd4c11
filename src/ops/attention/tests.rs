//! Tests of `attention` (mod.rs): the fused op against the composite reference (forward and the three
//! gradients) and a finite-difference gradcheck, decode and KV-cache paths, attention weights against an
//! f64 formula, shape errors, empty sizes and 1 vs 2 threads bit for bit; then (`key_mask_tests`) the
//! key-masked cache attention against an f64 definition.

use super::*;
use crate::autograd::assert_gradcheck;
use crate::tensor::random::Rng;
use crate::testutil::assert_close;

/// A (..) tensor of N(0, 1) values from a local generator (other tests reseed the global one).
fn randn_local(rng: &mut Rng, shape: &[usize], grad: bool) -> Tensor {
    let n = crate::tensor::numel(shape);
    Tensor::new((0..n).map(|_| rng.normal() as f32).collect(), shape).unwrap().requires_grad_(grad)
}

type Sdpa = fn(&Tensor, &Tensor, &Tensor, bool, Option<f32>) -> Result<Tensor>;

/// out and the three gradients of Σ w·out for a fixed pseudo-random w.
fn run(f: Sdpa, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: Option<f32>) -> Vec<Vec<f32>> {
    for t in [q, k, v] {
        t.zero_grad();
    }
    let out = f(q, k, v, causal, scale).unwrap();
    let w: Vec<f32> = (0..out.numel()).map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0).collect();
    out.backward(Some(&Tensor::new(w, out.shape()).unwrap()), false).unwrap();
    let g = |t: &Tensor| t.grad().map(|g| g.to_vec()).unwrap_or_default();
    vec![out.to_vec(), g(q), g(k), g(v)]
}

/// Fused vs reference on one configuration; returns the max abs diffs (out, dq, dk, dv).
#[allow(clippy::too_many_arguments)]
fn compare(
    seed: u64,
    (b, hq, hkv): (usize, usize, usize),
    (tq, tk): (usize, usize),
    (d, dv): (usize, usize),
    causal: bool,
    scale: Option<f32>,
) -> [f32; 4] {
    let mut rng = Rng::new(seed);
    let q = randn_local(&mut rng, &[b, hq, tq, d], true);
    let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
    let v = randn_local(&mut rng, &[b, hkv, tk, dv], true);
    let fused = run(scaled_dot_product_attention, &q, &k, &v, causal, scale);
    let want = run(scaled_dot_product_attention_reference, &q, &k, &v, causal, scale);
    let mut diffs = [0f32; 4];
    for (n, what) in ["out", "dq", "dk", "dv"].iter().enumerate() {
        // the reference sums up to Tk products per element: allow f32 rounding growing like √Tk
        let tol = 2e-5 * (tk.max(tq) as f32).sqrt().max(1.0) * if n == 0 { 1.0 } else { 4.0 };
        let what = format!(
            "(B, Hq, Hkv) = {:?}, (Tq, Tk) = {:?}, (D, Dv) = {:?}, causal {causal}: {what}, fused vs reference",
            (b, hq, hkv),
            (tq, tk),
            (d, dv)
        );
        diffs[n] = assert_close(&what, &fused[n], &want[n], tol as f64, 0.0) as f32;
    }
    diffs
}

#[test]
fn fused_matches_reference_forward_and_backward() {
    // ((B, Hq, Hkv), (Tq, Tk), (D, Dv)): MHA, GQA 8:2 and 8:1, KV-cache Tq < Tk, ragged blocks,
    // several query/key blocks (BQ = 64, BK = 256, BKB = 64), Dv ≠ D, both backward schedules
    type Case = ((usize, usize, usize), (usize, usize), (usize, usize));
    let cases: [Case; 14] = [
        ((2, 3, 3), (17, 17), (8, 8)),
        ((1, 2, 2), (100, 100), (32, 32)),
        ((2, 2, 2), (130, 130), (64, 64)),
        ((1, 8, 2), (70, 70), (16, 16)),
        ((2, 8, 1), (33, 33), (8, 8)),
        ((1, 8, 2), (5, 70), (32, 32)),    // KV cache: 5 new queries, 70 keys
        ((1, 2, 1), (70, 130), (8, 8)),    // KV cache over several blocks
        ((1, 4, 4), (1, 77), (32, 32)),    // decode
        ((2, 4, 2), (3, 40), (8, 8)),      // a few rows: the dot-product path
        ((1, 2, 2), (300, 300), (8, 8)),   // several forward key blocks
        ((1, 3, 3), (40, 40), (16, 24)),   // Dv ≠ D
        ((4, 4, 2), (65, 65), (8, 8)),     // 8 kv tasks: one-sweep backward
        ((8, 2, 2), (129, 200), (32, 32)), // 16 kv tasks, Tq < Tk
        ((8, 1, 1), (4, 4200), (64, 64)),  // 8 kv tasks but Kᵀ + Vᵀ past LOCAL_KV_MAX: shared transposes
    ];
    let mut worst = [0f32; 4];
    for (n, (heads, ts, ds)) in cases.into_iter().enumerate() {
        for causal in [true, false] {
            let diffs = compare(100 + n as u64, heads, ts, ds, causal, None);
            eprintln!(
                "  (B, Hq, Hkv) {heads:?} (Tq, Tk) {ts:?} (D, Dv) {ds:?} causal {causal}: out {:.1e} dq {:.1e} dk {:.1e} dv {:.1e}",
                diffs[0], diffs[1], diffs[2], diffs[3]
            );
            for (w, d) in worst.iter_mut().zip(diffs) {
                *w = w.max(d);
            }
        }
    }
    // an explicit scale
    compare(7, (1, 2, 2), (20, 20), (8, 8), true, Some(0.3));
    eprintln!(
        "sdpa fused vs reference, max abs diff: out {:.1e}, dq {:.1e}, dk {:.1e}, dv {:.1e}",
        worst[0], worst[1], worst[2], worst[3]
    );
}

#[test]
fn gradcheck_tiny() {
    let mut rng = Rng::new(11);
    // (B, Hq, Hkv, Tq, Tk, D, causal)
    for (b, hq, hkv, tq, tk, d, causal) in
        [(1, 2, 2, 3, 3, 4, true), (1, 2, 2, 3, 4, 4, false), (1, 4, 2, 3, 3, 4, true), (2, 2, 1, 2, 5, 3, true)]
    {
        let q = randn_local(&mut rng, &[b, hq, tq, d], true);
        let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
        let v = randn_local(&mut rng, &[b, hkv, tk, d], true);
        assert_gradcheck(|x| scaled_dot_product_attention(&x[0], &x[1], &x[2], causal, None), &[q, k, v]);
    }
    // only some inputs needing a gradient
    let q = randn_local(&mut rng, &[1, 2, 3, 4], true);
    let k = randn_local(&mut rng, &[1, 2, 3, 4], false);
    let v = randn_local(&mut rng, &[1, 2, 3, 4], true);
    assert_gradcheck(|x| scaled_dot_product_attention(&x[0], &x[1], &x[2], true, None), &[q, k, v]);
}

#[test]
fn some_gradients_only() {
    // each subset of needed gradients gives the same values as computing all three
    let mut rng = Rng::new(12);
    for (b, hq, hkv) in [(1, 4, 2), (4, 2, 2)] {
        let q = randn_local(&mut rng, &[b, hq, 70, 8], true);
        let k = randn_local(&mut rng, &[b, hkv, 70, 8], true);
        let v = randn_local(&mut rng, &[b, hkv, 70, 8], true);
        let all = run(scaled_dot_product_attention, &q, &k, &v, true, None);
        for n in 0..3 {
            let ts = [&q, &k, &v].map(|t| t.detach().requires_grad_(false));
            ts[n].set_requires_grad(true).unwrap();
            let got = run(scaled_dot_product_attention, &ts[0], &ts[1], &ts[2], true, None);
            assert_eq!(got[n + 1], all[n + 1], "gradient {n} alone differs");
        }
    }
}

#[test]
fn decode_matches_last_row_of_full_forward() {
    let mut rng = Rng::new(13);
    for (hq, hkv, t, d) in [(4, 4, 50, 32), (8, 2, 130, 64), (4, 1, 7, 8)] {
        let q = randn_local(&mut rng, &[2, hq, t, d], false);
        let k = randn_local(&mut rng, &[2, hkv, t, d], false);
        let v = randn_local(&mut rng, &[2, hkv, t, d], false);
        let full = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap();
        let q_last = crate::ops::view::narrow(&q, 2, t - 1, 1).unwrap();
        let step = scaled_dot_product_attention(&q_last, &k, &v, true, None).unwrap();
        let want = crate::ops::view::narrow(&full, 2, t - 1, 1).unwrap();
        assert_close(&format!("decode (Hq {hq}, Hkv {hkv}, T {t})"), &step.to_vec(), &want.to_vec(), 1e-5, 0.0);
        // and the last 3 rows as a KV-cache chunk
        let q3 = crate::ops::view::narrow(&q, 2, t - 3, 3).unwrap();
        let chunk = scaled_dot_product_attention(&q3, &k, &v, true, None).unwrap();
        let want = crate::ops::view::narrow(&full, 2, t - 3, 3).unwrap();
        let what = format!("3-row chunk (Hq {hq}, Hkv {hkv}, T {t})");
        assert_close(&what, &chunk.to_vec(), &want.to_vec(), 1e-5, 0.0);
    }
}

/// (B, H, T, W) packed into buffers with room for `cap` positions per head (the rest garbage).
fn into_cache(x: &Tensor, cap: usize) -> Vec<f32> {
    let s = x.shape();
    let (heads, t, w) = (s[0] * s[1], s[2], s[3]);
    let mut buf = vec![f32::NAN; heads * cap * w]; // unused slots must never be read
    for (h, rows) in x.to_vec().chunks(t * w).enumerate() {
        buf[h * cap * w..][..t * w].copy_from_slice(rows);
    }
    buf
}

#[test]
fn kv_cache_attention_equals_packed_attention_bit_for_bit() {
    let mut rng = Rng::new(21);
    // decode rows (read in place) and a prompt-sized block (packed first); MHA, GQA, MQA; dv != d
    for ((b, hq, hkv), tq, tk, (d, dv)) in
        [((1, 4, 4), 1, 9, (8, 8)), ((2, 8, 2), 2, 40, (16, 12)), ((2, 4, 1), 5, 5, (8, 8)), ((1, 6, 3), 7, 30, (8, 4))]
    {
        let q = randn_local(&mut rng, &[b, hq, tq, d], false);
        let k = randn_local(&mut rng, &[b, hkv, tk, d], false);
        let v = randn_local(&mut rng, &[b, hkv, tk, dv], false);
        let want = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap().to_vec();
        for cap in [tk, tk + 3] {
            let (kb, vb) = (into_cache(&k, cap), into_cache(&v, cap));
            let kv = KvView { k: &kb, v: &vb, b, hkv, cap, len: tk, d, dv };
            let got = attend_kv_cache(&q, kv).unwrap();
            assert_eq!(got.shape(), [b, hq, tq, dv]);
            let diff = got.to_vec().iter().zip(&want).position(|(x, y)| x.to_bits() != y.to_bits());
            assert!(diff.is_none(), "Tq {tq}, Tk {tk}, cap {cap}: first differing element {diff:?}");
        }
    }
    // errors: more queries than cached keys, buffers smaller than the layout they claim
    let q = randn_local(&mut rng, &[1, 2, 3, 4], false);
    let buf = vec![0.0; 2 * 8 * 4];
    let kv = |len, cap| KvView { k: &buf, v: &buf, b: 1, hkv: 2, cap, len, d: 4, dv: 4 };
    assert!(matches!(attend_kv_cache(&q, kv(2, 8)), Err(Error::Shape { .. })));
    assert!(matches!(attend_kv_cache(&q, kv(4, 16)), Err(Error::Value { .. })));
    assert!(matches!(attend_kv_cache(&q, kv(9, 8)), Err(Error::Value { .. })));
}

#[test]
fn attention_weights_match_softmax_of_scores() {
    let mut rng = Rng::new(14);
    for (hq, hkv, tq, tk, causal) in [(4, 2, 70, 70, true), (2, 2, 5, 9, true), (2, 1, 6, 9, false)] {
        let q = randn_local(&mut rng, &[2, hq, tq, 16], false);
        let k = randn_local(&mut rng, &[2, hkv, tk, 16], false);
        let w = attention_weights(&q, &k, causal, None).unwrap();
        assert_eq!(w.shape(), &[2, hq, tq, tk]);
        // f64 formula
        let (qd, kd, wd) = (q.to_vec(), k.to_vec(), w.to_vec());
        let g = hq / hkv;
        for bh in 0..2 * hq {
            let bkv = bh / hq * hkv + bh % hq / g;
            for i in 0..tq {
                let vis = if causal { i + 1 + tk - tq } else { tk };
                let s: Vec<f64> = (0..vis)
                    .map(|j| {
                        (0..16)
                            .map(|c| qd[(bh * tq + i) * 16 + c] as f64 * kd[(bkv * tk + j) * 16 + c] as f64)
                            .sum::<f64>()
                            / 4.0
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for j in 0..tk {
                    let want = if j < vis { (s[j] - m).exp() / z } else { 0.0 };
                    let got = wd[(bh * tq + i) * tk + j] as f64;
                    assert!((got - want).abs() < 1e-6, "weights[{bh}, {i}, {j}] = {got} vs {want}");
                }
            }
        }
    }
}

#[test]
fn shape_errors_name_all_shapes() {
    let z = |s: &[usize]| Tensor::zeros(s).unwrap();
    let err = |q: &[usize], k: &[usize], v: &[usize], causal: bool| {
        scaled_dot_product_attention(&z(q), &z(k), &z(v), causal, None).unwrap_err()
    };
    let e = err(&[2, 4, 8], &[2, 4, 8, 16], &[2, 4, 8, 16], false);
    assert!(matches!(e, Error::Shape { .. }));
    assert_eq!(
        e.to_string(),
        "scaled_dot_product_attention: expected 4-D tensors (batch, heads, seq, head_dim): \
         q (2, 4, 8), k (2, 4, 8, 16), v (2, 4, 8, 16)"
    );
    let e = err(&[2, 4, 8, 16], &[3, 4, 8, 16], &[3, 4, 8, 16], false);
    assert!(e.to_string().contains("batch sizes differ: q (2, 4, 8, 16), k (3, 4, 8, 16)"), "{e}");
    let e = err(&[2, 4, 8, 16], &[2, 4, 8, 32], &[2, 4, 8, 16], false);
    assert!(e.to_string().contains("q and k must have the same head dim"), "{e}");
    let e = err(&[2, 4, 8, 16], &[2, 4, 8, 16], &[2, 2, 8, 16], false);
    assert!(e.to_string().contains("k and v must have the same number of heads"), "{e}");
    let e = err(&[2, 4, 8, 16], &[2, 4, 8, 16], &[2, 4, 9, 16], false);
    assert!(e.to_string().contains("k and v must have the same sequence length"), "{e}");
    let e = err(&[2, 6, 8, 16], &[2, 4, 8, 16], &[2, 4, 8, 16], false);
    assert!(matches!(e, Error::Shape { .. }));
    assert!(e.to_string().contains("query heads (6) must be a multiple of key/value heads (4)"), "{e}");
    let e = err(&[2, 4, 8, 16], &[2, 0, 8, 16], &[2, 0, 8, 16], false);
    assert!(e.to_string().contains("query heads (4) must be a multiple of key/value heads (0)"), "{e}");
    let e = err(&[1, 1, 5, 8], &[1, 1, 3, 8], &[1, 1, 3, 8], true);
    assert!(matches!(e, Error::Shape { .. }));
    assert_eq!(
        e.to_string(),
        "scaled_dot_product_attention: causal attention needs no more queries than keys (Tq = 5 > Tk = 3; \
         queries are aligned to the last keys): q (1, 1, 5, 8), k (1, 1, 3, 8), v (1, 1, 3, 8)"
    );
    // the same shapes are fine without the causal mask
    assert!(scaled_dot_product_attention(&z(&[1, 1, 5, 8]), &z(&[1, 1, 3, 8]), &z(&[1, 1, 3, 8]), false, None).is_ok());
    let e = err(&[1, 1, 2, 0], &[1, 1, 2, 0], &[1, 1, 2, 4], false);
    assert!(e.to_string().contains("the head dim must be at least 1"), "{e}");
    let e =
        scaled_dot_product_attention(&z(&[1, 1, 2, 4]), &z(&[1, 1, 2, 4]), &z(&[1, 1, 2, 4]), false, Some(f32::NAN))
            .unwrap_err();
    assert!(matches!(e, Error::Value { .. }), "{e}");
    // the reference and attention_weights check the same way
    let e = scaled_dot_product_attention_reference(&z(&[1, 1, 5, 8]), &z(&[1, 1, 3, 8]), &z(&[1, 1, 3, 8]), true, None)
        .unwrap_err();
    assert!(matches!(e, Error::Shape { .. }));
    let e = attention_weights(&z(&[1, 3, 5, 8]), &z(&[1, 2, 5, 8]), false, None).unwrap_err();
    assert!(e.to_string().starts_with("attention_weights: query heads (3) must be a multiple"), "{e}");
}

#[test]
fn empty_sizes() {
    let mut rng = Rng::new(15);
    // no keys (non-causal): zeros, like softmax over nothing @ an empty v in the reference
    let (q, k, v) = (
        randn_local(&mut rng, &[1, 2, 3, 4], true),
        randn_local(&mut rng, &[1, 2, 0, 4], true),
        randn_local(&mut rng, &[1, 2, 0, 5], true),
    );
    let out = scaled_dot_product_attention(&q, &k, &v, false, None).unwrap();
    assert_eq!(out.shape(), &[1, 2, 3, 5]);
    assert!(out.to_vec().iter().all(|&x| x == 0.0));
    let want = scaled_dot_product_attention_reference(&q, &k, &v, false, None).unwrap();
    assert_eq!(out.to_vec(), want.to_vec());
    out.backward(Some(&Tensor::ones(&[1, 2, 3, 5]).unwrap()), false).unwrap();
    assert_eq!(q.grad().unwrap().to_vec(), vec![0.0; 24]);
    assert_eq!(k.grad().unwrap().shape(), &[1, 2, 0, 4]);
    // empty batch, no queries, Dv = 0
    for (qs, ks, vs) in [
        ([0, 2, 3, 4], [0, 2, 3, 4], [0, 2, 3, 4]),
        ([1, 2, 0, 4], [1, 2, 3, 4], [1, 2, 3, 4]),
        ([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 0]),
    ] {
        let (q, k, v) =
            (randn_local(&mut rng, &qs, true), randn_local(&mut rng, &ks, true), randn_local(&mut rng, &vs, true));
        let out = scaled_dot_product_attention(&q, &k, &v, true, None).unwrap();
        assert_eq!(out.shape(), &[qs[0], qs[1], qs[2], vs[3]]);
        out.backward(Some(&Tensor::zeros(out.shape()).unwrap()), false).unwrap();
        assert!(q.grad().unwrap().to_vec().iter().all(|&x| x == 0.0));
        assert_eq!(attention_weights(&q, &k, true, None).unwrap().shape(), &[qs[0], qs[1], qs[2], ks[2]]);
    }
}

/// Changes the process-wide thread count, so only through `with_threads` (one test at a time).
#[test]
fn one_and_two_threads_give_identical_bits() {
    // ((B, Hq, Hkv), (Tq, Tk), D): one-sweep and split backward, causal blocks, decode
    type Case = ((usize, usize, usize), (usize, usize), usize);
    let cases: [Case; 4] = [
        ((1, 4, 2), (300, 300), 32),
        ((4, 4, 2), (130, 130), 16),
        ((1, 8, 8), (1, 200), 64),
        ((2, 2, 1), (70, 150), 8),
    ];
    let go = || {
        let mut bits = Vec::new();
        for ((b, hq, hkv), (tq, tk), d) in cases {
            let mut rng = Rng::new(16);
            let q = randn_local(&mut rng, &[b, hq, tq, d], true);
            let k = randn_local(&mut rng, &[b, hkv, tk, d], true);
            let v = randn_local(&mut rng, &[b, hkv, tk, d], true);
            for t in run(scaled_dot_product_attention, &q, &k, &v, true, None) {
                bits.push(t.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
            }
            let w = attention_weights(&q, &k, true, None).unwrap();
            bits.push(w.to_vec().iter().map(|x| x.to_bits()).collect());
        }
        bits
    };
    let (one, two) = (crate::parallel::with_threads(1, go), crate::parallel::with_threads(2, go));
    for (i, (x, y)) in one.iter().zip(&two).enumerate() {
        let diff = x.iter().zip(y).position(|(p, q)| p != q);
        assert!(
            diff.is_none(),
            "case {} output {} (out, dq, dk, dv, weights) differs at element {diff:?}",
            i / 5,
            i % 5
        );
    }
}

mod key_mask_tests {
    use super::super::*;
    use crate::tensor::random::Rng;
    use crate::testutil::assert_close;

    fn randn_local(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    /// The definition in f64: softmax over the real, causally visible keys; zeros when there are none.
    #[allow(clippy::too_many_arguments)]
    fn masked_f64(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        real: &[bool],
        dims: (usize, usize, usize, usize, usize, usize),
        cap: usize,
        dv: usize,
    ) -> Vec<f64> {
        let (b, hq, hkv, tq, len, d) = dims;
        let scale = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; b * hq * tq * dv];
        for bi in 0..b {
            for h in 0..hq {
                let kvh = bi * hkv + h / (hq / hkv);
                for i in 0..tq {
                    let qi = &q[((bi * hq + h) * tq + i) * d..][..d];
                    let vis: Vec<usize> = (0..=len - tq + i).filter(|&j| real[bi * len + j]).collect();
                    let s: Vec<f64> = vis
                        .iter()
                        .map(|&j| (0..d).map(|c| qi[c] as f64 * k[(kvh * cap + j) * d + c] as f64).sum::<f64>() * scale)
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    let o = &mut out[((bi * hq + h) * tq + i) * dv..][..dv];
                    for (&x, &j) in s.iter().zip(&vis) {
                        for c in 0..dv {
                            o[c] += (x - m).exp() / l * v[(kvh * cap + j) * dv + c] as f64;
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn masked_cache_attention_matches_f64_and_ignores_padding() {
        let mut rng = Rng::new(81);
        let _g = crate::autograd::no_grad();
        // (B, Hq, Hkv, D, Dv); per row: left padding, right padding, none, padding in the middle, all but one
        for (b, hq, hkv, d, dv, len, cap) in [(5, 4, 2, 8, 8, 9, 12), (5, 2, 2, 20, 12, 40, 40), (5, 3, 1, 5, 3, 7, 7)]
        {
            let real: Vec<bool> = (0..b)
                .flat_map(|r| {
                    (0..len).map(move |j| match r {
                        0 => j >= 3,
                        1 => j < len - 2 || j == len - 1,
                        2 => true,
                        3 => !(2..5).contains(&j),
                        _ => j == len - 1,
                    })
                })
                .collect();
            let k = randn_local(&mut rng, b * hkv * cap * d);
            let v = randn_local(&mut rng, b * hkv * cap * dv);
            for tq in [len, 3, 1] {
                let qd = randn_local(&mut rng, b * hq * tq * d);
                let q = Tensor::new(qd.clone(), &[b, hq, tq, d]).unwrap();
                let kvv = |k: &'_ [f32], v: &'_ [f32]| -> Vec<f32> {
                    let kv = KvView { k, v, b, hkv, cap, len, d, dv };
                    attend_kv_cache_masked(&q, kv, KeyMask { real: &real, stride: len }).unwrap().to_vec()
                };
                let got = kvv(&k, &v);
                let want = masked_f64(&qd, &k, &v, &real, (b, hq, hkv, tq, len, d), cap, dv);
                let worst = assert_close(&format!("b {b} hq {hq} hkv {hkv} tq {tq}, vs f64"), &got, &want, 2e-6, 0.0);
                // with every key real it is the unmasked cache attention
                let all = vec![true; b * len];
                let kv = KvView { k: &k, v: &v, b, hkv, cap, len, d, dv };
                let masked = attend_kv_cache_masked(&q, kv, KeyMask { real: &all, stride: len }).unwrap().to_vec();
                let plain = attend_kv_cache(&q, kv).unwrap().to_vec();
                assert_close("all-real mask vs attend_kv_cache", &masked, &plain, 1e-5, 0.0);
                // what padding keys hold never reaches an output: overwrite them, same bits
                let (mut k2, mut v2) = (k.clone(), v.clone());
                for bi in 0..b {
                    for kvh in 0..hkv {
                        for j in (0..len).filter(|&j| !real[bi * len + j]) {
                            let at = (bi * hkv + kvh) * cap + j;
                            k2[at * d..(at + 1) * d].iter_mut().for_each(|x| *x = 1e4);
                            v2[at * dv..(at + 1) * dv].iter_mut().for_each(|x| *x = f32::NAN);
                        }
                    }
                }
                assert_eq!(got, kvv(&k2, &v2), "padding keys changed the output (tq {tq})");
                println!("masked cache attention b {b} hq {hq} tq {tq} len {len}: max abs diff vs f64 {worst:.1e}");
            }
        }
    }

    #[test]
    fn masked_cache_attention_refuses_bad_masks_and_gradients() {
        let q = Tensor::new(vec![0.5; 8], &[1, 1, 2, 4]).unwrap();
        let (k, v) = (vec![1.0; 12], vec![1.0; 12]);
        let kv = KvView { k: &k, v: &v, b: 1, hkv: 1, cap: 3, len: 3, d: 4, dv: 4 };
        let short = [true, true];
        let err = attend_kv_cache_masked(&q, kv, KeyMask { real: &short, stride: 2 });
        assert!(matches!(err, Err(Error::Shape { .. })));
        let qg = q.detach().deep_clone().requires_grad_(true);
        let err = attend_kv_cache_masked(&qg, kv, KeyMask { real: &[true; 3], stride: 3 }).unwrap_err().to_string();
        assert!(err.contains("no_grad"), "{err}");
    }
}
