"""What a fault-and-hostile-input probe found silently wrong, each pinned by a test.

Every test here failed on the code the probe ran against: a result that
looked fine and was not. References are torch modules, NumPy, or the
params before the fault, never lamina's own output for the same call.
"""

import random
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm

torch = pytest.importorskip("torch")  # a guard only: torch is in the test extra


def _twelve_linears():
    torch.manual_seed(0)
    widths = [3, 5, 4, 6, 3, 5, 4, 6, 3, 5, 4, 6, 2]
    net = torch.nn.Sequential(*[torch.nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
    model = lm.serial(*[lm.Dense(b) for b in widths[1:]])
    return net, model, (widths[0],)


def _torch_out(net, x):
    with torch.no_grad():
        return net(torch.as_tensor(np.asarray(x))).numpy()


@pytest.mark.parametrize("order", ["text", "reversed", "shuffled"])
def test_from_torch_matches_modules_by_their_index_not_by_dict_order(order):
    net, model, shape = _twelve_linears()
    state = {k: v for k, v in net.state_dict().items()}
    keys = list(state)
    if order == "text":  # what safetensors hands back: 0, 1, 10, 11, 2, ...
        keys.sort()
    elif order == "reversed":
        keys.reverse()
    else:
        random.Random(0).shuffle(keys)
    assert keys != list(state)
    params = lm.from_torch({k: state[k] for k in keys}, like=(model, shape))
    x = np.random.default_rng(0).normal(size=(7,) + shape).astype(np.float32)
    np.testing.assert_allclose(lm.forward(model)(params, x), _torch_out(net, x), rtol=1e-5, atol=1e-5)
    # The same with a params tree as `like`, without the model.
    _, like = model.init(jax.random.key(0), shape)
    params = lm.from_torch({k: state[k] for k in keys}, like=like)
    np.testing.assert_allclose(lm.forward(model)(params, x), _torch_out(net, x), rtol=1e-5, atol=1e-5)


def test_to_torch_files_each_layer_under_its_own_key_whatever_order_like_gives():
    net, model, shape = _twelve_linears()
    _, params = model.init(jax.random.key(1), shape)
    keys = list(net.state_dict())
    random.Random(1).shuffle(keys)
    out = lm.to_torch(params, like=keys)
    assert list(out) == keys
    for i, layer in enumerate(params):
        np.testing.assert_array_equal(out[f"{i}.weight"], np.asarray(layer["W"]))
        np.testing.assert_array_equal(out[f"{i}.bias"], np.asarray(layer["b"]))
    net.load_state_dict({k: torch.as_tensor(v) for k, v in out.items()})
    x = np.random.default_rng(1).normal(size=(4,) + shape).astype(np.float32)
    np.testing.assert_allclose(lm.forward(model)(params, x), _torch_out(net, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_from_torch_copies_so_torch_updates_in_place_never_reach_lamina():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model = lm.serial(lm.Dense(4), lm.BatchNorm())
    params, state = lm.from_torch(net.state_dict(), like=(model, (3,)))
    before = jax.tree.map(np.array, (params, state))
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    net.train()
    net(torch.randn(8, 3)).square().sum().backward()
    opt.step()  # changes the weights and (in train mode) the running statistics in place
    assert not np.allclose(net[0].weight.detach().numpy(), before[0][0]["W"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, (params, state)), before)


def test_with_dtype_keeps_the_state_of_a_model_with_batch_norm():
    model = lm.with_dtype(lm.serial(lm.Dense(4), lm.BatchNorm()), jnp.bfloat16)
    assert model.stateful
    _, params = model.init(jax.random.key(0), (3,))
    state = lm.init_state(model, (3,))
    xs = jax.random.normal(jax.random.key(1), (16, 3)) * 3 + 2
    _, new = lm.forward(model)(params, xs, state=state, train=True)
    # torch's BatchNorm1d(momentum=0.1): running_mean <- 0.9 * 0 + 0.1 * batch mean.
    hidden = np.asarray(lm.forward(model.model.layers[0])(params[0], xs.astype(jnp.bfloat16)),
                        np.float32)
    np.testing.assert_allclose(np.asarray(new[1]["running_mean"], np.float32),
                               0.1 * hidden.mean(0), rtol=0.02, atol=0.02)


def test_int64_ids_that_do_not_fit_int32_are_refused_not_wrapped_to_a_valid_row():
    model = lm.Embedding(10, 4)
    _, params = model.init(jax.random.key(0), (2,))
    ids = np.array([[1, 2], [3, 2**32 + 3]], np.int64)  # wraps to 3 in 32 bits
    with pytest.raises(lm.LaminaError, match=r"4294967299 at index \(1, 1\).*int32.*wrap it to 3"):
        lm.forward(model)(params, ids)
    with pytest.raises(ValueError, match="out of range"):
        model.apply(params, ids[1])  # eager apply refused it already
    xent = lambda out, y: jnp.mean(out)  # noqa: E731
    with pytest.raises(lm.LaminaError, match=r"inputs holds 4294967299"):
        lm.evaluate(model, params, (ids, np.zeros(2, np.int32)), loss_fn=xent)


def _classifier_on_ids():
    model = lm.serial(lm.Embedding(10, 4), lm.Flatten(), lm.Dense(3))
    _, params = model.init(jax.random.key(0), (2,))
    return model, params


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_evaluate_refuses_targets_and_ids_out_of_range_as_fit_does():
    import optax

    model, params = _classifier_on_ids()
    ids = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
    xent = optax.softmax_cross_entropy_with_integer_labels
    with pytest.raises(lm.LaminaError, match=r"evaluate: targets must be class indices in \[0, 3\).*got 3"):
        lm.evaluate(model, params, (ids, np.array([0, 3, 1])), loss_fn=xent)
    bad = ids.copy()
    bad[2, 1] = 10
    with pytest.raises(lm.LaminaError, match=r"evaluate: example 2: .*Embedding\(10, 4\): id 10 at index \(1,\)"):
        lm.evaluate(model, params, (bad, np.array([0, 1, 2])), loss_fn=xent)
    with pytest.raises(lm.LaminaError, match=r"fit: train_data: example 2: .*Embedding\(10, 4\): id 10"):
        lm.fit(model, params, optax.sgd(0.1), (bad, np.array([0, 1, 2])), loss_fn=xent, epochs=1,
               batch_size=3, key=jax.random.key(0), progress=False)
    batches = [(ids, np.array([0, 1, 2])), (bad, np.array([0, 1, 2]))]
    with pytest.raises(lm.LaminaError, match=r"fit: train_data batch 1: example 2: .*id 10"):
        lm.fit(model, params, optax.sgd(0.1), batches, loss_fn=xent, epochs=1,
               key=jax.random.key(0), progress=False)
    # In range, evaluate runs and agrees with a NumPy forward pass.
    result = lm.evaluate(model, params, (ids, np.array([0, 1, 2])), loss_fn=xent)
    W = np.asarray(params[0]["W"])
    logits = W[ids].reshape(3, -1) @ np.asarray(params[2]["W"]).T + np.asarray(params[2]["b"])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(result["loss"], -logp[np.arange(3), [0, 1, 2]].mean(), rtol=1e-5)


def test_params_at_a_parameterless_layers_place_are_refused_everywhere():
    model = lm.serial(lm.Dense(4), lm.Relu(), lm.Dense(2))
    three = lm.serial(lm.Dense(4), lm.Dense(4), lm.Dense(2))
    _, params = three.init(jax.random.key(0), (3,))
    xs = jnp.ones((2, 3))
    for call in (lambda: lm.forward(model)(params, xs), lambda: model.apply(params, xs[0]),
                 lambda: lm.check_params(model, params, (3,))):
        with pytest.raises(lm.LaminaError, match=r"serial\[1\] Activation\(relu\).*(has no params|expected a tuple of length 0, got a dict)"):
            call()


def _saved(tmp_path, model=None):
    model = model or lm.serial(lm.Dense(4, act="relu"), lm.Dense(2))
    _, params = model.init(jax.random.key(0), (3,))
    path = tmp_path / "m.safetensors"
    lm.save(path, params, model=model)
    return path, params


def _with_model_text(path, edit):
    """The file at `path` with its model description edited by `edit(dict) -> object`."""
    import json
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    described = json.loads(header["__metadata__"]["lamina.model"])
    described["model"] = edit(described["model"])
    header["__metadata__"]["lamina.model"] = json.dumps(described)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])
    return path


def _nested(depth):
    node = {"layer": "Identity", "config": {}}
    for _ in range(depth):
        node = {"layer": "residual", "config": {"layer": node}}
    return node


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: 3, r"expected a layer at the top, got 3"),
    (lambda m: "Dense", r"expected a layer at the top"),
    (lambda m: True, r"expected a layer at the top"),
    (lambda m: {"initializer": "Normal", "config": {"stddev": 1.0}}, r"expected a layer at the top"),
    (lambda m: {"layer": "Builtin", "config": {}}, r"names layer 'Builtin', which this lamina does not have"),
    (lambda m: {"layer": "Dense", "config": {"out_features": 2, "w_init": {
        "initializer": "Initializer", "config": {}}}}, r"names initializer 'Initializer'"),
    (lambda m: {"layer": "Dense", "config": {"out_features": 2, "colour": "red"}}, r"Dense: .*colour"),
    (lambda m: {"layer": "Dense", "config": {"out_features": "2"}}, r"out_features must be an int"),
    (lambda m: {"layer": "Dense", "config": {"out_features": 2, "dtype": {"dtype": "V8"}}},
     r"dtype 'V8' is not a numeric dtype"),
    (lambda m: {"layer": "Dense", "config": [2]}, r"config of Dense must be a dict"),
    (lambda m: {"layer": "Dense", "config": {"out_features": 10**12}}, r"out_features must be at most 2\*\*31 - 1"),
    (lambda m: _nested(300), r"nested deeper than 64 levels"),
    (lambda m: {"layer": "serial", "config": {"layers": {"tuple": [
        {"layer": "Identity", "config": {}}, {"layer": "Dense", "config": {"out_features": 2}}]}}},
     r"at '0'.*Identity\(\) has no params"),
    (lambda m: {"layer": "Dense", "config": {"out_features": 2}}, r"expects a tuple of 2 entries|do not fit"),
])
def test_load_model_returns_a_layer_that_fits_its_params_or_refuses(tmp_path, edit, fragment):
    path, _ = _saved(tmp_path)
    _with_model_text(path, edit)
    with pytest.raises(lm.LaminaError, match=r"load_model\('.*m\.safetensors'\).*" + fragment):
        lm.load_model(path)


