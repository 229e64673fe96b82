"""Multi-head attention, with torch's masks, for self- and cross-attention.

In self-attention every position of a sequence looks at every other: each
position's vector is projected to a query, a key and a value; a position's
output is the average of all values, weighted by the softmax of its query's
dot products with all keys. Multi-head attention does this `num_heads` times
on slices of the features and joins the results with one more projection.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input
from lamina._src.core.errors import BATCH_HINT, layer_error
from lamina._src.core.fields import Count, Flag
from lamina._src.core.spec import Param
from lamina._src.layers import initializers
from lamina._src.layers.dense import dense


def _sequence_shape(name: str, shape: tuple, num_heads: int) -> tuple[int, int]:
    """`(T, D)` from the shape of one example, or an error naming the layer."""
    if len(shape) != 2:
        hint = f"\n{BATCH_HINT}" if len(shape) == 3 else ""
        raise layer_error(
            name,
            f"expected one example of shape (T, D), T positions of D features, got "
            f"shape {shape}{hint}",
        )
    T, D = shape
    if D % num_heads:
        raise layer_error(
            name,
            f"the feature size D={D} must be divisible by num_heads={num_heads}, so that "
            f"each head gets D // num_heads features; got shape {shape}",
        )
    return T, D


_PARTS = ("query", "key", "value", "key_padding_mask", "attn_mask")
"""What a dict input of `MultiHeadAttention` may hold, named as torch's arguments."""


def _query_shape(shape: Any) -> Any:
    """The query's shape: the input's, or its `"query"` entry's for a dict input."""
    return shape["query"] if isinstance(shape, dict) else shape


def _features(shape: Any) -> int:
    return _query_shape(shape)[-1]


