"""nf.tasks.arithmetic and nf.tasks.countdown: seeded generators with disjoint splits and the levels they
promise, renderings (direct / worked), the answer extractor, and the Countdown checker against hostile
model output (deep nesting, huge numbers, powers, division by zero, numbers reused or not given, unicode,
empty, 100 kB, random bytes) — a verdict with a reason every time, never an exception."""

import random
import time
from fractions import Fraction

import pytest

import nanofrontier as nf
from nanofrontier.tasks import arithmetic as ar
from nanofrontier.tasks import countdown as cd


# ------------------------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("level", [0, 2, 4])
def test_addition_has_the_carries_its_level_names(level):
    ps = ar.generate(200, level, seed=3, digits=4)
    assert all(ar.carries(*p.terms) == level for p in ps)
    assert all(len(str(t)) == 4 for p in ps for t in p.terms)
    assert all(p.answer == sum(p.terms) for p in ps)
    assert len({p.terms for p in ps}) == 200


def test_sum_has_level_plus_one_terms():
    ps = ar.generate(50, 5, kind="sum", digits=2, seed=1)
    assert all(len(p.terms) == 6 and p.answer == sum(p.terms) for p in ps)


def test_generation_is_seeded_and_splits_are_disjoint():
    assert ar.generate(30, 2, seed=5) == ar.generate(30, 2, seed=5)
    assert ar.generate(30, 2, seed=5) != ar.generate(30, 2, seed=6)
    for seed in range(3):
        train = {p.terms for p in ar.generate(500, 1, split="train", seed=seed, digits=3)}
        test = {p.terms for p in ar.generate(100, 1, split="test", seed=seed + 10, digits=3)}
        assert not train & test
    # the split is a property of the problem, not of the seed
    assert all(ar.split_of(p) == "test" for p in ar.generate(50, 3, split="test", seed=9))


def test_renderings_differ_only_by_the_marker_and_scratchpad_is_right():
    p = ar.Problem((4785, 3956), 8741, 3, "add")
    assert ar.render(p) == ("4785+3956=\n", "Answer: 8741\n")
    pr, comp = ar.render(p, steps=True)
    assert pr == "4785+3956= Let's think step by step.\n"
    assert comp == "5+6+0=11\n8+5+1=14\n7+9+1=17\n4+3+1=8\nAnswer: 8741\n"
    q = ar.Problem((9999, 1), 10000, 4, "add")
    assert ar.scratchpad(q)[-1] == "9+0+1=10"
    s = ar.Problem((12, 30, 7), 49, 2, "sum")
    assert ar.completion(s, True) == "12+30=42\n42+7=49\nAnswer: 49\n"
    for p in ar.generate(100, 4, seed=0, digits=5) + ar.generate(50, 3, kind="sum", seed=0):
        assert ar.score(p, ar.completion(p, True)) == 1.0 and ar.score(p, ar.completion(p)) == 1.0
        assert ar.score(p, f"Answer: {p.answer + 1}") == 0.0


def test_bad_arguments_are_refused():
    with pytest.raises(nf.InvalidArgumentError, match="carries"):
        ar.generate(3, 5, digits=4)
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        ar.generate(3, 1, split="val")
    with pytest.raises(nf.InvalidArgumentError, match="kind"):
        ar.generate(3, 1, kind="mul")
    with pytest.raises(nf.InvalidArgumentError, match="distinct"):
        ar.generate(500, 1, digits=1)


def test_extract_answer_and_parse_number():
    assert ar.extract_answer("work\nAnswer: 12\nmore") == "12"
    assert ar.extract_answer("Answer: 1\nAnswer: 2") == "2"
    assert ar.extract_answer("<answer>1</answer> x <answer> 7 </answer>") == "7"
    assert ar.extract_answer("the final answer is: 5") == "5"
    assert ar.extract_answer("no marker 42") is None
    assert ar.extract_answer(None) is None and ar.extract_answer(b"Answer: 1") is None
    assert ar.parse_number(" 1,234. ") == 1234 and ar.parse_number("1 234") == 1234
    assert ar.parse_number("42.0") == 42 and ar.parse_number("-3/6") == Fraction(-1, 2)
    assert ar.parse_number("**7**") == 7
    for bad in ["12,34", "1e9", "seven", "1/0", "1 2/3/4", "", "9" * 101, None]:
        assert ar.parse_number(bad) is None, bad


