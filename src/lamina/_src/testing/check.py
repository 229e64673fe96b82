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

from typing import Any, Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_key, shape_of
from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer, check_layer_type, children
from lamina._src.core.params import param_shapes, path_str
from lamina._src.testing.case import (
    Case,
    LayerCheckError,
    as_shape,
    checking,
    is_shape,
    kind,
    non_finite,
    stack_trees,
    tolerance,
)
from lamina._src.testing.gradient import check_gradient
from lamina._src.testing.state import (
    check_init_state,
    check_state,
    compare_abstract,
    inference_view,
)

PROPERTIES = ("shape", "finite", "deterministic", "jit", "retrace", "vmap", "gradient", "dtype",
              "state")
"""The properties `check_layer` checks, in the order it checks them."""

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
      only existence and finiteness are checked. Integer and bool inputs
      have no gradient: they are held, and only params and float inputs
      are checked. Inference mode (`key=None`).
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
    default 0 or 1 (ids valid for any embedding table of 2 or more rows);
    bool inputs (masks, torch's sense: True leaves a position out) are True
    with probability 1/2, except one random position of every row of their
    last axis, which is False, so that no query loses every key.
    Any exception raised inside a check fails that check, chained with
    `from`. Calls `chex.clear_trace_counter()`.

    Args:
      layer: the `Layer` to check.
      input_shape: the shape of one example, e.g. `(4,)`; for a layer taking
        a tuple of arrays (e.g. `lm.Concat()`), a tuple of shapes; for one
        taking a dict (e.g. `lm.TransformerDecoderLayer`), a dict of them.
      key: PRNG key for params, inputs and stochastic apply; default
        `jax.random.key(0)`. Use the default (threefry) implementation:
        "rbg" keys draw differently under vmap, which the vmap check reports.
      batch: number of examples for the `vmap` check, >= 1.
      rtol: relative tolerance when comparing outputs (jit, vmap); for
        16-bit outputs at least 1e-2 is used.
      atol: absolute tolerance, likewise.
      dtype: the expected output dtype; `None` means `input_dtype` for a
        float input (the promoted dtype of the float inputs, for several)
        and float32 where no input is float. Pass e.g.
        `jnp.bfloat16` for `lm.Dense(4, dtype=jnp.bfloat16)`.
      grad_eps: finite-difference step for the float64 gradient check.
      input_dtype: dtype of every input array: a float dtype, or an integer
        dtype such as `jnp.int32` for a layer taking token ids. For several
        inputs, a tuple or dict of dtypes shaped like `input_shape` gives
        each its own, bool included (e.g. `{"src": jnp.float32, "src_mask":
        jnp.bool_}`, or `(jnp.float32, jnp.int32)` for an image and a
        diffusion timestep); only float inputs are differentiated.
        Canonicalized like JAX does (int64 is int32 unless x64 is on).
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
    input_dtype = _as_input_dtype(input_dtype, input_shape)
    _check_int_high(int_high, input_dtype)
    if dtype is None:
        floats = [d for d in jax.tree.leaves(input_dtype) if jnp.issubdtype(d, jnp.floating)]
        dtype = jnp.result_type(*floats) if floats else jnp.float32
    # Inputs come from NumPy, seeded by the key: a jax.random draw would
    # compile once per input shape, and a property test draws many shapes.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def draw(batch=None):
        return _random_input(rng, input_shape, input_dtype, int_high, batch)

    init_key, apply_key = jax.random.split(key)
    x = draw()
    stateful, state, view = None, None, layer
    if layer.stateful:  # every check but the last sees it in inference mode
        stateful, state = layer, check_init_state(layer, input_shape)
        view = inference_view(layer, state)
    params, y = _check_shape(view, init_key, input_shape, x)
    case = Case(view, params, x, draw(batch), y, apply_key, input_dtype, rtol, atol, stateful, state,
                 layer)
    _check_finite(case)
    y_key = _check_deterministic(case)
    jitted = _check_jit(case, y_key)
    _check_retrace(case, jitted, draw())
    _check_vmap(case, jitted)
    check_gradient(case, rng, grad_eps, draw())
    _check_dtype(case, dtype)
    if stateful is not None:
        check_state(case)

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

def _check_shape(layer, key, input_shape, x):
    name = layer.name
    with checking("shape", name, f"init(key, {input_shape})"):
        out_shape, params = layer.init(key, input_shape)
    with checking("shape", name, f"apply(params, x) for x of shape {input_shape}"):
        y = layer.apply(params, x)
    got = shape_of(y)
    if as_shape(out_shape) != got:
        raise LayerCheckError(
            "shape", name,
            f"init declared output shape {out_shape!r} for input shape {input_shape}, "
            f"but apply returned shape {got}",
        )
    with checking("shape", name, "jax.eval_shape(init)"):
        abstract_shape, abstract = param_shapes(layer, input_shape, key=key)
    if as_shape(abstract_shape) != as_shape(out_shape):
        raise LayerCheckError(
            "shape", name,
            f"under jax.eval_shape init declares output shape {abstract_shape!r}, "
            f"but {out_shape!r} when run",
        )
    compare_abstract(name, abstract, params)
    return params, y

def _check_finite(case: Case) -> None:
    for what, tree in (("params", case.params), ("state from init_state", case.state),
                       ("output of apply(params, x)", case.y)):
        bad = non_finite(tree)
        if bad:
            raise LayerCheckError("finite", case.layer.name, f"{what} at {bad}")

def _check_deterministic(case: Case) -> Any:
    apply, name = case.layer.apply, case.layer.name
    with checking("deterministic", name, "calling apply(params, x) again",
                   "two calls apply(params, x) with key=None differ"):
        chex.assert_trees_all_equal(apply(case.params, case.x), case.y)
    with checking("deterministic", name, "calling apply(params, x, key=k)",
                   "two calls apply(params, x, key=k) with the same key differ"):
        y_key = apply(case.params, case.x, key=case.key)
        chex.assert_trees_all_equal(apply(case.params, case.x, key=case.key), y_key)
    _check_key_claim(case, y_key)
    return y_key

def _check_key_claim(case: Case, y_key: Any) -> None:
    """A layer that says it never uses a key gets none from `lm.forward`: it must not
    need one. A built-in layer that says it does must: else it costs a key split."""
    layer, name = case.claims, case.layer.name
    if layer is None:
        return
    if not layer.stochastic:
        with checking("deterministic", name, "calling apply(params, x, key=k)",
                       "the layer says it never uses a key (stochastic is False), so lm.forward "
                       "and the train step give it none, but apply(params, x, key=k) differs "
                       "from apply(params, x): its randomness would be silently dropped; "
                       "declare it stochastic"):
            chex.assert_trees_all_equal(y_key, case.y)
        return
    if not _says_stochastic(layer):
        return  # only a user's lm.Layer inside says so, and it says nothing either way
    others = [case.layer.apply(case.params, case.x, key=jax.random.fold_in(case.key, i))
              for i in range(1, 8)]
    if all(np.array_equal(np.asarray(a), np.asarray(b))
           for other in others for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(y_key))):
        raise LayerCheckError(
            "deterministic", name,
            "the layer says it uses a key (stochastic is True), but two different keys give "
            "the same output; a layer that never uses its key declares stochastic = False",
        )

