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
    (["--target", "y", "--model", ""], "--model is empty"),
    (["--target", "y", "--features", ""], "--features is empty"),
    (["--target", "y", "--noise", "y"], "'y' cannot be both the target and the noise column"),
    (["--target", "y", "--set-prior", "scale=Normal(0,1)"], "'scale' is a positive quantity"),
    (["--target", "y", "--set-prior", "scale=-1"], "'scale' is a positive quantity"),
    (["--target", "y", "--set-prior", "scale=nan"], "a fixed value must be a finite number"),
    (["--target", "y", "--set-prior", "scale=HalfNormal(1e400)"], "must be finite numbers"),
    (["--target", "y", "--set-prior", "scale=HalfNormal(1)", "--set-prior", "tau=HalfNormal(5)"],
     "'scale' is set twice"),
    (["--target", "y", "--option", "rank=2"], "rank applies to guide='lowrank' only"),
    (["--target", "y", "--option", "guide=lowrank", "--option", "rank=1000"], "rank 1000 exceeds the"),
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


# ---------------------------------------------------------------------- --prior FILE.py:Class
PRIORS_PY = '''
import pyro
import pyro.distributions as dist

import bayesmtl as bm


class StudentTPopulation(bm.priors.TaskPrior):
    """Tasks from a heavy-tailed population."""

    def __init__(self, df: float = 3.0):
        if df <= 0:
            raise ValueError(f"df must be positive; got {df}")
        self.df = df

    def sample(self, tasks):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([tasks.dims]).to_event(1))
        tau = pyro.sample("tau", dist.HalfNormal(1.0).expand([tasks.dims]).to_event(1))
        with tasks.plate:
            return pyro.sample("w", dist.StudentT(self.df, mu, tau).to_event(1))


class GroupedPopulation(bm.priors.TaskPrior):
    """Population -> one mean per group (a task-level column) -> tasks."""

    def __init__(self, group: str = "group"):
        self.group = group

    def sample(self, tasks):
        g = tasks.features[self.group]
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([tasks.dims]).to_event(1))
        tau_group = pyro.sample("tau_group", dist.HalfNormal(1.0).expand([tasks.dims]).to_event(1))
        tau = pyro.sample("tau", dist.HalfNormal(1.0).expand([tasks.dims]).to_event(1))
        with pyro.plate(self.group, len(tasks.levels[self.group])):
            m = pyro.sample("group_mean", dist.Normal(mu, tau_group).to_event(1))
        with tasks.plate:
            return pyro.sample("w", dist.Normal(m[..., g, :], tau).to_event(1))


class NotAPrior:
    pass
'''

# a short SVI: enough for a run directory, seconds per fit
FAST = ["--method", "svi", "--draws", "40", "--option", "steps=150", "--option", "min_steps=150",
        "--option", "anneal=0", "--option", "jit=false", "--quiet"]


def _write_priors(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_priors.py").write_text(PRIORS_PY)
    (folder / "broken.py").write_text("import bayesmtl\n\nraise RuntimeError('boom while importing')\n")
    return folder / "my_priors.py"


def _one_line_error(err: str, *names: str) -> None:
    err = err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and "error:" in err, err
    for name in names:
        assert name in err, (name, err)


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory):
    """A run fitted from a prior in a file, through the CLI in this process."""
    import warnings

    root = tmp_path_factory.mktemp("prior_run")
    priors = _write_priors(root / "user")
    df, _ = hierarchical_regression(n_tasks=5, rows=12, features=2, seed=0)
    df.to_csv(root / "train.csv", index=False)
    run = root / "runs" / "t"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fit", "--prior", f"{priors}:StudentTPopulation", "--prior-args", '{"df": 4}',
                     "--likelihood", "gaussian", "--data", str(root / "train.csv"), "--task", "task",
                     "--target", "y", "--features", "x1,x2", "--out", str(run), *FAST]) == 0
    new = df.head(6).assign(task=["task_00"] * 3 + ["brand_new"] * 3).drop(columns="y")
    new.to_csv(root / "new.csv", index=False)
    return root, priors, run, new


