"""Conformance checks: does a layer keep the contract every lamina layer keeps?

`check_layer(layer, input_shape)` runs a layer through what lamina promises
of any layer: `init` tells the truth about shapes, params are finite, `apply`
is a pure function that `jax.jit`, `jax.vmap` and `jax.grad` transform
correctly, and the output has the expected dtype. Float inputs and integer
inputs (token ids) are both supported. A layer with state (e.g.
`lm.BatchNorm`) is checked in inference mode at its `init_state`, and its
state must stay put in inference and come from the whole batch in training.
It stops at the first broken property and raises a `LayerCheckError` (an
`AssertionError`) naming the property, the layer and the numbers.
`parametrize(cases)` makes one pytest test per layer of a list.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from lamina._src.core.errors import LaminaError
from lamina._src.core.forward import BATCH_AXIS
from lamina._src.core.layer import Layer, Params, check_key, check_layer_type, layer_error, shape_of
from lamina._src.core.params import param_shapes, path_str

PROPERTIES = ("shape", "finite", "deterministic", "jit", "retrace", "vmap", "gradient", "dtype",
              "state")
"""The properties `check_layer` checks, in the order it checks them."""

# `with enable_x64(True):` turns float64 on inside the block and restores the
# previous setting after it; the one definition lamina's tests use too.
# jax >= 0.7 has jax.enable_x64; older releases keep it under jax.experimental.
# (hasattr, not truthiness: bool(jax.enable_x64) raises.)
enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64


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


def _kind(error: BaseException) -> str:
    """The name to show for an error: a lamina error reads as its built-in kind."""
    if isinstance(error, LaminaError):
        return next(c for c in type(error).__mro__ if c.__module__ == "builtins").__name__
    return type(error).__name__


class _Case(NamedTuple):
    layer: Layer  # stateless: for a layer with state, its inference view at `state`
    params: Params
    x: Any  # one example
    xs: Any  # `batch` examples
    y: Any  # apply(params, x)
    key: jax.Array  # for stochastic apply
    input_dtype: np.dtype  # of every input leaf
    rtol: float
    atol: float
    stateful: Optional[Layer] = None  # the layer with state that `layer` views
    state: Any = None  # its state from init_state


def check_layer(
    layer: Layer,
    input_shape: Any,
    *,
    key: Optional[jax.Array] = None,
    batch: int = 3,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dtype: Optional[Any] = None,
    grad_eps: float = 1e-6,
    input_dtype: Any = jnp.float32,
    int_high: int = 2,
) -> None:
    """Checks that `layer` keeps the layer contract, property by property.

    In order, stopping at the first failure:

    - `shape`: the output shape `init` declares is the shape `apply` returns,
      and `jax.eval_shape(init)` agrees with `init` (tree, shapes, dtypes);
      for a layer with state, `jax.eval_shape` of `init_state` agrees with
      `init_state` too.
    - `finite`: params, the state and the output hold no NaN or infinity.
    - `deterministic`: two `apply` calls with `key=None` give bit-identical
      outputs, and so do two calls with the same key.
    - `jit`: `jax.jit(apply)` equals `apply`, with and without a key.
    - `retrace`: the jitted apply traces once over calls with same-shaped
      inputs, including params as an optimizer step returns them (a Python
      float param, weakly typed, would make every train step compile twice).
    - `vmap`: `jax.vmap(apply)` over `batch` examples (each with its own key
      too) equals a loop over the examples, so no example sees another.
    - `gradient`: gradients with respect to params and input exist, are
      finite, and match central finite differences in a random direction
      (`jax.test_util.check_grads`, reverse mode). This runs in float64 (x64
      is on during the check only) with step `grad_eps` and tolerance 1e-5;
      a step that small rarely straddles a kink such as relu's at 0, and a
      mismatch must repeat at a second random input to count. The step and
      tolerance follow the lowest float precision the layer computes in,
      read from the jaxpr of the float64 apply (every equation's outputs,
      inside `jit`, `checkpoint`, `custom_jvp`/`custom_vjp`, `scan`, `cond`
      ... too): if anything runs in float32 (a float32 output, a cast, or
      `jax.nn.dot_product_attention`, whose softmax stays float32), the
      step is 1e-3 and the tolerance 1e-2; if anything runs in 16 bits,
      only existence and finiteness are checked. For integer input there
      is no gradient with respect to the input: only params are checked.
      Inference mode (`key=None`).
    - `dtype`: the output (every leaf) has dtype `dtype`.
    - `state` (layers with state only), in order: inference (`train=False`)
      returns the state unchanged, bit for bit, same tree and dtypes;
      training (`train=True`) under `jax.vmap(..., axis_name="batch",
      out_axes=(0, None))` over `batch` examples (each with its own key)
      returns a new state with the tree, shapes and dtypes of `init_state`'s
      and finite values, the same for every example (a state taken from one
      example, not reduced with `jax.lax.pmean(value, "batch")`, fails);
      a second training call on the same batch and keys returns a
      bit-identical state; and `jax.jit` of the training call equals it.

    For a layer with state (`layer.stateful`), `state = layer.init_state(
    input_shape)` and every property but `state` checks the inference-mode
    function `apply(params, x, key=None) = layer.apply(params, x, key=key,
    state=state)[0]` (the gradient check runs it with the state in float64).

    Float inputs are standard normal, drawn in float32 from `key` and cast
    to `input_dtype`; integer inputs are uniform in `[0, int_high)`, so by
    default 0 or 1 (ids valid for any embedding table of 2 or more rows).
    Any exception raised inside a check fails that check, chained with
    `from`. Calls `chex.clear_trace_counter()`.

    Args:
      layer: the `Layer` to check.
      input_shape: the shape of one example, e.g. `(4,)`; for a layer taking
        a tuple of arrays (e.g. `lm.Concat()`), a tuple of shapes.
      key: PRNG key for params, inputs and stochastic apply; default
        `jax.random.key(0)`. Use the default (threefry) implementation:
        "rbg" keys draw differently under vmap, which the vmap check reports.
      batch: number of examples for the `vmap` check, >= 1.
      rtol: relative tolerance when comparing outputs (jit, vmap); for
        16-bit outputs at least 1e-2 is used.
      atol: absolute tolerance, likewise.
      dtype: the expected output dtype; `None` means `input_dtype` for a
        float input and float32 for an integer input. Pass e.g.
        `jnp.bfloat16` for `lm.Dense(4, dtype=jnp.bfloat16)`.
      grad_eps: finite-difference step for the float64 gradient check.
      input_dtype: dtype of every input array: a float dtype, or an integer
        dtype such as `jnp.int32` for a layer taking token ids. Canonicalized
        like JAX does (int64 is int32 unless x64 is on).
      int_high: integer inputs are drawn from `[0, int_high)`; set it to
        the vocabulary size to draw every id an embedding table holds.
        Unused for float input.

    Raises:
      LayerCheckError: an `AssertionError` whose message names the property
        (one of `PROPERTIES`), the layer, and what differed by how much.
      TypeError: `layer`, `input_shape`, `key`, `batch`, `input_dtype` or
        `int_high` is of the wrong kind.
      ValueError: `int_high` is below 1, or above what `input_dtype` holds.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.testing.check_layer(lm.serial(lm.Dense(3, act="tanh"), lm.LayerNorm()), (4,))
      >>> double = lm.Layer(lambda k, s: (s, ()), lambda p, x, *, key=None: 2 * x, "Double")
      >>> lm.testing.check_layer(double, (2, 3))
      >>> half = lm.Layer(lambda k, s: (s, ()),
      ...                 lambda p, x, *, key=None: (x / 2).astype(jnp.float16), "Half")
      >>> lm.testing.check_layer(half, (3,))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      lamina.testing.LayerCheckError: Half fails check_layer's 'dtype' check: ...
      >>> import jax
      >>> embed = lm.Layer(lambda k, s: (s + (3,), {"W": jax.random.normal(k, (10, 3))}),
      ...                  lambda p, ids, *, key=None: p["W"][ids], "Embed")
      >>> lm.testing.check_layer(embed, (5,), input_dtype=jnp.int32, int_high=10)
      >>> lm.testing.check_layer(lm.BatchNorm(), (3, 5))  # a layer with state
    """
    check_layer_type("check_layer", layer)
    input_shape = _as_input_shape(input_shape)
    key = jax.random.key(0) if key is None else key
    check_key("check_layer", key)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise layer_error("check_layer", f"batch must be an int >= 1, got {batch!r}", TypeError)
    input_dtype = _as_input_dtype(input_dtype)
    _check_int_high(int_high, input_dtype)
    if dtype is None:
        dtype = input_dtype if jnp.issubdtype(input_dtype, jnp.floating) else jnp.float32
    # Inputs come from NumPy, seeded by the key: a jax.random draw would
    # compile once per input shape, and a property test draws many shapes.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def draw(batch=None):
        return _random_input(rng, input_shape, input_dtype, int_high, batch)

    init_key, apply_key = jax.random.split(key)
    x = draw()
    stateful, state, view = None, None, layer
    if layer.stateful:  # every check but the last sees it in inference mode
        stateful, state = layer, _check_init_state(layer, input_shape)
        view = _inference_view(layer, state)
    params, y = _check_shape(view, init_key, input_shape, x)
    case = _Case(view, params, x, draw(batch), y, apply_key, input_dtype, rtol, atol, stateful, state)
    _check_finite(case)
    y_key = _check_deterministic(case)
    jitted = _check_jit(case, y_key)
    _check_retrace(case, jitted, draw())
    _check_vmap(case, jitted)
    _check_gradient(case, rng, grad_eps, draw())
    _check_dtype(case, dtype)
    if stateful is not None:
        _check_state(case)


def parametrize(cases: Sequence[tuple[Layer, Any]]) -> Any:
    """One pytest test per `(layer, input_shape)` case, with readable ids.

    Args:
      cases: `(layer, input_shape)` pairs.

    Returns:
      `pytest.mark.parametrize("layer, input_shape", cases, ids=...)`, with
      ids such as `"Dense(3, relu)-4"` or `"Concat(axis=-1)-3|5"`.

    Raises:
      TypeError: a case is not a `(Layer, input_shape)` pair.

    Example:
      >>> import lamina as lm
      >>> @lm.testing.parametrize([(lm.Dense(3), (4,)), (lm.Flatten(), (2, 2))])
      ... def test_my_layers(layer, input_shape):
      ...     lm.testing.check_layer(layer, input_shape)
      >>> [m.kwargs["ids"] for m in test_my_layers.pytestmark]
      [['Dense(3)-4', 'Flatten()-2x2']]
    """
    import pytest  # here, so that lamina.testing imports without pytest

    cases = list(cases)
    for i, case in enumerate(cases):
        if not isinstance(case, (tuple, list)) or len(case) != 2:
            raise layer_error(
                "parametrize",
                f"case {i} must be a (layer, input_shape) pair, got {case!r}",
                TypeError,
            )
        check_layer_type(f"parametrize: case {i}", case[0])
    ids = [f"{layer.name}-{_shape_id(shape)}" for layer, shape in cases]
    return pytest.mark.parametrize("layer, input_shape", [tuple(c) for c in cases], ids=ids)


@contextlib.contextmanager
def _checking(prop: str, name: str, doing: str, differs: str = "") -> Iterator[None]:
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
        raise LayerCheckError(prop, name, f"{doing} raised {_kind(error)}: {error}") from error


def _check_shape(layer, key, input_shape, x):
    name = layer.name
    with _checking("shape", name, f"init(key, {input_shape})"):
        out_shape, params = layer.init(key, input_shape)
    with _checking("shape", name, f"apply(params, x) for x of shape {input_shape}"):
        y = layer.apply(params, x)
    got = shape_of(y)
    if _as_shape(out_shape) != got:
        raise LayerCheckError(
            "shape", name,
            f"init declared output shape {out_shape!r} for input shape {input_shape}, "
            f"but apply returned shape {got}",
        )
    with _checking("shape", name, "jax.eval_shape(init)"):
        abstract_shape, abstract = param_shapes(layer, input_shape, key=key)
    if _as_shape(abstract_shape) != _as_shape(out_shape):
        raise LayerCheckError(
            "shape", name,
            f"under jax.eval_shape init declares output shape {abstract_shape!r}, "
            f"but {out_shape!r} when run",
        )
    _compare_abstract(name, abstract, params)
    return params, y


def _check_init_state(layer: Layer, input_shape: Any) -> Any:
    """`layer.init_state(input_shape)`, checked against `jax.eval_shape` of it."""
    name = layer.name
    with _checking("shape", name, f"init_state({input_shape})"):
        state = layer.init_state(input_shape)
    with _checking("shape", name, "jax.eval_shape(init_state)"):
        abstract = jax.eval_shape(lambda: layer.init_state(input_shape))
    _compare_abstract(name, abstract, state, what="state", fn="init_state")
    return state


def _inference_view(layer: Layer, state: Any) -> Layer:
    """`layer` in inference mode at `state`, as a layer without state.

    Its apply is `apply(params, x, *, key=None) -> y`, the `y` of
    `layer.apply(params, x, key=key, state=state, train=False)`.
    """

    def apply(params, x, *, key=None):
        out = layer.apply(params, x, key=key, state=state, train=False)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise layer_error(
                layer.name,
                f"a layer with state must return (y, new_state) from apply, got "
                f"{type(out).__name__}",
                TypeError,
            )
        return out[0]

    return Layer(layer.init, apply, layer.name)


def _compare_abstract(name: str, abstract: Any, tree: Any, what: str = "params",
                      fn: str = "init") -> None:
    """`tree` (`what`, made by `fn`) against `abstract`, `fn` under `jax.eval_shape`."""
    if jax.tree.structure(abstract) != jax.tree.structure(tree):
        raise LayerCheckError(
            "shape", name,
            f"jax.eval_shape({fn}) gives {what} tree {jax.tree.structure(abstract)}, "
            f"but {fn} gives {jax.tree.structure(tree)}",
        )
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(abstract),
                                 jax.tree.leaves(tree)):
        got_shape, got_dtype = tuple(jnp.shape(got)), jnp.result_type(got)
        if (tuple(want.shape), want.dtype) != (got_shape, got_dtype):
            raise LayerCheckError(
                "shape", name,
                f"{what} leaf {path_str(path) or '(root)'!r}: jax.eval_shape({fn}) "
                f"gives {want.dtype}{list(want.shape)}, {fn} gives {got_dtype}{list(got_shape)}",
            )


def _check_finite(case: _Case) -> None:
    for what, tree in (("params", case.params), ("state from init_state", case.state),
                       ("output of apply(params, x)", case.y)):
        bad = _non_finite(tree)
        if bad:
            raise LayerCheckError("finite", case.layer.name, f"{what} at {bad}")


def _non_finite(tree: Any) -> str:
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


def _check_deterministic(case: _Case) -> Any:
    apply, name = case.layer.apply, case.layer.name
    with _checking("deterministic", name, "calling apply(params, x) again",
                   "two calls apply(params, x) with key=None differ"):
        chex.assert_trees_all_equal(apply(case.params, case.x), case.y)
    with _checking("deterministic", name, "calling apply(params, x, key=k)",
                   "two calls apply(params, x, key=k) with the same key differ"):
        y_key = apply(case.params, case.x, key=case.key)
        chex.assert_trees_all_equal(apply(case.params, case.x, key=case.key), y_key)
    return y_key


def _both(layer: Layer):
    """`(apply(params, x), apply(params, x, key=k))`: one program for both modes."""

    # Defined here, not a lambda: chex fingerprints a function by its source
    # code, which a user's lambda or functools.partial may not have.
    def apply_both(params, x, k):
        return layer.apply(params, x), layer.apply(params, x, key=k)

    return apply_both


def _check_jit(case: _Case, y_key: Any):
    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(_both(case.layer), n=1))
    rtol, atol = _tolerance(case)
    with _checking("jit", case.layer.name, "jax.jit(apply)"):
        got, got_key = jitted(case.params, case.x, case.key)
    with _checking("jit", case.layer.name, "", "jax.jit(apply)(params, x) differs from apply(params, x)"):
        chex.assert_trees_all_close(got, case.y, rtol=rtol, atol=atol)
    with _checking("jit", case.layer.name, "", "jax.jit(apply) with a key differs from apply with that key"):
        chex.assert_trees_all_close(got_key, y_key, rtol=rtol, atol=atol)
    return jitted


def _after_update(leaf: Any) -> Any:
    # What an optimizer step returns: optax.apply_updates casts each leaf to
    # its dtype, which drops the weak type a Python-scalar leaf had at init.
    # NumPy does the arithmetic, so nothing compiles.
    dtype = jnp.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return leaf
    return jax.device_put(np.asarray(leaf).astype(dtype) * dtype.type(0.5))


def _check_retrace(case: _Case, jitted, x2: Any) -> None:
    updated = jax.tree.map(_after_update, case.params)
    try:
        jitted(case.params, x2, case.key)
        jitted(updated, x2, case.key)
    except AssertionError as error:
        if "traced >" not in str(error):
            raise LayerCheckError("retrace", case.layer.name, f"jax.jit(apply): {error}") from error
        weak = [path_str(p) or "(root)" for p, leaf in jax.tree_util.tree_leaves_with_path(case.params)
                if getattr(jnp.asarray(leaf), "weak_type", False)]
        hint = (f"; params leaves {weak} are weakly typed (Python scalars?) at init but "
                f"not after an update: create them with jnp.asarray(value, jnp.float32)"
                if weak else "")
        raise LayerCheckError(
            "retrace", case.layer.name,
            f"jax.jit(apply) traced 2 times, expected 1, over 3 calls with the same input "
            f"shapes and params as an optimizer step returns them{hint}",
        ) from error
    except Exception as error:  # noqa: BLE001 - a crash inside a check fails it
        raise LayerCheckError("retrace", case.layer.name,
                              f"jax.jit(apply) raised {_kind(error)}: {error}") from error


def _check_vmap(case: _Case, jitted) -> None:
    layer, n = case.layer, jax.tree.leaves(case.xs)[0].shape[0]
    rtol, atol = _tolerance(case)
    what = f"jax.vmap(apply) over {n} examples differs from a loop over them"
    with _checking("vmap", layer.name, f"jax.vmap(apply) over {n} examples"):
        keys = jax.random.split(case.key, n)
        # Not jitted: eager vmap compiles per primitive and shape, which a
        # property test's many small models share; a jit would compile each.
        batched, batched_key = jax.vmap(_both(layer), in_axes=(None, 0, 0))(
            case.params, case.xs, keys
        )
        # The loop reuses the jitted single-example program (equal to apply,
        # checked above), so it compiles nothing new.
        xs = jax.tree.map(np.asarray, case.xs)
        looped = [jitted(case.params, jax.tree.map(lambda a: a[i], xs), keys[i]) for i in range(n)]
    with _checking("vmap", layer.name, "", what):
        chex.assert_trees_all_close(batched, _stack([y for y, _ in looped]), rtol=rtol, atol=atol)
    with _checking("vmap", layer.name, "", f"{what}, each example with its own key"):
        chex.assert_trees_all_close(batched_key, _stack([y for _, y in looped]), rtol=rtol, atol=atol)


def _check_gradient(case: _Case, rng: np.random.Generator, eps: float, x2: Any) -> None:
    name = case.layer.name
    # Integer input (token ids) has no gradient: only params are free then.
    which = (0, 1) if jnp.issubdtype(case.input_dtype, jnp.floating) else (0,)
    labels = [("params", "input")[i] for i in which]
    with enable_x64(True):
        # Eager, with NumPy arrays for check_grads to perturb (as in the vmap
        # check): eager programs are shared by models of equal shapes.
        apply64, floats, x = _in_float64(case)

        def f(float_params, x):  # flat, so tuple outputs (parallel) work too
            return ravel_pytree(apply64(float_params, x))[0]

        args = (floats, x)
        if not jax.tree.leaves([args[i] for i in which]):
            return  # nothing to differentiate: integer input, no float params
        with _checking("gradient", name, "differentiating apply with jax.vjp"):
            out, vjp = jax.vjp(_holding(f, args, which), *(args[i] for i in which))
            grads = vjp(rng.standard_normal(out.shape).astype(out.dtype))
        for what, tree in zip(labels, grads):
            if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tree)):
                raise LayerCheckError("gradient", name,
                                      f"the gradient with respect to {what} holds NaN or infinity")
        with _checking("gradient", name, "tracing apply with jax.make_jaxpr"):
            bits = _min_compute_bits(jax.make_jaxpr(apply64)(floats, x))
        if bits <= 16:
            return  # finite differences in 16 bits are noise
        step, tol = (eps, 1e-5) if bits == 64 else (1e-3, 1e-2)

        def check(args, which=which):
            check_grads(_holding(f, args, which), [args[i] for i in which], order=1,
                        modes=["rev"], eps=step, atol=tol, rtol=tol)

        doing = "checking gradients against finite differences"
        try:
            with _checking("gradient", name, doing):
                check(args)
        except LayerCheckError as error:
            if not isinstance(error.__cause__, AssertionError):
                raise
            # A kink (relu's at 0) straddled by the step does not repeat at
            # another input; a wrong derivative does.
            args = (floats, _as_float64(x2))
            with _checking("gradient", name, doing,
                           f"reverse-mode gradients with respect to {_culprit(check, args, which)} "
                           f"differ from finite differences (step {step}, tolerance {tol}) "
                           f"at two random inputs"):
                check(args)


def _holding(f, args, which):
    """`f` as a function of the arguments at positions `which`, the others held at `args`."""

    def g(*free):
        full = list(args)
        for i, arg in zip(which, free):
            full[i] = arg
        return f(*full)

    return g


def _culprit(check, args, which) -> str:
    """Which of params and input has the wrong gradient, for the message."""
    wrong = []
    for i in which:
        if not jax.tree.leaves(args[i]):
            continue  # no float params
        try:
            check(args, (i,))
        except Exception:  # noqa: BLE001 - any failure marks the argument
            wrong.append(("params", "input")[i])
    return " and ".join(wrong) or "params and input together"


def _in_float64(case: _Case):
    """`(apply64, float_params, x)`: apply as a function of the float params leaves."""
    leaves, treedef = jax.tree.flatten(case.params)
    where = [i for i, leaf in enumerate(leaves) if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
    # A float32 state would make the layer compute in float32, loosening the check.
    layer = case.layer if case.stateful is None else _inference_view(case.stateful, _as_float64(case.state))

    def apply64(float_leaves, x):
        full = list(leaves)
        for i, leaf in zip(where, float_leaves):
            full[i] = leaf
        return layer.apply(jax.tree.unflatten(treedef, full), x)

    return apply64, [_as_float64(leaves[i]) for i in where], _as_float64(case.x)


def _min_compute_bits(closed_jaxpr: Any) -> int:
    """The lowest float precision a jaxpr computes in, sub-jaxprs included.

    Counts the outputs of every equation (and of the jaxpr), not its inputs
    or constants: a float32 constant that float64 arithmetic promotes costs
    no precision, a cast to float32 and what follows it does. Sub-jaxprs are
    found by shape, whatever the primitive calls them (`jit`'s `jaxpr`,
    `cond`'s `branches`, `custom_vjp`'s `call_jaxpr`, ...).

    Returns:
      The width in bits, 64 when nothing is narrower.
    """
    bits = [_float_bits(aval) for aval in closed_jaxpr.out_avals]
    todo = [closed_jaxpr.jaxpr]
    while todo:
        jaxpr = todo.pop()
        for eqn in jaxpr.eqns:
            bits.extend(_float_bits(var.aval) for var in eqn.outvars)
            for param in eqn.params.values():
                todo.extend(_sub_jaxprs(param))
    return min((b for b in bits if b), default=64)


def _sub_jaxprs(param: Any) -> list:
    if isinstance(param, (tuple, list)):
        return [j for p in param for j in _sub_jaxprs(p)]
    if hasattr(param, "eqns"):  # a Jaxpr
        return [param]
    if hasattr(getattr(param, "jaxpr", None), "eqns"):  # a ClosedJaxpr
        return [param.jaxpr]
    return []


def _float_bits(aval: Any) -> int:
    """Width of a float (or complex) aval's dtype in bits; 0 for any other aval."""
    dtype = getattr(aval, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        return 0
    return jnp.finfo(dtype).bits


def _check_dtype(case: _Case, want: Any) -> None:
    want = jnp.dtype(want)
    for path, leaf in jax.tree_util.tree_leaves_with_path(case.y):
        got = jnp.result_type(leaf)
        if got != want:
            where = f" at {path_str(path)!r}" if path else ""
            raise LayerCheckError(
                "dtype", case.layer.name,
                f"for {case.input_dtype} input the output{where} has dtype {got}, expected "
                f"{want} (pass dtype= to check_layer for a layer with its own compute dtype)",
            )


def _train_batch(layer: Layer, out_axes: Any = (0, None)):
    """`train(params, state, xs, keys) -> (ys, new_state)`: one training call over a batch."""

    def train(params, state, xs, keys):
        def one(x, k):
            return layer.apply(params, x, key=k, state=state, train=True)

        return jax.vmap(one, out_axes=out_axes, axis_name=BATCH_AXIS)(xs, keys)

    return train


def _check_state(case: _Case) -> None:
    """Inference keeps the state; training makes one state per batch, the same each time and under jit."""
    layer, params, state = case.stateful, case.params, case.state
    name, n = layer.name, jax.tree.leaves(case.xs)[0].shape[0]
    with _checking("state", name, "apply(params, x, state=state, train=False)"):
        _, kept = layer.apply(params, case.x, state=state, train=False)
    mismatch = _state_mismatch(state, kept)
    if mismatch:
        raise LayerCheckError("state", name,
                              f"inference (train=False) must return the state unchanged, but {mismatch}")

    training = (f"training (train=True) under jax.vmap(..., axis_name={BATCH_AXIS!r}, "
                f"out_axes=(0, None)) over {n} examples")
    train, keys = _train_batch(layer), jax.random.split(case.key, n)
    with _checking("state", name, training):
        try:
            ys, new = train(params, state, case.xs, keys)
        except ValueError as error:
            if "but out_axes is None" not in str(error):  # jax.vmap's words for it
                raise
            varying = _varying_leaves(layer, params, state, case.xs, keys)
            raise LayerCheckError(
                "state", name,
                f"in {training} the new state differs between examples{varying}; a layer "
                f"with state must reduce over the batch, e.g. with "
                f"jax.lax.pmean(value, {BATCH_AXIS!r}) (jax.vmap said: {error})",
            ) from error
    mismatch = _state_mismatch(state, new, values=False)
    if mismatch:
        raise LayerCheckError("state", name,
                              f"{training} must return a state like init_state's, but {mismatch}")
    bad = _non_finite(new)
    if bad:
        raise LayerCheckError("state", name, f"{training} returns a state whose leaf {bad}")

    with _checking("state", name, f"{training}, a second time"):
        _, again = train(params, state, case.xs, keys)
    mismatch = _state_mismatch(new, again)
    if mismatch:
        raise LayerCheckError(
            "state", name,
            f"two calls of {training} with the same batch and keys must return the same "
            f"state, but {mismatch}",
        )

    rtol, atol = _tolerance(case)
    with _checking("state", name, f"jax.jit of {training}"):
        ys_jit, new_jit = jax.jit(train)(params, state, case.xs, keys)
    with _checking("state", name, "", f"the new state of jax.jit({training}) differs from eager"):
        chex.assert_trees_all_close(new_jit, new, rtol=rtol, atol=atol)
    with _checking("state", name, "", f"the output of jax.jit({training}) differs from eager"):
        chex.assert_trees_all_close(ys_jit, ys, rtol=rtol, atol=atol)


def _varying_leaves(layer: Layer, params: Params, state: Any, xs: Any, keys: jax.Array) -> str:
    """Which state leaves differ between examples, and by how much: `": leaf 'ema' by up to 2.1"`."""
    try:
        _, per_example = _train_batch(layer, out_axes=0)(params, state, xs, keys)
    except Exception:  # noqa: BLE001 - only a hint for the message
        return ""
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(per_example):
        values = _number(_host(leaf))
        if values.size and np.any(values != values[:1]):
            spread = float(np.max(np.abs(values - values[:1])))
            found.append(f"leaf {path_str(path) or '(root)'!r} by up to {spread:.3g}")
    return f": {', '.join(found)}" if found else ""


def _state_mismatch(want: Any, got: Any, values: bool = True) -> str:
    """What first differs between two states, as a phrase; `""` if nothing does.

    Compares tree, then each leaf's shape and dtype, then (with `values`)
    its bits.
    """
    if jax.tree.structure(got) != jax.tree.structure(want):
        return f"the state tree is {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        where = f"state leaf {path_str(path) or '(root)'!r}"
        (w_shape, w_dtype), (g_shape, g_dtype) = _spec(w), _spec(g)
        if (g_shape, g_dtype) != (w_shape, w_dtype):
            return f"{where} is {g_dtype}{list(g_shape)}, expected {w_dtype}{list(w_shape)}"
        if not values or not np.size(w):
            continue
        a, b = _host(w), _host(g)
        # Bits, element by element: -0.0 is not 0.0, and NaN is NaN.
        differ = np.any(a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1),
                        axis=1)
        if np.any(differ):
            diff = np.max(np.abs(_number(a) - _number(b)))
            return (f"{where} (shape {w_shape}) differs in {int(np.sum(differ))} of {a.size} "
                    f"value(s), max absolute difference {diff:.3g}")
    return ""


