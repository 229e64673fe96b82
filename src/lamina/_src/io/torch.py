"""PyTorch exchange: lamina params (and state) to and from torch state dicts.

lamina keeps PyTorch's layouts (`Dense` stores `W` as `(out, in)` like
`nn.Linear`'s `weight`), so weights cross unchanged: no transposes. Each of
lamina's layers declares the torch name of every param and state array
(`Param.torch`, e.g. BatchNorm's `running_mean`); a block that is one torch
module with named submodules says which of its layers each is
(`torch_children`).

Layers are matched in order: the n-th lamina layer with weights takes the
n-th torch module with weights, modules ordered by the indices in their keys
(`2.weight` before `10.weight`, whatever order the dict or file gives). Only order matters
because torch's activations are modules with their own index (`Linear,
ReLU, Linear` holds keys `0.*` and `2.*`) while lamina's can be fused into
`Dense`. With the model (`like=(model, input_shape)`), each layer is matched
by the names it expects, so a block whose torch module orders its keys
differently from the order its layers run still maps. torch is never
imported here: tensors are read through their own `.detach().cpu().numpy()`,
and a safetensors file written by PyTorch needs no torch at all.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lamina._src.core import spec
from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import layer_error, transposed_hint
from lamina._src.core.layer import Layer, Params, entry, placed_children
from lamina._src.core.params import param_shapes, path_str
from lamina._src.io.checkpoint import read_safetensors
from lamina._src.io.torch_keys import (
    KeyMap,
    Renamed,
    module_order,
    renamed_keys,
    to_lamina_layout,
    to_torch_layout,
)
from lamina._src.layers.stack import restack_tree, unrolled, unstack_tree


class _Unit(NamedTuple):
    """One lamina layer with weights and the torch names of its tensors."""

    path: tuple            # where its params (and state) sit in their trees
    name: str              # what to call it in messages
    tensors: dict          # torch local name -> array (or ShapeDtypeStruct), params and state
    where: dict            # torch local name -> the lamina path to name in messages
    build: Callable        # {torch local name: array} -> (params, state) of this layer


def from_torch(
    state_dict: Union[Mapping[str, Any], str, "os.PathLike[str]"],
    like: Any,
    *,
    key_map: Optional[KeyMap] = None,
) -> Any:
    """lamina params (and state) from a PyTorch state dict or a safetensors file, no transposes.

    Args:
      state_dict: `torch_model.state_dict()` (values torch tensors or arrays),
        or the path of a safetensors file saved from PyTorch (read without
        torch, and never unpickled). Modules are taken in the order of the
        indices in their keys (`0.*`, `2.*`, `10.*`), as `nn.Sequential`
        numbers them, whatever order the keys come in; named children
        (`conv1.*`, `bn1.*`) in the order they first appear. The arrays
        are copied, so torch's in-place updates never reach them.
      like: the params to fill: a params tree (arrays or
        `jax.ShapeDtypeStruct` leaves) or a `(model, input_shape)` pair.
      key_map: optional, for state dicts whose names or module order are not
        lamina's: a function from each torch key to the key to match
        (returning None leaves the tensor out, e.g. a buffer lamina has no
        place for), or a list of `(pattern, replacement)` regex renames
        applied in turn with `re.sub` (a replacement of None drops the
        keys the pattern finds). Matching then runs on the new keys,
        in their module order: `[("ln_1", "norm1")]` names torchvision's
        ViT blocks as torch's `TransformerEncoderLayer`, and a numbered
        name (`("^class_token$", "1.class_token")`) sorts before every
        named one. Two keys mapped to one are refused. A tensor stored in
        another layout says so: a rule `(pattern, replacement, layout)`, or
        the function returning `(new key, layout)`, with layout
        `"transpose"` (Hugging Face's `Conv1D` keeps `(in, out)` where
        `nn.Linear` keeps `(out, in)`) or `"unsqueeze"` (a tensor without
        the leading axis of one of lamina's torch name, e.g. GPT-2's
        `wpe.weight` as a `PositionEmbedding`'s `pos_embedding`). Several
        keys mapped to one with layouts `"part 0/N"` ... `"part N-1/N"` are
        joined along the first axis in part order (diffusers' `to_q`,
        `to_k`, `to_v` as attention's packed `in_proj_weight`), and
        `to_torch` splits them again.

    Returns:
      A params tree shaped like `like`, leaves as `jax.Array` in `like`'s
      dtypes (bit-exact when the dtypes agree). For a `(model, input_shape)`
      pair whose model has state (e.g. `lm.BatchNorm`), `(params, state)`
      with torch's buffers (`running_mean`, `running_var`,
      `num_batches_tracked`) in the state.

    Raises:
      ValueError: the torch modules and lamina's weighted layers differ in
        number, in kind (weight/bias present) or in shape; the message names
        the torch key and the lamina path.
      TypeError: `state_dict` is neither a mapping nor a path.

    Example:
      >>> import numpy as np, lamina as lm
      >>> state = {"0.weight": np.ones((4, 3), np.float32), "0.bias": np.zeros(4, np.float32),
      ...          "2.weight": np.ones((2, 4), np.float32), "2.bias": np.zeros(2, np.float32)}
      >>> params = lm.from_torch(state, like=(lm.mlp([4, 2]), (3,)))
      >>> params[1]["W"].shape
      (2, 4)
    """
    where, torch = _read_torch(state_dict)
    if key_map is not None:
        renamed = renamed_keys(torch, key_map, where)
        torch = {new: to_lamina_layout([torch[k] for k in renamed[new].keys], renamed[new], where)
                 for new in module_order(renamed)}
        where += " (keys after key_map)"
    model = None
    if isinstance(like, tuple) and len(like) == 2 and isinstance(like[0], Layer):
        model, input_shape = like
        state_like = None
        if model.stateful:
            state_like = unstack_tree(model, jax.eval_shape(lambda: model.init_state(input_shape)))
        # A stack's copies are torch modules of their own: match them one by one.
        like = unstack_tree(model, param_shapes(model, input_shape)[1])
        units = _model_units(unrolled(model), like, state_like, where)
    else:
        state_like = None
        units = _tree_units(like, None, where)
    params, state = like, state_like
    for unit, names in _match(units, list(torch), where):
        tensors = {}
        for local, want in unit.tensors.items():
            torch_key = names[local]
            got = tuple(torch[torch_key].shape)
            if got != tuple(want.shape):
                raise layer_error(
                    where,
                    f"torch {torch_key!r} has shape {got}, but lamina {unit.where[local]!r} "
                    f"({unit.name}) expects {tuple(want.shape)}"
                    f"{transposed_hint(want.shape, got)}",
                )
            tensors[local] = jnp.asarray(torch[torch_key], want.dtype)
        unit_params, unit_state = unit.build(tensors)
        params = _put(params, unit.path, unit_params)
        if unit_state is not None:
            state = _put(state, unit.path, unit_state)
    if model is None:
        return params
    params = restack_tree(model, params)
    return params if state_like is None else (params, restack_tree(model, state))


def to_torch(
    params: Params,
    like: Optional[Union[Mapping[str, Any], Sequence[str]]] = None,
    *,
    state: Any = None,
    model: Optional[Layer] = None,
    key_map: Optional[KeyMap] = None,
) -> dict[str, np.ndarray]:
    """A PyTorch state dict from lamina params (and state), no transposes.

    Args:
      params: lamina params.
      like: optional, the torch keys to fill: `torch_model.state_dict()` (its
        shapes are checked too) or its list of keys. Without it, keys follow
        lamina's tree paths (`"0.weight"`), which fits an `nn.Sequential`
        whose indices match lamina's, e.g. `lm.serial(Dense, Relu(), Dense)`
        and `Linear, ReLU, Linear`.
      state: the model's state, e.g. from training a model with
        `lm.BatchNorm`: fills torch's buffers (`running_mean`,
        `running_var`, `num_batches_tracked`).
      model: optional, the model the params belong to; each layer then says
        its own torch names. Without it, layers are recognised by their
        params: `{"W", "b"}` as `nn.Linear` (or a convolution), `{"scale",
        "offset"}` as `nn.LayerNorm`, or `nn.BatchNorm` where `state` holds
        running statistics.
      key_map: optional, as `lm.from_torch`'s, applied to `like`'s keys;
        the result keeps `like`'s own keys and layouts (keys the map drops
        are left out).

    Returns:
      `{torch key: np.ndarray}` in `like`'s key order (or tree order); pass
      it through `torch.as_tensor` for `load_state_dict`. bfloat16 leaves
      stay ml_dtypes bfloat16, which torch cannot take: cast them first.

    Raises:
      ValueError: the counts, kinds or shapes of torch's modules and lamina's
        layers differ; the message names the torch key and the lamina path.

    Example:
      >>> import jax, lamina as lm
      >>> _, params = lm.mlp([4, 2]).init(jax.random.key(0), (3,))
      >>> state = lm.to_torch(params, like=["0.weight", "0.bias", "2.weight", "2.bias"])
      >>> {k: v.shape for k, v in state.items()}
      {'0.weight': (4, 3), '0.bias': (4,), '2.weight': (2, 4), '2.bias': (2,)}
    """
    where = "to_torch"
    if model is not None:
        if model.stateful and state is None:
            raise layer_error(
                where,
                f"{model.name} has state (e.g. BatchNorm's running statistics), which torch "
                f"keeps as buffers: pass state= (from lm.init_state or training) too",
                TypeError,
            )
        state = unstack_tree(model, state) if model.stateful else None
        units = _model_units(unrolled(model), unstack_tree(model, params), state, where)
    else:
        units = _tree_units(params, state, where)
    if like is None:
        like = [
            f"{path_str(u.path)}.{local}" if u.path else local
            for u in units for local in u.tensors
        ]
    if isinstance(like, (str, bytes)) or not isinstance(like, (Mapping, Sequence)):
        raise layer_error(
            where, f"like must be a torch state dict or a list of its keys, got {like!r}", TypeError
        )
    shapes = {k: tuple(v.shape) for k, v in like.items()} if isinstance(like, Mapping) else {}
    torch_shapes = shapes
    keys = renamed_keys(like, key_map, where) if key_map is not None else {
        k: Renamed((k,), None) for k in like}
    if key_map is not None:
        shapes = {new: np.shape(to_lamina_layout([np.empty(shapes[k], np.bool_)
                                                  for k in renamed.keys], renamed, where))
                  for new, renamed in keys.items() if all(k in shapes for k in renamed.keys)}
        where += " (keys after key_map)"
    values = {}
    for unit, names in _match(units, module_order(keys), where):
        for local, tensor in unit.tensors.items():
            torch_key, value = names[local], np.array(tensor)
            if torch_key in shapes and shapes[torch_key] != value.shape:
                raise layer_error(
                    where,
                    f"lamina {unit.where[local]!r} has shape {value.shape}, but "
                    f"torch {torch_key!r} expects {shapes[torch_key]}"
                    f"{transposed_hint(shapes[torch_key], value.shape)}",
                )
            values[torch_key] = value
    out: dict[str, np.ndarray] = {}
    for new, renamed in keys.items():
        out.update(to_torch_layout(values[new], renamed, torch_shapes, where))
    return {k: out[k] for k in like if k in out}


def _read_torch(state_dict: Any) -> tuple[str, dict[str, np.ndarray]]:
    if isinstance(state_dict, (str, os.PathLike)):
        where = f"from_torch({os.fspath(state_dict)!r})"
        tensors = read_safetensors(state_dict, where)
        return where, {k: tensors[k] for k in module_order(tensors)}
    if isinstance(state_dict, Mapping):
        # Copied: torch updates its tensors in place (optimizer.step(), a
        # BatchNorm's buffers), which must never reach lamina's params.
        return "from_torch", {k: _to_numpy(v) for k, v in
                              ((k, state_dict[k]) for k in module_order(state_dict))}
    raise layer_error(
        "from_torch",
        f"expected a torch state dict or the path of a safetensors file, got "
        f"{type(state_dict).__name__}",
        TypeError,
    )


def _unit(path: tuple, name: str, names: Mapping[str, str], params: Mapping,
          state_names: Mapping[str, str] = {}, state: Any = None) -> _Unit:
    """A unit whose torch tensors are its params and state renamed."""
    tensors, where, owner = {}, {}, {}
    for which, tree, mapping in (("params", params, names), ("state", state, state_names)):
        for key, local in mapping.items():
            if isinstance(tree, Mapping) and key in tree:
                tensors[local], owner[local] = tree[key], (which, key)
                where[local] = path_str(path + (key,))

    def build(values):
        built = {"params": {}, "state": {}}
        for local, (which, key) in owner.items():
            built[which][key] = values[local]
        return built["params"], built["state"] or None

    return _Unit(path, name, tensors, where, build)


def _torch_paths(layer: Any, params: Any) -> dict[str, tuple]:
    """Torch local name -> the path of that array in the layer's params."""
    out = {}
    for module, child, place in layer.torch_children(params):
        for local, path in _torch_paths(child, _at(params, place)).items():
            out[f"{module}.{local}"] = place + path
    for path, local in spec.torch_names(layer, layer.params_spec()).items():
        out[local] = path
    return out


