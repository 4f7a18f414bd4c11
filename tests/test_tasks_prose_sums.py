"""nf.tasks.prose_sums (Part 8's task) and its rule rewards: the held-out split in neither the pretraining
text nor the RL prompts, the text never showing the prompt's layout or a question answered, levels, seeded
reproducibility, the column words right, the answer parser against hand-made and hostile completions, and
bad arguments refused."""

import random
import re

import nanofrontier as nf
import pytest
from nanofrontier.rl import rewards
from nanofrontier.tasks import prose_sums as ps

NUMBER = re.compile(r"\d+")


def told(line):
    """(a, b, the sum told) of a text line: every frame names a then b first and ends with the sum."""
    nums = [int(x) for x in NUMBER.findall(line)]
    return nums[0], nums[1], nums[-1]


def pairs_in(text):
    return {told(line)[:2] for line in text.splitlines()}


# ---------------------------------------------------------------- splits and the text


def test_heldout_pairs_are_in_neither_the_text_nor_the_rl_prompts():
    test = {(p.a, p.b) for p in ps.all_pairs("test")}
    train = {(p.a, p.b) for p in ps.all_pairs("train")}
    assert len(test) + len(train) == 90 * 90 and not test & train
    # one in five held out (by hash), give or take
    assert 0.17 < len(test) / 8100 < 0.23, len(test)
    text = ps.corpus(5000, seed=3)
    seen = pairs_in(text)
    assert seen and not seen & test, sorted(seen & test)[:5]
    assert len(seen) > 2500  # 5000 lines cover much of the train split
    rl = {(p.a, p.b) for p in ps.generate(2000, split="train", seed=1)}
    assert not rl & test
    held = ps.generate(300, split="test", seed=1)
    assert all(ps.split_of(p.a, p.b) == "test" for p in held)
    # the split is the pair's, not the seed's
    for seed in range(3):
        assert not {(p.a, p.b) for p in ps.generate(200, split="test", seed=seed)} & train


def test_the_text_never_shows_the_prompt_layout_or_an_answered_question():
    text = ps.corpus(5000, seed=0)
    assert "question" not in text and "answer" not in text and "?" not in text
    assert "." + " answer" not in text
    lines = text.splitlines()
    assert len(lines) == 5000 and all(line.endswith(".") for line in lines)
    assert set(text) <= set(ps.ALPHABET)
    # half the lines work the columns out, the other half only tell the sum
    worked = sum("=" in line for line in lines) / len(lines)
    assert 0.45 < worked < 0.55, worked
    # every sum told is right, and every worked line's columns are those of a + b
    for line in lines:
        a, b, c = told(line)
        assert c == a + b, line
        assert "=" not in line or f" {ps.columns(a, b)}, so {c}." in line, line


def test_corpus_is_seeded():
    assert ps.corpus_lines(50, seed=4) == ps.corpus_lines(50, seed=4)
    assert ps.corpus_lines(50, seed=4) != ps.corpus_lines(50, seed=5)
    assert ps.corpus(3, seed=0) == "".join(line + "\n" for line in ps.corpus_lines(3, seed=0))


def test_columns_words_are_the_column_addition():
    assert ps.columns(347, 285) == "7+5=12, 4+8+1=13, 3+2+1=6"
    assert ps.columns(35, 92) == "5+2=7, 3+9=12"
    assert ps.columns(99, 1) == "9+1=10, 9+0+1=10"
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        cols = ps.columns(a, b).split(", ")
        total = sum(int(c.split("=")[1]) % 10 * 10 ** i for i, c in enumerate(cols))
        total += int(cols[-1].split("=")[1]) // 10 * 10 ** len(cols)
        assert total == a + b, (a, b, cols)


# ---------------------------------------------------------------- generation and levels


@pytest.mark.parametrize("digits,level", [(2, 0), (2, 1), (2, 2), (3, 3), (1, 1)])
def test_levels_are_the_number_of_carries(digits, level):
    n = 20 if digits == 1 else 100
    ps_ = ps.generate(n, split="train", seed=2, digits=digits, level=level)
    assert len(ps_) == n and len({(p.a, p.b) for p in ps_}) == n
    assert all(ps.carries(p.a, p.b) == level == p.level for p in ps_)
    assert all(len(str(p.a)) == len(str(p.b)) == digits and p.answer == p.a + p.b for p in ps_)


def test_generation_is_seeded_and_prompts_render():
    assert ps.generate(40, seed=7) == ps.generate(40, seed=7)
    assert ps.generate(40, seed=7) != ps.generate(40, seed=8)
    p = ps.Problem(35, 92, 127, 1)
    assert ps.prompt(p) == "question: 35 + 92. answer:"
    assert ps.worked_answer(p) == " 5+2=7, 3+9=12, so 127."
    d = p.as_dict()
    assert d == {"prompt": "question: 35 + 92. answer:", "answer": 127, "level": 1}
    assert p.as_dict(encode=lambda s: [len(s)])["prompt"] == [len(ps.prompt(p))]


