"""Forward propagation made visible: every layer's input and output, step by step."""

from __future__ import annotations

from typing import Any, Optional

import jax

from lamina._src.core.layer import Layer, Params, check_layer_type, missing_state, record_call
from lamina._src.core.record import TraceStep


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
    if state is None and model.stateful:
        raise missing_state(model)
    return record_call(model, params, () if state is None else state, x, key)[2]
