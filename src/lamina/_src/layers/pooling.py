"""Pooling: summarise each window of an image by its largest or mean value.

Pooling has no weights. It shrinks the spatial axes of one channels-first
example, `(C, L)`, `(C, H, W)` or `(C, D, H, W)`, channel by channel, so
later layers see a larger part of the input for the same kernel size, and a
small shift of the input moves the output less.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_count, check_float_input, size
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check, Flag
from lamina._src.layers.windows import (
    IntOrTuple,
    OptionalWindow,
    Padding,
    Window,
    check_example,
    check_output_size,
    int_or_tuple,
    per_axis,
    spatial_rank,
)


class _Pool(Builtin):
    """What `MaxPool` and `AvgPool` share; the subclasses differ in `_reduce`."""

    window: Window
    stride: OptionalWindow = None
    padding: Padding = 0
    ceil_mode: Flag = False

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
        out = tuple(_out_size(size_, k, s, p, self.ceil_mode)
                    for size_, k, s, p in zip(shape[1:], window, stride, padding))
        check_output_size(
            self.name, shape, out, "the padded input must be at least as large as the window"
        )
        # The high side pads as far as the last window reaches: under
        # ceil_mode that can be past the padding, a part AvgPool never counts.
        pads = tuple((p, max(p, (o - 1) * s + k - size_ - p))
                     for size_, k, s, p, o in zip(shape[1:], window, stride, padding, out))
        return window, stride, pads, (shape[0],) + out

    def output_shape(self, input_shape):
        return self._settings(input_shape, "input_shape")[-1]

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self._settings(x.shape, "x with shape")
        return x

    def forward(self, params, state, x, *, key, train):
        window, stride, pads, out = self._settings(x.shape, "x with shape")
        # Reduced channels-last: XLA:CPU then fuses a conv -> relu -> pool
        # chain into one kernel, where channels-first splits it around
        # transposes (2.7x slower for the benchmark CNN, benchmarks/README.md).
        y = self._reduce(jnp.moveaxis(x, 0, -1), window + (1,), stride + (1,), pads + ((0, 0),))
        return jnp.moveaxis(y, -1, 0), state

    def _reduce(self, x, window, stride, pads) -> jax.Array:
        raise NotImplementedError


def _out_size(n: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """torch's pooling output size: windows from the padded start, the last one
    partial under ceil_mode as long as it starts inside the input or its left padding."""
    span = n + 2 * p - k
    if span < 0:
        return 0
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return out


class MaxPool(_Pool):
    """The largest value in each window, per channel, as `torch.nn.MaxPool1d/2d/3d`.

    Args:
      window: the window size, an int for every spatial axis or a tuple with
        one int per axis, >= 1.
      stride: step between windows; `None` (the default) means the window,
        so windows do not overlap.
      padding: `-inf` added on both sides of each spatial axis (so padding
        never wins), at most half the window, as in torch.
      ceil_mode: round the output size up, as torch's `ceil_mode=True`: a
        last, partial window is kept when it starts inside the input or its
        left padding.

    A layer without params mapping `(C, *spatial)` to `(C, *out_spatial)`,
    with `out = (n + 2 * padding - window) // stride + 1` on each axis
    (rounded up under `ceil_mode`).

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


def _optional_count(where: str, arg: str, value: Any) -> Optional[int]:
    return None if value is None else check_count(where, arg, value)


