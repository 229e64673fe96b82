"""Weight tying: a language model whose output layer is its token embedding.

GPT-2 (and many language models since) turns its last hidden vectors into
logits with the transposed token embedding: torch's `lm_head.weight` is the
same tensor as `wte.weight`. The embedding table `W` `(vocab, D)` is already
a `Dense(vocab, use_bias=False)` weight in torch's `(out, in)` layout, so the
head is that dense layer run with the embedding's own params.
"""

from __future__ import annotations

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer, call_child
from lamina._src.layers.combinators import serial
from lamina._src.layers.dense import Dense
from lamina._src.layers.embedding import Embedding


class tied(serial, init=False):
    """`serial(embedding, *layers)`, then logits `h @ W.T` with the embedding's own table `W`.

    The output layer shares the token embedding's weights (weight tying, as
    GPT-2's `lm_head`): ids `(T,)` give logits `(T, num_embeddings)`. The
    gradient of `W` sums both uses.

    Args:
      embedding: an `lm.Embedding`, the first layer.
      *layers: the layers after it, ending in vectors of the embedding's
        `features`.

    A `Layer` whose params are `serial`'s tuple, the embedding's first; the
    head holds none of its own. `lm.trace` and `lm.summary` show it as
    `Dense(num_embeddings, use_bias=False)` at `tied[head]`, its weights
    counted once, at the embedding; `lm.from_torch` fills the embedding
    (drop torch's `lm_head.weight` with a `key_map`: it is the same tensor).

    Raises:
      TypeError: `embedding` is not an `lm.Embedding`, or a layer is not a
        `Layer`.
      ValueError: at init, the last layer's vectors do not have the
        embedding's `features`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.tied(lm.Embedding(10, 4), lm.LayerNorm())
      >>> out_shape, params = model.init(jax.random.key(0), (3,))
      >>> out_shape, len(params)
      ((3, 10), 2)
      >>> logits = model.apply(params, jnp.array([1, 2, 3]))
      >>> h = model.layers[1].apply(params[1], params[0]["W"][jnp.array([1, 2, 3])])
      >>> bool(jnp.allclose(logits, h @ params[0]["W"].T))
      True
    """

    def __init__(self, embedding: Embedding, *layers: Layer, **named: Layer):
        if named:  # the head reads the embedding as params[0]
            raise layer_error(
                "tied", f"takes its layers by position, got {sorted(named)} by name", TypeError)
        super().__init__(embedding, *layers)
        if not isinstance(embedding, Embedding):
            raise layer_error(
                "tied",
                f"the first layer must be an lm.Embedding, whose table the output layer "
                f"shares, got {embedding.name}",
                TypeError,
            )

    @property
    def embedding(self) -> Embedding:
        """The first layer, whose table the output layer shares."""
        return self.layers[0]  # type: ignore[return-value]  # checked in __init__

    @property
    def head(self) -> Dense:
        """The output layer, run with the embedding's params."""
        return Dense(self.embedding.num_embeddings, use_bias=False)

    def init(self, key, input_shape):
        shape, params = super().init(key, input_shape)
        features = self.embedding.features
        if not shape or shape[-1] != features:
            raise layer_error(
                self.name,
                f"the last layer gives vectors of shape {shape}, but the output layer shares "
                f"the embedding's table and takes vectors of its {features} features",
            )
        return shape[:-1] + (self.embedding.num_embeddings,), params

    def forward(self, params, state, x, *, key, train):
        h, state = super().forward(params, state, x, key=key, train=train)
        # Recorded at this layer's own params (index None), which hold the
        # table: summary counts it once, at the embedding.
        logits, _ = call_child("tied[head]", None, self.head, {"W": params[0]["W"]}, (), h, None,
                               train)
        return logits, state
