"""nf.tasks.facts (Part 5's task): splits disjoint, the rule scorer right on hand-made completions, the
tokenizer round trip, seeded reproducibility, sizes, the base corpus's mix of answers and non-answers, and
bad arguments refused."""

import re

import nanofrontier as nf
import numpy as np
import pytest
from nanofrontier.tasks import facts


@pytest.fixture(scope="module")
def task():
    return facts.make_task(0)


def answer_lines_in_base(task):
    """(question text, the line after it) for every line of the base corpus that follows a question."""
    out = []
    for doc in task.base_corpus.split(facts.EOS):
        lines = doc.split("\n")
        out += list(zip(lines, lines[1:]))
    return out


# ---------------------------------------------------------------- splits


def test_splits_are_disjoint_and_cover_every_question(task):
    train, held = task.questions("train"), task.questions("heldout")
    assert not {q.text for q in train} & {q.text for q in held}
    assert len({q.text for q in task.questions()}) == len(train) + len(held) == 4 * 12
    # held out per relation: a quarter of each
    for rel in facts.RELATIONS:
        assert sum(q.relation == rel for q in held) == 3, rel


def test_fit_and_val_split_the_train_questions_and_reuse_their_pairs(task):
    train, fit, val = (task.questions(s) for s in ("train", "fit", "val"))
    held = {q.text for q in task.questions("heldout")}
    # val is a part of train, disjoint from fit (which is the rest) and from the held-out questions
    assert not {q.text for q in fit} & {q.text for q in val}
    assert sorted(q.text for q in fit + val) == sorted(q.text for q in train)
    assert not held & {q.text for q in val}
    for rel in facts.RELATIONS:  # per relation: a quarter of its 9 train questions, rounded
        assert sum(q.relation == rel for q in val) == round(facts.VALIDATION_FRACTION * 9) == 2, rel
    # the pairs of fit and val are the train pairs of those questions, not newly drawn ones
    for split, qs in (("fit", fit), ("val", val)):
        prompts = {q.prompt for q in qs}
        assert task.pairs(split) == [p for p in task.pairs("train") if p.prompt in prompts]
        assert len(task.pairs(split)) == len(facts.PAIR_KINDS) * len(qs)
        assert {d.prompt for d in task.demonstrations(split)} == prompts
    wrong = task.pairs("val", kinds="wrong_answer")
    assert wrong == [p for p in task.pairs("val") if p.kind == "wrong_answer"]
    # seeded: the same seed gives the same split
    assert [q.text for q in facts.make_task(0).questions("val")] == [q.text for q in val]


def test_heldout_questions_in_no_demonstration_or_train_pair(task):
    held = {q.prompt for q in task.questions("heldout")}
    demos = task.demonstrations("train")
    pairs = task.pairs("train")
    assert demos and pairs
    assert not held & {d.prompt for d in demos}
    assert not held & {p.prompt for p in pairs}
    # no held-out question appears anywhere in a demonstration or a train pair, not even as a rejected
    # continuation (answer sentences are not unique — "It is red." — so the question is what is held out)
    texts = [d.prompt + d.completion for d in demos] + [p.prompt + p.chosen + p.rejected for p in pairs]
    for q in task.questions("heldout"):
        assert not any(q.text in t for t in texts), q
    # heldout pairs exist (to measure the reward model / DPO) and use only held-out prompts
    assert {p.prompt for p in task.pairs("heldout")} == held


def test_base_corpus_holds_heldout_qa_only_when_asked(task):
    # default: the base model reads every fact (knowledge from pretraining), so held-out Q->A do appear
    held = {q.text: q.answer_text() for q in task.questions("heldout")}
    qa = set(answer_lines_in_base(task))
    assert any((q, a) in qa for q, a in held.items())
    small = facts.make_task(1, n_base_docs=3000, heldout_in_base=False)
    held = small.questions("heldout")
    for q in held:
        assert q.text not in small.base_corpus, q.text
    assert len(held) == 12 and "?" in small.base_corpus


# ---------------------------------------------------------------- the rule scorer


