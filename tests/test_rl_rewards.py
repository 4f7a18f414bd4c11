"""nf.rl.rewards: the rule rewards on hand-made completions (formatting rules, strict and lenient format,
countdown), hostile text, and plugged straight into nf.rl.GRPOTrainer (called by keyword with the prompt
dicts' fields; correctness_reward drives the accuracy metric)."""

import time

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.rl import correctness_reward, countdown_reward, format_reward, lenient_format_reward


@pytest.mark.parametrize("text,answer,want", [
    ("Answer: 42", 42, 1.0),
    ("5+6+0=11\nAnswer:   8741  \n", 8741, 1.0),
    ("answer: 1,234.", 1234, 1.0),
    ("<think>2+2</think><answer> 4 </answer>", "4", 1.0),
    ("<answer>4.0</answer>", 4, 1.0),
    ("The final answer is: 1/2", "2/4", 1.0),
    ("<answer>Paris</answer>", " Paris ", 1.0),
    ("Answer: 41", 42, 0.0),
    ("Answer: 42 or 43", 42, 0.0),
    ("42", 42, 0.0),                      # no marker: no answer
    ("Answer: 12,34", 1234, 0.0),
    ("Answer: 1\nAnswer: 2", 1, 0.0),     # the last answer counts
    ("", 0, 0.0),
])
def test_correctness_reward(text, answer, want):
    assert correctness_reward(text, answer) == want
    assert correctness_reward(completion=text, answer=answer, level=3) == want  # extras ignored


def test_format_rewards_strict_and_lenient():
    good = "<think>\n3+4=7\n</think>\n<answer>7</answer>"
    cases = {  # text: (strict, lenient)
        good: (1.0, 1.0),
        "  " + good + "\n": (1.0, 1.0),
        "3+4=7\n</think><answer>7</answer>": (0.0, 1.0),       # prompt ended with <think>
        "sure! <think>x</think> so <answer>7</answer> done": (0.0, 1.0),
        "<think>x</think><answer> </answer>": (0.0, 0.0),
        "<answer>7</answer>": (0.0, 0.5),
        "<think>x</think><think>y</think><answer>7</answer>": (0.0, 1.0),
        "<think>x<answer>7</answer></think><answer>7</answer>": (0.0, 1.0),
        "<answer>7</answer><think>x</think>": (0.0, 0.0),
        "7": (0.0, 0.0),
        "": (0.0, 0.0),
    }
    for text, (s, l) in cases.items():
        assert (format_reward(text), lenient_format_reward(text)) == (s, l), text


def test_countdown_reward():
    kw = {"numbers": [7, 25, 3], "target": 54}
    assert countdown_reward("<think>25-7=18</think><answer>(25-7)*3</answer>", **kw) == 1.0
    assert countdown_reward("Answer: (25 - 7) × 3 = 54", **kw) == 1.0
    assert countdown_reward("(25-7)*3", **kw) == 1.0      # no marker: the whole text
    assert countdown_reward("<answer>(25-7)*3*1</answer>", **kw) == 0.0
    assert countdown_reward("<answer>25+25+3</answer>", **kw) == 0.0
    assert countdown_reward("<answer>54</answer>", **kw) == 0.0
    assert countdown_reward(None, **kw) == 0.0


def test_rewards_are_bounded_in_time_on_hostile_text():
    junk = ["<answer>" * 20_000, "</think>" * 20_000, "Answer:" * 20_000, "(" * 100_000,
            "<think>" + "x" * 100_000, "answer" + " " * 100_000]
    for text in junk:
        t0 = time.perf_counter()
        for f in (correctness_reward, format_reward, lenient_format_reward):
            assert f(text, **({"answer": 1} if f is correctness_reward else {})) in (0.0, 0.5, 1.0)
        assert countdown_reward(text, numbers=[1], target=1) == 0.0
        assert time.perf_counter() - t0 < 1.0, text[:20]


CHARS = "\n0123456789+=:<>/abcdehinrstwAk "


def test_rewards_plug_into_grpo_trainer():
    """correctness + format rewards through GRPOTrainer: extras by name, accuracy from correctness."""
    stoi = {c: i for i, c in enumerate(CHARS)}
    nf.manual_seed(0)
    model = nf.models.GPT(vocab_size=len(CHARS), block_size=48, n_layer=1, n_head=2, n_embd=32)
    prompts = [{"prompt": [stoi[c] for c in f"{a}+{b}=\n"], "answer": a + b, "level": 0}
               for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]
    seen = []

    def spy(completion, answer):
        seen.append((completion, answer))
        return 0.0

    opt = nf.optim.AdamW(model.parameters(), lr=1e-3)
    tr = nf.rl.GRPOTrainer(model, opt, prompts, [correctness_reward, format_reward, spy],
                           reward_weights=[1.0, 0.1, 0.0], num_generations=4, prompts_per_step=2,
                           max_new_tokens=8, decode=lambda ids: "".join(CHARS[i] for i in ids),
                           max_steps=2, progress=False, diagnostics=False, seed=0)
    h = tr.train()
    assert len(h) == 2 and {"reward/correctness_reward", "reward/format_reward", "accuracy"} <= set(h[-1])
    assert all(isinstance(c, str) for c, _ in seen) and {a for _, a in seen} <= {3, 7, 4, 6}
    assert len(seen) == 2 * 2 * 4
    # and the scores the trainer computed equal the functions applied by hand
    rows = tr.rewards.score(["p"] * 3, ["Answer: 3", "<think>a</think><answer>7</answer>", "x"],
                            [{"answer": 3}, {"answer": 7}, {"answer": 4}], np.arange(3))
    assert rows[1].tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    assert rows[2].tolist() == [True, True, False]


def test_countdown_reward_plugs_into_grpo_trainer():
    from nanofrontier.tasks import countdown as cd
    tr_rewards = nf.rl._online.RewardFunctions("t", [countdown_reward, lenient_format_reward])
    p = cd.generate(1, 3, seed=0)[0]
    ex = {"numbers": list(p.numbers), "target": p.target, "level": 3}
    _, per, correct = tr_rewards.score(["q", "q"], [f"</think><answer>{p.solution}</answer>", "1+1"],
                                       [ex, ex], np.arange(2))
    assert per.tolist() == [[1.0, 0.0], [1.0, 0.0]] and correct.tolist() == [True, False]
