"""Recurrent layers: LSTM and GRU over one sequence, as one layer of PyTorch's.

A recurrent layer reads a sequence `x` of shape `(T, D)` one step at a time,
carrying a hidden state `h` (and, for the LSTM, a cell state `c`) from step to
step, and returns every step's `h`: shape `(T, hidden)`. The state starts at
zero, or at a state given with the input (`{"input": x, "h_0": ...}`), and
with `return_state=True` the final state comes back too, as torch's
`output, h_n` (`output, (h_n, c_n)` for the LSTM). Gates are computed from
`x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh`, with the weights stacked gate by
gate in PyTorch's order (LSTM: i, f, g, o; GRU: r, z, n), so
`torch.nn.LSTM(D, hidden, batch_first=True)`'s `weight_ih_l0`,
`weight_hh_l0`, `bias_ih_l0` and `bias_hh_l0` are lamina's `W_ih`, `W_hh`,
`b_ih` and `b_hh` unchanged.

The input projection does not depend on the state, so it is one matmul over
all steps before the loop, where the hardware sees a `(T, D) x (D, gH)`
product instead of T thin ones; only `h @ W_hh.T` stays inside. The loop is a
`jax.lax.scan`, so the compiled program is the same size for any T.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_count, check_float_input, check_input_shape
from lamina._src.core.errors import BATCH_HINT, layer_error
from lamina._src.core.fields import Check, Count, Flag
from lamina._src.core.spec import Param
from lamina._src.layers import initializers
from lamina._src.layers.reshape import is_several

Hidden = Annotated[int, Check(check_count, " (the size of the hidden state)")]
"""The size of a recurrent layer's hidden state, >= 1."""

def _times_transposed(x: jax.Array, W: jax.Array) -> jax.Array:
    # `x @ W.T` contracting W's axis 1 directly: XLA:CPU would otherwise copy
    # W into a transposed layout on every call (see dense.py). Contracting
    # x's last axis keeps a vmapped state (B, H) a plain (B, H) x (H, gH).
    return lax.dot_general(x, W, (((x.ndim - 1,), (1,)), ((), ())))


def _plus(z: jax.Array, b: jax.Array) -> jax.Array:
    return z + jnp.broadcast_to(b, z.shape)