def test_fit_with_prior_from_file_records_its_source(prior_run):
    import hashlib
    import json

    _, priors, run, _ = prior_run
    info = json.loads((run / "run.json").read_text())
    src = info["prior_source"]
    assert src["file"] == str(priors.resolve()) and src["class"] == "StudentTPopulation"
    assert src["args"] == {"df": 4}
    assert src["sha256"] == hashlib.sha256(priors.read_bytes()).hexdigest()
    assert src["import_name"].startswith("bayesmtl_user_my_priors_")
    assert info["model"] == "MultiTaskModel"


def test_prior_run_predicts_and_summarises_in_a_fresh_process(prior_run):
    import bayesmtl as bm

    root, _, run, new = prior_run
    script = ("import sys; from bayesmtl.cli import main; "
              f"sys.exit(main(['predict', {str(run)!r}, '--data', {str(root / 'new.csv')!r}, '--out', "
              f"{str(root / 'p.csv')!r}, '--seed', '3', '--trust-code']) "
              f"or main(['summary', {str(run)!r}, '--trust-code']))")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "mu[x1]" in res.stdout and "w[task_03, x2]" in res.stdout
    fresh = pd.read_csv(root / "p.csv")
    here = bm.load(run).predict(new, seed=3)
    assert fresh["new_task"].tolist() == [False] * 3 + [True] * 3
    pd.testing.assert_frame_equal(fresh, here, check_exact=True)


