"""A Pyro model as a batched potential: U(z) = -log p(x, T(z)) - log|det J_T(z)| for C chains at once.

The latent sites of the model are laid out in one flat unconstrained vector per chain, shape
(C, P). Each site is mapped to its support by ``biject_to(site.support)``; the model then runs
once, for all chains, inside an outer plate ``_chains`` at dim ``-(max_plate_nesting + 1)``
(``pyro_util.batch_condition``), so one call (and one autograd pass) serves every chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from ..pyro_util import batch_condition, is_deterministic

__all__ = ["Site", "BatchedPotential"]


class Site(NamedTuple):
    """One latent site in the flat layout: unconstrained slice [start, stop) of the flat vector."""

    name: str
    shape: torch.Size          # constrained value shape of one chain (batch + event)
    ushape: torch.Size         # unconstrained shape of one chain
    start: int
    stop: int
    transform: torch.distributions.Transform


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    """Agreement per chain up to rounding: a relative norm error 1e-8 in float64, 1e-4 in float32
    (a sum over thousands of rows rounds differently in two ways of computing it)."""
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    err = (a - b).reshape(a.shape[0], -1).norm(dim=-1)
    return bool((err <= tol * (b.reshape(b.shape[0], -1).norm(dim=-1) + 1)).all())


class BatchedPotential:
    """Potential energy of a Pyro model for a batch of chains.

    Parameters
    ----------
    model : callable with no arguments
        The Pyro program (data bound in).
    max_plate_nesting : int
        The model's plate nesting; the chain plate sits one dim further left.
    log_density : callable, optional
        The model's log joint written directly in tensors, site values (C, *shape) -> (C,), e.g.
        ``Collapsed.log_density``; used instead of tracing the program once it is checked to
        agree with the program at random points.
    log_density_grad : callable, optional
        Site values -> (log joint (C,), {site: its gradient}) or None, e.g.
        ``HierarchicalGaussian.log_density_and_grad``. Where every site's bijection is
        elementwise (real, positive, bounded below) and the gradient agrees with autograd at
        random points, ``value_and_grad`` uses it and builds no autograd graph.

    Raises ValueError when a latent site has discrete support (not enumerable here).
    """

    def __init__(self, model: Callable[[], None], max_plate_nesting: int,
                 log_density: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
                 log_density_grad: Callable | None = None):
        self.model = model
        self.direct = None
        self.direct_grad = None
        self.max_plate_nesting = int(max_plate_nesting)
        with poutine.block(), torch.no_grad():
            tr = poutine.trace(model).get_trace()
        self.shapes = {}
        self.sites: list[Site] = []
        start = 0
        for name, s in tr.nodes.items():
            if s["type"] != "sample" or site_is_subsample(s):
                continue
            fn = s["fn"]
            self.shapes[name] = (fn.batch_shape, fn.event_shape, s["is_observed"])
            if s["is_observed"]:
                continue
            if fn.support.is_discrete:
                how = "enumerated" if s["infer"].get("enumerate") else "not enumerated"
                raise ValueError(f"latent site {name!r} has discrete support ({fn.support}, {how}); the batched "
                                 "NUTS back end samples continuous sites only - marginalise it out or use "
                                 "method='pyro_nuts' with enumeration")
            t = biject_to(fn.support)
            shape = s["value"].shape
            ushape = t.inverse_shape(shape)
            size = int(torch.Size(ushape).numel())
            self.sites.append(Site(name, shape, ushape, start, start + size, t))
            start += size
        if not self.sites:
            raise ValueError("the model has no latent sites to sample")
        self.dim = start
        self.init_values = {s.name: tr.nodes[s.name]["value"] for s in self.sites}
        self.dtype = next(iter(self.init_values.values())).dtype
        self.device = next(iter(self.init_values.values())).device
        if log_density is not None:
            self._check_direct(log_density)
            self.direct = log_density
        # each site's bijection as elementwise parts, found once: the written-out gradient needs them
        self._parts = {s.name: _elementwise(s.transform) for s in self.sites}
        if log_density_grad is not None and all(p is not None for p in self._parts.values()):
            self.direct_grad = self._check_grad(log_density_grad)

    def _test_points(self, seed: int) -> torch.Tensor:
        """Three unconstrained points, uniform on [-2, 2]^P, for checking a written-out density."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        return torch.rand(3, self.dim, generator=gen, device=self.device, dtype=self.dtype) * 4 - 2

    def _check_direct(self, log_density) -> None:
        z = self._test_points(0)
        with torch.no_grad():
            values, _ = self.constrain(z)
            a, b = log_density(values), self.log_joint(values, 3)
        if a.shape != (3,) or not _close(a, b, self.dtype):
            raise ValueError(f"log_density disagrees with the Pyro program: {a.tolist()} vs {b.tolist()}")

    def _check_grad(self, log_density_grad):
        """``log_density_grad`` where it gives the autograd potential and gradient, else None."""
        z = self._test_points(1)
        U, g = self.value_and_grad(z)
        out = self._value_and_grad_direct(z, log_density_grad)
        if out is None:
            return None
        if not (_close(out[0], U, self.dtype) and _close(out[1], g, self.dtype)):
            raise ValueError(f"log_density_grad disagrees with autograd: max gradient error "
                             f"{float((out[1] - g).abs().max()):.3g} (max |gradient| {float(g.abs().max()):.3g})")
        return log_density_grad

    # ------------------------------------------------------------------ layout
    def constrain(self, z: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Site values (C, *shape) from flat z (C, P), and log|det J| of the map, shape (C,)."""
        C = z.shape[0]
        values, logdet = {}, z.new_zeros(C)
        for s in self.sites:
            u = z[:, s.start:s.stop].reshape((C,) + tuple(s.ushape))
            x = s.transform(u)
            ld = s.transform.log_abs_det_jacobian(u, x)
            logdet = logdet + ld.reshape(C, -1).sum(-1)
            values[s.name] = x
        return values, logdet

    def unconstrain(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Flat z (C, P) from site values (C, *shape)."""
        parts = []
        for s in self.sites:
            v = values[s.name]
            parts.append(s.transform.inv(v).reshape(v.shape[0], -1))
        return torch.cat(parts, dim=-1)

    # ------------------------------------------------------------------ log density
    def log_joint(self, values: dict[str, torch.Tensor], C: int) -> torch.Tensor:
        """log p(x, values) per chain, shape (C,), from one traced run of the model."""
        tr = batch_condition(self.model, values, C, self.max_plate_nesting, self.shapes)
        total = None
        chain_dim = self.max_plate_nesting + 1
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or name == "_draws":
                continue
            if is_deterministic(site):
                continue
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
            if lp.dim() < chain_dim:
                lp = lp.sum().expand(C)
            else:
                lp = lp.reshape(lp.shape[: lp.dim() - chain_dim + 1] + (-1,)).sum(-1).reshape(-1)
                lp = lp.expand(C) if lp.numel() == 1 else lp
            total = lp if total is None else total + lp
        return total

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Potential U(z) = -(log joint + log|det J|), shape (C,), from z (C, P)."""
        if self.direct is None and self.direct_grad is not None and not (torch.is_grad_enabled() and z.requires_grad):
            # the written-out form's value (its gradient comes along, O(T D^2)): SVI's PSIS
            # ratios on 400k rows took 14 s through the program, which reads every row
            out = self._value_and_grad_direct(z, self.direct_grad)
            if out is not None:
                return out[0]
        values, logdet = self.constrain(z)
        lp = self.direct(values) if self.direct is not None else self.log_joint(values, z.shape[0])
        return -(lp + logdet)

    def value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U (C,) and dU/dz (C, P), one autograd pass for all chains (or the written-out
        gradient, see ``log_density_grad``); non-finite U gives U = inf."""
        out = self._value_and_grad_direct(z, self.direct_grad) if self.direct_grad is not None else None
        if out is not None:
            U, g = out
        else:
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                U = self(z)
                (g,) = torch.autograd.grad(U.sum(), z)
            U = U.detach()
        bad = ~torch.isfinite(U) | ~torch.isfinite(g).all(-1)
        U = torch.where(bad, torch.full_like(U, float("inf")), U)
        g = torch.where(bad.unsqueeze(-1), torch.zeros_like(g), g)
        return U, g

    def _value_and_grad_direct(self, z: torch.Tensor, log_density_grad) -> tuple[torch.Tensor, torch.Tensor] | None:
        """U and dU/dz by the chain rule through elementwise bijections, no autograd; None where
        ``log_density_grad`` declines."""
        C = z.shape[0]
        values, logdet, dx, dld = {}, z.new_zeros(C), {}, {}
        for s in self.sites:
            u = z[:, s.start:s.stop].reshape((C,) + tuple(s.ushape))
            values[s.name], ld, dx[s.name], dld[s.name] = _apply_elementwise(self._parts[s.name], u)
            if isinstance(ld, torch.Tensor):
                logdet = logdet + torch.broadcast_to(ld, u.shape).reshape(C, -1).sum(-1)
            elif ld:  # a constant log|scale| per element
                logdet = logdet + ld * u[0].numel()
        out = log_density_grad(values)
        if out is None:
            return None
        lp, grads = out
        g = torch.cat([(grads[s.name] * dx[s.name] + dld[s.name]).reshape(C, -1) for s in self.sites], -1)
        return -(lp + logdet), -g


def _elementwise(t) -> list | None:
    """An elementwise bijection as parts ("exp",) or ("affine", loc, scale, log|scale|), identity
    affines dropped and log|scale| computed here, once, not on every evaluation; None for any
    other bijection."""
    from torch.distributions import transforms as T

    if isinstance(t, T.IndependentTransform):
        return _elementwise(t.base_transform)
    if isinstance(t, T.ComposeTransform):
        parts = [_elementwise(p) for p in t.parts]
        return None if any(p is None for p in parts) else [q for p in parts for q in p]
    if isinstance(t, T.ExpTransform):
        return [("exp",)]
    if isinstance(t, T.AffineTransform):
        loc, scale = t.loc, t.scale
        if isinstance(loc, (int, float)) and loc == 0 and isinstance(scale, (int, float)) and scale == 1:
            return []
        log_scale = math.log(abs(scale)) if isinstance(scale, (int, float)) else torch.log(torch.abs(scale))
        return [("affine", loc, scale, log_scale)]
    return None


def _apply_elementwise(parts: list, u: torch.Tensor):
    """x = t(u), log|dx/du|, dx/du and d log|dx/du| / du, each shaped like u or a number."""
    x, ld, dx, dld = u, 0.0, 1.0, 0.0
    for part in parts:
        if part[0] == "exp":
            ld, dld = ld + x, dld + dx
            x = torch.exp(x)
            dx = dx * x
        else:  # affine: loc + scale * x
            _, loc, scale, log_scale = part
            x, ld, dx = loc + scale * x, ld + log_scale, dx * scale
    return x, ld, dx, dld
