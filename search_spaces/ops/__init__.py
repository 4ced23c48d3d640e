"""Building blocks shared by the supernets: static layers, elastic (dynamic) layers, BatchNorm
re-calibration and counting on built modules. One concept per module."""
