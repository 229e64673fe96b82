"""Embeddings: a learned vector per token id, looked up in a table.

An embedding is a dense layer on one-hot inputs: `one_hot(i) @ W` is row `i`
of `W`. Looking the row up directly gives the same result without building
the one-hot vector.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.builtin import Builtin
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Count
from lamina._src.core.spec import Param
from lamina._src.layers import initializers


class Embedding(Builtin):
    """A table of `num_embeddings` learned vectors, looked up by integer id.

    `y[..., :] = W[ids[...], :]`, as `torch.nn.Embedding`: ids of any shape
    `(...)` give vectors of shape `(..., features)`.

    An out-of-range id (below 0 or at least `num_embeddings`) never returns
    a valid-looking row:

    - where Python can see the ids' values (a list, a NumPy array, or a
      `jax.Array` outside `jax.jit`/`jax.vmap`/`lax.scan`, also when
      `jax.grad` differentiates with respect to the params only), `apply`
      raises a `ValueError` naming the first bad id, where it is, and the
      range;
    - where the ids are traced (inside `jax.jit`, `jax.vmap`, `lax.scan`,
      `lm.forward`), their values are unknown until the program runs, so
      the rows of out-of-range ids are filled with NaN, which then spreads
      to the loss where it cannot be missed.

    Negative ids are out of range too (no counting from the end).

    Args:
      num_embeddings: the number of rows (the vocabulary size), >= 1.
      features: the size of each vector, >= 1.

    A `Layer` with params `{"W": (num_embeddings, features)}`, drawn from a
    standard normal as `torch.nn.Embedding` does; `W` is torch's `weight`.

    Raises:
      TypeError: `num_embeddings` or `features` is not an int; at apply,
        the ids are not integers.
      ValueError: `num_embeddings` or `features` is below 1; at apply, a
        concrete id is out of range, or `W` has the wrong shape.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Embedding(10, 4)
      >>> out_shape, params = layer.init(jax.random.key(0), (3,))
      >>> out_shape, params["W"].shape
      ((3, 4), (10, 4))
      >>> bool((layer.apply(params, jnp.array([1, 1, 9]))[0] == params["W"][1]).all())
      True
      >>> bool(jnp.isnan(jax.jit(layer.apply)(params, jnp.array([10]))).all())
      True
    """

    num_embeddings: Count
    features: Count

    stochastic = False

    def output_shape(self, input_shape):
        return input_shape + (self.features,)

    def params_spec(self):
        shape = (self.num_embeddings, self.features)
        return {  # torch.nn.Embedding's weight, drawn from a standard normal as torch does
            "W": Param(lambda s: shape, initializers.normal(1.0), "weight",
                       "(num_embeddings, features)"),
        }

    def check_input(self, ids, params):
        return self._check_ids(ids)

    def forward(self, params, state, ids, *, key, train):
        W = jnp.asarray(params["W"])
        if jnp.issubdtype(ids.dtype, jnp.signedinteger):
            if ids.dtype.itemsize < 4:  # so that num_embeddings fits below
                ids = ids.astype(jnp.int32)
            # take() would count a negative id from the end; make it out of range.
            ids = jnp.where(ids < 0, self.num_embeddings, ids)
        return jnp.take(W, ids, axis=0, mode="fill", fill_value=jnp.nan), state

    def _check_ids(self, ids: Any) -> jax.Array:
        traced = isinstance(ids, jax.core.Tracer)
        if not traced:
            ids = np.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise layer_error(
                self.name,
                f"expected integer ids, got ids of dtype {ids.dtype} with shape "
                f"{tuple(ids.shape)}; cast them first, e.g. ids.astype(jnp.int32)",
                TypeError,
            )
        if not traced:
            bad = (ids < 0) | (ids >= self.num_embeddings)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                count = int(bad.sum())
                raise layer_error(
                    self.name,
                    f"id {ids[where]} at index {where} is out of range: ids must be in "
                    f"[0, {self.num_embeddings}) for a table of {self.num_embeddings} rows"
                    + (f" ({count} ids are out of range)" if count > 1 else ""),
                )
        return jnp.asarray(ids)
