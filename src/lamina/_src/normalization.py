"""Layer normalization: rescale each example's features to zero mean, unit variance."""

from __future__ import annotations

import numbers
from typing import Mapping

import jax.numpy as jnp

from lamina._src.errors import layer_error
from lamina._src.layer import Builtin, check_float_input, check_input_shape, frozen, size


@frozen
class LayerNorm(Builtin):
    """Normalizes over the last axis, then applies a learnable scale and offset.

    `y = (x - mean(x)) / sqrt(var(x) + eps) * scale + offset`, with mean and
    (biased) variance over the last axis, as `torch.nn.LayerNorm`. Statistics
    are computed in at least float32; the output keeps the input's dtype.

    Args:
      eps: added to the variance for numerical safety, > 0.

    A `Layer` with params `{"scale": (d,), "offset": (d,)}`, initialised to
    ones and zeros, where `d` is the size of the last axis.
    """

    eps: float = 1e-5

    def __post_init__(self):
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise layer_error("LayerNorm", f"eps must be a number > 0, got {eps!r}", TypeError)
        if not eps > 0:
            raise layer_error("LayerNorm", f"eps must be > 0, got {eps!r}")
        object.__setattr__(self, "eps", float(eps))

    name = "LayerNorm()"
    torch_names = {"scale": "weight", "offset": "bias"}  # torch.nn.LayerNorm

    def init(self, key, input_shape):
        shape = check_input_shape(self.name, input_shape, min_rank=1)
        d = shape[-1]
        return shape, {"scale": jnp.ones((d,)), "offset": jnp.zeros((d,))}

    def apply(self, params, x, *, key=None):
        x = check_float_input(self.name, x)
        if not isinstance(params, Mapping) or set(params) != {"scale", "offset"}:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise layer_error(
                self.name,
                f"expected params {{'scale': (d,), 'offset': (d,)}}, got {got}",
                ValueError if isinstance(params, Mapping) else TypeError,
            )
        scale, offset = params["scale"], params["offset"]
        if x.ndim < 1 or scale.shape != (x.shape[-1],) or offset.shape != scale.shape:
            raise layer_error(
                self.name,
                f"expected x of shape (..., d) with scale and offset of shape (d,), "
                f"got x {x.shape}, scale {scale.shape}, offset {offset.shape}",
            )
        h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        y = (h - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))
        y = y * jnp.broadcast_to(scale, y.shape) + jnp.broadcast_to(offset, y.shape)
        return y.astype(x.dtype)

    def flops(self, step):
        # mean, subtract, square, variance sum, normalize, scale, offset
        return 7 * size(step.output.shape)
