"""`Builtin`, the base of lamina's own layers, and `Wrapper`, the base of those around one layer.

A built-in layer is a frozen dataclass of its configuration (equal
configuration means equal, same hash, one compile), whose fields check
themselves (`fields.py`), whose params are declared once (`spec.py`), and
whose capabilities are derived from its children or declared and verified
by `lm.testing.check_layer`, with safe defaults: a layer that may use a key
gets one; a layer is vmapped unless it says it computes each example alone.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import typing
from typing import Annotated, Any, ClassVar, Optional

import jax
import numpy as np

from lamina._src.core import record, spec
from lamina._src.core.checks import check_count, check_input_shape, check_key
from lamina._src.core.errors import child_context, layer_error
from lamina._src.core.fields import Check
from lamina._src.core.layer import (
    Layer,
    Params,
    Shape,
    call_child,
    check_layer_type,
    children,
    missing_state,
)

if sys.version_info >= (3, 11):
    from typing import Self, dataclass_transform
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Self, dataclass_transform


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


def _fields(layer: Any) -> tuple[dataclasses.Field, ...]:
    """The dataclass fields of a built-in layer (its configuration)."""
    return dataclasses.fields(layer)


_CHECKS: dict[type, dict[str, Check]] = {}


def _field_checks(cls: type) -> dict[str, Check]:
    """The `Check` each field's type carries, read once per class."""
    if cls not in _CHECKS:
        hints = typing.get_type_hints(cls, include_extras=True)
        checks = {}
        for field in dataclasses.fields(cls):
            hint = hints.get(field.name)
            for meta in getattr(hint, "__metadata__", ()):
                if isinstance(meta, Check):
                    checks[field.name] = meta
        _CHECKS[cls] = checks
    return _CHECKS[cls]


