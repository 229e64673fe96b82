"""fit's data: in-memory arrays cut into shuffled batches, or batches from any iterable.

Both feeds give fit the same thing for each pass over the data (an epoch):
the batches in order, each run by one jitted train step of a fixed batch
size. A short batch is padded to that size and its padding masked out of the
loss (weight 0), so the step compiles once. A model with state, or a loss
that returns one scalar, cannot mask padding; then short batches are dropped.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
from typing import Any, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from lamina._src.core.checks import check_int32
from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.core.forward import apply_batch, apply_batch_state
from lamina._src.core.layer import Layer
from lamina._src.core.params import check_params
from lamina._src.train import examples
from lamina._src.train.data import (
    as_dataset,
    check_classes,
    check_ids,
    check_targets,
    target_classes,
)
from lamina._src.train.distributed import all_processes_sum, every_process, rows, split_rows
from lamina._src.train.step import _per_example_loss, _unpack_batch


def is_arrays(data: Any) -> bool:
    """Whether `data` is one `(inputs, targets)` pair rather than an iterable of batches.

    A pair's targets are an array (anything with a `shape`) or nested lists
    of numbers, and its inputs that too, or (in a tuple pair) a tuple or dict
    of arrays, for several inputs; a list of batches holds `(inputs,
    targets)` pairs. An array on its own counts as a (bad) pair, so it gets
    the pair's error message.
    """
    if hasattr(data, "shape"):
        return True
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    inputs, targets = data
    if _is_batch(targets) or not _is_array(targets):  # e.g. list(a_torch_loader) of two batches
        return False
    if examples.is_tree(inputs):
        # `((images, timesteps), targets)`: a tuple, where a list of a batch and
        # an array is a list of batches (a bad one, told so batch by batch).
        return isinstance(data, tuple) and all(
            _is_array(a) for a in examples.leaves(examples.tmap(lambda a: a, inputs)))
    return _is_array(inputs)


def _is_batch(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and all(
        hasattr(a, "shape") for a in item)


def _is_array(item: Any) -> bool:
    return hasattr(item, "shape") or (isinstance(item, list) and not _holds_pairs(item))


def _holds_pairs(items: list) -> bool:
    return bool(items) and isinstance(items[0], (tuple, list)) and any(
        hasattr(a, "shape") for a in items[0])


def _returns_scalar(model, params, loss_fn, inputs, targets) -> bool:
    """Whether `loss_fn` gives one scalar per batch; refuses a loss that fails on these targets."""
    if model.stateful:
        state = model.init_state(examples.example_shape(inputs))
        outputs = jax.eval_shape(
            lambda p, x: apply_batch_state(model, p, x, None, state, False)[0], params, inputs)
    else:
        outputs = jax.eval_shape(lambda p, x: apply_batch(model, p, x), params, inputs)
    try:
        loss = jax.eval_shape(lambda o, y: _per_example_loss(loss_fn, o, y), outputs, targets)
    except Exception as error:  # noqa: BLE001 - whatever the user's loss raises, said plainly
        raise _loss_error(loss_fn, outputs, targets, error) from error
    return loss.ndim == 0


def _loss_error(loss_fn: Any, outputs: Any, targets: Any, error: Exception) -> Exception:
    name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
    hint = ""
    if "integer_labels" in name:
        if jnp.issubdtype(targets.dtype, jnp.floating):
            hint = (f"; the targets are {targets.dtype}, but {name} takes integer class "
                    f"labels: pass labels.astype(jnp.int32), or for soft labels a loss such "
                    f"as optax.softmax_cross_entropy")
        elif targets.ndim == jnp.ndim(outputs):
            hint = (f"; the targets look one-hot, but {name} takes class labels of shape "
                    f"{tuple(outputs.shape[:-1])}: pass labels.argmax(-1), or use "
                    f"optax.softmax_cross_entropy")
    return layer_error(
        "fit",
        f"loss_fn {name} fails on the model's outputs {_struct(outputs)} and the targets "
        f"{_struct(targets)}{hint} ({type(error).__name__}: {str(error)[:200]})",
    )


def _struct(x: Any) -> str:
    return f"{tuple(x.shape)} {x.dtype}" if hasattr(x, "shape") else type(x).__name__


def digest(*arrays: Any) -> str:
    """A hash of the arrays' values, shapes and dtypes: the same data, or not."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


