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
import numbers
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from lamina._src.layers import initializers
from lamina._src.layers.combinators import residual, serial
from lamina._src.layers.dense import BATCH_HINT, Dense, dense
from lamina._src.core.errors import layer_error
from lamina._src.core.layer import (
    Builtin,
    Layer,
    check_count,
    check_float_input,
    check_input_shape,
    check_key,
    frozen,
)
from lamina._src.layers.normalization import LayerNorm


def _check_flag(owner: str, arg: str, value: Any) -> bool:
    # isinstance, not `in (True, False)`: 1.0 == True would slip through.
    if not isinstance(value, (bool, np.bool_)):
        raise layer_error(
            owner, f"{arg} must be True or False, got {type(value).__name__} {value!r}", TypeError
        )
    return bool(value)


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


@frozen
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

    num_heads: int
    _: dataclasses.KW_ONLY
    causal: bool = False
    use_bias: bool = True

    def __post_init__(self):
        check_count("MultiHeadAttention", "num_heads", self.num_heads)
        for flag in ("causal", "use_bias"):
            value = _check_flag("MultiHeadAttention", flag, getattr(self, flag))
            object.__setattr__(self, flag, value)

    @property
    def name(self) -> str:
        return repr(self)

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape)
        _, D = _sequence_shape(self.name, shape, self.num_heads)
        qkv_key, out_key = jax.random.split(key)
        # torch: xavier_uniform_ on in_proj_weight, out_proj is an nn.Linear
        # whose bias _reset_parameters then zeroes, as it does in_proj_bias.
        params = {
            "qkv": {"W": initializers.glorot_uniform()(qkv_key, (3 * D, D))},
            "out": {"W": initializers.torch_linear()(out_key, (D, D))},
        }
        if self.use_bias:
            params["qkv"]["b"] = jnp.zeros((3 * D,))
            params["out"]["b"] = jnp.zeros((D,))
        return shape, params

    def apply(self, params, x, *, key=None):
        x = check_float_input(self.name, x)
        T, D = _sequence_shape(self.name, x.shape, self.num_heads)
        self._check_params(params, D)
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
        return dense(params["out"], jnp.transpose(o, (1, 0, 2)).reshape(T, D))

    def _check_params(self, params: Any, D: int) -> None:
        layout = "{'qkv': {'W': (3D, D), 'b': (3D,)}, 'out': {'W': (D, D), 'b': (D,)}}"
        want = {"qkv": (3 * D, D), "out": (D, D)}
        if not isinstance(params, Mapping) or set(params) != set(want):
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise layer_error(self.name, f"expected params {layout}, got {got}",
                              ValueError if isinstance(params, Mapping) else TypeError)
        for part, w_shape in want.items():
            p = params[part]
            keys = {"W", "b"} if self.use_bias else {"W"}
            if not isinstance(p, Mapping) or set(p) != keys:
                got = sorted(p) if isinstance(p, Mapping) else type(p).__name__
                raise layer_error(
                    self.name,
                    f"expected params[{part!r}] with keys {sorted(keys)} (use_bias="
                    f"{self.use_bias}), got {got}",
                )
            shapes = {"W": w_shape, "b": w_shape[:1]}
            for name in sorted(keys):
                got = tuple(jnp.shape(p[name]))
                if got != shapes[name]:
                    raise layer_error(
                        self.name,
                        f"expected params[{part!r}][{name!r}] of shape {shapes[name]} for "
                        f"inputs with D={D} features, got {got}",
                    )

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

    def torch_params(self, params):
        names = {("qkv", "W"): "in_proj_weight", ("qkv", "b"): "in_proj_bias",
                 ("out", "W"): "out_proj.weight", ("out", "b"): "out_proj.bias"}
        return {torch: params[part][k] for (part, k), torch in names.items() if k in params[part]}

    def params_from_torch(self, tensors, like):
        names = {("qkv", "W"): "in_proj_weight", ("qkv", "b"): "in_proj_bias",
                 ("out", "W"): "out_proj.weight", ("out", "b"): "out_proj.bias"}
        params = {part: {} for part in like}
        for (part, k), torch in names.items():
            if k not in like[part]:
                continue
            if torch not in tensors:
                raise layer_error(
                    self.name,
                    f"torch tensors lack {torch!r}; got {sorted(tensors)}",
                )
            want, got = tuple(jnp.shape(like[part][k])), tuple(jnp.shape(tensors[torch]))
            if want != got:
                raise layer_error(
                    self.name,
                    f"torch {torch!r} has shape {got}, but params[{part!r}][{k!r}] expects {want}",
                )
            params[part][k] = tensors[torch]
        return params


def _exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


# A display name for Dense's name; pickle finds the function by __qualname__.
_exact_gelu.__name__ = "gelu_exact"

