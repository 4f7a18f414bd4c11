"""Part 7: the ReAct loop, its action parser and tools on malformed and hostile input, the generated world,
ReAct traces as SFT rows with the observations masked out of the loss, and a model as the generator."""

import random
import re
import time

import nanofrontier as nf
import numpy as np
import pytest
from nanofrontier import agents as A
from nanofrontier.tasks import expression as ex
from nanofrontier.tasks import world as W

PAGES = {
    "telephone": "The telephone was invented by Alexander Bell in 1876.",
    "Alexander Bell": "Alexander Bell was born in Edinburgh in 1847.",
    "Edinburgh": "The elevation of Edinburgh is 47 meters.",
    "Edinburgh Castle": "Edinburgh Castle stands on a volcanic rock.",
}


def tools():
    return [A.Search(A.KnowledgeBase(PAGES)), A.Calculate()]


def scripted(*replies):
    """A generator replaying ``replies`` in order (the last one forever), recording its prompts."""
    seen = []

    def gen(prompt):
        seen.append(prompt)
        return replies[min(len(seen) - 1, len(replies) - 1)]

    gen.seen = seen
    return gen


# ------------------------------------------------------------------------------------------- the loop

GOLD = [
    "Thought 1: I need the inventor of the telephone.\nAction 1: Search[inventor of telephone]\n",
    "Thought 2: Now his birthplace.\nAction 2: Search[Alexander Bell birthplace]\n",
    "Thought 3: Now the elevation of Edinburgh.\nAction 3: Search[Edinburgh elevation]\n",
    "Answer: 47 meters\n",
]


def test_the_guides_trace_runs_through_the_loop():
    gen = scripted(*GOLD)
    q = "What is the elevation of the birthplace of the inventor of the telephone?"
    t = A.ReActAgent(gen, tools()).run(q)
    assert t.answer == "47 meters" and t.stopped == "answer" and len(t.steps) == 4
    assert [s.observation for s in t.steps[:3]] == [PAGES["telephone"], PAGES["Alexander Bell"],
                                                     PAGES["Edinburgh"]]
    assert t.tool_calls == [("Search", "inventor of telephone"), ("Search", "Alexander Bell birthplace"),
                            ("Search", "Edinburgh elevation")]
    assert "Observation 2: Alexander Bell was born in Edinburgh in 1847.\nThought 3:" in t.text
    # the generator saw the transcript so far, ending right after the last observation
    assert gen.seen[3].endswith("Observation 3: The elevation of Edinburgh is 47 meters.\n")
    assert t.text.startswith("Question: What is the elevation") and t.text.endswith("Answer: 47 meters\n")


def test_observations_written_by_the_generator_are_thrown_away():
    gen = scripted("Thought 1: x\nAction 1: Search[Edinburgh]\nObservation 1: Edinburgh is 9000 meters high."
                   "\nAnswer: 9000 meters\n", "Answer: 47 meters")
    t = A.ReActAgent(gen, tools()).run("How high is Edinburgh?")
    assert t.steps[0].observation == PAGES["Edinburgh"] and "9000" not in t.text
    assert t.answer == "47 meters"


def test_one_action_per_round_and_answer_first_wins():
    gen = scripted("Action 1: Calculate[1+1]\nAction 2: Calculate[2+2]\n", "Answer: 2")
    t = A.ReActAgent(gen, tools()).run("q")
    assert t.steps[0].observation == "2" and "2+2" not in t.text
    t = A.ReActAgent(scripted("Answer: 5\nAction 1: Search[x]\n"), tools()).run("q")
    assert t.answer == "5" and len(t.steps) == 1


@pytest.mark.parametrize("reply, expected", [
    ("Action 1: Search Edinburgh\n", "Invalid action 'Search Edinburgh': write Tool[argument]"),
    ("Action 1: \n", "Invalid action: it is empty"),
    ("Action 1: Browse[Edinburgh]\n", "Unknown tool 'Browse'; the tools are Calculate, Search."),
    ("Action 1: __import__('os')[1]\n", "Invalid action"),
    ("Action 1: Search[" + "x" * 5000 + "]\n", "longer than 300 characters"),
    ("I am just rambling without any action", "Invalid: no action"),
    ("", "Invalid: no action"),
    ("Action 1: Calculate[2**99999]\n", "Error: the exponent 99999 is out of range"),
    ("Action 1: Calculate[1/0]\n", "Error: division by zero"),
    ("Action 1: Calculate[two plus two]\n", "Error: character 't' at position 0 is not arithmetic"),
    ("Action 1: Search[]\n", "Search needs a query"),
    ("Action 1: Search[zzzz qqqq]\n", "No results for 'zzzz qqqq'."),
])
def test_malformed_actions_become_observations_and_the_loop_goes_on(reply, expected):
    t = A.ReActAgent(scripted(reply, "Answer: 47 meters"), tools()).run("q")
    assert expected in t.steps[0].observation, t.steps[0].observation
    tool_said_so = expected.startswith(("Search needs", "No results"))  # a valid call with a plain reply
    assert t.steps[0].error != tool_said_so and t.answer == "47 meters" and t.stopped == "answer"


