"""bayesmtl/convert.py: the summary of draws that are not Markov chains is arviz's, computed
without arviz's per-entry loop."""

import arviz as az
import numpy as np

from bayesmtl.convert import _stats, summary


def test_vectorised_stats_are_arvizs():
    rng = np.random.default_rng(0)
    idata = az.from_dict(posterior={"mu": rng.normal(size=(1, 50, 3)), "w": rng.normal(size=(1, 50, 4, 3)),
                                    "s": rng.gamma(2.0, size=(1, 50))},
                         coords={"task": ["a", "b", "c d", "7"], "feature": ["intercept", "x1", "x2"]},
                         dims={"mu": ["feature"], "w": ["task", "feature"]})
    ref = az.summary(idata, kind="stats", round_to="none")
    mine = _stats(idata.posterior, None)
    assert list(mine.index) == list(ref.index)
    np.testing.assert_allclose(mine[["mean", "sd"]].to_numpy(), ref[["mean", "sd"]].to_numpy(), rtol=1e-12)
    out = summary(idata, ["w"], prob=0.8, chains=False)
    assert list(out.index) == [i for i in ref.index if i.startswith("w[")]
    assert np.isnan(out["ess_bulk"]).all() and np.isnan(out["r_hat"]).all()
    w = idata.posterior["w"].values.reshape(50, -1)
    np.testing.assert_allclose(out["q10"].to_numpy(), np.quantile(w, 0.1, axis=0))
