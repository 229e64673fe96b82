"""fit: the training loop, over arrays or any iterable of batches, resumable from checkpoints."""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamina._src.core.checks import check_key
from lamina._src.core.errors import layer_error
from lamina._src.core.forward import forward
from lamina._src.core.layer import Layer, Params, missing_state
from lamina._src.train.data import as_dataset, check_targets
from lamina._src.train.distributed import (
    agreed,
    data_mesh,
    local,
    multiprocess,
    on_mesh,
    replicated,
)
from lamina._src.train.feed import ArrayFeed, IterFeed, is_arrays
from lamina._src.train.resume import Checkpoints, Run, fingerprint
from lamina._src.train.step import (
    LossFn,
    Metric,
    _check_positive_ints,
    _check_step_args,
    _default_metrics,
    _evaluate,
    _make_step,
    donated_error,
    first_deleted,
)


def fit(
    model: Layer,
    params: Params,
    optimizer: optax.GradientTransformation,
    train_data: Any,
    *,
    loss_fn: LossFn,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    key: jax.Array,
    steps: Optional[int] = None,
    eval_data: Optional[tuple[Any, Any]] = None,
    metrics: Optional[Mapping[str, Metric]] = None,
    progress: bool = True,
    state: Any = None,
    checkpoint_dir: Any = None,
    checkpoint_every: Optional[int] = None,
    keep: int = 3,
    resume: bool = True,
) -> tuple[Any, ...]:
    """Trains `model` on `train_data`; returns params and history.

    `train_data` is either `(inputs, targets)` arrays or any iterable of
    `(inputs, targets)` batches: a generator, a `torch.utils.data.DataLoader`,
    a grain loader. Arrays are shuffled every epoch with a key split from
    `key` (so the same key gives the same run, bit for bit) and cut into
    batches of `batch_size`; an iterable's batches are used as they come, in
    its order. A short batch is padded to the batch size and its padding
    masked out of the loss, so every example counts once and the step
    compiles once. (A `loss_fn` that returns a scalar cannot be masked, nor
    can a model with state; then short batches are dropped.) Dropout gets a
    fresh key every step; evaluation runs without one.

    fit never invalidates the arrays you pass in: it trains (and donates to
    its jitted step) a copy of `params`, so one init serves many runs.

    With `checkpoint_dir`, fit saves everything the run needs to go on
    (params, optimizer state, model state, step, PRNG key, history, position
    in the data) every `checkpoint_every` steps and at the end, with orbax,
    keeping the latest `keep`. Called again with the same arguments, it
    continues from the latest complete checkpoint: a run killed at any moment
    and started again ends with the same params, bit for bit, as one never
    interrupted (in-memory arrays, on one machine). An iterable resumes
    through its iterator's `get_state`/`set_state` where it has them (grain);
    otherwise the interrupted pass is iterated again and the batches already
    used are skipped, which gives the same run only if the iterable yields
    the same batches again.

    In a run of several processes (after `lm.initialize_distributed`), fit
    trains data-parallel over every process's devices: each process passes
    the same params and its own block of the training rows (the same number
    in each), or an iterable yielding its own part of every batch, and the
    whole evaluation set; the rows together, process 0's first, give the
    run one process would make on them all. See the sharding how-to.

    Args:
      model: a `Layer`.
      params: initial params (e.g. from `model.init`).
      optimizer: an `optax.GradientTransformation`.
      train_data: `(inputs, targets)` arrays with a leading example axis, or
        an iterable of `(inputs, targets)` batches (arrays, tensors or
        nested lists with a leading batch axis). For a model with several
        inputs, `inputs` is a tuple or dict of arrays sharing the example
        axis, e.g. `((images, timesteps), targets)`.
      loss_fn: `loss_fn(outputs, targets)`, e.g.
        `optax.softmax_cross_entropy_with_integer_labels`.
      epochs: passes over the data, >= 1. A one-pass iterator (a
        generator) allows only 1.
      batch_size: examples per step, >= 1; needed for arrays. For an
        iterable it defaults to the first batch's size.
      key: PRNG key for shuffling and dropout.
      steps: optional bound on the number of steps in total, e.g. for an
        endless stream; give `epochs`, `steps` or both (training stops at
        whichever comes first).
      eval_data: optional `(inputs, targets)` evaluated after every epoch.
      metrics: name -> `metric(outputs, targets)` for `eval_data`; the default
        is accuracy for integer targets.
      progress: show a tqdm progress bar with epoch, step, loss and
        examples per second.
      state: the model's state (`lm.init_state(model, input_shape)`), for a
        model with state such as `lm.BatchNorm`: training updates it from
        each batch, evaluation uses it.
      checkpoint_dir: optional folder for resumable checkpoints.
      checkpoint_every: save every this many steps (counted over the whole
        run); by default at the end of every epoch. The last step is always
        saved.
      keep: how many checkpoints to keep, the latest ones.
      resume: continue from the latest checkpoint in `checkpoint_dir`; with
        False, a folder that already holds checkpoints is an error.

    Returns:
      `(params, history)` with per-epoch lists `history["train_loss"]` and,
      with `eval_data`, `"eval_loss"` and `"eval_<metric>"` (e.g.
      `"eval_accuracy"`, a fraction in [0, 1]); with `state=`, `(params,
      history, state)`. A run that `steps` stops inside an epoch gets a last
      entry for that partial epoch.

    Raises:
      ValueError: inputs and targets of different lengths, empty data,
        non-finite inputs, integer targets outside the model's classes,
        params that do not fit the model, or a `checkpoint_dir` holding
        checkpoints of a different run.
      FloatingPointError: the loss became NaN or infinite; the message names
        the epoch and step, and the checkpoint to resume from.

    Example:
      >>> import jax, numpy as np, optax, lamina as lm
      >>> xs = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
      >>> ys = (xs[:, 0] > 0).astype(np.int32)
      >>> model = lm.mlp([16, 2])
      >>> _, params = model.init(jax.random.key(0), (2,))
      >>> params, history = lm.fit(model, params, optax.adam(1e-2), (xs, ys),
      ...     loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=3,
      ...     batch_size=16, key=jax.random.key(1), eval_data=(xs, ys), progress=False)
      >>> len(history["train_loss"]), sorted(history)
      (3, ['eval_accuracy', 'eval_loss', 'train_loss'])
    """
    _check_step_args(model, loss_fn, optimizer, "fit")
    _check_limits(epochs, steps, batch_size, checkpoint_every, keep)
    check_key("fit", key)
    if state is None and model.stateful:
        raise missing_state(model)
    deleted = first_deleted({"params": params}, {"state": state})
    if deleted is not None:
        raise donated_error("fit", deleted)
    step = _make_step(model, loss_fn, optimizer)
    mesh = None
    if multiprocess():  # one run over every process's devices: params on all of them
        mesh = data_mesh()
        params = replicated("fit", "params", params, mesh)
        state = None if state is None else replicated("fit", "model state", state, mesh)
        key = _replicated_key(key, mesh)

    def checked() -> tuple[Any, Optional[_EvalData]]:
        if is_arrays(train_data):
            feed: Any = ArrayFeed(model, params, loss_fn, step, train_data, batch_size)
        else:
            feed = IterFeed(model, params, loss_fn, step, train_data, batch_size, epochs, mesh)
        return feed, _eval_data(model, eval_data, metrics)

    # Each process checks its own data: one refusing it must stop the others too.
    feed, evaluation = agreed("fit", checked)
    if mesh is not None and isinstance(feed, ArrayFeed):
        feed.spread(mesh)
    params = jax.tree.map(jnp.copy, params)  # the step donates this copy, not the caller's
    opt_state = optimizer.init(params)
    if mesh is not None:
        opt_state = on_mesh(opt_state, mesh)
    run = Run(params, opt_state, state, key)
    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(checkpoint_dir, keep, fingerprint(model, run, feed.describe(), optimizer))
    bar = None
    try:
        if checkpoints is not None:
            run = checkpoints.resume(run, resume)
        bar = _Progress(progress, epochs, steps, feed.steps, run.step)
        loop = _Loop(feed, forward(model), loss_fn, evaluation, epochs, steps, checkpoints,
                     checkpoint_every, bar)
        run = loop.train(run)
        history = loop.history(run)
    finally:
        if bar is not None:
            bar.close()
        if checkpoints is not None:
            checkpoints.close()
    params, state = local(run.params), local(run.state)
    return (params, history) if state is None else (params, history, state)


