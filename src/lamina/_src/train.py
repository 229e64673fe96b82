"""Training with optax: a jitted train step, per-example gradients, and a fit loop.

Training is `jax.grad` of a loss plus an optax update. The step minimises
`mean(loss_fn(outputs, targets))` where `outputs` is the model applied to every
example of the batch (`jax.vmap` of `apply`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamina._src.data import as_array, as_dataset, check_targets
from lamina._src.forward import apply_batch, apply_batch_state, forward
from lamina._src.layer import Layer, Params, check_key, check_layer_type, layer_error, missing_state
from lamina._src.params import check_params

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
    inputs, targets = (as_array(a) for a in _unpack_batch(where, batch))
    shape = getattr(inputs, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] == 0:
        got = f"inputs of shape {tuple(shape)}"
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


def _make_fit_step(step):
    """fit's step: gathers batch i of the epoch on the device, in one dispatch.

    `order` is the epoch's shuffled indices padded to `steps * batch_size`;
    `real` how many of them are examples. Slicing, gathering, masking the
    padding and deriving the step's dropout key all happen inside the jitted
    function, so the host issues one call per step.
    """

    def fit_step(params, opt_state, state, inputs, targets, order, real, i, key, masked):
        batch_size = order.shape[1]
        idx = order[i]
        weights = None
        if masked:
            weights = (i * batch_size + jnp.arange(batch_size) < real).astype(jnp.float32)
        batch = (jnp.take(inputs, idx, axis=0), jnp.take(targets, idx, axis=0))
        out = step(params, opt_state, batch, key=jax.random.fold_in(key, i), weights=weights,
                   state=state)
        return out if state is not None else out + (None,)

    return jax.jit(fit_step, donate_argnums=(0, 1), static_argnames="masked")


def train_step(
    model: Layer, loss_fn: LossFn, optimizer: optax.GradientTransformation
) -> Callable[..., tuple[Params, Any, dict[str, jax.Array]]]:
    """Returns a jitted `step(params, opt_state, batch, *, key=None)`.

    One step computes `loss = mean(loss_fn(outputs, targets))` over the batch
    (in float32, whatever the model's output dtype), its gradient with
    `jax.value_and_grad`, and applies `optimizer`'s update.

    The step DONATES `params` and `opt_state`: their buffers are reused for
    the new values, so a step does not hold two copies of the weights. The
    arrays you pass in are consumed; use the returned ones.

    Args:
      model: a `Layer`.
      loss_fn: `loss_fn(outputs, targets)`, per-example losses or a scalar,
        e.g. `optax.softmax_cross_entropy_with_integer_labels`.
      optimizer: an `optax.GradientTransformation`, e.g. `optax.adam(1e-3)`.

    Returns:
      `step(params, opt_state, (inputs, targets), *, key=None, weights=None,
      state=None) -> (params, opt_state, {"loss": scalar})`, or with
      `state=` (a model with state, e.g. `lm.BatchNorm`) `(params,
      opt_state, metrics, state)`: the step runs in training mode and the
      running statistics come from the batch. `inputs` and `targets` carry
      a leading batch axis (arrays or nested Python lists); a key turns on
      dropout; optional per-example `weights` of shape `(N,)` give a weighted
      mean (0 masks an example out). Compiled once per batch shape. The step
      raises a `ValueError` when traced with an empty batch.

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
    return jax.jit(_make_step(model, loss_fn, optimizer), donate_argnums=(0, 1))


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
    """
    _check_step_args(model, loss_fn, None, "per_example_grads")

    def one(params, x, y, state):
        # Inference mode: batch statistics would mix the examples' gradients.
        return _batch_loss(model, loss_fn, params, x[None], y[None], None, None, state,
                           train=False)[0]

    @jax.jit
    def grads(params, batch, *, state=None):
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
      data: an `(inputs, targets)` pair with a leading example axis.
      loss_fn: as for `train_step`.
      batch_size: examples per forward call; the last batch is padded so one
        compiled program serves every batch.
      metrics: name -> `metric(outputs, targets)`; the default is
        `{"accuracy": lm.accuracy}` for integer targets and none otherwise.
      state: the model's state, for a model with state; its running
        statistics are used (inference mode).

    Returns:
      `{"loss": float, **{name: float}}` over all examples.
    """
    _check_positive_ints("evaluate", batch_size=batch_size)
    inputs, targets = as_dataset("evaluate", data)
    check_params(model, params, inputs.shape[1:])
    return _evaluate(forward(model), params, inputs, targets, loss_fn,
                     batch_size, _default_metrics(metrics, targets), state)


def _default_metrics(metrics, targets):
    if metrics is not None:
        return dict(metrics)
    return {"accuracy": accuracy} if jnp.issubdtype(targets.dtype, jnp.integer) else {}


def _evaluate(fwd, params, inputs, targets, loss_fn, batch_size, metrics, state=None):
    n = inputs.shape[0]
    outputs = []
    for start in range(0, n, batch_size):
        xs = inputs[start : start + batch_size]
        pad = batch_size - xs.shape[0] if n > batch_size else 0
        if pad:
            xs = jnp.concatenate([xs, jnp.zeros((pad,) + xs.shape[1:], xs.dtype)])
        out = fwd(params, xs) if state is None else fwd(params, xs, state=state)[0]
        outputs.append(out[: out.shape[0] - pad])
    outputs = jnp.concatenate(outputs)
    result = {"loss": float(jnp.mean(_per_example_loss(loss_fn, outputs, targets)))}
    for name, metric in metrics.items():
        result[name] = float(metric(outputs, targets))
    return result


def fit(
    model: Layer,
    params: Params,
    optimizer: optax.GradientTransformation,
    train_data: tuple[Any, Any],
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    key: jax.Array,
    eval_data: Optional[tuple[Any, Any]] = None,
    metrics: Optional[Mapping[str, Metric]] = None,
    progress: bool = True,
    state: Any = None,
) -> tuple[Any, ...]:
    """Trains `model` on `train_data` for `epochs` passes; returns params and history.

    Each epoch shuffles the examples with a key split from `key` (so the same
    key gives the same run, bit for bit) and runs the jitted train step on
    batches of `batch_size`. The last partial batch is padded and its padding
    masked out of the loss, so every example counts once per epoch and the
    step compiles once. (A `loss_fn` that returns a scalar cannot be masked;
    then the last partial batch is dropped.) Dropout gets a fresh key every
    step; evaluation runs without one.

    `params` are donated to the train step: the arrays you pass in are
    consumed; use the returned ones.

    Args:
      model: a `Layer`.
      params: initial params (e.g. from `model.init`).
      optimizer: an `optax.GradientTransformation`.
      train_data: `(inputs, targets)` arrays with a leading example axis.
      loss_fn: `loss_fn(outputs, targets)`, e.g.
        `optax.softmax_cross_entropy_with_integer_labels`.
      epochs: number of passes over the data, >= 1.
      batch_size: examples per step, >= 1.
      key: PRNG key for shuffling and dropout.
      eval_data: optional `(inputs, targets)` evaluated after every epoch.
      metrics: name -> `metric(outputs, targets)` for `eval_data`; the default
        is accuracy for integer targets.
      progress: show a tqdm progress bar with epoch, step and loss.
      state: the model's state (`lm.init_state(model, input_shape)`), for a
        model with state such as `lm.BatchNorm`: training updates it from
        each batch, evaluation uses it. Batch statistics need whole batches,
        so with state the last partial batch of an epoch is dropped.

    Returns:
      `(params, history)` with per-epoch lists `history["train_loss"]` and,
      with `eval_data`, `"eval_loss"` and `"eval_<metric>"` (e.g.
      `"eval_accuracy"`, a fraction in [0, 1]); with `state=`, `(params,
      history, state)`.

    Raises:
      ValueError: inputs and targets of different lengths, empty data,
        non-finite inputs, integer targets outside the model's classes, or
        params that do not fit the model.
      FloatingPointError: the loss became NaN or infinite; the message names
        the epoch and step.
    """
    _check_step_args(model, loss_fn, optimizer, "fit")
    _check_positive_ints("fit", epochs=epochs, batch_size=batch_size)
    check_key("fit", key)
    if state is None and model.stateful:
        raise missing_state(model)
    train, evaluation = _fit_data(model, params, train_data, eval_data, metrics)
    batches = _plan_batches(model, params, loss_fn, train, batch_size)
    step = _make_fit_step(_make_step(model, loss_fn, optimizer))
    fwd = forward(model)
    opt_state = optimizer.init(params)
    history: dict[str, list[float]] = {"train_loss": []}
    bar = _Progress(progress, epochs, batches.steps)
    for epoch in range(epochs):
        key, shuffle_key, dropout_key = jax.random.split(key, 3)
        order = _epoch_order(shuffle_key, batches)
        params, opt_state, state, losses = _run_epoch(
            step, params, opt_state, state, train, order, dropout_key, batches, bar, epoch
        )
        _check_finite(losses, epoch, epochs, batches.steps)
        history["train_loss"].append(batches.mean(losses))
        if evaluation is not None:
            result = _evaluate(fwd, params, evaluation.inputs, evaluation.targets, loss_fn,
                               batches.size, evaluation.metrics, state)
            for name, value in result.items():
                history.setdefault(f"eval_{name}", []).append(value)
            bar.evaluated(result)
    bar.close()
    return (params, history) if state is None else (params, history, state)


class _EvalData(NamedTuple):
    """fit's `eval_data`, checked, with the metrics to compute on it."""

    inputs: jax.Array
    targets: jax.Array
    metrics: dict[str, Metric]


def _fit_data(model, params, train_data, eval_data, metrics):
    """Checks fit's data: `((inputs, targets), _EvalData or None)` as arrays."""
    inputs, targets = as_dataset("fit: train_data", train_data)
    check_params(model, params, inputs.shape[1:])
    check_targets("fit: train_data", model, inputs, targets)
    if eval_data is None:
        return (inputs, targets), None
    eval_inputs, eval_targets = as_dataset("fit: eval_data", eval_data)
    check_targets("fit: eval_data", model, eval_inputs, eval_targets)
    return (inputs, targets), _EvalData(
        eval_inputs, eval_targets, _default_metrics(metrics, eval_targets)
    )


class _Batches(NamedTuple):
    """How fit cuts `n` examples into `steps` batches of `size` every epoch.

    With `masked`, the last partial batch is padded and its padding masked
    out of the loss; without (a `loss_fn` returning a scalar cannot be
    masked), the last partial batch is dropped.
    """

    n: int
    size: int
    steps: int
    masked: bool

    def mean(self, losses: list) -> float:
        """The epoch's loss: the steps' losses weighted by their examples."""
        sizes = [min(self.size, self.n - i * self.size) for i in range(self.steps)]
        return float(np.average(np.asarray(jax.device_get(losses)), weights=sizes))


def _plan_batches(model, params, loss_fn, train, batch_size) -> _Batches:
    inputs, targets = train
    n = inputs.shape[0]
    size = min(batch_size, n)
    # Padding would enter batch statistics, so a model with state drops the
    # last partial batch instead.
    masked = not model.stateful and not _returns_scalar(
        model, params, loss_fn, inputs, targets, size)
    return _Batches(n, size, math.ceil(n / size) if masked else n // size, masked)


def _returns_scalar(model, params, loss_fn, inputs, targets, batch_size) -> bool:
    loss = jax.eval_shape(
        lambda p, x, y: _per_example_loss(loss_fn, apply_batch(model, p, x), y),
        params, inputs[:batch_size], targets[:batch_size],
    )
    return loss.ndim == 0


def _epoch_order(key: jax.Array, batches: _Batches) -> jax.Array:
    """The epoch's shuffled example indices, shape `(steps, size)`."""
    order = jax.random.permutation(key, batches.n)
    total = batches.steps * batches.size
    if total > batches.n:  # padding rows repeat example 0 and are masked out of the loss
        order = jnp.concatenate([order, jnp.zeros((total - batches.n,), order.dtype)])
    return order[:total].reshape(batches.steps, batches.size)


def _run_epoch(step, params, opt_state, state, train, order, key, batches, bar, epoch):
    """One pass over `order`, one jitted step per batch.

    Returns the new params, optimizer state and model state and the steps'
    losses, still on the device: nothing here waits for a step unless the bar
    shows it.
    """
    inputs, targets = train
    losses = []
    for i in range(batches.steps):
        params, opt_state, out, state = step(
            params, opt_state, state, inputs, targets, order, batches.n, i, key,
            masked=batches.masked,
        )
        losses.append(out["loss"])
        bar.step_done(epoch, i, losses)
    return params, opt_state, state, losses


def _check_finite(losses: list, epoch: int, epochs: int, steps: int) -> None:
    values = np.asarray(jax.device_get(losses))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise layer_error(
            "fit",
            f"the loss became {values[bad[0]]} at epoch {epoch + 1}/{epochs}, "
            f"step {bad[0] + 1}/{steps}. Check the inputs and targets for extreme "
            f"values, or lower the learning rate.",
            FloatingPointError,
        )


class _Progress:
    """fit's tqdm bar: epoch, step and loss, then the eval results; off, it does nothing."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.epochs, self.steps = epochs, steps
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=epochs * steps, unit="step", leave=True)

    def step_done(self, epoch: int, i: int, losses: list) -> None:
        if self._bar is None:
            return
        if i == self.steps - 1 or i % 10 == 0:
            # Showing the loss waits for it anyway, so check it on the way.
            _check_finite(losses, epoch, self.epochs, self.steps)
            self._bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
            self._bar.set_postfix(step=f"{i + 1}/{self.steps}", loss=f"{float(losses[-1]):.4f}")
        self._bar.update(1)

    def evaluated(self, result: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(eval_loss=f"{result['loss']:.4f}",
                                  **{k: f"{v:.4f}" for k, v in result.items() if k != "loss"})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
