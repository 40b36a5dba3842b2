"""Pyro helpers shared by the model and the back ends: batched evaluation of a model over
a leading dim of draws (chains, particles) through one outer plate."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer.inspect import TrackProvenance
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.util import site_is_subsample

__all__ = ["site_shapes", "batch_condition", "squeeze_to", "describe_priors", "is_deterministic", "MEAN_FIELD",
           "is_mean_field"]

#: a site's ``infer`` key asking SVI's default guide for a mean-field factor of its own, apart
#: from the full-rank population block (thousands of network weights would make that block diagonal)
MEAN_FIELD = "mean_field"


def is_deterministic(site: dict) -> bool:
    """Whether a trace site is a ``pyro.deterministic``: a masked Delta that adds 0 to the log
    density. Score it and its Delta compares the recomputed value with the traced one by
    broadcasting, (draws, 1, draws, T, K) for the gated clusters' task weights (17 GB on school)."""
    return bool(site.get("infer", {}).get("_deterministic"))


def is_mean_field(site: dict) -> bool:
    """Whether a trace site asks for a mean-field guide factor (``MEAN_FIELD``)."""
    return bool(site.get("infer", {}).get(MEAN_FIELD))


def site_shapes(model: Callable[[], None]) -> dict[str, tuple[torch.Size, torch.Size, bool]]:
    """For every sample site: (batch_shape, event_shape, observed), from one unbatched trace."""
    with pyro.poutine.block(), torch.no_grad():
        tr = poutine.trace(model).get_trace()
    return {n: (s["fn"].batch_shape, s["fn"].event_shape, s["is_observed"])
            for n, s in tr.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)}


def batch_condition(model: Callable[[], None], values: dict[str, torch.Tensor], n: int,
                    max_plate_nesting: int, shapes: dict | None = None) -> poutine.Trace:
    """Trace ``model`` with latent sites fixed to ``values`` (each with leading dim n).

    The model runs inside a plate of size n at dim ``-(max_plate_nesting + 1)``; each value is
    reshaped so its batch dims line up with that plate. Returns the trace (deterministic
    sites included, values with the plate's dim at the left).
    """
    shapes = site_shapes(model) if shapes is None else shapes
    dim = -(max_plate_nesting + 1)
    fixed = {}
    for name, v in values.items():
        if name not in shapes or shapes[name][2]:  # deterministic sites follow from the latent ones
            continue
        batch, event, _ = shapes[name]
        pad = max_plate_nesting - len(batch)
        fixed[name] = v.reshape((n,) + (1,) * pad + tuple(batch) + tuple(event))
    with poutine.trace() as tracer, pyro.plate("_draws", n, dim=dim):
        poutine.condition(model, data=fixed)()
    return tracer.trace


def squeeze_to(value: torch.Tensor, ndim: int) -> torch.Tensor:
    """Drop size-1 dims right after the leading one until ``value`` has ``ndim`` dims."""
    while value.dim() > ndim and value.shape[1] == 1:
        value = value.squeeze(1)
    return value


