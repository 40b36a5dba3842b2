"""Plots of task relations (matplotlib is imported only here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["heatmap", "graph"]


def heatmap(rel, path: str | Path | None = None, title: str | None = None):
    """Heatmap of the posterior mean relation, tasks ordered by ``rel.order()``.

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
    size = min(4 + 0.18 * T, 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    lo = -1.0 if m.min() < 0 else 0.0
    im = ax.imshow(m, cmap="RdBu_r" if lo < 0 else "viridis", vmin=lo, vmax=max(1.0, m.max()))
    if T <= 60:
        ax.set_xticks(range(T), names, rotation=90, fontsize=max(4, 9 - T // 10))
        ax.set_yticks(range(T), names, fontsize=max(4, 9 - T // 10))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or rel.kind[:80], fontsize=9)
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

    names = rel.names
    T = len(names)
    angle = 2 * np.pi * np.arange(T) / T
    xy = dict(zip(names, np.c_[np.cos(angle), np.sin(angle)], strict=True))
    size = min(5 + 0.05 * T, 14)
    fig, ax = plt.subplots(figsize=(size, size))
    for a, b, m in zip(pairs["task_a"], pairs["task_b"], pairs["mean"], strict=True):
        (x0, y0), (x1, y1) = xy[a], xy[b]
        ax.plot([x0, x1], [y0, y1], color="tab:red" if m > 0 else "tab:blue", lw=0.5 + 3 * abs(m), alpha=0.7)
    ax.scatter(np.cos(angle), np.sin(angle), s=20, color="black", zorder=3)
    if T <= 60:
        for n, (x, y) in xy.items():
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
