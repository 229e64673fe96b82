"""Checkpoints: params to and from safetensors files, written atomically.

A checkpoint is a safetensors file: one tensor per params leaf, named by its
path in the tree (`0.W`, `2.b`), plus text metadata naming the lamina version
and the tree's structure, so the file reads back without the model and opens
in any safetensors reader (PyTorch, NumPy, Rust). Nothing is pickled: reading
a file never runs code from it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.core.layer import Layer, Params, check_layer_type
from lamina._src.core.params import params_like, path_str
from lamina._src.io import config
from lamina._src.io.files import remove_stale_temporaries, write_atomically
from lamina._src.version import __version__

PathLike = Union[str, "os.PathLike[str]"]

FORMAT = "1"
_RESERVED_PREFIX = "lamina."
_VERSION_KEY, _FORMAT_KEY, _TREE_KEY = "lamina.version", "lamina.format", "lamina.tree"
_MODEL_KEY = "lamina.model"

# safetensors.numpy cannot read BF16 back (NumPy has no bfloat16), so files
# are decoded here, with ml_dtypes (a jax dependency) supplying bfloat16.
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}

_NEVER_UNPICKLE = (
    "lamina never unpickles files, because unpickling runs whatever code the "
    "file holds. Where you trust the file, convert it once, e.g. "
    "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')"
)


def save(
    path: PathLike,
    params: Params,
    *,
    model: Optional[Layer] = None,
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Writes `params` to a safetensors file, atomically.

    Each leaf becomes one tensor named by its tree path (`"0.W"`, `"2.b"`);
    the metadata records the lamina version and the tree's structure (JSON),
    so `load(path)` rebuilds the tree without the model. With `model`, its
    configuration is recorded too (JSON under `"lamina.model"`, never code),
    and `lm.load_model(path)` rebuilds model and params. The bytes go to a
    temporary file in the same folder, which is flushed to disk
    (`os.fsync`) and then renamed over `path`: a crash or a full disk during
    the save leaves any previous file at `path` intact, and no temporary file.

    Args:
      path: the file to write, e.g. `"model.safetensors"`.
      params: a params tree of dicts (str keys), tuples and lists holding
        arrays (any dtype safetensors stores, bfloat16 included).
      model: optional, the model the params belong to, recorded so that
        `lm.load_model` can rebuild it. Every part must be one of lamina's
        layers with named activations and lamina initializers.
      metadata: optional extra text metadata, `str -> str`; keys starting
        with `"lamina."` are reserved.

    Raises:
      TypeError: a leaf is not an array, a node is not a dict, tuple or list,
        or metadata is not `str -> str`; or a part of `model` cannot be
        recorded (a user-defined `lm.Layer`, an activation or initializer
        given as a function): the message names its path, and nothing is
        written.
      ValueError: a metadata key is reserved, or two leaves get the same name.
      OSError: writing failed (the previous file is left as it was).

    Example:
      >>> import os, tempfile, jax, lamina as lm
      >>> _, params = lm.mlp([4, 2]).init(jax.random.key(0), (3,))
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> lm.save(path, params, metadata={"note": "demo"})
      >>> lm.load(path)[1]["W"].shape
      (2, 4)
    """
    where = f"save({os.fspath(path)!r})"
    tensors: dict[str, np.ndarray] = {}
    tree = _describe(params, (), tensors, where)
    header = {_VERSION_KEY: __version__, _FORMAT_KEY: FORMAT, _TREE_KEY: json.dumps(tree)}
    if model is not None:
        check_layer_type(where, model)
        header[_MODEL_KEY] = config.to_json(model, where)
    header.update(_check_metadata(metadata, where))
    data = safetensors.numpy.save(tensors, metadata=header)
    write_atomically(os.fspath(path), data, where)


