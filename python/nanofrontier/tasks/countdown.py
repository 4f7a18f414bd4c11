"""Countdown for Parts 6 and 8: reach a ``target`` from given ``numbers`` with + − × ÷ and parentheses, each
number used at most once. Generated so a solution exists (one is kept), checked by the safe parser of
:mod:`nanofrontier.tasks.expression` — the model's text is never ``eval``-ed::

    from nanofrontier.tasks import countdown as cd
    p = cd.generate(100, level=3, split="train", seed=0)[0]   # level = how many numbers (2 … 6)
    p.numbers, p.target, p.solution                           # (7, 25, 3), 46, '(25-7)*3-8' (say)
    cd.check("(25-7)*3", p.numbers, p.target)                 # Verdict(ok=..., reason=..., value=...)

The checker's rules (each failure is a verdict with a reason, never an exception):

- the text is at most ``MAX_CHARS`` (200) characters of digits, ``+ - * / × ÷ − ( )`` and spaces, with an
  optional trailing ``= <number>`` that must equal the value; nothing else (no letters, no ``**``, no
  unary minus, no decimals);
- parentheses nest at most ``MAX_DEPTH`` (16) deep; a literal has at most ``MAX_DIGITS`` (6) digits;
- every literal is one of the given numbers, used no more often than it is given;
- arithmetic is exact (``fractions.Fraction``); dividing by zero is refused, and so is any intermediate
  value whose numerator or denominator exceeds ``MAX_MAGNITUDE`` (10¹⁸);
- the value must equal the target.

The solution the generator keeps uses every number, with all intermediate values positive integers (the
game's classic rule); a model's answer may use any subset and any exact rational path.

Splits: a problem is held out (``"test"``) when a hash of its sorted numbers and target falls in 1 of 5,
so train and test are disjoint for every seed.
"""

import random
from dataclasses import dataclass

from ..exceptions import InvalidArgumentError
from ._draw import draw_distinct, hash_split
from .arithmetic import extract_answer
from .expression import COUNTDOWN, ExpressionError, parse

MAX_CHARS = COUNTDOWN.max_chars
MAX_DEPTH = COUNTDOWN.max_depth
MAX_DIGITS = COUNTDOWN.max_digits
MAX_MAGNITUDE = COUNTDOWN.max_magnitude
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Problem:
    numbers: tuple
    target: int
    solution: str
    level: int

    def as_dict(self, prompt_text=None):
        """``{"prompt": text, "numbers": list, "target": int, "level": int}`` — the fields
        :func:`nanofrontier.rl.rewards.countdown_reward` reads."""
        return {"prompt": prompt_text if prompt_text is not None else prompt(self),
                "numbers": list(self.numbers), "target": self.target, "level": self.level}


@dataclass(frozen=True)
class Verdict:
    """``ok``: the expression is valid and reaches the target; ``reason``: why not (or "ok");
    ``value``: the expression's exact value when it parsed and evaluated (a Fraction), else None."""

    ok: bool
    reason: str
    value: object = None

    def __bool__(self):
        return self.ok


# ---- the checker (the parser is nf.tasks.expression's, with countdown's limits) ----------------------

def evaluate(text):
    """``(value Fraction, numbers used list)`` of an arithmetic expression by the rules above (without
    the numbers-given and target rules), or raises ``ValueError`` with the reason."""
    e = parse(text, COUNTDOWN)
    return e.value, e.numbers


