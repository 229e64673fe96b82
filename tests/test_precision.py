"""Mixed precision: bfloat16 compute, float32 params, float32 loss and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from example_runner import load

import lamina as lm
from lamina import with_dtype

xent = optax.softmax_cross_entropy_with_integer_labels


@pytest.mark.slow
def test_dtypes_of_outputs_params_and_gradients(key):
    model = with_dtype(lm.serial(lm.Dense(16, act="relu"), lm.LayerNorm(), lm.Dense(3)), compute=jnp.bfloat16)
    _, params = model.init(key, (8,))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x = jax.random.normal(jax.random.key(1), (8,))
    assert model.apply(params, x).dtype == jnp.bfloat16
    assert lm.forward(model)(params, x[None]).dtype == jnp.bfloat16
    grads = lm.per_example_grads(model, xent)(params, (x[None], jnp.array([1])))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    opt = optax.adam(1e-3)
    new, state, metrics = lm.train_step(model, xent, opt)(params, opt.init(params), (x[None], jnp.array([1])))
    assert metrics["loss"].dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((new, state)) if jnp.issubdtype(leaf.dtype, jnp.floating))


@pytest.mark.slow
def test_values_within_bfloat16_precision(key):
    model = lm.mlp([32, 4])
    _, params = model.init(key, (16,))
    x = jax.random.normal(jax.random.key(2), (16,))
    W0, b0, W1, b1 = (np.asarray(a, np.float64) for a in (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    ref = np.maximum(W0 @ np.asarray(x) + b0, 0) @ W1.T + b1
    low = with_dtype(model, jnp.bfloat16).apply(params, x)
    np.testing.assert_allclose(np.asarray(low, np.float32), ref, rtol=0.05, atol=0.05)
    # bfloat16 really was used: the result is not float32-exact.
    assert np.abs(np.asarray(low, np.float64) - ref).max() > 1e-5


def test_loss_is_computed_in_float32():
    # float16 logits overflow log-sum-exp above ~11 when summed in float16;
    # promoting first keeps the loss finite and equal to the float64 value.
    model = lm.Dense(2, use_bias=False, dtype=jnp.float16)
    params = {"W": jnp.array([[30.0], [0.0]])}
    xs = jnp.ones((4, 1))
    ys = jnp.array([1, 1, 1, 1])
    _, _, metrics = lm.train_step(model, xent, optax.sgd(0.0))(params, optax.sgd(0.0).init(params), (xs, ys))
    assert metrics["loss"].dtype == jnp.float32
    np.testing.assert_allclose(float(metrics["loss"]), 30.0 + np.log1p(np.exp(-30.0)), rtol=1e-6)


def test_with_dtype_errors():
    with pytest.raises(TypeError, match=r"with_dtype: compute must be a floating dtype"):
        with_dtype(lm.mlp([2]), compute=jnp.int32)
    with pytest.raises(TypeError, match=r"with_dtype: model must be a lamina Layer"):
        with_dtype("mlp", compute=jnp.bfloat16)


@pytest.mark.slow
def test_digits_bfloat16_within_one_point_of_float32():
    digits = load("train_digits")
    (x_train, y_train), (x_test, y_test) = digits.load_data()
    accuracies = {}
    for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16)):
        model = lm.mlp([256, 128, 10])
        if dtype is not None:
            model = with_dtype(model, dtype)
        _, params = model.init(jax.random.key(0), (64,))
        _, history = lm.fit(model, params, optax.adam(1e-3), (x_train, y_train), loss_fn=xent, epochs=15,
                            batch_size=32, key=jax.random.key(1), eval_data=(x_test, y_test), progress=False)
        accuracies[name] = history["eval_accuracy"][-1]
    print(accuracies)
    assert accuracies["float32"] > 0.96
    assert abs(accuracies["bfloat16"] - accuracies["float32"]) <= 0.01
