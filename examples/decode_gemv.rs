//! Matrix-vector speed of the decode path: one token through every linear layer of a GPT, in pure Rust.
//!
//!     cargo run --release --example decode_gemv             # tiny and small GPT shapes, 1 and 2 threads
//!
//! Each "token" runs `linear(x (1, in), W (out, in))` over all of a model's weights, with distinct weight
//! tensors per layer (so the weights stream through the caches as in real decoding). Prints µs per token and
//! the weight bandwidth (bytes of weights read per second), median of 7 repeats.

use std::time::Instant;

use nanofrontier::autograd::no_grad;
use nanofrontier::ops::matmul::linear;
use nanofrontier::parallel::set_num_threads;
use nanofrontier::tensor::random::{manual_seed, randn};

fn main() {
    let _g = no_grad();
    manual_seed(0);
    for (name, layers, c) in [("tiny", 4usize, 128usize), ("small", 6, 384)] {
        let shapes: Vec<(usize, usize)> =
            (0..layers).flat_map(|_| [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)]).collect();
        let ws: Vec<_> = shapes.iter().map(|&(i, o)| randn(&[o, i], 0.0, 0.02).unwrap()).collect();
        let xs: Vec<_> = shapes.iter().map(|&(i, _)| randn(&[1, i], 0.0, 1.0).unwrap()).collect();
        let bytes: usize = shapes.iter().map(|&(i, o)| 4 * i * o).sum();
        for threads in [1, 2] {
            set_num_threads(threads);
            let mut times = Vec::new();
            for _ in 0..7 {
                let reps = 200;
                let t0 = Instant::now();
                for _ in 0..reps {
                    for (x, w) in xs.iter().zip(&ws) {
                        std::hint::black_box(linear(x, w, None).unwrap());
                    }
                }
                times.push(t0.elapsed().as_secs_f64() / reps as f64);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let t = times[3];
            println!(
                "{name:5} {threads} threads: {:7.1} µs/token, {:5.1} GB/s of weights",
                t * 1e6,
                bytes as f64 / t / 1e9
            );
        }
    }
}
