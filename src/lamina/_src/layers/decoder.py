"""The transformer decoder block: self-attention, attention to a memory, a feed-forward network.

A decoder position looks at the earlier positions of its own sequence (the
target, usually causally), then at every position of the encoder's output
(the memory), then through a two-layer network; each of the three parts is
residual with its `LayerNorm`. `TransformerDecoderLayer` holds lamina's
`MultiHeadAttention`, `Dense` and `LayerNorm` under torch's module names,
so its params read as `params["self_attn"]["qkv"]["W"]` and
`lm.from_torch` maps `torch.nn.TransformerDecoderLayer`'s state dict by
name.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lamina._src.core.checks import check_float_input, check_input_shape, check_key
from lamina._src.core.errors import child_context, layer_error
from lamina._src.core.layer import Layer, call_child
from lamina._src.core.record import TraceStep, add_step
from lamina._src.layers.attention import MultiHeadAttention, _sequence_shape
from lamina._src.layers.dense import Dense
from lamina._src.layers.encoder import _Transformer, check_masks, masks
from lamina._src.layers.norms import LayerNorm

_INPUTS = ("tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
           "memory_key_padding_mask")
"""The parts of the dict input, named as torch's forward arguments."""

_MODULES = ("self_attn", "multihead_attn", "linear1", "linear2", "norm1", "norm2", "norm3")
"""The block's layers, by torch's module names, in torch's state-dict order."""


