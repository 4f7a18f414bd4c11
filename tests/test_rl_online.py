"""Online RL: rollouts (layout, alignment with a plain forward, seeds, refusals), GRPOTrainer and
PPOTrainer each raising a rule-based reward on a tiny GPT, the diagnostics they own fired by provoked runs,
checkpoint/resume equal to the uninterrupted run bit for bit, Ctrl-C, and bad input refused clearly."""

import math
import os
import signal
import warnings

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.rl._online import token_logprobs_and_entropy
from nanofrontier.rl.grpo_trainer import GRPOTrainer
from nanofrontier.rl.ppo_trainer import PPOTrainer
from nanofrontier.rl.rollout import rollout

V, TARGET, STOP = 16, 7, 0


def tiny(seed=0, **kw):
    nf.manual_seed(seed)
    return nf.models.GPT(vocab_size=V, block_size=32, n_layer=1, n_head=2, n_embd=32, **kw)


def prompts_of(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, V, int(rng.integers(1, 5))).tolist() for _ in range(n)]


def frac_target(prompt, completion):
    """The fraction of the completion's tokens that are TARGET (the rule both trainers must raise)."""
    return sum(t == TARGET for t in completion) / max(len(completion), 1)


def value_model(seed=1):
    return nf.rl.ValueModel(tiny(seed))


def same_run(a, b):
    """Two trainers ended in the same state: history (without clock readings), every model's parameters
    and every optimizer's state bit for bit, and the global generator."""
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b.history]
    for (name, p), (_, q) in zip(a._run_params(), b._run_params()):
        assert np.array_equal(p.numpy(), q.numpy()), f"parameter {name} differs"
    for oa, ob in zip(a.optimizer.optimizers, b.optimizer.optimizers):
        sa, sb = oa.state_dict(), ob.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for x, y in zip(sa["state"], sb["state"]):
            for u, w in zip(x[:2], y[:2]):
                assert np.array_equal(u, w)
            assert x[2] == y[2]


# ------------------------------------------------------------------------------------------------ rollout


def test_rollout_layout_matches_the_conventions():
    m = tiny()
    prompts = [[1, 2, 3], [4], [5, 6]]
    g = 3
    ro = rollout(m, prompts, num_completions=g, max_new_tokens=6, seed=1, stop_tokens=[STOP])
    n, t = ro.input_ids.shape
    assert n == 9 and len(ro) == 9
    assert ro.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert t == int((ro.prompt_lengths + ro.lengths).max())
    assert ro.logprobs.shape == (n, t - 1) and ro.logprobs.dtype == np.float32
    for r in range(n):
        p, c = prompts[ro.prompt_index[r]], ro.completions[r]
        lp, lc = len(p), len(c)
        assert ro.prompt_lengths[r] == lp and ro.lengths[r] == lc and 1 <= lc <= 6
        assert ro.input_ids[r, :lp + lc].tolist() == p + c  # prompt then completion, then padding
        assert not ro.attention_mask[r, lp + lc:].any() and ro.attention_mask[r, :lp + lc].all()
        assert ro.completion_mask[r].tolist() == [False] * lp + [True] * lc + [False] * (t - lp - lc)
        assert (STOP not in c[:-1]) and ro.truncated[r] == (lc == 6 and c[-1] != STOP)
        assert np.all(ro.logprobs[r, ~ro.token_mask[r]] == 0)
    # the sampling log-probs are the model's own: a plain forward over each row gives the same numbers
    full = m.token_logprobs(ro.input_ids[:, :-1], ro.input_ids[:, 1:]).numpy()
    np.testing.assert_allclose(ro.logprobs, np.where(ro.token_mask, full, 0), atol=3e-5)
    # and so does the trainers' one-forward helper (log-probs and entropy from the same logits)
    lp, ent = token_logprobs_and_entropy(m, ro.input_ids, entropy=True)
    np.testing.assert_allclose(np.where(ro.token_mask, lp.numpy(), 0), ro.logprobs, atol=3e-5)
    logits = m(ro.input_ids)[0].numpy().astype(np.float64)[:, :-1]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(ent.numpy(), -(p * np.log(p)).sum(-1), atol=1e-4)


