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


def test_colsum_is_worked_column_by_column():
    p = ar.Problem((59, 13, 67, 34, 15), 188, 4, "colsum")
    assert ar.completion(p, True) == "9+3+7+4+5+0=28\n5+1+6+3+1+2=18\nAnswer: 188\n"
    assert ar.render(p) == ("59+13+67+34+15=\n", "Answer: 188\n")
    q = ar.Problem((4785, 3956), 8741, 1, "colsum")  # two terms: the same lines as kind="add"
    assert ar.scratchpad(q) == ar.scratchpad(ar.Problem(q.terms, q.answer, 3, "add"))
    ps = ar.generate(100, 3, kind="colsum", digits=3, seed=2)
    assert all(len(p.terms) == 4 and p.answer == sum(p.terms) for p in ps)
    for p in ps:
        lines = ar.scratchpad(p)
        assert len(lines) == 3 and all(line.count("+") == 4 for line in lines)
        assert ar.score(p, ar.completion(p, True)) == 1.0
    # the same terms under another kind are another problem: its own split, its own rendering
    assert {p.terms for p in ar.generate(50, 3, kind="sum", digits=3, seed=2)} != {p.terms for p in ps}
    with pytest.raises(nf.InvalidArgumentError, match="terms"):
        ar.generate(3, 0, kind="colsum")


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


# ------------------------------------------------------------------ arithmetic: rows and evaluation (Part 6)
def test_tokenizer_covers_every_rendering_and_round_trips():
    tok = ar.tokenizer()
    ps = ar.generate(40, 3, seed=0, digits=5) + ar.generate(40, 4, kind="sum", digits=3, seed=0) + \
        ar.generate(40, 6, kind="colsum", digits=2, seed=0)
    for p in ps:
        for steps in (False, True):
            text = "".join(ar.render(p, steps))
            assert tok.decode(tok.encode(text)) == text
    assert tok.vocab_size == len(set(ar.ALPHABET))


def test_sft_examples_are_the_renderings_in_order():
    tok = ar.tokenizer()
    ps = ar.generate(5, 2, seed=1, digits=3)
    rows = ar.sft_examples(ps, tok)
    assert len(rows) == 10
    for i, p in enumerate(ps):
        for j, steps in enumerate((False, True)):
            pr, co = rows[2 * i + j]
            assert (tok.decode(pr), tok.decode(co)) == ar.render(p, steps)
    assert len(ar.sft_examples(ps, tok, steps=True)) == 5
    assert all("step" in tok.decode(pr) for pr, _ in ar.sft_examples(ps, tok, steps=[True]))
    for bad in ("yes", [], [1], None):
        with pytest.raises(nf.InvalidArgumentError, match="steps"):
            ar.sft_examples(ps, tok, steps=bad)
    with pytest.raises(nf.InvalidArgumentError, match="Problem"):
        ar.sft_examples(["1+2="], tok)


def test_first_answer_stops_after_the_first_answer_line():
    assert ar.first_answer("1+2+0=3\nAnswer: 3\nAnswer: 9\n") == "1+2+0=3\nAnswer: 3\n"
    assert ar.first_answer("Answer: 41") == "Answer: 41"  # the line never ended: all of it
    assert ar.first_answer("5+5+0=10\n") == "5+5+0=10\n"
    assert ar.first_answer(None) == ""
    p = ar.Problem((12, 30), 42, 0, "add")
    assert ar.score(p, ar.first_answer("Answer: 42\nAnswer: 7\n")) == 1.0  # the first answer is the one read
    assert ar.score(p, ar.first_answer("Answer: 7\nAnswer: 42\n")) == 0.0


def _tiny_gpt(vocab=31, n_layer=2, n_embd=16, block=64):
    nf.manual_seed(0)
    return nf.models.GPT(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2, n_embd=n_embd)


