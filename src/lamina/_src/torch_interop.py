"""PyTorch exchange: lamina params to and from `nn.Sequential` state dicts.

lamina's `Dense` stores `W` as `(out, in)` and `b` as `(out,)`, exactly like
`torch.nn.Linear`'s `weight` and `bias`, so weights cross unchanged: no
transposes. `LayerNorm`'s `scale`/`offset` are torch's `weight`/`bias`.

Layers are matched in order: the n-th weighted lamina layer (in params tree
order) takes the n-th torch module with weights (in state-dict order). Only
order matters because torch's activations are modules with their own index
(`Linear, ReLU, Linear` holds keys `0.*` and `2.*`) while lamina's can be
fused into `Dense`. torch is never imported here: tensors are read through
their own `.detach().cpu().numpy()`, and a safetensors file written by
PyTorch needs no torch at all.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from lamina._src.checkpoint import read_safetensors
from lamina._src.errors import transposed_hint
from lamina._src.layer import Params, layer_error
from lamina._src.params import params_like, path_str

# lamina kind -> (its params key -> torch's name)
_TORCH_NAMES = {
    "Dense": {"W": "weight", "b": "bias"},
    "LayerNorm": {"scale": "weight", "offset": "bias"},
}


def from_torch(state_dict: Union[Mapping[str, Any], str, "os.PathLike[str]"], like: Any) -> Params:
    """lamina params from a PyTorch state dict or a safetensors file, no transposes.

    Args:
      state_dict: `torch_model.state_dict()` (values torch tensors or arrays),
        or the path of a safetensors file saved from PyTorch (read without
        torch, and never unpickled). A file keeps no module order, so its
        modules are taken in numeric key order (`0.*`, `2.*`, `10.*`), as
        `nn.Sequential` numbers them; for modules with named children pass
        the state dict itself.
      like: the params to fill: a params tree (arrays or
        `jax.ShapeDtypeStruct` leaves) or a `(model, input_shape)` pair.

    Returns:
      A params tree shaped like `like`, leaves as `jax.Array` in `like`'s
      dtypes (bit-exact when the dtypes agree).

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
    where = "from_torch"
    if isinstance(state_dict, (str, os.PathLike)):
        where = f"from_torch({os.fspath(state_dict)!r})"
        tensors = read_safetensors(state_dict, where)
        # A file keeps no module order, so Sequential's numbering gives it.
        state = {k: tensors[k] for k in sorted(tensors, key=_natural_order)}
    elif isinstance(state_dict, Mapping):
        state = {k: _to_numpy(v) for k, v in state_dict.items()}
    else:
        raise layer_error(
            where,
            f"expected a torch state dict or the path of a safetensors file, got "
            f"{type(state_dict).__name__}",
            TypeError,
        )
    like = params_like(like)
    values = {}
    for path, kind, node, names in _pairs(_units(like, where), list(state), where):
        for key, torch_name in _TORCH_NAMES[kind].items():
            if key not in node:
                continue
            torch_key, lamina_path = names[torch_name], path_str(path + (key,))
            want, got = tuple(np.shape(node[key])), tuple(state[torch_key].shape)
            if got != want:
                raise layer_error(
                    where,
                    f"torch {torch_key!r} has shape {got}, but lamina {lamina_path!r} "
                    f"({kind}) expects {want}{transposed_hint(want, got)}",
                )
            values[lamina_path] = jnp.asarray(state[torch_key], dtype=node[key].dtype)
    return jax.tree_util.tree_map_with_path(lambda p, _: values[path_str(p)], like)


