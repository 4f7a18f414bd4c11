"""Batch-1 greedy decoding with a KV cache: nanofrontier's `generate` (the whole loop in Rust) vs a PyTorch
KV-cache loop over the same GPT architecture and weights, same threads, one run.

    python benchmarks/bench_decode.py                   # tiny and small GPT configs, 256 new tokens
    python benchmarks/bench_decode.py --tokens 128 --threads 1
    python benchmarks/bench_decode.py --dtype bf16      # bf16 weights on both sides (AVX512-BF16 CPUs)

The torch side is written here (a straightforward eager KV-cache loop: concatenate keys/values, attend
with scaled_dot_product_attention, argmax). Both sides run the same weights, so the generated tokens must
agree — the script checks that. Reported: tokens/s (median of --repeat runs) and the ratio.

--dtype bf16: ours decodes under ``nf.autocast("bf16")`` (its decode steps read bf16 copies of the weights,
with float32 activations and sums), torch's from its weights converted to bfloat16 (``.bfloat16()``, the way
a torch user runs a model in bf16; activations in bf16 too). The two round differently, so greedy tokens
may part after a while: the "same tokens" column then measures agreement, not a check.
"""

import argparse
import statistics
import time

import numpy as np

CONFIGS = {
    "tiny": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=512),
    "small": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=512),
}


def torch_decode(torch, sd, cfg, prompt, n_new, dtype="f32"):
    F = torch.nn.functional
    C, H = cfg["n_embd"], cfg["n_head"]
    w = {k: torch.tensor(v) for k, v in sd.items()}
    if dtype == "bf16":
        w = {k: v.bfloat16() for k, v in w.items()}

    def ln(x, p):
        return F.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"], 1e-5)

    def lin(x, p):
        return F.linear(x, w[p + ".weight"], w[p + ".bias"])

    cache = [None] * cfg["n_layer"]
    out, ids, pos = [], list(prompt), 0
    with torch.no_grad():
        x_ids = torch.tensor([ids])
        for _ in range(n_new):
            t = x_ids.shape[1]
            x = w["wte.weight"][x_ids] + w["wpe.weight"][pos:pos + t]
            for i in range(cfg["n_layer"]):
                p = f"h.{i}."
                q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
                q, k, v = (z.view(1, t, H, C // H).transpose(1, 2) for z in (q, k, v))
                if cache[i] is not None:
                    k, v = torch.cat([cache[i][0], k], 2), torch.cat([cache[i][1], v], 2)
                cache[i] = (k, v)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
                x = x + lin(y.transpose(1, 2).reshape(1, t, C), p + "attn.c_proj")
                x = x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc"), approximate="tanh"), p + "mlp.c_proj")
            logits = ln(x[:, -1], "ln_f") @ w["wte.weight"].T
            nxt = int(logits.argmax(-1))
            out.append(nxt)
            pos += t
            x_ids = torch.tensor([[nxt]])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dtype", choices=["f32", "bf16"], default="f32", help="bf16: see the docstring")
    args = p.parse_args()

    import os
    import sys

    import nanofrontier as nf

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import machine_report

    nf.set_num_threads(args.threads)
    print("\n".join(machine_report([args.threads])[0]))
    if args.dtype == "bf16" and not nf.bf16_supported():
        sys.exit("bench_decode.py --dtype bf16: this CPU has no AVX512-BF16 (nf.bf16_supported() is False)")
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("(torch is not installed: nanofrontier only)")

    # every nanofrontier run first: torch's OpenMP threads keep spinning after its ops and would steal
    # cores from whatever runs next in this process
    prompt, runs = [1, 2, 3, 4], {}
    for name, cfg in CONFIGS.items():
        nf.manual_seed(0)
        model = nf.models.GPT(nf.models.GPTConfig(**cfg)).eval()
        ours = []

        def run_nf():
            with nf.autocast(args.dtype):
                ours[:] = model.generate([prompt], max_new_tokens=args.tokens, temperature=0.0)[0][0]

        runs[name] = (model, ours, statistics.median(_times(run_nf, args.repeat)))
    rows = []
    for name, cfg in CONFIGS.items():
        model, ours, t_nf = runs[name]
        r = [name, args.tokens / t_nf]
        if torch is not None:
            sd = model.state_dict()
            theirs = []

            def run_torch():
                theirs[:] = torch_decode(torch, sd, cfg, prompt, args.tokens, args.dtype)

            t_torch = statistics.median(_times(run_torch, args.repeat))
            agree = np.mean(np.array(ours) == np.array(theirs))
            r += [args.tokens / t_torch, agree]
        rows.append(r)

    print(f"\nbatch-1 greedy decode ({args.dtype} weights) of {args.tokens} tokens with a KV cache, "
          f"{args.threads} threads, "
          f"median of {args.repeat}\n")
    print("| config | nanofrontier tokens/s | torch tokens/s | nf / torch | same tokens |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        if len(r) == 4:
            print(f"| {r[0]} | {r[1]:,.0f} | {r[2]:,.0f} | {r[1] / r[2]:.2f} | {r[3]:.0%} |")
        else:
            print(f"| {r[0]} | {r[1]:,.0f} | — | — | — |")


def _times(fn, repeat):
    fn()  # warm-up
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