class AvgPool(_Pool):
    """The mean of each window, per channel, as `torch.nn.AvgPool1d/2d/3d`.

    By default zero padding counts towards the mean (torch's
    `count_include_pad=True`): a window's sum is divided by the number of
    its positions inside the padded input.

    Args:
      window: the window size, an int or a tuple with one int per spatial
        axis, >= 1.
      stride: step between windows; `None` (the default) means the window.
      padding: zeros added on both sides of each spatial axis, at most half
        the window, as in torch.
      ceil_mode: round the output size up, as torch's `ceil_mode=True`; the
        part of a last window past the padding never counts.
      count_include_pad: whether padding positions count in the divisor;
        `False` divides by the input positions in the window only.
      divisor_override: divide every window's sum by this instead.

    A layer without params mapping `(C, *spatial)` to `(C, *out_spatial)`,
    with `out = (n + 2 * padding - window) // stride + 1` on each axis
    (rounded up under `ceil_mode`).

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.AvgPool(2).apply((), jnp.arange(16.0).reshape(1, 4, 4))
      Array([[[ 2.5,  4.5],
              [10.5, 12.5]]], dtype=float32)
    """

    count_include_pad: Flag = True
    divisor_override: Annotated[Optional[int], Check(_optional_count)] = None

    def _reduce(self, x, window, stride, pads):
        total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, stride, pads)
        if self.divisor_override is not None:
            return total / self.divisor_override
        # Positions each window covers, per spatial axis (channels last here),
        # as torch counts them; a constant of the shapes, made in NumPy.
        divisor = np.ones((), np.float64)
        for axis, (n, k, s, (p, _)) in enumerate(zip(x.shape[:-1], window, stride, pads)):
            start = np.arange(total.shape[axis]) * s - p
            end = np.minimum(start + k, n + p)
            if not self.count_include_pad:
                start, end = np.maximum(start, 0), np.minimum(end, n)
            divisor = np.multiply.outer(divisor, end - start)
        return total / divisor[..., None].astype(x.dtype)

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


def _adaptive_size(where: str, arg: str, value: Any) -> IntOrTuple:
    return int_or_tuple(where, arg, value, 1)


class AdaptiveAvgPool(Builtin):
    """Means over windows chosen to give a fixed output size, as `torch.nn.AdaptiveAvgPool1d/2d/3d`.

    Output position `i` of an axis of size `n` averages the input from
    `floor(i * n / out)` to `ceil((i + 1) * n / out)`, torch's windows;
    they overlap when `out` does not divide `n`. `AdaptiveAvgPool(1)` then
    `Flatten()` is `GlobalAvgPool()`.

    Args:
      output_size: the spatial size of the output, an int for every axis
        or a tuple with one int per axis.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.AdaptiveAvgPool(2).apply((), jnp.arange(5.0).reshape(1, 5))
      Array([[1., 3.]], dtype=float32)
    """

    output_size: Annotated[IntOrTuple, Check(_adaptive_size)]

    stochastic = False

    def _sizes(self, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
        rank = len(self.output_size) if isinstance(self.output_size, tuple) else None
        n = check_example(self.name, shape, rank, what)
        return per_axis(self.output_size, n)

    def output_shape(self, input_shape):
        return (input_shape[0],) + self._sizes(input_shape, "input_shape")

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self._sizes(x.shape, "x with shape")
        return x

    def forward(self, params, state, x, *, key, train):
        for axis, out in enumerate(self._sizes(x.shape, "x with shape"), 1):
            x = _average_windows(x, axis, out)
        return x, state

    def flops(self, step):
        return size(step.input.shape) + size(step.output.shape)


def _average_windows(x: jax.Array, axis: int, out: int) -> jax.Array:
    """torch's adaptive windows along `axis`: a sum over each window, then its mean."""
    n = x.shape[axis]
    i = np.arange(out)
    start, end = (i * n) // out, -((-(i + 1) * n) // out)
    # Window sums as differences of a running sum would lose precision over
    # long axes; a (out, n) 0/1 matrix sums each window exactly as written.
    member = ((np.arange(n) >= start[:, None]) & (np.arange(n) < end[:, None])).astype(x.dtype)
    summed = jnp.moveaxis(jnp.tensordot(member, jnp.moveaxis(x, axis, 0), axes=1,
                                        precision=lax.Precision.HIGHEST), 0, axis)
    counts = (end - start).astype(x.dtype).reshape((1,) * axis + (out,) + (1,) * (x.ndim - axis - 1))
    return summed / counts
