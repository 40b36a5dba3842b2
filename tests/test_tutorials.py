"""Every tutorial script runs on tiny settings (``--smoke``), and its page in docs/tutorials
embeds only figures the script writes, all of them committed.

A tutorial is ``examples/tutorials/<name>.py`` with its page ``docs/tutorials/<name with ->.md``
and its figures in ``docs/tutorials/figures/<page>/`` (made by the full run the page names).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples" / "tutorials").glob("*.py"))
FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)]+)\)")


def page(script: Path) -> Path:
    return ROOT / "docs" / "tutorials" / (script.stem.replace("_", "-") + ".md")


def embedded(script: Path) -> list[str]:
    """Figure file names the page shows, e.g. ['shrinkage.png', 'ppc.png']."""
    return [Path(m).name for m in FIGURE.findall(page(script).read_text())]


#: tutorials whose smoke run takes most of a minute: the slow tier (the fast tier stays under 10 minutes)
SLOW = {"dp_landmine", "task_relationship_survey"}


def test_every_tutorial_has_a_page_with_committed_figures():
    assert len(SCRIPTS) >= 4, [p.name for p in SCRIPTS]
    for script in SCRIPTS:
        assert page(script).exists(), f"{script.name} has no page {page(script).relative_to(ROOT)}"
        names = embedded(script)
        assert names, f"{page(script).name} embeds no figure"
        folder = ROOT / "docs" / "tutorials" / "figures" / page(script).stem
        missing = [n for n in names if not (folder / n).is_file()]
        assert not missing, f"{page(script).name} embeds {missing}, absent from {folder.relative_to(ROOT)}"
        assert f"examples/tutorials/{script.name}" in page(script).read_text(), f"{page(script).name} names no script"


@pytest.mark.parametrize("script", [pytest.param(p, id=p.stem, marks=pytest.mark.slow if p.stem in SLOW else ())
                                    for p in SCRIPTS])
def test_tutorial_runs_and_writes_its_figures(script: Path, tmp_path: Path, shared_data):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), "--smoke", "--seed", "0", "--device", "cpu",
                           "--out", str(tmp_path / "out"), "--figures", str(tmp_path / "figures")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    written = {p.name for p in (tmp_path / "figures").iterdir() if p.stat().st_size > 1000}
    missing = set(embedded(script)) - written
    assert not missing, f"{script.name} --smoke did not write {sorted(missing)} (wrote {sorted(written)})"
    assert any(p.suffix == ".csv" for p in (tmp_path / "out").iterdir()), "no table written under --out"
