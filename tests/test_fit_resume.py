"""fit's checkpoints: a run killed with SIGKILL at any moment, then started again, ends bit-identical.

tests/fit_resume_script.py runs one fit with checkpoints in its own process;
this test kills it at random moments after the first checkpoint (and while
orbax is writing one), starts it again until it finishes, and compares the
final params, bit for bit, and the history with a run never interrupted.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import lamina as lm

pytestmark = pytest.mark.slow  # the tier `pytest -m 'not slow'` leaves out

SCRIPT = pathlib.Path(__file__).with_name("fit_resume_script.py")
TMP = ".orbax-checkpoint-tmp"


def start(checkpoint_dir, out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(SCRIPT.parent.parent / "src")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.Popen([sys.executable, str(SCRIPT), str(checkpoint_dir), str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finalised(directory):
    """The steps orbax finished (their folder renamed to the step), and whether a save is under way."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set(), False
    return {int(n) for n in names if n.isdigit()}, any(TMP in n for n in names)


def kill_at(process, directory, after_step, during_save, delay):
    """SIGKILLs `process` once a checkpoint after `after_step` exists: then, or mid-save."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        steps, saving = finalised(directory)
        if steps and max(steps) > after_step:
            if during_save and not saving:
                continue  # wait for orbax's temporary folder to appear
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            return finalised(directory)
        time.sleep(0.0005)
    raise AssertionError(f"the run ended before it could be killed: {process.communicate()}")


def test_killed_runs_resume_bit_identical(tmp_path):
    reference = start("-", tmp_path / "reference")
    directory = tmp_path / "checkpoints"
    rng = random.Random(0)
    # One kill a random time after a new checkpoint, two while a save is being written.
    moments = [(False, rng.uniform(0, 0.25))] + [(True, 0.0), (True, 0.0)]
    rng.shuffle(moments)
    last, kills, restored = -1, [], []
    for during_save, delay in moments:
        process = start(directory, tmp_path / "killed")
        steps, saving = kill_at(process, directory, last, during_save, delay)
        restored.append((process.stdout.read().strip(), max(last, -1)))
        kills.append((max(steps), saving))
        last = max(steps)
    process = start(directory, tmp_path / "killed")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    restored.append((out.strip(), last))
    assert reference.wait(timeout=120) == 0, reference.stderr.read()

    # Every start went on from the latest finished checkpoint, never a temporary one.
    assert restored[0][0] == "started"
    for said, latest in restored[1:]:
        assert said == f"resumed from step {latest}", (said, latest)
    print("kills at (latest step, mid-save):", kills)
    assert sum(saving for _, saving in kills) >= 2, kills  # killed with a save under way
    assert len({step for step, _ in kills}) >= 3, kills  # at three different places at least
    assert not any(TMP in n for n in os.listdir(directory))

    ours, theirs = (np.load(tmp_path / f"{name}.npz") for name in ("killed", "reference"))
    assert len(ours.files) == len(theirs.files) == 4
    for name in ours.files:
        assert ours[name].dtype == theirs[name].dtype
        assert ours[name].tobytes() == theirs[name].tobytes(), name
    history = json.loads((tmp_path / "killed.json").read_text())
    assert history == json.loads((tmp_path / "reference.json").read_text())
    assert len(history["train_loss"]) == 6


def small_run(data, tmp_path, seed=1, **kwargs):
    model = lm.serial(lm.Dense(8), lm.BatchNorm(), lm.Relu(), lm.Dropout(0.2), lm.Dense(2))
    _, params = model.init(jax.random.key(0), (3,))
    state = lm.init_state(model, (3,))
    return lm.fit(model, params, optax.adam(1e-2), data, loss_fn=optax.softmax_cross_entropy_with_integer_labels,
                  key=jax.random.key(seed), progress=False, state=state, **kwargs)


def batches(n=7):
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(n * 4, 3)).astype(np.float32)
    ys = (xs[:, 0] > 0).astype(np.int32)
    return [(xs[i : i + 4], ys[i : i + 4]) for i in range(0, n * 4, 4)]


def same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.mark.parametrize("source", ["list", "generator", "grain"])
def test_iterables_and_model_state_resume_where_they_stopped(tmp_path, source):
    data = batches()

    def make():
        if source == "list":
            return data
        if source == "generator":
            return (b for b in data)
        grain = pytest.importorskip("grain")
        return grain.MapDataset.source(data).to_iter_dataset()  # get_state/set_state

    epochs = 3 if source == "list" else 1
    whole = small_run(make(), tmp_path, epochs=epochs)
    directory = tmp_path / source
    first = small_run(make(), tmp_path, epochs=epochs, steps=5, checkpoint_dir=directory,
                      checkpoint_every=2)
    assert len(first[1]["train_loss"]) == 1  # the partial epoch it stopped in
    resumed = small_run(make(), tmp_path, epochs=epochs, checkpoint_dir=directory, checkpoint_every=2)
    same(resumed[0], whole[0])
    same(resumed[2], whole[2])  # BatchNorm's running statistics too
    assert resumed[1] == whole[1]
    assert sorted(int(n) for n in os.listdir(directory) if n.isdigit()) == ([18, 20, 21] if epochs == 3 else [5, 6, 7])


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    small_run(batches(), tmp_path, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"fit: checkpoint_dir '.*' holds a checkpoint \(step 7\) of a different "
                       r"run: its key is \[0, 1\], this run's is \[0, 2\]\. Pass another checkpoint_dir"):
        small_run(batches(), tmp_path, seed=2, epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"its batch_size is 4, this run's is 8"):
        small_run(batches(), tmp_path, epochs=1, batch_size=8, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"already holds checkpoints \(latest: step 7\) and resume=False"):
        small_run(batches(), tmp_path, epochs=1, checkpoint_dir=tmp_path, resume=False)
