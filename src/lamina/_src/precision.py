"""Mixed precision: compute in a low-precision dtype while params stay float32."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lamina._src.layer import Layer, layer_error, trace_of
from lamina._src.params import check_layer_type


def _cast_floats(tree: Any, dtype: Any) -> Any:
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def with_dtype(model: Layer, compute: Any = jnp.bfloat16) -> Layer:
    """Runs a whole model in the `compute` dtype; its params stay as they are.

    Floating params and inputs are cast to `compute` on the way in, so every
    layer computes (and returns) `compute` values, while the params you store,
    differentiate and update keep their own dtype (float32 from `init`).
    Gradients flow back through the cast and arrive in float32. The params
    tree is the model's own, so checkpoints and PyTorch exchange are
    unaffected. `lm.train_step` computes the loss in float32 regardless.

    Args:
      model: a `Layer`.
      compute: the compute dtype, e.g. `jnp.bfloat16` or `jnp.float16`.

    Returns:
      A `Layer` with the same `init` and params as `model`.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.with_dtype(lm.mlp([8, 2]), compute=jnp.bfloat16)
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> params[0]["W"].dtype, model.apply(params, jnp.ones(4)).dtype
      (dtype('float32'), dtype(bfloat16))
    """
    check_layer_type("with_dtype", model)
    try:
        compute = jnp.dtype(compute)
    except TypeError:
        compute = None
    if compute is None or not jnp.issubdtype(compute, jnp.floating):
        raise layer_error(
            "with_dtype",
            "compute must be a floating dtype such as jnp.bfloat16",
            TypeError,
        )
    name = f"with_dtype({model.name}, {compute.name})"
    inner_trace = trace_of(model)

    def apply(params, x, *, key=None):
        return model.apply(_cast_floats(params, compute), _cast_floats(x, compute), key=key)

    def trace(params, x, *, key=None):
        return inner_trace(_cast_floats(params, compute), _cast_floats(x, compute), key=key)

    return Layer(model.init, apply, name, trace)
