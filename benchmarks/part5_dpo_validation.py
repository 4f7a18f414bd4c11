"""Part 5b's DPO settings, chosen on the validation split: not a speed benchmark, the grid behind the choice
of β, learning rate and ``nll_coef`` in ``notebooks/05b_dpo.ipynb``.

    python benchmarks/part5_dpo_validation.py                 # the grid below, one process (about 5 min)
    python benchmarks/part5_dpo_validation.py --seeds 0 1 2 --only "4,1e-4,1"

The base and SFT models are 05a's / 05b's (the base model comes from ``facts.base_model``'s cache, or is
pretrained first). Every run is DPO from the SFT model against the frozen SFT reference, trained on the pairs
of the "fit" questions (three quarters of the train questions) and measured on the "val" questions (the other
quarter, also train questions: no held-out question is looked at), 32 replies per question at temperature 1.
One line per run: val answer rate, accuracy, KL to the SFT model, and the policy's mean log-prob of the
chosen and rejected replies over the first and last five steps (do both fall?).
"""

import argparse
import os
import time

import numpy as np

import nanofrontier as nf
from nanofrontier.tasks import facts
from part5_common import sft_model

# (beta, lr, nll_coef); 100 steps of 16 pairs each
GRID = [(4, 2e-5, 0), (4, 5e-5, 0), (4, 1e-4, 0), (2, 2e-5, 0), (1, 2e-5, 0), (8, 2e-5, 0),
        (4, 2e-5, 1), (4, 5e-5, 1), (4, 1e-4, 1), (4, 2e-4, 1), (2, 1e-4, 1), (1, 5e-5, 1),
        (4, 5e-5, 0.3), (4, 1e-4, 0.5)]


def run(task, sft, beta, lr, nll_coef, seed, steps, train_split, eval_split, samples):
    policy = sft.copy()
    policy.train()
    ref = sft.copy().freeze()
    opt = nf.optim.AdamW(policy.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.perf_counter()
    hist = nf.rl.DPOTrainer(policy, opt, task.pair_ids(task.pairs(train_split)), ref_model=ref, beta=beta,
                            nll_coef=nll_coef, batch_size=16, max_steps=steps, schedule="constant",
                            warmup_steps=min(10, steps), seed=seed, progress=False).train()
    seconds = time.perf_counter() - t0
    policy.eval()
    r = task.evaluate(policy, eval_split, samples_per_question=samples, temperature=1.0, seed=123,
                      ref_model=ref)
    chosen, rejected = hist.column("logps/chosen")[1], hist.column("logps/rejected")[1]
    return (f"beta {beta:<3g} lr {lr:<6g} nll_coef {nll_coef:<4g} seed {seed}: {eval_split} answer rate "
            f"{r['answer_rate']:6.1%}, accuracy {r['accuracy']:6.1%}, KL {r['kl']:.2f}; log-p chosen "
            f"{np.mean(chosen[:5]):.2f} -> {np.mean(chosen[-5:]):.2f}, rejected "
            f"{np.mean(rejected[:5]):.1f} -> {np.mean(rejected[-5:]):.1f}; {seconds:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="DPO seeds (the order pairs are drawn in)")
    ap.add_argument("--only", action="append", metavar="BETA,LR,NLL", help="run only these settings")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--samples", type=int, default=32, help="replies per val question")
    args = ap.parse_args()
    grid = [tuple(float(x) for x in s.split(",")) for s in args.only] if args.only else GRID
    task = facts.make_task(seed=0)
    sft = sft_model(task)
    print(f"{len(task.pairs('fit'))} fit pairs -> {len(task.questions('val'))} val questions; "
          f"{nf.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)
    for beta, lr, nll_coef in grid:
        for seed in args.seeds:
            line = run(task, sft, beta, lr, nll_coef, seed, args.steps, "fit", "val", args.samples)
            print(line, flush=True)


if __name__ == "__main__":
    main()
