"""The layer contract: the `Layer` protocol and the one signature every layer runs through.

A layer is two pure functions and a name. `init(key, input_shape)` returns the
shape of one output example and the parameters; `apply(params, x, *, key=None)`
maps one example to one output. Users write a layer as `Layer(init, apply,
name)`.

Inside lamina every layer runs through one signature, `call(params, state,
x, *, key, train) -> (y, state)`, with `()` as the state of a layer without
any (as an optax transformation always returns its state). The public
`apply`, `trace`, `lm.forward` and the train step are made from it.

lamina's own layers derive from `Builtin`: frozen dataclasses of their
configuration (equal configuration means equal, same hash, one compile),
whose fields check themselves (`fields.py`), whose params are declared once
(`spec.py`), and whose capabilities are derived from their children or
declared and verified by `lm.testing.check_layer`, with safe defaults: a
layer that may use a key gets one; a layer is vmapped unless it says it
computes each example alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Optional, Union

import jax

from lamina._src.core import record
from lamina._src.core.errors import child_context, join_path, layer_error
from lamina._src.core.record import TraceStep

Shape = tuple[int, ...]
"""The shape of ONE example, without a batch axis, e.g. `(784,)` or `(1, 8, 8)`."""
Params = Any  # a pytree of jax.Array: dicts, tuples and () for no weights
"""A params pytree of `jax.Array`: `Dense` holds `{"W": (out, in), "b": (out,)}`,
a combinator a tuple with one entry per child, a layer without weights `()`."""

InitFn = Callable[[jax.Array, Shape], tuple[Any, Params]]
ApplyFn = Callable[..., Any]


class _Functions(NamedTuple):
    """What a user gives `lm.Layer`: its functions and name."""

    init: InitFn
    apply: ApplyFn
    name: str
    trace: Optional[Callable]
    init_state: Optional[Callable[[Shape], Any]]


class Layer:
    """A layer: pure `init` and `apply` functions and a readable name.

    Write your own as `lm.Layer(init, apply, name)`; every lamina function
    accepts it. lamina's built-in layers are subclasses of `Layer`.

    Attributes:
      init: `init(key, input_shape) -> (output_shape, params)`, shapes of ONE
        example (no batch axis).
      apply: `apply(params, x, *, key=None) -> y` on one example; a PRNG key
        turns on stochastic layers such as dropout.
      name: a readable name used in errors, traces and summaries.
      trace: `trace(params, x, *, key=None) -> (y, steps)`; see `lm.trace`.
        Pass it for a layer with sub-layers; the default is one step.
      kind: how `lm.visualize` draws the layer: `"dense"`, `"residual"`,
        `"parallel"`, or `"layer"` (inputs and outputs only).
      init_state: for a layer with state (running statistics, counters),
        `init_state(input_shape) -> state`; its apply is then
        `apply(params, x, *, key=None, state, train=False) -> (y, new_state)`
        and `train=True` runs under a `jax.vmap` named `"batch"` (use
        `jax.lax.pmean(value, "batch")` for statistics of the whole batch).
      stateful: whether the layer (or any layer inside it) has state.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> double = lm.Layer(lambda key, shape: (shape, ()),
      ...                   lambda params, x, *, key=None: 2 * x, "Double")
      >>> lm.serial(lm.Dense(3), double).init(jax.random.key(0), (4,))[0]
      (3,)
    """

    kind: ClassVar[str] = "layer"
    init: InitFn  # a user's own functions, as given; lamina's layers define methods
    apply: ApplyFn
    _fns: _Functions

    def __init__(
        self,
        init: InitFn,
        apply: ApplyFn,
        name: str,
        trace: Optional[Callable] = None,
        *,
        init_state: Optional[Callable[[Shape], Any]] = None,
    ):
        for arg, fn in (("init", init), ("apply", apply), ("trace", trace),
                        ("init_state", init_state)):
            if fn is not None and not callable(fn):
                raise layer_error(
                    "Layer", f"{arg} must be a function, got {type(fn).__name__} {fn!r}",
                    TypeError,
                )
        if not isinstance(name, str):
            raise layer_error(
                "Layer", f"name must be a str, got {type(name).__name__} {name!r}", TypeError
            )
        object.__setattr__(self, "_fns", _Functions(init, apply, name, trace, init_state))
        object.__setattr__(self, "init", init)
        object.__setattr__(self, "apply", apply)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} is immutable: use .replace({attr}=...) for a modified copy"
        )

    def _key(self) -> tuple:
        return tuple(self._fns)

    @property
    def name(self) -> str:
        """A readable name used in errors, traces and summaries."""
        return self._fns.name


    def __eq__(self, other: Any) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Layer({self.name})"

    def replace(self, **changes: Any) -> "Layer":
        """A copy with some configuration changed, e.g. `Dense(3).replace(act="relu")`."""
        return Layer(**{**self._fns._asdict(), **changes})

    @property
    def stateful(self) -> bool:
        """Whether the layer (or a layer inside it) has state, e.g. running statistics."""
        return self._fns.init_state is not None

    @property
    def stochastic(self) -> bool:
        """Whether the layer may use a PRNG key (e.g. dropout).

        Combinators derive keys only for children that do. A layer written
        as `lm.Layer(init, apply, name)` might, so it always gets one.
        """
        return True

    @property
    def batch_polymorphic(self) -> bool:
        """Whether `apply` on inputs with extra leading axes equals `jax.vmap` of it.

        True for layers that compute each example alone along the leading
        axes (`Dense` with a named activation, `LayerNorm`, ...);
        `lm.forward` and `lm.train_step` then apply such a model to the
        whole batch at once, which traces faster than `vmap`. A layer
        written as `lm.Layer(init, apply, name)` is always vmapped.
        `lm.testing.check_layer` verifies the claim.
        """
        return False

    def init_state(self, input_shape: Shape) -> Any:
        """The layer's state for inputs of `input_shape`; `()` for a layer without."""
        if self._fns.init_state is None:
            return ()
        return self._fns.init_state(input_shape)

    def call(self, params: Params, state: Any, x: Any, *, key: Optional[jax.Array] = None,
             train: bool = False) -> tuple[Any, Any]:
        """`(y, new_state)`: the one signature every layer runs through inside lamina.

        `state` is `()` for a layer without state, and comes back unchanged.
        For a layer written as `lm.Layer(init, apply, name)`, this calls its
        `apply` (with `state=` and `train=` when it has `init_state`).

        Example:
          >>> import jax, jax.numpy as jnp, lamina as lm
          >>> layer = lm.Dense(2)
          >>> _, params = layer.init(jax.random.key(0), (3,))
          >>> y, state = layer.call(params, (), jnp.ones(3))
          >>> y.shape, state
          ((2,), ())
        """
        own_trace = self._fns.trace
        if own_trace is not None and record.recording():
            if self.stateful:
                y, steps, new = own_trace(params, x, key=key, state=state, train=train)
            else:
                (y, steps), new = own_trace(params, x, key=key), state
            record.add_steps(list(steps))
            return y, new
        if not self.stateful:
            return self.apply(params, x, key=key), state
        out = self.apply(params, x, key=key, state=state, train=train)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise layer_error(
                self.name,
                f"a layer with state must return (y, new_state) from apply, got "
                f"{type(out).__name__}",
                TypeError,
            )
        return out

    def trace(self, params: Params, x: Any, *, key: Optional[jax.Array] = None,
              state: Any = None, train: bool = False):
        """`(y, steps)`, or `(y, steps, new_state)` when given `state`; see `lm.trace`."""
        own = getattr(self, "_fns", None)
        if own is not None and own.trace is not None:
            if self.stateful:
                return own.trace(params, x, key=key, state=state, train=train)
            return own.trace(params, x, key=key)
        if state is None and self.stateful:
            raise missing_state(self)
        y, new, steps = record_call(self, params, () if state is None else state, x, key, train)
        return (y, steps) if state is None else (y, steps, new)

    def flops(self, step: TraceStep) -> int:
        """Floating-point operations of one example through this layer (see `lm.summary`).

        `step` holds the layer's input, params and output (shapes suffice).
        Layers lamina does not know count 0.
        """
        return 0

    def _sublayers(self) -> tuple[tuple[str, "Layer"], ...]:
        """`(path segment, child)` of the layers inside; a user's layer says of none."""
        return ()


