"""Sampling cost at a GPT-2-sized vocabulary: batch-1 decoding with greedy, temperature-1, top-k and top-p
sampling on the same model, so the gap between greedy and the others is what choosing a token costs.

    python benchmarks/bench_sampling.py                     # V = 50257, 128 new tokens, 2 threads
    python benchmarks/bench_sampling.py --rounds 5 --tokens 256

The model is the tiny GPT (4 layers, 128 wide) with V = 50,257, so the head and the sampler dominate a
step — the harshest setting for sampling overhead. Each mode runs in its own process (a runtime's idle
threads or warm caches must not favour one side), the modes alternate over --rounds, and each process
reports the median of --repeat timed runs; the table shows the median over rounds and the ratio to greedy.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

MODES = {
    "greedy": dict(temperature=0.0),
    "temperature 1": dict(temperature=1.0),
    "top-k 50": dict(temperature=1.0, top_k=50),
    "top-p 0.9": dict(temperature=1.0, top_p=0.9),
}


def child(args):
    import nanofrontier as nf

    nf.set_num_threads(args.threads)
    nf.manual_seed(0)
    model = nf.models.GPT(nf.models.GPTConfig.tiny(vocab_size=args.vocab, block_size=args.tokens + 8)).eval()
    kw = MODES[args.child]

    def run():
        t0 = time.perf_counter()
        toks, _ = model.generate([[1, 2, 3, 4]], max_new_tokens=args.tokens, seed=1, **kw)
        dt = time.perf_counter() - t0
        assert len(toks[0]) == args.tokens
        return dt

    run()  # warm-up
    times = [run() for _ in range(args.repeat)]
    print(json.dumps({"tok_s": args.tokens / statistics.median(times)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    runs = {m: [] for m in MODES}
    for rnd in range(args.rounds):
        order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
        for mode in order:
            cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens), "--vocab",
                   str(args.vocab), "--threads", str(args.threads), "--repeat", str(args.repeat)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1])["tok_s"])
    greedy = statistics.median(runs["greedy"])
    print(f"\nbatch-1 decode of {args.tokens} tokens, V = {args.vocab:,}, tiny GPT, {args.threads} threads; "
          f"median over {args.rounds} processes per mode (each the median of {args.repeat} runs)\n")
    print("| mode | tokens/s | greedy / mode | per-round tokens/s |")
    print("|---|---:|---:|---|")
    for mode, v in runs.items():
        med = statistics.median(v)
        print(f"| {mode} | {med:,.0f} | {greedy / med:.2f} | {', '.join(f'{x:,.0f}' for x in v)} |")


if __name__ == "__main__":
    main()