class ArrayFeed:
    """In-memory `(inputs, targets)`: every pass shuffles them with its own key.

    The arrays go to the device once; each step gathers its batch there, from
    the pass's order, inside the jitted step, so the host issues one call per
    step. The order is a function of the pass's key, so a resumed run
    recomputes it rather than storing it.
    """

    one_pass = False

    def __init__(self, model: Layer, params: Any, loss_fn: Any, step: Any, data: Any,
                 batch_size: Optional[int]):
        if batch_size is None:
            raise layer_error("fit", "batch_size is needed for (inputs, targets) arrays")
        self.inputs, self.targets = as_dataset("fit: train_data", data)
        check_params(model, params, examples.example_shape(self.inputs))
        check_targets("fit: train_data", model, self.inputs, self.targets)
        check_ids("fit: train_data", model, params, self.inputs)
        self._local = (self.inputs, self.targets)
        self.n = self.targets.shape[0]
        self.size = min(batch_size, self.n)
        # Padding would enter batch statistics, so a model with state drops the
        # last partial batch instead.
        scalar = _returns_scalar(model, params, loss_fn, examples.head(self.inputs, self.size),
                                 self.targets[: self.size])
        self.masked = not model.stateful and not scalar
        self._batch_size, self._train_step = batch_size, step
        self._batches(None)
        self._order: Any = None

    def _batches(self, mesh: Any) -> None:
        self.steps = math.ceil(self.n / self.size) if self.masked else self.n // self.size
        self._step = _jit_array_step(self._train_step, mesh)

    def spread(self, mesh: Any) -> None:
        """Several processes: each one's rows become its part of one data set over `mesh`,
        process 0's rows first, shuffled and batched as one (a collective: all call it)."""
        self.inputs = rows("fit: train_data", self.inputs, mesh)
        self.targets = rows("fit: train_data", self.targets, mesh, "targets")
        self.n = self.targets.shape[0]
        self.size = min(self._batch_size, self.n)
        self._batches(mesh)

    def describe(self) -> dict[str, Any]:
        return {"data": "arrays", "examples": self.n, "inputs": examples.spec(self.inputs),
                "targets": examples.spec(self.targets), "batch_size": self.size,
                "data_sha256": every_process(digest(*examples.leaves(self._local[0]),
                                                    self._local[1]))}

    def batches(self, shuffle_key: jax.Array, start: int, data_state: Any) -> Iterator:
        """`(i, i)` for each batch `i` of the pass from `start` on: the step gathers it."""
        order = jax.random.permutation(shuffle_key, self.n)
        total = self.steps * self.size
        if total > self.n:  # padding rows repeat example 0 and are masked out of the loss
            order = jnp.concatenate([order, jnp.zeros((total - self.n,), order.dtype)])
        self._order = order[:total].reshape(self.steps, self.size)
        for i in range(start, self.steps):
            yield i, i

    def run(self, params, opt_state, state, i, batch, key):
        """One step on batch `i`: `((params, opt_state, metrics, state), examples)`."""
        out = self._step(params, opt_state, state, self.inputs, self.targets, self._order,
                         self.n, i, key, masked=self.masked)
        return out, min(self.size, self.n - i * self.size)

    def data_state(self) -> None:
        return None


def _jit_array_step(step, mesh=None):
    """The array feed's step: gathers batch i of the pass on the device, in one dispatch.

    `order` is the pass's shuffled indices padded to `steps * batch_size`;
    `real` how many of them are examples. Slicing, gathering, masking the
    padding and deriving the step's dropout key all happen inside the jitted
    function. Over a `mesh` of several processes the gathered batch is split
    over its devices, so each computes its part (data parallel).
    """

    def array_step(params, opt_state, state, inputs, targets, order, real, i, key, masked):
        batch_size = order.shape[1]
        idx = order[i]
        weights = None
        if masked:
            weights = (i * batch_size + jnp.arange(batch_size) < real).astype(jnp.float32)
        batch = (examples.take(inputs, idx), jnp.take(targets, idx, axis=0))
        if mesh is not None and batch_size % mesh.size == 0:
            batch = jax.lax.with_sharding_constraint(batch, split_rows(mesh))
        out = step(params, opt_state, batch, key=jax.random.fold_in(key, i), weights=weights,
                   state=state)
        return out if state is not None else out + (None,)

    return jax.jit(array_step, donate_argnums=(0, 1), static_argnames="masked")