def test_rollout_is_seeded_and_groups_differ():
    m = tiny()
    prompts = prompts_of(3)
    a = rollout(m, prompts, num_completions=4, max_new_tokens=8, seed=5)
    b = rollout(m, prompts, num_completions=4, max_new_tokens=8, seed=5)
    c = rollout(m, prompts, num_completions=4, max_new_tokens=8, seed=6)
    assert a.completions == b.completions and np.array_equal(a.logprobs, b.logprobs)
    assert a.completions != c.completions
    group = a.completions[:4]
    assert len({tuple(x) for x in group}) > 1  # the G samples of one prompt are not copies


def test_rollout_llama_and_truncation_without_stop_tokens():
    nf.manual_seed(0)
    cfg = nf.models.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    m = nf.models.Llama(cfg)
    ro = rollout(m, [[1, 2], [3, 4, 5, 6]], num_completions=2, max_new_tokens=5, seed=0)
    assert ro.truncated.all() and (ro.lengths == 5).all()  # no stop token: every row used the budget
    full = m.token_logprobs(ro.input_ids[:, :-1], ro.input_ids[:, 1:]).numpy()
    np.testing.assert_allclose(ro.logprobs, np.where(ro.token_mask, full, 0), atol=3e-5)


def test_rollout_refuses_bad_input():
    m = tiny()  # 32 positions
    with pytest.raises(nf.InvalidArgumentError, match=r"prompt 1 has 30 tokens, so max_new_tokens=5 would "
                                                      r"need 35 positions; the model has 32"):
        rollout(m, [[1], [2] * 30], max_new_tokens=5)
    with pytest.raises(nf.InvalidArgumentError, match="prompt 0 has 32 tokens, which leaves no room"):
        rollout(m, [[1] * 32], max_new_tokens=1)
    with pytest.raises(nf.InvalidArgumentError, match="prompt 1 is empty"):
        rollout(m, [[1], []], max_new_tokens=2)
    with pytest.raises(nf.InvalidArgumentError, match=r"prompt 0 holds token id 16, outside the model's "
                                                      r"vocabulary \[0, 16\)"):
        rollout(m, [[16]], max_new_tokens=2)
    with pytest.raises(nf.InvalidArgumentError, match=r"element 0 is the int 1 \(for one prompt write"):
        rollout(m, [1, 2], max_new_tokens=2)
    with pytest.raises(nf.InvalidArgumentError, match="num_completions must be an integer >= 1"):
        rollout(m, [[1]], num_completions=0, max_new_tokens=2)
    with pytest.raises(nf.InvalidArgumentError, match="max_new_tokens must be an integer >= 1"):
        rollout(m, [[1]], max_new_tokens=0)
    with pytest.raises(nf.InvalidArgumentError, match="give max_new_tokens"):
        rollout(m, [[1]])
    with pytest.raises(nf.InvalidArgumentError, match="stop token 99 is not a token id"):
        rollout(m, [[1]], max_new_tokens=2, stop_tokens=[99])


# ------------------------------------------------------------------------------------------------ GRPO


def grpo(model=None, prompts=None, reward_fns=frac_target, **kw):
    model = model or tiny()
    if kw.pop("sgd", False):  # plain SGD: unlike Adam, the step feels the loss's scale
        opt = nf.optim.SGD(model.parameters(), lr=0.5)
    else:
        opt = nf.optim.AdamW(model.parameters(), lr=kw.pop("lr", 3e-3))
    kw = {"num_generations": 8, "prompts_per_step": 4, "max_new_tokens": 8, "max_steps": 25,
          "progress": False, **kw}
    return GRPOTrainer(model, opt, prompts or prompts_of(8), reward_fns, **kw)


