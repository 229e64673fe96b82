"""The `Layer` type and the helpers every layer shares.

A layer is two pure functions and a name. `init(key, input_shape)` returns the
shape of one output example and the parameters; `apply(params, x, *, key=None)`
maps one example to one output. A third, optional function `trace` returns the
same output plus a record of every sub-layer's input and output; layers that
leave it out get a one-record trace built from `apply`.

Errors raised here carry the layer's name, and combinators prepend the
child's place (`serial[2]`) as the error travels up, so a message reads
`serial[2] Dense(10): ...` wherever in the model it started.
"""

from __future__ import annotations

import contextlib
import math
import reprlib
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Params = Any  # a pytree of jax.Array: dicts, tuples and () for no weights

InitFn = Callable[[jax.Array, Shape], tuple[Any, Params]]
ApplyFn = Callable[..., Any]


class TraceStep(NamedTuple):
    """One layer's part in a forward pass, as returned by `lm.trace`.

    Attributes:
      path: where the layer sits, e.g. `"serial[2]"` (`""` for the root).
      index: the same place as a path into the params tree, e.g. `(2,)`.
      name: the layer's name, e.g. `"Dense(10, relu)"`.
      input: the example the layer received.
      params: the layer's own parameters (`()` for none).
      weighted_sum: for dense layers `x @ W.T + b` before the activation,
        else `None`.
      output: what the layer returned.
    """

    path: str
    index: tuple[int, ...]
    name: str
    input: Any
    params: Params
    weighted_sum: Optional[jax.Array]
    output: Any


TraceFn = Callable[..., tuple[Any, list[TraceStep]]]


class Layer(NamedTuple):
    """A layer: pure `init` and `apply` functions and a readable name.

    Attributes:
      init: `init(key, input_shape) -> (output_shape, params)`, shapes of ONE
        example (no batch axis).
      apply: `apply(params, x, *, key=None) -> y` on one example; a PRNG key
        turns on stochastic layers such as dropout.
      name: a readable name used in errors, traces and summaries.
      trace: optional `trace(params, x, *, key=None) -> (y, steps)`; see
        `lm.trace`. Leave it out for a layer without sub-layers.
    """

    init: InitFn
    apply: ApplyFn
    name: str
    trace: Optional[TraceFn] = None

    def __repr__(self) -> str:
        return f"Layer({self.name})"


def trace_of(layer: Layer) -> TraceFn:
    """Returns `layer`'s trace function, or a one-step trace built from apply."""
    if layer.trace is not None:
        return layer.trace

    def leaf_trace(params, x, *, key=None):
        y = layer.apply(params, x, key=key)
        return y, [TraceStep("", (), layer.name, x, params, None, y)]

    return leaf_trace


def prefix_steps(steps: list[TraceStep], segment: str, i: int) -> list[TraceStep]:
    """Puts a child's trace steps under the parent's `segment` at position i."""
    return [
        s._replace(path=_join(segment, s.path), index=(i,) + s.index)
        for s in steps
    ]


def _join(segment: str, path: str) -> str:
    return segment if not path else f"{segment}.{path}"


def layer_error(name: str, message: str, cls: type = ValueError) -> Exception:
    """Builds an error that names the layer; combinators add its path later.

    Args:
      name: the layer's name, e.g. `"Dense(10)"`.
      message: what was expected and what came.
      cls: `ValueError` for bad values and shapes, `TypeError` for the wrong
        kind of object.
    """
    error = cls(f"{name}: {message}")
    error._lamina = (name, "", message)  # (layer name, path, message)
    return error


@contextlib.contextmanager
def child_context(segment: str, child: Layer) -> Iterator[None]:
    """Adds `segment` (e.g. `serial[2]`) to errors raised inside a child.

    lamina's own errors get the path written into their message; any other
    `ValueError`/`TypeError` (from a user's layer or from JAX) keeps its text
    and gets a note saying in which layer it happened.
    """
    try:
        yield
    except (ValueError, TypeError) as error:
        info = getattr(error, "_lamina", None)
        if info is None:
            if hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"(raised inside lamina layer {segment} {child.name})")
            raise
        name, path, message = info
        path = _join(segment, path)
        error._lamina = (name, path, message)
        error.args = (f"{path} {name}: {message}",)
        raise


def check_input_shape(name: str, input_shape: Any, min_rank: int = 0) -> Shape:
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
    if len(shape) < min_rank:
        raise layer_error(
            name,
            f"expected an input_shape with at least {min_rank} dimension(s), "
            f"got {shape}",
        )
    return shape


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
    try:
        x = jnp.asarray(x)
    except TypeError as error:
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


def size(shape: Shape) -> int:
    """Number of elements in an array of `shape`."""
    return math.prod(shape)
