"""The dense layer: a weighted sum of the inputs, plus a bias, then an activation.

For one example `x` of shape `(in,)` and weights `W` of shape `(out, in)`
(PyTorch's `nn.Linear` layout), output unit `i` is
`act(sum_j W[i, j] * x[j] + b[i])`, i.e. `act(x @ W.T + b)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, size
from lamina._src.core.errors import BATCH_HINT, TRANSPOSED, layer_error
from lamina._src.core.fields import Count, Flag, FloatDtype, Init, OptionalFloatDtype
from lamina._src.core.record import note
from lamina._src.core.spec import Param, depends_on_input
from lamina._src.layers import initializers
from lamina._src.layers.activations import (
    Act,
    ActivationLike,
    act_name,
    activation_fn,
    canonical_activation,
)


def _weighted_sum(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    # dot_general contracts x's last axis with W's axis 1 directly: a literal
    # `x @ W.T` makes XLA:CPU copy W into a transposed layout on every call at
    # small batch sizes (6x slower for a 2048x1024 layer at batch 1).
    W = params["W"]
    z = lax.dot_general(x, W, (((x.ndim - 1,), (1,)), ((), ())))
    if "b" in params:
        z = z + jnp.broadcast_to(params["b"], z.shape)
    return z


def _check_params(params: Any, x: jax.Array) -> None:
    """`lm.dense`'s checks: with no layer, the weights say what the input must be."""
    where = "dense"
    if not isinstance(params, Mapping) or "W" not in params:
        got = (
            f"a dict with keys {sorted(params)}"
            if isinstance(params, Mapping)
            else type(params).__name__
        )
        raise layer_error(
            where,
            f"expected params {{'W': (out, in), 'b': (out,)}}, got {got}",
            TypeError if not isinstance(params, Mapping) else ValueError,
        )
    W = params["W"]
    w_shape = tuple(getattr(W, "shape", ()))
    if len(w_shape) != 2:
        raise layer_error(where, f"expected W of shape (out, in), got {w_shape}")
    if x.ndim < 1:
        raise layer_error(
            where,
            f"expected input with last dimension {w_shape[1]} (W has shape "
            f"{w_shape}), got a scalar x with shape ().",
        )
    if x.shape[-1] != w_shape[1]:
        hint = TRANSPOSED if w_shape[0] == x.shape[-1] else ""
        raise layer_error(
            where,
            f"expected input with last dimension {w_shape[1]} (W has shape "
            f"{w_shape}), got x with shape {x.shape}.{hint}\n{BATCH_HINT}",
        )
    if "b" in params:
        b_shape = tuple(getattr(params["b"], "shape", ()))
        if b_shape != (w_shape[0],):
            raise layer_error(
                where, f"expected b of shape ({w_shape[0]},), got {b_shape}"
            )
    extra = sorted(set(params) - {"W", "b"})
    if extra:
        raise layer_error(where, f"unexpected params keys {extra}; expected 'W' and 'b'")


def dense(
    params: Mapping[str, jax.Array],
    x: jax.typing.ArrayLike,
    act: ActivationLike = None,
) -> jax.Array:
    """Computes `act(x @ W.T + b)`: the forward pass of one dense layer.

    Args:
      params: `{"W": (out, in), "b": (out,)}`; `"b"` may be left out.
      x: one example, shape `(in,)`, or any leading batch axes `(..., in)`.
      act: an activation name, callable or `None`.

    Returns:
      An array of shape `x.shape[:-1] + (out,)`.

    Raises:
      ValueError: `x`'s last dimension is not W's `in`, or `W`/`b` are misshaped.
      TypeError: `x` is not floating point, or params are not a dict.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> params = {"W": jnp.array([[1.0, 2.0]]), "b": jnp.array([0.5])}
      >>> lm.dense(params, jnp.array([3.0, 4.0]))
      Array([11.5], dtype=float32)
    """
    fn = activation_fn(canonical_activation(act, "dense"))
    x = check_float_input("dense", x)
    _check_params(params, x)
    return fn(_weighted_sum(params, x))


