"""Training throughput (tokens/s) of a GPT with AdamW: nanofrontier vs PyTorch eager, same run, same threads.

    python benchmarks/bench_train.py                    # tiny and small configs, 2 threads
    python benchmarks/bench_train.py --config tiny --steps 30 --threads 2
    python benchmarks/bench_train.py --torch-python /path/to/torch-env/bin/python
    python benchmarks/bench_train.py --dtype bf16       # both sides under their bf16 autocast

One command prints the machine first (CPU model, the GEMM path matmul takes, load, the measured fp32 FMA
peak of the threads used: benchmarks/machine.py), then per config each side's tokens/s, GFLOP/s and that
as a fraction of the peak, and the ratio (median and min–max of the per-round ratios).

Configs (from the engine issue): tiny = vocab 65, 4 layers, 4 heads, 128 wide, block 128, batch 16;
small = vocab 65, 6 layers, 6 heads, 384 wide, block 256, batch 8. One step = forward + loss + backward +
AdamW. We report the median step time after warm-up, as tokens/s (batch × block / step time), the
achieved GFLOP/s from the exact FLOP count (3 × forward matmul FLOPs, attention's included; the same count
for both sides, since they do the same work), and each side's peak memory (max RSS).
Every measurement runs in its own subprocess, so neither side sees the other's memory or spinning threads,
and the sides alternate over --rounds processes each (the median is reported), so a drift in the machine's
speed hits both alike. torch is optional (it is never a dependency): without it only nanofrontier's column
is printed; --torch-python runs the torch side with another interpreter (a scratch environment that has
torch). The torch model below is written here for the comparison (GPT-2 architecture, same sizes, same
fused attention call), so both sides do the same work.

--dtype bf16 runs each step inside ``nf.autocast("bf16")`` on our side and ``torch.autocast("cpu",
dtype=torch.bfloat16)`` on torch's (float32 weights and AdamW on both; each library decides which ops run
in bf16: ours the matmul/linear products, torch's its autocast op list). It needs a CPU with AVX512-BF16
(``nf.bf16_supported()``); the % column is then of the bf16 peak, 2x the measured fp32 FMA peak.
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "tiny": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=128, batch=16),
    "small": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256, batch=8),
}


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["tiny", "small", "all"], default="all")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="processes per (library, config) cell")
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                   help="bf16: each side's autocast to bfloat16 around the step (see the docstring)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--torch-python", help="python of an environment with torch (default: this one's, if any)")
    p.add_argument("--side", choices=["nf", "torch"], help=argparse.SUPPRESS)  # internal: one run per process
    return p.parse_args()


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_nanofrontier(cfg, args):
    import numpy as np

    import nanofrontier as nf

    nf.set_num_threads(args.threads)
    nf.manual_seed(0)
    model = nf.models.GPT(nf.models.GPTConfig(**{k: v for k, v in cfg.items() if k != "batch"}))
    opt = nf.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (cfg["batch"], cfg["block_size"]))
    y = np.roll(x, -1, axis=1)

    def step():
        with nf.autocast(args.dtype):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
        opt.step()

    t = time_steps(step, args.warmup, args.steps)
    flops = model.flops_per_token(cfg["block_size"])["training"]
    return t, flops


def bench_torch(cfg, args):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    C, H, V, T = cfg["n_embd"], cfg["n_head"], cfg["vocab_size"], cfg["block_size"]

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(C), tnn.LayerNorm(C)
            self.c_attn, self.c_proj = tnn.Linear(C, 3 * C), tnn.Linear(C, C)
            self.c_fc, self.mlp_proj = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(V, C), tnn.Embedding(T, C)
            self.h = tnn.ModuleList([Block() for _ in range(cfg["n_layer"])])
            self.ln_f = tnn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.h:
                x = blk(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    model = GPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    x = torch.randint(0, V, (cfg["batch"], T))
    y = torch.roll(x, -1, dims=1)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return time_steps(step, args.warmup, args.steps)


def median_run(runs):
    """The run with the median tokens/s (its other numbers come with it)."""
    return sorted(runs, key=lambda r: r["tps"])[len(runs) // 2]


def run_side(args, side, name):
    """One (library, config) measurement in a fresh process; returns its JSON result."""
    python = args.torch_python if side == "torch" and args.torch_python else sys.executable
    cmd = [python, os.path.abspath(__file__), "--side", side, "--config", name, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--dtype", args.dtype]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "NANOFRONTIER_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def have_torch(args):
    """Whether the torch side can run (found without importing torch here: see main)."""
    if args.no_torch:
        return False
    if args.torch_python:
        probe = [args.torch_python, "-c", "import torch"]
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    return importlib.util.find_spec("torch") is not None


def main():
    args = parse()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.side:  # child process: measure one side, print JSON
        cfg = CONFIGS[args.config]
        tokens = cfg["batch"] * cfg["block_size"]
        if args.side == "nf":
            t, flops = bench_nanofrontier(cfg, args)
            res = {"tps": tokens / t, "gflops": flops * tokens / t / 1e9}
        else:
            res = {"tps": tokens / bench_torch(cfg, args)}
        print(json.dumps({**res, "peak_mb": peak_mb()}))
        return
    names = ["tiny", "small"] if args.config == "all" else [args.config]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import load, machine_report

    lines, peaks = machine_report([args.threads])
    print("\n".join(lines))
    peak = peaks[args.threads] * (2 if args.dtype == "bf16" else 1)  # vdpbf16ps: 2x the fp32 FMAs per op
    if args.dtype == "bf16":
        import nanofrontier as nf

        if not nf.bf16_supported():
            sys.exit("bench_train.py --dtype bf16: this CPU has no AVX512-BF16 (nf.bf16_supported())")
    # find torch without importing it: a child's max RSS starts from its parent's RSS at fork, so a parent
    # holding torch's libraries would inflate every peak-memory number
    torch_ok = have_torch(args)
    if not args.no_torch and not torch_ok:
        print("(torch is not available: nanofrontier only; see --torch-python)")
    rows = []
    for name in names:
        # alternate the sides over the rounds (and which goes first), so a drift in the machine's speed
        # hits both alike
        ours, theirs = [], []
        for r in range(args.rounds):
            for side in (("nf", "torch") if r % 2 == 0 else ("torch", "nf")):
                if side == "nf":
                    ours.append(run_side(args, "nf", name))
                elif torch_ok:
                    theirs.append(run_side(args, "torch", name))
            print(f"  {name}: round {r + 1}/{args.rounds} done ({load()})", file=sys.stderr)
        rows.append((name, ours, theirs))
    print(f"after the runs: {load()}")
    kind = "bf16 (2x fp32) " if args.dtype == "bf16" else ""
    print(f"\nGPT training ({args.dtype}), AdamW, {args.threads} threads, median of {args.steps} steps per "
          f"process, median of {args.rounds} processes per cell (alternating sides); % = of the "
          f"{args.threads}-thread {kind}FMA peak {peak:.0f} GFLOP/s; ratio: median (min–max) of the per-round "
          "ratios\n")
    print("| config | nanofrontier tokens/s | GFLOP/s | % peak | peak MB | torch tokens/s | GFLOP/s | % peak "
          "| torch peak MB | nf / torch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, ours, theirs in rows:
        o = median_run(ours)
        gf_per_tps = o["gflops"] / o["tps"]  # GFLOP per token: the same work on both sides
        cells = (f"| {name} | {o['tps']:,.0f} | {o['gflops']:.0f} | {100 * o['gflops'] / peak:.0f}% | "
                 f"{o['peak_mb']:,.0f} |")
        if theirs:
            t = median_run(theirs)
            ratios = [a["tps"] / b["tps"] for a, b in zip(ours, theirs)]
            tg = t["tps"] * gf_per_tps
            cells += (f" {t['tps']:,.0f} | {tg:.0f} | {100 * tg / peak:.0f}% | {t['peak_mb']:,.0f} | "
                      f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
        else:
            cells += " — | — | — | — | — |"
        print(cells)


if __name__ == "__main__":
    main()