def describe_priors(program: Callable[[], None], dims: dict[str, tuple[str, ...]],
                    coords: dict[str, list]) -> list[dict]:
    """One row per latent site of ``program`` (its priors as written): site, entry and the
    distribution with its numbers, e.g. ``Normal(loc=54.1, scale=33.2)``. Entries that share
    their numbers collapse into one row (entry ``all``); otherwise they are labelled by the
    site's dims (``intercept``, ``school_3``). A conditional prior names the sites its numbers
    come from instead (``Normal(loc, scale from group_mean, tau)``): one prior draw's values would
    read as the prior's own. Which numbers are drawn: those that differ between two runs of the
    program at different seeds; from which sites: Pyro's provenance tracking (per site, since a
    distribution broadcasts its parameters together)."""
    traces = []
    for seed in (0, 1):  # (forked: these two draws do not move the caller's random state)
        with torch.random.fork_rng(devices=[]), pyro.poutine.block(), torch.no_grad(), TrackProvenance():
            torch.manual_seed(seed)
            traces.append(poutine.trace(program).get_trace())
    tr, other = traces
    rows = []
    for name, site in tr.nodes.items():
        if (site["type"] != "sample" or site["is_observed"] or site_is_subsample(site)
                or is_deterministic(site) or name.startswith("_")):
            continue
        fn = _base(site["fn"])
        params = {k: getattr(fn, k) for k in fn.arg_constraints if _is_set(fn, k)}
        params = {k: v for k, v in params.items() if torch.is_tensor(v) or isinstance(v, (int, float))}
        parents = sorted(set().union(*(get_provenance(v) for v in params.values()))) if params else []
        if parents:  # a conditional prior: some of its numbers are one draw of its parents
            again = _base(other.nodes[name]["fn"]) if name in other.nodes else None
            fixed = {k: v for k, v in params.items()
                     if again is not None and _same_numbers(v, getattr(again, k, None))}
            rows.append({"site": name, "entry": "all",
                         "prior": _fmt_given(type(fn).__name__, params, fixed, parents)})
            continue
        flat = {k: _numbers(v) for k, v in params.items()}
        n = max([v.numel() for v in flat.values()], default=1)
        same = all(bool((v == v[0]).all()) for v in flat.values() if v.numel())
        labels = _entry_labels(dims.get(name, ()), coords, n)
        if same or labels is None:
            rows.append({"site": name, "entry": "all", "prior": _fmt(type(fn).__name__, flat, 0)})
            continue
        for i in range(n):
            rows.append({"site": name, "entry": labels[i], "prior": _fmt(type(fn).__name__, flat, i)})
    return rows


def _is_set(fn, key: str) -> bool:
    """Whether ``fn`` was given ``key``: set on the instance, or a plain property (HalfNormal's
    scale); a lazily derived one (Bernoulli's logits when built from probs) is not."""
    return key in fn.__dict__ or isinstance(getattr(type(fn), key, None), property)


def _entry_labels(dims: tuple[str, ...], coords: dict[str, list], n: int) -> list[str] | None:
    import itertools

    axes = [list(map(str, coords.get(d, []))) for d in dims]
    labels = [", ".join(t) for t in itertools.product(*axes)] if axes else []
    if len(labels) == n:
        return labels
    last = axes[-1] if axes else []
    return last if len(last) == n else None  # per-feature numbers shared by every task


def _base(fn):
    """The distribution under any Independent / expand wrappers."""
    while isinstance(fn, (torch.distributions.Independent, pyro.distributions.ExpandedDistribution)):
        fn = fn.base_dist
    return fn


def _numbers(v) -> torch.Tensor:
    """A parameter's values, float64 and flat, without their provenance."""
    return torch.as_tensor(detach_provenance(v), dtype=torch.float64).reshape(-1)


def _same_numbers(a, b) -> bool:
    return b is not None and bool(torch.equal(_numbers(a), _numbers(b)))


def _fmt_given(kind: str, params: dict, fixed: dict, parents: list[str]) -> str:
    """``kind(k=number, ...; drawn ones from parents)``: the numbers that are the same in every
    draw (one number each), then the parameters drawn from the sites ``parents``."""
    parts = []
    for k, v in fixed.items():
        flat = _numbers(v)
        same = flat.numel() > 0 and bool((flat == flat[0]).all())
        parts.append(f"{k}={float(flat[0]):.4g}" if same else f"{k}=(per entry)")
    drawn = [k for k in params if k not in fixed]
    head = ", ".join(parts)
    tail = f"{', '.join(drawn)} from {', '.join(parents)}" if drawn else ""
    return f"{kind}({head}{'; ' if head and tail else ''}{tail})"


def _fmt(kind: str, flat: dict[str, torch.Tensor], i: int) -> str:
    parts = [f"{k}={float(v[i if v.numel() > 1 else 0]):.4g}" for k, v in flat.items() if v.numel()]
    return f"{kind}({', '.join(parts)})"
