"""Task priors over the heads of a shared torch network: a Bayesian last layer per task.

Hard parameter sharing (Caruana 1997) with Bayesian heads: a trunk maps each row's features to
H learned features, and each task's head (an intercept and H weights) is a task parameter under
any task prior. A ``TaskRelationship`` prior over the heads is the Deep Relationship Network of
Long et al. (2017), a matrix-normal prior with the task covariance learned; a noise scale per
task (``noise="per_task"``, the Gaussian likelihood's default where tasks have rows to spare)
is the uncertainty weighting of Kendall, Gal & Cipolla (2018), here inside the likelihood.

By default the trunk is a point estimate, trained jointly with the posterior of the heads and
the prior's hyperparameters by SVI (or MAP): the uncertainty reported covers the heads, the
population and the noise given the learned features, not the trunk's weights. A sampler can
then draw the heads of the trained network exactly: ``post.model.frozen()`` fixes the trunk,
and the model is a linear multi-task model on its features (every fast path applies).

With ``trunk_prior=c`` every weight of the trunk is a latent site too, a priori Normal(0,
c / sqrt(fan_in)) (biases and other vectors Normal(0, c)), the scaling of Neal (1996) that keeps
a layer's output scale independent of its width. SVI's default guide gives those sites a
mean-field Gaussian of their own (Blundell et al. 2015, "Bayes by backprop"), beside its
full-rank population block; the uncertainty then covers the features too, so predictions far
from the training inputs widen. A mean-field network posterior is known to be too narrow
within a mode and to see one mode of many (hidden units permute), so the trunk's sites are
left out of summaries and r_hat (``unidentified_sites``). Every prediction runs the trunk once
per posterior draw.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bayesmtl.data import MultiTaskData
from bayesmtl.likelihoods import Likelihood
from bayesmtl.likelihoods.custom import Custom
from bayesmtl.likelihoods.per_task import PerTask
from bayesmtl.model import INTERCEPT, MultiTaskModel
from bayesmtl.priors import hierarchical as hp
from bayesmtl.priors.base import TaskPrior
from bayesmtl.protocol import RelationDraws
from bayesmtl.pyro_util import MEAN_FIELD

__all__ = ["NeuralMultiTask"]

#: SVI guide's initial sd, and ELBO particles, for a network's heads (``sampler_defaults``)
INIT_SCALE = 0.01
PARTICLES = 32
#: SVI/MAP early stopping on held-out rows by default (``sampler_defaults``)
EARLY_STOP = {"validation": 0.1, "window": 100, "patience": 5}
#: SVI/MAP's gradient clip for a network (``sampler_defaults``): Pyro's 10, not the 10 x N the
#: other models get under row minibatches. Measured with 10 x N (5 seeds): SARCOS test SMSE
#: 0.0321 -> 0.0301, but on Parkinson's last quarter of each patient's recordings, outside the
#: training inputs, NLPD 1.31 -> 1.58 (point trunk) and 0.68 -> 1.19 (Bayesian trunk): the
#: clip holds a trunk back, and that kept its intervals honest where it extrapolates.
CLIP = 10.0
#: the trunk's sites are named "trunk.<parameter>" (``trunk_prior``)
TRUNK = "trunk."
#: values of trunk outputs (draws x rows x width) computed at once when predicting per draw
CHUNK_VALUES = 20_000_000
#: rows whose features per draw give a Bayesian trunk's relations (evenly spread over the data)
RELATION_ROWS = 2000
#: ``precision=``: the trunk's forward pass under autocast to this dtype (heads, likelihood,
#: weights and optimiser stay in the data's dtype). bfloat16 only: float16 needs loss scaling,
#: which Pyro's optimisers do not do
PRECISIONS = {"bf16": torch.bfloat16}


def _traced_on_any_batch(lik: Likelihood) -> bool:
    """Whether a JIT trace of the program replays on every minibatch: every likelihood is one of
    bayesmtl's own, whose shapes follow eta's alone (a per-task one included: it masks, it does
    not select rows). A user's own may select rows, which the trace would freeze."""
    if isinstance(lik, PerTask):
        return all(_traced_on_any_batch(g) for g in lik.groups.values())
    return type(lik).__module__.startswith("bayesmtl.likelihoods.") and not isinstance(lik, Custom)


