"""The wheel ships every subpackage: pyproject.toml lists packages by hand, and a folder left
out installs in editable mode (the source tree is on the path) but not from a wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bayesmtl").rglob("__init__.py")}
    if (ROOT / config["package-dir"]["bayesmtl.models"] / "__init__.py").exists():
        found.add("bayesmtl.models")
    assert found - listed == set(), f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"
    assert listed - found == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - found)}"