def test_score_hand_made_examples(task):
    q = next(q for q in task.questions("heldout") if q.relation == "capital")
    right = q.answer_text()
    wrong_city = next(c for c in task.cities if c != q.answer)
    other = next(o for o in task.questions() if o.text != q.text)
    other_rel = next(o for o in task.questions() if o.relation == "inventor")
    cases = [
        # (completion, answered, correct, clean)
        (right, True, True, True),
        (right + facts.EOS, True, True, True),
        (right + "\n", True, True, True),
        (" " + right, True, True, True),  # a leading space is tolerated
        (right + " What is the capital of Zzz?", True, True, False),  # answers, then junk on the line
        (right + " and more", True, True, False),
        (right + "\nThe market is closed on Sundays.", True, True, True),  # later lines are not read
        (right + facts.EOS + "anything at all", True, True, True),  # nor what follows <eos>
        (q.answer_text(wrong_city), True, False, True),  # a wrong answer
        (q.answer_text(wrong_city) + facts.EOS, True, False, True),
        (q.answer_text(q.answer + "ia"), True, False, True),  # a near miss is wrong
        (other.text, False, False, False),  # another question
        (q.text, False, False, False),  # the same question again
        ("The old mill is closed on Sundays.", False, False, False),  # unrelated text
        (other_rel.answer_text(), False, False, False),  # another relation's answer
        ("", False, False, False),  # nothing
        (facts.EOS, False, False, False),
        ("\n" + right, False, False, False),  # the answer is not on line one
        (right[:-1], False, False, False),  # no full stop: unfinished
        ("Its capital is .", False, False, False),  # an empty slot
        (f"Its capital is {q.answer.lower()}.", False, False, False),  # not a name
        (f"its capital is {q.answer}.", False, False, False),
        (f"Its capital is {q.answer}!", False, False, False),
        (
            f"Its capital is {q.answer}{q.answer.lower()}.",
            True,
            False,
            True,
        ),  # a made-up name: answered, wrong
    ]
    for text, answered, correct, clean in cases:
        s = task.score(q, text)
        assert (s["answered"], s["correct"], s["clean"]) == (answered, correct, clean), (text, s)
        assert s["answer"] == (re.search(r" is (\w+)\.", text).group(1) if answered else None), (text, s)
    # the question may be given by its text or its prompt
    assert task.score(q.text, right)["correct"] and task.score(q.prompt, right)["correct"]


def test_score_every_relation(task):
    for rel in facts.RELATIONS:
        q = next(q for q in task.questions() if q.relation == rel)
        assert task.score(q, q.answer_text() + facts.EOS) == {
            "answered": True,
            "correct": True,
            "clean": True,
            "answer": q.answer,
        }
        wrong = next(
            p
            for p in task.pairs("heldout") + task.pairs("train")
            if p.prompt == q.prompt and p.kind == "wrong_answer"
        )
        s = task.score(q, wrong.rejected)
        assert s["answered"] and not s["correct"], (rel, wrong.rejected, s)
    with pytest.raises(nf.InvalidArgumentError, match="not a question"):
        task.score("What is the capital of Nowhere?", "x")


def test_every_pair_prefers_a_correct_answer_to_a_non_answer_or_wrong_one(task):
    for split in ("train", "heldout"):
        pairs = task.pairs(split)
        assert len(pairs) == 4 * len(task.questions(split))
        assert {p.kind for p in pairs} == set(facts.PAIR_KINDS)
        for p in pairs:
            c, r = task.score(p.prompt, p.chosen), task.score(p.prompt, p.rejected)
            assert (
                c["correct"]
                and c["clean"]
                and p.chosen.endswith(facts.EOS)
                and p.rejected.endswith(facts.EOS)
            )
            assert not r["correct"], p
            assert r["answered"] == (p.kind == "wrong_answer"), p
            assert p.chosen != p.rejected
    for d in task.demonstrations("train"):
        assert task.score(d.prompt, d.completion) == {
            "answered": True,
            "correct": True,
            "clean": True,
            "answer": task.question(d.prompt).answer,
        }


# ---------------------------------------------------------------- the base corpus


def test_base_corpus_continues_questions_more_often_than_it_answers(task):
    follow = [(q, nxt) for q, nxt in answer_lines_in_base(task) if q.endswith("?")]
    answered = sum(task.score(q, nxt)["answered"] for q, nxt in follow) / len(follow)
    assert 0.20 <= answered <= 0.30, answered  # p_answer = 0.25
    questions = sum(nxt.endswith("?") for _, nxt in follow) / len(follow)
    assert questions >= 0.45, questions  # another one or a repetition
    # the answers it does give are correct, and unrelated lines are never an answer sentence
    assert all(task.score(q, nxt)["correct"] for q, nxt in follow if task.score(q, nxt)["answered"])
    docs = task.base_corpus.split(facts.EOS)
    assert docs[-1] == "" and len(docs) - 1 == 20000


def test_unrelated_lines_never_answer_anything(task):
    import random

    rng = random.Random(0)
    qs = task.questions()
    for _ in range(500):
        line = task.unrelated(rng)
        assert not line.endswith("?")
        assert not any(task.score(q, line)["answered"] for q in qs[::7]), line


