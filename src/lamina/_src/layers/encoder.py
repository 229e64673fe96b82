"""The transformer encoder block: self-attention, then a feed-forward network.

`TransformerEncoderLayer` composes `MultiHeadAttention`, `LayerNorm`, `Dense`
and `residual` into the block of `torch.nn.TransformerEncoderLayer`; with a
dict input it takes torch's masks by their argument names.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_float_input, check_input_shape
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check, Count, Flag, Positive
from lamina._src.core.layer import call_child
from lamina._src.core.record import TraceStep, add_step
from lamina._src.layers.attention import MultiHeadAttention, _sequence_shape
from lamina._src.layers.combinators import residual, serial
from lamina._src.layers.dense import Dense
from lamina._src.layers.norms import LayerNorm

# torch.nn.TransformerEncoderLayer's activation strings; "gelu" is exact in
# both libraries, as in lm.ACTIVATIONS. "gelu_tanh" is torch's
# activation=nn.GELU(approximate="tanh"), GPT-2's.
_ENCODER_ACTS = ("relu", "gelu", "gelu_tanh")


def _encoder_act(where: str, arg: str, value: Any) -> str:
    if not isinstance(value, str) or value not in _ENCODER_ACTS:
        raise layer_error(
            where,
            f"act must be 'relu', 'gelu' (torch's exact gelu) or 'gelu_tanh' (its tanh "
            f"approximation), got {value!r}",
            ValueError if isinstance(value, str) else TypeError,
        )
    return value


EncoderAct = Annotated[str, Check(_encoder_act)]
"""The feed-forward activation of a transformer layer: "relu", "gelu" (exact, as torch's) or
"gelu_tanh"."""

_INPUTS = ("src", "src_mask", "src_key_padding_mask")
"""The parts of a dict input, named as torch's forward arguments."""

# torch's module name -> where that module's params sit in the block's params
# tree, for norm_first True and False (see _encoder_block), in torch's
# state-dict order.
_TORCH_PLACES: dict[bool, dict[str, tuple[int, ...]]] = {
    True: {"self_attn": (0, 0, 1), "linear1": (1, 0, 1), "linear2": (1, 0, 2),
           "norm1": (0, 0, 0), "norm2": (1, 0, 0)},
    False: {"self_attn": (0, 0), "linear1": (2, 0, 0), "linear2": (2, 0, 1),
            "norm1": (1,), "norm2": (3,)},
}


class _Transformer(Builtin):
    """The configuration torch's transformer layers share: heads, feed-forward size, activation,
    pre- or post-norm, a causal self-attention, the LayerNorms' eps."""

    num_heads: Count
    ff_features: Count
    _: dataclasses.KW_ONLY
    act: EncoderAct = "relu"
    norm_first: Flag = True
    causal: Flag = False
    eps: Positive = 1e-5

    stochastic = False


class TransformerEncoderLayer(_Transformer):
    """A transformer encoder block: self-attention, then a feed-forward network.

    Both halves are residual. With `norm_first` (pre-norm) the block is
    `x = x + attn(norm1(x))`, then `x = x + ff(norm2(x))`; without it
    (post-norm, the original transformer) `x = norm1(x + attn(x))`, then
    `x = norm2(x + ff(x))`. `ff` is `Dense(ff_features, act)` then
    `Dense(D)`. Equal to `torch.nn.TransformerEncoderLayer(D, num_heads,
    ff_features, dropout=0.0, activation=act, batch_first=True,
    norm_first=norm_first, layer_norm_eps=eps)` (note torch's default is
    `norm_first=False`), with `src_mask` a causal mask when `causal`.

    The input is one sequence `(T, D)`, or a dict named as torch's
    arguments, per example: `{"src": (T, D)}` and optionally `"src_mask"`
    `(T, T)` and `"src_key_padding_mask"` `(T,)`, masks as
    `MultiHeadAttention`'s (bool `True` where a position may not look, or
    float added to the scores). The output is `(T, D)`.

    The block is an `lm.serial` of `lm.residual`, `lm.LayerNorm`,
    `lm.MultiHeadAttention` and `lm.Dense`, so `lm.trace` and `lm.summary`
    show those layers; its params are that serial's tuple. `torch_params`
    and `params_from_torch` translate them to and from torch's state-dict
    keys (`self_attn.in_proj_weight`, ..., `norm2.bias`).

    Args:
      num_heads: the number of attention heads; must divide D.
      ff_features: the hidden size of the feed-forward network, >= 1.
      act: the feed-forward activation, `"relu"`, `"gelu"` (exact, as
        torch's) or `"gelu_tanh"` (torch's `nn.GELU(approximate="tanh")`,
        GPT-2's).
      norm_first: pre-norm (True) or post-norm (False).
      causal: if True, position `t` attends only to positions `<= t`.
      eps: the LayerNorms' eps, > 0.

    Raises:
      TypeError: a bad kind of argument; at apply, a non-float input.
      ValueError: a count below 1, an unknown `act`, `eps <= 0`; at init or
        apply, an input that is not `(T, D)` or whose D is not a multiple of
        `num_heads`, a dict without `"src"` or with other keys, or a mask
        of another shape.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> block = lm.TransformerEncoderLayer(2, 32, act="gelu")
      >>> out_shape, params = block.init(jax.random.key(0), (5, 8))
      >>> out_shape, block.apply(params, jnp.ones((5, 8))).shape
      ((5, 8), (5, 8))
      >>> sorted(block.torch_params(params))[:2]
      ['linear1.bias', 'linear1.weight']
    """

    def block(self, features: int) -> serial:
        """The `lm.serial` this layer runs on inputs with `features` (D) features."""
        return _encoder_block(self, features)

    def check_input_shape(self, input_shape):
        if not isinstance(input_shape, dict):
            return super().check_input_shape(input_shape)
        if "src" not in input_shape or set(input_shape) - set(_INPUTS):
            raise layer_error(
                self.name,
                f"expects an array (T, D) or a dict with 'src' (T, D) and optionally "
                f"'src_mask' (T, T) and 'src_key_padding_mask' (T,); got input shape "
                f"{input_shape!r}",
            )
        return {k: check_input_shape(self.name, v) for k, v in input_shape.items()}

    def output_shape(self, input_shape):
        if not isinstance(input_shape, dict):
            _sequence_shape(self.name, input_shape, self.num_heads)
            return input_shape
        T, D = _sequence_shape(self.name, input_shape["src"], self.num_heads)
        check_masks(self.name, input_shape, {"src_mask": (T, T), "src_key_padding_mask": (T,)},
                    f"a sequence of shape {(T, D)}")
        return (T, D)

    def init(self, key, input_shape):
        shape = self.output_shape(self.check_input_shape(input_shape))
        return shape, self.block(shape[1]).init(key, shape)[1]

    def check_input(self, x, params):
        if not isinstance(x, dict):
            x = check_float_input(self.name, x)
            _sequence_shape(self.name, x.shape, self.num_heads)
            return x
        x = dict(x)
        if "src" in x:
            x["src"] = check_float_input(self.name, x["src"])
        self.output_shape(self.check_input_shape({k: tuple(jnp.shape(v)) for k, v in x.items()}))
        return x

    def check_params(self, params, state, x):
        pass  # the block's layers check their own, naming their paths

    def forward(self, params, state, x, *, key, train):
        if not isinstance(x, dict):
            return call_child("", None, self.block(x.shape[1]), params, state, x, key, train)
        return self._with_masks(params, x, train), state

    def _with_masks(self, params: Any, x: dict, train: bool) -> Any:
        """The block's layers run one by one, the masks given to the attention."""
        block = self.block(x["src"].shape[-1])
        places = _TORCH_PLACES[self.norm_first]

        def run(name, value):
            place = places[name]
            return call_child(name, place, _layer_at(block, place), _at(params, place), (), value,
                              None, train)[0]

        def attn(h):
            return run("self_attn", {"query": h, **masks(x, "src_mask", "src_key_padding_mask")})

        def ff(h):
            return run("linear2", run("linear1", h))

        h = x["src"]
        for sub, norm in ((attn, "norm1"), (ff, "norm2")):
            h = h + sub(run(norm, h)) if self.norm_first else run(norm, h + sub(h))
        if self.norm_first:  # the last residual sum is no layer's output: its own step shows it
            add_step(TraceStep("", (), self.name, x, params, None, h, self, None, None))
        return h

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


def check_masks(name: str, input_shape: dict, want: dict, inputs: str) -> None:
    """Raises unless each mask in `input_shape` has the shape `want` says, for those `inputs`."""
    for part, shape in input_shape.items():
        if part in want and tuple(shape) != want[part]:
            raise layer_error(
                name, f"{part} must have shape {want[part]} for {inputs}, got {tuple(shape)}")


def masks(x: dict, attn: str, padding: str) -> dict[str, Any]:
    """The masks of a dict input for one attention, under MultiHeadAttention's names."""
    out = {}
    if attn in x:
        out["attn_mask"] = x[attn]
    if padding in x:
        out["key_padding_mask"] = x[padding]
    return out


def _layer_at(layer: Any, place: tuple[int, ...]) -> Any:
    for i in place:
        layer = layer.layers[i] if hasattr(layer, "layers") else layer.layer
    return layer


def _at(params: Any, place: tuple[int, ...]) -> Any:
    for i in place:
        params = params[i]
    return params


