"""Placing batches and params on a device mesh; XLA's SPMD partitioner does the rest.

lamina adds no parallel runtime of its own. `shard_batch` and `shard_params`
only choose a `jax.sharding.NamedSharding` for each array and `device_put`
it; the unchanged `lm.forward` and `lm.train_step` then compile for those
placements, and XLA inserts the collectives (the all-reduce that averages
data-parallel gradients, the all-reduce that joins tensor-parallel partial
sums).

Meshes name their axes `"data"` (examples split across devices) and
`"model"` (weights split across devices), e.g.
`jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer, Params, check_layer_type
from lamina._src.core.params import path_str
from lamina._src.layers.stack import stacked_axes

DATA = "data"
MODEL = "model"

Rules = Union[
    Sequence[tuple[str, PartitionSpec]],
    Callable[[str, jax.Array], Optional[PartitionSpec]],
]


def _check_mesh(where: str, mesh: Any, axis: str) -> None:
    if not isinstance(mesh, Mesh):
        raise layer_error(
            where,
            f"expected a jax.sharding.Mesh with axes ('data', 'model'), got "
            f"{type(mesh).__name__}",
            TypeError,
        )
    if axis not in mesh.axis_names:
        raise layer_error(
            where,
            f"the mesh needs an axis named {axis!r}, got axes {tuple(mesh.axis_names)}",
        )


def shard_batch(xs: Any, mesh: Mesh) -> Any:
    """Splits axis 0 of `xs` (an array or a pytree of arrays) over the mesh's `data` axis.

    Use it for inputs and targets alike. Each device then holds
    `batch / mesh.shape["data"]` examples, replicated over any other mesh
    axis; a jitted forward or train step on such inputs runs data-parallel.

    Args:
      xs: an array with a leading batch axis, or a pytree of them.
      mesh: a `jax.sharding.Mesh` with a `"data"` axis.

    Returns:
      The same tree, each array placed with `NamedSharding(mesh, P("data"))`.

    Raises:
      ValueError: the mesh has no `data` axis, or a batch is not divisible by
        its size (both numbers are named).

    Example:
      >>> import jax, numpy as np, lamina as lm
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
      >>> xs, ys = lm.shard_batch((np.ones((8, 3), np.float32), np.zeros(8, np.int32)), mesh)
      >>> xs.shape, xs.sharding.spec == P("data")
      ((8, 3), True)
    """
    _check_mesh("shard_batch", mesh, DATA)
    sharding = NamedSharding(mesh, PartitionSpec(DATA))
    # A mesh over several processes: each gives its own rows, for its devices.
    several = not sharding.is_fully_addressable
    n = mesh.shape[DATA]
    if several:  # the data axis's positions this process's devices hold
        axis = mesh.axis_names.index(DATA)
        n = len({at[axis] for at, device in np.ndenumerate(mesh.devices)
                 if device.process_index == jax.process_index()})

    def place(path, x):
        shape = jax.numpy.shape(x)
        if not shape or shape[0] % n:
            where = path_str(path) or "xs"
            got = f"shape {shape}" if not shape else f"a batch of {shape[0]}"
            raise layer_error(
                "shard_batch",
                f"{where}: {got} cannot be split evenly over the {n} devices of "
                f"the mesh's 'data' axis{' in this process' if several else ''}; use a batch "
                f"size divisible by {n}",
            )
        if several:
            return jax.make_array_from_process_local_data(sharding, np.asarray(x))
        return jax.device_put(x, sharding)

    return jax.tree_util.tree_map_with_path(place, xs)


def megatron_rules() -> Callable[[str, jax.Array], Optional[PartitionSpec]]:
    """Default tensor-parallel rules for lamina's layers (Megatron style).

    Dense weights alternate: the 1st `W` is split by rows (output features,
    `P("model", None)`), the 2nd by columns (input features, `P(None,
    "model")`), and so on. A row-split layer leaves its output split over
    features, which is exactly what the next, column-split layer needs, so
    each pair costs one all-reduce. A row-split layer's bias is split with
    its rows; a column-split layer's bias is replicated. Attention follows
    the same pattern: its fused query/key/value projection is split by rows
    (heads' features) and its output projection by columns, so a
    transformer block costs one all-reduce after attention and one after
    the feed-forward pair. A convolution's `W` `(out, in, *kernel)` and bias
    are split over output channels. Everything else (norms, state) is
    replicated. Returns a stateful rule: make a new one per params tree.
    """
    count = [0]
    bias_split = [False]  # whether the W just seen (the bias's own) was split by rows

    def rule(path: str, leaf: jax.Array) -> Optional[PartitionSpec]:
        parts = path.split(".")
        name, owner = parts[-1], parts[-2] if len(parts) > 1 else ""
        ndim = jax.numpy.ndim(leaf)
        if name == "W" and ndim > 2:
            # A convolution (out, in, *kernel): split its output channels,
            # each device computing whole feature maps.
            bias_split[0] = True
            return PartitionSpec(MODEL, *([None] * (ndim - 1)))
        if name == "W" and ndim == 2:
            if owner in ("qkv", "out"):  # attention's projections, by their own names
                rows = owner == "qkv"
            else:
                rows = count[0] % 2 == 0
                count[0] += 1
            bias_split[0] = rows
            return PartitionSpec(MODEL, None) if rows else PartitionSpec(None, MODEL)
        if name == "b" and bias_split[0]:
            return PartitionSpec(MODEL)  # follows the output-split W just seen
        return None

    return rule


def shard_params(params: Params, mesh: Mesh, rules: Optional[Rules] = None, *,
                 model: Optional[Layer] = None) -> Params:
    """Places params on `mesh`, splitting weights over its `model` axis.

    Args:
      params: a params tree.
      mesh: a `jax.sharding.Mesh`; arrays are replicated over its `data` axis.
      rules: how to split each leaf. `None` uses `megatron_rules()` (rows,
        then columns, alternating over dense layers), replicating any leaf
        whose split axis does not divide evenly. Otherwise a list of
        `(regex, PartitionSpec)` pairs matched with `re.fullmatch` against
        the leaf's path (`"0.W"`, `"2.b"`; the first match wins, no match
        means replicated), or a function `(path, leaf) -> PartitionSpec or
        None`. With explicit rules an uneven split is an error.
      model: the model the params belong to; needed for a model with an
        `lm.stack`, whose params carry a leading axis of copies: the rules
        then see each copy's array (a stacked Dense `W` is split as a `W`,
        not as a 3-D convolution weight) and the copies' axis is never split.

    Returns:
      The same tree with every leaf placed by `jax.device_put`.

    Raises:
      ValueError: the mesh has no `model` axis while a rule uses it, or an
        explicit rule splits an axis that the mesh axis size does not divide.

    Example:
      >>> import jax, numpy as np, lamina as lm
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
      >>> model = lm.mlp([8, 2])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> placed = lm.shard_params(params, mesh)
      >>> placed[0]["W"].sharding.spec == P("model", None), placed[1]["W"].sharding.spec == P(None, "model")
      (True, True)
    """
    if not isinstance(mesh, Mesh):
        _check_mesh("shard_params", mesh, MODEL)
    strict = rules is not None
    if rules is None:
        rules = megatron_rules()
    if not callable(rules):
        table = [(re.compile(pattern), spec) for pattern, spec in rules]
        rules = lambda path, leaf: next(  # noqa: E731
            (spec for pattern, spec in table if pattern.fullmatch(path)), None
        )

    def spec_of(path, leaf, copies):
        one = leaf
        if copies:
            one = jax.ShapeDtypeStruct(jax.numpy.shape(leaf)[copies:], jax.numpy.result_type(leaf))
        spec = rules(path, one) or PartitionSpec()
        if copies and spec:  # the copies' axis stays whole
            spec = PartitionSpec(*([None] * copies), *spec)
        return _fit(path, leaf, spec, mesh, strict)

    copies = jax.tree.map(lambda _: 0, params)
    if model is not None:
        check_layer_type("shard_params", model)
        copies = stacked_axes(model, params)
    # The rules see the leaves in the order the layers run (a stateful rule
    # alternates rows and columns), not jax's flattening order, which sorts a
    # named model's dict keys: the model's order, or the params' own as built.
    rank = {path_str(path): k for k, (path, _) in enumerate(_in_order(
        copies if model is not None else params, ()))}
    flat, tree = jax.tree_util.tree_flatten_with_path(params)
    counts = jax.tree.leaves(copies)
    order = sorted(range(len(flat)), key=lambda j: rank.get(path_str(flat[j][0]), len(rank) + j))
    specs: dict[int, PartitionSpec] = {}
    for j in order:
        specs[j] = spec_of(path_str(flat[j][0]), flat[j][1], counts[j])
    return jax.tree_util.tree_unflatten(
        tree, [_put(leaf, NamedSharding(mesh, specs[j])) for j, (_, leaf) in enumerate(flat)])


def _put(leaf: Any, sharding: NamedSharding) -> jax.Array:
    """`leaf` placed by `sharding`; on a mesh over several processes, each process gives
    the whole array (the same everywhere) and keeps its devices' parts."""
    if sharding.is_fully_addressable:
        return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _in_order(tree: Any, path: tuple) -> Iterator[tuple[tuple, Any]]:
    """`(path, leaf)` in the tree's own order: a dict's as built, not sorted."""
    if isinstance(tree, Mapping):
        for k in tree:
            yield from _in_order(tree[k], path + (k,))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            yield from _in_order(v, path + (i,))
    elif tree is not None:
        yield path, tree



def _fit(path: str, leaf: Any, spec: PartitionSpec, mesh: Mesh, strict: bool) -> PartitionSpec:
    shape = jax.numpy.shape(leaf)
    for dim, axis in zip(shape, spec):
        for name in (axis,) if isinstance(axis, str) else (axis or ()):
            if name not in mesh.axis_names:
                if not strict:
                    return PartitionSpec()
                raise layer_error(
                    "shard_params",
                    f"rule for {path!r} uses mesh axis {name!r}, but the mesh has "
                    f"axes {tuple(mesh.axis_names)}",
                )
            if dim % mesh.shape[name]:
                if not strict:
                    return PartitionSpec()
                raise layer_error(
                    "shard_params",
                    f"{path!r} has shape {shape}: dimension {dim} cannot be split "
                    f"evenly over the {mesh.shape[name]} devices of mesh axis {name!r}",
                )
    return spec