def load(path: PathLike, like: Any = None) -> Params:
    """Reads params written by `save` (or any safetensors file).

    Args:
      path: the file.
      like: optional, what the params must look like: a params tree (arrays
        or `jax.ShapeDtypeStruct` leaves), or a `(model, input_shape)` pair.
        Every path, shape and dtype is checked and the result has `like`'s
        tree structure. Without it, the structure recorded by `save` is used;
        a file not written by lamina comes back as a flat `{name: array}` dict.

    Returns:
      The params tree, leaves as `jax.Array` (bit-exact, bfloat16 included;
      64-bit leaves follow jax's x64 setting).

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file is truncated, corrupted, a pickle or not a
        safetensors file; or it does not match `like` (names the first path
        that differs, with what was expected and what the file holds).

    Example:
      >>> import os, tempfile, jax, lamina as lm
      >>> model = lm.mlp([4, 2])
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> lm.save(path, params)
      >>> restored = lm.load(path, like=(model, (3,)))
      >>> bool((restored[0]["W"] == params[0]["W"]).all())
      True
    """
    where = f"load({os.fspath(path)!r})"
    tensors, metadata = _read(path, where)
    if like is None:
        return _recorded_tree(tensors, metadata, where)
    if _FORMAT_KEY in metadata:
        _check_format(metadata, where)
    return _fill_like(tensors, params_like(like), where)


def _recorded_tree(tensors: dict, metadata: Mapping[str, str], where: str) -> Params:
    """The tree `save` recorded; a file not written by lamina gives `{name: array}`."""
    if _TREE_KEY not in metadata:
        return {name: jnp.asarray(tensors[name]) for name in sorted(tensors)}
    _check_format(metadata, where)
    used: set[str] = set()
    params = _build(_tree_json(metadata, where), tensors, used, where)
    extra = sorted(set(tensors) - used)
    if extra:
        raise layer_error(
            where, f"corrupted lamina metadata: tensor {extra[0]!r} is not in the recorded tree"
        )
    return params


def _fill_like(tensors: dict, like: Params, where: str) -> Params:
    """`like`'s tree holding the file's tensors; every name, shape and dtype must match."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = [_tensor_like(tensors, path_str(key_path), want, where) for key_path, want in flat]
    extra = sorted(set(tensors) - {path_str(p) for p, _ in flat})
    if extra:
        raise layer_error(where, f"unexpected tensor {extra[0]!r}: it is not in like's tree")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _tensor_like(tensors: dict, name: str, want: Any, where: str) -> jax.Array:
    """The file's tensor `name`, which must have `want`'s shape and dtype."""
    got = tensors.get(name)
    want_shape, want_dtype = tuple(np.shape(want)), _dtype_of(want)
    if got is None:
        raise layer_error(
            where,
            f"missing tensor {name!r}: expected shape {want_shape} {want_dtype}; "
            f"the file holds {_names(tensors)}",
        )
    if got.shape != want_shape or got.dtype != want_dtype:
        raise layer_error(
            where,
            f"at {name!r}: expected shape {want_shape} {want_dtype} (from like), "
            f"got shape {got.shape} {got.dtype}",
        )
    return jnp.asarray(got)


def load_metadata(path: PathLike) -> dict[str, str]:
    """The text metadata of a safetensors file: yours and lamina's (`lamina.*`).

    Args:
      path: the file.

    Returns:
      A `str -> str` dict; `"lamina.version"` names the lamina that saved it.

    Example:
      >>> import os, tempfile, jax.numpy as jnp
      >>> import lamina as lm
      >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> lm.save(path, {"W": jnp.ones((2, 2))}, metadata={"epoch": "3"})
      >>> lm.load_metadata(path)["epoch"]
      '3'
    """
    where = f"load_metadata({os.fspath(path)!r})"
    return _read(path, where)[1]


def load_model(path: PathLike) -> tuple[Layer, Params]:
    """Rebuilds the model and params that `lm.save(path, params, model=model)` wrote.

    The model comes from its recorded configuration (lamina's own public
    constructors, called again; nothing from the file is run as code), so it
    equals the saved model and gives bit-identical outputs with the params.

    Args:
      path: the file.

    Returns:
      `(model, params)`.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError: the file was saved without `model=`, or is not a lamina
        checkpoint, or its model description is corrupted or names a layer
        this lamina does not have.

    Example:
      >>> import os, tempfile, jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.serial(lm.Dense(4, act="tanh"), lm.LayerNorm(), lm.Dense(2))
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> lm.save(path, params, model=model)
      >>> rebuilt, loaded = lm.load_model(path)
      >>> same = rebuilt.apply(loaded, jnp.ones(3)) == model.apply(params, jnp.ones(3))
      >>> rebuilt == model, bool(same.all())
      (True, True)
    """
    where = f"load_model({os.fspath(path)!r})"
    tensors, metadata = _read(path, where)
    if _MODEL_KEY not in metadata:
        raise layer_error(
            where,
            "the file holds no model description: it was saved without model= (or not "
            "by lamina); load its params with lm.load(path, like=(model, input_shape))",
        )
    _check_format(metadata, where)
    model = config.from_json(metadata[_MODEL_KEY], where)
    params = _recorded_tree(tensors, metadata, where)
    config.check_structure(model, params, where)
    return model, params


def read_safetensors(path: PathLike, where: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as NumPy arrays; refuses anything else."""
    return _read(path, where)[0]


