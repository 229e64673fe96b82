"""Combinators: layers built from layers.

Forward propagation through a network is function composition: `serial(f, g)`
applies `f`, then `g`. A combinator's params are a tuple of its children's
params, in order, so `params[2]["W"]` is the weight matrix of the third layer
of a `serial`. Shapes flow through `init`, so a model never states its input
size twice.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from lamina._src.activations import ActivationLike
from lamina._src.dense import Dense
from lamina._src.layer import (
    Layer,
    TraceStep,
    check_input_shape,
    check_key,
    child_context,
    layer_error,
    prefix_steps,
    trace_of,
)


def _check_layers(where: str, layers: Sequence[Any]) -> tuple[Layer, ...]:
    if not layers:
        raise layer_error(where, "needs at least one layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = " (did you forget to call it, e.g. lm.Relu()?)" if callable(layer) else ""
            raise layer_error(
                where,
                f"argument {i} must be a lamina Layer, got "
                f"{type(layer).__name__} {layer!r}{hint}",
                TypeError,
            )
    return tuple(layers)


def _check_child_params(where: str, params: Any, n: int) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = (
            f"a {type(params).__name__} of length {len(params)}"
            if isinstance(params, (tuple, list))
            else type(params).__name__
        )
        raise layer_error(
            where,
            f"expected params as a tuple of {n} entries (one per layer), got {got}",
        )


def _split(key: Any, n: int) -> list[Any]:
    # Each child gets its own key, derived deterministically from the parent's,
    # so the same key always gives the same dropout masks.
    return [None] * n if key is None else list(jax.random.split(key, n))


def _traced_layer(init, trace, name: str) -> Layer:
    # A combinator's apply is its trace without the steps: under jit the steps
    # are dead code, so both compile to the same program and cannot drift apart.
    def apply(params, x, *, key=None):
        return trace(params, x, key=key)[0]

    return Layer(init, apply, name, trace)


def _names(layers: Sequence[Layer]) -> str:
    return ", ".join(layer.name for layer in layers)


def serial(*layers: Layer) -> Layer:
    """Composes layers: the output of each is the input of the next.

    Args:
      *layers: the layers, first to last.

    Returns:
      A `Layer` whose params are a tuple with one entry per layer.

    Example:
      >>> import jax, lamina as lm
      >>> model = lm.serial(lm.Dense(8, act="relu"), lm.Dense(2))
      >>> out_shape, params = model.init(jax.random.key(0), (4,))
      >>> out_shape, len(params)
      ((2,), 2)
    """
    layers = _check_layers("serial", layers)
    name = f"serial({_names(layers)})"

    def init(key, input_shape):
        check_key(name, key)
        shape = input_shape
        params = []
        for i, (layer, k) in enumerate(zip(layers, _split(key, len(layers)))):
            with child_context(f"serial[{i}]", layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def trace(params, x, *, key=None):
        _check_child_params(name, params, len(layers))
        steps = []
        for i, (layer, p, k) in enumerate(zip(layers, params, _split(key, len(layers)))):
            with child_context(f"serial[{i}]", layer):
                x, child_steps = trace_of(layer)(p, x, key=k)
            steps += prefix_steps(child_steps, f"serial[{i}]", i)
        return x, steps

    return _traced_layer(init, trace, name)


def parallel(*layers: Layer) -> Layer:
    """Feeds the same input to every layer; the output is a tuple of their outputs.

    Follow it with `lm.Concat()` to join the branches into one array.

    Args:
      *layers: the branches.

    Returns:
      A `Layer` whose output shape is a tuple of the branches' output shapes
      and whose params are a tuple with one entry per branch.
    """
    layers = _check_layers("parallel", layers)
    name = f"parallel({_names(layers)})"

    def init(key, input_shape):
        check_key(name, key)
        shapes, params = [], []
        for i, (layer, k) in enumerate(zip(layers, _split(key, len(layers)))):
            with child_context(f"parallel[{i}]", layer):
                shape, p = layer.init(k, input_shape)
            shapes.append(shape)
            params.append(p)
        return tuple(shapes), tuple(params)

    def trace(params, x, *, key=None):
        _check_child_params(name, params, len(layers))
        outs, steps = [], []
        for i, (layer, p, k) in enumerate(zip(layers, params, _split(key, len(layers)))):
            with child_context(f"parallel[{i}]", layer):
                y, child_steps = trace_of(layer)(p, x, key=k)
            outs.append(y)
            steps += prefix_steps(child_steps, f"parallel[{i}]", i)
        y = tuple(outs)
        return y, steps + [_own_step(name, x, params, y)]

    return _traced_layer(init, trace, name)


def residual(layer: Layer) -> Layer:
    """A skip connection: `x + layer(x)`; the layer must keep the input's shape.

    Args:
      layer: the wrapped layer (often a `serial` block).

    Returns:
      A `Layer` whose params are a one-entry tuple `(layer_params,)`.

    Raises:
      ValueError: at init, when `layer` changes the shape of its input.
    """
    (layer,) = _check_layers("residual", (layer,))
    name = f"residual({layer.name})"

    def init(key, input_shape):
        check_key(name, key)
        shape = check_input_shape(name, input_shape)
        with child_context("residual[0]", layer):
            out_shape, p = layer.init(key, shape)
        if tuple(out_shape) != shape:
            raise layer_error(
                name,
                f"x + f(x) needs f to keep the shape, but the wrapped layer maps "
                f"{shape} to {tuple(out_shape)}",
            )
        return shape, (p,)

    def trace(params, x, *, key=None):
        _check_child_params(name, params, 1)
        with child_context("residual[0]", layer):
            fx, child_steps = trace_of(layer)(params[0], x, key=key)
        y = x + fx
        return y, prefix_steps(child_steps, "residual[0]", 0) + [
            _own_step(name, x, params, y)
        ]

    return _traced_layer(init, trace, name)


def _own_step(name, x, params, y):
    # A combinator's own step shows what it did with its children's results
    # (the sum of a residual, the tuple of a parallel), so no value is hidden.
    return TraceStep("", (), name, x, params, None, y)


def mlp(
    features: Sequence[int],
    act: ActivationLike = "relu",
    final_act: ActivationLike = None,
) -> Layer:
    """A multi-layer perceptron: `Dense` layers with `act` between them.

    Args:
      features: output sizes of the layers, e.g. `[256, 256, 10]`; the last is
        the output layer, the others hidden layers.
      act: activation of the hidden layers.
      final_act: activation of the output layer (`None` leaves logits).

    Returns:
      `lm.serial(Dense(f0, act), ..., Dense(f_last, final_act))`.

    Example:
      >>> import jax, lamina as lm
      >>> model = lm.mlp([16, 3])
      >>> model.name
      'serial(Dense(16, relu), Dense(3))'
    """
    if isinstance(features, (int, str)) or not hasattr(features, "__iter__"):
        raise layer_error(
            "mlp",
            f"features must be a list of layer sizes such as [256, 10], got "
            f"{type(features).__name__} {features!r}",
            TypeError,
        )
    features = list(features)
    if not features:
        raise layer_error("mlp", "features must name at least one layer size, got []")
    *hidden, last = features
    return serial(*(Dense(f, act) for f in hidden), Dense(last, final_act))


def Concat(axis: int = -1) -> Layer:
    """Joins a tuple of arrays (e.g. the output of `lm.parallel`) along `axis`.

    Args:
      axis: the axis of one example to join along; negative counts from the end.
    """
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise layer_error(
            "Concat", f"axis must be an int, got {type(axis).__name__} {axis!r}", TypeError
        )
    name = f"Concat(axis={axis})"

    def init(key, input_shape):
        if not isinstance(input_shape, tuple) or not all(
            isinstance(s, tuple) for s in input_shape
        ):
            raise layer_error(
                name,
                f"expects a tuple of inputs (e.g. from lm.parallel), got input "
                f"shape {input_shape!r}",
            )
        shapes = [check_input_shape(name, s, min_rank=1) for s in input_shape]
        _check_joinable(name, shapes, axis)
        ax = axis % len(shapes[0])
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), ()

    def apply(params, xs, *, key=None):
        if not isinstance(xs, (tuple, list)):
            raise layer_error(
                name, f"expects a tuple of arrays, got {type(xs).__name__}", TypeError
            )
        # The same check as init, at trace time: jnp.concatenate's own message
        # does not say which layer.
        _check_joinable(name, [jnp.shape(x) for x in xs], axis)
        return jnp.concatenate(xs, axis=axis)

    return Layer(init, apply, name)


def _check_joinable(name: str, shapes: Sequence[tuple[int, ...]], axis: int) -> None:
    rank = len(shapes[0]) if shapes else 0
    if not -rank <= axis < rank or any(len(s) != rank for s in shapes):
        raise layer_error(name, f"cannot join shapes {list(shapes)} along axis {axis}")
    ax = axis % rank
    rest = [s[:ax] + s[ax + 1 :] for s in shapes]
    if any(r != rest[0] for r in rest):
        raise layer_error(
            name,
            f"shapes {list(shapes)} differ outside axis {axis}, so they cannot be joined",
        )
