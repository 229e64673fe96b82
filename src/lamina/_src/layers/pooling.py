"""Pooling: summarise each window of an image by its largest or mean value.

Pooling has no weights. It shrinks the spatial axes of one channels-first
example, `(C, L)`, `(C, H, W)` or `(C, D, H, W)`, channel by channel, so
later layers see a larger part of the input for the same kernel size, and a
small shift of the input moves the output less.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, size
from lamina._src.core.errors import layer_error
from lamina._src.layers.conv import (
    OptionalWindow,
    Padding,
    Window,
    check_example,
    check_output_size,
    per_axis,
    spatial_rank,
)


class _Pool(Builtin):
    """What `MaxPool` and `AvgPool` share; the subclasses differ in `_reduce`."""

    window: Window
    stride: OptionalWindow = None
    padding: Padding = 0

    stochastic = False

    def check_config(self):
        kind = type(self).__name__
        n = spatial_rank(kind, window=self.window, stride=self.stride, padding=self.padding) or 1
        if any(2 * p > k for p, k in zip(per_axis(self.padding, n), per_axis(self.window, n))):
            # torch refuses it too: a window could then hold only padding.
            raise layer_error(
                kind,
                f"padding must be at most half the window, as in torch; got "
                f"padding={self.padding!r}, window={self.window!r}",
            )

    @property
    def name(self) -> str:
        return repr(self)

    def _rank(self) -> Optional[int]:
        return spatial_rank(self.name, window=self.window, stride=self.stride, padding=self.padding)

    def _settings(self, shape: tuple[int, ...], what: str):
        n = check_example(self.name, shape, self._rank(), what)
        window = per_axis(self.window, n)
        stride = window if self.stride is None else per_axis(self.stride, n)
        padding = per_axis(self.padding, n)
        out = tuple(
            (size_ + 2 * p - k) // s + 1
            for size_, k, s, p in zip(shape[1:], window, stride, padding)
        )
        check_output_size(
            self.name, shape, out, "the padded input must be at least as large as the window"
        )
        return window, stride, padding, (shape[0],) + out

    def output_shape(self, input_shape):
        return self._settings(input_shape, "input_shape")[-1]

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self._settings(x.shape, "x with shape")
        return x

    def forward(self, params, state, x, *, key, train):
        window, stride, padding, _ = self._settings(x.shape, "x with shape")
        # Reduced channels-last: XLA:CPU then fuses a conv -> relu -> pool
        # chain into one kernel, where channels-first splits it around
        # transposes (2.7x slower for the benchmark CNN, benchmarks/README.md).
        y = self._reduce(jnp.moveaxis(x, 0, -1), window + (1,), stride + (1,),
                         tuple((p, p) for p in padding) + ((0, 0),))
        return jnp.moveaxis(y, -1, 0), state

    def _reduce(self, x, window, stride, padding) -> jax.Array:
        raise NotImplementedError


class MaxPool(_Pool):
    """The largest value in each window, per channel, as `torch.nn.MaxPool1d/2d/3d`.

    Args:
      window: the window size, an int for every spatial axis or a tuple with
        one int per axis, >= 1.
      stride: step between windows; `None` (the default) means the window,
        so windows do not overlap.
      padding: `-inf` added on both sides of each spatial axis (so padding
        never wins), at most half the window, as in torch.

    A layer without params mapping `(C, *spatial)` to `(C, *out_spatial)`,
    with `out = (n + 2 * padding - window) // stride + 1` on each axis.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.MaxPool(2).apply((), jnp.arange(16.0).reshape(1, 4, 4))
      Array([[[ 5.,  7.],
              [13., 15.]]], dtype=float32)
    """

    def _reduce(self, x, window, stride, padding):
        return lax.reduce_window(
            x, np.array(-np.inf, x.dtype), lax.max, window, stride, padding
        )

    def flops(self, step):
        # window - 1 comparisons per output value
        window = step.input.ndim - 1
        return size(step.output.shape) * (math.prod(per_axis(self.window, window)) - 1)


class AvgPool(_Pool):
    """The mean of each window, per channel, as `torch.nn.AvgPool1d/2d/3d`.

    Zero padding counts towards the mean (torch's `count_include_pad=True`):
    every window's sum is divided by the window's size.

    Args:
      window: the window size, an int or a tuple with one int per spatial
        axis, >= 1.
      stride: step between windows; `None` (the default) means the window.
      padding: zeros added on both sides of each spatial axis, at most half
        the window, as in torch.

    A layer without params mapping `(C, *spatial)` to `(C, *out_spatial)`,
    with `out = (n + 2 * padding - window) // stride + 1` on each axis.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.AvgPool(2).apply((), jnp.arange(16.0).reshape(1, 4, 4))
      Array([[[ 2.5,  4.5],
              [10.5, 12.5]]], dtype=float32)
    """

    def _reduce(self, x, window, stride, padding):
        total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, stride, padding)
        return total / math.prod(window)

    def flops(self, step):
        # window - 1 additions and one division per output value
        window = step.input.ndim - 1
        return size(step.output.shape) * math.prod(per_axis(self.window, window))


class GlobalAvgPool(Builtin):
    """The mean of each channel over all spatial positions: `(C, *spatial) -> (C,)`.

    The usual last step of a CNN before its classifier, as
    `torch.nn.AdaptiveAvgPool2d(1)` followed by `torch.nn.Flatten()`.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.GlobalAvgPool().apply((), jnp.arange(8.0).reshape(2, 2, 2))
      Array([1.5, 5.5], dtype=float32)
    """

    name = "GlobalAvgPool()"
    stochastic = False

    def output_shape(self, input_shape):
        check_example(self.name, input_shape, None, "input_shape")
        return input_shape[:1]

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        check_example(self.name, x.shape, None, "x with shape")
        return x

    def forward(self, params, state, x, *, key, train):
        return jnp.mean(x, axis=tuple(range(1, x.ndim))), state

    def flops(self, step):
        # one addition per value, then one division per channel
        return size(step.input.shape)
