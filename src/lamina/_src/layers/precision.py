"""Mixed precision: compute in a low-precision dtype while params stay float32."""

from __future__ import annotations

from typing import Annotated, Any

import jax
import jax.numpy as jnp

from lamina._src.core.builtin import Child, Wrapper
from lamina._src.core.errors import layer_error
from lamina._src.core.fields import Check


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _compute(where: str, arg: str, value: Any) -> Any:
    try:
        compute = jnp.dtype(value)
    except TypeError:
        compute = None
    if compute is None or not jnp.issubdtype(compute, jnp.floating):
        raise layer_error(
            "with_dtype", "compute must be a floating dtype such as jnp.bfloat16", TypeError
        )
    return compute


class with_dtype(Wrapper):
    """Runs a whole model in the `compute` dtype; its params stay as they are.

    Floating params and inputs are cast to `compute` on the way in, so every
    layer computes (and returns) `compute` values, while the params you store,
    differentiate and update keep their own dtype (float32 from `init`).
    Gradients flow back through the cast and arrive in float32. The params
    tree is the model's own, so checkpoints and PyTorch exchange are
    unaffected. `lm.train_step` computes the loss in float32 regardless.

    Args:
      model: a `Layer`; `.model` holds it.
      compute: the compute dtype, e.g. `jnp.bfloat16` or `jnp.float16`.

    A `Layer` with the same `init` and params as `model`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.with_dtype(lm.mlp([8, 2]), compute=jnp.bfloat16)
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> params[0]["W"].dtype, model.apply(params, jnp.ones(4)).dtype
      (dtype('float32'), dtype(bfloat16))
    """

    model: Child
    compute: Annotated[Any, Check(_compute)] = jnp.dtype(jnp.bfloat16)

    @property
    def name(self) -> str:
        return f"with_dtype({self.model.name}, {self.compute.name})"

    def forward(self, params, state, x, *, key, train):
        return self.call_inner(_cast_floats(params, self.compute), state,
                               _cast_floats(x, self.compute), key, train)
