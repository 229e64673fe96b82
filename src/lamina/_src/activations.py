"""Activations: JAX's own functions, looked up by name, and as layers.

Without an activation a stack of dense layers is one linear map, whatever its
depth; the activation is what lets a network bend. lamina adds no activation
math of its own: every name maps to the function in `jax.nn` (or `jnp`).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp

from lamina._src.layer import Layer, check_input_shape, layer_error

ActivationLike = Union[str, Callable[[jax.Array], jax.Array], None]


def _identity(x: jax.Array) -> jax.Array:
    return x


_identity.__name__ = "identity"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": _identity,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.swish,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "celu": jax.nn.celu,
    "softplus": jax.nn.softplus,
    "log_sigmoid": jax.nn.log_sigmoid,
    "hard_tanh": jax.nn.hard_tanh,
    "mish": jax.nn.mish,
}
"""Activation names accepted wherever lamina takes `act`."""


def resolve_activation(
    act: ActivationLike, where: str = "activation"
) -> tuple[Callable[[jax.Array], jax.Array], Optional[str]]:
    """Returns `(function, display name)` for an activation given by name or callable.

    Args:
      act: a name from `ACTIVATIONS` (e.g. `"relu"`), a callable such as
        `jax.nn.relu`, or `None` for no activation (display name `None`).
      where: the layer to name in an error.

    Raises:
      ValueError: an unknown name; the message lists the valid ones.
      TypeError: neither a string, a callable nor None.
    """
    if act is None:
        return _identity, None
    if isinstance(act, str):
        fn = ACTIVATIONS.get(act)
        if fn is None:
            raise layer_error(
                where,
                f"unknown activation {act!r}; choose one of "
                f"{', '.join(sorted(ACTIVATIONS))}, or pass a callable",
            )
        return fn, act
    if callable(act):
        return act, getattr(act, "__name__", repr(act))
    raise layer_error(
        where,
        f"act must be an activation name, a callable or None, got "
        f"{type(act).__name__} {act!r}",
        TypeError,
    )


def Activation(act: ActivationLike) -> Layer:
    """An element-wise activation as a layer, for use inside `lm.serial`.

    Args:
      act: a name from `lm.ACTIVATIONS` or a callable, e.g. `"relu"` or
        `jax.nn.gelu`.

    Returns:
      A `Layer` without params whose apply is `act(x)`; it keeps the shape and
      accepts leading batch axes.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Activation("relu")
      >>> layer.apply((), jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """
    fn, act_name = resolve_activation(act, "Activation")
    name = f"Activation({act_name})"

    def init(key, input_shape):
        return check_input_shape(name, input_shape), ()

    def apply(params, x, *, key=None):
        return fn(x)

    return Layer(init, apply, name)


def Relu() -> Layer:
    """`lm.Activation("relu")`: max(x, 0) element-wise."""
    return Activation("relu")


def Sigmoid() -> Layer:
    """`lm.Activation("sigmoid")`: 1 / (1 + exp(-x)) element-wise."""
    return Activation("sigmoid")


def Tanh() -> Layer:
    """`lm.Activation("tanh")` element-wise."""
    return Activation("tanh")


def Softmax() -> Layer:
    """`lm.Activation("softmax")` over the last axis."""
    return Activation("softmax")


def LogSoftmax() -> Layer:
    """`lm.Activation("log_softmax")` over the last axis."""
    return Activation("log_softmax")