def _at(tree: Any, path: tuple) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def _layer_unit(layer: Builtin, path: tuple, params: Any, state: Any) -> _Unit:
    """A lamina layer as a unit: its declaration says its torch names."""
    tensors = dict(layer.torch_params(params))
    where = {local: path_str(path + p) or "(root)" for local, p in _torch_paths(layer, params).items()}
    state_names = spec.torch_names(layer, layer.state_spec())
    for p, local in state_names.items():
        tensors[local] = _at(state, p)
        where[local] = path_str(path + p)

    def build(values):
        own = {local: values[local] for local in state_names.values()}
        made = layer.params_from_torch({k: v for k, v in values.items() if k not in own},
                                       params)
        if not state_names:
            return made, None
        return made, {p[0]: own[local] for p, local in state_names.items()}

    return _Unit(path, type(layer).__name__, tensors, where, build)


def _model_units(model: Layer, params: Any, state: Any, where: str) -> list[_Unit]:
    """The layers of `model` with weights, in the order they run, as the model says."""
    units: list[_Unit] = []

    def walk(layer, params, state, path):
        if isinstance(layer, Builtin) and _has_torch_names(layer):
            units.append(_layer_unit(layer, path, params, state))
            return
        placed = placed_children(layer)
        if placed:
            for place, child in placed:
                # A stateless child's state is () (the whole state, when none has any).
                walk(child, entry(params, place),
                     entry(state, place) if isinstance(state, (tuple, Mapping)) and state
                     else state,
                     path if place is None else path + (place,))
            return
        if jax.tree.leaves(params):
            raise layer_error(
                where,
                f"{layer.name} at {path_str(path) or '(root)'!r} has params but no torch "
                f"counterpart lamina knows",
            )

    walk(model, params, state, ())
    return units


