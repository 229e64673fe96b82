"""train_step, fit, evaluate, accuracy and per_example_grads against independent math."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels


def hand_mlp(params, xs):
    # The same network written out by hand, independent of lamina's code.
    h = jnp.tanh(xs @ params[0]["W"].T + params[0]["b"][None, :])
    return h @ params[1]["W"].T + params[1]["b"][None, :]


def hand_loss(params, xs, ys):
    return jnp.mean(xent(hand_mlp(params, xs), ys))


@pytest.fixture
def problem():
    model = lm.mlp([5, 3], act="tanh")
    _, params = model.init(jax.random.key(0), (4,))
    xs = jax.random.normal(jax.random.key(1), (8, 4))
    ys = jax.random.randint(jax.random.key(2), (8,), 0, 3)
    return model, params, xs, ys


@pytest.mark.slow
def test_one_sgd_step_is_params_minus_lr_grad(problem):
    model, params, xs, ys = problem
    lr = 0.1
    expected = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(hand_loss)(params, xs, ys))
    expected_loss = hand_loss(params, xs, ys)
    opt = optax.sgd(lr)
    step = lm.train_step(model, xent, opt)
    copy = jax.tree.map(jnp.copy, params)
    new, _, metrics = step(copy, opt.init(copy), (xs, ys))
    chex.assert_trees_all_close(new, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-6)


def test_linear_sgd_step_against_numpy_closed_form():
    model = lm.Dense(1)
    params = {"W": jnp.array([[0.5, -1.0]]), "b": jnp.array([0.25])}
    xs = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], np.float32)
    ys = np.array([[1.0], [2.0], [0.0]], np.float32)
    W, b = np.array([[0.5, -1.0]]), np.array([0.25])
    err = xs @ W.T + b - ys  # squared_error = err**2, mean over 3 examples
    gW, gb = 2 * (err * xs).mean(0, keepdims=True), 2 * err.mean(0)
    opt = optax.sgd(0.05)
    new, _, m = lm.train_step(model, optax.squared_error, opt)(params, opt.init(params), (xs, ys))
    np.testing.assert_allclose(new["W"], W - 0.05 * gW, rtol=1e-6)
    np.testing.assert_allclose(new["b"], b - 0.05 * gb, rtol=1e-6)
    np.testing.assert_allclose(m["loss"], (err**2).mean(), rtol=1e-6)


def test_step_donates_and_does_not_retrace(problem):
    model, params, xs, ys = problem
    chex.clear_trace_counter()
    counted = lm.Layer(model.init, chex.assert_max_traces(model.apply, n=1), model.name)
    opt = optax.adam(1e-2)
    step = lm.train_step(counted, xent, opt)
    opt_state = opt.init(params)
    old_W = params[0]["W"]
    for _ in range(5):
        params, opt_state, _ = step(params, opt_state, (xs, ys))
    assert old_W.is_deleted()  # the caller's buffers were donated
    assert step._cache_size() == 1


@pytest.mark.slow
def test_per_example_grads(problem):
    model, params, xs, ys = problem
    grads = lm.per_example_grads(model, xent)(params, (xs, ys))
    chex.assert_shape(grads[0]["W"], (8, 5, 4))
    chex.assert_shape(grads[1]["b"], (8, 3))
    # Their mean is the batch gradient (the batch loss is a mean)...
    batch = jax.grad(hand_loss)(params, xs, ys)
    chex.assert_trees_all_close(jax.tree.map(lambda g: g.mean(0), grads), batch, rtol=1e-5, atol=1e-6)
    # ...and each is the gradient of a one-example batch.
    for i in (0, 5):
        one = jax.grad(hand_loss)(params, xs[i : i + 1], ys[i : i + 1])
        chex.assert_trees_all_close(jax.tree.map(lambda g: g[i], grads), one, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["train_step", "per_example_grads"])
def test_empty_batch_is_rejected_when_traced(problem, which):
    model, params, xs, ys = problem
    opt = optax.sgd(0.1)
    if which == "train_step":
        fn, args = lm.train_step(model, xent, opt), (params, opt.init(params))
    else:
        fn, args = lm.per_example_grads(model, xent), (params,)
    pattern = which + r": batch is empty: 0 examples \(inputs of shape \(0, 4\) and targets of shape \(0,\)\)"
    with pytest.raises(ValueError, match=pattern):
        fn.lower(*args, (xs[:0], ys[:0]))  # tracing alone raises: nothing runs
    with pytest.raises(ValueError, match=pattern):
        fn(*args, (xs[:0], ys[:0]))
    assert not params[0]["W"].is_deleted()  # rejected before anything was donated


def test_train_step_takes_nested_lists(problem):
    model, params, xs, ys = problem
    lr = 0.1
    expected = jax.tree.map(lambda p, g: p - lr * g, params, jax.grad(hand_loss)(params, xs, ys))
    opt = optax.sgd(lr)
    step = lm.train_step(model, xent, opt)
    copy = jax.tree.map(jnp.copy, params)
    from_arrays, _, m_arrays = step(copy, opt.init(copy), (xs, ys))
    copy = jax.tree.map(jnp.copy, params)
    from_lists, _, m_lists = step(copy, opt.init(copy), [np.asarray(xs).tolist(), np.asarray(ys).tolist()])
    chex.assert_trees_all_close(from_lists, expected, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(from_lists, from_arrays)
    np.testing.assert_array_equal(m_lists["loss"], m_arrays["loss"])


def test_train_step_takes_weights_as_a_list():
    # Weights (1, 0, 1): the loss is the mean over examples 0 and 2 only.
    model = lm.Dense(1, use_bias=False)
    xs, ys = [[1.0], [2.0], [3.0]], [[1.0], [5.0], [2.0]]
    opt = optax.sgd(0.1)
    step = lm.train_step(model, optax.squared_error, opt)
    params = {"W": jnp.ones((1, 1))}
    new, _, m = step(params, opt.init(params), (xs, ys), weights=[1.0, 0.0, 1.0])
    # d/dw mean((w x - y)^2) over x = (1, 3), y = (1, 2) at w = 1: (0 + 2 * 1 * 3) / 2 = 3
    np.testing.assert_allclose(m["loss"], (0.0 + 1.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(new["W"][0, 0], 1.0 - 0.1 * 3.0, rtol=1e-6)


@pytest.mark.slow
def test_per_example_grads_takes_nested_lists(problem):
    model, params, xs, ys = problem
    grads = lm.per_example_grads(model, xent)
    from_lists = grads(params, (np.asarray(xs).tolist(), np.asarray(ys).tolist()))
    chex.assert_trees_all_equal(from_lists, grads(params, (xs, ys)))
    one = jax.grad(hand_loss)(params, xs[2:3], ys[2:3])
    chex.assert_trees_all_close(jax.tree.map(lambda g: g[2], from_lists), one, rtol=1e-5, atol=1e-6)


def test_evaluate_takes_nested_lists(problem):
    model, params, xs, ys = problem
    lists = (np.asarray(xs).tolist(), np.asarray(ys).tolist())
    result = lm.evaluate(model, params, lists, loss_fn=xent, batch_size=3)
    assert result == lm.evaluate(model, params, (xs, ys), loss_fn=xent, batch_size=3)
    logits = np.asarray(hand_mlp(params, xs))
    assert result["accuracy"] == (logits.argmax(1) == np.asarray(ys)).mean()


def test_accuracy_against_numpy():
    logits = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.5], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    labels = np.array([1, 0, 1, 0])
    assert float(lm.accuracy(logits, labels)) == (logits.argmax(1) == labels).mean() == 0.5
    assert float(lm.accuracy(logits, np.eye(3)[labels])) == 0.5
    with pytest.raises(ValueError, match=r"accuracy: expected logits \(N, classes\).*got logits \(4, 3\) and labels \(3,\)"):
        lm.accuracy(logits, labels[:3])


def test_evaluate_against_numpy(problem):
    model, params, xs, ys = problem
    result = lm.evaluate(model, params, (xs, ys), loss_fn=xent, batch_size=3)  # 8 = 3 + 3 + 2
    logits = np.asarray(hand_mlp(params, xs), np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(result["loss"], -logp[np.arange(8), np.asarray(ys)].mean(), rtol=1e-5)
    assert result["accuracy"] == (logits.argmax(1) == np.asarray(ys)).mean()


@pytest.mark.slow
def test_regression_converges_to_closed_form():
    # y = 3x - 1 with a little noise: least squares has a closed form.
    x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    noise = np.asarray(jax.random.normal(jax.random.key(3), (64, 1))) * 0.05
    y = (3 * x - 1 + noise).astype(np.float32)
    A = np.hstack([x, np.ones_like(x)]).astype(np.float64)
    (w, b), *_ = np.linalg.lstsq(A, y[:, 0].astype(np.float64), rcond=None)
    model = lm.Dense(1)
    _, params = model.init(jax.random.key(0), (1,))
    # 400 full-batch Adam steps reach the optimum to 1e-5 from any init (150 left
    # some inits 5e-3 away).
    params, history = lm.fit(model, params, optax.adam(0.05), (x, y), loss_fn=optax.squared_error,
                             epochs=400, batch_size=64, key=jax.random.key(1), progress=False)
    np.testing.assert_allclose(float(params["W"][0, 0]), w, atol=2e-3)
    np.testing.assert_allclose(float(params["b"][0]), b, atol=2e-3)
    assert history["train_loss"][-1] < history["train_loss"][0]


@pytest.mark.slow
def test_xor_reaches_full_accuracy():
    xs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    ys = np.array([0, 1, 1, 0], np.int32)
    model = lm.mlp([8, 2], act="tanh")
    _, params = model.init(jax.random.key(0), (2,))
    params, history = lm.fit(model, params, optax.adam(0.05), (xs, ys), loss_fn=xent, epochs=200,
                             batch_size=4, key=jax.random.key(1), eval_data=(xs, ys), progress=False)
    assert history["eval_accuracy"][-1] == 1.0
    np.testing.assert_array_equal(np.asarray(lm.forward(model)(params, xs)).argmax(1), ys)


def fit_once(seed=0, **kwargs):
    model = lm.serial(lm.Dense(16, act="relu"), lm.Dropout(0.2), lm.Dense(3))
    _, params = model.init(jax.random.key(0), (4,))
    xs = np.asarray(jax.random.normal(jax.random.key(5), (50, 4)))
    ys = (xs[:, 0] > 0).astype(np.int32) + (xs[:, 1] > 0)
    return lm.fit(model, params, optax.adam(1e-2), (xs, ys), loss_fn=xent, epochs=3, batch_size=16,
                  key=jax.random.key(seed), eval_data=(xs, ys), progress=False, **kwargs)


@pytest.mark.slow
def test_fit_is_bit_for_bit_reproducible():
    p1, h1 = fit_once()
    p2, h2 = fit_once()
    assert h1 == h2  # exact float equality, every epoch
    chex.assert_trees_all_equal(p1, p2)
    _, h3 = fit_once(seed=1)
    assert h3["train_loss"] != h1["train_loss"]


@pytest.mark.slow
def test_fit_history_shapes_and_ranges():
    _, history = fit_once()
    assert set(history) == {"train_loss", "eval_loss", "eval_accuracy"}
    assert all(len(v) == 3 for v in history.values())
    assert all(0.0 <= a <= 1.0 for a in history["eval_accuracy"])


@pytest.mark.slow
def test_partial_batch_does_not_recompile_per_epoch():
    traces = []
    base = lm.Dense(2)

    def apply(params, x, *, key=None):
        traces.append(1)  # runs only while JAX traces
        return base.apply(params, x)

    xs = np.ones((10, 3), np.float32)  # 10 = 4 + 4 + 2: a partial last batch
    ys = np.zeros(10, np.int32)

    def run(epochs):
        traces.clear()
        model = lm.Layer(base.init, apply, f"Counted{epochs}")  # a new model: nothing compiled to reuse
        _, params = model.init(jax.random.key(0), (3,))
        lm.fit(model, params, optax.sgd(0.1), (xs, ys), loss_fn=xent, epochs=epochs, batch_size=4,
               key=jax.random.key(0), eval_data=(xs, ys), progress=False)
        return len(traces)

    assert run(1) == run(5)


def test_padded_last_batch_is_masked_out():
    # One epoch, batch 3 over 4 examples, SGD: the second step must see only example 4.
    model = lm.Dense(1, use_bias=False)
    params = {"W": jnp.zeros((1, 1))}
    xs = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    ys = 2 * xs
    new, _ = lm.fit(model, params, optax.sgd(0.01), (xs, ys), loss_fn=optax.squared_error,
                    epochs=1, batch_size=3, key=jax.random.key(0), progress=False)
    order = np.asarray(jax.random.permutation(jax.random.split(jax.random.key(0), 3)[1], 4))
    w = 0.0
    for idx in (order[:3], order[3:]):
        x, y = xs[idx, 0], ys[idx, 0]
        w -= 0.01 * np.mean(2 * (w * x - y) * x)
    np.testing.assert_allclose(float(new["W"][0, 0]), w, rtol=1e-5)


@pytest.mark.slow
def test_dropout_gets_fresh_keys_and_eval_runs_without():
    seen = []

    def apply(params, x, *, key=None):
        if key is not None:
            jax.debug.callback(lambda k: seen.append(tuple(np.asarray(k).ravel())), jax.random.key_data(key))
        return x

    probe = lm.Layer(lambda key, s: (s, ()), apply, "Probe")
    model = lm.serial(lm.Dense(2), probe)
    _, params = model.init(jax.random.key(0), (3,))
    xs = np.ones((8, 3), np.float32)
    ys = np.zeros(8, np.int32)
    lm.fit(model, params, optax.sgd(0.1), (xs, ys), loss_fn=xent, epochs=2, batch_size=4,
           key=jax.random.key(0), eval_data=(xs, ys), progress=False)
    jax.effects_barrier()
    # 2 epochs x 2 steps x 4 examples, every key distinct; evaluation added none.
    assert len(seen) == 16
    assert len(set(seen)) == 16


@pytest.mark.parametrize(
    "data, error, pattern",
    [
        ((np.ones((5, 3)), np.zeros(4, np.int32)), ValueError, r"fit: train_data: inputs have 5 examples but targets have 4"),
        ((np.ones((0, 3)), np.zeros(0, np.int32)), ValueError, r"fit: train_data: is empty: 0 examples"),
        ((np.ones((4, 3)), np.array([0, 1, 2, 3])), ValueError, r"targets must be class indices in \[0, 3\) for a model with 3 outputs, got 3 at index 3"),
        ((np.ones((4, 3)), np.array([0, -1, 1, 0])), ValueError, r"got -1 at index 1"),
        ((np.array([[1.0, np.nan, 0.0]] * 4), np.zeros(4, np.int32)), ValueError, r"inputs hold 4 NaN or infinite value\(s\), the first at index \(0, 1\)"),
        ((np.ones((4, 5)), np.zeros(4, np.int32)), ValueError, r"params do not fit the model at '0.W': expected shape \(8, 5\), got \(8, 3\) \(for inputs of shape \(5,\)\)"),
        (np.ones((4, 3)), TypeError, r"fit: train_data: expected an \(inputs, targets\) pair of arrays, got ndarray"),
    ],
)
def test_fit_rejects_bad_data(data, error, pattern):
    model = lm.mlp([8, 3])
    _, params = model.init(jax.random.key(0), (3,))
    with pytest.raises(error, match=pattern):
        lm.fit(model, params, optax.sgd(0.1), data, loss_fn=xent, epochs=1, batch_size=2,
               key=jax.random.key(0), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("progress", [False, True])  # the bar checks the loss on its own path
def test_fit_stops_on_non_finite_loss(progress):
    model = lm.Dense(1)
    _, params = model.init(jax.random.key(0), (2,))
    xs = np.full((32, 2), 100.0, np.float32)
    ys = np.ones((32, 1), np.float32)
    with pytest.raises(FloatingPointError, match=r"fit: the loss became (inf|nan) at epoch \d+/50, step \d+/4") as info:
        lm.fit(model, params, optax.sgd(10.0), (xs, ys), loss_fn=optax.squared_error, epochs=50,
               batch_size=8, key=jax.random.key(0), progress=progress)
    # The whole message, named once by where it came from.
    assert re.fullmatch(
        r"fit: the loss became (inf|nan) at epoch \d+/50, step \d+/4\. Check the inputs and "
        r"targets for extreme values, or lower the learning rate\.",
        str(info.value),
    ), str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"epochs": 0}, ValueError, r"fit: epochs must be an int >= 1, got 0"),
        ({"batch_size": 2.5}, ValueError, r"fit: batch_size must be an int >= 1, got 2.5"),
        ({"key": 0}, TypeError, r"fit: expected a PRNG key"),
        ({"loss_fn": "xent"}, TypeError, r"fit: loss_fn must be callable"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, error, pattern):
    model = lm.mlp([3])
    _, params = model.init(jax.random.key(0), (2,))
    args = dict(loss_fn=xent, epochs=1, batch_size=2, key=jax.random.key(0), progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        lm.fit(model, params, optax.sgd(0.1), (np.ones((4, 2)), np.zeros(4, np.int32)), **args)


def test_train_step_rejects_non_optax_optimizer(problem):
    model = problem[0]
    with pytest.raises(TypeError, match=r"train_step: optimizer must be an optax.GradientTransformation.*got float"):
        lm.train_step(model, xent, 0.1)


def test_progress_bar_shows_epoch_step_and_loss(capsys):
    model = lm.mlp([3])
    _, params = model.init(jax.random.key(0), (2,))
    lm.fit(model, params, optax.sgd(0.1), (np.ones((4, 2), np.float32), np.zeros(4, np.int32)), loss_fn=xent,
           epochs=2, batch_size=2, key=jax.random.key(0), progress=True)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "step=2/2" in err and "loss=" in err


@pytest.mark.slow
def test_compiled_step_reuses_params_and_optimizer_buffers():
    # Donation shows in XLA's memory analysis: the outputs alias the inputs,
    # so a step never holds two copies of the weights or of Adam's moments.
    model = lm.mlp([64, 32])
    _, params = model.init(jax.random.key(0), (16,))
    opt = optax.adam(1e-3)
    state = opt.init(params)
    step = lm.train_step(model, xent, opt)
    batch = (jnp.ones((8, 16)), jnp.zeros(8, jnp.int32))
    stats = step.lower(params, state, batch).compile().memory_analysis()
    leaves = jax.tree.leaves((params, state))
    assert stats.alias_size_in_bytes >= sum(x.size * x.dtype.itemsize for x in leaves if x.dtype == jnp.float32)


@pytest.mark.slow
def test_fit_twice_from_the_same_params():
    # A learning-rate sweep from one init: fit trains a copy, never the caller's arrays.
    model = lm.mlp([8, 3])
    _, params = model.init(jax.random.key(0), (4,))
    xs = np.asarray(jax.random.normal(jax.random.key(1), (32, 4)))
    ys = (xs[:, 0] > 0).astype(np.int32)
    runs = [lm.fit(model, params, optax.adam(lr), (xs, ys), loss_fn=xent, epochs=2, batch_size=8,
                   key=jax.random.key(2), progress=False)[0] for lr in (1e-2, 1e-2, 1e-1)]
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(params))
    chex.assert_trees_all_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][0]["W"], runs[2][0]["W"])


@pytest.mark.slow
def test_train_step_without_donation_keeps_the_inputs(problem):
    model, params, xs, ys = problem
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    kept = lm.train_step(model, xent, opt, donate=False)
    new, new_state, _ = kept(params, opt_state, (xs, ys))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves((params, opt_state)))
    again, _, _ = kept(params, opt_state, (xs, ys))  # the same inputs work twice
    chex.assert_trees_all_equal(new, again)
    copy = jax.tree.map(jnp.copy, (params, opt_state))
    donated, _, _ = lm.train_step(model, xent, opt)(*copy, (xs, ys))
    chex.assert_trees_all_equal(new, donated)  # donation changes memory, not values
    stats = kept.lower(params, opt_state, (xs, ys)).compile().memory_analysis()
    assert stats.alias_size_in_bytes == 0


def test_reusing_a_donated_array_says_what_happened(problem):
    model, params, xs, ys = problem
    opt = optax.sgd(0.1)
    step = lm.train_step(model, xent, opt)
    params = jax.tree.map(jnp.copy, params)
    opt_state = opt.init(params)
    step(params, opt_state, (xs, ys))
    with pytest.raises(ValueError, match=r"train_step: the array at 'params\.0\.W' was deleted: a train "
                       r"step donated it .*lm\.train_step\(\.\.\., donate=False\)") as info:
        step(params, opt_state, (xs, ys))
    assert isinstance(info.value, lm.LaminaError)
    with pytest.raises(ValueError, match=r"fit: the array at 'params\.0\.W' was deleted"):
        lm.fit(model, params, opt, (xs, ys), loss_fn=xent, epochs=1, batch_size=4,
               key=jax.random.key(0), progress=False)
    with pytest.raises(TypeError, match=r"train_step: donate must be True or False, got 'no'"):
        lm.train_step(model, xent, opt, donate="no")


@pytest.mark.parametrize(
    "make_state, pattern",
    [
        (lambda opt, p, other: opt.init(other), r"at '0\.mu\.0\.W': expected shape \(5, 4\), got \(5, 3\)"),
        (lambda opt, p, other: optax.sgd(0.1).init(p), r"at '0\.count': missing \(optimizer.init\(params\) has 9 arrays, opt_state 0\)"),
        (lambda opt, p, other: opt.init(p[:1]), r"at '0\.nu\.0\.W': optimizer.init\(params\) has '0\.mu\.1\.W' there"),
    ],
)
def test_opt_state_that_does_not_fit_the_params_names_the_path(problem, make_state, pattern):
    model, params, xs, ys = problem
    opt = optax.adam(1e-2)
    _, other = lm.mlp([5, 3], act="tanh").init(jax.random.key(0), (3,))
    step = lm.train_step(model, xent, opt, donate=False)
    with pytest.raises(ValueError, match=r"train_step: opt_state does not fit the params " + pattern) as info:
        step(params, make_state(opt, params, other), (xs, ys))
    assert isinstance(info.value, lm.LaminaError)
    assert str(info.value).endswith("Make it with optimizer.init(params) for these params and this optimizer")
