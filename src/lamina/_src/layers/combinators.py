"""Combinators: layers built from layers.

Forward propagation through a network is function composition: `serial(f, g)`
applies `f`, then `g`. A combinator's params are a tuple of its children's
params, in order, so `params[2]["W"]` is the weight matrix of the third layer
of a `serial`; with children given by name, a dict (`params["fc"]["W"]`).
Shapes flow through `init`, so a model never states its input size twice.
Combinators keep their children (`.layers`, `.layer`), so a model can be
taken apart and rebuilt.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from lamina._src.core.builtin import Builtin, Child, Wrapper, check_tuple
from lamina._src.core.checks import check_input_shape, check_key, size
from lamina._src.core.errors import child_context, layer_error
from lamina._src.core.fields import Int
from lamina._src.core.layer import Layer, call_child, check_layer_type, output_shape
from lamina._src.core.record import TraceStep, add_step, parent_frame
from lamina._src.layers.activations import ActivationLike
from lamina._src.layers.dense import Dense


def _check_layers(where: str, layers: Sequence[Any], named: dict[str, Any]) -> tuple[Layer, ...]:
    if layers and named:
        raise layer_error(
            where,
            f"takes its layers all by position or all by name, not both: got {len(layers)} "
            f"by position and {sorted(named)} by name",
            TypeError,
        )
    if not layers and not named:
        raise layer_error(where, "needs at least one layer, got none")
    for i, layer in enumerate(layers):
        check_layer_type(where, layer, f"argument {i} must be a lamina Layer")
    for name, layer in named.items():
        # A name is a segment of params paths ("layer1.0.conv1.W"), so it may
        # not hold the separator; torch's module names obey the same rule.
        if not isinstance(name, str) or not name or "." in name:
            raise layer_error(
                where, f"a layer's name must be a non-empty string without '.', got {name!r}",
                TypeError)
        check_layer_type(where, layer, f"argument {name} must be a lamina Layer")
    return tuple(layers) or tuple(named.values())


def child_keys(where: str, key: Any, layers: Sequence[Layer]) -> list[Any]:
    """One key per child: `split(key, n)[i]` for a child that uses keys, else `None`.

    The same key always gives the same dropout masks; a model without
    stochastic layers derives no keys at all (no split is traced).
    """
    check_key(where, key, optional=True)
    if key is None or not any(layer.stochastic for layer in layers):
        return [None] * len(layers)
    keys = jax.random.split(key, len(layers))
    return [k if layer.stochastic else None for k, layer in zip(keys, layers)]


class _Combinator(Builtin, init=False):
    """A layer over several layers; its params and state hold one entry per child.

    Children given by position give a tuple (`params[2]`); children given by
    name a dict in their order (`params["conv1"]`), as torch's modules name
    theirs, so paths read `layer1.0.conv1.W` and adding a layer renumbers
    nothing.
    """

    layers: tuple[Layer, ...]
    names: tuple[str, ...] = ()

    def __init__(self, *layers: Layer, **named: Layer):
        where = type(self).__name__
        object.__setattr__(self, "layers", _check_layers(where, layers, named))
        object.__setattr__(self, "names", tuple(named))

    def config(self) -> dict[str, Any]:
        # Names only when given: a model of positions is written as before them.
        return {"layers": self.layers, **({"names": self.names} if self.names else {})}

    @classmethod
    def from_config(cls, config):
        layers, names = tuple(config["layers"]), tuple(config.get("names", ()))
        if not names:
            return cls(*layers)
        if len(names) != len(layers) or len(set(names)) != len(names):
            raise layer_error(
                cls.__name__, f"needs one distinct name per layer, got names {list(names)} for "
                f"{len(layers)} layers", TypeError)
        return cls(**dict(zip(names, layers)))

    def _shown(self, show_layer) -> str:
        if not self.names:
            return ", ".join(show_layer(layer) for layer in self.layers)
        return ", ".join(f"{n}={show_layer(layer)}" for n, layer in zip(self.names, self.layers))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._shown(repr)})"

    @functools.cached_property
    def name(self) -> str:  # cached: a deep model's name is long, and errors ask for it
        return f"{type(self).__name__}({self._shown(lambda layer: layer.name)})"

    def child_segment(self, i: int) -> str:
        return f"{type(self).__name__}[{self.names[i] if self.names else i}]"

    def child_place(self, i: int) -> Any:
        return self.names[i] if self.names else i

    def check_input_shape(self, input_shape):
        return input_shape  # each child checks what it gets

    def _pack(self, entries: Sequence[Any]) -> Any:
        """One entry per child as this layer's params (or state): a tuple, or a dict by name."""
        return dict(zip(self.names, entries)) if self.names else tuple(entries)

    def _entries(self, tree: Any, what: str) -> list:
        """The children's entries of this layer's params (or state), in order."""
        if not self.names:
            check_tuple(self.name, tree, len(self.layers), what)
            return list(tree)
        if not isinstance(tree, Mapping) or set(tree) != set(self.names):
            got = (f"a dict with keys {list(tree)}" if isinstance(tree, Mapping)
                   else type(tree).__name__)
            raise layer_error(
                self.name,
                f"expected {what} as a dict with keys {list(self.names)} (one per layer), "
                f"got {got}",
            )
        return [tree[n] for n in self.names]

    def _split(self, params: Any, state: Any) -> tuple[list, list]:
        """The children's params and states: a stateless combinator's state is `()`."""
        params = self._entries(params, "params")
        if not self.stateful:
            return params, [()] * len(self.layers)
        return params, self._entries(state, "state")

    def _joined(self, states: list) -> Any:
        return self._pack(states) if self.stateful else ()


