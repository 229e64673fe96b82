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
from typing import Any, Mapping

import jax
import numpy as np

from lamina._src.core.builtin import Builtin, Wrapper
from lamina._src.core.errors import LaminaError, join_path, layer_error
from lamina._src.core.layer import Layer, placed_children
from lamina._src.core.params import path_str
from lamina._src.core.spec import check_structure as spec_check_structure
from lamina._src.core.spec import present
from lamina._src.layers import initializers
from lamina._src.layers.combinators import _Combinator
from lamina._src.layers.registry import LAYERS
from lamina._src.layers.stack import holds_children, stack

FORMAT = 2
"""Format 2: `"gelu"` is the exact form everywhere (format 1's Dense, Conv and
Activation meant the tanh approximation by it, now `"gelu_tanh"`)."""


def to_json(model: Layer, where: str) -> str:
    """`model`'s configuration as JSON text.

    Raises:
      TypeError: a part of the model cannot be written as configuration;
        the message names its path and what to do instead.
    """
    return json.dumps({"format": FORMAT, "model": _encode(model, "", where)},
                      sort_keys=True, allow_nan=False)


MAX_DEPTH = 64
"""How deeply layers may nest in a description: far beyond any real model, far below Python's stack."""


def from_json(text: str, where: str) -> Builtin:
    """The model `to_json` described; errors name `where` (the file).

    Whatever the text holds, the result is one of lamina's layers or a
    `LaminaError` naming `where`: never another object, a raw error from a
    constructor, or a crash on deep nesting.
    """
    try:
        data = json.loads(text)
        version, model = data["format"], data["model"]
    except (ValueError, TypeError, KeyError, RecursionError) as error:
        raise layer_error(where, f"corrupted model description: {error}") from None
    if version not in (1, FORMAT):
        raise layer_error(
            where,
            f"the model is described in format {version!r}; this lamina reads formats 1 "
            f"and {FORMAT}. Upgrade lamina.",
        )
    if not (isinstance(model, dict) and set(model) == {"layer", "config"}):
        raise layer_error(
            where, f"corrupted model description: expected a layer at the top, got {model!r:.80}")
    return _decode(_from_format_1(model, 0) if version == 1 else model, where, 0)


def _from_format_1(node: Any, depth: int) -> Any:
    """A format-1 description with its tanh-approximated `"gelu"` named `"gelu_tanh"`,
    so an old file keeps computing what it computed (the transformer layer's "gelu"
    was already exact)."""
    if depth > MAX_DEPTH:
        return node  # _decode reports the nesting
    if isinstance(node, list):
        return [_from_format_1(v, depth + 1) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _from_format_1(v, depth + 1) for k, v in node.items()}
    config = out.get("config")
    if out.get("layer") not in (None, "TransformerEncoderLayer") and isinstance(config, dict):
        out["config"] = {k: "gelu_tanh" if k.endswith("act") and v == "gelu" else v
                         for k, v in config.items()}
    return out


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


def _decode(node: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise layer_error(
            where, f"corrupted model description: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, list) or not isinstance(node, dict):
        if isinstance(node, (list, dict)):
            raise layer_error(where, f"corrupted model description: unexpected {node!r:.80}")
        return node
    if len(node) == 1 and "tuple" in node and isinstance(node["tuple"], list):
        return tuple(_decode(v, where, depth + 1) for v in node["tuple"])
    if len(node) == 1 and "dtype" in node:
        return np.dtype(_dtype_name(node["dtype"], where))
    if set(node) in ({"layer", "config"}, {"initializer", "config"}):
        base = Builtin if "layer" in node else initializers.Initializer
        cls = _public(node.get("layer", node.get("initializer")), base, where)
        if not isinstance(node["config"], dict):
            raise layer_error(
                where, f"corrupted model description: the config of {cls.__name__} must be "
                f"a dict of arguments, got {node['config']!r:.80}")
        config = {k: _decode(v, where, depth + 1) for k, v in node["config"].items()}
        try:
            if base is Builtin:
                return cls.from_config(config)  # type: ignore[attr-defined]
            return cls(**config)
        except LaminaError as error:
            raise layer_error(where, f"corrupted model description: {error}") from None
        except (TypeError, ValueError) as error:  # e.g. an unknown keyword
            raise layer_error(
                where, f"corrupted model description: {cls.__name__}: {error}") from None
    raise layer_error(where, f"corrupted model description: unexpected {node!r:.80}")


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
        dtype = jnp.dtype(name)
    except TypeError:
        raise layer_error(where, f"corrupted model description: unknown dtype {name!r}") from None
    # Not void, object, str or dates: no layer computes in those.
    if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
        raise layer_error(
            where, f"corrupted model description: dtype {name!r} is not a numeric dtype")
    return dtype.name


def check_structure(model: Layer, params: Any, where: str) -> None:
    """Raises unless `params` have the structure `model` gives its params, at every layer.

    Shapes need the input shape, which a file does not record; the structure
    (a tuple per combinator, the declared keys per layer, nothing at a
    parameterless layer) does not, and catches params saved with another
    model or a description edited after the save.
    """
    def walk(layer: Layer, tree: Any, path: tuple) -> None:
        here = path_str(path) or "(root)"
        if isinstance(layer, Builtin) and type(layer).init is Builtin.init:
            # Its params are exactly its declaration (none, for a parameterless layer).
            declared = present(layer, layer.params_spec())
            if declared:
                try:
                    spec_check_structure(layer, layer.params_spec(), declared, tree, (), "params")
                except LaminaError as error:
                    raise layer_error(
                        where, f"params at {here!r} do not fit the model: {error}") from None
            elif jax.tree.leaves(tree):
                raise layer_error(
                    where, f"params at {here!r} do not fit the model: {layer.name} has no "
                    f"params, but the file holds arrays there")
            return
        if isinstance(layer, Wrapper):
            # A stack's params are its layer's, each leaf with a leading copies axis.
            if layer.shares or isinstance(layer, stack):
                walk(layer.inner, tree, path)
            elif not isinstance(tree, (tuple, list)) or len(tree) != 1:
                raise layer_error(
                    where, f"params at {here!r} do not fit the model: {layer.name} expects a "
                    f"tuple of 1 entry (its layer's params), got {_kind(tree)}")
            else:
                walk(layer.inner, tree[0], path + (0,))
            return
        if not isinstance(layer, _Combinator):
            return  # a layer that lays out its own params (e.g. a transformer block)
        placed = placed_children(layer)
        if not holds_children(tree, placed) or isinstance(tree, Mapping) and len(tree) != len(
                placed):
            expected = (f"a dict with keys {list(layer.names)}" if layer.names
                        else f"a tuple of {len(placed)} entries")
            raise layer_error(
                where, f"params at {here!r} do not fit the model: {layer.name} expects "
                f"{expected} (one per layer), got {_kind(tree)}")
        for place, child in placed:
            walk(child, tree[place], path + (place,))

    walk(model, params, ())


def _kind(tree: Any) -> str:
    if isinstance(tree, Mapping):
        return f"a dict with keys {list(tree)}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of length {len(tree)}"
    return type(tree).__name__