# ------------------------------------------------------------------------------------------- countdown
@pytest.mark.parametrize("level", [2, 3, 4, 6])
def test_countdown_problems_have_a_checked_solution(level):
    ps = cd.generate(60, level, seed=2)
    for p in ps:
        assert len(p.numbers) == level and 10 <= p.target <= 200
        v = cd.check(p.solution, p.numbers, p.target)
        assert v.ok and v.value == p.target, (p, v)
        assert sorted(int(t) for t in p.solution.replace("(", " ").replace(")", " ")
                      .replace("+", " ").replace("-", " ").replace("*", " ").replace("/", " ").split()) \
            == sorted(p.numbers)
    assert cd.generate(60, level, seed=2) == ps and cd.generate(60, level, seed=3) != ps


def test_countdown_splits_disjoint():
    tr = {(tuple(sorted(p.numbers)), p.target) for p in cd.generate(300, 3, split="train", seed=0)}
    te = {(tuple(sorted(p.numbers)), p.target) for p in cd.generate(100, 3, split="test", seed=0)}
    assert tr and te and not tr & te


def test_check_accepts_valid_forms():
    assert cd.check("(25-7)*3", [7, 25, 3], 54).ok
    assert cd.check("25 × 3 − 7 ÷ 7", [7, 25, 3, 7], 74).ok
    assert cd.check("8/3*3", [8, 3, 3], 8).ok  # exact fractions on the way
    assert cd.check("3*8 = 24", [3, 8], 24).ok
    assert cd.check("3", [3, 8], 3).ok  # a subset is allowed


HOSTILE = {
    "deep nesting": ("(" * 50 + "1" + ")" * 50, "nested deeper"),
    "nesting within length": ("(" * 17 + "1" + ")" * 17, "nested deeper"),
    "huge literal": ("1" + "0" * 30, "longer than 6 digits"),
    "power": ("2**10", "powers"),
    "caret": ("2^10", "not arithmetic"),
    "huge product": ("*".join(["999999"] * 4), "exceeds"),
    "division by zero": ("5/(3-3)", "division by zero"),
    "number twice": ("5+5", "used more often"),
    "not given": ("5+7", "not one of the numbers"),
    "words": ("the answer is five", "not arithmetic"),
    "python": ("__import__('os')", "not arithmetic"),
    "unicode digits": ("٥+3", "not arithmetic"),
    "fullwidth": ("５+3", "not arithmetic"),
    "empty": ("", "empty"),
    "spaces": ("   ", "empty"),
    "unary minus": ("-5+3", "no unary"),
    "dangling op": ("5+", "ends where a number"),
    "unclosed": ("(5+3", "not closed"),
    "extra close": ("5+3)", "unexpected"),
    "juxtaposed": ("5 3", "unexpected"),
    "decimal": ("5.0+3", "not arithmetic"),
    "wrong value": ("5*3", "not the target"),
    "wrong claim": ("5*3 = 8", "not 8"),
    "two equals": ("5=3=8", "more than one"),
    "100 kB": ("1+" * 50_000, "longer than 200"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_check_refuses_hostile_text_with_a_reason(name):
    text, reason = HOSTILE[name]
    numbers = [5, 3, 999999, 999999, 999999, 999999, 1, 2, 10] if name != "number twice" else [5, 3]
    if name == "huge literal":
        numbers = [1]
    v = cd.check(text, numbers, 8 if name not in ("power", "caret") else 1024)
    assert not v.ok and reason in v.reason, (name, v)


def test_check_never_raises_on_random_input_and_is_fast():
    rng = random.Random(0)
    alphabet = "0123456789+-*/()= ×÷−x.^\n"
    t0 = time.perf_counter()
    for i in range(3000):
        if i % 3 == 0:
            s = bytes(rng.randrange(256) for _ in range(rng.randrange(60))).decode("latin-1")
        else:
            s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(80)))
        v = cd.check(s, [1, 2, 3, 4], 10)
        assert isinstance(v, cd.Verdict) and isinstance(v.reason, str)
    for weird in [None, 12, b"1+2", ["1"], "1+2\x00", "\ud800"]:
        assert not cd.check(weird, [1, 2], 3).ok
    assert not cd.check("1+2", ["x"], 3).ok  # bad numbers: a verdict too
    big = "(" * 100_000 + ")" * 100_000
    t1 = time.perf_counter()
    assert not cd.check(big, [1], 1).ok and not cd.score(cd.Problem((1,), 1, "1", 1), big)
    assert time.perf_counter() - t1 < 0.5
    assert time.perf_counter() - t0 < 20