# ---------------------------------------------------------------- tokenizer and tensors


def test_tokenizer_round_trip_and_specials(task):
    tok = task.tokenizer
    assert (tok.pad_id, tok.eos_id) == (0, 1) and tok.vocab_size == len(facts.ALPHABET) + 2 == 71
    text = task.base_corpus[:5000]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids.count(tok.eos_id) == text.count(facts.EOS)
    assert tok.decode(ids, skip_special=True) == text.replace(facts.EOS, "")
    assert tok.encode("a<eos><pad>") == [tok.stoi["a"], 1, 0]
    assert task.stop_ids == (tok.eos_id, tok.stoi["\n"])
    assert facts.FactsTokenizer.from_dict(tok.to_dict()).itos == tok.itos
    with pytest.raises(nf.InvalidArgumentError, match="not in the alphabet"):
        tok.encode("café")
    with pytest.raises(nf.InvalidArgumentError, match="outside the vocabulary"):
        tok.decode([71])


def test_batch_is_right_padded_with_masks(task):
    demos = task.demonstrations()[:3]
    b = task.batch([d.prompt for d in demos], [d.completion for d in demos])
    ids, attn, comp = b["input_ids"], b["attention_mask"], b["completion_mask"]
    assert ids.dtype == np.int64 and attn.dtype == bool and comp.dtype == bool and ids.shape == attn.shape
    for r, d in enumerate(demos):
        p, c = task.tokenizer.encode(d.prompt), task.tokenizer.encode(d.completion)
        n = len(p) + len(c)
        assert ids[r, :n].tolist() == p + c and (ids[r, n:] == task.tokenizer.pad_id).all()
        assert attn[r].tolist() == [True] * n + [False] * (ids.shape[1] - n)
        assert comp[r].tolist() == [False] * len(p) + [True] * len(c) + [False] * (ids.shape[1] - n)
        assert ids[r, n - 1] == task.tokenizer.eos_id
    assert ids.shape[1] <= task.block_size
    with pytest.raises(nf.InvalidArgumentError, match="same number"):
        task.batch(["a"], [])


def test_every_sequence_fits_the_block_size(task):
    for p in task.pairs("train") + task.pairs("heldout"):
        for c in (p.chosen, p.rejected):
            assert len(task.tokenizer.encode(p.prompt + c)) <= task.block_size
    assert task.block_size <= 96 and task.max_new_tokens <= 64


def test_evaluate_scores_generations_by_rule(task):
    nf.manual_seed(0)
    model = nf.models.GPT(
        nf.models.GPTConfig(
            vocab_size=task.tokenizer.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16
        )
    )
    r = task.evaluate(model, "heldout", samples_per_question=2, max_new_tokens=8)
    assert r["n"] == 2 * len(task.questions("heldout")) == len(r["samples"])
    assert r["answer_rate"] == 0.0 and r["accuracy"] == 0.0  # an untrained model answers nothing
    for q, c, s in r["samples"]:
        assert s == task.score(q, c) and len(task.tokenizer.encode(c)) <= 8
    assert (
        task.evaluate(model, "heldout", max_new_tokens=8, seed=3)["samples"]
        == task.evaluate(model, "heldout", max_new_tokens=8, seed=3)["samples"]
    )


# ---------------------------------------------------------------- seeds and sizes


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = (
        facts.make_task(5, n_base_docs=2000),
        facts.make_task(5, n_base_docs=2000),
        facts.make_task(6, n_base_docs=2000),
    )
    assert a.base_corpus == b.base_corpus
    assert a.questions("train") == b.questions("train") and a.questions("heldout") == b.questions("heldout")
    assert a.pairs("train") == b.pairs("train") and a.demonstrations() == b.demonstrations()
    assert a.base_corpus != c.base_corpus
    assert {q.subject for q in a.questions()} != {q.subject for q in c.questions()}
    assert a.pairs("train") != c.pairs("train")


def test_sizes_follow_the_arguments():
    t = facts.make_task(2, n_per_relation=10, heldout_fraction=0.2, n_base_docs=500)
    assert len(t.questions()) == 40 and len(t.questions("heldout")) == 8 and len(t.questions("train")) == 32
    assert len(t.demonstrations()) == 32 and len(t.pairs()) == 128 and len(t.pairs("heldout")) == 32
    assert t.base_corpus.count(facts.EOS) == 500
    assert len({q.subject for q in t.questions()}) == 40  # every name is one thing
    default = facts.make_task(0)
    assert 1_000_000 <= len(default.base_corpus) <= 3_000_000  # ≈ 1.8M characters: a minute's reading
    none_held = facts.make_task(2, n_per_relation=4, heldout_fraction=0.0, n_base_docs=10)
    assert none_held.questions("heldout") == [] and len(none_held.questions("train")) == 16


