"""Small numeric helpers shared by the supernets."""

from __future__ import annotations


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to a multiple of ``divisor`` (never below ``min_value``, never >10 % down).

    The MobileNet rounding rule; OFA channel counts, and so checkpoint shapes, depend on it exactly.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def same_padding(kernel_size: int) -> int:
    """Padding that keeps the spatial size of an odd-kernel, stride-1 convolution."""
    return kernel_size // 2


def conv_output_size(size: int, kernel_size: int, stride: int) -> int:
    """Spatial output size of a convolution with ``same_padding``."""
    return (size + 2 * same_padding(kernel_size) - kernel_size) // stride + 1
