"""Tutorial: seven robot joints, one multi-task Gaussian process (Bonilla et al. 2008 ICM).

Walked through in docs/tutorials/multitask-gp-sarcos.md. Each of the 7 joint torques of a
SARCOS robot arm is a task with the same 21 inputs (joint positions, velocities and
accelerations). The intrinsic coregionalisation model (ICM) shares one input kernel and learns
a 7 x 7 task covariance, so a torque is predicted from the others' data too.

    .venv/bin/python examples/tutorials/multitask_gp_sarcos.py --out runs/tutorial-sarcos
    .venv/bin/python examples/tutorials/multitask_gp_sarcos.py --smoke      # tiny settings (CI)

Writes scores.csv and the figures task_correlation.png and predictions.png to ``--figures``
(default: ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import bayesmtl as bm
from bayesmtl.datasets import sarcos, sarcos_long


def spread(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """n rows spread evenly over the trajectory (the first n would cover only its start)."""
    return frame.iloc[np.linspace(0, len(frame) - 1, min(n, len(frame))).round().astype(int)]


def predictions_figure(pred: pd.DataFrame, test: pd.DataFrame, joints: list[str], path: Path) -> None:
    """Observed torque and the 90% predictive band along a stretch of the test trajectory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(joints), 1, figsize=(7.0, 2.2 * len(joints)), sharex=True)
    for ax, joint in zip(np.atleast_1d(axes), joints, strict=True):
        m = (test["joint"] == joint).to_numpy()
        rows = np.flatnonzero(m)[:80]
        x = np.arange(len(rows))
        ax.fill_between(x, pred["q05"].to_numpy()[rows], pred["q95"].to_numpy()[rows], color="C0", alpha=0.25,
                        label="90% predictive interval")
        ax.plot(x, pred["mean"].to_numpy()[rows], color="C0", lw=1, label="predictive mean")
        ax.plot(x, test["torque"].to_numpy()[rows], "k.", ms=3, label="observed")
        ax.set_ylabel(joint)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper right", ncol=3)
    np.atleast_1d(axes)[-1].set_xlabel("test input (in trajectory order)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=400, help="training inputs (each gives 7 torques)")
    p.add_argument("--test", type=int, default=400, help="test inputs")
    p.add_argument("--rank", type=int, default=None, help="rank of the task covariance (default: full, 7 tasks)")
    p.add_argument("--steps", type=int, default=50, help="L-BFGS steps of the type-II ML fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/tutorial-sarcos)")
    p.add_argument("--figures", type=Path, default=None, help="folder for the figures (default --out)")
    p.add_argument("--smoke", action="store_true", help="tiny settings: 100 inputs, 3 L-BFGS steps")
    a = p.parse_args(argv)
    torch.set_num_threads(2)  # GPyTorch's solves use a second thread well
    if a.smoke:
        a.train, a.test, a.steps = 100, 100, 3
    out = a.out or (Path(tempfile.mkdtemp()) if a.smoke else Path("runs/tutorial-sarcos"))
    figures = a.figures or out
    for folder in (out, figures):
        folder.mkdir(parents=True, exist_ok=True)

    wide_train, wide_test = sarcos()
    train, test = sarcos_long(spread(wide_train, a.train)), sarcos_long(spread(wide_test, a.test))
    data = bm.MultiTaskData.from_frame(train, task="joint", target="torque", standardize=True)
    print(data)
    # type-II ML ("map", the model's default): kernel, noise and task covariance at their
    # most probable values; `method="nuts"` samples them instead (slower, see the tutorial)
    post = bm.fit(bm.models.MultitaskGP(rank=a.rank), data, steps=a.steps, seed=a.seed, device=a.device,
                  progress=False)
    pred = post.predict(test, seed=a.seed)
    rows = []
    for joint, part in test.groupby("joint"):
        m = (test["joint"] == joint).to_numpy()
        y, mu = part["torque"].to_numpy(), pred["mean"].to_numpy()[m]
        inside = (pred["q05"].to_numpy()[m] <= y) & (y <= pred["q95"].to_numpy()[m])
        rows.append({"joint": joint, "SMSE": float(np.mean((y - mu) ** 2) / np.var(y)),
                     "90% coverage": float(inside.mean())})
    scores = pd.DataFrame(rows)
    print("standardised mean squared error (1 = predicting the mean) per joint\n"
          + scores.round(4).to_string(index=False))
    rel = post.relations()  # the learned task correlation (a point estimate under type-II ML)
    print("task correlation\n" + rel.mean().round(2).to_string())
    rel.plot(figures / "task_correlation.png", title="learned correlation of the 7 joint torques")
    predictions_figure(pred, test, ["joint_1", "joint_5"], figures / "predictions.png")
    scores.to_csv(out / "scores.csv", index=False)
    print(f"wrote {out}" + (f" and figures to {figures}" if figures != out else ""))
    return scores


if __name__ == "__main__":
    main()
