"""Interop layer: safetensors (Rust), llama2.c .bin, GGUF, Hugging Face layouts, tokenizers, data files.

Real files come from NANOFRONTIER_DATA (see conftest.py): tiny Shakespeare and stories260K (a real 260K-param
Llama in GGUF and llama2.c formats + its SentencePiece tokenizer). Nothing is skipped.
"""

import json
import struct

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier import FileFormatError, InvalidArgumentError
from nanofrontier.data import get_batch, get_file
from nanofrontier.formats import hf
from nanofrontier.tokenizer import CharTokenizer, SentencePieceTokenizer

pytestmark = pytest.mark.usefixtures("nf_data")

GREEDY_260K = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball."
)


def stories(name):
    return get_file(f"stories260K/{name}")


@pytest.fixture(scope="module")
def bin_model(nf_data):
    return nf.formats.load_llama2c(stories("stories260K.bin"))


@pytest.fixture(scope="module")
def gguf_model(nf_data):
    return nf.formats.load_gguf(stories("stories260K.gguf"))


@pytest.fixture(scope="module")
def sp_tok(nf_data):
    return SentencePieceTokenizer(stories("tok512.model"))


def assert_same_arrays(a, b, what):
    assert list(a) == list(b), f"{what}: names differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, f"{what}: {k}: shape {x.shape} vs {y.shape}"
        if not np.array_equal(x, y):
            d = np.abs(x.astype(np.float64) - y)
            i = np.unravel_index(d.argmax(), d.shape)
            raise AssertionError(f"{what}: {k}: max abs diff {d.max():.3e} at {i}")


# ============================================================================================ safetensors


def test_safetensors_round_trip_tensors_arrays_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    state = {
        "wte.weight": rng.standard_normal((7, 4)).astype(np.float32),
        "h.0.ln_1.bias": nf.tensor(rng.standard_normal(4)),
        "from_f64": rng.standard_normal((2, 3)),  # converted to float32 on the way in
        "fortran": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
        "scalar": np.float32(3.5),
        "empty": np.zeros((0, 3), np.float32),
    }
    p = tmp_path / "m.safetensors"
    nf.formats.save_safetensors(p, state, {"format": "pt", "note": "héllo"})
    got, meta = nf.formats.load_safetensors(str(p))
    assert meta == {"format": "pt", "note": "héllo"}
    assert sorted(got) == sorted(state)
    for k, v in state.items():
        want = np.asarray(v, dtype=np.float32)
        assert isinstance(got[k], nf.Tensor)
        np.testing.assert_array_equal(got[k].numpy(), want, err_msg=k)
    # without metadata
    nf.formats.save_safetensors(p, {"x": np.ones(2, np.float32)})
    got, meta = nf.formats.load_safetensors(p)
    assert meta == {} and got["x"].tolist() == [1.0, 1.0]


def test_safetensors_interop_with_the_python_package(tmp_path):
    import safetensors.numpy as st
    from safetensors import safe_open

    rng = np.random.default_rng(1)
    src = {
        "a32": rng.standard_normal((3, 4)).astype(np.float32),
        "b16": rng.standard_normal((5,)).astype(np.float16),
        "c64": rng.standard_normal((2, 2, 2)),
    }
    p = tmp_path / "theirs.safetensors"
    st.save_file(src, str(p), metadata={"format": "pt"})
    got, meta = nf.formats.load_safetensors(p)
    assert meta == {"format": "pt"}
    for k, v in src.items():
        np.testing.assert_array_equal(got[k].numpy(), v.astype(np.float32), err_msg=k)
    # and ours is readable by theirs
    q = tmp_path / "ours.safetensors"
    nf.formats.save_safetensors(q, {k: v.astype(np.float32) for k, v in src.items()}, {"step": "3"})
    back = st.load_file(str(q))
    for k, v in src.items():
        assert back[k].dtype == np.float32
        np.testing.assert_array_equal(back[k], v.astype(np.float32), err_msg=k)
    with safe_open(str(q), framework="numpy") as f:
        assert f.metadata() == {"step": "3"}


