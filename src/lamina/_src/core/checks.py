"""Checks of what a layer is given when it runs: keys, input shapes and dtypes.

Shapes are static under `jax.jit`, so every check here runs once, when a
function is traced, and costs nothing per call. Each names the layer (or
lamina function) it is about, what it expected and what came.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.errors import layer_error


def check_input_shape(name: str, input_shape: Any, min_rank: int = 0) -> tuple[int, ...]:
    """Returns `input_shape` as a tuple of ints, or raises naming the layer."""
    if isinstance(input_shape, int) or not hasattr(input_shape, "__iter__"):
        raise layer_error(
            name,
            f"input_shape must be a tuple of ints (the shape of one example, "
            f"e.g. (784,)), got {input_shape!r}",
            TypeError,
        )
    shape = tuple(input_shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise layer_error(
            name, f"input_shape must hold ints, got {input_shape!r}", TypeError
        )
    if any(d < 1 for d in shape):
        raise layer_error(
            name, f"input_shape dimensions must be >= 1, got {shape}"
        )
    if any(d > MAX_SIZE for d in shape):
        raise layer_error(
            name, f"input_shape dimensions must be at most 2**31 - 1 = {MAX_SIZE}, got {shape}"
        )
    if len(shape) < min_rank:
        raise layer_error(
            name,
            f"expected an input_shape with at least {min_rank} dimension(s), "
            f"got {shape}",
        )
    return shape


def check_count(where: str, arg: str, value: Any, meaning: str = "") -> int:
    """`value` as an int >= 1 (a size, a count), or an error naming the layer and `arg`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise layer_error(
            where, f"{arg} must be an int{meaning}, got {type(value).__name__} {value!r}",
            TypeError,
        )
    if value < 1:
        raise layer_error(where, f"{arg} must be >= 1, got {value}")
    if int(value) > MAX_SIZE:
        # XLA's kernels index some axes with 32-bit ints: beyond this a
        # program can abort the whole process instead of raising.
        raise layer_error(where, f"{arg} must be at most 2**31 - 1 = {MAX_SIZE}, got {value}")
    return int(value)


MAX_SIZE = 2**31 - 1
"""The largest size lamina accepts for an axis or a count."""


def check_key(name: str, key: Any, *, optional: bool = False) -> None:
    """Raises a TypeError naming the layer unless `key` is a JAX PRNG key."""
    if key is None and optional:
        return
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return
    # Raw uint32[2] keys from jax.random.PRNGKey are still common.
    if dtype == jnp.uint32 and getattr(key, "shape", None) == (2,):
        return
    got = (
        f"{type(key).__name__} {key!r}"
        if dtype is None
        else f"array of dtype {dtype} and shape {getattr(key, 'shape', '?')}"
    )
    raise layer_error(
        name,
        f"expected a PRNG key such as jax.random.key(0), got {got}",
        TypeError,
    )


def check_float_input(name: str, x: Any) -> jax.Array:
    """Returns `x` as an array, raising a TypeError unless it is floating."""
    if isinstance(x, tuple) and any(hasattr(leaf, "shape") for leaf in jax.tree.leaves(x)):
        # jnp.asarray would stack equal shapes into one array without a word.
        raise layer_error(
            name,
            f"expected one array, got a tuple of {len(x)} inputs with shapes {shape_of(x)}; "
            f"this layer takes a single input (a tuple is for Concat, or for a parallel's "
            f"branches)",
            TypeError,
        )
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as error:
        raise layer_error(
            name, f"expected a floating-point array, got {type(x).__name__} {reprlib.repr(x)}",
            TypeError,
        ) from error
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise layer_error(
            name,
            f"expected a floating-point input, got x of dtype {x.dtype} with "
            f"shape {x.shape}; cast it first, e.g. x.astype(jnp.float32)",
            TypeError,
        )
    return x


def as_dtype(name: str, arg: str, value: Any, optional: bool = False) -> Optional[np.dtype]:
    """`value` as a floating-point `np.dtype`, or a TypeError naming the layer."""
    if value is None and optional:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise layer_error(
            name,
            f"{arg} must be a floating-point dtype such as jnp.float32 or jnp.bfloat16, "
            f"got {value!r}",
            TypeError,
        )
    return dtype


def shape_of(tree: Any) -> Any:
    """The shape of an array; a tuple or dict of shapes for a tuple or dict of arrays.

    Anything else is named by its type, for messages.
    """
    if hasattr(tree, "shape"):
        return tuple(tree.shape)
    if isinstance(tree, (tuple, list)):
        return tuple(shape_of(t) for t in tree)
    if isinstance(tree, dict):
        return {k: shape_of(v) for k, v in tree.items()}
    return type(tree).__name__


def size(shape: tuple[int, ...]) -> int:
    """Number of elements in an array of `shape`."""
    return math.prod(shape)


def as_array(value: Any) -> Any:
    """A (nested) Python list as one array; anything else as it came.

    Called inside jitted functions, where a list arrives as a list of
    tracers: stacking it there costs nothing per call, since it runs only
    while JAX traces, and arrays pass through untouched.
    """
    return jnp.asarray(value) if isinstance(value, list) else value


def check_int32(where: str, tree: Any, what: str = "xs") -> None:
    """Refuses host integers that JAX would silently wrap when it makes them 32-bit.

    Unless `jax_enable_x64` is set, JAX turns an int64 NumPy array into
    int32 by dropping the high bits: id 2**32 + 3 becomes 3, a valid-looking
    row of any embedding table. Arrays already on a device are left alone
    (they are 32-bit already).
    """
    if jax.config.read("jax_enable_x64"):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not isinstance(leaf, (np.ndarray, np.generic)) or leaf.dtype.itemsize != 8:
            continue
        if leaf.dtype.kind not in "iu":
            continue
        target = np.int32 if leaf.dtype.kind == "i" else np.uint32
        info = np.iinfo(target)
        values = np.asarray(leaf)
        bad = (values < info.min) | (values > info.max)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(np.atleast_1d(bad))[0]) if np.ndim(bad) else ()
            value = values[index] if index else values
            name = what + jax.tree_util.keystr(path)
            raise layer_error(
                where,
                f"{name} holds {int(value)} at index {index}, which does not fit "
                f"{np.dtype(target).name}: JAX keeps integers in 32 bits unless "
                f"jax_enable_x64 is set, and would silently wrap it to "
                f"{int(np.asarray(value).astype(target))}. Keep ids and labels below "
                f"{info.max + 1}, or enable 64-bit mode",
            )