@dataclass_transform(frozen_default=True, eq_default=True)
class Builtin(Layer):
    """Base of lamina's layers: each subclass is a frozen dataclass of its configuration.

    A leaf layer declares, in one place each (see CONTRIBUTING.md):

    - its configuration, as fields whose types check them (`fields.py`);
    - `output_shape(input_shape)`, checking the shape of one example;
    - `params_spec()` and, with state, `state_spec()`: its arrays (`spec.py`);
    - `forward(params, state, x, *, key, train) -> (y, state)`: the math;
    - `stochastic = False` if it never uses a key, `batch_polymorphic =
      True` if it computes each example alone along leading axes.

    `init`, `init_state`, `apply`, `call`, `trace`, the params checks and the
    torch names follow. A layer with children instead implements `init`,
    `init_state` and `forward` over them with `call_child`.
    """

    # What a layer may declare; everything else is derived.
    min_rank: ClassVar[int] = 0
    """The fewest axes one input example may have (checked at init)."""

    def __init__(self) -> None:
        """A layer without configuration; dataclasses writes the others' `__init__`."""

    def __init_subclass__(cls, init: bool = True, **kwargs: Any) -> None:
        # `init=False` (a class keyword): the class writes its own __init__,
        # e.g. serial(*layers); type checkers read the keyword too.
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, repr=False, init=init)(cls)

    def __post_init__(self) -> None:
        where = type(self).__name__
        fields = _fields(self)
        checks = _field_checks(type(self))
        for i, field in enumerate(fields):
            if field.name in checks:
                value = checks[field.name](where, field.name, getattr(self, field.name))
                object.__setattr__(self, field.name, value)
                if i == 0 and checks[field.name].fn is check_count:
                    # Once its size is known, errors name the layer by it: Dense(10).
                    where = f"{where}({value})"
        self.check_config()

    def check_config(self) -> None:
        """Checks across fields (e.g. `groups` divides `out_channels`); each field checks itself."""

    # --- capabilities: derived from the children, or declared by a leaf ---
    # (cached: a deep model asks at every level while it is traced)

    @functools.cached_property
    def stateful(self) -> bool:
        kids = children(self)
        if kids:
            return any(child.stateful for _, child in kids)
        return bool(spec.present(self, self.state_spec()))

    @functools.cached_property
    def stochastic(self) -> bool:
        # A leaf that does not say gets a key: dropping noise silently is worse
        # than splitting a key for nothing. check_layer verifies what it says.
        kids = children(self)
        return any(child.stochastic for _, child in kids) if kids else True

    @functools.cached_property
    def batch_polymorphic(self) -> bool:
        kids = children(self)
        return all(child.batch_polymorphic for _, child in kids) if kids else False

    # --- what a leaf declares ---

    def output_shape(self, input_shape: Shape) -> Any:
        """The shape of one output example; raises, naming the layer, for a bad input shape."""
        return input_shape

    def params_spec(self) -> spec.Spec:
        """The layer's params: key -> `Param` (or a nested dict of them)."""
        return {}

    def state_spec(self) -> spec.Spec:
        """The layer's state (e.g. running statistics), declared like its params."""
        return {}

    def params_note(self, input_shape: Shape, key: str) -> str:
        """Words after "expected {key} of shape (..)" saying why, e.g. " for inputs with D=8 features"."""
        return ""

    def check_input(self, x: Any, params: Params) -> Any:
        """Checks one input example (dtype, rank) before the params are; returns it as an array."""
        return x

    def forward(self, params: Params, state: Any, x: Any, *, key: Optional[jax.Array],
                train: bool) -> tuple[Any, Any]:
        """The layer's computation on one example, after its checks: `(y, new_state)`."""
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    # --- derived ---

    def check_input_shape(self, input_shape: Any) -> Any:
        return check_input_shape(self.name, input_shape, self.min_rank)

    def init(self, key: jax.Array, input_shape: Any) -> tuple[Any, Params]:
        # Any: one example's shape, or a tuple or dict of them (several inputs).
        shape = self.check_input_shape(input_shape)
        out = self.output_shape(shape)
        declared = self.params_spec()
        if not spec.present(self, declared):
            return out, ()
        check_key(self.name, key)
        return out, spec.draw(self, declared, key, shape)

    def init_state(self, input_shape: Any) -> Any:
        shape = self.check_input_shape(input_shape)
        self.output_shape(shape)
        return spec.draw(self, self.state_spec(), None, shape)

    def call(self, params: Params, state: Any, x: Any, *, key: Optional[jax.Array] = None,
             train: bool = False) -> tuple[Any, Any]:
        check_key(self.name, key, optional=True)
        x = self.check_input(x, params)
        self.check_params(params, state, x)
        return self.forward(params, state, x, key=key, train=train)

    def check_params(self, params: Params, state: Any, x: Any) -> None:
        """Checks params (and state) against the declaration, for inputs like `x`.

        A layer with children leaves it to them: each checks its own entry.
        """
        if children(self):
            return
        shape = tuple(np.shape(x)) if hasattr(x, "shape") else ()
        spec.check(self, self.params_spec(), params, shape)
        if self.stateful:
            spec.check(self, self.state_spec(), state, shape, "state")

    def apply(self, params: Params, x: Any, *, key: Optional[jax.Array] = None,  # type: ignore[override]
              state: Any = None, train: bool = False) -> Any:
        """`y` on one example; `(y, new_state)` when given `state` (a layer with state needs it)."""
        if state is None and self.stateful:
            raise missing_state(self)
        with record.paused():  # a user's own code calling a layer: one step, theirs
            y, new = self.call(params, () if state is None else state, x, key=key, train=train)
        return y if state is None else (y, new)

    # --- configuration as a value ---

    def __repr__(self) -> str:
        parts = []
        for field in _fields(self):
            value = getattr(self, field.name)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                parts.append(show(value))
            elif not _same(value, field.default):
                parts.append(f"{field.name}={show(value)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def name(self) -> str:  # type: ignore[override]
        """The short name errors and traces use; the repr by default."""
        return repr(self)

    def config(self) -> dict[str, Any]:
        """The configuration: every field by name, as the constructor takes it."""
        return {f.name: getattr(self, f.name) for f in _fields(self)}

    def _sublayers(self) -> tuple[tuple[str, Layer], ...]:
        found = self.__dict__.get("_children")
        if found is None:  # kept on the instance, as cached_property does: asked at every level
            kids: list[tuple[str, Layer]] = []
            for field in _fields(self):
                value = getattr(self, field.name)
                for item in value if isinstance(value, tuple) else (value,):
                    if isinstance(item, Layer):
                        kids.append((self.child_segment(len(kids)), item))
            found = self.__dict__["_children"] = tuple(kids)
        return found

    def child_segment(self, i: int) -> str:
        """The path segment of child layer `i`, e.g. `"serial[2]"`.

        `""` means the child has no place of its own: it shares this layer's
        params and state (e.g. `with_dtype`'s model).
        """
        return f"{type(self).__name__}[{i}]"

    def child_place(self, i: int) -> Any:
        """Where child `i`'s params (and state) sit in this layer's: a tuple index or a
        dict key; `None` when they are this layer's own (`child_segment` is `""`)."""
        return None if self.child_segment(i) == "" else i

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        """Builds the layer from `config()`'s dict."""
        return cls(**config)

    def replace(self, **changes: Any) -> Self:
        """A copy with some configuration changed (model surgery in one line).

        Example:
          >>> import lamina as lm
          >>> lm.Dense(3).replace(act="relu")
          Dense(3, act='relu')
          >>> model = lm.mlp([8, 2])
          >>> model.replace(layers=model.layers[:1] + (lm.Dense(5),))
          serial(Dense(8, act='relu'), Dense(5))
        """
        fields = {f.name for f in _fields(self)}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise layer_error(
                self.name,
                f"replace() got unknown field(s) {unknown}; {type(self).__name__} has "
                f"{sorted(fields)}",
                TypeError,
            )
        return type(self).from_config({**self.config(), **changes})

    # --- PyTorch names, from the declaration ---

    @property
    def torch_names(self) -> dict[str, str]:
        """How PyTorch names this layer's params: lamina key -> torch state-dict name."""
        return {".".join(path): name
                for path, name in spec.torch_names(self, self.params_spec()).items()}

    @property
    def torch_state_names(self) -> dict[str, str]:
        """Likewise for its state (torch's buffers), e.g. BatchNorm's running statistics."""
        return {".".join(path): name
                for path, name in spec.torch_names(self, self.state_spec()).items()}

    def torch_children(self, params: Params) -> list[tuple[str, "Builtin", tuple]]:
        """For a block that is one torch module with named submodules (a transformer
        layer): `(torch module name, lamina layer, its place in params)` for each."""
        return []

    def torch_params(self, params: Params) -> dict[str, Any]:
        """This layer's params as torch state-dict entries, named within the torch module."""
        out = {}
        for module, layer, place in self.torch_children(params):
            for name, value in layer.torch_params(_at(params, place)).items():
                out[f"{module}.{name}"] = value
        axes = spec.torch_axes(self, self.params_spec())
        for path, name in spec.torch_names(self, self.params_spec()).items():
            value = _at(params, path)
            out[name] = spec.with_torch_axes(value, axes[path]) if path in axes else value
        return out

    def params_from_torch(self, tensors: Any, like: Params) -> Params:
        """The inverse of `torch_params`: params shaped like `like` from torch entries."""
        params = like
        for module, layer, place in self.torch_children(like):
            prefix = module + "."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            params = _replace_at(params, place, layer.params_from_torch(own, _at(like, place)))
        names = spec.torch_names(self, self.params_spec())
        if not names:
            return params
        axes = spec.torch_axes(self, self.params_spec())
        built: dict = {}
        for path, name in names.items():
            if name not in tensors:
                raise layer_error(self.name, f"torch tensors lack {name!r}; got {sorted(tensors)}")
            want = tuple(np.shape(_at(like, path)))
            if path in axes:
                want = (1,) * axes[path] + want
            got = tuple(np.shape(tensors[name]))
            if want != got:
                where = "params" + "".join(f"[{k!r}]" for k in path)
                raise layer_error(
                    self.name, f"torch {name!r} has shape {got}, but {where} expects {want}")
            node = built
            for k in path[:-1]:
                node = node.setdefault(k, {})
            node[path[-1]] = tensors[name][(0,) * axes[path]] if path in axes else tensors[name]
        return built


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _replace_at(tree: Any, place: tuple, value: Any) -> Any:
    if not place:
        return value
    i, rest = place[0], place[1:]
    if isinstance(tree, dict):  # a block whose params are named, as torch's modules
        return {k: _replace_at(p, rest, value) if k == i else p for k, p in tree.items()}
    return tuple(_replace_at(p, rest, value) if j == i else p for j, p in enumerate(tree))


class Wrapper(Builtin):
    """Base of a layer around one child (residual, stack, remat, with_dtype): its kind of
    layer is the child's, and state, keys and paths are handled here once.

    `shares`: the child's params and state are this layer's own (`remat`,
    `with_dtype`); otherwise they are the one entry of a tuple (`residual`).
    """

    shares: ClassVar[bool] = True

    @property
    def inner(self) -> Layer:
        """The wrapped layer."""
        return children(self)[0][1]

    @property
    def stateful(self) -> bool:
        return self.inner.stateful

    @property
    def stochastic(self) -> bool:
        return self.inner.stochastic

    @property
    def batch_polymorphic(self) -> bool:
        return self.inner.batch_polymorphic

    def child_segment(self, i: int) -> str:
        return "" if self.shares else f"{type(self).__name__}[0]"

    def init(self, key: jax.Array, input_shape: Shape) -> tuple[Any, Params]:
        check_key(self.name, key)
        with child_context(self.child_segment(0), self.inner):
            out, params = self.inner.init(key, input_shape)
        return out, (params if self.shares else (params,))

    def init_state(self, input_shape: Shape) -> Any:
        if not self.inner.stateful:
            return ()
        with child_context(self.child_segment(0), self.inner):
            state = self.inner.init_state(input_shape)
        return state if self.shares else (state,)

    def call_inner(self, params: Params, state: Any, x: Any, key: Any, train: bool) -> tuple[Any, Any]:
        """The child on `x`, with its part of this layer's params and state."""
        if not self.shares:
            check_tuple(self.name, params, 1)
            params = params[0]
            if self.inner.stateful:
                check_tuple(self.name, state, 1, "state")
                state = state[0]
        y, new = call_child(self.child_segment(0), None if self.shares else 0, self.inner,
                            params, state, x, key, train)
        if not self.shares and self.inner.stateful:
            new = (new,)
        return y, new

    def forward(self, params, state, x, *, key, train):
        return self.call_inner(params, state, x, key, train)


def check_tuple(where: str, tree: Any, n: int, what: str = "params") -> None:
    """Raises unless `tree` is a tuple (or list) of `n` entries, one per child."""
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = (
            f"a {type(tree).__name__} of length {len(tree)}"
            if isinstance(tree, (tuple, list))
            else type(tree).__name__
        )
        raise layer_error(
            where,
            f"expected {what} as a tuple of {n} entries (one per layer), got {got}",
        )


def _child(where: str, arg: str, value: Any) -> Layer:
    return check_layer_type(where, value, f"{arg} must be a lamina Layer")


Child = Annotated[Layer, Check(_child)]
"""A field holding the layer a wrapper wraps."""