def test_grpo_raises_the_rule_reward():
    """reward = fraction of TARGET tokens; 25 steps of 4 prompts x 8 completions. Measured: 0.07 → ~0.9."""
    tr = grpo(diagnostics=False)  # (no stop token: every completion is "truncated", which would warn)
    h = tr.train()
    before, after = h[0]["reward_mean"], np.mean([r["reward_mean"] for r in h[-3:]])
    print(f"GRPO reward: step 0 {before:.3f}, last 3 steps {after:.3f}")
    assert before < 0.15 and after > 0.6, (before, after)
    assert h.stop_reason == "max_steps" and len(h) == 25
    row = h[-1]
    for k in ("loss", "reward_mean", "reward_std", "reward/frac_target", "entropy", "clip_fraction",
              "completion_length", "zero_std_fraction", "truncation_rate", "grad_norm", "time"):
        assert k in row and math.isfinite(row[k]), k
    assert h[-1]["entropy"] < h[0]["entropy"]


def test_grpo_first_pass_has_ratio_one_and_later_passes_clip():
    """The old log-probs come from a no-grad forward of the same policy: the training forward gives the
    very same numbers, so the first pass's ratio is exactly 1 (clip fraction 0); a second pass after a big
    step does clip."""
    m = tiny()
    ids = rollout(m, prompts_of(4), num_completions=2, max_new_tokens=6, seed=0).input_ids
    with nf.no_grad():
        a = token_logprobs_and_entropy(m, ids)[0].numpy()
    b = token_logprobs_and_entropy(m, ids)[0].numpy()
    assert np.array_equal(a, b)
    h = grpo(num_iterations=1, max_steps=3, lr=0.05, diagnostics=False).train()
    assert all(r["clip_fraction"] == 0.0 for r in h)
    # with dropout in the model too: the trainer runs it in eval mode, and gives the mode back
    m = tiny(dropout=0.3).train()
    h = grpo(model=m, num_iterations=1, max_steps=3, lr=0.05, diagnostics=False).train()
    assert all(r["clip_fraction"] == 0.0 for r in h) and m.training
    h = grpo(num_iterations=3, max_steps=3, lr=0.05, minibatch_size=16, diagnostics=False).train()
    assert max(r["clip_fraction"] for r in h) > 0.0


def test_grpo_extras_decode_weights_and_accuracy():
    seen = []

    def is_answer(prompt, completion, answer):
        seen.append((prompt, completion, answer))
        return 1.0 if completion.endswith(str(answer)) else 0.0

    is_answer.is_correctness_rule = True

    def length(completion, **kw):  # names no prompt: called by keyword, without it
        assert "answer" in kw and "tag" in kw and "prompt" not in kw
        return -len(completion) / 100

    def decode(ids):
        return "".join(chr(ord("a") + t) for t in ids)

    prompts = [{"prompt": [1, 2], "answer": "h", "tag": 0}, {"prompt": [3], "answer": "b", "tag": 1}]
    tr = grpo(prompts=prompts, reward_fns=[is_answer, length], reward_weights=[1.0, 0.5], decode=decode,
              num_generations=4, prompts_per_step=2, max_steps=2, stop_tokens=[STOP], diagnostics=False)
    h = tr.train()
    assert seen and all(isinstance(p, str) and isinstance(c, str) for p, c, _ in seen)
    assert {p: a for p, _, a in seen} == {"bc": "h", "d": "b"}  # each prompt with its own answer
    assert all("a" not in c for _, c, _ in seen)  # the stop token (id 0 = "a") is cut off
    ro, r = tr.last_rollout, tr.last_rewards
    comps = [decode(c[:-1] if c[-1] == STOP else c) for c in ro.completions]
    answers = [prompts[i]["answer"] for i in ro.source_index]
    want = [float(c.endswith(a)) - 0.5 * len(c) / 100 for c, a in zip(comps, answers)]
    np.testing.assert_allclose(r, want)
    assert h[-1]["accuracy"] == np.mean([c.endswith(a) for c, a in zip(comps, answers)])
    assert "reward/is_answer" in h[-1] and "reward/length" in h[-1]