class TransformerDecoderLayer(_Transformer):
    """A transformer decoder block, as `torch.nn.TransformerDecoderLayer`.

    With `norm_first` (pre-norm): `x = x + self_attn(norm1(x))`, `x = x +
    multihead_attn(norm2(x), memory)`, `x = x + ff(norm3(x))`; without it
    (post-norm, torch's default): `x = norm1(x + self_attn(x))`, and so on.
    `ff` is `Dense(ff_features, act)` then `Dense(D)`. Equal to
    `torch.nn.TransformerDecoderLayer(D, num_heads, ff_features,
    dropout=0.0, activation=act, batch_first=True, norm_first=norm_first,
    layer_norm_eps=eps)` called with the same masks, and with a causal
    `tgt_mask` when `causal`.

    The input is a dict named as torch's arguments, per example:
    `{"tgt": (T, D), "memory": (S, D)}` and optionally `"tgt_mask"` `(T, T)`,
    `"memory_mask"` `(T, S)`, `"tgt_key_padding_mask"` `(T,)`,
    `"memory_key_padding_mask"` `(S,)`; masks as `MultiHeadAttention`'s
    (bool `True` where a query may not look, or float added to the scores).
    The output is `(T, D)`.

    Args:
      num_heads: the number of attention heads; must divide D.
      ff_features: the hidden size of the feed-forward network, >= 1.
      act: the feed-forward activation, `"relu"`, `"gelu"` (exact) or
        `"gelu_tanh"` (torch's `nn.GELU(approximate="tanh")`).
      norm_first: pre-norm (True, as `TransformerEncoderLayer`'s default) or
        post-norm (False, torch's default).
      causal: if True, target position `t` attends only to positions `<= t`.
      eps: the LayerNorms' eps, > 0.

    Params: a dict under torch's module names, `"self_attn"`,
    `"multihead_attn"` (`MultiHeadAttention`'s), `"linear1"`, `"linear2"`
    (`Dense`'s) and `"norm1"` to `"norm3"` (`LayerNorm`'s).

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.TransformerDecoderLayer(2, 32, causal=True)
      >>> out_shape, params = block.init(jax.random.key(0), {"tgt": (5, 8), "memory": (7, 8)})
      >>> out_shape, sorted(params)[:3]
      ((5, 8), ['linear1', 'linear2', 'multihead_attn'])
      >>> block.apply(params, {"tgt": jnp.ones((5, 8)), "memory": jnp.ones((7, 8))}).shape
      (5, 8)
    """

    def parts(self, features: int) -> dict[str, Layer]:
        """The layers this block runs on inputs of `features` (D) features, by torch's names."""
        return _parts(self, features)

    def check_input_shape(self, input_shape):
        if not isinstance(input_shape, dict) or not {"tgt", "memory"} <= set(input_shape) or (
                set(input_shape) - set(_INPUTS)):
            raise layer_error(
                self.name,
                f"expects a dict input with 'tgt' (T, D) and 'memory' (S, D), and optionally "
                f"{', '.join(map(repr, _INPUTS[2:]))}; got input shape {input_shape!r}",
            )
        return {k: check_input_shape(self.name, v) for k, v in input_shape.items()}

    def output_shape(self, input_shape):
        T, D = _sequence_shape(self.name, input_shape["tgt"], self.num_heads)
        memory = input_shape["memory"]
        if len(memory) != 2 or memory[1] != D:
            raise layer_error(
                self.name,
                f"memory must have shape (S, {D}), the target's D features, got {memory}",
            )
        S = memory[0]
        want = {"tgt_mask": (T, T), "memory_mask": (T, S), "tgt_key_padding_mask": (T,),
                "memory_key_padding_mask": (S,)}
        check_masks(self.name, input_shape, want,
                    f"a target of shape {(T, D)} and a memory of shape {(S, D)}")
        return (T, D)

    def init(self, key, input_shape):
        check_key(self.name, key)
        shapes = self.check_input_shape(input_shape)
        T, D = self.output_shape(shapes)
        parts = self.parts(D)
        keys = dict(zip(parts, jax.random.split(key, len(parts))))
        inputs = {"self_attn": (T, D), "multihead_attn": {"query": (T, D), "key": shapes["memory"]},
                  "linear1": (T, D), "linear2": (T, self.ff_features)}
        params = {}
        for name, layer in parts.items():
            with child_context(name, layer):
                _, params[name] = layer.init(keys[name], inputs.get(name, (T, D)))
        return (T, D), params

    def check_input(self, x, params):
        if not isinstance(x, dict):
            raise layer_error(
                self.name, f"expects a dict input with 'tgt' and 'memory', got {type(x).__name__}",
                TypeError)
        x = dict(x)
        for part in ("tgt", "memory"):
            if part in x:
                x[part] = check_float_input(self.name, x[part])
        self.output_shape(self.check_input_shape({k: tuple(jnp.shape(v)) for k, v in x.items()}))
        return x

    def check_params(self, params, state, x):
        # Each layer checks its own entry when it runs; here only the keys.
        if not isinstance(params, dict) or set(params) != set(_MODULES):
            got = (f"a dict with keys {sorted(params)}" if isinstance(params, dict)
                   else type(params).__name__)
            raise layer_error(self.name, f"expected params with keys {sorted(_MODULES)}, got {got}")

    def forward(self, params, state, x, *, key, train):
        tgt, memory = x["tgt"], x["memory"]
        parts = self.parts(tgt.shape[-1])

        def run(name, value):
            return call_child(name, name, parts[name], params[name], (), value, None, train)[0]

        def self_attn(h):
            return run("self_attn", {"query": h, **masks(x, "tgt_mask", "tgt_key_padding_mask")})

        def cross_attn(h):
            return run("multihead_attn", {"query": h, "key": memory,
                                          **masks(x, "memory_mask", "memory_key_padding_mask")})

        def ff(h):
            return run("linear2", run("linear1", h))

        h = tgt
        for sub, norm in ((self_attn, "norm1"), (cross_attn, "norm2"), (ff, "norm3")):
            h = h + sub(run(norm, h)) if self.norm_first else run(norm, h + sub(h))
        if self.norm_first:  # the last residual sum is no layer's output: its own step shows it
            add_step(TraceStep("", (), self.name, x, params, None, h, self, None, None))
        return h, state

    def torch_children(self, params):
        D = int(jnp.shape(params["norm1"]["scale"])[0])
        return [(name, layer, (name,)) for name, layer in self.parts(D).items()]


@functools.lru_cache(maxsize=256)
def _parts(layer: TransformerDecoderLayer, features: int) -> dict[str, Layer]:
    # Cached: apply builds them on every (traced) call. torch's state-dict order.
    layers = (
        MultiHeadAttention(layer.num_heads, causal=layer.causal),
        MultiHeadAttention(layer.num_heads),
        Dense(layer.ff_features, layer.act),
        Dense(features),
        LayerNorm(layer.eps), LayerNorm(layer.eps), LayerNorm(layer.eps),
    )
    return dict(zip(_MODULES, layers))
