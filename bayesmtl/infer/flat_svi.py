"""SVI as one compiled step on the flat potential (``method="svi"`` with ``compile``).

Pyro's ``SVI`` traces the model and the guide on every step and runs Adam parameter by
parameter: a few hundred steps a second on a 100-task model, whatever the model's size. Here
the posterior is the target's ``BatchedPotential`` U(z) over one flat unconstrained vector z
(the layout NUTS samples), the guide is a reparameterised Gaussian over z written in tensors
(mean field, full rank, or the structured family of ``guides.py``), and a whole step

    eps ~ N(0, I);  z, log q(z) = guide(theta, eps);  loss = mean over particles of U(z) + log q(z)
    theta <- ClippedAdam(theta, d loss / d theta)

is one function of tensors, traced once (``make_fx``) and compiled by inductor
(``driver._compile``, checked against the step run op by op). The loss is Pyro's ELBO loss
(log|det J| is in U, so log q is the guide's density of z), and the gradient estimator is the
same reparameterised one; U's gradient comes from the target (written out where it has one,
else autograd through the Pyro program, inside the compiled graph).

A model never appears by name: any target whose latent sites are continuous runs here.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible, init_to_median

from .averaging import BlockMeans
from .driver import _compile
from .guides import MAX_COUPLING, MAX_FULL_RANK, StructuredAffine, structured_layout
from .optim import CLIP_NORM
from .potential import BatchedPotential

__all__ = ["FlatGuide", "FlatSVI", "flat_guide", "start", "GUIDES"]

#: guides this engine writes in tensors (the others run on Pyro's SVI)
GUIDES = ("structured", "normal", "mvn")
#: ClippedAdam's settings, as Pyro's SVI path uses them (its clip: ``optim.CLIP_NORM``)
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
#: numbers per chunk when U is evaluated for many guide draws at once (draws x rows)
CHUNK_VALUES = 20_000_000


def _softplus_inv(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class FlatGuide(NamedTuple):
    """A Gaussian over the flat latent z (n,): ``sample(theta, eps) -> (z (K, n), log q(z) (K,))``
    for eps (K, n) standard normal; ``theta0`` its starting parameters, one flat vector."""

    name: str
    theta0: torch.Tensor
    sample: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Slices:
    """Named views of one flat parameter vector (shapes fixed when the guide is built)."""

    def __init__(self):
        self.parts: list[tuple[str, tuple[int, ...], torch.Tensor]] = []

    def add(self, name: str, value: torch.Tensor) -> None:
        self.parts.append((name, tuple(value.shape), value.reshape(-1)))

    def flat(self) -> torch.Tensor:
        return torch.cat([v for _, _, v in self.parts])

    def unpack(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        out, pos = {}, 0
        for name, shape, v in self.parts:
            out[name] = theta[pos:pos + v.numel()].reshape(shape)
            pos += v.numel()
        return out


def _log_q(eps: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
    """log N(z) of z = loc + A eps: standard normal density of eps minus log|det A|, shape (K,)."""
    n = eps.shape[-1]
    return -0.5 * (eps * eps).sum(-1) - 0.5 * n * math.log(2 * math.pi) - log_det


def flat_guide(name: str, loc: torch.Tensor, init_scale: float, sites: list[tuple[dict, torch.Size]],
               task_plate: str = "task") -> FlatGuide:
    """The guide ``name`` ("normal", "mvn" or "structured") over z (n,) starting at ``loc`` with
    every sd ``init_scale``; ``sites`` (site, unconstrained shape) in the latent's order place
    the structured guide's population and per-task values (``guides.structured_layout``)."""
    n, like = loc.numel(), loc
    s = _Slices()
    s.add("loc", loc)
    raw = _softplus_inv(init_scale)
    if name == "normal":
        s.add("scale", like.new_full((n,), raw))

        def sample(theta, eps):
            p = s.unpack(theta)
            scale = F.softplus(p["scale"])
            return p["loc"] + scale * eps, _log_q(eps, scale.log().sum())
    elif name == "mvn":
        s.add("scale", like.new_full((n,), raw))
        s.add("tril", like.new_zeros(n, n))
        eye = torch.eye(n, dtype=like.dtype, device=like.device)

        def sample(theta, eps):
            p = s.unpack(theta)
            scale = F.softplus(p["scale"])
            L = scale.unsqueeze(-1) * (p["tril"].tril(-1) + eye)
            return p["loc"] + eps @ L.T, _log_q(eps, scale.log().sum())
    elif name == "structured":
        pop, task, blocks = structured_layout(sites, task_plate)
        pop, task = pop.to(like.device), task.to(like.device)
        order = torch.argsort(torch.cat([pop, task]))
        P, Q = len(pop), len(task)
        full_rank, coupled = P <= MAX_FULL_RANK, 0 < P * Q <= MAX_COUPLING
        s.add("pop_scale", like.new_full((P,), raw))
        if full_rank:
            s.add("pop_tril", like.new_zeros(P, P))
        shape = blocks[1:] if blocks is not None else (Q,)
        s.add("task_scale", like.new_full(shape, raw))
        if blocks is not None:
            s.add("task_tril", like.new_zeros(*shape, shape[-1]))
        if coupled:
            s.add("coupling", like.new_zeros(Q, P))
        eye_p = torch.eye(P, dtype=like.dtype, device=like.device)
        eye_m = torch.eye(shape[-1], dtype=like.dtype, device=like.device) if blocks is not None else None

        def sample(theta, eps):
            p = s.unpack(theta)
            pop_sd = F.softplus(p["pop_scale"])
            tril = pop_sd.unsqueeze(-1) * (p["pop_tril"].tril(-1) + eye_p) if full_rank else pop_sd
            task_sd = F.softplus(p["task_scale"])
            scale = task_sd.unsqueeze(-1) * (p["task_tril"].tril(-1) + eye_m) if blocks is not None else task_sd
            t = StructuredAffine(p["loc"], pop, task, tril, p["coupling"] if coupled else None, scale, order)
            return t(eps), _log_q(eps, pop_sd.log().sum() + task_sd.log().sum())
    else:
        raise ValueError(f"guide {name!r} is not one of {GUIDES}")
    return FlatGuide(name, s.flat(), sample)


