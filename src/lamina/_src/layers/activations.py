"""Activations: JAX's own functions, looked up by name, and as layers.

Without an activation a stack of dense layers is one linear map, whatever its
depth; the activation is what lets a network bend. lamina adds no activation
math of its own: every name maps to the function in `jax.nn` (or `jnp`).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Optional, Union

import jax
import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check

ActivationLike = Union[str, Callable[[jax.Array], jax.Array], None]


def _identity(x: jax.Array) -> jax.Array:
    return x


_identity.__name__ = "identity"


def _gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


_gelu.__name__ = "gelu"  # torch's nn.GELU(): the exact, erf form

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": _identity,
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softmax": jax.nn.softmax,
    "log_softmax": jax.nn.log_softmax,
    "gelu": _gelu,
    "gelu_tanh": jax.nn.gelu,  # jax.nn.gelu's default, torch's nn.GELU(approximate="tanh")
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
"""Activation names accepted wherever lamina takes `act`.

A name -> function mapping of JAX's own activations (`"relu"` is
`jax.nn.relu`); a layer built with one of these functions stores it by its
name, so it stays a value (equal, hashable, serialisable as JSON).

`"gelu"` is torch's `nn.GELU()`, the exact erf form, in every layer that
takes `act`; `"gelu_tanh"` is the tanh approximation (`jax.nn.gelu`'s
default, torch's `approximate="tanh"`), so `act=jax.nn.gelu` is stored as
`"gelu_tanh"`. `"gelu_exact"` is accepted as another name for `"gelu"`.
"""

ALIASES = {"gelu_exact": "gelu"}
"""Other names accepted for an activation; a layer stores the name they stand for."""


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
        act = ALIASES.get(act, act)
        fn = ACTIVATIONS.get(act)
        if fn is None:
            raise layer_error(
                where,
                f"unknown activation {act!r}; choose one of "
                f"{', '.join(sorted([*ACTIVATIONS, *ALIASES]))}, or pass a callable",
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


_NAMES = {id(fn): name for name, fn in reversed(ACTIVATIONS.items())}


def canonical_activation(act: ActivationLike, where: str) -> ActivationLike:
    """`act` checked, with a callable from `ACTIVATIONS` replaced by its name.

    Names are what a layer keeps: `Dense(3, act=jax.nn.relu) == Dense(3,
    act="relu")`, and a checkpoint can record the model as JSON.
    """
    resolve_activation(act, where)
    if isinstance(act, str):
        return ALIASES.get(act, act)
    if callable(act) and id(act) in _NAMES and ACTIVATIONS[_NAMES[id(act)]] is act:
        return _NAMES[id(act)]
    return act


def _checked(where: str, arg: str, act: Any) -> ActivationLike:
    return canonical_activation(act, where)


Act = Annotated[ActivationLike, Check(_checked)]
"""A layer field holding an activation: checked, and stored by name when it is one of ours."""


def act_name(act: ActivationLike) -> Optional[str]:
    """How an activation reads in a layer's name and trace: its name, or the function's."""
    if act is None or isinstance(act, str):
        return act
    return getattr(act, "__name__", repr(act))


def activation_fn(act: ActivationLike) -> Callable[[jax.Array], jax.Array]:
    """The function of an activation already checked by `canonical_activation`."""
    if act is None:
        return _identity
    return ACTIVATIONS[act] if isinstance(act, str) else act


class Activation(Builtin):
    """An element-wise activation as a layer, for use inside `lm.serial`.

    Args:
      act: a name from `lm.ACTIVATIONS` or a callable, e.g. `"relu"` or
        `jax.nn.gelu`.

    A layer without params whose apply is `act(x)`; it keeps the shape and
    accepts leading batch axes.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Activation("relu")
      >>> layer.apply((), jnp.array([-1.0, 2.0]))
      Array([0., 2.], dtype=float32)
    """

    act: Act

    stochastic = False

    @property
    def batch_polymorphic(self) -> bool:
        return isinstance(self.act, str)  # element-wise or over the last axis

    @property
    def name(self) -> str:
        return f"Activation({resolve_activation(self.act)[1]})"

    def forward(self, params, state, x, *, key, train):
        return activation_fn(self.act)(x), state


def Relu() -> Activation:
    """`lm.Activation("relu")`: max(x, 0) element-wise.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> layer = lm.Relu()
      >>> layer == lm.Activation("relu"), layer.apply((), jnp.array([-1.0, 2.0])).tolist()
      (True, [0.0, 2.0])
    """
    return Activation("relu")


def Sigmoid() -> Activation:
    """`lm.Activation("sigmoid")`: 1 / (1 + exp(-x)) element-wise.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.Sigmoid().apply((), jnp.array([0.0])).tolist()
      [0.5]
    """
    return Activation("sigmoid")


def Tanh() -> Activation:
    """`lm.Activation("tanh")` element-wise.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.Tanh().apply((), jnp.array([0.0, 100.0])).tolist()
      [0.0, 1.0]
    """
    return Activation("tanh")


def Softmax() -> Activation:
    """`lm.Activation("softmax")` over the last axis.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> y = lm.Softmax().apply((), jnp.array([1.0, 1.0, 1.0, 1.0]))
      >>> y.tolist(), float(y.sum())
      ([0.25, 0.25, 0.25, 0.25], 1.0)
    """
    return Activation("softmax")


def LogSoftmax() -> Activation:
    """`lm.Activation("log_softmax")` over the last axis.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> y = lm.LogSoftmax().apply((), jnp.array([0.0, 0.0]))
      >>> [round(v, 4) for v in y.tolist()]
      [-0.6931, -0.6931]
    """
    return Activation("log_softmax")