def test_decode_flops_is_the_sum_over_the_positions_run():
    v, layers, d = 31, 2, 16
    m = _tiny_gpt(v, layers, d)
    per_position = 2 * (12 * d * d * layers + v * d)  # GPT-2 block: qkv 3d², proj d², MLP 8d²; tied head
    for prompt_len, new in [(1, 1), (10, 1), (10, 7), (23, 30), (5, 0)]:
        positions = prompt_len + max(new - 1, 0)  # the last new token is never fed back
        want = sum(per_position + layers * 4 * d * (i + 1) for i in range(positions))  # QKᵀ and PV over i+1
        got = ar.decode_flops(m, prompt_len, new)
        assert got == pytest.approx(want, rel=1e-12), (prompt_len, new, got, want)
    for bad in [(0, 3), (3, -1), (2.0, 1), (True, 1)]:
        with pytest.raises(nf.InvalidArgumentError):
            ar.decode_flops(m, *bad)


class _Scripted:
    """A stand-in model that 'generates' a scripted text per prompt (and counts FLOPs as a real tiny GPT)."""

    def __init__(self, tok, answer_for):
        self.tok, self.answer_for, self.training, self.calls = tok, answer_for, True, []
        self.real = _tiny_gpt(tok.vocab_size)

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def flops_per_token(self, n):
        return self.real.flops_per_token(n)

    def generate(self, prompts, max_new_tokens, temperature=1.0, seed=None):
        assert temperature == 0.0 and not self.training
        self.calls.append(len(prompts))
        out = []
        for pr in prompts:
            text = self.answer_for(self.tok.decode(pr))[:max_new_tokens]
            out.append(self.tok.encode(text))
        return out, [[0.0] * len(t) for t in out]


def test_evaluate_scores_the_first_answer_and_counts_its_tokens():
    tok = ar.tokenizer()
    ps = ar.generate(6, 1, seed=0, digits=3) + ar.generate(6, 3, seed=0, digits=3)
    by_prompt = {ar.prompt(p, s): p for p in ps for s in (False, True)}

    def oracle(pr):  # right, then chatter that the evaluation must not read
        return ar.completion(by_prompt[pr], "step" in pr) + "Answer: 1\n"

    m = _Scripted(tok, oracle)
    for steps in (False, True):
        ev = ar.evaluate(m, tok, ps, steps=steps, batch_size=5)
        assert m.training and m.calls[-3:] == [5, 5, 2]  # batches of 5, mode restored
        assert ev.accuracy == 1.0 and ev.correct.all() and ev.steps == steps
        want = [len(ar.completion(p, steps)) for p in ps]
        assert ev.answer_tokens.tolist() == want
        assert ev.prompt_tokens.tolist() == [len(ar.prompt(p, steps)) for p in ps]
        assert ev.flops.tolist() == [ar.decode_flops(m.real, len(ar.prompt(p, steps)), n)
                                     for p, n in zip(ps, want)]
        assert set(ev.by_level()) == {1, 3} and ev.by_level()[3][:2] == (1.0, 6)
    wrong = ar.evaluate(_Scripted(tok, lambda pr: "Answer: 7\n"), tok, ps, max_new_tokens=3)
    assert wrong.accuracy == 0.0 and wrong.texts[0] == "Ans"  # cut at max_new_tokens: no answer, wrong
    with pytest.raises(nf.InvalidArgumentError, match="steps"):
        ar.evaluate(m, tok, ps, steps="yes")
    with pytest.raises(nf.InvalidArgumentError, match="batch_size"):
        ar.evaluate(m, tok, ps, batch_size=0)


def test_evaluate_runs_a_real_model_greedily_and_reproducibly():
    tok = ar.tokenizer()
    m = _tiny_gpt(tok.vocab_size, block=128)
    ps = ar.generate(8, 2, kind="sum", digits=2, split="test", seed=4)
    a, b = ar.evaluate(m, tok, ps, steps=True), ar.evaluate(m, tok, ps, steps=True)
    assert a.texts == b.texts and 0.0 <= a.accuracy <= 1.0 and m.training
    assert (a.answer_tokens <= len(max((ar.completion(p, True) for p in ps), key=len)) + 4).all()
    assert (a.flops > 0).all()
