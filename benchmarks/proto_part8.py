"""Prototype for Part 8 (issue 12): is DeepSeek-R1-Zero-style pure RL feasible from scratch on 2 CPU cores?

    python benchmarks/proto_part8.py                 # the recipe below: pretrain, measure the base, GRPO x 2
    python benchmarks/proto_part8.py --loss-types dr_grpo --grpo-steps 60 --lr 1e-3

Phases, each timed:
  1. a base model pretrained ONLY on plain text of the domain: sums told in prose ("ann had 23 coins and
     found 45 more, so she had 68 coins.") and column additions written out in sentences ("to add 347 and
     285: 7+5=12, 4+8+1=13, 3+2+1=6, so 632."). Never the prompt's format "Q: what is a + b?\\nA:", never a
     question followed by its answer.
  2. the base model measured on held-out problems in the prompt format: greedy accuracy, sampled pass@1 and
     pass@G, how many completions are well formed, mean response length, share of worked (column) answers.
  3. GRPO from that base with two rule rewards and nothing else: correctness (the number before the final
     "." is the sum) and format (the completion is one sentence ending "<number>."); held-out accuracy and
     mean response length measured along the way; one run per --loss-types entry, each from the same base.
The task generator lives here on purpose (the official one is nf.tasks.arithmetic). Prints a JSON summary.

What was measured (2-digit sums; 100 held-out problems never in the text nor in the RL prompts; pass@k from
k=8 samples at temperature 1; one seed):
  recipe: GPT 3 layers x 96 wide, 4 heads, block 96 (349k params), char-level; 20k lines of text, half
  worked column lines in 6 sentence frames (one with 1-4 filler phrases between the problem and its columns,
  which teaches the model to find the operands); 2500 steps, batch 16, lr 3e-3 cosine -> loss 0.387.
  GRPO: G=8, 16 prompts/step, max_new_tokens 48, lr 2e-4 (AdamW, no decay), beta 0, rewards correctness 1.0
  + format 0.1, 40 steps.
  base in the prompt format: greedy 0.06, pass@1 0.019, pass@8 0.13 (13% of groups carry signal); 98% of
  its samples already write columns (it copies the first column right, loses the second operand's tens).
  (the same base in the text's own frame "to add a + b:" is greedy 1.00: the skill is there, the transfer
  to the new frame is what RL has to find.)
  after 40 steps: grpo (std-scaled)        greedy 0.62, pass@1 0.40, pass@8 0.89   (77 s)
                  dr_grpo (no std scaling) greedy 1.00, pass@1 0.70, pass@8 1.00   (67 s)
  mean response length: 29.2 (base) -> 25.2 (grpo) / 24.2 (dr_grpo) characters: it does NOT grow; RL
  picked the right operands inside the worked form the base already used, and pruned the ill-formed tails.
What did not work: the prompt "Q: what is a + b?\nA:" (Q, A, ? never in the text; base pass@8 0.02-0.07,
  nothing to learn from); a 2-layer base of 1500 steps (pass@8 <= 0.08); reading questions in the text
  (the model answers "what is ..." with a thing); std-scaled grpo with format weight 0.1 at lr 1e-3 or with
  beta 0.04 (format differences dominate the scaled advantages of all-wrong groups: collapse to " 9." or
  stuck at 0.08); dr_grpo with std scaling at lr 1e-3 (collapse). Correctness alone (format weight 0, grpo,
  lr 2e-4): greedy 0.06 -> 0.99 in 60 steps.
"""

import argparse
import json
import os
import re
import sys
import time

import nanofrontier as nf
import numpy as np

NAMES = ["ann", "bob", "cara", "dan", "eve", "finn", "gus", "hana", "ivy", "joe"]
FILLER = ["on the board", "in a book", "at school", "today", "and then", "on a card", "with a pen", "later",
          "in the morning", "for fun", "again", "at home"]
THINGS = ["coins", "apples", "stamps", "shells", "cards", "beads"]


# ---------------------------------------------------------------------------------------------- the domain


def columns(a, b):
    """The column addition of a + b as a sentence part: "7+5=12, 4+8+1=13, 3+2+1=6" (least significant first,
    the carry shown as "+1")."""
    da, db = str(a)[::-1], str(b)[::-1]
    parts, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        parts.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = s // 10
    return ", ".join(parts)


