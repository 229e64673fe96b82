"""`check_layer` for layers with state: `init_state`, inference, and training over a batch."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import layer_error
from lamina._src.core.forward import BATCH_AXIS
from lamina._src.core.layer import Layer, Params
from lamina._src.core.params import path_str
from lamina._src.testing.case import (
    Case,
    LayerCheckError,
    checking,
    host,
    non_finite,
    number,
    spec_of,
    tolerance,
)


def check_init_state(layer: Layer, input_shape: Any) -> Any:
    """`layer.init_state(input_shape)`, checked against `jax.eval_shape` of it."""
    name = layer.name
    with checking("shape", name, f"init_state({input_shape})"):
        state = layer.init_state(input_shape)
    with checking("shape", name, "jax.eval_shape(init_state)"):
        abstract = jax.eval_shape(lambda: layer.init_state(input_shape))
    compare_abstract(name, abstract, state, what="state", fn="init_state")
    return state

def inference_view(layer: Layer, state: Any) -> Layer:
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

def compare_abstract(name: str, abstract: Any, tree: Any, what: str = "params",
                      fn: str = "init") -> None:
    """`tree` (`what`, made by `fn`) against `abstract`, `fn` under `jax.eval_shape`."""
    if jax.tree.structure(abstract) != jax.tree.structure(tree):  # type: ignore[operator]
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

def _train_batch(layer: Layer, out_axes: Any = (0, None)):
    """`train(params, state, xs, keys) -> (ys, new_state)`: one training call over a batch."""

    def train(params, state, xs, keys):
        def one(x, k):
            return layer.apply(params, x, key=k, state=state, train=True)

        return jax.vmap(one, out_axes=out_axes, axis_name=BATCH_AXIS)(xs, keys)

    return train

def check_state(case: Case) -> None:
    """Inference keeps the state; training makes one state per batch, the same each time and under jit."""
    layer, params, state = case.stateful, case.params, case.state
    assert layer is not None  # check_layer calls this for a layer with state only
    name, n = layer.name, jax.tree.leaves(case.xs)[0].shape[0]
    with checking("state", name, "apply(params, x, state=state, train=False)"):
        _, kept = layer.apply(params, case.x, state=state, train=False)
    mismatch = state_mismatch(state, kept)
    if mismatch:
        raise LayerCheckError("state", name,
                              f"inference (train=False) must return the state unchanged, but {mismatch}")

    training = (f"training (train=True) under jax.vmap(..., axis_name={BATCH_AXIS!r}, "
                f"out_axes=(0, None)) over {n} examples")
    train, keys = _train_batch(layer), jax.random.split(case.key, n)
    with checking("state", name, training):
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
    mismatch = state_mismatch(state, new, values=False)
    if mismatch:
        raise LayerCheckError("state", name,
                              f"{training} must return a state like init_state's, but {mismatch}")
    bad = non_finite(new)
    if bad:
        raise LayerCheckError("state", name, f"{training} returns a state whose leaf {bad}")
    if isinstance(layer, Builtin) and not state_mismatch(state, new):
        # lamina's own layers with state (BatchNorm) all count their batches.
        raise LayerCheckError(
            "state", name,
            f"{training} returned the state it was given, unchanged: the state is not "
            f"threaded to the layers that update it",
        )

    with checking("state", name, f"{training}, a second time"):
        _, again = train(params, state, case.xs, keys)
    mismatch = state_mismatch(new, again)
    if mismatch:
        raise LayerCheckError(
            "state", name,
            f"two calls of {training} with the same batch and keys must return the same "
            f"state, but {mismatch}",
        )

    rtol, atol = tolerance(case)
    with checking("state", name, f"jax.jit of {training}"):
        ys_jit, new_jit = jax.jit(train)(params, state, case.xs, keys)
    with checking("state", name, "", f"the new state of jax.jit({training}) differs from eager"):
        chex.assert_trees_all_close(new_jit, new, rtol=rtol, atol=atol)
    with checking("state", name, "", f"the output of jax.jit({training}) differs from eager"):
        chex.assert_trees_all_close(ys_jit, ys, rtol=rtol, atol=atol)

def _varying_leaves(layer: Layer, params: Params, state: Any, xs: Any, keys: jax.Array) -> str:
    """Which state leaves differ between examples, and by how much: `": leaf 'ema' by up to 2.1"`."""
    try:
        _, per_example = _train_batch(layer, out_axes=0)(params, state, xs, keys)
    except Exception:  # noqa: BLE001 - only a hint for the message
        return ""
    found = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(per_example):
        values = number(host(leaf))
        if values.size and np.any(values != values[:1]):
            spread = float(np.max(np.abs(values - values[:1])))
            found.append(f"leaf {path_str(path) or '(root)'!r} by up to {spread:.3g}")
    return f": {', '.join(found)}" if found else ""

def state_mismatch(want: Any, got: Any, values: bool = True) -> str:
    """What first differs between two states, as a phrase; `""` if nothing does.

    Compares tree, then each leaf's shape and dtype, then (with `values`)
    its bits.
    """
    if jax.tree.structure(got) != jax.tree.structure(want):  # type: ignore[operator]
        return f"the state tree is {jax.tree.structure(got)}, expected {jax.tree.structure(want)}"
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        where = f"state leaf {path_str(path) or '(root)'!r}"
        (w_shape, w_dtype), (g_shape, g_dtype) = spec_of(w), spec_of(g)
        if (g_shape, g_dtype) != (w_shape, w_dtype):
            return f"{where} is {g_dtype}{list(g_shape)}, expected {w_dtype}{list(w_shape)}"
        if not values or not np.size(w):
            continue
        a, b = host(w), host(g)
        # Bits, element by element: -0.0 is not 0.0, and NaN is NaN.
        differ = np.any(a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1),
                        axis=1)
        if np.any(differ):
            diff = np.max(np.abs(number(a) - number(b)))
            return (f"{where} (shape {w_shape}) differs in {int(np.sum(differ))} of {a.size} "
                    f"value(s), max absolute difference {diff:.3g}")
    return ""
