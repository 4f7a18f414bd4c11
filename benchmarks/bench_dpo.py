"""One DPO step on the tiny GPT: nanofrontier vs the same step in plain PyTorch (eager, float32), same
weights, same batch, same threads, each side in its own processes, alternating.

    python benchmarks/bench_dpo.py --torch-python /path/to/torch-env/bin/python
    python benchmarks/bench_dpo.py --rounds 7 --steps 30 --threads 2 --no-torch

The step: 8 preference pairs of 64 tokens (prompt + completion, right-padded; the completion tokens are the
ones scored), chosen and rejected in ONE batch of 16 through the policy's token log-probs, masked sums per
row, the sigmoid DPO loss (β = 0.1) against reference log-probs computed once beforehand (by another model),
backward, AdamW. Reported: median ms per step and per phase (forward, loss, backward, optimizer) — each
process's median over --steps steps after --warmup, then the median over --rounds processes per side — and
torch / nanofrontier. Both sides print their first-step loss and their loss after every step's update (the
same batch each step), which must agree to ~1e-4. torch is never a dependency of the project: install it
in a scratch environment (`python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy`) and
pass its python; its children import only torch and numpy.
"""

import os
import sys
import tempfile

import numpy as np
import rl_common as rc

B_PAIRS, T, BETA = 8, 64, 0.1
LR, WD = 1e-4, 0.01
PHASES = ["forward", "loss", "backward", "optimizer"]


def prepare(path):
    """Weights (policy from seed 0), the batch, and the reference log-probs (a second model, seed 1)."""
    import nanofrontier as nf

    nf.manual_seed(0)
    policy = nf.models.GPT(nf.models.GPTConfig.tiny())
    nf.manual_seed(1)
    ref = nf.models.GPT(nf.models.GPTConfig.tiny())
    rng = np.random.default_rng(0)
    ids = np.zeros((2 * B_PAIRS, T), np.int64)
    comp = np.zeros((2 * B_PAIRS, T), bool)
    for i in range(B_PAIRS):
        p = int(rng.integers(8, 25))
        prompt = rng.integers(0, 65, p)
        for row in (i, i + B_PAIRS):  # chosen rows 0..7, rejected rows 8..15, same prompt
            n = T - p if (i == 0 and row == i) else int(rng.integers(8, T - p + 1))
            ids[row, :p], ids[row, p:p + n] = prompt, rng.integers(0, 65, n)
            comp[row, p:p + n] = True
    # targets: column j scores ids[:, j + 1] where it is a completion token; -100 elsewhere
    tgt = np.full_like(ids, -100)
    tgt[:, :-1] = np.where(comp[:, 1:], ids[:, 1:], -100)
    ref_lp = ref.token_logprobs(ids, tgt).sum(1).numpy()
    state = {"w/" + k: v for k, v in policy.state_dict().items()}
    np.savez(path, ids=ids, tgt=tgt, ref_c=ref_lp[:B_PAIRS], ref_r=ref_lp[B_PAIRS:], **state)


def read(path):
    d = np.load(path)
    state = {k[2:]: d[k] for k in d.files if k.startswith("w/")}
    return state, d["ids"], d["tgt"], d["ref_c"], d["ref_r"]


def run_nf(args):
    import nanofrontier as nf

    nf.set_num_threads(args.threads)
    state, ids, tgt, ref_c, ref_r = read(args.data)
    model = nf.models.GPT(nf.models.GPTConfig.tiny())
    model.load_state_dict(state)
    opt = nf.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    t, losses = rc.PhaseTimer(), []
    for _ in range(args.warmup + args.steps):
        t.start()
        logp = model.token_logprobs(ids, tgt)  # (16, 64), 0 where the target is masked
        t.lap("forward")
        s = logp.sum(1)
        loss, _ = nf.rl.dpo_loss(s[:B_PAIRS], s[B_PAIRS:], ref_c, ref_r, beta=BETA)
        t.lap("loss")
        loss.backward()
        t.lap("backward")
        opt.step()
        opt.zero_grad()
        t.lap("optimizer")
        losses.append(loss.item())
    return {"phases": t.medians_ms(args.warmup), "losses": losses}


def run_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    F = torch.nn.functional
    state, ids, tgt, ref_c, ref_r = read(args.data)
    w, logits = rc.torch_gpt(torch, state, rc.TINY)
    opt = torch.optim.AdamW(w.values(), lr=LR, weight_decay=WD)
    ids, tgt, ref_c, ref_r = (torch.from_numpy(a) for a in (ids, tgt, ref_c, ref_r))
    t, losses = rc.PhaseTimer(), []
    for _ in range(args.warmup + args.steps):
        t.start()
        logp = rc.torch_token_logprobs(torch, logits, ids, tgt)
        t.lap("forward")
        s = logp.sum(1)
        u = (s[:B_PAIRS] - ref_c) - (s[B_PAIRS:] - ref_r)
        loss = -F.logsigmoid(BETA * u).mean()
        t.lap("loss")
        loss.backward()
        t.lap("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        t.lap("optimizer")
        losses.append(loss.item())
    return {"phases": t.medians_ms(args.warmup), "losses": losses}


def main():
    args = rc.parser(__doc__).parse_args()
    if args.side == "prepare":
        return rc.emit(prepare(args.data) or {})
    if args.side:
        return rc.emit(run_nf(args) if args.side == "nf" else run_torch(args))
    tpy = rc.torch_python(args)
    rc.header(f"DPO step, tiny GPT, {B_PAIRS} pairs x {T} tokens (one batch of {2 * B_PAIRS}), AdamW, "
              f"{args.threads} threads, {args.rounds} processes per side (alternating), median of "
              f"{args.steps} steps each after {args.warmup} warm-up")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "dpo.npz")
        rc.run_child(__file__, sys.executable, args, "prepare", "step", data)
        ours, theirs = rc.alternate(__file__, args, "step", data, tpy)
    print(f"after: {rc.load()}")
    rc.phase_table(ours, theirs, PHASES)
    rc.loss_check(ours, theirs)


if __name__ == "__main__":
    main()
