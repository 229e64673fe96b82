"""Merge layers: one array from the tuple of arrays a `parallel` makes.

`Concat` joins the branches along an axis; `Add` and `Multiply` combine them
element-wise. A ResNet block with a projection shortcut is
`serial(parallel(main, shortcut), Add(), Activation("relu"))`.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_input_shape, size
from lamina._src.core.errors import layer_error


def check_tuple_shapes(name: str, input_shape: Any) -> tuple[tuple[int, ...], ...]:
    """The shapes of a tuple input (e.g. from `lm.parallel`), each checked."""
    if not isinstance(input_shape, tuple) or not input_shape or not all(
        isinstance(s, tuple) for s in input_shape
    ):
        raise layer_error(
            name,
            f"expects a tuple of inputs (e.g. from lm.parallel), got input shape {input_shape!r}",
        )
    return tuple(check_input_shape(name, s) for s in input_shape)


def broadcast_shapes(name: str, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The shape `shapes` combine to element-wise: equal ranks, each axis equal or 1.

    Unequal ranks are refused: lining up trailing axes silently (NumPy's
    rule) turns a `(C,)` bias meant for a `(C, H, W)` image into one over W.
    """
    if len({len(s) for s in shapes}) > 1:
        raise layer_error(
            name,
            f"inputs must have the same number of axes, got shapes {list(shapes)}; "
            f"reshape the smaller one first (e.g. lm.Reshape((C, 1, 1)) for a per-channel value)",
        )
    out = []
    for axis, sizes in enumerate(zip(*shapes)):
        big = {n for n in sizes if n != 1}
        if len(big) > 1:
            raise layer_error(
                name,
                f"shapes {list(shapes)} differ on axis {axis} ({' vs '.join(map(str, sizes))}); "
                f"each axis must be equal or 1",
            )
        out.append(big.pop() if big else 1)
    return tuple(out)


class _Merge(Builtin):
    """What `Add` and `Multiply` share; they differ in `_combine`."""

    stochastic = False
    batch_polymorphic = True

    @functools.cached_property
    def name(self) -> str:
        return f"{type(self).__name__}()"

    def check_input_shape(self, input_shape):
        return check_tuple_shapes(self.name, input_shape)

    def output_shape(self, input_shape):
        return broadcast_shapes(self.name, input_shape)

    def check_input(self, xs, params):
        if not isinstance(xs, (tuple, list)) or not xs:
            raise layer_error(
                self.name,
                f"expects a tuple of arrays (e.g. from lm.parallel), got {type(xs).__name__}",
                TypeError,
            )
        xs = [jnp.asarray(x) for x in xs]
        # Under lm.forward the batch axis is vmapped away; a whole batch
        # (batch_polymorphic) carries it on every input alike.
        broadcast_shapes(self.name, [x.shape for x in xs])
        return xs

    def forward(self, params, state, xs, *, key, train):
        return functools.reduce(self._combine, xs), state

    def _combine(self, a, b):
        raise NotImplementedError

    def flops(self, step):
        n = len(step.input) if isinstance(step.input, (tuple, list)) else 1
        return (n - 1) * size(step.output.shape)


class Add(_Merge):
    """The element-wise sum of a tuple of arrays, e.g. a residual with a projection shortcut.

    The inputs have the same number of axes; each axis is equal across
    them or 1 (broadcast), as `torch.add` on same-rank tensors.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.serial(lm.parallel(lm.Dense(3), lm.Dense(3)), lm.Add())
      >>> _, params = block.init(jax.random.key(0), (4,))
      >>> lm.Add().apply((), (jnp.ones(3), jnp.arange(3.0))).tolist()
      [1.0, 2.0, 3.0]
    """

    def _combine(self, a, b):
        return a + b


class Multiply(_Merge):
    """The element-wise product of a tuple of arrays, e.g. a gate times a value.

    Shapes as for `Add`: same number of axes, each equal or 1.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.Multiply().apply((), (jnp.full(3, 2.0), jnp.arange(3.0))).tolist()
      [0.0, 2.0, 4.0]
    """

    def _combine(self, a, b):
        return a * b
