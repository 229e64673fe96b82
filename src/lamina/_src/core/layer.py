"""The `Layer` type and the checks every layer shares.

A layer is two pure functions and a name. `init(key, input_shape)` returns the
shape of one output example and the parameters; `apply(params, x, *, key=None)`
maps one example to one output. `trace(params, x, *, key=None)` returns the
same output plus one `TraceStep` per layer that ran.

Users write a layer as `Layer(init, apply, name)`. lamina's own layers are
subclasses that are frozen dataclasses of their configuration: equal
configuration means equal, same hash (one compile), picklable, and a `repr`
that reads as the call that builds them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import reprlib
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.errors import join_path, layer_error

Shape = tuple[int, ...]
"""The shape of ONE example, without a batch axis, e.g. `(784,)` or `(1, 8, 8)`."""
Params = Any  # a pytree of jax.Array: dicts, tuples and () for no weights
"""A params pytree of `jax.Array`: `Dense` holds `{"W": (out, in), "b": (out,)}`,
a combinator a tuple with one entry per child, a layer without weights `()`."""

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
      layer: the layer itself (a `Layer`), e.g. to read its configuration.
      act: the name of the activation applied after the weighted sum, if any.
      sources: the positions, in the list of steps, of the steps whose
        outputs this layer received; `-1` is the model's input. `None`
        means the step just before (a user layer that does not say).
      values: other named values the layer computed on the way, e.g.
        BatchNorm's `{"mean", "var", "normalized"}`; `None` for none.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([4, 2])
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> step = lm.trace(model, params, jnp.ones(3))[0]
      >>> step.path, step.name, step.act, step.weighted_sum.shape, step.layer == model.layers[0]
      ('serial[0]', 'Dense(4, relu)', 'relu', (4,), True)
    """

    path: str
    index: tuple[int, ...]
    name: str
    input: Any
    params: Params
    weighted_sum: Optional[jax.Array]
    output: Any
    layer: Optional["Layer"] = None
    act: Optional[str] = None
    sources: Optional[tuple[int, ...]] = None
    values: Optional[dict[str, Any]] = None


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
        object.__setattr__(self, "init", init)
        object.__setattr__(self, "apply", apply)
        object.__setattr__(self, "name", name)
        if trace is not None:  # shadows the one-step trace below
            object.__setattr__(self, "trace", trace)
        if init_state is not None:  # likewise: a layer with state
            object.__setattr__(self, "init_state", init_state)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} is immutable: use .replace({attr}=...) for a modified copy"
        )

    def _key(self) -> tuple:
        return (self.init, self.apply, self.name, self.__dict__.get("trace"),
                self.__dict__.get("init_state"))

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
        fields = dict(zip(("init", "apply", "name", "trace", "init_state"), self._key()))
        return Layer(**{**fields, **changes})

    @property
    def stateful(self) -> bool:
        """Whether the layer (or a layer inside it) has state, e.g. running statistics."""
        return "init_state" in self.__dict__

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
        """
        return False

    def init_state(self, input_shape: Shape) -> Any:
        """The layer's state for inputs of `input_shape`; `()` for a layer without."""
        return ()

    def trace(self, params: Params, x: Any, *, key: Optional[jax.Array] = None,
              state: Any = None, train: bool = False):
        """`(y, steps)`, or `(y, steps, new_state)` for a layer with state."""
        if not self.stateful:
            y = self.apply(params, x, key=key)
            return y, [TraceStep("", (), self.name, x, params, None, y, self)]
        if state is None:
            raise missing_state(self)
        y, new = self.apply(params, x, key=key, state=state, train=train)
        return y, [TraceStep("", (), self.name, x, params, None, y, self)], new

    def flops(self, step: TraceStep) -> int:
        """Floating-point operations of one example through this layer (see `lm.summary`).

        `step` holds the layer's input, params and output (shapes suffice).
        Layers lamina does not know count 0.
        """
        return 0


# lamina's own layers: immutable values of their configuration, whose repr is
# the call that builds them.
frozen = functools.partial(dataclasses.dataclass, frozen=True, repr=False)


