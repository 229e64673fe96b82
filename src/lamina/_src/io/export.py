"""Export: the batched forward as a StableHLO artifact that needs only jax to run.

`export` lowers `jax.jit(vmap(model.apply))` with `jax.export`, weights
included as constants, and serializes it to bytes; `load_exported` turns the
bytes back into a function of the inputs alone. The server needs neither the
model's code nor lamina.

The weights inside the artifact make it self-contained, at a price: its size
is about the params' bytes (`lamina.summary.summary(...).param_bytes`) plus a
few kilobytes of program, and every artifact carries its own copy, so two
exports of one model store the weights twice, and new weights need a new
export. That suits small and medium models; for large ones keep the weights
in a checkpoint and export a function of `(params, xs)` with `jax.export`
directly.

Artifacts follow `jax.export`'s compatibility rules: load them with the same
or a newer jax (within its backward-compatibility window), on a platform
they were exported for.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.export  # noqa: F401 - jax < 0.7 does not load it with `import jax`
import jax.numpy as jnp
import numpy as np

from lamina._src.core.checks import check_input_shape
from lamina._src.core.errors import layer_error
from lamina._src.core.forward import apply_batch, apply_batch_state
from lamina._src.core.layer import Layer, Params, Shape, check_layer_type, missing_state
from lamina._src.core.params import check_params


def export(
    model: Layer,
    params: Params,
    input_shape: Shape,
    *,
    batch: Union[str, int] = "dynamic",
    dtype: jnp.dtype = jnp.float32,
    platforms: Optional[Sequence[str]] = None,
    state: Any = None,
) -> bytes:
    """Serializes the jitted, batched forward with its weights, as StableHLO bytes.

    Args:
      model: a `Layer`.
      params: its params, baked into the artifact as constants.
      input_shape: the shape of one example, e.g. `(784,)`; for a model
        with several inputs, a tuple or dict of shapes, e.g. `((3, 32, 32),
        ())` for an image and a scalar timestep per example.
      batch: `"dynamic"` for any batch size (a symbolic batch dimension), or
        an int for exactly that batch size.
      dtype: the inputs' dtype; for several inputs one for all, or a tuple
        or dict of them like `input_shape`.
      platforms: where the artifact may run, e.g. `("cpu", "cuda")`; the
        default is the platform jax runs on now.
      state: the model's state, for a model with state (e.g. trained
        `lm.BatchNorm` running statistics): baked in like the params, and
        the artifact serves inference with it.

    Returns:
      The serialized `jax.export.Exported`; `load_exported(data)` runs it.

    Raises:
      ValueError: `params` do not fit the model, or `batch` is not
        `"dynamic"` or an int >= 1.

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.mlp([8, 2])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> fn = lm.load_exported(lm.export(model, params, (4,)))
      >>> fn(jnp.ones((3, 4))).shape, fn(jnp.ones((5, 4))).shape
      ((3, 2), (5, 2))
    """
    check_layer_type("export", model)
    shape = _shapes(input_shape)
    if batch == "dynamic":
        (batch_dim,) = jax.export.symbolic_shape("b")
    elif isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
        batch_dim = batch
    else:
        raise layer_error("export", f'batch must be "dynamic" or an int >= 1, got {batch!r}')
    check_params(model, params, shape)
    if state is None and model.stateful:
        raise missing_state(model)
    # Closing over params (and state) makes them constants of the program:
    # the artifact is a function of the inputs alone.
    if state is None:
        fwd = jax.jit(lambda xs: apply_batch(model, params, xs))
    else:
        fwd = jax.jit(lambda xs: apply_batch_state(model, params, xs, None, state, False)[0])
    exported = jax.export.export(fwd, platforms=platforms)(_structs(shape, dtype, batch_dim))
    return bytes(exported.serialize())


def _is_several(input_shape: Any) -> bool:
    return isinstance(input_shape, dict) or (
        isinstance(input_shape, (tuple, list)) and bool(input_shape)
        and all(isinstance(s, (tuple, list, dict)) for s in input_shape))


def _shapes(input_shape: Any) -> Any:
    """`input_shape` checked: one example's shape, or a tuple or dict of them."""
    if isinstance(input_shape, dict):
        return {k: _shapes(v) for k, v in input_shape.items()}
    if _is_several(input_shape):
        return tuple(_shapes(s) for s in input_shape)
    return check_input_shape("export", input_shape)


