"""Typed back-end options: one frozen dataclass per method, checked in its ``__post_init__``.

``bm.fit(model, data, method=bm.infer.NUTS(target_accept=0.9))`` is the same fit as
``bm.fit(model, data, method="nuts", target_accept=0.9)``: a back end turns keyword options
into its dataclass (``Options.of``), so both are checked by the same code. ``Options.backend()``
makes the back end that runs with these options (``get_backend`` accepts either form).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from numbers import Integral, Real
from typing import Any, ClassVar

import torch

from .base import Draws, Settings

__all__ = ["Options", "NUTS", "ChEES", "SVI", "MAP", "PyroNUTS", "Configured"]


# ---------------------------------------------------------------------- checks: one line, naming the option
def _alternatives(choices) -> str:
    shown = [repr(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _one_of(name: str, value, choices, one_of: bool = False, shown=None):
    """``value`` if it is one of ``choices`` (bools and None by identity); the message lists
    ``shown`` (default: the choices)."""
    if not any(value is c or (c is not None and type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be {'one of ' if one_of else ''}{_alternatives(shown or choices)}; "
                         f"got {value!r}")
    return value


def _flag(name: str, value) -> bool:
    try:
        ok = value in (True, False)
    except (TypeError, ValueError, RuntimeError):  # an array, say
        ok = False
    if not ok:
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _integer(name: str, value, minimum: int, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    ok = not isinstance(value, bool) and (isinstance(value, Integral)
                                          or (isinstance(value, float) and value.is_integer()))
    if not ok or value < minimum:
        raise ValueError(f"{name} must be {'None or ' if optional else ''}an integer >= {minimum}; got {value!r}")
    return int(value)


def _number(name: str, value, low: float, strict: bool = True) -> float:
    """A finite real > low (``strict``) or >= low."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
    if not ok or not (value > low if strict else value >= low):
        raise ValueError(f"{name} must be a number {'>' if strict else '>='} {low:g}; got {value!r}")
    return float(value)


def _probability(name: str, value) -> float:
    ok = not isinstance(value, bool) and isinstance(value, Real)
    if not ok or not 0 < value < 1:
        raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
    return float(value)


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # frozen: normalise in __post_init__ only


