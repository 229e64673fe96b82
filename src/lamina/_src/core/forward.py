"""Forward propagation over a batch: `lm.forward`, and what the train step and export share."""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from lamina._src.core.checks import as_array, check_int32, check_key, shape_of
from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.core.layer import Layer, Params, check_layer_type, missing_state

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
      (an array or a nested Python list; for a model with several inputs, a
      tuple or dict of arrays sharing axis 0) and returning outputs of
      shape `(N, *output_shape)`, or `(outputs, state)` when given `state`.

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
        batch_size(model.name, xs)
        if state is None:
            return apply_batch(model, params, xs, key)
        return apply_batch_state(model, params, xs, key, state, train)

    # The name shows in profiles and XLA's dumps; JAX's compilation cache
    # names its files by it too, where a deep model's full name is too long.
    name = model.name if len(model.name) <= 60 else model.name[:57] + "..."
    fwd.__name__ = f"forward[{name}]"
    return _Checked(model.name, jax.jit(fwd, static_argnames="train"))


@functools.cache
def _device_array() -> type:
    # Found on first use, not at import: making an array starts JAX's backend,
    # after which jax.distributed.initialize can no longer be called.
    return type(jnp.zeros(()))


class _Checked:
    """A jitted function that first refuses host inputs JAX would change silently.

    Inside the jitted function it is too late: JAX has already made an int64
    id 32-bit by then. Everything else (`lower`, `trace`, ...) is the jitted
    function's own.
    """

    def __init__(self, where: str, jitted: Callable[..., Any]):
        self._where, self._jitted = where, jitted
        functools.update_wrapper(self, jitted)

    def __call__(self, params: Params, xs: Any, **kwargs: Any) -> Any:
        # A device array is 32-bit already; `type(...) is` costs less than
        # isinstance against jax.Array's ABC, on a path taken every call.
        if type(xs) is not _device_array():
            check_int32(self._where, xs)
        if kwargs:
            return self._jitted(params, xs, **kwargs)
        return self._jitted(params, xs)

    def __getattr__(self, name: str) -> Any:
        if name == "_jitted":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._jitted, name)


def batch_size(where: str, xs: Any) -> int:
    """The number of examples in `xs`: an array, or a tuple of arrays sharing the batch axis."""
    leaves = jax.tree.leaves(xs)
    if not leaves or any(jnp.ndim(leaf) < 1 for leaf in leaves):
        raise layer_error(
            where,
            f"lm.forward expects a batch with a leading batch axis, got xs with shape "
            f"{shape_of(xs)}",
        )
    sizes = sorted({jnp.shape(leaf)[0] for leaf in leaves})
    if len(sizes) > 1:
        raise layer_error(
            where, f"the inputs must share their batch axis, got xs with shapes {shape_of(xs)}")
    return sizes[0]


def apply_batch(
    model: Layer, params: Params, xs: jax.Array, key: Optional[jax.Array] = None
) -> jax.Array:
    """`model` over axis 0 of `xs` without state; with a key, one key per example."""
    if model.stateful:
        raise missing_state(model)
    return apply_batch_state(model, params, xs, key, (), False)[0]


def apply_batch_state(
    model: Layer, params: Params, xs: jax.Array, key: Optional[jax.Array], state: Any,
    train: bool,
) -> tuple[Any, Any]:
    """`(outputs, new_state)`: `model.call` over axis 0 of `xs`, vmapped over an axis named `"batch"`.

    The state is shared by every example (not vmapped), and the new state
    must be too: layers with state reduce over the batch axis. A model
    without state returns the state it was given.
    """
    check_key(model.name, key, optional=True)
    if not model.stateful:
        if key is None or not model.stochastic:
            if model.batch_polymorphic and all(jnp.ndim(a) >= 2 for a in jax.tree.leaves(xs)):
                # The same numbers as vmap, traced in about half the time.
                try:
                    return model.call(params, (), xs)[0], state
                except LaminaError:
                    pass  # vmap raises it again, naming one example's shapes
            return jax.vmap(lambda x: model.call(params, (), x)[0])(xs), state
        keys = jax.random.split(key, batch_size(model.name, xs))
        return jax.vmap(lambda x, k: model.call(params, (), x, key=k)[0])(xs, keys), state

    def one(x, k):
        return model.call(params, state, x, key=k, train=train)

    per_example: Optional[jax.Array] = None
    if key is not None and model.stochastic:
        per_example = jax.random.split(key, batch_size(model.name, xs))
    try:
        return jax.vmap(one, in_axes=(0, None if per_example is None else 0),
                        out_axes=(0, None), axis_name=BATCH_AXIS)(xs, per_example)
    except ValueError as error:
        if "out_axes" not in str(error):
            raise
        raise layer_error(
            model.name,
            f"the new state differs from example to example; a layer with state must "
            f"reduce over the batch, e.g. jax.lax.pmean(value, {BATCH_AXIS!r}) ({error})",
        ) from None
