"""TaskRelations: posterior draws of a T x T task-relation matrix with task names.

What the matrix measures depends on the model family and is stated in ``kind``:
similarity of task deviations (hierarchical), co-clustering probability (Dirichlet process),
task correlation (multi-task GP, task-relationship learning).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["TaskRelations"]


class TaskRelations:
    """Draws of a task-relation matrix.

    Parameters
    ----------
    draws : array, shape (S, T, T)
        One relation matrix per posterior draw (S = 1 for a point estimate).
    names : list of str, length T
    kind : str
        What the entries measure.
    point_estimate : bool
        True when ``draws`` holds a single point estimate (type-II ML, MAP): intervals are
        then not available rather than invented.
    """

    def __init__(self, draws: np.ndarray, names: list[str], kind: str, point_estimate: bool = False):
        draws = np.asarray(draws, dtype=float)
        if draws.ndim == 2:
            draws = draws[None]
        if draws.ndim != 3 or draws.shape[1] != draws.shape[2] or draws.shape[1] != len(names):
            raise ValueError(f"relation draws must have shape (S, {len(names)}, {len(names)}); got {draws.shape}")
        self.draws = draws
        self.names = list(names)
        self.kind = kind
        self.point_estimate = point_estimate

    def __repr__(self) -> str:
        return (f"TaskRelations({len(self.names)} tasks, {self.draws.shape[0]} draws"
                f"{', point estimate' if self.point_estimate else ''}: {self.kind})")

    def _frame(self, m: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(m, index=pd.Index(self.names, name="task_a"),
                            columns=pd.Index(self.names, name="task_b"))

    def mean(self) -> pd.DataFrame:
        """Posterior mean, T x T, labelled."""
        return self._frame(self.draws.mean(0))

    def interval(self, prob: float = 0.9) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Equal-tailed credible interval (lower, upper), each T x T."""
        if self.point_estimate:
            raise ValueError("these relations are a point estimate (no posterior): no intervals; "
                             "fit with method='nuts' or 'svi' for intervals")
        if not 0 < prob < 1:
            raise ValueError(f"prob must lie in (0, 1); got {prob}")
        lo, hi = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        return self._frame(lo), self._frame(hi)

    def prob_positive(self) -> pd.DataFrame:
        """Posterior probability that each entry is > 0."""
        return self._frame((self.draws > 0).mean(0))

    def to_frame(self, prob: float = 0.9, extra: bool = False) -> pd.DataFrame:
        """Long format, one row per pair a < b: task_a, task_b, mean, q05, q95 (NaN for point
        estimates); with ``extra`` also p_positive."""
        T = len(self.names)
        a, b = np.triu_indices(T, k=1)
        m = self.draws.mean(0)
        lo_name, hi_name = f"q{round(100 * (1 - prob) / 2):02d}", f"q{round(100 * (1 + prob) / 2):02d}"
        if self.point_estimate:
            lo = hi = np.full((T, T), np.nan)
        else:
            lo, hi = np.quantile(self.draws, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
        out = pd.DataFrame({"task_a": np.asarray(self.names, dtype=object)[a],
                            "task_b": np.asarray(self.names, dtype=object)[b],
                            "mean": m[a, b], lo_name: lo[a, b], hi_name: hi[a, b]})
        if extra:
            out["p_positive"] = (self.draws > 0).mean(0)[a, b]
        return out

    def order(self) -> list[int]:
        """Task order that puts related tasks together (average-linkage clustering of 1 - mean)."""
        from scipy.cluster.hierarchy import leaves_list, linkage
        from scipy.spatial.distance import squareform

        m = self.draws.mean(0)
        if len(self.names) < 3:
            return list(range(len(self.names)))
        d = np.clip(m.max() - (m + m.T) / 2, 0, None)
        np.fill_diagonal(d, 0)
        return list(leaves_list(linkage(squareform(d, checks=False), method="average")))

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Heatmap ordered so related tasks sit together; saved as PNG when ``path`` is given."""
        from .plots import heatmap

        return heatmap(self, path=path, title=title)