# torch.nn.TransformerEncoderLayer's activation strings; its "gelu" is the
# exact erf form, whereas lm.ACTIVATIONS["gelu"] (jax.nn.gelu) is tanh-approximated.
_ENCODER_ACTS = {"relu": "relu", "gelu": _exact_gelu}

# torch's module name -> where that module's params sit in the block's params
# tree, for norm_first True and False (see _encoder_block), in torch's
# state-dict order.
_TORCH_PLACES = {
    True: {"self_attn": (0, 0, 1), "linear1": (1, 0, 1), "linear2": (1, 0, 2),
           "norm1": (0, 0, 0), "norm2": (1, 0, 0)},
    False: {"self_attn": (0, 0), "linear1": (2, 0, 0), "linear2": (2, 0, 1),
            "norm1": (1,), "norm2": (3,)},
}


@frozen
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

    num_heads: int
    ff_features: int
    _: dataclasses.KW_ONLY
    act: str = "relu"
    norm_first: bool = True
    causal: bool = False
    eps: float = 1e-5

    def __post_init__(self):
        owner = "TransformerEncoderLayer"
        check_count(owner, "num_heads", self.num_heads)
        check_count(owner, "ff_features", self.ff_features)
        if not isinstance(self.act, str) or self.act not in _ENCODER_ACTS:
            raise layer_error(
                owner,
                f"act must be 'relu' or 'gelu' (torch's exact gelu), got {self.act!r}",
                ValueError if isinstance(self.act, str) else TypeError,
            )
        for flag in ("norm_first", "causal"):
            object.__setattr__(self, flag, _check_flag(owner, flag, getattr(self, flag)))
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise layer_error(owner, f"eps must be a number > 0, got {eps!r}", TypeError)
        if not eps > 0:
            raise layer_error(owner, f"eps must be > 0, got {eps!r}")
        object.__setattr__(self, "eps", float(eps))

    @property
    def name(self) -> str:
        return repr(self)

    def block(self, features: int) -> serial:
        """The `lm.serial` this layer runs on inputs with `features` (D) features."""
        return _encoder_block(self, features)

    def init(self, key, input_shape):
        check_key(self.name, key)
        shape = check_input_shape(self.name, input_shape)
        _, D = _sequence_shape(self.name, shape, self.num_heads)
        return self.block(D).init(key, shape)

    def apply(self, params, x, *, key=None):
        return self._block(x).apply(params, x, key=key)

    def trace(self, params, x, *, key=None):
        return self._block(x).trace(params, x, key=key)

    def _block(self, x):
        x = check_float_input(self.name, x)
        return self.block(_sequence_shape(self.name, x.shape, self.num_heads)[1])

    def torch_params(self, params):
        block = self.block(int(jnp.shape(_at(params, self._places["norm1"])["scale"])[0]))
        out = {}
        for module, place in self._places.items():
            layer = _layer_at(block, place)
            for name, value in layer.torch_params(_at(params, place)).items():
                out[f"{module}.{name}"] = value
        return out

    def params_from_torch(self, tensors, like):
        block = self.block(int(jnp.shape(_at(like, self._places["norm1"])["scale"])[0]))
        params = like
        for module, place in self._places.items():
            prefix = module + "."
            own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            layer = _layer_at(block, place)
            params = _replace_at(params, place, layer.params_from_torch(own, _at(like, place)))
        return params

    @property
    def _places(self) -> dict[str, tuple[int, ...]]:
        return _TORCH_PLACES[self.norm_first]


@functools.lru_cache(maxsize=256)
def _encoder_block(layer: TransformerEncoderLayer, features: int) -> serial:
    # Cached: apply builds the block on every (traced) call.
    attn = MultiHeadAttention(layer.num_heads, causal=layer.causal)
    ff = (Dense(layer.ff_features, _ENCODER_ACTS[layer.act]), Dense(features))
    if layer.norm_first:
        return serial(
            residual(serial(LayerNorm(layer.eps), attn)),
            residual(serial(LayerNorm(layer.eps), *ff)),
        )
    return serial(residual(attn), LayerNorm(layer.eps), residual(serial(*ff)),
                  LayerNorm(layer.eps))


def _layer_at(layer: Layer, place: tuple[int, ...]) -> Layer:
    for i in place:
        layer = layer.layers[i] if hasattr(layer, "layers") else layer.layer
    return layer


def _at(params: Any, place: tuple[int, ...]) -> Any:
    for i in place:
        params = params[i]
    return params


def _replace_at(params: Any, place: tuple[int, ...], value: Any) -> Any:
    if not place:
        return value
    i, rest = place[0], place[1:]
    return tuple(_replace_at(p, rest, value) if j == i else p for j, p in enumerate(params))