def head_products(h: torch.Tensor, w: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """eta (..., N) = h_n . w[..., task_n, :] for features h (N, D) and heads w (..., T, D).

    With fewer tasks than features, every task's head on every row as one matrix product
    (..., N, T), then each row's own: T/D of the memory of gathering the heads (..., N, D),
    and BLAS speed (a 100k-row PSIS check went from 64 s to a few)."""
    if w.shape[-2] <= w.shape[-1]:
        all_heads = h @ w.transpose(-1, -2)  # (..., N, T)
        index = task.expand(all_heads.shape[:-1]).unsqueeze(-1)
        return all_heads.gather(-1, index).squeeze(-1)
    return (h * w[..., task, :]).sum(-1)


def run_trunk(trunk: nn.Module, z: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """The trunk's output (*batch, N, H) on rows X (N, F) with its parameters set to ``z``
    ({name: (*batch, *shape)}, every parameter, the same batch dims), one network per batch entry."""
    if torch.jit.is_tracing():  # torch.func's stateless call refuses a trace
        raise ValueError("a Bayesian trunk (trunk_prior) cannot run under a JIT trace: pass jit=False (SVI) or "
                         "compile=None (NUTS)")
    shapes = {k: p.shape for k, p in trunk.named_parameters()}
    first = next(iter(z))
    batch = z[first].shape[:z[first].dim() - len(shapes[first])]
    if not batch:
        return torch.func.functional_call(trunk, z, (X,))
    flat = {k: v.reshape(-1, *shapes[k]) for k, v in z.items()}
    h = torch.func.vmap(lambda p: torch.func.functional_call(trunk, p, (X,)), randomness="different")(flat)
    return h.reshape(*batch, *h.shape[1:])


def mixed(precision: str | None, device: torch.device) -> torch.autocast:
    """Autocast to ``PRECISIONS[precision]`` on ``device``; disabled (the data's dtype) for None."""
    dtype = PRECISIONS.get(precision or "", torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=precision is not None)


def with_ones(h: torch.Tensor) -> torch.Tensor:
    """Features (..., N, H) with a column of ones first (the intercept's): (..., N, 1 + H)."""
    return torch.cat([h.new_ones(*h.shape[:-1], 1), h], dim=-1)


def _covariance(h: torch.Tensor) -> torch.Tensor:
    """Covariance (..., H, H) of features h (..., N, H) over the rows."""
    h = h - h.mean(-2, keepdim=True)
    return h.transpose(-1, -2) @ h / max(h.shape[-2] - 1, 1)


class NeuralMultiTask(MultiTaskModel):
    """A shared trunk and one Bayesian head per task.

    For row n of task t, with h_n = trunk(x_n) of shape (H,):

        eta_n = w_t[0] + h_n . w_t[1:],      w (T, 1 + H) ~ prior,      y_n ~ likelihood(eta_n)

    Parameters
    ----------
    trunk : torch.nn.Module
        Maps features (N, F) to (N, H). Copied at fit time: the fitted copy is
        ``post.model.trunk``; the module passed in is not changed.
    prior : TaskPrior, default ``priors.Hierarchical()``
        Prior of the (T, 1 + H) heads: any task prior, a user's own too.
    likelihood : str or Likelihood
    intercept : bool
        A task-varying intercept (the head's first entry).
    train_trunk : bool
        True: the trunk is trained with the heads (SVI or MAP). False: the trunk is fixed and
        the model is a linear multi-task model on its features (any back end, fast paths).
    trunk_prior : float or None
        None: the trunk is a point estimate. c > 0: every trunk weight is a latent site,
        Normal(0, c / sqrt(fan_in)) a priori (vectors such as biases Normal(0, c)), with a
        mean-field Gaussian posterior under SVI (see the module docstring); NUTS samples it too
        (slowly: every weight is a dimension). The module's own weights are then unused.
    precision : None or "bf16"
        None: the trunk runs in the data's dtype. "bf16": mixed precision, the trunk's forward
        pass under ``torch.autocast`` to bfloat16 (matrix products in bfloat16, its weights,
        the heads, the likelihood and the optimiser in the data's dtype), in training and
        prediction alike. It pays where the device multiplies bfloat16 faster (recent GPUs,
        CPUs with AMX or AVX512-BF16) and the trunk dominates the step; measured in
        ``docs/benchmarks.md``. Features then carry bfloat16's 3 significant digits.

    Notes
    -----
    Default priors read the target's scale s (``scaling``): the intercept is centred on its
    location with scale s and each head weight has scale s / sqrt(H), so a head on unit-scale
    features moves the prediction by about s.
    """

    name = "neural"
    #: see the class docstring (a class default too: runs saved before it load without it)
    precision: str | None = None

    def __init__(self, trunk: nn.Module, prior: TaskPrior | None = None, likelihood: str | Likelihood = "gaussian",
                 intercept: bool = True, train_trunk: bool = True, reparam: str | bool = "auto",
                 trunk_prior: float | None = None, precision: str | None = None):
        if isinstance(trunk, type) or not isinstance(trunk, nn.Module):
            raise TypeError(f"trunk must be a torch.nn.Module instance; got {trunk!r}")
        if trunk_prior is not None:
            if isinstance(trunk_prior, bool) or not isinstance(trunk_prior, (int, float)) \
                    or not 0 < trunk_prior < math.inf:
                raise ValueError("trunk_prior must be None (a point-estimate trunk) or a scale > 0; "
                                 f"got {trunk_prior!r}")
            if not train_trunk:
                raise ValueError("trunk_prior puts a prior on the trunk's weights, but train_trunk=False fixes them: "
                                 "give one")
            if not any(True for _ in trunk.parameters()):
                raise ValueError("trunk_prior: the trunk has no parameters to put a prior on")
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be None (the data's dtype) or one of {sorted(PRECISIONS)} (mixed "
                             f"precision in the trunk; float16 would need loss scaling); got {precision!r}")
        super().__init__(prior or hp.Hierarchical(), likelihood, intercept, (), None, reparam)
        self.trunk = trunk
        self.precision = precision
        self.train_trunk = bool(train_trunk)
        self.trunk_prior = None if trunk_prior is None else float(trunk_prior)

    def sampler_defaults(self) -> dict:
        """The prior's, and for SVI ``init_scale=INIT_SCALE`` and ``particles=PARTICLES``: the
        trunk learns through the heads' sampled values, so their noise is its gradient's noise.
        A guide that starts at the usual 0.1 on each of 1 + H weights adds noise of sd ~0.1
        sqrt(H) to every prediction; one particle per step left the ELBO too noisy to converge
        (SARCOS, 1,500 steps: test SMSE 0.050 with one particle, 0.036 with 32, which cost
        little: the trunk runs once per minibatch, whatever the particles). And ``EARLY_STOP``:
        the trunk is a point estimate with no prior, which overfits where tasks have few rows;
        SVI and MAP hold a tenth of each task's rows out and stop when their predictive density
        stops improving (SARCOS at 10% of the inputs: test NLPD 11.7 and 90% coverage 0.38
        without (seed 0), 1.89 and 0.90 with (5 seeds, benchmarks/neural.py)). Pass
        ``validation=None`` to fit once on every row, ``refit=True`` to fit again on every row for
        the steps early stopping chose (with ``clip=None``: SARCOS full set test SMSE 0.0301 ->
        0.0295, but on Parkinson's last quarter of each patient's recordings NLPD 1.58 -> 2.23:
        the refit's last iterate is not the best window's guide). ``clip=CLIP``: see ``CLIP``.
        ``jit=True`` under row minibatches too (SVI's rule is on only without them) where every
        likelihood is bayesmtl's own (``_traced_on_any_batch``): Pyro's traced ELBO draws a fresh
        batch each step, 1.1-1.2x the steps a second at the defaults on 100k rows, 2.5x on 900
        rows of mixed task types, the same fit (docs/benchmarks.md). Under
        ``trunk_prior``: ``jit=False`` and ``compile=None`` (no JIT trace; ``run_trunk``), and
        ``psis_draws=1``, i.e. the PSIS check weighs only the draws kept: each runs the trunk
        over every row (80 s of a SARCOS fit's 90 at 3,000 draws), and over thousands of
        mean-field weights Pareto k is far above 0.7 anyway (101 there), so the draws are not
        resampled and more of them tell nothing new."""
        if not self.train_trunk:  # a linear model on fixed features: the usual settings
            return super().sampler_defaults()
        # a Bayesian trunk runs through torch.func.functional_call, which a JIT trace cannot take
        own = ({"jit": False, "compile": None, "psis_draws": 1} if self.trunk_prior is not None
               else {"jit": True} if _traced_on_any_batch(self.likelihood) else {})
        return {"init_scale": INIT_SCALE, "particles": PARTICLES, "clip": CLIP, **EARLY_STOP, **own,
                **super().sampler_defaults()}

    @property
    def default_method(self) -> str:  # type: ignore[override]
        """"svi" while the trunk is trained (samplers cannot train it), else "nuts"."""
        return "svi" if self.train_trunk else "nuts"

    @property
    def trained_modules(self) -> tuple[str, ...]:  # type: ignore[override]
        """("trunk",) while the trunk is trained with the heads as a point estimate."""
        return ("trunk",) if self.train_trunk and self.trunk_prior is None else ()

    @property
    def fixed_design(self) -> bool:  # type: ignore[override]
        """False while the trunk is learned (trained or sampled): no fast path applies."""
        return not self.train_trunk

    @property
    def unidentified_sites(self) -> tuple[str, ...]:  # type: ignore[override]
        """The prior's, and a Bayesian trunk's weights (hidden units permute and flip sign)."""
        own = tuple(TRUNK + k for k, _ in self.trunk.named_parameters()) if self.trunk_prior is not None else ()
        return tuple(super().unidentified_sites) + own

    def frozen(self) -> NeuralMultiTask:
        """A copy whose trunk (this one's, trained) is fixed: fit it with any back end to draw
        the heads of the trained network."""
        if self.trunk_prior is not None:
            raise ValueError("frozen(): this trunk has a posterior (trunk_prior), not one set of weights to fix")
        out = copy.copy(self)
        out.trunk = copy.deepcopy(self.trunk)
        out.train_trunk = False
        return out

    # ------------------------------------------------------------------ features
    def features(self, X: torch.Tensor) -> torch.Tensor:
        """The trunk's output (N, H) for features X (N, F), in X's dtype and device, without
        gradients (for prediction and fixed designs)."""
        p = next(iter(self.trunk.parameters()), None)
        inp = X if p is None else X.to(dtype=p.dtype, device=p.device)
        was = self.trunk.training
        self.trunk.eval()
        try:
            with torch.no_grad(), mixed(self.precision, inp.device):
                h = self.trunk(inp)
        finally:
            self.trunk.train(was)
        return h.to(dtype=X.dtype, device=X.device)

    def width(self, data: MultiTaskData) -> int:
        """H, the trunk's output width (read from one row of ``data``)."""
        return int(self.features(data.X[:1]).shape[-1])

    def varying_names(self, data: MultiTaskData) -> list[str]:
        """The head's entries: the intercept (if any), then h0 .. h{H-1}."""
        return ([INTERCEPT] if self.intercept else []) + [f"h{j}" for j in range(self.width(data))]

    def design(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor]:
        """Varying design (N, 1 + H): the intercept column and the trunk's features; no shared part."""
        h = self.features(data.X)
        if self.intercept:
            h = with_ones(h)
        return h, data.X.new_zeros(data.X.shape[0], 0)

    def scaling(self, data: MultiTaskData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head loc (D,) and scale (D,): intercept (m, s), weights (0, s / sqrt(H)); see the class."""
        m, s = self.likelihood_for(data).location_scale(data)
        H = self.width(data)
        to = dict(dtype=data.dtype, device=data.device)
        loc, scale = torch.zeros(H, **to), torch.full((H,), s / math.sqrt(max(H, 1)), **to)
        if self.intercept:
            loc, scale = torch.cat([loc.new_tensor([m]), loc]), torch.cat([scale.new_tensor([s]), scale])
        return loc, scale, torch.zeros(0, **to)

    # ------------------------------------------------------------------ checks and binding
    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when the trunk or data cannot feed the model."""
        if not isinstance(data, MultiTaskData):
            raise TypeError(f"data must be a MultiTaskData; got {type(data).__name__}")
        if data.n_features == 0:
            raise ValueError("NeuralMultiTask needs features for its trunk; the data have none")
        try:
            h = self.features(data.X[:2])
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"the trunk failed on the data's {data.n_features} features "
                             f"({', '.join(data.feature_names[:6])}{' ...' if data.n_features > 6 else ''}): "
                             f"{str(e).splitlines()[0]}") from None
        if h.dim() != 2 or h.shape[0] != min(2, data.n_rows):
            raise ValueError(f"the trunk must map features (N, {data.n_features}) to (N, H); on 2 rows it "
                             f"returned shape {tuple(h.shape)}")
        if not bool(torch.isfinite(h).all()):
            raise ValueError("the trunk returned non-finite features on the data's first rows")
        super().check(data)

    def bind(self, data: MultiTaskData) -> NeuralMultiTask:
        """As ``MultiTaskModel.bind``, with the trunk copied into the data's dtype (the copy is
        what the fit trains)."""
        out = super().bind(data)
        out.trunk = copy.deepcopy(self.trunk).to(dtype=data.dtype)
        return out

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        """As ``MultiTaskModel.site_dims``, and a Bayesian trunk's sites ("trunk.<parameter>")."""
        dims = super().site_dims(data)
        if self.trunk_prior is not None:
            dims.update({TRUNK + k: tuple(f"{TRUNK}{k}_dim_{i}" for i in range(p.dim()))
                         for k, p in self.trunk.named_parameters()})
        return dims

    def trunk_scales(self) -> dict[str, float]:
        """Prior sd of each trunk parameter under ``trunk_prior`` c: c / sqrt(fan_in) for a
        weight (fan_in: its entries per output), c for a vector or scalar."""
        c = float(self.trunk_prior or 0.0)
        return {k: c / math.sqrt(max(p[0].numel(), 1)) if p.dim() >= 2 else c for k, p in self.trunk.named_parameters()}

    def global_latents(self, data: MultiTaskData) -> Callable[[], dict[str, torch.Tensor]] | None:
        """Under ``trunk_prior``: a function sampling every trunk weight ("trunk.<parameter>",
        ``trunk_scales``; mean-field guide, ``pyro_util.MEAN_FIELD``), returning {parameter: value}."""
        if self.trunk_prior is None:
            return None
        to = dict(dtype=data.dtype, device=data.device)
        scales = self.trunk_scales()
        priors = {k: (tuple(p.shape), scales[k]) for k, p in self.trunk.named_parameters()}

        def draw() -> dict[str, torch.Tensor]:
            return {k: pyro.sample(TRUNK + k, dist.Normal(torch.zeros(shape, **to), sd).to_event(len(shape)),
                                   infer={MEAN_FIELD: True})
                    for k, (shape, sd) in priors.items()}

        return draw

    def draws_eta(self, data: MultiTaskData, w: torch.Tensor, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """eta (S, N); under ``trunk_prior`` the trunk runs with each draw's weights (in chunks of
        draws, ``CHUNK_VALUES``)."""
        if self.trunk_prior is None:
            return super().draws_eta(data, w, samples)
        S, N = w.shape[0], data.n_rows
        chunk = max(1, CHUNK_VALUES // max(N * w.shape[-1], 1))
        task = data.task.to(w.device)
        out = [head_products(self._draw_features(data.X, samples, lo, lo + chunk).to(w), w[lo:lo + chunk], task)
               for lo in range(0, S, chunk)]
        return torch.cat(out)

    def _draw_features(self, X: torch.Tensor, samples: dict[str, torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """The trunk's features (n, N, 1 + H) of rows X for draws lo..hi of a Bayesian trunk (the
        intercept's column first where there is one), without gradients."""
        p = next(iter(self.trunk.parameters()))
        z = {k: samples[TRUNK + k][lo:hi].to(dtype=p.dtype, device=p.device) for k, _ in self.trunk.named_parameters()}
        was = self.trunk.training
        self.trunk.eval()
        try:
            with torch.no_grad(), mixed(self.precision, p.device):
                h = run_trunk(self.trunk, z, X.to(dtype=p.dtype, device=p.device)).to(p.dtype)
        finally:
            self.trunk.train(was)
        if self.intercept:
            h = with_ones(h)
        return h

    def relations(self, samples: dict[str, torch.Tensor], data: MultiTaskData | None = None) -> RelationDraws:
        """Draws (S, T, T) of the correlation of the tasks' functions over the training inputs:
        corr(h . w_t, h . w_s) with h the trunk's features of every training row (a Bayesian
        trunk: each draw's own, on ``RELATION_ROWS`` rows), i.e.
        w_t' C w_s / sqrt(w_t' C w_t w_s' C w_s), C their covariance (intercepts left out).
        Unlike the prior's own relation (e.g. the correlation of a matrix-normal prior), it does
        not change when the trunk rotates or rescales its features. Without ``data``: the prior's."""
        if data is None:
            return super().relations(samples)
        w = samples["w"].double()[..., 1:] if self.intercept else samples["w"].double()
        if self.trunk_prior is None:
            G = torch.einsum("std,de,sue->stu", w, _covariance(self.features(data.X).double()), w)
        else:  # each draw's own features; at most RELATION_ROWS rows, evenly spread
            X = data.X[torch.linspace(0, data.n_rows - 1, min(data.n_rows, RELATION_ROWS)).long()]
            S = w.shape[0]
            chunk = max(1, CHUNK_VALUES // max(X.shape[0] * (w.shape[-1] + 1), 1))
            G = torch.cat([torch.einsum("std,sde,sue->stu", w[lo:lo + chunk], _covariance(
                self._draw_features(X, samples, lo, lo + chunk)[..., int(self.intercept):].to(w)),
                w[lo:lo + chunk]) for lo in range(0, S, chunk)])
        d = torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(1e-300).sqrt()
        corr = (G / d.unsqueeze(-1) / d.unsqueeze(-2)).clamp(-1.0, 1.0)
        return RelationDraws(corr.cpu().numpy(), "correlation of the tasks' functions over the training inputs "
                             "(heads on the trunk's features)", True, None,
                             self.prior.cluster_counts(samples), self.prior.relation_tree())

    def row_predictor(self, data: MultiTaskData, subsample_size: int | None = None) -> Callable:
        """eta from the trunk run on the minibatch's rows inside the program (registered with
        ``pyro.module``, so the optimiser trains it); a fixed trunk: the linear predictor."""
        if not self.train_trunk:
            return super().row_predictor(data, subsample_size)
        trunk = self.trunk.to(device=data.device, dtype=data.dtype)
        X, task, intercept, precision = data.X, data.task, self.intercept, self.precision
        if self.trunk_prior is not None:
            trunk.requires_grad_(False)  # its weights are the sites z; its own stay unused (and out of a trace)

            def sampled(w, coef, pick, z):
                trunk.train(torch.is_grad_enabled())
                with mixed(precision, X.device):
                    h = run_trunk(trunk, z, pick(X))
                h = h.to(X.dtype)
                if h.dim() > 2:  # (batch, 1, N, H): the sites' size-1 dim where the program's plates sit
                    h = h.squeeze(-3)
                if intercept:
                    h = with_ones(h)
                return head_products(h, w, pick(task))

            return sampled

        cache: dict = {}

        def eta(w, coef, pick, z=None):
            net = pyro.module("trunk", trunk)
            net.train(torch.is_grad_enabled())  # dropout and the like in training steps only
            # evaluations without gradients on every row (SVI's PSIS check: 1000 draws in chunks)
            # share one pass of the trunk while its weights stay as they are
            key = tuple(p._version for p in net.parameters()) if subsample_size is None else None
            if key is not None and not torch.is_grad_enabled() and cache.get("key") == key:
                h = cache["h"]
            else:
                with mixed(precision, X.device):
                    h = net(pick(X))
                h = h.to(X.dtype)
                if intercept:
                    h = with_ones(h)
                if key is not None and not torch.is_grad_enabled():
                    cache.update(key=key, h=h)
            return head_products(h, w, pick(task))

        return eta
