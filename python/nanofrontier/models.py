"""Transformer language models: GPT (the GPT-2 architecture) and Llama (RoPE, RMSNorm, SwiGLU, GQA).

The model lives in Rust; each call below (forward, hidden states, per-token log-probs, generation) is one
call into it with the GIL released. What Python adds: configs with presets, torch-like names, and the
``nn.Module`` behaviour (parameters, state_dict, train/eval), so optimizers and checkpoints work as for
any other module::

    model = nf.models.GPT(nf.models.GPTConfig.tiny(vocab_size=65))
    logits, loss = model(x, y)            # x, y: (B, T) int token ids
    loss.backward(); opt.step()
    tokens, logprobs = model.generate([[0]], max_new_tokens=100, temperature=0.8, top_k=40, seed=1)
"""

from dataclasses import asdict, dataclass, replace

import numpy as np

from . import _core, formats
from .nn import Module


@dataclass
class GPTConfig:
    """GPT hyper-parameters (nanoGPT's names)."""

    vocab_size: int = 65
    block_size: int = 128  # longest sequence: number of learned positions
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5

    @classmethod
    def tiny(cls, **kw):
        """4 layers, 4 heads, 128 wide, 128 positions (≈ 0.8M parameters with a 65-char vocabulary)."""
        return replace(cls(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128), **kw)

    @classmethod
    def small(cls, **kw):
        """6 layers, 6 heads, 384 wide, 256 positions (nanoGPT's Shakespeare-char model, ≈ 10.7M)."""
        return replace(cls(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384), **kw)

    @classmethod
    def gpt2(cls, **kw):
        """GPT-2 124M: 12 layers, 12 heads, 768 wide, 1024 positions, 50257 tokens."""
        return replace(cls(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768), **kw)


@dataclass
class LlamaConfig:
    """Llama hyper-parameters (Hugging Face LlamaConfig names)."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 172
    num_hidden_layers: int = 5
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    # "interleaved" rotates (x[2i], x[2i+1]) as Meta/llama2.c/GGUF weights expect; "half" rotates
    # (x[i], x[i + d/2]) as Hugging Face weights expect.
    rope_layout: str = "interleaved"

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def stories260k(cls, **kw):
        """The shape of Karpathy's stories260K (llama2.c): 64 wide, 5 layers, 8 heads, 4 kv heads."""
        return replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw):
        """A small Llama for experiments: 4 layers, 128 wide, 4 heads, 2 kv heads."""
        return replace(cls(vocab_size=65, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256), **kw)


def _ids(x):
    """Token ids as an int64 numpy array (accepts lists, numpy arrays and whole-number Tensors)."""
    if isinstance(x, np.ndarray) and x.dtype == np.int64:
        return x
    from ._convert import to_index_array

    return to_index_array(x)


@dataclass
class Generation:
    """What ``generate_batch`` returns: padded (B, N) arrays of the new tokens, their log-probs under the
    model (temperature 1, unfiltered) and a mask of the real ones (not padding, not after a stop token),
    each row's length, and the (B, T) prompts and prompt mask as they ran."""

    tokens: np.ndarray
    logprobs: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    prompt_ids: np.ndarray
    prompt_mask: np.ndarray