def _has_torch_names(layer: Builtin) -> bool:
    composite = type(layer).torch_children is not Builtin.torch_children
    return bool(composite or spec.torch_names(layer, layer.params_spec())
                or spec.torch_names(layer, layer.state_spec()))


def _tree_units(params: Any, state: Any, where: str) -> list[_Unit]:
    """The weighted layers of a params tree in order, recognised by their params' keys."""
    units: list[_Unit] = []

    def walk(node, state, path):
        if isinstance(node, Mapping):
            keys = set(node)
            if "W" in keys and keys <= {"W", "b"}:
                units.append(_unit(path, "Dense", {"W": "weight", "b": "bias"}, node))
            elif keys == {"scale", "offset"}:
                bn = isinstance(state, Mapping) and "running_mean" in state
                units.append(_unit(path, "BatchNorm" if bn else "LayerNorm",
                                   {"scale": "weight", "offset": "bias"}, node,
                                   _BATCH_NORM_STATE if bn else {}, state))
            else:
                raise layer_error(
                    where,
                    f"the params at {path_str(path) or '(root)'!r} (keys {sorted(keys)}) have "
                    f"no torch counterpart lamina can tell from the params alone; supported "
                    f"are Dense {{'W', 'b'}} (nn.Linear) and LayerNorm/BatchNorm "
                    f"{{'scale', 'offset'}} (a dict of layers, as a named serial's, cannot be "
                    f"told from one layer's params). Pass model= to name every layer's "
                    f"counterpart",
                )
        elif isinstance(node, (tuple, list)):
            for i, child in enumerate(node):
                child_state = state[i] if isinstance(state, (tuple, list)) and state else None
                walk(child, child_state, path + (i,))
        elif node is not None:
            raise layer_error(
                where,
                f"expected params of dicts, tuples and lists, got {type(node).__name__} at "
                f"{path_str(path) or '(root)'!r}",
                TypeError,
            )

    walk(params, state, ())
    return units


