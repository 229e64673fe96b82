"""Layers that pass values through unchanged or only change their shape."""

from __future__ import annotations

import numbers
from typing import Annotated, Any

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_input_shape, size
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check, Int


class Identity(Builtin):
    """Returns its input unchanged; a placeholder, e.g. the skip side of a block.

    Any input passes: an array, or a tuple of them (e.g. from `lm.parallel`).

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.Identity(), lm.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> params[0], model.apply(params, jnp.ones(3)).shape
      ((), (2,))
    """

    name = "Identity()"
    stochastic = False
    batch_polymorphic = True

    def check_input_shape(self, input_shape):
        if isinstance(input_shape, dict):
            return {k: self.check_input_shape(s) for k, s in input_shape.items()}
        if is_several(input_shape):
            return tuple(self.check_input_shape(s) for s in input_shape)
        return check_input_shape(self.name, input_shape)

    def forward(self, params, state, x, *, key, train):
        return x, state


def is_several(input_shape: Any) -> bool:
    """Whether `input_shape` describes several inputs: a tuple of shapes (or of such tuples)."""
    return isinstance(input_shape, tuple) and bool(input_shape) and all(
        isinstance(s, (tuple, dict)) for s in input_shape)


def _selector(where: str, arg: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise layer_error(
            where, f"{arg} must be an int (a tuple's position) or a str (a dict's key), got "
                   f"{type(value).__name__} {value!r}", TypeError)
    return value


class Select(Builtin):
    """One of several inputs: entry `index` of a tuple, or key `index` of a dict.

    A model with several inputs routes each to its branch with it, e.g. an
    image and a timestep: `serial(parallel(serial(Select(0), Conv(...)),
    serial(Select(1), Dense(...))), Add())`.

    Args:
      index: a position in a tuple input (negative counts from the end), or
        a key of a dict input.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Select(1).init(jax.random.key(0), ((3, 8, 8), (4,)))[0]
      (4,)
      >>> lm.Select("t").apply((), {"x": jnp.ones(2), "t": jnp.zeros(1)})
      Array([0.], dtype=float32)
    """

    index: Annotated[Any, Check(_selector)]

    stochastic = False
    batch_polymorphic = True

    def check_input_shape(self, input_shape):
        return Identity().check_input_shape(input_shape)

    def output_shape(self, input_shape):
        return self._pick(input_shape, "input shape", is_several(input_shape), input_shape)

    def check_input(self, x, params):
        several = isinstance(x, (tuple, list, dict))
        self._pick(x, "input", isinstance(x, (tuple, list)), None if several else jnp.shape(x))
        return x

    def _pick(self, value: Any, what: str, several: bool, shape: Any = None) -> Any:
        if isinstance(value, dict):
            got = f"a dict with keys {sorted(value)}"
        elif several:
            got = f"a tuple of {len(value)}"
        else:
            got = f"one input of shape {tuple(shape)}"
        if isinstance(self.index, str):
            if not isinstance(value, dict) or self.index not in value:
                raise layer_error(
                    self.name, f"expects a dict {what} with key {self.index!r}, got {got}")
            return value[self.index]
        if not several or not -len(value) <= self.index < len(value):
            raise layer_error(
                self.name, f"expects a tuple {what} with an entry {self.index}, got {got}")
        return value[self.index]

    def forward(self, params, state, x, *, key, train):
        return self._pick(x, "input", True), state


class Flatten(Builtin):
    """Flattens one example to a vector: shape `(h, w, ...)` becomes `(h * w * ...,)`.

    Flattening is row-major, as `torch.nn.Flatten` on a channels-first
    example, so a `Dense` after it takes torch's `nn.Linear` weights as they are.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Flatten().init(jax.random.key(0), (8, 8))[0]
      (64,)
    """

    name = "Flatten()"
    min_rank = 1
    stochastic = False

    def output_shape(self, input_shape):
        return (size(input_shape),)

    def check_input(self, x, params):
        x = jnp.asarray(x)
        if x.ndim == 0:
            raise layer_error(self.name, "expected an array with at least one axis, got a scalar")
        return x

    def forward(self, params, state, x, *, key, train):
        return jnp.reshape(x, (size(x.shape),)), state


def _target_shape(where: str, arg: str, value: Any) -> tuple[int, ...]:
    """A shape with sizes >= 1 and at most one -1, as torch's `view` takes it."""
    if isinstance(value, (int, numbers.Integral)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in value
    ):
        raise layer_error(where, f"{arg} must be a tuple of ints, got {value!r}", TypeError)
    shape = tuple(int(d) for d in value)
    if any(d < 1 and d != -1 for d in shape) or shape.count(-1) > 1:
        raise layer_error(where, f"{arg} must hold sizes >= 1 and at most one -1, got {value!r}")
    return shape


class Reshape(Builtin):
    """Gives one example a new shape with the same values, row-major, as `x.view(batch, *shape)`.

    Args:
      shape: the new shape of ONE example (no batch axis); one entry may be
        -1, inferred from the others.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Reshape((2, -1)).init(jax.random.key(0), (3, 4))[0]
      (2, 6)
      >>> lm.Reshape((4, 1, 1)).apply((), jnp.arange(4.0)).shape  # a per-channel value
      (4, 1, 1)
    """

    shape: Annotated[tuple[int, ...], Check(_target_shape)]

    stochastic = False

    def output_shape(self, input_shape):
        n = size(input_shape)
        known = size(tuple(d for d in self.shape if d != -1))
        if -1 in self.shape:
            if n % known:
                raise layer_error(
                    self.name,
                    f"cannot reshape an example of shape {input_shape} ({n} values) to "
                    f"{self.shape}: {n} is not a multiple of {known}",
                )
            return tuple(n // known if d == -1 else d for d in self.shape)
        if known != n:
            raise layer_error(
                self.name,
                f"cannot reshape an example of shape {input_shape} ({n} values) to "
                f"{self.shape} ({known} values)",
            )
        return self.shape

    def check_input(self, x, params):
        x = jnp.asarray(x)
        self.output_shape(x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        return jnp.reshape(x, self.output_shape(x.shape)), state


def _permutation(where: str, arg: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in value
    ):
        raise layer_error(where, f"{arg} must be a tuple of ints, got {value!r}", TypeError)
    dims = tuple(int(d) for d in value)
    if sorted(dims) != list(range(len(dims))):
        raise layer_error(
            where,
            f"{arg} must be a permutation of 0..{len(dims) - 1} (the axes of one example, "
            f"no batch axis), got {value!r}",
        )
    return dims


class Permute(Builtin):
    """Reorders the axes of one example: output axis i is input axis `dims[i]`.

    The batch axis stays first: `Permute((1, 2, 0))` is torch's
    `x.permute(0, 2, 3, 1)` on a batch, channels-first `(C, H, W)` to
    channels-last `(H, W, C)`.

    Args:
      dims: a permutation of `0 .. rank - 1`, the axes of one example.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Permute((1, 2, 0)).init(jax.random.key(0), (3, 8, 8))[0]
      (8, 8, 3)
    """

    dims: Annotated[tuple[int, ...], Check(_permutation)]

    stochastic = False

    def output_shape(self, input_shape):
        if len(input_shape) != len(self.dims):
            raise layer_error(
                self.name,
                f"dims {self.dims} permute {len(self.dims)} axes, but one example has shape "
                f"{tuple(input_shape)} ({len(input_shape)} axes; the batch axis is not counted)",
            )
        return tuple(input_shape[d] for d in self.dims)

    def check_input(self, x, params):
        x = jnp.asarray(x)
        self.output_shape(x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        return jnp.transpose(x, self.dims), state


class Take(Builtin):
    """One position along an axis of each example, that axis dropped: `x[..., index, ...]`.

    A vision transformer reads its prediction from the class token,
    `Take(0)` on its `(S + 1, D)` sequence; a language model's next-token
    logits are `Take(-1)`. As torch's `x.select(axis + 1, index)` on a
    batch.

    Args:
      index: the position; negative counts from the end.
      axis: the axis of ONE example (no batch axis); negative counts from
        the end.

    Raises:
      TypeError: `index` or `axis` is not an int.
      ValueError: at init or apply, `axis` is not an axis of the input or
        `index` is out of its range.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> lm.Take(0).init(jax.random.key(0), (5, 8))[0]
      (8,)
      >>> lm.Take(-1, axis=1).apply((), jnp.arange(6.0).reshape(2, 3))
      Array([2., 5.], dtype=float32)
    """

    index: Int
    axis: Int = 0

    min_rank = 1
    stochastic = False

    def _place(self, input_shape) -> tuple[int, int]:
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise layer_error(
                self.name,
                f"axis {self.axis} is not an axis of one example of shape {tuple(input_shape)} "
                f"({rank} axes; the batch axis is not counted)",
            )
        axis = self.axis % rank
        n = input_shape[axis]
        if not -n <= self.index < n:
            raise layer_error(
                self.name,
                f"index {self.index} is out of range for axis {axis} of size {n} (input "
                f"shape {tuple(input_shape)})",
            )
        return self.index % n, axis

    def output_shape(self, input_shape):
        _, axis = self._place(input_shape)
        return tuple(input_shape[:axis]) + tuple(input_shape[axis + 1:])

    def check_input(self, x, params):
        x = jnp.asarray(x)
        self._place(x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        index, axis = self._place(x.shape)
        return jnp.take(x, index, axis=axis), state
