"""Normalization: rescale features to zero mean and unit variance (or unit RMS).

`LayerNorm` and `RMSNorm` use the statistics of each example's last axis;
`GroupNorm` those of groups of channels of one channels-first example, over
the group's channels and all positions; `BatchNorm` those of each channel
over the whole batch, kept as running statistics in its state. Statistics
are computed in at least float32; the output keeps the input's dtype.
"""

from __future__ import annotations

from typing import Annotated, Any

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, size
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check, Count, Positive, Text, interval
from lamina._src.core.record import note
from lamina._src.core.spec import Param
from lamina._src.layers import initializers

Momentum = Annotated[float, Check(interval, 0.0, 1.0, "high")]
"""A weight of the newest batch, in (0, 1]."""


def _stats_dtype(x: jax.Array) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


def _affine(fits: int, scale: bool = True, offset: bool = True, what: str = "(d,)") -> dict:
    """`scale` (ones, torch's `weight`) and `offset` (zeros, its `bias`) over input axis `fits`."""
    spec = {}
    if scale:
        spec["scale"] = Param(lambda s: (s[fits],), initializers.ones, "weight", what,
                              fits={0: fits})
    if offset:
        spec["offset"] = Param(lambda s: (s[fits],), initializers.zeros, "bias", what,
                               fits={0: fits})
    return spec


def _note(shape: tuple) -> str:
    return f" for the input's {shape[-1]} features or channels"