def test_prior_run_whose_file_changed_or_went_away(prior_run, tmp_path, monkeypatch, capsys):
    """Loading re-imports the file: a changed file warns and loads; a missing file or a missing
    class is one clear line naming both. run.json's prior_source.file may point to a new place."""
    import json
    import shutil

    import bayesmtl as bm
    from bayesmtl.runs import PriorSourceError

    _, priors, run, _ = prior_run
    moved = tmp_path / "elsewhere" / "my_priors.py"
    moved.parent.mkdir()
    shutil.copy(priors, moved)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    monkeypatch.delitem(sys.modules, info["prior_source"]["import_name"])  # as in a fresh process

    info["prior_source"]["file"] = str(moved)  # the file was moved and the record updated
    (copy / "run.json").write_text(json.dumps(info))
    assert main(["summary", str(copy)]) == 2  # without --trust-code nothing is imported: one line says so
    _one_line_error(capsys.readouterr().err, "StudentTPopulation", "--trust-code")
    assert main(["summary", str(copy), "--trust-code"]) == 0
    monkeypatch.delitem(sys.modules, info["prior_source"]["import_name"])

    moved.write_text(PRIORS_PY + "\n# edited after the fit\n")
    assert main(["summary", str(copy), "--trust-code"]) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "changed since the run was fitted" in err and str(moved) in err
    monkeypatch.delitem(sys.modules, info["prior_source"]["import_name"])

    moved.write_text(PRIORS_PY.replace("class StudentTPopulation", "class Renamed"))
    assert main(["predict", str(copy), "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "p.csv"),
                 "--trust-code"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    _one_line_error(err, str(moved), "StudentTPopulation", "no longer defines")

    moved.unlink()
    assert main(["summary", str(copy), "--trust-code"]) == 2
    err = capsys.readouterr().err
    _one_line_error(err, str(moved), "StudentTPopulation", "no longer exists")
    with pytest.raises(PriorSourceError, match="no longer exists"):
        bm.load(copy, trust_code=True)
    assert not (tmp_path / "p.csv").exists()


def test_prior_with_task_features(tmp_path):
    """A three-level prior whose group is a task-level column, given by --task-features."""
    import json

    priors = _write_priors(tmp_path / "user")
    df, _ = hierarchical_regression(n_tasks=6, rows=10, features=2, seed=1)
    df["group"] = "g" + (df["task"].str[-1].astype(int) % 2).astype(str)
    df.to_csv(tmp_path / "train.csv", index=False)
    run = tmp_path / "grouped"
    assert main(["fit", "--prior", f"{priors}:GroupedPopulation", "--task-features", "group",
                 "--data", str(tmp_path / "train.csv"), "--task", "task", "--target", "y",
                 "--out", str(run), *FAST]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["prior_source"]["class"] == "GroupedPopulation" and info["prior_source"]["args"] == {}
    assert "x1" in info["data"] or "2 features" in info["data"]  # the task feature is no row feature
    summary = pd.read_csv(run / "summary.csv")["parameter"]
    assert summary.str.startswith("group_mean[g0").any() and summary.str.startswith("group_mean[g1").any()
    new = df[df["task"] == "task_01"].head(3).assign(task="fresh").drop(columns="y")
    new.to_csv(tmp_path / "new.csv", index=False)
    assert main(["predict", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv"),
                 "--trust-code"]) == 0
    assert pd.read_csv(tmp_path / "p.csv")["new_task"].all()


def test_prior_from_an_importable_module(csv, tmp_path, monkeypatch):
    """``--prior package.module:Class``: run.json records the module; loading imports it again."""
    import importlib
    import json

    import bayesmtl as bm
    from bayesmtl.runs import PriorSourceError

    path, _ = csv
    pkg = tmp_path / "lib" / "userpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "priors.py").write_text(PRIORS_PY)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    run = tmp_path / "run"
    assert main(["fit", "--prior", "userpkg.priors:StudentTPopulation", "--data", str(path), "--task", "task",
                 "--target", "y", "--out", str(run), *FAST]) == 0
    src = json.loads((run / "run.json").read_text())["prior_source"]
    assert src["module"] == "userpkg.priors" and "file" not in src and src["class"] == "StudentTPopulation"
    for name in ("userpkg", "userpkg.priors"):  # as in a fresh process
        monkeypatch.delitem(sys.modules, name)
    assert bm.load(run, trust_code=True).model.prior.df == 3.0
    for name in ("userpkg", "userpkg.priors"):
        monkeypatch.delitem(sys.modules, name)
    pkg.rename(tmp_path / "lib" / "gone")
    importlib.invalidate_caches()
    with pytest.raises(PriorSourceError, match="module userpkg.priors, which cannot be imported"):
        bm.load(run, trust_code=True)


@pytest.mark.parametrize("spec,extra,names", [
    ("{d}/nope.py:StudentTPopulation", [], ["nope.py", "does not exist"]),
    ("{d}/../train.csv:StudentTPopulation", [], ["train.csv", "not a .py file"]),
    ("{d}/my_priors.py:StudentT", [], ["'StudentT'", "my_priors.py", "GroupedPopulation, StudentTPopulation"]),
    ("{d}/my_priors.py:NotAPrior", [], ["NotAPrior", "my_priors.py", "not a subclass of bayesmtl.priors.TaskPrior"]),
    ("{d}/my_priors.py:pyro", [], ["pyro", "not a subclass"]),
    ("{d}/broken.py:Anything", [], ["broken.py", "RuntimeError: boom while importing"]),
    ("{d}/my_priors.py:StudentTPopulation", ["--prior-args", '{"dof": 4}'], ["StudentTPopulation", "dof"]),
    ("{d}/my_priors.py:StudentTPopulation", ["--prior-args", '{"df": -1}'],
     ["StudentTPopulation", "ValueError: df must be positive"]),
    ("{d}/my_priors.py:StudentTPopulation", ["--prior-args", "{df: 4}"], ["--prior-args", "not valid JSON"]),
    ("{d}/my_priors.py:StudentTPopulation", ["--prior-args", "[4]"], ["--prior-args", "JSON object"]),
    ("{d}/my_priors.py", [], ["--prior", "FILE.py:ClassName"]),
    ("no_such_package.priors:Prior", [], ["no_such_package", "no module"]),
    ("{d}/my_priors.py:GroupedPopulation", [], ["task feature", "'group'"]),  # no --task-features group
])
def test_bad_prior_exits_nonzero_with_one_line(csv, tmp_path, capsys, spec, extra, names):
    path, _ = csv
    folder = tmp_path / "user"
    _write_priors(folder)
    out = tmp_path / "run"
    code = main(["fit", "--prior", spec.format(d=folder), *extra, "--data", str(path), "--task", "task",
                 "--target", "y", "--out", str(out), *FAST])
    assert code == 2
    _one_line_error(capsys.readouterr().err, *names)
    assert not out.exists()


@pytest.mark.parametrize("args,names", [
    (["--model", "pooled", "--prior", "p.py:P"], ["--prior", "--model", "not allowed"]),
    (["--prior-args", '{"df": 4}'], ["--prior-args needs --prior"]),
])
def test_prior_option_misuse_is_one_line(csv, tmp_path, capsys, args, names):
    path, _ = csv
    try:
        code = main(["fit", *args, "--data", str(path), "--task", "task", "--target", "y",
                     "--out", str(tmp_path / "run"), *FAST])
    except SystemExit as e:  # argparse's own check
        code = e.code
    assert code == 2
    _one_line_error(capsys.readouterr().err, *names)


def test_a_bug_prints_its_trace_and_asks_for_a_report(tmp_path, capsys, monkeypatch):
    import bayesmtl as bm

    df, _ = hierarchical_regression(n_tasks=3, rows=5, features=1, seed=0)
    df.to_csv(tmp_path / "d.csv", index=False)
    monkeypatch.setattr(bm, "fit", lambda *a, **k: {}["no such key"])  # a KeyError: not an input problem
    assert main(["fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "internal error (a bug in bayesmtl" in err and not (tmp_path / "r").exists()


def test_a_blown_up_fit_is_one_line(tmp_path, capsys, monkeypatch):
    import bayesmtl as bm

    df, _ = hierarchical_regression(n_tasks=3, rows=5, features=1, seed=0)
    df.to_csv(tmp_path / "d.csv", index=False)

    def blow_up(*a, **k):
        raise FloatingPointError("the ELBO became nan at step 12; try a smaller lr (now 0.01) or scale the data")

    monkeypatch.setattr(bm, "fit", blow_up)
    assert main(["fit", "--data", str(tmp_path / "d.csv"), "--task", "task", "--target", "y",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    _one_line_error(capsys.readouterr().err, "ELBO became nan")


@pytest.mark.parametrize("command,flag,value", [
    ("fit", "--seed", "-1"), ("fit", "--seed", str(2**64)), ("fit", "--checkpoint-every", "nan"),
    ("fit", "--checkpoint-every", "-5"), ("predict", "--seed", "-1"), ("summary", "--prob", "1.5"),
    ("summary", "--prob", "0"), ("summary", "--prob", "nan"), ("summary", "--max-rows", "-1"),
    ("demo", "--seed", "-1"), ("demo", "--checkpoint-every", "-5"),
])
def test_a_setting_out_of_range_is_refused_by_the_parser_naming_it(tmp_path, capsys, command, flag, value):
    args = {"fit": ["--data", "d.csv", "--task", "t", "--target", "y", "--out", str(tmp_path / "r")],
            "predict": ["run", "--data", "d.csv", "--out", "p.csv"], "summary": ["run"], "demo": []}[command]
    with pytest.raises(SystemExit) as e:
        main([command, *args, flag, value])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and flag in err and "error" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_predict_refuses_to_write_over_its_input_or_into_a_folder(csv, tmp_path, capsys):
    path, df = csv
    run = tmp_path / "run"
    assert main(["fit", "--data", str(path), "--task", "task", "--target", "y", "--out", str(run), *SVI]) == 0
    new = tmp_path / "new.csv"
    df.drop(columns="y").head(4).to_csv(new, index=False)
    before = new.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(new), "--out", str(new)]) == 2
    assert "is the input --data file" in capsys.readouterr().err and new.read_bytes() == before
    assert main(["predict", str(run), "--data", str(new), "--out", str(run)]) == 2
    assert "is a folder, not a CSV file" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text(",".join(df.drop(columns="y").columns) + "\n")
    assert main(["predict", str(run), "--data", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "p.csv")]) == 2
    assert "has a header but no rows" in capsys.readouterr().err and not (tmp_path / "p.csv").exists()
