"""Checks that run after every fit and say, in one line each, what went wrong and what to do.

MCMC (Vehtari et al. 2021; Betancourt 2017): split rank-normalised r_hat above 1.01, bulk or
tail ESS below 100 (over all chains), any divergent transition (with the parameters whose
values the divergent draws sit at the edge of), transitions that hit the tree-depth limit, and
an E-BFMI below 0.3 in any chain. Variational fits: an ELBO that had not stopped falling, an
averaged guide whose population values still carry more than 0.1 posterior sd of optimisation
noise (batch means over the annealing steps, ``infer/averaging.py``), and the Pareto k of the
importance ratios p(theta, y) / q(theta) of the guide's draws (Yao et al. 2018), above 0.7 when
the guide is not a reliable approximation of the posterior.

``fit`` warns (``DiagnosticWarning``) for each problem and records them in ``info["diagnostics"]``
(run.json); ``Posterior.diagnose()`` gives them as ``Problem`` records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Problem", "DiagnosticWarning", "THRESHOLDS", "MAX_SVI_NOISE", "diagnose", "mcmc_problems",
           "svi_problems", "e_bfmi"]

#: the defaults of ``diagnose``; a fit checks against these
THRESHOLDS = {"r_hat": 1.01, "min_ess": 100.0, "min_bfmi": 0.3, "max_pareto_k": 0.7}
#: posterior sds of optimisation noise left in an averaged SVI guide above which a fit warns
#: (``infer/averaging.py``): about what two full-batch fits at different seeds differ by
MAX_SVI_NOISE = 0.1
#: entries named in a message before "and N more"
_NAMED = 3


class DiagnosticWarning(UserWarning):
    """A fit that finished but should not be trusted as it is (see ``Posterior.diagnose``)."""


@dataclass(frozen=True)
class Problem:
    """One failed check.

    check : "r_hat", "ess_bulk", "ess_tail", "divergences", "tree_depth", "e_bfmi", "elbo", "pareto_k",
        "svi_noise" (the averaged guide's optimisation noise, ``infer/averaging.py``) or "tree_chains"
        (a learned tree's sampler chains disagree)
    value : the worst value found (max r_hat, min ESS, number of divergences, ...)
    threshold : what it was checked against
    entries : the parameters concerned, worst first (labelled like the summary: ``tau[intercept]``)
    message : one line naming the problem, the parameters and the fix
    """

    check: str
    value: float
    threshold: float
    entries: tuple[str, ...]
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        """A JSON-ready dict (run.json)."""
        return {**asdict(self), "entries": list(self.entries)}


def _names(entries) -> str:
    entries = list(entries)
    head = ", ".join(entries[:_NAMED])
    return head + (f" and {len(entries) - _NAMED} more" if len(entries) > _NAMED else "")


def _num(x: float) -> str:
    """1.013, 7.31, 6.9e+15: enough digits to tell a value from the 1.01 threshold."""
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.3g}"


def e_bfmi(energy: np.ndarray) -> np.ndarray:
    """Energy Bayesian fraction of missing information per chain, energy (chains, draws) -> (chains,)."""
    e = np.asarray(energy, dtype=float)
    num = np.square(np.diff(e, axis=1)).mean(axis=1)
    den = e.var(axis=1)
    return num / np.where(den > 0, den, np.nan)


def mcmc_problems(summary, draws: np.ndarray, stats: dict[str, np.ndarray], info: dict,
                  r_hat: float = 1.01, min_ess: float = 100.0, min_bfmi: float = 0.3) -> list[Problem]:
    """Problems of an MCMC fit.

    summary : the posterior summary (rows labelled by entry; columns r_hat, ess_bulk, ess_tail)
    draws : (chains, draws, K) values of the summary's K entries in its row order
    stats : sample stats, each (chains, draws): ``diverging``, and ``tree_depth``, ``energy`` where kept
    info : the fit's info (``max_tree_depth``, ``options``)
    """
    out: list[Problem] = []
    # constant entries (a correlation matrix's diagonal) have no ESS or r_hat worth reporting
    summary = summary[~(summary["sd"] <= 1e-9 * np.maximum(summary["mean"].abs(), 1.0))]
    accept = info.get("target_accept", (info.get("options") or {}).get("target_accept", 0.8))
    rh = summary["r_hat"].dropna()
    bad = rh[rh > r_hat].sort_values(ascending=False)
    if len(bad):
        out.append(Problem("r_hat", float(bad.iloc[0]), r_hat, tuple(bad.index),
                           f"r_hat up to {_num(bad.iloc[0])} (> {r_hat}) for {_names(bad.index)}: the chains "
                           "disagree (not mixed, or stuck in different modes); run longer (warmup=, draws=), "
                           "reparametrise, or look at the trace of these parameters"))
    for col, what in (("ess_bulk", "the posterior means"), ("ess_tail", "the interval ends")):
        ess = summary[col].dropna()
        low = ess[ess < min_ess].sort_values()
        if len(low):
            out.append(Problem(col, float(low.iloc[0]), min_ess, tuple(low.index),
                               f"{col} as low as {low.iloc[0]:.3g} (< {min_ess:g}) for {_names(low.index)}: "
                               f"too few effective draws to trust {what}; run more draws or chains"))
    div = np.asarray(stats.get("diverging", np.zeros(draws.shape[:2], dtype=bool)), dtype=bool)
    n_div = int(div.sum())
    if n_div:
        where = _divergence_sites(summary.index, draws, div)
        near = f"; they sit at {', '.join(where)}" if where else ""
        out.append(Problem("divergences", float(n_div), 0.0, tuple(w.split(" of ")[-1] for w in where),
                           f"{n_div} divergent transition(s) of {div.size}{near}: the sampler cannot follow the "
                           f"posterior's curvature there (often a funnel); raise target_accept (now {accept}) "
                           "or non-centre the prior of those parameters"))
    depth = stats.get("tree_depth")
    limit = info.get("max_tree_depth")
    if depth is not None and limit is not None:
        hit = int((np.asarray(depth) >= limit).sum())
        if hit:
            out.append(Problem("tree_depth", float(hit), float(limit), (),
                               f"{hit} of {np.asarray(depth).size} transitions hit the tree-depth limit "
                               f"({limit}): the sampler stopped short rather than at a U-turn, which only costs "
                               "speed if the draws mix; raise max_tree_depth or reparametrise"))
    energy = stats.get("energy")
    if energy is not None and np.asarray(energy).shape[1] >= 10:
        bf = e_bfmi(energy)
        low = [c for c in range(len(bf)) if np.isfinite(bf[c]) and bf[c] < min_bfmi]
        if low:
            out.append(Problem("e_bfmi", float(np.nanmin(bf)), min_bfmi, (),
                               f"E-BFMI {np.nanmin(bf):.2f} (< {min_bfmi}) in chain(s) "
                               f"{', '.join(map(str, low))}: momentum resampling cannot explore the energy "
                               "levels (heavy tails or a scale parameter poorly identified); reparametrise or "
                               "give the scale parameters tighter priors"))
    return out


def _divergence_sites(labels, draws: np.ndarray, div: np.ndarray) -> list[str]:
    """Entries whose values at divergent draws sit far into one tail: 'low tau[intercept]'.

    The mean percentile (within all draws) of the divergent draws, against 50 with the standard
    error of a mean of uniform percentiles; up to three, furthest first."""
    flat = draws.reshape(-1, draws.shape[-1])
    mask = div.reshape(-1)
    n = int(mask.sum())
    if n == 0 or n == mask.size:
        return []
    pct = flat.argsort(0).argsort(0) / max(flat.shape[0] - 1, 1) * 100
    m = pct[mask].mean(0)
    z = (m - 50) / (100 / np.sqrt(12 * n))
    order = np.argsort(-np.abs(z))
    return [f"{'low' if m[k] < 50 else 'high'} values of {labels[k]}" for k in order[:3] if abs(z[k]) > 3]


def svi_problems(info: dict, max_pareto_k: float = 0.7) -> list[Problem]:
    """Problems of a variational fit: an ELBO still falling, an averaged guide still noisy, and
    the guide's Pareto k."""
    out: list[Problem] = []
    if info.get("converged") is False:
        out.append(Problem("elbo", float(info.get("steps", 0)), 0.0, (),
                           f"{'MAP' if info.get('method') == 'map' else 'SVI'} did not converge in "
                           f"{info.get('steps')} steps (the mean loss was still "
                           "falling); raise steps= or lr="))
    noise = info.get("average_noise")
    if noise is not None and noise > MAX_SVI_NOISE:
        site = info.get("average_noise_site")
        tasks = info.get("task_batch_size")
        fix = f"raise anneal= (now {info.get('anneal')})" + (" or task_batch_size=" if tasks else "")
        out.append(Problem("svi_noise", float(noise), MAX_SVI_NOISE, (site,) if site else (),
                           f"SVI's averaged guide still carries about {noise:.2f} posterior sd of optimisation noise "
                           f"(in {site}, from the spread between blocks of the annealing steps): a fit at another "
                           f"seed would land about that far away; {fix}"))
    k = info.get("pareto_k")
    if k is not None and np.isfinite(k) and k > max_pareto_k:
        guide = info.get("guide")
        fixed = (" even after importance resampling" if info.get("resampled") else "")
        out.append(Problem("pareto_k", float(k), max_pareto_k, (),
                           f"Pareto k {k:.2f} (> {max_pareto_k}) of the importance ratios p/q: the {guide} guide "
                           f"is not a reliable approximation of this posterior (its intervals are likely too "
                           f"narrow{fixed}); check against method='nuts'{_other_guides(info)}"))
    return out


def _other_guides(info: dict) -> str:
    """What else to try after a high Pareto k: only what this fit did not use already. (k is a
    joint measure: over thousands of per-task values it passes 0.7 even where each population
    value's marginal is close, as on 2,000 planted tasks: means within 0.1 and sds within 4% of
    NUTS's at k 2.0.)"""
    tries = [t for t, used in (("collapse=True", info.get("path") == "collapsed"),
                               ("guide='mvn'", info.get("guide") == "mvn")) if not used]
    return f", or try {' or '.join(tries)}" if tries else ""


def diagnose(post, r_hat: float = 1.01, min_ess: float = 100.0, min_bfmi: float = 0.3,
             max_pareto_k: float = 0.7) -> list[Problem]:
    """Every failed check of a fitted ``Posterior`` (empty when all pass); see the module docstring."""
    kind = post.info.get("draws_kind", "mcmc")
    learned = list(post.model.problems())  # what the model learned before the fit (a tree's chains)
    if kind == "independent":
        return learned + svi_problems(post.info, max_pareto_k)
    if kind == "point":
        return learned + svi_problems({k: v for k, v in post.info.items() if k != "pareto_k"})
    if post.num_draws < 4:
        return learned
    summary = post.summary()
    draws = np.concatenate([np.asarray(post.samples[k]).reshape(post.num_chains, post.num_draws, -1)
                            for k in post.summarised_sites()], axis=-1)
    return learned + mcmc_problems(summary, draws, post.sample_stats, post.info, r_hat, min_ess, min_bfmi)
