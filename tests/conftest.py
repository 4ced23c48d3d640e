import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def small_space():
    """A fresh small instance of a registered space, by name."""
    import search_spaces

    def build(name: str, **overrides):
        options = {**search_spaces.space_class(name).small_options, **overrides}
        return search_spaces.get(name, **options)

    return build