def _structs(shape: Any, dtype: Any, batch_dim: Any) -> Any:
    """The batched inputs as `jax.ShapeDtypeStruct`s, one dtype for all or one per input."""
    if isinstance(shape, dict):
        return {k: _structs(v, dtype[k] if isinstance(dtype, dict) else dtype, batch_dim)
                for k, v in shape.items()}
    if _is_several(shape):
        dtypes = dtype if isinstance(dtype, (tuple, list)) else (dtype,) * len(shape)
        if len(dtypes) != len(shape):
            raise layer_error(
                "export", f"dtype must be one dtype or one per input, got {dtype!r} for "
                f"{len(shape)} inputs")
        return tuple(_structs(s, d, batch_dim) for s, d in zip(shape, dtypes))
    return jax.ShapeDtypeStruct((batch_dim, *shape), dtype)


def load_exported(data: Union[bytes, bytearray]) -> Callable[[jax.typing.ArrayLike], jax.Array]:
    """Turns `export`'s bytes back into `fn(xs)`; needs only jax.

    Args:
      data: the bytes `export` returned (e.g. read from a file).

    Returns:
      A jitted `fn(xs)` taking a batch, shape `(N, *input_shape)`, and
      returning the model's outputs for it. Its `exported` attribute is the
      `jax.export.Exported`.

    Raises:
      TypeError: `data` is not bytes; when `fn` is called, inputs that are
        not floating point.
      ValueError: `data` is not an exported artifact; when `fn` is called,
        inputs of the wrong shape (names expected and got).

    Example:
      >>> import jax, jax.numpy as jnp, lamina as lm
      >>> model = lm.Dense(2)
      >>> params = {"W": jnp.eye(2), "b": jnp.ones(2)}
      >>> lm.load_exported(lm.export(model, params, (2,)))(jnp.array([[1.0, 2.0]]))
      Array([[2., 3.]], dtype=float32)
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise layer_error(
            "load_exported", f"expected the bytes export() returned, got {type(data).__name__}",
            TypeError,
        )
    try:
        exported = jax.export.deserialize(bytearray(data))
        # The program itself is parsed only when first needed: parse it now, so a
        # damaged file fails here rather than at its first call.
        exported.mlir_module()
    except Exception as error:  # noqa: BLE001 - flatbuffers and MLIR raise many kinds
        raise layer_error(
            "load_exported",
            f"not a jax.export artifact ({len(data)} bytes; {type(error).__name__}: {error})",
        ) from None
    args, kwargs = jax.tree.unflatten(exported.in_tree, exported.in_avals)
    if len(args) != 1 or kwargs or any(len(aval.shape) < 1 for aval in exported.in_avals):
        raise layer_error(
            "load_exported",
            f"expected an artifact of one batched input (an array, or a tuple or dict of "
            f"them), got inputs {exported.in_avals}",
        )
    (in_tree,) = args
    call = jax.jit(exported.call)

    structure: Any = jax.tree.structure(in_tree)

    def fn(xs: Any) -> Any:
        if structure == jax.tree.structure(0):  # one input: xs may be a nested list
            return call(_checked("xs", in_tree, xs))
        leaves, tree = jax.tree.flatten(xs)
        if tree != structure:
            raise layer_error(
                "exported forward", f"expected inputs structured as {structure}, got {tree}",
                TypeError,
            )
        checked = [_checked(f"xs{jax.tree_util.keystr(path)}", aval, x)
                   for (path, aval), x in zip(jax.tree_util.tree_leaves_with_path(in_tree), leaves)]
        return call(jax.tree.unflatten(tree, checked))

    fn.exported = exported  # type: ignore[attr-defined]
    return fn


def _checked(name: str, aval: Any, x: Any) -> jax.Array:
    """One input of an exported forward, checked against its aval (shape, float dtype)."""
    # Symbolic dimensions are not ints: the batch axis when it is dynamic.
    fixed_batch = aval.shape[0] if isinstance(aval.shape[0], int) else None
    features = tuple(aval.shape[1:])
    shape = tuple(np.shape(x))
    if len(shape) != 1 + len(features) or shape[1:] != features or (
        fixed_batch is not None and shape[0] != fixed_batch
    ):
        expected = str((fixed_batch or "N", *features)).replace("'", "")
        raise layer_error(
            "exported forward",
            f"expected {name} of shape {expected} ({aval.dtype}), got shape {shape}",
        )
    x = jnp.asarray(x)
    if x.dtype != aval.dtype:
        floating = jnp.issubdtype(x.dtype, jnp.floating)
        if not (floating and jnp.issubdtype(aval.dtype, jnp.floating)):
            raise layer_error(
                "exported forward", f"expected {name} of dtype {aval.dtype}, got {x.dtype}",
                TypeError,
            )
        x = x.astype(aval.dtype)
    return x