class Dense(Builtin):
    """A fully connected layer, `act(x @ W.T + b)`, with `W` stored as `(out, in)`.

    Args:
      out_features: number of output units, >= 1.
      act: activation applied to the weighted sum: a name (`"relu"`), a
        callable (`jax.nn.relu`; one of `lm.ACTIVATIONS` is stored by its
        name) or `None` for none.
      use_bias: whether the layer has a bias `b`; without one the params hold
        only `W`.
      w_init: initializer `(key, shape, dtype)` for `W`; the default,
        `lm.initializers.torch_linear()`, matches `torch.nn.Linear`. A
        `jax.nn.initializers` (or Flax) function, which expects the `(in,
        out)` layout, is given that shape and its result transposed, so it
        gets the variance it promises.
      b_init: initializer for `b`; the default is uniform in
        +-1/sqrt(in_features), as in `torch.nn.Linear`.
      dtype: the compute dtype (e.g. `jnp.bfloat16`): inputs and params are
        cast to it and the output has it. `None` computes in the input's dtype
        promoted with the params'.
      param_dtype: the dtype params are created in.

    `init(key, input_shape)` returns
    `(input_shape[:-1] + (out_features,), {"W": (out, in), "b": (out,)})`;
    `apply(params, x)` takes `x` of shape `(..., in)`.

    Raises:
      ValueError: `out_features < 1` or an unknown activation name.
      TypeError: `out_features` is not an int, or an initializer is not callable.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Dense(3, act="relu")
      >>> out_shape, params = layer.init(jax.random.key(0), (4,))
      >>> out_shape, params["W"].shape, layer.apply(params, jnp.ones(4)).shape
      ((3,), (3, 4), (3,))
      >>> layer, layer == lm.Dense(3, act=jax.nn.relu)
      (Dense(3, act='relu'), True)
    """

    out_features: Count
    act: Act = None
    _: dataclasses.KW_ONLY
    use_bias: Flag = True
    w_init: Init = None
    b_init: Init = None
    dtype: OptionalFloatDtype = None
    param_dtype: FloatDtype = jnp.dtype(jnp.float32)

    kind = "dense"
    min_rank = 1
    stochastic = False

    @property
    def batch_polymorphic(self) -> bool:
        return self.act is None or isinstance(self.act, str)  # lamina's own work on the last axis

    @property
    def name(self) -> str:
        act = act_name(self.act)
        return f"Dense({self.out_features}, {act})" if act else f"Dense({self.out_features})"

    def output_shape(self, input_shape):
        return input_shape[:-1] + (self.out_features,)

    def params_spec(self):
        out = self.out_features
        bias = self.b_init or depends_on_input(lambda s: initializers.torch_bias(s[-1]))
        return {  # torch.nn.Linear's weight and bias
            "W": Param(lambda s: (out, s[-1]), self.w_init or initializers.torch_linear(),
                       "weight", "(out, in)", fits={1: -1}, dtype=self.param_dtype),
            "b": Param(lambda s: (out,), bias, "bias", "(out,)", flag="use_bias",
                       dtype=self.param_dtype),
        }

    def check_input(self, x, params):
        return check_float_input(self.name, x)

    def forward(self, params, state, x, *, key, train):
        if self.dtype is not None:
            x = x.astype(self.dtype)
            params = jax.tree.map(lambda p: p.astype(self.dtype), params)
        z = _weighted_sum(params, x)
        note(weighted_sum=z, act=act_name(self.act))
        return activation_fn(self.act)(z), state

    def flops(self, step):
        # A multiply-add per weight, plus the bias, for every row of the input.
        out_features, in_features = step.params["W"].shape
        per_row = 2 * in_features * out_features + (out_features if "b" in step.params else 0)
        return size(step.input.shape[:-1]) * per_row
