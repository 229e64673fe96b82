"""Weight initializers for lamina's `(out_features, in_features)` layout.

Every initializer is a `jax.nn.initializers` function `(key, shape, dtype)`.
`jax.nn.initializers` reads fan-in from axis -2 and fan-out from axis -1,
which is right for the `(in, out)` layout of Flax and stax but backwards for
ours; the variance-scaling ones here pass `in_axis=-1, out_axis=-2` so a
`(out, in)` matrix gets fan_in = in_features.

`torch_linear()` is `Dense`'s default: it draws from the same distribution as
`torch.nn.Linear` (uniform in +-1/sqrt(fan_in)). The `*_normal` variants use a
plain normal, as PyTorch's `xavier_normal_`/`kaiming_normal_` do.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers as _jinit

Initializer = Callable[..., jax.Array]

zeros: Initializer = _jinit.zeros
ones: Initializer = _jinit.ones
constant = _jinit.constant
normal = _jinit.normal


def _scaled(scale: float, mode: str, distribution: str) -> Initializer:
    init = _jinit.variance_scaling(scale, mode, distribution, in_axis=-1, out_axis=-2)

    def checked(key, shape, dtype=jnp.float32):
        # Fans come from the last two axes; a 1-D shape has no fan-out.
        if len(shape) < 2:
            raise ValueError(
                f"lm.initializers: {distribution} variance scaling reads fan-in and "
                f"fan-out from an (out, in) shape, got shape {tuple(shape)}; use "
                f"uniform(), normal() or zeros for biases"
            )
        return init(key, shape, dtype)

    return checked


def torch_linear() -> Initializer:
    """Uniform in +-1/sqrt(fan_in): `torch.nn.Linear`'s weight distribution.

    PyTorch writes it as `kaiming_uniform_(a=sqrt(5))`; the bound works out to
    `sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in)`, variance `1/(3 fan_in)`.
    """
    return _scaled(1.0 / 3.0, "fan_in", "uniform")


def uniform(bound: float) -> Initializer:
    """Uniform in `[-bound, bound)`; `Dense` uses `uniform(1/sqrt(fan_in))` for biases."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_bias(fan_in: int) -> Initializer:
    """Uniform in +-1/sqrt(fan_in): `torch.nn.Linear`'s bias distribution."""
    if isinstance(fan_in, bool) or not isinstance(fan_in, int) or fan_in < 1:
        raise ValueError(f"lm.initializers.torch_bias: fan_in must be an int >= 1, got {fan_in!r}")
    return uniform(1.0 / math.sqrt(fan_in))


def glorot_uniform() -> Initializer:
    """Uniform with variance 2/(fan_in + fan_out) (Glorot & Bengio, 2010)."""
    return _scaled(1.0, "fan_avg", "uniform")


def glorot_normal() -> Initializer:
    """Normal with variance 2/(fan_in + fan_out)."""
    return _scaled(1.0, "fan_avg", "normal")


def he_uniform() -> Initializer:
    """Uniform with variance 2/fan_in (He et al., 2015), for ReLU layers."""
    return _scaled(2.0, "fan_in", "uniform")


def he_normal() -> Initializer:
    """Normal with variance 2/fan_in, for ReLU layers."""
    return _scaled(2.0, "fan_in", "normal")


def lecun_uniform() -> Initializer:
    """Uniform with variance 1/fan_in (LeCun et al., 1998)."""
    return _scaled(1.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """Normal with variance 1/fan_in."""
    return _scaled(1.0, "fan_in", "normal")


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal

__all__ = [
    "Initializer",
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "torch_bias",
    "torch_linear",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]
