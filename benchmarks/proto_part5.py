"""Feasibility prototype for Part 5 (issue 11): base model → SFT → DPO (and a hand-rolled reward model) on
``nf.tasks.facts``, with plain loops on what exists today, so the notebook author can start from a recipe
known to work on 2 cores. Not a benchmark against another library: it prints the numbers (rule-scored
rates on held-out questions, seconds, load) the notebooks' budgets come from.

    python benchmarks/proto_part5.py --pretrain-steps 2000 --pretrain-seconds 400   # all stages, the recipe
    python benchmarks/proto_part5.py --stages sft,dpo     # start again from the saved base model
    python benchmarks/proto_part5.py --stages dpo --dpo-lr 3e-5 --beta 0.5   # from the saved SFT model

Stages: "pretrain" (next-token loss on the base corpus, random 128-token windows, warmup + cosine),
"sft" (cross-entropy on the completion tokens only), "dpo" (nf.rl.dpo_loss against the frozen SFT
model; optional RPO-style NLL term, and a control without the pairwise term), "rm" (the SFT trunk + a
linear head on the last real token, nf.rl.reward_loss, accuracy on held-out pairs). After each: answer
rate / accuracy on the held-out questions (8 samples each at temperature 1, and greedy), the seconds.
Checkpoints go to --dir (default /tmp/proto_part5).

What was measured (Dec 2026, 2 threads, load 1.5-4.5; `make_task(0)` = 12 facts per relation, 48 questions,
12 held out; GPT 4 layers × 128 wide, 4 heads, no bias, 0.81M parameters, vocab 71, batch 16 × 128):
- pretrain, AdamW lr 3e-3 (betas 0.9/0.99, wd 0.1), 50 warmup steps, cosine to 0.1×, clip 1.0: the
  *knowledge probe* (question + "Its capital is " → greedy value) goes 0% → 100% held-out between steps
  1,000 and 1,600; 2,000 steps = 4.1M tokens = 183 s at 22k tok/s (load 2.5). Base model: held-out
  answer rate 26% (T=1; greedy 8%), and every answer it gives is correct (accuracy 26%).
  With 24 facts per relation, 120 s (~750-980 steps) left accuracy near 1%: knowledge is what costs time.
  A 2-layer model (0.42M) is twice as fast (40k tok/s) and knows everything after ~2,000 steps = 100 s.
- SFT, 16 demonstrations, batch 16, lr 3e-4 (10 warmup), no decay: 10 steps (0.5 s) → 76% answer rate /
  71% accuracy; 20 steps (1.2 s) → 94% / 72%. SFT alone can pass 90%.
- DPO from the 10-step SFT model (76%), batch 16 pairs of all four kinds: fragile. β=0.5, lr 3e-5:
  20 steps 80%, 35 steps 78%, 60 steps 66% (KL 6.5 nats: it degrades into broken names and mashed
  templates). On another base model the same 60 steps gave 93% / 91% (KL 0.33) — the window is narrow and
  moves. β=0.1 with lr ≥ 3e-5 collapses (answer rate 8-35%, KL 8-80 nats): likelihood displacement — the
  rejected question lines share "capital", " is " ... with the chosen answers, and pushing them down drags
  the answers down too. Adding α·NLL(chosen) (RPO) with α=20 gives 93-97%, but the control with the
  NLL term alone (no pairwise term) gives 97-100%: that gain is SFT on the chosen answers, not DPO.
- reward model (60 steps, lr 3e-4, batch 16): held-out pair accuracy 85-90%: 100% on continuation /
  repetition / unrelated, chance (42-58%) on wrong answers — it learns "is this an answer", not facts.
"""

import argparse
import math
import os
import time

import nanofrontier as nf
import numpy as np
from nanofrontier.models import GPT, GPTConfig
from nanofrontier.tasks import facts


def load_avg():
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def save(model, path):
    np.savez(path, **model.state_dict())


