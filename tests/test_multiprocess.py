"""Several processes, one run: two local processes of two CPU devices each, as JAX's
distributed runtime joins them, against one process training on the same rows."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from example_runner import load

import lamina as lm

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "examples", "multiprocess_training.py")
SCRIPT = os.path.join(HERE, "multiprocess_script.py")
EPOCHS = ["--epochs", "3", "--no-progress", "--timeout", "60"]


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env():
    # The processes set their own device count; nothing of this test's JAX setup.
    return {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _start(port, *args):
    """Both processes of one run, each `multiprocess_script.py` (the example, reporting)."""
    return [subprocess.Popen(
        [sys.executable, SCRIPT, *EPOCHS, *args, "--num-processes", "2", "--process-id", str(i),
         "--coordinator", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
        for i in range(2)]


def _finish(procs, timeout=240):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _params(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 2-process run to the end, through the example's own --launch."""
    out = tmp_path_factory.mktemp("mp") / "params.npz"
    done = subprocess.run([sys.executable, EXAMPLE, "--launch", "2", *EPOCHS, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, _params(out)


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_the_same_rows(uninterrupted):
    stdout, got = uninterrupted
    assert "2 process(es), 4 devices, 672 training rows per process" in stdout
    assert "final loss: " in stdout
    accuracy = float(stdout.split("test accuracy: ")[1].split("%")[0])
    assert accuracy > 85.0
    # One process, one device, the two processes' rows together in process order.
    example = load("multiprocess_training")
    args = example.parse(EPOCHS)
    _, params, history = example.train(args, slice(0, 2 * 672))
    want = [np.asarray(leaf) for leaf in jax.tree.leaves(params)]
    assert [w.shape for w in want] == [g.shape for g in got]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert f"final loss: {history['train_loss'][-1]:.4f}" in stdout


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_bit_for_bit(uninterrupted, tmp_path):
    checkpoints = tmp_path / "ckpt"
    port = _free_port()
    procs = _start(port, "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "7")
    deadline = time.monotonic() + 180
    # Kill process 1 once two checkpoints are complete (orbax renames a finished one to
    # its step), then process 0, which would wait for it forever.
    while time.monotonic() < deadline and len(
            [p for p in checkpoints.glob("*") if p.name.isdigit()]) < 2:
        assert all(p.poll() is None for p in procs), "the run ended before it was killed"
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[0].send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)
    saved = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert saved and saved[-1] < 3 * 21  # killed before the end: 3 epochs of 21 steps

    out = tmp_path / "params.npz"
    first, second = _finish(_start(_free_port(), "--checkpoint-dir", str(checkpoints),
                                   "--checkpoint-every", "7", "--out", str(out)))
    resumed = [line for line in first.splitlines() if line.startswith("resumed from step")]
    assert resumed and int(resumed[0].split()[-1]) >= saved[0], first[-2000:]
    assert "resumed from step" in second
    for g, w in zip(_params(out), uninterrupted[1]):
        np.testing.assert_array_equal(g, w)


def test_a_process_that_cannot_reach_the_coordinator_gets_a_clear_error_in_time():
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(lm.LaminaError, match=rf"initialize_distributed: could not reach the "
                       rf"coordinator at 127\.0\.0\.1:{port} within 1\.5 s"):
        lm.initialize_distributed(f"127.0.0.1:{port}", 2, 1, timeout=1.5)
    assert time.monotonic() - start < 10


def test_process_0_says_when_its_port_is_taken_and_bad_arguments_are_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"hosts the coordinator at 127\.0\.0\.1:{port}, "
                           r"but cannot listen there"):
            lm.initialize_distributed(f"127.0.0.1:{port}", 2, 0, timeout=1)
    with pytest.raises(ValueError, match=r"coordinator must be 'host:port'"):
        lm.initialize_distributed("localhost", 2, 0)
    with pytest.raises(ValueError, match=r"process_id must be below num_processes=2, got 2"):
        lm.initialize_distributed("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match=r"num_processes must be an int >= 1, got 0"):
        lm.initialize_distributed("127.0.0.1:1234", 0, 0)


@pytest.fixture(scope="module")
def by_hand_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("by_hand")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multiprocess_step_script.py"),
                               str(i), str(port), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env()) for i in range(2)]
    first, second = _finish(procs)
    sys.path.insert(0, HERE)
    import multiprocess_step_script as script

    return script, first, second, out


@pytest.mark.slow
def test_train_step_on_a_mesh_over_two_processes_equals_one_device(by_hand_run):
    script, first, _, out = by_hand_run
    assert "first W split as P('model', None)" in first
    model, params, opt, step = script.setup()
    opt_state = opt.init(params)
    for batch in script.batches():
        params, opt_state, _ = step(params, opt_state, batch)
    for g, w in zip(_params(out / "step.npz"), jax.tree.leaves(params)):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_fit_over_iterables_each_process_giving_half_of_every_batch(by_hand_run):
    script, first, _, out = by_hand_run
    model, params, opt, _ = script.setup()
    params, history = lm.fit(model, params, opt, script.batches(), epochs=2,
                             key=jax.random.key(1), progress=False,
                             loss_fn=optax.softmax_cross_entropy_with_integer_labels)
    for g, w in zip(_params(out / "fit.npz"), jax.tree.leaves(params)):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-5, atol=1e-6)
    losses = [float(v) for v in first.split("losses [")[1].split("]")[0].split(",")]
    np.testing.assert_allclose(losses, history["train_loss"], rtol=1e-5)


@pytest.mark.slow
def test_fit_refuses_what_would_leave_a_process_behind(by_hand_run):
    _, first, second, _ = by_hand_run
    for out in (first, second):
        assert ("differ: fit: the params differ between processes (those of process(es) [1] "
                "are not process 0's): every process must pass the same params") in out
    # Process 1 ran out: it and process 0 both stop, each saying why.
    assert ("short: fit: train_data batch 5: process(es) [1] ran out of batches while the "
            "others had more") in first
    assert "short: fit: train_data batch 5: process(es) [1] ran out of batches" in second
