"""One self-contained HTML report of one run, or of several runs with their comparison.

No server, no network, no script: figures are inline SVG (text kept as text, so task names can
be searched and read at any zoom), styles inline. A run's section holds its settings, the
diagnostics in plain words with what to do, the population-level summary, trace and rank plots
of the hyperparameters (MCMC) or the ELBO trace (SVI), the task relations (heatmap ordered so
related tasks sit together, the credible pairs as a graph and a table), the number of clusters
(clustering models), the posterior predictive check per task and the priors used. Several runs
add the ``compare`` table (or the reason there is none) and their relation matrices side by side.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .devices import on_host
from .plots import LABELLED_TASKS
from .posterior import Posterior

__all__ = ["report"]

#: hyperparameters drawn in trace and rank plots (the first ones, population-level scalars)
MAX_TRACED = 6
#: task relations listed in the table of strongest credible pairs
TOP_PAIRS = 20

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em;margin:.4em 0}
.ok{background:#eef8ee;border-left:4px solid #3a3;padding:.4em .8em;margin:.4em 0}
.note{color:#555;font-size:.9em}figure{margin:.8em 0}figure svg{max-width:100%;height:auto}
.side{display:flex;flex-wrap:wrap;gap:1em}.side figure{flex:1 1 300px}
"""