class _Recurrent(Builtin):
    """What LSTM and GRU share: configuration, checks, params and FLOPs."""

    hidden: Hidden
    _: dataclasses.KW_ONLY
    num_layers: Count = 1
    bidirectional: Flag = False
    return_state: Flag = False

    _gates: ClassVar[int]
    _gate_names: ClassVar[str]
    _states: ClassVar[tuple[str, ...]]  # torch's names of the initial state, h_0 (and c_0)
    stochastic = False

    @property
    def name(self) -> str:
        return f"{type(self).__name__}({self.hidden})"

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _simple(self) -> bool:
        """One layer, one direction: params flat, as before num_layers existed."""
        return self.num_layers == 1 and not self.bidirectional

    def _units(self) -> list[tuple[str, int, bool]]:
        """`(params key, layer, reverse)` per layer and direction, in torch's order."""
        return [(f"l{i}" + ("_reverse" if reverse else ""), i, reverse)
                for i in range(self.num_layers) for reverse in (False, True)[: self._directions]]

    def _state_shape(self) -> tuple[int, int]:
        """The shape of `h_0`, `h_n` (and `c_0`, `c_n`) for one example, as torch's."""
        return (self.num_layers * self._directions, self.hidden)

    def _as_dict(self, value: Any, shapes: bool) -> Any:
        """torch's positional form `(input, hx)` (`hx = (h_0, c_0)` for the LSTM) as a dict.

        Of shapes (`shapes=True`), a tuple of ints is one sequence's shape,
        not that form.
        """
        if not isinstance(value, tuple) or (shapes and not is_several(value)):
            return value

        def one(part):  # one shape, or one array
            return isinstance(part, tuple) and not is_several(part) if shapes else (
                not isinstance(part, (tuple, list, dict)))

        hx = value[1] if len(value) == 2 and one(value[0]) else None
        states = (hx,) if len(self._states) == 1 else hx
        if not (isinstance(states, tuple) and len(states) == len(self._states)
                and all(one(s) for s in states)):
            form = "(input, (h_0, c_0))" if len(self._states) == 2 else "(input, h_0)"
            got = value if shapes else jax.tree.map(jnp.shape, value)
            raise layer_error(self.name, f"a tuple input must be torch's {form}, got {got}")
        return {"input": value[0], **dict(zip(self._states, states))}

    def check_input_shape(self, input_shape):
        input_shape = self._as_dict(input_shape, shapes=True)
        if not isinstance(input_shape, dict):
            return super().check_input_shape(input_shape)
        parts = ("input",) + self._states
        if "input" not in input_shape or set(input_shape) - set(parts) or (
                set(self._states) & set(input_shape) not in (set(), set(self._states))):
            both = " and ".join(map(repr, self._states))
            raise layer_error(
                self.name,
                f"expects an array (T, D) or a dict with 'input' (T, D) and the initial state "
                f"{both} {self._state_shape()}, as torch's forward arguments; got input shape "
                f"{input_shape!r}",
            )
        return {k: check_input_shape(self.name, v) for k, v in input_shape.items()}

    def output_shape(self, input_shape):
        input_shape = self._as_dict(input_shape, shapes=True)
        sequence = input_shape["input"] if isinstance(input_shape, dict) else input_shape
        if len(sequence) != 2:
            batch = f"\n{BATCH_HINT}" if len(sequence) == 3 else ""
            raise layer_error(
                self.name,
                f"expected input_shape (T, D): one sequence of T steps of D features, "
                f"got {sequence}{batch}",
            )
        for part in self._states:
            if isinstance(input_shape, dict) and part in input_shape and (
                    tuple(input_shape[part]) != self._state_shape()):
                raise layer_error(
                    self.name,
                    f"{part} must have shape {self._state_shape()} (num_layers * directions, "
                    f"hidden) for one example, got {tuple(input_shape[part])}",
                )
        out = (sequence[0], self.hidden * self._directions)
        if not self.return_state:
            return out
        return {"output": out, **{p.replace("_0", "_n"): self._state_shape() for p in self._states}}

    def init(self, key, input_shape):
        shape = self.check_input_shape(input_shape)
        out = self.output_shape(shape)
        # The params follow the sequence's shape, whatever else a dict input holds.
        return out, super().init(key, shape["input"] if isinstance(shape, dict) else shape)[1]

    def params_spec(self):
        if self._simple():
            return self._unit_spec(0, "l0")
        return {key: self._unit_spec(i, key) for key, i, _ in self._units()}

    def _unit_spec(self, layer: int, suffix: str) -> dict[str, Param]:
        """One layer and direction of torch.nn.LSTM / torch.nn.GRU, named as torch's."""
        gh, h = self._gates * self.hidden, self.hidden
        # torch.nn.LSTM/GRU draw every weight and bias from U(-1/sqrt(H), 1/sqrt(H)).
        init = initializers.uniform(1.0 / math.sqrt(h))
        g = f"{self._gates}H"
        if layer == 0:  # the input's features; later layers read the layer below
            w_ih = Param(lambda s: (gh, s[-1]), init, f"weight_ih_{suffix}", f"({g}, D)",
                         fits={1: -1})
        else:
            below = h * self._directions
            w_ih = Param(lambda s: (gh, below), init, f"weight_ih_{suffix}",
                         f"({g}, {'2H' if self.bidirectional else 'H'})")
        return {
            "W_ih": w_ih,
            "W_hh": Param(lambda s: (gh, h), init, f"weight_hh_{suffix}", f"({g}, H)"),
            "b_ih": Param(lambda s: (gh,), init, f"bias_ih_{suffix}", f"({g},)"),
            "b_hh": Param(lambda s: (gh,), init, f"bias_hh_{suffix}", f"({g},)"),
        }

    def params_note(self, input_shape, key):
        return (f" ({self._gates} gates {self._gate_names}, each of size "
                f"hidden={self.hidden})")

    def check_params(self, params, state, x):
        super().check_params(params, state, x["input"] if isinstance(x, dict) else x)

    def check_input(self, x, params):
        x = self._as_dict(x, shapes=False)
        if isinstance(x, dict):
            x = dict(x)
            self.check_input_shape({k: tuple(jnp.shape(v)) for k, v in x.items()})
            for part in self._states:
                if part in x:
                    x[part] = check_float_input(self.name, x[part])
            x["input"] = self._check_sequence(x["input"])
            self.output_shape({k: tuple(v.shape) for k, v in x.items()})
            return x
        return self._check_sequence(x)

    def _check_sequence(self, x):
        x = check_float_input(self.name, x)
        if x.ndim != 2:
            hint = (
                "; a single step is a sequence of length 1, x[None]" if x.ndim == 1 else ""
            )
            raise layer_error(
                self.name,
                f"expected one sequence of shape (T, D), got x with shape {x.shape}"
                f"{hint}.\n{BATCH_HINT}",
            )
        return x

    def forward(self, params, state, x, *, key, train):
        given = x if isinstance(x, dict) else {}
        x = given.get("input", x)
        finals = []
        for i in range(self.num_layers):
            outs = []
            for n, (key_, layer, reverse) in enumerate(self._units()):
                if layer != i:
                    continue
                unit = self._arrays(params if self._simple() else params[key_], x)
                # Unit n's state is entry n of torch's h_0: layers, then directions.
                start = tuple(given[p][n].astype(unit[0].dtype) if p in given else
                              jnp.zeros((self.hidden,), unit[0].dtype) for p in self._states)
                ys, final = self._scan(*unit, start, reverse)
                outs.append(ys)
                finals.append(final)
            x = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
        if not self.return_state:
            return x, state
        return {"output": x, **{p.replace("_0", "_n"): jnp.stack([f[j] for f in finals])
                                for j, p in enumerate(self._states)}}, state

    def _scan(self, x: Any, W_ih: Any, W_hh: Any, b_ih: Any, b_hh: Any, start: tuple,
              reverse: bool) -> tuple[Any, tuple]:
        """Every step's `h` of one layer and direction (`reverse`: from the last step back),
        and the state after the last step, from the state `start` (`(h,)` or `(h, c)`)."""
        raise NotImplementedError

    def _arrays(self, params, x):
        """`(x, W_ih, W_hh, b_ih, b_hh)` in one dtype."""
        arrays = (x,) + tuple(jnp.asarray(params[k]) for k in ("W_ih", "W_hh", "b_ih", "b_hh"))
        dtype = jnp.result_type(*arrays)
        return tuple(a.astype(dtype) for a in arrays)

    def flops(self, step):
        # Per step: the input and recurrent weighted sums, a multiply-add per
        # weight, and the two bias vectors. The element-wise gate math
        # (sigmoids, tanh, products) is a few FLOPs per unit and not counted,
        # as activations are not counted elsewhere.
        given = self._as_dict(step.input, shapes=False)
        sequence = given["input"] if isinstance(given, dict) else given
        steps, features = sequence.shape
        gh, total = self._gates * self.hidden, 0
        for _, layer, _ in self._units():
            d = features if layer == 0 else self.hidden * self._directions
            total += steps * (2 * d * gh + 2 * self.hidden * gh + 2 * gh)
        return total


