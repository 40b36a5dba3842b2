"""bayesmtl.compare: PSIS-LOO across runs picks the model that predicts better, and refuses
comparisons that mean nothing (different data, point estimates, GP rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bayesmtl as bm
from bayesmtl.cli import main
from bayesmtl.compare import pointwise_log_likelihood
from bayesmtl.synthetic import hierarchical_regression

FIT = dict(method="svi", steps=1500, min_steps=500, draws=400, progress=False)


@pytest.fixture(scope="module")
def two_runs():
    """Tasks that differ a lot (tau 0.8 on every coefficient, noise 0.5): partial pooling must
    beat complete pooling by far more than the noise of the estimate."""
    df, _ = hierarchical_regression(n_tasks=10, rows=25, seed=3)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    runs = {name: bm.fit(model, data, seed=0, **FIT)
            for name, model in (("hierarchical", bm.models.Hierarchical()), ("pooled", bm.models.Pooled()))}
    return df, data, runs


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
def test_compare_ranks_partial_pooling_above_complete_pooling_on_varying_tasks(two_runs):
    _, data, runs = two_runs
    for by, n in (("row", data.n_rows), ("task", data.n_tasks)):
        table = bm.compare(runs, by=by)
        assert list(table.index) == ["hierarchical", "pooled"], table
        assert table.loc["pooled", "elpd_diff"] > 2 * table.loc["pooled", "dse"], table
        assert table.attrs["n"] == n and table.attrs["by"] == by
        assert table.loc["hierarchical", "weight"] > 0.5
        # elpd_loo is the sum of the pointwise terms: never above the in-sample log density
        ll = pointwise_log_likelihood(runs["hierarchical"], by)
        in_sample = np.log(np.exp(ll.reshape(-1, n)).mean(0)).sum()
        assert table.loc["hierarchical", "elpd_loo"] <= in_sample + 1e-6


def test_leave_one_task_out_sums_each_tasks_rows(two_runs):
    _, data, runs = two_runs
    rows = pointwise_log_likelihood(runs["pooled"], "row")
    tasks = pointwise_log_likelihood(runs["pooled"], "task")
    assert tasks.shape[-1] == data.n_tasks
    t = data.task.numpy()
    assert np.allclose(tasks[..., 3], rows[..., t == 3].sum(-1))


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
def test_compare_refuses_what_it_cannot_compare(two_runs):
    df, data, runs = two_runs
    other = bm.MultiTaskData.from_frame(df.iloc[:-1], task="task", target="y")
    shifted = bm.fit(bm.models.Pooled(), other, seed=0, **FIT)
    with pytest.raises(ValueError, match="fitted to different data"):
        bm.compare({"h": runs["hierarchical"], "other": shifted})
    point = bm.fit(bm.models.Pooled(), data, method="map", steps=300, min_steps=100, seed=0, progress=False)
    with pytest.raises(ValueError, match="is a point estimate"):
        bm.compare({"h": runs["hierarchical"], "map": point})
    with pytest.raises(ValueError, match="at least two runs"):
        bm.compare([runs["hierarchical"]])
    with pytest.raises(ValueError, match="by must be"):
        bm.compare(runs, by="group")
    with pytest.raises(TypeError, match="Posterior or a run directory"):
        bm.compare([runs["hierarchical"], 3])


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
def test_a_gp_is_refused_with_the_reason():
    rng = np.random.default_rng(0)
    x = np.tile(np.linspace(0, 5, 20), 2)
    df = pd.DataFrame({"task": np.repeat(["a", "b"], 20), "x": x, "y": np.sin(x) + 0.1 * rng.normal(size=40)})
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    gp = bm.fit(bm.models.MultitaskGP(), data, method="svi", steps=200, min_steps=100, draws=50, seed=0,
                progress=False)
    pooled = bm.fit(bm.models.Pooled(), data, seed=0, **FIT)
    with pytest.raises(ValueError, match="rows are not independent"):
        bm.compare([gp, pooled])


@pytest.mark.filterwarnings("ignore::bayesmtl.DiagnosticWarning")
def test_cli_compare_prints_the_table_and_refuses_other_data(two_runs, tmp_path, capsys):
    df, _, runs = two_runs
    for name, post in runs.items():
        post.save(tmp_path / name)
    assert main(["compare", str(tmp_path / "hierarchical"), str(tmp_path / "pooled"), "--by", "task"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith(("hierarchical", "pooled"))]
    assert [ln.split()[0] for ln in lines] == ["hierarchical", "pooled"], out
    assert "leave one task out" in out and "elpd_loo" in out
    df.iloc[:-1].to_csv(tmp_path / "d.csv", index=False)
    assert main(["fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y", "--model", "pooled",
                 "--method", "svi", "--option", "steps=300", "--option", "min_steps=100", "--draws", "100",
                 "--out", str(tmp_path / "other"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "hierarchical"), str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fitted to different data" in err[0], err
    assert main(["compare", str(tmp_path / "hierarchical"), str(tmp_path / "nope")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
