"""Convolution: one small dense layer slid over every position of an image.

For one channels-first example `x` of shape `(C_in, *spatial)` and weights
`W` of shape `(C_out, C_in // groups, *kernel)` (PyTorch's `nn.ConvNd`
layout), output channel `o` at position `p` is the weighted sum of the
kernel-sized patch of `x` under `p` (its channels in `o`'s group), plus
`b[o]`, then the activation: a dense layer applied to every patch with the
same weights. The rank of the example, `(C, L)`, `(C, H, W)` or
`(C, D, H, W)`, makes it a 1-, 2- or 3-D convolution.

`ConvTranspose` is the linear map whose matrix is the transpose of a
`Conv`'s (the gradient of a convolution with respect to its input): each
input position spreads a kernel-sized patch over a larger output, so it
undoes a strided `Conv`'s shrinking of the shape.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.layers import initializers
from lamina._src.layers.activations import (
    ActivationLike,
    activation_fn,
    canonical_activation,
    resolve_activation,
)
from lamina._src.layers.dense import BATCH_HINT
from lamina._src.core.errors import layer_error
from lamina._src.core.layer import (
    Builtin,
    Shape,
    TraceStep,
    check_count,
    check_float_input,
    check_input_shape,
    check_key,
    frozen,
    size,
)

IntOrTuple = Union[int, tuple[int, ...]]
"""A per-axis setting: one int for every spatial axis, or one int per axis."""

EXAMPLE_SHAPES = {1: "(C, L)", 2: "(C, H, W)", 3: "(C, D, H, W)"}
"""One channels-first example, by number of spatial axes."""

_DIMENSIONS = {
    1: ("NCH", "OIH", "NCH"),
    2: ("NCHW", "OIHW", "NCHW"),
    3: ("NCDHW", "OIDHW", "NCDHW"),
}


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
        wanted = [EXAMPLE_SHAPES[r] for r in ranks]
        wanted = wanted[0] if len(wanted) == 1 else f"{', '.join(wanted[:-1])} or {wanted[-1]}"
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


class _Conv(Builtin):
    """What `Conv` and `ConvTranspose` share; subclasses are `@frozen` dataclasses."""

    transposed = False
    torch_names = {"W": "weight", "b": "bias"}  # torch.nn.ConvNd, ConvTransposeNd

    def _check_config(self, tuple_args: dict[str, Any]) -> None:
        out = check_count(type(self).__name__, "out_channels", self.out_channels)
        object.__setattr__(self, "out_channels", out)
        where = f"{type(self).__name__}({out})"
        for arg, minimum in tuple_args.items():
            value = getattr(self, arg)
            if arg == "padding" and isinstance(value, str):
                if value not in ("same", "valid"):
                    raise layer_error(
                        where,
                        f"padding must be an int, a tuple of ints, 'same' or 'valid', "
                        f"got {value!r}",
                    )
                continue
            object.__setattr__(self, arg, int_or_tuple(where, arg, value, minimum))
        spatial_rank(where, **{arg: getattr(self, arg) for arg in tuple_args})
        groups = check_count(where, "groups", self.groups)
        object.__setattr__(self, "groups", groups)
        if out % groups:
            raise layer_error(
                where, f"out_channels={out} must be divisible by groups={groups}"
            )
        object.__setattr__(self, "act", canonical_activation(self.act, where))
        if self.use_bias not in (True, False):
            raise layer_error(
                where,
                f"use_bias must be True or False, got {type(self.use_bias).__name__} "
                f"{self.use_bias!r}",
                TypeError,
            )
        for arg in ("w_init", "b_init"):
            value = getattr(self, arg)
            if value is not None and not callable(value):
                raise layer_error(
                    where,
                    f"{arg} must be an initializer (key, shape, dtype) -> array, got "
                    f"{type(value).__name__} {value!r}",
                    TypeError,
                )

    @property
    def name(self) -> str:
        act = resolve_activation(self.act)[1]
        parts = [str(self.out_channels), str(self.kernel_size)] + ([act] if act else [])
        return f"{type(self).__name__}({', '.join(parts)})"

    def _rank(self) -> Optional[int]:
        return spatial_rank(self.name, **{
            f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), tuple)
        })

    def _w_shape(self, in_channels: int, n: int) -> Shape:
        kernel = per_axis(self.kernel_size, n)
        if self.transposed:
            return (in_channels, self.out_channels // self.groups) + kernel
        return (self.out_channels, in_channels // self.groups) + kernel

    def _check_channels(self, shape: Shape, what: str) -> None:
        if shape[0] % self.groups:
            raise layer_error(
                self.name,
                f"got {what} {shape}: its {shape[0]} channels must be divisible by "
                f"groups={self.groups}",
            )

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape)
        n = check_example(self.name, shape, self._rank(), "input_shape")
        self._check_channels(shape, "input_shape")
        out_shape = (self.out_channels,) + self._output_spatial(shape, n)
        w_shape = self._w_shape(shape[0], n)
        # torch reads fan_in from weight axis 1 in both layouts, so a
        # transposed convolution's fan_in counts its output channels.
        fan_in = size(w_shape[1:])
        w_key, b_key = jax.random.split(key)
        w_init = self.w_init or initializers.torch_linear()
        params = {"W": initializers.init_weight(w_init, w_key, w_shape, jnp.float32)}
        if self.use_bias:
            b_init = self.b_init or initializers.torch_bias(fan_in)
            params["b"] = initializers.init_weight(
                b_init, b_key, (self.out_channels,), jnp.float32
            )
        return out_shape, params

    def _checked(self, params: Any, x: Any) -> tuple[jax.Array, jax.Array, Optional[jax.Array]]:
        """`(x, W, b)` after the layer's checks, in one dtype (`b` is None without bias)."""
        where = self.name
        x = check_float_input(where, x)
        layout = (
            "(in, out // groups, *kernel)" if self.transposed else "(out, in // groups, *kernel)"
        )
        if not isinstance(params, Mapping) or "W" not in params:
            got = (
                f"a dict with keys {sorted(params)}"
                if isinstance(params, Mapping)
                else type(params).__name__
            )
            raise layer_error(
                where,
                f"expected params {{'W': {layout}, 'b': (out,)}}, got {got}",
                ValueError if isinstance(params, Mapping) else TypeError,
            )
        extra = sorted(set(params) - {"W", "b"})
        if extra:
            raise layer_error(where, f"unexpected params keys {extra}; expected 'W' and 'b'")
        W = params["W"]
        w_shape = tuple(getattr(W, "shape", ()))
        rank = self._rank()
        if rank is None and len(w_shape) - 2 in (1, 2, 3):
            rank = len(w_shape) - 2
        n = check_example(where, x.shape, rank, "x with shape")
        self._check_channels(x.shape, "x with shape")
        want = self._w_shape(x.shape[0], n)
        if w_shape != want:
            channels = 0 if self.transposed else 1
            if (
                len(w_shape) == len(want)
                and w_shape[:channels] + w_shape[channels + 1:]
                == want[:channels] + want[channels + 1:]
            ):
                per_group = w_shape[channels] * (self.groups if channels else 1)
                raise layer_error(
                    where,
                    f"expected input with {per_group} channels (W has shape {w_shape}, "
                    f"layout {layout}, groups={self.groups}), got x with shape {x.shape}",
                )
            raise layer_error(
                where, f"expected W of shape {want} {layout} for x of shape {x.shape}, "
                f"got {w_shape}",
            )
        has_b = "b" in params
        if has_b != self.use_bias:
            raise layer_error(
                where,
                "params hold a bias 'b' but the layer was built with use_bias=False"
                if has_b
                else "params have no bias 'b' but the layer was built with use_bias=True",
            )
        b = params.get("b")
        if has_b and tuple(getattr(b, "shape", ())) != (self.out_channels,):
            raise layer_error(
                where,
                f"expected b of shape ({self.out_channels},), got {tuple(getattr(b, 'shape', ()))}",
            )
        dtype = jnp.result_type(x, W, *([b] if has_b else []))
        return x.astype(dtype), W.astype(dtype), (b.astype(dtype) if has_b else None)

    def weighted_sum(self, params, x):
        """The convolution plus the bias, before the activation, after the layer's checks."""
        x, W, b = self._checked(params, x)
        n = x.ndim - 1
        self._output_spatial(x.shape, n)
        z = self._convolve(x[None], W, n)[0]
        if b is not None:
            z = z + jnp.reshape(b, (-1,) + (1,) * n)
        return z

    def apply(self, params, x, *, key=None):
        return activation_fn(self.act)(self.weighted_sum(params, x))

    def trace(self, params, x, *, key=None):
        z = self.weighted_sum(params, x)
        y = activation_fn(self.act)(z)
        act = resolve_activation(self.act)[1]
        return y, [TraceStep("", (), self.name, x, params, z, y, self, act)]


