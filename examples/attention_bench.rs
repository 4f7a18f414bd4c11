//! Speed of the fused causal attention (`ops::attention::scaled_dot_product_attention`) against its
//! composite reference (matmul → scale → masked_fill → softmax → matmul), in pure Rust.
//!
//!     cargo run --release --example attention_bench             # 9 repeats, the pool's default threads
//!     cargo run --release --example attention_bench -- 15 1     # 15 repeats on 1 thread
//!     cargo run --release --example attention_bench -- 9 2 fused  # only the fused op
//!
//! Prints a markdown table of median milliseconds (best in brackets) for the forward and for
//! forward + backward (dq, dk, dv from a fixed dout), and GFLOP/s. FLOPs: the causal forward counts
//! 2·B·H·T²·D (QKᵀ and PV over the unmasked half); forward + backward counts 3.5× that (the backward
//! recomputes S and adds four products, FlashAttention-2's accounting). Compare with torch using
//! `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)` at the same thread count.

use std::time::Instant;

use nanofrontier::Tensor;
use nanofrontier::ops::attention::{scaled_dot_product_attention, scaled_dot_product_attention_reference};
use nanofrontier::parallel::{num_threads, set_num_threads};
use nanofrontier::tensor::random::{manual_seed, randn};

type Sdpa = fn(&Tensor, &Tensor, &Tensor, bool, Option<f32>) -> nanofrontier::Result<Tensor>;

/// (median, best) milliseconds of `f` over `reps` runs, after two warm-up runs.
fn time_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    f();
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (ts[ts.len() / 2], ts[0])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(9).max(1);
    if let Some(t) = args.get(2).and_then(|s| s.parse().ok()) {
        set_num_threads(t);
    }
    let only = args.get(3).cloned().unwrap_or_default();
    println!("causal attention, {} thread(s), median (best) of {reps} runs\n", num_threads());
    println!("| (B, H, T, D) | impl | fwd ms | fwd GFLOP/s | fwd+bwd ms | fwd+bwd GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    manual_seed(0);
    for (b, h, t, d) in [(8, 4, 128, 32), (4, 8, 256, 64), (1, 8, 1024, 64)] {
        let shape = [b, h, t, d];
        let new = || randn(&shape, 0.0, 1.0).unwrap().requires_grad_(true);
        let (q, k, v) = (new(), new(), new());
        let dout = randn(&shape, 0.0, 1.0).unwrap();
        let fwd_flops = 2.0 * (b * h * t * t * d) as f64;
        let impls: [(&str, Sdpa); 2] =
            [("fused", scaled_dot_product_attention), ("reference", scaled_dot_product_attention_reference)];
        for (name, f) in impls.into_iter().filter(|(name, _)| name.contains(only.as_str())) {
            let fwd = time_ms(reps, || {
                let _g = nanofrontier::autograd::no_grad();
                f(&q, &k, &v, true, None).unwrap();
            });
            let both = time_ms(reps, || {
                let out = f(&q, &k, &v, true, None).unwrap();
                out.backward(Some(&dout), false).unwrap();
                for x in [&q, &k, &v] {
                    x.zero_grad();
                }
            });
            println!(
                "| ({b}, {h}, {t}, {d}) | {name} | {:.3} ({:.3}) | {:.1} | {:.3} ({:.3}) | {:.1} |",
                fwd.0,
                fwd.1,
                fwd_flops / fwd.0 / 1e6,
                both.0,
                both.1,
                3.5 * fwd_flops / both.0 / 1e6
            );
        }
    }
}
