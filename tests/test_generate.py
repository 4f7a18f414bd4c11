"""Batched generation for prompts of unequal length: one batch (padding masked out of attention, per-row
positions, per-row generators and stop tokens) must give each row exactly what its prompt gives alone."""

import numpy as np
import pytest

import nanofrontier as nf

V = 97


def tiny_gpt():
    nf.manual_seed(0)
    return nf.models.GPT(vocab_size=V, block_size=64, n_layer=2, n_head=2, n_embd=32).eval()


def tiny_llama():
    nf.manual_seed(1)
    cfg = nf.models.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return nf.models.Llama(cfg).eval()


MODELS = {"gpt": tiny_gpt, "llama": tiny_llama}
# lengths of the prompts in one batch: mixed, one long among short ones, all equal, a single token
PATTERNS = [[5, 1, 3, 5], [2, 9], [4, 4, 1, 7, 2], [3, 3], [1]]
SAMPLING = [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=5),
            dict(temperature=1.2, top_p=0.9), dict(temperature=1.0, top_k=20, top_p=0.7)]


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, V, n).tolist() for n in lengths]


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def alone(model, prompts, seeds, **kw):
    """Each prompt on its own (a batch of one, no padding) with its row's seed."""
    out = [model.generate([p], seed=[s], **kw) for p, s in zip(prompts, seeds)]
    return [t[0][0] for t in out], [t[1][0] for t in out]


@pytest.mark.parametrize("lengths", PATTERNS)
@pytest.mark.parametrize("kw", SAMPLING, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_batched_equals_one_at_a_time(model, lengths, kw):
    prompts = prompts_of(lengths)
    seeds = [100 + r for r in range(len(prompts))]
    toks, lps = model.generate(prompts, max_new_tokens=12, seed=seeds, **kw)
    want_toks, want_lps = alone(model, prompts, seeds, max_new_tokens=12, **kw)
    assert toks == want_toks
    for r, (a, b) in enumerate(zip(lps, want_lps)):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"row {r} log-probs")


def test_a_large_batch_in_row_groups_gives_each_row_its_own_result_on_any_thread_count(model):
    """From 16 rows a small model's batch generates as groups of rows on the threads at once (see
    models/generate.rs): each row still gets what its prompt gives alone, and 1 and 2 threads agree."""
    prompts = prompts_of([3, 5, 1, 4] * 5, seed=11)  # 20 rows: two groups of 10
    seeds = [200 + r for r in range(len(prompts))]
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=20, seed=seeds)
    runs = []
    for n in (1, 2):
        nf.set_num_threads(n)
        try:
            runs.append(model.generate(prompts, **kw))
        finally:
            nf.set_num_threads(0)
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(a, b)
    want_toks, want_lps = alone(model, prompts, seeds, max_new_tokens=8, temperature=1.0, top_k=20)
    assert runs[0][0] == want_toks
    for r, (a, b) in enumerate(zip(runs[0][1], want_lps)):
        np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"row {r} log-probs")


def test_logprobs_are_the_models_own(model):
    """Each returned log-prob equals log p(token | prompt, earlier tokens) from a plain full forward."""
    prompts = prompts_of([6, 2, 4], seed=3)
    toks, lps = model.generate(prompts, max_new_tokens=10, temperature=1.0, seed=4)
    for p, t, lp in zip(prompts, toks, lps):
        seq = np.array(p + t)
        full = model.token_logprobs(seq[None, :-1], seq[None, 1:]).numpy()[0, len(p) - 1:]
        np.testing.assert_allclose(lp, full, atol=2e-5)


def test_int_seed_gives_each_row_its_own_stream(model):
    """With one int seed, row r's stream depends only on (seed, r): dropping later rows changes nothing."""
    prompts = prompts_of([3, 7, 1, 4], seed=5)
    full, _ = model.generate(prompts, max_new_tokens=10, temperature=1.0, seed=9)
    for r in range(len(prompts)):
        part, _ = model.generate(prompts[: r + 1], max_new_tokens=10, temperature=1.0, seed=9)
        assert part == full[: r + 1]
    other, _ = model.generate(prompts, max_new_tokens=10, temperature=1.0, seed=10)
    assert other != full
    # the same prompt repeated (GRPO's group) gets different samples per row
    group, _ = model.generate([prompts[0]] * 4, max_new_tokens=10, temperature=1.0, seed=9)
    assert len({tuple(g) for g in group}) > 1


