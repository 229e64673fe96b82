"""Self-attention and the transformer encoder block built on it.

In self-attention every position of a sequence looks at every other: each
position's vector is projected to a query, a key and a value; a position's
output is the average of all values, weighted by the softmax of its query's
dot products with all keys. Multi-head attention does this `num_heads` times
on slices of the features and joins the results with one more projection.

`TransformerEncoderLayer` composes attention, `LayerNorm`, `Dense` and
`residual` into the block of `torch.nn.TransformerEncoderLayer`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input
from lamina._src.core.errors import BATCH_HINT, layer_error
from lamina._src.core.fields import Check, Count, Flag, Positive
from lamina._src.core.layer import call_child
from lamina._src.core.spec import Param
from lamina._src.layers import initializers
from lamina._src.layers.combinators import residual, serial
from lamina._src.layers.dense import Dense, dense
from lamina._src.layers.norms import LayerNorm


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
    """

    num_heads: Count
    _: dataclasses.KW_ONLY
    causal: Flag = False
    use_bias: Flag = True

    stochastic = False

    def output_shape(self, input_shape):
        _sequence_shape(self.name, input_shape, self.num_heads)
        return input_shape

    def params_spec(self):
        # torch: xavier_uniform_ on in_proj_weight, out_proj is an nn.Linear
        # whose bias _reset_parameters then zeroes, as it does in_proj_bias.
        return {
            "qkv": {
                "W": Param(lambda s: (3 * s[-1], s[-1]), initializers.glorot_uniform(),
                           "in_proj_weight", "(3D, D)", fits={1: -1}),
                "b": Param(lambda s: (3 * s[-1],), initializers.zeros, "in_proj_bias", "(3D,)",
                           flag="use_bias"),
            },
            "out": {
                "W": Param(lambda s: (s[-1], s[-1]), initializers.torch_linear(),
                           "out_proj.weight", "(D, D)", fits={0: -1, 1: -1}),
                "b": Param(lambda s: (s[-1],), initializers.zeros, "out_proj.bias", "(D,)",
                           flag="use_bias"),
            },
        }

    def params_note(self, input_shape, key):
        return f" for inputs with D={input_shape[-1]} features"

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        _sequence_shape(self.name, x.shape, self.num_heads)
        return x

    def forward(self, params, state, x, *, key, train):
        T, D = x.shape
        n, h = self.num_heads, D // self.num_heads
        # Heads-major (n, T, h) and two dot_generals, the form XLA:CPU fuses
        # best (1.13x faster than jax.nn.dot_product_attention under vmap,
        # benchmarks/README.md); scores and softmax in at least float32.
        q, k, v = (jnp.transpose(a.reshape(T, n, h), (1, 0, 2))
                   for a in jnp.split(dense(params["qkv"], x), 3, axis=-1))
        wide = jnp.promote_types(q.dtype, jnp.float32)
        s = lax.dot_general(q, k, (((2,), (2,)), ((0,), (0,))), preferred_element_type=wide)
        s = s * jnp.asarray(h ** -0.5, wide)
        if self.causal:
            s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, jnp.finfo(wide).min)
        p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
        o = lax.dot_general(p, v, (((2,), (1,)), ((0,), (0,))))
        return dense(params["out"], jnp.transpose(o, (1, 0, 2)).reshape(T, D)), state

    def flops(self, step):
        # Projections: a multiply-add per weight and position (3D outputs for
        # q, k, v, then D for out), plus the biases. Attention: q @ k.T and
        # the weighted sum of values each cost 2 * T * T * H per head, so
        # 2 * T * T * D over all heads. The softmax, the 1/sqrt(H) scale and
        # the causal mask are not counted; masked scores are computed anyway.
        T, D = step.input.shape
        biases = 3 * D + D if "b" in step.params["qkv"] else 0
        projections = 2 * T * D * 3 * D + 2 * T * D * D + T * biases
        return projections + 2 * T * T * D + 2 * T * T * D


# torch.nn.TransformerEncoderLayer's activation strings; "gelu" is exact in
# both libraries, as in lm.ACTIVATIONS.
_ENCODER_ACTS = ("relu", "gelu")


