"""One SVI fit, run by ``test_distributed.py`` alone and under torchrun: rank 0 writes the
population's draws and ``info["distributed"]`` to ``<out>.npz`` and ``<out>.json``.

    python tests/_distributed_fit.py OUT ENGINE BAD     (ENGINE: flat or pyro; BAD: 1 = rank 1's data differ)
"""

import json
import os
import sys
import warnings

import numpy as np

import bayesmtl as bm
from bayesmtl.synthetic import hierarchical_regression

out, engine, bad = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rank = int(os.environ.get("RANK", "0"))
df, _ = hierarchical_regression(n_tasks=15, rows=10, features=1, seed=0)
if bad and rank == 1:
    df = df.iloc[:-1]
data = bm.MultiTaskData.from_frame(df, task="task", target="y")
warnings.simplefilter("ignore")
post = bm.fit(bm.models.Hierarchical(), data, method="svi", seed=0, draws=400, progress=False, steps=800,
              min_steps=800, anneal=200, compile="inductor" if engine == "flat" else None)
if rank == 0:
    np.savez(out + ".npz", mu=post.samples["mu"], tau=post.samples["tau"])
    with open(out + ".json", "w") as f:
        json.dump({"distributed": post.info.get("distributed"), "path": post.info["path"],
                   "compile": post.info.get("compile")}, f)