def _says_stochastic(layer: Layer) -> bool:
    """Whether one of lamina's own layers in `layer` says it uses a key.

    A user's `lm.Layer` always gets a key, whether or not it uses one, so
    it makes no claim to check.
    """
    if not isinstance(layer, Builtin):
        return False
    kids = children(layer)
    if not kids:
        return layer.stochastic
    return any(_says_stochastic(child) for _, child in kids)


def _both(layer: Layer):
    """`(apply(params, x), apply(params, x, key=k))`: one program for both modes."""

    # Defined here, not a lambda: chex fingerprints a function by its source
    # code, which a user's lambda or functools.partial may not have.
    def apply_both(params, x, k):
        return layer.apply(params, x), layer.apply(params, x, key=k)

    return apply_both

def _check_jit(case: Case, y_key: Any):
    chex.clear_trace_counter()
    jitted = jax.jit(chex.assert_max_traces(_both(case.layer), n=1))
    rtol, atol = tolerance(case)
    with checking("jit", case.layer.name, "jax.jit(apply)"):
        got, got_key = jitted(case.params, case.x, case.key)
    with checking("jit", case.layer.name, "", "jax.jit(apply)(params, x) differs from apply(params, x)"):
        chex.assert_trees_all_close(got, case.y, rtol=rtol, atol=atol)
    with checking("jit", case.layer.name, "", "jax.jit(apply) with a key differs from apply with that key"):
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