@pytest.mark.parametrize("side", ["left", "right", "both"])
def test_padding_side_and_pad_values_do_not_matter(model, side):
    prompts = prompts_of([5, 2, 8, 3], seed=6)
    kw = dict(max_new_tokens=10, temperature=1.0, top_k=10, seed=[7, 8, 9, 10])
    want = model.generate(prompts, **kw)
    width = 11
    rng = np.random.default_rng(0)
    for pad in ["zeros", "random"]:
        ids = np.zeros((len(prompts), width), np.int64) if pad == "zeros" else rng.integers(0, V, (4, width))
        mask = np.zeros((len(prompts), width), bool)
        for r, p in enumerate(prompts):
            start = {"left": width - len(p), "right": 0, "both": (width - len(p)) // 2}[side]
            ids[r, start:start + len(p)], mask[r, start:start + len(p)] = p, True
        toks, lps = model.generate(ids, attention_mask=mask.astype(np.int64), **kw)
        assert toks == want[0], f"{side}-padded with {pad} pads"
        for a, b in zip(lps, want[1]):
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_rows_stop_independently_and_generate_batch_masks(model):
    prompts = prompts_of([4, 1, 6], seed=8)
    free, _ = model.generate(prompts, max_new_tokens=12, temperature=0.0)
    # row 0 stops at its 3rd token, row 1 at its 6th, row 2 never (a token it does not emit)
    stops = [[free[0][2]], [free[1][5]], [V + 5]]
    g = model.generate_batch(prompts, max_new_tokens=12, temperature=0.0, stop_tokens=stops, pad_token_id=-1)
    want = [free[0][: free[0].index(stops[0][0]) + 1], free[1][: free[1].index(stops[1][0]) + 1], free[2]]
    assert g.lengths.tolist() == [len(w) for w in want]
    assert g.tokens.shape == g.logprobs.shape == g.mask.shape == (3, 12)
    for r, w in enumerate(want):
        assert g.tokens[r, : len(w)].tolist() == w
        assert (g.tokens[r, len(w):] == -1).all() and (g.logprobs[r, len(w):] == 0).all()
        assert g.mask[r].tolist() == [True] * len(w) + [False] * (12 - len(w))
        assert (g.logprobs[r, : len(w)] < 0).all()
    # the prompts as they ran: left-padded to the longest
    assert g.prompt_ids.shape == g.prompt_mask.shape == (3, 6)
    assert g.prompt_mask.sum(1).tolist() == [4, 1, 6] and g.prompt_mask[:, -1].all()
    assert g.prompt_ids[1, :5].tolist() == [-1] * 5
    empty = model.generate_batch([], max_new_tokens=3)
    assert empty.tokens.shape == (0, 0) and empty.prompt_ids.shape == (0, 0)
    # one stop list for every row
    shared, _ = model.generate(prompts, max_new_tokens=12, temperature=0.0, stop_tokens=[free[2][0]])
    assert shared[2] == free[2][:1]


def test_bad_batches_are_refused(model):
    with pytest.raises(nf.ShapeError):
        model.generate([[1, 2, 3], [4]], max_new_tokens=2, attention_mask=[[1, 1, 1], [1]])
    with pytest.raises(ValueError, match="no real token"):
        model.generate([[1, 2], [3, 4]], max_new_tokens=2, attention_mask=[[1, 1], [0, 0]])
    with pytest.raises(ValueError, match="seed"):
        model.generate([[1], [2]], max_new_tokens=2, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="stop tokens"):
        model.generate([[1], [2]], max_new_tokens=2, stop_tokens=[[1]])
    with pytest.raises(ValueError, match="0/1"):
        model.generate([[1, 2]], max_new_tokens=2, attention_mask=[[1, 2]])
    with pytest.raises(IndexError):  # padding given by the caller must hold valid ids
        model.generate([[1, 2], [V + 1, 3]], max_new_tokens=2, attention_mask=[[1, 1], [0, 1]])


def test_copy_and_kind_come_from_the_core(model):
    nf.manual_seed(21)
    want = nf.randn(4).numpy()
    nf.manual_seed(21)
    twin = model.copy()
    np.testing.assert_array_equal(nf.randn(4).numpy(), want)  # copying drew nothing from the global generator
    assert twin._core.kind == model._core.kind in ("gpt", "llama")
    a = model.generate([[1, 2, 3]], max_new_tokens=6, temperature=0.0)
    assert twin.generate([[1, 2, 3]], max_new_tokens=6, temperature=0.0) == a
    p = next(iter(twin.parameters()))
    p.copy_(np.zeros(p.shape, np.float32))  # the copy owns its weights
    assert model.generate([[1, 2, 3]], max_new_tokens=6, temperature=0.0) == a