_BATCH_NORM_STATE = {"running_mean": "running_mean", "running_var": "running_var",
                     "num_batches_tracked": "num_batches_tracked"}


def _match(units: list[_Unit], keys: Sequence[str], where: str) -> list[tuple[_Unit, dict]]:
    """Pairs each unit with its torch keys: `(unit, {local name: torch key})`.

    Named layers (a path with a name in it) are matched by name, key for
    key; a model of positions only, in order: the next unused torch key
    starts the next unit's module, the unit's own names then fix the
    module's prefix, and every name must be there.
    """
    if any(isinstance(k, str) for unit in units for k in unit.path):
        return _match_names(units, keys, where)
    if not any("." in local for unit in units for local in unit.tensors):
        modules = list(dict.fromkeys(k.rpartition(".")[0] for k in keys))
        if len(modules) != len(units):
            raise layer_error(
                where,
                f"torch has {len(modules)} module(s) with weights {modules}, but the lamina "
                f"params have {len(units)} weighted layer(s) {[path_str(u.path) for u in units]}",
            )
    available = set(keys)
    pending = list(keys)
    pairs = []
    for unit in units:
        pending = [k for k in pending if k in available]
        if not pending:
            raise layer_error(
                where,
                f"lamina {path_str(unit.path) or '(root)'!r} ({unit.name}) has no torch "
                f"module left to take its weights: torch has fewer modules with weights "
                f"than lamina has weighted layers",
            )
        first = pending[0]
        prefix = _prefix(first, unit, available)
        if prefix is None:
            module = first.rpartition(".")[0]
            holds = sorted(k[len(module) + 1:] if module else k for k in keys
                           if k.rpartition(".")[0] == module)
            raise layer_error(
                where,
                f"torch module {module!r} holds {holds}, but lamina "
                f"{path_str(unit.path) or '(root)'!r} ({unit.name}) holds "
                f"{sorted(w.rsplit('.', 1)[-1] for w in unit.where.values())}, i.e. torch "
                f"{sorted(unit.tensors)}",
            )
        names = {local: prefix + local for local in unit.tensors}
        available -= set(names.values())
        pairs.append((unit, names))
    left = [k for k in keys if k in available]
    if left:
        raise layer_error(
            where,
            f"torch has more modules with weights than lamina has weighted layers "
            f"({len(units)}: {[path_str(u.path) for u in units]}); the first left over is "
            f"{left[0]!r}",
        )
    return pairs