def _describe(node: Any, path: tuple, tensors: dict, where: str) -> Any:
    # The JSON form of the tree: {"tuple": [...]}, {"list": [...]},
    # {"dict": {key: ...}}, {"none": null}, and {"tensor": name} at leaves.
    kind = type(node)
    if kind is dict:
        for k in node:
            if not isinstance(k, str):
                raise layer_error(
                    where,
                    f"dict keys must be str, got {k!r} at {path_str(path) or '(root)'!r}",
                    TypeError,
                )
        return {"dict": {k: _describe(node[k], path + (k,), tensors, where) for k in sorted(node)}}
    if kind in (tuple, list):
        children = [_describe(v, path + (i,), tensors, where) for i, v in enumerate(node)]
        return {kind.__name__: children}
    if node is None:
        return {"none": None}
    name = path_str(path)
    dtype = getattr(node, "dtype", None)
    if dtype is None or not hasattr(node, "shape"):
        raise layer_error(
            where,
            f"at {name or '(root)'!r}: expected an array, or a dict, tuple or list of them, "
            f"got {kind.__name__} {node!r}",
            TypeError,
        )
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise layer_error(
            where, f"at {name!r}: cannot store PRNG keys; save jax.random.key_data(key)", TypeError
        )
    if name in tensors:
        raise layer_error(
            where, f"two leaves are both named {name!r}; dict keys must not contain '.'"
        )
    # Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.
    tensors[name] = np.asarray(jax.device_get(node), order="C")
    return {"tensor": name}


def _build(desc: Any, tensors: dict, used: set, where: str) -> Any:
    try:
        (kind, value), = desc.items()
        if kind == "tensor":
            used.add(value)
            return jnp.asarray(tensors[value])
        if kind in ("tuple", "list"):
            children = [_build(v, tensors, used, where) for v in value]
            return tuple(children) if kind == "tuple" else children
        if kind == "dict":
            return {k: _build(v, tensors, used, where) for k, v in value.items()}
        if kind == "none":
            return None
    except (AttributeError, TypeError, ValueError) as error:
        if isinstance(error, LaminaError):
            raise
        raise layer_error(
            where, f"corrupted lamina metadata: cannot read tree node {desc!r}"
        ) from None
    except KeyError as error:
        raise layer_error(
            where,
            f"corrupted lamina metadata: the tree names tensor {error.args[0]!r}, "
            f"which the file lacks",
        ) from None
    raise layer_error(where, f"corrupted lamina metadata: unknown tree node {kind!r}")


def _check_metadata(metadata: Optional[Mapping[str, str]], where: str) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise layer_error(
            where,
            f"metadata must be a dict of str -> str, got {type(metadata).__name__}",
            TypeError,
        )
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise layer_error(
                where,
                f"metadata must map str to str (safetensors stores text only), got "
                f"{k!r}: {type(v).__name__} {v!r}; convert it, e.g. with str() or json.dumps()",
                TypeError,
            )
        if k.startswith(_RESERVED_PREFIX):
            raise layer_error(
                where,
                f"metadata key {k!r} is reserved: keys starting with "
                f"{_RESERVED_PREFIX!r} belong to lamina",
            )
    return dict(metadata)


def _check_format(metadata: Mapping[str, str], where: str) -> None:
    if metadata.get(_FORMAT_KEY) != FORMAT:
        raise layer_error(
            where,
            f"written in lamina checkpoint format {metadata.get(_FORMAT_KEY)!r} by lamina "
            f"{metadata.get(_VERSION_KEY)}; this lamina reads format {FORMAT!r}. Upgrade lamina.",
        )


