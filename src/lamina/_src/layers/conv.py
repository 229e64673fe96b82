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
from typing import TYPE_CHECKING, Mapping, Optional, Union

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, size
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Count, Flag, Init
from lamina._src.core.layer import Shape
from lamina._src.core.record import note
from lamina._src.core.spec import Param, depends_on_input
from lamina._src.layers import initializers
from lamina._src.layers.activations import Act, ActivationLike, act_name, activation_fn
from lamina._src.layers.windows import (
    PAD_MODES,
    ConvPadding,
    IntOrTuple,
    Padding,
    PaddingMode,
    TransposePadding,
    Window,
    check_example,
    check_output_size,
    per_axis,
    spatial_rank,
)

_DIMENSIONS = {
    1: ("NCH", "OIH", "NCH"),
    2: ("NCHW", "OIHW", "NCHW"),
    3: ("NCDHW", "OIDHW", "NCDHW"),
}


class _Conv(Builtin):
    """What `Conv` and `ConvTranspose` share; subclasses are dataclasses with the same fields."""

    if TYPE_CHECKING:  # the fields both declare, for type checkers of the methods here
        out_channels: int
        kernel_size: IntOrTuple
        _: dataclasses.KW_ONLY
        stride: IntOrTuple
        padding: Union[IntOrTuple, str]
        dilation: IntOrTuple
        groups: int
        act: ActivationLike
        use_bias: bool

    transposed = False
    stochastic = False

    def check_config(self):
        where = f"{type(self).__name__}({self.out_channels})"
        tuples = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), tuple)}
        spatial_rank(where, **tuples)
        if self.out_channels % self.groups:
            raise layer_error(
                where, f"out_channels={self.out_channels} must be divisible by groups={self.groups}"
            )

    @property
    def name(self) -> str:
        act = act_name(self.act)
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

    @property
    def _layout(self) -> str:
        return "(in, out // groups, *kernel)" if self.transposed else "(out, in // groups, *kernel)"

    def _check_channels(self, shape: Shape, what: str) -> None:
        if shape[0] % self.groups:
            raise layer_error(
                self.name,
                f"got {what} {shape}: its {shape[0]} channels must be divisible by "
                f"groups={self.groups}",
            )

    def output_shape(self, input_shape):
        n = check_example(self.name, input_shape, self._rank(), "input_shape")
        self._check_channels(input_shape, "input_shape")
        return (self.out_channels,) + self._output_spatial(input_shape, n)

    def params_spec(self):
        def w_shape(s):
            return self._w_shape(s[0], len(s) - 1)

        # torch reads fan_in from weight axis 1 in both layouts, so a
        # transposed convolution's fan_in counts its output channels.
        default_b = depends_on_input(lambda s: initializers.torch_bias(size(w_shape(s)[1:])))
        return {  # torch.nn.ConvNd / ConvTransposeNd's weight and bias
            "W": Param(w_shape, self.w_init or initializers.torch_linear(), "weight",
                       self._layout),
            "b": Param(lambda s: (self.out_channels,), self.b_init or default_b, "bias",
                       "(out,)", flag="use_bias"),
        }

    def params_note(self, input_shape, key):
        return f" {self._layout} for x of shape {input_shape}" if key == "W" else ""

    def check_input(self, x, params):
        """`x` checked against the layer and, for a friendlier message, against `W`'s channels."""
        where = self.name
        x = check_float_input(where, x)
        W = params.get("W") if isinstance(params, Mapping) else None
        w_shape = tuple(getattr(W, "shape", ()))
        rank = self._rank()
        if rank is None and len(w_shape) - 2 in (1, 2, 3):
            rank = len(w_shape) - 2
        n = check_example(where, x.shape, rank, "x with shape")
        self._check_channels(x.shape, "x with shape")
        want = self._w_shape(x.shape[0], n)
        channels = 0 if self.transposed else 1
        if (W is not None and w_shape != want and len(w_shape) == len(want)
                and w_shape[:channels] + w_shape[channels + 1:]
                == want[:channels] + want[channels + 1:]):
            per_group = w_shape[channels] * (self.groups if channels else 1)
            raise layer_error(
                where,
                f"expected input with {per_group} channels (W has shape {w_shape}, "
                f"layout {self._layout}, groups={self.groups}), got x with shape {x.shape}",
            )
        self._output_spatial(x.shape, n)
        return x

    def forward(self, params, state, x, *, key, train):
        W, b = params["W"], params.get("b")
        dtype = jnp.result_type(x, W, *([b] if b is not None else []))
        x, W = x.astype(dtype), W.astype(dtype)
        n = x.ndim - 1
        z = self._convolve(x[None], W, n)[0]
        if b is not None:
            z = z + jnp.reshape(b.astype(dtype), (-1,) + (1,) * n)
        note(weighted_sum=z, act=act_name(self.act))
        return activation_fn(self.act)(z), state


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
      padding_mode: what the padding holds, as torch's: `"zeros"`,
        `"reflect"` (mirrored without the edge), `"replicate"` (the edge
        repeated) or `"circular"` (wrapped around).

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

    out_channels: Count
    kernel_size: Window
    _: dataclasses.KW_ONLY
    stride: Window = 1
    padding: ConvPadding = 0
    dilation: Window = 1
    groups: Count = 1
    act: Act = None
    use_bias: Flag = True
    w_init: Init = None
    b_init: Init = None
    padding_mode: PaddingMode = "zeros"

    def check_config(self):
        super().check_config()
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
        return [(p, p) for p in per_axis(self.padding, n)]  # type: ignore[arg-type]  # not a str here

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
        # torch's limits: a reflection has size - 1 values to mirror, a wrap size.
        room = {"reflect": 1, "circular": 0}.get(self.padding_mode)
        for axis, (size_, (lo, hi)) in enumerate(zip(shape[1:], self._pads(n)), 1):
            if room is not None and max(lo, hi) > size_ - room:
                raise layer_error(
                    self.name,
                    f"padding_mode={self.padding_mode!r} pads axis {axis} by {max(lo, hi)}, "
                    f"but the input of shape {shape} has only {size_} there (at most "
                    f"{size_ - room} can be padded)",
                )
        return out

    def _convolve(self, x: jax.Array, W: jax.Array, n: int) -> jax.Array:
        pads = self._pads(n)
        mode = PAD_MODES[self.padding_mode]
        if mode is not None:  # pad first, as torch does, then convolve without
            x = jnp.pad(x, [(0, 0), (0, 0)] + pads, mode=mode)
            pads = [(0, 0)] * n
        return lax.conv_general_dilated(
            x, W,
            window_strides=per_axis(self.stride, n),
            padding=pads,
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

    out_channels: Count
    kernel_size: Window
    _: dataclasses.KW_ONLY
    stride: Window = 1
    padding: TransposePadding = 0
    output_padding: Padding = 0
    dilation: Window = 1
    groups: Count = 1
    act: Act = None
    use_bias: Flag = True
    w_init: Init = None
    b_init: Init = None

    transposed = True

    def check_config(self):
        super().check_config()
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
