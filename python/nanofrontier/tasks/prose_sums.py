"""Part 8's task (DeepSeek-R1-Zero from scratch): sums a base model has only ever *read about*, in prose,
and a question format it has never seen answered. Pure RL has to connect the two::

    from nanofrontier.tasks import prose_sums as ps
    text = ps.corpus(20_000, seed=1)          # the base model's whole pretraining text (train pairs only)
    ps.corpus_lines(3, seed=1)                # ['79 and 14 make 93.', 'for 35 + 92 we write 5+2=7, ...']
    train = ps.generate(500, split="train", seed=0)   # RL prompts; split="test": held out
    p = train[0]
    ps.prompt(p)                               # 'question: 35 + 92. answer:'
    ps.parse_answer(" 5+2=7, 3+9=12, so 127.") # 127
    ps.score(p, " 127.")                       # 1.0 for p = 35 + 92

The text (what a base model is pretrained on) tells sums in sentences and, in half of its lines, works a
column addition out in words ("to add 347 + 285: 7+5=12, 4+8+1=13, 3+2+1=6, so 632."), in varied frames
with filler words between the problem and its columns (so a model learns to find the operands wherever they
sit). It never contains the RL prompt's layout ``question: a + b. answer:`` nor any question followed by its
answer: the format the rewards ask for is never demonstrated, only the arithmetic is.

The rule (no learned judge): a completion is *well formed* when it is one sentence — lowercase letters,
digits, spaces and ``+ = , :`` only, no other full stop — ending in ``<number>.`` (a trailing newline
allowed); its *answer* is that final number. :func:`parse_answer` returns it (or None), and
:func:`nanofrontier.rl.rewards.sentence_answer_reward` and
:func:`~nanofrontier.rl.rewards.sentence_format_reward` turn it into rewards. A worked answer
(``" 5+2=7, 3+9=12, so 127."``) and a bare one (``" 127."``) both count.

Splits: a pair (a, b) is held out (``"test"``) when a hash of its text falls in the held-out fraction (1 in
5), whatever the seed; the corpus and ``split="train"`` use only the other pairs, so held-out problems are in
neither the pretraining text nor the RL prompts. The level is the number of carries in the column addition
(0 … digits), as in :mod:`nanofrontier.tasks.arithmetic`; ``level=None`` draws pairs uniformly.
Generation is seeded by ``seed`` alone (Python's ``random.Random``), the same on every machine.
"""

import random
import re
from dataclasses import dataclass

from ..exceptions import InvalidArgumentError
from ._draw import draw_distinct, hash_split
from .arithmetic import carries  # noqa: F401  (part of this module's API: a Problem's level)

PROMPT = "question: {a} + {b}. answer:"
SPLITS = ("train", "test")
# the tokenizer's alphabet: everything the text, the prompt and a well-formed answer use (a fixed set, so
# a model's vocabulary does not depend on which lines a seed drew)
ALPHABET = "\n :?=+.,0123456789abcdefghijklmnopqrstuvwxyz"
NAMES = ("ann", "bob", "cara", "dan", "eve", "finn", "gus", "hana", "ivy", "joe")
THINGS = ("coins", "apples", "stamps", "shells", "cards", "beads")
FILLER = ("on the board", "in a book", "at school", "today", "and then", "on a card", "with a pen", "later",
          "in the morning", "for fun", "again", "at home")
MAX_COMPLETION = 200  # longer completions are not well formed (and the parser stays cheap on any input)
_SENTENCE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 +=,:")
_FINAL_NUMBER = re.compile(r"(?<![0-9a-z])([0-9]+)\Z")  # a number, not the tail of a word


@dataclass(frozen=True)
class Problem:
    """``a + b`` with ``answer``; ``level`` is the number of carries of the column addition."""

    a: int
    b: int
    answer: int
    level: int

    def as_dict(self, encode=None):
        """``{"prompt": text (or ids, with ``encode``), "answer": int, "level": int}`` — the fields the
        rewards read (:func:`nanofrontier.rl.rewards.sentence_answer_reward` takes ``answer``)."""
        text = prompt(self)
        ids = text if encode is None else encode(text)
        return {"prompt": ids, "answer": self.answer, "level": self.level}


def split_of(a, b):
    """``"test"`` or ``"train"`` for the pair (a, b): fixed by a hash of its text, never by the seed."""
    return hash_split(f"prose_sums:{a}+{b}")


def columns(a, b):
    """The column addition of a + b as words: ``"7+5=12, 4+8+1=13, 3+2+1=6"`` (ones first; a carry in is
    written ``+1``, and a final carry shows in the last column's two-digit sum)."""
    da, db = str(a)[::-1], str(b)[::-1]
    parts, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        parts.append(f"{x}+{y}{'+1' if carry else ''}={s}")
        carry = s // 10
    return ", ".join(parts)


def prompt(problem):
    """The RL prompt for a problem: ``"question: a + b. answer:"`` (the completion starts after it)."""
    return PROMPT.format(a=problem.a, b=problem.b)


def worked_answer(problem):
    """A well-formed worked completion, in the text's own column words: ``" 5+2=7, 3+9=12, so 127."``."""
    return f" {columns(problem.a, problem.b)}, so {problem.answer}."