def _check_retrace(case: Case, jitted, x2: Any) -> None:
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
                              f"jax.jit(apply) raised {kind(error)}: {error}") from error

def _check_vmap(case: Case, jitted) -> None:
    layer, n = case.layer, jax.tree.leaves(case.xs)[0].shape[0]
    rtol, atol = tolerance(case)
    what = f"jax.vmap(apply) over {n} examples differs from a loop over them"
    with checking("vmap", layer.name, f"jax.vmap(apply) over {n} examples"):
        keys = jax.random.split(case.key, n)
        # Not jitted: eager vmap compiles per primitive and shape, which a
        # property test's many small models share; a jit would compile each.
        batched, batched_key = jax.vmap(_both(layer), in_axes=(None, 0, 0))(
            case.params, case.xs, keys
        )
        # The loop reuses the jitted single-example program (equal to apply,
        # checked above), so it compiles nothing new.
        xs = jax.tree.map(np.asarray, case.xs)
        looped = [jitted(case.params, jax.tree.map(lambda a, i=i: a[i], xs), keys[i]) for i in range(n)]
    with checking("vmap", layer.name, "", what):
        chex.assert_trees_all_close(batched, stack_trees([y for y, _ in looped]), rtol=rtol, atol=atol)
    with checking("vmap", layer.name, "", f"{what}, each example with its own key"):
        chex.assert_trees_all_close(batched_key, stack_trees([y for _, y in looped]), rtol=rtol, atol=atol)
    claims = case.claims
    if claims is not None and claims.batch_polymorphic and case.stateful is None:
        # lm.forward then applies it to the whole batch at once, without vmap.
        doing = f"apply(params, xs) on a whole batch of {n} (the layer says batch_polymorphic)"
        with checking("vmap", layer.name, doing):
            whole = layer.apply(case.params, case.xs)
        with checking("vmap", layer.name, "",
                       f"the layer says batch_polymorphic (each example computed alone along "
                       f"leading axes), so lm.forward applies it to the whole batch at once, but "
                       f"{doing} differs from jax.vmap(apply): examples would mix"):
            chex.assert_trees_all_close(whole, batched, rtol=rtol, atol=atol)

def _check_dtype(case: Case, want: Any) -> None:
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

def _as_input_shape(input_shape: Any) -> Any:
    if is_shape(input_shape):
        return tuple(input_shape)
    if isinstance(input_shape, (tuple, list)) and input_shape:
        return tuple(_as_input_shape(s) for s in input_shape)
    if isinstance(input_shape, dict) and input_shape:
        return {k: _as_input_shape(s) for k, s in input_shape.items()}
    raise layer_error(
        "check_layer",
        f"input_shape must be the shape of one example, e.g. (4,), or a tuple or dict of "
        f"shapes for a layer taking several inputs, got {input_shape!r}",
        TypeError,
    )

