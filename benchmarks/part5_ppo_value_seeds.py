"""05a's PPO run (β = 0.1, 30 steps of 32 prompts) repeated over five seeds, with 05a's first recipe and
its current one: how much 05a's PPO headline depends on one random draw. Not a speed benchmark.
Everything else is 05a's: the cached base model, the same SFT and reward model; each run is measured once on
the held-out questions (16 replies each at temperature 1, as in 05a).

- ``--recipe old`` (05a's first recipe): the value model is a copy of the SFT trunk with a random head, drawn
  after ``nf.manual_seed(s)`` for each seed ``s``; one AdamW (lr 5e-5) over policy and value; PPO's
  ``seed=0``. Seed 0 was that recipe's 05a run.
- ``--recipe new``: the value model starts as a copy of the trained reward model
  (``nf.rl.ValueModel.from_reward_model``, as InstructGPT did), with its own AdamW at lr 2e-4 (the policy's
  stays 5e-5). Nothing is random in that start, so the seed ``s`` is PPO's ``seed`` (the rollouts' sampling
  and order). With ``--ent-coef 0.01`` this is 05a's current recipe, and seed 0 is 05a's run.

    python benchmarks/part5_ppo_value_seeds.py --recipe new 0 1 2 3 4
    python benchmarks/part5_ppo_value_seeds.py --recipe new --ent-coef 0.01 0 1 2 3 4
    python benchmarks/part5_ppo_value_seeds.py --recipe old 0 1 2 3 4
    python benchmarks/part5_ppo_value_seeds.py --recipe old --vary ppo 0 1 2 3 4   # value head of seed 0
"""

import argparse
import os
import time

import numpy as np

import nanofrontier as nf
from nanofrontier.tasks import facts
from part5_common import models

PPO = dict(prompts_per_step=32, minibatch_size=16, ppo_epochs=2, max_steps=30)
PPO_LR, VALUE_LR, KL_COEF = 5e-5, 2e-4, 0.1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", choices=("old", "new"), default="new")
    ap.add_argument("--vary", choices=("value", "ppo"), default=None,
                    help="what the seeds change: the random value head's draw ('value', the old recipe's "
                         "default) or PPO's seed ('ppo', the only choice for the new recipe)")
    ap.add_argument("--ent-coef", type=float, default=0.0,
                    help="PPO's entropy bonus (default 0; 05a's current recipe: --recipe new --ent-coef 0.01)")
    ap.add_argument("seeds", type=int, nargs="*", default=[0])
    args = ap.parse_args()
    vary = args.vary or ("value" if args.recipe == "old" else "ppo")
    if args.recipe == "new" and vary == "value":
        ap.error("the new recipe's value model has no random draw: --vary ppo")
    task = facts.make_task(seed=0)
    sft, rm = models(task)
    ref = sft.copy().freeze()
    print(f"recipe {args.recipe}, entropy bonus {args.ent_coef}; {nf.get_num_threads()} threads, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rates = []
    for s in args.seeds:
        policy = sft.copy()
        policy.train()
        if args.recipe == "old":
            nf.manual_seed(s if vary == "value" else 0)
            value = nf.rl.ValueModel(sft.copy())
            opt = nf.optim.AdamW(policy.parameters() + value.parameters(), lr=PPO_LR, weight_decay=0.0)
            ppo_seed = 0 if vary == "value" else s
        else:
            value = nf.rl.ValueModel.from_reward_model(rm)
            value.train()
            opt = [nf.optim.AdamW(policy.parameters(), lr=PPO_LR, weight_decay=0.0),
                   nf.optim.AdamW(value.parameters(), lr=VALUE_LR, weight_decay=0.0)]
            ppo_seed = s
        t0 = time.perf_counter()
        nf.rl.PPOTrainer(policy, value, opt, task.prompt_ids("train"), reward=rm,
                         rule_fn=[task.rule_fn("answered"), task.rule_fn("correct")],
                         decode=task.tokenizer.decode, max_new_tokens=task.max_new_tokens,
                         stop_tokens=list(task.stop_ids), ref_model=ref, kl_coef=KL_COEF, seed=ppo_seed,
                         progress=False, ent_coef=args.ent_coef, **PPO).train()
        seconds = time.perf_counter() - t0
        policy.eval()
        r = task.evaluate(policy, "heldout", samples_per_question=16, temperature=1.0, seed=123,
                          ref_model=ref)
        rates.append(r["answer_rate"])
        what = "value-head seed" if vary == "value" else "PPO seed"
        print(f"{what} {s}: held-out answer rate {r['answer_rate']:.1%}, accuracy {r['accuracy']:.1%}, KL to "
              f"SFT {r['kl']:.2f} ({seconds:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"recipe {args.recipe}, {vary} seeds {args.seeds}: {sum(a >= 0.9 for a in rates)} of {len(rates)} "
          f"seeds >= 90%, min {min(rates):.1%}, median {np.median(rates):.1%}")


if __name__ == "__main__":
    main()
