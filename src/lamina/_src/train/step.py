"""Training with optax: a jitted train step, per-example gradients, evaluation (fit is in fit.py).

Training is `jax.grad` of a loss plus an optax update. The step minimises
`mean(loss_fn(outputs, targets))` where `outputs` is the model applied to every
example of the batch (`jax.vmap` of `apply`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from lamina._src.core.checks import check_int32
from lamina._src.core.errors import layer_error
from lamina._src.core.forward import apply_batch, apply_batch_state, forward
from lamina._src.core.layer import Layer, Params, check_layer_type
from lamina._src.core.params import check_params, path_str
from lamina._src.train import examples
from lamina._src.train.data import as_array, as_dataset, check_ids, check_targets

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Metric = Callable[[jax.Array, jax.Array], jax.Array]


def accuracy(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> jax.Array:
    """Fraction of examples whose largest output is the true class, in [0, 1].

    Args:
      logits: outputs, shape `(N, num_classes)` (any monotone scores work).
      labels: integer classes, shape `(N,)`, or one-hot `(N, num_classes)`.

    Example:
      >>> import jax.numpy as jnp, lamina as lm
      >>> lm.accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0]))
      Array(0.5, dtype=float32)
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim >= 1 and labels.shape == logits.shape:
        labels = jnp.argmax(labels, axis=-1)
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise layer_error(
            "accuracy",
            f"expected logits (N, classes) and labels (N,) or one-hot (N, classes), "
            f"got logits {logits.shape} and labels {labels.shape}",
        )
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def _per_example_loss(loss_fn: LossFn, outputs: Any, targets: jax.Array) -> jax.Array:
    """`loss_fn` in float32, as one value per example (or one scalar)."""
    outputs = jax.tree.map(_to_float32, outputs)
    loss = jnp.asarray(loss_fn(outputs, targets))
    if loss.ndim == 0:
        return loss
    return jnp.mean(jnp.reshape(loss, (loss.shape[0], -1)), axis=1)


def _to_float32(x: jax.Array) -> jax.Array:
    # Low-precision outputs (bfloat16 compute) are promoted so the loss and
    # its gradient are summed in float32.
    return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x


def _batch_loss(model, loss_fn, params, inputs, targets, key, weights=None, state=None,
                train=True):
    """`(loss, new_state)`: the batch's mean loss; the state threaded when given."""
    if state is None:
        outputs, new_state = apply_batch(model, params, inputs, key), None
    else:
        outputs, new_state = apply_batch_state(model, params, inputs, key, state, train)
    loss = _per_example_loss(loss_fn, outputs, targets)
    if weights is None or loss.ndim == 0:
        return jnp.mean(loss), new_state
    return jnp.sum(loss * weights) / jnp.maximum(jnp.sum(weights), 1.0), new_state