def test_load_model_checks_the_use_bias_flag_against_the_params(tmp_path):
    path, _ = _saved(tmp_path, lm.serial(lm.Dense(4, use_bias=False), lm.Dense(2)))
    _with_model_text(path, lambda m: {**m, "config": {"layers": {"tuple": [
        {"layer": "Dense", "config": {**m["config"]["layers"]["tuple"][0]["config"], "use_bias": True}},
        m["config"]["layers"]["tuple"][1]]}}})
    with pytest.raises(lm.LaminaError, match=r"at '0'.*no bias 'b'"):
        lm.load_model(path)


# --- files: what a killed save leaves, and what load refuses to read --------


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_temporaries_of_a_killed_save_are_removed_by_the_next_save_or_load(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.safetensors"
    lm.save(path, {"W": jnp.ones((2, 2))})
    # A writer that died: a process that has exited, its pid now free.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    host = socket.gethostname().replace(".", "_")
    stale = tmp_path / f".m.safetensors.{host}-{dead.stdout.strip()}.{'a' * 32}.tmp"
    stale.write_bytes(b"half a file")
    live = tmp_path / f".m.safetensors.{host}-1.{'b' * 32}.tmp"  # pid 1 is always running
    live.write_bytes(b"being written")
    other = tmp_path / ".other.safetensors.x-999999.{}.tmp".format("c" * 32)
    other.write_bytes(b"another file's")
    np.testing.assert_array_equal(lm.load(path)["W"], np.ones((2, 2)))
    assert not stale.exists() and live.exists() and other.exists()
    stale.write_bytes(b"half a file")
    lm.save(path, {"W": jnp.zeros((2, 2))})
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, path.name])


