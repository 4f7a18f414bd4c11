"""Training checkpoints: model weights, optimizer state, the global random generator and the step, in
one safetensors file written atomically (a crash mid-save leaves the previous checkpoint intact). A run
resumed from a checkpoint continues bit-for-bit like one that was never interrupted::

    nf.checkpoint.save("ckpt.safetensors", model, opt, step=step)
    ...
    info = nf.checkpoint.load("ckpt.safetensors", model, opt)   # restores weights, optimizer, RNG
    start = info["step"]
"""

import json

import numpy as np

from . import _core
from .exceptions import ShapeError
from .formats import load_safetensors, save_safetensors

FORMAT = "nanofrontier-checkpoint-v1"


def save(path, model, optimizer=None, step=0, extra=None):
    """Write ``model``'s parameters, ``optimizer``'s state (if given), the global RNG state, ``step`` and
    a JSON-serialisable ``extra`` dict to ``path`` (safetensors; atomic)."""
    tensors = {f"model.{name}": p for name, p in model.named_parameters()}
    meta = {
        "format": FORMAT,
        "step": str(int(step)),
        "rng": json.dumps(_core.get_rng_state()),
        "model_class": type(model).__name__,
        "extra": json.dumps(extra or {}),
    }
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        meta["config"] = json.dumps(asdict(config))
    if optimizer is not None:
        sd = optimizer.state_dict()
        counts = []
        for i, st in enumerate(sd["state"]):
            if st is None:
                counts.append(None)
            elif isinstance(st, tuple):  # AdamW: (m, v, step)
                tensors[f"optim.{i}.m"], tensors[f"optim.{i}.v"] = st[0], st[1]
                counts.append(int(st[2]))
            else:  # SGD momentum buffer
                tensors[f"optim.{i}.momentum"] = st
                counts.append(0)
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        meta["optimizer"] = json.dumps({"class": type(optimizer).__name__, "param_groups": groups, "steps": counts})
    save_safetensors(str(path), tensors, meta)


def load(path, model, optimizer=None, restore_rng=True, check_extra=None):
    """Load what ``save`` wrote into ``model`` (and ``optimizer``), restore the RNG state, and return
    ``{"step": int, "extra": dict, "config": dict or None}``. Names and shapes are checked first, so a
    mismatched model leaves everything unchanged; the ``ShapeError`` names the differing config fields and
    the first mismatched tensor. ``check_extra(extra)``, if given, runs before anything is loaded (it may
    raise to refuse the file)."""
    tensors, meta = load_safetensors(str(path))
    if meta.get("format") != FORMAT:
        from .exceptions import FileFormatError

        raise FileFormatError(f"{path} is not a nanofrontier checkpoint (format {meta.get('format')!r})")
    if check_extra is not None:
        check_extra(json.loads(meta["extra"]))
    state = {k[len("model."):]: v.numpy() for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ShapeError) as e:
        why = e.args[0] if e.args else str(e)
        diff = _model_diff(meta, model)
        raise ShapeError(f"checkpoint {path} does not fit this model{diff}: {why}") from None
    if optimizer is not None:
        if "optimizer" not in meta:
            raise KeyError(f"{path} holds no optimizer state")
        info = json.loads(meta["optimizer"])
        if info["class"] != type(optimizer).__name__:
            raise ValueError(f"checkpoint optimizer is {info['class']}, not {type(optimizer).__name__}")
        states = []
        for i, count in enumerate(info["steps"]):
            if count is None:
                states.append(None)
            elif f"optim.{i}.m" in tensors:
                states.append((np.ascontiguousarray(tensors[f"optim.{i}.m"].numpy().ravel()),
                               np.ascontiguousarray(tensors[f"optim.{i}.v"].numpy().ravel()), count))
            else:
                states.append(np.ascontiguousarray(tensors[f"optim.{i}.momentum"].numpy().ravel()))
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in info["param_groups"]]
        optimizer.load_state_dict({"param_groups": groups, "state": states})
    if restore_rng:
        _core.set_rng_state(tuple(json.loads(meta["rng"])))
    return {"step": int(meta["step"]), "extra": json.loads(meta["extra"]),
            "config": json.loads(meta["config"]) if "config" in meta else None}


def _model_diff(meta, model):
    """" (saved from GPT with n_embd=32; this model: GPT with n_embd=16)", or "" when nothing is known."""
    saved_class, own_class = meta.get("model_class"), type(model).__name__
    saved = json.loads(meta["config"]) if "config" in meta else None
    config = getattr(model, "config", None)
    own = None
    if config is not None and hasattr(config, "__dataclass_fields__"):
        from dataclasses import asdict

        own = asdict(config)
    keys = [] if saved is None or own is None else [k for k in {**saved, **own} if saved.get(k) != own.get(k)]
    if saved_class == own_class and not keys:
        return ""

    def describe(cls, cfg):
        return f"{cls} with " + ", ".join(f"{k}={cfg.get(k)!r}" for k in keys) if keys else str(cls)

    return f" (saved from {describe(saved_class, saved)}; this model: {describe(own_class, own)})"


__all__ = ["save", "load"]