def _replicated_key(key: jax.Array, mesh: Any) -> jax.Array:
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a raw uint32 key
        return replicated("fit", "keys", key, mesh)
    data = replicated("fit", "keys", jax.random.key_data(key), mesh)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))


def _check_limits(epochs, steps, batch_size, checkpoint_every, keep) -> None:
    if epochs is None and steps is None:
        raise layer_error("fit", "give epochs= (passes over the data), steps= (steps in "
                          "total) or both", TypeError)
    given = {"epochs": epochs, "steps": steps, "batch_size": batch_size,
             "checkpoint_every": checkpoint_every}
    _check_positive_ints("fit", keep=keep, **{k: v for k, v in given.items() if v is not None})


class _EvalData(NamedTuple):
    """fit's `eval_data`, checked, with the metrics to compute on it."""

    inputs: jax.Array
    targets: jax.Array
    metrics: dict[str, Metric]


def _eval_data(model, eval_data, metrics) -> Optional[_EvalData]:
    if eval_data is None:
        return None
    inputs, targets = as_dataset("fit: eval_data", eval_data)
    check_targets("fit: eval_data", model, inputs, targets)
    return _EvalData(inputs, targets, _default_metrics(metrics, targets))


class _Loop:
    """fit's loop: passes over the feed, one jitted step per batch, checkpoints on the way.

    Everything a step depends on is in the `Run` (params, states, the pass's
    key, the position), so a run resumed from a checkpoint does exactly the
    float operations of one never interrupted.
    """

    def __init__(self, feed, fwd, loss_fn, evaluation, epochs, steps, checkpoints, every, bar):
        self.feed, self.fwd, self.loss_fn, self.evaluation = feed, fwd, loss_fn, evaluation
        self.epochs, self.steps, self.checkpoints, self.every = epochs, steps, checkpoints, every
        self.bar = bar
        self._pending: list = []  # (batch index, loss on the device) not yet checked
        self._saved = checkpoints.latest() if checkpoints is not None else None

    def train(self, run: Run) -> Run:
        while (self.epochs is None or run.epoch < self.epochs) and not self._stopped(run):
            next_key, shuffle_key, dropout_key = jax.random.split(run.key, 3)
            used = run.batch
            for i, batch in self.feed.batches(shuffle_key, run.batch, run.data_state):
                run.data_state, run.batch = None, i + 1
                if batch is None:  # a short batch that padding cannot serve
                    continue
                out, n = self.feed.run(run.params, run.opt_state, run.state, i, batch,
                                       dropout_key)
                run.params, run.opt_state, metrics, run.state = out
                run.step += 1
                self._pending.append((i, metrics["loss"], n))
                self.bar.step_done(n)
                if self.bar.enabled and (run.step % 10 == 0 or i + 1 == self.feed.steps):
                    self.bar.show(run.epoch, i, self._check(run))
                elif len(self._pending) >= 100:
                    self._check(run)
                if self.every is not None and run.step % self.every == 0:
                    self._save(run)
                if self._stopped(run):
                    return run
            if run.batch == used and run.examples == 0 and not self._pending:
                return run  # the pass had no batches: a one-pass iterator is used up
            self._end_pass(run, next_key)
        return run

    def _stopped(self, run: Run) -> bool:
        return self.steps is not None and run.step >= self.steps

    def _check(self, run: Run) -> float:
        """Adds the pending losses to the pass's sum, raising at the first that is not finite.

        Returns the last loss. Waits for the steps that computed them.
        """
        values = jax.device_get(local([loss for _, loss, _ in self._pending]))
        last = float(values[-1]) if values else float("nan")
        for (i, _, n), value in zip(self._pending, values):
            if not np.isfinite(value):
                raise self._loss_error(run, i, value)
            run.loss_sum += float(value) * n
            run.examples += n
        self._pending.clear()
        return last

    def _loss_error(self, run: Run, i: int, value: float) -> Exception:
        epochs = f"/{self.epochs}" if self.epochs is not None else ""
        steps = f"/{self.feed.steps}" if self.feed.steps is not None else ""
        message = (f"the loss became {value} at epoch {run.epoch + 1}{epochs}, step {i + 1}"
                   f"{steps}. Check the inputs and targets for extreme values, or lower the "
                   f"learning rate.")
        if self.checkpoints is not None:
            if self._saved is None:
                message += f" No checkpoint was saved in {self.checkpoints.directory!r} yet."
            else:
                message += (f" The latest checkpoint is step {self._saved} in "
                            f"{self.checkpoints.directory!r}; fit(..., resume=True) goes on "
                            f"from it.")
        return layer_error("fit", message, FloatingPointError)

    def _end_pass(self, run: Run, next_key: jax.Array) -> None:
        self._close_pass(run, run.history)
        run.key, run.epoch, run.batch = next_key, run.epoch + 1, 0
        run.loss_sum, run.examples = 0.0, 0
        if self.every is None:
            self._save(run)

    def _close_pass(self, run: Run, history: dict) -> None:
        """Adds the pass's loss, and the evaluation, to `history`."""
        self._check(run)
        history["train_loss"].append(run.loss_sum / max(run.examples, 1))
        if self.evaluation is not None:
            ev = self.evaluation
            # Every process holds the whole evaluation set and evaluates it alone.
            result = _evaluate(self.fwd, local(run.params), ev.inputs, ev.targets, self.loss_fn,
                               self.feed.size, ev.metrics, local(run.state))
            for name, value in result.items():
                history.setdefault(f"eval_{name}", []).append(value)
            self.bar.evaluated(result)

    def _save(self, run: Run) -> None:
        if self.checkpoints is None or run.step == self._saved:
            return
        self._check(run)  # a checkpoint never holds a run whose loss went bad
        if run.batch > 0:
            run.data_state = self.feed.data_state()
        self.checkpoints.save(run)
        run.data_state = None
        self._saved = run.step

    def history(self, run: Run) -> dict:
        """The history to return: a last, partial epoch that `steps` cut short included."""
        self._save(run)
        history = {name: list(values) for name, values in run.history.items()}
        if run.batch > 0 and (run.examples or self._pending):
            self._close_pass(run, history)
        return history


