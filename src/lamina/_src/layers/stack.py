"""Deep models: one block repeated `n` times (`stack`), and recomputation (`remat`).

`stack(block, n)` is `serial(block, block, ...)` with the `n` blocks' params
stacked on a leading axis and applied with `lax.scan`, so the block is traced
and compiled once whatever `n` is. `remat(layer)` recomputes a layer's
activations in the backward pass instead of keeping them (`jax.checkpoint`),
trading compute for memory; `stack(remat(block), n)` combines the two.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lamina._src.core.builtin import Builtin, Child, Wrapper
from lamina._src.core.checks import check_input_shape, check_key
from lamina._src.core.errors import child_context, layer_error
from lamina._src.core.fields import Check, Count
from lamina._src.core.layer import Layer, abstract_init, call_child, children, placed_children
from lamina._src.core.params import path_str
from lamina._src.core.record import recording
from lamina._src.layers.combinators import child_keys, serial


def _slice(tree: Any, i: int) -> Any:
    """Entry `i` of every leaf's leading axis (shape structs lose the axis)."""
    def take(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
        return leaf[i]

    return jax.tree.map(take, tree)


def _join(trees: list) -> Any:
    """The inverse of `_slice`: the trees stacked on a new leading axis."""
    def stack_leaves(*leaves):
        if isinstance(leaves[0], jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct((len(leaves),) + leaves[0].shape, leaves[0].dtype)
        return jnp.stack(leaves)

    return jax.tree.map(stack_leaves, *trees)


def _stacked(*copies: Any) -> Any:
    """The copies of one param on a new leading axis, on the host unless traced."""
    if any(isinstance(a, jax.core.Tracer) for a in copies):
        return jnp.stack(copies)  # under jit or eval_shape: nothing to compile eagerly
    return jax.device_put(np.stack([np.asarray(a) for a in copies]))


class stack(Wrapper):
    """`n` copies of a layer applied one after another, compiled once (`lax.scan`).

    Equal to `lm.serial(layer, ..., layer)` with `n` copies, each with its own
    params, but the params are stacked: every leaf gains a leading axis of
    size `n` (`params["W"].shape == (n, out, in)` for a `Dense`), and the
    layer is traced once, so compile time does not grow with `n`. The copies
    are initialised with `jax.random.split(key, n)`, exactly as `serial` of
    the same layers would be; with a key, copy `i` gets `split(key, n)[i]`,
    so dropout masks equal `serial`'s too. A layer with state (e.g.
    `lm.BatchNorm`) gets its state stacked the same way.

    Args:
      layer: the repeated block; its output shape must equal its input shape.
        `.layer` holds it.
      n: the number of copies, >= 1.
      unroll: how many copies `lax.scan` runs per loop iteration (a larger
        value trades compile time for fewer loop steps).

    Raises:
      ValueError: at init, when `layer` changes the shape of its input (both
        shapes are named); at apply, when the params' leading axis is not `n`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.residual(lm.Dense(4, act="relu"))
      >>> model = lm.stack(block, 8)
      >>> out_shape, params = model.init(jax.random.key(0), (4,))
      >>> out_shape, params[0]["W"].shape
      ((4,), (8, 4, 4))
      >>> model.apply(params, jnp.ones(4)).shape
      (4,)
    """

    layer: Child
    n: Count
    _: dataclasses.KW_ONLY
    unroll: Count = 1

    @functools.cached_property
    def name(self) -> str:
        return f"stack({self.layer.name}, {self.n})"

    def child_segment(self, i: int) -> str:
        return f"stack[{i}]"

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape)
        with child_context(self.child_segment(0), self.layer):
            out_shape, _ = abstract_init(self.layer, shape, key)
        if out_shape != shape:
            raise layer_error(
                self.name,
                f"a stacked layer must keep the shape of its input, so its output can "
                f"feed the next copy, but it maps {shape} to {out_shape}",
            )
        keys = jax.random.split(key, self.n)
        # Each copy as serial's child with that key would be, stacked on the
        # host: eager draws compile nothing per copy, where a vmapped init
        # would take other draws (a traced key) than the serial twin's.
        copies = [self.layer.init(k, shape)[1] for k in keys]
        return shape, jax.tree.map(_stacked, *copies)

    def init_state(self, input_shape):
        if not self.layer.stateful:
            return ()
        with child_context(self.child_segment(0), self.layer):
            one = self.layer.init_state(input_shape)
        return _join([one] * self.n)

    def unstack(self, params: Any) -> tuple:
        """The params (or state) of each copy: `(params_0, ..., params_{n-1})`.

        They are the params of `lm.serial(*[layer] * n)`.
        """
        self._check_stacked(params, "params")
        return tuple(_slice(params, i) for i in range(self.n))

    def restack(self, params: Any) -> Any:
        """The inverse of `unstack`: `n` copies' params (a tuple) as this stack's params."""
        if not isinstance(params, (tuple, list)) or len(params) != self.n:
            raise layer_error(
                self.name, f"expected a tuple of {self.n} copies' params, got "
                f"{type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}"
            )
        return _join(list(params))

    def _check_stacked(self, tree: Any, what: str) -> None:
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            shape = jnp.shape(leaf)
            if not shape or shape[0] != self.n:
                where = repr(path_str(path)) if path else "(root)"
                raise layer_error(
                    self.name,
                    f"expected {what} stacked for {self.n} copies (a leading axis of size "
                    f"{self.n} on every array), got {where} with shape {tuple(shape)}; "
                    f"make them with this stack's init, or restack per-copy params with "
                    f".restack(...)",
                )

    def forward(self, params, state, x, *, key, train):
        self._check_stacked(params, "params")
        if self.layer.stateful:
            self._check_stacked(state, "state")
        keys = None
        if child_keys(self.name, key, [self.layer])[0] is not None:
            keys = jax.random.split(key, self.n)
        if recording():
            return self._unrolled(params, state, x, keys, train)
        layer = self.layer

        def body(h, per_copy):
            p, k, s = per_copy
            return call_child(self.child_segment(0), None, layer, p, s, h, k, train)

        def scan(h):
            return lax.scan(body, h, (params, keys, state), length=self.n, unroll=self.unroll)

        x = jnp.asarray(x)
        try:
            return scan(x)
        except TypeError as error:
            if "carry" not in str(error):
                raise
            # The block changes the dtype (bfloat16 inputs to float32 params,
            # a Dense with dtype=): serial's copies would run from the first
            # copy's output dtype on, so the carry starts in it.
            first = jax.eval_shape(
                lambda p, h, k, s: layer.call(p, s, h, key=k, train=train)[0],
                _slice(params, 0), x, None if keys is None else keys[0], _slice(state, 0))
            if first.dtype == x.dtype:
                raise
            try:
                return scan(x.astype(first.dtype))
            except TypeError:
                raise layer_error(
                    self.name,
                    f"a stacked layer must keep the dtype of its input after the first copy, "
                    f"so its output can feed the next; it maps {x.dtype} to {first.dtype} and "
                    f"{first.dtype} to another dtype",
                    TypeError,
                ) from error

    def _unrolled(self, params, state, x, keys, train):
        # While lm.trace records, the copies run one by one, so every copy's
        # values can be looked at; what jit compiles scans.
        states = []
        for i in range(self.n):
            x, s = call_child(self.child_segment(i), None, self.layer, _slice(params, i),
                              _slice(state, i), x, None if keys is None else keys[i], train)
            states.append(s)
        return x, (_join(states) if self.layer.stateful else state)


# The policies that are policies themselves (not factories of one, such as
# save_only_these_names): these a checkpoint can record by name.
_POLICIES = {
    name: getattr(jax.checkpoint_policies, name)
    for name in ("everything_saveable", "nothing_saveable", "dots_saveable",
                 "dots_with_no_batch_dims_saveable")
}


def _policy(where: str, arg: str, policy: Any) -> Optional[Union[str, Callable]]:
    if isinstance(policy, str):
        if policy not in _POLICIES:
            raise layer_error(
                "remat",
                f"unknown policy {policy!r}; expected one of {sorted(_POLICIES)} or a "
                f"function from jax.checkpoint_policies",
            )
    elif policy is not None:
        if not callable(policy):
            raise layer_error(
                "remat",
                f"policy must be a function from jax.checkpoint_policies, its name, or "
                f"None, got {type(policy).__name__} {policy!r}",
                TypeError,
            )
        named = [name for name, fn in _POLICIES.items() if fn is policy]
        if named:  # stored by name: equal, hashable and writable to a file
            return named[0]
        _check_policy(policy)
    return policy


def _check_policy(policy: Callable) -> None:
    """A policy answers, for one primitive, whether to keep its result; ask it once now.

    jax would first call it while differentiating, far from where it was
    given; a function that is not a policy fails there with an error about
    something else.
    """
    from jax._src.interpreters import partial_eval  # the offloading policies' answers

    kinds = tuple(getattr(partial_eval, n) for n in ("RecomputeType", "SaveableType",
                                                     "Offloadable") if hasattr(partial_eval, n))
    try:
        answer = policy(jax.lax.sin_p)
    except Exception as error:  # noqa: BLE001 - anything but an answer means it is not a policy
        answer = error
    if not isinstance(answer, (bool, np.bool_) + kinds):
        raise layer_error(
            "remat",
            f"policy {policy!r} is not a checkpoint policy: asked about one primitive "
            f"(policy(jax.lax.sin_p)), it gave {answer!r:.80} instead of True or False. Pass "
            f"a function from jax.checkpoint_policies (e.g. "
            f"jax.checkpoint_policies.dots_saveable), its name, or None",
            TypeError,
        )


Policy = Annotated[Optional[Union[str, Callable]], Check(_policy)]
"""What `jax.checkpoint` may keep: a policy of `jax.checkpoint_policies`, its name, or None."""


class remat(Wrapper):
    """A layer whose activations are recomputed in the backward pass (`jax.checkpoint`).

    Same outputs and gradients as `layer`, less memory held between the
    forward and backward pass, at the cost of running the layer's forward
    twice. Params, state and paths are `layer`'s own.

    Args:
      layer: the layer; `.layer` holds it.
      policy: what may be kept rather than recomputed, passed to
        `jax.checkpoint`: a function from `jax.checkpoint_policies` (e.g.
        `jax.checkpoint_policies.dots_saveable`, stored by its name so a
        checkpoint can record it), or its name; `None` recomputes everything.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.residual(lm.serial(lm.Dense(16, act="gelu"), lm.Dense(4)))
      >>> model = lm.stack(lm.remat(block, jax.checkpoint_policies.dots_saveable), 4)
      >>> model.layer
      remat(residual(serial(Dense(16, act='gelu'), Dense(4))), policy='dots_saveable')
    """

    layer: Child
    policy: Policy = None

    @functools.cached_property
    def name(self) -> str:
        return f"remat({self.layer.name})"

    def forward(self, params, state, x, *, key, train):
        if recording():  # looking at the values needs no recomputation
            return self.call_inner(params, state, x, key, train)
        policy = _POLICIES.get(self.policy, self.policy)  # type: ignore[arg-type]

        def inner(p, s, h, k):
            return self.call_inner(p, s, h, k, train)

        return jax.checkpoint(inner, policy=policy)(params, state, x, key)


def unrolled(model: Layer) -> Layer:
    """`model` with every `stack(layer, n)` inside it written as `serial` of `n` copies.

    Its params are `unstack_tree(model, params)`: what torch exchange walks,
    since a torch `nn.Sequential` of `n` blocks holds `n` modules.
    """
    if isinstance(model, stack):
        one = unrolled(model.layer)
        return serial(*[one] * model.n)
    kids = children(model)
    if not kids or not isinstance(model, Builtin):
        return model
    new = iter([unrolled(child) for _, child in kids])
    config = {}
    for field, value in model.config().items():
        if isinstance(value, Layer):
            value = next(new)
        elif isinstance(value, tuple) and value and all(isinstance(v, Layer) for v in value):
            value = tuple(next(new) for _ in value)
        config[field] = value
    return type(model).from_config(config)


def unstack_tree(model: Layer, tree: Any) -> Any:
    """A params (or state) tree of `model` as the tree of `unrolled(model)`."""
    if isinstance(model, stack):
        return tuple(unstack_tree(model.layer, _slice(tree, i)) for i in range(model.n))
    return _map_children(model, tree, unstack_tree)


def restack_tree(model: Layer, tree: Any) -> Any:
    """The inverse of `unstack_tree`."""
    if isinstance(model, stack):
        return _join([restack_tree(model.layer, t) for t in tree])
    return _map_children(model, tree, restack_tree)


def _map_children(model: Layer, tree: Any, fn: Callable) -> Any:
    placed = placed_children(model)
    if placed and placed[0][0] is None:  # the child's tree is this layer's own
        return fn(placed[0][1], tree)
    if not placed or not holds_children(tree, placed):
        return tree
    mapped = [fn(child, tree[place]) for place, child in placed]
    if isinstance(tree, Mapping):
        return {place: t for (place, _), t in zip(placed, mapped)}
    return tuple(mapped)


def holds_children(tree: Any, placed: list[tuple[Any, Layer]]) -> bool:
    """Whether `tree` has an entry at each child's place: a tuple of one per child, or a
    dict by name (a layer that lays out its own params, e.g. a transformer block, may not)."""
    if isinstance(tree, Mapping):
        return all(isinstance(p, str) and p in tree for p, _ in placed)
    return isinstance(tree, (tuple, list)) and len(tree) == len(placed) and all(
        isinstance(p, int) for p, _ in placed)


def stacked_axes(model: Layer, tree: Any) -> Any:
    """For each leaf of `model`'s params tree, how many leading axes are copies of a stack."""
    def walk(layer, t, depth):
        if isinstance(layer, stack):
            return walk(layer.layer, t, depth + 1)
        placed = placed_children(layer)
        if placed and placed[0][0] is None:
            return walk(placed[0][1], t, depth)
        if placed and holds_children(t, placed):
            walked = [walk(child, t[place], depth) for place, child in placed]
            if isinstance(t, Mapping):
                return {place: w for (place, _), w in zip(placed, walked)}
            return tuple(walked)
        return jax.tree.map(lambda _: depth, t)

    return walk(model, tree, 0)