class serial(_Combinator, init=False):
    """Composes layers: the output of each is the input of the next.

    Args:
      *layers: the layers, first to last; `.layers` holds them.
      **named: or the layers by name, first to last (`conv1=lm.Conv(...),
        bn1=lm.BatchNorm()`); `.names` holds the names. Not both.

    A `Layer` whose params are a tuple with one entry per layer, or with
    named layers a dict by name (paths such as `"conv1.W"`, the names
    `lm.from_torch` matches with torch's module names).

    Example:
      >>> import jax, lamina as lm
      >>> model = lm.serial(lm.Dense(8, act="relu"), lm.Dense(2))
      >>> out_shape, params = model.init(jax.random.key(0), (4,))
      >>> out_shape, len(params), model.layers[1]
      ((2,), 2, Dense(2))
      >>> named = lm.serial(hidden=lm.Dense(8, act="relu"), out=lm.Dense(2))
      >>> _, params = named.init(jax.random.key(0), (4,))
      >>> list(params), params["out"]["W"].shape
      (['hidden', 'out'], (2, 8))
    """

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = input_shape
        params = []
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, len(self.layers)))):
            with child_context(self.child_segment(i), layer):
                shape, p = layer.init(k, shape)
            params.append(p)
        return shape, self._pack(params)

    def init_state(self, input_shape):
        if not self.stateful:
            return ()
        shape, states = input_shape, []
        for i, layer in enumerate(self.layers):
            with child_context(self.child_segment(i), layer):
                states.append(layer.init_state(shape) if layer.stateful else ())
                if i + 1 < len(self.layers):
                    shape = output_shape(layer, shape)
        return self._pack(states)

    def forward(self, params, state, x, *, key, train):
        params, states = self._split(params, state)
        keys = child_keys(self.name, key, self.layers)
        for i, layer in enumerate(self.layers):
            x, states[i] = call_child(self.child_segment(i), self.child_place(i), layer,
                                      params[i], states[i], x, keys[i], train)
        return x, self._joined(states)


class parallel(_Combinator, init=False):
    """Feeds the same input to every layer; the output is a tuple of their outputs.

    Follow it with `lm.Concat()` to join the branches into one array.

    Args:
      *layers: the branches; `.layers` holds them.
      **named: or the branches by name (`main=..., downsample=...`);
        `.names` holds the names. Not both.

    A `Layer` whose output is a tuple of the branches' outputs, in order
    (named or not), and whose params are a tuple with one entry per branch,
    or with named branches a dict by name.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.parallel(lm.Dense(3), lm.Identity())
      >>> out_shape, params = model.init(jax.random.key(0), (4,))
      >>> out_shape
      ((3,), (4,))
      >>> [y.shape for y in model.apply(params, jnp.ones(4))]
      [(3,), (4,)]
    """

    kind = "parallel"

    def init(self, key, input_shape):
        check_key(self.name, key)
        shapes, params = [], []
        for i, (layer, k) in enumerate(zip(self.layers, jax.random.split(key, len(self.layers)))):
            with child_context(self.child_segment(i), layer):
                shape, p = layer.init(k, input_shape)
            shapes.append(shape)
            params.append(p)
        return tuple(shapes), self._pack(params)

    def init_state(self, input_shape):
        if not self.stateful:
            return ()
        states = []
        for i, layer in enumerate(self.layers):
            with child_context(self.child_segment(i), layer):
                states.append(layer.init_state(input_shape) if layer.stateful else ())
        return self._pack(states)

    def forward(self, params, state, x, *, key, train):
        params, states = self._split(params, state)
        keys = child_keys(self.name, key, self.layers)
        outs, ends = [], []
        for i, layer in enumerate(self.layers):
            y, states[i] = call_child(self.child_segment(i), self.child_place(i), layer,
                                      params[i], states[i], x, keys[i], train, feed=-1)
            outs.append(y)
            ends.append(_last_step())
        y = tuple(outs)
        # Its own step shows the tuple it made, so no value is hidden.
        add_step(TraceStep("", (), self.name, x, params, None, y, self, None, tuple(ends)))
        return y, self._joined(states)


def _last_step() -> int:
    """The number of the running layer's last recorded step (-1 when not recording)."""
    frame = parent_frame()
    return -1 if frame is None else len(frame.steps) - 1