def write_bf16_safetensors(path, arrays):
    """A safetensors file with BF16 tensors, written by hand from the spec (numpy has no bfloat16)."""
    header, blobs, off = {}, [], 0
    for name, a in arrays.items():
        bits = (np.ascontiguousarray(a, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
        b = bits.tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_safetensors_reads_bf16(tmp_path):
    rng = np.random.default_rng(2)
    # values exactly representable in bf16: float32 with the low 16 bits cleared
    a = (rng.standard_normal((4, 6)).astype(np.float32).view(np.uint32) & 0xFFFF0000).view(np.float32)
    b = np.array([1.0, -2.5, 0.15625, 3.0e38, -1.0e-30], np.float32)
    b = (b.view(np.uint32) & 0xFFFF0000).view(np.float32)
    p = tmp_path / "bf16.safetensors"
    write_bf16_safetensors(p, {"a": a, "b": b})
    got, _ = nf.formats.load_safetensors(p)
    np.testing.assert_array_equal(got["a"].numpy(), a)
    np.testing.assert_array_equal(got["b"].numpy(), b)


def test_safetensors_errors(tmp_path):
    good = tmp_path / "good.safetensors"
    nf.formats.save_safetensors(good, {"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    data = good.read_bytes()
    cases = {
        "truncated": data[:-7],
        "header_only": data[:30],
        "tiny": data[:5],
        "empty": b"",
        "gguf": stories("stories260K.gguf").read_bytes()[:4096],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(FileFormatError, match="is not a valid safetensors file") as e:
            nf.formats.load_safetensors(p)
        assert str(p) in str(e.value), f"{name}: message does not name the file: {e.value}"
    with pytest.raises(FileNotFoundError):
        nf.formats.load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        nf.formats.save_safetensors(tmp_path / "no" / "dir.safetensors", {"w": np.ones(1)})
    # integer tensors are named, not silently cast
    ints = tmp_path / "ints.safetensors"
    import safetensors.numpy as st

    st.save_file({"ids": np.arange(4, dtype=np.int64)}, str(ints))
    with pytest.raises(FileFormatError, match="'ids'.*I64"):
        nf.formats.load_safetensors(ints)
    with pytest.raises(TypeError):
        nf.formats.save_safetensors(tmp_path / "x.safetensors", {"w": np.ones(1)}, {"step": 3})
    with pytest.raises(TypeError):
        nf.formats.save_safetensors(tmp_path / "x.safetensors", {1: np.ones(1)})
    with pytest.raises(InvalidArgumentError, match="reserved"):
        nf.formats.save_safetensors(tmp_path / "x.safetensors", {"__metadata__": np.ones(1)})


def test_safetensors_failed_save_keeps_the_old_file(tmp_path):
    p = tmp_path / "ckpt.safetensors"
    nf.formats.save_safetensors(p, {"w": np.ones((2, 2), np.float32)}, {"step": "1"})
    before = p.read_bytes()
    # conversion fails (a string is not a tensor): nothing is written
    with pytest.raises(TypeError):
        nf.formats.save_safetensors(p, {"w": np.zeros(3, np.float32), "bad": "not a tensor"})
    # the write itself fails (the target is a folder): the temp file is removed
    d = tmp_path / "dir.safetensors"
    d.mkdir()
    with pytest.raises(FileFormatError, match="dir.safetensors"):
        nf.formats.save_safetensors(d, {"w": np.ones(2, np.float32)})
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ckpt.safetensors", "dir.safetensors"]
    got, meta = nf.formats.load_safetensors(p)
    assert meta == {"step": "1"} and got["w"].tolist() == [[1.0, 1.0], [1.0, 1.0]]


# ============================================================================================ llama2.c


def test_llama2c_config_and_names(bin_model):
    config, state = bin_model
    assert config == {
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 172,
        "num_hidden_layers": 5,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "rope_layout": "interleaved",
    }
    hf.check_state(hf.llama_expected_shapes(config), state)  # names and shapes exactly
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    assert state["model.layers.4.mlp.down_proj.weight"].shape == (64, 172)
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]
    assert all(a.dtype == np.float32 for a in state.values())
    n_params = sum(a.size for k, a in state.items() if k != "lm_head.weight")
    assert n_params == 260_032, n_params  # the README's parameter count
    # w1 = gate, w3 = up, w2 = down: check against the raw file offsets of layer 0
    raw = np.fromfile(stories("stories260K.bin"), dtype="<f4", offset=28)
    d, f, n_l, v = 64, 172, 5, 512
    off = v * d + n_l * d + n_l * d * d + 2 * n_l * 32 * d + n_l * d * d + n_l * d
    np.testing.assert_array_equal(
        state["model.layers.0.mlp.gate_proj.weight"].ravel(), raw[off : off + f * d]
    )
    off += n_l * f * d
    np.testing.assert_array_equal(
        state["model.layers.0.mlp.down_proj.weight"].ravel(), raw[off : off + d * f]
    )
    off += n_l * d * f
    np.testing.assert_array_equal(state["model.layers.0.mlp.up_proj.weight"].ravel(), raw[off : off + f * d])


def test_llama2c_untied_classifier(tmp_path, bin_model):
    _, state = bin_model
    src = stories("stories260K.bin").read_bytes()
    wcls = np.random.default_rng(3).standard_normal((512, 64)).astype("<f4")
    hdr = list(struct.unpack("<7i", src[:28]))
    hdr[5] = -hdr[5]  # negative vocab: classifier stored separately at the end
    p = tmp_path / "untied.bin"
    p.write_bytes(struct.pack("<7i", *hdr) + src[28:] + wcls.tobytes())
    c2, s2 = nf.formats.load_llama2c(p)
    assert c2["tie_word_embeddings"] is False and c2["vocab_size"] == 512
    np.testing.assert_array_equal(s2["lm_head.weight"], wcls)
    np.testing.assert_array_equal(s2["model.embed_tokens.weight"], state["model.embed_tokens.weight"])


def test_llama2c_corrupt_files(tmp_path):
    src = stories("stories260K.bin").read_bytes()
    p = tmp_path / "cut.bin"
    p.write_bytes(src[:-100])
    with pytest.raises(FileFormatError, match=r"expected 1056540 bytes, got 1056440 \(truncated\)"):
        nf.formats.load_llama2c(p)
    p.write_bytes(src + b"\0" * 8)
    with pytest.raises(FileFormatError, match="expected 1056540 bytes, got 1056548"):
        nf.formats.load_llama2c(p)
    p.write_bytes(src[:20])
    with pytest.raises(FileFormatError, match="less than the 28-byte header"):
        nf.formats.load_llama2c(p)
    p.write_bytes(struct.pack("<7i", 64, 172, 5, 0, 4, 512, 512) + src[28:])
    with pytest.raises(FileFormatError, match="n_heads=0"):
        nf.formats.load_llama2c(p)
    p.write_bytes(struct.pack("<7i", 64, 172, 5, 8, 3, 512, 512) + src[28:])
    with pytest.raises(FileFormatError, match="not a multiple of n_kv_heads"):
        nf.formats.load_llama2c(p)
    p.write_bytes(struct.pack("<I", 0x616B3432) + src[4:])
    with pytest.raises(FileFormatError, match="version>=1"):
        nf.formats.load_llama2c(p)
    p.write_bytes(stories("stories260K.gguf").read_bytes())  # another format entirely
    with pytest.raises(FileFormatError):
        nf.formats.load_llama2c(p)
    with pytest.raises(FileNotFoundError):
        nf.formats.load_llama2c(tmp_path / "missing.bin")


# ============================================================================================ GGUF


def test_gguf_and_bin_hold_identical_tensors(gguf_model, bin_model):
    (cg, sg), (cb, sb) = gguf_model, bin_model
    assert_same_arrays(sg, sb, "GGUF vs llama2.c")
    # configs agree, except the context length: the GGUF says 2048, the model was trained at 512
    assert cg["max_position_embeddings"] == 2048 and cb["max_position_embeddings"] == 512
    assert cg["bos_token_id"] == 1 and cg["eos_token_id"] == 2
    same = {
        k: v for k, v in cg.items() if k not in ("max_position_embeddings", "bos_token_id", "eos_token_id")
    }
    assert same == {k: v for k, v in cb.items() if k != "max_position_embeddings"}
    # the GGUF stores output.weight, byte-equal to token_embd: reported tied, as the .bin header says
    assert cg["tie_word_embeddings"] is True and sg["lm_head.weight"] is sg["model.embed_tokens.weight"]


def test_gguf_metadata_and_names(nf_data):
    meta = nf.formats.read_gguf_metadata(stories("stories260K.gguf"))
    assert meta["general.architecture"] == "llama" and len(meta["tokenizer.ggml.tokens"]) == 512
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    from nanofrontier.formats.gguf import hf_name

    assert hf_name("blk.3.ffn_gate.weight") == "model.layers.3.mlp.gate_proj.weight"
    assert hf_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert hf_name("blk.0.attn_output.weight") == "model.layers.0.self_attn.o_proj.weight"
    assert hf_name("output.weight") == "lm_head.weight" and hf_name("rope_freqs.weight") is None


def test_gguf_corrupt_files(tmp_path):
    src = stories("stories260K.gguf").read_bytes()
    for name, blob in {
        "cut_data": src[: len(src) - 1000],
        "cut_header": src[:3000],
        "tiny": src[:10],
        "not_gguf": stories("stories260K.bin").read_bytes(),
    }.items():
        p = tmp_path / f"{name}.gguf"
        p.write_bytes(blob)
        with pytest.raises(FileFormatError) as e:
            nf.formats.load_gguf(p)
        assert str(p) in str(e.value), f"{name}: {e.value}"
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(FileFormatError):
        nf.formats.load_gguf(empty)
    with pytest.raises(FileNotFoundError):
        nf.formats.load_gguf(tmp_path / "missing.gguf")


GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k",
    "self_attn.v_proj.weight": "attn_v",
    "self_attn.o_proj.weight": "attn_output",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "ffn_gate",
    "mlp.up_proj.weight": "ffn_up",
    "mlp.down_proj.weight": "ffn_down",
}


def write_tiny_gguf(path, state, config, arch="llama", dtype=np.float32, quantize=None, extra=None):
    """A GGUF written with the gguf package's own writer (so the reader is tested on files it did not make)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", config["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", config["hidden_size"])
    w.add_uint32(f"{arch}.feed_forward_length", config["intermediate_size"])
    w.add_uint32(f"{arch}.block_count", config["num_hidden_layers"])
    w.add_uint32(f"{arch}.attention.head_count", config["num_attention_heads"])
    w.add_uint32(f"{arch}.attention.head_count_kv", config["num_key_value_heads"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config["rms_norm_eps"])
    w.add_float32(f"{arch}.rope.freq_base", config["rope_theta"])
    for name, arr in state.items():
        if name in GGUF_NAMES:
            g = GGUF_NAMES[name]
        else:
            i, rest = name[len("model.layers.") :].split(".", 1)
            g = f"blk.{i}.{GGUF_LAYER[rest]}.weight"
        if quantize == name:  # Q8_0: blocks of 32 values = f16 scale + 32 int8 (34 bytes)
            rows, cols = arr.shape
            w.add_tensor(
                g, np.zeros((rows, cols // 32 * 34), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            w.add_tensor(g, np.ascontiguousarray(arr, dtype=dtype if arr.ndim == 2 else np.float32))
    for k, v in (extra or {}).items():
        w.add_tensor(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tiny_llama(tied=False, seed=0):
    config = {
        "vocab_size": 40,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0,
        "tie_word_embeddings": tied,
        "rope_layout": "interleaved",
    }
    rng = np.random.default_rng(seed)
    state = {
        k: rng.standard_normal(s).astype(np.float32) for k, s in hf.llama_expected_shapes(config).items()
    }
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return config, state


def test_gguf_written_by_the_gguf_package_f32_and_f16(tmp_path):
    config, state = tiny_llama()
    p = tmp_path / "tiny.gguf"
    write_tiny_gguf(p, state, config)
    c2, s2 = nf.formats.load_gguf(p)
    assert_same_arrays(s2, state, "tiny f32 GGUF")
    assert {k: v for k, v in c2.items() if k != "vocab_size"} == {
        k: v for k, v in config.items() if k != "vocab_size"
    }
    assert c2["vocab_size"] == 40  # no tokenizer in this file: taken from token_embd
    # F16 matrices come back widened exactly
    write_tiny_gguf(p, state, config, dtype=np.float16)
    _, s3 = nf.formats.load_gguf(p)
    want = {k: (v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v) for k, v in state.items()}
    assert_same_arrays(s3, want, "tiny f16 GGUF")
    assert all(a.dtype == np.float32 for a in s3.values())
    # a tied model without an output tensor
    ct, st = tiny_llama(tied=True)
    write_tiny_gguf(p, {k: v for k, v in st.items() if k != "lm_head.weight"}, ct)
    c4, s4 = nf.formats.load_gguf(p)
    assert c4["tie_word_embeddings"] is True and s4["lm_head.weight"] is s4["model.embed_tokens.weight"]


def test_gguf_refuses_what_it_cannot_load(tmp_path):
    config, state = tiny_llama()
    p = tmp_path / "q.gguf"
    write_tiny_gguf(p, state, config, quantize="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(FileFormatError, match=r"'blk\.1\.ffn_up\.weight' has type Q8_0"):
        nf.formats.load_gguf(p)
    write_tiny_gguf(p, state, config, arch="gpt2")
    with pytest.raises(FileFormatError, match="architecture 'gpt2'"):
        nf.formats.load_gguf(p)
    write_tiny_gguf(p, state, config, extra={"rope_freqs.weight": np.ones(4, np.float32)})
    with pytest.raises(FileFormatError, match="rope_freqs.weight"):
        nf.formats.load_gguf(p)
    missing = {k: v for k, v in state.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    write_tiny_gguf(p, missing, config)
    with pytest.raises(
        hf.StateMismatchError, match=r"missing \(1\): model\.layers\.1\.self_attn\.v_proj\.weight"
    ):
        nf.formats.load_gguf(p)


# ---- the RoPE layout, checked by running the real model (a float64 numpy reference forward) ----


def llama_logits(state, config, ids, layout):
    """Logits (T, V) of a Llama forward in float64 numpy; ``layout`` says which pairs RoPE rotates."""
    d, h, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, eps, t = d // h, config["rms_norm_eps"], len(ids)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    ang = np.arange(t)[:, None] * config["rope_theta"] ** (-np.arange(0, hd, 2) / hd)  # (T, hd/2)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(q):  # (T, heads, hd)
        if layout == "interleaved":  # rotate (x[2i], x[2i+1])
            a, b = q[..., 0::2], q[..., 1::2]
            return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(q.shape)
        a, b = q[..., : hd // 2], q[..., hd // 2 :]  # rotate (x[i], x[i + hd/2])
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)

    mask = np.triu(np.full((t, t), -np.inf), 1)
    x = state["model.embed_tokens.weight"][ids].astype(np.float64)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        z = rms(x, state[p + "input_layernorm.weight"])
        q = rope((z @ state[p + "self_attn.q_proj.weight"].T).reshape(t, h, hd))
        k = np.repeat(rope((z @ state[p + "self_attn.k_proj.weight"].T).reshape(t, kv, hd)), h // kv, axis=1)
        v = np.repeat((z @ state[p + "self_attn.v_proj.weight"].T).reshape(t, kv, hd), h // kv, axis=1)
        att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", att, v).reshape(t, d) @ state[p + "self_attn.o_proj.weight"].T
        z = rms(x, state[p + "post_attention_layernorm.weight"])
        g, u = z @ state[p + "mlp.gate_proj.weight"].T, z @ state[p + "mlp.up_proj.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ state[p + "mlp.down_proj.weight"].T
    return rms(x, state["model.norm.weight"]) @ state["lm_head.weight"].T


def greedy(state, config, layout, n):
    ids = [1]
    for _ in range(n):
        ids.append(int(llama_logits(state, config, ids, layout)[-1].argmax()))
    return ids


def test_rope_layout_is_interleaved_and_hf_permutation_is_exact(gguf_model, sp_tok):
    config, state = gguf_model
    # the loaded weights + interleaved RoPE reproduce llama2.c's own CI text
    text = sp_tok.decode(greedy(state, config, "interleaved", 44))
    assert text.startswith(GREEDY_260K), text
    # the same weights with HF's rotate-half RoPE do not: the layout matters and the config says which
    assert not sp_tok.decode(greedy(state, config, "half", 44)).startswith(GREEDY_260K)
    # permuting q/k rows to HF order makes rotate-half compute the same function
    hs, hc = hf.llama_rope_layout(state, config, "half")
    assert hc["rope_layout"] == "half"
    ids = sp_tok.encode(GREEDY_260K)
    a, b = llama_logits(state, config, ids, "interleaved"), llama_logits(hs, hc, ids, "half")
    assert np.abs(a - b).max() < 1e-9, np.abs(a - b).max()


# ============================================================================================ HF layouts


def test_permute_rope_qk_maps_pairs_to_halves_and_inverts():
    n_heads, hd, d_in = 3, 8, 5
    w = np.arange(n_heads * hd * d_in, dtype=np.float32).reshape(n_heads * hd, d_in)
    h = hf.permute_rope_qk(w, n_heads, "interleaved", "half")
    for head in range(n_heads):
        for i in range(hd // 2):
            np.testing.assert_array_equal(h[head * hd + i], w[head * hd + 2 * i])
            np.testing.assert_array_equal(h[head * hd + i + hd // 2], w[head * hd + 2 * i + 1])
    np.testing.assert_array_equal(hf.permute_rope_qk(h, n_heads, "half", "interleaved"), w)
    rng = np.random.default_rng(4)
    for shape, heads in [((64, 64), 8), ((32, 64), 4), ((16,), 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = hf.permute_rope_qk(
            hf.permute_rope_qk(x, heads, "half", "interleaved"), heads, "interleaved", "half"
        )
        np.testing.assert_array_equal(y, x)
        np.testing.assert_array_equal(hf.permute_rope_qk(x, heads, "half", "half"), x)
    # a bias permutes like the weight's rows
    np.testing.assert_array_equal(
        hf.permute_rope_qk(np.arange(8), 1, "interleaved", "half"), [0, 2, 4, 6, 1, 3, 5, 7]
    )
    with pytest.raises(InvalidArgumentError, match="even head_dim"):
        hf.permute_rope_qk(np.zeros((12, 4)), 4, "interleaved", "half")
    with pytest.raises(InvalidArgumentError, match="unknown rope layout 'neox'"):
        hf.permute_rope_qk(np.zeros((8, 4)), 1, "neox", "half")


def test_llama_hf_config_round_trip(gguf_model):
    config = gguf_model[0]
    h = hf.llama_config_to_hf(config)
    assert h["architectures"] == ["LlamaForCausalLM"] and h["model_type"] == "llama"
    assert h["hidden_act"] == "silu" and h["torch_dtype"] == "float32"
    assert (h["hidden_size"], h["num_key_value_heads"], h["intermediate_size"]) == (64, 4, 172)
    assert (h["bos_token_id"], h["eos_token_id"], h["tie_word_embeddings"]) == (1, 2, True)
    json.dumps(h)  # config.json-able
    back = hf.llama_config_from_hf(h)
    assert back == {**config, "rope_layout": "half"}
    # defaults of a minimal HF config
    c = hf.llama_config_from_hf(
        {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "vocab_size": 10,
        }
    )
    assert c["num_key_value_heads"] == 4 and c["tie_word_embeddings"] is False and c["rms_norm_eps"] == 1e-6
    for bad, msg in [
        ({"model_type": "mistral"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
    ]:
        with pytest.raises(InvalidArgumentError, match=msg):
            hf.llama_config_from_hf({**h, **bad})


def test_llama_hf_export_through_safetensors(tmp_path, gguf_model, sp_tok):
    config, state = gguf_model
    hs = hf.llama_state_to_hf(state, config)
    assert "lm_head.weight" not in hs  # tied: HF leaves it out
    (tmp_path / "config.json").write_text(json.dumps(hf.llama_config_to_hf(config)))
    nf.formats.save_safetensors(tmp_path / "model.safetensors", hs, {"format": "pt"})
    # ... and back, as a user loading an HF folder would
    loaded, meta = nf.formats.load_safetensors(tmp_path / "model.safetensors")
    c2 = hf.llama_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    s2 = hf.llama_state_from_hf({k: v.numpy() for k, v in loaded.items()}, c2)
    assert meta == {"format": "pt"} and c2["rope_layout"] == "half"
    s3, c3 = hf.llama_rope_layout(s2, c2, "interleaved")
    assert_same_arrays(s3, state, "HF export round trip")
    assert {k: v for k, v in c3.items() if k != "max_position_embeddings"} == {
        k: v for k, v in config.items() if k != "max_position_embeddings"
    }
    ids = sp_tok.encode("Once upon a time")
    np.testing.assert_allclose(
        llama_logits(s2, c2, ids, "half"), llama_logits(state, config, ids, "interleaved"), atol=1e-9
    )


def gpt2_config():
    return {
        "vocab_size": 11,
        "n_embd": 8,
        "n_layer": 2,
        "n_head": 2,
        "block_size": 6,
        "bias": True,
        "layer_norm_eps": 1e-5,
    }


def random_state(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def test_gpt2_config_round_trip():
    c = gpt2_config()
    h = hf.gpt2_config_to_hf(c)
    assert h["architectures"] == ["GPT2LMHeadModel"] and h["model_type"] == "gpt2"
    assert h["activation_function"] == "gelu_new" and h["tie_word_embeddings"] is True
    assert (h["n_embd"], h["n_layer"], h["n_head"], h["n_positions"], h["vocab_size"]) == (8, 2, 2, 6, 11)
    assert h["layer_norm_epsilon"] == 1e-5
    json.dumps(h)
    assert hf.gpt2_config_from_hf(h) == c
    with pytest.raises(InvalidArgumentError, match="bias=False"):
        hf.gpt2_config_to_hf({**c, "bias": False})
    with pytest.raises(InvalidArgumentError, match="activation_function 'relu'"):
        hf.gpt2_config_from_hf({**h, "activation_function": "relu"})
    # the published GPT-2 config.json (124M) keys
    hub = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 1024,
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    }
    assert hf.gpt2_config_from_hf(hub) == {
        "vocab_size": 50257,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "block_size": 1024,
        "bias": True,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def test_gpt2_state_to_and_from_hf():
    c = gpt2_config()
    ours = random_state(hf.gpt2_expected_shapes(c))
    assert len(ours) == 2 + 12 * 2 + 2
    h = hf.gpt2_state_to_hf(ours)
    assert "lm_head.weight" not in h and all(k.startswith("transformer.") for k in h)
    assert h["transformer.h.0.attn.c_attn.weight"].shape == (8, 24)  # Conv1D: (in, out)
    assert h["transformer.h.1.mlp.c_fc.weight"].shape == (8, 32)
    assert h["transformer.h.1.mlp.c_proj.weight"].shape == (32, 8)
    assert h["transformer.h.0.attn.c_attn.bias"].shape == (24,)
    np.testing.assert_array_equal(h["transformer.h.0.attn.c_proj.weight"], ours["h.0.attn.c_proj.weight"].T)
    np.testing.assert_array_equal(h["transformer.wte.weight"], ours["wte.weight"])
    assert_same_arrays(hf.gpt2_state_from_hf(h), ours, "GPT-2 HF round trip")
    # lm_head present and tied, no prefix, and the mask buffers of old checkpoints: all accepted
    hub = {k[len("transformer.") :]: v for k, v in h.items()}
    hub["lm_head.weight"] = ours["wte.weight"].copy()
    hub["h.0.attn.bias"] = np.tril(np.ones((1, 1, 6, 6), np.float32))
    hub["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    back = hf.gpt2_state_from_hf(hub)
    assert_same_arrays(back, ours, "GPT-2 from hub-style names")
    hf.check_state(hf.gpt2_expected_shapes(c), back)
    # an untied head is kept both ways
    untied = {**ours, "lm_head.weight": np.ones((11, 8), np.float32)}
    assert "lm_head.weight" in hf.gpt2_state_to_hf(untied)
    assert "lm_head.weight" in hf.gpt2_state_from_hf(hf.gpt2_state_to_hf(untied))


def test_pretrained_directory_round_trip_without_a_model(tmp_path):
    """formats.save_pretrained / load_pretrained: what the models' save_pretrained/from_pretrained call."""
    c = gpt2_config()
    ours = random_state(hf.gpt2_expected_shapes(c))
    nf.formats.save_pretrained(tmp_path / "d", "gpt2", c, ours)
    on_disk = json.loads((tmp_path / "d" / "config.json").read_text())
    assert on_disk["model_type"] == "gpt2" and on_disk["n_positions"] == 6
    assert not list((tmp_path / "d").glob("*.tmp"))  # atomic writes leave no temporary file
    config, state = nf.formats.load_pretrained(tmp_path / "d", "gpt2")
    assert {k: config[k] for k in c} == c
    assert_same_arrays(state, ours, "GPT-2 directory round trip")
    # the architecture is checked, and so is every name and shape
    with pytest.raises(InvalidArgumentError, match="model_type is 'gpt2', expected 'llama'"):
        nf.formats.load_pretrained(tmp_path / "d", "llama")
    with pytest.raises(InvalidArgumentError, match="arch must be one of"):
        nf.formats.load_pretrained(tmp_path / "d", "bert")
    with pytest.raises(InvalidArgumentError, match="arch must be one of"):
        nf.formats.save_pretrained(tmp_path / "e", "gpt", c, ours)
    nf.formats.save_pretrained(tmp_path / "bad", "gpt2", c, {k: v for k, v in ours.items() if k != "wpe.weight"})
    with pytest.raises(hf.StateMismatchError, match="missing"):
        nf.formats.load_pretrained(tmp_path / "bad", "gpt2")
    with pytest.raises(FileNotFoundError, match="config.json"):
        nf.formats.load_pretrained(tmp_path / "nowhere", "gpt2")


def test_check_state_lists_every_problem():
    expected = {"a.weight": (2, 3), "b.weight": (4,), "c.bias": (5,)}
    got = {"a.weight": np.zeros((3, 2)), "b.weight": np.zeros(4), "d.weight": np.zeros(1)}
    with pytest.raises(hf.StateMismatchError) as e:
        hf.check_state(expected, got, "my model")
    msg = str(e.value)
    assert "my model" in msg and "missing (1): c.bias" in msg and "unexpected (1): d.weight" in msg
    assert "a.weight: expected (2, 3), got (3, 2)" in msg
    assert e.value.missing == ["c.bias"] and e.value.unexpected == ["d.weight"]
    assert e.value.mismatched == {"a.weight": ((2, 3), (3, 2))}
    assert isinstance(e.value, FileFormatError) and isinstance(e.value, ValueError)
    assert (
        hf.check_state(
            expected, {"a.weight": np.zeros((2, 3)), "b.weight": np.zeros(4), "c.bias": np.zeros(5)}
        )
        is None
    )


# ============================================================================================ tokenizers


def test_char_tokenizer_on_shakespeare():
    text = nf.data.load_shakespeare()
    tok = CharTokenizer(text)
    assert tok.vocab_size == 65 and tok.itos == sorted(set(text))
    assert tok.stoi["\n"] == 0 and tok.itos[tok.stoi["z"]] == "z"
    ids = tok.encode("First Citizen:")
    assert tok.decode(ids) == "First Citizen:" and tok.decode(np.array(ids)) == "First Citizen:"
    tok2 = CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert tok2.itos == tok.itos and tok2.encode(text[:1000]) == tok.encode(text[:1000])
    with pytest.raises(InvalidArgumentError, match="'é'"):
        tok.encode("café")
    with pytest.raises(InvalidArgumentError, match="65"):
        tok.decode([65])
    with pytest.raises(InvalidArgumentError):
        CharTokenizer.from_dict({"type": "char", "chars": "ba"})
    with pytest.raises(InvalidArgumentError):
        CharTokenizer("")


def test_optional_packages_missing_give_an_install_hint(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match=r"pip install 'nanofrontier\[formats\]'"):
        nf.formats.load_gguf(stories("stories260K.gguf"))
    with pytest.raises(ImportError, match=r"pip install 'nanofrontier\[formats\]'"):
        SentencePieceTokenizer(stories("tok512.model"))


def test_sentencepiece_tokenizer(sp_tok, tmp_path):
    assert sp_tok.encode("Once upon a time") == [1, 403, 407, 261, 378]
    assert sp_tok.encode("Once upon a time", bos=False, eos=True) == [403, 407, 261, 378, 2]
    assert (sp_tok.vocab_size, sp_tok.bos_id, sp_tok.eos_id) == (512, 1, 2)
    for text in ["Once upon a time", GREEDY_260K, "Lily's dog — naïve café 123!\nnew line"]:
        assert sp_tok.decode(sp_tok.encode(text, eos=True)) == text
    assert sp_tok.id_to_piece(1) == "<s>"
    with pytest.raises(FileNotFoundError):
        SentencePieceTokenizer(tmp_path / "missing.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(FileFormatError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(bad)
    with pytest.raises(InvalidArgumentError):
        sp_tok.decode([512])


# ============================================================================================ data


def test_known_checksums_match_the_shared_files(nf_data):
    sums = {}
    for line in (nf_data / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    for rel, (url, sha) in nf.data.KNOWN.items():
        assert sums[rel] == sha, rel
        assert nf.data.sha256sum(nf_data / rel) == sha, f"{rel}: the shared copy is not the expected file"
        assert get_file(rel) == nf_data / rel
    assert nf.data.KNOWN["stories260K/stories260K.gguf"][0] is None
    assert nf.data.KNOWN["tinyshakespeare.txt"][0].startswith(
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
    )


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOFRONTIER_DATA", str(tmp_path / "d"))
    assert nf.data.data_dir() == tmp_path / "d"
    monkeypatch.delenv("NANOFRONTIER_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert nf.data.data_dir() == tmp_path / "xdg" / "nanofrontier"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert nf.data.data_dir() == tmp_path / "home" / ".cache" / "nanofrontier"


def test_cache_dir_precedence_and_facts_cache_follows_it(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOFRONTIER_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("NANOFRONTIER_DATA", str(tmp_path / "d"))  # the data folder is not the cache
    assert nf.data.cache_dir() == tmp_path / "c"
    assert nf.data.cache_dir("part8", "x.safetensors") == tmp_path / "c" / "part8" / "x.safetensors"
    from nanofrontier.tasks import facts

    assert facts.cache_dir() == str(tmp_path / "c" / "facts_base")
    monkeypatch.delenv("NANOFRONTIER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert nf.data.cache_dir("a") == tmp_path / "xdg" / "nanofrontier" / "a"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert nf.data.cache_dir() == tmp_path / "home" / ".cache" / "nanofrontier"
    assert not (tmp_path / "home").exists()  # naming a folder does not create it


def test_get_file_checks_downloads_and_explains(monkeypatch, tmp_path, nf_data):
    root = tmp_path / "data"
    (root / "stories260K").mkdir(parents=True)
    monkeypatch.setenv("NANOFRONTIER_DATA", str(root))
    # a corrupt copy of a known file
    (root / "stories260K" / "tok512.model").write_bytes(b"garbage")
    with pytest.raises(FileFormatError, match="corrupt"):
        get_file("stories260K/tok512.model")
    # missing, no public URL: say which variable to set
    with pytest.raises(FileNotFoundError, match="NANOFRONTIER_DATA") as e:
        get_file("stories260K/stories260K.gguf")
    assert "no public download URL" in str(e.value)
    # missing, URL unreachable (this machine has no internet; a file:// URL to nowhere behaves the same)
    with pytest.raises(FileNotFoundError, match="NANOFRONTIER_DATA") as e:
        get_file("tinyshakespeare.txt", url=(tmp_path / "nowhere.txt").as_uri())
    assert "downloading it from" in str(e.value)
    # a download that works (file:// URL): checksum verified, renamed into place, no temp file left
    src = nf_data / "tinyshakespeare.txt"
    got = get_file("tinyshakespeare.txt", url=src.as_uri())
    assert got == root / "tinyshakespeare.txt" and got.read_bytes() == src.read_bytes()
    assert get_file("tinyshakespeare.txt") == got  # now present: no download
    # a download with the wrong checksum saves nothing
    with pytest.raises(FileFormatError, match="not the expected file"):
        get_file("sub/x.txt", url=src.as_uri(), sha256="0" * 64)
    assert not (root / "sub" / "x.txt").exists()
    assert [p.name for p in (root / "sub").iterdir()] == []
    # files outside the table work too, with or without a checksum
    (root / "mine.txt").write_text("hi")
    assert get_file("mine.txt") == root / "mine.txt"
    for bad in ["/etc/passwd", "../x", ""]:
        with pytest.raises(InvalidArgumentError):
            get_file(bad)


def test_shakespeare_splits_follow_nanogpt():
    text = nf.data.load_shakespeare()
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
    tok = CharTokenizer(text)
    train, val = nf.data.shakespeare_splits(tok)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert tok.decode(train[:14]) == "First Citizen:" and tok.decode(val) == text[1_003_854:]
    t2, _ = nf.data.shakespeare_splits()  # default: a char tokenizer of the whole text
    np.testing.assert_array_equal(t2, train)


def test_get_batch():
    ids = np.arange(1000, dtype=np.int64) * 3
    x, y = get_batch(ids, 4, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    for row_x, row_y in zip(x, y):  # real windows of ids, targets one step later
        start = row_x[0] // 3
        np.testing.assert_array_equal(row_x, ids[start : start + 8])
        np.testing.assert_array_equal(row_y, ids[start + 1 : start + 9])
    x2, _ = get_batch(ids, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    # every start is possible, including the last one (len - block_size - 1)
    xs, ys = get_batch(np.arange(10), 2000, 9, np.random.default_rng(1))
    assert xs[:, 0].min() == 0 and ys[:, -1].max() == 9
    with pytest.raises(InvalidArgumentError):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))
    with pytest.raises(InvalidArgumentError):
        get_batch(np.arange(8.0), 2, 4, np.random.default_rng(0))
    with pytest.raises(TypeError):
        get_batch(np.arange(100), 2, 4, 0)
