"""The offline post-training trainers (SFT, reward model, DPO) on tiny models and synthetic tasks: each
learns in well under a second, resumes bit-for-bit, stops on Ctrl-C with a checkpoint, fires its
diagnostics when provoked (and stays quiet otherwise), and refuses bad input by name."""

import math
import signal
import warnings

import nanofrontier as nf
import numpy as np
import pytest

rl = nf.rl
V = 16


def tiny(seed=0):
    nf.manual_seed(seed)
    return nf.models.GPT(nf.models.GPTConfig(vocab_size=V, block_size=16, n_layer=2, n_head=2, n_embd=32))


def sft_data(n, seed):
    """Prompt: 3 random tokens; completion: each shifted by one (mod V). Nothing to learn in the prompt."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = rng.integers(1, V, 3).tolist()
        out.append((p, [(t + 1) % V for t in p]))
    return out


def pref_data(n, seed):
    """Prompt: 2 random tokens; chosen: 3 even tokens; rejected: 3 odd tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = rng.integers(1, V, 2).tolist()
        even, odd = rng.integers(0, V // 2, 3) * 2, rng.integers(0, V // 2, 3) * 2 + 1
        out.append((p, even.tolist(), odd.tolist()))
    return out


SFT_TRAIN, SFT_HELD = sft_data(64, 1), sft_data(32, 2)
PREF_TRAIN, PREF_HELD = pref_data(64, 3), pref_data(64, 4)


def make(kind, seed=0, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("batch_size", 16)
    if kind == "sft":
        m = tiny(seed)
        return rl.SFTTrainer(m, nf.optim.AdamW(m.parameters(), lr=3e-3), SFT_TRAIN, **kw)
    if kind == "reward":
        m = rl.RewardModel(tiny(seed))
        return rl.RewardTrainer(m, nf.optim.AdamW(m.parameters(), lr=3e-3), PREF_TRAIN, **kw)
    m = tiny(seed)
    return rl.DPOTrainer(m, nf.optim.AdamW(m.parameters(), lr=3e-3), PREF_TRAIN, **kw)


def untimed(history):
    return [{k: v for k, v in r.items() if k not in nf.train.History.TIME_KEYS} for r in history]


def assert_same_run(a, b):
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    sa, sb = a.trainer.optimizer.state_dict(), b.trainer.optimizer.state_dict()
    for i, (x, y) in enumerate(zip(sa["state"], sb["state"])):
        np.testing.assert_array_equal(x[0], y[0], err_msg=f"m of parameter {i}")
        np.testing.assert_array_equal(x[1], y[1], err_msg=f"v of parameter {i}")
    assert untimed(a.history) == untimed(b.history)
    assert a.step == b.step


# ---------------------------------------------------------------- learning


def test_sft_lowers_the_held_out_completion_loss():
    t = make("sft", max_steps=80)
    before = t.evaluate(SFT_HELD)
    assert abs(before - math.log(V)) < 0.3, f"untrained loss {before:.3f} vs ln {V} = {math.log(V):.3f}"
    h = t.train()
    after = t.evaluate(SFT_HELD)
    assert after < 0.6 * before, f"held-out completion loss {before:.3f} -> {after:.3f}"
    assert h.stop_reason == "max_steps" and len(h) == 80
    assert {"loss", "lr", "grad_norm", "tokens", "completion_tokens"} <= set(h[0])
    assert h[0]["completion_tokens"] == 16 * 3


def test_sft_scores_completion_tokens_only():
    # the trainer's loss and gradient equal the model's own cross-entropy with the prompt targets set to
    # ignore_index (an independent path); the full next-token loss (prompt included) differs
    t = make("sft", max_steps=1)
    model, idx = t.model, np.arange(8)
    model.zero_grad()
    loss, metrics = t._loss(model, idx)
    loss.backward()
    got = [p.grad.numpy().copy() for p in model.parameters()]
    b = rl.pack([SFT_TRAIN[i][0] for i in idx], [SFT_TRAIN[i][1] for i in idx])
    x, y = b.input_ids[:, :-1], np.where(b.completion_mask[:, 1:], b.input_ids[:, 1:], -100)
    model.zero_grad()
    _, ref = model(x, y)
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    for (name, p), g in zip(model.named_parameters(), got):
        np.testing.assert_allclose(g, p.grad.numpy(), atol=1e-6, err_msg=name)
    model.zero_grad()
    _, full = model(x, np.where(b.attention_mask[:, 1:], b.input_ids[:, 1:], -100))
    assert abs(full.item() - loss.item()) > 1e-3
    assert metrics["completion_tokens"] == 8 * 3 and metrics["tokens"] == 8 * 6


def test_reward_model_ranks_held_out_pairs():
    t = make("reward", max_steps=40)
    before = t.evaluate(PREF_HELD)
    h = t.train()
    after = t.evaluate(PREF_HELD)
    # at init the random head is near chance (0.72 with this seed); trained, every held-out pair is ranked
    assert after >= 0.95 and after - before >= 0.2, f"held-out accuracy {before:.2f} -> {after:.2f}"
    assert h[-1]["accuracy"] == 1.0 and h[-1]["margin"] > h[0]["margin"]
    assert {"accuracy", "margin", "chosen", "rejected"} <= set(h[0])


def test_reward_trainer_passes_margin_and_centring_through():
    idx = np.arange(8)
    plain = make("reward", max_steps=1)
    base, _ = plain._loss(plain.model, idx)
    with_margin = make("reward", max_steps=1, margins=np.full(len(PREF_TRAIN), 3.0))
    shifted, _ = with_margin._loss(with_margin.model, idx)
    assert shifted.item() > base.item() + 1.0  # −log σ(gap − 3) > −log σ(gap) + 1 for gaps near 0
    centred = make("reward", max_steps=1, center_rewards_coefficient=10.0)
    c, _ = centred._loss(centred.model, idx)
    scores_c, scores_r, _ = centred._scores(centred.model, centred.pairs, idx)
    want = base.item() + 10.0 * float(np.mean((scores_c.numpy() + scores_r.numpy()) ** 2))
    np.testing.assert_allclose(c.item(), want, rtol=1e-5)


def test_dpo_raises_the_margin_and_held_out_accuracy():
    t = make("dpo", max_steps=40)
    before = t.metrics(PREF_HELD)
    assert before["accuracy"] == 0.0 and before["margin"] == 0.0  # policy == reference
    np.testing.assert_allclose(before["loss"], math.log(2), atol=1e-6)
    ref_before = [p.numpy().copy() for p in t.ref_model.parameters()]
    h = t.train()
    after = t.metrics(PREF_HELD)
    assert after["accuracy"] >= 0.95 and after["margin"] > 0.5, f"held out: {before} -> {after}"
    assert h[-1]["margin"] > h[0]["margin"] and h[-1]["loss"] < 0.5
    assert {"rewards/chosen", "rewards/rejected", "margin", "accuracy"} <= set(h[0])
    assert t.evaluate(PREF_HELD) == after["accuracy"]
    # the reference did not move, and its log-probs were computed once per pair over 10 epochs
    for a, p in zip(ref_before, t.ref_model.parameters()):
        np.testing.assert_array_equal(a, p.numpy())
    assert t.ref_pairs_computed == len(PREF_TRAIN) and not np.isnan(t.ref_logps).any()
    b = rl.pack([p for p, _, _ in PREF_TRAIN[:4]], [c for _, c, _ in PREF_TRAIN[:4]])
    np.testing.assert_allclose(t.ref_logps[:4, 0], rl.sequence_logprobs(t.ref_model, b.input_ids,
                                                                        b.completion_mask).numpy(), atol=1e-5)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_dpo_loss_types_and_label_smoothing_take_effect(loss_type):
    idx = np.arange(8)
    plain = make("dpo", max_steps=1)
    other = make("dpo", max_steps=1, loss_type=loss_type)
    smooth = make("dpo", max_steps=1, label_smoothing=0.2)
    for t in (plain, other, smooth):  # move the policies off the reference the same way
        for p in t.model.parameters():
            p.copy_(p.numpy() * 1.1)
    a, b, c = (t._loss(t.model, idx)[0].item() for t in (plain, other, smooth))
    assert a != b and a != c


def numpy_token_logps(model, rows):
    """Per-row summed log-probs of the completions, from the model's logits in
    numpy (log-softmax by hand), independent of sequence_logprobs."""
    sums = []
    for p, c in rows:
        ids = np.array([p + c])
        with nf.no_grad():
            logits = model(ids)[0].numpy()[0].astype(np.float64)  # (logits, loss)
        logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
        lp = logits - logz[:, None]
        sums.append(sum(lp[len(p) - 1 + j, t] for j, t in enumerate(c)))
    return np.array(sums)


@pytest.mark.parametrize("nll_coef", [0.0, 0.7])
def test_dpo_nll_coef_adds_the_chosen_nll_per_token(nll_coef):
    idx = np.arange(8)
    tr = make("dpo", max_steps=1, beta=0.5, nll_coef=nll_coef)
    for p in tr.model.parameters():  # move the policy off the reference
        p.copy_(p.numpy() * 1.1)
    loss, m = tr._loss(tr.model, idx)
    tr.model.eval()
    rows = [PREF_TRAIN[i] for i in idx]
    chosen, rejected = [(p, c) for p, c, _ in rows], [(p, r) for p, _, r in rows]
    pc, pr = numpy_token_logps(tr.model, chosen), numpy_token_logps(tr.model, rejected)
    rc, rr = numpy_token_logps(tr.ref_model, chosen), numpy_token_logps(tr.ref_model, rejected)
    z = 0.5 * ((pc - rc) - (pr - rr))
    dpo = np.mean(np.log1p(np.exp(-z)))  # -log sigmoid(z)
    nll = -pc.sum() / sum(len(c) for _, c, _ in rows)
    np.testing.assert_allclose(m["dpo_loss"], dpo, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m["nll"], nll, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss.item(), dpo + nll_coef * nll, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([m["logps/chosen"], m["logps/rejected"]], [pc.mean(), pr.mean()], rtol=1e-4)


def test_dpo_nll_objective_passes_gradcheck():
    tr = make("dpo", max_steps=1, beta=0.5, nll_coef=0.7)
    rng = np.random.default_rng(0)
    ref = rng.uniform(-6, -2, (3, 2)).astype(np.float32)
    lp = rng.uniform(-2.0, -0.1, (6, 4)).astype(np.float32)  # 3 chosen rows, then their 3 rejected rows
    worst = nf.testing.gradcheck(lambda t: tr.objective(t, 11, ref)[0], [lp])
    assert worst < 1e-3


def test_dpo_nll_raises_the_chosen_log_probs_more_than_plain_dpo():
    # chosen: the prompt shifted by one (learnable); rejected: random odd tokens
    def pairs(n, seed):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            p = rng.integers(1, V, 2).tolist()
            out.append((p, [(t + 1) % V for t in p], (rng.integers(0, V // 2, 2) * 2 + 1).tolist()))
        return out

    runs = []
    for nll_coef in (0.0, 1.0):
        m = tiny(0)
        tr = rl.DPOTrainer(m, nf.optim.AdamW(m.parameters(), lr=3e-3), pairs(64, 5), nll_coef=nll_coef,
                           batch_size=16, max_steps=40, schedule="constant", lr=3e-3, progress=False)
        tr.train()
        runs.append(numpy_token_logps(m.eval(), [(p, c) for p, c, _ in pairs(64, 6)]).mean())
    assert runs[1] > runs[0] + 0.5, runs


def test_epochs_set_the_step_count_and_shuffling_is_seeded():
    t = make("sft", epochs=2.5)  # 64 examples, batches of 16: 4 steps an epoch
    assert t.trainer.max_steps == 10
    s = rl.ShuffledIndices(10, 4, seed=3)
    stream = np.concatenate([next(s) for _ in range(5)])  # two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])
    again = rl.ShuffledIndices(10, 4, seed=3)
    np.testing.assert_array_equal(np.concatenate([next(again) for _ in range(5)]), stream)
    other = rl.ShuffledIndices(10, 4, seed=4)
    assert not np.array_equal(np.concatenate([next(other) for _ in range(5)]), stream)


def test_grad_accum_splits_the_index_batches():
    a = make("dpo", max_steps=3)
    b = make("dpo", max_steps=3, grad_accum=2)
    a.train()
    b.train()
    for p, q in zip(a.model.parameters(), b.model.parameters()):  # same data, same mean-of-means gradient
        np.testing.assert_allclose(p.numpy(), q.numpy(), atol=1e-4)


# ---------------------------------------------------------------- resume and Ctrl-C


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo"])
def test_resumed_run_is_bit_identical(tmp_path, kind):
    ckpt, at4 = tmp_path / "run.safetensors", tmp_path / "at4.safetensors"

    def keep_step4(trainer, row):  # after step 4 the checkpoint on disk is the one written at step 4
        if row["step"] == 4:
            at4.write_bytes(ckpt.read_bytes())

    a = make(kind, max_steps=10, checkpoint=ckpt, checkpoint_every=4, callbacks=keep_step4)
    a.train()
    b = make(kind, max_steps=10)  # the same starting model (DPO's reference is its copy)
    nf.manual_seed(123)  # another global random state: it must come from the file
    b.train(resume=at4)
    assert b.history.stop_reason == "max_steps"
    assert_same_run(a, b)


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_that_resumes(tmp_path):
    ckpt = tmp_path / "c.safetensors"

    def press_ctrl_c(trainer, row):
        if row["step"] == 2:
            signal.raise_signal(signal.SIGINT)

    a = make("dpo", max_steps=8, checkpoint=ckpt, callbacks=press_ctrl_c)
    h = a.train()
    assert h.stop_reason == "interrupted" and a.step == 3 and ckpt.exists()
    b = make("dpo", max_steps=8)
    b.train(resume=ckpt)
    straight = make("dpo", max_steps=8)
    straight.train()
    assert_same_run(straight, b)


# ---------------------------------------------------------------- diagnostics


def test_a_healthy_run_raises_no_training_warning():
    for kind in ("sft", "reward", "dpo"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", rl.TrainingWarning)
            make(kind, max_steps=5).train()


def poison(t):
    p = t.model.parameters()[0]
    p.copy_(np.full(p.shape, np.nan, np.float32))


def test_non_finite_loss_is_reported():
    t = make("sft", max_steps=3)
    poison(t)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t.train()
    messages = [str(w.message) for w in rec if w.category is rl.TrainingWarning]
    assert len(messages) == 2, messages  # once per cause, not once per step
    assert messages[0].startswith("loss is nan at step 0")
    assert messages[1].startswith("grad_norm is nan at step 0")


@pytest.mark.parametrize(("kind", "what"), [("reward", "reward scores"), ("dpo", "policy log-probs")])
def test_non_finite_scores_are_reported_and_stop_the_run(kind, what):
    t = make(kind, max_steps=3)
    poison(t)
    with pytest.warns(rl.TrainingWarning, match=f"{what} is nan at step 0"), \
            pytest.raises(FloatingPointError, match=f"{what} are not finite at step 0"):
        t.train()


def test_dpo_stuck_at_ln2_is_reported():
    diag = rl.Diagnostics(dpo_stuck_steps=5)
    t = make("dpo", max_steps=8, lr=1e-12, schedule="constant", diagnostics=diag)  # the policy cannot move
    stuck = r"DPO loss is 0.6931 \(ln 2 = 0.6931\).*for 5 steps \(at step 4\)"
    with pytest.warns(rl.TrainingWarning, match=stuck):
        t.train()
    # a learning run with the same bound stays quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error", rl.TrainingWarning)
        make("dpo", max_steps=8, diagnostics=rl.Diagnostics(dpo_stuck_steps=5)).train()


# ---------------------------------------------------------------- bad input


def test_bad_input_is_refused_by_name():
    m = tiny()
    opt = nf.optim.AdamW(m.parameters(), lr=1e-3)
    with pytest.raises(nf.InvalidArgumentError, match=r"examples\[1\] has 3 parts, expected 2"):
        rl.SFTTrainer(m, opt, [([1], [2]), ([1], [2], [3])], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match=r"examples\[0\] has an empty completion"):
        rl.SFTTrainer(m, opt, [([1, 2], [])], max_steps=1)
    with pytest.raises(nf.ShapeError, match=r"examples\[0\]: prompt \+ completion = 10 \+ 7 = 17 tokens.*16"):
        rl.SFTTrainer(m, opt, [([1] * 10, [2] * 7)], max_steps=1)
    with pytest.raises(TypeError, match=r"examples\[0\] completion must hold integer token ids"):
        rl.SFTTrainer(m, opt, [([1], ["a"])], max_steps=1)
    with pytest.raises(TypeError, match="examples must be a list"):
        rl.SFTTrainer(m, opt, "hello", max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="examples is empty"):
        rl.SFTTrainer(m, opt, [], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="token id 99, outside the model's vocabulary of 16"):
        rl.SFTTrainer(m, opt, [([1], [99])], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="give epochs or max_steps, not both"):
        rl.SFTTrainer(m, opt, SFT_TRAIN, epochs=1, max_steps=3)
    with pytest.raises(nf.InvalidArgumentError, match="give a budget"):
        rl.SFTTrainer(m, opt, SFT_TRAIN)
    with pytest.raises(nf.InvalidArgumentError, match="sets loss_fn itself"):
        rl.SFTTrainer(m, opt, SFT_TRAIN, max_steps=1, loss_fn=lambda m, b: 0)
    with pytest.raises(nf.InvalidArgumentError, match="batch_size must be an integer >= 1"):
        rl.SFTTrainer(m, opt, SFT_TRAIN, max_steps=1, batch_size=0)
    rm = rl.RewardModel(tiny())
    ropt = nf.optim.AdamW(rm.parameters(), lr=1e-3)
    with pytest.raises(nf.ShapeError, match=r"margins has shape \(3,\), expected one per pair: \(64,\)"):
        rl.RewardTrainer(rm, ropt, PREF_TRAIN, max_steps=1, margins=[1, 2, 3])
    with pytest.raises(TypeError, match="reward_model must be an nf.rl.RewardModel"):
        rl.RewardTrainer(m, opt, PREF_TRAIN, max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match=r"pairs\[0\] has an empty rejected"):
        rl.RewardTrainer(rm, ropt, [([1], [2], [])], max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match="ref_model is the policy itself"):
        rl.DPOTrainer(m, opt, PREF_TRAIN, max_steps=1, ref_model=m)
    with pytest.raises(nf.InvalidArgumentError, match="loss_type must be one of"):
        rl.DPOTrainer(m, opt, PREF_TRAIN, max_steps=1, loss_type="kto")
    with pytest.raises(nf.InvalidArgumentError, match="beta must be > 0"):
        rl.DPOTrainer(m, opt, PREF_TRAIN, max_steps=1, beta=0)
    with pytest.raises(nf.InvalidArgumentError, match=r"label_smoothing must be in \[0, 0.5\)"):
        rl.DPOTrainer(m, opt, PREF_TRAIN, max_steps=1, label_smoothing=0.7)
    for bad in (-0.5, float("nan"), "1"):
        with pytest.raises(nf.InvalidArgumentError, match="nll_coef must be a finite number >= 0"):
            rl.DPOTrainer(m, opt, PREF_TRAIN, max_steps=1, nll_coef=bad)
    with pytest.raises(nf.InvalidArgumentError, match=r"pairs\[0\] has 2 parts, expected 3"):
        make("dpo", max_steps=1).evaluate([([1], [2])])


# ------------------------------------------------------------------------- scores and implicit rewards


def test_reward_trainer_scores_match_the_model_and_rank_like_evaluate():
    tr = make("reward", max_steps=30)
    tr.train()
    chosen = [(p, c) for p, c, _ in PREF_HELD]
    rejected = [(p, r) for p, _, r in PREF_HELD]
    sc, sr = tr.scores(chosen), tr.scores(rejected)
    assert sc.shape == sr.shape == (len(PREF_HELD),) and sc.dtype == np.float64
    assert np.mean(sc > sr) == tr.evaluate(PREF_HELD)
    # one row scored alone gives the same number as in a batch (padding never reaches the last token)
    b = rl.pack([chosen[3][0]], [chosen[3][1]])
    with nf.no_grad():
        want = tr.model.eval()(b.input_ids, b.attention_mask).numpy()[0]
    np.testing.assert_allclose(sc[3], want, rtol=1e-5, atol=1e-6)
    assert tr.model.training is False  # left as it was set just above
    with pytest.raises(nf.InvalidArgumentError, match="empty"):
        tr.scores([([1, 2], [])])


def test_dpo_rewards_are_beta_times_the_log_ratio():
    tr = make("dpo", max_steps=1, beta=0.25)
    chosen = [(p, c) for p, c, _ in PREF_HELD]
    np.testing.assert_array_equal(tr.rewards(chosen), 0.0)  # policy == reference before training
    tr = make("dpo", max_steps=20, beta=0.25)
    tr.train()
    rejected = [(p, r) for p, _, r in PREF_HELD]
    rc, rr = tr.rewards(chosen), tr.rewards(rejected)
    b = rl.pack([p for p, _ in chosen], [c for _, c in chosen])
    with nf.no_grad():
        lp = rl.sequence_logprobs(tr.model, b.input_ids, b.completion_mask).numpy()
        ref = rl.sequence_logprobs(tr.ref_model, b.input_ids, b.completion_mask).numpy()
    np.testing.assert_allclose(rc, 0.25 * (lp - ref), rtol=1e-4, atol=1e-5)
    m = tr.metrics(PREF_HELD)
    assert np.mean(rc > rr) == pytest.approx(m["accuracy"]) and m["accuracy"] > 0.8, m
    np.testing.assert_allclose(np.mean(rc - rr), m["margin"], rtol=1e-4, atol=1e-5)