def test_bad_arguments_are_refused():
    with pytest.raises(nf.InvalidArgumentError, match="split"):
        ps.generate(3, split="heldout")
    with pytest.raises(nf.InvalidArgumentError, match="carries"):
        ps.generate(3, level=3, digits=2)
    with pytest.raises(nf.InvalidArgumentError, match="digits"):
        ps.generate(3, digits=0)
    with pytest.raises(nf.InvalidArgumentError, match="n must"):
        ps.generate(-1)
    with pytest.raises(nf.InvalidArgumentError, match="n_lines"):
        ps.corpus(2.5)
    with pytest.raises(nf.InvalidArgumentError, match="could not draw"):
        ps.generate(100, split="test", digits=1)  # 81 one-digit pairs, about 16 held out
    with pytest.raises(nf.InvalidArgumentError, match="up to 3-digit"):
        ps.all_pairs("train", digits=4)


# ---------------------------------------------------------------- the rule: parser and rewards


@pytest.mark.parametrize("text,want", [
    (" 127.", 127),
    (" 5+2=7, 3+9=12, so 127.", 127),
    (" 5+2=7, 3+9=12, so 127.\n", 127),
    ("127.", 127),
    (" so it is 0127.", 127),
    (" 5+2=7, so 12. 7.", None),        # two sentences
    (" 127", None),                      # no full stop
    (" 127 .", None),                    # the number must end the sentence
    (" so.", None),
    (".", None),
    ("", None),
    (" 12.7.", None),
    (" -127.", None),                    # '-' is not in the sentence alphabet
    (" The answer is 127.", None),       # capitals are not either
    (" 1e3.", None),                     # a number, not the tail of a word
    (" abc127.", None),
    (" 127.\n\n", 127),
    ("\n127.", None),
    (" 12" + "3" * 300 + ".", None),     # too long
    (None, None),
    (127, None),
    (b" 127.", None),
])
def test_parse_answer_on_hand_made_and_hostile_completions(text, want):
    assert ps.parse_answer(text) == want


def test_parser_never_raises_on_random_text():
    rng = random.Random(0)
    alphabet = ps.ALPHABET + "()-*/<>é\x00"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        got = ps.parse_answer(s)
        assert got is None or (isinstance(got, int) and got >= 0)


def test_rewards_follow_the_rule():
    p = ps.Problem(35, 92, 127, 1)
    assert rewards.sentence_answer_reward(ps.worked_answer(p), answer=127) == 1.0
    assert rewards.sentence_answer_reward(" 127.", answer=127, level=1, prompt="x") == 1.0
    assert rewards.sentence_answer_reward(" 128.", answer=127) == 0.0
    assert rewards.sentence_answer_reward(" 127", answer=127) == 0.0
    assert rewards.sentence_answer_reward(" 1.", answer=True) == 0.0
    assert rewards.sentence_format_reward(" 128.") == 1.0
    assert rewards.sentence_format_reward(" 5+2=7, 3+9=12, so 127.") == 1.0
    assert rewards.sentence_format_reward(" 127") == 0.0
    assert rewards.sentence_format_reward(None) == 0.0
    assert rewards.sentence_answer_reward.is_correctness_rule
    assert ps.score(p, " 127.") == 1.0 and ps.score(p, " 126.") == 0.0
    for q in ps.generate(100, seed=0, digits=3):
        assert ps.score(q, ps.worked_answer(q)) == 1.0
        assert ps.is_worked(ps.worked_answer(q)) and not ps.is_worked(f" {q.answer}.")


def test_rewards_drive_a_grpo_trainer():
    """The rewards plug into GRPOTrainer as the notebook uses them (one tiny step, a real model)."""
    tok = nf.tokenizer.CharTokenizer(ps.ALPHABET)
    nf.manual_seed(0)
    model = nf.models.GPT(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16)
    prompts = [p.as_dict(encode=tok.encode) for p in ps.generate(4, seed=0)]
    trainer = nf.rl.GRPOTrainer(
        model, nf.optim.AdamW(model.parameters(), lr=1e-3), prompts,
        [rewards.sentence_answer_reward, rewards.sentence_format_reward], reward_weights=[1.0, 0.1],
        decode=tok.decode, num_generations=2, prompts_per_step=2, max_new_tokens=8,
        stop_tokens=[tok.stoi["\n"]], loss_type="dr_grpo", scale_rewards="none", max_steps=1, progress=False,
        diagnostics=False)
    row = list(trainer.train())[-1]
    assert "accuracy" in row and 0.0 <= row["reward_mean"] <= 1.1
