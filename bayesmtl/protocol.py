"""The written model contract: what a task prior sees (``Tasks``), what a model offers a back
end (``Target``), what a model returns for relations (``RelationDraws``), and the ``Model``
protocol every model implements (``MultiTaskModel``, ``MultitaskGP``, ``DPClustering``, ...).

The flow is one way: data -> model -> targets -> back end -> draws -> Posterior. A back end
sees only a ``Target``; everything after the draws (deterministic sites, labels, prediction,
relations) goes through the ``Model`` methods below, the same for every back end.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pyro.distributions as dist
import torch
from pyro.poutine.util import site_is_subsample

from .devices import on_device

if TYPE_CHECKING:
    from .data import MultiTaskData
    from .infer.base import Draws, Settings

__all__ = ["Tasks", "Target", "RelationDraws", "Model", "ModelBase", "data_context", "default_dtype", "fusing",
           "is_fusing", "plate_nesting", "derive_dims"]


class TaskFeatures(dict):
    """Task-level covariates by name; a missing name is one clear error, not a bare KeyError."""

    def __missing__(self, name: str):
        raise ValueError(f"no task feature {name!r}; the data have task features {sorted(self)} "
                         "(declare them with MultiTaskData.from_frame(..., task_features=[...]))")


@dataclass(frozen=True)
class Tasks:
    """What a task prior's ``sample(tasks)`` receives.

    n : int
        Number of tasks T.
    dims : int
        Number of task-varying parameters D (intercept first when the model has one).
    plate : pyro.plate
        The task plate (size T, dim -1): sites sampled inside it are per task.
    features : dict of str -> Tensor, shape (T,)
        Task-level covariates (``MultiTaskData.from_frame(..., task_features=[...])``): floats
        for numeric columns, integer codes for categorical ones (categories in ``levels``).
        For new-task prediction these are the new tasks' values.
    levels : dict of str -> list of str
        Categories of each categorical task feature, so a prior can size a plate over them.
    names : list of str
        Task names, length T.
    feature_names : list of str
        Names of the D parameters (e.g. ``["intercept", "x1"]``).
    like : Tensor
        A 0-d tensor on the data's device and dtype, for priors that build tensors by hand.
    loc, scale : Tensor, shape (D,)
        Where each task parameter sits and how large it can be, read from the training data
        (rstanarm's autoscale): the intercept's ``loc`` is the target's mean on the link scale
        and its ``scale`` the target's sd (widened for features that are not centred); a
        feature's coefficient has ``loc`` 0 and ``scale`` sd(target) / sd(feature). The
        built-in priors' defaults are Normal(loc, 2.5 scale) for locations and HalfNormal(scale)
        for spreads; a user prior may use them the same way. Zeros and ones when not given.
    rows : Tensor, shape (T,), optional
        Training rows of each task (for new tasks in prediction: their rows in the new data),
        e.g. for a global scale that depends on the sample size (a horseshoe's tau0).

    Under a batch of chains or particles, hyperparameters carry leading dims: index per-task
    gathers as ``g[..., tasks.features["group"], :]``, not ``g[group]``.
    """

    n: int
    dims: int
    plate: Any
    features: dict[str, torch.Tensor] = field(default_factory=TaskFeatures)
    levels: dict[str, list[str]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    like: torch.Tensor | None = None
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    rows: torch.Tensor | None = None

    def __post_init__(self) -> None:
        like = self.like if self.like is not None else torch.zeros(())
        if self.loc is None:
            object.__setattr__(self, "loc", like.new_zeros(self.dims))
        if self.scale is None:
            object.__setattr__(self, "scale", like.new_ones(self.dims))


class RelationDraws(NamedTuple):
    """A model's task relation: draws (S, T, T), what they measure, whether they are signed
    (correlations, -1..1) rather than similarities, and draws (M,) of one entry when tasks are
    unrelated (the reference a pair must stand out from to count as related; None: 0), and for
    clustering models the number of occupied clusters in each draw."""

    draws: np.ndarray
    kind: str
    signed: bool = False
    null: np.ndarray | None = None
    cluster_counts: np.ndarray | None = None  # clustering models: occupied clusters per draw (S,)
    tree: np.ndarray | None = None  # a tree of the tasks the model holds (a learned tree): scipy linkage (T-1, 4)


@dataclass(frozen=True)
class Target:
    """What a back end samples or optimises: a log density over latent sites.

    program : callable(subsample_size=None[, task_batch=None]) -> Pyro callable with no arguments
        The log density as a Pyro program (data bound in); ``subsample_size`` minibatches the
        rows, ``task_batch`` the tasks (SVI; ``MultiTaskModel.task_minibatches``).
    max_plate_nesting : int
        Plate dims the program uses; back ends batch chains/particles one dim further left.
    n_rows : int
        Rows the program observes (for minibatch sizes).
    path : str
        What this target is: "plain" (the model's own program, with the automatic
        non-centring samplers want), "centred" (the prior as written, offered where the plain
        program non-centres it; SVI's guides fit it better), "collapsed" (task parameters
        integrated out), ... Recorded in ``run.json``.
    log_density : callable, optional
        Site values (C, *shape) -> log joint (C,), written directly in tensors.
    log_density_grad : callable, optional
        Site values -> (log joint (C,), {site: gradient}) or None; saves autograd.
    conditional : callable, optional
        For collapsed targets: flat draws {site: (S, ...)} and a generator -> the draws with the
        integrated-out sites added, drawn exactly from their conditional.
    enumerated : bool
        The program has discrete sites marked for enumeration (summed out, not sampled).
    point_estimate : callable, optional
        Settings -> Draws: the model's own optimiser (e.g. a GP's type-II maximum likelihood),
        used by ``method="map"``.
    rebuild : callable, optional
        MultiTaskData -> Target: the same target on data cast to another dtype.
    data : MultiTaskData, optional
        The data bound into the program.
    reparam : list of str
        Sites the package non-centred automatically (recorded in ``run.json``).
    info : dict
        What the model wants recorded in ``run.json`` about this target (e.g. a GP's solver).
    trains : tuple of str
        Modules the program registers with ``pyro.module`` and trains as point estimates (a
        network's trunk): optimisers (SVI, MAP) fit them, samplers cannot.
    score : callable, optional
        Draws {site: (S, ...)} of the latent sites -> the mean log predictive density of rows
        held out of the fit (``validation=``): what an optimiser may stop early on.
    task_batches : bool
        Whether ``program`` takes ``task_batch`` (task minibatches).
    """

    program: Callable[..., Callable[[], None]]
    max_plate_nesting: int
    n_rows: int
    path: str = "plain"
    log_density: Callable | None = None
    log_density_grad: Callable | None = None
    conditional: Callable | None = None
    enumerated: bool = False
    point_estimate: Callable[[Settings], Draws] | None = None
    rebuild: Callable[[MultiTaskData], Target] | None = None
    data: Any = None
    reparam: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    trains: tuple[str, ...] = ()
    score: Callable[[dict], float] | None = None
    task_batches: bool = True

    def pyro_model(self, subsample_size: int | None = None, task_batch: int | None = None) -> Callable[[], None]:
        """The Pyro program (no arguments); ``subsample_size`` rows or ``task_batch`` tasks per
        evaluation, drawn at random, with the log density scaled to the full data's."""
        if task_batch is None:
            return self.program(subsample_size)
        if len(inspect.signature(self.program).parameters) < 2:
            raise ValueError(f"the {self.path!r} form of this model takes no task minibatches "
                             "(task_batch_size); use batch_size (rows) instead")
        return self.program(subsample_size, task_batch)

    def to(self, dtype: torch.dtype) -> Target:
        """The same target with the data cast to ``dtype`` (itself when it already is)."""
        if self.data is None or self.data.dtype == dtype:
            return self
        if self.rebuild is None:
            raise ValueError(f"the {self.path!r} target cannot change dtype")
        return self.rebuild(self.data.to(dtype=dtype))

    def with_path(self, path: str) -> Target:
        """The same target under another path name (recorded in ``run.json``)."""
        return replace(self, path=path)


@runtime_checkable
class Model(Protocol):
    """What every model implements. Draws are flat: site -> Tensor (S, ...).

    Shapes: T tasks, D task-varying parameters, N rows, S posterior draws.
    """

    def check(self, data: MultiTaskData) -> None:
        """Raise ValueError/TypeError naming the problem when ``data`` cannot feed the model."""

    def coords(self, data: MultiTaskData) -> dict[str, list[str]]:
        """Labels of every named dim (``task``, ``feature``, ...)."""

    def site_dims(self, data: MultiTaskData) -> dict[str, tuple[str, ...]]:
        """Named dims of every site beyond the leading (chain, draw)."""

    def targets(self, data: MultiTaskData) -> list[Target]:
        """The log densities a back end may use, fastest first; the last is always "plain"."""

    def complete(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``samples`` with the deterministic sites added."""

    def log_likelihood(self, data: MultiTaskData, samples: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pointwise log-likelihood of the rows, (S, N)."""

    def predict(self, train: MultiTaskData, new: MultiTaskData, samples: dict[str, torch.Tensor],
                generator: torch.Generator, draws_per_sample: int = 1) -> dict[str, torch.Tensor]:
        """``mean`` (S, N), E[y | draw], and ``y`` (S * draws_per_sample, N), predictive draws
        (``draws_per_sample`` consecutive rows per posterior draw). Rows of tasks unseen in
        training (index >= ``new.n_known_tasks``) get parameters from what the model learned."""

    def relations(self, samples: dict[str, torch.Tensor], data: MultiTaskData | None = None) -> RelationDraws:
        """Draws of the (T, T) task relation; ``data``, the training data, for relations that
        read it (a network's heads are compared through its features)."""


class ModelBase:
    """Defaults of the optional parts of the contract; models inherit them."""

    #: sites left out of summaries and diagnostics by default (e.g. factor loadings: sign, rotation)
    unidentified_sites: tuple[str, ...] = ()
    #: the target's kind ("gaussian", "bernoulli", ...): Posterior.predict adds ``probability`` for binary ones
    outcome: str = "gaussian"
    #: rows are independent given the parameters, so ``log_likelihood`` terms can be left out one by
    #: one (PSIS-LOO in ``bayesmtl.compare``); False for a GP, whose rows share the latent function
    rows_independent: bool = True
    #: the back end ``fit`` uses when given no method
    default_method: str = "nuts"

    def loo_log_density(self, data: MultiTaskData, samples: dict[str, torch.Tensor], by: str = "row") -> torch.Tensor:
        """Exact leave-one-out log predictive density per draw, (S, N) (``by="row"``) or (S, T)
        (``"task"``), for models whose rows are not independent given the parameters
        (``rows_independent = False``); the others are left out by PSIS on ``log_likelihood``."""
        raise NotImplementedError(f"{type(self).__name__} gives no exact leave-one-out density")

    def problems(self) -> list:
        """Problems with what the model learned from the data before the fit, as
        ``diagnostics.Problem`` records (``diagnose`` adds them to the back end's); none by default."""
        return []

    def extra_outputs(self, post) -> dict[str, Any]:
        """Extra tables for the run directory, file name -> DataFrame (none by default)."""
        return {}

    def prior_program(self, data: MultiTaskData) -> Callable[[], None]:
        """The model's priors as written, as a Pyro program without the observations
        (``Posterior.prior_summary``): ``pyro_model(data, observe=False)`` by default."""
        return self.pyro_model(data, observe=False)

    def bind(self, data: MultiTaskData) -> ModelBase:
        """A copy with the priors left at their defaults set from ``data``'s scales; ``fit``
        fits it. Models without data-scaled defaults return themselves."""
        return self

    def method_for(self, data: MultiTaskData) -> tuple[str, str]:
        """The back end ``fit`` (and the CLI) run on ``data`` when given no method, and why when
        it is not ``default_method`` ("" otherwise; recorded as ``info["method_chosen"]``)."""
        return self.default_method, ""

    def sampler_defaults(self) -> dict[str, Any]:
        """Back-end options the model's posterior needs unless the user sets them (e.g.
        ``{"target_accept": 0.9}``); ``fit`` fills in those the chosen back end knows and records
        them as ``info["model_options"]``. None by default."""
        return {}

    def defaults(self) -> list[str]:
        """Settings left at their data-scaled defaults (``Posterior.prior_summary``)."""
        return []

    def prior_scales(self, data: MultiTaskData) -> dict[str, float]:
        """The data scales the default priors were set from (run.json); none by default."""
        return {}

    def inclusion(self, post) -> Any:
        """Posterior inclusion probabilities of the features (sparsity priors only)."""
        raise TypeError(f"{type(self).__name__} does not select features; inclusion() needs a sparsity prior "
                        "such as bayesmtl.priors.SharedSparsity")

    def num_clusters(self, post) -> Any:
        """Posterior of the number of occupied clusters (clustering models only)."""
        raise TypeError(f"{type(self).__name__} has no task clusters; num_clusters() needs a clustering "
                        "model such as bayesmtl.models.DPClustering")

    def gate(self, post, new=None, prob: float = 0.9) -> Any:
        """Cluster probabilities from task features (gated clustering models only)."""
        raise TypeError(f"{type(self).__name__} has no gate; gate() needs bayesmtl.models.GatedClusters")

    def tree(self, post) -> Any:
        """The learned tree with its clade probabilities (learned-tree models only)."""
        raise TypeError(f"{type(self).__name__} learns no tree; tree() needs "
                        "bayesmtl.models.TreeHierarchy(tree='learn')")


# ---------------------------------------------------------------------- helpers of the contract
@contextlib.contextmanager
def data_context(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Tensors made from Python numbers (``dist.Normal(0.0, 5.0)``) land on the data's dtype and
    device: torch's default dtype and device. Only around a model's own program: engine code
    inside it would put its host-side tensors on the GPU (``devices``)."""
    with default_dtype(dtype), on_device(device):
        yield


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` (a floating dtype; others leave it) for the block."""
    old = torch.get_default_dtype()
    if dtype.is_floating_point and dtype != old:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


_FUSING = contextvars.ContextVar("bayesmtl_fusing", default=False)


@contextlib.contextmanager
def fusing() -> Iterator[None]:
    """Inside: a program is being traced for a compiler that fuses plain tensor ops (inductor).
    Programs then prefer plain ops to hand-made opaque ones (see ``is_fusing``)."""
    token = _FUSING.set(True)
    try:
        yield
    finally:
        _FUSING.reset(token)


def is_fusing() -> bool:
    """True while a program is traced for a fusing compiler: a custom op that beats plain ops op by
    op (``design.TaskRows``) is opaque to the compiler and slower than the plain ops it fuses."""
    return _FUSING.get()


def plate_nesting(trace) -> int:
    """The plate dims a traced program uses (at least 1: the task plate)."""
    deepest = 1
    for site in trace.nodes.values():
        for f in site.get("cond_indep_stack", ()):
            if f.dim is not None and f.vectorized:
                deepest = max(deepest, -f.dim)
    return deepest


def in_plate(site: dict, name: str) -> bool:
    return any(f.name == name for f in site.get("cond_indep_stack", ()))


def derive_dims(trace, n_tasks: int, n_dims: int, skip=()) -> dict[str, tuple[str, ...]]:
    """Named dims of every latent or deterministic site of an unbatched trace.

    Batch dims take the name of their plate (``task`` for the task plate); event dims of size D
    are ``feature`` (then ``feature_``), of size T ``task`` (then ``task_``), others
    ``<site>_dim_<i>``. Size-1 batch dims on the left are dropped (fit squeezes them).
    """
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in skip or name.startswith("_") or site_is_subsample(site):
            continue
        if site["is_observed"] and not (site["infer"].get("_deterministic") or _reparametrised(site)):
            continue
        shape = tuple(site["value"].shape)
        nb = len(site["fn"].batch_shape)
        frames = {f.dim: f.name for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
        dims: list[str] = []
        for i, size in enumerate(shape[:nb]):
            d = i - nb
            if d in frames:
                dims.append(frames[d])
            elif size == 1 and not dims:
                continue
            else:
                dims.append(f"{name}_dim_{len(dims)}")
        event = shape[nb:]
        names: list[str | None] = [None] * len(event)
        used: set[str] = set(dims)
        for j in reversed(range(len(event))):
            for size, base in ((n_dims, "feature"), (n_tasks, "task")):
                if event[j] == size and names[j] is None:
                    for cand in (base, base + "_"):
                        if cand not in used:
                            names[j] = cand
                            used.add(cand)
                            break
        dims += [n if n is not None else f"{name}_dim_{len(dims) + j}" for j, n in enumerate(names)]
        out[name] = tuple(dims)
    return out


def _reparametrised(site: dict) -> bool:
    """A site that a reparametrisation (e.g. LocScaleReparam) turned into a function of others."""
    fn = site["fn"]  # pyro's reparam handler leaves Delta(value).mask(False) at the original site
    return isinstance(fn, dist.MaskedDistribution) and isinstance(fn.base_dist, dist.Delta)


def as_numpy(x) -> np.ndarray:
    return x.cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
