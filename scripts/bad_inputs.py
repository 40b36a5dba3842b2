"""A sweep of bad inputs through the ``bayesmtl`` command line and Python API, each case classified.

Every case gets its own fresh temporary folder (its working directory), is set up there (a CSV,
a copy of a valid run that is then damaged, a prior file, a read-only folder, a lock file, ...),
run with a time limit, and classified:

- CLEAN: CLI exit status 2 and stderr exactly one line ``bayesmtl: error: ...`` (argparse's
  ``bayesmtl fit: error: ...`` counts) containing the case's expected substrings; API: a
  ValueError, TypeError, FileNotFoundError, PermissionError or FileExistsError (never a KeyError)
  whose message contains them. A few cases whose input is odd but valid (a UTF-8 BOM, a gzipped
  CSV, ...) are also CLEAN when they succeed, and a few where a warning is a fair answer (one row
  per task, a constant target, ...) are CLEAN when a warning names the culprit.
- TRACEBACK: a Python traceback or exit status 1 (CLI), any other exception type (API), a crash.
- SILENT: exit status 0 / no exception although the input is wrong (warnings, if any, are shown).
- VAGUE: a clean error, but without the expected substring (or with other lines on stderr).
- HANG: no answer within the time limit (``--timeout``, 120 s); the process group is killed.
- DEBRIS: a clean error that left files behind (temporary ``.NAME.*`` folders, lock files, half
  written runs, parent folders) or deleted or changed a file that was there before (the case's
  folder is snapshotted before and after).

The expected substrings name the culprit: the file, column, task, setting or option at fault
("a|b" means either). CLI cases run ``python -m bayesmtl.cli ...`` in a subprocess; API cases run
in a forked child of this process (bayesmtl imported once), one at a time. Run as root, every
case drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH first so file permissions apply as they do
to an ordinary user (the unreadable-file and read-only-folder cases need that).

A valid run to damage is fitted once per sweep (3 tasks x 8 rows, SVI with 200 steps, through the
CLI), and a second, different one (4 tasks, 1 feature) for swapping files between runs; an SVI
checkpoint for the resume cases comes from a short ``bm.fit(..., checkpoint=...)``.

Run from the repository root (the table goes to stdout, progress to stderr)::

    .venv/bin/python scripts/bad_inputs.py --out /tmp/bad_inputs.json > /tmp/bad_inputs.md
    .venv/bin/python scripts/bad_inputs.py --only csv-          # cases whose id or class contains "csv-"
    .venv/bin/python scripts/bad_inputs.py --list               # the cases, without running them
    .venv/bin/python scripts/bad_inputs.py --seed 3 --timeout 60 --keep   # other data; keep the folders

A full sweep takes 15-25 minutes on two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OUTCOMES = ("CLEAN", "TRACEBACK", "SILENT", "VAGUE", "HANG", "DEBRIS")
ALLOWED = (ValueError, TypeError, FileNotFoundError, PermissionError, FileExistsError)
ERROR_LINE = re.compile(r"^bayesmtl(?: [a-z]+)?: error: ")
TASKS = ("north", "south", "east")
RUN = ("'run|/run",)  # the path as the messages quote it (not the word "run")
SET_SCALE = ("--set-prior|'scale'|scale=",)  # not the word "scale" of "scale the data"
ONE_ROW = ("one row|1 row|single row|a row each",)  # not just "row": "narrow" has it

# a short SVI through the CLI: a run directory in a few seconds when a bad input is accepted
FAST = ["--method", "svi", "--draws", "20", "--option", "steps=200", "--option", "min_steps=100",
        "--option", "anneal=0", "--option", "jit=false", "--quiet"]
FIT = ["fit", "--data", "data.csv", "--task", "school", "--target", "score", "--out", "run"]
NUTS = ["--method", "nuts", "--chains", "1", "--warmup", "30", "--draws", "20", "--quiet", "--option", "compile=none"]
DEMO = ["demo", "--method", "svi", "--draws", "20", "--option", "steps=200", "--option", "min_steps=100",
        "--option", "anneal=0", "--option", "jit=false", "--quiet"]
PREDICT = ["predict", "run", "--data", "new.csv", "--out", "pred.csv"]
FAST_API = dict(method="svi", draws=20, steps=200, min_steps=100, anneal=0, jit=False, progress=False)
NUTS_API = dict(method="nuts", chains=1, warmup=30, draws=20, compile=None, progress=False)


# ---------------------------------------------------------------------- data
def frame(seed: int, kind: str = "gaussian", rows: int = 8, tasks=TASKS, known_sd: bool = False,
          attempts: bool = False) -> pd.DataFrame:
    """Long data: school (task), x1, x2, score (target); ``known_sd`` and ``attempts`` on request."""
    rng = np.random.default_rng(seed)
    n = rows * len(tasks)
    x1, x2 = rng.normal(size=n).round(3), rng.normal(size=n).round(3)
    eta = np.repeat(rng.normal(0, 3, len(tasks)), rows) + 2 * x1 - x2
    trials = rng.integers(4, 10, n)
    score = {"gaussian": lambda: (50 + eta + rng.normal(size=n)).round(3),
             "counts": lambda: rng.poisson(3, n),
             "binary": lambda: rng.integers(0, 2, n),
             "binomial": lambda: rng.binomial(trials, 0.4),
             "proportion": lambda: rng.uniform(0.05, 0.95, n).round(3),
             "positive": lambda: (rng.gamma(2.0, 1.0, n) + 0.01).round(3),
             "ordinal": lambda: rng.integers(0, 3, n)}[kind]()
    df = pd.DataFrame({"school": np.repeat(list(tasks), rows), "x1": x1, "x2": x2, "score": score})
    if known_sd:
        df["known_sd"] = rng.uniform(0.5, 2.0, n).round(3)
    if attempts:
        df["attempts"] = trials
    return df


def put(df: pd.DataFrame, col: str, value, task: str = "south", nth: int = 1) -> pd.DataFrame:
    """``df`` with ``value`` in column ``col`` of the ``nth`` row of ``task``."""
    df = df.copy()
    if col not in df.columns:
        df[col] = 0.0
    idx = df.index[df["school"] == task][nth]
    if (isinstance(value, str) or value is None) and df[col].dtype != object:
        df[col] = df[col].astype(object)
    elif isinstance(value, float) and df[col].dtype.kind in "iu":
        df[col] = df[col].astype(float)
    df.loc[idx, col] = value
    return df


def cell(col: str, value, task: str = "south", kind: str = "gaussian", **kw) -> Callable[[int], pd.DataFrame]:
    return lambda seed: put(frame(seed, kind, **kw), col, value, task)


def newframe(seed: int) -> pd.DataFrame:
    """Rows to predict: two of each training task, no target."""
    return frame(seed).groupby("school", sort=False).head(2).drop(columns="score").reset_index(drop=True)


def new_cell(col: str, value, task: str = "south") -> Callable[[int], pd.DataFrame]:
    return lambda seed: put(newframe(seed), col, value, task, nth=0)


def csv_text(seed: int) -> str:
    return frame(seed).to_csv(index=False)


def edit_lines(fn: Callable[[list[str]], list[str]], source=csv_text) -> Callable[[int], str]:
    return lambda seed: "\n".join(fn(source(seed).splitlines())) + "\n"


def garbage(seed: int, n: int = 4096) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def write_data(d: Path, seed: int, data, name: str = "data.csv") -> None:
    """``data``: a DataFrame, text or bytes, or a function of the seed giving one."""
    if callable(data):
        data = data(seed)
    if isinstance(data, pd.DataFrame):
        data.to_csv(d / name, index=False)
    elif isinstance(data, bytes):
        (d / name).write_bytes(data)
    else:
        (d / name).write_text(data)


PRIORS_PY = '''
import pyro
import pyro.distributions as dist

import bayesmtl as bm


class StudentTPopulation(bm.priors.TaskPrior):
    def __init__(self, df: float = 3.0):
        if df <= 0:
            raise ValueError(f"df must be positive; got {df}")
        self.df = df

    def sample(self, tasks):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0).expand([tasks.dims]).to_event(1))
        tau = pyro.sample("tau", dist.HalfNormal(1.0).expand([tasks.dims]).to_event(1))
        with tasks.plate:
            return pyro.sample("w", dist.StudentT(self.df, mu, tau).to_event(1))


class Exploding(bm.priors.TaskPrior):
    def sample(self, tasks):
        return {}["population"]


class WrongShape(bm.priors.TaskPrior):
    def sample(self, tasks):
        return pyro.sample("w", dist.Normal(0.0, 1.0).expand([2, 7]).to_event(2))


class NoSample(bm.priors.TaskPrior):
    pass


class NotAPrior:
    pass
'''


def write_priors(d: Path, seed: int = 0) -> None:
    user = d / "user"
    user.mkdir(exist_ok=True)
    (user / "my_priors.py").write_text(PRIORS_PY)
    (user / "broken.py").write_text("raise RuntimeError('boom while importing')\n")
    (user / "syntax.py").write_text("def broken(:\n    pass\n")
    (user / "exits.py").write_text("import sys\n\nsys.exit(0)\n")


# ---------------------------------------------------------------------- fixtures: valid runs to damage
class FixtureError(RuntimeError):
    """A valid fit needed by later cases failed: the sweep cannot go on."""


class Fixtures:
    """Valid runs and a checkpoint, built on first use (in this process, before any fork)."""

    def __init__(self, root: Path, seed: int, timeout: float):
        self.root, self.seed, self.timeout = root, seed, timeout
        self.paths: dict[str, Path] = {}
        self.sweep_pid = os.getpid()

    def path(self, name: str) -> Path:
        if name not in self.paths:
            t0 = time.perf_counter()
            self.paths[name] = getattr(self, f"_build_{name}")()
            print(f"  (fixture {name}: {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        return self.paths[name]

    def _cli_run(self, name: str, df: pd.DataFrame, *extra: str) -> Path:
        folder = self.root / name
        folder.mkdir()
        df.to_csv(folder / "data.csv", index=False)
        rc, out, err, timed = run_cli([*FIT, *FAST, "--seed", str(self.seed), *extra], folder, self.timeout)
        if rc != 0:
            raise FixtureError(f"fixture {name}: the valid fit failed (exit {rc}):\n{err[-3000:]}")
        return folder / "run"

    def _build_a(self) -> Path:
        return self._cli_run("fixture_a", frame(self.seed))

    def _build_b(self) -> Path:
        df = frame(self.seed + 1, rows=6, tasks=("w1", "w2", "w3", "w4"))
        return self._cli_run("fixture_b", df, "--features", "x1")

    def _build_ckpt(self) -> Path:
        folder = self.root / "fixture_ckpt"
        folder.mkdir()
        ck = folder / "ck"

        def fit(d, fx):
            bm = _bm()
            data = bm.MultiTaskData.from_frame(frame(fx.seed), task="school", target="score")
            bm.fit(bm.models.Hierarchical(), data, **FAST_API, seed=7, checkpoint=str(ck), checkpoint_every=0.01)

        res = run_api(fit, folder, self, self.timeout, self.root)
        if res.get("raised") or not (ck / "svi.npz").is_file():
            raise FixtureError(f"fixture ckpt: the checkpointed fit failed: {res}")
        return ck


# ---------------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    klass: str
    iface: str  # "CLI" or "API"
    what: str
    expect: tuple[str, ...]
    setup: Callable[[Path, Fixtures], None] | None = None
    argv: list[str] | Callable[[Path, Fixtures], list[str]] | None = None
    call: Callable[[Path, Fixtures], Any] | None = None
    needs: tuple[str, ...] = ()
    tolerate: bool = False  # the input is odd but valid: succeeding is right too
    warn_ok: bool = False  # a warning naming the culprit is a fair answer


def _bm():
    import bayesmtl

    return bayesmtl


def chain(*setups):
    def setup(d, fx):
        for s in setups:
            if s is not None:
                s(d, fx)
    return setup


def data_setup(data=frame, name: str = "data.csv"):
    return lambda d, fx: write_data(d, fx.seed, data, name)


def chmod(rel: str, mode: int):
    return lambda d, fx: os.chmod(d / rel, mode)


def mkdir(rel: str, mode: int | None = None, files: dict[str, str] | None = None):
    def setup(d, fx):
        (d / rel).mkdir(parents=True, exist_ok=True)
        for name, text in (files or {}).items():
            (d / rel / name).parent.mkdir(parents=True, exist_ok=True)
            (d / rel / name).write_text(text)
        if mode is not None:
            os.chmod(d / rel, mode)
    return setup


def text_file(rel: str, text: str):
    return lambda d, fx: (d / rel).write_text(text)


def lock(rel: str = ".run.lock"):
    return lambda d, fx: (d / rel).write_text(str(fx.sweep_pid))


def copy_run(src: str = "a", name: str = "run", mutate=None):
    def setup(d, fx):
        shutil.copytree(fx.path(src), d / name)
        if mutate is not None:
            mutate(d / name, fx)
    return setup


def m_truncate(f: str):
    def mutate(run, fx):
        b = (run / f).read_bytes()
        (run / f).write_bytes(b[: len(b) // 2])
    return mutate


def m_bytes(f: str, content=garbage):
    return lambda run, fx: (run / f).write_bytes(content(fx.seed) if callable(content) else content)


def m_json(f: str, edit):
    def mutate(run, fx):
        j = json.loads((run / f).read_text())
        edit(j)
        (run / f).write_text(json.dumps(j))
    return mutate


def m_remove(*names: str):
    def mutate(run, fx):
        for f in names:
            (run / f).unlink()
    return mutate


def m_chmod(f: str | None, mode: int):
    return lambda run, fx: os.chmod(run / f if f else run, mode)


def m_from(src: str, *names: str):
    def mutate(run, fx):
        for f in names:
            shutil.copy(fx.path(src) / f, run / f)
    return mutate


def m_version(v):
    return m_json("run.json", lambda j: j.update(format_version=v))


def ckpt_setup(argv=None, npz=None, cwd: str | None = None, command: str | None = None):
    """The folder an interrupted CLI fit leaves beside ``run``: command.json and (``npz``) a
    checkpoint: "garbage" bytes or "fixture", the one of another fit."""
    def setup(d, fx):
        write_data(d, fx.seed, frame)
        ck = d / ".run.checkpoint"
        ck.mkdir()
        text = command if command is not None else json.dumps(
            {"argv": argv if argv is not None else [*FIT, *FAST], "cwd": cwd if cwd is not None else str(d)})
        (ck / "command.json").write_text(text)
        if npz == "garbage":
            (ck / "svi.npz").write_bytes(garbage(fx.seed))
        elif npz == "fixture":
            shutil.copy(fx.path("ckpt") / "svi.npz", ck / "svi.npz")
    return setup


def api_data(df: pd.DataFrame, **kw):
    return _bm().MultiTaskData.from_frame(df, task="school", target="score", **kw)


def api_fit(df=frame, model=None, data_kw=None, opts=None, **kw):
    """``bm.fit(model, MultiTaskData.from_frame(df(seed)), **FAST_API | kw)``."""
    def call(d, fx):
        bm = _bm()
        data = api_data(df(fx.seed), **(data_kw or {}))
        m = bm.models.Hierarchical() if model is None else model(bm)
        bm.fit(m, data, **{**(FAST_API if opts is None else opts), **kw})
    return call


def api_resume(folder: str = "ck", df=frame, opts=None, **kw):
    """``bm.fit(..., resume=folder)`` with the settings of the fixture checkpoint unless changed."""
    def call(d, fx):
        bm = _bm()
        options = {**(FAST_API if opts is None else opts), "seed": 7, **kw}
        bm.fit(bm.models.Hierarchical(), api_data(df(fx.seed)), **options, resume=d / folder)
    return call


def copy_ckpt(name: str = "ck"):
    def setup(d, fx):
        (d / name).mkdir()
        shutil.copy(fx.path("ckpt") / "svi.npz", d / name / "svi.npz")
    return setup


def npz_setup(name: str = "ck", header=None, arrays=None):
    def setup(d, fx):
        (d / name).mkdir()
        kw = dict(arrays or {})
        if header is not None:
            kw["__header__"] = np.array(json.dumps(header))
        np.savez(d / name / "svi.npz", **kw)
    return setup


def api_predict(new=newframe, **kw):
    def call(d, fx):
        post = _bm().load(d / "run")
        post.predict(new(fx.seed) if callable(new) else new, **kw)
    return call


def api_save(target, **kw):
    def call(d, fx):
        post = _bm().load(d / "src")
        post.save(target, **kw)
    return call


def cli(cid, klass, what, expect, argv, setup=None, **kw) -> Case:
    return Case(cid, klass, "CLI", what, tuple(expect), setup=setup, argv=argv, **kw)


def api(cid, klass, what, expect, call, setup=None, **kw) -> Case:
    return Case(cid, klass, "API", what, tuple(expect), setup=setup, call=call, **kw)


def fit_cli(cid, klass, what, expect, data=frame, args=(), fast=True, setup=None, **kw) -> Case:
    """``bayesmtl fit --data data.csv --task school --target score --out run [FAST] ARGS`` (ARGS last: they
    win over FAST's flags and options)."""
    return cli(cid, klass, what, expect, [*FIT, *(FAST if fast else []), *args],
               chain(data_setup(data) if data is not None else None, setup), **kw)


def predict_cli(cid, klass, what, expect, new=newframe, args=None, setup=None, **kw) -> Case:
    return cli(cid, klass, what, expect, args or PREDICT,
               chain(copy_run(), data_setup(new, "new.csv") if new is not None else None, setup),
               needs=("a",), **kw)


def summary_cli(cid, what, expect, mutate=None, setup=None, **kw) -> Case:
    return cli(cid, "rundir", what, expect, ["summary", "run"], setup or copy_run(mutate=mutate), needs=("a",), **kw)


def from_csv_api(cid, what, expect, data, name="data.csv", path="data.csv", setup=None, **kw) -> Case:
    def call(d, fx):
        _bm().MultiTaskData.from_csv(path, task="school", target="score")
    return api(cid, "csv", what, expect, call, chain(data_setup(data, name) if data is not None else None, setup),
               **kw)


def from_frame_api(cid, klass, what, expect, df=frame, **kw) -> Case:
    fkw = {k: kw.pop(k) for k in list(kw) if k not in ("tolerate", "warn_ok")}
    args = {"task": "school", "target": "score", **fkw}
    return api(cid, klass, what, expect, lambda d, fx: _bm().MultiTaskData.from_frame(df(fx.seed), **args), **kw)


def from_arrays_api(cid, what, expect, make) -> Case:
    """``make(rng)`` gives (args, kwargs) of ``MultiTaskData.from_arrays``."""
    def call(d, fx):
        args, kw = make(np.random.default_rng(fx.seed))
        _bm().MultiTaskData.from_arrays(*args, **kw)
    return api(cid, "values", what, expect, call)


def arrays(rng, n=12, d=2, tasks=3):
    return rng.normal(size=(n, d)), rng.normal(size=n), np.arange(n) % tasks


def lines_put(i: int, fn):
    def edit(lines):
        lines[i] = fn(lines[i])
        return lines
    return edit


def build_cases() -> list[Case]:
    C: list[Case] = []
    add = C.append

    # ------------------------------------------------------------------ bad CSV files
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    header_only = "school,x1,x2,score\n"
    csvs = [  # id, what, data, expect
        ("csv-empty", "an empty file", "", ("data.csv",)),
        ("csv-binary", "a PNG image named data.csv", png, ("data.csv",)),
        ("csv-xlsx", "zip bytes (an .xlsx) named data.csv", lambda s: b"PK\x03\x04" + garbage(s, 2000), ("data.csv",)),
        ("csv-ragged-long", "a row with one field too many",
         edit_lines(lines_put(5, lambda line: line + ",999")), ("data.csv|line|row",)),
        ("csv-ragged-short", "a row with two fields of four",
         edit_lines(lines_put(12, lambda line: ",".join(line.split(",")[:2]))), ("data.csv|line|row",)),
        ("csv-dup-header", "header names x1 twice", edit_lines(lines_put(0, lambda _: "school,x1,x1,score")),
         ("x1",)),
        ("csv-dup-target", "header names the target twice",
         edit_lines(lines_put(0, lambda _: "school,x1,score,score")), ("score",)),
        ("csv-utf16", "UTF-16 text with a BOM", lambda s: csv_text(s).encode("utf-16"), ("data.csv",)),
        ("csv-latin1", "Latin-1 text (a task named Zürich)",
         lambda s: csv_text(s).replace("south", "Zürich").encode("latin-1"), ("data.csv",)),
        ("csv-nul", "a NUL byte inside a task label",
         lambda s: csv_text(s).replace("south", "so\x00uth", 1).encode(), ("data.csv|NUL|school",)),
        ("csv-only-header", "a header and no rows", header_only, ("data.csv|no rows",)),
        ("csv-blank-lines", "a header and blank lines only", header_only + "\n\n\n", ("data.csv|no rows",)),
        ("csv-semicolon", "semicolon-separated", lambda s: csv_text(s).replace(",", ";"), ("school",)),
        ("csv-open-quote", "an unterminated quote", edit_lines(lines_put(5, lambda line: '"' + line)),
         ("data.csv",)),
        ("csv-html", "an HTML page saved as .csv",
         "<!DOCTYPE html>\n<html><body><table><tr><td>school</td><td>score</td></tr></table></body></html>\n",
         ("data.csv|school",)),
        ("csv-trailing-comma", "every line ends with a comma (a fifth, nameless column)",
         edit_lines(lambda ls: [line + "," for line in ls]), ("Unnamed: 4|column 5|blank|no name|nameless",)),
        ("csv-index-column", "written with pandas' index: a nameless first column becomes a feature",
         lambda s: frame(s).to_csv(index=True), ("Unnamed: 0|column 1|blank|no name|nameless",)),
        ("csv-header-spaces", "header 'school, x1, x2, score' (spaces after commas)",
         edit_lines(lines_put(0, lambda _: "school, x1, x2, score")), ("score",)),
    ]
    for cid, what, data, expect in csvs:
        add(fit_cli(f"{cid}-cli", "csv", f"fit --data: {what}", expect, data=data,
                    warn_ok=cid == "csv-index-column"))
    add(fit_cli("csv-bom-cli", "csv", "fit --data: UTF-8 with a BOM (valid: should just work)", ("data.csv",),
                data=lambda s: b"\xef\xbb\xbf" + csv_text(s).encode(), tolerate=True))
    add(cli("csv-gzip-cli", "csv", "fit --data data.csv.gz: gzip-compressed CSV (pandas reads it)",
            ("data.csv.gz",), ["fit", "--data", "data.csv.gz", *FIT[3:], *FAST],
            data_setup(lambda s: gzip.compress(csv_text(s).encode(), mtime=0), "data.csv.gz"), tolerate=True))
    add(fit_cli("csv-folder-cli", "csv", "fit --data names a folder", ("data.csv",), data=None,
                setup=mkdir("data.csv", files={"part1.csv": "x\n"})))
    add(fit_cli("csv-missing-cli", "csv", "fit --data names a file that does not exist", ("data.csv",), data=None))
    add(fit_cli("csv-dangling-link-cli", "csv", "fit --data is a symlink to a missing file", ("data.csv",),
                data=None, setup=lambda d, fx: os.symlink("gone.csv", d / "data.csv")))
    add(fit_cli("csv-unreadable-cli", "csv", "fit --data: file mode 000", ("data.csv",),
                setup=chmod("data.csv", 0)))
    add(cli("csv-devnull-cli", "csv", "fit --data /dev/null", ("/dev/null",), ["fit", "--data", "/dev/null",
                                                                             *FIT[3:], *FAST]))
    for cid, what, data, expect in (
            ("csv-empty-api", "an empty file", "", ("data.csv",)),
            ("csv-binary-api", "a PNG image", png, ("data.csv",)),
            ("csv-ragged-api", "a row with one field too many",
             edit_lines(lines_put(5, lambda line: line + ",999")), ("data.csv|line|row",)),
            ("csv-dup-header-api", "header names x1 twice",
             edit_lines(lines_put(0, lambda _: "school,x1,x1,score")), ("x1",)),
            ("csv-only-header-api", "a header and no rows", header_only, ("data.csv|no rows",)),
            ("csv-utf16-api", "UTF-16 text", lambda s: csv_text(s).encode("utf-16"), ("data.csv",)),
            ("csv-latin1-api", "Latin-1 text", lambda s: csv_text(s).replace("south", "Zürich").encode("latin-1"),
             ("data.csv",))):
        add(from_csv_api(cid, f"from_csv: {what}", expect, data))
    add(from_csv_api("csv-bom-api", "from_csv: UTF-8 with a BOM (valid)", ("data.csv",),
                     lambda s: b"\xef\xbb\xbf" + csv_text(s).encode(), tolerate=True))
    add(from_csv_api("csv-folder-api", "from_csv: a folder", ("data.csv",), None, setup=mkdir("data.csv")))
    add(from_csv_api("csv-missing-api", "from_csv: no such file", ("data.csv",), None))
    add(from_csv_api("csv-unreadable-api", "from_csv: file mode 000", ("data.csv",), frame,
                     setup=chmod("data.csv", 0)))
    add(api("csv-path-none-api", "csv", "from_csv(None, ...)", ("path|None",),
            lambda d, fx: _bm().MultiTaskData.from_csv(None, task="school", target="score")))
    for cid, what, data, expect in (
            ("pcsv-empty", "an empty file", "", ("new.csv",)),
            ("pcsv-binary", "a PNG image", png, ("new.csv",)),
            ("pcsv-dup-header", "header names x1 twice", "school,x1,x1\nnorth,1,2\n", ("x1",)),
            ("pcsv-only-header", "a header and no rows (nothing to predict)", "school,x1,x2\n",
             ("new.csv|no rows",)),
            ("pcsv-ragged", "a row with one field too many", "school,x1,x2\nnorth,1,2\nsouth,1,2,3\n",
             ("new.csv|line|row",))):
        add(predict_cli(f"{cid}-cli", "csv", f"predict --data: {what}", expect, new=data))
    add(predict_cli("pcsv-folder-cli", "csv", "predict --data names a folder", ("new.csv",), new=None,
                    setup=mkdir("new.csv")))
    add(predict_cli("pcsv-missing-cli", "csv", "predict --data: no such file", ("new.csv",), new=None))
    add(predict_cli("pcsv-unreadable-cli", "csv", "predict --data: file mode 000", ("new.csv",),
                    setup=chmod("new.csv", 0)))

    # ------------------------------------------------------------------ missing and wrong columns
    cols = [  # id, what, args, data, expect
        ("col-task-missing", "--task district (no such column)", ["--task", "district"], frame, ("district",)),
        ("col-target-missing", "--target grade (no such column)", ["--target", "grade"], frame, ("grade",)),
        ("col-feature-missing", "--features x1,x9", ["--features", "x1,x9"], frame, ("x9",)),
        ("col-noise-missing", "--noise known_sd (no such column)", ["--noise", "known_sd"], frame, ("known_sd",)),
        ("col-trials-missing", "--likelihood binomial --trials attempts (no such column)",
         ["--likelihood", "binomial", "--trials", "attempts"], lambda s: frame(s, "binomial"), ("attempts",)),
        ("col-taskfeat-missing", "--task-features region (no such column)", ["--task-features", "region"], frame,
         ("region",)),
        ("col-shared-missing", "--shared x9 (no such column)", ["--shared", "x9"], frame, ("x9",)),
        ("col-shared-not-feature", "--features x1 --shared x2", ["--features", "x1", "--shared", "x2"], frame,
         ("x2",)),
        ("col-feature-is-task", "--features x1,school", ["--features", "x1,school"], frame, ("school",)),
        ("col-feature-is-target", "--features x1,score", ["--features", "x1,score"], frame, ("score",)),
        ("col-task-is-target", "--task score --target score", ["--task", "score"], frame, ("score",)),
        ("col-noise-is-target", "--noise score: the target as its own noise sd", ["--noise", "score"], frame,
         ("score",)),
        ("col-noise-is-feature", "--noise x1 (x1 also a feature by default, and negative)", ["--noise", "x1"],
         frame, ("x1",)),
        ("col-taskfeat-varies", "--task-features x1 (varies within tasks)", ["--task-features", "x1"], frame,
         ("x1",)),
        ("col-taskfeat-nan", "--task-features region with a blank cell",
         ["--task-features", "region", "--features", "x1,x2"],
         lambda s: put(frame(s).assign(region=lambda f: f["school"].map({"north": "n", "south": "s", "east": "e"})),
                       "region", None), ("region",)),
        ("col-intercept-name", "a feature column named 'intercept'", [],
         lambda s: frame(s).rename(columns={"x2": "intercept"}), ("intercept",)),
        ("col-all-shared", "--shared x1,x2 --model-option intercept=false: nothing varies by task",
         ["--shared", "x1,x2", "--model-option", "intercept=false"], frame, ("shared|intercept|varying",)),
        ("col-features-empty", "--features '' (an empty list: no features at all)", ["--features", ""], frame,
         ("features",)),
    ]
    for cid, what, args, data, expect in cols:
        add(fit_cli(cid + "-cli", "columns", f"fit {what}", expect, data=data, args=args,
                    warn_ok=cid == "col-features-empty"))
    streamed = [  # --stream: the file read in chunks (bayesmtl/streamed.py)
        ("stream-task-missing", "--stream --task district", ["--stream", "--task", "district"], ("district",)),
        ("stream-target-missing", "--stream --target grade", ["--stream", "--target", "grade"], ("grade",)),
        ("stream-feature-missing", "--stream --features x1,x9", ["--stream", "--features", "x1,x9"], ("x9",)),
        ("stream-noise", "--stream --noise x1 (not streamed)", ["--stream", "--noise", "x1"], ("--noise",)),
        ("stream-bernoulli", "--stream --likelihood bernoulli on a continuous target",
         ["--stream", "--likelihood", "bernoulli"], ("data.csv", "Bernoulli")),
        ("stream-batch", "--stream --option batch_size=4 (rows per step, which stay in the file)",
         ["--stream", "--method", "svi", "--option", "batch_size=4"], ("task_batch_size",)),
    ]
    for cid, what, args, expect in streamed:
        add(fit_cli(cid + "-cli", "columns", f"fit {what}", expect, data=frame, args=args))
    add(from_frame_api("col-task-missing-api", "columns", "from_frame(task='district')", ("district",),
                       task="district"))
    add(from_frame_api("col-target-missing-api", "columns", "from_frame(target='grade')", ("grade",),
                       target="grade"))
    add(from_frame_api("col-feature-missing-api", "columns", "from_frame(features=['x1', 'x9'])", ("x9",),
                       features=["x1", "x9"]))
    add(from_frame_api("col-features-str-api", "columns", "from_frame(features='x1'): a string, not a list",
                       ("features",), features="x1"))
    add(from_frame_api("col-dup-columns-api", "columns", "a DataFrame with two columns named x1", ("x1",),
                       df=lambda s: frame(s).rename(columns={"x2": "x1"})))
    add(from_frame_api("col-noise-is-task-api", "columns", "from_frame(noise='school')", ("school",),
                       noise="school"))
    add(from_frame_api("col-taskfeat-str-api", "columns", "from_frame(task_features='x1'): varies within tasks",
                       ("x1",), task_features="x1"))
    add(api("col-not-frame-api", "columns", "from_frame(a dict of lists)", ("DataFrame",),
            lambda d, fx: _bm().MultiTaskData.from_frame(frame(fx.seed).to_dict("list"), task="school",
                                                         target="score")))

    # ------------------------------------------------------------------ NaN, inf, huge, non-numeric values
    vals = [  # id, what, data, args, expect
        ("val-nan-feature", "a blank x1 cell in task south", cell("x1", np.nan), [], ("x1",)),
        ("val-nan-target", "a blank score cell in task south", cell("score", np.nan), [], ("score",)),
        ("val-inf-feature", "x1 = inf", cell("x1", np.inf), [], ("x1",)),
        ("val-neginf-target", "score = -inf", cell("score", -np.inf), [], ("score",)),
        ("val-overflow-literal", "x1 = 1e400 (overflows to inf)", cell("x1", "1e400"), [], ("x1",)),
        ("val-huge-feature", "x1 = 1e300 without --standardize", cell("x1", 1e300), [], ("x1",)),
        ("val-huge-feature-std", "x1 = 1e300 with --standardize", cell("x1", 1e300), ["--standardize"], ("x1",)),
        ("val-huge-target", "score = 1e300", cell("score", 1e300), [], ("score",)),
        ("val-huge-target-std", "score = 1e300 with --standardize", cell("score", 1e300), ["--standardize"],
         ("score",)),
        ("val-huge-all-std", "every x1 around 1e200 (sd overflows) with --standardize",
         lambda s: frame(s).assign(x1=lambda f: f["x1"] * 1e200), ["--standardize"], ("x1",)),
        ("val-text-feature", "x1 = 'abc' in one row", cell("x1", "abc"), [], ("x1",)),
        ("val-text-target", "score = 'missing' in one row", cell("score", "missing"), [], ("score",)),
        ("val-decimal-comma", "x1 = '1,5' (decimal comma)", cell("x1", "1,5"), [], ("x1",)),
        ("val-percent-target", "score = '50%'", cell("score", "50%"), [], ("score",)),
        ("val-categorical", "a text column colour among the default features",
         lambda s: frame(s).assign(colour=lambda f: np.where(f.index % 2, "red", "blue")), [], ("colour",)),
        ("val-bigint", "x1 = 10**30 written as an integer (valid as a float)",
         cell("x1", str(10**30)), [], ("x1",)),
    ]
    for cid, what, data, args, expect in vals:
        add(fit_cli(cid + "-cli", "values", f"fit: {what}", expect, data=data, args=args,
                    warn_ok=cid == "val-huge-feature", tolerate=cid == "val-bigint"))
    add(from_frame_api("val-nan-feature-api", "values", "from_frame: NaN in x1", ("x1",), df=cell("x1", np.nan)))
    add(from_frame_api("val-inf-target-api", "values", "from_frame: inf score", ("score",),
                       df=cell("score", np.inf)))
    add(from_frame_api("val-huge-std-api", "values", "from_frame(standardize=True): x1 = 1e300", ("x1",),
                       df=cell("x1", 1e300), standardize=True))
    add(from_frame_api("val-object-numbers-api", "values", "from_frame: x1 as text '1.5' (object dtype)", ("x1",),
                       df=lambda s: frame(s).assign(x1=lambda f: f["x1"].astype(str))))
    add(api("val-huge-nostd-api", "values", "bm.fit: x1 = 1e300, not standardised", ("x1",),
            api_fit(df=cell("x1", 1e300)), warn_ok=True))
    add(api("val-huge-target-api", "values", "bm.fit: score = 1e300", ("score",), api_fit(df=cell("score", 1e300))))
    arr = [  # id, what, expect, make(rng) -> (args, kwargs)
        ("val-arrays-nan-x", "from_arrays: NaN in X (row 1, column x1)", ("x1",),
         lambda r: ((np.where(np.arange(24).reshape(12, 2) == 3, np.nan, 1.0), r.normal(size=12),
                     np.arange(12) % 3), {})),
        ("val-arrays-complex", "from_arrays: complex X", ("X",),
         lambda r: ((arrays(r)[0] + 1j, *arrays(r)[1:]), {})),
        ("val-arrays-str-y", "from_arrays: y of strings", ("y",),
         lambda r: ((arrays(r)[0], np.array(list("abcdefghijkl")), arrays(r)[2]), {})),
        ("val-arrays-3d", "from_arrays: X of shape (12, 2, 2)", ("X",),
         lambda r: ((r.normal(size=(12, 2, 2)), r.normal(size=12), np.arange(12) % 3), {})),
        ("val-arrays-2d-y", "from_arrays: y of shape (12, 1)", ("y",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=(12, 1)), np.arange(12) % 3), {})),
        ("val-arrays-len", "from_arrays: task has 11 entries, X 12 rows", ("task",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12), np.arange(11) % 3), {})),
        ("val-arrays-neg-index", "from_arrays: task index -1", ("task",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12), np.where(np.arange(12) == 5, -1, np.arange(12) % 3)),
                    {})),
        ("val-arrays-index-range", "from_arrays: task index 3 with task_names of 3", ("task",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12), np.arange(12) % 4), {"task_names": ["a", "b", "c"]})),
        ("val-arrays-featnames", "from_arrays: 3 feature names for 2 columns", ("feature",),
         lambda r: (arrays(r), {"feature_names": ["u", "v", "w"]})),
        ("val-arrays-noise-neg", "from_arrays: noise -1", ("noise",), lambda r: (arrays(r), {"noise": -np.ones(12)})),
        ("val-arrays-noise-shape", "from_arrays: noise of shape (3,)", ("noise",),
         lambda r: (arrays(r), {"noise": np.ones(3)})),
        ("val-arrays-trials-frac", "from_arrays: trials 2.5", ("trials",),
         lambda r: (arrays(r), {"trials": np.full(12, 2.5)})),
        ("val-arrays-empty", "from_arrays: zero rows", ("rows|empty|no data",),
         lambda r: ((np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=int)), {})),
        ("val-arrays-task-none", "from_arrays: task labels with None", ("task",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12),
                     np.array(["a", "b", None, "c"] * 3, dtype=object)), {})),
        ("val-arrays-task-nan", "from_arrays: float task labels with NaN", ("task",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12), np.array([0.0, 1.0, np.nan, 2.0] * 3)), {})),
        ("val-arrays-dup-names", "from_arrays: task_names ['a', 'a', 'b']", ("task_names|'a'",),
         lambda r: (arrays(r), {"task_names": ["a", "a", "b"]})),
        ("val-arrays-label-unknown", "from_arrays: label 'z' not in task_names", ("'z'",),
         lambda r: ((r.normal(size=(12, 2)), r.normal(size=12), np.array(["a", "b", "z"] * 4)),
                    {"task_names": ["a", "b"]})),
    ]
    for cid, what, expect, make in arr:
        add(from_arrays_api(cid + "-api", what, expect, make))

    # ------------------------------------------------------------------ blank / NaN task labels
    add(fit_cli("lab-blank-cli", "labels", "fit: a blank task label", ("school",), data=cell("school", None)))
    add(fit_cli("lab-space-cli", "labels", "fit: a task label of three spaces", ("school",),
                data=cell("school", "   ")))
    add(fit_cli("lab-NA-cli", "labels", "fit: a task literally named NA (pandas reads it as missing)",
                ("'NA'",), data=lambda s: frame(s).replace({"school": {"south": "NA"}}), tolerate=True))
    add(fit_cli("lab-trailing-space-cli", "labels", "fit: 'south ' and 'south' (a trailing space: two tasks)",
                ("south ",), data=cell("school", "south "), warn_ok=True))
    add(fit_cli("lab-single-task-cli", "labels", "fit: every row in one task", ("school",),
                data=lambda s: frame(s).assign(school="north")))
    add(predict_cli("lab-blank-predict-cli", "labels", "predict: a blank task label", ("school",),
                    new=new_cell("school", None)))
    add(predict_cli("lab-space-predict-cli", "labels", "predict: a task label of spaces", ("school",),
                    new=new_cell("school", "  ")))
    add(predict_cli("lab-no-taskcol-predict-cli", "labels", "predict: new.csv without the school column",
                    ("school",), new=lambda s: newframe(s).drop(columns="school")))
    for cid, what, value in (("lab-nan-predict-api", "NaN", np.nan), ("lab-none-predict-api", "None", None),
                             ("lab-blank-predict-api", "''", "")):
        add(api(cid, "labels", f"post.predict: a task label {what}", ("school",),
                api_predict(new_cell("school", value)), copy_run(), needs=("a",)))
    add(from_frame_api("lab-nan-frame-api", "labels", "from_frame: a NaN task label", ("school",),
                       df=cell("school", np.nan)))
    add(from_frame_api("lab-single-task-api", "labels", "from_frame: one task only", ("school",),
                       df=lambda s: frame(s).assign(school="north")))

    # ------------------------------------------------------------------ one-row tasks, constant target
    one = lambda s: frame(s, rows=1)  # noqa: E731
    add(fit_cli("row-one-per-task-cli", "rows", "fit: every task has one row (noise and task spread confounded)",
                ONE_ROW, data=one, warn_ok=True))
    add(fit_cli("row-one-per-task-indep-cli", "rows", "fit --model independent: one row per task, 2 features",
                ONE_ROW, data=one, args=["--model", "independent"], warn_ok=True))
    add(api("row-one-per-task-api", "rows", "bm.fit: every task has one row", ONE_ROW, api_fit(df=one),
            warn_ok=True))
    add(fit_cli("row-three-rows-std-cli", "rows", "fit --standardize: 3 rows in all (1 per task)", ONE_ROW,
                data=one, args=["--standardize"], warn_ok=True))
    const = lambda s: frame(s).assign(score=42.0)  # noqa: E731
    add(fit_cli("const-target-cli", "constant", "fit: score is 42 in every row", ("score",), data=const,
                warn_ok=True))
    add(fit_cli("const-target-std-cli", "constant", "fit --standardize: score is 42 in every row", ("score",),
                data=const, args=["--standardize"], warn_ok=True))
    add(fit_cli("const-target-bernoulli-cli", "constant", "fit --likelihood bernoulli: score is 0 everywhere",
                ("score",), data=lambda s: frame(s, "binary").assign(score=0), args=["--likelihood", "bernoulli"],
                warn_ok=True))
    add(fit_cli("const-target-poisson-cli", "constant", "fit --likelihood poisson: score is 0 everywhere",
                ("score",), data=lambda s: frame(s, "counts").assign(score=0), args=["--likelihood", "poisson"],
                warn_ok=True))
    add(api("const-target-api", "constant", "bm.fit: score is 42 in every row", ("score",), api_fit(df=const),
            warn_ok=True))

    # ------------------------------------------------------------------ the wrong likelihood for the target
    liks = [  # id, likelihood, kind, value
        ("poisson-negative", "poisson", "counts", -1),
        ("poisson-fraction", "poisson", "counts", 2.5),
        ("bernoulli-two", "bernoulli", "binary", 2),
        ("bernoulli-negative", "bernoulli", "binary", -1),
        ("beta-one", "beta", "proportion", 1.0),
        ("beta-zero", "beta", "proportion", 0.0),
        ("beta-over", "beta", "proportion", 1.5),
        ("gamma-zero", "gamma", "positive", 0.0),
        ("gamma-negative", "gamma", "positive", -2.0),
        ("lognormal-zero", "lognormal", "positive", 0.0),
        ("negbin-fraction", "negative_binomial", "counts", 1.5),
        ("zip-negative", "zip", "counts", -3),
        ("ordinal-fraction", "ordinal", "ordinal", 1.5),
        ("ordinal-negative", "ordinal", "ordinal", -1),
    ]
    for cid, lik, kind, value in liks:
        add(fit_cli(f"lik-{cid}-cli", "likelihood", f"fit --likelihood {lik}: score = {value} in task south",
                    ("score", "south"), data=cell("score", value, kind=kind), args=["--likelihood", lik]))
    add(fit_cli("lik-binomial-no-trials-cli", "likelihood", "fit --likelihood binomial without --trials",
                ("trials",), data=lambda s: frame(s, "binomial"), args=["--likelihood", "binomial"]))
    add(fit_cli("lik-binomial-exceeds-cli", "likelihood", "fit --likelihood binomial: score 20 > attempts",
                ("south",), data=cell("score", 20, kind="binomial", attempts=True),
                args=["--likelihood", "binomial", "--trials", "attempts"]))
    add(fit_cli("lik-gaussian-on-text-cli", "likelihood", "fit --likelihood bernoulli on yes/no text",
                ("score",), data=lambda s: frame(s, "binary").assign(score=lambda f: np.where(f.score, "yes", "no")),
                args=["--likelihood", "bernoulli"]))
    for cid, lik, kind, value in (("poisson-negative", "poisson", "counts", -1),
                                  ("bernoulli-two", "bernoulli", "binary", 2),
                                  ("beta-one", "beta", "proportion", 1.0),
                                  ("gamma-zero", "gamma", "positive", 0.0)):
        add(api(f"lik-{cid}-api", "likelihood", f"bm.fit(Hierarchical(likelihood={lik!r})): score = {value}",
                ("score", "south"), api_fit(df=cell("score", value, kind=kind),
                                            model=lambda bm, lik=lik: bm.models.Hierarchical(likelihood=lik))))

    # ------------------------------------------------------------------ --noise / --trials columns
    sd, noise = "known_sd", ["--noise", "known_sd"]
    binomial = ["--likelihood", "binomial", "--trials", "attempts"]
    nts = [  # id, what, data, args, expect
        ("nt-noise-zero", "--noise known_sd with a 0", cell(sd, 0.0, known_sd=True), noise, (sd,)),
        ("nt-noise-negative", "--noise known_sd with -1", cell(sd, -1.0, known_sd=True), noise, (sd,)),
        ("nt-noise-nan", "--noise known_sd with a blank", cell(sd, np.nan, known_sd=True), noise, (sd,)),
        ("nt-noise-text", "--noise known_sd with 'unknown'", cell(sd, "unknown", known_sd=True), noise, (sd,)),
        ("nt-noise-inf", "--noise known_sd with inf", cell(sd, np.inf, known_sd=True), noise, (sd,)),
        ("nt-trials-fraction", "--trials attempts with 2.5", cell("attempts", 2.5, kind="binomial", attempts=True),
         binomial, ("attempts",)),
        ("nt-trials-negative", "--trials attempts with -1", cell("attempts", -1, kind="binomial", attempts=True),
         binomial, ("attempts",)),
        ("nt-trials-nan", "--trials attempts with a blank",
         cell("attempts", np.nan, kind="binomial", attempts=True), binomial, ("attempts",)),
        ("nt-trials-poisson", "--trials attempts with --likelihood poisson (trials unused)",
         lambda s: frame(s, "counts", attempts=True), ["--likelihood", "poisson", "--trials", "attempts"],
         ("attempts|trials",)),
        ("nt-noise-bernoulli", "--noise known_sd with --likelihood bernoulli (noise unused)",
         lambda s: frame(s, "binary", known_sd=True), ["--likelihood", "bernoulli", *noise], (f"{sd}|noise",)),
        ("nt-noise-and-trials-same", "--noise known_sd --trials known_sd (one column, two roles)",
         lambda s: frame(s, "binomial", known_sd=True).assign(known_sd=9),
         ["--likelihood", "binomial", *noise, "--trials", sd], (sd,)),
    ]
    for cid, what, data, args, expect in nts:
        add(fit_cli(cid + "-cli", "noise/trials", f"fit {what}", expect, data=data, args=args,
                    warn_ok=cid in ("nt-trials-poisson", "nt-noise-bernoulli")))
    add(from_frame_api("nt-noise-zero-api", "noise/trials", "from_frame(noise='known_sd') with a 0", ("known_sd",),
                       df=cell("known_sd", 0.0, known_sd=True), noise="known_sd"))
    add(from_frame_api("nt-trials-frac-api", "noise/trials", "from_frame(trials='attempts') with 2.5",
                       ("attempts",), df=cell("attempts", 2.5, kind="binomial", attempts=True), trials="attempts"))

    # ------------------------------------------------------------------ unknown names
    names = [  # id, what, args (after FIT), fast, expect
        ("name-model-unknown", "--model kmeans", ["--model", "kmeans"], True, ("kmeans",)),
        ("name-model-case", "--model Hierarchical (capitalised)", ["--model", "Hierarchical"], True,
         ("Hierarchical",)),
        ("name-model-empty", "--model '' (empty)", ["--model", ""], True, ("model",)),
        ("name-lik-unknown", "--likelihood gausian", ["--likelihood", "gausian"], True, ("gausian",)),
        ("name-lik-empty", "--likelihood '' (empty)", ["--likelihood", ""], True, ("likelihood",)),
        ("name-method-unknown", "--method hmc", [*FAST, "--method", "hmc"], False, ("hmc",)),
        ("name-method-case", "--method NUTS", [*FAST, "--method", "NUTS"], False, ("NUTS",)),
        ("name-option-unknown", "--option bogus=1", ["--option", "bogus=1"], True, ("bogus",)),
        ("name-option-noeq", "--option steps (no =VALUE)", ["--option", "steps"], True, ("steps",)),
        ("name-option-guide", "--option guide=bogus", ["--option", "guide=bogus"], True, ("guide",)),
        ("name-option-nuts-on-svi", "--option target_accept=0.9 with --method svi",
         ["--option", "target_accept=0.9"], True, ("target_accept",)),
        ("name-model-option-unknown", "--model-option bogus=1", ["--model-option", "bogus=1"], True, ("bogus",)),
        ("name-model-option-noeq", "--model-option rank (no =VALUE)", ["--model", "task-relationship",
                                                                       "--model-option", "rank"], True, ("rank",)),
        ("name-lik-for-gp", "--model multitask-gp --likelihood poisson", ["--model", "multitask-gp",
                                                                          "--likelihood", "poisson"], True,
         ("likelihood",)),
        ("name-shared-for-gp", "--model multitask-gp --shared x1", ["--model", "multitask-gp", "--shared", "x1"],
         True, ("shared",)),
        ("name-prior-and-model", "--model pooled --prior p.py:P", ["--model", "pooled", "--prior", "p.py:P"], True,
         ("--prior|--model",)),
    ]
    for cid, what, args, fast, expect in names:
        add(fit_cli(cid + "-cli", "names", f"fit {what}", expect, args=args, fast=fast))
    add(cli("name-subcommand-cli", "names", "bayesmtl fitt (a typo)", ("fitt",), ["fitt", "--data", "data.csv"]))
    add(cli("name-no-args-cli", "names", "bayesmtl with no arguments", ("command|required",), []))
    add(fit_cli("name-flag-typo-cli", "names", "fit --standardise (a misspelt flag)", ("--standardise",),
                args=["--standardise"]))
    add(api("name-method-unknown-api", "names", "bm.fit(method='hmc')", ("hmc",), api_fit(method="hmc")))
    add(api("name-method-none-api", "names", "bm.fit(method=None)", ("method",), api_fit(method=None)))
    add(api("name-option-unknown-api", "names", "bm.fit(..., bogus=1)", ("bogus",), api_fit(bogus=1)))
    add(api("name-option-guide-api", "names", "bm.fit(..., guide='bogus')", ("guide",), api_fit(guide="bogus")))
    add(api("name-lik-unknown-api", "names", "Hierarchical(likelihood='gausian')", ("gausian",),
            api_fit(model=lambda bm: bm.models.Hierarchical(likelihood="gausian"))))
    add(api("name-model-unknown-api", "names", "bm.models.get_model_class('kmeans')", ("kmeans",),
            lambda d, fx: _bm().models.get_model_class("kmeans")))
    add(api("name-options-twice-api", "names", "bm.fit(method=bm.infer.SVI(), steps=10)", ("steps",),
            lambda d, fx: api_fit(opts={}, method=_bm().infer.SVI(steps=200), steps=10, progress=False)(d, fx)))
    add(api("name-fit-frame-api", "names", "bm.fit(model, a DataFrame)", ("data|MultiTaskData",),
            lambda d, fx: _bm().fit(_bm().models.Hierarchical(), frame(fx.seed), **FAST_API)))
    add(api("name-fit-model-none-api", "names", "bm.fit(None, data)", ("model",),
            lambda d, fx: _bm().fit(None, api_data(frame(fx.seed)), **FAST_API)))
    add(api("name-fit-model-class-api", "names", "bm.fit(bm.models.Hierarchical, data): the class, not a model",
            ("model|Hierarchical",), lambda d, fx: _bm().fit(_bm().models.Hierarchical, api_data(frame(fx.seed)),
                                                             **FAST_API)))

    # ------------------------------------------------------------------ out-of-range settings
    sets = [  # id, what, args, fast, expect
        ("set-chains-0", "--chains 0", ["--chains", "0"], True, ("chains",)),
        ("set-chains-neg", "--chains -2", ["--chains", "-2"], True, ("chains",)),
        ("set-chains-text", "--chains four", ["--chains", "four"], True, ("chains",)),
        ("set-warmup-neg", "--warmup -1", ["--warmup", "-1"], True, ("warmup",)),
        ("set-draws-0", "--draws 0", [*FAST, "--draws", "0"], False, ("draws",)),
        ("set-seed-neg", "--seed -1", ["--seed", "-1"], True, ("seed",)),
        ("set-seed-2p63", "--seed 2**63+1", ["--seed", str(2**63 + 1)], True, ("seed",)),
        ("set-seed-2p64", "--seed 2**64", ["--seed", str(2**64)], True, ("seed",)),
        ("set-seed-float", "--seed 1.5", ["--seed", "1.5"], True, ("seed",)),
        ("set-device-mps", "--device mps", ["--device", "mps"], True, ("mps",)),
        ("set-device-cuda", "--device cuda (no GPU here)", ["--device", "cuda"], True, ("cuda",)),
        ("set-device-cuda99", "--device cuda:99", ["--device", "cuda:99"], True, ("cuda:99",)),
        ("set-device-gpu", "--device gpu", ["--device", "gpu"], True, ("gpu",)),
        ("set-device-empty", "--device ''", ["--device", ""], True, ("device",)),
        ("set-device-meta", "--device meta", ["--device", "meta"], True, ("meta",)),
        ("set-threads-0", "--option threads=0", ["--option", "threads=0"], True, ("threads",)),
        ("set-threads-neg", "--option threads=-4", ["--option", "threads=-4"], True, ("threads",)),
        ("set-threads-frac", "--option threads=1.5", ["--option", "threads=1.5"], True, ("threads",)),
        ("set-lr-0", "--option lr=0", ["--option", "lr=0"], True, ("lr",)),
        ("set-lr-neg", "--option lr=-0.01", ["--option", "lr=-0.01"], True, ("lr",)),
        ("set-lr-nan", "--option lr=nan", ["--option", "lr=nan"], True, ("lr",)),
        ("set-lr-huge", "--option lr=1e10 (the ELBO blows up)", ["--option", "lr=1e10"], True, ("lr",)),
        ("set-steps-0", "--option steps=0", ["--option", "steps=0"], True, ("steps",)),
        ("set-steps-neg", "--option steps=-5", ["--option", "steps=-5"], True, ("steps",)),
        ("set-min-steps-gt-steps", "--option min_steps=5000 with steps=200", ["--option", "min_steps=5000"], True,
         ("min_steps",)),
        ("set-batch-0", "--option batch_size=0", ["--option", "batch_size=0"], True, ("batch_size",)),
        ("set-batch-frac", "--option batch_size=2.5", ["--option", "batch_size=2.5"], True, ("batch_size",)),
        ("set-batch-huge", "--option batch_size=100000 (24 rows)", ["--option", "batch_size=100000"], True,
         ("batch_size",)),
        ("set-rank-0", "--option guide=lowrank --option rank=0", ["--option", "guide=lowrank", "--option", "rank=0"],
         True, ("rank",)),
        ("set-rank-huge", "--option guide=lowrank --option rank=1000", ["--option", "guide=lowrank",
                                                                        "--option", "rank=1000"], True, ("rank",)),
        ("set-rank-unused", "--option rank=2 with the structured guide (rank unused)", ["--option", "rank=2"], True,
         ("rank",)),
        ("set-particles-0", "--option particles=0", ["--option", "particles=0"], True, ("particles",)),
        ("set-tol-neg", "--option tol=-1", ["--option", "tol=-1"], True, ("tol",)),
        ("set-window-0", "--option window=0", ["--option", "window=0"], True, ("window",)),
        ("set-anneal-neg", "--option anneal=-1", ["--option", "anneal=-1"], True, ("anneal",)),
        ("set-psis-draws-0", "--option psis_draws=0", ["--option", "psis_draws=0"], True, ("psis_draws",)),
        ("set-jit-maybe", "--option jit=maybe", ["--option", "jit=maybe"], True, ("jit",)),
        ("set-ckpt-every-neg", "--checkpoint-every -1", ["--checkpoint-every", "-1"], True, ("checkpoint-every",)),
        ("set-ckpt-every-nan", "--checkpoint-every nan", ["--checkpoint-every", "nan"], True,
         ("checkpoint-every|checkpoint_every",)),
        ("set-ta-0", "--method nuts --option target_accept=0", [*NUTS, "--option", "target_accept=0"], False,
         ("target_accept",)),
        ("set-ta-1", "--method nuts --option target_accept=1", [*NUTS, "--option", "target_accept=1"], False,
         ("target_accept",)),
        ("set-ta-over", "--method nuts --option target_accept=1.5", [*NUTS, "--option", "target_accept=1.5"], False,
         ("target_accept",)),
        ("set-treedepth-0", "--method nuts --option max_tree_depth=0", [*NUTS, "--option", "max_tree_depth=0"],
         False, ("max_tree_depth",)),
        ("set-chunk-0", "--method nuts --option chunk=0", [*NUTS, "--option", "chunk=0"], False, ("chunk",)),
        ("set-init-radius-0", "--method nuts --option init_radius=0", [*NUTS, "--option", "init_radius=0"], False,
         ("init_radius",)),
        ("set-processes-0", "--method nuts --option processes=0", [*NUTS, "--option", "processes=0"], False,
         ("processes",)),
        ("set-dtype-f16", "--method nuts --option dtype=float16", [*NUTS, "--option", "dtype=float16"], False,
         ("dtype",)),
        ("set-compile-bogus", "--method nuts --option compile=bogus", [*NUTS, "--option", "compile=bogus"], False,
         ("compile",)),
        ("set-metric-bogus", "--method nuts --option metric=bogus", [*NUTS, "--option", "metric=bogus"], False,
         ("metric",)),
        ("set-dense-maybe", "--method nuts --option dense_mass=maybe", [*NUTS, "--option", "dense_mass=maybe"],
         False, ("dense_mass",)),
        ("set-nuts-threads-0", "--method nuts --option threads=0", [*NUTS, "--option", "threads=0"], False,
         ("threads",)),
        ("set-chees-max-steps-0", "--method chees --option max_steps=0",
         ["--method", "chees", "--chains", "2", "--warmup", "30", "--draws", "20", "--quiet",
          "--option", "max_steps=0"], False, ("max_steps",)),
        ("set-pyro-nuts-jit-maybe", "--method pyro_nuts --option jit=maybe",
         ["--method", "pyro_nuts", "--chains", "1", "--warmup", "30", "--draws", "20", "--quiet",
          "--option", "jit=maybe"], False, ("jit",)),
        ("set-map-steps-0", "--method map --option steps=0", ["--method", "map", "--quiet", "--option", "steps=0"],
         False, ("steps",)),
        ("set-map-bogus", "--method map --option bogus=1", ["--method", "map", "--quiet", "--option", "bogus=1"],
         False, ("bogus",)),
        ("set-truncation-0", "--model dp-clustering --model-option truncation=0",
         ["--model", "dp-clustering", "--model-option", "truncation=0"], True, ("truncation",)),
        ("set-truncation-1", "--model dp-clustering --model-option truncation=1",
         ["--model", "dp-clustering", "--model-option", "truncation=1"], True, ("truncation",)),
        ("set-truncation-frac", "--model dp-clustering --model-option truncation=2.5",
         ["--model", "dp-clustering", "--model-option", "truncation=2.5"], True, ("truncation",)),
        ("set-gp-rank-0", "--model multitask-gp --model-option rank=0",
         ["--model", "multitask-gp", "--model-option", "rank=0"], True, ("rank",)),
        ("set-gp-kind-bogus", "--model multitask-gp --model-option kind=bogus",
         ["--model", "multitask-gp", "--model-option", "kind=bogus"], True, ("kind",)),
        ("set-tr-rank-0", "--model task-relationship --model-option rank=0",
         ["--model", "task-relationship", "--model-option", "rank=0"], True, ("rank",)),
        ("set-tr-rank-huge", "--model task-relationship --model-option rank=50 (3 tasks)",
         ["--model", "task-relationship", "--model-option", "rank=50"], True, ("rank",)),
    ]
    for cid, what, args, fast, expect in sets:
        add(fit_cli(cid + "-cli", "settings", f"fit {what}", expect, args=args, fast=fast,
                    warn_ok=cid in ("set-batch-huge", "set-rank-huge", "set-rank-unused", "set-tr-rank-huge")))
    for cid, what, args, expect in (
            ("set-summary-prob-over", "summary --prob 1.5", ["--prob", "1.5"], ("prob",)),
            ("set-summary-prob-0", "summary --prob 0", ["--prob", "0"], ("prob",)),
            ("set-summary-prob-nan", "summary --prob nan", ["--prob", "nan"], ("prob",)),
            ("set-summary-max-rows-neg", "summary --max-rows -1", ["--max-rows", "-1"], ("max-rows|max_rows",))):
        add(cli(cid + "-cli", "settings", what, expect, ["summary", "run", *args], copy_run(), needs=("a",)))
    for cid, what, seed in (("set-predict-seed-neg", "predict --seed -1", "-1"),
                            ("set-predict-seed-2p64", "predict --seed 2**64", str(2**64))):
        add(predict_cli(cid + "-cli", "settings", what, ("seed",), args=[*PREDICT, "--seed", seed]))
    for cid, what, args, expect in (
            ("set-demo-chains-0", "demo --chains 0", ["--chains", "0"], ("chains",)),
            ("set-demo-method-bogus", "demo --method bogus", ["--method", "bogus"], ("bogus",)),
            ("set-demo-device-mps", "demo --device mps", ["--device", "mps"], ("mps",)),
            ("set-demo-lr-0", "demo --option lr=0", ["--option", "lr=0"], ("lr",)),
            ("set-demo-seed-neg", "demo --seed -1", ["--seed", "-1"], ("seed",)),
            ("set-demo-ckpt-every-neg", "demo --checkpoint-every -5", ["--checkpoint-every", "-5"],
             ("checkpoint",))):
        add(cli(cid + "-cli", "settings", what, expect, [*DEMO, *args]))
    apisets = [  # id, what, kwargs, expect
        ("set-chains-0-api", "chains=0", dict(chains=0), ("chains",)),
        ("set-chains-float-api", "chains=1.5", dict(chains=1.5), ("chains",)),
        ("set-chains-str-api", "chains='4'", dict(chains="4"), ("chains",)),
        ("set-chains-bool-api", "chains=True", dict(chains=True), ("chains",)),
        ("set-warmup-neg-api", "warmup=-1", dict(warmup=-1), ("warmup",)),
        ("set-draws-0-api", "draws=0", dict(draws=0), ("draws",)),
        ("set-seed-neg-api", "seed=-1", dict(seed=-1), ("seed",)),
        ("set-seed-2p63-api", "seed=2**63+1", dict(seed=2**63 + 1), ("seed",)),
        ("set-seed-2p64-api", "seed=2**64", dict(seed=2**64), ("seed",)),
        ("set-seed-float-api", "seed=1.5", dict(seed=1.5), ("seed",)),
        ("set-seed-none-api", "seed=None", dict(seed=None), ("seed",)),
        ("set-device-mps-api", "device='mps'", dict(device="mps"), ("mps",)),
        ("set-device-cuda99-api", "device='cuda:99'", dict(device="cuda:99"), ("cuda:99",)),
        ("set-device-int-api", "device=7", dict(device=7), ("device|7",)),
        ("set-device-meta-api", "device='meta'", dict(device="meta"), ("meta",)),
        ("set-threads-0-api", "threads=0", dict(threads=0), ("threads",)),
        ("set-lr-0-api", "lr=0", dict(lr=0), ("lr",)),
        ("set-lr-inf-api", "lr=float('inf')", dict(lr=float("inf")), ("lr",)),
        ("set-steps-0-api", "steps=0", dict(steps=0), ("steps",)),
        ("set-batch-0-api", "batch_size=0", dict(batch_size=0), ("batch_size",)),
        ("set-rank-0-api", "guide='lowrank', rank=0", dict(guide="lowrank", rank=0), ("rank",)),
        ("set-collapse-str-api", "collapse='no' (a string, truthy)", dict(collapse="no"), ("collapse",)),
        ("set-ckpt-every-0-api", "checkpoint_every=0", dict(checkpoint_every=0), ("checkpoint_every",)),
        ("set-ckpt-every-neg-api", "checkpoint_every=-1", dict(checkpoint_every=-1), ("checkpoint_every",)),
        ("set-progress-str-api", "progress='no' (a string, truthy)", dict(progress="no"), ("progress",)),
    ]
    for cid, what, kw, expect in apisets:
        add(api(cid, "settings", f"bm.fit(..., {what})", expect, api_fit(**kw)))
    add(api("set-collapse-bernoulli-api", "settings", "bm.fit(Hierarchical('bernoulli'), collapse=True)",
            ("collapse|collapsed",), api_fit(df=lambda s: frame(s, "binary"), collapse=True,
                                   model=lambda bm: bm.models.Hierarchical(likelihood="bernoulli"))))
    add(api("set-ckpt-file-api", "settings", "bm.fit(..., checkpoint=a plain file)", ("ck",),
            api_fit(checkpoint="ck"), text_file("ck", "my notes")))
    add(api("set-ta-0-api", "settings", "bm.fit(method='nuts', target_accept=0)", ("target_accept",),
            api_fit(opts=NUTS_API, target_accept=0)))
    for cid, what, fn, expect in (
            ("set-summary-prob-api", "post.summary(prob=1.5)", lambda p: p.summary(prob=1.5), ("prob",)),
            ("set-summary-sites-api", "post.summary(['bogus'])", lambda p: p.summary(["bogus"]), ("bogus",)),
            ("set-predict-prob-api", "post.predict(new, prob=1.5)",
             lambda p: p.predict(newframe(0), prob=1.5), ("prob",)),
            ("set-predict-prob-0-api", "post.predict(new, prob=0)", lambda p: p.predict(newframe(0), prob=0),
             ("prob",)),
            ("set-predict-seed-2p64-api", "post.predict(new, seed=2**64)",
             lambda p: p.predict(newframe(0), seed=2**64), ("seed",)),
            ("set-diagnose-bogus-api", "post.diagnose(rhat=1.1) (the threshold is r_hat)",
             lambda p: p.diagnose(rhat=1.1), ("rhat",))):
        add(api(cid, "settings", what, expect, lambda d, fx, fn=fn: fn(_bm().load(d / "run")), copy_run(),
                needs=("a",)))

    # ------------------------------------------------------------------ --set-prior, --prior, --prior-args
    sp = [  # id, what, --set-prior value(s), extra args, expect
        ("prior-set-unknown", "bogus=Normal(0,1)", ["bogus=Normal(0,1)"], [], ("bogus",)),
        ("prior-set-family", "scale=Foo(1)", ["scale=Foo(1)"], [], ("Foo",)),
        ("prior-set-text-args", "scale=Normal(a,b)", ["scale=Normal(a,b)"], [], ("Normal(a,b)",)),
        ("prior-set-neg-scale", "scale=HalfNormal(-1)", ["scale=HalfNormal(-1)"], [], ("HalfNormal",)),
        ("prior-set-noeq", "scale (no =)", ["scale"], [], ("scale",)),
        ("prior-set-nokey", "=Normal(0,1) (no setting)", ["=Normal(0,1)"], [], ("set-prior",)),
        ("prior-set-code", "scale=__import__('os').getcwd()", ["scale=__import__('os').getcwd()"], [],
         ("set-prior",)),
        ("prior-set-nan", "scale=nan", ["scale=nan"], [], SET_SCALE),
        ("prior-set-inf", "scale=inf", ["scale=inf"], [], SET_SCALE),
        ("prior-set-fixed-neg", "scale=-1 (a fixed negative scale)", ["scale=-1"], [], SET_SCALE),
        ("prior-set-too-many", "scale=HalfNormal(1,2,3)", ["scale=HalfNormal(1,2,3)"], [], ("HalfNormal",)),
        ("prior-set-overflow", "scale=HalfNormal(1e400)", ["scale=HalfNormal(1e400)"], [], SET_SCALE),
        ("prior-set-zero-sd", "mean=Normal(0,0)", ["mean=Normal(0,0)"], [], ("mean|Normal",)),
        ("prior-set-noise-zero", "noise=HalfNormal(0)", ["noise=HalfNormal(0)"], [], ("noise|HalfNormal",)),
        ("prior-set-wrong-support", "scale=Normal(0,1) (a scale prior on all reals)", ["scale=Normal(0,1)"], [],
         SET_SCALE),
        ("prior-set-noise-poisson", "noise=HalfNormal(1) with --likelihood poisson (no noise)",
         ["noise=HalfNormal(1)"], ["--likelihood", "poisson"], ("noise",)),
        ("prior-set-twice", "scale=HalfNormal(1) and scale=HalfNormal(5)",
         ["scale=HalfNormal(1)", "scale=HalfNormal(5)"], [], SET_SCALE),
    ]
    for cid, what, values, extra, expect in sp:
        args = [a for v in values for a in ("--set-prior", v)] + extra
        data = (lambda s: frame(s, "counts")) if "poisson" in extra else frame
        add(fit_cli(cid + "-cli", "priors", f"fit --set-prior {what}", expect, data=data, args=args,
                    warn_ok=cid in ("prior-set-noise-poisson", "prior-set-twice")))
    pr = [  # id, what, --prior, extra args, expect
        ("prior-file-missing", "user/nope.py:StudentTPopulation", "user/nope.py:StudentTPopulation", [],
         ("nope.py",)),
        ("prior-file-not-py", "data.csv:StudentTPopulation", "data.csv:StudentTPopulation", [], ("data.csv",)),
        ("prior-class-missing", "my_priors.py:StudentT", "user/my_priors.py:StudentT", [], ("StudentT",)),
        ("prior-not-taskprior", "my_priors.py:NotAPrior", "user/my_priors.py:NotAPrior", [], ("NotAPrior",)),
        ("prior-broken-import", "broken.py:Anything (raises on import)", "user/broken.py:Anything", [],
         ("broken.py",)),
        ("prior-syntax-error", "syntax.py:Anything (a SyntaxError)", "user/syntax.py:Anything", [], ("syntax.py",)),
        ("prior-sys-exit", "exits.py:Anything (sys.exit(0) on import)", "user/exits.py:Anything", [],
         ("exits.py",)),
        ("prior-args-json", "--prior-args '{df: 4}'", "user/my_priors.py:StudentTPopulation",
         ["--prior-args", "{df: 4}"], ("prior-args",)),
        ("prior-args-array", "--prior-args '[4]'", "user/my_priors.py:StudentTPopulation", ["--prior-args", "[4]"],
         ("prior-args",)),
        ("prior-args-unknown", "--prior-args '{\"dof\": 4}'", "user/my_priors.py:StudentTPopulation",
         ["--prior-args", '{"dof": 4}'], ("dof",)),
        ("prior-args-rejected", "--prior-args '{\"df\": -1}'", "user/my_priors.py:StudentTPopulation",
         ["--prior-args", '{"df": -1}'], ("df",)),
        ("prior-args-nan", "--prior-args '{\"df\": NaN}'", "user/my_priors.py:StudentTPopulation",
         ["--prior-args", '{"df": NaN}'], ("df",)),
        ("prior-args-string", "--prior-args '{\"df\": \"4\"}'", "user/my_priors.py:StudentTPopulation",
         ["--prior-args", '{"df": "4"}'], ("df",)),
        ("prior-no-colon", "user/my_priors.py (no :Class)", "user/my_priors.py", [], ("--prior",)),
        ("prior-empty-class", "user/my_priors.py: (empty class)", "user/my_priors.py:", [], ("--prior",)),
        ("prior-module-missing", "no_such_pkg.priors:P", "no_such_pkg.priors:P", [], ("no_such_pkg",)),
        ("prior-base-class", "bayesmtl.priors:TaskPrior", "bayesmtl.priors:TaskPrior", [], ("TaskPrior",)),
        ("prior-no-sample", "my_priors.py:NoSample (no sample method)", "user/my_priors.py:NoSample", [],
         ("NoSample",)),
        ("prior-sample-raises", "my_priors.py:Exploding (sample raises KeyError)", "user/my_priors.py:Exploding",
         [], ("Exploding|my_priors.py",)),
        ("prior-wrong-shape", "my_priors.py:WrongShape (sample returns shape (2, 7))",
         "user/my_priors.py:WrongShape", [], ("WrongShape|shape",)),
    ]
    for cid, what, spec, extra, expect in pr:
        add(fit_cli(cid + "-cli", "priors", f"fit --prior {what}", expect, args=["--prior", spec, *extra],
                    setup=write_priors))
    add(fit_cli("prior-args-alone-cli", "priors", "fit --prior-args '{\"df\": 4}' without --prior",
                ("--prior-args",), args=["--prior-args", '{"df": 4}']))

    # ------------------------------------------------------------------ --out: files, folders, permissions, locks
    thesis = {"chapter1/intro.tex": "years of work", "notes.txt": "notes"}
    outs = [  # id, what, args, setup, expect
        ("out-file", "--out names a plain file", [], text_file("run", "keep me"), RUN),
        ("out-nonrun", "--out is a folder of the user's files", [], mkdir("run", files=thesis), RUN),
        ("out-nonrun-overwrite", "--out is a folder of the user's files, with --overwrite", ["--overwrite"],
         mkdir("run", files=thesis), RUN),
        ("out-existing-run", "--out holds a run, no --overwrite", [], copy_run(), RUN),
        ("out-lock-live", "a live process holds .run.lock (a concurrent writer)", [], lock(), ("PID",)),
        ("out-unfinished-ckpt", "--out has an unfinished fit's checkpoint (.run.checkpoint/svi.npz)", [],
         lambda d, fx: (d / ".run.checkpoint").mkdir() or (d / ".run.checkpoint" / "svi.npz").write_bytes(b"x"),
         ("resume",)),
        ("out-ckpt-path-file", ".run.checkpoint is a plain file of the user's", [],
         text_file(".run.checkpoint", "mine"), (".run.checkpoint",)),
        ("out-hidden-sibling", "a user's folder .run.keep beside --out, and --chains 0", ["--chains", "0"],
         mkdir(".run.keep", files={"important.txt": "do not delete"}), ("chains",)),
        ("out-old-sibling", "a user's folder .run.old beside --out, and --draws 0", [*FAST, "--draws", "0"],
         mkdir(".run.old", files={"backup.csv": "a,b\n1,2\n"}), ("draws",)),
    ]
    for cid, what, args, setup, expect in outs:
        add(fit_cli(cid + "-cli", "out", f"fit: {what}", expect, args=args, setup=setup,
                    needs=("a",) if cid == "out-existing-run" else ()))
    add(fit_cli("out-hidden-sibling-ok-cli", "out", "fit: a valid fit, beside a user's folder .run.mine (must keep it)",
                RUN, setup=mkdir(".run.mine", files={"data.txt": "mine"}), tolerate=True))
    add(cli("out-ro-parent-cli", "out", "fit --out ro/run (ro is mode 555)", ("ro",),
            [*FIT[:-1], "ro/run", *FAST], chain(data_setup(), mkdir("ro", 0o555))))
    add(cli("out-parent-file-cli", "out", "fit --out notes.txt/run (the parent is a file)", ("notes.txt",),
            [*FIT[:-1], "notes.txt/run", *FAST], chain(data_setup(), text_file("notes.txt", "mine"))))
    add(cli("out-equals-data-cli", "out", "fit --out data.csv (the data file itself)", ("data.csv",),
            [*FIT[:-1], "data.csv", *FAST], data_setup()))
    add(cli("out-empty-cli", "out", "fit --out '' (empty)", ("out|'.'|''",), [*FIT[:-1], "", *FAST], data_setup()))
    add(cli("out-dangling-link-cli", "out", "fit --out run, a symlink to a missing folder", RUN,
            [*FIT, *FAST], chain(data_setup(), lambda d, fx: os.symlink("elsewhere", d / "run"))))
    add(cli("out-nested-bad-cli", "out", "fit --out new/deeper/run --chains 0 (no folders should appear)",
            ("chains",), [*FIT[:-1], "new/deeper/run", *FAST, "--chains", "0"], data_setup()))
    add(cli("out-demo-file-cli", "out", "demo --out names a plain file", RUN, [*DEMO, "--out", "run"],
            text_file("run", "keep me")))
    add(cli("out-demo-nonrun-cli", "out", "demo --out is a folder of the user's files", RUN,
            [*DEMO, "--out", "run"], mkdir("run", files=thesis)))
    add(cli("out-demo-ro-cli", "out", "demo --out ro/run (ro is mode 555)", ("ro",), [*DEMO, "--out", "ro/run"],
            mkdir("ro", 0o555)))
    add(cli("out-demo-lock-cli", "out", "demo --out run while a live process holds .run.lock", ("PID",),
            [*DEMO, "--out", "run"], lock()))
    add(predict_cli("out-predict-folder-cli", "out", "predict --out names a folder", ("pred.csv",),
                    setup=mkdir("pred.csv", files={"keep.txt": "mine"})))
    add(predict_cli("out-predict-ro-cli", "out", "predict --out ro/pred.csv (ro is mode 555)", ("ro",),
                    args=[*PREDICT[:-1], "ro/pred.csv"], setup=mkdir("ro", 0o555)))
    add(predict_cli("out-predict-is-data-cli", "out", "predict --out new.csv (overwrites its own input)",
                    ("new.csv",), args=[*PREDICT[:-1], "new.csv"], warn_ok=True))
    add(predict_cli("out-predict-is-run-cli", "out", "predict --out run (the run directory)", RUN,
                    args=[*PREDICT[:-1], "run"]))
    saves = [  # id, what, target, kwargs, setup, expect
        ("out-save-file-api", "a plain file", "results", {}, text_file("results", "keep me"), ("results",)),
        ("out-save-nonrun-api", "a folder of the user's files", "thesis", {}, mkdir("thesis", files=thesis),
         ("thesis",)),
        ("out-save-nonrun-overwrite-api", "a folder of the user's files, overwrite=True", "thesis",
         {"overwrite": True}, mkdir("thesis", files=thesis), ("thesis",)),
        ("out-save-ro-api", "ro/run (ro is mode 555)", "ro/run", {}, mkdir("ro", 0o555), ("ro",)),
        ("out-save-existing-api", "a run, overwrite=False", "run", {}, copy_run(), RUN),
        ("out-save-lock-api", "run while a live process holds .run.lock", "run", {}, lock(), ("PID",)),
        ("out-save-parent-file-api", "notes.txt/run (the parent is a file)", "notes.txt/run", {},
         text_file("notes.txt", "mine"), ("notes.txt",)),
        ("out-save-empty-api", "'' (empty path)", "", {}, None, ("''|'.'|path",)),
        ("out-save-none-api", "None", None, {}, None, ("path|None",)),
        ("out-save-hidden-sibling-api", "run, beside a user's folder .run.mine (valid: must keep it)", "run", {},
         mkdir(".run.mine", files={"data.txt": "mine"}), RUN),
    ]
    for cid, what, target, kw, setup, expect in saves:
        add(api(cid, "out", f"post.save onto {what}", expect, api_save(target, **kw),
                chain(copy_run(name="src"), setup), needs=("a",), tolerate=cid == "out-save-hidden-sibling-api"))

    # ------------------------------------------------------------------ damaged, foreign and versioned run dirs
    rds = [  # id, what, mutate, expect
        ("rd-post-truncated", "posterior.nc cut in half", m_truncate("posterior.nc"), ("posterior.nc",)),
        ("rd-post-garbage", "posterior.nc is random bytes", m_bytes("posterior.nc"), ("posterior.nc",)),
        ("rd-post-empty", "posterior.nc is empty", m_bytes("posterior.nc", b""), ("posterior.nc",)),
        ("rd-runjson-truncated", "run.json cut in half", m_truncate("run.json"), ("run.json",)),
        ("rd-runjson-array", "run.json is []", m_bytes("run.json", b"[]"), ("run.json",)),
        ("rd-runjson-empty", "run.json is empty", m_bytes("run.json", b""), ("run.json",)),
        ("rd-runjson-binary", "run.json is random bytes", m_bytes("run.json"), ("run.json",)),
        ("rd-format-99", "run.json format_version 99", m_version(99), ("format",)),
        ("rd-format-str", "run.json format_version '2' (a string)", m_version("2"), ("format",)),
        ("rd-format-float", "run.json format_version 2.5", m_version(2.5), ("format",)),
        ("rd-format-neg", "run.json format_version -1", m_version(-1), ("format",)),
        ("rd-format-bool", "run.json format_version true", m_version(True), ("format",)),
        ("rd-format-null", "run.json format_version null", m_version(None), ("format",)),
        ("rd-format-0", "run.json format_version 0", m_version(0), ("format",)),
        ("rd-modeljson-missing", "model.json removed", m_remove("model.json"), ("model.json",)),
        ("rd-modeljson-garbage", "model.json is random bytes", m_bytes("model.json"), ("model.json",)),
        ("rd-modeljson-truncated", "model.json cut in half", m_truncate("model.json"), ("model.json",)),
        ("rd-modeljson-foreign-class", "model.json names subprocess:Popen",
         m_json("model.json", lambda j: j.update(model={"object": "subprocess:Popen", "attrs": {"dict": {}}})),
         ("subprocess:Popen",)),
        ("rd-modeljson-empty-object", "model.json is {}", m_bytes("model.json", b"{}"), ("model.json",)),
        ("rd-datanc-missing", "data.nc removed", m_remove("data.nc"), ("data.nc",)),
        ("rd-datanc-garbage", "data.nc is random bytes", m_bytes("data.nc"), ("data.nc",)),
        ("rd-datanc-truncated", "data.nc cut in half", m_truncate("data.nc"), ("data.nc",)),
        ("rd-post-other-run", "posterior.nc from another run (4 tasks, 1 feature)", m_from("b", "posterior.nc"),
         ("posterior.nc|tasks|shape",)),
        ("rd-data-other-run", "data.nc from another run (4 tasks, 1 feature)", m_from("b", "data.nc"),
         ("data.nc|tasks|shape",)),
        ("rd-model-data-other-run", "model.json and data.nc from another run", m_from("b", "model.json", "data.nc"),
         ("posterior.nc|data.nc|tasks|shape",)),
        ("rd-pickle-untrusted", "model.json and data.nc replaced by a model.pt pickle",
         lambda run, fx: (m_remove("model.json", "data.nc")(run, fx), (run / "model.pt").write_bytes(b"\x80\x04."))
         and None, ("trust",)),
        ("rd-unreadable-folder", "the run folder is mode 000", m_chmod(None, 0), RUN),
        ("rd-unreadable-post", "posterior.nc is mode 000", m_chmod("posterior.nc", 0), ("posterior.nc",)),
        ("rd-unreadable-runjson", "run.json is mode 000", m_chmod("run.json", 0), ("run.json",)),
        ("rd-unreadable-datanc", "data.nc is mode 000", m_chmod("data.nc", 0), ("data.nc",)),
    ]
    for cid, what, mutate, expect in rds:
        needs = ("a", "b") if "other-run" in cid else ("a",)
        add(Case(cid + "-cli", "rundir", "CLI", f"summary RUN: {what}", expect, copy_run(mutate=mutate),
                 ["summary", "run"], needs=needs))
    foreign = [  # id, what, setup, expect
        ("rd-missing", "summary of a path that does not exist", None, RUN),
        ("rd-file", "summary of a plain file", text_file("run", "not a run"), RUN),
        ("rd-empty-folder", "summary of an empty folder", mkdir("run"), RUN),
        ("rd-nonrun-folder", "summary of a folder of CSV files (not a run)",
         mkdir("run", files={"a.csv": "x,y\n1,2\n", "b.csv": "x\n3\n"}), RUN),
        ("rd-foreign-runjson", "a folder with another tool's run.json and a posterior.nc",
         lambda d, fx: copy_run(mutate=lambda r, f: (m_remove("model.json", "data.nc")(r, f),
                                                     (r / "run.json").write_text('{"tool": "mlflow", "run_id": 7}')))(
             d, fx), RUN),
        ("rd-foreign-mlflow", "an MLflow model folder", mkdir("run", files={"MLmodel": "flavors: {}\n",
                                                                            "model.pkl": "x"}), RUN),
        ("rd-foreign-netcdf", "a folder whose posterior.nc is another program's netCDF (data.nc of a run)",
         lambda d, fx: copy_run(mutate=lambda r, f: shutil.copy(r / "data.nc", r / "posterior.nc"))(d, fx),
         ("posterior.nc",)),
    ]
    for cid, what, setup, expect in foreign:
        add(Case(cid + "-cli", "rundir", "CLI", what, expect, setup, ["summary", "run"],
                 needs=("a",) if cid in ("rd-foreign-runjson", "rd-foreign-netcdf") else ()))
    for cid, what, mutate, expect in (
            ("rd-predict-format-99", "run.json format_version 99", m_version(99), ("format",)),
            ("rd-predict-post-truncated", "posterior.nc cut in half", m_truncate("posterior.nc"), ("posterior.nc",)),
            ("rd-predict-data-other-run", "data.nc from another run", m_from("b", "data.nc"),
             ("data.nc|tasks|shape",))):
        add(Case(cid + "-cli", "rundir", "CLI", f"predict RUN: {what}", expect,
                 chain(copy_run(mutate=mutate), data_setup(newframe, "new.csv")), PREDICT,
                 needs=("a", "b") if "other" in cid else ("a",)))
    add(predict_cli("rd-predict-nonrun-cli", "rundir", "predict on a folder that is not a run", RUN,
                    setup=lambda d, fx: (shutil.rmtree(d / "run"), (d / "run").mkdir(),
                                         (d / "run" / "notes.txt").write_text("x")) and None))
    loads = [  # id, what, mutate (None: setup given), expect
        ("rd-load-post-truncated-api", "posterior.nc cut in half", m_truncate("posterior.nc"), ("posterior.nc",)),
        ("rd-load-runjson-garbage-api", "run.json is random bytes", m_bytes("run.json"), ("run.json",)),
        ("rd-load-format-99-api", "format_version 99", m_version(99), ("format",)),
        ("rd-load-modeljson-truncated-api", "model.json cut in half", m_truncate("model.json"), ("model.json",)),
        ("rd-load-data-other-api", "data.nc from another run", m_from("b", "data.nc"), ("data.nc|tasks|shape",)),
        ("rd-load-unreadable-runjson-api", "run.json mode 000", m_chmod("run.json", 0), ("run.json",)),
        ("rd-load-unreadable-folder-api", "the run folder mode 000", m_chmod(None, 0), RUN),
        ("rd-load-datanc-missing-api", "data.nc removed", m_remove("data.nc"), ("data.nc",)),
    ]
    for cid, what, mutate, expect in loads:
        add(api(cid, "rundir", f"bm.load: {what}", expect, lambda d, fx: _bm().load(d / "run"),
                copy_run(mutate=mutate), needs=("a", "b") if "other" in cid else ("a",)))
    add(api("rd-load-missing-api", "rundir", "bm.load of a missing path", RUN,
            lambda d, fx: _bm().load(d / "run")))
    add(api("rd-load-file-api", "rundir", "bm.load of a plain file", RUN, lambda d, fx: _bm().load(d / "run"),
            text_file("run", "x")))
    add(api("rd-load-foreign-api", "rundir", "bm.load of a folder with another tool's run.json + posterior.nc",
            RUN, lambda d, fx: _bm().load(d / "run"),
            copy_run(mutate=lambda r, f: (m_remove("model.json", "data.nc")(r, f),
                                          (r / "run.json").write_text('{"tool": "mlflow"}'))), needs=("a",)))
    add(api("rd-load-post-other-api", "rundir", "bm.load + summary: posterior.nc from another run",
            ("posterior.nc|tasks|shape",), lambda d, fx: _bm().load(d / "run").summary(),
            copy_run(mutate=m_from("b", "posterior.nc")), needs=("a", "b")))

    # ------------------------------------------------------------------ predict with bad frames
    preds = [  # id, what, new, expect
        ("pred-missing-feature", "new.csv without x2", lambda s: newframe(s).drop(columns="x2"), ("x2",)),
        ("pred-feature-text", "x1 = 'abc'", new_cell("x1", "abc"), ("x1",)),
        ("pred-feature-nan", "a blank x1", new_cell("x1", np.nan), ("x1",)),
        ("pred-feature-inf", "x1 = inf", new_cell("x1", np.inf), ("x1",)),
        ("pred-target-text", "a score column holding '?' (not needed to predict)",
         lambda s: newframe(s).assign(score="?"), ("score",)),
        ("pred-noise-col-for-noiseless-run", "columns renamed: X1, X2", lambda s: newframe(s).rename(
            columns={"x1": "X1", "x2": "X2"}), ("x1",)),
    ]
    for cid, what, new, expect in preds:
        add(predict_cli(cid + "-cli", "predict", f"predict: {what}", expect, new=new,
                        tolerate=cid == "pred-target-text"))
    apreds = [  # id, what, new, kwargs, expect
        ("pred-missing-feature-api", "a frame without x2", lambda s: newframe(s).drop(columns="x2"), {}, ("x2",)),
        ("pred-feature-text-api", "x1 = 'abc'", new_cell("x1", "abc"), {}, ("x1",)),
        ("pred-feature-nan-api", "x1 = NaN", new_cell("x1", np.nan), {}, ("x1",)),
        ("pred-feature-bytes-api", "x1 as bytes b'1.0'", lambda s: newframe(s).assign(x1=b"1.0"), {}, ("x1",)),
        ("pred-no-taskcol-api", "a frame without the school column", lambda s: newframe(s).drop(columns="school"),
         {}, ("school",)),
        ("pred-list-api", "a list of dicts", lambda s: newframe(s).to_dict("records"), {}, ("DataFrame",)),
        ("pred-ndarray-api", "a numpy array", lambda s: newframe(s).to_numpy(), {}, ("DataFrame",)),
        ("pred-empty-frame-api", "a frame with the columns and no rows", lambda s: newframe(s).iloc[:0], {},
         ("rows|empty",)),
        ("pred-other-schema-api", "a MultiTaskData with 1 feature (the run has 2)",
         lambda s: api_data(frame(s)[["school", "x1", "score"]]), {}, ("feature|features",)),
    ]
    for cid, what, new, kw, expect in apreds:
        add(api(cid, "predict", f"post.predict: {what}", expect, api_predict(new, **kw), copy_run(), needs=("a",)))

    # ------------------------------------------------------------------ resume
    res = [  # id, what, setup, argv, needs, expect
        ("res-no-ckpt", "resume run: a finished run, no checkpoint", copy_run(), ["resume", "run"], ("a",),
         RUN),
        ("res-missing", "resume nowhere: no such run or checkpoint", None, ["resume", "nowhere"], (), ("nowhere",)),
        ("res-command-garbage", "command.json is '{'", ckpt_setup(command="{"), ["resume", "run"], (),
         ("command.json",)),
        ("res-command-not-fit", "command.json holds a summary command",
         ckpt_setup(argv=["summary", "run"]), ["resume", "run"], (), ("command.json|fit",)),
        ("res-command-cwd-gone", "command.json's cwd no longer exists",
         ckpt_setup(cwd="/nonexistent/place", npz="garbage"),
         ["resume", "run"], (), ("/nonexistent/place",)),
        ("res-command-bad-flags", "command.json's argv has --chains x",
         ckpt_setup(argv=[*FIT, *FAST, "--chains", "x"], npz="garbage"),
         ["resume", "run"], (), ("chains",)),
        ("res-npz-garbage", "svi.npz is random bytes", ckpt_setup(npz="garbage"), ["resume", "run"], (),
         ("svi.npz",)),
        ("res-no-npz", "command.json but no checkpoint file", ckpt_setup(), ["resume", "run"], (),
         ("checkpoint",)),
        ("res-other-fit", "svi.npz of another fit (seed 7; the command has seed 0)", ckpt_setup(npz="fixture"),
         ["resume", "run"], ("ckpt",), ("different fit|seed",)),
        ("res-command-other-out", "command.json's argv writes --out elsewhere",
         ckpt_setup(argv=[*FIT[:-1], "elsewhere", *FAST], npz="garbage"), ["resume", "run"], (),
         ("elsewhere|'run'",)),
    ]
    for cid, what, setup, argv, needs, expect in res:
        add(cli(cid + "-cli", "resume", what, expect, argv, setup, needs=needs))
    ares = [  # id, what, setup, call, needs, expect
        ("res-garbage-api", "resume= a folder whose svi.npz is random bytes",
         chain(mkdir("ck"), lambda d, fx: (d / "ck" / "svi.npz").write_bytes(garbage(fx.seed))), api_resume(), (),
         ("svi.npz",)),
        ("res-empty-folder-api", "resume= an empty folder", mkdir("ck"), api_resume(), (), ("ck",)),
        ("res-missing-api", "resume= a missing folder", None, api_resume(), (), ("ck",)),
        ("res-file-api", "resume= a plain file", text_file("ck", "x"), api_resume(), (), ("ck",)),
        ("res-other-seed-api", "resume= another fit's checkpoint (seed 7 there, 1 now)", copy_ckpt(),
         api_resume(seed=1), ("ckpt",), ("seed",)),
        ("res-other-method-api", "resume= an SVI checkpoint with method='nuts'", copy_ckpt(),
         api_resume(opts=NUTS_API), ("ckpt",), ("svi|checkpoint",)),
        ("res-other-shape-api", "resume= a checkpoint of 3 tasks with data of 4 tasks", copy_ckpt(),
         api_resume(df=lambda s: frame(s, tasks=("north", "south", "east", "west"))), ("ckpt",),
         ("shape|different",)),
        ("res-other-data-api", "resume= a checkpoint with other data of the same shape", copy_ckpt(),
         api_resume(df=lambda s: frame(s + 100)), ("ckpt",), ("data",)),
        ("res-header-format-api", "resume= an npz whose header says format 99",
         npz_setup(header={"format": 99, "fingerprint": {}}), api_resume(), (), ("format",)),
        ("res-no-header-api", "resume= an npz without a header", npz_setup(arrays={"x": np.zeros(3)}),
         api_resume(), (), ("svi.npz",)),
        ("res-pickled-npz-api", "resume= an npz holding a pickled object array",
         npz_setup(arrays={"x": np.array([{"a": 1}], dtype=object)}), api_resume(), (), ("svi.npz",)),
        ("res-truncated-api", "resume= a checkpoint cut in half",
         chain(copy_ckpt(), lambda d, fx: m_truncate("svi.npz")(d / "ck", fx)), api_resume(), ("ckpt",),
         ("svi.npz",)),
        ("res-and-checkpoint-api", "resume= one folder and checkpoint= another", copy_ckpt(),
         api_resume(checkpoint="other"), ("ckpt",), ("resume|checkpoint",)),
    ]
    for cid, what, setup, call, needs, expect in ares:
        add(api(cid, "resume", f"bm.fit({what})", expect, call, setup, needs=needs))

    ids = [c.id for c in C]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids: {dup}"
    return C