def test_grpo_beta_uses_a_frozen_copy_and_measures_kl():
    m = tiny()
    w0 = m.state_dict()
    tr = grpo(model=m, beta=0.1, max_steps=4, lr=0.02, diagnostics=False)
    h = tr.train()
    assert tr.ref_model is not m and all(not p.requires_grad for p in tr.ref_model.parameters())
    for k, v in tr.ref_model.state_dict().items():
        assert np.array_equal(v, w0[k])  # the reference is the policy at the start
    assert h[0]["kl"] == 0.0 and h[-1]["kl"] > 0.0


def test_grpo_reward_function_errors_name_the_function_and_row():
    def boom(prompt, completion):
        if len(completion) > 0:
            raise ValueError("no parse")
        return 0.0

    with pytest.raises(nf.InvalidArgumentError, match=r"reward function 'boom' raised ValueError on row 0 "
                                                      r"\(prompt \d+\): no parse"):
        grpo(reward_fns=boom, diagnostics=False).train()

    calls = []

    def sometimes_nan(prompt, completion):
        calls.append(1)
        return float("nan") if len(calls) == 3 else 1.0

    with pytest.raises(nf.InvalidArgumentError, match=r"'sometimes_nan' returned nan on row 2 .*finite"):
        grpo(reward_fns=sometimes_nan, diagnostics=False).train()
    with pytest.raises(nf.InvalidArgumentError, match=r"'reward_1' returned None on row 0"):
        grpo(reward_fns=[frac_target, lambda p, c: None], diagnostics=False).train()


def test_grpo_bad_input():
    m = tiny()
    opt = nf.optim.AdamW(m.parameters(), lr=1e-3)
    ok = {"max_steps": 1, "progress": False, "max_new_tokens": 4}

    def make(**kw):
        return GRPOTrainer(m, opt, prompts_of(8), frac_target, **{**ok, **kw})

    with pytest.raises(nf.InvalidArgumentError, match=r"minibatch_size=5 must divide the batch of "
                                                      r"prompts_per_step x num_generations = 2 x 4 = 8 rows"):
        make(prompts_per_step=2, num_generations=4, minibatch_size=5)
    with pytest.raises(nf.InvalidArgumentError, match="num_generations must be >= 2"):
        make(num_generations=1)
    with pytest.raises(nf.InvalidArgumentError, match="prompts_per_step=9 is more than the 8 prompts"):
        make(prompts_per_step=9)
    with pytest.raises(nf.InvalidArgumentError, match="loss_type must be one of"):
        make(loss_type="ppo")
    with pytest.raises(nf.InvalidArgumentError, match="reward_weights must be a list of 1 numbers"):
        make(reward_weights=[1.0, 2.0])
    with pytest.raises(nf.InvalidArgumentError, match="a dict without a 'prompt' key"):
        GRPOTrainer(m, opt, [{"text": [1]}], frac_target, **ok)
    with pytest.raises(nf.InvalidArgumentError, match="give a budget"):
        GRPOTrainer(m, opt, prompts_of(8), frac_target, progress=False, max_new_tokens=4)
    with pytest.raises(nf.InvalidArgumentError, match="ref_model is the policy itself"):
        make(ref_model=m)
    with pytest.raises(nf.InvalidArgumentError, match="eps_low must be a finite number"):
        make(eps_low=1.5)
    with pytest.raises(nf.InvalidArgumentError, match=r"prompt 1 has 30 tokens, so max_new_tokens=4 would "
                                                      r"need 34 positions; the model has 32"):
        GRPOTrainer(m, opt, [[1], [2] * 30], frac_target, prompts_per_step=1, **ok)
    # learn() on a rollout given by hand checks it against the trainer
    tr = make(prompts_per_step=2, num_generations=4, diagnostics=False)
    tr._base_seed = 0
    ro = tr.make_rollout()
    with pytest.raises(nf.ShapeError, match=r"rewards has shape \(7,\) for a rollout of 8 rows"):
        tr.learn(ro, np.zeros(7))
    with pytest.raises(nf.InvalidArgumentError, match="the reward of row 3 is nan"):
        tr.learn(ro, np.where(np.arange(8) == 3, np.nan, 0.0))
    bad = rollout(m, prompts_of(3), num_completions=2, max_new_tokens=4, seed=0)  # 6 rows, G = 4
    with pytest.raises(nf.InvalidArgumentError, match="num_generations=4 does not divide the rollout's 6"):
        tr.learn(bad, np.zeros(6))
    ro.completion_mask = ro.completion_mask[:, :-1]
    with pytest.raises(nf.ShapeError, match=r"completion_mask has shape \(8, \d+\), expected \(8, \d+\)"):
        tr.learn(ro, np.zeros(8))


