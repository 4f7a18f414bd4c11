"""Causal attention, forward and forward+backward: nanofrontier's fused kernel vs
torch.nn.functional.scaled_dot_product_attention, same inputs, same threads, one run.

    python benchmarks/bench_attention.py                 # 2 threads, median of 9
    python benchmarks/bench_attention.py --threads 1 --repeat 15

Shapes (B, H, T, D) from the engine issue: (8,4,128,32), (4,8,256,64), (1,8,1024,64). Times are medians in
milliseconds; the ratio is torch time / nanofrontier time (above 1 = we are faster). torch is optional.
"""

import argparse
import statistics
import time

import numpy as np

SHAPES = [(8, 4, 128, 32), (4, 8, 256, 64), (1, 8, 1024, 64)]


def median_ms(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1000 * statistics.median(ts)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args()

    import nanofrontier as nf
    import nanofrontier.functional as F

    nf.set_num_threads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("(torch is not installed: nanofrontier only)")

    # every nanofrontier run first: torch's OpenMP threads keep spinning after its ops and would steal
    # cores from whatever runs next in this process
    rows, inputs = [], {}
    for shape in SHAPES:
        rng = np.random.default_rng(0)
        q, k, v = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
        g = rng.standard_normal(shape).astype(np.float32)
        Q, K, V = (nf.tensor(a, requires_grad=True) for a in (q, k, v))

        def nf_fwd():
            with nf.no_grad():
                F.scaled_dot_product_attention(Q, K, V, is_causal=True)

        def nf_fwd_bwd():
            F.scaled_dot_product_attention(Q, K, V, is_causal=True).backward(g)

        rows.append([shape, median_ms(nf_fwd, args.repeat), median_ms(nf_fwd_bwd, args.repeat)])
        inputs[shape] = (q, k, v, g)
    for r in rows:
        q, k, v, g = inputs[r[0]]
        if torch is not None:
            tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
            tg = torch.tensor(g)

            def t_fwd():
                with torch.no_grad():
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

            def t_fwd_bwd():
                torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(tg)

            r += [median_ms(t_fwd, args.repeat), median_ms(t_fwd_bwd, args.repeat)]

    print(f"\ncausal attention, {args.threads} threads, median ms of {args.repeat}\n")
    print("| (B, H, T, D) | nf fwd | nf fwd+bwd | torch fwd | torch fwd+bwd | fwd ratio | fwd+bwd ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if len(r) == 5:
            print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[3] / r[1]:.2f} | {r[4] / r[2]:.2f} |")
        else:
            print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | — | — | — | — |")


if __name__ == "__main__":
    main()