def test_p_answer_takes_effect():
    hi = facts.make_task(3, n_base_docs=3000, p_answer=0.9, p_question=0.05, p_repeat=0.05)
    follow = [(q, n) for q, n in answer_lines_in_base(hi) if q.endswith("?")]
    assert sum(hi.score(q, n)["answered"] for q, n in follow) / len(follow) > 0.8


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"seed": "0"}, "seed"),
        ({"n_per_relation": 1}, "n_per_relation"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"n_base_docs": -1}, "n_base_docs"),
        ({"p_answer": 1.5}, "p_answer"),
        ({"p_answer": 0.5, "p_question": 0.4, "p_repeat": 0.2}, "> 1"),
    ],
)
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(nf.InvalidArgumentError, match=match):
        facts.make_task(**kw)


def test_split_names_are_checked(task):
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        task.questions("test")
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        task.pairs("all")
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        task.evaluate(None, "validation")


def test_pairs_kinds_filter(task):
    only = task.pairs("train", kinds=("continuation", "unrelated"))
    assert {p.kind for p in only} == {"continuation", "unrelated"} and len(only) == 2 * len(
        task.questions("train")
    )
    assert task.pairs("train", kinds="wrong_answer") == [
        p for p in task.pairs("train") if p.kind == "wrong_answer"
    ]
    with pytest.raises(nf.InvalidArgumentError, match="kinds"):
        task.pairs("train", kinds=("helpful",))
    with pytest.raises(nf.InvalidArgumentError, match="kinds"):
        task.pairs("train", kinds=())


# ---------------------------------------------------------------- helpers for the trainers and notebooks


class Scripted:
    """A stand-in model whose completion of each question is ``reply(question, prompt_text)``; generation
    stops after the first stop token, as the real ``generate`` does."""

    def __init__(self, task, reply):
        self.task, self.reply = task, reply

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, seed=None, stop_tokens=()):
        out = []
        for p in prompts:
            text = self.task.tokenizer.decode(p)
            q = self.task.question(text.split("\n", 1)[0])
            ids = self.task.tokenizer.encode(self.reply(q, text))[:max_new_tokens]
            stop = next((i for i, t in enumerate(ids) if t in stop_tokens), None)
            out.append(ids if stop is None else ids[: stop + 1])
        return out, [[0.0] * len(t) for t in out]


def test_token_id_helpers_round_trip(task):
    dec = task.tokenizer.decode
    ex = task.example_ids()
    assert len(ex) == len(task.demonstrations("train"))
    assert [(dec(p), dec(c)) for p, c in ex] == [(e.prompt, e.completion) for e in task.demonstrations()]
    pairs = task.pairs("heldout")[:5]
    got = [tuple(map(dec, r)) for r in task.pair_ids(pairs)]
    assert got == [(p.prompt, p.chosen, p.rejected) for p in pairs]
    ps = task.prompt_ids("heldout")
    assert [dec(p["prompt"]) for p in ps] == [q.prompt for q in task.questions("heldout")]
    assert [p["question"] for p in ps] == [q.text for q in task.questions("heldout")]


def test_rule_fn_is_the_scorer(task):
    q, other = task.questions("train")[:2]
    wrong = next(v for v in task.cities + task.people if v != q.answer and v[0].isupper())
    answered, correct, clean = task.rule_fn("answered"), task.rule_fn("correct"), task.rule_fn("clean")
    assert answered.__name__ == "rule_answered"
    cases = {
        q.answer_text(): (1, 1, 1),
        q.answer_text() + " " + other.text: (1, 1, 0),
        q.answer_text(wrong if q.relation != "color" else "red" if q.answer != "red" else "blue"): (1, 0, 1),
        other.text: (0, 0, 0),
        q.text: (0, 0, 0),
        "": (0, 0, 0),
    }
    for completion, want in cases.items():
        got = tuple(f(q.prompt, completion, question=q.text) for f in (answered, correct, clean))
        assert got == want, (completion, got, want)
    with pytest.raises(nf.InvalidArgumentError, match="decode"):
        answered(task.tokenizer.encode(q.prompt), [1, 2])
    with pytest.raises(nf.InvalidArgumentError, match="what"):
        task.rule_fn("helpful")