class MultiHeadAttention(Builtin):
    """Multi-head scaled dot-product self-attention on one sequence `(T, D)`.

    With `q, k, v = split(x @ W_qkv.T + b_qkv)` cut into `num_heads` heads of
    `H = D // num_heads` features, head `h` computes
    `softmax(q_h @ k_h.T / sqrt(H)) @ v_h`; the heads are joined back into
    `(T, D)` and projected by `W_out`. Computed by
    `jax.nn.dot_product_attention`. Equal to
    `torch.nn.MultiheadAttention(D, num_heads, bias=use_bias, batch_first=True)`
    called as `mha(x, x, x, need_weights=False)`, with a causal `attn_mask`
    when `causal`.

    For cross-attention and masks the input is a dict with torch's argument
    names: `{"query": (T, D), "key": (S, D), "value": (S, D),
    "key_padding_mask": (S,), "attn_mask": (T, S)}`. Only `"query"` is
    needed: `"key"` defaults to the query (self-attention) and `"value"` to
    the key. A mask is boolean, `True` where a query may NOT look (torch's
    convention), or float, added to the scores. Equal to torch's
    `mha(query, key, value, key_padding_mask=..., attn_mask=...)` per
    example; a query whose keys are all masked gets NaN, as in torch. Keys
    and values have the query's D features (torch's fused `in_proj`).

    Args:
      num_heads: the number of heads, >= 1; must divide D.
      causal: if True, position `t` attends only to positions `<= t`.
      use_bias: whether the projections have biases.

    A `Layer` with params `{"qkv": {"W": (3D, D), "b": (3D,)}, "out": {"W":
    (D, D), "b": (D,)}}` (no `"b"` without bias): `qkv` is torch's fused
    `in_proj_weight`/`in_proj_bias` (rows: queries, keys, values), `out`
    torch's `out_proj`. Initialised as torch: Glorot uniform `W_qkv`,
    `torch.nn.Linear`'s uniform `W_out`, zero biases.

    Raises:
      TypeError: a bad kind of argument; at apply, a non-float input.
      ValueError: `num_heads < 1`; at init or apply, an input that is not
        `(T, D)` or whose D is not a multiple of `num_heads`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.MultiHeadAttention(2, causal=True)
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 8))
      >>> out_shape, params["qkv"]["W"].shape, params["out"]["W"].shape
      ((5, 8), (24, 8), (8, 8))
      >>> layer.apply(params, jnp.ones((5, 8))).shape
      (5, 8)
      >>> cross = lm.MultiHeadAttention(2)  # queries from one sequence, keys from another
      >>> _, params = cross.init(jax.random.key(0), {"query": (5, 8), "key": (7, 8)})
      >>> pad = jnp.arange(7) >= 4  # the last 3 keys are padding
      >>> cross.apply(params, {"query": jnp.ones((5, 8)), "key": jnp.ones((7, 8)),
      ...                      "key_padding_mask": pad}).shape
      (5, 8)
    """

    num_heads: Count
    _: dataclasses.KW_ONLY
    causal: Flag = False
    use_bias: Flag = True

    stochastic = False

    def check_input_shape(self, input_shape):
        if isinstance(input_shape, dict):
            return {k: super(MultiHeadAttention, self).check_input_shape(v)
                    for k, v in self._check_parts(input_shape).items()}
        return super().check_input_shape(input_shape)

    def output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            self._check_shapes({k: tuple(v) for k, v in input_shape.items()})
            return tuple(input_shape["query"])
        _sequence_shape(self.name, input_shape, self.num_heads)
        return input_shape

    def _check_parts(self, parts: dict) -> dict:
        unknown = sorted(set(parts) - set(_PARTS))
        if unknown or "query" not in parts:
            raise layer_error(
                self.name,
                f"a dict input holds {', '.join(map(repr, _PARTS))} (at least 'query'), got "
                f"keys {sorted(parts)}",
            )
        return parts

    def _check_shapes(self, shapes: dict) -> None:
        """The dict input's parts against each other: (T, D), (S, D), (S,), (T, S)."""
        T, D = _sequence_shape(self.name, shapes["query"], self.num_heads)
        key = shapes.get("key", shapes["query"])
        S = key[0] if len(key) == 2 else None
        want = {"key": (S, D), "value": (S, D), "key_padding_mask": (S,), "attn_mask": (T, S)}
        for part, shape in shapes.items():
            if part != "query" and shape != want[part]:
                raise layer_error(
                    self.name,
                    f"{part} must have shape {want[part]} for a query of shape {(T, D)}"
                    + (f" and keys of shape {(S, D)}" if part != "key" else
                       " (S positions of the query's D features)")
                    + f", got {shape}",
                )

    def params_spec(self):
        # torch: xavier_uniform_ on in_proj_weight, out_proj is an nn.Linear
        # whose bias _reset_parameters then zeroes, as it does in_proj_bias.
        return {
            "qkv": {
                "W": Param(lambda s: (3 * _features(s), _features(s)),
                           initializers.glorot_uniform(), "in_proj_weight", "(3D, D)",
                           fits={1: -1}),
                "b": Param(lambda s: (3 * _features(s),), initializers.zeros, "in_proj_bias",
                           "(3D,)", flag="use_bias"),
            },
            "out": {
                "W": Param(lambda s: (_features(s), _features(s)), initializers.torch_linear(),
                           "out_proj.weight", "(D, D)", fits={0: -1, 1: -1}),
                "b": Param(lambda s: (_features(s),), initializers.zeros, "out_proj.bias", "(D,)",
                           flag="use_bias"),
            },
        }

    def params_note(self, input_shape, key):
        return f" for inputs with D={_features(input_shape)} features"

    def check_input(self, x, params):
        if not isinstance(x, dict):
            x = check_float_input(self.name, x)
            _sequence_shape(self.name, x.shape, self.num_heads)
            return x
        parts = dict(self._check_parts(x))
        for part in ("query", "key", "value"):
            if part in parts:
                parts[part] = check_float_input(self.name, parts[part])
        for part in ("key_padding_mask", "attn_mask"):
            if part in parts:
                mask = jnp.asarray(parts[part])
                if not (mask.dtype == jnp.bool_ or jnp.issubdtype(mask.dtype, jnp.floating)):
                    raise layer_error(
                        self.name,
                        f"{part} must be bool (True: may not look) or float (added to the "
                        f"scores), got {mask.dtype}",
                        TypeError,
                    )
                parts[part] = mask
        self._check_shapes({k: tuple(jnp.shape(v)) for k, v in parts.items()})
        return parts

    def check_params(self, params, state, x):
        super().check_params(params, state, _query_shape(x))

    def forward(self, params, state, x, *, key, train):
        parts = x if isinstance(x, dict) else {"query": x}
        query = parts["query"]
        T, D = query.shape
        n, h = self.num_heads, D // self.num_heads
        if "key" not in parts and "value" not in parts:
            projected = jnp.split(dense(params["qkv"], query), 3, axis=-1)
        else:  # torch's in_proj, its rows for queries, keys and values applied apart
            keys = parts.get("key", query)
            sources = (query, keys, parts.get("value", keys))
            W, b = params["qkv"]["W"], params["qkv"].get("b")
            projected = [dense({"W": w, **({} if b is None else {"b": c})}, a)
                         for a, w, c in zip(sources, jnp.split(W, 3),
                                            jnp.split(b, 3) if b is not None else (None,) * 3)]
        # Heads-major (n, T, h) and two dot_generals, the form XLA:CPU fuses
        # best (1.13x faster than jax.nn.dot_product_attention under vmap,
        # benchmarks/README.md); scores and softmax in at least float32.
        q, k, v = (jnp.transpose(a.reshape(a.shape[0], n, h), (1, 0, 2)) for a in projected)
        S = k.shape[1]
        wide = jnp.promote_types(q.dtype, jnp.float32)
        s = lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,))), preferred_element_type=wide)
        s = s * jnp.asarray(h ** -0.5, wide)
        if self.causal:
            s = jnp.where(jnp.tril(jnp.ones((T, S), bool)), s, jnp.finfo(wide).min)
        for part, mask in (("attn_mask", parts.get("attn_mask")),
                           ("key_padding_mask", parts.get("key_padding_mask"))):
            if mask is None:
                continue
            mask = mask if part == "attn_mask" else mask[None, :]
            # As torch: a True entry may not be looked at (-inf, so a query with
            # no key left gets NaN, not a silent average), a float one is added.
            s = (jnp.where(mask[None], -jnp.inf, s) if mask.dtype == jnp.bool_
                 else s + mask[None].astype(wide))
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        o = lax.dot_general(p, v, (((2,), (1,)), ((0,), (0,))))
        return dense(params["out"], jnp.transpose(o, (1, 0, 2)).reshape(T, D)), state

    def flops(self, step):
        # Projections: a multiply-add per weight and position (3D outputs for
        # q, k, v, then D for out), plus the biases. Attention: q @ k.T and
        # the weighted sum of values each cost 2 * T * T * H per head, so
        # 2 * T * T * D over all heads. The softmax, the 1/sqrt(H) scale and
        # the causal mask are not counted; masked scores are computed anyway.
        inputs = step.input if isinstance(step.input, dict) else {"query": step.input}
        T, D = inputs["query"].shape
        S = inputs.get("key", inputs["query"]).shape[0]
        biases = 3 * D + D if "b" in step.params["qkv"] else 0
        projections = 2 * T * D * D + 2 * S * D * 2 * D + 2 * T * D * D + T * biases
        return projections + 2 * T * S * D + 2 * T * S * D
