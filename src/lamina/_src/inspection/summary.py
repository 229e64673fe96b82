"""A model at a glance: every layer's output shape, parameters and FLOPs.

Nothing is computed: the model's trace runs under `jax.eval_shape`, so a
summary of a billion-parameter model takes milliseconds and no memory.

FLOPs are counted per example, a multiply-add as 2, for the arithmetic that
dominates a network; each layer counts its own (`Layer.flops`):

- `Dense(out)` on `in` features: `2 * in * out`, plus `out` for the bias
  (times the product of any extra leading axes of one example);
- `LayerNorm` over `d` features: `7 * d` (mean, subtract, square, variance
  sum, normalize, scale, offset);
- `residual`: one add per output element;
- activations (standalone or fused into `Dense`), dropout, reshapes,
  `parallel`, `Concat` and user layers that do not say: 0. Element-wise
  functions cost a few FLOPs per unit, negligible next to the weighted sums.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.checks import shape_of
from lamina._src.core.layer import Layer, Shape, check_layer_type
from lamina._src.core.params import abstract_trace, param_shapes


class SummaryRow(NamedTuple):
    """One layer in a `Summary`.

    Attributes:
      path: where the layer sits, e.g. `"serial[2]"`.
      name: the layer's name, e.g. `"Dense(10)"`.
      output_shape: the shape of one output example.
      params: number of parameters the layer holds itself (0 for
        combinators, whose children hold theirs).
      flops: floating-point operations per example (see the module notes).

    Example:
      >>> import lamina as lm
      >>> row = lm.summary(lm.mlp([16, 3]), (5,), show=False).rows[0]
      >>> row.path, row.name, row.output_shape, row.params
      ('serial[0]', 'Dense(16, relu)', (16,), 96)
    """

    path: str
    name: str
    output_shape: Any
    params: int
    flops: int


class Summary(NamedTuple):
    """What `summary` returns; `str(summary)` is a readable table.

    Attributes:
      name: the model's name.
      input_shape: the shape of one input example (a tuple or dict of
        shapes for a model of several inputs).
      output_shape: the shape of one output example.
      rows: one `SummaryRow` per layer, in the order they run.
      params: total number of parameters.
      flops: total FLOPs per example.
      param_bytes: memory the parameters take, in bytes.
      state: number of state values (e.g. BatchNorm's running statistics),
        which the forward pass updates and the optimizer does not train.
      state_bytes: memory the state takes, in bytes.

    Example:
      >>> import lamina as lm
      >>> info = lm.summary(lm.mlp([16, 3]), (5,), show=False)
      >>> info.output_shape, info.params, len(info.rows)
      ((3,), 147, 2)
    """

    name: str
    input_shape: Any
    output_shape: Any
    rows: tuple[SummaryRow, ...]
    params: int
    flops: int
    param_bytes: int
    state: int = 0
    state_bytes: int = 0

    def __str__(self) -> str:
        header = ("path", "layer", "output", "params", "FLOPs")
        lines = [
            (r.path or "(root)", r.name, str(r.output_shape), f"{r.params:,}", f"{r.flops:,}")
            for r in self.rows
        ]
        total = ("total", "", str(self.output_shape), f"{self.params:,}", f"{self.flops:,}")
        widths = [max(len(line[i]) for line in [header, *lines, total]) for i in range(5)]

        def fmt(line):
            left = [cell.ljust(w) for cell, w in zip(line[:3], widths)]
            right = [cell.rjust(w) for cell, w in zip(line[3:], widths[3:])]
            return "  ".join(left + right).rstrip()

        rule = "-" * len(fmt(header))
        return "\n".join(
            [f"{self.name} on inputs of shape {self.input_shape}", fmt(header), rule]
            + [fmt(line) for line in lines]
            + [rule, fmt(total), f"parameter memory: {_human_bytes(self.param_bytes)}; "
               "FLOPs per example, multiply-add = 2"]
            + ([f"state (not trained): {self.state:,} values, "
                f"{_human_bytes(self.state_bytes)}"] if self.state else [])
        )


def summary(
    model: Layer, input_shape: Shape, *, show: bool = True, input_dtype: Any = jnp.float32
) -> Summary:
    """Per-layer output shapes, parameter counts and FLOPs, without running the model.

    Args:
      model: a `Layer`.
      input_shape: the shape of one example, e.g. `(784,)`.
      show: print the table.
      input_dtype: the dtype of one example, e.g. `jnp.int32` for a model
        of token ids.

    Returns:
      A `Summary` (a NamedTuple with `rows` and totals); `str()` of it is the
      table that `show` prints.

    Example:
      >>> import lamina as lm
      >>> s = lm.summary(lm.mlp([256, 10]), (784,), show=False)
      >>> s.params, s.flops, s.param_bytes
      (203530, 406794, 814120)
      >>> print(s)
      serial(Dense(256, relu), Dense(10)) on inputs of shape (784,)
      path       layer             output   params    FLOPs
      -----------------------------------------------------
      serial[0]  Dense(256, relu)  (256,)  200,960  401,664
      serial[1]  Dense(10)         (10,)     2,570    5,130
      -----------------------------------------------------
      total                        (10,)   203,530  406,794
      parameter memory: 814,120 bytes (795.0 KiB); FLOPs per example, multiply-add = 2
    """
    check_layer_type("summary", model)
    output_shape, params = param_shapes(model, input_shape)
    state = jax.eval_shape(lambda: model.init_state(input_shape)) if model.stateful else None
    steps = abstract_trace(model, params, input_shape, input_dtype, state)
    rows = []
    for step in steps:
        # residual and parallel add a step of their own after their
        # children's, whose params include the children's: count those once.
        combinator = any(
            len(other.index) > len(step.index) and other.index[: len(step.index)] == step.index
            for other in steps
        )
        own = 0 if combinator else sum(leaf.size for leaf in jax.tree.leaves(step.params))
        flops = step.layer.flops(step) if step.layer is not None else 0
        rows.append(SummaryRow(step.path, step.name, shape_of(step.output), own, flops))
    leaves = jax.tree.leaves(params)
    result = Summary(
        name=model.name,
        input_shape=input_shape if isinstance(input_shape, dict) else tuple(input_shape),
        output_shape=output_shape,
        rows=tuple(rows),
        params=sum(leaf.size for leaf in leaves),
        flops=sum(row.flops for row in rows),
        param_bytes=_bytes(leaves),
        state=sum(leaf.size for leaf in jax.tree.leaves(state)),
        state_bytes=_bytes(jax.tree.leaves(state)),
    )
    if show:
        print(result)
    return result


def _bytes(leaves: list) -> int:
    return sum(leaf.size * np.dtype(leaf.dtype).itemsize for leaf in leaves)


def _human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n:,} bytes ({n / scale:.1f} {unit})"
    return f"{n:,} bytes"