def prose(rng, a, b, qa=False):
    """One line of the pretraining text about a + b (never in the prompt's format). With ``qa``, a story
    line may be followed by a reading question in the "Q: ...?\nA: ..." layout, about who or what, never
    about a sum: the layout is known from text, the sums only from prose."""
    c = a + b
    k = rng.integers(6)
    name, thing = NAMES[rng.integers(len(NAMES))], THINGS[rng.integers(len(THINGS))]
    if k == 0:
        line = f"{name} had {a} {thing} and found {b} more, so {name} had {c} {thing}."
        if qa and rng.random() < 0.5:
            q = (f"Q: who had {a} {thing}?\nA: {name}." if rng.random() < 0.5
                 else f"Q: what did {name} find?\nA: {thing}.")
            line += "\n" + q
        return line
    if k == 1:
        return f"{a} and {b} make {c}."
    if k == 2:
        return f"the sum of {a} and {b} is {c}."
    # worked lines: the column addition written out (half the text), in varied sentences
    # (the words between the problem and its columns vary, so the model learns to find the operands)
    cols, w = columns(a, b), rng.integers(6)
    if w == 5:
        filler = " ".join(FILLER[i] for i in rng.integers(0, len(FILLER), rng.integers(1, 5)))
        return f"{name} saw {a} + {b} {filler}, and wrote {cols}, so {c}."
    if w == 0:
        return f"to add {a} + {b}: {cols}, so {c}."
    if w == 1:
        return f"{name} added {a} + {b} in columns: {cols}, so {c}."
    if w == 2:
        return f"for {a} + {b} we write {cols}, so {c}."
    if w == 3:
        return f"the teacher wrote {a} + {b} on the board and then {cols}, so {c}."
    return f"adding {a} + {b} goes {cols}, so {c}."


PROMPT = "question: {a} + {b}. answer:"


def prompt_text(a, b):
    return PROMPT.format(a=a, b=b)


def split_pairs(n_digits, seed):
    """All (a, b) with n_digits-digit operands, split by a seeded permutation into train / test (10%)."""
    lo, hi = 10 ** (n_digits - 1), 10**n_digits
    pairs = [(a, b) for a in range(lo, hi) for b in range(lo, hi)]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))
    n_test = len(pairs) // 10
    test = [pairs[i] for i in order[:n_test]]
    train = [pairs[i] for i in order[n_test:]]
    return train, test


ANSWER = re.compile(r"^ ?[a-z0-9 +=,:]*?(\d+)\.$")


def parse(completion):
    """The final answer of a well-formed completion (one sentence ending "<number>."), else None."""
    m = ANSWER.match(completion.strip("\n")) if len(completion) < 200 else None
    return None if m is None else int(m.group(1))


def correct(completion, answer):
    return float(parse(completion) == answer)


correct.is_correctness_rule = True


def well_formed(completion):
    return float(parse(completion) is not None)


# ---------------------------------------------------------------------------------------------- phases


