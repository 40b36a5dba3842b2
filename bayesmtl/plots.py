"""Plots of task relations (matplotlib is imported only here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["heatmap"]


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
