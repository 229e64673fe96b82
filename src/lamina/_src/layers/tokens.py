"""Learned tokens and positions: what a vision transformer adds to its patch sequence.

A ViT turns an image into a sequence of patch vectors `(S, D)`, prepends a
learned class token (`ClassToken`, then `(S + 1, D)`), adds a learned
vector per position (`PositionEmbedding`), runs encoder layers, and reads
its prediction from the class token's place (`lm.Take(0)`).

torch models hold these as bare parameters with a leading batch axis of
one: torchvision's `class_token` is `(1, 1, D)` and `pos_embedding` is
`(1, S, D)`, as are Hugging Face's `cls_token` and `position_embeddings`.
lamina's params have no batch axis (`(D,)`, `(S, D)`); `lm.from_torch` and
`lm.to_torch` add and drop that axis.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.checks import check_count, check_float_input
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check
from lamina._src.core.spec import Param
from lamina._src.layers import initializers


def _sequence(name: str, input_shape: Any) -> tuple[int, int]:
    """`(S, D)` of a `(..., S, D)` input, refusing anything of fewer than two axes."""
    if len(input_shape) < 2:
        raise layer_error(
            name,
            f"expects a sequence of vectors, one example of shape (S, D), got input shape "
            f"{tuple(input_shape)}",
        )
    return input_shape[-2], input_shape[-1]


class ClassToken(Builtin):
    """Prepends a learned token to a sequence: `(S, D)` becomes `(S + 1, D)`, the token first.

    As the class token of torchvision's `VisionTransformer` (and Hugging
    Face's `ViTEmbeddings`): `cat([token, x])` along the sequence axis, with
    the token drawn as zeros, as torchvision does. Inputs with leading axes
    `(..., S, D)` get the token on every sequence.

    A `Layer` with params `{"token": (D,)}`; torch's `class_token`, shape
    `(1, 1, D)` there.

    Raises:
      TypeError: at apply, a non-float input.
      ValueError: at init or apply, an input with fewer than two axes, or
        a token whose size is not the input's D.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.ClassToken()
      >>> out_shape, params = layer.init(jax.random.key(0), (4, 8))
      >>> out_shape, params["token"].shape
      ((5, 8), (8,))
      >>> layer.apply({"token": jnp.full(8, 7.0)}, jnp.zeros((4, 8)))[:, 0]
      Array([7., 0., 0., 0., 0.], dtype=float32)
    """

    min_rank = 2
    stochastic = False
    batch_polymorphic = True

    def output_shape(self, input_shape):
        s, d = _sequence(self.name, input_shape)
        return tuple(input_shape[:-2]) + (s + 1, d)

    def params_spec(self):
        return {"token": Param(lambda s: (s[-1],), initializers.constant(0.0), "class_token",
                               "(D,)", fits={0: -1}, torch_axes=2)}

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        _sequence(self.name, x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        token = jnp.broadcast_to(params["token"], x.shape[:-2] + (1, x.shape[-1]))
        return jnp.concatenate([token.astype(jnp.result_type(x, token)), x], axis=-2), state



def _optional_count(where: str, arg: str, value: Any) -> Optional[int]:
    return None if value is None else check_count(where, arg, value, " >= 1 or None")


class PositionEmbedding(Builtin):
    """Adds a learned vector to each position of a sequence: `x + E[:S]`.

    As torchvision's `VisionTransformer` adds `pos_embedding` (and Hugging
    Face's ViT its `position_embeddings`); the table is drawn from a normal
    with standard deviation 0.02, as torchvision does.

    Args:
      max_length: the number of positions the table holds; sequences up to
        that length take its first rows. `None` (the default): exactly the
        length of the input given to `init`.

    A `Layer` with params `{"embedding": (max_length or S, D)}`; torch's
    `pos_embedding`, shape `(1, S, D)` there.

    Raises:
      TypeError: `max_length` is not an int or None; at apply, a non-float
        input.
      ValueError: `max_length` below 1; at init or apply, an input with fewer
        than two axes or longer than the table.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.PositionEmbedding()
      >>> out_shape, params = layer.init(jax.random.key(0), (5, 8))
      >>> out_shape, params["embedding"].shape
      ((5, 8), (5, 8))
      >>> bool((layer.apply(params, jnp.zeros((5, 8))) == params["embedding"]).all())
      True
    """

    max_length: Annotated[Optional[int], Check(_optional_count)] = None

    min_rank = 2
    stochastic = False
    batch_polymorphic = True

    def _rows(self, input_shape):
        return input_shape[-2] if self.max_length is None else self.max_length

    def output_shape(self, input_shape):
        s, _ = _sequence(self.name, input_shape)
        if self.max_length is not None and s > self.max_length:
            raise layer_error(
                self.name,
                f"the input has {s} positions, more than the table's max_length="
                f"{self.max_length}",
            )
        return tuple(input_shape)

    def params_spec(self):
        return {"embedding": Param(lambda s: (self._rows(s), s[-1]), initializers.normal(0.02),
                                   "pos_embedding", "(positions, D)", fits={1: -1}, torch_axes=1)}

    def params_note(self, input_shape, key):
        if self.max_length is not None or len(input_shape) < 2:
            return ""
        return (f" for sequences of {input_shape[-2]} positions (with max_length=None the table "
                f"has one row per position of the input init saw; give max_length to take "
                f"shorter sequences)")

    def check_input(self, x, params):
        x = check_float_input(self.name, x)
        self.output_shape(x.shape)
        return x

    def forward(self, params, state, x, *, key, train):
        return x + jnp.broadcast_to(params["embedding"][: x.shape[-2]], x.shape), state