class FlatSVI:
    """SVI on ``pot`` with ``guide``: ``step()`` runs one compiled step and returns the loss;
    ``decay(lrd)`` starts the learning rate's geometric decay (ClippedAdam's ``lrd``);
    ``state``/``load`` are its checkpoint; ``draws``/``log_ratios`` sample the fitted guide.

    ``compile``: "inductor" (the step as one compiled graph; op by op, with a warning, where
    compiling fails) or None (op by op). ``seconds_compile``: time spent compiling.
    """

    def __init__(self, pot: BatchedPotential, guide: FlatGuide, lr: float, particles: int,
                 generator: torch.Generator, compile: str | None = "inductor", reduce=None):
        self.pot, self.guide, self.particles, self.gen = pot, guide, int(particles), generator
        self.theta = guide.theta0.clone()
        self.m1, self.m2 = torch.zeros_like(self.theta), torch.zeros_like(self.theta)
        self.t, self.lr, self.lrd = 0, float(lr), 1.0
        self.mode, self.seconds_compile = compile, 0.0
        self.reduce = reduce  # (gradient and loss averaged over processes: distributed.py)
        self._step = None
        self.mean, self.n_mean = None, 0  # the running mean of theta while averaging (``average``)
        self.blocks, self.block_means = None, None  # the loc's block means (BLOCKS, dim) after ``finish``

    def _grad(self, theta, eps):
        """(d loss / d theta, loss) at the draws eps (K, n)."""
        with torch.enable_grad():
            th = theta.detach().requires_grad_(True)
            z, log_q = self.guide.sample(th, eps)
            U, g = self.pot.value_and_grad(z.detach())
            # U's gradient enters through z (the surrogate's value is not the loss)
            surrogate = ((z * g).sum() + log_q.sum()) / eps.shape[0]
            (grad,) = torch.autograd.grad(surrogate, th)
        return grad, (U + log_q.detach()).mean()

    @staticmethod
    def _adam(theta, m1, m2, grad, size):
        """ClippedAdam's update (``size`` = lr x its bias corrections)."""
        grad = grad.clamp(-CLIP_NORM, CLIP_NORM)
        m1 = BETA1 * m1 + (1 - BETA1) * grad
        m2 = BETA2 * m2 + (1 - BETA2) * grad * grad
        return theta - size * m1 / (m2.sqrt() + ADAM_EPS), m1, m2

    def _raw_step(self, theta, m1, m2, eps, size):
        grad, loss = self._grad(theta, eps)
        return (*self._adam(theta, m1, m2, grad, size), loss)

    def _build(self, size: torch.Tensor) -> None:
        if self.reduce is not None:  # the gradient compiled; averaged, then Adam, outside it
            fn, example = (lambda theta, eps: self._grad(theta, eps)), (self.theta, self._eps_like())
        else:  # (make_fx counts a bound method's self as an argument: a plain function)
            fn = lambda theta, m1, m2, eps, size: self._raw_step(theta, m1, m2, eps, size)  # noqa: E731
            example = (self.theta, self.m1, self.m2, self._eps_like(), size)
        if self.mode != "inductor":
            self._step = fn
            return
        t0 = time.perf_counter()
        try:
            with pyro.validation_enabled(False):
                self._step = _compile(fn, example, simd=True)
        except Exception as e:  # noqa: BLE001 - any compiler failure: the op-by-op step still works
            warnings.warn(f"compile='inductor' failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          "running the SVI step op by op", RuntimeWarning, stacklevel=3)
            self.mode, self._step = None, fn
        self.seconds_compile += time.perf_counter() - t0

    def _noise(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """eps (n, P), standard normal, from ``gen``."""
        return torch.randn(n, self.pot.dim, generator=gen, device=self.theta.device, dtype=self.theta.dtype)

    def _eps_like(self) -> torch.Tensor:
        """An example eps for compiling (drawn from a throwaway generator, not the fit's)."""
        return self._noise(self.particles, torch.Generator(device=self.theta.device).manual_seed(0))

    def step(self) -> float:
        """One step of ClippedAdam on the ELBO; the loss (a float) at the step's draw."""
        self.t += 1
        self.lr *= self.lrd
        size = self.lr * math.sqrt(1 - BETA2 ** self.t) / (1 - BETA1 ** self.t)
        size = torch.tensor(size, dtype=self.theta.dtype, device=self.theta.device)
        if self._step is None:
            self._build(size)
        eps = self._noise(self.particles, self.gen)
        with pyro.validation_enabled(False):
            if self.reduce is None:
                self.theta, self.m1, self.m2, loss = self._step(self.theta, self.m1, self.m2, eps, size)
            else:
                grad, loss = self._step(self.theta, eps)
                both = self.reduce(torch.cat([grad, loss.reshape(1)]))
                self.theta, self.m1, self.m2 = self._adam(self.theta, self.m1, self.m2, both[:-1], size)
                loss = both[-1]
        if self.mean is not None:
            self.n_mean += 1
            self.mean += (self.theta - self.mean) / self.n_mean
            if self.blocks is not None:  # (the guide's loc, theta's first entries, is its median)
                self.blocks.add({"loc": self.theta[:self.pot.dim]})
        return float(loss)

    def decay(self, lrd: float, average: bool = False, length: int = 0) -> None:
        """From the next step on, multiply the learning rate by ``lrd`` every step, and with
        ``average`` keep the running mean of the parameters from then on (``finish`` ends there),
        and the guide loc's block means over the ``length`` averaging steps (``averaging.py``)."""
        self.lrd = float(lrd)
        if average:
            self.mean, self.n_mean = self.theta.clone(), 0
            self.blocks = BlockMeans({"loc": self.theta[:self.pot.dim]}, length)

    def finish(self) -> None:
        """End at the mean of the averaged steps, if any (Polyak-Ruppert averaging)."""
        if self.mean is not None and self.n_mean:
            self.theta, self.mean = self.mean, None
        means = None if self.blocks is None else self.blocks.means()
        self.block_means, self.blocks = None if means is None else means["loc"], None

    # ------------------------------------------------------------------ checkpoint
    def state(self) -> dict[str, np.ndarray]:
        """Everything a resumed run needs, as arrays."""
        mean = {} if self.mean is None else {"flat.mean": self.mean.cpu().numpy(),
                                             "flat.n_mean": np.asarray(self.n_mean)}
        if self.blocks is not None:
            mean.update(self.blocks.state())
        return {"flat.theta": self.theta.cpu().numpy(), "flat.m1": self.m1.cpu().numpy(),
                "flat.m2": self.m2.cpu().numpy(), "flat.t": np.asarray(self.t), "flat.lr": np.asarray(self.lr),
                "flat.lrd": np.asarray(self.lrd), "flat.rng": self.gen.get_state().numpy(), **mean}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Put ``state()``'s arrays back (raises ValueError where they are not this fit's)."""
        if "flat.theta" not in arrays:
            raise ValueError("the checkpoint was written by Pyro's SVI, not the compiled step; resume with "
                             "compile=None")
        if arrays["flat.theta"].shape != tuple(self.theta.shape):
            raise ValueError(f"the checkpoint's guide has {arrays['flat.theta'].shape[0]} parameters, this fit's "
                             f"{self.theta.numel()}: written by a different model or guide")

        def put(a):
            return torch.from_numpy(a).to(device=self.theta.device, dtype=self.theta.dtype)

        self.theta, self.m1, self.m2 = put(arrays["flat.theta"]), put(arrays["flat.m1"]), put(arrays["flat.m2"])
        self.t, self.lr, self.lrd = int(arrays["flat.t"]), float(arrays["flat.lr"]), float(arrays["flat.lrd"])
        if "flat.mean" in arrays:
            self.mean, self.n_mean = put(arrays["flat.mean"]), int(arrays["flat.n_mean"])
            self.blocks = BlockMeans.load(arrays, {"loc": self.theta[:self.pot.dim]})
        self.gen.set_state(torch.from_numpy(arrays["flat.rng"]))

    # ------------------------------------------------------------------ after the fit
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws z (n, P) of the fitted guide and their log q (n,)."""
        with torch.no_grad():
            return self.guide.sample(self.theta, self._noise(n, self.gen))

    def log_ratios(self, z: torch.Tensor, log_q: torch.Tensor, n_rows: int) -> torch.Tensor:
        """log p(x, theta) - log q(theta) of draws z (n, P), shape (n,): -U(z) - log q(z), U
        evaluated a chunk of draws at a time (draws x rows stays under ``CHUNK_VALUES``)."""
        chunk = max(1, int(CHUNK_VALUES // max(n_rows, 1)))
        out = []
        with torch.no_grad(), pyro.validation_enabled(False), poutine.block():
            for lo in range(0, z.shape[0], chunk):
                out.append(-self.pot(z[lo:lo + chunk]))
        return torch.cat(out) - log_q


def start(fn, max_plate_nesting: int, direct: tuple, guide: str, init_scale: float | None,
          task_plate: str = "task") -> tuple[BatchedPotential, FlatGuide]:
    """The potential of the program ``fn`` and the guide ``guide`` over its flat latent, started
    where Pyro's autoguide of that name starts: "normal" (``AutoNormal``) at a feasible point
    (0 unconstrained), the others at the prior's medians (15 prior draws a site). (Medians from
    15 draws of a wide prior can start a mean far out: the mean-field fit of 2,000 tasks was 3%
    further from its optimum after 1,000 steps.)"""
    pot = BatchedPotential(fn, max_plate_nesting, *direct)
    init = init_to_feasible if guide == "normal" else init_to_median
    with poutine.block(), torch.no_grad(), InitMessenger(init):
        tr = poutine.trace(fn).get_trace()
    z0 = pot.unconstrain({s.name: tr.nodes[s.name]["value"].unsqueeze(0) for s in pot.sites})[0]
    sites = [(tr.nodes[s.name], torch.Size(s.ushape)) for s in pot.sites]
    return pot, flat_guide(guide, z0, 0.1 if init_scale is None else float(init_scale), sites, task_plate)
