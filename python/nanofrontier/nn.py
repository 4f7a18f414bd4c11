"""Layers, torch.nn style.

A :class:`Module` is a plain Python object: every Tensor attribute is a parameter, every Module attribute
(or list of Modules) a sub-module, and the dotted attribute path is the parameter's name in
``state_dict()`` — so names match the checkpoints people already have (``layers.0.weight``).
The math inside ``forward`` is Rust ops; Python only wires them together.
"""

import math

import numpy as np

from . import _core, functional as F
from ._core import Tensor
from .exceptions import ShapeError


class Module:
    """Base class: subclasses set attributes in ``__init__`` and define ``forward``."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ---- walking the tree ----
    def named_children(self):
        """(name, module) for direct sub-modules; lists/tuples of modules are named ``name.i``."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    if isinstance(v, Module):
                        yield f"{name}.{i}", v

    def named_parameters(self, prefix=""):
        """(dotted name, Tensor) for every parameter, each tensor once, in definition order."""
        seen = set()
        for name, p in self._named_tensors(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_tensors(self, prefix):
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._named_tensors(f"{prefix}{name}.")

    def parameters(self):
        """List of parameter tensors."""
        return [p for _, p in self.named_parameters()]

    def modules(self):
        """This module and all sub-modules, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def num_parameters(self):
        """Total number of parameter elements."""
        return sum(p.numel() for p in self.parameters())

    # ---- modes and grads ----
    def train(self, mode=True):
        """Training mode (dropout active). Returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        """Evaluation mode (dropout off). Returns self."""
        return self.train(False)

    def zero_grad(self):
        """Drop every parameter's ``.grad``."""
        for p in self.parameters():
            p.zero_grad()

    # ---- state ----
    def state_dict(self):
        """{name: numpy float32 copy} for every parameter."""
        return {name: p.numpy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters in place. With ``strict``, missing or unexpected names are an
        error; a shape mismatch always is. Nothing is changed unless every check passes."""
        own = dict(self.named_parameters())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for name, p in own.items():
            if name not in state:
                continue
            arr = np.asarray(state[name])
            if tuple(arr.shape) != tuple(p.shape):
                raise ShapeError(
                    f"load_state_dict: {name} has shape {tuple(arr.shape)} in the state dict "
                    f"but {tuple(p.shape)} in the model"
                )
            arrays[name] = arr
        for name, arr in arrays.items():
            own[name].copy_(arr)
        return {"missing_keys": missing, "unexpected_keys": unexpected}

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        if not children:
            return lines[0] + ")"
        lines[0] += "" if not self.extra_repr() else ","
        for name, child in children:
            child_repr = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {child_repr}")
        return "\n".join(lines) + "\n)"

    def extra_repr(self):
        return ""


class Linear(Module):
    """y = x @ weight.T + bias, with weight (out_features, in_features) like torch, computed by the fused
    ``functional.linear`` (no transposed copy of the weight; bias added in the same pass).

    Initialised like torch: weight and bias uniform in ±1/sqrt(in_features), from the global seeded
    generator. An input whose last dimension is not ``in_features`` raises ``ShapeError`` naming the layer."""

    def __init__(self, in_features, out_features, bias=True):
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.in_features, self.out_features = in_features, out_features
        self.weight = _core.rand(out_features, in_features, low=-bound, high=bound, requires_grad=True)
        self.bias = _core.rand(out_features, low=-bound, high=bound, requires_grad=True) if bias else None

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"{self!r} expects inputs of shape (..., in_features={self.in_features}), "
                             f"got shape {tuple(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    """max(x, 0)"""

    def forward(self, x):
        return x.relu()


class Tanh(Module):
    """tanh(x)"""

    def forward(self, x):
        return x.tanh()


class Sigmoid(Module):
    """1 / (1 + exp(-x))"""

    def forward(self, x):
        return x.sigmoid()


class GELU(Module):
    """GELU, tanh approximation (GPT-2's)."""

    def forward(self, x):
        return x.gelu()


class Dropout(Module):
    """Inverted dropout with probability ``p``; identity in eval mode."""

    def __init__(self, p=0.5):
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    """Applies its modules in order; they are named ``layers.0``, ``layers.1``, ..."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)


_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "gelu": GELU, "sigmoid": Sigmoid}


class MLP(Sequential):
    """A multi-layer perceptron: Linear → activation → ... → Linear (no activation after the last).

    ``MLP([2, 64, 64, 3], activation="relu")`` maps 2 inputs to 3 outputs through two hidden layers of 64.
    ``activation=None`` stacks the Linears with nothing between them (a linear model, e.g. for probes).
    """

    def __init__(self, sizes, activation="relu", dropout=0.0):
        if len(sizes) < 2:
            raise ValueError("MLP needs at least an input and an output size, e.g. [2, 3]")
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)} or None")
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Linear(n_in, n_out))
            if i < len(sizes) - 2:
                if activation is not None:
                    layers.append(_ACTIVATIONS[activation]())
                if dropout > 0:
                    layers.append(Dropout(dropout))
        super().__init__(*layers)
        self.sizes = list(sizes)


__all__ = ["Module", "Linear", "ReLU", "Tanh", "Sigmoid", "GELU", "Dropout", "Sequential", "MLP"]
