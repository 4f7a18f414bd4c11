//! sgemm speed of `nanofrontier::ops::matmul::matmul`, measured in pure Rust (no Python in the loop).
//!
//!     cargo run --release --example sgemm_gflops            # 7 repeats per case
//!     cargo run --release --example sgemm_gflops -- 15      # 15 repeats per case
//!     cargo run --release --example sgemm_gflops -- 7 1,2,4  # thread counts to measure
//!
//! Prints a markdown table of GFLOP/s, "median (best)" over the repeats (each repeat times enough calls to
//! take at least ~20 ms), on 1 and 2 threads. FLOPs are counted as 2·M·K·N per product. On a shared VM
//! the best value shows what the code can do; the median what you get.

use std::time::Instant;

use nanofrontier::Tensor;
use nanofrontier::autograd::no_grad;
use nanofrontier::ops::matmul::matmul;
use nanofrontier::parallel::set_num_threads;
use nanofrontier::tensor::random::{manual_seed, randn};

struct Case {
    name: &'static str,
    a: &'static [usize],
    b: &'static [usize],
    /// Time the backward (dA and dB) instead of the forward.
    backward: bool,
}

const CASES: &[Case] = &[
    Case { name: "256²", a: &[256, 256], b: &[256, 256], backward: false },
    Case { name: "512²", a: &[512, 512], b: &[512, 512], backward: false },
    Case { name: "1024²", a: &[1024, 1024], b: &[1024, 1024], backward: false },
    Case { name: "2048²", a: &[2048, 2048], b: &[2048, 2048], backward: false },
    Case { name: "(4096×128)·(128×512)", a: &[4096, 128], b: &[128, 512], backward: false },
    Case { name: "32 × (128×32)·(32×128)", a: &[4, 8, 128, 32], b: &[4, 8, 32, 128], backward: false },
    Case { name: "decode (1×768)·(768×2304)", a: &[1, 768], b: &[768, 2304], backward: false },
    Case { name: "backward (4096×128)·(128×512)", a: &[4096, 128], b: &[128, 512], backward: true },
    Case { name: "backward (8,512,768)·(768,768)", a: &[8, 512, 768], b: &[768, 768], backward: true },
];

fn flops(c: &Case) -> f64 {
    let (m, k) = (c.a[c.a.len() - 2], c.a[c.a.len() - 1]);
    let n = c.b[c.b.len() - 1];
    let batch: usize = c.a[..c.a.len() - 2].iter().product();
    let one = 2.0 * (batch * m * k * n) as f64;
    if c.backward { 2.0 * one } else { one }
}

/// One timed call: the forward, or the backward of sum-weighted output (forward excluded from the time).
fn run_once(c: &Case, a: &Tensor, b: &Tensor) -> f64 {
    if c.backward {
        let out = matmul(a, b).unwrap();
        let g = Tensor::ones(out.shape()).unwrap();
        let t = Instant::now();
        out.backward(Some(&g), false).unwrap();
        let dt = t.elapsed().as_secs_f64();
        a.zero_grad();
        b.zero_grad();
        dt
    } else {
        let _g = no_grad();
        let t = Instant::now();
        let out = matmul(a, b).unwrap();
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(out);
        dt
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
}

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(7).max(5);
    let threads: Vec<usize> = std::env::args()
        .nth(2)
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    println!("matmul GFLOP/s: median (best) of {repeats} repeats, each repeat ≥ ~20 ms of calls\n");
    print!("| case |");
    for &t in &threads {
        print!(" {t} thread{} |", if t > 1 { "s" } else { "" });
    }
    println!(" speedup |");
    println!("|---|{}---|", "---|".repeat(threads.len()));
    manual_seed(0);
    for c in CASES {
        let a = randn(c.a, 0.0, 1.0).unwrap().requires_grad_(c.backward);
        let b = randn(c.b, 0.0, 1.0).unwrap().requires_grad_(c.backward);
        let mut row = Vec::new();
        for &t in &threads {
            set_num_threads(t);
            // warm up (pool start, page faults, caches), and learn how many calls fill ~20 ms
            let mut one = 0.0;
            for _ in 0..2 {
                one = run_once(c, &a, &b);
            }
            let calls = ((0.02 / one.max(1e-9)).ceil() as usize).clamp(1, 10_000);
            let rates: Vec<f64> = (0..repeats)
                .map(|_| {
                    let dt: f64 = (0..calls).map(|_| run_once(c, &a, &b)).sum();
                    flops(c) * calls as f64 / dt / 1e9
                })
                .collect();
            let best = rates.iter().cloned().fold(0.0, f64::max);
            row.push((median(rates), best));
        }
        print!("| {} |", c.name);
        for (med, best) in &row {
            print!(" {med:.1} ({best:.1}) |");
        }
        println!(" {:.2}× |", row[row.len() - 1].0 / row[0].0);
    }
    set_num_threads(0);
}
