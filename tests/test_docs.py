"""Every ```python block of docs/extending.md runs on its own, top to bottom, in a fresh
interpreter (cwd the repository root), and exits 0. One test per block, named after its section.

Blocks fenced as ```py are sketches the guide says are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"
FENCE = re.compile(r"^```python\n(.*?)^```\s*$", re.S | re.M)
HEADING = re.compile(r"^##\s+(.+)$", re.M)


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(id, code) per ```python block; the id is the section's heading, slugged, and the block's
    number in the guide."""
    out = []
    for n, m in enumerate(FENCE.finditer(text), 1):
        heads = [h.group(1) for h in HEADING.finditer(text, 0, m.start())]
        slug = re.sub(r"[^a-z0-9]+", "-", heads[-1].lower()).strip("-0123456789") if heads else "top"
        out.append((f"block{n}-{slug[:40].strip('-')}", m.group(1)))
    return out


BLOCKS = python_blocks(GUIDE.read_text())


def test_guide_has_its_blocks():
    assert len(BLOCKS) >= 6, [i for i, _ in BLOCKS]


@pytest.mark.parametrize("code", [c for _, c in BLOCKS], ids=[i for i, _ in BLOCKS])
def test_block_runs(code):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, (f"block exited {proc.returncode}\n--- stderr ---\n{proc.stderr[-6000:]}"
                                  f"\n--- stdout ---\n{proc.stdout[-2000:]}")


def test_docs_build_strictly(tmp_path):
    """``mkdocs build --strict``: every page in the nav, every link and anchor resolves, and the
    API reference renders from the docstrings without a warning."""
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("MultiTaskData", "Posterior", "TaskRelations", "DPClustering", "MultitaskGP", "TaskPrior"):
        assert name in api, f"the API reference lacks {name}"


@pytest.mark.slow  # the page's own settings: NUTS 4 x (1000 + 1000) on the school scores, twice
def test_getting_started_runs_as_written(tmp_path, shared_data):
    """The first-fit section of docs/getting-started.md, run as a reader would: its bash block
    (write the CSVs, fit, summary, predict, report) and then its python block, in one folder."""
    text = (ROOT / "docs" / "getting-started.md").read_text()
    section = text[text.index("## Your first fit on your own data"):text.index("## What you get back")]
    bash = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    code = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert len(bash) == 2 and len(code) == 1, (len(bash), len(code))
    venv = str(Path(sys.executable).parent) + "/"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    for block in bash:
        script = block.replace(".venv/bin/", venv)
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"{script}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert (tmp_path / "preds.csv").exists() and (tmp_path / "school.html").exists()
    proc = subprocess.run([sys.executable, "-c", code[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "runs" / "school-py" / "run.json").exists()