def load(model, path):
    with np.load(path) as z:
        model.load_state_dict({k: z[k] for k in z.files})


def report(task, model, name, args, t=None):
    r = task.evaluate(model, "heldout", samples_per_question=args.samples, temperature=1.0, seed=123)
    tr = task.evaluate(model, "train", samples_per_question=1, temperature=1.0, seed=321)
    g = task.evaluate(model, "heldout", samples_per_question=1, temperature=0.0)
    took = "" if t is None else f" after {t:.1f} s"
    print(
        f"[{name}]{took}: held-out answer rate {r['answer_rate']:.0%}, accuracy {r['accuracy']:.0%}, "
        f"clean {r['clean_rate']:.0%} (n={r['n']}, T=1); greedy {g['answer_rate']:.0%}/{g['accuracy']:.0%}; "
        f"train {tr['answer_rate']:.0%}/{tr['accuracy']:.0%}; {load_avg()}",
        flush=True,
    )
    for q, c, s in r["samples"][: args.show]:
        print(
            f"    {q!r} -> {c!r} {'answered' if s['answered'] else '-'}{' correct' if s['correct'] else ''}"
        )
    return r


def probe(task, model, split="heldout"):
    """Knowledge, apart from behaviour: given the question and the start of its answer sentence ("Its
    capital is "), does greedy decoding fill in the true value? Fraction correct over ``split``."""
    qs = task.questions(split)
    heads = [q.answer_text().split(q.answer)[0] for q in qs]
    toks, _ = model.generate(
        [task.tokenizer.encode(q.prompt + h) for q, h in zip(qs, heads)],
        16,
        temperature=0.0,
        stop_tokens=list(task.stop_ids),
    )
    return float(
        np.mean([task.score(q, h + task.tokenizer.decode(t))["correct"] for q, h, t in zip(qs, heads, toks)])
    )


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def pretrain(task, model, args):
    ids = np.array(task.tokenizer.encode(task.base_corpus), dtype=np.int64)
    n_val = len(ids) // 20
    train, val = ids[:-n_val], ids[-n_val:]
    opt = nf.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)
    vx, vy = nf.data.get_batch(val, 32, args.block, np.random.default_rng(1))
    t0, step = time.perf_counter(), 0
    while True:
        el = time.perf_counter() - t0
        frac = max(el / args.pretrain_seconds, step / (args.pretrain_steps or float("inf")))
        if frac >= 1:
            break
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        set_lr(opt, lr)
        x, y = nf.data.get_batch(train, args.batch, args.block, rng)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0:
            with nf.no_grad():
                _, vl = model(vx, vy)
            print(
                f"  pretrain step {step}: loss {loss.item():.3f}, val {vl.item():.3f}, {el:.0f} s; knowledge "
                f"probe held-out {probe(task, model):.0%} train {probe(task, model, 'train'):.0%}",
                flush=True,
            )
        step += 1
    took = time.perf_counter() - t0
    with nf.no_grad():
        _, vl = model(vx, vy)
    toks = step * args.batch * args.block
    print(
        f"  pretrain: {step} steps, {toks:,} tokens ({toks / len(train):.2f} epochs) in {took:.1f} s "
        f"= {toks / took:,.0f} tok/s; val loss {vl.item():.3f}; knowledge probe held-out {probe(task, model):.0%}"
        f" train {probe(task, model, 'train'):.0%}",
        flush=True,
    )
    return took


