"""05a's PPO run (β = 0.1, 30 steps) repeated with the value head's initial weights drawn after
``nf.manual_seed(s)`` for each seed ``s`` given: how much 05a's PPO headline depends on that one random draw.
Not a speed benchmark. Everything else is 05a's: the cached base model, the same SFT and reward model,
PPO's own ``seed=0``; seed 0 is 05a's own run.

    python benchmarks/part5_ppo_value_seeds.py 0 1 2 3 4
"""

import sys
import time

import numpy as np

import nanofrontier as nf
from nanofrontier.tasks import facts

PPO = dict(prompts_per_step=32, minibatch_size=16, ppo_epochs=2, max_steps=30)


def main(seeds):
    task = facts.make_task(seed=0)
    base, _ = facts.base_model(task, n_layer=2, n_head=4, n_embd=128, steps=2500)
    rng = np.random.default_rng(2)
    demos = task.demonstrations("train")
    demos = [demos[i] for i in rng.choice(len(demos), 16, replace=False)]
    sft = base.copy()
    sft.train()
    opt = nf.optim.AdamW(sft.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.0)
    nf.rl.SFTTrainer(sft, opt, task.example_ids(demos), batch_size=16, max_steps=10, schedule="constant",
                     warmup_steps=10, seed=0, progress=False).train()
    sft.eval()
    ref = sft.copy().freeze()
    rm = nf.rl.RewardModel(sft.copy())
    nf.rl.RewardTrainer(rm, nf.optim.AdamW(rm.parameters(), lr=3e-4, weight_decay=0.0),
                        task.pair_ids(task.pairs("train")), batch_size=16, max_steps=60, schedule="constant",
                        seed=0, progress=False).train()
    rm.eval()
    for s in seeds:
        policy = sft.copy()
        policy.train()
        nf.manual_seed(s)
        value = nf.rl.ValueModel(sft.copy())
        opt = nf.optim.AdamW(policy.parameters() + value.parameters(), lr=5e-5, weight_decay=0.0)
        t0 = time.perf_counter()
        nf.rl.PPOTrainer(policy, value, opt, task.prompt_ids("train"), reward=rm,
                         rule_fn=[task.rule_fn("answered"), task.rule_fn("correct")],
                         decode=task.tokenizer.decode, max_new_tokens=task.max_new_tokens,
                         stop_tokens=list(task.stop_ids), ref_model=ref, kl_coef=0.1, seed=0, progress=False,
                         **PPO).train()
        policy.eval()
        r = task.evaluate(policy, "heldout", samples_per_question=16, temperature=1.0, seed=123,
                          ref_model=ref)
        print(f"value-head seed {s}: held-out answer rate {r['answer_rate']:.1%}, accuracy "
              f"{r['accuracy']:.1%}, KL to SFT {r['kl']:.2f} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main([int(x) for x in sys.argv[1:]] or [0])
