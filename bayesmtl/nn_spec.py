"""A torch module as data, for run directories: the architecture where it is built of standard
layers (``LAYERS``), and the weights as tensors. Nothing is pickled; loading creates only the
layers listed here, or takes the architecture from the caller (``modules=`` of ``bm.load``) and
only the weights from the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["module_spec", "build_module", "LAYERS"]

#: layers rebuilt from data: class -> (its constructor's keywords as attributes, or a function of it)
LAYERS: dict[str, tuple[type, Callable[[nn.Module], dict[str, Any]]]] = {
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                     "bias": m.bias is not None}),
    "ReLU": (nn.ReLU, lambda m: {}),
    "SiLU": (nn.SiLU, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "ELU": (nn.ELU, lambda m: {"alpha": m.alpha}),
    "LeakyReLU": (nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope}),
    "Softplus": (nn.Softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
    "Identity": (nn.Identity, lambda m: {}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                                           "elementwise_affine": m.elementwise_affine}),
}


def _architecture(m: nn.Module) -> dict | None:
    """{"layer": name, "args": {...}} or {"sequential": [...]}; None where a part is not standard."""
    if type(m) is nn.Sequential:
        parts = [_architecture(c) for c in m]
        return None if any(p is None for p in parts) else {"sequential": parts}
    name = type(m).__name__
    if name in LAYERS and type(m) is LAYERS[name][0]:
        return {"layer": name, "args": LAYERS[name][1](m)}
    return None


def module_spec(m: nn.Module, where: str) -> dict:
    """The module as data: ``architecture`` (None for a module of the user's own classes, which
    ``build_module`` then takes from the caller), the class's path, and the ``state`` tensors."""
    state = {k: {"tensor": v.detach().cpu().tolist(), "dtype": str(v.dtype).replace("torch.", "")}
             for k, v in m.state_dict().items()}
    cls = type(m)
    return {"module": where, "class": f"{cls.__module__}:{cls.__qualname__}", "architecture": _architecture(m),
            "state": state}


def _build(a: Any) -> nn.Module:
    if not isinstance(a, dict):
        raise ValueError(f"not a module architecture: {type(a).__name__}")
    if "sequential" in a:
        return nn.Sequential(*[_build(p) for p in a["sequential"]])
    name = a.get("layer")
    if name not in LAYERS:
        raise ValueError(f"layer {name!r} is not one bayesmtl rebuilds (it knows {sorted(LAYERS)})")
    return LAYERS[name][0](**dict(a.get("args", {})))


def build_module(s: Mapping, modules: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """The module ``module_spec`` described, its weights loaded. ``modules`` maps the attribute
    (e.g. "trunk") to a module of the same architecture, for modules of a user's own classes."""
    where = str(s.get("module", "module"))
    short = where.rsplit(".", 1)[-1]
    given = dict(modules or {})
    if short in given or where in given:
        m = given.get(where, given.get(short))
        if not isinstance(m, nn.Module):
            raise ValueError(f"modules[{short!r}] must be a torch.nn.Module; got {type(m).__name__}")
    elif s.get("architecture") is not None:
        m = _build(s["architecture"])
    else:
        raise ValueError(f"the saved {where} is a {s.get('class')}, built of layers bayesmtl does not rebuild from "
                         f"data: pass one of the same architecture, modules={{{short!r}: net}} (its weights are "
                         f"read from the run), or trust_code=True where the run records the function that built "
                         f"it (fitted with --trunk)")
    state = {}
    for k, v in dict(s.get("state", {})).items():
        dtype = getattr(torch, str(v.get("dtype", "float32")), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype of {where}.{k}")
        state[k] = torch.tensor(v["tensor"], dtype=dtype)
    try:
        m.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(f"the saved weights of {where} do not fit the module given ({first})") from None
    m.to(next(iter(state.values())).dtype if state else torch.get_default_dtype())
    return m.eval()