class _Progress:
    """fit's tqdm bar: epoch, step, loss and examples per second; off, it does nothing."""

    def __init__(self, enabled: bool, epochs: Optional[int], steps: Optional[int],
                 per_pass: Optional[int], done: int):
        self.epochs, self.per_pass = epochs, per_pass
        # Every process checks the losses on the same steps (it raises on the
        # same one), but one bar serves the run: process 0's.
        self.enabled = enabled
        self._bar: Any = None
        self._examples, self._start = 0, time.perf_counter()
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm

            total = steps
            if epochs is not None and per_pass is not None:
                total = min(epochs * per_pass, steps or epochs * per_pass)
            self._bar = tqdm(total=total, initial=done, unit="step", leave=True)

    def step_done(self, examples: int) -> None:
        if self._bar is not None:
            self._examples += examples
            self._bar.update(1)

    def show(self, epoch: int, i: int, loss: float) -> None:
        if self._bar is None:
            return
        epochs = f"/{self.epochs}" if self.epochs is not None else ""
        per_pass = f"/{self.per_pass}" if self.per_pass is not None else ""
        rate = self._examples / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_description(f"epoch {epoch + 1}{epochs}")
        self._bar.set_postfix({"step": f"{i + 1}{per_pass}", "loss": f"{loss:.4f}",
                               "ex/s": f"{rate:.0f}"})

    def evaluated(self, result: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix(eval_loss=f"{result['loss']:.4f}",
                                  **{k: f"{v:.4f}" for k, v in result.items() if k != "loss"})

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