class LayerNorm(Builtin):
    """Normalizes over the last axis, then applies a learnable scale and offset.

    `y = (x - mean(x)) / sqrt(var(x) + eps) * scale + offset`, with mean and
    (biased) variance over the last axis, as `torch.nn.LayerNorm`. Statistics
    are computed in at least float32; the output keeps the input's dtype.

    Args:
      eps: added to the variance for numerical safety, > 0.

    A `Layer` with params `{"scale": (d,), "offset": (d,)}`, initialised to
    ones and zeros, where `d` is the size of the last axis.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.LayerNorm()
      >>> _, params = layer.init(jax.random.key(0), (4,))
      >>> y = layer.apply(params, jnp.array([1.0, 2.0, 3.0, 4.0]))
      >>> round(float(y.mean()), 4), round(float(y.var()), 3)
      (0.0, 1.0)
    """

    eps: Positive = 1e-5

    name = "LayerNorm()"
    min_rank = 1
    stochastic = False
    batch_polymorphic = True  # statistics over the last axis only

    def params_spec(self):
        return _affine(-1)  # torch.nn.LayerNorm

    def params_note(self, input_shape, key):
        return _note(input_shape)

    def check_input(self, x, params):
        return check_float_input(self.name, x)

    def forward(self, params, state, x, *, key, train):
        h = x.astype(_stats_dtype(x))
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        y = (h - mean) * lax.rsqrt(var + self.eps)  # one op, as hand-written JAX
        y = y * jnp.broadcast_to(params["scale"], y.shape) + jnp.broadcast_to(
            params["offset"], y.shape)
        return y.astype(x.dtype), state

    def flops(self, step):
        # mean, subtract, square, variance sum, normalize, scale, offset
        return 7 * size(step.output.shape)


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

    eps: Positive = 1e-6

    min_rank = 1
    stochastic = False
    batch_polymorphic = True  # statistics over the last axis only

    def params_spec(self):
        return _affine(-1, offset=False, what="(D,)")  # torch.nn.RMSNorm

    def params_note(self, input_shape, key):
        return _note(input_shape)

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        if x.ndim < 1:
            raise layer_error(self.name, "expected x of shape (..., D), got a scalar")
        return x

    def forward(self, params, state, x, *, key, train):
        h = x.astype(_stats_dtype(x))
        y = h * lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)
        return (y * jnp.broadcast_to(params["scale"], y.shape)).astype(x.dtype), state

    def flops(self, step):
        # square, mean, normalize, scale
        return 4 * size(step.output.shape)


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

    groups: Count
    eps: Positive = 1e-5

    stochastic = False

    def params_spec(self):
        return _affine(0, what="(C,)")  # torch.nn.GroupNorm

    def params_note(self, input_shape, key):
        return _note(input_shape[:1])

    def output_shape(self, input_shape):
        self._channels(input_shape)
        return input_shape

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

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self._channels(x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        C = x.shape[0]
        h = x.astype(_stats_dtype(x)).reshape(self.groups, -1)
        mean = jnp.mean(h, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
        y = ((h - mean) * lax.rsqrt(var + self.eps)).reshape(x.shape)
        per_channel = (C,) + (1,) * (x.ndim - 1)
        scale = jnp.broadcast_to(jnp.reshape(params["scale"], per_channel), x.shape)
        offset = jnp.broadcast_to(jnp.reshape(params["offset"], per_channel), x.shape)
        return (y * scale + offset).astype(x.dtype), state

    def flops(self, step):
        # mean, subtract, square, variance sum, normalize, scale, offset
        return 7 * size(step.output.shape)


class BatchNorm(Builtin):
    """Batch normalization with running statistics, as `torch.nn.BatchNorm1d/2d/3d`.

    One example is channels-first, `(C,)` or `(C, *spatial)`. In training
    (`train=True`) each channel is normalized with the mean and biased
    variance over the batch and the spatial axes; the batch's part comes
    from a collective over the vmapped axis `axis_name` (`lm.forward` and
    `lm.train_step` name theirs `"batch"`), so a batch sharded over devices
    gives global statistics with no extra code. The running statistics move
    towards the batch's, `running = (1 - momentum) * running + momentum *
    batch`, with the UNBIASED variance, and `num_batches_tracked` counts the
    batches. In inference (`train=False`, the default) the running
    statistics are used and the state comes back unchanged. Statistics are
    computed in at least float32; the output keeps the input's dtype.

    `y = (x - mean) / sqrt(var + eps) * scale + offset`, per channel.

    Args:
      momentum: weight of the newest batch in the running statistics, in (0, 1].
      eps: added to the variance for numerical safety, > 0.
      axis_name: the name of the vmapped batch axis to take statistics over.

    Params `{"scale": (C,), "offset": (C,)}` (torch's `weight`/`bias`), ones
    and zeros; state `{"running_mean": (C,), "running_var": (C,),
    "num_batches_tracked": int32 ()}`, zeros, ones and 0, as torch's buffers.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.Dense(3), lm.BatchNorm())
      >>> _, params = model.init(jax.random.key(0), (2,))
      >>> state = lm.init_state(model, (2,))
      >>> ys, state = lm.forward(model)(params, jnp.ones((4, 2)), state=state, train=True)
      >>> int(state[1]["num_batches_tracked"]), ys.shape
      (1, (4, 3))
    """

    momentum: Momentum = 0.1
    eps: Positive = 1e-5
    axis_name: Text = "batch"

    name = "BatchNorm()"
    min_rank = 1
    stochastic = False

    def params_spec(self):
        return _affine(0, what="(C,)")  # torch.nn.BatchNorm1d/2d/3d

    def state_spec(self):
        def channels(s):
            return (s[0],)

        return {  # torch's buffers, by the same names
            "running_mean": Param(channels, initializers.zeros, "running_mean", "(C,)",
                                  fits={0: 0}),
            "running_var": Param(channels, initializers.ones, "running_var", "(C,)",
                                 fits={0: 0}),
            "num_batches_tracked": Param(lambda s: (), initializers.zeros, "num_batches_tracked",
                                         "()", dtype=jnp.int32),
        }

    def params_note(self, input_shape, key):
        return _note(input_shape[:1])

    def check_input(self, x, params):
        return check_float_input(self.name, x)

    def forward(self, params, state, x, *, key, train):
        h = x.astype(_stats_dtype(x))
        spatial = tuple(range(1, h.ndim))
        if train:
            mean, var, n = self._batch_statistics(h, spatial)
            m = self.momentum
            new = {
                "running_mean": (1 - m) * state["running_mean"] + m * mean,
                "running_var": (1 - m) * state["running_var"] + m * var * (n / (n - 1)),
                "num_batches_tracked": state["num_batches_tracked"] + 1,
            }
            new = {k: v.astype(state[k].dtype) for k, v in new.items()}
        else:
            mean, var, new = state["running_mean"], state["running_var"], state
        per_channel = (-1,) + (1,) * len(spatial)
        normalized = (h - mean.reshape(per_channel)) * jnp.reciprocal(
            jnp.sqrt(var.reshape(per_channel) + self.eps))
        y = normalized * params["scale"].reshape(per_channel) + params["offset"].reshape(
            per_channel)
        note(values={"mean": mean, "var": var, "normalized": normalized})
        return y.astype(x.dtype), new

    def _batch_statistics(self, h, spatial):
        try:
            batch = lax.psum(1, self.axis_name)
        except NameError:
            raise layer_error(
                self.name,
                f"in training (train=True) BatchNorm needs the whole batch, but it got one "
                f"example outside a vmap over an axis named {self.axis_name!r}. Use "
                f"lm.forward(model)(params, xs, state=state, train=True), lm.train_step, or "
                f"jax.vmap(..., axis_name={self.axis_name!r}).",
            ) from None
        n = batch * size(h.shape[1:])
        if n < 2:
            raise layer_error(
                self.name,
                f"in training each channel needs more than one value to take a variance "
                f"of, got a batch of {batch} with {size(h.shape[1:])} value(s) per channel",
            )
        mean = lax.pmean(jnp.mean(h, axis=spatial), self.axis_name)
        centered = h - mean.reshape((-1,) + (1,) * len(spatial))
        var = lax.pmean(jnp.mean(jnp.square(centered), axis=spatial), self.axis_name)
        return mean, var, n

    def flops(self, step):
        # subtract the mean, multiply by 1/sqrt(var + eps), scale, offset
        return 4 * size(step.output.shape)