def _encoder_act(where: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or value not in _ENCODER_ACTS:
        raise layer_error(
            where,
            f"act must be 'relu' or 'gelu' (torch's exact gelu), got {value!r}",
            ValueError if isinstance(value, str) else TypeError,
        )
    return value


EncoderAct = Annotated[str, Check(_encoder_act)]
"""The feed-forward activation of a transformer layer: "relu" or "gelu" (exact, as torch's)."""

# torch's module name -> where that module's params sit in the block's params
# tree, for norm_first True and False (see _encoder_block), in torch's
# state-dict order.
_TORCH_PLACES = {
    True: {"self_attn": (0, 0, 1), "linear1": (1, 0, 1), "linear2": (1, 0, 2),
           "norm1": (0, 0, 0), "norm2": (1, 0, 0)},
    False: {"self_attn": (0, 0), "linear1": (2, 0, 0), "linear2": (2, 0, 1),
            "norm1": (1,), "norm2": (3,)},
}


class TransformerEncoderLayer(Builtin):
    """A transformer encoder block: self-attention, then a feed-forward network.

    Both halves are residual. With `norm_first` (pre-norm) the block is
    `x = x + attn(norm1(x))`, then `x = x + ff(norm2(x))`; without it
    (post-norm, the original transformer) `x = norm1(x + attn(x))`, then
    `x = norm2(x + ff(x))`. `ff` is `Dense(ff_features, act)` then
    `Dense(D)`. Equal to `torch.nn.TransformerEncoderLayer(D, num_heads,
    ff_features, dropout=0.0, activation=act, batch_first=True,
    norm_first=norm_first, layer_norm_eps=eps)` (note torch's default is
    `norm_first=False`), with `src_mask` a causal mask when `causal`.

    The block is an `lm.serial` of `lm.residual`, `lm.LayerNorm`,
    `lm.MultiHeadAttention` and `lm.Dense`, so `lm.trace` and `lm.summary`
    show those layers; its params are that serial's tuple. `torch_params`
    and `params_from_torch` translate them to and from torch's state-dict
    keys (`self_attn.in_proj_weight`, ..., `norm2.bias`).

    Args:
      num_heads: the number of attention heads; must divide D.
      ff_features: the hidden size of the feed-forward network, >= 1.
      act: the feed-forward activation, `"relu"` or `"gelu"` (exact, as
        torch's, not tanh-approximated).
      norm_first: pre-norm (True) or post-norm (False).
      causal: if True, position `t` attends only to positions `<= t`.
      eps: the LayerNorms' eps, > 0.

    Raises:
      TypeError: a bad kind of argument; at apply, a non-float input.
      ValueError: a count below 1, an unknown `act`, `eps <= 0`; at init or
        apply, an input that is not `(T, D)` or whose D is not a multiple of
        `num_heads`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.TransformerEncoderLayer(2, 32, act="gelu")
      >>> out_shape, params = block.init(jax.random.key(0), (5, 8))
      >>> out_shape, block.apply(params, jnp.ones((5, 8))).shape
      ((5, 8), (5, 8))
      >>> sorted(block.torch_params(params))[:2]
      ['linear1.bias', 'linear1.weight']
    """

    num_heads: Count
    ff_features: Count
    _: dataclasses.KW_ONLY
    act: EncoderAct = "relu"
    norm_first: Flag = True
    causal: Flag = False
    eps: Positive = 1e-5

    stochastic = False

    def block(self, features: int) -> serial:
        """The `lm.serial` this layer runs on inputs with `features` (D) features."""
        return _encoder_block(self, features)

    def output_shape(self, input_shape):
        _sequence_shape(self.name, input_shape, self.num_heads)
        return input_shape

    def init(self, key, input_shape):
        shape = self.check_input_shape(input_shape)
        self.output_shape(shape)
        return self.block(shape[1]).init(key, shape)

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        _sequence_shape(self.name, x.shape, self.num_heads)
        return x

    def check_params(self, params, state, x):
        pass  # the block's layers check their own, naming their paths

    def forward(self, params, state, x, *, key, train):
        return call_child("", None, self.block(x.shape[1]), params, state, x, key, train)

    def torch_children(self, params):
        places = _TORCH_PLACES[self.norm_first]
        block = self.block(int(jnp.shape(_at(params, places["norm1"])["scale"])[0]))
        return [(module, _layer_at(block, place), place) for module, place in places.items()]


@functools.lru_cache(maxsize=256)
def _encoder_block(layer: TransformerEncoderLayer, features: int) -> serial:
    # Cached: apply builds the block on every (traced) call.
    attn = MultiHeadAttention(layer.num_heads, causal=layer.causal)
    ff = (Dense(layer.ff_features, layer.act), Dense(features))
    if layer.norm_first:
        return serial(
            residual(serial(LayerNorm(layer.eps), attn)),
            residual(serial(LayerNorm(layer.eps), *ff)),
        )
    return serial(residual(attn), LayerNorm(layer.eps), residual(serial(*ff)),
                  LayerNorm(layer.eps))


def _layer_at(layer: Any, place: tuple[int, ...]) -> Any:
    for i in place:
        layer = layer.layers[i] if hasattr(layer, "layers") else layer.layer
    return layer


def _at(params: Any, place: tuple[int, ...]) -> Any:
    for i in place:
        params = params[i]
    return params