def _as_input_dtype(input_dtype: Any, input_shape: Any) -> Any:
    """One canonical dtype per input leaf, in a tree shaped like `input_shape`.

    One dtype serves every input; a tuple or dict of them (bool allowed,
    for masks) must have `input_shape`'s structure, a dtype in it serving
    the whole subtree it stands for.
    """
    tree = isinstance(input_dtype, (tuple, list, dict))
    expected = "input_dtype must be a float or integer dtype such as jnp.float32 or jnp.int32"
    if tree:
        expected += ", or a tuple or dict of them (bool too, for masks) shaped like input_shape"

    def refuse(why: str) -> Exception:
        return layer_error("check_layer", f"{expected}{why}", TypeError)

    def one(dtype: Any) -> np.dtype:
        try:
            got = None if dtype is None or isinstance(dtype, (tuple, list, dict)) else (
                jnp.dtype(dtype))
        except TypeError:
            got = None
        if got is None or not (jnp.issubdtype(got, jnp.floating) or jnp.issubdtype(got, jnp.integer)
                               or (tree and got == np.bool_)):
            raise refuse(f", got {dtype!r}" + (f" in {input_dtype!r}" if dtype is not input_dtype else ""))
        return jax.dtypes.canonicalize_dtype(got)

    def like(dtype: Any, shape: Any) -> Any:
        if is_shape(shape):
            return one(dtype)
        if isinstance(shape, dict):
            if isinstance(dtype, dict) and list(dtype) != list(shape):
                raise refuse(f": input_dtype has keys {list(dtype)}, input_shape {list(shape)}")
            if isinstance(dtype, (tuple, list)):
                return one(dtype)  # refused: a tuple where a dict goes
            return {k: like(dtype[k] if isinstance(dtype, dict) else dtype, s)
                    for k, s in shape.items()}
        if isinstance(dtype, (tuple, list)) and len(dtype) != len(shape):
            raise refuse(f": input_dtype has {len(dtype)} entries, input_shape {len(shape)}")
        if isinstance(dtype, dict):
            return one(dtype)  # refused: a dict where a tuple goes
        return tuple(like(dtype[i] if isinstance(dtype, (tuple, list)) else dtype, s)
                     for i, s in enumerate(shape))

    return like(input_dtype, input_shape)

def _check_int_high(int_high: Any, input_dtype: Any) -> None:
    if isinstance(int_high, bool) or not isinstance(int_high, (int, np.integer)):
        raise layer_error("check_layer", f"int_high must be an int, got {int_high!r}", TypeError)
    if int_high < 1:
        raise layer_error("check_layer", f"int_high must be >= 1, got {int_high}", ValueError)
    for dtype in jax.tree.leaves(input_dtype):
        if jnp.issubdtype(dtype, jnp.integer) and int_high - 1 > jnp.iinfo(dtype).max:
            raise layer_error(
                "check_layer",
                f"int_high must be at most {jnp.iinfo(dtype).max + 1} for input_dtype "
                f"{dtype} (ids are drawn from [0, int_high)), got {int_high}",
                ValueError,
            )

def _random_input(rng: np.random.Generator, shape: Any, dtype: Any, int_high: int,
                  batch: Optional[int] = None) -> Any:
    if isinstance(shape, dict):
        return {k: _random_input(rng, s, dtype[k], int_high, batch) for k, s in shape.items()}
    if not is_shape(shape):
        return tuple(_random_input(rng, s, d, int_high, batch) for s, d in zip(shape, dtype))
    size = (() if batch is None else (batch,)) + tuple(shape)
    if dtype == np.bool_:
        # torch's masks: True leaves a position out. One random position of
        # every last-axis row stays False, so no query loses every key (NaN).
        mask = rng.random(size) < 0.5
        if size and size[-1]:
            keep = rng.integers(0, size[-1], size[:-1])[..., None]
            np.put_along_axis(mask, keep, False, axis=-1)
        return jax.device_put(mask)
    if jnp.issubdtype(dtype, jnp.integer):
        return jax.device_put(rng.integers(0, int_high, size, dtype=dtype))
    return jax.device_put(rng.standard_normal(size, np.float32).astype(dtype))

def _shape_id(shape: Any) -> str:
    if is_shape(shape):
        return "x".join(map(str, shape)) or "scalar"
    if isinstance(shape, (tuple, list)):
        return "|".join(_shape_id(s) for s in shape)
    if isinstance(shape, dict):
        return "|".join(f"{k}={_shape_id(s)}" for k, s in shape.items())
    return repr(shape)