def _spec(leaf: Any) -> tuple[tuple[int, ...], Any]:
    return tuple(jnp.shape(leaf)), jnp.result_type(leaf)


def _host(leaf: Any) -> np.ndarray:
    """A state leaf as a NumPy array; a PRNG key as its key data."""
    if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.ascontiguousarray(leaf)


def _number(a: np.ndarray) -> np.ndarray:
    """`a` in a dtype that subtracts: complex128 or float64."""
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def _min_float_bits(tree: Any) -> int:
    """The lowest precision among the floating leaves of `tree` (a layer's output)."""
    return min((jnp.finfo(leaf.dtype).bits for leaf in jax.tree.leaves(tree)
                if jnp.issubdtype(leaf.dtype, jnp.inexact)), default=64)


def _tolerance(case: _Case) -> tuple[float, float]:
    if _min_float_bits(case.y) <= 16:
        return max(case.rtol, 1e-2), max(case.atol, 1e-2)
    return case.rtol, case.atol


def _as_float64(tree: Any) -> Any:
    """Float leaves as float64 NumPy arrays; integer leaves (token ids) as they are."""

    # NumPy, not jnp: a jnp cast compiles once per leaf shape.
    def cast(a):
        a = np.asarray(a)
        return a.astype(np.float64) if jnp.issubdtype(a.dtype, jnp.inexact) else a

    return jax.tree.map(cast, tree)


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(a) for a in leaves]), *trees)