def to_torch(
    params: Params, like: Optional[Union[Mapping[str, Any], Sequence[str]]] = None
) -> dict[str, np.ndarray]:
    """A PyTorch state dict from lamina params, no transposes.

    Args:
      params: lamina params holding `Dense` (and `LayerNorm`) params.
      like: optional, the torch keys to fill: `torch_model.state_dict()` (its
        shapes are checked too) or its list of keys. Without it, keys follow
        lamina's tree paths, `W -> weight` and `b -> bias` (`"0.weight"`),
        which fits an `nn.Sequential` whose indices match lamina's, e.g.
        `lm.serial(Dense, Relu(), Dense)` and `Linear, ReLU, Linear`.

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
    units = _units(params, where)
    if like is None:
        keys = []
        for path, kind, node in units:
            prefix = path_str(path)
            for key, torch_name in _TORCH_NAMES[kind].items():
                if key in node:
                    keys.append(f"{prefix}.{torch_name}" if prefix else torch_name)
        like = keys
    if isinstance(like, (str, bytes)) or not isinstance(like, (Mapping, Sequence)):
        raise layer_error(
            where, f"like must be a torch state dict or a list of its keys, got {like!r}", TypeError
        )
    shapes = {k: tuple(v.shape) for k, v in like.items()} if isinstance(like, Mapping) else {}
    values = {}
    for path, kind, node, names in _pairs(units, list(like), where):
        for key, torch_name in _TORCH_NAMES[kind].items():
            if key not in node:
                continue
            torch_key, value = names[torch_name], np.array(node[key])
            if torch_key in shapes and shapes[torch_key] != value.shape:
                raise layer_error(
                    where,
                    f"lamina {path_str(path + (key,))!r} has shape {value.shape}, but torch "
                    f"{torch_key!r} expects {shapes[torch_key]}"
                    f"{transposed_hint(shapes[torch_key], value.shape)}",
                )
            values[torch_key] = value
    return {k: values[k] for k in like}


def _units(params: Any, where: str) -> list[tuple[tuple, str, Mapping]]:
    """The weighted layers of a params tree in order: `(path, kind, params)`."""
    units = []

    def walk(node, path):
        if isinstance(node, Mapping):
            keys = set(node)
            if "W" in keys and keys <= {"W", "b"}:
                units.append((path, "Dense", node))
            elif keys == {"scale", "offset"}:
                units.append((path, "LayerNorm", node))
            else:
                raise layer_error(
                    where,
                    f"the params at {path_str(path) or '(root)'!r} (keys {sorted(keys)}) have "
                    f"no torch counterpart here; supported are Dense {{'W', 'b'}} "
                    f"(nn.Linear) and LayerNorm {{'scale', 'offset'}} (nn.LayerNorm)",
                )
        elif isinstance(node, (tuple, list)):
            for i, child in enumerate(node):
                walk(child, path + (i,))
        elif node is not None:
            raise layer_error(
                where,
                f"expected params of dicts, tuples and lists, got {type(node).__name__} at "
                f"{path_str(path) or '(root)'!r}",
                TypeError,
            )

    walk(params, ())
    return units


def _modules(keys: Sequence[str], where: str) -> list[tuple[str, dict[str, str]]]:
    """Torch keys grouped by module, in order: `(prefix, {"weight": key, ...})`."""
    modules: dict[str, dict[str, str]] = {}
    for key in keys:
        prefix, _, name = key.rpartition(".")
        if name not in ("weight", "bias"):
            raise layer_error(
                where,
                f"torch key {key!r} has no lamina counterpart; only the weight and bias "
                f"of nn.Linear and nn.LayerNorm are supported",
            )
        modules.setdefault(prefix, {})[name] = key
    return list(modules.items())


def _pairs(units, keys, where):
    """Matches lamina's weighted layers with torch's modules, one to one in order."""
    modules = _modules(keys, where)
    if len(modules) != len(units):
        raise layer_error(
            where,
            f"torch has {len(modules)} module(s) with weights "
            f"{[prefix for prefix, _ in modules]}, but the lamina params have "
            f"{len(units)} weighted layer(s) {[path_str(path) for path, _, _ in units]}",
        )
    pairs = []
    for (path, kind, node), (prefix, names) in zip(units, modules):
        want = {_TORCH_NAMES[kind][key] for key in node}
        if set(names) != want:
            raise layer_error(
                where,
                f"torch module {prefix!r} holds {sorted(names)}, but lamina "
                f"{path_str(path) or '(root)'!r} ({kind}) holds {sorted(node)}, "
                f"i.e. torch {sorted(want)}",
            )
        pairs.append((path, kind, node, names))
    return pairs


def _natural_order(key: str) -> tuple:
    # "2.weight" before "10.weight"; numbers sort before names.
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, read without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            # NumPy has no bfloat16, so torch cannot hand it over directly;
            # bfloat16 -> float32 -> bfloat16 is exact.
            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)
