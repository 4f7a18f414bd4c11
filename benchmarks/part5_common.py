"""The models the Part 5 notebooks start from, rebuilt the notebooks' way for the benchmarks/part5_*.py
scripts: 05a's base model (from ``facts.base_model``'s cache, or pretrained first), its SFT model (16
demonstrations drawn with seed 2, 10 steps) and its reward model (60 steps on the pairs). ``split`` picks the
questions the demonstrations and pairs come from: "train" (the notebooks') or "fit" (leaving "val" unseen)."""

import numpy as np

import nanofrontier as nf
from nanofrontier.tasks import facts


def sft_model(task, split="train"):
    """05a's SFT model, on ``split``'s demonstrations; in eval mode."""
    base, _ = facts.base_model(task, n_layer=2, n_head=4, n_embd=128, steps=2500)
    rng = np.random.default_rng(2)
    demos = task.demonstrations(split)
    demos = [demos[i] for i in rng.choice(len(demos), 16, replace=False)]
    sft = base.copy()
    sft.train()
    opt = nf.optim.AdamW(sft.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.0)
    nf.rl.SFTTrainer(sft, opt, task.example_ids(demos), batch_size=16, max_steps=10, schedule="constant",
                     warmup_steps=10, seed=0, progress=False).train()
    return sft.eval()


def models(task, split="train"):
    """(SFT model, reward model) as 05a trains them, both on ``split``; in eval mode."""
    sft = sft_model(task, split)
    rm = nf.rl.RewardModel(sft.copy())
    nf.rl.RewardTrainer(rm, nf.optim.AdamW(rm.parameters(), lr=3e-4, weight_decay=0.0),
                        task.pair_ids(task.pairs(split)), batch_size=16, max_steps=60, schedule="constant",
                        seed=0, progress=False).train()
    return sft, rm.eval()