def test_load_reads_only_the_header_and_the_data_it_names(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    lm.save(path, {"W": jnp.arange(6.0).reshape(2, 3)})
    size = path.stat().st_size
    sizes = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            assert n >= 0, "read the whole file"
            sizes.append(n)
            return self.f.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    import builtins

    monkeypatch.setattr(builtins, "open", lambda p, mode="r", *a, **k: Counting(real_open(p, mode, *a, **k))
                        if str(p) == str(path) else real_open(p, mode, *a, **k))
    np.testing.assert_array_equal(lm.load(path)["W"], np.arange(6.0).reshape(2, 3))
    assert sum(sizes) <= size
    # 8 GiB more than its header names (a sparse file): refused without reading them.
    with real_open(path, "ab") as f:
        f.truncate(size + 2**33)
    sizes.clear()
    with pytest.raises(lm.LaminaError, match=r"corrupted safetensors file \(8589934592 bytes follow"):
        lm.load(path)
    assert sum(sizes) <= size


def test_load_refuses_a_folder_and_a_fifo_without_hanging(tmp_path):
    import os

    with pytest.raises(lm.LaminaError, match=r"load\('.*'\): this is a folder"):
        lm.load(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(lm.LaminaError, match=r"not a regular file"):
        lm.load(fifo)


# --- resumable runs: the same run, or a clear refusal ------------------------


def _data(seed=0, n=24):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n, 3)).astype(np.float32)
    return xs, (xs[:, 0] > 0).astype(np.int32)


