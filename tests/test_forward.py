"""lm.forward (jitted, batched) and lm.trace (every step of forward propagation)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lamina as lm


def test_forward_matches_numpy_and_vmap(key):
    model = lm.serial(lm.Dense(16, act="relu"), lm.Dense(4))
    _, params = model.init(key, (8,))
    xs = jax.random.normal(jax.random.key(1), (10, 8))
    W0, b0, W1, b1 = (np.asarray(a, np.float64) for a in (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    ref = np.maximum(np.asarray(xs, np.float64) @ W0.T + b0, 0) @ W1.T + b1
    y = lm.forward(model)(params, xs)
    chex.assert_shape(y, (10, 4))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(y, jax.vmap(model.apply, in_axes=(None, 0))(params, xs), rtol=1e-6)


def test_forward_does_not_retrace(key):
    model = lm.mlp([8, 2])
    _, params = model.init(key, (4,))
    chex.clear_trace_counter()
    # apply runs once per trace of the jitted forward: count those.
    counted = lm.Layer(model.init, chex.assert_max_traces(model.apply, n=1), model.name)
    fwd = lm.forward(counted)
    xs = jnp.ones((3, 4))
    for i in range(5):
        fwd(params, xs * i)
    assert fwd._cache_size() == 1
    with pytest.raises(AssertionError, match="traced > 1 times"):
        fwd(params, jnp.ones((6, 4)))  # a new shape must trace again: the counter works


def test_forward_takes_nested_lists(key):
    model = lm.serial(lm.Dense(3, act="relu"), lm.Dense(2))
    _, params = model.init(key, (4,))
    rows = [[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [4.0, 0.0, 0.0, -0.5]]
    W0, b0, W1, b1 = (np.asarray(a, np.float64) for a in (params[0]["W"], params[0]["b"], params[1]["W"], params[1]["b"]))
    ref = np.maximum(np.array(rows) @ W0.T + b0, 0) @ W1.T + b1
    fwd = lm.forward(model)
    y = fwd(params, rows)
    chex.assert_shape(y, (3, 2))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, fwd(params, jnp.array(rows)))
    # Lists are stacked inside the jitted function; fwd has jax.jit's API
    # (lower, trace) and is the same function for an equal model.
    assert fwd.lower(params, jnp.array(rows)) is not None
    assert lm.forward(lm.serial(lm.Dense(3, act="relu"), lm.Dense(2))) is fwd


def test_forward_rejects_unbatched_and_wrong_size(key):
    model = lm.mlp([8, 2])
    _, params = model.init(key, (4,))
    with pytest.raises(ValueError, match=r"lm.forward expects a batch with a leading batch axis, got xs with shape \(\)"):
        lm.forward(model)(params, jnp.float32(1))
    with pytest.raises(ValueError, match=r"serial\[0\] Dense\(8, relu\): expected input with last dimension 4 .*got x with shape \(5,\)"):
        lm.forward(model)(params, jnp.ones((3, 5)))
    with pytest.raises(TypeError, match=r"forward: expected a lamina Layer"):
        lm.forward(lambda p, x: x)


def test_trace_records_weighted_sums_and_activations(key):
    model = lm.serial(lm.Dense(3, act="relu"), lm.Dense(2, act="sigmoid"))
    _, params = model.init(key, (4,))
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    steps = lm.trace(model, params, x)
    assert [(s.path, s.index, s.name) for s in steps] == [
        ("serial[0]", (0,), "Dense(3, relu)"),
        ("serial[1]", (1,), "Dense(2, sigmoid)"),
    ]
    z0 = np.asarray(x) @ np.asarray(params[0]["W"]).T + np.asarray(params[0]["b"])
    h = np.maximum(z0, 0)
    z1 = h @ np.asarray(params[1]["W"]).T + np.asarray(params[1]["b"])
    np.testing.assert_allclose(steps[0].input, x)
    np.testing.assert_allclose(steps[0].weighted_sum, z0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps[0].output, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps[1].input, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps[1].weighted_sum, z1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(steps[1].output, 1 / (1 + np.exp(-z1)), rtol=1e-5, atol=1e-6)
    assert steps[1].params is params[1]


def test_trace_of_combinators_lists_every_layer(key):
    model = lm.serial(
        lm.Flatten(),
        lm.residual(lm.serial(lm.Dense(4, act="tanh"), lm.Dropout(0.1))),
        lm.parallel(lm.Dense(2), lm.LayerNorm()),
        lm.Concat(),
    )
    _, params = model.init(key, (2, 2))
    x = jnp.arange(4.0).reshape(2, 2)
    steps = lm.trace(model, params, x)
    assert [s.path for s in steps] == [
        "serial[0]",
        "serial[1].residual[0].serial[0]",
        "serial[1].residual[0].serial[1]",
        "serial[1]",
        "serial[2].parallel[0]",
        "serial[2].parallel[1]",
        "serial[2]",
        "serial[3]",
    ]
    # The residual step shows x + f(x), with the inner steps' values.
    np.testing.assert_allclose(steps[3].output, steps[3].input + steps[2].output, rtol=1e-6)
    np.testing.assert_allclose(steps[-1].output, model.apply(params, x), rtol=1e-6)
    assert steps[1].index == (1, 0, 0)


def test_trace_works_under_jit(key):
    model = lm.mlp([3, 2])
    _, params = model.init(key, (4,))
    zs = jax.jit(lambda p, x: [s.weighted_sum for s in lm.trace(model, p, x)])(params, jnp.ones(4))
    eager = [s.weighted_sum for s in lm.trace(model, params, jnp.ones(4))]
    chex.assert_trees_all_close(zs, eager, rtol=1e-6)


def test_forward_is_reused_for_an_equal_model():
    model = lm.mlp([4, 2])
    assert lm.forward(model) is lm.forward(model)
    assert lm.forward(model) is lm.forward(lm.mlp([4, 2]))  # equal configuration
    assert lm.forward(model) is not lm.forward(lm.mlp([4, 3]))


@pytest.mark.slow
def test_models_that_take_a_batch_skip_the_vmap_with_the_same_numbers(key):
    # Dense, LayerNorm and named activations compute each row alone, so the
    # forward applies them to the whole batch: the program is the hand-written one.
    model = lm.serial(lm.Dense(16, act="gelu"), lm.residual(lm.serial(lm.LayerNorm(), lm.Dense(16))),
                      lm.Dense(3, act="softmax"))
    assert model.batch_polymorphic
    _, params = model.init(key, (8,))
    xs = jax.random.normal(jax.random.key(1), (10, 8))
    per_example = jnp.stack([model.apply(params, x) for x in xs])
    np.testing.assert_allclose(lm.forward(model)(params, xs), per_example, rtol=1e-6, atol=1e-7)
    # A function activation might mix the rows: such a model is vmapped.
    share = lm.Dense(3, act=lambda z: z / jnp.sum(z))
    assert not share.batch_polymorphic and not lm.serial(model, share).batch_polymorphic
    _, p = share.init(key, (8,))
    np.testing.assert_allclose(jnp.sum(lm.forward(share)(p, xs), axis=-1), np.ones(10), rtol=1e-5)
    # Bad input still names one example's shape.
    with pytest.raises(lm.LaminaError, match=r"got x with shape \(7,\)"):
        lm.forward(model)(params, jnp.ones((10, 7)))


def test_a_deep_model_compiles_under_a_short_name():
    # JAX's compilation cache names its files by the function's name; a deep
    # model's whole name would be too long for a file name.
    model = lm.serial(*[lm.Dense(4, act="tanh") for _ in range(40)])
    assert len(model.name) > 400
    fwd = lm.forward(model)
    assert fwd.__name__.startswith("forward[serial(Dense(4, tanh)") and len(fwd.__name__) <= 70
    assert lm.forward(lm.mlp([3])).__name__ == "forward[serial(Dense(3))]"
