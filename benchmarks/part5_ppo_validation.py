"""Part 5a's PPO settings compared on the validation split: not a speed benchmark, the runs behind the
README's Part 5 note on PPO's seed-to-seed spread (05a's recipe and the candidates tried to make it steadier).

The base model is 05a's (from ``facts.base_model``'s cache, or pretrained first); the SFT and reward models
are trained as in 05a but, by default, on the "fit" demonstrations and pairs only (``--sft-rm-split fit``), so
that the val questions are as new to them as the held-out questions are to 05a's (with ``train`` they are
05a's own models, whose reward model was trained on pairs of the val questions: val then flatters every
setting). PPO samples the prompts of the "fit" questions (three quarters of the train questions; the 28 are
listed twice so that a step can draw 05a's 32) and is measured on the "val" questions (the other quarter, also
train questions: no held-out question is looked at), 64 replies per question at temperature 1 (there are only
8). Each setting runs once per value-head seed (``--seeds``: ``nf.manual_seed(s)`` before a random value head)
and PPO seed (``--ppo-seeds``: the rollouts' sampling and order); with ``--value-init reward`` the value model
is a copy of the reward model (``nf.rl.ValueModel.from_reward_model``) and only the PPO seed matters. One line
per run; with ``--trace`` also the per-step reward, rule score, KL, value loss, explained variance, clip
fraction.

    python benchmarks/part5_ppo_validation.py --seeds 0 1 2 3 4 --value-init random
    python benchmarks/part5_ppo_validation.py --value-init reward --value-lr 2e-4 --ppo-seeds 0 1 2 3 4
    python benchmarks/part5_ppo_validation.py --seeds 0 2 --trace   # per-step history, good and bad draw
"""

import argparse
import os
import time


import nanofrontier as nf
from nanofrontier.tasks import facts
from part5_common import models


def run(task, sft, rm, args, seed, ppo_seed, train_split, eval_split):
    policy = sft.copy()
    policy.train()
    ref = sft.copy().freeze()
    nf.manual_seed(seed)
    if args.value_init == "reward":
        value = nf.rl.ValueModel.from_reward_model(rm)
    else:
        value = nf.rl.ValueModel(sft.copy())
    value.train()
    if args.value_lr is None:  # one optimizer, one learning rate (05a's first recipe)
        opt = nf.optim.AdamW(policy.parameters() + value.parameters(), lr=args.lr, weight_decay=0.0)
    else:
        opt = [nf.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0),
               nf.optim.AdamW(value.parameters(), lr=args.value_lr, weight_decay=0.0)]
    t0 = time.perf_counter()
    prompts = task.prompt_ids(train_split)
    prompts = prompts * -(-args.prompts // len(prompts))  # 28 fit prompts: each twice, to draw 32 a step
    hist = nf.rl.PPOTrainer(policy, value, opt, prompts, reward=rm,
                            rule_fn=[task.rule_fn("answered"), task.rule_fn("correct")],
                            decode=task.tokenizer.decode, max_new_tokens=task.max_new_tokens,
                            stop_tokens=list(task.stop_ids), ref_model=ref, kl_coef=args.kl_coef,
                            seed=ppo_seed, progress=False, prompts_per_step=args.prompts,
                            minibatch_size=args.minibatch,
                            ppo_epochs=args.epochs, max_steps=args.steps, vf_coef=args.vf_coef,
                            clip_eps=args.clip, ent_coef=args.ent_coef).train()
    seconds = time.perf_counter() - t0
    policy.eval()
    r = task.evaluate(policy, eval_split, samples_per_question=args.samples, temperature=1.0, seed=123,
                      ref_model=ref)
    if args.trace:
        cols = ["score", "rule_score", "kl", "value_loss", "explained_variance", "clip_fraction"]
        c = {k: hist.column(k)[1] for k in cols}
        for i in range(len(c["score"])):
            print(f"  step {i + 1:2d} " + " ".join(f"{k} {c[k][i]:7.3f}" for k in cols))
    return (f"value {args.value_init} seed {seed} ppo seed {ppo_seed}: {eval_split} answer rate "
            f"{r['answer_rate']:6.1%}, accuracy {r['accuracy']:6.1%}, KL {r['kl']:.2f}; {seconds:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="value-head seeds")
    ap.add_argument("--ppo-seeds", type=int, nargs="+", default=[0],
                    help="PPOTrainer seeds (rollouts, order)")
    ap.add_argument("--value-init", choices=("random", "reward"), default="random")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--value-lr", type=float, default=None, help="own optimizer for the value model")
    ap.add_argument("--kl-coef", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--vf-coef", type=float, default=0.5)
    ap.add_argument("--clip", type=float, default=0.2)
    ap.add_argument("--ent-coef", type=float, default=0.0, help="entropy bonus")
    ap.add_argument("--samples", type=int, default=64, help="replies per val question")
    ap.add_argument("--heldout", action="store_true",
                    help="train on 'train', measure on 'heldout' (05a's run)")
    ap.add_argument("--sft-rm-split", choices=("train", "fit"), default="fit",
                    help="where the SFT demonstrations and reward-model pairs come from "
                         "('train': 05a's models, which have seen the val questions)")
    ap.add_argument("--trace", action="store_true", help="print the per-step history")
    args = ap.parse_args()
    task = facts.make_task(seed=0)
    sft, rm = models(task, args.sft_rm_split)
    split = ("train", "heldout") if args.heldout else ("fit", "val")
    print(f"{vars(args)}; {len(task.questions(split[0]))} {split[0]} -> {len(task.questions(split[1]))} "
          f"{split[1]} questions; {nf.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)
    for ppo_seed in args.ppo_seeds:
        for seed in args.seeds:
            print(run(task, sft, rm, args, seed, ppo_seed, *split), flush=True)


if __name__ == "__main__":
    main()