class residual(Wrapper):
    """A skip connection: `x + layer(x)`; the layer must keep the input's shape.

    Args:
      layer: the wrapped layer (often a `serial` block); `.layer` holds it.

    A `Layer` whose params are a one-entry tuple `(layer_params,)`.

    Raises:
      ValueError: at init, when `layer` changes the shape of its input.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.residual(lm.Dense(4, act="tanh"))
      >>> _, params = block.init(jax.random.key(0), (4,))
      >>> x = jnp.ones(4)
      >>> bool(jnp.allclose(block.apply(params, x), x + block.layer.apply(params[0], x)))
      True
    """

    layer: Child

    kind = "residual"
    shares = False

    @functools.cached_property
    def name(self) -> str:
        return f"residual({self.layer.name})"

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape)
        out_shape, params = super().init(key, shape)
        if tuple(out_shape) != shape:
            raise layer_error(
                self.name,
                f"x + f(x) needs f to keep the shape, but the wrapped layer maps "
                f"{shape} to {tuple(out_shape)}",
            )
        return shape, params

    def forward(self, params, state, x, *, key, train):
        fx, new = self.call_inner(params, state, x, key, train)
        y = x + fx
        add_step(TraceStep("", (), self.name, x, params, None, y, self, None, (-1, _last_step())))
        return y, new

    def flops(self, step):
        return size(step.output.shape)  # the sum


def mlp(
    features: Sequence[int],
    act: ActivationLike = "relu",
    final_act: ActivationLike = None,
) -> serial:
    """A multi-layer perceptron: `Dense` layers with `act` between them.

    Args:
      features: output sizes of the layers, e.g. `[256, 256, 10]`; the last is
        the output layer, the others hidden layers.
      act: activation of the hidden layers.
      final_act: activation of the output layer (`None` leaves logits).

    Returns:
      `lm.serial(Dense(f0, act), ..., Dense(f_last, final_act))`.

    Example:
      >>> import lamina as lm
      >>> lm.mlp([16, 3])
      serial(Dense(16, act='relu'), Dense(3))
      >>> lm.mlp([16, 3]) == lm.mlp([16, 3])
      True
    """
    if isinstance(features, (int, str)) or not hasattr(features, "__iter__"):
        raise layer_error(
            "mlp",
            f"features must be a list of layer sizes such as [256, 10], got "
            f"{type(features).__name__} {features!r}",
            TypeError,
        )
    features = list(features)
    if not features:
        raise layer_error("mlp", "features must name at least one layer size, got []")
    *hidden, last = features
    return serial(*(Dense(f, act) for f in hidden), Dense(last, final_act))


class Concat(Builtin):
    """Joins a tuple of arrays (e.g. the output of `lm.parallel`) along `axis`.

    Args:
      axis: the axis of one example to join along; negative counts from the end.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.parallel(lm.Dense(3), lm.Dense(2)), lm.Concat())
      >>> out_shape, params = model.init(jax.random.key(0), (4,))
      >>> out_shape, model.apply(params, jnp.ones(4)).shape
      ((5,), (5,))
    """

    axis: Int = -1

    stochastic = False

    @property
    def name(self) -> str:
        return f"Concat(axis={self.axis})"

    def check_input_shape(self, input_shape):
        if not isinstance(input_shape, tuple) or not all(
            isinstance(s, tuple) for s in input_shape
        ):
            raise layer_error(
                self.name,
                f"expects a tuple of inputs (e.g. from lm.parallel), got input "
                f"shape {input_shape!r}",
            )
        return tuple(check_input_shape(self.name, s, min_rank=1) for s in input_shape)

    def output_shape(self, input_shape):
        _check_joinable(self.name, input_shape, self.axis)
        ax = self.axis % len(input_shape[0])
        out = list(input_shape[0])
        out[ax] = sum(s[ax] for s in input_shape)
        return tuple(out)

    def check_input(self, xs, params):
        if not isinstance(xs, (tuple, list)):
            raise layer_error(
                self.name, f"expects a tuple of arrays, got {type(xs).__name__}", TypeError
            )
        # The same check as init, at trace time: jnp.concatenate's own message
        # does not say which layer.
        _check_joinable(self.name, [jnp.shape(x) for x in xs], self.axis)
        return xs

    def forward(self, params, state, xs, *, key, train):
        return jnp.concatenate(xs, axis=self.axis), state


def _check_joinable(name: str, shapes: Sequence[tuple[int, ...]], axis: int) -> None:
    rank = len(shapes[0]) if shapes else 0
    if not -rank <= axis < rank or any(len(s) != rank for s in shapes):
        raise layer_error(name, f"cannot join shapes {list(shapes)} along axis {axis}")
    ax = axis % rank
    rest = [s[:ax] + s[ax + 1 :] for s in shapes]
    if any(r != rest[0] for r in rest):
        raise layer_error(
            name,
            f"shapes {list(shapes)} differ outside axis {axis}, so they cannot be joined",
        )

