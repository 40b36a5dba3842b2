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


def test_split_tasks_holds_whole_tasks_out_as_new_tasks():
    df, _ = hierarchical_regression(n_tasks=10, rows=8, features=2, seed=1)
    codes = {t: f"r{i % 3}" for i, t in enumerate(dict.fromkeys(df["task"]))}
    df["region"] = df["task"].map(codes)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y", features=["x1", "x2"], task_features=["region"])
    train, held = data.split_tasks(0.3, seed=4)
    out = sorted(set(held.task_names[held.n_known_tasks:]))
    assert len(out) == 3 and train.n_tasks == 7 and train.n_known_tasks == 7
    assert not set(out) & set(train.task_names) and held.task_names[:7] == train.task_names
    assert (held.task >= 7).all() and train.n_rows + held.n_rows == data.n_rows
    names = np.asarray(held.task_names, dtype=object)[held.task.numpy()]
    frame = data.to_frame()
    np.testing.assert_allclose(held.y.numpy(), frame.loc[frame["task"].isin(out), "y"].to_numpy())
    assert list(held.to_frame()["task"]) == list(names)
    assert held.to_frame()["region"].tolist() == frame.loc[frame["task"].isin(out), "region"].tolist()
    assert train.to_frame()["region"].tolist() == frame.loc[~frame["task"].isin(out), "region"].tolist()
    two = bm.MultiTaskData.from_frame(df[df["task"].isin(data.task_names[:2])], task="task", target="y",
                                     features=["x1", "x2"])
    with pytest.raises(ValueError, match="holding tasks out needs at least 3 tasks; the data have 2"):
        two.split_tasks(0.5)


def test_validate_by_tasks_stops_on_new_tasks_then_fits_every_task():
    """Held-out tasks are scored as new tasks, whose rows a population draw predicts less well than
    a known task's own parameters predict its held-out rows; the returned fit is of every row, for
    the best window's number of steps, and says nothing about convergence it did not seek."""
    df, _ = hierarchical_regression(n_tasks=12, rows=30, features=2, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="svi", collapse=False, steps=1500, window=100, validation=0.25, patience=2, draws=200,
              seed=0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = bm.fit(bm.models.Hierarchical(), data, validate_by="tasks", **kw)
    assert not [w for w in caught if "did not converge" in str(w.message)]
    v = post.info["validation"]
    assert v["by"] == "tasks" and v["rows"] == 3 * 30 and post.info["steps"] == v["refit_steps"] == v["best_step"]
    assert post.task_names == data.task_names and post.data.n_rows == data.n_rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = bm.fit(bm.models.Hierarchical(), data, **kw).info["validation"]
    assert np.isfinite(v["best_lpd"]) and v["best_lpd"] < rows["best_lpd"] - 0.2, (v["best_lpd"], rows["best_lpd"])


def test_refit_after_early_stopping_on_rows_fits_every_row():
    """``refit=True``: early stopping on held-out rows picks the number of steps, then the fit
    runs again on every row for that many; the steps are the one-fit run's best window."""
    df, _ = hierarchical_regression(n_tasks=6, rows=30, features=2, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="svi", collapse=False, steps=1500, window=100, validation=0.2, patience=2, draws=100,
              seed=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        once = bm.fit(bm.models.Hierarchical(), data, **kw)
        twice = bm.fit(bm.models.Hierarchical(), data, refit=True, **kw)
    v = twice.info["validation"]
    assert once.data.n_rows == data.n_rows - v["rows"] and twice.data.n_rows == data.n_rows
    assert v["by"] == "rows" and twice.info["steps"] == v["refit_steps"] == v["best_step"]
    assert v["best_step"] == once.info["validation"]["best_step"]
    with pytest.raises(ValueError, match="refit must be"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", validation=0.2, refit="yes")
    with pytest.raises(ValueError, match="clip must be"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", clip=0)
    with pytest.raises(ValueError, match="compile='inductor' cannot run with clip="):
        bm.fit(bm.models.Hierarchical(), data, method="svi", clip=5.0, compile="inductor")


def test_refit_under_a_checkpoint_resumes_at_the_refit(tmp_path):
    """Checkpointed, the held-out fit runs in <checkpoint>/select and records the steps it found;
    the fit is the one without a checkpoint, and a resume after the held-out fit reads the
    record instead of fitting again (a record of another fit is refused)."""
    df, _ = hierarchical_regression(n_tasks=6, rows=30, features=2, seed=0)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    kw = dict(method="svi", collapse=False, steps=600, window=100, validation=0.2, patience=2, draws=50,
              progress=False, refit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = bm.fit(bm.models.Hierarchical(), data, seed=0, **kw)
        kept = bm.fit(bm.models.Hierarchical(), data, seed=0, checkpoint=tmp_path / "ck", **kw)
        record = tmp_path / "ck" / "select" / "found.json"
        assert record.exists() and kept.info["validation"]["best_step"] == plain.info["validation"]["best_step"]
        np.testing.assert_allclose(np.asarray(kept.samples["mu"]), np.asarray(plain.samples["mu"]))
        for f in (tmp_path / "ck").glob("*.npz"):  # killed before the refit saved anything
            f.unlink()
        (tmp_path / "ck" / "select" / "svi.npz").touch()  # a resume needs a checkpoint file to find
        again = bm.fit(bm.models.Hierarchical(), data, seed=0, resume=tmp_path / "ck", **kw)
        np.testing.assert_allclose(np.asarray(again.samples["mu"]), np.asarray(plain.samples["mu"]))
        with pytest.raises(ValueError, match="found.json.*different fit"):
            bm.fit(bm.models.Hierarchical(), data, seed=1, resume=tmp_path / "ck", **kw)


def test_validate_by_tasks_is_checked():
    data = _data()
    with pytest.raises(ValueError, match="validate_by must be one of 'rows' or 'tasks'; got 'cols'"):
        bm.fit(bm.models.Hierarchical(), data, method="svi", validation=0.2, validate_by="cols")
    with pytest.raises(ValueError, match="validate_by='tasks'.*MultitaskGP"):
        bm.fit(bm.models.MultitaskGP(), data, method="map", validation=0.2, validate_by="tasks")