# ---------------------------------------------------------------------- running
def _drop_dac() -> None:
    """As root: give up CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (this process and what it execs),
    so file permissions apply as they do to an ordinary user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()
    if libc.capget(ctypes.byref(header), data) == 0:
        mask = ~0b110 & 0xFFFFFFFF
        data[0].effective &= mask
        data[0].permitted &= mask
        data[0].inheritable &= mask
        libc.capset(ctypes.byref(header), data)


def run_cli(argv: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, str, bool]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "bayesmtl.cli", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, encoding="utf-8",
                         errors="replace", start_new_session=True, preexec_fn=_drop_dac)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return p.returncode, out, err, True


def _where(frames) -> str:
    """The innermost frame in bayesmtl (or its models), as path:line in function."""
    mine = [f for f in frames if "/bayesmtl/" in f[0] or f"{REPO}/models/" in f[0]] or list(frames)
    if not mine:
        return ""
    file, line, func = mine[-1]
    try:
        file = str(Path(file).resolve().relative_to(REPO))
    except ValueError:
        file = Path(file).name
    return f"{file}:{line} in {func}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def run_api(call, cwd: Path, fx: Fixtures, timeout: float, private: Path) -> dict:
    """``call(cwd, fx)`` in a forked child (its own process group, permissions as an ordinary
    user): {"raised", "type", "allowed", "message", "where", "warnings"}, {"timeout": True} or
    {"crashed": ...}."""
    result_file = private / f"result-{time.monotonic_ns()}.json"
    out_file = result_file.with_suffix(".out")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.setpgid(0, 0)
            fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(cwd)
            sys.dont_write_bytecode = True
            _drop_dac()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    call(cwd, fx)
                    res = {"raised": False}
                except BaseException as e:  # everything is a result here
                    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(e.__traceback__)]
                    res = {"raised": True, "type": f"{type(e).__module__}.{type(e).__qualname__}",
                           "allowed": isinstance(e, ALLOWED) and not isinstance(e, KeyError),
                           "message": _first_line(e), "where": _where(frames)}
            res["warnings"] = [str(w.message).strip().splitlines()[0] for w in caught
                               if str(w.message).strip() and not issubclass(w.category, DeprecationWarning)]
            result_file.write_text(json.dumps(res))
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    status, timed_out = 0, False
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # workers it may have left behind
    output = out_file.read_text(errors="replace") if out_file.exists() else ""
    if timed_out:
        return {"timeout": True, "output": output}
    if result_file.exists():
        res = json.loads(result_file.read_text())
        res["output"] = output
        return res
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
    return {"crashed": how, "output": output}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: (kind, mode, sha256 of a file's bytes or a link's target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, "")
            else:
                try:
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError as e:
                    digest = f"unreadable: {e.strerror}"
                out[rel] = ("file", st.st_mode & 0o7777, digest)
    return out


def diff(before: dict, after: dict) -> dict[str, list[str]]:
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k])}


def _expected(message: str, expect: tuple[str, ...]) -> bool:
    """Every entry of ``expect`` ("a|b": either) in ``message``, not inside a longer name ("x1" is
    not in "x10", "steps" not in "min_steps", "row" not in "narrow")."""
    def found(alt: str) -> bool:
        before = r"(?<![A-Za-z0-9_])" if re.match(r"\w", alt) else ""
        after = r"(?![A-Za-z0-9_])" if re.match(r"\w", alt[-1]) else ""
        return re.search(before + re.escape(alt) + after, message) is not None
    return all(any(found(alt) for alt in e.split("|")) for e in expect)


def _traceback_line(err: str) -> tuple[str, str]:
    """(the exception line, where) of the last traceback in ``err``."""
    lines = err.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if not starts:
        return "", ""
    block = lines[starts[-1] + 1:]
    frames = []
    exc = ""
    for line in block:
        m = re.match(r'\s+File "([^"]+)", line (\d+), in (.+)', line)
        if m:
            frames.append((m.group(1), int(m.group(2)), m.group(3)))
        elif line and not line.startswith((" ", "\t")) and not exc:
            exc = line
    return exc, _where(frames)


#: what a command asked to write may appear when an input is accepted
OUTPUTS = ("run", "pred.csv")


def _unexpected(changes: dict[str, list[str]]) -> dict[str, list[str]]:
    """``changes`` less the outputs asked for (the run, the predictions)."""
    return {k: [p for p in v if k != "added" or p.split("/")[0] not in OUTPUTS] for k, v in changes.items()}


def _debris_text(changes: dict[str, list[str]]) -> str:
    parts = [f"{k}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}" for k, v in changes.items() if v]
    return "; ".join(parts)


def classify_cli(case: Case, rc, out: str, err: str, timed_out: bool, changes: dict, timeout: float):
    lines = [line for line in err.splitlines() if line.strip()]
    debris = _debris_text(changes)
    if timed_out:
        return "HANG", f"no answer in {timeout:g} s", debris
    if "Traceback (most recent call last)" in err or rc not in (0, 2):
        exc, where = _traceback_line(err)
        first = exc or (lines[-1] if lines else f"exit {rc}, no output")
        return "TRACEBACK", f"exit {rc}: {first}" + (f" (at {where})" if where else ""), debris
    warns = [line for line in lines if line.startswith("bayesmtl: warning:")]
    if rc == 0:
        named = [w for w in warns if _expected(w, case.expect)]
        extra = _unexpected(changes)
        if case.tolerate or (case.warn_ok and named):  # accepted: only the output asked for may appear
            line = named[0] if named else "exit 0 (accepted)"
            return ("DEBRIS" if any(extra.values()) else "CLEAN"), line, _debris_text(extra)
        said = "; ".join(w.removeprefix("bayesmtl: warning: ") for w in warns)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        return "SILENT", f"exit 0: {last}" + (f" [warnings: {said}]" if said else ""), _debris_text(extra)
    errors = [line for line in lines if ERROR_LINE.match(line)]
    first = errors[0] if errors else (lines[0] if lines else "exit 2, no message")
    if any(changes.values()):
        return "DEBRIS", first, debris
    if len(lines) != 1 or not errors:
        return "VAGUE", first + f" [+{len(lines) - 1} other stderr line(s)]", debris
    if not _expected(first, case.expect):
        return "VAGUE", first, debris
    return "CLEAN", first, debris


def classify_api(case: Case, res: dict, changes: dict, timeout: float):
    debris = _debris_text(changes)
    if res.get("timeout"):
        return "HANG", f"no answer in {timeout:g} s", debris
    if "crashed" in res:
        tail = res.get("output", "").strip().splitlines()[-1:] or [""]
        return "TRACEBACK", f"the process died ({res['crashed']}) {tail[0]}", debris
    warns = res.get("warnings", [])
    if not res["raised"]:
        named = [w for w in warns if _expected(w, case.expect)]
        extra = _debris_text(_unexpected(changes))
        if case.tolerate or (case.warn_ok and named):  # accepted: only the output asked for may appear
            return ("DEBRIS" if extra else "CLEAN"), (named[0] if named else "no exception (accepted)"), extra
        said = "; ".join(warns[:3])
        return "SILENT", "no exception" + (f" [warnings: {said}]" if said else ""), extra
    where = f" (at {res['where']})" if res.get("where") else ""
    if not res["allowed"]:
        return "TRACEBACK", f"{res['type']}: {res['message'].split(': ', 1)[-1]}{where}", debris
    if any(changes.values()):
        return "DEBRIS", res["message"], debris
    if not _expected(res["message"], case.expect):
        return "VAGUE", res["message"] + where, debris
    return "CLEAN", res["message"], debris


def run_case(case: Case, fx: Fixtures, root: Path, private: Path, timeout: float) -> dict:
    for name in case.needs:
        fx.path(name)
    d = Path(tempfile.mkdtemp(prefix=f"{case.id}.", dir=root))
    t0 = time.perf_counter()
    setup_error = None
    try:
        if case.setup is not None:
            case.setup(d, fx)
    except Exception as e:  # a broken case, not a finding
        setup_error = f"setup failed: {_first_line(e)}"
    before = snapshot(d)
    argv = None
    if setup_error:
        outcome, line, debris, detail = "ERROR", setup_error, "", {}
    elif case.iface == "CLI":
        argv = case.argv(d, fx) if callable(case.argv) else list(case.argv)
        rc, out, err, timed = run_cli(argv, d, timeout)
        changes = diff(before, snapshot(d))
        outcome, line, debris = classify_cli(case, rc, out, err, timed, changes, timeout)
        detail = {"rc": rc, "stderr_tail": err[-2000:], "stdout_tail": out[-500:], "changes": changes}
    else:
        res = run_api(case.call, d, fx, timeout, private)
        changes = diff(before, snapshot(d))
        outcome, line, debris = classify_api(case, res, changes, timeout)
        detail = {"result": {k: v for k, v in res.items() if k != "output"},
                  "output_tail": res.get("output", "")[-2000:], "changes": changes}
    seconds = time.perf_counter() - t0
    for dirpath, dirnames, _ in os.walk(d):  # make everything removable again
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(Path(dirpath) / name, 0o755)
    with contextlib.suppress(OSError):
        os.chmod(d, 0o755)
    return {"id": case.id, "class": case.klass, "interface": case.iface, "case": case.what, "outcome": outcome,
            "message": line, "expected": list(case.expect), "debris": debris, "seconds": round(seconds, 2),
            "argv": argv, "tolerate": case.tolerate, "warn_ok": case.warn_ok, "folder": str(d), **detail}


def _cell(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def markdown(rows: list[dict]) -> str:
    out = ["| id | class | interface | case | outcome | first line of the error |", "|---|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"] + (f" — DEBRIS: {r['debris']}" if r["debris"] and r["outcome"] != "CLEAN" else "")
        out.append(f"| {r['id']} | {r['class']} | {r['interface']} | {_cell(r['case'], 200)} | {r['outcome']} | "
                   f"{_cell(msg)} |")
    counts = Counter((r["outcome"], r["interface"]) for r in rows)
    out += ["", "| outcome | CLI | API | total |", "|---|---|---|---|"]
    for o in [*OUTCOMES, "ERROR"]:
        cli_n, api_n = counts[(o, "CLI")], counts[(o, "API")]
        if o != "ERROR" or cli_n + api_n:
            out.append(f"| {o} | {cli_n} | {api_n} | {cli_n + api_n} |")
    n_cli = sum(r["interface"] == "CLI" for r in rows)
    out.append(f"| all | {n_cli} | {len(rows) - n_cli} | {len(rows)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", metavar="SUBSTRING",
                   help="run the cases whose id or class contains SUBSTRING (repeatable)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (and of the fixture fits)")
    p.add_argument("--out", type=Path, help="also write the rows as JSON here")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case before it counts as a HANG")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders (printed at the end)")
    a = p.parse_args(argv)

    cases = build_cases()
    if a.only:
        cases = [c for c in cases if any(s in c.id or s in c.klass for s in a.only)]
    if a.list:
        for c in cases:
            print(f"{c.id:40s} {c.klass:13s} {c.iface}  {c.what}")
        print(f"{len(cases)} cases ({sum(c.iface == 'CLI' for c in cases)} CLI, "
              f"{sum(c.iface == 'API' for c in cases)} API)")
        return 0
    if not cases:
        print("no case matches --only", file=sys.stderr)
        return 2

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import bayesmtl  # noqa: F401 - imported once; API cases run in forked children

    root = Path(tempfile.mkdtemp(prefix="bayesmtl-bad-inputs."))
    private = root / ".results"
    private.mkdir()
    fx = Fixtures(root, a.seed, a.timeout)
    rows: list[dict] = []
    t0 = time.perf_counter()
    print(f"bad-input sweep: {len(cases)} cases in {root}"
          f"{' (as root: file permissions enforced by dropping CAP_DAC_*)' if os.geteuid() == 0 else ''}",
          file=sys.stderr, flush=True)
    try:
        for i, case in enumerate(cases, 1):
            try:
                row = run_case(case, fx, root, private, a.timeout)
            except FixtureError as e:  # a fixture could not be built: nothing later would mean anything
                print(f"\n{e}", file=sys.stderr)
                return 3
            rows.append(row)
            print(f"[{i:3d}/{len(cases)}] {row['outcome']:9s} {row['seconds']:6.1f} s  {case.id}: "
                  f"{_cell(row['message'], 150)}", file=sys.stderr, flush=True)
            if not a.keep:
                shutil.rmtree(row["folder"], ignore_errors=True)
    except KeyboardInterrupt:
        print("\ninterrupted: the table holds the cases run so far", file=sys.stderr)
    finally:
        if a.keep:
            print(f"folders kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(markdown(rows))
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1, default=str))
    counts = Counter(r["outcome"] for r in rows)
    print(f"{len(rows)} cases in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{o} {counts[o]}" for o in [*OUTCOMES, "ERROR"] if counts[o]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
