"""One GRPO step and one GRPO rollout on the tiny GPT: nanofrontier vs the same work in plain PyTorch (eager,
float32), same weights, same batch, same threads, each side in its own processes, alternating.

    python benchmarks/bench_grpo.py --torch-python /path/to/torch-env/bin/python
    python benchmarks/bench_grpo.py --rounds 7 --steps 30 --threads 2 --no-torch

The step: 2 prompts x 8 completions = 16 rows of 64 tokens (a 16-token prompt, then up to 48 completion
tokens, right-padded), given the old policy's and the reference's log-probs and the group advantages
(computed once beforehand): the policy's token log-probs in one forward call, `nf.rl.grpo_loss`
(loss_type "dapo", ε = 0.2, β = 0.04 k3 KL), backward, AdamW. Reported per phase (forward, loss, backward,
optimizer). Both sides print their first-step loss and the loss after every step's update (the same batch
each step), which must agree to ~1e-4.

The rollout, reported separately: the 16 completions sampled at temperature 1, 48 new tokens after the
16-token prompt, with a KV cache, each new token's log-prob returned as rollouts need it — nanofrontier's
`model.generate_batch` vs a hand-written PyTorch loop over a preallocated cache. Each side also decodes
greedily once (untimed) and the tokens are compared.

Timings: each process's median over --steps steps (rollouts) after --warmup, then the median over --rounds
processes per side. torch is never a dependency: see bench_dpo.py for a scratch environment.
"""

import os
import sys
import tempfile

import numpy as np
import rl_common as rc

N_PROMPTS, GROUP, PROMPT, NEW = 2, 8, 16, 48
B, T = N_PROMPTS * GROUP, PROMPT + NEW
BETA, EPS = 0.04, 0.2
LR, WD = 1e-4, 0.01
PHASES = ["forward", "loss", "backward", "optimizer"]


def prepare(path):
    """Weights (policy seed 0, reference seed 1), the batch, old/reference log-probs, advantages."""
    import nanofrontier as nf

    nf.manual_seed(0)
    policy = nf.models.GPT(nf.models.GPTConfig.tiny())
    nf.manual_seed(1)
    ref = nf.models.GPT(nf.models.GPTConfig.tiny())
    rng = np.random.default_rng(0)
    ids = np.zeros((B, T), np.int64)
    comp = np.zeros((B, T), bool)
    for g in range(N_PROMPTS):
        prompt = rng.integers(0, 65, PROMPT)
        for j in range(GROUP):
            row = g * GROUP + j
            n = NEW if j == 0 else int(rng.integers(8, NEW + 1))  # completions that stopped early
            ids[row, :PROMPT], ids[row, PROMPT:PROMPT + n] = prompt, rng.integers(0, 65, n)
            comp[row, PROMPT:PROMPT + n] = True
    tgt = np.full_like(ids, -100)
    tgt[:, :-1] = np.where(comp[:, 1:], ids[:, 1:], -100)
    mask = comp[:, 1:]  # (B, T-1): column j scores ids[:, j + 1]
    # old log-probs: the policy's own, perturbed as if sampled a few updates ago (so some ratios clip)
    old = policy.token_logprobs(ids, tgt).numpy()[:, :-1]
    old = np.where(mask, old + 0.15 * rng.standard_normal(old.shape), 0.0).astype(np.float32)
    ref_lp = ref.token_logprobs(ids, tgt).numpy()[:, :-1]
    rewards = rng.standard_normal(B).astype(np.float32)
    adv = nf.rl.grpo_advantages(rewards, GROUP).numpy()
    state = {"w/" + k: v for k, v in policy.state_dict().items()}
    np.savez(path, ids=ids, tgt=tgt, mask=mask, old=old, ref=ref_lp, adv=adv, **state)


def read(path):
    d = np.load(path)
    state = {k[2:]: d[k] for k in d.files if k.startswith("w/")}
    return state, {k: d[k] for k in ("ids", "tgt", "mask", "old", "ref", "adv")}


def prompts_of(ids):
    return np.ascontiguousarray(ids[:, :PROMPT])  # each group's prompt, 8 times


# ---- nanofrontier ----


def nf_step(args):
    import nanofrontier as nf

    nf.set_num_threads(args.threads)
    state, d = read(args.data)
    model = nf.models.GPT(nf.models.GPTConfig.tiny())
    model.load_state_dict(state)
    opt = nf.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    t, losses = rc.PhaseTimer(), []
    for _ in range(args.warmup + args.steps):
        t.start()
        logp = model.token_logprobs(d["ids"], d["tgt"])[:, :-1]  # (B, T-1)
        t.lap("forward")
        loss, _ = nf.rl.grpo_loss(logp, d["old"], d["adv"], d["mask"], ref_logps=d["ref"], beta=BETA,
                                  eps_low=EPS, loss_type="dapo")
        t.lap("loss")
        loss.backward()
        t.lap("backward")
        opt.step()
        opt.zero_grad()
        t.lap("optimizer")
        losses.append(loss.item())
    return {"phases": t.medians_ms(args.warmup), "losses": losses}


def nf_rollout(args):
    import nanofrontier as nf

    nf.set_num_threads(args.threads)
    state, d = read(args.data)
    model = nf.models.GPT(nf.models.GPTConfig.tiny()).eval()
    model.load_state_dict(state)
    prompts = prompts_of(d["ids"])
    greedy = model.generate_batch(prompts, NEW, temperature=0.0).tokens
    t = rc.PhaseTimer()
    for i in range(args.warmup + args.steps):
        t.start()
        g = model.generate_batch(prompts, NEW, temperature=1.0, seed=i)
        t.lap("rollout")
        assert g.tokens.shape == (B, NEW)
    return {"phases": t.medians_ms(args.warmup), "greedy": greedy.tolist()}