def test_a_tool_that_raises_or_returns_junk_is_an_observation():
    def boom(arg):
        raise RuntimeError("disk on fire\nsecond line")

    t = A.ReActAgent(scripted("Action 1: Boom[x]\n", "Action 2: Num[y]\n", "Answer: ok"),
                     {"Boom": boom, "Num": lambda a: 12345}).run("q")
    assert t.steps[0].observation == "Error: Boom failed (RuntimeError: disk on fire second line)"
    assert t.steps[0].error and t.steps[1].observation == "12345" and t.answer == "ok"


def test_long_observations_are_cut_to_one_line():
    t = A.ReActAgent(scripted("Action 1: Big[x]\n", "Answer: a"), {"Big": lambda a: "word\n" * 1000},
                     max_observation_chars=50).run("q")
    obs = t.steps[0].observation
    assert len(obs) == 50 and obs.endswith("...") and "\n" not in obs


def test_step_limit_stops_a_generator_that_never_answers():
    gen = scripted("Thought: again\nAction: Search[Edinburgh]\n")
    t = A.ReActAgent(gen, tools(), max_steps=4).run("q")
    assert t.stopped == "step_limit" and t.answer is None and len(t.steps) == 4 and len(gen.seen) == 4
    assert "Observation 4:" in t.text and "Observation 5:" not in t.text


def test_non_text_replies_and_batched_generators():
    t = A.ReActAgent(lambda p: None, tools(), max_steps=2).run("q")
    assert t.stopped == "step_limit" and all(s.error for s in t.steps)

    class Batched:
        batched = True
        calls = []

        def __call__(self, prompts):
            self.calls.append(len(prompts))
            return ["Answer: " + p.split("\n")[0][-1] if "Obs" in p else "Action 1: Calculate[6*7]\n"
                    for p in prompts]

    b = Batched()
    ts = A.ReActAgent(b, tools()).run_many(["a", "b", "c"])
    assert [t.answer for t in ts] == ["a", "b", "c"] and b.calls == [3, 3]
    assert all(t.steps[0].observation == "42" for t in ts)


def test_agent_refuses_bad_setup():
    with pytest.raises(TypeError, match="callable"):
        A.ReActAgent("not a function", tools())
    with pytest.raises(nf.InvalidArgumentError, match="max_steps"):
        A.ReActAgent(str, tools(), max_steps=0)
    with pytest.raises(nf.InvalidArgumentError, match="must be a word"):
        A.ReActAgent(str, {"two words": str})
    with pytest.raises(TypeError, match="not callable"):
        A.ReActAgent(str, {"X": 3})
    with pytest.raises(nf.InvalidArgumentError, match="question"):
        A.ReActAgent(str, tools()).run("  ")


def test_parse_action_never_raises():
    rng = random.Random(0)
    alphabet = "SearchCalculate[]()1+*/ \n\x00é"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        a = A.parse_action(s, {"Search": str})
        ok = a.tool == "Search" and a.argument is not None
        assert isinstance(a, A.Action) and (a.error is None) == ok
    assert A.parse_action(None).error.startswith("Invalid action")
    assert A.parse_action("Search[a[b]]") == A.Action("Search", "a[b]")
    assert A.parse_action("  Calculate[ 1 + 2 ]  ", ["Calculate"]) == A.Action("Calculate", "1 + 2")


# ------------------------------------------------------------------------------------------- tools


