"""The sinusoidal embedding of a diffusion timestep, as DDPM and diffusers compute it.

A diffusion model is told how much noise its input carries by the timestep
`t`. A number on its own is a poor input to a network; the embedding turns
it into `num_channels` values, sines and cosines of `t` at geometrically
spaced frequencies, so that nearby timesteps look alike and distant ones
differ. It holds no params; a `Dense` stack usually follows.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Annotated, Any

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check, Count, Flag, Positive


def _real(where: str, arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise layer_error(where, f"{arg} must be a number, got {value!r}", TypeError)
    return float(value)


class Timesteps(Builtin):
    """Sinusoidal embedding of a timestep, as diffusers' `Timesteps` (`get_timestep_embedding`).

    With `half = num_channels // 2` and frequencies
    `f_i = exp(-log(max_period) * i / (half - downscale_freq_shift))`, a
    timestep `t` becomes `[sin(scale * t * f), cos(scale * t * f)]` (cosines
    first with `flip_sin_to_cos`), and a zero last when `num_channels` is
    odd. A timestep per example has shape `()`; any shape `(...)` gives
    `(..., num_channels)`. DDPM's U-Net (diffusers' `UNet2DModel`) uses
    `flip_sin_to_cos=True, downscale_freq_shift=0`.

    Args:
      num_channels: the size of the embedding, >= 1.
      flip_sin_to_cos: cosines first.
      downscale_freq_shift: subtracted from `half` in the frequencies'
        denominator (diffusers' default 1; 0 in DDPM's U-Net).
      scale: multiplies the arguments of sin and cos, > 0.
      max_period: the longest period, > 0.

    A `Layer` without params.

    Raises:
      TypeError: a bad kind of argument; at apply, timesteps that are not
        numbers.
      ValueError: `num_channels // 2 == downscale_freq_shift` (the
        frequencies would divide by zero).

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> emb = lm.Timesteps(4, flip_sin_to_cos=True, downscale_freq_shift=0)
      >>> emb.apply((), jnp.float32(0.0))
      Array([1., 1., 0., 0.], dtype=float32)
    """

    num_channels: Count
    _: dataclasses.KW_ONLY
    flip_sin_to_cos: Flag = False
    downscale_freq_shift: Annotated[float, Check(_real)] = 1.0
    scale: Positive = 1.0
    max_period: Positive = 10000.0

    stochastic = False
    batch_polymorphic = True

    def check_config(self):
        if self.num_channels // 2 == self.downscale_freq_shift:
            raise layer_error(
                f"Timesteps({self.num_channels})",
                f"num_channels // 2 = {self.num_channels // 2} equals downscale_freq_shift, so "
                f"the frequencies would divide by zero",
            )

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.num_channels,)

    def check_input(self, x, params):
        x = jnp.asarray(x)
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise layer_error(self.name, f"expected timesteps as numbers, got dtype {x.dtype}",
                              TypeError)
        return x

    def forward(self, params, state, t, *, key, train):
        half = self.num_channels // 2
        exponent = (-math.log(self.max_period) * jnp.arange(half, dtype=jnp.float32)
                    / (half - self.downscale_freq_shift))
        freqs = jnp.exp(exponent).reshape((1,) * t.ndim + (half,))
        angles = self.scale * (t.astype(jnp.float32)[..., None] * freqs)
        parts = [jnp.sin(angles), jnp.cos(angles)]
        if self.flip_sin_to_cos:
            parts.reverse()
        if self.num_channels % 2:
            parts.append(jnp.zeros(angles.shape[:-1] + (1,), jnp.float32))
        return jnp.concatenate(parts, axis=-1), state