def _svg(fig) -> str:
    """The figure as inline SVG (its text as text), closed afterwards."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        # no metadata: no date (the same run gives the same file) and no RDF block
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: invalid inside HTML


def _figure(fig, caption: str) -> str:
    return f"<figure>{_svg(fig)}<figcaption class='note'>{html.escape(caption)}</figcaption></figure>"


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.round(digits).to_html(border=0, na_rep="", escape=True)


def _population_sites(post: Posterior) -> list[str]:
    dims = post.dims()
    return [k for k in post.summarised_sites() if "task" not in dims.get(k, ()) and "task_" not in dims.get(k, ())]


def _settings(post: Posterior) -> str:
    i = post.info
    data = post.data
    # the class, not its repr: a bound model's priors hold tensors, which repr as their shapes;
    # the Priors section lists each one with its numbers
    rows = {"model": f"{type(post.model).__name__} (its priors: the Priors section)", "method": i.get("method"),
            "draws": post.describe_draws(),
            "data": f"{data.n_tasks} tasks, {data.n_rows} rows, features {', '.join(data.feature_names)}",
            "seed": i.get("seed"), "device": i.get("device"), "seconds": round(float(i.get("seconds", np.nan)), 1),
            "path": i.get("path")}
    return _table(pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]}).set_index("setting"))


def _diagnostics(post: Posterior) -> str:
    problems = post.diagnose()
    d = post.diagnostics()
    facts = []
    for key, label in (("max_r_hat", "max r_hat"), ("min_ess_bulk", "min bulk ESS"), ("min_ess_tail", "min tail ESS"),
                       ("divergences", "divergences")):
        if d.get(key) is not None:
            facts.append(f"{label} {d[key]:.3g}" if isinstance(d[key], float) else f"{label} {d[key]}")
    if "pareto_k" in post.info:
        facts.append(f"Pareto k of the guide {post.info['pareto_k']:.2f}")
    out = [f"<p class='note'>{html.escape('; '.join(facts))}</p>"] if facts else []
    if not problems:
        out.insert(0, "<div class='ok'>All diagnostic checks passed.</div>")
    for p in problems:
        out.append(f"<div class='warn'>{html.escape(p.message)}</div>")
    return "\n".join(out)


def _traces(post: Posterior, sites: list[str]) -> str:
    import matplotlib.pyplot as plt

    if post.info.get("draws_kind") != "mcmc":
        trace = post.info.get("loss_trace")
        if not trace:
            return ""
        fig, ax = plt.subplots(figsize=(7, 2.6))
        ax.plot(np.arange(1, len(trace) + 1), trace, lw=1)
        ax.set_xlabel("window of steps")
        ax.set_ylabel("loss (-ELBO)")
        ax.set_yscale("symlog")
        return _figure(fig, "SVI loss by window of steps: it should level off before the end.")
    labels = post.summary(var_names=sites).index.tolist() if sites else []  # cached: _section shows it too
    names = []
    for k in sites:
        v = np.asarray(post.samples[k])
        flat = v.reshape(v.shape[0], v.shape[1], -1)
        own = [lab for lab in labels if lab == k or lab.startswith(f"{k}[")]
        names += [(lab, flat[:, :, j]) for j, lab in enumerate(own[:flat.shape[-1]])]
    names = names[:MAX_TRACED]
    if not names:
        return ""
    from scipy.stats import rankdata

    fig, axes = plt.subplots(len(names), 2, figsize=(9, 1.5 * len(names) + 0.6), squeeze=False)
    for (label, x), (a, b) in zip(names, axes, strict=True):
        ranks = rankdata(x.reshape(-1)).reshape(x.shape)
        for c in range(x.shape[0]):
            a.plot(x[c], lw=0.6)
            b.hist(ranks[c], bins=20, histtype="step")
        a.set_ylabel(label, fontsize=7)
        a.tick_params(labelsize=7)
        b.set_yticks([])
        b.tick_params(labelsize=7)
    axes[0, 0].set_title("trace per chain", fontsize=9)
    axes[0, 1].set_title("rank histogram per chain (flat when mixed)", fontsize=9)
    fig.tight_layout()
    return _figure(fig, f"The first {len(names)} population-level parameters.")


def _relations(post: Posterior) -> str:
    try:
        rel = post.relations()
    except (NotImplementedError, ValueError) as e:
        return f"<p class='note'>No task relations: {html.escape(str(e))}</p>"
    out = [f"<p>{html.escape(rel.kind)}</p>", _figure(rel.plot(), "Posterior mean relation; grey cells are not "
                                                   "credibly different from unrelated tasks.")]
    if len(rel.names) > LABELLED_TASKS:  # the axes carry no names: list the heatmap's blocks instead
        out.append(f"<h4>Blocks of the heatmap, top left to bottom right ({len(rel.names)} tasks)</h4>"
                   + _table(rel.blocks().set_index("block")))
    pairs = rel.graph()
    fig = pairs.attrs.pop("figure")
    if len(pairs):
        out.append(_figure(fig, "Credibly related pairs (red: positive, blue: negative)."))
        out.append(f"<h4>Strongest credible pairs (of {len(pairs)})</h4>" + _table(pairs.head(TOP_PAIRS)))
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)
        out.append("<p>No pair of tasks is credibly related at the 90% level.</p>")
    counts = rel.cluster_counts
    if counts is not None:
        import matplotlib.pyplot as plt

        k, n = np.unique(np.asarray(counts), return_counts=True)
        fig, ax = plt.subplots(figsize=(5, 2.4))
        ax.bar(k, n / n.sum())
        ax.set_xlabel("occupied clusters")
        ax.set_ylabel("posterior probability")
        out.append(_figure(fig, "Posterior of the number of clusters."))
        clusters = rel.clusters()
        members = clusters.groupby("cluster").agg(tasks=("task", lambda t: ", ".join(map(str, t))),
                                                  size=("task", "size"), probability=("probability", "mean"))
        out.append(f"<h4>Point partition ({html.escape(clusters.attrs['loss'])} loss)</h4>" + _table(members))
    return "\n".join(out)


def _ppc(post: Posterior) -> str:
    import matplotlib.pyplot as plt

    if not post.data.in_memory:
        return (f"<p class='note'>Not made: the training rows stay in {html.escape(post.data.path)} (streamed), "
                "and the check replicates every row.</p>")
    if post.data.y is None:
        return ""
    table = post.ppc()
    order = np.argsort(table["y_mean"].to_numpy())
    T = len(table)
    fig, ax = plt.subplots(figsize=(min(4 + 0.12 * T, 14), 3.2))
    x = np.arange(T)
    ax.scatter(x, table["rep_mean"].to_numpy()[order], s=12, label="replicated mean", color="0.5")
    ax.scatter(x, table["y_mean"].to_numpy()[order], s=12, label="observed mean", color="C3")
    if T <= 60:
        ax.set_xticks(x, [str(n) for n in table.index[order]], rotation=90, fontsize=max(4, 8 - T // 10))
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{T} tasks, by observed mean")
    ax.legend(fontsize=7)
    flagged = table[(table["p_mean"] < 0.05) | (table["p_mean"] > 0.95)]
    cap = (f"Observed against replicated mean per task; {table.attrs['coverage']:.1%} of training rows lie in "
           f"their {table.attrs['prob']:.0%} predictive interval. ")
    cap += (f"Tasks the model misses (p_mean outside 0.05-0.95): {', '.join(map(str, flagged.index[:10]))}"
            if len(flagged) else "No task's mean is outside its replicated range.")
    return _figure(fig, cap) + "<details><summary>per-task table</summary>" + _table(table) + "</details>"


def _section(name: str, post: Posterior) -> str:
    sites = _population_sites(post)
    parts = [f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2>", "<h3>Settings</h3>", _settings(post),
             "<h3>Diagnostics</h3>", _diagnostics(post), _traces(post, sites)]
    if sites:
        parts += ["<h3>Population-level summary</h3>", _table(post.summary(var_names=sites)),
                  "<p class='note'>Per-task parameters: <code>post.summary()</code> or summary.csv.</p>"]
    parts += ["<h3>Task relations</h3>", _relations(post), "<h3>Posterior predictive check</h3>", _ppc(post),
              "<h3>Priors</h3>", _table(post.prior_summary().set_index("site"))]
    return "\n".join(p for p in parts if p)


def _comparison(posts: dict[str, Posterior], by: str) -> str:
    from .compare import compare

    try:
        table = compare(posts, by=by)
    except ValueError as e:
        return f"<div class='warn'>No comparison: {html.escape(str(e))}</div>"
    what = "leave one row out" if by == "row" else "leave one task out (importance sampling)"
    notes = "".join(f"<div class='warn'>{html.escape(n)}</div>" for n in table.attrs["notes"])
    return (f"<p>PSIS-LOO, {what}, over {table.attrs['n']} {by}s. A difference within 2 dse is not a clear "
            f"preference.</p>" + _table(table) + notes)


def _side_by_side(posts: dict[str, Posterior]) -> str:
    figs = []
    for name, post in posts.items():
        try:
            fig = post.relations().plot(title=name)
        except (NotImplementedError, ValueError):
            continue
        figs.append(_figure(fig, name))
    return f"<div class='side'>{''.join(figs)}</div>" if figs else ""


def report(runs: Posterior | str | Path | Sequence | Mapping, path: str | Path, by: str = "row",
           title: str | None = None, trust_pickle: bool = False, trust_code: bool = False) -> Path:
    """Write one self-contained HTML report to ``path`` and return it.

    ``runs``: a Posterior or run directory, or several (a list, or a dict name -> run); several
    runs add the PSIS-LOO comparison (``by`` "row" or "task") and their relations side by side.
    The file is written whole or not at all.
    """
    with on_host():
        import matplotlib

        matplotlib.use("Agg", force=False)
        from .compare import collect

        if by not in ("row", "task"):
            raise ValueError(f"by must be 'row' or 'task'; got {by!r}")
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"report path {str(path)!r} is a folder; give a file name such as report.html")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"the folder of {str(path)!r} does not exist")
        single = isinstance(runs, (Posterior, str, Path))
        posts = collect([runs] if single else runs, trust_pickle=trust_pickle, trust_code=trust_code)
        if not posts:
            raise ValueError("report needs at least one run")
        title = title or ("bayesmtl report: " + ", ".join(posts))
        body = [f"<h1>{html.escape(title)}</h1>"]
        if len(posts) > 1:
            body += ["<h2>Comparison</h2>", _comparison(posts, by), "<h3>Task relations side by side</h3>",
                     _side_by_side(posts)]
        body += [_section(name, post) for name, post in posts.items()]
        page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
        from .runs import write_atomic

        write_atomic(path, lambda fh: fh.write(page), "an HTML file")
        return path