# ---------------------------------------------------------------------- the base
@dataclass(frozen=True, kw_only=True)
class Options:
    """Options of one back end (``method``). Subclasses check every field in ``__post_init__``."""

    method: ClassVar[str]

    @classmethod
    def known(cls) -> list[str]:
        """The option names this back end accepts."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]):
        """From keyword options as given to ``fit``; unknown keys raise, naming the method."""
        unknown = sorted(set(options) - set(cls.known()))
        if unknown:
            raise ValueError(f"unknown option(s) for method '{cls.method}': {unknown}; "
                             f"known: {', '.join(cls.known())}")
        return cls(**options)

    @classmethod
    def of(cls, options):
        """``settings.options`` as this method's options: such an object as it is, else built
        from the keyword options (a mapping)."""
        if isinstance(options, cls):
            return options
        if isinstance(options, Options):
            raise ValueError(f"method '{cls.method}' was given the options of method '{options.method}' "
                             f"({type(options).__name__})")
        return cls.from_dict(options or {})

    def given(self) -> dict[str, Any]:
        """The options set to other than their defaults, as ``fit`` keywords (``info["options"]``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def backend(self):
        """The back end that runs with these options (``get_backend(self)``)."""
        from . import METHODS

        return Configured(self, METHODS[self.method]())


class Configured:
    """A back end bound to an options object: ``run`` hands it the object as ``settings.options``
    and records ``info["method"]`` (the name) and ``info["options"]`` (``given()``), as for a
    method given by name with keyword options."""

    def __init__(self, options: Options, backend):
        self.options, self.inner = options, backend
        self.name, self.paths, self.kind = backend.name, backend.paths, backend.kind

    def paths_for(self, options) -> tuple[str, ...]:
        """The inner back end's default paths under this object's options."""
        inner = getattr(self.inner, "paths_for", None)
        return inner(self.options) if inner else self.paths

    def run(self, target, settings: Settings, **kwargs) -> Draws:
        extra = settings.options
        if extra and extra != self.options:
            keys = sorted(extra) if isinstance(extra, Mapping) else extra
            raise ValueError(f"options given twice: method={self.options!r} and {keys}; set them in the "
                             f"{type(self.options).__name__}(...) object only")
        out = self.inner.run(target, replace(settings, options=self.options), **kwargs)
        return Draws(out.samples, out.sample_stats,
                     {**out.info, "method": self.options.method, "options": self.options.given()})

    def __repr__(self) -> str:
        return f"Configured({self.options!r})"


# ---------------------------------------------------------------------- the batched samplers
_DTYPES = {"float64": "float64", "float32": "float32", torch.float64: "float64", torch.float32: "float32", None: None}


@dataclass(frozen=True, kw_only=True)
class _Batched(Options):
    """The options every batched sampler (NUTS, ChEES) takes; see ``driver.run_batched``."""

    compile: str | None = "auto"
    dtype: str | None = None
    threads: int | None = 1
    chunk: int = 100
    init_radius: float = 2.0
    max_delta_energy: float = 1000.0
    processes: int = 1

    def __post_init__(self):
        compile_ = _one_of("compile", self.compile, ("auto", "jit", "inductor", None, False, "none"),
                           shown=("auto", "jit", "inductor", None))
        _set(self, "compile", compile_ if compile_ in ("auto", "jit", "inductor") else None)
        if not any(self.dtype is k or (isinstance(k, str) and self.dtype == k) for k in _DTYPES):
            raise ValueError(f"dtype must be 'float64', 'float32' or None; got {self.dtype!r}")
        _set(self, "dtype", _DTYPES[self.dtype])
        _set(self, "threads", _integer("threads", self.threads, 1, optional=True))
        _set(self, "chunk", _integer("chunk", self.chunk, 1))
        _set(self, "init_radius", _number("init_radius", self.init_radius, 0))
        _set(self, "max_delta_energy", _number("max_delta_energy", self.max_delta_energy, 0))
        _set(self, "processes", _integer("processes", self.processes, 1))


@dataclass(frozen=True, kw_only=True)
class NUTS(_Batched):
    """``method="nuts"``: batched multinomial NUTS (``infer/nuts.py``).

    target_accept : dual averaging's target acceptance, in (0, 1)
    max_tree_depth : at most 2**max_tree_depth - 1 leapfrog steps per draw
    dense_mass : adapt a dense (C, P, P) inverse mass matrix instead of a diagonal one
    metric : "fisher" (sqrt(var z / var grad), nutpie's, in the early windows; var z in the
        last) or "stan" (var z in every window) for the diagonal
    compile : "auto" ("inductor" from ``driver.INDUCTOR_FROM`` iterations, else "jit"), "jit",
        "inductor" or None (plain Pyro tracing on every call)
    dtype : "float64" or "float32" (plain path), None: the data's
    threads : torch threads on CPU (None: leave torch's setting)
    chunk : draws per host copy
    init_radius : initial points uniform in (-r, r) unconstrained
    max_delta_energy : a draw diverges when its energy error exceeds this
    processes : chain groups in that many forked worker processes (CPU; ``groups.py``)
    """

    method: ClassVar[str] = "nuts"
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    metric: str = "fisher"

    def __post_init__(self):
        _set(self, "target_accept", _probability("target_accept", self.target_accept))
        _set(self, "max_tree_depth", _integer("max_tree_depth", self.max_tree_depth, 1))
        _set(self, "dense_mass", _flag("dense_mass", self.dense_mass))
        _one_of("metric", self.metric, ("fisher", "stan"))
        super().__post_init__()


@dataclass(frozen=True, kw_only=True)
class ChEES(_Batched):
    """``method="chees"``: ChEES-HMC (``infer/chees.py``).

    target_accept : dual averaging's target for the harmonic mean acceptance, in (0, 1)
    max_steps : at most this many leapfrog steps per draw
    and the batched samplers' ``compile``, ``dtype``, ``threads``, ``chunk``, ``init_radius``,
    ``max_delta_energy``, ``processes`` (see ``NUTS``).
    """

    method: ClassVar[str] = "chees"
    target_accept: float = 0.651
    max_steps: int = 1000

    def __post_init__(self):
        _set(self, "target_accept", _probability("target_accept", self.target_accept))
        _set(self, "max_steps", _integer("max_steps", self.max_steps, 1))
        super().__post_init__()


# ---------------------------------------------------------------------- Pyro's NUTS
@dataclass(frozen=True, kw_only=True)
class PyroNUTS(Options):
    """``method="pyro_nuts"``: Pyro's own NUTS, chain after chain (``infer/pyro_nuts.py``).

    jit : JIT-compiled potential; target_accept, max_tree_depth, dense_mass as for ``NUTS``;
    threads : torch threads (None: leave torch's setting)
    """

    method: ClassVar[str] = "pyro_nuts"
    jit: bool = True
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    threads: int | None = 1

    def __post_init__(self):
        _set(self, "jit", _flag("jit", self.jit))
        _set(self, "target_accept", _probability("target_accept", self.target_accept))
        _set(self, "max_tree_depth", _integer("max_tree_depth", self.max_tree_depth, 1))
        _set(self, "dense_mass", _flag("dense_mass", self.dense_mass))
        _set(self, "threads", _integer("threads", self.threads, 1, optional=True))


# ---------------------------------------------------------------------- SVI and MAP
GUIDES = ("structured", "normal", "mvn", "lowrank", "delta")

#: option -> its check, shared by SVI and MAP (None passes where a check allows it)
_SVI_CHECKS = {
    "rank": lambda v: _integer("rank", v, 1, optional=True),
    "lr": lambda v: _number("lr", v, 0),
    "steps": lambda v: _integer("steps", v, 1),
    "min_steps": lambda v: _integer("min_steps", v, 0, optional=True),
    "tol": lambda v: _number("tol", v, 0, strict=False),
    "window": lambda v: _integer("window", v, 1),
    "lookback": lambda v: _integer("lookback", v, 1),
    "anneal": lambda v: _integer("anneal", v, 0, optional=True),
    "average": lambda v: _flag("average", v),
    "batch_size": lambda v: _integer("batch_size", v, 1, optional=True),
    "task_batch_size": lambda v: _integer("task_batch_size", v, 1, optional=True),
    "particles": lambda v: _integer("particles", v, 1, optional=True),
    "jit": lambda v: None if v is None else _flag("jit", v),
    "threads": lambda v: _integer("threads", v, 1, optional=True),
    "psis": lambda v: _flag("psis", v),
    "psis_draws": lambda v: _integer("psis_draws", v, 1, optional=True),
    "init_scale": lambda v: None if v is None else _number("init_scale", v, 0),
    "validation": lambda v: None if v is None else _fraction("validation", v),
    "patience": lambda v: _integer("patience", v, 1),
    "validate_by": lambda v: _one_of("validate_by", v, ("rows", "tasks"), one_of=True),
    "refit": lambda v: _flag("refit", v),
    "clip": lambda v: None if v is None else _number("clip", v, 0),
}


def _fraction(name: str, value) -> float:
    """A number in (0, 0.5]: a share of each task's rows to hold out."""
    v = _number(name, value, 0)
    if v > 0.5:
        raise ValueError(f"{name} must be a fraction of the rows in (0, 0.5]; got {value!r}")
    return v


def _check_min_steps(min_steps: int | None, steps: int) -> None:
    if min_steps is not None and min_steps > steps:
        raise ValueError(f"min_steps ({min_steps}) exceeds steps ({steps}): the fit would stop before its "
                         "first convergence check; lower min_steps or raise steps")


@dataclass(frozen=True, kw_only=True)
class SVI(Options):
    """``method="svi"``: stochastic variational inference with a Pyro autoguide (``infer/svi.py``).

    guide : "structured" (full rank over the population, mean field over the tasks leaning
        linearly on it; ``guides.py``), "normal" (mean field), "mvn" (full rank), "lowrank"
        (with ``rank``) or "delta" (MAP)
    lr : Adam's learning rate; steps : most steps; min_steps : fewest before the convergence check
        (None: 5000, or ``steps`` if fewer)
    tol, window, lookback : stop when the mean loss of the last ``window`` steps is less than
        lookback x tol x |loss| below the mean of the window ``lookback`` windows earlier
    anneal : that many more steps with the learning rate decaying to lr / 100 (0: off; None:
        1000; 3000 x min(T / B, 10) under task minibatches, whose averaged guide's noise falls
        only as 1 / sqrt(the passes over the tasks averaged): ``infer/averaging.py``)
    average : end at the mean of the guide's parameters over the ``anneal`` steps (Polyak-Ruppert
        averaging), not at the last step's: the last iterate carries the optimiser's noise, which
        in units of the posterior sd grows with the data (``svi.py``)
    batch_size : rows per minibatch (None: all rows); particles : ELBO particles (None: 4 on a
        collapsed target, whose evaluations are cheap and whose guide then settles better, else 1)
    task_batch_size : tasks per minibatch, each with all its rows (None: all tasks): the task
        plate subsamples and the ELBO is scaled to the full data's, so memory and time per step
        follow the batch, not the number of tasks (``MultiTaskModel.task_minibatches``). Guides:
        "structured" (full rank over the population, mean field over the tasks), "normal",
        "delta". No PSIS check (it needs every row).
    jit : JIT-compiled ELBO (None: when there are no minibatches); threads : torch threads
    compile : "auto" (the default), "inductor" or None. Without minibatches, enumeration or
        ``validation``, and with guide "structured", "normal" or "mvn", a step is one function
        of tensors on the target's flat potential, compiled by inductor (``flat_svi.py``): about
        10x Pyro's steps per second on a 100-task model, after a 5-20 s compile. "auto" does this
        for ``steps`` of at least ``svi.COMPILED_FROM`` (3000); "inductor" demands it (an error
        says what blocks it); None runs Pyro's SVI (with ``jit``).
    psis : resample the guide's draws by their Pareto-smoothed importance weights where these
        are usable (``svi.py``); psis_draws : guide draws weighed, at least ``draws`` (None: 10 x
        draws, >= 1000)
    init_scale : the guide's initial sd of every unconstrained value (None: the guide's, 0.1; a
        model may ask for less through ``sampler_defaults``, as a network's heads do)
    validation : hold out this share of each task's rows (``fit`` splits them off, seeded): every
        ``window`` steps the held-out rows' mean log predictive density under the guide is
        scored; the fit stops when it has not improved for ``patience`` windows and ends at the
        best window's guide (no annealing). The posterior is then of the other rows.
    validate_by : "rows" (the above) or "tasks": hold out that share of the tasks, whole, and
        score their rows as new tasks (parameters drawn from the learned population), which is
        what early stopping must watch when the fit is for tasks not yet seen: a network's
        trunk can learn the training tasks apart and predict a new task confidently and wrongly
        long before rows of the training tasks stop improving. The fit then runs again on every
        row for the best window's number of steps, so the posterior covers every task.
    clip : each gradient entry clipped at this (Adam, as Pyro's ``ClippedAdam``). None: Pyro's 10
        on all rows, and where a step's gradient is a minibatch's scaled up, 10 times the rows
        (``batch_size``) or tasks (``task_batch_size``) the loss sums over, so that the clip cuts
        only a fault, not the minibatch noise. A model may set its own (a network: 10).
    refit : with ``validation`` by rows, fit again on every row for the best window's number
        of steps (early stopping's choice of steps, and every row in the posterior), as
        ``validate_by="tasks"`` always does; False: the posterior of the other rows, one fit.
    """

    method: ClassVar[str] = "svi"
    guide: str = "structured"
    rank: int | None = None
    lr: float = 0.01
    steps: int = 20000
    min_steps: int | None = None
    tol: float = 1e-5
    window: int = 500
    lookback: int = 4
    anneal: int | None = None
    average: bool = True
    batch_size: int | None = None
    task_batch_size: int | None = None
    particles: int | None = None
    jit: bool | None = None
    compile: str | None = "auto"
    threads: int | None = 1
    psis: bool = True
    psis_draws: int | None = None
    init_scale: float | None = None
    validation: float | None = None
    patience: int = 4
    validate_by: str = "rows"
    refit: bool = False
    clip: float | None = None

    def __post_init__(self):
        _one_of("guide", self.guide, GUIDES, one_of=True)
        for name, check in _SVI_CHECKS.items():
            _set(self, name, check(getattr(self, name)))
        _check_min_steps(self.min_steps, self.steps)
        compile_ = _one_of("compile", self.compile, ("auto", "inductor", None, False, "none"), one_of=True)
        _set(self, "compile", compile_ if compile_ in ("auto", "inductor") else None)
        if self.rank is not None and self.guide != "lowrank":
            raise ValueError(f"rank applies to guide='lowrank' only; the guide is {self.guide!r}")
        if self.task_batch_size is not None:
            if self.batch_size is not None:
                raise ValueError("batch_size (rows) and task_batch_size (tasks) both set: a minibatch is one or "
                                 "the other")
            if self.guide in ("mvn", "lowrank"):
                raise ValueError(f"guide={self.guide!r} draws every task jointly, so it cannot take task "
                                 "minibatches; use 'structured', 'normal' or 'delta'")
            if self.validation is not None:
                raise ValueError("validation= with task_batch_size is not supported yet")


@dataclass(frozen=True, kw_only=True)
class MAP(Options):
    """``method="map"``: a point estimate. A model that offers its own optimiser (e.g.
    ``MultitaskGP``: type-II maximum likelihood) gets the options set here plus ``model_options``
    and checks them itself; otherwise SVI with a delta guide runs, with SVI's defaults for the
    options left at None, and ``model_options`` must be empty. Keyword options that are not
    fields go to ``model_options``.
    """

    method: ClassVar[str] = "map"
    lr: float | None = None
    steps: int | None = None
    min_steps: int | None = None
    tol: float | None = None
    window: int | None = None
    lookback: int | None = None
    anneal: int | None = None
    average: bool | None = None
    batch_size: int | None = None
    task_batch_size: int | None = None
    particles: int | None = None
    jit: bool | None = None
    threads: int | None = None
    validation: float | None = None
    patience: int | None = None
    validate_by: str | None = None
    refit: bool | None = None
    clip: float | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self):
        for name in self._svi_fields():
            if getattr(self, name) is not None:
                _set(self, name, _SVI_CHECKS[name](getattr(self, name)))
        _check_min_steps(self.min_steps, SVI.steps if self.steps is None else self.steps)
        if not isinstance(self.model_options, Mapping):
            raise ValueError(f"model_options must be a mapping of option name to value; got {self.model_options!r}")
        _set(self, "model_options", dict(self.model_options))

    @classmethod
    def _svi_fields(cls) -> list[str]:
        return [n for n in cls.known() if n != "model_options"]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]):
        options = dict(options)
        own = {k: options.pop(k) for k in cls.known() if k in options}
        return cls(**own, model_options={**own.pop("model_options", {}), **options})

    def given(self) -> dict[str, Any]:
        return {**{n: getattr(self, n) for n in self._svi_fields() if getattr(self, n) is not None},
                **self.model_options}

    def svi(self) -> SVI:
        """The options of the SVI fit with a delta guide (a model without its own optimiser)."""
        if self.model_options:
            raise ValueError(f"unknown option(s) for method 'map': {sorted(self.model_options)}; "
                             f"known: {', '.join(self._svi_fields())} (this model has no optimiser of its own: "
                             "SVI with a delta guide)")
        return SVI(guide="delta", **{n: getattr(self, n) for n in self._svi_fields() if getattr(self, n) is not None})
