"""nf.rl's foundation: right-padded packing, sequence log-probs against a numpy log-softmax of the model's
own logits, gradients only through the completion tokens, the reward and value heads (shapes, the token the
reward is read at, save/load in the Hugging Face layout, checkpoints), and every diagnostic provoked and
left quiet."""

import math
import warnings

import nanofrontier as nf
import numpy as np
import pytest

rl = nf.rl


def tiny_gpt(seed=0, **kw):
    nf.manual_seed(seed)
    cfg = {"vocab_size": 19, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
    cfg.update(kw)
    return nf.models.GPT(nf.models.GPTConfig(**cfg))


def tiny_llama(seed=0, **kw):
    nf.manual_seed(seed)
    cfg = {"vocab_size": 19, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 16,
           "tie_word_embeddings": False}
    cfg.update(kw)
    return nf.models.Llama(nf.models.LlamaConfig(**cfg))


PROMPTS = [[1, 2, 3], [4], [5, 6]]
COMPLETIONS = [[7, 8], [9, 10, 11, 12], [13]]


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


# ---------------------------------------------------------------- pack


def test_pack_right_pads_prompt_then_completion():
    b = rl.pack(PROMPTS, COMPLETIONS, pad_token_id=0)
    np.testing.assert_array_equal(b.input_ids, [[1, 2, 3, 7, 8], [4, 9, 10, 11, 12], [5, 6, 13, 0, 0]])
    np.testing.assert_array_equal(b.attention_mask, [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(b.completion_mask, [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 1, 0, 0]])
    assert b.input_ids.dtype == np.int64
    assert b.attention_mask.dtype == bool and b.completion_mask.dtype == bool
    np.testing.assert_array_equal(b.prompt_lengths, [3, 1, 2])
    np.testing.assert_array_equal(b.completion_lengths, [2, 4, 1])
    np.testing.assert_array_equal(b.token_mask, b.completion_mask[:, 1:])
    assert (rl.pack(PROMPTS, COMPLETIONS, pad_token_id=17).input_ids[2, 3:] == 17).all()
    b = rl.pack([np.array([1, 2])], [np.array([], np.int64)])  # arrays in; an empty completion scores nothing
    assert not b.completion_mask.any() and b.input_ids.shape == (1, 2)


def test_pack_refuses_bad_input():
    with pytest.raises(nf.InvalidArgumentError, match="3 prompts but 2 completions"):
        rl.pack(PROMPTS, COMPLETIONS[:2])
    with pytest.raises(nf.ShapeError, match="row 0 has 3 prompt \\+ 2 completion = 5 tokens.*max_length=4"):
        rl.pack(PROMPTS, COMPLETIONS, max_length=4)
    with pytest.raises(nf.InvalidArgumentError, match="prompt 0 is empty"):
        rl.pack([[]], [[1]])
    with pytest.raises(TypeError, match="completion 0 must hold integer token ids"):
        rl.pack([[1]], [[1.5]])
    with pytest.raises(nf.InvalidArgumentError, match="negative token id"):
        rl.pack([[1]], [[-3]])
    with pytest.raises(TypeError, match="lists of token-id lists"):
        rl.pack("abc", ["d"])
    with pytest.raises(nf.InvalidArgumentError, match="no rows"):
        rl.pack([], [])


# ---------------------------------------------------------------- sequence_logprobs


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
def test_sequence_logprobs_match_numpy_log_softmax(make):
    model = make().eval()
    b = rl.pack(PROMPTS, COMPLETIONS)
    logits, _ = model(b.input_ids)
    logp = np_log_softmax(logits.numpy())  # (B, T, V)
    tok = np.take_along_axis(logp[:, :-1], b.input_ids[:, 1:, None], -1)[..., 0]  # (B, T-1)
    mask = b.completion_mask[:, 1:]
    want = np.where(mask, tok, 0.0)
    per_token = rl.sequence_logprobs(model, b.input_ids, b.completion_mask, reduce="none")
    assert per_token.shape == (3, 4)
    np.testing.assert_allclose(per_token.numpy(), want, atol=1e-5)
    np.testing.assert_allclose(rl.sequence_logprobs(model, b.input_ids, b.completion_mask).numpy(),
                               want.sum(1), atol=1e-5)
    np.testing.assert_allclose(model.sequence_logprobs(b.input_ids, b.completion_mask, "mean").numpy(),
                               want.sum(1) / mask.sum(1), atol=1e-5)


def test_sequence_logprobs_gradient_only_through_masked_positions():
    model = tiny_gpt()
    b = rl.pack(PROMPTS, COMPLETIONS)
    mask = b.completion_mask[:, 1:]
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=mask.shape).astype(np.float32)
    w2 = np.where(mask, w1, rng.normal(size=mask.shape) * 100).astype(np.float32)  # differs only off the mask

    def grads(w, ids=b.input_ids):
        model.zero_grad()
        lp = rl.sequence_logprobs(model, ids, b.completion_mask, reduce="none")
        (lp * nf.tensor(w)).sum().backward()
        return lp.numpy(), [p.grad.numpy().copy() for p in model.parameters()]

    lp, g1 = grads(w1)
    np.testing.assert_array_equal(lp[~mask], 0.0)
    _, g2 = grads(w2)
    for a, c in zip(g1, g2):  # weights on unmasked positions reach no parameter
        np.testing.assert_array_equal(a, c)
    ids = b.input_ids.copy()
    ids[~b.attention_mask] = 18  # neither do the padding tokens
    _, g3 = grads(w1, ids)
    for a, c in zip(g1, g3):
        np.testing.assert_allclose(a, c, atol=1e-6)
    assert max(np.abs(a).max() for a in g1) > 0
    # a row with only prompt tokens scored: no gradient at all
    model.zero_grad()
    rl.sequence_logprobs(model, b.input_ids, np.zeros_like(b.completion_mask)).sum().backward()
    assert all(p.grad is None or not p.grad.numpy().any() for p in model.parameters())


def test_sequence_logprobs_all_masked_rows_give_zero_not_nan():
    model = tiny_gpt()
    b = rl.pack([[1, 2], [3]], [[], [4, 5]])
    for reduce in ("sum", "mean"):
        out = rl.sequence_logprobs(model, b.input_ids, b.completion_mask, reduce=reduce)
        assert out.numpy()[0] == 0.0 and np.isfinite(out.numpy()).all()
        out.sum().backward()  # and backward through the empty row is fine too
        assert all(np.isfinite(p.grad.numpy()).all() for p in model.parameters())


def test_sequence_logprobs_refuses_bad_input():
    model = tiny_gpt()
    b = rl.pack(PROMPTS, COMPLETIONS)
    with pytest.raises(nf.InvalidArgumentError, match="reduce must be one of"):
        rl.sequence_logprobs(model, b.input_ids, b.completion_mask, reduce="max")
    with pytest.raises(nf.ShapeError, match="completion_mask has shape \\(3, 4\\)"):
        rl.sequence_logprobs(model, b.input_ids, b.completion_mask[:, 1:])
    with pytest.raises(nf.ShapeError, match="longer than the model's context \\(16 positions\\)"):
        rl.sequence_logprobs(model, np.zeros((1, 17), np.int64), np.ones((1, 17), bool))
    with pytest.raises(nf.ShapeError, match="must be \\(B, T\\)"):
        rl.sequence_logprobs(model, b.input_ids[0], b.completion_mask[0])


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
def test_heads_shapes_parameters_and_modes(make):
    trunk = make()
    vm = rl.ValueModel(trunk)
    b = rl.pack(PROMPTS, COMPLETIONS)
    assert vm(b.input_ids).shape == (3, 5)
    names = [n for n, _ in vm.named_parameters()]
    assert names[-1] == "score.weight" and all(n.startswith("model.") for n in names[:-1])
    assert len(names) == len(list(trunk.named_parameters())) + 1
    assert vm.score.weight.shape == (1, 16) and vm.score.bias is None
    rm = rl.RewardModel(make())
    assert rm(b.input_ids, b.attention_mask).shape == (3,)
    rm.eval()
    assert not rm.training and not rm.model.training and not rm.score.training
    rm.train()
    assert rm.model.training
    c = rm.copy()
    args = (b.input_ids, b.attention_mask)
    np.testing.assert_array_equal(c(*args).numpy(), rm(*args).numpy())
    c.score.weight.copy_(np.zeros((1, 16), np.float32))
    assert np.abs(rm.score.weight.numpy()).sum() > 0  # the copy owns its weights


def test_head_init_is_small_normal_from_the_seeded_generator():
    w1 = rl.RewardModel(tiny_gpt(n_embd=64, n_head=2)).score.weight.numpy()
    w2 = rl.RewardModel(tiny_gpt(n_embd=64, n_head=2)).score.weight.numpy()
    np.testing.assert_array_equal(w1, w2)
    assert 0.5 / math.sqrt(65) < w1.std() < 1.6 / math.sqrt(65), f"std {w1.std():.4f} vs 1/sqrt(65)"


def test_reward_is_read_at_each_rows_last_real_token():
    rm = rl.RewardModel(tiny_gpt()).eval()
    b = rl.pack(PROMPTS, COMPLETIONS)
    scores = rm(b.input_ids, b.attention_mask).numpy()
    per_token = rm.token_scores(b.input_ids).numpy()
    last = b.attention_mask.sum(1) - 1
    np.testing.assert_allclose(scores, per_token[np.arange(3), last], atol=1e-6)
    ids = b.input_ids.copy()
    ids[~b.attention_mask] = 18  # other padding ids: nothing changes
    np.testing.assert_array_equal(rm(ids, b.attention_mask).numpy(), scores)
    alone = rm(np.array([[5, 6, 13]]), np.ones((1, 3), bool)).numpy()  # row 2 run alone, unpadded
    np.testing.assert_allclose(alone, scores[2:], atol=1e-5)
    # gradient reaches the head through the picked token only
    rm.zero_grad()
    rm(b.input_ids, b.attention_mask).sum().backward()
    h = rm.model.hidden(b.input_ids).numpy()
    np.testing.assert_allclose(rm.score.weight.grad.numpy()[0], h[np.arange(3), last].sum(0), atol=1e-5)
    with pytest.raises(nf.InvalidArgumentError, match="row 1 of attention_mask has no real token"):
        rm(b.input_ids, np.array([[1, 1, 1, 1, 1], [0] * 5, [1] * 5], bool))
    with pytest.raises(nf.ShapeError, match="attention_mask has shape"):
        rm(b.input_ids, b.attention_mask[:, :2])
    with pytest.raises(TypeError, match="needs an nf.models.GPT or Llama trunk"):
        rl.RewardModel(nf.nn.Linear(3, 3))


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
def test_value_model_from_reward_model_starts_as_its_copy(make):
    rm = rl.RewardModel(make())
    rm.eval()
    b = rl.pack(PROMPTS, COMPLETIONS)
    rng = nf.get_rng_state()
    vm = rl.ValueModel.from_reward_model(rm)
    assert nf.get_rng_state() == rng, "the value head was drawn from the global generator"
    assert isinstance(vm, rl.ValueModel) and not vm.training
    # the reward model's score of each row is the value at the row's last real token
    last = b.attention_mask.sum(1) - 1
    values = vm(b.input_ids).numpy()
    np.testing.assert_array_equal(values[np.arange(3), last], rm(b.input_ids, b.attention_mask).numpy())
    np.testing.assert_array_equal(values, rm.token_scores(b.input_ids).numpy())
    # its own weights: training the value model leaves the reward model alone
    before = rm(b.input_ids, b.attention_mask).numpy()
    vm.score.weight.copy_(np.zeros_like(vm.score.weight.numpy()))
    for p in vm.model.parameters():
        p.copy_(np.zeros_like(p.numpy()))
    np.testing.assert_array_equal(rm(b.input_ids, b.attention_mask).numpy(), before)
    rm.train()
    assert rl.ValueModel.from_reward_model(rm).training
    with pytest.raises(nf.InvalidArgumentError, match="needs an nf.rl.RewardModel"):
        rl.ValueModel.from_reward_model(rl.ValueModel(make()))
    with pytest.raises(nf.InvalidArgumentError, match="needs an nf.rl.RewardModel"):
        rl.ValueModel.from_reward_model(make())


@pytest.mark.parametrize("make", [tiny_gpt, tiny_llama])
@pytest.mark.parametrize("head", [rl.RewardModel, rl.ValueModel])
def test_save_load_round_trip_in_the_hf_layout(tmp_path, make, head):
    import json

    m = head(make())
    m.save_pretrained(tmp_path, pad_token_id=0)
    cfg = json.loads((tmp_path / "config.json").read_text())
    arch = "GPT2" if make is tiny_gpt else "Llama"
    assert cfg["architectures"] == [f"{arch}ForSequenceClassification"] and cfg["num_labels"] == 1
    assert cfg["pad_token_id"] == 0
    state, _ = nf.formats.load_safetensors(str(tmp_path / "model.safetensors"))
    assert state["score.weight"].shape == (1, 16)
    prefix = "transformer." if make is tiny_gpt else "model."
    assert all(k.startswith(prefix) for k in state if k not in ("score.weight", "lm_head.weight"))
    rng = nf.get_rng_state()
    back = head.from_pretrained(tmp_path)
    assert nf.get_rng_state() == rng, "loading drew from the global generator"
    b = rl.pack(PROMPTS, COMPLETIONS)
    args = (b.input_ids, b.attention_mask) if head is rl.RewardModel else (b.input_ids,)
    np.testing.assert_allclose(back(*args).numpy(), m(*args).numpy(), atol=1e-5)


def test_from_pretrained_refuses_a_causal_lm_directory(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    with pytest.raises(nf.InvalidArgumentError, match="no score.weight"):
        rl.RewardModel.from_pretrained(tmp_path)


def test_transformers_loads_the_reward_model_and_agrees(tmp_path):
    transformers = pytest.importorskip(
        "transformers",
        reason="transformers is not installed: the cross-check against GPT2ForSequenceClassification "
        "is skipped",
    )
    torch = pytest.importorskip("torch")
    rm = rl.RewardModel(tiny_gpt()).eval()
    rm.save_pretrained(tmp_path)
    hf = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path).eval()
    for p, c in zip(PROMPTS, COMPLETIONS):  # one row at a time: HF reads the last token
        ids = np.array([p + c])
        with torch.no_grad():
            want = hf(torch.tensor(ids)).logits.numpy()[:, 0]
        np.testing.assert_allclose(rm(ids).numpy(), want, atol=1e-4)


def test_heads_checkpoint_round_trip(tmp_path):
    rm = rl.RewardModel(tiny_gpt())
    opt = nf.optim.AdamW(rm.parameters(), lr=1e-2)
    b = rl.pack(PROMPTS, COMPLETIONS)
    rm(b.input_ids, b.attention_mask).sum().backward()
    opt.step()  # the head and the trunk both move
    nf.checkpoint.save(tmp_path / "c.safetensors", rm, opt, step=1)
    other = rl.RewardModel(tiny_gpt(seed=5))
    opt2 = nf.optim.AdamW(other.parameters(), lr=1e-2)
    info = nf.checkpoint.load(tmp_path / "c.safetensors", other, opt2)
    assert info["step"] == 1
    for (n, a), (_, c) in zip(rm.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(a.numpy(), c.numpy(), err_msg=n)
    np.testing.assert_array_equal(other(b.input_ids, b.attention_mask).numpy(),
                                  rm(b.input_ids, b.attention_mask).numpy())


# ---------------------------------------------------------------- diagnostics


def provoked(fn):
    with pytest.warns(rl.TrainingWarning) as rec:
        assert fn() is True
    return str(rec[0].message)


def quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", rl.TrainingWarning)
        assert fn() is False


def test_diagnostics_exports():
    assert issubclass(rl.TrainingWarning, UserWarning)
    assert rl.diagnostics.Diagnostics is rl.Diagnostics


def test_non_finite():
    d = rl.Diagnostics()
    quiet(lambda: d.check_finite("loss", 0.5, 3))
    msg = provoked(lambda: d.check_finite("loss", float("nan"), 7))
    assert "loss is nan at step 7" in msg
    quiet(lambda: d.check_finite("loss", float("inf"), 8))  # once per cause ...
    assert "inf" in provoked(lambda: d.check_finite("grad_norm", np.array([1.0, np.inf]), 9))  # ... per name


def test_dpo_stuck():
    d = rl.Diagnostics(dpo_stuck_steps=5)
    for s in range(4):
        quiet(lambda s=s: d.check_dpo_stuck(math.log(2), 0.0, s))
    msg = provoked(lambda: d.check_dpo_stuck(0.69315, 1e-6, 4))
    assert "0.6932 (ln 2 = 0.6931)" in msg and "5 steps" in msg and "step 4" in msg
    d = rl.Diagnostics(dpo_stuck_steps=5)
    for s in range(20):  # learning: the loss leaves ln 2 every other step, so the run never reaches 5
        quiet(lambda s=s: d.check_dpo_stuck(math.log(2) if s % 2 else 0.6, 0.0 if s % 2 else 0.3, s))


def test_kl_bound():
    d = rl.Diagnostics(kl_max=2.0)
    quiet(lambda: d.check_kl(1.5, 1))
    assert "KL to the reference is 3.5 at step 2, above 2" in provoked(lambda: d.check_kl(3.5, 2))


def test_equal_reward_groups():
    d = rl.Diagnostics(equal_groups_max=0.5)
    quiet(lambda: d.check_equal_rewards([1, 0, 1, 1, 0, 0, 1, 0], 2, 1))  # 2 of 4 groups equal: 50%
    msg = provoked(lambda: d.check_equal_rewards([1, 1, 1, 1, 0, 0, 1, 0], 2, 2))
    assert "75% of the 4 groups" in msg and "step 2" in msg
    with pytest.raises(nf.InvalidArgumentError, match="do not split into groups of 3"):
        d.check_equal_rewards([1, 2, 3, 4], 3, 0)


def test_truncation_rate():
    d = rl.Diagnostics(truncation_max=0.25)
    quiet(lambda: d.check_truncation(0.2, 1))
    msg = provoked(lambda: d.check_truncation(0.3, 4))
    assert "30% of the completions hit the length limit at step 4" in msg


def test_reward_hacking():
    d = rl.Diagnostics(hacking_window=10, hacking_delta=0.05)
    for s in range(10):  # reward and rule score rise together: fine
        quiet(lambda s=s: d.check_reward_hacking(0.1 * s, 0.05 * s, s))
    d = rl.Diagnostics(hacking_window=10, hacking_delta=0.05)
    for s in range(9):
        quiet(lambda s=s: d.check_reward_hacking(0.1 * s, 1 - 0.05 * s, s))  # the window is not full yet
    msg = provoked(lambda: d.check_reward_hacking(0.9, 1 - 0.45, 9))
    assert "reward rose by 0.5 while the held-out rule score fell by 0.25" in msg and "step 9" in msg


def test_entropy_collapse():
    d = rl.Diagnostics(entropy_min=0.1)
    quiet(lambda: d.check_entropy(1.2, 1))
    assert "mean entropy is 0.0200 nats at step 3" in provoked(lambda: d.check_entropy(0.02, 3))


def test_diagnostics_disabled_and_bad_bounds():
    d = rl.Diagnostics(enabled=False)
    quiet(lambda: d.check_finite("loss", float("nan"), 0))
    with pytest.raises(nf.InvalidArgumentError, match="kl_max must be a finite number >= 0"):
        rl.Diagnostics(kl_max=-1)
    with pytest.raises(nf.InvalidArgumentError, match="dpo_stuck_steps must be an integer >= 1"):
        rl.Diagnostics(dpo_stuck_steps=0.5)