def sft(task, model, args):
    demos = task.demonstrations("train")
    rng = np.random.default_rng(2)
    if args.n_demos < len(demos):
        demos = [demos[i] for i in rng.choice(len(demos), args.n_demos, replace=False)]
    opt = nf.optim.AdamW(model.parameters(), lr=args.sft_lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(args.sft_steps):
        set_lr(opt, args.sft_lr * min(1.0, (step + 1) / 10))
        idx = rng.choice(len(demos), min(args.batch, len(demos)), replace=False)
        b = task.batch([demos[i].prompt for i in idx], [demos[i].completion for i in idx])
        x = b["input_ids"][:, :-1]
        y = np.where(
            b["completion_mask"][:, 1:], b["input_ids"][:, 1:], -100
        )  # only the completion is scored
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0:
            print(f"  sft step {step}: loss {loss.item():.3f}", flush=True)
    return time.perf_counter() - t0


def seq_logps(model, b):
    """(B,) sum of log p over the completion tokens, differentiable."""
    x = b["input_ids"][:, :-1]
    y = np.where(b["completion_mask"][:, 1:], b["input_ids"][:, 1:], -100)
    return model.token_logprobs(x, y).sum(dim=-1)


def dpo(task, model, ref, args):
    pairs = task.pairs("train", kinds=args.dpo_kinds.split(","))
    rng = np.random.default_rng(3)
    opt = nf.optim.AdamW(model.parameters(), lr=args.dpo_lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.perf_counter()
    for step in range(args.dpo_steps):
        set_lr(opt, args.dpo_lr * min(1.0, (step + 1) / 10))
        idx = rng.choice(len(pairs), min(args.batch, len(pairs)), replace=False)
        ps = [pairs[i] for i in idx]
        bc = task.batch([p.prompt for p in ps], [p.chosen for p in ps])
        br = task.batch([p.prompt for p in ps], [p.rejected for p in ps])
        with nf.no_grad():
            rc, rr = seq_logps(ref, bc).numpy(), seq_logps(ref, br).numpy()
        pc = seq_logps(model, bc)
        loss, m = nf.rl.dpo_loss(pc, seq_logps(model, br), rc, rr, beta=args.beta)
        if args.dpo_no_pairwise:  # the control: the NLL term alone (SFT on the chosen answers)
            loss = pc.sum() * 0.0
        if (
            args.dpo_nll > 0
        ):  # RPO (Pang et al. 2024): + α · NLL of the chosen, per token, against displacement
            loss = loss - pc.sum() * (args.dpo_nll / float(bc["completion_mask"][:, 1:].sum()))
        opt.zero_grad()
        loss.backward()
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0:
            print(
                f"  dpo step {step}: loss {loss.item():.3f} (ln 2 = {math.log(2):.3f}), margin {m['margin']:.2f}, "
                f"accuracy {m['accuracy']:.2f}",
                flush=True,
            )
    return time.perf_counter() - t0


def kl_to(task, model, ref, args):
    """Mean over held-out prompts of the summed per-token log p_model − log p_ref on the model's own samples
    (a k1 estimate of KL(model ‖ ref) per completion)."""
    qs = task.questions("heldout")
    prompts = [task.tokenizer.encode(q.prompt) for q in qs]
    g = model.generate_batch(
        prompts, task.max_new_tokens, temperature=1.0, seed=7, stop_tokens=list(task.stop_ids)
    )
    comps = [task.tokenizer.decode(t[m]) for t, m in zip(g.tokens, g.mask)]
    b = task.batch([q.prompt for q in qs], comps)
    with nf.no_grad():
        return float(np.mean(seq_logps(model, b).numpy() - seq_logps(ref, b).numpy()))


def reward_model(task, sft_model, args):
    rm = sft_model.copy()
    w = nf.tensor(np.zeros((rm.config.n_embd, 1), np.float32), requires_grad=True)
    opt = nf.optim.AdamW(list(rm.parameters()) + [w], lr=args.rm_lr, weight_decay=0.0)
    pairs, held = task.pairs("train"), task.pairs("heldout")
    rng = np.random.default_rng(4)

    def rewards(b):
        h = rm.hidden(b["input_ids"])  # (B, T, C)
        last = b["attention_mask"].sum(1) - 1  # the last real token of each row
        onehot = np.zeros(b["input_ids"].shape + (1,), np.float32)
        onehot[np.arange(len(last)), last, 0] = 1.0
        return ((h * nf.tensor(onehot)).sum(dim=1) @ w).reshape(-1)  # (B,)

    def accuracy(ps):
        with nf.no_grad():
            bc = task.batch([p.prompt for p in ps], [p.chosen for p in ps])
            br = task.batch([p.prompt for p in ps], [p.rejected for p in ps])
            return float(np.mean(rewards(bc).numpy() > rewards(br).numpy()))

    t0 = time.perf_counter()
    for step in range(args.rm_steps):
        idx = rng.choice(len(pairs), min(args.batch, len(pairs)), replace=False)
        ps = [pairs[i] for i in idx]
        bc = task.batch([p.prompt for p in ps], [p.chosen for p in ps])
        br = task.batch([p.prompt for p in ps], [p.rejected for p in ps])
        loss, _ = nf.rl.reward_loss(rewards(bc), rewards(br))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            print(f"  rm step {step}: loss {loss.item():.3f}", flush=True)
    took = time.perf_counter() - t0
    by_kind = {k: accuracy([p for p in held if p.kind == k]) for k in facts.PAIR_KINDS}
    print(
        f"[rm] after {took:.1f} s: held-out pair accuracy {accuracy(held):.0%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in by_kind.items())}); train {accuracy(pairs):.0%}",
        flush=True,
    )
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", default="pretrain,sft,dpo,rm")
    ap.add_argument("--dir", default="/tmp/proto_part5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-per-relation", type=int, default=12)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pretrain-seconds", type=float, default=240.0)
    ap.add_argument("--pretrain-steps", type=int, default=None, help="stop here if the time is not up first")
    ap.add_argument("--n-demos", type=int, default=16)
    ap.add_argument("--sft-steps", type=int, default=10)
    ap.add_argument("--sft-lr", type=float, default=3e-4)
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument("--dpo-lr", type=float, default=3e-5)
    ap.add_argument("--beta", type=float, default=0.5)
    ap.add_argument("--dpo-nll", type=float, default=0.0)
    ap.add_argument("--dpo-no-pairwise", action="store_true", help="control: drop the DPO term")
    ap.add_argument("--dpo-kinds", default=",".join(facts.PAIR_KINDS))
    ap.add_argument("--rm-steps", type=int, default=60)
    ap.add_argument("--rm-lr", type=float, default=3e-4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--show", type=int, default=4)
    args = ap.parse_args()
    stages = args.stages.split(",")
    os.makedirs(args.dir, exist_ok=True)
    task = facts.make_task(args.seed, n_per_relation=args.n_per_relation)
    print(f"{task}; {nf.get_num_threads()} threads; {load_avg()}")
    nf.manual_seed(args.seed)
    cfg = GPTConfig(
        vocab_size=task.tokenizer.vocab_size,
        block_size=args.block,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        bias=False,
    )
    model = GPT(cfg)
    print(f"model: {cfg} ({model.num_parameters():,} parameters)")
    base_path, sft_path, dpo_path = (os.path.join(args.dir, f"{s}.npz") for s in ("base", "sft", "dpo"))
    if "pretrain" in stages:
        t = pretrain(task, model, args)
        save(model, base_path)
        report(task, model, "base", args, t)
    else:
        load(model, base_path)
    if "sft" in stages:
        t = sft(task, model, args)
        save(model, sft_path)
        report(task, model, "sft", args, t)
    elif os.path.exists(sft_path) and any(s in stages for s in ("dpo", "rm")):
        load(model, sft_path)
    if "dpo" in stages:
        ref = model.copy()
        ref.eval()
        t = dpo(task, model, ref, args)
        save(model, dpo_path)
        report(task, model, "dpo", args, t)
        print(
            f"[dpo] KL(dpo || sft) per completion on held-out prompts: {kl_to(task, model, ref, args):.2f} nats"
        )
        load(model, sft_path)
    if "rm" in stages:
        reward_model(task, model, args)


if __name__ == "__main__":
    main()
