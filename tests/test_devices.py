"""bayesmtl/devices.py: a fit does not depend on the caller's default device.

A notebook may have called ``torch.set_default_device("cuda")``. Engine code makes host tensors
without naming a device, so each public entry point runs with the CPU as the default and a
model's program with the data's device (``protocol.data_context``). Run under a default of
"meta" (tensors with no data, which fail on first use beside real ones), any entry point that
left the caller's default in place fails here. (What this cannot show on a CPU: a host tensor
meeting a CUDA one inside a model's program, the bug the H200 run found; the CUDA tests cover it.)"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bayesmtl as bm
from bayesmtl.devices import default_device, on_device, on_host
from bayesmtl.synthetic import hierarchical_regression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from custom_priors import build, planted  # noqa: E402

QUICK_NUTS = dict(chains=2, warmup=60, draws=40, max_tree_depth=4)
SVI = dict(steps=300, min_steps=100, draws=50)
CASES = {  # (problem, method, settings, in the fast tier)
    "hierarchical-svi": ("hier", "svi", SVI, True),
    "hierarchical-nuts": ("hier", "nuts", QUICK_NUTS, True),
    "hierarchical-nuts-plain": ("hier", "nuts", dict(QUICK_NUTS, collapse=False), True),
    "logistic-nuts": ("logistic", "nuts", QUICK_NUTS, True),
    "user-prior-chees": ("student-t", "chees", dict(chains=4, warmup=60, draws=40), True),
    "user-prior-svi": ("covariates", "svi", SVI, False),
    "task-relationship-svi": ("mtrl", "svi", SVI, False),
    "gp-map": ("gp", "map", dict(steps=40), True),
}


def _problem(kind: str):
    if kind in ("student-t", "covariates"):
        train, new, _ = planted(kind, n_tasks=6, rows=8, seed=1, new_tasks=2)
        model, data = build(kind, train)
        return model, data, new
    lik = "bernoulli" if kind == "logistic" else "gaussian"
    df, _ = hierarchical_regression(n_tasks=5, rows=16, features=1, seed=0, likelihood=lik)
    data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    model = {"hier": bm.models.Hierarchical(), "logistic": bm.models.Hierarchical("bernoulli"),
             "mtrl": bm.models.TaskRelationship(), "gp": bm.models.MultitaskGP(rank=2)}[kind]
    return model, data, df.head(6)


def _run(model, data, new, method: str, kw: dict, tmp: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short runs
        post = bm.fit(model, data, method=method, seed=0, progress=False, **kw)
        pred = post.predict(new, seed=0)
        post.summary(), post.to_arviz(), post.relations()
        post.save(tmp)
        again = bm.load(tmp).predict(new, seed=0)
    return post, pred, again


@pytest.mark.parametrize("case", [pytest.param(k, marks=() if CASES[k][3] else pytest.mark.slow)
                                  for k in sorted(CASES)])
def test_a_fit_does_not_depend_on_the_callers_default_device(case, tmp_path):
    """The same seed gives the same draws and predictions with the caller's default device set to
    "meta" as with the CPU's; predict, summary, to_arviz, relations and save/load all run."""
    kind, method, kw, _ = CASES[case]
    model, data, new = _problem(kind)  # (a prior's constants are made where its constructor runs)
    ref, ref_pred, _ = _run(model, data, new, method, kw, tmp_path / "cpu")
    with torch.device("meta"):
        post, pred, again = _run(model, data, new, method, kw, tmp_path / "meta")
    assert default_device().type == "cpu"
    for name in ref.samples:
        np.testing.assert_array_equal(np.asarray(post.samples[name]), np.asarray(ref.samples[name]), err_msg=name)
    np.testing.assert_allclose(pred["mean"], ref_pred["mean"])
    np.testing.assert_allclose(again["mean"], pred["mean"])


def test_data_made_under_another_default_device_live_on_the_host():
    df, _ = hierarchical_regression(n_tasks=3, rows=5, features=1, seed=0)
    with torch.device("meta"):
        data = bm.MultiTaskData.from_frame(df, task="task", target="y")
    assert data.device.type == "cpu" and data.y.device.type == "cpu"


def test_contexts_are_pushed_only_where_the_default_differs():
    """A device context intercepts every torch call inside it: none where the default is already right."""
    from torch.overrides import _get_current_function_mode_stack

    before = len(_get_current_function_mode_stack())
    with on_host(), on_device("cpu"):
        assert len(_get_current_function_mode_stack()) == before
    with torch.device("meta"):
        inner = len(_get_current_function_mode_stack())
        with on_host():
            assert default_device().type == "cpu" and len(_get_current_function_mode_stack()) == inner + 1


def test_per_task_sums_go_through_add_at():
    """On CUDA ``index_add_`` adds with atomics, in a different order on every call, and the same
    seed then gives different draws (found on an H200). Package code sums per task with
    ``design.add_at``, which is repeatable there; only design.py itself calls ``index_add``."""
    root = Path(__file__).resolve().parents[1]
    files = [p for folder in ("bayesmtl", "models") for p in (root / folder).rglob("*.py") if p.name != "design.py"]
    offenders = [f"{p.relative_to(root)}:{i}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1) if ".index_add" in line.split("#")[0]]
    assert not offenders, f"use design.add_at, not index_add, at {offenders}"