@frozen
class Conv(_Conv):
    """A 1-, 2- or 3-D convolution, as `torch.nn.Conv1d`/`Conv2d`/`Conv3d`.

    One example is channels-first: `(C, L)`, `(C, H, W)` or `(C, D, H, W)`;
    its rank picks the kind of convolution. Along each spatial axis the
    output has size `(n + pad_lo + pad_hi - dilation * (kernel - 1) - 1)
    // stride + 1`.

    Args:
      out_channels: number of output channels, >= 1, divisible by `groups`.
      kernel_size: the window, an int for every spatial axis or a tuple with
        one int per axis (a tuple fixes the rank).
      stride: step between windows, an int or a tuple, >= 1.
      padding: zeros added on both sides of each spatial axis, an int or a
        tuple (>= 0); `"valid"` for none; or `"same"` for an output as large
        as the input (stride 1 only), with torch's split of the total
        `dilation * (kernel - 1)`: the odd one out goes on the right.
      dilation: spacing between kernel taps, an int or a tuple, >= 1.
      groups: splits the channels into this many groups convolved
        separately; `groups == C` is a depthwise convolution.
      act: activation applied after the bias: a name, a callable or `None`.
      use_bias: whether the layer has a bias `b`.
      w_init: initializer for `W`; the default matches torch (uniform in
        +-1/sqrt(fan_in), fan_in = `in // groups * prod(kernel)`).
      b_init: initializer for `b`; the default is uniform in +-1/sqrt(fan_in).

    `init(key, (C, *spatial))` returns `((out_channels, *out_spatial),
    {"W": (out_channels, C // groups, *kernel), "b": (out_channels,)})`,
    PyTorch's layout: torch's `weight` and `bias` copy over as they are.

    Raises:
      ValueError: a value out of range, tuples of different lengths,
        `out_channels` not divisible by `groups`, an unknown padding string,
        or `"same"` with a stride > 1.
      TypeError: a value of the wrong kind.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Conv(8, 3, padding="same", act="relu")
      >>> out_shape, params = layer.init(jax.random.key(0), (3, 32, 32))
      >>> out_shape, params["W"].shape, layer.apply(params, jnp.ones((3, 32, 32))).shape
      ((8, 32, 32), (8, 3, 3, 3), (8, 32, 32))
      >>> lm.Conv(8, [3, 3], stride=2)
      Conv(8, (3, 3), stride=2)
    """

    out_channels: int
    kernel_size: IntOrTuple
    _: dataclasses.KW_ONLY
    stride: IntOrTuple = 1
    padding: Union[IntOrTuple, str] = 0
    dilation: IntOrTuple = 1
    groups: int = 1
    act: ActivationLike = None
    use_bias: bool = True
    w_init: Optional[Callable[..., jax.Array]] = None
    b_init: Optional[Callable[..., jax.Array]] = None

    def __post_init__(self):
        self._check_config({"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1})
        if self.padding == "same" and any(s != 1 for s in per_axis(self.stride, 1)):
            raise layer_error(
                self.name,
                f"padding='same' is not supported for strided convolutions (stride="
                f"{self.stride!r}), as in torch.nn.ConvNd; give the padding as ints",
            )

    def _pads(self, n: int) -> list[tuple[int, int]]:
        if self.padding == "valid":
            return [(0, 0)] * n
        if self.padding == "same":
            pads = []
            for k, d in zip(per_axis(self.kernel_size, n), per_axis(self.dilation, n)):
                total = d * (k - 1)
                pads.append((total // 2, total - total // 2))  # torch: odd one on the right
            return pads
        return [(p, p) for p in per_axis(self.padding, n)]

    def _output_spatial(self, shape: Shape, n: int) -> tuple[int, ...]:
        out = tuple(
            (size_ + lo + hi - d * (k - 1) - 1) // s + 1
            for size_, (lo, hi), k, s, d in zip(
                shape[1:], self._pads(n), per_axis(self.kernel_size, n),
                per_axis(self.stride, n), per_axis(self.dilation, n),
            )
        )
        check_output_size(
            self.name, shape, out,
            "the padded input must be at least as large as the dilated kernel, "
            "dilation * (kernel - 1) + 1",
        )
        return out

    def _convolve(self, x: jax.Array, W: jax.Array, n: int) -> jax.Array:
        return lax.conv_general_dilated(
            x, W,
            window_strides=per_axis(self.stride, n),
            padding=self._pads(n),
            rhs_dilation=per_axis(self.dilation, n),
            dimension_numbers=_DIMENSIONS[n],
            feature_group_count=self.groups,
        )

    def flops(self, step):
        # A multiply-add per weight for every output position, plus the bias.
        W = step.params["W"]
        positions = size(step.output.shape[1:])
        bias = size(step.output.shape) if "b" in step.params else 0
        return 2 * positions * W.shape[0] * size(W.shape[1:]) + bias


@frozen
class ConvTranspose(_Conv):
    """A 1-, 2- or 3-D transposed convolution, as `torch.nn.ConvTranspose1d/2d/3d`.

    Each input position adds `W`'s kernel, scaled by its values, into the
    output at `stride` times its position: the transpose of `Conv`'s linear
    map. Along each spatial axis the output has size `(n - 1) * stride -
    2 * padding + dilation * (kernel - 1) + output_padding + 1`.

    Args:
      out_channels: number of output channels, >= 1, divisible by `groups`.
      kernel_size: the window, an int or a tuple with one int per spatial axis.
      stride: the upsampling factor, an int or a tuple, >= 1.
      padding: `dilation * (kernel - 1) - padding` zeros are added on each
        side of the dilated input, as in torch: an int or a tuple, >= 0.
      output_padding: extra size on the right of each output axis, to pick
        among the sizes a strided `Conv` maps to one; smaller than the
        stride or the dilation of its axis.
      dilation: spacing between kernel taps, an int or a tuple, >= 1.
      groups: number of channel groups transposed separately.
      act: activation applied after the bias: a name, a callable or `None`.
      use_bias: whether the layer has a bias `b`.
      w_init: initializer for `W`; the default matches torch: uniform in
        +-1/sqrt(fan_in) with torch's fan_in = `out // groups * prod(kernel)`
        (read from weight axis 1).
      b_init: initializer for `b`; the default is uniform in +-1/sqrt(fan_in).

    `init(key, (C, *spatial))` returns `((out_channels, *out_spatial),
    {"W": (C, out_channels // groups, *kernel), "b": (out_channels,)})`,
    PyTorch's layout.

    Raises:
      ValueError: a value out of range, tuples of different lengths,
        `out_channels` not divisible by `groups`, or an `output_padding` not
        smaller than the stride or the dilation.
      TypeError: a value of the wrong kind.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.ConvTranspose(4, 2, stride=2)
      >>> out_shape, params = layer.init(jax.random.key(0), (8, 16, 16))
      >>> out_shape, params["W"].shape
      ((4, 32, 32), (8, 4, 2, 2))
    """

    out_channels: int
    kernel_size: IntOrTuple
    _: dataclasses.KW_ONLY
    stride: IntOrTuple = 1
    padding: IntOrTuple = 0
    output_padding: IntOrTuple = 0
    dilation: IntOrTuple = 1
    groups: int = 1
    act: ActivationLike = None
    use_bias: bool = True
    w_init: Optional[Callable[..., jax.Array]] = None
    b_init: Optional[Callable[..., jax.Array]] = None

    transposed = True

    def __post_init__(self):
        if isinstance(self.padding, str):
            raise layer_error(
                f"ConvTranspose({self.out_channels!r})",
                f"padding must be an int or a tuple of ints, got {self.padding!r} "
                f"(torch.nn.ConvTransposeNd takes no padding strings)",
            )
        self._check_config({"kernel_size": 1, "stride": 1, "padding": 0,
                            "output_padding": 0, "dilation": 1})
        n = self._rank() or 1
        for op, s, d in zip(*(per_axis(getattr(self, arg), n)
                              for arg in ("output_padding", "stride", "dilation"))):
            if op >= s and op >= d:
                raise layer_error(
                    self.name,
                    f"output_padding must be smaller than either stride or dilation, as in "
                    f"torch; got output_padding={self.output_padding!r}, stride="
                    f"{self.stride!r}, dilation={self.dilation!r}",
                )

    def _output_spatial(self, shape: Shape, n: int) -> tuple[int, ...]:
        out = tuple(
            (size_ - 1) * s - 2 * p + d * (k - 1) + op + 1
            for size_, k, s, p, op, d in zip(
                shape[1:], *(per_axis(getattr(self, arg), n) for arg in (
                    "kernel_size", "stride", "padding", "output_padding", "dilation"))
            )
        )
        check_output_size(
            self.name, shape, out,
            "(n - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1",
        )
        return out

    def _convolve(self, x: jax.Array, W: jax.Array, n: int) -> jax.Array:
        # The transpose of a strided convolution is a convolution of the
        # input spread out by the stride (lhs_dilation) with the kernel
        # flipped and its in/out axes swapped within each group.
        g = self.groups
        c_in, c_out_g = W.shape[:2]
        kernel = W.shape[2:]
        W = jnp.reshape(W, (g, c_in // g, c_out_g) + kernel)
        W = jnp.reshape(jnp.swapaxes(W, 1, 2), (g * c_out_g, c_in // g) + kernel)
        W = jnp.flip(W, axis=tuple(range(2, 2 + n)))
        pads = [
            (d * (k - 1) - p, d * (k - 1) - p + op)
            for k, p, op, d in zip(*(per_axis(getattr(self, arg), n) for arg in (
                "kernel_size", "padding", "output_padding", "dilation")))
        ]
        return lax.conv_general_dilated(
            x, W,
            window_strides=(1,) * n,
            padding=pads,
            lhs_dilation=per_axis(self.stride, n),
            rhs_dilation=per_axis(self.dilation, n),
            dimension_numbers=_DIMENSIONS[n],
            feature_group_count=g,
        )

    def flops(self, step):
        # Every input value is multiplied into every weight of its group.
        W = step.params["W"]
        positions = size(step.input.shape[1:])
        bias = size(step.output.shape) if "b" in step.params else 0
        return 2 * positions * W.shape[0] * size(W.shape[1:]) + bias
