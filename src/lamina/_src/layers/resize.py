"""Upsampling: a larger image from a smaller one, by repeating or interpolating values.

The decoder half of a U-Net doubles the spatial size before each block.
`Upsample` computes exactly what `torch.nn.Upsample` does with its defaults
(`align_corners=False`): output position `i` reads the input at
`(i + 0.5) / scale - 0.5` (linear modes, clamped at 0) or `floor(i / scale)`
(nearest), axis by axis.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any, Optional, Union

import jax.numpy as jnp
import numpy as np

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, size
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check
from lamina._src.layers.windows import check_example, check_output_size, int_or_tuple

_LINEAR = {"linear": 1, "bilinear": 2, "trilinear": 3}
"""torch's interpolating modes, each for one number of spatial axes."""

Scale = Union[float, tuple[float, ...]]


def _scale(where: str, arg: str, value: Any) -> Optional[Scale]:
    def one(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise layer_error(
                where, f"{arg} must be a number > 0 or a tuple of them (one per spatial axis), "
                       f"got {type(value).__name__} {value!r}", TypeError)
        if not (math.isfinite(float(v)) and float(v) > 0):
            raise layer_error(where, f"{arg} must be finite and > 0, got {value!r}")
        return int(v) if isinstance(v, numbers.Integral) else float(v)

    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise layer_error(where, f"{arg} must have 1 to 3 entries, got {value!r}")
        return tuple(one(v) for v in value)
    return one(value)


def _size(where: str, arg: str, value: Any) -> Any:
    return None if value is None else int_or_tuple(where, arg, value, 1)


def _mode(where: str, arg: str, value: Any) -> str:
    modes = ("nearest",) + tuple(_LINEAR)
    if value not in modes:
        raise layer_error(where, f"{arg} must be one of {', '.join(map(repr, modes))}, got {value!r}")
    return value


class Upsample(Builtin):
    """Scales the spatial axes of one channels-first example up (or down), as `torch.nn.Upsample`.

    Args:
      scale_factor: the factor for every spatial axis, or one per axis; the
        output size is `floor(n * scale_factor)`. Give this or `size`.
      mode: `"nearest"` (repeat the nearest value, any rank), or the
        interpolation for the example's rank: `"linear"` for `(C, L)`,
        `"bilinear"` for `(C, H, W)`, `"trilinear"` for `(C, D, H, W)`;
        torch's `align_corners=False`.
      size: the output's spatial size instead of a factor.

    A layer without params mapping `(C, *spatial)` to `(C, *out_spatial)`.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.Upsample(2).apply((), jnp.array([[1.0, 2.0]]))
      Array([[1., 1., 2., 2.]], dtype=float32)
      >>> lm.Upsample(2, mode="linear").apply((), jnp.array([[1.0, 2.0]]))
      Array([[1.  , 1.25, 1.75, 2.  ]], dtype=float32)
    """

    scale_factor: Annotated[Optional[Scale], Check(_scale)] = None
    mode: Annotated[str, Check(_mode)] = "nearest"
    size: Annotated[Any, Check(_size)] = None

    stochastic = False

    def check_config(self):
        if (self.scale_factor is None) == (self.size is None):
            raise layer_error(
                type(self).__name__,
                f"give exactly one of scale_factor and size, got scale_factor={self.scale_factor!r}, "
                f"size={self.size!r}",
            )
        ranks = {len(v) for v in (self.scale_factor, self.size) if isinstance(v, tuple)}
        if self.mode in _LINEAR:
            ranks.add(_LINEAR[self.mode])
        if len(ranks) > 1:
            raise layer_error(
                type(self).__name__,
                f"scale_factor, size and mode must agree on the number of spatial axes, got "
                f"scale_factor={self.scale_factor!r}, size={self.size!r}, mode={self.mode!r}",
            )

    def _plan(self, shape: tuple[int, ...], what: str) -> list[tuple[int, float]]:
        """`(output size, input step per output step)` for each spatial axis of `shape`."""
        rank = _LINEAR.get(self.mode)
        if rank is None:
            fixed = [len(v) for v in (self.scale_factor, self.size) if isinstance(v, tuple)]
            rank = fixed[0] if fixed else None
        n = check_example(self.name, shape, rank, what)
        spatial = shape[1:]
        if self.size is not None:
            sizes = self.size if isinstance(self.size, tuple) else (self.size,) * n
            plan = [(o, i / o) for i, o in zip(spatial, sizes)]
        else:
            factor = self.scale_factor
            assert factor is not None  # check_config: one of the two
            factors = factor if isinstance(factor, tuple) else (factor,) * n
            # torch reads the input at steps of 1 / scale_factor, not in / out.
            plan = [(math.floor(i * f), 1.0 / f) for i, f in zip(spatial, factors)]
        check_output_size(self.name, shape, tuple(o for o, _ in plan),
                          "floor(size * scale_factor)")
        return plan

    def output_shape(self, input_shape):
        return (input_shape[0],) + tuple(o for o, _ in self._plan(input_shape, "input_shape"))

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self._plan(x.shape, "x with shape")
        return x

    def forward(self, params, state, x, *, key, train):
        for axis, (out, step) in enumerate(self._plan(x.shape, "x with shape"), 1):
            n = x.shape[axis]
            i = np.arange(out, dtype=np.float64)
            if self.mode == "nearest":
                x = jnp.take(x, np.minimum(np.floor(i * step), n - 1).astype(np.int32), axis=axis)
                continue
            src = np.maximum((i + 0.5) * step - 0.5, 0.0)
            lo = np.minimum(np.floor(src), n - 1).astype(np.int32)
            hi = np.minimum(lo + 1, n - 1)
            w = (src - lo).astype(x.dtype).reshape((1,) * axis + (out,) + (1,) * (x.ndim - axis - 1))
            x = jnp.take(x, lo, axis=axis) * (1 - w) + jnp.take(x, hi, axis=axis) * w
        return x, state

    def flops(self, step):
        return 0 if self.mode == "nearest" else 3 * size(step.output.shape)