def _run(directory, data=None, optimizer=None, **kwargs):
    import optax

    model = lm.mlp([6, 2])
    _, params = model.init(jax.random.key(0), (3,))
    args = dict(loss_fn=optax.softmax_cross_entropy_with_integer_labels, epochs=1, batch_size=8,
                key=jax.random.key(1), progress=False, checkpoint_dir=directory)
    args.update(kwargs)
    return lm.fit(model, params, optimizer or optax.sgd(0.1), data or _data(), **args)


@pytest.mark.slow  # trains with fit, or starts a subprocess
@pytest.mark.parametrize("change, fragment", [
    (dict(data=_data(seed=5)), r"its data_sha256 is"),
    (dict(optimizer="sgd-0.2"), r"its optimizer is"),
    (dict(optimizer="adamw"), r"its opt_state is|its optimizer is"),
])
def test_resume_refuses_a_different_run_of_the_same_shapes(tmp_path, change, fragment):
    import optax

    _run(tmp_path / "ckpt")
    if change.get("optimizer") == "sgd-0.2":
        change = dict(optimizer=optax.sgd(0.2))
    elif change.get("optimizer") == "adamw":
        _run(tmp_path / "adam", optimizer=optax.adam(1e-3))
        with pytest.raises(lm.LaminaError, match=r"checkpoint_dir '.*adam'.*different run.*" + fragment):
            _run(tmp_path / "adam", optimizer=optax.adamw(1e-3))
        return
    with pytest.raises(lm.LaminaError, match=r"checkpoint_dir '.*ckpt'.*different run.*" + fragment):
        _run(tmp_path / "ckpt", **change)
    _run(tmp_path / "ckpt", epochs=2)  # the same run goes on


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_resume_refuses_an_iterable_whose_first_batch_changed(tmp_path):
    xs, ys = _data()
    batches = [(xs[i : i + 8], ys[i : i + 8]) for i in range(0, 24, 8)]
    _run(tmp_path, data=batches, batch_size=None)
    other = [(xs[i : i + 8] + 1, ys[i : i + 8]) for i in range(0, 24, 8)]
    with pytest.raises(lm.LaminaError, match=r"different run.*its first_batch_sha256 is"):
        _run(tmp_path, data=other, batch_size=None)


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_two_runs_cannot_share_a_checkpoint_dir(tmp_path):
    from lamina._src.train.resume import _lock

    held = _lock(str(tmp_path))  # as a run in progress holds it
    try:
        with pytest.raises(lm.LaminaError, match=r"checkpoint_dir '.*' is in use by another fit run"):
            _run(tmp_path)
    finally:
        held.close()
    params, history = _run(tmp_path)  # free again once the other run ends
    assert len(history["train_loss"]) == 1


def test_a_file_system_that_cannot_lock_is_not_taken_for_another_run(tmp_path, monkeypatch):
    import errno
    import fcntl

    from lamina._src.train.resume import _lock

    def no_locks(handle, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(RuntimeWarning, match=r"checkpoint_dir '.*' cannot be locked \(No locks "
                                            r"available\); nothing stops a second run"):
        handle = _lock(str(tmp_path))
    handle.close()


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    import os

    whole = _run(tmp_path / "whole", epochs=3)
    directory = tmp_path / "ckpt"
    _run(directory, epochs=2, checkpoint_every=3)
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
    assert steps == [3, 6]
    # The newest: a file cut short. Then an empty step folder on top.
    newest = directory / "6"
    files = sorted((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64),
                   key=lambda p: p.stat().st_size)
    for f in files:
        f.write_bytes(f.read_bytes()[:10])
    (directory / "9").mkdir()
    with pytest.warns(RuntimeWarning) as caught:
        resumed = _run(directory, epochs=3, checkpoint_every=3)
    said = [str(w.message) for w in caught]
    assert len(said) == 3, said
    assert re.search(r"checkpoint step 9 .* is damaged", said[0])
    assert re.search(r"checkpoint step 6 .* is damaged", said[1])
    assert re.search(r"resumed from step 3 .*, the newest intact checkpoint", said[2])
    same = [np.asarray(a).tobytes() == np.asarray(b).tobytes()
            for a, b in zip(jax.tree.leaves(resumed[0]), jax.tree.leaves(whole[0]))]
    assert all(same)
    assert any(n.startswith("damaged-step-6") for n in os.listdir(directory))


@pytest.mark.slow  # trains with fit, or starts a subprocess
def test_an_unwritable_or_full_checkpoint_dir_is_found_before_any_step(tmp_path, monkeypatch):
    import os

    with pytest.raises(lm.LaminaError, match=r"checkpoint_dir '/proc/.*' cannot be written"):
        _run("/proc/lamina-checkpoints")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Full())
    with pytest.raises(lm.LaminaError, match=r"has 0 bytes free, but two checkpoints .* need about \d+"):
        _run(tmp_path / "full")