class Builtin(Layer):
    """Base of lamina's layers; subclasses are `@frozen` dataclasses."""

    torch_names: ClassVar[dict[str, str]] = {}
    """How PyTorch names this layer's params: lamina key -> torch state-dict name."""

    torch_state_names: ClassVar[dict[str, str]] = {}
    """Likewise for its state (torch's buffers), e.g. BatchNorm's running statistics."""

    @property
    def stochastic(self) -> bool:
        return any(child.stochastic for _, child in children(self))

    def torch_params(self, params: Params) -> dict[str, Any]:
        """This layer's params as torch state-dict entries, named within the torch module.

        Layers whose weights need more than a renaming (a fused torch weight,
        a composite block) override this and `params_from_torch`.
        """
        return {self.torch_names[k]: v for k, v in params.items()}

    def params_from_torch(self, tensors: Any, like: Params) -> Params:
        """The inverse of `torch_params`: params shaped like `like` from torch entries."""
        return {k: tensors[self.torch_names[k]] for k in like}

    def __repr__(self) -> str:
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                parts.append(show(value))
            elif not _same(value, field.default):
                parts.append(f"{field.name}={show(value)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def config(self) -> dict[str, Any]:
        """The configuration: every field by name, as the constructor takes it."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def child_segment(self, i: int) -> str:
        """The path segment of child layer `i`, e.g. `"serial[2]"`.

        `""` means the child has no place of its own: it shares this layer's
        params and state (e.g. `with_dtype`'s model).
        """
        return f"{type(self).__name__}[{i}]"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Builtin":
        """Builds the layer from `config()`'s dict."""
        return cls(**config)

    def replace(self, **changes: Any) -> "Builtin":
        """A copy with some configuration changed (model surgery in one line).

        Example:
          >>> import lamina as lm
          >>> lm.Dense(3).replace(act="relu")
          Dense(3, act='relu')
          >>> model = lm.mlp([8, 2])
          >>> model.replace(layers=model.layers[:1] + (lm.Dense(5),))
          serial(Dense(8, act='relu'), Dense(5))
        """
        unknown = sorted(set(changes) - set(self.config()))
        if unknown:
            raise layer_error(
                self.name,
                f"replace() got unknown field(s) {unknown}; {type(self).__name__} has "
                f"{sorted(self.config())}",
                TypeError,
            )
        return type(self).from_config({**self.config(), **changes})


class Wrapper(Builtin):
    """Base of a layer around one `layer` (residual, stack, remat): its kind of layer is the child's.

    Subclasses declare the dataclass field `layer`.
    """

    layer: Layer

    @property
    def stateful(self) -> bool:
        return self.layer.stateful

    @property
    def stochastic(self) -> bool:
        return self.layer.stochastic

    @property
    def batch_polymorphic(self) -> bool:
        return self.layer.batch_polymorphic


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) and type(value) is type(default) or (
            isinstance(value, np.dtype) and value == np.dtype(default)
        )
    except TypeError:
        return False


def show(value: Any) -> str:
    """A configuration value as it reads in a repr."""
    if isinstance(value, np.dtype):
        return repr(value.name)
    if isinstance(value, tuple) and value and all(isinstance(v, Layer) for v in value):
        return ", ".join(map(repr, value))
    if callable(value) and not isinstance(value, Layer) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


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


def run(layer: Layer, params: Params, x: Any, key: Any = None, state: Any = None,
        train: bool = False) -> tuple[Any, list[TraceStep], Any]:
    """`(y, steps, new_state)` of any layer; a layer without state keeps `state`.

    With `state=None` no state is threaded (and the new state is `None`); a
    layer with state then raises, saying how to make its state.
    """
    if layer.stateful:
        if state is None:
            raise missing_state(layer)
        return layer.trace(params, x, key=key, state=state, train=train)
    y, steps = layer.trace(params, x, key=key)
    return y, steps, state


def run_apply(layer: Layer, params: Params, x: Any, key: Any = None, state: Any = None,
              train: bool = False) -> tuple[Any, list, Any]:
    """`run` through `layer.apply`: `(y, [], new_state)`, what a combinator's apply calls.

    A combinator's `apply` and `trace` share one loop over the children, so
    they cannot drift apart; `apply` calls each child's own `apply` (a
    `stack` scans, a `remat` checkpoints), `trace` each child's `trace`.
    """
    if layer.stateful:
        if state is None:
            raise missing_state(layer)
        y, new = layer.apply(params, x, key=key, state=state, train=train)
        return y, [], new
    return layer.apply(params, x, key=key), [], state


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


def children(layer: Layer) -> list[tuple[str, Layer]]:
    """`(path segment, child)` for each layer a combinator holds, in order."""
    if not isinstance(layer, Builtin):
        return []
    found = []
    for value in layer.config().values():
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, Layer):
                found.append((layer.child_segment(len(found)), item))
    return found


def nest(steps: list[TraceStep], segment: str, i: Optional[int], offset: int,
         feed: int) -> list[TraceStep]:
    """A child's trace steps as steps of its parent.

    The child sits at `segment` (e.g. `"serial[2]"`), entry `i` of the
    parent's params (`None`: the parent's params are the child's own, sliced
    for a `stack`); its steps are numbered from `offset` in the parent's
    list, and its input came from the parent's step `feed` (`-1`: the
    parent's own input).
    """
    out = []
    for s in steps:
        sources = None if s.sources is None else tuple(
            feed if j < 0 else offset + j for j in s.sources
        )
        if sources is None and not out:
            sources = (feed,)
        index = s.index if i is None else (i,) + s.index
        out.append(s._replace(path=join_path(segment, s.path), index=index, sources=sources))
    return out


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


def check_count(where: str, arg: str, value: Any, meaning: str = "") -> int:
    """`value` as an int >= 1 (a size, a count), or an error naming the layer and `arg`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise layer_error(
            where, f"{arg} must be an int{meaning}, got {type(value).__name__} {value!r}",
            TypeError,
        )
    if value < 1:
        raise layer_error(where, f"{arg} must be >= 1, got {value}")
    return int(value)


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


def size(shape: Shape) -> int:
    """Number of elements in an array of `shape`."""
    return math.prod(shape)
