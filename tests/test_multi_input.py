"""Models with several inputs (a tuple or a dict of arrays sharing the example axis) in
every part of lamina, against the same model written by hand in JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm

# torch comparisons and training: the full suite's, not the day-to-day tier's
pytestmark = pytest.mark.slow

# y = Dense2(relu(Dense_x(x) + Dense_t(t))): an image-like input and a per-example scalar.
MODEL = lm.serial(
    lm.parallel(lm.serial(lm.Select(0), lm.Flatten(), lm.Dense(4)),
                lm.serial(lm.Select(1), lm.Dense(4))),
    lm.Add(), lm.Activation("relu"), lm.Dense(3),
)
SHAPES = ((2, 3), (1,))
DICT_MODEL = lm.serial(
    lm.parallel(lm.serial(lm.Select("x"), lm.Flatten(), lm.Dense(4)),
                lm.serial(lm.Select("t"), lm.Dense(4))),
    lm.Add(), lm.Activation("relu"), lm.Dense(3),
)
LOSS = optax.softmax_cross_entropy_with_integer_labels


def by_hand(params, x, t):
    """The model on a batch, written with jnp alone."""
    (px, pt), _, _, p2 = params
    h = (x.reshape(x.shape[0], -1) @ px[2]["W"].T + px[2]["b"][None]
         + t @ pt[1]["W"].T + pt[1]["b"][None])
    return jax.nn.relu(h) @ p2["W"].T + p2["b"][None]


def loss_by_hand(params, x, t, y):
    return jnp.mean(LOSS(by_hand(params, x, t), y))


def data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 2, 3)).astype(np.float32),
            rng.standard_normal((n, 1)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32))


def init():
    return MODEL.init(jax.random.key(0), SHAPES)[1]


def test_forward_takes_a_tuple_or_a_dict():
    x, t, _ = data()
    params = init()
    want = by_hand(params, x, t)
    np.testing.assert_allclose(lm.forward(MODEL)(params, (x, t)), want, rtol=1e-5, atol=1e-6)
    out_shape, dict_params = DICT_MODEL.init(jax.random.key(0), {"x": (2, 3), "t": (1,)})
    assert out_shape == (3,)
    np.testing.assert_allclose(lm.forward(DICT_MODEL)(params, {"x": x, "t": t}), want,
                               rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(dict_params) == jax.tree.structure(params)


def test_train_step_and_per_example_grads_equal_the_gradients_by_hand():
    x, t, y = data()
    params = init()
    grads = jax.grad(loss_by_hand)(params, x, t, y)
    want = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    opt = optax.sgd(0.1)
    step = lm.train_step(MODEL, LOSS, opt, donate=False)
    got, _, metrics = step(params, opt.init(params), ((x, t), y))
    np.testing.assert_allclose(metrics["loss"], loss_by_hand(params, x, t, y), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    per = lm.per_example_grads(MODEL, LOSS)(params, ((x, t), y))
    for i in (0, 7):
        one = jax.grad(loss_by_hand)(params, x[i:i + 1], t[i:i + 1], y[i:i + 1])
        jax.tree.map(lambda a, b, i=i: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                     per, one)


@pytest.mark.parametrize("feed", ["arrays", "iterable"])
def test_fit_and_evaluate_on_several_inputs(feed):
    x, t, y = data(12)
    params = init()
    # Two epochs of full-batch SGD by hand (fit shuffles, which a full batch ignores).
    want = params
    for _ in range(2):
        want = jax.tree.map(lambda p, g: p - 0.1 * g, want, jax.grad(loss_by_hand)(want, x, t, y))
    train = ((x, t), y) if feed == "arrays" else [((x, t), y)]
    got, history = lm.fit(MODEL, params, optax.sgd(0.1), train, loss_fn=LOSS, epochs=2,
                          batch_size=12, key=jax.random.key(1), progress=False,
                          eval_data=((x, t), y))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)
    result = lm.evaluate(MODEL, got, ((x, t), y), loss_fn=LOSS, batch_size=5)  # padded batches
    np.testing.assert_allclose(result["loss"], loss_by_hand(got, x, t, y), rtol=1e-5)
    np.testing.assert_allclose(history["eval_loss"][-1], result["loss"], rtol=1e-5)
    logits = by_hand(got, x, t)
    assert result["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, 1) == y)))


def test_export_summary_trace_and_check_layer():
    x, t, _ = data(5)
    params = init()
    fn = lm.load_exported(lm.export(MODEL, params, SHAPES))
    np.testing.assert_allclose(fn((x, t)), by_hand(params, x, t), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expected xs\[1\] of shape \(N, 1\) \(float32\), got shape \(5, 2\)"):
        fn((x, np.ones((5, 2), np.float32)))
    table = str(lm.summary(MODEL, SHAPES))
    assert "Select(0)" in table and "Add()" in table and "(3,)" in table
    steps = lm.trace(MODEL, params, (x[0], t[0]))
    np.testing.assert_allclose(steps[-1].output, by_hand(params, x[:1], t[:1])[0], rtol=1e-5, atol=1e-6)
    lm.testing.check_layer(MODEL, SHAPES)


def test_inputs_that_do_not_share_the_example_axis_are_refused():
    x, t, y = data(6)
    params = init()
    with pytest.raises(ValueError, match=r"fit: train_data: inputs must share their example axis "
                                         r"\(axis 0\), got shapes \(\(6, 2, 3\), \(5, 1\)\)"):
        lm.fit(MODEL, params, optax.sgd(0.1), ((x, t[:5]), y), loss_fn=LOSS, epochs=1,
               batch_size=6, key=jax.random.key(0), progress=False)
    with pytest.raises(ValueError, match=r"evaluate: inputs have 6 examples but targets have 4"):
        lm.evaluate(MODEL, params, ((x, t), y[:4]), loss_fn=LOSS)
    with pytest.raises(ValueError, match=r"Select\(1\): expects a tuple input shape with an entry 1, "
                                         r"got one input of shape \(3,\)"):
        lm.Select(1).init(jax.random.key(0), (3,))
