"""Per-axis settings of convolution and pooling: kernels, strides, padding, and the example's rank.

Each setting is an int for every spatial axis or a tuple with one per axis;
a tuple fixes the number of spatial axes, and all tuples of a layer must
agree. One example is channels-first, `(C, L)`, `(C, H, W)` or `(C, D, H, W)`.
"""

from __future__ import annotations

import numbers
from typing import Annotated, Any, Optional, Union

from lamina._src.core.errors import BATCH_HINT, layer_error
from lamina._src.core.fields import Check
from lamina._src.core.layer import Shape

IntOrTuple = Union[int, tuple[int, ...]]
"""A per-axis setting: one int for every spatial axis, or one int per axis."""

EXAMPLE_SHAPES = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}
"""One channels-first example, by number of spatial axes."""



def int_or_tuple(where: str, arg: str, value: Any, minimum: int) -> IntOrTuple:
    """`value` checked: an int >= `minimum`, or a tuple of 1 to 3 of them.

    A list (as JSON reads back) becomes a tuple and NumPy ints become ints, so
    equal configurations compare and hash equal.
    """
    def one(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise layer_error(
                where,
                f"{arg} must be an int or a tuple of 1 to 3 ints (one per spatial axis), "
                f"got {type(value).__name__} {value!r}",
                TypeError,
            )
        if v < minimum:
            raise layer_error(where, f"{arg} must be >= {minimum}, got {value!r}")
        return int(v)

    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise layer_error(
                where,
                f"{arg} must be an int or a tuple of 1 to 3 ints (one per spatial axis), "
                f"got {value!r}",
            )
        return tuple(one(v) for v in value)
    return one(value)


def _optional(where: str, arg: str, value: Any, minimum: int) -> Optional[IntOrTuple]:
    return None if value is None else int_or_tuple(where, arg, value, minimum)


def _conv_padding(where: str, arg: str, value: Any) -> Union[IntOrTuple, str]:
    if isinstance(value, str):
        if value not in ("same", "valid"):
            raise layer_error(
                where,
                f"padding must be an int, a tuple of ints, 'same' or 'valid', got {value!r}",
            )
        return value
    return int_or_tuple(where, arg, value, 0)


def _transpose_padding(where: str, arg: str, value: Any) -> IntOrTuple:
    if isinstance(value, str):
        raise layer_error(
            where,
            f"padding must be an int or a tuple of ints, got {value!r} "
            f"(torch.nn.ConvTransposeNd takes no padding strings)",
        )
    return int_or_tuple(where, arg, value, 0)


Window = Annotated[IntOrTuple, Check(int_or_tuple, 1)]
"""A kernel, window, stride or dilation: an int >= 1 or one per spatial axis."""
OptionalWindow = Annotated[Optional[IntOrTuple], Check(_optional, 1)]
"""Like `Window`, or None for the layer's default."""
Padding = Annotated[IntOrTuple, Check(int_or_tuple, 0)]
"""Padding or output padding: an int >= 0 or one per spatial axis."""
ConvPadding = Annotated[Union[IntOrTuple, str], Check(_conv_padding)]
"""`Conv`'s padding: a `Padding`, "same" or "valid"."""
TransposePadding = Annotated[IntOrTuple, Check(_transpose_padding)]
"""`ConvTranspose`'s padding: a `Padding` (torch takes no strings there)."""

PAD_MODES = {"zeros": None, "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
"""torch's padding_mode -> jnp.pad's mode."""


def _padding_mode(where: str, arg: str, value: Any) -> str:
    if value not in PAD_MODES:
        raise layer_error(
            where, f"{arg} must be one of {', '.join(map(repr, PAD_MODES))}, got {value!r}"
        )
    return value


PaddingMode = Annotated[str, Check(_padding_mode)]
"""`Conv`'s padding_mode: a key of `PAD_MODES`."""


def spatial_rank(where: str, **args: Any) -> Optional[int]:
    """The number of spatial axes the tuple-valued `args` fix (`None`: all ints).

    Raises a ValueError naming them when their lengths disagree.
    """
    lengths = {name: len(v) for name, v in args.items() if isinstance(v, tuple)}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"{name}={args[name]!r}" for name in lengths)
        raise layer_error(
            where, f"tuples must have one entry per spatial axis, all the same length; got {given}"
        )
    return next(iter(lengths.values()), None)


def per_axis(value: IntOrTuple, n: int) -> tuple[int, ...]:
    """`value` for each of `n` spatial axes."""
    return value if isinstance(value, tuple) else (value,) * n


def check_example(where: str, shape: Shape, rank: Optional[int], what: str) -> int:
    """The number of spatial axes of one channels-first example of `shape`.

    `rank` is the number the layer requires (`None`: 1, 2 or 3); `what`
    names the shape in the message, e.g. `"input_shape"` or `"x with shape"`.
    """
    ranks = (1, 2, 3) if rank is None else (rank,)
    n = len(shape) - 1
    if n not in ranks:
        shapes = [EXAMPLE_SHAPES[r] for r in ranks]
        wanted = shapes[0] if len(shapes) == 1 else f"{', '.join(shapes[:-1])} or {shapes[-1]}"
        hint = f"\n{BATCH_HINT}" if n - 1 in ranks else ""
        raise layer_error(
            where,
            f"expected one channels-first example of shape {wanted}, got {what} {shape}{hint}",
        )
    return n


def check_output_size(where: str, shape: Shape, out: tuple[int, ...], reason: str) -> None:
    """Raises unless every spatial size in `out` is >= 1; `reason` says how it was computed."""
    empty = [axis for axis, n in enumerate(out, 1) if n < 1]
    if empty:
        raise layer_error(
            where,
            f"the input of shape {shape} is too small: the output would have size "
            f"{out[empty[0] - 1]} along axis {empty[0]} ({reason})",
        )
