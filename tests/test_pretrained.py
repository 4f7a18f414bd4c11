"""Real weights and real files: stories260K (GGUF and llama2.c) generates llama2.c's expected text exactly
and matches a float64 reference; Hugging Face layouts round-trip (and load in transformers where it is
installed); a run resumed from a checkpoint continues bit-for-bit like an uninterrupted one."""

import importlib.util
import json

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.models import GPT, GPTConfig, Llama, LlamaConfig
from nanofrontier.testing import assert_close

# llama2.c's own CI expectation for greedy generation from BOS (doc/stories260K.md, test_all.py)
EXPECTED = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
            "One day, she saw a big, red ball. She wanted to play with it, but it was too high.")


@pytest.fixture(scope="module")
def stories(nf_data):
    d = nf_data / "stories260K"
    return {"gguf": Llama.from_gguf(d / "stories260K.gguf"), "bin": Llama.from_llama2c(d / "stories260K.bin"),
            "tok": nf.tokenizer.SentencePieceTokenizer(str(d / "tok512.model"))}


@pytest.mark.parametrize("fmt", ["gguf", "bin"])
def test_stories260k_greedy_generation_reproduces_llama2c(stories, fmt):
    model, tok = stories[fmt].eval(), stories["tok"]
    assert model.num_parameters() == 260_032 - 0  # llama2.c's count (tied head counted once)
    tokens, _ = model.generate([[tok.bos_id]], max_new_tokens=80, temperature=0.0)
    text = tok.decode(tokens[0])
    assert text.startswith(EXPECTED), text


def _f64_logits(state, cfg, ids):
    """An independent float64 Llama forward in numpy (interleaved RoPE, GQA, SwiGLU, RMSNorm)."""
    s = {k: v.astype(np.float64) for k, v in state.items()}
    d, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd, T = d // h, len(ids)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.rms_norm_eps) * w

    def rope(x):  # (T, heads, hd), interleaved pairs
        i = np.arange(hd // 2)
        ang = np.arange(T)[:, None] * cfg.rope_theta ** (-2 * i / hd)
        c, sn = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * sn, a * sn + b * c
        return out

    x = s["model.embed_tokens.weight"][ids]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        hN = rms(x, s[p + "input_layernorm.weight"])
        q = rope((hN @ s[p + "self_attn.q_proj.weight"].T).reshape(T, h, hd))
        k = rope((hN @ s[p + "self_attn.k_proj.weight"].T).reshape(T, kv, hd))
        v = (hN @ s[p + "self_attn.v_proj.weight"].T).reshape(T, kv, hd)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", att, v).reshape(T, d) @ s[p + "self_attn.o_proj.weight"].T
        hN = rms(x, s[p + "post_attention_layernorm.weight"])
        g, u = hN @ s[p + "mlp.gate_proj.weight"].T, hN @ s[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ s[p + "mlp.down_proj.weight"].T
    return rms(x, s["model.norm.weight"]) @ s["model.embed_tokens.weight"].T


def test_stories260k_logits_match_a_float64_reference(stories):
    model, tok = stories["bin"].eval(), stories["tok"]
    ids = tok.encode("Once upon a time")
    assert ids == [1, 403, 407, 261, 378]
    ids = ids + [int(t) for t in model.generate([ids], 20, temperature=0.0)[0][0]]
    logits, _ = model(np.array([ids]))
    want = _f64_logits(model.state_dict(), model.config, ids)
    assert_close(logits.numpy()[0], want, atol=1e-4, rtol=1e-4)


def _roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    loaded = type(model).from_pretrained(tmp_path / "hf")
    x = np.random.default_rng(0).integers(0, 17, (2, 8))
    return cfg, loaded, x


def test_gpt_save_pretrained_round_trips(tmp_path):
    nf.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16))
    cfg, loaded, x = _roundtrip(m, tmp_path)
    assert cfg["model_type"] == "gpt2" and cfg["n_embd"] == 16
    tensors, meta = nf.formats.load_safetensors(str(tmp_path / "hf" / "model.safetensors"))
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (16, 48)  # HF Conv1D layout (in, out)
    assert meta["format"] == "pt"
    assert_close(loaded(x)[0], m(x)[0], atol=0, rtol=0)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_llama_save_pretrained_round_trips_from_either_rope_layout(tmp_path, layout):
    nf.manual_seed(0)
    m = Llama(LlamaConfig(vocab_size=17, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                          rope_layout=layout))
    cfg, loaded, x = _roundtrip(m, tmp_path)
    assert cfg["model_type"] == "llama" and loaded.config.rope_layout == "half"
    assert_close(loaded(x)[0], m(x)[0], atol=2e-6)


def test_loading_a_mismatched_directory_says_what_is_wrong(tmp_path):
    nf.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16))
    m.save_pretrained(tmp_path)
    tensors, meta = nf.formats.load_safetensors(str(tmp_path / "model.safetensors"))
    del tensors["transformer.h.1.ln_2.bias"]
    tensors["transformer.h.0.mlp.c_fc.weight"] = nf.zeros(16, 8)
    nf.formats.save_safetensors(str(tmp_path / "model.safetensors"), tensors, meta)
    with pytest.raises(nf.FileFormatError) as e:
        GPT.from_pretrained(tmp_path)
    assert "h.1.ln_2.bias" in str(e.value) and "h.0.mlp.c_fc.weight" in str(e.value)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(nf.FileFormatError):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        GPT.from_pretrained(tmp_path / "nowhere")


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None,
                    reason="optional: needs torch and transformers (pip install torch transformers)")
@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_saved_model_loads_in_transformers_with_the_same_logits(tmp_path, kind):
    import torch
    from transformers import AutoModelForCausalLM

    nf.manual_seed(0)
    if kind == "gpt":
        m = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16))
    else:
        m = Llama(LlamaConfig(vocab_size=17, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16))
    m.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = np.random.default_rng(0).integers(0, 17, (2, 8))
    with torch.no_grad():
        want = hf(torch.tensor(x)).logits.numpy()
    assert_close(m(x)[0], want, atol=1e-4)


def _train(model, opt, steps, start=0):
    for _ in range(start, steps):
        x = nf.randint(0, 17, (4, 9))
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, opt_name):
    make_opt = {"AdamW": lambda p: nf.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
                "SGD": lambda p: nf.optim.SGD(p, lr=0.1, momentum=0.9)}[opt_name]
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    nf.manual_seed(0)
    a = GPT(cfg)
    loss_a = _train(a, make_opt(a.parameters()), 8)

    nf.manual_seed(0)
    b = GPT(cfg)
    opt_b = make_opt(b.parameters())
    _train(b, opt_b, 4)
    nf.checkpoint.save(tmp_path / "ckpt.safetensors", b, opt_b, step=4, extra={"note": "halfway"})

    nf.manual_seed(123)  # a different process state: everything must come from the checkpoint
    c = GPT(cfg)
    opt_c = make_opt(c.parameters())
    info = nf.checkpoint.load(tmp_path / "ckpt.safetensors", c, opt_c)
    assert info["step"] == 4 and info["extra"] == {"note": "halfway"} and info["config"]["n_embd"] == 16
    loss_c = _train(c, opt_c, 8, start=info["step"])
    assert loss_c == loss_a
    for (n, p), q in zip(a.named_parameters(), c.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=n)
