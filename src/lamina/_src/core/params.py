"""Parameter trees: their shapes without allocating, and checking one against a model."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from lamina._src.core.errors import layer_error, transposed_hint
from lamina._src.core.layer import Layer, Params, Shape, abstract_init, check_layer_type, record_call


def param_shapes(
    model: Layer,
    input_shape: Shape,
    key: Optional[jax.Array] = None,
    *,
    input_dtype: Any = jnp.float32,
) -> tuple[Any, Params]:
    """Shapes of a model's output and params, without computing or allocating them.

    `model.init` runs under `jax.eval_shape`, so even a model with billions of
    parameters answers in milliseconds and uses no memory for weights.

    Args:
      model: a `Layer`.
      input_shape: the shape of one example, e.g. `(784,)`.
      key: optional PRNG key; only its type matters.
      input_dtype: the dtype of the inputs (e.g. `jnp.int32` for token ids).
        `init` sees only the shape, so it changes nothing here; it is taken
        so that `param_shapes`, `check_params` and `summary` read alike.

    Returns:
      `(output_shape, params)` where params is the params tree with a
      `jax.ShapeDtypeStruct` at every leaf.

    Example:
      >>> import lamina as lm
      >>> out, shapes = lm.param_shapes(lm.mlp([256, 10]), (784,))
      >>> out, shapes[0]["W"].shape
      ((10,), (256, 784))
    """
    check_layer_type("param_shapes", model)
    return abstract_init(model, input_shape, key)


def path_str(path: tuple[Any, ...]) -> str:
    """`(2, "W")` or a `jax.tree_util` key path -> `"2.W"`."""
    parts = []
    for k in path:
        for attr in ("idx", "key", "name"):
            if hasattr(k, attr):
                k = getattr(k, attr)
                break
        parts.append(str(k))
    return ".".join(parts)


def param_labels(params: Params, rules: Mapping[str, Any], default: Any) -> Params:
    r"""A tree of labels, one per params leaf, chosen by regular expressions over paths.

    Each leaf's path is written as in checkpoints (`"0.W"`, `"2.b"`) and
    matched whole (`re.fullmatch`) against every rule; the one rule that
    matches gives the leaf its label, and a leaf no rule matches gets
    `default`. Hand the tree to `optax.multi_transform` (string labels) or,
    with booleans, to `optax.masked` or an optimizer's `mask=`.

    Args:
      params: a params tree (arrays or `jax.ShapeDtypeStruct` leaves).
      rules: regular expression -> label, e.g. `{r"0\..*": "frozen"}`.
      default: the label of leaves that no rule matches.

    Returns:
      A tree of the params' structure holding labels.

    Raises:
      ValueError: a rule is not a valid regular expression, matches no path,
        or matches a path that another rule matches too (naming both).

    Example:
      >>> import jax, lamina as lm
      >>> _, params = lm.mlp([4, 2]).init(jax.random.key(0), (3,))
      >>> lm.param_labels(params, {r"0\..*": "frozen"}, "train")
      ({'W': 'frozen', 'b': 'frozen'}, {'W': 'train', 'b': 'train'})
      >>> lm.param_labels(params, {r".*\.W": True}, False)
      ({'W': True, 'b': False}, {'W': True, 'b': False})
    """
    if not isinstance(rules, Mapping):
        raise layer_error(
            "param_labels",
            f"rules must be a dict of regular expression -> label, e.g. {{r'0\\..*': 'frozen'}}, "
            f"got {type(rules).__name__} {rules!r:.80}",
            TypeError,
        )
    compiled = {}
    for rule in rules:
        try:
            compiled[rule] = re.compile(rule)
        except (re.error, TypeError) as error:
            raise layer_error("param_labels", f"rule {rule!r} is not a regular expression: "
                              f"{error}") from None
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(path) for path, _ in leaves]
    matched: dict[str, str] = {}
    labels = []
    for path in paths:
        hits = [rule for rule, regex in compiled.items() if regex.fullmatch(path)]
        if len(hits) > 1:
            raise layer_error(
                "param_labels", f"rules {hits[0]!r} and {hits[1]!r} both match {path!r}; "
                f"make them exclusive so each path has one label")
        for rule in hits:
            matched[rule] = path
        labels.append(rules[hits[0]] if hits else default)
    for rule in rules:
        if rule not in matched:
            raise layer_error(
                "param_labels", f"rule {rule!r} matches no params path; the paths are "
                f"{', '.join(repr(p) for p in paths[:8])}{', ...' if len(paths) > 8 else ''} "
                f"(matched whole, as re.fullmatch)")
    return jax.tree_util.tree_unflatten(treedef, labels)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(value)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of length {len(value)}"
    if hasattr(value, "shape"):
        return f"an array of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _first_difference(want: Any, got: Any, path: tuple) -> Optional[tuple[tuple, str]]:
    if isinstance(want, Mapping):
        if not isinstance(got, Mapping):
            return path, f"expected a dict with keys {sorted(want)}, got {_describe(got)}"
        for k in sorted(want):
            if k not in got:
                return path + (k,), f"missing (expected shape {want[k].shape})"
        for k in sorted(got):
            if k not in want:
                return path + (k,), f"unexpected key; expected only {sorted(want)}"
        for k in sorted(want):
            found = _first_difference(want[k], got[k], path + (k,))
            if found:
                return found
        return None
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return path, f"expected a tuple of length {len(want)}, got {_describe(got)}"
        for i, (w, g) in enumerate(zip(want, got)):
            found = _first_difference(w, g, path + (i,))
            if found:
                return found
        return None
    shape = getattr(got, "shape", None)
    if shape is None:
        return path, f"expected an array of shape {want.shape}, got {_describe(got)}"
    if tuple(shape) != want.shape:
        hint = transposed_hint(want.shape, shape)
        return path, f"expected shape {want.shape}, got {tuple(shape)}{hint}"
    return None


def example_struct(input_shape: Any, dtype: Any) -> Any:
    """One example as `jax.ShapeDtypeStruct`s: a tuple (dict) of them for a tuple (dict) of shapes."""
    if isinstance(input_shape, dict):
        return {k: example_struct(s, dtype) for k, s in input_shape.items()}
    if all(isinstance(d, int) for d in input_shape):
        return jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    return tuple(example_struct(s, dtype) for s in input_shape)


def abstract_trace(
    model: Layer, params: Params, input_shape: Shape, input_dtype: Any = jnp.float32,
    state: Any = None,
) -> list:
    """`lm.trace` under `jax.eval_shape`: every step, with shapes in place of values.

    Nothing is computed or allocated; each array in a step (input, params,
    weighted sum, output) is a `jax.ShapeDtypeStruct`. `params` may itself
    hold `jax.ShapeDtypeStruct` leaves, e.g. from `param_shapes`.
    """
    steps = []

    def as_shapes(tree):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)

    def run_abstract(params, x, state):
        y, _, trace = record_call(model, params, state, x)
        # Only shapes may leave: the values are tracers.
        steps.extend(
            s._replace(input=as_shapes(s.input), params=as_shapes(s.params),
                       weighted_sum=as_shapes(s.weighted_sum), output=as_shapes(s.output),
                       values=as_shapes(s.values))
            for s in trace
        )
        return y

    if state is None:
        state = jax.eval_shape(lambda: model.init_state(input_shape)) if model.stateful else ()
    jax.eval_shape(run_abstract, params, example_struct(input_shape, input_dtype), state)
    return steps


def _layer_at(model: Layer, expected: Params, input_shape: Shape, input_dtype: Any,
              path: tuple) -> tuple[str, str]:
    """`(path, name)` of the deepest layer owning params at `path`."""
    try:
        steps = abstract_trace(model, expected, input_shape, input_dtype)
    except Exception:  # noqa: BLE001 - naming the layer is best effort only
        return "", model.name
    best = None
    for step in steps:  # a position or, in a named model, a name: the path's own entries
        if tuple(path[: len(step.index)]) == tuple(step.index):
            if best is None or len(step.index) > len(best.index):
                best = step
    return ("", model.name) if best is None else (best.path, best.name)


def check_params(
    model: Layer, params: Params, input_shape: Shape, *, input_dtype: Any = jnp.float32
) -> None:
    """Checks that `params` fit `model` for inputs of `input_shape`.

    Compares the tree structure and every leaf's shape with what `model.init`
    would produce (computed with `jax.eval_shape`, so nothing is allocated).
    Dtypes are not compared: casting params, e.g. to bfloat16 for serving, is
    allowed.

    Args:
      model: a `Layer`.
      params: the params tree to check.
      input_shape: the shape of one example.
      input_dtype: the dtype of one example (e.g. `jnp.int32` for token ids).

    Raises:
      ValueError: naming the layer and the first params path that differs,
        with what was expected there and what was found.

    Example:
      >>> import jax, lamina as lm
      >>> model = lm.mlp([8, 2])
      >>> _, params = model.init(jax.random.key(0), (3,))
      >>> lm.check_params(model, params, (3,))          # fits: nothing happens
      >>> try:
      ...     lm.check_params(model, params, (4,))
      ... except ValueError as error:
      ...     print("does not fit at", error.path)
      does not fit at serial[0]
    """
    _, expected = param_shapes(model, input_shape)
    found = _first_difference(expected, params, ())
    if found is None:
        return
    path, message = found
    layer_path, name = _layer_at(model, expected, input_shape, input_dtype, path)
    error = layer_error(
        name,
        f"params do not fit the model at {path_str(path) or '(root)'!r}: {message} "
        f"(for inputs of shape {tuple(input_shape)})",
    )
    error._under(layer_path)
    raise error


def params_like(like: Any) -> Params:
    """The params tree that a `like=` argument describes.

    Args:
      like: a params tree (arrays or `jax.ShapeDtypeStruct` leaves), or a
        `(model, input_shape)` pair.

    Returns:
      `like` itself, or for a `(model, input_shape)` pair the model's params
      tree with a `jax.ShapeDtypeStruct` at every leaf (`param_shapes`, so
      nothing is allocated).
    """
    if isinstance(like, tuple) and len(like) == 2 and isinstance(like[0], Layer):
        model, input_shape = like
        return param_shapes(model, input_shape)[1]
    return like
