"""Type-II maximum likelihood of a ``MultitaskGP`` (``method="map"``): its options checked in one
place, then L-BFGS or Adam (with random restarts) on the exact ICM marginal likelihood, or the
variational LMC's training (``lmc.fit_lmc``) for ``kind="lmc"``."""

from __future__ import annotations

import copy
import math
import time

import torch

from ..design import add_at
from ..infer.base import Draws, Settings, torch_threads
from ..infer.driver import progress_bar
from . import hierarchical, icm
from .predict import integrated_means_prior

__all__ = ["OPTIONS", "fit_type_ii"]

#: options of ``method="map"`` with a MultitaskGP (``kind="lmc"`` reads steps, lr and batch_size)
OPTIONS = frozenset({"optimizer", "lr", "steps", "tol", "threads", "restarts", "batch_size", "inducing_lr",
                     "hyperprior"})


def fit_type_ii(model, data, settings: Settings) -> Draws:
    """Type-II maximum a posteriori of ``model`` (a ``MultitaskGP``, only read) on ``data``: the
    hyperparameters maximise the log marginal likelihood plus their priors' log density (the
    model's priors, scaled to the data by ``bind``), as a GPyTorch or BoTorch model with priors is
    fitted. ``hyperprior=False``: plain type-II maximum likelihood. On the
    computer survey (16 profiles, 13 binary inputs) plain ML set lengthscales to 1e-2 and 1e8 and
    covered 0.72-0.98 of held-out ratings by seed.

    Options (``settings.options``): ``optimizer`` ("lbfgs" default, or "adam"), ``lr`` (1.0
    L-BFGS / 0.05 Adam), ``steps`` (100 L-BFGS outer steps of up to 20 iterations / 1000 Adam),
    ``tol`` (stop when an outer step changes the objective by less than tol x its size, 1e-6),
    ``restarts`` (random initialisations, best kept; 1), ``threads`` (default 1 below 1,500
    rows, else torch's setting), ``hyperprior`` (True); ``kind="lmc"``: see ``lmc.fit_lmc``.
    Returns one draw: samples of shape (1, 1, ...) (T tasks, D features,
    r = min(rank, T)): ``lengthscale`` (D,), ``task_W`` (T, r), ``task_v`` (T,), ``noise`` (T,),
    ``noise_level`` () (the level the noises pool about; not with ``hyperprior=False``), ``mean``
    (T,); on the Hadamard path the task means are integrated out under a Normal ``mean_prior``
    and ``mean`` and ``mean_sd`` (T,) are their posterior mean and sd given the rest; with
    private kernels ``private_lengthscale`` (T, D) and ``private_var`` (T,), with a gpytorch
    kernel object its trained parameters ``kernel.<name>``; ``kind="hierarchical"``: the sites of
    ``bayesmtl.gp.hierarchical``.
    """
    opts = dict(settings.options)
    unknown = set(opts) - OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) for method 'map' with MultitaskGP: {sorted(unknown)}; "
                         f"known: {sorted(OPTIONS)}")
    if model.kind == "lmc":
        from . import lmc

        with torch_threads(opts.pop("threads", None)):
            return lmc.fit_lmc(model, data, settings, opts)
    optimizer = opts.get("optimizer", "lbfgs")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam'; got {optimizer!r}")
    restarts = int(opts.get("restarts", 1))
    if opts.get("hyperprior", True) not in (True, False):
        raise ValueError(f"hyperprior must be True or False; got {opts['hyperprior']!r}")
    gen = torch.Generator().manual_seed(settings.seed)
    grid, cells = icm.training_layout(data.X, data.y, data.task, data.n_tasks, model.private)
    best = None
    t0 = time.perf_counter()
    # small problems: one thread (thread start-up and waits cost more than they save, and badly
    # so on a loaded machine: 20x measured at 60 rows with 2 threads); large: torch's default
    small = data.n_rows < 1500
    threads = opts.get("threads", 1 if small else None)
    with torch_threads(threads):
        for i in range(max(1, restarts)):
            desc = f"type-II MAP ({optimizer})" + (f", start {i + 1} of {restarts}" if restarts > 1 else "")
            out = _fit_once(model, data, grid, cells, optimizer, opts, gen, (desc, settings.progress))
            if best is None or out[0] > best[0]:
                best = out
    _, params, iters, trace, mll = best
    seconds = time.perf_counter() - t0
    samples = {k: v.detach().cpu().reshape((1, 1) + v.shape) for k, v in params.items()}
    info = {"gp_path": model.describe(data)["gp_path"], "optimizer": optimizer,
            "hyperprior": bool(opts.get("hyperprior", True)),
            "log_marginal_likelihood": float(mll), "iterations": iters, "restarts": restarts,
            "fit_seconds": seconds, "mll_trace": trace[:: max(1, len(trace) // 100)]}
    return Draws(samples, {}, info)


def _initial(model, data, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Starting values, unconstrained (log scale for positive parameters), requiring grad:
    ``log_ls`` (D,), ``task_W`` (T, r), ``log_v`` (T,), ``log_noise`` (T,), ``mean`` (T,), and with
    private kernels ``log_pls`` (T, D), ``log_pv`` (T,)."""
    T, D, r = data.n_tasks, data.n_features, min(model.rank_for(data), data.n_tasks)
    dt, dev = data.dtype, data.device
    y, task = data.y, data.task
    cnt = torch.bincount(task, minlength=T).to(dt)
    m = add_at(torch.zeros(T, dtype=dt, device=dev), 0, task, y) / cnt
    var = add_at(torch.zeros(T, dtype=dt, device=dev), 0, task, (y - m[task]) ** 2) / cnt
    var = var.clamp_min(1e-6)
    sd = var.sqrt()
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=dt, device=gen.device).to(dev)  # noqa: E731
    # signal split: 1/2 in W W^T, 1/4 in v, 1/4 noise; small random spread breaks symmetry
    W = sd.unsqueeze(-1) * rnd(T, r) * math.sqrt(0.5 / r)
    log_ls = torch.ones(D, dtype=dt, device=dev) * math.log(math.sqrt(max(D, 1)))
    out = {"log_ls": (log_ls + 0.1 * rnd(D)).requires_grad_(),
           "task_W": W.requires_grad_(),
           "log_v": (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_(),
           "log_noise": (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_(),
           "mean": m.clone().requires_grad_()}
    if model.private:  # the private processes take a share of the signal like v's
        out["log_pls"] = (log_ls + 0.1 * rnd(T, D)).requires_grad_()
        out["log_pv"] = (torch.log(0.25 * var) + 0.1 * rnd(T)).requires_grad_()
    return out


def _fit_once(model, data, grid: icm.Grid | None, cells: icm.Cells | None, optimizer: str, opts: dict,
              gen: torch.Generator, bar: tuple[str, bool] = ("type-II MAP", False),
              ) -> tuple[float, dict[str, torch.Tensor], int, list[float], float]:
    """One optimisation from a random start: (final objective, fitted values (constrained, no
    leading dims), iterations, objective trace, final log marginal likelihood). ``bar``: the
    progress bar's label and whether to show it."""
    like = data.y.new_zeros(())
    prior = _log_prior(like) if opts.get("hyperprior", True) else None
    if model.kind == "hierarchical":
        raw = hierarchical.initial(data, gen)

        def mll_of(raw):
            return hierarchical.mll(grid, cells, hierarchical.constrain(raw), model.kernel)

        def prior_of(raw):
            return prior([(model.lengthscale_prior, raw["log_ls"]), (model.lengthscale_prior, raw["log_dls"]),
                          (model.outputscale_prior, raw["log_shared"]), (model.outputscale_prior, raw["log_dev"]),
                          (model.outputscale_prior, raw["log_offset"]), (model.noise_prior, raw["log_noise"])],
                         [(model.mean_prior, raw["mean"])])

        final, iters, trace = _optimise(raw, list(raw.values()), _objective(mll_of, prior and prior_of), data.n_rows,
                                        optimizer, opts, bar)
        with torch.no_grad():
            mll = float(mll_of(raw))
        return final, {k: v.detach() for k, v in hierarchical.constrain(raw).items()}, iters, trace, mll
    # L-BFGS moves W and the means in the target's sd (W / s, (mean - m) / s), where its scalar
    # initial Hessian fits them beside the log scales: in raw score units (school, sd 13) it took
    # 1.4-2.3x the evaluations on 30 schools and stopped at lower optima from 2 of 3 starts
    m, sd = data.y.mean().detach(), data.y.std().detach().clamp_min(1e-12)
    loc, scale = {"mean": m}, {"task_W": sd, "mean": sd}
    start = _initial(model, data, gen)
    # Hadamard path: the task means are integrated out under their Normal prior, as f is, not
    # maximised, whose uncertainty was missing from the predictions (with the noises fitted per
    # school, small schools' held-out z^2 was 1.2-2.5). With the pooled noises below, school
    # split 0 covers 0.880 (0.860 before; docs/benchmarks.md)
    fixed_means = integrated_means_prior(model, data.n_tasks, like) if grid is None and prior else None
    if fixed_means is not None:
        del start["mean"]
    if prior is not None:  # the tasks' noises pool about a shared level through their prior
        start["log_level"] = start["log_noise"].mean()
    spread = model.spread_for()
    z = {k: ((v.detach() - loc.get(k, 0.0)) / scale.get(k, 1.0)).requires_grad_() for k, v in start.items()}

    def units(z):  # the optimiser's values -> the model's
        return {k: loc.get(k, 0.0) + scale[k] * v if k in scale else v for k, v in z.items()}

    params = list(z.values())
    kfn, kern = model.kernel, None
    if not isinstance(model.kernel, str):
        # train a copy: every restart (and every fit) starts from the user's kernel, and the
        # trained values go to the draws
        kern = copy.deepcopy(model.kernel).to(device=data.device, dtype=data.dtype)
        params += list(kern.parameters())
        kfn = lambda X1, X2, ls: kern(X1, X2).to_dense()  # noqa: E731
    private = model.private

    def parts(z):  # B, lengthscales, noise, means (prior means if integrated), private, offset
        raw = units(z)
        B = icm.task_covariance(raw["task_W"], raw["log_v"].exp())
        priv = (raw["log_pls"].exp(), raw["log_pv"].exp()) if private else None
        mean, offset = fixed_means if fixed_means is not None else (raw["mean"], None)
        return B, raw["log_ls"].exp(), raw["log_noise"].exp(), mean, priv, offset

    def mll_of(z):
        B, ls, noise, mean, priv, offset = parts(z)
        if grid is not None:
            return icm.kronecker_mll(grid.X, grid.Y, B, ls, noise, mean, kfn)
        return icm.hadamard_mll(cells.X, cells.y, cells.task, B, ls, noise, mean, kfn, cells.count, cells.ss, priv,
                                offset)

    def prior_of(z):
        raw = units(z)
        logs = [(model.lengthscale_prior, raw["log_ls"]), (model.v_prior, raw["log_v"]),
                (model.noise_prior, raw["log_level"])]
        if private:
            logs += [(model.lengthscale_prior, raw["log_pls"]), (model.v_prior, raw["log_pv"])]
        plain = [(model.w_prior, raw["task_W"])]
        if fixed_means is None:
            plain.append((model.mean_prior, raw["mean"]))
        # each task's log noise about the shared level, a density in log space: a variance's own
        # density would pull every task's noise down by a factor (n + 2) / n (n its rows)
        spread_lp = torch.distributions.Normal(raw["log_level"], spread).log_prob(raw["log_noise"]).sum()
        return prior(logs, plain) + spread_lp

    final, iters, trace = _optimise(z, params, _objective(mll_of, prior and prior_of), data.n_rows, optimizer, opts,
                                    bar)
    with torch.no_grad():
        mll = float(mll_of(z))
        raw = units(z)
        B, ls, noise, mean, priv, offset = parts(z)
        out = {"lengthscale": ls, "task_W": raw["task_W"], "task_v": raw["log_v"].exp(), "noise": noise, "mean": mean}
        if "log_level" in raw:
            out["noise_level"] = raw["log_level"].exp()
        if fixed_means is not None:  # the means' posterior given the fitted hyperparameters
            cache = icm.hadamard_cache(cells.X, cells.y, cells.task, B, ls, noise, mean, kfn, cells.count, priv,
                                       offset)
            out["mean"], out["mean_sd"] = icm.integrated_means(cache, cells.task, mean, offset)
    if private:
        out["private_lengthscale"], out["private_var"] = raw["log_pls"].exp(), raw["log_pv"].exp()
    if kern is not None:
        out.update({f"kernel.{n}": p for n, p in kern.named_parameters()})
    return final, {k: v.detach() for k, v in out.items()}, iters, trace, mll


def _log_prior(like: torch.Tensor):
    """A function of ([(prior, log value)], [(prior, value)]) -> the summed log density of the
    values (positive ones given by their logs), without a Jacobian, as GPyTorch adds priors: with
    one, a variance's half-normal prior vanished at 0, so an ICM whose true private variance was 0
    kept one and its task correlation fell from 0.86 to 0.13."""
    from ..priors.base import move_distribution

    moved: dict[int, object] = {}  # each prior moved to the data's device once, not at every evaluation

    def mv(d):
        if id(d) not in moved:
            moved[id(d)] = move_distribution(d, like)
        return moved[id(d)]

    def log_prior(logs, plain):
        total = like.new_zeros(())
        for d, u in logs:
            total = total + mv(d).log_prob(u.exp()).sum()
        for d, v in plain:
            total = total + mv(d).log_prob(v).sum()
        return total

    return log_prior


def _objective(mll_of, prior_of):
    """The marginal likelihood, plus the hyperparameters' log prior when ``prior_of`` is given."""
    return mll_of if prior_of is None else (lambda raw: mll_of(raw) + prior_of(raw))


#: the loss (per row) reported for a point where the marginal likelihood or its gradient is not
#: finite: L-BFGS's line search then backs off instead of stepping to NaN parameters
BAD_LOSS = 1e10


def _optimise(raw: dict[str, torch.Tensor], params: list[torch.Tensor], mll_of, n: int, optimizer: str,
              opts: dict, bar: tuple[str, bool] = ("type-II MAP", False)) -> tuple[float, int, list[float]]:
    """Maximise ``mll_of(raw)`` over ``params`` in place: (final MLL, iterations, MLL trace).
    ``bar`` = (label, show): a progress bar counting evaluations (L-BFGS: their number is not
    known ahead; Adam: one a step), with the best objective and the outer step.

    A point whose value or gradient is not finite (a line search's long step: a lengthscale
    near 0, an overflowing scale) scores ``BAD_LOSS`` with a zero gradient, and the best point
    seen is restored at the end (on the survey's 190 tasks an unguarded L-BFGS reached NaN
    parameters within 5 seconds)."""
    # 1e-6 (was 1e-7): on 30 schools (3 starts) 10-35% fewer evaluations, the optimum within
    # 0.01 nats and predictions within 0.05 predictive sd
    tol = float(opts.get("tol", 1e-6))
    trace: list[float] = []
    best = {"loss": float("inf"), "values": None}
    steps = int(opts.get("steps", 1000 if optimizer == "adam" else 100))
    shown = progress_bar(steps if optimizer == "adam" else None, bar[0], bar[1], unit="eval", leave=False)

    def evaluate():
        for p in params:
            p.grad = None
        try:
            loss = -mll_of(raw) / n
            ok = bool(torch.isfinite(loss))
            if ok:
                loss.backward()
                ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        except (icm.GPNumericalError, torch.linalg.LinAlgError):
            ok = False
        if not ok:
            for p in params:
                p.grad = torch.zeros_like(p)
            return torch.tensor(BAD_LOSS, dtype=params[0].dtype)
        loss = loss.detach()
        if float(loss) < best["loss"]:
            best["loss"], best["values"] = float(loss), [p.detach().clone() for p in params]
        shown.update(1)
        shown.set_postfix(objective=f"{-best['loss'] * n:.6g}", step=f"{len(trace)}/{steps}", refresh=False)
        return loss

    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=float(opts.get("lr", 0.05)))
        for _ in range(steps):
            loss = evaluate()
            opt.step()
            trace.append(-float(loss) * n)
            if len(trace) > 50 and abs(trace[-1] - trace[-51]) < tol * 50 * abs(trace[-1]):
                break
    else:
        # history 100 (torch's default): on 30 schools (720 values) 23% fewer evaluations than
        # 20 over 3 starts, each reaching the same or a higher optimum
        opt = torch.optim.LBFGS(params, lr=float(opts.get("lr", 1.0)), max_iter=20,
                                line_search_fn="strong_wolfe", tolerance_change=1e-12, history_size=100)
        for _ in range(steps):
            loss = float(opt.step(evaluate))
            trace.append(-loss * n)
            if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol * abs(trace[-1]):
                break
    shown.close()
    with torch.no_grad():
        try:
            final = float(mll_of(raw))
        except (icm.GPNumericalError, torch.linalg.LinAlgError):
            final = float("nan")
        if best["values"] is not None and not (-final / n <= best["loss"]):  # also when final is NaN
            for p, v in zip(params, best["values"], strict=True):
                p.copy_(v)
            final = float(mll_of(raw))
    if not math.isfinite(final):
        raise icm.GPNumericalError("type-II maximum likelihood found no point with a finite marginal likelihood; "
                                   "check the inputs for constant or duplicated columns, or standardise them")
    return final, len(trace), trace
