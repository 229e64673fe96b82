"""Forward propagation: the batched, jitted forward and a step-by-step trace."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from lamina._src.train.data import as_array
from lamina._src.core.errors import LaminaError
from lamina._src.core.layer import (
    Layer,
    Params,
    TraceStep,
    check_key,
    check_layer_type,
    layer_error,
    run,
)


BATCH_AXIS = "batch"
"""The name lamina gives the vmapped batch axis; `lm.BatchNorm` reads statistics over it."""


def forward(model: Layer) -> Callable[..., Any]:
    """Returns `fwd(params, xs, *, key=None, state=None, train=False)`: the model over a batch, jitted.

    `fwd` is `jax.jit(jax.vmap(model.apply))`; shapes are checked by the
    layers when it is traced (once per input shape, never per call). Calling
    `forward` again with an equal model returns the same function. With a
    key, each example gets its own key split from it (dropout differs per
    example); `key=None` is deterministic inference.

    For a model with state (e.g. `lm.BatchNorm`), pass `state=` and the new
    state comes back as the last value: `ys, state = fwd(params, xs,
    state=state, train=True)` updates running statistics from the batch (the
    vmapped axis is named `"batch"`); `train=False` (the default) uses them
    and returns the state unchanged. A model without state returns the
    state it was given.

    Args:
      model: a `Layer`.

    Returns:
      A jitted function taking params and `xs` of shape `(N, *input_shape)`
      (an array or a nested Python list) and returning outputs of shape
      `(N, *output_shape)`, or `(outputs, state)` when given `state`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([8, 2])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> lm.forward(model)(params, jnp.ones((5, 4))).shape
      (5, 2)
    """
    check_layer_type("forward", model)
    return _jitted_forward(model)


@functools.lru_cache(maxsize=64)
def _jitted_forward(model: Layer) -> Callable[..., Any]:
    # One jitted function per model, so `lm.forward(model)(params, xs)` written
    # inline (or lm.evaluate called every epoch) reuses its compiled program.
    def fwd(params: Params, xs: jax.Array, *, key: Optional[jax.Array] = None,
            state: Any = None, train: bool = False):
        xs = as_array(xs)  # a nested list, as model.apply and lm.fit take
        if jnp.ndim(xs) < 1:
            raise layer_error(
                model.name,
                f"lm.forward expects a batch with a leading batch axis, "
                f"got xs with shape {jnp.shape(xs)}",
            )
        if state is None:
            return apply_batch(model, params, xs, key)
        return apply_batch_state(model, params, xs, key, state, train)

    fwd.__name__ = f"forward[{model.name}]"
    return jax.jit(fwd, static_argnames="train")


def apply_batch(
    model: Layer, params: Params, xs: jax.Array, key: Optional[jax.Array] = None
) -> jax.Array:
    """`model.apply` over axis 0 of `xs`; with a key, one key per example."""
    check_key(model.name, key, optional=True)
    if key is None or not model.stochastic:
        if model.batch_polymorphic and jnp.ndim(xs) >= 2:
            # The same numbers as vmap, traced in about half the time.
            try:
                return model.apply(params, xs)
            except LaminaError:
                pass  # vmap raises it again, naming one example's shapes
        return jax.vmap(lambda x: model.apply(params, x))(xs)
    keys = jax.random.split(key, jnp.shape(xs)[0])
    return jax.vmap(lambda x, k: model.apply(params, x, key=k))(xs, keys)


def apply_batch_state(
    model: Layer, params: Params, xs: jax.Array, key: Optional[jax.Array], state: Any,
    train: bool,
) -> tuple[Any, Any]:
    """`(outputs, new_state)`: `apply_batch` threading `state`, over an axis named `"batch"`.

    The state is shared by every example (not vmapped), and the new state
    must be too: layers with state reduce over the batch axis.
    """
    if not model.stateful:
        return apply_batch(model, params, xs, key), state
    check_key(model.name, key, optional=True)

    def one(x, k):
        return model.apply(params, x, key=k, state=state, train=train)

    if not model.stochastic:
        key = None
    keys = None if key is None else jax.random.split(key, jnp.shape(xs)[0])
    try:
        return jax.vmap(one, in_axes=(0, None if keys is None else 0),
                        out_axes=(0, None), axis_name=BATCH_AXIS)(xs, keys)
    except ValueError as error:
        if "out_axes" not in str(error):
            raise
        raise layer_error(
            model.name,
            f"the new state differs from example to example; a layer with state must "
            f"reduce over the batch, e.g. jax.lax.pmean(value, {BATCH_AXIS!r}) ({error})",
        ) from None


def trace(
    model: Layer,
    params: Params,
    x: jax.typing.ArrayLike,
    *,
    key: Optional[jax.Array] = None,
    state: Any = None,
) -> list[TraceStep]:
    """Forward propagation made visible: every layer's input and output, in order.

    Args:
      model: a `Layer`.
      params: its params.
      x: ONE example, shape `input_shape`.
      key: optional PRNG key for stochastic layers.
      state: the model's state, for a model with state (inference mode: the
        running statistics are used).

    Returns:
      A list of `lm.TraceStep`, one per layer in the order they run: its path
      (e.g. `"serial[1]"`), name, input, own params, for dense layers the
      weighted sum `x @ W.T + b` before the activation, and output; and the
      structure: the layer itself (`step.layer`), its activation's name
      (`step.act`) and which steps fed it (`step.sources`, `-1` for the
      model's input). Layers inside `residual`/`parallel` come first, then a
      step for the combinator itself with its combined output. Works under
      `jax.jit` too.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([3, 2])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> [(s.path, s.name) for s in lm.trace(model, params, jnp.ones(4))]
      [('serial[0]', 'Dense(3, relu)'), ('serial[1]', 'Dense(2)')]
      >>> [(s.act, s.sources, s.layer) for s in lm.trace(model, params, jnp.ones(4))]
      [('relu', (-1,), Dense(3, act='relu')), (None, (0,), Dense(2))]
    """
    check_layer_type("trace", model)
    return run(model, params, x, key, state)[1]
