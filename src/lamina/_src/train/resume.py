"""fit's resumable checkpoints: everything a run needs to go on, saved with orbax.

A checkpoint holds the params, the optimizer state, the model state, the
PRNG key of the current pass (its shuffle order and dropout keys derive from
it), and as JSON the step, the position in the data, the losses of the pass
so far, the history and a fingerprint of the run. orbax writes each one into
a temporary folder and renames it when complete, so a run killed at any
moment leaves only whole checkpoints behind, and the unfinished folder is
removed the next time. safetensors (`lm.save`) stays lamina's format for
weights; these are training checkpoints, with orbax's retention, async
writing and sharded arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
import tempfile
import time
import warnings
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lamina._src.core.errors import LaminaError, layer_error
from lamina._src.core.layer import Layer
from lamina._src.train.distributed import agreed
from lamina._src.version import __version__


@dataclasses.dataclass
class Run:
    """Where a run is: what a checkpoint stores, and what fit carries from step to step.

    `key` is the PRNG key of pass `epoch`, before it is split into the
    pass's shuffle and dropout keys; `batch` counts the batches of that pass
    already used; `loss_sum` and `examples` add up the pass's step losses
    (each times its examples, in float64, in step order) and examples so far.
    """

    params: Any
    opt_state: Any
    state: Any
    key: jax.Array
    step: int = 0
    epoch: int = 0
    batch: int = 0
    loss_sum: float = 0.0
    examples: int = 0
    history: dict = dataclasses.field(default_factory=lambda: {"train_loss": []})
    data_state: Any = None

    def arrays(self) -> dict[str, Any]:
        tree = {"params": self.params, "opt_state": self.opt_state, "key": _key_data(self.key)}
        if self.state is not None:
            tree["model_state"] = self.state
        return tree

    def record(self) -> dict[str, Any]:
        """The JSON part, copied: orbax writes it later, while the run goes on."""
        return copy.deepcopy({
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "loss_sum": self.loss_sum, "examples": self.examples,
            "history": self.history, "data_state": self.data_state})


def _key_data(key: jax.Array) -> jax.Array:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _with_key_data(like: jax.Array, data: jax.Array) -> jax.Array:
    if jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(like))
    return data


def fingerprint(model: Layer, run: Run, data: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """What makes a run this run: model, shapes of params and optimizer state, data, key, optimizer.

    The data is hashed (all of it for arrays, the first batch of an
    iterable), and the optimizer by the update it makes from a fixed probe,
    so another learning rate or another optimizer of the same state shapes
    is a different run. The number of epochs or steps is not part of it, so
    a finished run can be resumed to train longer.
    """
    def shapes(tree: Any) -> str:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        text = ";".join(f"{jax.tree_util.keystr(p)}{np.shape(x)}{getattr(x, 'dtype', type(x))}"
                        for p, x in leaves)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    return {
        # Function reprs carry memory addresses, which differ from run to run.
        "model": re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model)),
        "params": shapes(run.params),
        "opt_state": shapes(run.opt_state),
        "model_state": shapes(run.state),
        "key": np.asarray(_key_data(run.key)).tolist(),
        "optimizer": _optimizer_probe(optimizer, run.params),
        **data,
    }


def _optimizer_probe(optimizer: Any, params: Any) -> str:
    """The first update `optimizer` makes for params of ones and gradients of ones, in words.

    Six significant digits: another learning rate, weight decay or
    optimizer changes them; the last bits a different machine may round
    differently do not.
    """
    probe = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), jnp.result_type(p)), params)
    try:
        updates, _ = optimizer.update(probe, optimizer.init(probe), probe)
    except Exception as error:  # noqa: BLE001 - an optimizer that needs more (extra args)
        return f"not probed: {type(error).__name__}"
    values = [np.asarray(u, np.float64).ravel()[:4] for u in jax.tree.leaves(updates)]
    text = ";".join(",".join(f"{v:.6g}" for v in leaf) for leaf in values)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoints:
    """fit's checkpoints in one folder: resume from the latest, save every few steps."""

    def __init__(self, directory: Any, keep: int, fingerprint: dict[str, Any]):
        try:
            import orbax.checkpoint as ocp
        except ImportError as error:  # pragma: no cover - orbax is a dependency
            raise layer_error(
                "fit", f"checkpoint_dir needs orbax-checkpoint: pip install orbax-checkpoint "
                f"({error})", TypeError) from error
        self._ocp = ocp
        self.directory = os.path.abspath(os.fspath(directory))
        self._fingerprint = fingerprint
        # One lock per run: the processes of one multi-process run share the
        # folder (orbax has each write its own part), so process 0 holds it.
        self._lock = agreed("fit", lambda: _lock(self.directory)
                            if jax.process_index() == 0 else None)
        self._keep = keep
        try:
            self._manager = self._open(ocp, keep)
        except BaseException:
            self._unlock()
            raise

    def _open(self, ocp: Any, keep: int) -> Any:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                enable_async_checkpointing=True),
        )

    def latest(self) -> Optional[int]:
        return self._manager.latest_step()

    def resume(self, run: Run, resume: bool) -> Run:
        """The latest checkpoint of this run, or `run` itself when the folder has none.

        Raises:
          ValueError: the latest checkpoint is of a different run, or
            `resume=False` and the folder already holds checkpoints.
        """
        agreed("fit", lambda: self._check_room(run))
        step = self.latest()
        if step is None:
            return run
        if not resume:
            raise layer_error(
                "fit",
                f"checkpoint_dir {self.directory!r} already holds checkpoints (latest: step "
                f"{step}) and resume=False. Pass resume=True to continue from them, or an "
                f"empty folder to start over",
            )
        damaged = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore(step, run)
            except LaminaError:
                raise  # another run's checkpoint: not damage, and not to be set aside
            except Exception as error:  # noqa: BLE001 - orbax and the file system raise many kinds
                damaged.append(f"step {step} ({type(error).__name__}: {str(error)[:160]})")
                aside = self._set_aside(step)
                warnings.warn(
                    f"fit: checkpoint step {step} in {self.directory!r} is damaged "
                    f"({type(error).__name__}: {str(error)[:160]}); moved to {aside!r}, "
                    f"resuming from the checkpoint before it",
                    RuntimeWarning, stacklevel=4)
                continue
            if damaged:
                warnings.warn(f"fit: resumed from step {step} in {self.directory!r}, the newest "
                              f"intact checkpoint", RuntimeWarning, stacklevel=4)
            return restored
        raise layer_error(
            "fit",
            f"checkpoint_dir {self.directory!r} holds no intact checkpoint: "
            f"{'; '.join(damaged)}. The damaged ones were moved aside; pass resume=True "
            f"again to start over in this folder, or another checkpoint_dir",
        )

    def _check_room(self, run: Run) -> None:
        """Refuses to start when the disk cannot hold two checkpoints, before any step is spent."""
        try:  # os.access says yes to root on a read-only mount: write something instead
            with tempfile.TemporaryFile(dir=self.directory) as probe:
                probe.write(b"lamina")
                probe.flush()
        except OSError as error:
            raise layer_error(
                "fit", f"checkpoint_dir {self.directory!r} cannot be written "
                f"({error.strerror or error}); found now, before any step is spent. Pass a "
                f"folder you can write to") from None
        need = 2 * sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
                       for x in jax.tree.leaves(run.arrays()))
        stats = os.statvfs(self.directory) if hasattr(os, "statvfs") else None
        if stats is not None and stats.f_bavail * stats.f_frsize < need:
            raise layer_error(
                "fit", f"checkpoint_dir {self.directory!r} has {stats.f_bavail * stats.f_frsize} "
                f"bytes free, but two checkpoints of this run (one being written while the "
                f"last stays) need about {need}; found now, before any step is spent. Free "
                f"some space or pass another checkpoint_dir")

    def _restore(self, step: int, run: Run) -> Run:
        ocp = self._ocp
        meta = self._manager.restore(step, args=ocp.args.Composite(
            run=ocp.args.JsonRestore()))["run"]
        if not isinstance(meta, dict):
            raise ValueError(f"its run record is {type(meta).__name__}, not a dict")
        self._check_same_run(step, meta.get("fingerprint", {}))
        arrays = self._manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(run.arrays())))["arrays"]
        return Run(
            params=arrays["params"], opt_state=arrays["opt_state"],
            state=arrays.get("model_state"), key=_with_key_data(run.key, arrays["key"]),
            step=meta["step"], epoch=meta["epoch"], batch=meta["batch"],
            loss_sum=meta["loss_sum"], examples=meta["examples"], history=meta["history"],
            data_state=meta["data_state"],
        )

    def _set_aside(self, step: int) -> str:
        """Moves a damaged checkpoint out of orbax's sight (kept, in case it can be mended)."""
        source = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory, f"damaged-step-{step}-{int(time.time())}")
        if os.path.exists(source):
            os.replace(source, target)
        # orbax lists the steps once; it must see the folder as it is now.
        self._manager.close()
        self._manager = self._open(self._ocp, self._keep)
        return target

    def _check_same_run(self, step: int, saved: dict[str, Any]) -> None:
        for name, value in self._fingerprint.items():
            if saved.get(name) != value:
                raise layer_error(
                    "fit",
                    f"checkpoint_dir {self.directory!r} holds a checkpoint (step {step}) of a "
                    f"different run: its {name} is {saved.get(name)!r}, this run's is "
                    f"{value!r}. Pass another checkpoint_dir for this run",
                )

    def save(self, run: Run) -> None:
        """Starts writing `run` as checkpoint `run.step`; orbax finishes it in the background."""
        ocp = self._ocp
        self._manager.save(run.step, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(run.arrays()),
            run=ocp.args.JsonSave({"lamina": _version(), "fingerprint": self._fingerprint,
                                   **run.record()}),
        ))

    def close(self) -> None:
        """Waits for the last save to be complete on disk, then lets another run have the folder."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases its lock


LOCK_FILE = ".lamina-fit.lock"


def _lock(directory: str) -> Any:
    """An open file holding an exclusive lock on `directory`, or a LaminaError naming it.

    Two runs writing checkpoints into one folder would replace each other's;
    the second is stopped before it writes anything. The operating system
    drops the lock when its process dies, so a killed run never leaves the
    folder locked.
    """
    path = os.path.join(directory, LOCK_FILE)
    try:
        os.makedirs(directory, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        raise layer_error(
            "fit", f"checkpoint_dir {directory!r} cannot be written ({error.strerror or error}); "
            f"found now, before any step is spent. Pass a folder you can write to",
        ) from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks through fcntl
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process: EWOULDBLOCK
        handle.close()
        raise layer_error(
            "fit",
            f"checkpoint_dir {directory!r} is in use by another fit run (it holds the lock "
            f"{LOCK_FILE!r}); wait for that run to end, or give this one another "
            f"checkpoint_dir",
        ) from None
    except OSError as error:
        # The file system cannot lock (ENOLCK, some network mounts): that says
        # nothing about another run, so go on, unprotected, and say so.
        warnings.warn(
            f"fit: checkpoint_dir {directory!r} cannot be locked ({error.strerror or error}); "
            f"nothing stops a second run from writing to it at the same time",
            RuntimeWarning, stacklevel=4,
        )
    return handle


def _version() -> str:
    return __version__
