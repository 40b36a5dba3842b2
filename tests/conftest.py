import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # arviz 0.23's daily migration notice


@pytest.fixture(autouse=True)
def _one_thread():
    # Pyro's small models run faster and steadier on one thread; restore afterwards
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def small_frame():
    from bayesmtl.synthetic import hierarchical_regression

    df, truth = hierarchical_regression(n_tasks=6, rows=15, features=2, seed=1)
    return df, truth


@pytest.fixture
def shared_data():
    """The shared data folder (``../shared/data`` or ``$BAYESMTL_DATA``); skips, saying so, when absent."""
    from bayesmtl.datasets import data_dir

    try:
        return data_dir()
    except FileNotFoundError:
        pytest.skip("the shared data folder (../shared/data or $BAYESMTL_DATA) is absent")
