"""`check_layer`'s gradient property: reverse mode against finite differences, in float64."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.test_util import check_grads

from lamina._src.testing.case import (
    Case,
    LayerCheckError,
    as_float64,
    checking,
    enable_x64,
)
from lamina._src.testing.state import inference_view


def check_gradient(case: Case, rng: np.random.Generator, eps: float, x2: Any) -> None:
    name = case.layer.name
    with enable_x64(True):
        apply64, floats, x = _in_float64(case)
        # Integer and bool inputs (token ids, masks) have no gradient: they
        # are held, and only the float leaves of the input are free.
        x_floats, x_held, join = _split_floats(x)
        which = (0, 1) if x_floats else (0,)
        labels = [("params", "input")[i] for i in which]

        # Jitted: check_grads calls f and its vjp several times at one shape,
        # and one compiled program takes a third of the time of dispatching
        # its float64 primitives one by one (eager).
        @jax.jit
        def f(float_params, x_floats, x_held):  # flat, so tuple outputs (parallel) work too
            return ravel_pytree(apply64(float_params, join(x_floats, x_held)))[0]

        args = (floats, x_floats, x_held)
        if not jax.tree.leaves([args[i] for i in which]):
            return  # nothing to differentiate: integer input, no float params
        with checking("gradient", name, "differentiating apply with jax.vjp"):
            out, vjp = jax.vjp(_holding(f, args, which), *(args[i] for i in which))
            grads = vjp(rng.standard_normal(out.shape).astype(out.dtype))
        for what, tree in zip(labels, grads):
            if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tree)):
                raise LayerCheckError("gradient", name,
                                      f"the gradient with respect to {what} holds NaN or infinity")
        with checking("gradient", name, "tracing apply with jax.make_jaxpr"):
            bits = _min_compute_bits(jax.make_jaxpr(apply64)(floats, x))
        if bits <= 16:
            return  # finite differences in 16 bits are noise
        step, tol = (eps, 1e-5) if bits == 64 else (1e-3, 1e-2)

        def check(args, which=which):
            check_grads(_holding(f, args, which), [args[i] for i in which], order=1,
                        modes=["rev"], eps=step, atol=tol, rtol=tol)

        doing = "checking gradients against finite differences"
        try:
            with checking("gradient", name, doing):
                check(args)
        except LayerCheckError as error:
            if not isinstance(error.__cause__, AssertionError):
                raise
            # A kink (relu's at 0) straddled by the step does not repeat at
            # another input; a wrong derivative does.
            args = (floats, *_split_floats(as_float64(x2))[:2])
            with checking("gradient", name, doing,
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

def _split_floats(x: Any) -> tuple[list, list, Any]:
    """`(float leaves, other leaves, join)` of a tree; `join(floats, others)` rebuilds it."""
    leaves, treedef = jax.tree.flatten(x)
    is_float = [jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves]

    def join(floats: list, others: list) -> Any:
        parts = iter(floats), iter(others)
        return jax.tree.unflatten(treedef, [next(parts[0] if f else parts[1]) for f in is_float])

    return ([leaf for leaf, f in zip(leaves, is_float) if f],
            [leaf for leaf, f in zip(leaves, is_float) if not f], join)

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

def _in_float64(case: Case):
    """`(apply64, float_params, x)`: apply as a function of the float params leaves."""
    floats, others, join = _split_floats(case.params)
    # A float32 state would make the layer compute in float32, loosening the check.
    layer = case.layer if case.stateful is None else inference_view(case.stateful, as_float64(case.state))

    def apply64(float_leaves, x):
        return layer.apply(join(float_leaves, others), x)

    return apply64, [as_float64(leaf) for leaf in floats], as_float64(case.x)

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
