"""The dense layer: a weighted sum of the inputs, plus a bias, then an activation.

For one example `x` of shape `(in,)` and weights `W` of shape `(out, in)`
(PyTorch's `nn.Linear` layout), output unit `i` is
`act(sum_j W[i, j] * x[j] + b[i])`, i.e. `act(x @ W.T + b)`.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src import initializers
from lamina._src.activations import ActivationLike, resolve_activation
from lamina._src.layer import (
    Layer,
    TraceStep,
    check_float_input,
    check_input_shape,
    check_key,
    layer_error,
)

_BATCH_HINT = "Layers take one example; use jax.vmap or lm.forward for batches."


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
        hint = (
            "; it looks transposed: lamina stores W as (out, in), like torch.nn.Linear"
            if len(w_shape) == 2 and w_shape[1] == out_features
            else ""
        )
        raise layer_error(where, f"expected W of shape {want}, got {w_shape}{hint}")
    if x.ndim < 1:
        raise layer_error(
            where,
            f"expected input with last dimension {w_shape[1]} (W has shape "
            f"{w_shape}), got a scalar x with shape ().",
        )
    if x.shape[-1] != w_shape[1]:
        hint = (
            " W looks transposed: lamina stores W as (out, in), like torch.nn.Linear."
            if w_shape[0] == x.shape[-1]
            else ""
        )
        raise layer_error(
            where,
            f"expected input with last dimension {w_shape[1]} (W has shape "
            f"{w_shape}), got x with shape {x.shape}.{hint}\n{_BATCH_HINT}",
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


def _is_float_dtype(value: Any) -> bool:
    try:
        return jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:  # not a dtype at all, e.g. "float33"
        return False


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
    fn, _ = resolve_activation(act, "dense")
    x = check_float_input("dense", x)
    _check_params("dense", params, x)
    return fn(_weighted_sum(params, x))


def Dense(
    out_features: int,
    act: ActivationLike = None,
    *,
    use_bias: bool = True,
    w_init: Optional[initializers.Initializer] = None,
    b_init: Optional[initializers.Initializer] = None,
    dtype: Optional[jnp.dtype] = None,
    param_dtype: jnp.dtype = jnp.float32,
) -> Layer:
    """A fully connected layer, `act(x @ W.T + b)`, with `W` stored as `(out, in)`.

    Args:
      out_features: number of output units, >= 1.
      act: activation applied to the weighted sum: a name (`"relu"`), a
        callable (`jax.nn.relu`) or `None` for none.
      use_bias: whether the layer has a bias `b`; without one the params hold
        only `W`.
      w_init: initializer `(key, shape, dtype)` for `W`; the default,
        `lm.initializers.torch_linear()`, matches `torch.nn.Linear`.
      b_init: initializer for `b`; the default is uniform in
        +-1/sqrt(in_features), as in `torch.nn.Linear`.
      dtype: the compute dtype (e.g. `jnp.bfloat16`): inputs and params are
        cast to it and the output has it. `None` computes in the input's dtype
        promoted with the params'.
      param_dtype: the dtype params are created in.

    Returns:
      A `Layer`. `init(key, input_shape)` returns
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
    """
    if isinstance(out_features, bool) or not isinstance(out_features, int):
        raise layer_error(
            "Dense",
            f"out_features must be an int, got {type(out_features).__name__} "
            f"{out_features!r}",
            TypeError,
        )
    if out_features < 1:
        raise layer_error("Dense", f"out_features must be >= 1, got {out_features}")
    act_fn, act_name = resolve_activation(act, f"Dense({out_features})")
    for arg, value in (("w_init", w_init), ("b_init", b_init)):
        if value is not None and not callable(value):
            raise layer_error(
                f"Dense({out_features})",
                f"{arg} must be an initializer (key, shape, dtype) -> array, got "
                f"{type(value).__name__} {value!r}",
                TypeError,
            )
    if use_bias not in (True, False):
        raise layer_error(
            f"Dense({out_features})",
            f"use_bias must be True or False, got {type(use_bias).__name__} {use_bias!r}",
            TypeError,
        )
    for arg, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        if value is not None and not _is_float_dtype(value):
            raise layer_error(
                f"Dense({out_features})",
                f"{arg} must be a floating-point dtype such as jnp.float32 or "
                f"jnp.bfloat16, got {value!r}",
                TypeError,
            )
    w_init = w_init or initializers.torch_linear()
    name = f"Dense({out_features}, {act_name})" if act_name else f"Dense({out_features})"

    def init(key, input_shape):
        check_key(name, key)
        shape = check_input_shape(name, input_shape, min_rank=1)
        in_features = shape[-1]
        w_key, b_key = jax.random.split(key)
        params = {"W": w_init(w_key, (out_features, in_features), param_dtype)}
        if use_bias:
            bias_init = b_init or initializers.torch_bias(in_features)
            params["b"] = bias_init(b_key, (out_features,), param_dtype)
        return shape[:-1] + (out_features,), params

    def weighted_sum(params, x):
        x = check_float_input(name, x)
        _check_params(name, params, x, out_features, use_bias)
        if dtype is not None:
            x = x.astype(dtype)
            params = jax.tree.map(lambda p: p.astype(dtype), params)
        return _weighted_sum(params, x)

    def apply(params, x, *, key=None):
        return act_fn(weighted_sum(params, x))

    def trace(params, x, *, key=None):
        z = weighted_sum(params, x)
        y = act_fn(z)
        return y, [TraceStep("", (), name, x, params, z, y)]

    return Layer(init, apply, name, trace)
