"""What bench_dpo.py and bench_grpo.py share: running each side in its own processes, alternating; timing a
step phase by phase; the PyTorch GPT (GPT-2 architecture, functional, reading our weights) and its token
log-probs; the report.

How a benchmark runs: the parent process imports neither library. A first child (nanofrontier) writes the
weights and the batch into an .npz file; then the children "nf" and "torch" alternate, each one process,
each reading that file, timing its step and printing one JSON line. torch may live in another environment
(`--torch-python`): its children import only torch and numpy.
"""

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

# nf.models.GPTConfig.tiny()
TINY = {"vocab_size": 65, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128}


def parser(doc):
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="timed steps (rollouts) per process")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="processes per side (alternating)")
    p.add_argument("--torch-python", default=os.environ.get("NF_BENCH_TORCH_PYTHON"),
                   help="the python of an environment with torch (default: $NF_BENCH_TORCH_PYTHON, else this "
                        "python if it has torch)")
    p.add_argument("--no-torch", action="store_true", help="nanofrontier's side only")
    # internal: one measurement per child process
    p.add_argument("--side", choices=["prepare", "nf", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--part", default="step", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    return p


def torch_python(args):
    """The interpreter for torch's children, or None (then only nanofrontier's side runs)."""
    if args.no_torch:
        return None
    if args.torch_python:
        return args.torch_python
    if importlib.util.find_spec("torch") is not None:  # found without importing it
        return sys.executable
    print("(torch not found: pass --torch-python or set NF_BENCH_TORCH_PYTHON; nanofrontier only)")
    return None


def load():
    return "load average {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


class PhaseTimer:
    """Per-phase wall times of repeated steps: `t.start()`, then `t.lap("forward")` after each phase."""

    def __init__(self):
        self.laps, self._t = {}, 0.0

    def start(self):
        self._t = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.laps.setdefault(name, []).append(now - self._t)
        self._t = now

    def medians_ms(self, skip):
        """Median ms per phase over the steps after the first ``skip`` (warm-up), and of their total."""
        out = {k: 1e3 * statistics.median(v[skip:]) for k, v in self.laps.items()}
        n = len(next(iter(self.laps.values())))
        totals = [sum(v[i] for v in self.laps.values()) for i in range(skip, n)]
        out["total"] = 1e3 * statistics.median(totals)
        return out


def run_child(script, python, args, side, part, data):
    cmd = [python, script, "--side", side, "--part", part, "--data", data, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"child failed: {shlex.join(cmd)}\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def alternate(script, args, part, data, tpy):
    """``args.rounds`` processes per side, nf and torch taking turns; returns (nf results, torch results)."""
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(run_child(script, sys.executable, args, "nf", part, data))
        if tpy:
            theirs.append(run_child(script, tpy, args, "torch", part, data))
    return ours, theirs


def median_of(results, key):
    return statistics.median(r[key] for r in results)


def header(title):
    print(f"\n{title}")
    print(f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"before: {load()}")


def phase_table(ours, theirs, phases):
    """Markdown: median ms per phase (median over processes of each process's median), and torch / nf."""
    print("\n| phase | nanofrontier ms | torch ms | torch / nf |")
    print("|---|---:|---:|---:|")
    for ph in [*phases, "total"]:
        a = statistics.median(r["phases"][ph] for r in ours)
        if theirs:
            b = statistics.median(r["phases"][ph] for r in theirs)
            print(f"| {ph} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        else:
            print(f"| {ph} | {a:.2f} | — | — |")
    spread(ours, theirs, "total")


def spread(ours, theirs, key):
    """Each process's median, so the machine's noise shows beside the medians."""
    for name, rs in (("nanofrontier", ours), ("torch", theirs)):
        if rs:
            print(f"{name} {key} ms per process: " + ", ".join(f"{r['phases'][key]:.1f}" for r in rs))


def loss_check(ours, theirs):
    """Both sides' first-step and last-step losses (the same batch every step, so the whole trajectory is
    deterministic: the last one also checks the gradients and AdamW)."""
    a = ours[0]["losses"]
    print(f"\nfirst-step loss: nanofrontier {a[0]:.7f}", end="")
    if not theirs:
        print()
        return
    b = theirs[0]["losses"]
    print(f", torch {b[0]:.7f}, |difference| {abs(a[0] - b[0]):.2e}")
    print(f"loss after {len(a) - 1} AdamW steps: nanofrontier {a[-1]:.7f}, torch {b[-1]:.7f}, "
          f"|difference| {abs(a[-1] - b[-1]):.2e}")


# ---- the PyTorch side (imported only in torch's children) ----


def torch_gpt(torch, state, cfg, requires_grad=True):
    """GPT-2 (pre-norm blocks, tanh GELU, tied head) as a function of a dict of leaf tensors holding our
    weights (nanofrontier's names, linear weights (out, in) as F.linear takes them)."""
    F = torch.nn.functional
    w = {k: torch.tensor(v).requires_grad_(requires_grad) for k, v in state.items()}
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]

    def ln(x, p):
        return F.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"], 1e-5)

    def lin(x, p):
        return F.linear(x, w[p + ".weight"], w[p + ".bias"])

    def block(x, i, cache=None, pos=0):
        """One block; with ``cache`` (per-layer preallocated (B, H, T_max, D) keys and values) the new
        keys/values are written at ``pos`` and the queries attend to everything cached so far."""
        p = f"h.{i}."
        b, t, _ = x.shape
        q, k, v = lin(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (z.view(b, t, H, C // H).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            ck, cv = cache[i]
            ck[:, :, pos:pos + t], cv[:, :, pos:pos + t] = k, v
            k, v = ck[:, :, :pos + t], cv[:, :, :pos + t]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + lin(y.transpose(1, 2).reshape(b, t, C), p + "attn.c_proj")
        return x + lin(F.gelu(lin(ln(x, p + "ln_2"), p + "mlp.c_fc"), approximate="tanh"), p + "mlp.c_proj")

    def logits(idx, cache=None, pos=0):
        x = w["wte.weight"][idx] + w["wpe.weight"][pos:pos + idx.shape[1]]
        for i in range(L):
            x = block(x, i, cache, pos)
        return ln(x, "ln_f") @ w["wte.weight"].T

    return w, logits


def torch_token_logprobs(torch, logits_fn, idx, targets):
    """log p(targets[b, t] | idx[b, :t+1]), 0 where the target is -100: what `model.token_logprobs` gives."""
    lg = logits_fn(idx)
    b, t, v = lg.shape
    nll = torch.nn.functional.cross_entropy(lg.reshape(b * t, v), targets.reshape(-1), ignore_index=-100,
                                            reduction="none")
    return -nll.view(b, t)


def emit(obj):
    print(json.dumps(obj))
