"""Every example script runs end to end with ``--smoke`` (tiny settings) and writes its outputs.

Examples that read ``../shared/data`` are skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_every_example_is_collected():
    assert len(EXAMPLES) >= 4, [p.name for p in EXAMPLES]


#: smoke-tested in the fast tier; the rest (the same code paths on other data, 25-35 s each) run with -m slow
FAST_EXAMPLES: set[str] = set()  # every example is a 25-35 s smoke: the slow tier (test_docs runs the guide's code)


@pytest.mark.parametrize("script", [pytest.param(p, marks=() if p.stem in FAST_EXAMPLES else pytest.mark.slow)
                                    for p in EXAMPLES], ids=[p.stem for p in EXAMPLES])
def test_example_smoke(script: Path, tmp_path: Path, shared_data):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--seed", "0", "--device", "cpu",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written, f"{script.name} --smoke wrote nothing under --out"
    assert any(p.suffix == ".csv" for p in written), [p.name for p in written]


@pytest.mark.slow  # keeps the fast tier under 10 minutes; fast siblings cover the path
def test_sarcos_with_tasks_at_different_inputs(tmp_path: Path, shared_data):
    """``--observed``: each torque sees its own subset of the inputs, so ICM takes the Hadamard path."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "sarcos.py"), "--smoke", "--observed", "0.5",
                           "--hierarchical", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(75 observed per torque)" in proc.stdout and "hadamard path" in proc.stdout, proc.stdout
    table = pd.read_csv(tmp_path / "table.csv", index_col=0)
    assert {"ICM rank 1", "hierarchical GP"} <= set(table.index)
    assert (table["SMSE"] < 1).all(), table  # every model beats predicting the training mean
    bad = subprocess.run([sys.executable, str(ROOT / "examples" / "sarcos.py"), "--smoke", "--observed", "0",
                          "--out", str(tmp_path / "bad")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "--observed must lie in (0, 1]" in bad.stderr
