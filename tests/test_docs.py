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