def check(expression, numbers, target):
    """A :class:`Verdict` for ``expression`` (the model's expression text) against ``numbers`` (each
    usable at most as often as it appears) and ``target``. Never raises, whatever the string."""
    try:
        if not isinstance(expression, str):
            return Verdict(False, f"not text ({type(expression).__name__})")
        if len(expression) > MAX_CHARS:
            return Verdict(False, f"longer than {MAX_CHARS} characters ({len(expression)})")
        claimed = None
        if expression.count("=") > 1:
            return Verdict(False, "more than one '='")
        if "=" in expression:
            expression, rhs = expression.split("=")
            try:
                claimed = parse(rhs, COUNTDOWN).value
            except ExpressionError as e:
                return Verdict(False, f"right of '=': {e}")
        v, used = evaluate(expression)
        pool = {}
        for x in numbers:
            pool[int(x)] = pool.get(int(x), 0) + 1
        for x in used:
            if pool.get(x, 0) == 0:
                given = "not one of the numbers given" if x not in {int(n) for n in numbers} else \
                    "used more often than given"
                return Verdict(False, f"{x} is {given}", v)
            pool[x] -= 1
        if claimed is not None and claimed != v:
            return Verdict(False, f"the expression is {v}, not {claimed} as written after '='", v)
        if v != target:
            return Verdict(False, f"the expression is {v}, not the target {target}", v)
        return Verdict(True, "ok", v)
    except ExpressionError as e:
        return Verdict(False, str(e))
    except Exception as e:  # noqa: BLE001  (a safety net: the checker reports, never raises)
        return Verdict(False, f"unreadable ({type(e).__name__})")


def score(problem, text):
    """1.0 when the answer in ``text`` (``<answer>…</answer>`` or after ``Answer:``; the whole text if
    neither) checks out for ``problem``, else 0.0."""
    ans = extract_answer(text)
    return 1.0 if check(text if ans is None else ans, problem.numbers, problem.target).ok else 0.0


# ---- the generator ---------------------------------------------------------------------------------

def split_of(numbers, target):
    """``"test"`` or ``"train"``: fixed by a hash of the sorted numbers and the target (never by the seed)."""
    return hash_split(",".join(str(n) for n in sorted(numbers)) + f"->{target}")


def _build(rng, numbers):
    """Combine ``numbers`` (value, text) pairwise in random order and ops, keeping every intermediate
    value a positive integer; returns (value, text) or None."""
    items = list(numbers)
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, sa), (b, sb) = items[i], items[j]
        if a < b:
            (a, sa), (b, sb) = (b, sb), (a, sa)
        ops = ["+", "*"] + (["-"] if a > b else []) + (["/"] if b > 1 and a % b == 0 else [])
        op = rng.choice(ops)
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
        items = [x for k, x in enumerate(items) if k not in (i, j)] + [(v, f"({sa}{op}{sb})")]
    v, s = items[0]
    return v, _strip_outer(s)


def _strip_outer(s):
    if s.startswith("(") and s.endswith(")"):
        depth = 0
        for k, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and k < len(s) - 1:
                return s
        return s[1:-1]
    return s


def generate(n, level=3, *, split="train", seed=0, max_number=25, target_range=(10, 200)):
    """``n`` distinct problems with ``level`` numbers (2 … 6) drawn from 1 … ``max_number``, a target in
    ``target_range`` reached by a kept solution using all of them; from ``split``; seeded."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"countdown: split must be 'train' or 'test', got {split!r}")
    if isinstance(level, bool) or not isinstance(level, int) or not 2 <= level <= 6:
        raise InvalidArgumentError(f"countdown: level (how many numbers) must be an int in [2, 6], got {level!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise InvalidArgumentError(f"countdown: n must be a non-negative int, got {n!r}")
    lo, hi = target_range
    rng = random.Random(f"countdown:{seed}:{split}:{level}:{max_number}:{lo}:{hi}")

    def draw():
        nums = tuple(rng.randint(1, max_number) for _ in range(level))
        v, sol = _build(rng, [(x, str(x)) for x in nums])
        if not lo <= v <= hi or split_of(nums, v) != split:
            return None
        assert check(sol, nums, v).ok, sol  # the kept solution passes the same checker
        return (tuple(sorted(nums)), v), Problem(nums, v, sol, level)

    return draw_distinct(n, draw, 500 * n + 10_000, lambda found: (
        f"countdown: could not draw {n} distinct {split} problems ({found} found); widen target_range or "
        "max_number"))


def prompt(problem):
    """``Using the numbers 7 25 3, make 46.`` and a newline."""
    return f"Using the numbers {' '.join(str(x) for x in problem.numbers)}, make {problem.target}.\n"