def _unpack_batch(where: str, batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        if hasattr(batch, "shape"):
            got = f"one array of shape {tuple(batch.shape)}"
        else:
            got = f"a {type(batch).__name__}" + (
                f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
            )
        raise layer_error(
            where, f"batch must be an (inputs, targets) pair, got {got}", TypeError
        )
    return batch[0], batch[1]


def _batch_arrays(where: str, batch: Any) -> tuple[Any, Any]:
    """A step's `(inputs, targets)`, lists stacked into arrays, checked at trace time.

    Shapes are static under jit, so the check runs once per batch shape.
    """
    inputs, targets = _unpack_batch(where, batch)
    inputs, targets = examples.tmap(as_array, inputs), as_array(targets)
    shapes = [getattr(a, "shape", None) for a in examples.leaves(inputs)]
    if any(shape is not None and len(shape) >= 1 and shape[0] == 0 for shape in shapes):
        got = f"inputs of shape {examples.describe(inputs)}"
        if hasattr(targets, "shape"):
            got += f" and targets of shape {tuple(targets.shape)}"
        raise layer_error(
            where, f"batch is empty: 0 examples ({got}); pass at least one example"
        )
    return inputs, targets


def _check_positive_ints(where: str, **values: Any) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise layer_error(where, f"{name} must be an int >= 1, got {value!r}")


def _check_step_args(model: Layer, loss_fn: Any, optimizer: Any, where: str) -> None:
    check_layer_type(where, model)
    if not callable(loss_fn):
        raise layer_error(
            where, f"loss_fn must be callable (outputs, targets) -> loss, got {loss_fn!r}",
            TypeError,
        )
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise layer_error(
            where,
            f"optimizer must be an optax.GradientTransformation such as "
            f"optax.adam(1e-3), got {type(optimizer).__name__}",
            TypeError,
        )


def _make_step(model: Layer, loss_fn: LossFn, optimizer: optax.GradientTransformation):
    def step(params, opt_state, batch, *, key=None, weights=None, state=None):
        _check_opt_state(optimizer, params, opt_state)
        inputs, targets = _batch_arrays("train_step", batch)
        weights = as_array(weights)
        (loss, new_state), grads = jax.value_and_grad(
            lambda p: _batch_loss(model, loss_fn, p, inputs, targets, key, weights, state),
            has_aux=True,
        )(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if state is None:
            return params, opt_state, {"loss": loss}
        return params, opt_state, {"loss": loss}, new_state

    return step


def _check_opt_state(optimizer: optax.GradientTransformation, params: Any, opt_state: Any) -> None:
    """Raises unless `opt_state` has the structure and shapes `optimizer.init(params)` makes.

    Runs while the step is traced (shapes only, via `jax.eval_shape`), so it
    costs nothing per step; it names the first path that differs instead of
    letting optax fail later with "add got incompatible shapes".
    """
    want = jax.tree_util.tree_flatten_with_path(jax.eval_shape(optimizer.init, params))[0]
    got = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    problem = None
    for (want_path, w), (got_path, g) in zip(want, got):
        if path_str(want_path) != path_str(got_path):
            problem = (f"at {path_str(got_path)!r}: optimizer.init(params) has "
                       f"{path_str(want_path)!r} there")
        elif tuple(jnp.shape(g)) != tuple(w.shape):
            problem = (f"at {path_str(got_path)!r}: expected shape {tuple(w.shape)}, "
                       f"got {tuple(jnp.shape(g))}")
        if problem:
            break
    if problem is None and len(want) != len(got):
        counts = f"optimizer.init(params) has {len(want)} arrays, opt_state {len(got)}"
        if len(want) > len(got):
            problem = f"at {path_str(want[len(got)][0])!r}: missing ({counts})"
        else:
            problem = f"at {path_str(got[len(want)][0])!r}: not expected ({counts})"
    if problem:
        raise layer_error(
            "train_step",
            f"opt_state does not fit the params {problem}. Make it with "
            f"optimizer.init(params) for these params and this optimizer",
        )


class _Step:
    """A jitted train step that explains, instead of XLA, an input that was donated."""

    def __init__(self, jitted: Callable[..., Any]):
        self._jitted = jitted
        functools.update_wrapper(self, jitted)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        batch = args[2] if len(args) > 2 else kwargs.get("batch")
        check_int32("train_step", batch, "batch")
        try:
            return self._jitted(*args, **kwargs)
        except (ValueError, RuntimeError) as error:
            deleted = first_deleted(dict(zip(("params", "opt_state"), args)), kwargs)
            if deleted is None:
                raise
            raise donated_error("train_step", deleted) from error

    def __getattr__(self, name: str) -> Any:  # lower, trace, _cache_size, ...
        if name == "_jitted":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._jitted, name)


def first_deleted(*trees: Any) -> Optional[str]:
    """The path (`"params.0.W"`) of the first array in `trees` whose buffer is gone."""
    for tree in trees:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if isinstance(leaf, jax.Array) and leaf.is_deleted():
                return path_str(path)
    return None


def donated_error(where: str, path: str) -> Exception:
    """The error for an array that a donating train step already consumed."""
    return layer_error(
        where,
        f"the array at {path!r} was deleted: a train step donated it (reused its memory "
        f"for the new values), so it holds nothing now. Pass the params and opt_state "
        f"that the last step returned, or build the step with "
        f"lm.train_step(..., donate=False) to keep the arrays you pass in",
    )


def train_step(
    model: Layer, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
    donate: bool = True,
) -> Callable[..., tuple[Any, ...]]:
    """Returns a jitted `step(params, opt_state, batch, *, key=None)`.

    One step computes `loss = mean(loss_fn(outputs, targets))` over the batch
    (in float32, whatever the model's output dtype), its gradient with
    `jax.value_and_grad`, and applies `optimizer`'s update.

    By default the step DONATES `params` and `opt_state`: their buffers are
    reused for the new values, so a step does not hold two copies of the
    weights. The arrays you pass in are consumed; use the returned ones
    (passing a consumed one again raises an `lm.LaminaError` saying so). With
    `donate=False` the arrays you pass in stay valid, at the cost of a second
    copy of the weights and optimizer state during the step.

    Args:
      model: a `Layer`.
      loss_fn: `loss_fn(outputs, targets)`, per-example losses or a scalar,
        e.g. `optax.softmax_cross_entropy_with_integer_labels`.
      optimizer: an `optax.GradientTransformation`, e.g. `optax.adam(1e-3)`.
      donate: reuse the buffers of `params` and `opt_state` (the default).

    Returns:
      `step(params, opt_state, (inputs, targets), *, key=None, weights=None,
      state=None) -> (params, opt_state, {"loss": scalar})`, or with
      `state=` (a model with state, e.g. `lm.BatchNorm`) `(params,
      opt_state, metrics, state)`: the step runs in training mode and the
      running statistics come from the batch. `inputs` and `targets` carry
      a leading batch axis (arrays or nested Python lists; `inputs` may be
      a tuple or dict of arrays, for a model with several); a key turns on
      dropout; optional per-example `weights` of shape `(N,)` give a weighted
      mean (0 masks an example out). Compiled once per batch shape. The step
      raises a `ValueError` when traced with an empty batch, or with an
      `opt_state` that `optimizer.init(params)` would not make (naming the
      first path that differs).

    Example:
      >>> import jax, jax.numpy as jnp, optax, lamina as lm
      >>> model = lm.mlp([4, 1])
      >>> _, params = model.init(jax.random.key(0), (2,))
      >>> opt = optax.sgd(0.1)
      >>> step = lm.train_step(model, optax.squared_error, opt)
      >>> params, opt_state, metrics = step(params, opt.init(params), (jnp.ones((8, 2)), jnp.ones((8, 1))))
      >>> sorted(metrics)
      ['loss']
    """
    _check_step_args(model, loss_fn, optimizer, "train_step")
    if not isinstance(donate, bool):
        raise layer_error("train_step", f"donate must be True or False, got {donate!r}", TypeError)
    step = _make_step(model, loss_fn, optimizer)
    return _Step(jax.jit(step, donate_argnums=(0, 1) if donate else ()))


def per_example_grads(model: Layer, loss_fn: LossFn) -> Callable[..., Params]:
    """Returns a jitted `grads(params, batch)`: one gradient per example.

    This is `jax.vmap` of `jax.grad` over the examples: each example's
    gradient is the gradient of the loss on a one-example batch. Useful for
    differentially private training, influence estimates and gradient noise
    studies; in PyTorch it needs an extra library.

    Args:
      model: a `Layer`.
      loss_fn: `loss_fn(outputs, targets)` as for `train_step`.

    Returns:
      `grads(params, (inputs, targets), *, state=None)`: a params-shaped tree
      whose leaves have a leading batch axis, e.g. `grads[0]["W"]` of shape
      `(N, out, in)`. A model with state (e.g. `lm.BatchNorm`) needs
      `state=` and runs in inference mode, on the running statistics: batch
      statistics would make each example's gradient depend on the others.
      `inputs` and `targets` are arrays or nested Python lists; an empty
      batch raises a `ValueError`.

    Example:
      >>> import jax, numpy as np, optax, lamina as lm
      >>> model = lm.mlp([8, 3])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> grads = lm.per_example_grads(model, optax.softmax_cross_entropy_with_integer_labels)
      >>> g = grads(params, (np.ones((5, 4), np.float32), np.zeros(5, np.int32)))
      >>> g[0]["W"].shape, g[1]["b"].shape
      ((5, 8, 4), (5, 3))
    """
    _check_step_args(model, loss_fn, None, "per_example_grads")

    def one(params, x, y, state):
        # Inference mode: batch statistics would mix the examples' gradients.
        return _batch_loss(model, loss_fn, params, examples.tmap(lambda a: a[None], x), y[None],
                           None, None, state, train=False)[0]

    @functools.partial(jax.jit, static_argnames="train")
    def grads(params, batch, *, state=None, train=False):
        if train:
            raise layer_error(
                "per_example_grads",
                "train=True is not possible: per-example gradients are always in inference "
                "mode (train=False), since batch statistics would mix the examples' gradients",
                TypeError,
            )
        inputs, targets = _batch_arrays("per_example_grads", batch)
        return jax.vmap(jax.grad(one), in_axes=(None, 0, 0, None))(params, inputs, targets, state)

    return grads


def evaluate(
    model: Layer,
    params: Params,
    data: tuple[Any, Any],
    *,
    loss_fn: LossFn,
    batch_size: int = 1024,
    metrics: Optional[Mapping[str, Metric]] = None,
    state: Any = None,
) -> dict[str, float]:
    """Loss and metrics of `model` on `data`, in inference mode (no dropout).

    Args:
      model: a `Layer`.
      params: its params.
      data: an `(inputs, targets)` pair with a leading example axis; `inputs`
        may be a tuple or dict of arrays (a model with several inputs).
      loss_fn: as for `train_step`.
      batch_size: examples per forward call; the last batch is padded so one
        compiled program serves every batch.
      metrics: name -> `metric(outputs, targets)`; the default is
        `{"accuracy": lm.accuracy}` for integer targets and none otherwise.
      state: the model's state, for a model with state; its running
        statistics are used (inference mode).

    Returns:
      `{"loss": float, **{name: float}}` over all examples.

    Example:
      >>> import jax, numpy as np, optax, lamina as lm
      >>> model = lm.mlp([8, 3])
      >>> _, params = model.init(jax.random.key(0), (4,))
      >>> xs, ys = np.ones((10, 4), np.float32), np.zeros(10, np.int32)
      >>> result = lm.evaluate(model, params, (xs, ys),
      ...                      loss_fn=optax.softmax_cross_entropy_with_integer_labels)
      >>> sorted(result), 0.0 <= result["accuracy"] <= 1.0
      (['accuracy', 'loss'], True)
    """
    _check_positive_ints("evaluate", batch_size=batch_size)
    inputs, targets = as_dataset("evaluate", data)
    check_params(model, params, examples.example_shape(inputs))
    check_targets("evaluate", model, inputs, targets)
    check_ids("evaluate", model, params, inputs)
    return _evaluate(forward(model), params, inputs, targets, loss_fn,
                     batch_size, _default_metrics(metrics, targets), state)


def _default_metrics(metrics, targets):
    if metrics is not None:
        return dict(metrics)
    return {"accuracy": accuracy} if jnp.issubdtype(targets.dtype, jnp.integer) else {}


def _evaluate(fwd, params, inputs, targets, loss_fn, batch_size, metrics, state=None):
    n = targets.shape[0]
    outputs = []
    for start in range(0, n, batch_size):
        xs = examples.tmap(lambda a, start=start: a[start : start + batch_size], inputs)
        size = min(batch_size, n - start)
        pad = batch_size - size if n > batch_size else 0
        if pad:
            xs = examples.pad(xs, batch_size)
        out = fwd(params, xs) if state is None else fwd(params, xs, state=state)[0]
        outputs.append(out[: out.shape[0] - pad])
    outputs = jnp.concatenate(outputs)
    result = {"loss": float(jnp.mean(_per_example_loss(loss_fn, outputs, targets)))}
    for name, metric in metrics.items():
        result[name] = float(metric(outputs, targets))
    return result