def test_search_prefers_the_longest_title_then_shared_words():
    kb = A.KnowledgeBase(PAGES)
    assert kb.lookup("Edinburgh elevation") == "Edinburgh"
    assert kb.lookup("what stands at Edinburgh Castle?") == "Edinburgh Castle"
    assert kb.lookup("inventor of telephone") == "telephone"
    assert kb.lookup("volcanic rock") == "Edinburgh Castle"  # no title: the page sharing the rarest words
    assert kb.lookup("the of and") is None and kb.search("nothing here") is None
    assert A.Search(PAGES)("Alexander Bell") == PAGES["Alexander Bell"]
    with pytest.raises(nf.InvalidArgumentError):
        A.KnowledgeBase({})


CALC = {
    "1873-1820": "53",
    "2**10": "1024",
    "2^3^2": "512",
    "-(3-5)*2": "4",
    "7/2": "3.5",
    "1/3": "0.333333",
    "1.5*4": "6",
    "((((1+2))))": "3",
    "2**-2": "0.25",
}


@pytest.mark.parametrize("text", list(CALC))
def test_calculate_values(text):
    assert A.Calculate()(text) == CALC[text]


HOSTILE = {
    "deep nesting": ("(" * 50 + "1" + ")" * 50, "nested deeper"),
    "huge exponent": ("2**99999", "exponent 99999 is out of range"),
    "power tower": ("9**9**9", "exponent 387420489 is out of range"),
    "big power": ("999999999999**64", "exceeds"),
    "fractional exponent": ("2**0.5", "not a whole number"),
    "zero to a negative power": ("0**-1", "division by zero"),
    "division by zero": ("5/(3-3)", "division by zero"),
    "huge product": ("*".join(["999999999"] * 4), "exceeds"),
    "huge literal": ("1" * 40, "longer than 12 digits"),
    "words": ("the answer is five", "not arithmetic"),
    "python": ("__import__('os').system('ls')", "not arithmetic"),
    "attribute": ("(1).__class__", "not arithmetic"),
    "unicode digits": ("٥+3", "not arithmetic"),
    "empty": ("   ", "empty"),
    "dangling": ("5+", "ends where a number"),
    "unclosed": ("(5+3", "not closed"),
    "juxtaposed": ("5 3", "unexpected"),
    "sign chain": ("-" * 40 + "1", "signs in a row"),
    "100 kB": ("1+" * 50_000, "longer than 200"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_calculate_refuses_hostile_text_with_a_reason(name):
    text, reason = HOSTILE[name]
    out = A.Calculate()(text)
    assert out.startswith("Error: ") and reason in out, (name, out)
    with pytest.raises(ex.ExpressionError, match=None):
        ex.evaluate(text, ex.CALCULATOR)


def test_calculate_never_raises_and_is_fast_on_random_input():
    rng = random.Random(1)
    alphabet = "0123456789+-*/^(). x\n"
    calc = A.Calculate()
    t0 = time.perf_counter()
    for i in range(3000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        out = calc(s)
        assert isinstance(out, str)
    for weird in [None, 12, b"1+2", "\ud800", "1+2\x00"]:
        assert calc(weird).startswith("Error")
    assert time.perf_counter() - t0 < 20


def test_expression_tree_and_countdown_limits():
    e = ex.parse("(25-7)*3")
    assert e.op == "*" and e.value == 54 and e.numbers == [25, 7, 3] and str(e) == "((25 - 7) * 3)"
    with pytest.raises(ex.ExpressionError, match="powers"):
        ex.parse("2**3")  # countdown's limits: no powers
    with pytest.raises(ex.ExpressionError, match="no unary"):
        ex.parse("-1")
    with pytest.raises(TypeError):
        ex.parse("1", limits="strict")


# ------------------------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world():
    return W.make_world(seed=0, n_inventions=200, n_cities=40)


def test_world_is_seeded_and_consistent(world):
    assert W.make_world(seed=0, n_inventions=200, n_cities=40) == world
    assert W.make_world(seed=1, n_inventions=200, n_cities=40).pages != world.pages
    assert len(world.inventions) == 200 and len(world.cities) == 40 and len(world.people) == 200
    for inv, (person, year) in world.inventions.items():
        city, born = world.people[person]
        assert 20 <= year - born <= 70 and city in world.cities
        assert world.pages[inv] == f"The {inv} was invented by {person} in {year}."
    assert len(world.pages) == 440 and world.kb_text.count("\n") == 440


def test_world_splits_share_no_name(world):
    train, held = world.names("train"), world.names("heldout")
    assert train and held and not (train & held)
    train_words = set(re.findall(r"[A-Za-z]+", "".join(q.prompt + q.trace for q in world.questions("train"))))
    for q in world.questions("heldout"):
        person = world.inventions[q.invention][0]
        for name in (q.invention, *person.split(), world.people[person][0]):
            assert name not in train_words or name in person.split(), name
        assert person not in "".join(q.prompt + q.trace for q in world.questions("train"))
    n_held = len(world.questions("heldout"))
    assert 0.05 < n_held / (n_held + len(world.questions("train"))) < 0.45


def test_gold_traces_replayed_through_the_agent_are_correct(world):
    kb = A.KnowledgeBase(world.pages)
    qs = world.questions("heldout")
    by_prompt = {q.prompt: q for q in qs}

    def oracle(prompt):
        head = prompt[:prompt.index("\n") + 1]
        q = by_prompt[head]
        return q.trace[len(prompt) - len(head):]

    traces = A.ReActAgent(oracle, [A.Search(kb), A.Calculate()]).run_many([q.text for q in qs])
    assert all(W.score(q, t.answer) == 1.0 for q, t in zip(qs, traces))
    assert all(t.text == q.prompt + q.trace for q, t in zip(qs, traces))
    assert {q.kind for q in qs} == set(W.KINDS)


def test_search_in_the_world(world):
    search = A.Search(A.KnowledgeBase(world.pages))
    q = world.questions("heldout", kind="elevation")[0]
    person = world.inventions[q.invention][0]
    city = world.people[person][0]
    assert search(f"inventor of {q.invention}") == world.pages[q.invention]
    assert search(f"{person} birthplace") == world.pages[person]
    assert search(f"{city} elevation") == world.pages[city]
    # a word on many pages ("elevation") picks none of them
    assert search("Atlantis elevation") == "No results for 'Atlantis elevation'."


def test_world_scoring_and_bad_arguments(world):
    q = world.questions("train", kind="age")[0]
    assert W.score(q, f"{q.value} years") == 1.0 and W.score(q, f"{q.value + 1}") == 0.0
    assert W.score(q, None) == 0.0 and W.score(q, "no idea") == 0.0
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        world.questions("test")
    with pytest.raises(nf.InvalidArgumentError, match="kind"):
        world.questions("train", kind="height")
    with pytest.raises(nf.InvalidArgumentError, match="n_cities"):
        W.make_world(n_cities=0)


def test_world_tokenizer_round_trips_and_keeps_names_short(world):
    tok = W.WorldTokenizer()
    q = world.questions("heldout")[0]
    text = q.prompt + q.trace + "<eos>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids[-1] == tok.eos_id
    assert len(ids) < len(text) / 2.5
    assert tok.encode("Observation") == [tok.stoi["Observation"]]
    assert tok.decode(tok.encode("weird ünïcode")) == "weird ?n?code"


# ------------------------------------------------------------------------------------------- training rows


def test_trace_example_masks_exactly_the_observations(world):
    tok = W.WorldTokenizer()
    q = world.questions("train")[0]
    p, c, m = A.trace_example(tok, q.prompt, q.trace, eos_id=tok.eos_id)
    assert p + c[:-1] == tok.encode(q.prompt + q.trace) and c[-1] == tok.eos_id and len(m) == len(c)
    masked = tok.decode([t for t, k in zip(c, m) if not k])
    kept = tok.decode([t for t, k in zip(c, m) if k])
    obs_lines = [ln[len("Observation"):] + "\n" for ln in q.trace.splitlines()
                 if ln.startswith("Observation")]
    assert masked == "".join(obs_lines)
    assert kept.count("Observation") == 3 and "was invented by" not in kept
    assert A.observation_spans("a\nObservation 1: x\nb") == [(13, 19)]


def tiny_model(vocab, block=64, seed=0):
    nf.manual_seed(seed)
    return nf.models.GPT(nf.models.GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2,
                                             n_embd=16))


def test_sft_loss_masks_score_only_the_ones():
    m = tiny_model(12)
    opt = nf.optim.AdamW(m.parameters(), lr=1e-3)
    examples = [([1, 2], [3, 4, 5, 6]), ([7], [8, 9])]
    masks = [[1, 0, 0, 1], None]
    sft = nf.rl.SFTTrainer(m, opt, examples, loss_masks=masks, batch_size=2, max_steps=1)
    loss, metrics = sft._loss(m, np.array([0, 1]))
    # by hand: log p of each scored token given its prefix
    want = []
    for (p, c), k in zip(examples, [masks[0], [1, 1]]):
        seq = np.array([p + c])
        lp = m.token_logprobs(seq[:, :-1], seq[:, 1:]).numpy()[0][len(p) - 1:]
        want += [lp[j] for j in range(len(c)) if k[j]]
    assert metrics["completion_tokens"] == 4
    np.testing.assert_allclose(float(loss.numpy()), -np.mean(want), rtol=1e-5)
    # a masked last token changes nothing; an unmasked one does
    ex2 = [([1, 2], [3, 4, 5, 11]), ([7], [8, 9])]
    same = nf.rl.SFTTrainer(m, opt, ex2, loss_masks=[[1, 1, 1, 0], None], batch_size=2, max_steps=1)
    base = nf.rl.SFTTrainer(m, opt, examples, loss_masks=[[1, 1, 1, 0], None], batch_size=2, max_steps=1)
    both = np.array([0, 1])
    assert float(same._loss(m, both)[0].numpy()) == float(base._loss(m, both)[0].numpy())
    assert sft.evaluate(examples, loss_masks=masks) == pytest.approx(-np.mean(want), rel=1e-5)


def test_sft_loss_masks_are_checked():
    m = tiny_model(12)
    opt = nf.optim.AdamW(m.parameters(), lr=1e-3)
    ex_ = [([1], [2, 3])]
    with pytest.raises(nf.ShapeError, match=r"loss_masks\[0\] has shape \(3,\).*\(2,\)"):
        nf.rl.SFTTrainer(m, opt, ex_, loss_masks=[[1, 1, 1]], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="only 0/1"):
        nf.rl.SFTTrainer(m, opt, ex_, loss_masks=[[1, 2]], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="1 masks for 2 examples"):
        nf.rl.SFTTrainer(m, opt, ex_ * 2, loss_masks=[[1, 1]], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="nothing to train on"):
        nf.rl.SFTTrainer(m, opt, ex_, loss_masks=[[0, 0]], max_steps=1)
    with pytest.raises(TypeError, match="one mask per example"):
        nf.rl.SFTTrainer(m, opt, ex_, loss_masks="11", max_steps=1)


def test_sft_with_masks_learns_the_actions_not_the_observations(world):
    """A tiny model trained on a handful of traces: its loss on the kept tokens falls."""
    tok = W.WorldTokenizer()
    rows = [A.trace_example(tok, q.prompt, q.trace, tok.eos_id) for q in world.questions("train")[:16]]
    t = max(len(p) + len(c) for p, c, _ in rows)
    m = tiny_model(tok.vocab_size, block=t)
    opt = nf.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    sft = nf.rl.SFTTrainer(m, opt, [(p, c) for p, c, _ in rows], loss_masks=[k for _, _, k in rows],
                           batch_size=8, max_steps=30, progress=False)
    before = sft.evaluate([(p, c) for p, c, _ in rows], [k for _, _, k in rows])
    sft.train()
    after = sft.evaluate([(p, c) for p, c, _ in rows], [k for _, _, k in rows])
    assert after < 0.6 * before, (before, after)


def test_model_generator_with_a_real_model(world):
    tok = W.WorldTokenizer()
    m = tiny_model(tok.vocab_size, block=64)
    gen = A.ModelGenerator(m, tok, max_new_tokens=8)
    assert gen.stop_tokens == [tok.stoi["Observation"], tok.eos_id]
    outs = gen(["Question: a\n", "Question: bb\n"])
    assert len(outs) == 2 and all(isinstance(o, str) and len(tok.encode(o)) <= 8 for o in outs)
    assert gen(["Question: a\n", "Question: bb\n"]) != outs or True  # seeded per call: runs are reproducible
    again = A.ModelGenerator(m, tok, max_new_tokens=8)(["Question: a\n", "Question: bb\n"])
    assert again == outs
    every = A.ModelGenerator(m, tok, max_new_tokens=8, stop_tokens=list(range(tok.vocab_size)))
    assert all(len(tok.encode(o)) == 1 for o in every(["x", "y"]))
    long_prompt = "Question: " + "a" * 500
    assert isinstance(gen(long_prompt), str)  # the transcript is cut to the context, not refused
    t = A.ReActAgent(gen, tools(), max_steps=2).run("anything")  # an untrained model: no crash
    assert t.stopped in ("answer", "step_limit")
    with pytest.raises(nf.InvalidArgumentError, match="no room"):
        A.ModelGenerator(m, tok, max_new_tokens=64)