def _match_names(units: list[_Unit], keys: Sequence[str], where: str) -> list[tuple[_Unit, dict]]:
    """Each unit's tensors at `path.local`, as torch's `load_state_dict` matches, strictly."""
    pairs = []
    for unit in units:
        prefix = path_str(unit.path)
        pairs.append((unit, {local: f"{prefix}.{local}" if prefix else local
                             for local in unit.tensors}))
    wanted = [key for _, names in pairs for key in names.values()]
    have, want = set(keys), set(wanted)
    missing = [k for k in wanted if k not in have]
    unexpected = [k for k in keys if k not in want]
    if missing or unexpected:
        differ = [f"{what}: {_few(found)}" for what, found in (
            ("lamina's keys missing from torch", missing),
            ("torch's keys lamina has no place for", unexpected)) if found]
        raise layer_error(
            where,
            f"the model's named layers are matched to torch's keys by name, and they differ "
            f"({'; '.join(differ)}). Name the layers as torch names its modules, or rename "
            f"torch's keys with key_map=",
        )
    return pairs


def _few(keys: list[str]) -> str:
    if len(keys) <= 4:
        return repr(keys)
    return f"{len(keys)} keys ({', '.join(map(repr, keys[:4]))}, ...)"


def _prefix(key: str, unit: _Unit, available: set) -> Optional[str]:
    """The module prefix (`"2."`, `""`) that makes `key` one of `unit`'s names, if any.

    Every name of the unit must be there, and the module must hold nothing
    else (a torch bias where the lamina layer has none is a mismatch).
    """
    nested = any("." in local for local in unit.tensors)
    for local in unit.tensors:
        if key != local and not key.endswith("." + local):
            continue
        prefix = key[: len(key) - len(local)]
        wanted = {prefix + other for other in unit.tensors}
        module = {k for k in available
                  if k.startswith(prefix) and (nested or "." not in k[len(prefix):])}
        if wanted <= available and module <= wanted:
            return prefix
    return None


def _put(tree: Any, path: tuple, value: Any) -> Any:
    """`tree` with the subtree at `path` (tuple indices, dict keys) replaced by `value`."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, Mapping):
        return {**tree, head: _put(tree[head], rest, value)}
    items = list(tree)
    items[head] = _put(items[head], rest, value)
    return type(tree)(items)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, read without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            # NumPy has no bfloat16, so torch cannot hand it over directly;
            # bfloat16 -> float32 -> bfloat16 is exact.
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy().copy()
    return np.array(value, copy=True)
