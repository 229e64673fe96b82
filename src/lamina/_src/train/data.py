"""Checks on `(inputs, targets)` datasets, so bad data fails before training starts."""

from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import numpy as np

from lamina._src.core.checks import as_array  # noqa: F401 - the train step's too
from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer
from lamina._src.core.params import param_shapes


def as_dataset(where: str, data: Any) -> tuple[Any, Any]:
    """Returns `data` as a pair of arrays `(inputs, targets)` of equal length.

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
    inputs, targets = (jnp.asarray(a) for a in data)
    if inputs.ndim < 1 or targets.ndim < 1:
        raise layer_error(
            where,
            f"inputs and targets need a leading example axis, got shapes "
            f"{inputs.shape} and {targets.shape}",
        )
    if inputs.shape[0] != targets.shape[0]:
        raise layer_error(
            where,
            f"inputs have {inputs.shape[0]} examples but targets have {targets.shape[0]}",
        )
    if inputs.shape[0] == 0:
        raise layer_error(where, "is empty: 0 examples")
    if jnp.issubdtype(inputs.dtype, jnp.floating):
        finite = np.asarray(jnp.isfinite(inputs))
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            raise layer_error(
                where,
                f"inputs hold {int((~finite).sum())} NaN or infinite value(s), the "
                f"first at index {tuple(int(i) for i in bad)}",
            )
    return inputs, targets


def check_targets(where: str, model: Layer, inputs: Any, targets: Any) -> None:
    """Integer class targets must lie in `[0, classes)` for a `(classes,)` output."""
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        return
    check_classes(where, target_classes(model, inputs.shape[1:]), targets)


def target_classes(model: Layer, input_shape: tuple) -> Optional[int]:
    """How many classes integer targets may name: the model's `(classes,)` output, else None."""
    output_shape, _ = param_shapes(model, tuple(input_shape))
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
