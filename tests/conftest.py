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


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    """``npz:PATH`` of 150 real digits (15 per class), stored as 8x8 uint8 images: seconds to train on."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.concatenate([np.flatnonzero(digits.target == c)[:15] for c in range(10)])
    path = tmp_path_factory.mktemp("data") / "tiny_digits.npz"
    np.savez(path, x=(digits.images[index] * 15).astype(np.uint8), y=digits.target[index])
    return f"npz:{path}"


@pytest.fixture
def tiny_ofa():
    """Options of a small OFA-MBv3 (10 classes) that trains in seconds on ``tiny_digits``."""
    return {"n_classes": 10, "width_mult": 0.25, "ks_list": [3, 5], "expand_ratio_list": [3, 4],
            "depth_list": [1, 2], "resolutions": [32, 36]}


@pytest.fixture
def cli(capsys):
    """``cli(argv) -> (exit code, stdout, stderr)`` of the ``nas`` command line, run in-process."""
    from nas.cli import main

    def run(argv):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out, err = capsys.readouterr()
        return exit_info.value.code or 0, out, err

    return run