def test_evaluate_sampled_pairs_and_probe_on_a_scripted_model(task):
    held = {q.text for q in task.questions("heldout")}

    def reply(q, text):  # answers the train questions, continues the held-out ones with another question
        if text.endswith(q.prompt):
            other = task.questions("train")[0].text + "\n"
            return q.answer_text() + facts.EOS if q.text not in held else other
        head = text[len(q.prompt):]  # the knowledge probe: the value it knows, then stop
        return q.answer_text()[len(head):] + facts.EOS if q.text not in held else "Zzz." + facts.EOS

    m = Scripted(task, reply)
    tr, he = task.evaluate(m, "train", samples_per_question=2), task.evaluate(m, "heldout")
    n_train = len(task.questions("train"))
    assert (tr["answer_rate"], tr["accuracy"], tr["clean_rate"], tr["n"]) == (1, 1, 1, 2 * n_train)
    assert (he["answer_rate"], he["accuracy"], he["n"]) == (0, 0, len(held))
    assert task.knowledge_probe(m, "train") == 1.0 and task.knowledge_probe(m, "heldout") == 0.0
    assert task.sampled_pairs(m, "train") == []  # every sample right: nothing to prefer against
    pairs = task.sampled_pairs(m, "heldout", samples_per_question=3)
    assert len(pairs) == 3 * len(held) and {p.kind for p in pairs} == {"sampled"}
    for p in pairs:
        q = task.question(p.prompt)
        assert p.chosen == q.answer_text() + facts.EOS
        assert p.rejected == task.questions("train")[0].text + "\n"
    with pytest.raises(nf.InvalidArgumentError, match="samples_per_question"):
        task.evaluate(m, samples_per_question=0)


def test_evaluate_kl_to_a_reference_is_the_log_ratio_of_the_samples(task):
    nf.manual_seed(0)
    cfg = nf.models.GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=task.block_size, n_layer=1,
                              n_head=2, n_embd=32)
    a, b = nf.models.GPT(cfg), nf.models.GPT(cfg)
    same = task.evaluate(a, "heldout", samples_per_question=2, seed=3, ref_model=a.copy())
    assert same["kl"] == 0.0 and same["kl_sem"] == 0.0
    r = task.evaluate(a, "heldout", samples_per_question=2, seed=3, ref_model=b)
    qs = [q for q in task.questions("heldout") for _ in range(2)]
    prompts = [task.tokenizer.encode(q.prompt) for q in qs]
    toks, lps = a.generate(prompts, task.max_new_tokens, seed=3, stop_tokens=list(task.stop_ids))
    assert [task.tokenizer.decode(t) for t in toks] == [s[1] for s in r["samples"]]
    pk = nf.rl.pack(prompts, [list(t) for t in toks])
    with nf.no_grad():
        ref = nf.rl.sequence_logprobs(b, pk.input_ids, pk.completion_mask).numpy()
    want = np.mean([sum(lp) for lp in lps] - ref)  # generate reports log p under the sampling model
    assert r["kl"] == pytest.approx(want, rel=1e-4, abs=1e-4) and r["kl_sem"] > 0


def test_base_model_is_cached_atomically_and_keyed_by_its_settings(tmp_path):
    t = facts.make_task(0, n_base_docs=200)
    kw = dict(n_layer=1, n_head=2, n_embd=32, steps=3, block_size=t.block_size, directory=str(tmp_path))
    m1, i1 = facts.base_model(t, **kw)
    assert not i1["cached"] and i1["steps"] == 3 and i1["tokens"] == 3 * 16 * t.block_size
    assert 0.0 <= i1["knowledge"] <= 1.0 and i1["seconds"] > 0
    rng = nf.get_rng_state()
    m2, i2 = facts.base_model(t, **kw)
    assert i2["cached"] and i2["path"] == i1["path"] and nf.get_rng_state() == rng  # loading draws nothing
    for (k, v), (k2, v2) in zip(sorted(m1.state_dict().items()), sorted(m2.state_dict().items())):
        assert k == k2 and np.array_equal(np.asarray(v), np.asarray(v2)), k
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    _, i3 = facts.base_model(t, **{**kw, "seed": 1})
    _, i4 = facts.base_model(facts.make_task(1, n_base_docs=200), **kw)
    assert len({i1["path"], i3["path"], i4["path"]}) == 3 and not i3["cached"] and not i4["cached"]
    _, i5 = facts.base_model(t, **{**kw, "cache": False})
    assert not i5["cached"] and i5["path"] is None
    with pytest.raises(nf.InvalidArgumentError, match="block_size"):
        facts.base_model(t, **{**kw, "block_size": t.block_size - 1})
    with pytest.raises(nf.InvalidArgumentError, match="steps"):
        facts.base_model(t, **{**kw, "steps": 0})
