"""Model state: what a layer keeps between calls besides its params (e.g. running statistics).

Params are what the optimizer trains; state is what the forward pass itself
updates, such as BatchNorm's running mean and variance. It is a second
pytree that mirrors the params tree, with `()` wherever a layer has none, and
it is always explicit: pass `state=` and the new state comes back as the
last value.
"""

from __future__ import annotations

from typing import Any

from lamina._src.core.layer import Layer, Shape, check_layer_type


def init_state(model: Layer, input_shape: Shape) -> Any:
    """The model's initial state for inputs of `input_shape`.

    Works under `jax.eval_shape` (to get the state's shapes without memory).

    Args:
      model: a `Layer`.
      input_shape: the shape of one example, e.g. `(784,)`.

    Returns:
      A pytree mirroring the params tree: a stateful layer's state (for
      `lm.BatchNorm`, `{"running_mean", "running_var",
      "num_batches_tracked"}`) where it sits, `()` for layers without state;
      `()` for a model without any.

    Example:
      >>> import lamina as lm
      >>> model = lm.serial(lm.Dense(3), lm.BatchNorm(), lm.Dense(2))
      >>> state = lm.init_state(model, (4,))
      >>> state[0], sorted(state[1]), state[2]
      ((), ['num_batches_tracked', 'running_mean', 'running_var'], ())
    """
    check_layer_type("init_state", model)
    return model.init_state(input_shape) if model.stateful else ()


def has_state(model: Layer) -> bool:
    """Whether `model` (or a layer inside it) has state, e.g. `lm.BatchNorm`.

    Example:
      >>> import lamina as lm
      >>> lm.has_state(lm.mlp([4, 2])), lm.has_state(lm.serial(lm.Dense(4), lm.BatchNorm()))
      (False, True)
    """
    check_layer_type("has_state", model)
    return model.stateful
