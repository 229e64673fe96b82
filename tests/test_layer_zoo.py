"""The new layers everywhere else in lamina: export, per-example gradients, visualize, load_model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lamina as lm

xent = optax.softmax_cross_entropy_with_integer_labels

CNN = lm.serial(lm.Conv(4, 3, padding=1, act="relu"), lm.MaxPool(2), lm.Conv(6, 3, act="relu"),
                lm.GlobalAvgPool(), lm.Dense(3))
TRANSFORMER = lm.serial(lm.TransformerEncoderLayer(2, 16, causal=True), lm.RMSNorm(),
                        lm.Flatten(), lm.Dense(3))
SEQUENCE = lm.serial(lm.LSTM(6), lm.GRU(5), lm.Flatten(), lm.Dense(3))
CASES = [(CNN, (2, 8, 8)), (TRANSFORMER, (5, 8)), (SEQUENCE, (4, 3))]


@pytest.mark.slow
@pytest.mark.parametrize("model, shape", CASES, ids=["cnn", "transformer", "recurrent"])
def test_export_serves_them(model, shape, key):
    _, params = model.init(key, shape)
    xs = jax.random.normal(jax.random.key(1), (4,) + shape)
    served = lm.load_exported(lm.export(model, params, shape))
    np.testing.assert_allclose(served(xs), lm.forward(model)(params, xs), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_per_example_grads_of_a_cnn_equal_a_loop(key):
    _, params = CNN.init(key, (2, 8, 8))
    xs = jax.random.normal(jax.random.key(1), (5, 2, 8, 8))
    ys = jnp.arange(5) % 3
    grads = lm.per_example_grads(CNN, xent)(params, (xs, ys))
    for i in range(5):
        one = jax.grad(lambda p: xent(CNN.apply(p, xs[i]), ys[i]))(params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                     grads, one)


@pytest.mark.slow
@pytest.mark.parametrize("model, shape", CASES, ids=["cnn", "transformer", "recurrent"])
def test_visualize_and_summary_show_every_layer(model, shape, key):
    _, params = model.init(key, shape)
    steps = lm.trace(model, params, jnp.ones(shape))
    page = lm.visualize(model, params, jnp.ones(shape))
    info = lm.summary(model, shape, show=False)
    for step in steps:
        assert step.name in page
    assert info.params == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert all(row.flops > 0 for row in info.rows if row.params)


@pytest.mark.slow
@pytest.mark.parametrize("model, shape", CASES, ids=["cnn", "transformer", "recurrent"])
def test_load_model_rebuilds_them(model, shape, key, tmp_path):
    _, params = model.init(key, shape)
    lm.save(tmp_path / "m.safetensors", params, model=model)
    rebuilt, loaded = lm.load_model(tmp_path / "m.safetensors")
    assert rebuilt == model
    xs = jax.random.normal(jax.random.key(1), (2,) + shape)
    np.testing.assert_array_equal(lm.forward(rebuilt)(loaded, xs), lm.forward(model)(params, xs))


def test_a_token_model_summary_takes_integer_inputs():
    model = lm.serial(lm.Embedding(50, 8), lm.TransformerEncoderLayer(2, 16), lm.Dense(50))
    info = lm.summary(model, (7,), show=False, input_dtype=jnp.int32)
    assert info.output_shape == (7, 50)
    assert info.params == 50 * 8 + (4 * 8 * 8 + 4 * 8) + 2 * 16 + 2 * 8 * 16 + 16 + 8 + 8 * 50 + 50