class _CausalLM(Module):
    """What GPT and Llama share: everything except how they are built."""

    def __init__(self, config, core):
        self.config = config
        self._core = core
        self.training = True

    # parameters come from the Rust model, under their checkpoint names
    def _named_tensors(self, prefix):
        for name, t in self._core.named_parameters():
            yield prefix + name, t

    def named_children(self):
        return iter(())

    def forward(self, idx, targets=None, ignore_index=-100):
        """``(logits, loss)``: logits (B, T, V) for token ids ``idx`` (B, T); with ``targets`` (B, T), the
        mean cross-entropy over positions whose target is not ``ignore_index`` (else ``loss`` is None)."""
        return self._core.forward(_ids(idx), None if targets is None else _ids(targets), ignore_index,
                                  self.training)

    def hidden(self, idx):
        """The trunk's output (B, T, C) after the final norm — what reward and value heads read."""
        return self._core.hidden(_ids(idx), self.training)

    def head(self, h):
        """Hidden states (…, C) → logits (…, V)."""
        return self._core.head(h)

    def token_logprobs(self, idx, targets, ignore_index=-100):
        """log p(targets[b, t] | idx[b, :t+1]) for every position, as a differentiable (B, T) tensor.
        Positions whose target is ``ignore_index`` give 0 (use it to mask prompts out)."""
        return self._core.token_logprobs(_ids(idx), _ids(targets), ignore_index)

    def sequence_logprobs(self, input_ids, completion_mask, reduce="sum"):
        """Log-probs of the completion tokens of right-padded rows, differentiable, in one forward:
        ``(B,)`` for ``reduce="sum"``/``"mean"``, ``(B, T-1)`` for ``"none"``
        (:func:`nanofrontier.rl.sequence_logprobs`)."""
        from .rl.sequences import sequence_logprobs

        return sequence_logprobs(self, input_ids, completion_mask, reduce)

    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 stop_tokens=None, attention_mask=None):
        """Continue each prompt with a KV cache, all rows in one batch. Returns ``(tokens, logprobs)``:
        the new tokens of each prompt (a list per row, ending at its stop token if it met one) and
        log p of each under the model (temperature 1, unfiltered). ``temperature=0`` is greedy.

        ``prompts``: a list of token-id lists of any lengths (or one list), left-padded internally; or a
        padded (B, T) array with ``attention_mask`` (B, T) (1/True = real token), padded on the left, the
        right or both (padding positions must hold valid ids). Padding is never attended to and each row
        counts positions from its own first real token, so a row's tokens are those of its prompt run
        alone. ``seed``: an int (row r then draws from its own generator, seeded by the r-th number of
        ``Rng(seed)``), a list of one seed per row, or None (drawn from the global generator).
        ``stop_tokens``: ids that end any row, or one list per row. See ``generate_batch`` for padded
        arrays and a mask, as RL rollouts want them."""
        g = self._generate(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens,
                           attention_mask)
        return g[1], g[2]

    def generate_batch(self, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                       stop_tokens=None, attention_mask=None, pad_token_id=0):
        """``generate`` for rollouts (PPO, GRPO): the same arguments, and a ``Generation`` of padded
        arrays — ``tokens`` (B, N) int64 (``pad_token_id`` after a row's end), ``logprobs`` (B, N)
        float32 (0 there), ``mask`` (B, N) bool (True for real generated tokens: up to and including a
        row's stop token, never after it), ``lengths`` (B,), and the prompts as run: ``prompt_ids``
        (B, T) and ``prompt_mask`` (B, T) (left-padded when lists were given; ``pad_token_id`` where the
        mask is False). N = the longest row. ``pad_token_id`` only fills these arrays (any value, e.g. -100)."""
        ids, tokens, logprobs = self._generate(prompts, max_new_tokens, temperature, top_k, top_p, seed,
                                               stop_tokens, attention_mask)
        b, n = len(tokens), max((len(t) for t in tokens), default=0)
        ids = (np.where(ids[1], ids[0], pad_token_id), ids[1])
        out = Generation(np.full((b, n), pad_token_id, np.int64), np.zeros((b, n), np.float32),
                         np.zeros((b, n), bool), np.array([len(t) for t in tokens], np.int64), *ids)
        for r, (t, lp) in enumerate(zip(tokens, logprobs)):
            out.tokens[r, :len(t)], out.logprobs[r, :len(t)], out.mask[r, :len(t)] = t, lp, True
        return out

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens,
                  attention_mask):
        if isinstance(prompts, np.ndarray):
            prompts = prompts.tolist() if prompts.ndim == 2 else [prompts.tolist()]
        elif len(prompts) and not isinstance(prompts[0], (list, tuple, np.ndarray)):
            prompts = [prompts]
        prompts = [[int(t) for t in p] for p in prompts]
        mask = None
        if attention_mask is not None:
            rows = attention_mask.tolist() if isinstance(attention_mask, np.ndarray) else list(attention_mask)
            rows = [rows] if len(rows) and np.isscalar(rows[0]) else rows
            mask = [[int(x) for x in row] for row in rows]
            if any(x not in (0, 1) for row in mask for x in row):
                raise ValueError("attention_mask must hold only 0/1 (or False/True)")
            mask = [[x == 1 for x in row] for row in mask]
        row_seeds = None
        if isinstance(seed, (list, tuple, np.ndarray)):
            seed, row_seeds = None, [int(s) for s in seed]
        stops, row_stops = stop_tokens, None
        per_row = stop_tokens is not None and len(stop_tokens) and not np.isscalar(stop_tokens[0])
        if per_row:
            stops, row_stops = None, [[int(t) for t in s] for s in stop_tokens]
        elif stop_tokens is not None:
            stops = [int(t) for t in stop_tokens]
        tokens, logprobs = self._core.generate(prompts, max_new_tokens, temperature, top_k, top_p, seed,
                                               row_seeds, stops, row_stops, mask)
        if mask is None:  # the prompts as they ran: left-padded
            width = max((len(p) for p in prompts), default=0)
            mask = [[False] * (width - len(p)) + [True] * len(p) for p in prompts]
            prompts = [[0] * (width - len(p)) + p for p in prompts]
        b, t = len(prompts), len(prompts[0]) if prompts else 0
        ids = (np.array(prompts, np.int64).reshape(b, t), np.array(mask, bool).reshape(b, t))
        return ids, tokens, logprobs

    def attention_weights(self, idx):
        """Where every head looks: for token ids ``idx`` (B, T) (or one sequence), a list with one
        (B, H, T, T) tensor per layer; row i of head h holds the softmax weights that position i puts on
        positions 0..i (later ones are 0). Computed in eval mode, without gradients."""
        return self._core.attention_weights(_ids(idx))

    def flops_per_token(self, seq_len=None):
        """Exact matmul FLOPs per token at ``seq_len`` (default: the full context):
        ``{"forward": f, "training": 3 f}`` (backward ≈ 2× forward)."""
        seq_len = self._max_len() if seq_len is None else seq_len
        f = self._core.forward_flops_per_token(seq_len)
        return {"forward": f, "training": 3 * f}

    def copy(self):
        """An independent copy (same config, own weights): e.g. the frozen reference model in RLHF."""
        new = type(self).__new__(type(self))
        _CausalLM.__init__(new, self.config, self._core.copy())
        new.training = self.training
        return new

    def freeze(self):
        """Stop tracking gradients for every parameter (returns self)."""
        for p in self.parameters():
            p.requires_grad = False
        return self

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in asdict(self.config).items())

    # ---- loading and saving: the formats live in nf.formats; these are one call each ----
    def save_pretrained(self, directory):
        """Write ``config.json`` and ``model.safetensors`` in the Hugging Face layout of this architecture
        (``GPT2LMHeadModel`` / ``LlamaForCausalLM``), so ``transformers`` loads the directory unchanged.
        Each file is written atomically (:func:`nanofrontier.formats.save_pretrained`)."""
        formats.save_pretrained(directory, self._ARCH, asdict(self.config), self.state_dict())

    @classmethod
    def from_pretrained(cls, directory):
        """Load a directory written by ``save_pretrained`` or by ``transformers`` (float32/16/bf16 weights).
        Every name and shape is checked; the error lists what is missing, unexpected or mismatched."""
        return cls._from_state(*formats.load_pretrained(directory, cls._ARCH))

    @classmethod
    def _from_state(cls, cfg, state):
        """A model with config dict ``cfg`` (keys our config lacks are dropped) holding exactly ``state``.
        The global generator is left untouched."""
        fields = cls._CONFIG.__dataclass_fields__
        config = cls._CONFIG(**{k: v for k, v in cfg.items() if k in fields})
        rng = _core.get_rng_state()
        try:
            model = cls(config)
        finally:
            _core.set_rng_state(rng)
        own = dict(model.named_parameters())
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
        return model

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class GPT(_CausalLM):
    """GPT-2 architecture: learned positions, LayerNorm, GELU MLP, head tied to the token embedding.
    Initialised as nanoGPT does, from the global seeded generator."""

    _ARCH = "gpt2"
    _CONFIG = GPTConfig

    def __init__(self, config=None, **kw):
        config = replace(config or GPTConfig(), **kw)
        c = asdict(config)
        super().__init__(config, _core.Model.gpt(
            c["vocab_size"], c["block_size"], c["n_layer"], c["n_head"], c["n_embd"], float(c["dropout"]),
            bool(c["bias"]), float(c["layer_norm_eps"])))

    def _max_len(self):
        return self.config.block_size


class Llama(_CausalLM):
    """Llama architecture: RoPE, RMSNorm, SwiGLU, grouped-query attention, HF parameter names."""

    _ARCH = "llama"
    _CONFIG = LlamaConfig

    @classmethod
    def from_gguf(cls, path):
        """Load a Llama-architecture GGUF file (F32/F16 tensors), e.g. stories260K.gguf."""
        return cls._from_state(*formats.load_gguf(str(path)))

    @classmethod
    def from_llama2c(cls, path):
        """Load a llama2.c ``.bin`` checkpoint (legacy v0 format), e.g. stories260K.bin."""
        return cls._from_state(*formats.load_llama2c(str(path)))

    def __init__(self, config=None, **kw):
        config = replace(config or LlamaConfig(), **kw)
        c = asdict(config)
        super().__init__(config, _core.Model.llama(
            c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
            c["num_attention_heads"], c["num_key_value_heads"], c["max_position_embeddings"],
            float(c["rms_norm_eps"]), float(c["rope_theta"]), bool(c["tie_word_embeddings"]),
            c["rope_layout"]))

    def _max_len(self):
        return self.config.max_position_embeddings



__all__ = ["GPTConfig", "LlamaConfig", "GPT", "Llama", "Generation"]
