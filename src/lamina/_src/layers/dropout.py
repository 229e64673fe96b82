"""Dropout: randomly zero units while training so no unit can be relied on alone."""

from __future__ import annotations

from typing import Annotated

import jax
import jax.numpy as jnp

from lamina._src.core.builtin import Builtin
from lamina._src.core.fields import Check, interval

Rate = Annotated[float, Check(interval, 0.0, 1.0, "low")]
"""A probability of dropping, in [0, 1)."""


class Dropout(Builtin):
    """Inverted dropout: zeroes each unit with probability `rate`, scales the rest.

    Kept units are divided by `1 - rate`, so the expected output equals the
    input and inference (`key=None`) is the identity with no rescaling.

    Args:
      rate: probability of dropping a unit, in `[0, 1)`.

    A `Layer` without params. `apply(params, x, key=None)` returns `x`; with a
    PRNG key it draws a mask from that key (same key, same mask).

    Raises:
      ValueError: `rate` outside `[0, 1)`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> layer = lm.Dropout(0.5)
      >>> _, params = layer.init(jax.random.key(0), (6,))
      >>> x = jnp.ones(6)
      >>> bool((layer.apply(params, x) == x).all())              # no key: identity
      True
      >>> y = layer.apply(params, x, key=jax.random.key(1))     # a key: dropped or doubled
      >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
      True
    """

    rate: Rate

    batch_polymorphic = True  # with key=None, the identity

    @property
    def stochastic(self) -> bool:
        return self.rate > 0.0

    @property
    def name(self) -> str:
        return f"Dropout({self.rate})"

    def forward(self, params, state, x, *, key, train):
        if key is None or self.rate == 0.0:
            return x, state
        keep = jax.random.bernoulli(key, 1.0 - self.rate, jnp.shape(x))
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x)), state
