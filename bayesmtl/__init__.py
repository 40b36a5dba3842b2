"""bayesmtl: Bayesian multi-task learning on Pyro and GPyTorch.

data -> model (task prior + likelihood) -> back end -> posterior -> relations and plots.
"""

__version__ = "0.1.0"

from . import diagnostics, likelihoods, priors  # noqa: E402
from .compare import compare  # noqa: E402
from .data import MultiTaskData  # noqa: E402
from .diagnostics import DiagnosticWarning  # noqa: E402
from .fit import fit  # noqa: E402
from .model import MultiTaskModel  # noqa: E402
from .posterior import Posterior  # noqa: E402
from .predictive import prior_predictive  # noqa: E402
from .relations import TaskRelations  # noqa: E402
from .report import report  # noqa: E402
from .streamed import StreamedData  # noqa: E402


def load(path, trust_pickle: bool = False, trust_code: bool = False, classes=None, modules=None):
    """A Posterior from a run directory written by ``Posterior.save``; no code in the directory
    runs (see ``bayesmtl.runs.load_run`` for ``trust_pickle``, ``trust_code``, ``classes`` and
    ``modules``)."""
    from .runs import load_run

    return load_run(path, trust_pickle=trust_pickle, trust_code=trust_code, classes=classes, modules=modules)


def __getattr__(name):
    if name == "models":  # bayesmtl.models is a separate subpackage (models/ in the repo)
        import importlib

        return importlib.import_module("bayesmtl.models")
    raise AttributeError(f"module 'bayesmtl' has no attribute {name!r}")


__all__ = ["MultiTaskData", "StreamedData", "MultiTaskModel", "Posterior", "TaskRelations", "DiagnosticWarning",
           "compare", "report", "fit", "load", "prior_predictive", "priors", "likelihoods", "diagnostics", "models",
           "__version__"]
