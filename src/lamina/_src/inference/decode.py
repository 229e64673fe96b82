"""Autoregressive decoding with a key-value cache: one new position per step.

A causal model's output at position `t` depends only on positions `<= t`,
and each attention layer's keys and values there never change once
computed. So a language model generating text need not rerun its whole
window for every new token: `decode_step` runs one position through the
model, each causal attention layer appending that position's key and value
to its cache and attending over the cache, and gives the logits the full
forward pass would give at that position.

Only layers that can run one position at a time take part: position-wise
layers (embeddings, dense, normalisation over features, activations),
`PositionEmbedding` (it reads the position from the cache), causal
`MultiHeadAttention` and `TransformerEncoderLayer`, and `serial`, `tied`,
`stack`, `remat` around them. Any other layer is refused by name.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from lamina._src.core.errors import child_context, layer_error
from lamina._src.core.layer import Layer, placed_children
from lamina._src.layers.activations import Activation
from lamina._src.layers.attention import MultiHeadAttention
from lamina._src.layers.combinators import serial
from lamina._src.layers.dense import Dense, dense
from lamina._src.layers.dropout import Dropout
from lamina._src.layers.embedding import Embedding
from lamina._src.layers.encoder import _TORCH_PLACES, TransformerEncoderLayer, _at, _layer_at
from lamina._src.layers.norms import LayerNorm, RMSNorm
from lamina._src.layers.reshape import Identity
from lamina._src.layers.stack import _join, _slice, remat, stack
from lamina._src.layers.tied import tied
from lamina._src.layers.tokens import PositionEmbedding

_POSITION_WISE = (Activation, Dense, Dropout, Embedding, Identity, LayerNorm, RMSNorm)
"""Layers whose output at a position depends on that position's input alone."""