# ------------------------------------------------------------------------------------------------ diagnostics


def caught(run):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run()
    return [str(x.message) for x in w if issubclass(x.category, nf.rl.TrainingWarning)]


def test_grpo_diagnostics_fire_on_provoked_runs():
    # all-equal rewards: every group has zero std
    msgs = caught(lambda: grpo(reward_fns=lambda p, c: 1.0, max_steps=2).train())
    assert any("100% of the 4 groups have all-equal rewards at step 0" in s for s in msgs), msgs
    # one new token and no stop token: every completion is cut at the limit
    msgs = caught(lambda: grpo(max_new_tokens=1, max_steps=2).train())
    assert any("100% of the completions hit the length limit at step 0" in s for s in msgs), msgs
    # a KL bound far below what a few big steps give
    diag = nf.rl.Diagnostics(kl_max=1e-3)
    msgs = caught(lambda: grpo(beta=0.01, lr=0.05, max_steps=4, diagnostics=diag).train())
    assert any("KL to the reference is" in s and "above 0.001" in s for s in msgs), msgs
    # once per cause
    msgs = caught(lambda: grpo(reward_fns=lambda p, c: 1.0, max_steps=3).train())
    assert sum("all-equal rewards" in s for s in msgs) == 1
    # off means off
    assert caught(lambda: grpo(reward_fns=lambda p, c: 1.0, max_steps=2, diagnostics=False).train()) == []


def test_reward_hacking_and_entropy_collapse_fire():
    """The reward (TARGET tokens) rises while a held-out rule (no TARGET at all) falls: reward hacking,
    as the diagnostic sees it; and the run collapses onto TARGET: entropy below the bound."""
    def no_target(prompt, completion):
        return float(TARGET not in completion)

    diag = nf.rl.Diagnostics(hacking_window=6, entropy_min=2.0)
    tr = grpo(rule_fn=no_target, diagnostics=diag, max_new_tokens=8, stop_tokens=[STOP])
    msgs = caught(tr.train)
    assert "rule_score" in tr.history[-1]
    assert any("while the held-out rule score fell" in s for s in msgs), msgs
    assert any("mean entropy is" in s and "below 2" in s for s in msgs), msgs
    msgs = caught(lambda: ppo(diagnostics=nf.rl.Diagnostics(entropy_min=1.0), max_steps=15).train())
    assert any("mean entropy is" in s for s in msgs), msgs


def test_grpo_zero_std_metric_and_no_signal():
    h = grpo(reward_fns=lambda p, c: 0.5, max_steps=2, diagnostics=False).train()
    assert all(r["zero_std_fraction"] == 1.0 and r["loss"] == 0.0 for r in h)


# ------------------------------------------------------------------------------------------------ resume