def _is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in s
    )


def _as_input_shape(input_shape: Any) -> Any:
    if _is_shape(input_shape):
        return tuple(input_shape)
    if isinstance(input_shape, (tuple, list)) and input_shape:
        return tuple(_as_input_shape(s) for s in input_shape)
    raise layer_error(
        "check_layer",
        f"input_shape must be the shape of one example, e.g. (4,), or a tuple of "
        f"shapes for a layer taking a tuple, got {input_shape!r}",
        TypeError,
    )


def _as_input_dtype(input_dtype: Any) -> np.dtype:
    expected = "input_dtype must be a float or integer dtype such as jnp.float32 or jnp.int32"
    try:
        dtype = None if input_dtype is None else jnp.dtype(input_dtype)
    except TypeError:
        dtype = None
    if dtype is None or not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
        raise layer_error("check_layer", f"{expected}, got {input_dtype!r}", TypeError)
    return jax.dtypes.canonicalize_dtype(dtype)


def _check_int_high(int_high: Any, input_dtype: np.dtype) -> None:
    if isinstance(int_high, bool) or not isinstance(int_high, (int, np.integer)):
        raise layer_error("check_layer", f"int_high must be an int, got {int_high!r}", TypeError)
    if int_high < 1:
        raise layer_error("check_layer", f"int_high must be >= 1, got {int_high}", ValueError)
    if jnp.issubdtype(input_dtype, jnp.integer) and int_high - 1 > jnp.iinfo(input_dtype).max:
        raise layer_error(
            "check_layer",
            f"int_high must be at most {jnp.iinfo(input_dtype).max + 1} for input_dtype "
            f"{input_dtype} (ids are drawn from [0, int_high)), got {int_high}",
            ValueError,
        )


def _random_input(rng: np.random.Generator, shape: Any, dtype: np.dtype, int_high: int,
                  batch: Optional[int] = None) -> Any:
    if not _is_shape(shape):
        return tuple(_random_input(rng, s, dtype, int_high, batch) for s in shape)
    size = (() if batch is None else (batch,)) + tuple(shape)
    if jnp.issubdtype(dtype, jnp.integer):
        return jax.device_put(rng.integers(0, int_high, size, dtype=dtype))
    return jax.device_put(rng.standard_normal(size, np.float32).astype(dtype))


def _as_shape(shape: Any) -> Any:
    """A declared output shape with lists made tuples, for comparison."""
    if _is_shape(shape):
        return tuple(shape)
    if isinstance(shape, (tuple, list)):
        return tuple(_as_shape(s) for s in shape)
    return shape


def _shape_id(shape: Any) -> str:
    if _is_shape(shape):
        return "x".join(map(str, shape)) or "scalar"
    if isinstance(shape, (tuple, list)):
        return "|".join(_shape_id(s) for s in shape)
    return repr(shape)