def init_cache(model: Layer, params: Any, max_length: int) -> dict[str, Any]:
    """An empty key-value cache for decoding up to `max_length` positions of one example.

    Args:
      model: a causal model (see `decode_step`).
      params: its params; the cache takes their sizes and dtypes.
      max_length: the most positions the cache holds, prompt included.

    Returns:
      `{"position": 0, "max_length": max_length, "layers": ...}`: the next
      position to decode, the most it may reach, and each causal attention
      layer's keys and values `(heads, max_length, head_size)`, zeros. One
      example's: for a batch, `jax.vmap` over copies (see `decode_step`).

    Raises:
      TypeError, ValueError: `max_length` is not an int >= 1, or the model
        holds a layer that cannot run one position at a time.

    Example:
      >>> import jax, lamina as lm
      >>> model = lm.serial(lm.Embedding(10, 8), lm.MultiHeadAttention(2, causal=True))
      >>> _, params = model.init(jax.random.key(0), (5,))
      >>> cache = lm.init_cache(model, params, max_length=5)
      >>> int(cache["position"]), cache["layers"][1]["k"].shape
      (0, (2, 5, 4))
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise layer_error("init_cache", f"max_length must be an int >= 1, got {max_length!r}",
                          TypeError if not isinstance(max_length, int) else ValueError)
    return {"position": jnp.zeros((), jnp.int32), "max_length": jnp.asarray(max_length, jnp.int32),
            "layers": _empty(model, params, max_length)}


def decode_step(model: Layer, params: Any, cache: dict[str, Any], x: Any) -> tuple[Any, dict]:
    """The model's output at the next position, given that position's input; the cache grows by one.

    Equal to running the model on the whole sequence so far and reading the
    last position (`lm.forward(model)(params, xs)[:, t]`), at the cost of
    one position.

    Args:
      model: a causal model of position-wise layers, `PositionEmbedding`,
        causal `MultiHeadAttention` / `TransformerEncoderLayer`, and
        `serial`, `tied`, `stack`, `remat` around them.
      params: its params.
      cache: from `init_cache` or the previous step.
      x: one position's input, e.g. a token id of shape `()`.

    Returns:
      `(y, cache)`: the output at this position (e.g. logits `(vocab,)`)
      and the cache with this position added. Past `max_length` the output
      is NaN (under `jax.jit` no error can be raised; outside it one is).

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.tied(lm.Embedding(10, 8), lm.PositionEmbedding(max_length=6),
      ...                 lm.TransformerEncoderLayer(2, 16, causal=True), lm.LayerNorm())
      >>> _, params = model.init(jax.random.key(0), (6,))
      >>> ids = jnp.array([3, 1, 4, 1, 5, 9])
      >>> cache = lm.init_cache(model, params, max_length=6)
      >>> for i in ids[:3]:
      ...     logits, cache = lm.decode_step(model, params, cache, i)
      >>> full = model.apply(params, ids)
      >>> bool(jnp.allclose(logits, full[2], atol=1e-5)), int(cache["position"])
      (True, 3)

      For a batch of N, vmap over copies of the cache:
      `caches = jax.tree.map(lambda a: jnp.broadcast_to(a, (N,) + a.shape), cache)`,
      then `jax.vmap(lambda c, t: lm.decode_step(model, params, c, t))(caches, tokens)`.
    """
    position, limit = cache["position"], cache["max_length"]
    if not isinstance(position, jax.core.Tracer) and not isinstance(limit, jax.core.Tracer) and (
            int(position) >= int(limit)):
        raise layer_error("decode_step", f"the cache is full: it holds {int(limit)} positions "
                                         f"(init_cache's max_length)")
    y, layers = _step(model, params, cache["layers"], jnp.asarray(x)[None], position)
    y = jnp.where(position < limit, y, jnp.nan)
    return y[0], {**cache, "position": position + 1, "layers": layers}


def _refuse(who: str, layer: Layer, why: str = "") -> Exception:
    return layer_error(
        who,
        f"{layer.name} cannot run one position at a time{why}; decoding takes position-wise "
        f"layers, PositionEmbedding, causal attention and serial, tied, stack and remat "
        f"around them",
    )


def _attention(layer: Any, who: str) -> MultiHeadAttention:
    """The causal self-attention of `layer` (MultiHeadAttention or an encoder block)."""
    if not layer.causal:
        raise _refuse(who, layer, " (it is not causal: every position sees the later ones)")
    return layer if isinstance(layer, MultiHeadAttention) else MultiHeadAttention(
        layer.num_heads, causal=True)


def _self_attn_params(layer: Any, params: Any) -> Any:
    if isinstance(layer, MultiHeadAttention):
        return params
    return _at(params, _TORCH_PLACES[layer.norm_first]["self_attn"])


def _empty(layer: Layer, params: Any, length: int) -> Any:
    """The zero cache of `layer` for `length` positions."""
    if isinstance(layer, stack):
        return _join([_empty(layer.layer, _slice(params, i), length) for i in range(layer.n)])
    if isinstance(layer, remat):
        return _empty(layer.layer, params, length)
    if isinstance(layer, serial):
        caches = []
        for i, (place, child) in enumerate(placed_children(layer)):
            with child_context(layer.child_segment(i), child):
                caches.append(_empty(child, params[place], length))
        return layer._pack(caches)
    if isinstance(layer, (MultiHeadAttention, TransformerEncoderLayer)):
        attn = _attention(layer, "init_cache")
        W = _self_attn_params(layer, params)["qkv"]["W"]
        shape = (attn.num_heads, length, W.shape[1] // attn.num_heads)
        return {"k": jnp.zeros(shape, W.dtype), "v": jnp.zeros(shape, W.dtype)}
    if isinstance(layer, PositionEmbedding):
        rows = params["embedding"].shape[0]
        if rows < length:
            raise layer_error(
                "init_cache",
                f"{layer.name} holds {rows} positions, fewer than max_length={length}: "
                f"positions past its table have no vector",
            )
        return ()
    if isinstance(layer, _POSITION_WISE):
        return ()
    raise _refuse("init_cache", layer)


def _step(layer: Layer, params: Any, cache: Any, x: Any, pos: Any) -> tuple[Any, Any]:
    """`layer` on one position `x` (a length-1 sequence) at position `pos`: `(y, cache)`."""
    if isinstance(layer, stack):
        def body(h, per_copy):
            return _step(layer.layer, *per_copy, h, pos)
        return lax.scan(body, x, (params, cache))
    if isinstance(layer, remat):
        return _step(layer.layer, params, cache, x, pos)
    if isinstance(layer, serial):
        caches = []
        for i, (place, child) in enumerate(placed_children(layer)):
            with child_context(layer.child_segment(i), child):
                x, c = _step(child, params[place], cache[place], x, pos)
            caches.append(c)
        if isinstance(layer, tied):
            x = dense({"W": params[0]["W"]}, x)
        return x, layer._pack(caches)
    if isinstance(layer, MultiHeadAttention):
        return _attend(_attention(layer, "decode_step"), params, cache, x, pos)
    if isinstance(layer, TransformerEncoderLayer):
        return _encoder(layer, params, cache, x, pos)
    if isinstance(layer, PositionEmbedding):
        table = params["embedding"]
        return x + lax.dynamic_slice_in_dim(table, pos, 1), cache  # promoted as forward does
    if isinstance(layer, _POSITION_WISE):
        return layer.apply(params, x), cache
    raise _refuse("decode_step", layer)


def _attend(attn: MultiHeadAttention, params: Any, cache: Any, x: Any, pos: Any) -> tuple:
    """Causal self-attention of the new position over the cached ones, as `attn` computes it."""
    n = attn.num_heads
    D = x.shape[-1]
    h = D // n
    q, k, v = (a.reshape(n, 1, h) for a in jnp.split(dense(params["qkv"], x), 3, axis=-1))
    keys = lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, pos, 0))
    values = lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, pos, 0))
    wide = jnp.promote_types(q.dtype, jnp.float32)
    s = lax.dot_general(q, keys.astype(q.dtype), (((2,), (2,)), ((0,), (0,))),
                        preferred_element_type=wide) * jnp.asarray(h ** -0.5, wide)
    seen = jnp.arange(keys.shape[1]) <= pos  # this position and those before it
    s = jnp.where(seen[None, None, :], s, jnp.finfo(wide).min)
    p = jax.nn.softmax(s, axis=-1).astype(v.dtype)
    o = lax.dot_general(p, values.astype(v.dtype), (((2,), (1,)), ((0,), (0,))))
    return dense(params["out"], o.reshape(1, D)), {"k": keys, "v": values}


def _encoder(layer: TransformerEncoderLayer, params: Any, cache: Any, x: Any, pos: Any) -> tuple:
    """One position through an encoder block, as its forward computes it."""
    attn = _attention(layer, "decode_step")
    block = layer.block(x.shape[-1])
    places = _TORCH_PLACES[layer.norm_first]

    def run(name, value):
        return _layer_at(block, places[name]).apply(_at(params, places[name]), value)

    new_cache = cache

    def self_attn(h):
        nonlocal new_cache
        y, new_cache = _attend(attn, _self_attn_params(layer, params), cache, h, pos)
        return y

    def ff(h):
        return run("linear2", run("linear1", h))

    for sub, norm in ((self_attn, "norm1"), (ff, "norm2")):
        x = x + sub(run(norm, x)) if layer.norm_first else run(norm, x + sub(x))
    return x, new_cache
