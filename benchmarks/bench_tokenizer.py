"""Byte-level BPE on tiny Shakespeare: nanofrontier's BPETokenizer vs Hugging Face `tokenizers`, side by side.

    python benchmarks/bench_tokenizer.py                  # vocab 1024, 2 threads, 5 processes per side
    python benchmarks/bench_tokenizer.py --vocab 4096 --rounds 3 --threads 1

Both sides train a byte-level BPE with GPT-2's pre-tokenization on the same text (the whole of tiny
Shakespeare, found through `nanofrontier.data`) to the same vocabulary size, then encode it. We report
- train: seconds to learn the merges (median of --repeat trainings in a process),
- encode: MB/s encoding the whole text as one string, and as a batch of its ~40k lines (`encode_batch`,
  parallel over texts on both sides),
- compression: bytes of UTF-8 per token on the whole text (higher = fewer tokens).
Every measurement runs in its own subprocess and the sides alternate over --rounds processes each; the table
shows the median over processes. The `tokenizers` side (ByteLevel pre-tokenizer and decoder, `BpeTrainer`
with the 256-byte initial alphabet) is only run when that package is installed: it is never a dependency.
Both sides check that decoding gives the text back. Threads: `nf.set_num_threads` and `RAYON_NUM_THREADS`.
The machine may be shared: the load average (`uptime`) is printed before and after.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="processes per side")
    p.add_argument("--repeat", type=int, default=3, help="trainings/encodings timed inside each process")
    p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face side")
    p.add_argument("--side", choices=["nf", "hf"], help=argparse.SUPPRESS)  # internal: one side per process
    p.add_argument("--path", help=argparse.SUPPRESS)
    return p.parse_args()


def timed(f, repeat):
    """(median seconds, last result) over `repeat` calls."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def side_nf(text, lines, args):
    import nanofrontier as nf
    from nanofrontier.tokenizer import BPETokenizer

    nf.set_num_threads(args.threads)
    train_s, tok = timed(lambda: BPETokenizer(text, args.vocab), args.repeat)
    assert tok.vocab_size == args.vocab, tok.vocab_size
    enc_s, ids = timed(lambda: tok.encode(text), args.repeat)
    batch_s, _ = timed(lambda: tok.encode_batch(lines), args.repeat)
    assert tok.decode(ids) == text, "nanofrontier: decode(encode(text)) != text"
    return {"train_s": train_s, "encode_s": enc_s, "batch_s": batch_s, "tokens": len(ids)}


def side_hf(text, lines, args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def train():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab,
            min_frequency=0,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        tok.train_from_iterator([text], trainer=trainer)
        return tok

    train_s, tok = timed(train, args.repeat)
    assert tok.get_vocab_size() == args.vocab, tok.get_vocab_size()
    enc_s, enc = timed(lambda: tok.encode(text), args.repeat)
    batch_s, _ = timed(lambda: tok.encode_batch(lines), args.repeat)
    assert tok.decode(enc.ids) == text, "tokenizers: decode(encode(text)) != text"
    return {"train_s": train_s, "encode_s": enc_s, "batch_s": batch_s, "tokens": len(enc.ids)}


def run_side(side, path, args):
    cmd = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--path",
        path,
        "--vocab",
        str(args.vocab),
        "--threads",
        str(args.threads),
        "--repeat",
        str(args.repeat),
    ]
    env = dict(
        os.environ,
        RAYON_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="true",
        NANOFRONTIER_NUM_THREADS=str(args.threads),
    )
    out = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{side} side failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def uptime():
    try:
        return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "uptime: unavailable"


def main():
    args = parse()
    if args.side:
        with open(args.path, encoding="utf-8", newline="") as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        result = (side_nf if args.side == "nf" else side_hf)(text, lines, args)
        result["mb"] = len(text.encode()) / 1e6
        print(json.dumps(result))
        return

    import nanofrontier as nf

    path = str(nf.data.get_file("tinyshakespeare.txt"))
    sides = ["nf"]
    if not args.no_hf and importlib.util.find_spec("tokenizers") is not None:
        sides.append("hf")
    elif not args.no_hf:
        print("(Hugging Face `tokenizers` is not installed: only nanofrontier's column is shown)")
    print(f"before: {uptime()}")
    results = {s: [] for s in sides}
    for r in range(args.rounds):
        for s in sides if r % 2 == 0 else sides[::-1]:
            results[s].append(run_side(s, path, args))
    print(f"after:  {uptime()}")

    def med(s, k):
        return statistics.median(x[k] for x in results[s])

    mb = results["nf"][0]["mb"]
    rows = [
        ("train (s)", lambda s: med(s, "train_s"), "{:.3f}"),
        ("encode one text (MB/s)", lambda s: mb / med(s, "encode_s"), "{:.1f}"),
        ("encode_batch of lines (MB/s)", lambda s: mb / med(s, "batch_s"), "{:.1f}"),
        ("compression (bytes/token)", lambda s: mb * 1e6 / med(s, "tokens"), "{:.3f}"),
    ]
    names = {"nf": "nanofrontier", "hf": "tokenizers"}
    print(
        f"\ntiny Shakespeare ({mb:.2f} MB), vocab {args.vocab}, {args.threads} threads, "
        f"median of {args.rounds} processes x {args.repeat} runs"
    )
    header = f"| {'':30s} | " + " | ".join(f"{names[s]:>12s}" for s in sides)
    header += " | nf / hf |" if len(sides) == 2 else " |"
    print(header)
    print("|" + "---|" * (len(sides) + 1 + (len(sides) == 2)))
    for name, f, fmt in rows:
        vals = [f(s) for s in sides]
        line = f"| {name:30s} | " + " | ".join(f"{fmt.format(v):>12s}" for v in vals)
        line += f" | {vals[0] / vals[1]:.2f} |" if len(vals) == 2 else " |"
        print(line)
    if len(sides) == 2:
        print(
            "(train: nf / hf < 1 means nanofrontier is faster; MB/s and bytes/token: > 1 means nanofrontier is higher)"
        )


if __name__ == "__main__":
    main()
