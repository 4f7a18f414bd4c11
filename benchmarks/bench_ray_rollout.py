"""GRPO rollout throughput in-process and on 1 and 2 local Ray workers (nf.rl.RayRollouts).

    python benchmarks/bench_ray_rollout.py                       # tiny GPT, 8 prompts x 8, 48 new tokens
    python benchmarks/bench_ray_rollout.py --rounds 9 --model small --prompts 4

One rollout = what a GRPOTrainer step samples and scores before it learns: ``trainer.make_rollout`` +
``trainer.score`` (for Ray: the weights put in the object store, the shares sampled and scored by the
workers, the Rollout joined in the driver). Prompts of 16 tokens, G completions each, exactly --new
tokens (no stop token, so every round does the same work), temperature 1, a cheap rule reward.

The set-ups run alternately, one rollout each per round (the step number is the round, so every
set-up samples the same rows — checked bit for bit); the first round (actor start, warm-up) is not
timed. Reported: the median seconds per rollout and completion tokens per second, and the ratio to the
in-process run on all threads. Ray is started with 4 logical CPUs so that the 1- and 2-worker set-ups can
stay up side by side; idle actors use no CPU. In-process runs on nanofrontier's default threads (all
cores) and on one thread (what one Ray worker has: the difference is Ray's overhead); each Ray worker
uses one thread. The load average is printed before and after: the machine may be shared.
"""

import argparse
import os
import statistics
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--model", choices=["tiny", "small"], default="tiny")
    args = ap.parse_args()

    import ray

    import nanofrontier as nf

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    config = getattr(nf.models.GPTConfig, args.model)()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, config.vocab_size, 16).tolist() for _ in range(4 * args.prompts)]

    def rule(prompt, completion):
        return sum(t % 7 == 0 for t in completion) / len(completion)

    def trainer(backend):
        nf.manual_seed(0)
        model = nf.models.GPT(config)
        tr = nf.rl.GRPOTrainer(model, nf.optim.AdamW(model.parameters(), lr=1e-4), prompts, rule,
                               num_generations=args.group, prompts_per_step=args.prompts,
                               max_new_tokens=args.new, max_steps=1, progress=False, diagnostics=False,
                               rollout_backend=backend)
        tr._base_seed = 0  # what train() would fix from seed=0
        return tr

    threads = nf.get_num_threads()
    local = trainer("local")
    setups = {f"in-process, {threads} threads": (local, threads), "in-process, 1 thread": (local, 1),
              "Ray, 1 worker (1 thread)": (trainer(nf.rl.RayRollouts(num_workers=1)), threads),
              "Ray, 2 workers (1 thread each)": (trainer(nf.rl.RayRollouts(num_workers=2)), threads)}
    print(f"model {args.model} ({sum(p.numel() for p in local.model.parameters()):,} parameters), "
          f"{args.prompts} prompts x {args.group} completions x {args.new} new tokens")
    print("before:", ", ".join(f"{x:.2f}" for x in os.getloadavg()), "(load average 1, 5, 15 min)")
    times = {k: [] for k in setups}
    for r in range(args.rounds + 1):
        firsts = {}
        order = list(setups) if r % 2 == 0 else list(setups)[::-1]
        for k in order:
            tr, n = setups[k]
            nf.set_num_threads(n)
            t0 = time.perf_counter()
            ro = tr.make_rollout(step=r)
            tr.score(ro)
            dt = time.perf_counter() - t0
            nf.set_num_threads(threads)
            if r > 0:
                times[k].append(dt)
            firsts[k] = ro
        base = firsts[order[0]]
        for k, ro in firsts.items():
            same = np.array_equal(ro.input_ids, base.input_ids) and np.array_equal(ro.logprobs, base.logprobs)
            assert same, f"{k} sampled other rows than in-process in round {r}"
    print("after: ", ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    tokens = args.prompts * args.group * args.new
    ref = statistics.median(times[next(iter(times))])
    print(f"\n| set-up | s per rollout (median of {args.rounds}) | completion tokens/s | vs in-process |")
    print("|---|---:|---:|---:|")
    for k, ts in times.items():
        m = statistics.median(ts)
        print(f"| {k} | {m:.3f} ({min(ts):.3f}-{max(ts):.3f}) | {tokens / m:,.0f} | {ref / m:.2f}x |")
    print("\nevery set-up sampled the same rows, bit for bit")
    for tr, _ in setups.values():
        if tr.rollout_backend is not None:
            tr.rollout_backend.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
