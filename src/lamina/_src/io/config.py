"""A model as JSON: how a checkpoint records the model whose params it holds.

Only configuration is written, never code: each of lamina's layers becomes
`{"layer": "Dense", "config": {...}}` with its constructor's arguments, and
reading it back calls that public constructor (`lm.Dense(...)`) again. Names
that are not lamina layers or initializers are refused when read, so a file
can never make lamina run anything else.

A layer lamina cannot describe this way (a user-defined `lm.Layer`, an
activation or initializer given as an arbitrary function) is refused when
written, with its path in the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import join_path, layer_error
from lamina._src.core.layer import Layer
from lamina._src.layers import initializers
from lamina._src.layers.registry import LAYERS

FORMAT = 1


def to_json(model: Layer, where: str) -> str:
    """`model`'s configuration as JSON text.

    Raises:
      TypeError: a part of the model cannot be written as configuration;
        the message names its path and what to do instead.
    """
    return json.dumps({"format": FORMAT, "model": _encode(model, "", where)},
                      sort_keys=True, allow_nan=False)


def from_json(text: str, where: str) -> Builtin:
    """The model `to_json` described; errors name `where` (the file)."""
    try:
        data = json.loads(text)
        version, model = data["format"], data["model"]
    except (ValueError, TypeError, KeyError) as error:
        raise layer_error(where, f"corrupted model description: {error}") from None
    if version != FORMAT:
        raise layer_error(
            where,
            f"the model is described in format {version!r}; this lamina reads format "
            f"{FORMAT}. Upgrade lamina.",
        )
    return _decode(model, where)


def _encode(value: Any, path: str, where: str) -> Any:
    if isinstance(value, Builtin):
        config = {}
        for field, item in value.config().items():
            config[field] = _encode_field(value, field, item, path, where)
        return {"layer": type(value).__name__, "config": config}
    if isinstance(value, Layer):
        raise layer_error(
            value.name,
            f"{where}: this is a user-defined lm.Layer, which lamina cannot rebuild from a "
            f"file (it would need your code). Save the params alone, lm.save(path, params), "
            f"and build the model in code",
            TypeError,
        )._under(path)
    raise AssertionError(f"not a layer: {value!r}")  # _encode_field handles the rest


def _encode_field(owner: Builtin, field: str, value: Any, path: str, where: str) -> Any:
    def refuse(what: str) -> Exception:
        return layer_error(
            owner.name,
            f"{where}: {field}={value!r} is {what}, which a file cannot hold (lamina "
            f"writes configuration, never code); use "
            + ("an activation name from lm.ACTIVATIONS" if field.endswith("act")
               else "one of lm.initializers" if field.endswith("init") else "a plain value"),
            TypeError,
        )._under(path)

    if isinstance(value, Layer):
        return _encode(value, join_path(path, owner.child_segment(0)), where)
    if isinstance(value, tuple):
        if value and all(isinstance(v, Layer) for v in value):
            return {"tuple": [_encode(v, join_path(path, owner.child_segment(i)), where)
                              for i, v in enumerate(value)]}
        return {"tuple": [_encode_field(owner, field, v, path, where) for v in value]}
    if isinstance(value, initializers.Initializer):
        return {"initializer": type(value).__name__,
                "config": {f.name: _plain(getattr(value, f.name), refuse)
                           for f in dataclasses.fields(value)}}  # type: ignore[arg-type]
    if isinstance(value, np.dtype):
        return {"dtype": value.name}
    if callable(value):
        raise refuse("a function")
    return _plain(value, refuse)


def _plain(value: Any, refuse) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise refuse("not a finite number")
        return value
    raise refuse(f"a {type(value).__name__}")


def _decode(node: Any, where: str) -> Any:
    if isinstance(node, list) or not isinstance(node, dict):
        if isinstance(node, (list, dict)):
            raise layer_error(where, f"corrupted model description: unexpected {node!r}")
        return node
    if len(node) == 1 and "tuple" in node:
        return tuple(_decode(v, where) for v in node["tuple"])
    if len(node) == 1 and "dtype" in node:
        return np.dtype(_dtype_name(node["dtype"], where))
    if set(node) == {"layer", "config"}:
        cls = _public(node["layer"], Builtin, where)
        config = {k: _decode(v, where) for k, v in node["config"].items()}
        return cls.from_config(config)  # type: ignore[attr-defined]
    if set(node) == {"initializer", "config"}:
        cls = _public(node["initializer"], initializers.Initializer, where)
        return cls(**node["config"])
    raise layer_error(where, f"corrupted model description: unexpected {node!r}")


def _public(name: Any, base: type, where: str) -> type:
    # The registries' names are the only ones a file may use.
    namespace = LAYERS if base is Builtin else initializers.INITIALIZERS
    cls = namespace.get(name) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        what = "layer" if base is Builtin else "initializer"
        raise layer_error(
            where,
            f"the model description names {what} {name!r}, which this lamina does not "
            f"have (a file from a newer lamina?)",
        )
    return cls


def _dtype_name(name: Any, where: str) -> str:
    import jax.numpy as jnp

    try:
        return jnp.dtype(name).name
    except TypeError:
        raise layer_error(where, f"corrupted model description: unknown dtype {name!r}") from None