def test_grpo_resume_equals_the_uninterrupted_run(tmp_path):
    kw = {"max_steps": 6, "beta": 0.05, "num_iterations": 2, "minibatch_size": 16, "diagnostics": False}
    straight = grpo(**kw)
    straight.train()
    rng = nf.get_rng_state()
    ckpt = tmp_path / "grpo.safetensors"
    first = grpo(**{**kw, "max_steps": 3}, checkpoint=ckpt)
    first.train()
    resumed = grpo(model=tiny(seed=9), **kw)  # other weights: the checkpoint replaces them
    resumed.train(resume=ckpt)
    assert resumed.step == 6
    same_run(straight, resumed)
    assert nf.get_rng_state() == rng


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path):
    ckpt = tmp_path / "c.safetensors"

    def interrupt(trainer, row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    tr = grpo(max_steps=50, checkpoint=ckpt, callbacks=interrupt, diagnostics=False)
    h = tr.train()
    assert h.stop_reason == "interrupted" and tr.step == 3 and ckpt.exists()
    resumed = grpo(max_steps=5, diagnostics=False)
    resumed.train(resume=ckpt)
    straight = grpo(max_steps=5, diagnostics=False)
    straight.train()
    same_run(straight, resumed)


# ------------------------------------------------------------------------------------------------ PPO


def ppo(policy=None, value=None, reward=frac_target, optimizer=None, **kw):
    policy = policy or tiny()
    value = value or value_model()
    if optimizer is None:
        optimizer = nf.optim.AdamW(policy.parameters() + value.parameters(), lr=kw.pop("lr", 3e-3))
    kw = {"prompts_per_step": 16, "minibatch_size": 8, "ppo_epochs": 2, "max_new_tokens": 8, "max_steps": 25,
          "progress": False, "kl_coef": 0.01, **kw}
    return PPOTrainer(policy, value, optimizer, kw.pop("prompts", prompts_of(16)), reward=reward, **kw)


def test_ppo_raises_the_rule_reward():
    """reward = fraction of TARGET tokens at the end; 25 steps of 16 prompts. Measured: 0.06 → ~0.95."""
    tr = ppo(diagnostics=False)
    h = tr.train()
    before, after = h[0]["score"], np.mean([r["score"] for r in h[-3:]])
    print(f"PPO score: step 0 {before:.3f}, last 3 steps {after:.3f}; explained variance "
          f"{h[0]['explained_variance']:.2f} -> {h[-1]['explained_variance']:.2f}")
    assert before < 0.15 and after > 0.6, (before, after)
    assert h[-1]["kl"] > h[0]["kl"] == 0.0  # the reference is the policy at the start
    for k in ("score", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss", "explained_variance",
              "completion_length", "truncation_rate", "policy_loss", "approx_kl", "grad_norm"):
        assert k in h[-1] and math.isfinite(h[-1][k]), k


def test_ppo_rewards_kl_and_gae_by_hand():
    """With γ = λ = 1, no KL, and the value model's head at zero, every completion token's return is the
    final score and its advantage (before whitening) too; with β > 0 the k1 KL enters per token."""
    v = value_model()
    v.score.weight.copy_(np.zeros((1, 32), np.float32))
    scores = []

    def reward(prompt, completion):
        scores.append(len(completion) / 10)
        return scores[-1]

    tr = ppo(value=v, reward=reward, gamma=1.0, lam=1.0, kl_coef=0.0, whiten_advantages=False, max_steps=1,
             diagnostics=False, lr=1e-12, stop_tokens=[STOP])
    tr.train()
    ro = tr.last_rollout
    want = np.where(ro.token_mask, np.array(scores)[:, None], 0)
    np.testing.assert_allclose(tr.last_returns, want, atol=1e-6)
    np.testing.assert_allclose(tr.last_advantages, want, atol=1e-6)
    # β > 0: returns_t = score − β Σ_{s ≥ t} kl_s over the row's tokens; ref = a different model so kl ≠ 0
    tr = ppo(value=v, reward=reward, ref_model=tiny(seed=3), gamma=1.0, lam=1.0, kl_coef=0.5,
             whiten_advantages=False, max_steps=1, diagnostics=False, lr=1e-12)
    scores.clear()
    tr.train()
    ro, m = tr.last_rollout, tr.last_rollout.token_mask
    lp = tr.policy.token_logprobs(ro.input_ids[:, :-1], ro.input_ids[:, 1:]).numpy()
    ref = tr.ref_model.token_logprobs(ro.input_ids[:, :-1], ro.input_ids[:, 1:]).numpy()
    kl = np.where(m, lp - ref, 0.0)
    tail = np.cumsum(kl[:, ::-1], axis=1)[:, ::-1]
    want = np.where(m, np.array(scores)[:, None] - 0.5 * tail, 0)
    np.testing.assert_allclose(tr.last_returns, want, atol=2e-4)
    assert tr.history[0]["kl"] == pytest.approx(kl.sum(1).mean(), rel=1e-4)


def test_ppo_adaptive_kl_two_optimizers_and_resume(tmp_path):
    def make(**kw):
        p, v = tiny(), value_model()
        opts = [nf.optim.AdamW(p.parameters(), lr=5e-3), nf.optim.AdamW(v.parameters(), lr=1e-2)]
        ctl = nf.rl.AdaptiveKLController(0.05, target=0.5, horizon=50)
        return ppo(p, v, optimizer=opts, kl_controller=ctl, kl_coef=None, diagnostics=False,
                   **{"max_steps": 6, **kw})

    straight = make()
    h = straight.train()
    coefs = [r["kl_coef"] for r in h]
    assert coefs[0] == 0.05 and len(set(coefs)) > 2  # the controller moved β every step
    ckpt = tmp_path / "ppo.safetensors"
    make(max_steps=3, checkpoint=ckpt).train()
    resumed = make()
    resumed.train(resume=ckpt)
    same_run(straight, resumed)
    assert resumed.kl_controller.value == straight.kl_controller.value


def test_ppo_with_a_reward_model():
    rm = nf.rl.RewardModel(tiny(seed=4))
    tr = ppo(reward=rm, max_steps=2, diagnostics=False, rule_fn=frac_target)
    h = tr.train()
    ro = tr.last_rollout
    with nf.no_grad():
        want = rm(ro.input_ids, ro.attention_mask).numpy()
    np.testing.assert_allclose(tr.last_scores, want, atol=1e-6)
    assert "rule_score" in h[-1]


def test_ppo_diagnostics_fire_on_provoked_runs():
    diag = nf.rl.Diagnostics(kl_max=0.01)
    msgs = caught(lambda: ppo(max_steps=5, lr=0.02, diagnostics=diag).train())
    assert any("KL to the reference is" in s for s in msgs), msgs
    msgs = caught(lambda: ppo(max_new_tokens=1, max_steps=1).train())
    assert any("hit the length limit" in s for s in msgs), msgs


def test_ppo_non_finite_loss_fires():
    """A score of 1e30 is finite, but its squared value error overflows float32: the value loss is inf."""
    msgs = caught(lambda: ppo(reward=lambda p, c: 1e30, max_steps=1).train())
    assert any("value_loss is inf at step 0 (not a finite number)" in s for s in msgs), msgs


def test_ppo_bad_input():
    with pytest.raises(nf.InvalidArgumentError, match="minibatch_size=5 must divide the batch of "
                                                      "prompts_per_step=16 rows"):
        ppo(minibatch_size=5)
    with pytest.raises(nf.InvalidArgumentError, match="give kl_controller or kl_coef, not both"):
        ppo(kl_controller=nf.rl.FixedKLController(0.1))
    with pytest.raises(nf.InvalidArgumentError, match="kl_estimator must be 'k1' or 'k3'"):
        ppo(kl_estimator="k2")
    with pytest.raises(nf.InvalidArgumentError, match="value_model must be an nf.rl.ValueModel"):
        ppo(value=lambda ids: ids, optimizer=nf.optim.AdamW(tiny().parameters()))
    with pytest.raises(nf.InvalidArgumentError, match="reward must be an nf.rl.RewardModel or a function"):
        ppo(reward=3)
    with pytest.raises(nf.InvalidArgumentError, match=r"reward function 'reward_0' returned inf on row 0"):
        ppo(reward=lambda p, c: float("inf"), max_steps=1).train()  # a lambda is named by its position
    tr = ppo(max_steps=1, diagnostics=False)
    tr._base_seed = 0
    ro = tr.make_rollout()
    with pytest.raises(nf.ShapeError, match="15 scores for a rollout of 16 rows"):
        tr.learn(ro, np.zeros(15))
    ro.attention_mask = ro.attention_mask[:-1]
    with pytest.raises(nf.ShapeError, match=r"attention_mask has shape \(15, \d+\), expected \(16, \d+\)"):
        tr.learn(ro, np.zeros(16))


class _WrongValues(nf.nn.Module):
    def __init__(self):
        self.inner = value_model()

    def forward(self, ids):
        return self.inner(ids).narrow(1, 0, ids.shape[1] - 1)


def test_ppo_value_model_of_the_wrong_shape_is_named():
    v = _WrongValues()
    with pytest.raises(nf.ShapeError, match=r"value_model returned shape \(16, \d+\) for input_ids of shape"):
        ppo(value=v, max_steps=1, diagnostics=False).train()


# ------------------------------------------------------------------------------------------------ options


def _weights_after(trainer):
    trainer.train()
    return np.concatenate([p.numpy().ravel() for p in trainer.model.parameters()])


def test_every_grpo_loss_and_advantage_option_runs_and_takes_effect():
    common = {"max_steps": 1, "diagnostics": False, "stop_tokens": [STOP], "sgd": True}  # unequal lengths
    base = _weights_after(grpo(**common))
    for kw in ({"loss_type": "grpo"}, {"loss_type": "bnpo", "minibatch_size": 16}, {"loss_type": "dr_grpo"},
               {"advantage": "rloo"}, {"scale_rewards": "batch"}, {"scale_rewards": False},
               {"eps_high": 0.28, "num_iterations": 2}, {"temperature": 0.7, "top_k": 8}):
        w = _weights_after(grpo(**common, **kw))
        assert np.isfinite(w).all() and not np.array_equal(w, base), kw


def test_ppo_options_take_effect():
    base = _weights_after(ppo(max_steps=2, diagnostics=False))  # step 1: the policy has left the reference
    for kw in ({"ent_coef": 0.1}, {"whiten_advantages": False}, {"kl_estimator": "k3", "kl_coef": 0.5},
               {"value_clip_eps": None}, {"gamma": 0.9, "lam": 0.5}, {"clip_eps": 0.05}, {"shuffle": False}):
        w = _weights_after(ppo(max_steps=2, diagnostics=False, **kw))
        assert np.isfinite(w).all() and not np.array_equal(w, base), kw


def test_helper_logprobs_equal_sequence_logprobs():
    m = tiny()
    ro = rollout(m, prompts_of(5), num_completions=2, max_new_tokens=6, seed=2, stop_tokens=[STOP])
    want = nf.rl.sequence_logprobs(m, ro.input_ids, ro.completion_mask, reduce="none").numpy()
    got = token_logprobs_and_entropy(m, ro.input_ids)[0].numpy()
    np.testing.assert_allclose(np.where(ro.token_mask, got, 0), want, atol=1e-6)


def test_progress_bar_and_time_budget(capsys):
    h = grpo(max_steps=None, max_seconds=0.5, progress=True, diagnostics=False).train()
    assert h.stop_reason == "max_seconds" and len(h) >= 1
    err = capsys.readouterr().err
    assert "step" in err and "reward_mean" in err  # tqdm's bar, with the step's numbers in its postfix


def test_ppo_takes_a_list_of_rules_measured_never_rewarded():
    """Two held-out rules: each logged as rule/<name>, the first also as rule_score; the reward unchanged."""
    def first_is_target(prompt, completion):
        return float(bool(completion) and completion[0] == TARGET)

    tr = ppo(max_steps=2, diagnostics=False, rule_fn=[frac_target, first_is_target])
    h = tr.train()
    ro = tr.last_rollout
    comps = [list(c) for c in ro.completions]  # no stop tokens: the completions are what was sampled
    assert set(h[-1]) >= {"rule_score", "rule/frac_target", "rule/first_is_target"}
    assert h[-1]["rule_score"] == h[-1]["rule/frac_target"]
    want = np.mean([first_is_target(None, c) for c in comps])
    np.testing.assert_allclose(h[-1]["rule/first_is_target"], want)
    np.testing.assert_allclose(h[-1]["score"], np.mean([frac_target(None, c) for c in comps]))
    with pytest.raises(nf.InvalidArgumentError, match="rule_fn"):
        ppo(rule_fn=3)
