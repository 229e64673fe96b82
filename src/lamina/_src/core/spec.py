"""Declared parameters: what a layer holds, said once, and everything derived from it.

A built-in layer declares each of its params (and its state) as a `Param`:
its shape as a function of the input shape, its initializer, its name in
PyTorch, its layout for messages, and which input axis it must fit. From
that one declaration come `init` (`draw`), the check of params (and state)
before every call (`check`), the PyTorch names (`torch_names`), and so
`lm.check_params`, the torch exchange and `lm.summary`'s counts.

A declaration is a dict from key to `Param`, or to another such dict for
nested params (attention's `{"qkv": {"W", "b"}, "out": {...}}`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from lamina._src.core.errors import BATCH_HINT, TRANSPOSED, layer_error, transposed_hint

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Param:
    """One declared array of a layer.

    Attributes:
      shape: its shape, from the shape of one input example, e.g.
        `lambda s: (out_features, s[-1])`.
      init: its initializer `(key, shape, dtype) -> array` (see
        `lm.initializers.init_weight`), or a function of the input shape
        returning one (a bias whose bound depends on the fan-in).
      torch: its name in the PyTorch module's state dict, e.g. `"weight"`;
        `None` for an array torch does not have.
      layout: its axes in words, e.g. `"(out, in)"`, for messages.
      fits: axis of this array -> the axis of the input it must equal
        (`{1: -1}`: W's axis 1 is the input's last); a mismatch there blames
        the input rather than the params.
      flag: the name of a boolean field that says whether it exists, e.g.
        `"use_bias"`.
      dtype: the dtype it is created in; a function of the layer's config is
        not needed: give the layer's `param_dtype` field.
      torch_axes: leading axes of size one that torch's tensor has and
        lamina's does not: a bare `nn.Parameter` kept with a batch axis, as a
        ViT's `class_token` `(1, 1, D)` (2) for lamina's `(D,)`.
    """

    shape: Callable[[Shape], Shape]
    init: Any
    torch: Optional[str] = None
    layout: str = ""
    fits: Mapping[int, int] = dataclasses.field(default_factory=dict)
    flag: Optional[str] = None
    dtype: Any = jnp.float32
    torch_axes: int = 0

    def initializer(self, input_shape: Shape) -> Any:
        init = self.init
        if callable(init) and getattr(init, "_input_shape_factory", False):
            return init(input_shape)
        return init


def depends_on_input(factory: Callable[[Shape], Any]) -> Callable[[Shape], Any]:
    """Marks `factory(input_shape) -> initializer` as a `Param.init` that needs the input shape."""
    factory._input_shape_factory = True  # type: ignore[attr-defined]
    return factory


Spec = Mapping[str, Union[Param, "Spec"]]  # type: ignore[misc]


def present(layer: Any, spec: Spec) -> dict[str, Any]:
    """The declaration without the params a flag turns off (`use_bias=False`)."""
    out: dict[str, Any] = {}
    for k, p in spec.items():
        if isinstance(p, Param):
            if p.flag is None or getattr(layer, p.flag):
                out[k] = p
        else:
            out[k] = present(layer, p)
    return out


def leaves(spec: Spec, path: tuple = ()) -> Iterator[tuple[tuple, Param]]:
    """`(path, Param)` for every declared array, in declaration order."""
    for k, p in spec.items():
        if isinstance(p, Param):
            yield path + (k,), p
        else:
            yield from leaves(p, path + (k,))


def _put(tree: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def draw(layer: Any, spec: Spec, key: Any, input_shape: Shape) -> Any:
    """The params (or state) `spec` declares for inputs of `input_shape`.

    One key per array, `jax.random.split(key, n)` in declaration order; `()`
    for a layer that declares nothing. `key=None` is for state, whose
    initializers are constants.
    """
    from lamina._src.layers.initializers import init_weight  # layers/ builds on core/

    found = list(leaves(present(layer, spec)))
    if not found:
        return ()
    keys: list[Any] = [None] * len(found) if key is None else list(jax.random.split(key, len(found)))
    tree: dict = {}
    for (path, p), k in zip(found, keys):
        init = p.initializer(input_shape)
        value = init_weight(init, k, p.shape(input_shape), p.dtype)
        _put(tree, path, value)
    return tree


def layout(spec: Spec) -> str:
    """`{'W': (out, in), 'b': (out,)}`: the declaration in words, for messages."""
    parts = [f"{k!r}: {p.layout if isinstance(p, Param) else layout(p)}" for k, p in spec.items()]
    return "{" + ", ".join(parts) + "}"


def _where(path: tuple) -> str:
    """`W` at the top, `params['qkv']['W']` below it."""
    return path[0] if len(path) == 1 else "params" + "".join(f"[{k!r}]" for k in path)


def _axis_words(axis: int, ndim: int, n: Any) -> str:
    if axis in (-1, ndim - 1):
        return f"last dimension {n}"
    if axis == 0:
        return f"{n} channels"
    return f"dimension {n} on axis {axis}"


def check(layer: Any, spec: Spec, tree: Any, x_shape: Shape, what: str = "params") -> None:
    """Raises unless `tree` (the params, or with `what="state"` the state) fits `spec` for `x_shape`.

    First the structure (a dict with the declared keys, naming a flag such
    as `use_bias` when that is the difference), then the input against the
    axes the params must fit (blaming the input when all params agree on
    another size), then each array's shape.
    """
    name = layer.name
    want = present(layer, spec)
    if not want:
        if jax.tree.leaves(tree):
            raise layer_error(
                name,
                f"this layer has no {what}, but got {_describe(tree)}; pass () at its place "
                f"(params from another model?)",
            )
        return
    check_structure(layer, spec, want, tree, (), what)
    arrays = {path: tuple(jnp.shape(_at(tree, path))) for path, _ in leaves(want)}
    _check_fits(name, want, arrays, x_shape)
    for path, p in leaves(want):
        expected, got = tuple(p.shape(x_shape)), arrays[path]
        if got != expected:
            label = _where(path) if what == "params" else f"state {_where(path)}"
            raise layer_error(
                name,
                f"expected {label} of shape {_display(p, expected, got)}"
                f"{layer.params_note(x_shape, '.'.join(path))}, got {got}"
                f"{transposed_hint(expected, got)}",
            )


def _display(p: Param, expected: Shape, got: Shape) -> str:
    """The expected shape, its axes that follow the input named by the layout:
    `(2, in)` when W's `out` is wrong, so the message points at the axis at fault."""
    names = [n.strip() for n in p.layout.strip("()").split(",") if n.strip()]
    wrong = {i for i in range(len(expected)) if len(got) != len(expected) or got[i] != expected[i]}
    if (len(names) != len(expected) or not p.fits or not wrong - set(p.fits)
            or not all(names[i].isidentifier() for i in p.fits)):
        return str(expected)
    shown = [names[i] if i in p.fits else str(n) for i, n in enumerate(expected)]
    return "(" + ", ".join(shown) + ("," if len(shown) == 1 else "") + ")"


