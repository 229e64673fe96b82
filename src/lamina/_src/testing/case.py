"""What every property check of `check_layer` shares: the error, the case, and comparisons."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.errors import LaminaError
from lamina._src.core.layer import Layer, Params
from lamina._src.core.params import path_str

# `with enable_x64(True):` turns float64 on inside the block and restores the
# previous setting after it; the one definition lamina's tests use too.
# jax >= 0.7 has jax.enable_x64; older releases keep it under jax.experimental.
# (hasattr, not truthiness: bool(jax.enable_x64) raises.)
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64  # type: ignore[attr-defined]

class LayerCheckError(LaminaError, AssertionError):
    """A layer broke one of the properties `check_layer` checks.

    An `AssertionError`, so pytest reports it as a failed test, and an
    `lm.LaminaError`.

    Attributes:
      property: the broken property, one of `PROPERTIES` (e.g. `"vmap"`).
      layer_name: the layer's name (also `.layer`).

    Example:
      >>> import lamina as lm
      >>> broken = lm.Layer(lambda key, shape: ((3,), ()),          # declares (3,) ...
      ...                   lambda params, x, *, key=None: x, "Liar")  # ... returns (4,)
      >>> try:
      ...     lm.testing.check_layer(broken, (4,))
      ... except lm.testing.LayerCheckError as error:
      ...     print(error.property, error.layer_name, isinstance(error, AssertionError))
      shape Liar True
    """

    __module__ = "lamina.testing"  # where users import it from

    def __init__(self, prop: str, layer_name: str, message: str):
        self.property = prop
        self.layer_name = layer_name
        super().__init__(message, layer=layer_name)

    def _text(self) -> str:
        return f"{self.layer_name} fails check_layer's {self.property!r} check: {self.message}"

    def __reduce__(self):
        return type(self), (self.property, self.layer_name, self.message)

def kind(error: BaseException) -> str:
    """The name to show for an error: a lamina error reads as its built-in kind."""
    if isinstance(error, LaminaError):
        return next(c for c in type(error).__mro__ if c.__module__ == "builtins").__name__
    return type(error).__name__

class Case(NamedTuple):
    layer: Layer  # stateless: for a layer with state, its inference view at `state`
    params: Params
    x: Any  # one example
    xs: Any  # `batch` examples
    y: Any  # apply(params, x)
    key: jax.Array  # for stochastic apply
    input_dtype: Any  # a dtype per input leaf, in a tree shaped like the input
    rtol: float
    atol: float
    stateful: Optional[Layer] = None  # the layer with state that `layer` views
    state: Any = None  # its state from init_state
    claims: Optional[Layer] = None  # the layer whose stochastic/batch_polymorphic are checked

@contextlib.contextmanager
def checking(prop: str, name: str, doing: str, differs: str = "") -> Iterator[None]:
    """Reports a failure inside the block as `prop` failing.

    An `AssertionError` (chex's and NumPy's comparisons, with their numbers)
    is reported after `differs`; any other exception as raised while `doing`.
    """
    try:
        yield
    except LayerCheckError:
        raise
    except AssertionError as error:
        raise LayerCheckError(prop, name, f"{differs or doing}: {error}") from error
    except Exception as error:  # noqa: BLE001 - a crash inside a check fails it
        raise LayerCheckError(prop, name, f"{doing} raised {kind(error)}: {error}") from error

def non_finite(tree: Any) -> str:
    """Where `tree` first holds NaN or infinity, e.g. `"'W' (shape (3,)) holds 1 ..."`; `""` if nowhere."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            continue
        values = np.asarray(leaf, np.float64)
        bad = int(np.sum(~np.isfinite(values)))
        if bad:
            return (f"{path_str(path) or '(root)'!r} (shape {values.shape}) holds "
                    f"{bad} NaN or infinite value(s) out of {values.size}")
    return ""

def spec_of(leaf: Any) -> tuple[tuple[int, ...], Any]:
    return tuple(jnp.shape(leaf)), jnp.result_type(leaf)

def host(leaf: Any) -> np.ndarray:
    """A state leaf as a NumPy array; a PRNG key as its key data."""
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.ascontiguousarray(leaf)

def number(a: np.ndarray) -> np.ndarray:
    """`a` in a dtype that subtracts: complex128 or float64."""
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)

def min_float_bits(tree: Any) -> int:
    """The lowest precision among the floating leaves of `tree` (a layer's output)."""
    return min((jnp.finfo(leaf.dtype).bits for leaf in jax.tree.leaves(tree)
                if jnp.issubdtype(leaf.dtype, jnp.inexact)), default=64)

def tolerance(case: Case) -> tuple[float, float]:
    if min_float_bits(case.y) <= 16:
        return max(case.rtol, 1e-2), max(case.atol, 1e-2)
    return case.rtol, case.atol

def as_float64(tree: Any) -> Any:
    """Float leaves as float64 NumPy arrays; integer leaves (token ids) as they are."""

    # NumPy, not jnp: a jnp cast compiles once per leaf shape.
    def cast(a):
        a = np.asarray(a)
        return a.astype(np.float64) if jnp.issubdtype(a.dtype, jnp.inexact) else a

    return jax.tree.map(cast, tree)

def stack_trees(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *trees)

def is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in s
    )

def as_shape(shape: Any) -> Any:
    """A declared output shape with lists made tuples, for comparison."""
    if is_shape(shape):
        return tuple(shape)
    if isinstance(shape, (tuple, list)):
        return tuple(as_shape(s) for s in shape)
    return shape
