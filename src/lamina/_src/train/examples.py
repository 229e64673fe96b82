"""Model inputs as trees: one array, or a tuple or dict of arrays sharing the example axis.

A model with several inputs (an image and a diffusion timestep, tokens and a
mask, a decoder's tokens and the encoder's memory) takes them as a tuple or
a dict; every array in it has the examples on axis 0. A (nested) list is
one array, as NumPy reads it. Everything the train step, `fit` and
`evaluate` do to a batch (count, cut, gather, pad, hash) goes through here.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.errors import layer_error


def is_tree(value: Any) -> bool:
    """Whether `value` is several inputs (a tuple or dict), not one array."""
    return isinstance(value, (tuple, dict))


def leaves(inputs: Any) -> list:
    return jax.tree.leaves(inputs)


def tmap(fn: Callable[[Any], Any], inputs: Any) -> Any:
    """`fn` on every array of `inputs`; a list counts as one array."""
    return jax.tree.map(fn, inputs, is_leaf=lambda v: isinstance(v, list))


def arrays(inputs: Any, device: bool = True) -> Any:
    """Every array of `inputs` as a jax array (`device`) or a NumPy one; jax arrays stay."""
    convert = jnp.asarray if device else np.asarray
    return tmap(lambda a: a if isinstance(a, jax.Array) else convert(a), inputs)


def describe(inputs: Any) -> str:
    """`"(5, 3)"` or `"((5, 3), (5,))"`: the shapes, for messages."""
    shapes = tmap(lambda a: tuple(np.shape(a)), inputs)
    return str(shapes)


def count(where: str, inputs: Any, what: str = "inputs") -> int:
    """The number of examples: the length of axis 0, which every array must share."""
    found = leaves(tmap(lambda a: a, inputs))
    if not found:
        raise layer_error(where, f"{what} hold no arrays, got {inputs!r:.80}")
    if any(np.ndim(a) < 1 for a in found):
        raise layer_error(where, f"{what} need a leading example axis, got shapes {describe(inputs)}")
    sizes = {np.shape(a)[0] for a in found}
    if len(sizes) > 1:
        raise layer_error(
            where, f"{what} must share their example axis (axis 0), got shapes {describe(inputs)}")
    return sizes.pop()


def example_shape(inputs: Any) -> Any:
    """The shape of one example: `(3,)` for an array, `((3,), (1,))` for a tuple of two."""
    if isinstance(inputs, tuple):
        return tuple(example_shape(a) for a in inputs)
    if isinstance(inputs, dict):
        return {k: example_shape(v) for k, v in inputs.items()}
    return tuple(np.shape(inputs)[1:])


def example_dtype(inputs: Any) -> Any:
    """The dtype of the first array (what `check_params` needs to know of token ids)."""
    return jnp.result_type(leaves(inputs)[0])


def head(inputs: Any, n: int) -> Any:
    return tmap(lambda a: a[:n], inputs)


def row(inputs: Any, i: int) -> Any:
    return tmap(lambda a: a[i], inputs)


def take(inputs: Any, idx: Any) -> Any:
    return tmap(lambda a: jnp.take(a, idx, axis=0), inputs)


def pad(inputs: Any, size: int) -> Any:
    """Every array padded with zeros along axis 0 to `size` examples."""
    def one(x):
        if x.shape[0] == size:
            return x
        xp = jnp if isinstance(x, jax.Array) else np
        return xp.concatenate([x, xp.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)])

    return tmap(one, inputs)


def spec(inputs: Any) -> str:
    """`"(64,) float32"`: one example's shape and the dtype JAX computes in, per array."""
    def one(x):
        return f"{tuple(x.shape[1:])} {jax.dtypes.canonicalize_dtype(x.dtype)}"

    if not is_tree(inputs):
        return one(inputs)
    return str(tmap(one, inputs))
