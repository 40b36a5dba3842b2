"""The command line as a user runs it: fit -> summary -> predict, and one-line errors."""

import subprocess
import sys

import pandas as pd
import pytest

from bayesmtl.cli import main
from bayesmtl.synthetic import hierarchical_regression

SVI = ["--method", "svi", "--draws", "100", "--option", "steps=400", "--option", "min_steps=400", "--quiet"]


@pytest.fixture
def csv(tmp_path):
    df, _ = hierarchical_regression(n_tasks=5, rows=12, features=2, seed=0)
    p = tmp_path / "train.csv"
    df.to_csv(p, index=False)
    return p, df


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_summary_predict(csv, tmp_path, capsys):
    path, df = csv
    run = tmp_path / "runs" / "demo"
    assert main(["fit", "--model", "hierarchical", "--data", str(path), "--task", "task", "--target", "y",
                 "--features", "x1,x2", "--out", str(run), *SVI]) == 0
    assert {p.name for p in run.iterdir()} >= {"posterior.nc", "summary.csv", "relations.csv", "run.json"}
    assert main(["summary", str(run)]) == 0
    assert "w[task_03, x1]" in capsys.readouterr().out
    new = df.head(6).assign(task=["task_00"] * 3 + ["brand_new"] * 3).drop(columns="y")
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 6 and list(pred.columns[:6]) == ["task", "new_task", "mean", "sd", "q05", "q95"]
    assert pred["new_task"].tolist() == [False] * 3 + [True] * 3


@pytest.mark.parametrize("args,message", [
    (["--target", "score"], "target column 'score' not found"),
    (["--target", "y", "--features", "x1,colour"], "feature column 'colour' not found"),
    (["--target", "y", "--likelihood", "bernoulli"], "0/1 for a Bernoulli likelihood"),
    (["--target", "y", "--chains", "0", "--method", "nuts"], "chains must be an integer >= 1"),
    (["--target", "y", "--model", "kmeans"], "unknown model 'kmeans'"),
])
def test_bad_input_exits_nonzero_with_one_line_and_writes_nothing(csv, tmp_path, capsys, args, message):
    path, _ = csv
    out = tmp_path / "run"
    code = main(["fit", "--data", str(path), "--task", "task", "--out", str(out), *args, *SVI])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and err.startswith("bayesmtl: error:")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def test_console_script_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "bayesmtl.cli", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "demo" in res.stdout


def test_fit_with_chees_in_two_processes_writes_a_run(csv, tmp_path):
    """``--method chees --option processes=2``: two chain groups, each learning its own trajectory."""
    import json

    path, _ = csv
    run = tmp_path / "chees"
    assert main(["fit", "--model", "hierarchical", "--data", str(path), "--task", "task", "--target", "y",
                 "--out", str(run), "--method", "chees", "--chains", "4", "--warmup", "100", "--draws", "50",
                 "--option", "processes=2", "--quiet"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "chees" and info["chain_groups"] == [2, 2] and len(info["trajectory_length"]) == 2
    assert info["path"] == "collapsed"