def record_call(layer: Layer, params: Params, state: Any, x: Any, key: Any = None,
                train: bool = False) -> tuple[Any, Any, list[TraceStep]]:
    """`(y, new_state, steps)`: `layer.call` with every layer inside it recorded."""
    with record.frame() as frame:
        y, new = layer.call(params, state, x, key=key, train=train)
    steps = frame.steps or [TraceStep(
        "", (), layer.name, x, params, frame.notes.get("weighted_sum"), y, layer,
        frame.notes.get("act"), None, frame.notes.get("values"))]
    return y, new, steps


def call_child(segment: str, index: Optional[Union[int, str, tuple]], child: Layer, params: Params,
               state: Any, x: Any, key: Any = None, train: bool = False,
               feed: Optional[int] = None) -> tuple[Any, Any]:
    """`child.call(...)` as a part of the layer now running: the one way a layer runs another.

    Errors from inside get `segment` (e.g. `"serial[2]"`) in their path.
    While `lm.trace` records, the child's steps join the running layer's,
    under `segment`, at params entry `index` (a tuple position, a dict key,
    or a tuple of those for a place deeper down; `None`: the child's params
    are this layer's own), fed by the
    running layer's step `feed` (default: its last step so far, or its
    input).
    """
    parent = record.parent_frame()
    with child_context(segment, child):
        if parent is None:
            return child.call(params, state, x, key=key, train=train)
        y, new, steps = record_call(child, params, state, x, key, train)
    if feed is None:
        feed = len(parent.steps) - 1 if parent.steps else -1
    parent.steps.extend(record.nest(steps, segment, index, len(parent.steps), feed))
    return y, new


