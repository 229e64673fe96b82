"""Checks on `(inputs, targets)` datasets, so bad data fails before training starts."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.checks import (
    as_array,  # noqa: F401 - the train step's too
    check_int32,
)
from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.core.layer import Layer, children
from lamina._src.core.params import param_shapes
from lamina._src.layers.embedding import Embedding
from lamina._src.train import examples


def as_dataset(where: str, data: Any) -> tuple[Any, Any]:
    """Returns `data` as `(inputs, targets)` device arrays with one example axis of one length.

    `inputs` is an array or a tuple or dict of arrays (a model with several
    inputs); `targets` one array.

    Raises:
      TypeError: `data` is not an `(inputs, targets)` pair.
      ValueError: lengths differ, the data is empty, or inputs are not finite.
    """
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise layer_error(
            where,
            f"expected an (inputs, targets) pair of arrays, got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""),
            TypeError,
        )
    for what, value in zip(("inputs", "targets"), data):
        check_int32(where, examples.arrays(value, device=False), what)
    inputs, targets = examples.arrays(data[0]), jnp.asarray(data[1])
    n = examples.count(where, inputs)
    if targets.ndim < 1:
        raise layer_error(
            where, f"targets need a leading example axis, got shape {targets.shape}")
    if n != targets.shape[0]:
        raise layer_error(where, f"inputs have {n} examples but targets have {targets.shape[0]}")
    if n == 0:
        raise layer_error(where, "is empty: 0 examples")
    for path, leaf in jax.tree_util.tree_leaves_with_path(inputs):
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            continue
        finite = np.asarray(jnp.isfinite(leaf))
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            at = f" {jax.tree_util.keystr(path)}" if path else ""
            raise layer_error(
                where,
                f"inputs{at} hold {int((~finite).sum())} NaN or infinite value(s), the "
                f"first at index {tuple(int(i) for i in bad)}",
            )
    return inputs, targets


def check_targets(where: str, model: Layer, inputs: Any, targets: Any) -> None:
    """Integer class targets must lie in `[0, classes)` for a `(classes,)` output."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        return
    check_classes(where, target_classes(model, examples.example_shape(inputs)), targets)


def target_classes(model: Layer, input_shape: Any) -> Optional[int]:
    """How many classes integer targets may name: the model's `(classes,)` output, else None."""
    output_shape, _ = param_shapes(model, input_shape)
    if not isinstance(output_shape, tuple) or len(output_shape) != 1:
        return None
    return output_shape[0]


def check_classes(where: str, classes: Optional[int], targets: Any) -> None:
    """Raises unless integer `targets` of shape `(N,)` lie in `[0, classes)`."""
    if classes is None or not jnp.issubdtype(targets.dtype, jnp.integer) or targets.ndim != 1:
        return
    values = np.asarray(targets)
    bad = np.flatnonzero((values < 0) | (values >= classes))
    if bad.size:
        raise layer_error(
            where,
            f"targets must be class indices in [0, {classes}) for a model with "
            f"{classes} outputs, got {values[bad[0]]} at index {bad[0]} "
            f"({bad.size} out of range)",
        )


def check_ids(where: str, model: Layer, params: Any, inputs: Any) -> None:
    """Integer inputs out of an embedding's range are refused, naming the layer and the id.

    Inside a jitted step an out-of-range id gives a row of NaN (the only
    thing a traced lookup can do), and the loss that follows reads as a
    diverging run. So, where the ids could be out of range for one of the
    model's tables, the examples holding the smallest and the largest id run
    once eagerly, where the embedding sees their values and says which id.
    """
    ids = [a for a in examples.leaves(inputs)
           if jnp.issubdtype(a.dtype, jnp.integer) and a.ndim >= 1 and a.size]
    if not ids:
        return
    tables = [layer.num_embeddings for layer in _layers(model) if isinstance(layer, Embedding)]
    if not tables:
        return
    flat = np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in ids], axis=1)
    lows, highs = flat.min(axis=1), flat.max(axis=1)
    if lows.min() >= 0 and highs.max() < min(tables):
        return
    state = model.init_state(examples.example_shape(inputs)) if model.stateful else ()
    for i in dict.fromkeys((int(np.argmin(lows)), int(np.argmax(highs)))):
        try:
            model.call(params, state, examples.row(inputs, i))
        except LaminaError as error:
            raise layer_error(where, f"example {i}: {error}") from None


def _layers(layer: Layer) -> list[Layer]:
    found = [layer]
    for _, child in children(layer):
        found += _layers(child)
    return found
