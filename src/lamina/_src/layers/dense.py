"""The dense layer: a weighted sum of the inputs, plus a bias, then an activation.

For one example `x` of shape `(in,)` and weights `W` of shape `(out, in)`
(PyTorch's `nn.Linear` layout), output unit `i` is
`act(sum_j W[i, j] * x[j] + b[i])`, i.e. `act(x @ W.T + b)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.layers import initializers
from lamina._src.layers.activations import ActivationLike, activation_fn, canonical_activation
from lamina._src.core.errors import TRANSPOSED, layer_error
from lamina._src.core.layer import (
    Builtin,
    TraceStep,
    as_dtype,
    check_count,
    check_float_input,
    check_input_shape,
    check_key,
    frozen,
    size,
)

BATCH_HINT = "Layers take one example; use jax.vmap or lm.forward for batches."


def _weighted_sum(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    # dot_general contracts x's last axis with W's axis 1 directly: a literal
    # `x @ W.T` makes XLA:CPU copy W into a transposed layout on every call at
    # small batch sizes (6x slower for a 2048x1024 layer at batch 1).
    W = params["W"]
    z = lax.dot_general(x, W, (((x.ndim - 1,), (1,)), ((), ())))
    if "b" in params:
        z = z + jnp.broadcast_to(params["b"], z.shape)
    return z


def _check_params(
    where: str,
    params: Any,
    x: jax.Array,
    out_features: Optional[int] = None,
    use_bias: Optional[bool] = None,
) -> None:
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
    if len(w_shape) != 2 or (out_features is not None and w_shape[0] != out_features):
        want = f"({out_features}, in)" if out_features is not None else "(out, in)"
        hint = TRANSPOSED if len(w_shape) == 2 and w_shape[1] == out_features else ""
        raise layer_error(where, f"expected W of shape {want}, got {w_shape}{hint}")
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
    has_b = "b" in params
    if use_bias is not None and has_b != use_bias:
        raise layer_error(
            where,
            "params hold a bias 'b' but the layer was built with use_bias=False"
            if has_b
            else "params have no bias 'b' but the layer was built with use_bias=True",
        )
    if has_b:
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
    _check_params("dense", params, x)
    return fn(_weighted_sum(params, x))


def _act_name(act: ActivationLike):
    if act is None or isinstance(act, str):
        return act
    return getattr(act, "__name__", repr(act))


@frozen
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

    out_features: int
    act: ActivationLike = None
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    w_init: Optional[Callable[..., jax.Array]] = None
    b_init: Optional[Callable[..., jax.Array]] = None
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.dtype(jnp.float32)

    kind = "dense"
    torch_names = {"W": "weight", "b": "bias"}  # torch.nn.Linear

    def __post_init__(self):
        out = check_count("Dense", "out_features", self.out_features)
        object.__setattr__(self, "out_features", out)
        where = f"Dense({out})"
        object.__setattr__(self, "act", canonical_activation(self.act, where))
        for arg in ("w_init", "b_init"):
            value = getattr(self, arg)
            if value is not None and not callable(value):
                raise layer_error(
                    where,
                    f"{arg} must be an initializer (key, shape, dtype) -> array, got "
                    f"{type(value).__name__} {value!r}",
                    TypeError,
                )
        if self.use_bias not in (True, False):
            raise layer_error(
                where,
                f"use_bias must be True or False, got {type(self.use_bias).__name__} "
                f"{self.use_bias!r}",
                TypeError,
            )
        object.__setattr__(self, "dtype", as_dtype(where, "dtype", self.dtype, optional=True))
        object.__setattr__(self, "param_dtype", as_dtype(where, "param_dtype", self.param_dtype))

    @property
    def batch_polymorphic(self) -> bool:
        return self.act is None or isinstance(self.act, str)  # lamina's own work on the last axis

    @property
    def name(self) -> str:
        act = _act_name(self.act)
        return f"Dense({self.out_features}, {act})" if act else f"Dense({self.out_features})"

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape, min_rank=1)
        in_features = shape[-1]
        w_key, b_key = jax.random.split(key)
        w_init = self.w_init or initializers.torch_linear()
        params = {"W": initializers.init_weight(
            w_init, w_key, (self.out_features, in_features), self.param_dtype)}
        if self.use_bias:
            b_init = self.b_init or initializers.torch_bias(in_features)
            params["b"] = initializers.init_weight(
                b_init, b_key, (self.out_features,), self.param_dtype)
        return shape[:-1] + (self.out_features,), params

    def weighted_sum(self, params, x):
        """`x @ W.T + b` before the activation, after the layer's checks."""
        x = check_float_input(self.name, x)
        _check_params(self.name, params, x, self.out_features, self.use_bias)
        if self.dtype is not None:
            x = x.astype(self.dtype)
            params = jax.tree.map(lambda p: p.astype(self.dtype), params)
        return _weighted_sum(params, x)

    def apply(self, params, x, *, key=None):
        return activation_fn(self.act)(self.weighted_sum(params, x))

    def trace(self, params, x, *, key=None):
        z = self.weighted_sum(params, x)
        y = activation_fn(self.act)(z)
        return y, [TraceStep("", (), self.name, x, params, z, y, self, _act_name(self.act))]

    def flops(self, step):
        # A multiply-add per weight, plus the bias, for every row of the input.
        out_features, in_features = step.params["W"].shape
        per_row = 2 * in_features * out_features + (out_features if "b" in step.params else 0)
        return size(step.input.shape[:-1]) * per_row