# ---- PyTorch ----


def torch_step(args):
    import torch

    torch.set_num_threads(args.threads)
    state, d = read(args.data)
    w, logits = rc.torch_gpt(torch, state, rc.TINY)
    opt = torch.optim.AdamW(w.values(), lr=LR, weight_decay=WD)
    ids, tgt, old, ref, adv = (torch.from_numpy(d[k]) for k in ("ids", "tgt", "old", "ref", "adv"))
    mask = torch.from_numpy(d["mask"]).float()
    a = adv[:, None]
    t, losses = rc.PhaseTimer(), []
    for _ in range(args.warmup + args.steps):
        t.start()
        logp = rc.torch_token_logprobs(torch, logits, ids, tgt)[:, :-1]
        t.lap("forward")
        ratio = torch.exp(logp - old)
        per = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - EPS, 1 + EPS) * a)
        x = ref - logp
        per = per + BETA * (torch.exp(x) - x - 1)  # k3 KL to the reference
        loss = (per * mask).sum() / mask.sum()  # dapo: token mean over the batch
        t.lap("loss")
        loss.backward()
        t.lap("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.lap("optimizer")
        losses.append(loss.item())
    return {"phases": t.medians_ms(args.warmup), "losses": losses}


def torch_generate(torch, logits, prompts, n_new, greedy, gen=None):
    """Batched sampling with a preallocated KV cache; returns (tokens (B, n_new), their log-probs)."""
    F = torch.nn.functional
    cfg = rc.TINY
    b, h, hd = prompts.shape[0], cfg["n_head"], cfg["n_embd"] // cfg["n_head"]
    t_max = prompts.shape[1] + n_new
    cache = [(torch.empty(b, h, t_max, hd), torch.empty(b, h, t_max, hd)) for _ in range(cfg["n_layer"])]
    toks, lps = torch.empty(b, n_new, dtype=torch.int64), torch.empty(b, n_new)
    with torch.no_grad():
        lg, pos = logits(prompts, cache, 0)[:, -1], prompts.shape[1]
        for s in range(n_new):
            logp = F.log_softmax(lg, -1)
            tok = lg.argmax(-1, keepdim=True) if greedy else torch.multinomial(logp.exp(), 1, generator=gen)
            toks[:, s:s + 1], lps[:, s:s + 1] = tok, logp.gather(1, tok)
            if s + 1 < n_new:
                lg = logits(tok, cache, pos)[:, -1]
                pos += 1
    return toks, lps


def torch_rollout(args):
    import torch

    torch.set_num_threads(args.threads)
    state, d = read(args.data)
    _, logits = rc.torch_gpt(torch, state, rc.TINY, requires_grad=False)
    prompts = torch.from_numpy(prompts_of(d["ids"]))
    greedy, _ = torch_generate(torch, logits, prompts, NEW, greedy=True)
    gen = torch.Generator().manual_seed(0)
    t = rc.PhaseTimer()
    for _ in range(args.warmup + args.steps):
        t.start()
        torch_generate(torch, logits, prompts, NEW, greedy=False, gen=gen)
        t.lap("rollout")
    return {"phases": t.medians_ms(args.warmup), "greedy": greedy.tolist()}


def main():
    args = rc.parser(__doc__).parse_args()
    if args.side == "prepare":
        return rc.emit(prepare(args.data) or {})
    if args.side:
        fn = {("nf", "step"): nf_step, ("nf", "rollout"): nf_rollout, ("torch", "step"): torch_step,
              ("torch", "rollout"): torch_rollout}[args.side, args.part]
        return rc.emit(fn(args))
    tpy = rc.torch_python(args)
    rc.header(f"GRPO on the tiny GPT, {N_PROMPTS} prompts x {GROUP} completions x {T} tokens, {args.threads} "
              f"threads, {args.rounds} processes per side and part (alternating), median of {args.steps} "
              f"steps each after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "grpo.npz")
        rc.run_child(__file__, sys.executable, args, "prepare", "step", data)
        step = rc.alternate(__file__, args, "step", data, tpy)
        print(f"after the steps: {rc.load()}")
        roll = rc.alternate(__file__, args, "rollout", data, tpy)
        print(f"after the rollouts: {rc.load()}")
    print("\noptimisation step (dapo loss, β = 0.04, AdamW):")
    rc.phase_table(*step, PHASES)
    rc.loss_check(*step)
    ours, theirs = roll
    print(f"\nrollout ({B} completions x {NEW} new tokens after a {PROMPT}-token prompt, temperature 1, "
          "KV cache):")
    a = rc.median_of([r["phases"] for r in ours], "rollout")
    print("\n| rollout | nanofrontier | torch | torch / nf |")
    print("|---|---:|---:|---:|")
    if theirs:
        b = rc.median_of([r["phases"] for r in theirs], "rollout")
        print(f"| ms | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        print(f"| new tokens/s | {B * NEW / a * 1e3:,.0f} | {B * NEW / b * 1e3:,.0f} | {b / a:.2f} |")
        rc.spread(ours, theirs, "rollout")
        g1, g2 = np.array(ours[0]["greedy"]), np.array(theirs[0]["greedy"])
        rows = int((g1 == g2).all(1).sum())
        print(f"\ngreedy decode: {np.mean(g1 == g2):.1%} of the tokens agree, {rows}/{B} rows identical")
    else:
        print(f"| ms | {a:.2f} | — | — |")
        print(f"| new tokens/s | {B * NEW / a * 1e3:,.0f} | — | — |")
        rc.spread(ours, theirs, "rollout")


if __name__ == "__main__":
    main()