def pretrain(model, data, steps, batch, block, lr, seed, log):
    opt = nf.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = nf.optim.warmup_cosine(step, max_lr=lr, warmup_steps=min(50, steps // 10 + 1),
                                             total_steps=steps, min_lr=lr / 10)
        ix = rng.integers(0, len(data) - block - 1, batch)
        x = np.stack([data[i:i + block] for i in ix])
        y = np.stack([data[i + 1:i + block + 1] for i in ix])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        nf.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step % max(1, steps // 10) == 0 or step == steps - 1):
            print(f"  pretrain step {step:4d}  loss {np.mean(losses[-20:]):.3f}  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    return float(np.mean(losses[-20:]))


def evaluate(model, tok, problems, k, max_new, seed, stop):
    """Held-out: greedy accuracy, sampled pass@1 (mean over k samples) and pass@k, well-formed share,
    mean response length (sampled), share of worked answers (ones that show a column "=")."""
    prompts = [tok.encode(prompt_text(a, b)) for a, b in problems]
    answers = [a + b for a, b in problems]
    greedy = model.generate_batch(prompts, max_new_tokens=max_new, temperature=0.0, stop_tokens=[stop])
    g_text = [tok.decode(greedy.tokens[r, :greedy.lengths[r]]).rstrip("\n") for r in range(len(prompts))]
    g_ok = np.array([correct(c, a) for c, a in zip(g_text, answers)])
    ro = nf.rl.rollout(model, prompts, num_completions=k, max_new_tokens=max_new, seed=seed,
                       stop_tokens=[stop])
    s_text = [tok.decode(c).rstrip("\n") for c in ro.completions]
    s_ok = np.array([correct(c, answers[i]) for c, i in zip(s_text, ro.prompt_index)]).reshape(-1, k)
    return {
        "greedy_acc": float(g_ok.mean()),
        "pass@1": float(s_ok.mean()),
        f"pass@{k}": float((s_ok.max(1) > 0).mean()),
        "groups_with_signal": float(((s_ok.max(1) > 0) & (s_ok.min(1) == 0)).mean()),
        "well_formed": float(np.mean([well_formed(c) for c in s_text])),
        "mean_len": float(np.mean(ro.lengths)),
        "greedy_mean_len": float(np.mean(greedy.lengths)),
        "worked_share": float(np.mean(["=" in c for c in s_text])),
        "greedy_worked_share": float(np.mean(["=" in c for c in g_text])),
        "samples": [f"{prompt_text(*problems[i])!r} -> {g_text[i]!r}" for i in range(4)],
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--corpus-lines", type=int, default=20000)
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--n-embd", type=int, default=96)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block", type=int, default=96)
    p.add_argument("--pretrain-steps", type=int, default=2500)
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--grpo-steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--G", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=16)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--format-weight", type=float, default=0.1)
    p.add_argument("--loss-types", default="grpo,dr_grpo")
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--eval-k", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--dr-scaled", action="store_true",
                   help="dr_grpo runs keep the group-std scaling (default: dropped, Dr. GRPO's full recipe)")
    p.add_argument("--qa", action="store_true", help="reading questions (who/what, never sums) in the text")
    p.add_argument("--prompt", default=PROMPT, help="the RL prompt, with {a} and {b} (\\n for newline)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-base", default=None, help="write the base model here (safetensors)")
    p.add_argument("--load-base", default=None, help="skip pretraining: load this base model")
    return p.parse_args()


def main():
    global PROMPT
    args = parse_args()
    PROMPT = args.prompt.replace("\\n", "\n")
    nf.manual_seed(args.seed)
    timings = {}
    train_pairs, test_pairs = split_pairs(args.digits, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    picks = rng.integers(0, len(train_pairs), args.corpus_lines)
    lines = [prose(rng, *train_pairs[i], qa=args.qa) for i in picks]
    text = "\n".join(lines) + "\n"
    # a fixed alphabet, so one base model serves every prompt format tried
    tok = nf.tokenizer.CharTokenizer(text + "QA:?=+\n0123456789abcdefghijklmnopqrstuvwxyz .,")
    stop = tok.stoi["\n"]
    data = np.array(tok.encode(text), np.int64)
    # no line of the text puts a sum after a question (the format GRPO rewards is never demonstrated)
    assert not re.search(r"Q: what is \d", text) and not re.search(r"\?\nA: \d", text)
    print(f"corpus: {len(lines)} lines, {len(data)} chars, vocab {tok.vocab_size}; e.g. {lines[:4]}",
          flush=True)

    model = nf.models.GPT(vocab_size=tok.vocab_size, block_size=args.block, n_layer=args.n_layer,
                          n_head=args.n_head, n_embd=args.n_embd, dropout=0.0)
    n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
    t0 = time.perf_counter()
    if args.load_base:
        nf.checkpoint.load(args.load_base, model)
        final_loss = None
    else:
        final_loss = pretrain(model, data, args.pretrain_steps, args.pretrain_batch, args.block,
                              args.pretrain_lr, args.seed, True)
        if args.save_base:
            nf.checkpoint.save(args.save_base, model)
    timings["pretrain_s"] = time.perf_counter() - t0

    eval_set = test_pairs[: args.eval_n]
    t0 = time.perf_counter()
    base = evaluate(model, tok, eval_set, args.eval_k, args.max_new, 123, stop)
    timings["eval_s"] = time.perf_counter() - t0
    print("base:", json.dumps(base), flush=True)

    train_prompts = [{"prompt": tok.encode(prompt_text(a, b)), "answer": a + b} for a, b in train_pairs]
    runs = {}
    for loss_type in args.loss_types.split(",") if args.grpo_steps else []:
        policy = model.copy()
        opt = nf.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
        curve = []

        def cb(trainer, row, policy=policy, curve=curve, loss_type=loss_type):
            s = trainer.step
            if s % args.eval_every == 0 or s == args.grpo_steps:
                e = evaluate(policy, tok, eval_set, args.eval_k, args.max_new, 123, stop)
                curve.append({"step": s, "greedy_acc": e["greedy_acc"], "pass@1": e["pass@1"],
                              "mean_len": e["mean_len"], "worked_share": e["worked_share"]})
                print(f"  [{loss_type}] step {s}: train reward {row['reward_mean']:.3f} acc "
                      f"{row.get('accuracy', 0):.3f} len {row['completion_length']:.1f} | held-out greedy "
                      f"{e['greedy_acc']:.3f} pass@1 {e['pass@1']:.3f} len {e['mean_len']:.1f} worked "
                      f"{e['worked_share']:.2f}", flush=True)
            return False

        trainer = nf.rl.GRPOTrainer(
            policy, opt, train_prompts, [correct, well_formed], reward_weights=[1.0, args.format_weight],
            decode=tok.decode, num_generations=args.G, prompts_per_step=args.prompts_per_step,
            max_new_tokens=args.max_new, stop_tokens=[stop], beta=args.beta, loss_type=loss_type,
            scale_rewards="none" if loss_type == "dr_grpo" and not args.dr_scaled else "group",
            max_steps=args.grpo_steps, seed=args.seed, progress=False, callbacks=[cb], diagnostics=False)
        t0 = time.perf_counter()
        hist = trainer.train()
        secs = time.perf_counter() - t0
        rows = list(hist)
        t1 = time.perf_counter()
        after = evaluate(policy, tok, eval_set, args.eval_k, args.max_new, 123, stop)
        runs[loss_type] = {
            "grpo_s": secs, "final_eval_s": time.perf_counter() - t1, "after": after, "curve": curve,
            "train_reward": [round(r["reward_mean"], 3) for r in rows],
            "train_len": [round(r["completion_length"], 1) for r in rows],
            "zero_std_fraction": [round(r["zero_std_fraction"], 2) for r in rows],
        }
        print(f"after {loss_type} ({secs:.0f}s):", json.dumps(after), flush=True)

    summary = {"args": vars(args), "n_params": n_params, "pretrain_final_loss": final_loss,
               "timings": timings, "base": base, "runs": runs, "uptime": os.popen("uptime").read().strip()}
    print("SUMMARY", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
