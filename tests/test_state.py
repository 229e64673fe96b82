"""State: BatchNorm against torch, and state threaded through every entry point."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch import nn

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels


def _batches(shape, n=3, size=6):
    rng = np.random.default_rng(0)
    return [(rng.normal(size=(size,) + shape) * 2 + 1).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("shape, torch_cls", [
    ((3,), nn.BatchNorm1d), ((3, 5), nn.BatchNorm1d), ((3, 4, 4), nn.BatchNorm2d),
    ((2, 3, 3, 3), nn.BatchNorm3d),
])
@pytest.mark.parametrize("momentum, eps", [(0.1, 1e-5), (0.3, 1e-3)])
def test_batch_norm_equals_torch(shape, torch_cls, momentum, eps):
    reference = torch_cls(shape[0], momentum=momentum, eps=eps)
    with torch.no_grad():  # not ones and zeros, so scale and offset are tested
        reference.weight.copy_(torch.linspace(0.5, 1.5, shape[0]))
        reference.bias.copy_(torch.linspace(-1, 1, shape[0]))
    model = lm.BatchNorm(momentum=momentum, eps=eps)
    _, params = model.init(jax.random.key(0), shape)
    params = {"scale": reference.weight.detach().numpy(), "offset": reference.bias.detach().numpy()}
    state = lm.init_state(model, shape)
    fwd = lm.forward(model)
    reference.train()
    for xs in _batches(shape):
        ys, state = fwd(params, xs, state=state, train=True)
        np.testing.assert_allclose(ys, reference(torch.tensor(xs)).detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(state["running_mean"], reference.running_mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(state["running_var"], reference.running_var.numpy(), atol=1e-5)
    assert int(state["num_batches_tracked"]) == int(reference.num_batches_tracked) == 3
    assert state["num_batches_tracked"].dtype == jnp.int32
    reference.eval()
    xs = _batches(shape, n=1)[0]
    ys, same = fwd(params, xs, state=state)
    np.testing.assert_allclose(ys, reference(torch.tensor(xs)).detach().numpy(), atol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, same, state)


def test_one_example_in_inference_needs_no_vmap(key):
    model = lm.serial(lm.Dense(3), lm.BatchNorm())
    _, params = model.init(key, (2,))
    state = lm.init_state(model, (2,))
    state = (state[0], {**state[1], "running_mean": jnp.array([1.0, 2.0, 3.0]),
                        "running_var": jnp.array([4.0, 1.0, 0.25])})
    x = jnp.array([0.5, -1.0])
    y, new = model.apply(params, x, state=state)
    h = np.asarray(params[0]["W"]) @ np.asarray(x) + np.asarray(params[0]["b"])
    np.testing.assert_allclose(y, (h - [1, 2, 3]) / np.sqrt(np.array([4, 1, 0.25]) + 1e-5),
                               rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, new, state)


def test_training_on_one_example_outside_a_named_vmap_says_how(key):
    model = lm.serial(lm.Dense(3), lm.BatchNorm())
    _, params = model.init(key, (2,))
    state = lm.init_state(model, (2,))
    with pytest.raises(lm.LaminaError, match=r"serial\[1\] BatchNorm\(\): in training .* needs "
                       r"the whole batch.* lm.forward\(model\)\(params, xs, state=state, "
                       r"train=True\), lm.train_step, or jax.vmap\(..., axis_name='batch'\)"):
        model.apply(params, jnp.ones(2), state=state, train=True)


@pytest.mark.parametrize("call", [
    lambda m, p, xs: m.apply(p, xs[0]),
    lambda m, p, xs: lm.forward(m)(p, xs),
    lambda m, p, xs: lm.train_step(m, xent, optax.sgd(0.1))(p, optax.sgd(0.1).init(p),
                                                           (xs, jnp.zeros(4, jnp.int32))),
    lambda m, p, xs: lm.fit(m, p, optax.sgd(0.1), (xs, np.zeros(4, np.int32)), loss_fn=xent,
                            epochs=1, batch_size=2, key=jax.random.key(0), progress=False),
    lambda m, p, xs: lm.trace(m, p, xs[0]),
    lambda m, p, xs: lm.export(m, p, (2,)),
])
def test_forgetting_the_state_names_the_layer_and_how_to_make_it(call, key):
    model = lm.serial(lm.Dense(3), lm.residual(lm.serial(lm.BatchNorm(), lm.Dense(3))), lm.Dense(2))
    _, params = model.init(key, (2,))
    with pytest.raises(lm.LaminaError, match=r"serial\[1\]\.residual\[0\]\.serial\[0\] "
                       r"BatchNorm\(\): this layer has state .* lm.init_state\(model, input_shape\)"):
        call(model, params, jnp.ones((4, 2)))


def test_init_state_mirrors_params_and_works_under_eval_shape(key):
    model = lm.serial(lm.Dense(3), lm.parallel(lm.BatchNorm(), lm.Dense(2)), lm.Concat())
    assert lm.has_state(model) and not lm.has_state(lm.mlp([3, 2]))
    state = lm.init_state(model, (4,))
    assert state[0] == () and state[2] == () and state[1][1] == ()
    np.testing.assert_array_equal(state[1][0]["running_var"], np.ones(3))
    shapes = jax.eval_shape(lambda: lm.init_state(model, (4,)))
    assert shapes[1][0]["num_batches_tracked"].dtype == jnp.int32
    assert lm.init_state(lm.mlp([3, 2]), (4,)) == ()


def test_stateless_models_return_the_state_they_were_given(key):
    model = lm.mlp([4, 2])
    _, params = model.init(key, (3,))
    ys, state = lm.forward(model)(params, jnp.ones((5, 3)), state=())
    assert state == () and ys.shape == (5, 2)
    np.testing.assert_array_equal(ys, lm.forward(model)(params, jnp.ones((5, 3))))


def _numpy_bn_train(h, rm, rv, momentum=0.1, eps=1e-5):
    mean, var = h.mean(0), h.var(0)
    n = h.shape[0]
    y = (h - mean) / np.sqrt(var + eps)
    return y, (1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var * n / (n - 1)


def test_train_step_threads_state_in_training_mode(key):
    model = lm.serial(lm.Dense(4), lm.BatchNorm(), lm.Relu(), lm.Dense(2))
    _, params = model.init(key, (3,))
    state = lm.init_state(model, (3,))
    xs = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    ys = np.arange(8, dtype=np.int32) % 2
    h = xs @ np.asarray(params[0]["W"]).T + np.asarray(params[0]["b"])
    _, want_mean, want_var = _numpy_bn_train(h, np.zeros(4), np.ones(4))
    opt = optax.sgd(0.1)
    step = lm.train_step(model, xent, opt)
    out = step(params, opt.init(params), (xs, ys), state=state)
    assert len(out) == 4
    new_params, _, metrics, new_state = out
    np.testing.assert_allclose(new_state[1]["running_mean"], want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state[1]["running_var"], want_var, rtol=1e-5)
    assert int(new_state[1]["num_batches_tracked"]) == 1
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_fit_and_evaluate_with_state(key):
    (x_train, y_train), (x_test, y_test) = _digits()
    results = {}
    for name, model in {
        "plain": lm.mlp([64, 10]),
        "batchnorm": lm.serial(lm.Dense(64), lm.BatchNorm(), lm.Relu(), lm.Dense(10)),
    }.items():
        _, params = model.init(jax.random.key(0), (64,))
        state = lm.init_state(model, (64,)) if lm.has_state(model) else None
        out = lm.fit(model, params, optax.adam(1e-2), (x_train, y_train), loss_fn=xent,
                     epochs=8, batch_size=64, key=jax.random.key(1), progress=False,
                     eval_data=(x_test, y_test), state=state)
        if state is None:
            params, history = out
            metrics = lm.evaluate(model, params, (x_test, y_test), loss_fn=xent)
        else:
            params, history, state = out
            assert int(state[1]["num_batches_tracked"]) == 8 * (len(x_train) // 64)
            metrics = lm.evaluate(model, params, (x_test, y_test), loss_fn=xent, state=state)
            ys, _ = lm.forward(model)(params, x_test, state=state)
            np.testing.assert_allclose(metrics["accuracy"], np.mean(np.argmax(ys, 1) == y_test))
        assert metrics["accuracy"] == pytest.approx(history["eval_accuracy"][-1])
        results[name] = metrics["accuracy"]
    assert results["batchnorm"] >= results["plain"] - 0.005, results
    assert results["batchnorm"] > 0.95


def _digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (images / 16.0).astype(np.float32), labels.astype(np.int32), test_size=0.25,
        random_state=0, stratify=labels)
    return (x_train, y_train), (x_test, y_test)


@pytest.mark.slow
def test_per_example_grads_use_running_statistics(key):
    model = lm.serial(lm.Dense(3), lm.BatchNorm(), lm.Dense(2))
    _, params = model.init(key, (4,))
    state = lm.init_state(model, (4,))
    state = (state[0], {**state[1], "running_mean": jnp.array([0.1, 0.2, 0.3])}, state[2])
    xs = jax.random.normal(jax.random.key(3), (5, 4))
    ys = jnp.arange(5) % 2
    grads = lm.per_example_grads(model, xent)(params, (xs, ys), state=state)
    for i in range(5):  # each example's gradient is its own: a batch of one in inference
        one = jax.grad(lambda p: xent(model.apply(p, xs[i], state=state)[0], ys[i]))(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
                     grads, one)


def test_checkpoints_and_load_model_keep_state_bit_exact(key, tmp_path):
    model = lm.serial(lm.Dense(4), lm.BatchNorm(momentum=0.2), lm.Dense(2))
    _, params = model.init(key, (3,))
    state = lm.init_state(model, (3,))
    _, state = lm.forward(model)(params, jax.random.normal(key, (6, 3)), state=state, train=True)
    lm.save(tmp_path / "state.safetensors", state)
    loaded = lm.load(tmp_path / "state.safetensors", like=state)
    jax.tree.map(np.testing.assert_array_equal, loaded, state)
    assert loaded[1]["num_batches_tracked"].dtype == jnp.int32
    lm.save(tmp_path / "model.safetensors", params, model=model)
    rebuilt, _ = lm.load_model(tmp_path / "model.safetensors")
    assert rebuilt == model and lm.has_state(rebuilt)


def test_torch_sequential_with_batch_norm_moves_both_ways(key):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    net.train()
    for _ in range(3):
        net(torch.randn(8, 5) * 3 + 1)
    net.eval()
    model = lm.serial(lm.Dense(16), lm.BatchNorm(), lm.Relu(), lm.Dense(3))
    params, state = lm.from_torch(net.state_dict(), like=(model, (5,)))
    assert int(state[1]["num_batches_tracked"]) == 3
    xs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    ys, _ = lm.forward(model)(params, xs, state=state)
    np.testing.assert_allclose(ys, net(torch.tensor(xs)).detach().numpy(), atol=1e-5)
    # ...and back: lamina trains, torch predicts.
    _, state = lm.forward(model)(params, xs, state=state, train=True)
    back = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    tensors = lm.to_torch(params, like=back.state_dict(), state=state)
    back.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()})
    back.eval()
    ys, _ = lm.forward(model)(params, xs, state=state)
    np.testing.assert_allclose(ys, back(torch.tensor(xs)).detach().numpy(), atol=1e-5)
    assert int(back[1].num_batches_tracked) == 4


def test_export_serves_inference_with_the_running_statistics(key):
    model = lm.serial(lm.Dense(4), lm.BatchNorm(), lm.Dense(2))
    _, params = model.init(key, (3,))
    state = lm.init_state(model, (3,))
    xs = jax.random.normal(key, (6, 3))
    _, state = lm.forward(model)(params, xs, state=state, train=True)
    served = lm.load_exported(lm.export(model, params, (3,), state=state))
    np.testing.assert_allclose(served(xs), lm.forward(model)(params, xs, state=state)[0],
                               rtol=1e-6)


def test_summary_counts_state_apart_from_params():
    info = lm.summary(lm.serial(lm.Dense(16), lm.BatchNorm(), lm.Dense(3)), (5,), show=False)
    assert info.params == 96 + 32 + 51
    assert info.state == 16 + 16 + 1 and info.state_bytes == 33 * 4
    assert [r.params for r in info.rows] == [96, 32, 51]
    assert "state (not trained): 33 values, 132 bytes" in str(info)


def test_visualize_shows_the_batch_norm_step(key):
    model = lm.serial(lm.Dense(3), lm.BatchNorm())
    _, params = model.init(key, (2,))
    state = lm.init_state(model, (2,))
    steps = lm.trace(model, params, jnp.ones(2), state=state)
    np.testing.assert_allclose(steps[1].values["normalized"],
                               np.asarray(steps[0].output) / np.sqrt(1 + 1e-5), rtol=1e-6)
    page = lm.visualize(model, params, jnp.ones(2), state=state)
    for word in ('"mean"', '"var"', '"normalized"', '"scale"', '"offset"'):
        assert word in page


def test_a_user_layer_with_state(key):
    # An exponential moving average of the inputs, written as a user layer.
    def init(key, shape):
        return shape, ()

    def init_state(shape):
        return {"ema": jnp.zeros(shape)}

    def apply(params, x, *, key=None, state, train=False):
        new = state
        if train:
            new = {"ema": 0.9 * state["ema"] + 0.1 * jax.lax.pmean(x, "batch")}
        return x - state["ema"], new

    ema = lm.Layer(init, apply, "EMA", init_state=init_state)
    model = lm.serial(ema, lm.Dense(2))
    _, params = model.init(key, (3,))
    state = lm.init_state(model, (3,))
    xs = jnp.arange(12.0).reshape(4, 3)
    _, state = lm.forward(model)(params, xs, state=state, train=True)
    np.testing.assert_allclose(state[0]["ema"], 0.1 * np.arange(12.0).reshape(4, 3).mean(0))