class LSTM(_Recurrent):
    """A long short-term memory layer over one sequence, as one layer of `torch.nn.LSTM`.

    For each step `t`, with `z = x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh` split
    into four blocks of `hidden` in PyTorch's order:

        i, f, g, o = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
        c = f * c + i * g
        h = o * tanh(c)

    `h` and `c` start at zero, and the output is every step's `h`. With a
    dict input `{"input": x, "h_0": h0, "c_0": c0}`, or torch's positional
    form `(x, (h0, c0))` (per example: `(num_layers * directions, hidden)`
    each), they start there. The last step's output is `lm.Take(-1)` after the layer.

    Args:
      hidden: size of the hidden state, >= 1.
      num_layers: layers stacked, each reading the outputs of the one below,
        as torch's `num_layers`.
      bidirectional: also run each layer from the last step back and join
        both directions' `h` on the features (`2 * hidden` of them), as
        torch's `bidirectional=True`.
      return_state: also return the final state, as a dict `{"output",
        "h_n", "c_n"}` (torch's `output, (h_n, c_n)`); `lm.Select("output")`
        takes the sequence.

    With more than one layer or direction the params are a dict with one
    entry per layer and direction, `"l0"`, `"l0_reverse"`, `"l1"`, ..., each
    as below, named in torch as `weight_ih_l1_reverse` and so on.

    `init(key, (T, D))` returns `((T, hidden), params)` with params
    `{"W_ih": (4H, D), "W_hh": (4H, H), "b_ih": (4H,), "b_hh": (4H,)}`, each
    drawn uniform in +-1/sqrt(hidden) as torch does; they are torch's
    `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` unchanged.
    `apply(params, x)` takes one sequence `x` of shape `(T, D)`; batch it
    with `jax.vmap` or `lm.forward`.

    Raises:
      TypeError: `hidden` is not an int; at apply, a non-float input.
      ValueError: `hidden < 1`; at init or apply, an input that is not
        `(T, D)`, or a state of another shape.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.LSTM(8)
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 3))
      >>> out_shape, params["W_ih"].shape, params["W_hh"].shape
      ((5, 8), (32, 3), (32, 8))
      >>> layer.apply(params, jnp.ones((5, 3))).shape
      (5, 8)
    """

    _gates = 4
    _gate_names = "i, f, g, o"
    _states = ("h_0", "c_0")

    def _scan(self, x, W_ih, W_hh, b_ih, b_hh, start, reverse):
        # Both biases add linearly to every gate, so they join the projection.
        xz = _plus(_times_transposed(x, W_ih), b_ih + b_hh)

        def step(carry, xz_t):
            h, c = carry
            i, f, g, o = jnp.split(xz_t + _times_transposed(h, W_hh), 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        final, ys = lax.scan(step, start, xz, reverse=reverse)
        return ys, final


class GRU(_Recurrent):
    """A gated recurrent unit layer over one sequence, as one layer of `torch.nn.GRU`.

    For each step `t`, with the weights and biases split into three blocks of
    `hidden` in PyTorch's order (r, z, n):

        r = sigmoid(W_ir x_t + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x_t + b_iz + W_hz h + b_hz)
        n = tanh(W_in x_t + b_in + r * (W_hn h + b_hn))
        h = (1 - z) * n + z * h

    `h` starts at zero, and the output is every step's `h`. With a dict
    input `{"input": x, "h_0": h0}`, or torch's positional form `(x, h0)`
    (per example: `(num_layers * directions, hidden)`), it starts there. The last step's
    output is `lm.Take(-1)` after the layer.

    Args:
      hidden: size of the hidden state, >= 1.
      num_layers: layers stacked, each reading the outputs of the one below,
        as torch's `num_layers`.
      bidirectional: also run each layer from the last step back and join
        both directions' `h` on the features (`2 * hidden` of them), as
        torch's `bidirectional=True`.
      return_state: also return the final state, as a dict `{"output",
        "h_n"}` (torch's `output, h_n`); `lm.Select("output")` takes the
        sequence.

    With more than one layer or direction the params are a dict with one
    entry per layer and direction, `"l0"`, `"l0_reverse"`, `"l1"`, ..., each
    as below, named in torch as `weight_ih_l1_reverse` and so on.

    `init(key, (T, D))` returns `((T, hidden), params)` with params
    `{"W_ih": (3H, D), "W_hh": (3H, H), "b_ih": (3H,), "b_hh": (3H,)}`, each
    drawn uniform in +-1/sqrt(hidden) as torch does; they are torch's
    `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0` unchanged.
    `apply(params, x)` takes one sequence `x` of shape `(T, D)`; batch it
    with `jax.vmap` or `lm.forward`.

    Raises:
      TypeError: `hidden` is not an int; at apply, a non-float input.
      ValueError: `hidden < 1`; at init or apply, an input that is not
        `(T, D)`, or a state of another shape.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.GRU(8)
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 3))
      >>> out_shape, params["W_ih"].shape, params["W_hh"].shape
      ((5, 8), (24, 3), (24, 8))
      >>> layer.apply(params, jnp.ones((5, 3))).shape
      (5, 8)
    """

    _gates = 3
    _gate_names = "r, z, n"
    _states = ("h_0",)

    def _scan(self, x, W_ih, W_hh, b_ih, b_hh, start, reverse):
        H = self.hidden
        # b_hr and b_hz add linearly, so they join the projection; b_hn sits
        # inside r * (W_hn h + b_hn) and has to stay in the loop.
        b_rz = jnp.concatenate([b_hh[: 2 * H], jnp.zeros((H,), b_hh.dtype)])
        xz = _plus(_times_transposed(x, W_ih), b_ih + b_rz)
        b_hn = b_hh[2 * H :]

        def step(h, xz_t):
            hz = _times_transposed(h, W_hh)
            r = jax.nn.sigmoid(xz_t[:H] + hz[:H])
            z = jax.nn.sigmoid(xz_t[H : 2 * H] + hz[H : 2 * H])
            n = jnp.tanh(xz_t[2 * H :] + r * (hz[2 * H :] + b_hn))
            h = (1 - z) * n + z * h
            return h, h

        final, ys = lax.scan(step, start[0], xz, reverse=reverse)
        return ys, (final,)