def _tree_json(metadata: Mapping[str, str], where: str) -> Any:
    try:
        return json.loads(metadata[_TREE_KEY])
    except json.JSONDecodeError as error:
        raise layer_error(
            where, f"corrupted lamina metadata: {_TREE_KEY} is not JSON ({error})"
        ) from None


def _dtype_of(leaf: Any) -> np.dtype:
    dtype = getattr(leaf, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.asarray(leaf).dtype)


def _names(tensors: Mapping[str, Any]) -> str:
    names = sorted(tensors)
    return repr(names) if len(names) <= 8 else f"{names[:8]!r} and {len(names) - 8} more"


def _read(path: PathLike, where: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    remove_stale_temporaries(os.fspath(path))
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise layer_error(where, f"no file at {os.fspath(path)!r}", FileNotFoundError) from None
    if stat.S_ISDIR(info.st_mode):
        raise layer_error(where, "this is a folder, not a safetensors file")
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would wait for a writer forever; a device could be endless.
        raise layer_error(where, "not a regular file (a pipe or a device?), so not a safetensors file")
    with open(path, "rb") as f:
        # The header first: it says how many bytes follow, so a huge or
        # endless file is never read whole just to find out it is not ours.
        data = f.read(8)
        if len(data) == 8:
            length = int.from_bytes(data, "little")
            data += f.read(min(length, _MAX_HEADER, max(info.st_size - 8, 0)))
        header = _header(data, where, info.st_size)
        end = len(data) + _data_size(header)
        if info.st_size > end:  # never read: a file is its header and the data it names
            raise layer_error(
                where, f"corrupted safetensors file ({info.st_size - end} bytes follow the "
                f"tensors' data, which ends at byte {end})")
        data += f.read(end - len(data))
    try:
        views = safetensors.deserialize(data)
    except safetensors.SafetensorError as error:
        raise layer_error(where, f"corrupted safetensors file ({error})") from None
    tensors = {}
    for name, view in views:
        dtype = _DTYPES.get(view["dtype"])
        if dtype is None:
            raise layer_error(
                where,
                f"tensor {name!r} has dtype {view['dtype']}, which lamina cannot read; "
                f"lamina reads {sorted(_DTYPES)}",
            )
        tensors[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return tensors, dict(header.get("__metadata__") or {})


_MAX_HEADER = 100_000_000  # safetensors' own limit on the header's length


def _data_size(header: dict) -> int:
    return max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)


def _header(data: bytes, where: str, size: int) -> dict:
    """Parses the header at the start of `data` (the file's first bytes, `size` in all),
    saying what the file is when it is not safetensors."""
    # A safetensors file starts with the header's length (8 bytes) and then
    # its JSON; checked first, since a length's first bytes can look like
    # a pickle's magic number.
    if size < 9 or data[8:9] != b"{":
        if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            what = "a Python pickle (as written by pickle.dump or an old torch.save)"
            raise layer_error(where, f"this is {what}, not a safetensors file; {_NEVER_UNPICKLE}")
        if data[:4] == b"PK\x03\x04":
            what = "a zip archive (torch.save writes these, with pickles inside)"
            raise layer_error(where, f"this is {what}, not a safetensors file; {_NEVER_UNPICKLE}")
        if size < 9:
            raise layer_error(
                where,
                f"not a safetensors file: it is {size} bytes long, too short for a "
                f"safetensors header (an interrupted write?)",
            )
        raise layer_error(
            where,
            f"not a safetensors file: it starts with {data[:16]!r}, not an 8-byte "
            f"header length followed by JSON",
        )
    length = int.from_bytes(data[:8], "little")
    if length > _MAX_HEADER:
        raise layer_error(
            where, f"corrupted safetensors file: its header would be {length} bytes long, more "
            f"than the {_MAX_HEADER} safetensors allows")
    if 8 + length > size:
        raise layer_error(
            where,
            f"truncated safetensors file: the header says it is {length} bytes long, "
            f"but only {size - 8} bytes follow",
        )
    try:
        header = json.loads(data[8 : 8 + length])
        end = _data_size(header)
        if not isinstance(end, int) or end < 0:
            raise ValueError(f"data offsets end at {end!r}")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise layer_error(where, f"corrupted safetensors header: {error}") from None
    if 8 + length + end > size:
        raise layer_error(
            where,
            f"truncated safetensors file: its tensors need {end} bytes of data, but "
            f"only {size - 8 - length} bytes follow the header",
        )
    return header
