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


def load(path, model, optimizer=None, restore_rng=True):
    """Load what ``save`` wrote into ``model`` (and ``optimizer``), restore the RNG state, and return
    ``{"step": int, "extra": dict, "config": dict or None}``. Names and shapes are checked first, so a
    mismatched model leaves everything unchanged."""
    tensors, meta = load_safetensors(str(path))
    if meta.get("format") != FORMAT:
        from .exceptions import FileFormatError

        raise FileFormatError(f"{path} is not a nanofrontier checkpoint (format {meta.get('format')!r})")
    state = {k[len("model."):]: v.numpy() for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
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


__all__ = ["save", "load"]
