"""Checked configuration: the types of a layer's fields, each with the check it runs.

A built-in layer declares its configuration as dataclass fields whose types
say what they accept, e.g. `eps: Positive = 1e-5` or `hidden: Count`. Each
such type is `Annotated[<type>, Check(fn)]`: type checkers see the plain
type, and when the layer is built `Check.fn(where, field, value)` validates
the value and returns it in canonical form (a float for `1`, a tuple for a
list), so equal configurations compare and hash equal. A layer writes no
`raise` for its arguments; only checks across fields (`groups` divides
`out_channels`) are its own, in `check_config`.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Callable, Optional

import jax
import numpy as np

from lamina._src.core.checks import as_dtype, check_count
from lamina._src.core.errors import layer_error


class Check:
    """Marks a field type: `fn(where, field, value, *args) -> canonical value` runs at build."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.fn, self.args = fn, args

    def __call__(self, where: str, field: str, value: Any) -> Any:
        return self.fn(where, field, value, *self.args)


def positive(where: str, arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise layer_error(where, f"{arg} must be a number > 0, got {value!r}", TypeError)
    if not float(value) > 0:
        raise layer_error(where, f"{arg} must be > 0, got {value!r}")
    return float(value)


def interval(where: str, arg: str, value: Any, low: float, high: float, closed: str) -> float:
    """A number in `[low, high)` (`closed="low"`) or `(low, high]` (`closed="high"`)."""
    text = f"[{low:g}, {high:g})" if closed == "low" else f"({low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise layer_error(where, f"{arg} must be a number in {text}, got {value!r}", TypeError)
    value = float(value)
    inside = low <= value < high if closed == "low" else low < value <= high
    if not inside:
        raise layer_error(where, f"{arg} must be in {text}, got {value!r}")
    return value


def flag(where: str, arg: str, value: Any) -> bool:
    # isinstance, not `in (True, False)`: 1.0 == True would slip through.
    if not isinstance(value, (bool, np.bool_)):
        raise layer_error(
            where, f"{arg} must be True or False, got {type(value).__name__} {value!r}", TypeError
        )
    return bool(value)


def integer(where: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise layer_error(
            where, f"{arg} must be an int, got {type(value).__name__} {value!r}", TypeError
        )
    return int(value)


def text(where: str, arg: str, value: Any) -> str:
    if not isinstance(value, str):
        raise layer_error(where, f"{arg} must be a str, got {value!r}", TypeError)
    return value


def initializer(where: str, arg: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise layer_error(
            where,
            f"{arg} must be an initializer (key, shape, dtype) -> array, got "
            f"{type(value).__name__} {value!r}",
            TypeError,
        )
    return value


def float_dtype(where: str, arg: str, value: Any, optional: bool = False) -> Any:
    return as_dtype(where, arg, value, optional)


Count = Annotated[int, Check(check_count)]
"""An int >= 1: a size or a number of things."""
Positive = Annotated[float, Check(positive)]
"""A number > 0, stored as a float (an eps)."""
Flag = Annotated[bool, Check(flag)]
"""True or False (not 1, not "yes")."""
Int = Annotated[int, Check(integer)]
"""Any int (an axis)."""
Text = Annotated[str, Check(text)]
"""A str (an axis name)."""
Init = Annotated[Optional[Callable[..., jax.Array]], Check(initializer)]
"""An initializer `(key, shape, dtype) -> array`, or None for the layer's default."""
FloatDtype = Annotated[Any, Check(float_dtype)]
"""A floating-point dtype, stored as an `np.dtype`."""
OptionalFloatDtype = Annotated[Any, Check(float_dtype, True)]
"""A floating-point dtype or None."""