def _jit_batch_step(step):
    """The iterable feed's step: the batch comes in whole, with its weights."""

    def batch_step(params, opt_state, state, inputs, targets, weights, i, key):
        out = step(params, opt_state, (inputs, targets), key=jax.random.fold_in(key, i),
                   weights=weights, state=state)
        return out if state is not None else out + (None,)

    return jax.jit(batch_step, donate_argnums=(0, 1))


class IterFeed:
    """Batches from any iterable of `(inputs, targets)`: a generator, a DataLoader, grain.

    Every batch has the first batch's size (or `batch_size`) after padding,
    so the step compiles once. A pass is one `iter(data)`; an iterator that
    is its own `iter` (a generator) gives one pass only. A resumed run
    restores the pass's iterator with its `set_state` where it has one (grain),
    and otherwise iterates the pass again and skips the batches already used.
    """

    def __init__(self, model: Layer, params: Any, loss_fn: Any, step: Any, data: Any,
                 batch_size: Optional[int], epochs: Optional[int], mesh: Any = None):
        try:
            it = iter(data)
        except TypeError:
            raise layer_error(
                "fit",
                f"train_data must be (inputs, targets) arrays or an iterable of (inputs, "
                f"targets) batches, got {type(data).__name__}",
                TypeError,
            ) from None
        self.data, self.one_pass = data, it is data
        if self.one_pass and epochs is not None and epochs > 1:
            raise layer_error(
                "fit",
                f"train_data is a one-pass iterator ({type(data).__name__}), so epochs={epochs} "
                f"cannot be done: pass something iter() can start again (a list, a "
                f"torch DataLoader, a grain loader), or steps= with a stream that repeats",
            )
        first = next(it, None)
        if first is None:
            raise layer_error("fit", "train_data yielded no batches")
        inputs, targets = self._arrays(0, first)
        self.size = batch_size or targets.shape[0]
        shape = examples.example_shape(inputs)
        check_params(model, params, shape)
        self._classes = (target_classes(model, shape)
                         if jnp.issubdtype(targets.dtype, jnp.integer) else None)
        scalar = _returns_scalar(model, params, loss_fn, inputs, targets)
        self.masked = not model.stateful and not scalar
        self._shapes = (shape, targets.shape[1:])
        self._ids = (model, params)  # to name an out-of-range id, batch by batch
        self._spec = {"inputs": examples.spec(inputs), "targets": examples.spec(targets)}
        self._first_digest = digest(*examples.leaves(inputs), targets)
        self._mesh = mesh  # several processes: each gives its own part of every batch
        self._pending: Optional[tuple] = (it, first)  # the first pass goes on from here
        self._iter: Any = None
        self.steps = None  # batches per pass, where the iterable tells (only shown)
        if not self.one_pass:
            try:
                self.steps = len(data)
            except TypeError:
                pass
        self._step = _jit_batch_step(step)

    def describe(self) -> dict[str, Any]:
        return {"data": "iterable", **self._spec, "batch_size": self.size,
                "first_batch_sha256": every_process(self._first_digest)}

    def batches(self, shuffle_key: jax.Array, start: int, data_state: Any) -> Iterator:
        """`(i, batch)` for each batch `i` of the pass from `start` on; `batch` None if dropped."""
        raw: Any
        if self._pending is not None:
            raw, first = self._pending
            self._pending = None
            source: Iterator = itertools.chain([first], raw)
        else:
            raw = source = iter(self.data)
        self._iter = raw
        if data_state is not None and callable(getattr(raw, "set_state", None)):
            raw.set_state(_decode_state(data_state))
            source = raw
        else:
            for _ in range(start):  # replays the pass up to where the run stopped
                if next(source, None) is None:
                    break  # then no batch follows (several processes: agreed below)
        if self._mesh is None:
            for i, batch in enumerate(source, start):
                yield i, self._prepare(i, batch)
            return
        yield from self._agreed(source, start)

    def _agreed(self, source: Iterator, start: int) -> Iterator:
        """Several processes: the batches every process has, prepared or dropped alike.

        Each step the processes say whether they have a batch and whether it
        is short or refused, before any of them runs the step, so that none
        waits for another that has stopped or dropped its part.
        """
        DONE, RUN, DROP, BAD = 0, 1, 2, 3
        for i in itertools.count(start):
            batch = next(source, None)
            prepared, error, status = None, None, DONE
            if batch is not None:
                try:
                    prepared = self._prepare(i, batch)
                    status = RUN if prepared is not None else DROP
                except LaminaError as raised:
                    error, status = raised, BAD
            every = [int(v) for v in np.ravel(multihost_utils.process_allgather(np.int32(status)))]
            if error is not None:
                raise error
            if BAD in every:
                raise layer_error(
                    f"fit: train_data batch {i}",
                    f"process(es) {[k for k, v in enumerate(every) if v == BAD]} refused "
                    f"their part of this batch (see their output), so this process stops too")
            if DONE in every and set(every) != {DONE}:
                raise layer_error(
                    f"fit: train_data batch {i}",
                    f"process(es) {[k for k, v in enumerate(every) if v == DONE]} ran out of "
                    f"batches while the others had more: every process's iterable must yield "
                    f"the same number of batches, each its part of every batch")
            if DONE in every:
                return
            yield i, prepared if DROP not in every else None

    def _arrays(self, i: int, batch: Any) -> tuple[Any, Any]:
        where = f"fit: train_data batch {i}"
        inputs, targets = _unpack_batch(where, batch)
        inputs = examples.arrays(inputs, device=False)
        targets = targets if isinstance(targets, jax.Array) else np.asarray(targets)
        n = examples.count(where, inputs)
        if targets.ndim < 1 or n != targets.shape[0]:
            raise layer_error(
                where, f"inputs and targets need one leading example axis of the same "
                f"length, got shapes {examples.describe(inputs)} and {targets.shape}")
        if n == 0:
            raise layer_error(where, "is empty: 0 examples")
        check_int32(where, inputs, "inputs")
        check_int32(where, targets, "targets")
        return inputs, targets

    def _prepare(self, i: int, batch: Any) -> Optional[tuple]:
        """`(inputs, targets, weights, examples)` padded to the batch size; None if dropped."""
        where = f"fit: train_data batch {i}"
        inputs, targets = self._arrays(i, batch)
        shape = examples.example_shape(inputs)
        if (shape, targets.shape[1:]) != self._shapes:
            raise layer_error(
                where,
                f"examples of shape {shape} with targets {targets.shape[1:]}, but "
                f"the first batch had {self._shapes[0]} with {self._shapes[1]}; every batch "
                f"must hold examples of one shape",
            )
        n = targets.shape[0]
        if n > self.size:
            raise layer_error(
                where, f"has {n} examples, more than the batch size {self.size} (batch_size=, "
                f"or the first batch's size)")
        check_classes(where, self._classes, targets)
        check_ids(where, *self._ids, inputs)
        if not self.masked:
            return (inputs, targets, None, n) if n == self.size else None
        weights = np.zeros(self.size, np.float32)
        weights[:n] = 1.0
        return examples.pad(inputs, self.size), examples.pad(targets, self.size), weights, n

    def run(self, params, opt_state, state, i, batch, key):
        """One step on `batch`: `((params, opt_state, metrics, state), examples)`."""
        inputs, targets, weights, n = batch
        if self._mesh is not None:  # this process's part of the batch: its own rows
            where = f"fit: train_data batch {i}"
            inputs, targets = rows(where, inputs, self._mesh), rows(where, targets, self._mesh)
            weights = None if weights is None else rows(where, weights, self._mesh)
            n = all_processes_sum(n)
        return self._step(params, opt_state, state, inputs, targets, weights, i, key), n

    def data_state(self) -> Any:
        """The pass iterator's own state, JSON-ready, where it has one (grain); else None.

        Several processes: None, since a checkpoint's record is process 0's
        alone; a resumed run replays the pass in every process instead.
        """
        if self._mesh is not None:
            return None
        get = getattr(self._iter, "get_state", None)
        if not callable(get) or not callable(getattr(self._iter, "set_state", None)):
            return None
        state = get()
        if isinstance(state, bytes):
            return {"bytes": base64.b64encode(state).decode("ascii")}
        try:
            json.dumps(state)
        except (TypeError, ValueError):
            return None
        return {"json": state}


def _decode_state(saved: dict) -> Any:
    return base64.b64decode(saved["bytes"]) if "bytes" in saved else saved["json"]
