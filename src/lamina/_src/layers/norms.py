"""RMS and group normalization: rescale features by statistics of the example itself.

`RMSNorm` divides by the root mean square of the last axis (no mean is
subtracted, no offset added), as in many recent language models.
`GroupNorm` normalizes each group of channels of one channels-first example
over the group's channels and all positions, so it needs no batch.
Statistics are computed in at least float32; the output keeps the input's
dtype.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import (
    Builtin,
    check_count,
    check_float_input,
    check_input_shape,
    frozen,
    size,
)


def _check_eps(owner: str, eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise layer_error(owner, f"eps must be a number > 0, got {eps!r}", TypeError)
    if not eps > 0:
        raise layer_error(owner, f"eps must be > 0, got {eps!r}")
    return float(eps)


def _check_params(name: str, params: Any, want: dict[str, tuple[int, ...]], layout: str) -> None:
    if not isinstance(params, Mapping) or set(params) != set(want):
        got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise layer_error(
            name,
            f"expected params {layout}, got {got}",
            ValueError if isinstance(params, Mapping) else TypeError,
        )
    for key, shape in want.items():
        got = tuple(jnp.shape(params[key]))
        if got != shape:
            raise layer_error(
                name, f"expected {key} of shape {shape} for the input's {shape[0]} features "
                f"or channels, got {got}"
            )


def _stats_dtype(x: jax.Array) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


@frozen
class RMSNorm(Builtin):
    """Divides by the root mean square over the last axis, then scales.

    `y = x / sqrt(mean(x**2) + eps) * scale`, over the last axis, as
    `torch.nn.RMSNorm(D, eps)`. Accepts leading axes.

    Args:
      eps: added to the mean square for numerical safety, > 0. (torch's
        default, `None`, means float32's machine epsilon; pass `eps` to torch
        to match.)

    A `Layer` with params `{"scale": (D,)}`, initialised to ones; `scale` is
    torch's `weight`.

    Raises:
      TypeError: `eps` is not a number; at apply, a non-float input.
      ValueError: `eps <= 0`; at apply, a scalar input or the wrong `scale`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.RMSNorm()
      >>> _, params = layer.init(jax.random.key(0), (4,))
      >>> layer.apply(params, jnp.array([3.0, -3.0, 3.0, -3.0])).round(3)
      Array([ 1., -1.,  1., -1.], dtype=float32)
    """

    eps: float = 1e-6

    torch_names = {"scale": "weight"}  # torch.nn.RMSNorm

    def __post_init__(self):
        object.__setattr__(self, "eps", _check_eps("RMSNorm", self.eps))

    batch_polymorphic = True  # statistics over the last axis only

    @property
    def name(self) -> str:
        return repr(self)

    def init(self, key, input_shape):
        shape = check_input_shape(self.name, input_shape, min_rank=1)
        return shape, {"scale": jnp.ones((shape[-1],))}

    def apply(self, params, x, *, key=None):
        x = check_float_input(self.name, x)
        if x.ndim < 1:
            raise layer_error(self.name, "expected x of shape (..., D), got a scalar")
        _check_params(self.name, params, {"scale": (x.shape[-1],)}, "{'scale': (D,)}")
        h = x.astype(_stats_dtype(x))
        y = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)
        return (y * jnp.broadcast_to(params["scale"], y.shape)).astype(x.dtype)

    def flops(self, step):
        # square, mean, normalize, scale
        return 4 * size(step.output.shape)


@frozen
class GroupNorm(Builtin):
    """Normalizes groups of channels of one channels-first example `(C, *spatial)`.

    The `C` channels are cut into `groups` consecutive groups; each group is
    normalized to zero mean and unit (biased) variance over its channels and
    all positions, then every channel gets its own scale and offset, as
    `torch.nn.GroupNorm(groups, C, eps)` on one example. `groups=1`
    normalizes the whole example (LayerNorm over `(C, *spatial)`, per-channel
    affine); `groups=C` is instance normalization.

    Args:
      groups: the number of groups, >= 1; must divide `C`.
      eps: added to the variance for numerical safety, > 0.

    A `Layer` with params `{"scale": (C,), "offset": (C,)}`, initialised to
    ones and zeros; torch's `weight` and `bias`.

    Raises:
      TypeError: a bad kind of argument; at apply, a non-float input.
      ValueError: `groups < 1` or `eps <= 0`; at init or apply, a scalar
        input or `C` not a multiple of `groups`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.GroupNorm(2)
      >>> out_shape, params = layer.init(jax.random.key(0), (4, 3, 3))
      >>> out_shape, params["scale"].shape
      ((4, 3, 3), (4,))
      >>> y = layer.apply(params, jnp.arange(36.0).reshape(4, 3, 3))
      >>> bool(abs(y[:2].mean()) < 1e-5), round(float(y[:2].std()), 3)  # group 0
      (True, 1.0)
    """

    groups: int
    eps: float = 1e-5

    torch_names = {"scale": "weight", "offset": "bias"}  # torch.nn.GroupNorm

    def __post_init__(self):
        object.__setattr__(self, "groups", check_count("GroupNorm", "groups", self.groups))
        object.__setattr__(self, "eps", _check_eps("GroupNorm", self.eps))

    @property
    def name(self) -> str:
        return repr(self)

    def _channels(self, shape: tuple[int, ...]) -> int:
        if len(shape) < 1:
            raise layer_error(
                self.name, "expected one channels-first example (C, *spatial), got a scalar"
            )
        C = shape[0]
        if C % self.groups:
            raise layer_error(
                self.name,
                f"the number of channels C={C} must be divisible by groups={self.groups}; "
                f"got an example of shape {shape} (channels first)",
            )
        return C

    def init(self, key, input_shape):
        shape = check_input_shape(self.name, input_shape)
        C = self._channels(shape)
        return shape, {"scale": jnp.ones((C,)), "offset": jnp.zeros((C,))}

    def apply(self, params, x, *, key=None):
        x = check_float_input(self.name, x)
        C = self._channels(x.shape)
        _check_params(self.name, params, {"scale": (C,), "offset": (C,)},
                      "{'scale': (C,), 'offset': (C,)}")
        h = x.astype(_stats_dtype(x)).reshape(self.groups, -1)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        y = ((h - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        per_channel = (C,) + (1,) * (x.ndim - 1)
        scale = jnp.broadcast_to(jnp.reshape(params["scale"], per_channel), x.shape)
        offset = jnp.broadcast_to(jnp.reshape(params["offset"], per_channel), x.shape)
        return (y * scale + offset).astype(x.dtype)

    def flops(self, step):
        # mean, subtract, square, variance sum, normalize, scale, offset
        return 7 * size(step.output.shape)
