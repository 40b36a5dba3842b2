"""SVI's early stopping on held-out rows (``validation=``, bayesmtl/infer/svi.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression


def _data():
    df, _ = hierarchical_regression(n_tasks=6, rows=40, features=2, seed=0)
    return bm.MultiTaskData.from_frame(df, task="task", target="y")


def test_validation_holds_rows_out_and_ends_at_the_best_window():
    """The fit sees only the rows not held out; it stops once the held-out score has not improved
    for ``patience`` windows, and the posterior it returns is the best window's: its draws score
    the held-out rows as the best recorded score did."""
    data = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bm.fit(bm.models.Hierarchical(), data, method="svi", collapse=False, steps=4000, window=100,
                      validation=0.25, patience=2, draws=400, seed=0, progress=False)
    v = post.info["validation"]
    assert post.data.n_rows + v["rows"] == data.n_rows and v["rows"] == 6 * 10
    assert v["best_step"] in [s for s, _ in v["trace"]]
    assert max(x for _, x in v["trace"]) == v["best_lpd"]
    if v["stopped_early"]:
        assert post.info["steps"] == v["trace"][-1][0] and len(v["trace"]) - 1 - [s for s, _ in v["trace"]].index(
            v["best_step"]) == 2
    train, held = data.split(0.25, seed=0, min_train=2)
    np.testing.assert_array_equal(post.data.y.numpy(), train.y.numpy())
    with torch.no_grad():
        ll = post.model.log_likelihood(held, post.flat()).double()
    lpd = float((torch.logsumexp(ll, 0) - math.log(ll.shape[0])).mean())
    assert abs(lpd - v["best_lpd"]) < 0.05, (lpd, v["best_lpd"])


def test_validation_settings_are_checked():
    data = _data()
    with pytest.raises(ValueError, match=r"validation must be a fraction of the rows in \(0, 0.5\]"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", validation=0.7)
    with pytest.raises(ValueError, match="unknown option.*'nuts'.*validation"):
        bm.fit(bm.models.Hierarchical(), data, method="nuts", validation=0.2)
    with pytest.raises(ValueError, match="patience must be"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", validation=0.2, patience=0)
