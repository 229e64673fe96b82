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
from typing import Any, Optional

import jax
import numpy as np

from lamina._src.core.errors import layer_error
from lamina._src.core.layer import Layer
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


def fingerprint(model: Layer, run: Run, data: dict[str, Any]) -> dict[str, Any]:
    """What makes a run this run: model, shapes of params and optimizer state, data, key.

    The number of epochs or steps is not part of it, so a finished run can
    be resumed to train longer.
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
        **data,
    }


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
        self._manager = ocp.CheckpointManager(
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
        ocp = self._ocp
        meta = self._manager.restore(step, args=ocp.args.Composite(
            run=ocp.args.JsonRestore()))["run"]
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
        """Waits for the last save to be complete on disk."""
        self._manager.wait_until_finished()
        self._manager.close()


def _version() -> str:
    return __version__