def _check_digits(digits):
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 6:
        raise InvalidArgumentError(f"prose_sums: digits must be an int in [1, 6], got {digits!r}")


def _check_count(name, n):
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(f"prose_sums: {name} must be a non-negative int, got {n!r}")


def _check_level(level, digits):
    top = digits  # at most one carry out of each column
    if level is not None and (isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= top):
        raise InvalidArgumentError(f"prose_sums: level is the number of carries, None or an int in "
                                   f"[0, {top}] for {digits}-digit operands; got {level!r}")


def _pair(rng, digits):
    lo = 1 if digits == 1 else 10 ** (digits - 1)
    hi = 10 ** digits - 1
    return rng.randint(lo, hi), rng.randint(lo, hi)


def generate(n, *, split="train", seed=0, digits=2, level=None, unique=True):
    """``n`` problems with ``digits``-digit operands from ``split`` (``"train"`` or ``"test"``), seeded;
    ``level``: only problems with that many carries (None: any). ``unique``: no pair twice (raises when the
    split has too few)."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"prose_sums: split must be 'train' or 'test', got {split!r}")
    _check_digits(digits)
    _check_count("n", n)
    _check_level(level, digits)
    rng = random.Random(f"prose_sums:{seed}:{split}:{digits}:{level}")

    def draw():
        a, b = _pair(rng, digits)
        if split_of(a, b) != split:
            return None
        lv = carries(a, b)
        if level is not None and lv != level:
            return None
        return (a, b), Problem(a, b, a + b, lv)

    return draw_distinct(n, draw, 200 * n + 20_000, lambda found: (
        f"prose_sums: could not draw {n} distinct {split} problems with {digits}-digit operands at level "
        f"{level} ({found} found); ask for fewer, or more digits"), unique=unique)


def all_pairs(split, digits=2):
    """Every problem of ``split`` with ``digits``-digit operands (``digits`` <= 3), in (a, b) order."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"prose_sums: split must be 'train' or 'test', got {split!r}")
    _check_digits(digits)
    if digits > 3:
        raise InvalidArgumentError(f"prose_sums: all_pairs lists up to 3-digit operands, got digits={digits}")
    lo, hi = (1 if digits == 1 else 10 ** (digits - 1)), 10 ** digits
    return [Problem(a, b, a + b, carries(a, b)) for a in range(lo, hi) for b in range(lo, hi)
            if split_of(a, b) == split]


def sentence(rng, a, b):
    """One line of the pretraining text about a + b, drawn with ``rng`` (a ``random.Random``): half tell the
    sum ("ann had 23 coins and found 45 more, so ann had 68 coins.", "23 and 45 make 68.", "the sum of 23 and
    45 is 68."), half work the columns out in one of six frames."""
    c = a + b
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    kind = rng.randrange(6)
    if kind == 0:
        return f"{name} had {a} {thing} and found {b} more, so {name} had {c} {thing}."
    if kind == 1:
        return f"{a} and {b} make {c}."
    if kind == 2:
        return f"the sum of {a} and {b} is {c}."
    cols, frame = columns(a, b), rng.randrange(6)
    if frame == 0:
        return f"to add {a} + {b}: {cols}, so {c}."
    if frame == 1:
        return f"{name} added {a} + {b} in columns: {cols}, so {c}."
    if frame == 2:
        return f"for {a} + {b} we write {cols}, so {c}."
    if frame == 3:
        return f"the teacher wrote {a} + {b} on the board and then {cols}, so {c}."
    if frame == 4:
        return f"adding {a} + {b} goes {cols}, so {c}."
    filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 4)))
    return f"{name} saw {a} + {b} {filler}, and wrote {cols}, so {c}."


def corpus_lines(n_lines, *, seed=0, digits=2):
    """``n_lines`` lines of pretraining text about train-split pairs (seeded; pairs may repeat)."""
    _check_digits(digits)
    _check_count("n_lines", n_lines)
    rng = random.Random(f"prose_sums:corpus:{seed}:{digits}")
    lines = []
    while len(lines) < n_lines:
        a, b = _pair(rng, digits)
        if split_of(a, b) == "train":
            lines.append(sentence(rng, a, b))
    return lines


def corpus(n_lines, *, seed=0, digits=2):
    """The pretraining text: :func:`corpus_lines` joined, one per line, newline-ended."""
    return "".join(line + "\n" for line in corpus_lines(n_lines, seed=seed, digits=digits))


def parse_answer(completion):
    """The final number of a well-formed completion (one sentence of lowercase words, digits, spaces and
    ``+ = , :`` ending in ``<number>.``; a trailing newline allowed), else None. Never raises."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION:
        return None
    s = completion.rstrip("\n")
    if not s.endswith("."):
        return None
    body = s[:-1]
    if not body or not _SENTENCE_CHARS.issuperset(body):
        return None
    m = _FINAL_NUMBER.search(body)
    return None if m is None else int(m.group(1))


def is_worked(completion):
    """True when a completion shows its work (at least one column ``x+y=s``)."""
    return isinstance(completion, str) and "=" in completion


def score(problem, completion):
    """1.0 when the completion is well formed and its final number is the problem's answer, else 0.0."""
    return 1.0 if parse_answer(completion) == problem.answer else 0.0