def abstract_init(layer: Layer, input_shape: Any, key: Any = None) -> tuple[Any, Params]:
    """`layer.init` under `jax.eval_shape`: `(output_shape, params of ShapeDtypeStruct)`."""
    shapes = []

    def params_only(k):
        out, params = layer.init(k, input_shape)
        shapes.append(out)  # a Python value, which eval_shape cannot return
        return params

    params = jax.eval_shape(params_only, jax.random.key(0) if key is None else key)
    return shapes[0], params


def output_shape(layer: Layer, input_shape: Any) -> Any:
    """The shape of `layer`'s output for inputs of `input_shape`, without computing."""
    return abstract_init(layer, input_shape)[0]


def missing_state(layer: Layer) -> Exception:
    """The error for running a layer with state without passing its state."""
    path, inner = stateful_part(layer)
    return layer_error(
        inner.name,
        "this layer has state (e.g. running statistics), so pass it: "
        "state = lm.init_state(model, input_shape), then apply(params, x, state=state) "
        "returns (y, state), as do lm.forward(model)(params, xs, state=state) and the "
        "train step",
    )._under(path)


def stateful_part(layer: Layer, path: str = "") -> tuple[str, Layer]:
    """`(path, layer)` of the first layer with state of its own inside `layer`."""
    for segment, child in children(layer):
        if child.stateful:
            return stateful_part(child, join_path(path, segment))
    return path, layer


def children(layer: Layer) -> tuple[tuple[str, Layer], ...]:
    """`(path segment, child)` for each layer a combinator holds, in order."""
    return layer._sublayers()


def placed_children(layer: Layer) -> list[tuple[Any, Layer]]:
    """`(place, child)` for each child: where its params (and state) sit in the layer's.

    A place is a tuple index or a dict key (a named child); `None` means the
    child's params are the layer's own (`with_dtype`, `remat`).
    """
    place = getattr(layer, "child_place", lambda i: i)
    return [(place(i), child) for i, (_, child) in enumerate(children(layer))]


def entry(tree: Any, place: Any) -> Any:
    """The entry of a child at `place` in its parent's params or state tree (`None`: all)."""
    return tree if place is None else tree[place]


def check_layer_type(
    where: str, model: Any, expected: str = "expected a lamina Layer such as lm.mlp([10])"
) -> Layer:
    """Raises a TypeError unless `model` is a lamina `Layer`."""
    if not isinstance(model, Layer):
        hint = " (did you forget to call it, e.g. lm.Relu()?)" if callable(model) else ""
        raise layer_error(
            where, f"{expected}, got {type(model).__name__} {model!r}{hint}", TypeError
        )
    return model


