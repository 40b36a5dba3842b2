"""Plots of task relations (matplotlib is imported only here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["heatmap", "graph", "LABELLED_TASKS"]

#: above this many tasks the heatmap drops its axis labels (they would overprint)
LABELLED_TASKS = 60


def heatmap(rel, path: str | Path | None = None, title: str | None = None, prob: float = 0.9):
    """Heatmap of the posterior mean relation, tasks ordered by ``rel.order()``; cells that are
    not credibly related (``rel.credible(prob)``) are grey, so noise is not coloured in. A point
    estimate (no posterior) is shown in full.

    Returns the matplotlib Figure; writes a PNG when ``path`` is given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    idx = rel.order()
    m = rel.draws.mean(0)[np.ix_(idx, idx)]
    names = [rel.names[i] for i in idx]
    T = len(names)
    shown = np.ones((T, T), dtype=bool) if rel.point_estimate else rel.credible(prob).to_numpy()[np.ix_(idx, idx)]
    np.fill_diagonal(shown, True)
    size = min(4 + 0.18 * T, 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    lo = -1.0 if m.min() < 0 else 0.0
    cmap = plt.get_cmap("RdBu_r" if lo < 0 else "viridis").with_extremes(bad="0.88")
    im = ax.imshow(np.ma.masked_array(m, ~shown), cmap=cmap, vmin=lo, vmax=max(1.0, m.max()))
    pairs = int(np.triu(shown, 1).sum())
    title = title or f"{rel.kind[:70]}\n{pairs} credibly related pair(s) at {prob:g} (grey: not credible)"
    if T <= LABELLED_TASKS:
        ax.set_xticks(range(T), names, rotation=90, fontsize=max(4, 9 - T // 10))
        ax.set_yticks(range(T), names, fontsize=max(4, 9 - T // 10))
    else:  # names would overprint: the order is the picture; graph() names the related pairs
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{T} tasks, ordered so related tasks sit together")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    Z = rel.linkage()
    if Z is not None:  # the clustering that ordered the tasks, above their columns
        from mpl_toolkits.axes_grid1 import make_axes_locatable
        from scipy.cluster.hierarchy import dendrogram

        top = make_axes_locatable(ax).append_axes("top", size="12%", pad=0.05)
        dendrogram(Z, ax=top, no_labels=True, color_threshold=0, above_threshold_color="0.35")
        top.set_xlim(0, 10 * T)  # dendrogram leaves sit at 5, 15, ...: one per heatmap column
        top.set_axis_off()
        top.set_title(title, fontsize=9)
    else:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def graph(rel, pairs, path: str | Path | None = None, title: str | None = None):
    """Network of task pairs (rows of ``pairs``: task_a, task_b, mean) on a circle.

    Red edges are positive relations, blue negative, width growing with |mean|. Returns the
    matplotlib Figure; writes a PNG when ``path`` is given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = [rel.names[i] for i in rel.order()]  # related tasks sit next to each other on the circle
    T = len(names)
    angle = 2 * np.pi * np.arange(T) / T
    xy = dict(zip(names, np.c_[np.cos(angle), np.sin(angle)], strict=True))
    linked = set(pairs["task_a"]) | set(pairs["task_b"])
    size = min(5 + 0.05 * T, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    for a, b, m in zip(pairs["task_a"], pairs["task_b"], pairs["mean"], strict=True):
        (x0, y0), (x1, y1) = xy[a], xy[b]
        ax.plot([x0, x1], [y0, y1], color="tab:red" if m > 0 else "tab:blue", lw=0.5 + 3 * abs(m), alpha=0.7)
    ax.scatter(np.cos(angle), np.sin(angle), s=20, color="black", zorder=3)
    for n, (x, y) in xy.items():
        if T <= LABELLED_TASKS or n in linked:  # many tasks: label only those with an edge
            ax.annotate(n, (x, y), xytext=(6 * x, 6 * y), textcoords="offset points", fontsize=max(5, 9 - T // 10),
                        ha="left" if x >= 0 else "right", va="center")
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"{len(pairs)} related pairs (red +, blue -)", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