def _describe(tree: Any) -> str:
    if isinstance(tree, Mapping):
        return f"a dict with keys {sorted(tree)}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of length {len(tree)}"
    return type(tree).__name__


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def check_structure(layer: Any, spec: Spec, want: Spec, tree: Any, path: tuple,
                     what: str) -> None:
    here = "params" + "".join(f"[{k!r}]" for k in path)
    if not isinstance(tree, Mapping):
        raise layer_error(
            layer.name,
            f"expected {what if not path else here} {layout(want)}, got {type(tree).__name__}"
            if what == "params" else
            f"expected state {sorted(want)} (from lm.init_state), got {type(tree).__name__}",
            TypeError,
        )
    got = set(tree)
    for k, p in spec.items():
        if isinstance(p, Param) and p.flag is not None and (k in want) != (k in got):
            value = getattr(layer, p.flag)
            thing = f"{p.flag.removeprefix('use_')} {k!r}"
            owner = "params" if not path else here
            raise layer_error(
                layer.name,
                f"{owner} hold a {thing} but the layer was built with {p.flag}=False"
                if not value else
                f"{owner} have no {thing} but the layer was built with {p.flag}=True",
            )
    if got != set(want):
        if what == "state":
            raise layer_error(
                layer.name, f"expected state {sorted(want)} (from lm.init_state), got "
                f"{sorted(got)}")
        if got > set(want):
            raise layer_error(
                layer.name,
                f"unexpected {here} keys {sorted(got - set(want))}; expected {layout(want)}")
        raise layer_error(
            layer.name, f"expected {here} {layout(want)}, got a dict with keys {sorted(got)}")
    for k, p in want.items():
        if not isinstance(p, Param):
            check_structure(layer, spec[k], p, tree[k], path + (k,), what)  # type: ignore[arg-type]


