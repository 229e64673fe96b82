"""Layer normalization: rescale each example's features to zero mean, unit variance."""

from __future__ import annotations

import numbers
from typing import Mapping

import jax.numpy as jnp
from jax import lax

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import (
    Builtin,
    TraceStep,
    check_float_input,
    check_input_shape,
    frozen,
    missing_state,
    size,
)


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

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.LayerNorm()
      >>> _, params = layer.init(jax.random.key(0), (4,))
      >>> y = layer.apply(params, jnp.array([1.0, 2.0, 3.0, 4.0]))
      >>> round(float(y.mean()), 4), round(float(y.var()), 3)
      (0.0, 1.0)
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
    batch_polymorphic = True  # statistics over the last axis only
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
        y = (h - mean) * lax.rsqrt(var + self.eps)  # one op, as hand-written JAX
        y = y * jnp.broadcast_to(scale, y.shape) + jnp.broadcast_to(offset, y.shape)
        return y.astype(x.dtype)

    def flops(self, step):
        # mean, subtract, square, variance sum, normalize, scale, offset
        return 7 * size(step.output.shape)


@frozen
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

    momentum: float = 0.1
    eps: float = 1e-5
    axis_name: str = "batch"

    stateful = True
    torch_names = {"scale": "weight", "offset": "bias"}  # torch.nn.BatchNorm1d/2d/3d
    torch_state_names = {"running_mean": "running_mean", "running_var": "running_var",
                         "num_batches_tracked": "num_batches_tracked"}

    def __post_init__(self):
        for arg, low_open in (("momentum", True), ("eps", True)):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise layer_error("BatchNorm", f"{arg} must be a number, got {value!r}", TypeError)
            object.__setattr__(self, arg, float(value))
        if not 0.0 < self.momentum <= 1.0:
            raise layer_error("BatchNorm", f"momentum must be in (0, 1], got {self.momentum!r}")
        if not self.eps > 0:
            raise layer_error("BatchNorm", f"eps must be > 0, got {self.eps!r}")
        if not isinstance(self.axis_name, str):
            raise layer_error(
                "BatchNorm", f"axis_name must be a str, got {self.axis_name!r}", TypeError
            )

    name = "BatchNorm()"

    def init(self, key, input_shape):
        shape = check_input_shape(self.name, input_shape, min_rank=1)
        c = shape[0]
        return shape, {"scale": jnp.ones((c,)), "offset": jnp.zeros((c,))}

    def init_state(self, input_shape):
        c = check_input_shape(self.name, input_shape, min_rank=1)[0]
        return {
            "running_mean": jnp.zeros((c,)),
            "running_var": jnp.ones((c,)),
            "num_batches_tracked": jnp.zeros((), jnp.int32),
        }

    def apply(self, params, x, *, key=None, state=None, train=False):
        y, new, _ = self._normalize(params, x, state, train)
        return y, new

    def trace(self, params, x, *, key=None, state=None, train=False):
        y, new, values = self._normalize(params, x, state, train)
        return y, [TraceStep("", (), self.name, x, params, None, y, self, values=values)], new

    def _normalize(self, params, x, state, train):
        if state is None:
            raise missing_state(self)
        x = check_float_input(self.name, x)
        scale, offset = self._check(params, state, x)
        h = x.astype(jnp.promote_types(x.dtype, jnp.float32))
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
        y = normalized * scale.reshape(per_channel) + offset.reshape(per_channel)
        values = {"mean": mean, "var": var, "normalized": normalized}
        return y.astype(x.dtype), new, values

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

    def _check(self, params, state, x):
        if not isinstance(params, Mapping) or set(params) != {"scale", "offset"}:
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise layer_error(
                self.name,
                f"expected params {{'scale': (C,), 'offset': (C,)}}, got {got}",
                ValueError if isinstance(params, Mapping) else TypeError,
            )
        want = {"running_mean", "running_var", "num_batches_tracked"}
        if not isinstance(state, Mapping) or set(state) != want:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise layer_error(
                self.name,
                f"expected state {sorted(want)} (from lm.init_state), got {got}",
                ValueError if isinstance(state, Mapping) else TypeError,
            )
        c = x.shape[0] if x.ndim else None
        shapes = [jnp.shape(v) for v in (params["scale"], params["offset"],
                                          state["running_mean"], state["running_var"])]
        if c is None or any(s != (c,) for s in shapes):
            raise layer_error(
                self.name,
                f"expected one example channels-first, x of shape (C, ...), with scale, "
                f"offset and running statistics of shape (C,); got x {x.shape}, scale "
                f"{shapes[0]}, offset {shapes[1]}, running_mean {shapes[2]}, running_var "
                f"{shapes[3]}",
            )
        return params["scale"], params["offset"]

    def flops(self, step):
        # subtract the mean, multiply by 1/sqrt(var + eps), scale, offset
        return 4 * size(step.output.shape)