def _check_fits(name: str, want: Spec, arrays: dict[tuple, Shape], x_shape: Shape) -> None:
    """Blames the input when the params it must fit agree with each other but not with it."""
    fitted = [(path, p) for path, p in leaves(want) if p.fits]
    if not fitted:
        return
    for path, p in fitted:
        for axis, in_axis in p.fits.items():
            if -len(x_shape) <= in_axis < len(x_shape):
                continue
            got = arrays[path]
            n = got[axis] if len(got) > axis else "?"
            x_text = "a scalar x with shape ()" if not x_shape else f"x with shape {x_shape}"
            raise layer_error(
                name,
                f"expected input with {_axis_words(in_axis, in_axis + 1, n)} ({_where(path)} has "
                f"shape {got}), got {x_text}.",
            )
    implied: dict[int, set] = {}
    for path, p in fitted:
        got = arrays[path]
        for axis, in_axis in p.fits.items():
            if len(got) > axis:
                implied.setdefault(in_axis % len(x_shape), set()).add(got[axis])
    wrong = {a: sizes for a, sizes in implied.items() if sizes != {x_shape[a]}}
    if not wrong or any(len(sizes) != 1 for sizes in wrong.values()):
        return  # the params disagree among themselves: the shape check names one
    fixed = list(x_shape)
    for a, sizes in wrong.items():
        fixed[a] = next(iter(sizes))
    if any(tuple(p.shape(tuple(fixed))) != arrays[path] for path, p in leaves(want)):
        return  # another size of the input would not fit them either
    a = next(iter(wrong))
    path, p = next((path, p) for path, p in fitted if any(
        in_axis % len(x_shape) == a for in_axis in p.fits.values()))
    got = arrays[path]
    axis = next(ax for ax, in_axis in p.fits.items() if in_axis % len(x_shape) == a)
    hint = ""
    if len(got) == 2 and got[1 - axis] == x_shape[a]:
        hint = TRANSPOSED
    elif len(x_shape) >= 2 and a == len(x_shape) - 1 and x_shape[0] == got[axis]:
        hint = " (axes swapped? x's first axis has that size: transpose x?)"
    raise layer_error(
        name,
        f"expected input with {_axis_words(a, len(x_shape), got[axis])} ({_where(path)} has "
        f"shape {got}), got x with shape {x_shape}.{hint}\n{BATCH_HINT}",
    )


def torch_names(layer: Any, spec: Spec) -> dict[tuple, str]:
    """Path in the params (or state) -> the torch state-dict name, for declared arrays."""
    return {path: p.torch for path, p in leaves(present(layer, spec)) if p.torch is not None}


def torch_axes(layer: Any, spec: Spec) -> dict[tuple, int]:
    """Path -> the leading axes of one torch's tensor adds there (`Param.torch_axes`), where any."""
    return {path: p.torch_axes for path, p in leaves(present(layer, spec)) if p.torch_axes}


def with_torch_axes(value: Any, n: int) -> Any:
    """`value` with `n` leading axes of one, as torch holds it; a `ShapeDtypeStruct` too."""
    shape = (1,) * n + tuple(value.shape)
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(shape, value.dtype)
    return jnp.reshape(value, shape)
